"""Find, create or rename the event's Trengo contact, through the contact cache and the store.

One job apart from delivery.py: everything that reaches a contact, the identify path (search, create,
rename, with the store's lock so one person is created once across the fleet) and the contact cache in
front of the store. ``Delivery`` holds a ``ContactFinder`` (composition, not a mixin); its track and
channel paths use the shared steps kept here too (``fleet_search``, ``write``, ``shared``), which the
identify path is the main user of.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from ..config.load import Config
from ..deadline import Deadline
from ..errors import NotFound, StoreError
from ..plan import phones
from ..plan import transform as tf
from ..state import ContactRecord, State
from ..state.waiting import busy, holding
from ..trengo_api.answers import CutOff, OutcomeUnknown, TrengoError, contact_list, record_id, record_name
from ..trengo_api.client import TrengoClient
from .cache import FlightTimeout, SingleFlight, TTLCache
from .outcome import Outcome, Run

T = TypeVar("T")
log = logging.getLogger("sidecar")


@dataclass(frozen=True, slots=True)
class _Upsert:
    contact_id: int
    action: str
    name: str | None  # the name the contact now has, as far as the sidecar wrote or read it


class ContactFinder:
    """The contact steps ``Delivery`` holds; it shares with them its contact cache and its flights."""

    def __init__(
        self,
        config: Config,
        client: TrengoClient,
        state: State,
        scope: str,
        contacts: TTLCache[str, ContactRecord],
        flights: SingleFlight[tuple[str, str]],
    ) -> None:
        self.config = config
        self.client = client
        self.state = state
        self.scope = scope
        self.contacts = contacts
        self._flights = flights

    # --- identify ------------------------------------------------------------------

    async def identify(self, run: Run, ident: str) -> Outcome:
        """An identify, with the identifier its plan holds ("" only beside a trengoContactId)."""
        event = run.event
        if event.contact_id is not None:
            return await self._update_known(run, event.contact_id, ident or None)
        if not self.config.enable_dedup:
            created = await self._create(run, ident)
            return run.outcome("create_contact", created.contact_id)
        key = self.key(ident, run.kind)
        record = await self.cached(key)
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
                await self.forget(key)  # deleted in Trengo behind our back: look it up again
                run.cache_hit = False
        if event.dry_run:  # a dry run must not share a real run's writes, nor lend it its own
            upsert, shared = await self._upsert(run, ident), False
        else:
            upsert, shared = await self.shared(
                ("upsert", key), lambda: self._fleet_upsert(run, ident, key), run.deadline
            )
        if shared and tf.writes_name(upsert.name, event.name):
            await self._rename(run, ident, upsert.contact_id)
            return run.outcome("update_contact", upsert.contact_id)
        return run.outcome(upsert.action if not shared else "none", upsert.contact_id)

    async def _fleet_upsert(self, run: Run, ident: str, key: str) -> _Upsert:
        """The upsert under the store's lock for this person: one search and one create across every
        sidecar on the store. The holder reads the store again first: another may just have made it."""
        async with holding(self.state, self._scoped(key), run.deadline):
            record = await self._stored(key)
            if record is None:
                return await self._upsert(run, ident)
            run.cache_hit = True
            return await self._upsert(run, ident, found=record)

    async def _upsert(self, run: Run, ident: str, found: ContactRecord | None = None) -> _Upsert:
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

    async def _create_first(self, run: Run, ident: str) -> _Upsert:
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

    async def _rename_found(self, run: Run, ident: str, found: ContactRecord) -> _Upsert:
        """A contact a search found: send the event's name unless it already has it."""
        if not tf.writes_name(found.name, run.event.name, self.config.skip_unchanged_names):
            return _Upsert(found.contact_id, "none", found.name)
        await self._rename(run, ident, found.contact_id)
        return _Upsert(found.contact_id, "update_contact", run.event.name)

    async def _rename(self, run: Run, ident: str, contact_id: int) -> None:
        """Send the event's name; the cache then knows the contact by it (a dry run changes nothing)."""
        name = run.event.name or ""
        await self.write(run, tf.update_contact(contact_id, name))
        if not run.event.dry_run:
            await self._remember(run, ident, contact_id, name)

    async def _update_known(self, run: Run, contact_id: int, ident: str | None) -> Outcome:
        """Identify with a trengoContactId: no search, update the name if there is one."""
        known = await self.cached(self.key(ident, run.kind)) if ident else None
        known_name = known.name if known is not None and known.contact_id == contact_id else None
        if not tf.writes_name(known_name, run.event.name, self.config.skip_unchanged_names):
            run.cache_hit = known_name is not None
            return run.outcome("none", contact_id)
        try:
            await self.write(run, tf.update_contact(contact_id, run.event.name or ""))
        except TrengoError as exc:
            if exc.status == 404:
                raise NotFound(f"trengoContactId {contact_id} does not exist in Trengo") from None
            raise
        if ident and not run.event.dry_run:  # Trengo just confirmed the id: the next event skips the search
            await self._remember(run, ident, contact_id, run.event.name)
        return run.outcome("update_contact", contact_id)

    async def _create(self, run: Run, ident: str) -> ContactRecord:
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

    async def _create_once(self, run: Run, call: tf.Call, ident: str) -> ContactRecord:
        answer = await self.write(run, call)
        if answer is None:  # a dry run: no id, and the name it would write
            return ContactRecord(0, run.event.name)
        # On an e-mail channel this may be an existing contact: its name is what Trengo answered.
        created = ContactRecord(record_id(call, answer), record_name(answer))
        await self._remember(run, ident, created.contact_id, created.name)
        return created

    # --- shared steps ----------------------------------------------------------------

    async def fleet_search(self, run: Run, ident: str, key: str) -> ContactRecord | None:
        """A track's search, under the lock an identify creating this person elsewhere holds."""
        async with holding(self.state, self._scoped(key), run.deadline):
            record = await self._stored(key)
            if record is not None:
                run.cache_hit = True
                return record
            return await self._search(run, ident)

    async def _search(self, run: Run, ident: str) -> ContactRecord | None:
        region = self._region(run.kind)
        call = tf.search_contacts(phones.search_term(ident) if region else ident)
        answer = await self.client.send(call, run.deadline, run.calls)
        found = tf.matching_record(contact_list(call, answer), ident, run.kind, region)
        if found is not None:
            await self._remember(run, ident, found.contact_id, found.name)
        return found

    async def write(self, run: Run, call: tf.Call) -> dict[str, Any] | None:
        """Send a write; a dry run only records it and answers None."""
        if run.event.dry_run:
            run.calls.append(self.client.record(call, dry_run=True))
            return None
        answer: dict[str, Any] = await self.client.send(call, run.deadline, run.calls)
        return answer

    async def shared(
        self, key: tuple[str, str], work: Callable[[], Awaitable[T]], deadline: Deadline
    ) -> tuple[T, bool]:
        """Single flight, waited for no longer than this call's deadline."""
        try:
            return await self._flights.run(key, work, deadline.remaining())
        except FlightTimeout:
            raise busy() from None

    async def joined(self, key: tuple[str, str], deadline: Deadline) -> tuple[Any, bool]:
        try:
            return await self._flights.join(key, deadline.remaining())
        except FlightTimeout:
            raise busy() from None

    # --- the contact store -------------------------------------------------------------------------

    async def cached(self, key: str) -> ContactRecord | None:
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

    async def _remember(self, run: Run, ident: str, contact_id: int, name: str | None) -> None:
        key = self.key(ident, run.kind)
        record = ContactRecord(contact_id, name)
        self.contacts.set(key, record)
        if self.state.shared:
            ttl = self.config.contact_cache_ttl_seconds
            try:  # a cache: Trengo has the contact whatever happens here
                await self.state.put_contact(self._scoped(key), record, ttl)
            except StoreError as exc:
                log.warning("a contact could not be stored: %s", exc.message)

    async def forget(self, key: str) -> None:
        self.contacts.discard(key)
        if self.state.shared:
            try:
                await self.state.discard_contact(self._scoped(key))
            except StoreError as exc:
                log.warning("a stale contact could not be dropped from the store: %s", exc.message)

    def _scoped(self, key: str) -> str:
        return f"{self.scope}:contact:{key}"

    def _region(self, kind: tf.Kind) -> str:
        """defaultPhoneRegion on a phone channel (the event's phone is then E.164), else ""."""
        return self.config.default_phone_region if kind == "phone" else ""

    def key(self, ident: str, kind: tf.Kind) -> str:
        """The person: its cache and store key, and its lock's name (phones.cache_key with a region)."""
        return phones.cache_key(ident) if self._region(kind) else tf.cache_key(ident, kind)
