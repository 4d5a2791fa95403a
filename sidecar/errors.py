"""One exception hierarchy for every failure the sidecar reports.

Each error carries the gRPC status code it maps to and the ErrorInfo reason
clients branch on; the server turns them into rich gRPC statuses. The reasons
are part of the public contract (see sidecar.proto): never rename one.
"""

from __future__ import annotations

import grpc

DOMAIN = "trengo-sidecar.v1"


class SidecarError(Exception):
    """Base class: a failure with a gRPC code, an ErrorInfo reason and a message."""

    code: grpc.StatusCode = grpc.StatusCode.INTERNAL
    reason: str = "INTERNAL"

    def __init__(
        self,
        message: str,
        *,
        reason: str | None = None,
        field: str | None = None,
        retry_after: float | None = None,
        metadata: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        if reason is not None:
            self.reason = reason
        self.field = field  # the request field at fault, for BadRequest details
        self.retry_after = retry_after  # seconds, for RetryInfo; None = retrying won't help
        self.metadata = metadata or {}


class InvalidArgument(SidecarError):
    """The caller's request is malformed. Trengo was not called."""

    code = grpc.StatusCode.INVALID_ARGUMENT
    reason = "INVALID_EVENT"


class FailedPrecondition(SidecarError):
    """The request is well-formed but the configuration or Trengo's data forbids it."""

    code = grpc.StatusCode.FAILED_PRECONDITION
    reason = "FAILED_PRECONDITION"


class NotFound(SidecarError):
    code = grpc.StatusCode.NOT_FOUND
    reason = "CONTACT_NOT_FOUND"


class Unavailable(SidecarError):
    """Trengo could not be reached or answered nonsense; retrying may help."""

    code = grpc.StatusCode.UNAVAILABLE
    reason = "TRENGO_UNAVAILABLE"


class ShuttingDown(Unavailable):
    """The sidecar is draining (SIGTERM): refused, or cut off before any write left. Safe to retry."""

    reason = "SIDECAR_SHUTTING_DOWN"

    def __init__(self, message: str = "the sidecar is shutting down; retry shortly") -> None:
        super().__init__(message, retry_after=1.0)


class ResourceExhausted(SidecarError):
    code = grpc.StatusCode.RESOURCE_EXHAUSTED
    reason = "RATE_LIMITED"


class Unauthenticated(SidecarError):
    code = grpc.StatusCode.UNAUTHENTICATED
    reason = "CALLER_UNAUTHENTICATED"


class ConfigError(ValueError):
    """The sidecar's configuration is invalid; raised at start-up, names the key.

    ``origin`` says where a bad value came from (``env TRENGO_CHANNEL_ID``, ``flag --listen``), and
    ``problems`` holds every problem found at once, this one first. Messages never quote a value.
    """

    def __init__(self, key: str, problem: str, origin: str = "") -> None:
        self.key, self.problem, self.origin = key, problem, origin
        self.problems: list[ConfigError] = [self]
        super().__init__(self.line())

    def line(self) -> str:
        where = f"{self.key} ({self.origin})" if self.origin else self.key
        return f"{where}: {self.problem}"

    @classmethod
    def many(cls, problems: list[ConfigError]) -> ConfigError:
        """One error for all the problems found, so an operator fixes them in one go."""
        if len(problems) == 1:
            return problems[0]
        first = problems[0]
        error = cls(first.key, first.problem, first.origin)
        error.problems = list(problems)
        error.args = ("\n".join(p.line() for p in problems),)
        return error


class StoreError(Unavailable):
    """The state store (SQLite, PostgreSQL) could not be used; retrying may help.

    Every backend's driver errors are wrapped into this one, at the seam. Its message must never
    carry the store's password: backends build it from the masked URL and the driver error's class.
    """

    reason = "STORE_UNAVAILABLE"

    def __init__(self, message: str, *, retry_after: float = 1.0) -> None:
        super().__init__(message, retry_after=retry_after)
