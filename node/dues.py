"""Due times written on tickets, and their clocks when read (pure).

``DueClock`` joins the contracts (tier terms) and the federation's regions (calendars) to
the ticket rules: at creation it adds ``response_due`` and ``resolution_due`` to the
operation's fields; on a change of state or priority it recomputes them from the history
the change leaves, so a finished pending-customer pause (or a stretch resolved before a
reopen) moves them later. A running pause moves nothing yet: its clock stands still
(``SlaStatus``) until it ends. Handoffs are not ticket changes, so they never touch a due.

A ticket without a tier has no dues. Everything takes the instant as an argument.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import replace
from datetime import datetime
from typing import Any

from federation.calendars import BusinessCalendar
from federation.config import RegionConfig
from node.contracts import Contracts, TierPolicy
from node.sla import SlaDue, SlaStatus, paused_intervals, sla_due, ticket_sla_status
from node.tickets import Role, State, StateChangeView, TicketView, Tier, parse_iso

RegionLookup = Callable[[str], RegionConfig]


class DueClock:
    def __init__(self, contracts: Contracts, region: RegionLookup) -> None:
        self.contracts = contracts
        self._region = region

    def terms(
        self, tier: str | Tier, priority: int, home: str
    ) -> tuple[TierPolicy, BusinessCalendar]:
        policy = self.contracts.tier(tier)
        return policy, policy.calendar_for(priority, self._region(home))

    def on_create(self, fields: Mapping[str, Any]) -> dict[str, str]:
        """The dues of a ticket about to be created with ``fields`` ({} without a tier)."""
        if not fields.get("tier"):
            return {}
        priority = int(fields["priority"])
        policy, calendar = self.terms(fields["tier"], priority, fields["home_region"])
        due = sla_due(policy, priority, calendar, parse_iso(fields["created_at"]))
        return due.to_json()

    def on_update(self, current: TicketView, fields: Mapping[str, Any]) -> dict[str, str]:
        """Dues that change with ``fields`` applied to ``current`` ({} when none do)."""
        if current.tier is None or not ("state" in fields or "priority" in fields):
            return {}
        priority = int(fields.get("priority", current.priority))
        history = current.history
        move = fields.get("transition")
        if move:
            history = (*history, _change(move))
        policy, calendar = self.terms(current.tier, priority, current.home_region)
        opened = parse_iso(current.created_at)
        due = sla_due(policy, priority, calendar, opened, paused_intervals(history)).to_json()
        old = {"response_due": current.response_due, "resolution_due": current.resolution_due}
        if current.first_response_at:
            del due["response_due"]  # answered: a later pause cannot move what was met
        return {k: v for k, v in due.items() if v != old[k]}

    def status(self, ticket: TicketView, now: datetime) -> SlaStatus | None:
        """Both clocks at ``now``, from the dues written on the ticket."""
        if ticket.tier is None or not ticket.response_due or not ticket.created_at:
            return None
        policy, calendar = self.terms(ticket.tier, ticket.priority, ticket.home_region)
        status = ticket_sla_status(
            ticket, policy, calendar, now, at_risk_fraction=self.contracts.at_risk_fraction
        )
        # What the ticket records is authoritative: it is what every region shows.
        written = SlaDue(parse_iso(ticket.response_due), parse_iso(ticket.resolution_due))
        return replace(status, due=written)


def _change(move: Mapping[str, Any]) -> StateChangeView:
    return StateChangeView(
        from_state=State(move["from"]),
        to_state=State(move["to"]),
        by=str(move.get("by", "")),
        role=Role(move.get("role", Role.AGENT)),
        at=str(move["at"]),
        region=str(move.get("region", "")),
        note=str(move.get("note", "")),
    )


__all__ = ["DueClock", "RegionLookup"]
