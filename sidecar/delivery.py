"""Run an event's transformation against Trengo, using the caches.

Per event: check what can be checked without Trengo, learn the channel's
kind (cached), find the contact (cached, one search per new person even
under concurrency; on e-mail channels the create does the finding), then
write. Warm, a Track costs one Trengo call and an Identify one, or none when
the name is the one the sidecar knows; the reference destination spends two.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

from . import transform as tf
from .cache import FlightTimeout, SingleFlight, TTLCache
from .config import Config
from .deadline import Deadline
from .errors import FailedPrecondition, NotFound, StoreError
from .events import Event
from .followup_plan import FollowUpFailure
from .followups import FollowUps
from .idempotency import Idempotency
from .state import ContactRecord, State, open_state
from .state.waiting import busy, holding
from .trengo import CallRecord, TrengoClient
from .trengo_answers import (
    CutOff,
    OutcomeUnknown,
    TrengoError,
    contact_list,
    has_next_page,
    record_id,
    record_name,
)

T = TypeVar("T")
log = logging.getLogger("sidecar")
MAX_CHANNEL_PAGES = 40  # 1,000 channels: more than any Trengo account we have seen
CHANNEL_RELIST_SECONDS = 30.0


@dataclass(slots=True)
class Outcome:
    """What one event did in Trengo; the server turns it into a DeliveryResult."""

    action: str  # create_contact, update_contact, create_ticket, none, filtered
    channel_id: int
    contact_id: int = 0
    ticket_id: int = 0
    calls: list[CallRecord] = field(default_factory=list)
    dry_run: bool = False
    contact_cache_hit: bool = False
    replayed: bool = False
    message_id: str = ""
    filtered_reason: str = ""  # for "filtered": the rule that kept the event from Trengo
    # follow-ups (note, labels, custom fields) that did not land; the primary write stands
    failed_followups: list[FollowUpFailure] = field(default_factory=list)


@dataclass(slots=True)
class _Run:
    """The state of one event's delivery."""

    event: Event
    deadline: Deadline
    channel_id: int
    calls: list[CallRecord] = field(default_factory=list)
    kind: tf.Kind = "email"
    cache_hit: bool = False

    def outcome(self, action: str, contact_id: int = 0, ticket_id: int = 0) -> Outcome:
        return Outcome(
            action,
            self.channel_id,
            contact_id,
            ticket_id,
            self.calls,
            self.event.dry_run,
            self.cache_hit,
            message_id=self.event.message_id,
        )


@dataclass(frozen=True, slots=True)
class _Upsert:
    contact_id: int
    action: str
    name: str | None  # the name the contact now has, as far as the sidecar wrote or read it


class Delivery:
    """Delivers events; its state (``state``, from sidecar/state/) is given to it, and it talks only to
    that interface: it never knows which backend it has. ``scope`` (a hash of the token) keeps one
    token's contacts and results apart from another's in a shared store."""

    def __init__(
        self, config: Config, client: TrengoClient, state: State | None = None, scope: str = ""
    ) -> None:
        self.config = config
        self.client = client
        self.state: State = state if state is not None else open_state("memory:")
        self.scope = scope
        # In front of the store (the only copy with memory:), bounded as before: id and name per key.
        self.contacts: TTLCache[str, ContactRecord] = TTLCache(
            config.contact_cache_size, config.contact_cache_ttl_seconds
        )
        # the channel list: id -> Trengo type, with the time.monotonic() it was fetched
        self.channels: TTLCache[str, tuple[dict[int, str], float]] = TTLCache(
            1, config.channel_cache_ttl_seconds
        )
        self.idempotency = Idempotency(
            self.state, window_seconds=config.idempotency_window_seconds, scope=scope,
            dedup=config.enable_dedup,
        )
        self._flights: SingleFlight[tuple[str, str]] = SingleFlight()
        self.followups = FollowUps(config, client)

    @property
    def replays(self) -> int:
        return self.idempotency.replays

    async def aclose(self) -> None:
        self._flights.cancel_all()
        self.idempotency.cancel_all()
        self.followups.cancel()
        await self.client.aclose()

    # --- entry point ---------------------------------------------------------------

    async def deliver(self, event: Event, deadline: Deadline) -> Outcome:
        """Deliver once per message_id: a repeat within the window gets the first result back."""
        if not event.message_id or event.dry_run:
            return await self._deliver(event, deadline)
        work = lambda: self._deliver(event, deadline)  # noqa: E731
        return await self.idempotency.deliver(event.message_id, deadline, work)

    def check(self, event: Event) -> None:
        """Refuse, before any Trengo call, what ``deliver`` would refuse without one (Enqueue asks)."""
        if event.kind == "track":
            tf.template_for(event, self.config.event_templates)
        self._precheck_identifier(event)

    async def deliver_again(self, event: Event, deadline: Deadline) -> Outcome:
        """An operator asked for this event to be sent again: deliver it without giving back the result
        stored for its message_id (that one stays: a synchronous call with it still gets it back)."""
        return await self._deliver(event, deadline)

    async def _deliver(self, event: Event, deadline: Deadline) -> Outcome:
        template = tf.template_for(event, self.config.event_templates) if event.kind == "track" else None
        self._precheck_identifier(event)
        run = _Run(event, deadline, event.channel_id or self.config.channel_id)
        run.kind = await self._channel_kind(run)
        # Follow-ups (sidecar/followups.py): planned before the primary write, so that a name Trengo
        # lacks refuses the event before anything is written; sent after it.
        if template is not None:
            ticket_plan = await self.followups.plan_ticket(event, deadline, run.calls)
            ticket = await self._track(run, template)
            return await self.followups.finish_ticket(ticket_plan, ticket, deadline)
        contact_plan = await self.followups.plan_contact(event, deadline, run.calls)
        contact = await self._identify(run)
        return await self.followups.finish_contact(contact_plan, contact, deadline)

    def _precheck_identifier(self, event: Event) -> None:
        """Refuse an event with no usable identifier before any Trengo call."""
        if event.contact_id is not None:
            return
        configured = self.config.channel_identifier
        if configured in ("email", "phone"):
            tf.identifier(event, configured)  # type: ignore[arg-type]
        elif not event.email and not event.phone:
            tf.identifier(event, "email")

    # --- channels ------------------------------------------------------------------

    async def _channel_kind(self, run: _Run) -> tf.Kind:
        types = await self._channel_types(run)
        if run.channel_id not in types:
            raise FailedPrecondition(
                f"channel {run.channel_id} is not among the Trengo channels this token can see",
                reason="CHANNEL_NOT_FOUND",
            )
        return tf.identifier_kind(self.config.channel_identifier, run.channel_id, types[run.channel_id])

    async def _channel_types(self, run: _Run) -> dict[int, str]:
        """Channel id -> Trengo type, from the cache or one (shared) listing."""
        cached = self.channels.get("all")
        if cached is not None:
            types, listed_at = cached
            # A channel created since the last listing shows up on a fresh one; at most every
            # CHANNEL_RELIST_SECONDS, so events naming a wrong channel cannot burn the rate limit.
            if run.channel_id in types or time.monotonic() - listed_at < CHANNEL_RELIST_SECONDS:
                return types
        listed, _ = await self._shared(("channels", ""), lambda: self._list_channels(run), run.deadline)
        return listed

    async def list_channels(self, deadline: Deadline) -> dict[int, str]:
        """The channel list fresh from Trengo, into the cache: the readiness check's one call."""
        run = _Run(Event("identify"), deadline, self.config.channel_id)
        listed, _ = await self._shared(("channels", ""), lambda: self._list_channels(run), deadline)
        return listed

    async def _list_channels(self, run: _Run) -> dict[int, str]:
        types: dict[int, str] = {}
        for page in range(1, MAX_CHANNEL_PAGES + 1):
            call = tf.list_channels(page)
            answer = await self.client.send(call, run.deadline, run.calls)
            types.update({c["id"]: str(c.get("type") or "") for c in contact_list(call, answer)})
            if not has_next_page(answer):
                break
        self.channels.set("all", (types, time.monotonic()))
        return types

    # --- identify ------------------------------------------------------------------

    async def _identify(self, run: _Run) -> Outcome:
        event = run.event
        if event.contact_id is not None:
            return await self._update_known(run, event.contact_id, tf.identifier_or_none(event, run.kind))
        ident = tf.identifier(event, run.kind)
        if not self.config.enable_dedup:
            created = await self._create(run, ident)
            return run.outcome("create_contact", created.contact_id)
        key = tf.cache_key(ident, run.kind)
        record = await self._cached(key)
        if record is not None:
            run.cache_hit = True
            if not tf.writes_name(record.name, event.name, self.config.skip_unchanged_names):
                return run.outcome("none", record.contact_id)  # the name it has: nothing to send
            try:
                await self._rename(run, ident, record.contact_id)
                return run.outcome("update_contact", record.contact_id)
            except TrengoError as exc:
                if exc.status != 404:
                    raise
                await self._forget(key)  # deleted in Trengo behind our back: look it up again
                run.cache_hit = False
        if event.dry_run:  # a dry run must not share a real run's writes, nor lend it its own
            upsert, shared = await self._upsert(run, ident), False
        else:
            upsert, shared = await self._shared(
                ("upsert", key), lambda: self._fleet_upsert(run, ident, key), run.deadline
            )
        if shared and tf.writes_name(upsert.name, event.name):
            await self._rename(run, ident, upsert.contact_id)
            return run.outcome("update_contact", upsert.contact_id)
        return run.outcome(upsert.action if not shared else "none", upsert.contact_id)

    async def _fleet_upsert(self, run: _Run, ident: str, key: str) -> _Upsert:
        """The upsert under the store's lock for this person: one search and one create across every
        sidecar on the store. The holder reads the store again first: another may just have made it."""
        async with holding(self.state, self._scoped(key), run.deadline):
            record = await self._stored(key)
            if record is None:
                return await self._upsert(run, ident)
            run.cache_hit = True
            return await self._upsert(run, ident, found=record)

    async def _upsert(self, run: _Run, ident: str, found: ContactRecord | None = None) -> _Upsert:
        """Search, then update the one match or create the contact (a dry run: contact id 0); on
        e-mail channels the create comes first. ``found``: the store already had the contact."""
        if found is not None:
            return await self._rename_found(run, ident, found)
        if tf.creates_first(run.kind):
            return await self._create_first(run, ident)
        found = await self._search(run, ident)
        if found is None:
            created = await self._create(run, ident)
            return _Upsert(created.contact_id, "create_contact", created.name)
        return await self._rename_found(run, ident, found)

    async def _create_first(self, run: _Run, ident: str) -> _Upsert:
        """E-mail channels: the create answers with the contact, new or existing; rename it if need be."""
        try:
            created = await self._create(run, ident)
        except TrengoError as exc:
            if not tf.refused_as_existing(exc.status, exc.fields):
                raise
            found = await self._search(run, ident)  # "already exists": find it, as on phone channels
            if found is None:
                raise
            return await self._rename_found(run, ident, found)
        if not tf.writes_name(created.name, run.event.name):
            return _Upsert(created.contact_id, "create_contact", created.name)
        # An existing contact came back under another name.
        await self._rename(run, ident, created.contact_id)
        return _Upsert(created.contact_id, "update_contact", run.event.name)

    async def _rename_found(self, run: _Run, ident: str, found: ContactRecord) -> _Upsert:
        """A contact a search found: send the event's name unless it already has it."""
        if not tf.writes_name(found.name, run.event.name, self.config.skip_unchanged_names):
            return _Upsert(found.contact_id, "none", found.name)
        await self._rename(run, ident, found.contact_id)
        return _Upsert(found.contact_id, "update_contact", run.event.name)

    async def _rename(self, run: _Run, ident: str, contact_id: int) -> None:
        """Send the event's name; the cache then knows the contact by it (a dry run changes nothing)."""
        name = run.event.name or ""
        await self._write(run, tf.update_contact(contact_id, name))
        if not run.event.dry_run:
            await self._remember(run, ident, contact_id, name)

    async def _update_known(self, run: _Run, contact_id: int, ident: str | None) -> Outcome:
        """Identify with a trengoContactId: no search, update the name if there is one."""
        known = await self._cached(tf.cache_key(ident, run.kind)) if ident else None
        known_name = known.name if known is not None and known.contact_id == contact_id else None
        if not tf.writes_name(known_name, run.event.name, self.config.skip_unchanged_names):
            run.cache_hit = known_name is not None
            return run.outcome("none", contact_id)
        try:
            await self._write(run, tf.update_contact(contact_id, run.event.name or ""))
        except TrengoError as exc:
            if exc.status == 404:
                raise NotFound(f"trengoContactId {contact_id} does not exist in Trengo") from None
            raise
        if ident and not run.event.dry_run:  # Trengo just confirmed the id: the next event skips the search
            await self._remember(run, ident, contact_id, run.event.name)
        return run.outcome("update_contact", contact_id)

    async def _create(self, run: _Run, ident: str) -> ContactRecord:
        call = tf.create_contact(run.channel_id, ident, run.event.name)
        try:
            return await self._create_once(run, call, ident)
        except CutOff:
            raise  # shutting down: no search to settle it, the caller hears that it is unknown
        except OutcomeUnknown:
            # The answer was lost or unreadable; unlike a ticket, a contact can be looked for.
            found = await self._search(run, ident)
            if found is not None:
                return found
            return await self._create_once(run, call, ident)

    async def _create_once(self, run: _Run, call: tf.Call, ident: str) -> ContactRecord:
        answer = await self._write(run, call)
        if answer is None:  # a dry run: no id, and the name it would write
            return ContactRecord(0, run.event.name)
        # On an e-mail channel this may be an existing contact: its name is what Trengo answered.
        created = ContactRecord(record_id(call, answer), record_name(answer))
        await self._remember(run, ident, created.contact_id, created.name)
        return created

    # --- track ---------------------------------------------------------------------

    async def _track(self, run: _Run, template: Any) -> Outcome:
        event = run.event
        subject = tf.subject(event, template, run.kind)
        contact_id = event.contact_id
        key = ""
        if contact_id is None:
            ident = tf.identifier(event, run.kind)
            key = tf.cache_key(ident, run.kind)
            contact_id = await self._find_for_track(run, ident, key)
        try:
            ticket_id = await self._ticket(run, contact_id, subject)
        except TrengoError as exc:
            if not (run.cache_hit and exc.status == 422 and "contact_id" in exc.fields):
                raise
            # Trengo no longer knows the cached contact: drop it (for every sidecar), search once more, retry.
            await self._forget(key)
            run.cache_hit = False
            contact_id = await self._find_for_track(run, tf.identifier(event, run.kind), key)
            ticket_id = await self._ticket(run, contact_id, subject)
        return run.outcome("create_ticket", contact_id, ticket_id)

    async def _find_for_track(self, run: _Run, ident: str, key: str) -> int:
        cached = await self._cached(key)
        if cached is not None:
            run.cache_hit = True
            return cached.contact_id
        # An identify for this person may be creating the contact right now: use its answer.
        upsert, upserting = await self._joined(("upsert", key), run.deadline)
        if upserting:
            return int(upsert.contact_id)
        search = lambda: self._fleet_search(run, ident, key)  # noqa: E731
        found, _ = await self._shared(("find", key), search, run.deadline)
        if found is None:
            raise NotFound(
                f"no Trengo contact has this {run.kind}: send an identify first, or pass a trengoContactId",
                reason="CONTACT_NOT_FOUND",
            )
        return found.contact_id

    async def _ticket(self, run: _Run, contact_id: int, subject: str | None) -> int:
        call = tf.create_ticket(contact_id, run.channel_id, subject)
        answer = await self._write(run, call)
        return 0 if answer is None else record_id(call, answer)

    # --- shared steps ----------------------------------------------------------------

    async def _fleet_search(self, run: _Run, ident: str, key: str) -> ContactRecord | None:
        """A track's search, under the lock an identify creating this person elsewhere holds."""
        async with holding(self.state, self._scoped(key), run.deadline):
            record = await self._stored(key)
            if record is not None:
                run.cache_hit = True
                return record
            return await self._search(run, ident)

    async def _search(self, run: _Run, ident: str) -> ContactRecord | None:
        call = tf.search_contacts(ident)
        answer = await self.client.send(call, run.deadline, run.calls)
        found = tf.matching_record(contact_list(call, answer), ident, run.kind)
        if found is not None:
            await self._remember(run, ident, found.contact_id, found.name)
        return found

    async def _write(self, run: _Run, call: tf.Call) -> dict[str, Any] | None:
        """Send a write; a dry run only records it and answers None."""
        if run.event.dry_run:
            run.calls.append(self.client.record(call, dry_run=True))
            return None
        answer: dict[str, Any] = await self.client.send(call, run.deadline, run.calls)
        return answer

    async def _shared(
        self, key: tuple[str, str], work: Callable[[], Awaitable[T]], deadline: Deadline
    ) -> tuple[T, bool]:
        """Single flight, waited for no longer than this call's deadline."""
        try:
            return await self._flights.run(key, work, deadline.remaining())
        except FlightTimeout:
            raise busy() from None

    async def _joined(self, key: tuple[str, str], deadline: Deadline) -> tuple[Any, bool]:
        try:
            return await self._flights.join(key, deadline.remaining())
        except FlightTimeout:
            raise busy() from None

    # --- the contact store -------------------------------------------------------------------------

    async def _cached(self, key: str) -> ContactRecord | None:
        """The contact from the in-process front, else from a shared store (which fills the front)."""
        record = self.contacts.get(key)
        if record is None and self.state.shared:
            record = await self._stored(key)
            if record is not None:
                self.contacts.set(key, record)
        return record

    async def _stored(self, key: str) -> ContactRecord | None:
        """The store's record (None with memory:, whose only copy is the front). A store that cannot
        answer is a miss, at once: the caller then waits for the store's lock (or searches), so nothing
        is created twice, and the wait for the store happens in one place."""
        if not self.state.shared:
            return None
        try:
            return await self.state.get_contact(self._scoped(key))
        except StoreError:
            return None

    async def _remember(self, run: _Run, ident: str, contact_id: int, name: str | None) -> None:
        key = tf.cache_key(ident, run.kind)
        record = ContactRecord(contact_id, name)
        self.contacts.set(key, record)
        if self.state.shared:
            ttl = self.config.contact_cache_ttl_seconds
            try:  # a cache: Trengo has the contact whatever happens here
                await self.state.put_contact(self._scoped(key), record, ttl)
            except StoreError as exc:
                log.warning("a contact could not be stored: %s", exc.message)

    async def _forget(self, key: str) -> None:
        self.contacts.discard(key)
        if self.state.shared:
            try:
                await self.state.discard_contact(self._scoped(key))
            except StoreError as exc:
                log.warning("a stale contact could not be dropped from the store: %s", exc.message)

    def _scoped(self, key: str) -> str:
        return f"{self.scope}:contact:{key}"
