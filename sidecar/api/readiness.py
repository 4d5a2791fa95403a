"""Readiness: what health answers, decided in one place, and the check that catches a bad token.

Health is one decision over named conditions (``decide``), applied to every service name at once, so
a new reason to stop serving is a new field of ``Conditions``, not another ``health.set`` somewhere.
The names say what they mean (docs/probes.md):

- ``liveness``: the process is alive and its event loop answers (the Check is answered on that loop,
  so a stuck loop answers nothing). Never Trengo, the token or the store: a restart fixes none of them.
- ``readiness``: the sidecar accepts calls: started, and not draining. Never Trengo nor the token: in
  a native sidecar its readiness is the pod's, and a third party must not take the app out of service.
- ``trengo.sidecar.v1.TrengoSidecar``: can a call succeed now (token, baseUrl, store). For clients.
- ``""``: as before (the service's answer, except a store outage), for existing probes and meshes.

The Trengo check is the channel list, the call delivery needs anyway (its answer fills the channel
cache). It runs at start and every few minutes:

- 401 or 403: the token is wrong. A configuration error: the service (and "") NOT_SERVING, and
  ``trengo_sidecar_trengo_check{result="unauthorized"}`` for the alert; ``readiness`` and ``liveness``,
  the pod's probes, stay SERVING (a restart cannot fix a token; the app keeps its traffic).
- 404, or a redirect: ``baseUrl`` is not Trengo's API (it ends in ``/api/v2``). Also NOT_SERVING.
- the channel's kind contradicts ``channelIdentifier`` (an SMS channel with ``email``, or a channel
  ``auto`` cannot read): every Identify would fail CHANNEL_KIND_MISMATCH. The service's health goes
  NOT_SERVING with that reason in the log; the server's ("", the pod's probes) stays SERVING, as for a
  store outage, since the synchronous calls that need no channel still work.
- unreachable, timeouts, 5xx, 429: an outage, not a misconfiguration. Health stays SERVING: in a
  native sidecar the sidecar's readiness is the pod's, and a Trengo outage must not take the
  application out of service with it (its own calls answer TRENGO_UNAVAILABLE meanwhile).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

import grpc
from grpc_health.v1 import health, health_pb2

from ..deadline import Deadline
from ..errors import SidecarError
from ..plan.transform import channel_kind, identifier_kind
from ..trengo_api.answers import TrengoError

if TYPE_CHECKING:
    from ..config.load import Config
    from ..delivery.delivery import Delivery

log = logging.getLogger("sidecar")

CHECK_SECONDS = 180.0  # between checks while they pass: "every few minutes"
RECHECK_SECONDS = 30.0  # between checks while one fails: a fixed token or Trengo back is seen soon
CHECK_DEADLINE_SECONDS = 10.0  # one check, retries included
FIRST_CHECK_SECONDS = 5.0  # how long start-up waits for the first before serving regardless

# The check's results, as the metric's label values.
OK = "ok"
UNAUTHORIZED = "unauthorized"
WRONG_BASE_URL = "wrong_base_url"
CHANNEL_NOT_FOUND = "channel_not_found"
CHANNEL_KIND_MISMATCH = "channel_kind_mismatch"
REJECTED = "rejected"
UNREACHABLE = "unreachable"
RESULTS = (OK, UNAUTHORIZED, WRONG_BASE_URL, CHANNEL_NOT_FOUND, CHANNEL_KIND_MISMATCH, REJECTED, UNREACHABLE)
MISCONFIGURED = frozenset({UNAUTHORIZED, WRONG_BASE_URL})


# --- health: one decision ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Conditions:
    """Everything health depends on. Add a field (and a line in ``decide``) for a new one."""

    starting: bool = True  # the first Trengo check has not ended (nor had its time) yet
    draining: bool = False  # SIGTERM received: new calls are refused
    trengo_misconfigured: bool = False  # the last Trengo check found a wrong token or baseUrl
    store_unavailable: bool = False  # the state store (``store``) does not answer (sidecar/state/health.py)
    channel_mismatch: bool = False  # the last Trengo check found a channel channelIdentifier cannot use


LIVENESS = "liveness"
READINESS = "readiness"
PROBES = (LIVENESS, READINESS)  # the process-level names, for Kubernetes' probes


def decide(conditions: Conditions, service: str) -> health_pb2.HealthCheckResponse.ServingStatus.ValueType:
    """The status of ``service`` ("" for the whole server)."""
    if service == LIVENESS:
        # Draining too: a liveness failure while the grace runs would cut the drain short with a kill.
        return health_pb2.HealthCheckResponse.SERVING
    if service == READINESS:
        if conditions.starting or conditions.draining:
            return health_pb2.HealthCheckResponse.NOT_SERVING
        return health_pb2.HealthCheckResponse.SERVING
    if conditions.starting or conditions.draining or conditions.trengo_misconfigured:
        return health_pb2.HealthCheckResponse.NOT_SERVING
    if service and (conditions.store_unavailable or conditions.channel_mismatch):
        # Only the service says so: "" is what the pod's probes read, and a store outage must not take
        # the application out of service (its calls answer STORE_UNAVAILABLE meanwhile).
        return health_pb2.HealthCheckResponse.NOT_SERVING
    return health_pb2.HealthCheckResponse.SERVING


class HealthServicer(health.aio.HealthServicer):
    """grpc's health servicer, plus an end for Watch streams at shutdown.

    Left open, server.stop cancels them, and grpc logs a traceback for each ("Exception not handled
    by _handle_exceptions"). ``close`` ends them with UNAVAILABLE after they have seen NOT_SERVING.
    """

    def __init__(self) -> None:
        super().__init__()
        self._closed = asyncio.Event()

    async def Watch(self, request: health_pb2.HealthCheckRequest, context: grpc.aio.ServicerContext) -> None:
        watching = asyncio.ensure_future(super().Watch(request, context))
        closed = asyncio.ensure_future(self._closed.wait())
        try:
            await asyncio.wait({watching, closed}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            watching.cancel()
            closed.cancel()
        if watching.done() and not watching.cancelled():
            watching.result()  # the stream's own failure, if it had one
        await context.abort(grpc.StatusCode.UNAVAILABLE, "the sidecar is shutting down")

    def close(self) -> None:
        self._closed.set()


class Health:
    """The gRPC health servicer, fed only through ``update``."""

    def __init__(self, servicer: health.aio.HealthServicer, services: tuple[str, ...]) -> None:
        self.servicer = servicer
        self.services = services
        self.conditions = Conditions()

    async def update(self, **changes: bool) -> None:
        self.conditions = replace(self.conditions, **changes)
        # Draining is never undone, so every later update keeps the drained services NOT_SERVING (no
        # flapping back); grpc's enter_graceful_shutdown is not used: it would fail liveness as well.
        for service in self.services:
            await self.servicer.set(service, decide(self.conditions, service))


# --- the Trengo check ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class TrengoCheck:
    result: str  # one of RESULTS
    message: str
    at: float = field(default_factory=time.time)  # unix time, for the metric

    @property
    def misconfigured(self) -> bool:
        return self.result in MISCONFIGURED


async def check_trengo(delivery: Delivery, seconds: float = CHECK_DEADLINE_SECONDS) -> TrengoCheck:
    """List the channels once (retries included) and say what the answer means."""
    config = delivery.config
    try:
        types = await delivery.list_channels(Deadline.after(seconds))
    except TrengoError as exc:
        return _refused(exc, config)
    except SidecarError as exc:
        return TrengoCheck(
            UNREACHABLE,
            f"Trengo could not be checked ({exc.message}): an outage, not a "
            "misconfiguration, so health stays SERVING",
        )
    if config.channel_id not in types:
        return TrengoCheck(
            CHANNEL_NOT_FOUND,
            f"the token works, but channelId {config.channel_id} is not among "
            f"its {len(types)} channels: events for it will fail CHANNEL_NOT_FOUND",
        )
    kind = types[config.channel_id] or "untyped"
    try:
        identifier_kind(config.channel_identifier, config.channel_id, types[config.channel_id])
    except SidecarError as exc:
        return TrengoCheck(CHANNEL_KIND_MISMATCH, f"{exc.message}: {_kind_fix(config, types)}")
    return TrengoCheck(
        OK, f"the token works; channel {config.channel_id} is a {kind} channel ({len(types)} channels)"
    )


def _kind_fix(config: Config, types: dict[int, str]) -> str:
    """The fix, in one line: the channelIdentifier this channel needs, or a channel that fits the one set."""
    learned = channel_kind(types[config.channel_id] or "")
    wanted = config.channel_identifier if config.channel_identifier in ("email", "phone") else None
    fitting = sorted(cid for cid, kind in types.items() if wanted and channel_kind(kind) == wanted)
    other = f" (e.g. {fitting[0]})" if fitting else ""
    if learned is None:
        return "set channelIdentifier (TRENGO_CHANNEL_IDENTIFIER) to what this channel identifies contacts by"
    if wanted is None:
        return f"set channelIdentifier (TRENGO_CHANNEL_IDENTIFIER) to {learned}"
    return (
        f"set channelIdentifier (TRENGO_CHANNEL_IDENTIFIER) to {learned}, "
        f"or channelId (TRENGO_CHANNEL_ID) to one of its {wanted} channels{other}"
    )


def _refused(exc: TrengoError, config: Config) -> TrengoCheck:
    url = f"{config.base_url.rstrip('/')}/channels"
    if exc.status in (401, 403):
        return TrengoCheck(
            UNAUTHORIZED,
            f"Trengo refused the API token ({exc.status} to GET /channels): "
            "check apiToken (apiTokenFile, TRENGO_API_TOKEN)",
        )
    if exc.status == 404 or 300 <= exc.status < 400:
        return TrengoCheck(
            WRONG_BASE_URL,
            f"GET {url} answered {exc.status}: check baseUrl, which is Trengo's "
            "API root and ends in /api/v2 (https://app.trengo.com/api/v2)",
        )
    return TrengoCheck(REJECTED, exc.message)


class Readiness:
    """Runs the Trengo check at start and every few minutes, and turns its result into health."""

    def __init__(self, delivery: Delivery, health_: Health) -> None:
        self.delivery = delivery
        self.health = health_
        self.last: TrengoCheck | None = None  # read by the metrics collector
        self.results = RESULTS  # and every result's name, for its labels
        self._task: asyncio.Task[None] | None = None

    async def start(
        self,
        interval: float = CHECK_SECONDS,
        recheck: float = RECHECK_SECONDS,
        first: float = FIRST_CHECK_SECONDS,
    ) -> None:
        """The first check (waited for up to ``first`` seconds), then the periodic ones in a task."""
        first_check = asyncio.ensure_future(self.check())
        await asyncio.wait({first_check}, timeout=first)
        self._task = asyncio.create_task(self._every(first_check, interval, recheck))

    async def check(self) -> TrengoCheck:
        found = await check_trengo(self.delivery)
        self._report(found)
        self.last = found
        await self.health.update(
            trengo_misconfigured=found.misconfigured, channel_mismatch=found.result == CHANNEL_KIND_MISMATCH
        )
        return found

    async def _every(self, first: asyncio.Future[TrengoCheck], interval: float, recheck: float) -> None:
        check: asyncio.Future[TrengoCheck] | None = first
        while True:
            try:
                await (check if check is not None else self.check())
            except Exception:  # a bug in the check must not end the checking for the process's life
                log.exception("the Trengo check failed unexpectedly")
            check = None
            await asyncio.sleep(recheck if self.last is not None and self.last.result != OK else interval)

    def _report(self, found: TrengoCheck) -> None:
        fields = {"fields": {"check": "trengo", "result": found.result}}
        if found.misconfigured:
            log.error(
                "Trengo check failed: %s; health is NOT_SERVING until a check passes",
                found.message,
                extra=fields,
            )
        elif found.result == CHANNEL_KIND_MISMATCH:
            log.error(
                "Trengo check failed: %s; the service's health is NOT_SERVING (reason CHANNEL_KIND_MISMATCH) "
                "until a check passes",
                found.message,
                extra=fields,
            )
        elif found.result != OK:
            log.warning("Trengo check failed: %s", found.message, extra=fields)
        elif self.last is None or self.last.result != OK:
            log.info("Trengo check passed: %s", found.message, extra=fields)

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task


# --- trengo-sidecar --check-trengo -----------------------------------------------------------------------

EXIT_MISCONFIGURED = 1
EXIT_UNREACHABLE = 3


def check_command(config: Config, sidecar_for: Callable[[Config], Any]) -> int:
    """The same check as a one-shot command: 0 when it passes, else non-zero with the reason on stderr.

    ``sidecar_for``: the running process's class (app.py's ``Sidecar``, which imports this module), so
    that the check uses the same client and delivery the server would.
    """
    found = asyncio.run(_check_once(config, sidecar_for))
    if found.result == OK:
        print(f"trengo: {found.message}")
        return 0
    print(f"trengo-sidecar: --check-trengo: {found.message}", file=sys.stderr)
    return EXIT_UNREACHABLE if found.result == UNREACHABLE else EXIT_MISCONFIGURED


async def _check_once(config: Config, sidecar_for: Callable[[Config], Any]) -> TrengoCheck:
    sidecar = sidecar_for(config)
    try:
        return await check_trengo(sidecar.delivery)
    finally:
        await sidecar.delivery.aclose()
        await sidecar.state.aclose()  # a PostgreSQL store's pools, opened by the check's rate-limit slot
