"""The follow-up writes after an event's primary write: a ticket's note and labels, a contact's fields.

What to write is in the event's plan (sidecar/plan/plan.py: the note rendered, the labels and custom
field values); this module finds the ids Trengo gives the names and sends the writes. ``Delivery``
calls ``plan_*`` before the primary write, so that a label or custom field name Trengo does not
have fails the event before anything is written, and ``finish_*`` after it. The
primary write decides the call's status; a follow-up runs within the same deadline and rate limit,
is retried like any call (``TrengoClient.send``), and one that still fails is reported in the
outcome's ``failed_followups`` rather than failing the call: the ticket or contact exists.

Label and custom field lists are cached like the channel list. Custom field values written are
remembered per contact for the contact cache's lifetime, in this process only (a restart, or a
second sidecar with the same token, writes them once more: harmless, it spends one call).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from ..config.load import Config
from ..deadline import Deadline
from ..errors import SidecarError, Unavailable
from ..plan import followup_plan as fp
from ..plan.plan import Plan
from ..plan.transform import Call
from ..trengo_api.answers import contact_list, has_next_page
from ..trengo_api.client import TrengoClient
from ..trengo_api.records import CallRecord
from .cache import FlightTimeout, SingleFlight, TTLCache
from .outcome import Outcome

MAX_PAGES = 40  # 1,000 labels or custom fields
RELIST_SECONDS = 30.0  # a name missing from the cached list is looked for again at most this often
_LISTS = {
    "label": fp.list_labels,
    "custom_field": fp.list_custom_fields,
    "team": fp.list_teams,
    "user": fp.list_users,
}
_INDEX = {
    "label": fp.label_index, "custom_field": fp.field_index, "team": fp.team_index, "user": fp.user_index,
}


@dataclass(frozen=True, slots=True)
class TicketPlan:
    note: str | None
    labels: list[tuple[str, int]]
    assign: tuple[str, str, int] | None = None  # (team or user, as the config named it, Trengo's id)


class FollowUps:
    """The follow-ups of one sidecar: its label and custom field lists, and the values it wrote."""

    def __init__(self, config: Config, client: TrengoClient) -> None:
        self.config = config
        self.client = client
        ttl = config.channel_cache_ttl_seconds
        # kind -> (name -> id, the time.monotonic() it was listed)
        self.lists: dict[str, TTLCache[str, tuple[dict[str, int], float]]] = {
            kind: TTLCache(1, ttl) for kind in _LISTS
        }
        # (contact id, custom field id) -> the value last written there, for the contact cache's lifetime
        fields = max(1, len(config.custom_field_map))
        self.written: TTLCache[tuple[int, int], str] = TTLCache(
            config.contact_cache_size * fields, config.contact_cache_ttl_seconds
        )
        self._flights: SingleFlight[str] = SingleFlight()

    # --- a track's ticket -------------------------------------------------------------

    async def plan_ticket(self, plan: Plan, deadline: Deadline, calls: list[CallRecord]) -> TicketPlan | None:
        """The plan's note, and the ids of its labels and assignee (Trengo's lists, cached)."""
        labels = await self._resolve("label", plan.labels, deadline, calls) if plan.labels else []
        assign = None
        if plan.assign_to is not None:  # resolved before the ticket exists: an unknown name writes nothing
            kind = plan.assign_to.kind
            [(target, target_id)] = await self._resolve(kind, [plan.assign_to.target], deadline, calls)
            assign = (kind, target, target_id)
        return TicketPlan(plan.note, labels, assign) if plan.note or labels or assign else None

    async def finish_ticket(self, plan: TicketPlan | None, outcome: Outcome, deadline: Deadline) -> Outcome:
        if plan is not None and outcome.action == "create_ticket":
            planned = fp.ticket_followups(outcome.ticket_id, plan.note, plan.labels, plan.assign)
            failures = await self._send(planned, deadline, outcome)
            outcome.failed_followups += failures
            if plan.assign is not None:
                kind, target, target_id = plan.assign
                landed = not outcome.dry_run and not any(f.kind == "assign" for f in failures)
                outcome.assignment = fp.Assignment(kind, target, target_id, landed)
        return outcome

    # --- an identify's contact ----------------------------------------------------------

    async def plan_contact(
        self, plan: Plan, deadline: Deadline, calls: list[CallRecord]
    ) -> list[tuple[fp.FieldValue, int]]:
        """The plan's custom field values, with their fields' ids (Trengo's list, cached)."""
        values = plan.custom_fields
        if not values:
            return []
        ids = await self._resolve("custom_field", [v.mapping.field for v in values], deadline, calls)
        return [(value, field_id) for value, (_, field_id) in zip(values, ids, strict=True)]

    async def finish_contact(
        self, plan: list[tuple[fp.FieldValue, int]], outcome: Outcome, deadline: Deadline
    ) -> Outcome:
        if plan and (outcome.contact_id > 0 or outcome.dry_run):
            planned = fp.field_followups(outcome.contact_id, plan, self._written)
            outcome.failed_followups += await self._send(planned, deadline, outcome)
        return outcome

    def _written(self, contact_id: int, field_id: int) -> str | None:
        return self.written.get((contact_id, field_id))

    # --- sending --------------------------------------------------------------------------

    async def _send(
        self, planned: Sequence[fp.FollowUp], deadline: Deadline, outcome: Outcome
    ) -> list[fp.FollowUpFailure]:
        """Each follow-up in order; one that fails after its retries is reported, the others still go."""
        failures: list[fp.FollowUpFailure] = []
        for followup in planned:
            if outcome.dry_run:
                outcome.calls.append(self.client.record(followup.call, dry_run=True))
                continue
            try:
                if followup.kind == "custom_field":
                    await self._set_field(followup, deadline, outcome)
                else:
                    await self.client.send(followup.call, deadline, outcome.calls)
            except SidecarError as exc:
                failures.append(fp.FollowUpFailure(followup.kind, followup.target, exc.reason, exc.message))
        return failures

    async def _set_field(self, followup: fp.FollowUp, deadline: Deadline, outcome: Outcome) -> None:
        """One write of a value, remembered once it landed; concurrent identifies of one person that
        bring the same value share the write in flight (the call is in the first one's requests)."""
        key = (outcome.contact_id, _field_id(followup.call))

        async def write() -> None:
            await self.client.send(followup.call, deadline, outcome.calls)
            self.written.set(key, followup.value or "")

        try:
            await self._flights.run(f"field {key} {followup.value}", write, deadline.remaining())
        except FlightTimeout:
            raise _busy("custom field write") from None

    # --- names --------------------------------------------------------------------------

    async def _resolve(
        self, kind: str, targets: Sequence[fp.Target], deadline: Deadline, calls: list[CallRecord]
    ) -> list[tuple[str, int]]:
        names = [fp.lookup_name(name, kind) for name in fp.names_in(targets)]
        index = await self._index(kind, names, deadline, calls) if names else {}
        return fp.resolve(targets, index, kind)

    async def _index(
        self, kind: str, names: list[str], deadline: Deadline, calls: list[CallRecord]
    ) -> dict[str, int]:
        """Name -> id, from the cache or one (shared) listing; listed again for a name it lacks, but
        at most every RELIST_SECONDS, so a misspelt name in the config cannot burn the rate limit."""
        cached = self.lists[kind].get("all")
        if cached is not None:
            index, listed_at = cached
            if not fp.missing(names, index) or time.monotonic() - listed_at < RELIST_SECONDS:
                return index
        try:
            index, _ = await self._flights.run(
                kind, lambda: self._list(kind, deadline, calls), deadline.remaining()
            )
        except FlightTimeout:
            raise _busy(f"listing of Trengo's {kind}s") from None
        return index

    async def _list(self, kind: str, deadline: Deadline, calls: list[CallRecord]) -> dict[str, int]:
        records: list[dict[str, Any]] = []
        for page in range(1, MAX_PAGES + 1):
            call = _LISTS[kind](page)
            answer = await self.client.send(call, deadline, calls)
            records += contact_list(call, answer)
            if not has_next_page(answer):
                break
        index = _INDEX[kind](records)
        self.lists[kind].set("all", (index, time.monotonic()))
        return index

    def cancel(self) -> None:
        self._flights.cancel_all()


def _busy(what: str) -> Unavailable:
    return Unavailable(f"a concurrent {what} did not finish before this call's deadline", retry_after=1.0)


def _field_id(call: Call) -> int:
    return int((call.body or {})["custom_field_id"])
