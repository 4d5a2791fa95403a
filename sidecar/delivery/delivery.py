"""Run an event's transformation against Trengo, using the caches.

Per event: check what can be checked without Trengo, learn the channel's
kind (cached), find the contact (cached, one search per new person even
under concurrency; on e-mail channels the create does the finding), then
write. Warm, a Track costs one Trengo call and an Identify one, or none when
the name is the one the sidecar knows; the reference destination spends two.
Finding, creating and renaming the contact are in contacts.py (``ContactFinder``,
which ``Delivery`` holds); the channels and the track path are here. ``Outcome`` is in outcome.py.
"""

from __future__ import annotations

import logging
import time
from dataclasses import replace

from ..config.load import Config
from ..deadline import Deadline
from ..errors import FailedPrecondition, InvalidArgument, NotFound
from ..plan import phones
from ..plan import transform as tf
from ..plan.events import Event
from ..plan.plan import Plan, channel_of, plan_event
from ..state import ContactRecord, State, open_state
from ..trengo_api.answers import TrengoError, contact_list, has_next_page, record_id
from ..trengo_api.client import TrengoClient
from .cache import SingleFlight, TTLCache
from .contacts import ContactFinder
from .followups import FollowUps
from .idempotency import Idempotency
from .outcome import Outcome, Run

log = logging.getLogger("sidecar")
MAX_CHANNEL_PAGES = 40  # 1,000 channels: more than any Trengo account we have seen
CHANNEL_RELIST_SECONDS = 30.0


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
        self.finder = ContactFinder(config, client, self.state, scope, self.contacts, self._flights)
        self.followups = FollowUps(config, client)
        self._region_warned = False

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
        event = self.normalise(event)
        if not event.message_id or event.dry_run:
            return await self._deliver(event, deadline)
        work = lambda: self._deliver(event, deadline)  # noqa: E731
        return await self.idempotency.deliver(event.message_id, deadline, work)

    def check(self, event: Event) -> Event:
        """Refuse, before any Trengo call, what ``deliver`` would refuse without one (Enqueue asks);
        the event as it is delivered (its phone in E.164 with a region: the queue's person key)."""
        if event.kind == "track":
            tf.template_for(event, self.config.event_templates)
        event = self.normalise(event)
        self._precheck_identifier(event)
        return event

    def normalise(self, event: Event, strict: bool = False) -> Event:
        """The event with its phone in E.164 when defaultPhoneRegion is set (sidecar/plan/phones.py).

        An impossible number is INVALID_ARGUMENT when the phone is what the channel needs (``strict``,
        or channelIdentifier phone); on other channels the number is kept as given, unused.
        """
        region = self.config.default_phone_region
        if not region or not event.phone:
            return event
        strict = strict or self.config.channel_identifier == "phone"
        try:
            return replace(event, phone=phones.e164(event.phone, region, event.phone_field or "traits.phone"))
        except InvalidArgument:
            if strict:
                raise
            return event

    async def deliver_again(self, event: Event, deadline: Deadline) -> Outcome:
        """An operator asked for this event to be sent again: deliver it without giving back the result
        stored for its message_id (that one stays: a synchronous call with it still gets it back)."""
        return await self._deliver(event, deadline)

    async def _deliver(self, event: Event, deadline: Deadline) -> Outcome:
        if event.kind == "track":  # refused before any Trengo call, as check() does
            tf.template_for(event, self.config.event_templates)
        self._precheck_identifier(event)
        run = Run(event, deadline, channel_of(event, self.config))
        run.kind = await self._channel_kind(run)
        if run.kind == "phone":  # now the phone is needed: an impossible one is refused before any write
            run.event = event = self.normalise(event, strict=True)
        # Plan once (sidecar/plan/plan.py, pure), then only execute it.
        plan = run.plan = plan_event(event, self.config, run.kind)
        # Follow-ups (sidecar/delivery/followups.py): their names resolved before the primary write, so
        # that a name Trengo lacks refuses the event before anything is written; sent after it.
        if event.kind == "track":
            ticket_plan = await self.followups.plan_ticket(plan, deadline, run.calls)
            ticket = await self._track(run, plan)
            return await self.followups.finish_ticket(ticket_plan, ticket, deadline)
        contact_plan = await self.followups.plan_contact(plan, deadline, run.calls)
        contact = await self.finder.identify(run, plan.identifier)
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

    async def _channel_kind(self, run: Run) -> tf.Kind:
        types = await self._channel_types(run)
        if run.channel_id not in types:
            raise FailedPrecondition(
                f"channel {run.channel_id} is not among the Trengo channels this token can see",
                reason="CHANNEL_NOT_FOUND",
            )
        kind = tf.identifier_kind(self.config.channel_identifier, run.channel_id, types[run.channel_id])
        if kind == "phone":
            self._warn_without_region()
        return kind

    def _warn_without_region(self) -> None:
        """Once per process: a phone channel with no defaultPhoneRegion keeps the reference's behaviour."""
        if self._region_warned or self.config.default_phone_region:
            return
        self._region_warned = True
        log.warning(
            "a phone channel is in use and defaultPhoneRegion (TRENGO_DEFAULT_PHONE_REGION) is not set: "
            "phone numbers are searched and created exactly as events spell them, so '06 12345678' and "
            "'+31 6 12345678' can become two contacts; set it (e.g. NL) to read numbers without a country "
            "code in that region and keep one contact per E.164 number"
        )

    async def _channel_types(self, run: Run) -> dict[int, str]:
        """Channel id -> Trengo type, from the cache or one (shared) listing."""
        cached = self.channels.get("all")
        if cached is not None:
            types, listed_at = cached
            # A channel created since the last listing shows up on a fresh one; at most every
            # CHANNEL_RELIST_SECONDS, so events naming a wrong channel cannot burn the rate limit.
            if run.channel_id in types or time.monotonic() - listed_at < CHANNEL_RELIST_SECONDS:
                return types
        listed, _ = await self.finder.shared(("channels", ""), lambda: self._list_channels(run), run.deadline)
        return listed

    async def list_channels(self, deadline: Deadline) -> dict[int, str]:
        """The channel list fresh from Trengo, into the cache: the readiness check's one call."""
        run = Run(Event("identify"), deadline, self.config.channel_id)
        listed, _ = await self.finder.shared(("channels", ""), lambda: self._list_channels(run), deadline)
        return listed

    async def _list_channels(self, run: Run) -> dict[int, str]:
        types: dict[int, str] = {}
        for page in range(1, MAX_CHANNEL_PAGES + 1):
            call = tf.list_channels(page)
            answer = await self.client.send(call, run.deadline, run.calls)
            types.update({c["id"]: str(c.get("type") or "") for c in contact_list(call, answer)})
            if not has_next_page(answer):
                break
        self.channels.set("all", (types, time.monotonic()))
        if tf.channel_kind(types.get(self.config.channel_id, "")) == "phone":
            self._warn_without_region()  # at start: the readiness check lists the channels
        return types

    # --- track ---------------------------------------------------------------------

    async def _track(self, run: Run, plan: Plan) -> Outcome:
        subject, ident = plan.subject, plan.identifier
        contact_id = run.event.contact_id
        key = ""
        if contact_id is None:
            key = self.finder.key(ident, run.kind)
            contact_id = await self._find_for_track(run, ident, key)
        try:
            ticket_id = await self._ticket(run, contact_id, subject)
        except TrengoError as exc:
            if not (run.cache_hit and exc.status == 422 and "contact_id" in exc.fields):
                raise
            # Trengo no longer knows the cached contact: drop it (for every sidecar), search once more, retry.
            await self.finder.forget(key)
            run.cache_hit = False
            contact_id = await self._find_for_track(run, ident, key)
            ticket_id = await self._ticket(run, contact_id, subject)
        return run.outcome("create_ticket", contact_id, ticket_id)

    async def _find_for_track(self, run: Run, ident: str, key: str) -> int:
        cached = await self.finder.cached(key)
        if cached is not None:
            run.cache_hit = True
            return cached.contact_id
        # An identify for this person may be creating the contact right now: use its answer.
        upsert, upserting = await self.finder.joined(("upsert", key), run.deadline)
        if upserting:
            return int(upsert.contact_id)
        search = lambda: self.finder.fleet_search(run, ident, key)  # noqa: E731
        found, _ = await self.finder.shared(("find", key), search, run.deadline)
        if found is None:
            raise NotFound(
                f"no Trengo contact has this {run.kind}: send an identify first, or pass a trengoContactId",
                reason="CONTACT_NOT_FOUND",
            )
        return found.contact_id

    async def _ticket(self, run: Run, contact_id: int, subject: str | None) -> int:
        call = tf.create_ticket(contact_id, run.channel_id, subject)
        answer = await self.finder.write(run, call)
        return 0 if answer is None else record_id(call, answer)
