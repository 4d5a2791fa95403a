"""The httpx client for Trengo's REST API v2: sending, retrying, and mapping failures to errors.

Every call goes through ``send``: a rate-limit slot, an attempt bounded by the
caller's deadline, retries per RetryPolicy, and a CallRecord of what happened
(for the DeliveryResult). Failures become SidecarErrors with the gRPC code
the contract gives them. The token is only ever in the Authorization header.
Reading an answer's contents, and the error types, are in trengo_answers.py.
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
import json
import time
from typing import Any
from urllib.parse import quote, urlencode
from urllib.request import getproxies_environment, proxy_bypass_environment  # type: ignore[attr-defined]

import httpx

from ..config.load import Secret
from ..deadline import Deadline
from ..errors import ResourceExhausted, ShuttingDown, SidecarError, Unavailable
from ..plan.transform import Call
from .answers import CutOff, OutcomeUnknown, TrengoError, _describe, _json
from .ratelimit import RateLimiter
from .records import CallRecord
from .retry import LOST_ANSWER_STATUS, NOT_SENT, RETRYABLE_STATUS, RetryPolicy, retry_after
from .transport import UNSENT, H11Transport

MASKED = "Bearer ****"
USER_AGENT = "trengo-sidecar/0.1"
# Trengo allows 2 calls a second per token, so a few connections carry it; 16 leave room for bursts
# and for a Trengo that is slow to answer.
POOL_SIZE = 16
# A create (POST) is not sent with less time than this left before the deadline: if its answer came
# too late, a plain failure would become an unknown outcome, remembered under the message_id for the
# idempotency window. Refused unsent, it is a clean UNAVAILABLE that the caller may simply retry.
MIN_WRITE_SECONDS = 0.25
TOO_LATE_RETRY_SECONDS = 0.1  # RetryInfo for such a refusal: a retry with a fresh deadline can go at once
# Set by the queue worker (sidecar/queue/worker.py) in the task delivering one queued event: told
# ``await sending(call)`` just before a write that cannot be resent goes out (it records that durably,
# so a crash after it counts as an unknown outcome), and ``answered(status)`` after every attempt.
ATTEMPT_HOOK: contextvars.ContextVar[Any] = contextvars.ContextVar("trengo_attempt_hook", default=None)


class _Retry(Exception):
    """An attempt failed and another may succeed: the error to report if none does, the wait before it."""

    def __init__(self, error: SidecarError, wait: float) -> None:
        super().__init__(error.message)
        self.error = error
        self.wait = wait


class TrengoClient:
    def __init__(
        self,
        base_url: str,
        token: Secret,
        *,
        timeout: float = 10.0,
        policy: RetryPolicy | None = None,
        limiter: RateLimiter | None = None,
        max_connections: int = POOL_SIZE,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.timeout = timeout
        self.policy = policy or RetryPolicy()
        # An attempt never waits longer than ``timeout`` for its answer: a shorter timeout is then all the
        # time a write needs, and a larger floor would refuse writes that could still be answered.
        self.write_floor = min(MIN_WRITE_SECONDS, timeout)
        self.limiter = limiter or RateLimiter(0, 1)
        self._token = token
        # httpx's Request, Response, decoders and exceptions, sent straight to the transport: no
        # AsyncClient on top, whose cookie, auth, redirect and hook layers do nothing for Trengo's API
        # and cost about 0.1 ms a call in the caller's latency (measured at 1 in flight).
        self._wire = transport or _wire(self.base_url, max_connections)
        headers = {
            "Authorization": f"Bearer {token.reveal()}",
            "Accept": "application/json",
            "Accept-Encoding": "gzip, deflate",
            "User-Agent": USER_AGENT,
        }
        json_body = {**headers, "Content-Type": "application/json"}
        self._headers = {False: httpx.Headers(headers), True: httpx.Headers(json_body)}  # parsed once
        self.observer: Any = None  # metrics hook: observe(call, status, seconds), retried(call, why)
        self.span_hook: Any = None  # tracing hook, when on: span_hook(call, record, started, error)
        self._sending: set[asyncio.Task[Any]] = set()  # the tasks inside send(), for cut_off()
        self.cut = False

    def cut_off(self) -> None:
        """Shutdown's grace is over: every call to Trengo ends now, with an answer that says what it left.

        Cancelling is the only way to stop an exchange mid-flight; send() turns that cancellation
        into SIDECAR_SHUTTING_DOWN (nothing was written, retry) or CutOff (a write may have happened),
        so the caller hears the truth instead of grpc's bare "Cancelling all calls".
        """
        self.cut = True
        for task in self._sending:
            task.cancel()

    async def aclose(self) -> None:
        await self._wire.aclose()

    def url(self, call: Call) -> str:
        # quote, not quote_plus: a phone's "+" must arrive as "+" (%2B), and a space as a space (%20).
        query = "?" + urlencode(call.params, quote_via=quote) if call.params else ""
        return self.base_url + call.path + query

    def record(self, call: Call, dry_run: bool = False) -> CallRecord:
        body = (
            json.dumps(call.body, separators=(",", ":"), ensure_ascii=False) if call.body is not None else ""
        )
        headers = {"Authorization": MASKED, "Accept": "application/json"} if dry_run else {}
        if dry_run and call.body is not None:
            headers["Content-Type"] = "application/json"
        return CallRecord(call.method, self.url(call), body, headers=headers)

    async def send(self, call: Call, deadline: Deadline, records: list[CallRecord]) -> Any:
        """Send with retries; append the call's record to ``records``; return the parsed JSON answer."""
        if self.cut:
            raise ShuttingDown(f"the sidecar is shutting down: {call.method} {call.path} was not sent; retry")
        record = self.record(call)
        records.append(record)
        started = time.monotonic()
        task = asyncio.current_task()
        if task is not None:
            self._sending.add(task)
        error: BaseException | None = None  # for the span: sys.exception() may be an outer one
        try:
            return await self._attempts(call, deadline, record)
        except asyncio.CancelledError as exc:
            if not self._cut_here(task):
                error = exc
                raise
            # Cut off between attempts (a rate-limit wait, a backoff): this attempt was not sent.
            error = ShuttingDown(f"the sidecar shut down before {call.method} {call.path} was sent; retry")
            raise error from None
        except BaseException as exc:
            error = exc
            raise
        finally:
            if task is not None:
                self._sending.discard(task)
            record.duration_ms = round((time.monotonic() - started) * 1000, 3)
            if self.span_hook:
                self.span_hook(call, record, started, error)

    def _cut_here(self, task: asyncio.Task[Any] | None) -> bool:
        """Whether a CancelledError in ``task`` is cut_off()'s: then it is answered, not propagated."""
        if not self.cut or task is None:
            return False
        task.uncancel()  # handled: later awaits in this task (the answer, the log line) must not see it
        return True

    async def _attempts(self, call: Call, deadline: Deadline, record: CallRecord) -> Any:
        while True:
            record.attempts += 1
            slot = await self.limiter.take(deadline)
            record.rate_limit_wait += slot.waited
            if call.unsafe_to_resend and deadline.remaining() < self.write_floor:
                raise Unavailable(
                    f"too little time left before the deadline to send {call.method} {call.path} "
                    "and hear back; it was not sent",
                    retry_after=TOO_LATE_RETRY_SECONDS,
                )
            hook = ATTEMPT_HOOK.get()
            if hook is not None and call.unsafe_to_resend:
                await hook.sending(call)
            sent_at = time.monotonic()
            try:
                return await self._attempt(call, deadline, record)
            except _Retry as retry:
                error, wait = retry.error, retry.wait
            finally:
                self.limiter.answered(slot)  # its log entry now no earlier than its arrival at Trengo
            # The next try must have time to be answered: as long as this one took, and a little more
            # for jitter (a write: at least the floor above). A try that cannot finish in time only
            # spends the rate limit.
            took = 1.25 * (time.monotonic() - sent_at) + 0.05
            needed = wait + max(took, self.write_floor if call.unsafe_to_resend else 0.0)
            if record.attempts >= self.policy.max_attempts or needed >= deadline.remaining():
                if error.retry_after is None:  # a hint of 0 s from Trengo stays a hint
                    error.retry_after = wait if wait > 0 else None
                raise _gave_up(error, record.attempts, record.attempts >= self.policy.max_attempts, deadline)
            if self.observer:
                self.observer.retried(call, error.reason)
            if isinstance(error, ResourceExhausted):  # Trengo's 429: its Retry-After is a rate-limit wait
                record.rate_limit_wait += wait
            await asyncio.sleep(wait)

    async def _attempt(self, call: Call, deadline: Deadline, record: CallRecord) -> Any:
        """One try: the parsed answer, else raises _Retry (another try may succeed) or the final error.

        The helpers below build the exception; this is the one place that raises it.
        """
        limit = min(self.timeout, deadline.remaining())
        sent_at = time.monotonic()
        request = self._request(call, record, limit)
        try:
            # httpx's timeout bounds each phase (connect, write, every read), not the exchange: a server
            # trickling bytes would keep it going past the deadline. asyncio.timeout bounds the whole.
            async with asyncio.timeout(limit):
                response = await self._exchange(request)
        except asyncio.CancelledError:
            if not self._cut_here(asyncio.current_task()):
                raise
            self._observe(call, 0, sent_at)
            record.status_code = 0
            if not call.unsafe_to_resend or request.extensions.get(UNSENT):
                raise ShuttingDown(
                    f"the sidecar shut down while {call.method} {call.path} was in flight; "
                    "sending it again cannot write twice: retry"
                ) from None
            raise CutOff(
                f"the sidecar shut down (shutdownGraceSeconds ran out) while {call.method} {call.path} "
                "awaited Trengo's answer; the write may or may not have happened"
            ) from None
        except (httpx.TransportError, TimeoutError) as exc:  # TimeoutError: the deadline, mid-request
            self._observe(call, 0, sent_at)
            record.status_code = 0
            unsent = isinstance(exc, NOT_SENT) or bool(request.extensions.get(UNSENT))
            raise self._transport_error(call, exc, record, unsent, limit < self.timeout) from exc
        except httpx.DecodingError as exc:
            # An answer came whose body cannot be decoded (a bogus Content-Encoding): garbled, not a crash.
            self._observe(call, 0, sent_at)
            record.status_code = 0
            raise self._garbled(call, record) from exc
        self._observe(call, response.status_code, sent_at)
        record.status_code = response.status_code
        if not response.is_success:
            raise self._status_error(call, response, record)
        data = _json(response)
        if isinstance(data, dict):
            return data
        if not call.unsafe_to_resend and call.is_write:
            return {}  # a 2xx to an update says it happened; nothing in its answer is needed
        raise self._garbled(call, record)

    def _request(self, call: Call, record: CallRecord, limit: float) -> httpx.Request:
        # The record already holds the URL and the encoded body: send those, not a second encoding.
        return httpx.Request(
            call.method,
            _parsed(record.url),
            content=record.body_json or None,
            headers=self._headers[call.body is not None],
            extensions={"timeout": dict.fromkeys(("connect", "read", "write", "pool"), limit)},
        )

    async def _exchange(self, request: httpx.Request) -> httpx.Response:
        response = await self._wire.handle_async_request(request)
        try:
            await response.aread()  # decodes the body (gzip, deflate) as AsyncClient would
        finally:
            await response.aclose()
        return response

    def _observe(self, call: Call, status: int, sent_at: float) -> None:
        if self.observer:
            self.observer.observe(call, status, time.monotonic() - sent_at)
        hook = ATTEMPT_HOOK.get()
        if hook is not None:
            hook.answered(status)

    def _transport_error(
        self, call: Call, exc: Exception, record: CallRecord, unsent: bool, deadline_bound: bool
    ) -> Exception:
        """``unsent``: no byte of the request left (a refused connection, a deadline that ran out while
        it waited for a connection): sending it again cannot write twice. ``deadline_bound``: the
        attempt had less than requestTimeoutSeconds, because the caller's deadline came first."""
        cause = type(exc).__name__
        if isinstance(exc, TimeoutError | httpx.TimeoutException):
            waited = (
                "before the deadline"
                if deadline_bound
                else f"within {self.timeout:g} s (requestTimeoutSeconds)"
            )
            cause = f"no {'connection to Trengo' if unsent else 'answer'} {waited}"
        what = f"{call.method} {call.path}: {cause}"
        if call.unsafe_to_resend and not unsent:
            # The request may have been processed: sending it again could write twice.
            return OutcomeUnknown(
                f"Trengo's answer to {what} was lost; the write may or may not have happened"
            )
        error = Unavailable(f"Trengo could not be reached ({what})")
        return _Retry(error, self.policy.backoff(record.attempts))

    def _status_error(self, call: Call, response: httpx.Response, record: CallRecord) -> Exception:
        status = response.status_code
        what = f"{call.method} {call.path}"
        if status == 429:
            wait = retry_after(response.headers)
            if wait is not None:
                self.limiter.penalise(wait)
            wait = wait if wait is not None else self.policy.backoff(record.attempts)
            return _Retry(ResourceExhausted(f"Trengo's rate limit was hit ({what})", retry_after=wait), wait)
        if status in LOST_ANSWER_STATUS and call.unsafe_to_resend:
            return OutcomeUnknown(
                f"a gateway answered {status} to {what} in Trengo's place; the write may or may not have "
                "happened"
            )
        if status in RETRYABLE_STATUS:
            hinted = retry_after(response.headers)
            wait = hinted if hinted is not None else self.policy.backoff(record.attempts)
            return _Retry(Unavailable(f"Trengo answered {status} to {what}", retry_after=hinted), wait)
        data = _json(response)
        errors = data.get("errors") if isinstance(data, dict) else None
        fields = frozenset(map(str, errors)) if isinstance(errors, dict) else frozenset()
        if status in (401, 403):
            return TrengoError(
                f"Trengo refused the API token ({status} to {what}): check apiToken",
                status=status,
                reason="TRENGO_UNAUTHORIZED",
                record=record,
                fields=fields,
            )
        return TrengoError(
            f"Trengo rejected {what} ({status}): {_describe(response, data, self._token.reveal())}",
            status=status,
            reason="TRENGO_REJECTED",
            record=record,
            fields=fields,
        )

    def _garbled(self, call: Call, record: CallRecord) -> Exception:
        """An answer whose body is unreadable: a create's outcome is unknown; anything else is retried."""
        message = f"Trengo answered {call.method} {call.path} with a body that is not a JSON object"
        if call.unsafe_to_resend:
            return OutcomeUnknown(message + "; the write may or may not have happened")
        # A read or an update can be sent again safely, and a garbled answer (a proxy's error page, a
        # cut-off body) is usually transient: retry it, so that when it persists the caller gets RetryInfo.
        error = Unavailable(message, reason="TRENGO_BAD_RESPONSE")
        return _Retry(error, self.policy.backoff(record.attempts))


def _gave_up(error: SidecarError, attempts: int, all_used: bool, deadline: Deadline) -> SidecarError:
    """The last attempt's error, saying how many were made and why no other was."""
    if all_used:
        why = f"{attempts} attempts, the most maxAttempts allows" if attempts > 1 else "maxAttempts is 1"
    else:
        tries = f"{attempts} attempts, and another" if attempts > 1 else "another attempt"
        why = f"{tries} could not finish before the deadline ({deadline.remaining():.1f} s left)"
    error.message = f"{error.message}; {why}"
    error.args = (error.message,)
    return error


# Parsing a URL is a third of building an httpx.Request; a Track's URL (POST /tickets) never changes.
_parsed = functools.lru_cache(maxsize=1024)(httpx.URL)


def _wire(base_url: str, max_connections: int) -> httpx.AsyncBaseTransport:
    """The sidecar's own transport (sidecar/trengo_api/transport.py says why), or httpx's where HTTPS_PROXY,
    HTTP_PROXY or ALL_PROXY names a proxy for Trengo (and NO_PROXY does not exempt it): httpx's
    speaks to proxies."""
    url = httpx.URL(base_url)
    proxies = getproxies_environment()
    proxy = proxies.get(url.scheme) or proxies.get("all")
    if proxy and not proxy_bypass_environment(url.host, proxies):
        proxy = proxy if "://" in proxy else f"http://{proxy}"  # "proxy.corp:3128", as httpx reads it
        limits = httpx.Limits(max_connections=max_connections, max_keepalive_connections=max_connections)
        return httpx.AsyncHTTPTransport(proxy=proxy, limits=limits)
    return H11Transport(max_connections)
