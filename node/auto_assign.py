"""The owner's auto-assignment: a new ticket with a contract in a queue this node owns
goes to the least-loaded qualified engineer of this region (the one working now), with a
second engineer when the tier requires one.

It runs from the SLA scan (``SlaMonitor``) under the same owner epoch, which it writes on
the ticket (``assigned_epoch``). The write checks the ticket is still unassigned, so a
person who assigned it meanwhile, or the next owner after a handoff, wins and nothing is
assigned twice.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import datetime
from typing import Any

from opentelemetry.trace import Tracer

from federation.operations import TICKET_UPDATE
from node import rules
from node.contracts import Contracts
from node.errors import FailedPrecondition
from node.roster import Roster
from node.sqlite_store import SqliteTicketStore
from node.tickets import Role, State, TicketView
from ops.metrics import Metrics

log = logging.getLogger("sundesk.assign")
ACTOR = "auto-assign"


class TakenMeanwhile(FailedPrecondition):
    pass


class AutoAssigner:
    def __init__(
        self,
        region: str,
        store: SqliteTicketStore,
        contracts: Contracts,
        roster: Roster,
        engineers_load: Callable[[], dict[str, int]],
        metrics: Metrics,
        tracer: Tracer,
    ) -> None:
        self._region = region
        self._store = store
        self._contracts = contracts
        self._roster = roster
        self._count_load = engineers_load
        self._metrics = metrics
        self._tracer = tracer
        self._load: dict[str, int] | None = None

    def start_scan(self) -> None:
        """Forget the engineers' load: it is counted again, once, when first needed."""
        self._load = None

    async def __call__(self, view: TicketView, epoch: int) -> TicketView | None:
        if view.state != State.NEW or view.assignee or view.tier is None:
            return None
        policy = self._contracts.tier(view.tier)
        if self._load is None:
            self._load = self._count_load()
        load = self._load
        lead = self._roster.pick(policy, self._region, load)
        if lead is None:
            return None  # nobody qualified here: it waits for a person or the next owner
        second = ""
        if policy.second_engineer:
            partner = self._roster.pick(policy, self._region, load, exclude=[lead.name])
            second = partner.name if partner is not None else ""
        region = self._region
        change = rules.TicketChange(
            actor=ACTOR,
            role=Role.SYSTEM,
            assignee=lead.name,
            second_engineer=second or None,
            note=f"auto-assigned by the {region} owner (epoch {epoch})",
        )

        def build(current: TicketView | None, now: datetime) -> tuple[str, dict[str, Any]]:
            assert current is not None
            if current.assignee or current.state != State.NEW:
                raise TakenMeanwhile(f"{current.code} was assigned meanwhile")
            fields = rules.update_fields(current, change, region, now)
            fields["assigned_epoch"] = epoch
            return TICKET_UPDATE, fields

        attributes: dict[str, str | int] = {
            "sundesk.ticket": view.code,
            "sundesk.queue": view.queue,
            "sundesk.epoch": epoch,
        }
        with self._tracer.start_as_current_span("ticket.auto_assign", attributes=attributes):
            try:
                after, _ = await self._store.write(view.code, build)
            except TakenMeanwhile:
                return None
        for name in (lead.name, second):
            if name:
                load[name] = load.get(name, 0) + 1  # the next pick of this scan sees it
        self._metrics.auto_assignments_total.labels(queue=view.queue, tier=view.tier.value).inc()
        log.info("%s assigned to %s (second: %s), epoch %d", view.code, lead.name, second, epoch)
        return after
