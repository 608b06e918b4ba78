"""The owner's SLA watch: every period, for each queue this node owns under a valid
epoch, find open tickets whose targets are at risk or missed and record the events
(``node.breaches``) as replicated operations, then count them.

Only the owner acts: each queue is scanned after ``owner_action`` returned its epoch (a
lost lease, an unsure handoff or a newer epoch seen make it refuse), and the epoch
travels in the record and on the ticket, where a newer one already there wins. The
events are idempotent, so a scan repeated by the next owner after a handoff writes
nothing new; the counters move only on the node whose write recorded the event.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import datetime
from typing import Any, Protocol

from opentelemetry.trace import Tracer

from federation.merge import ReplicatedTicket
from federation.operations import TICKET_UPDATE
from node.breaches import (
    BREACH_PREFIX,
    BREACH_RECORD,
    MAX_LEVEL,
    AlreadyRecorded,
    SlaEvent,
    detect,
    record_fields,
    ticket_fields,
)
from node.dues import DueClock
from node.errors import FailedPrecondition, SundeskError
from node.sla import AT_RISK, BREACHED
from node.slices import sliced
from node.sqlite_store import SqliteTicketStore
from node.store import TicketFilter, every_ticket
from node.tickets import OPEN_STATES, TicketView
from ops.metrics import Metrics

log = logging.getLogger("sundesk.sla")


class QueueStatusLike(Protocol):
    @property
    def queue(self) -> str: ...

    @property
    def mine(self) -> bool: ...


class QueueOwner(Protocol):
    """What the monitor needs from the follow-the-sun coordinator."""

    def status(self) -> Sequence[QueueStatusLike]: ...

    async def owner_action(self, queue: str, action_name: str) -> int: ...


class OwnedTicketWork(Protocol):
    """Other owner-only work on each open ticket of an owned queue (auto-assignment)."""

    def start_scan(self) -> None: ...

    async def __call__(self, view: TicketView, epoch: int) -> TicketView | None: ...


class SlaMonitor:
    def __init__(
        self,
        region: str,
        store: SqliteTicketStore,
        dues: DueClock,
        owner: Callable[[], QueueOwner | None],
        now: Callable[[], datetime],
        metrics: Metrics,
        tracer: Tracer,
        change_carrier: Callable[[Mapping[str, str]], dict[str, str]] | None = None,
        on_owned_ticket: OwnedTicketWork | None = None,
    ) -> None:
        self._region = region
        self._store = store
        self._dues = dues
        self._owner = owner
        self._now = now
        self._metrics = metrics
        self._tracer = tracer
        self._carrier = change_carrier
        # Other owner-only work per open ticket (auto-assignment), under the same epoch.
        self._on_owned = on_owned_ticket

    async def run(self, period: float) -> None:
        while True:
            try:
                await self.scan()
            except SundeskError as exc:
                log.warning("SLA scan stopped early: %s", exc)
            await asyncio.sleep(period)

    async def scan(self) -> list[SlaEvent]:
        """One pass over the owned queues; returns the events this node recorded."""
        owner = self._owner()
        if owner is None:
            return []
        recorded: list[SlaEvent] = []
        if self._on_owned is not None:
            self._on_owned.start_scan()
        with self._metrics.sla_scan_seconds.time():
            for st in owner.status():
                if not st.mine:
                    continue
                try:
                    epoch = await owner.owner_action(st.queue, "watch SLAs")
                except FailedPrecondition:
                    continue  # lost it since status(): the next owner scans
                recorded += await self._scan_queue(st.queue, epoch)
        return recorded

    async def _scan_queue(self, queue: str, epoch: int) -> list[SlaEvent]:
        now = self._now()
        recorded: list[SlaEvent] = []
        at_risk = {"response": 0, "resolution": 0}
        async for view in sliced(self._open(queue)):
            if self._on_owned is not None:
                view = await self._on_owned(view, epoch) or view
            status = self._dues.status(view, now)
            if status is None:
                continue
            for target, state in (("response", status.response), ("resolution", status.resolution)):
                at_risk[target] += state == AT_RISK
            for event in detect(view, status):
                if await self._record(event, view, epoch):
                    recorded.append(event)
        for target, count in at_risk.items():
            self._metrics.sla_at_risk.labels(queue=queue, target=target).set(count)
        return recorded

    def _open(self, queue: str) -> Iterable[TicketView]:
        # Only tickets under a contract have SLA clocks or an owner to auto-assign them: an
        # index column, so walk-in tickets cost the scan nothing.
        flt = TicketFilter(states=tuple(OPEN_STATES), queue=queue, tiered=True)
        return every_ticket(self._store, flt)

    async def _record(self, event: SlaEvent, view: TicketView, epoch: int) -> bool:
        attributes: dict[str, str | int] = {
            "sundesk.ticket": event.code,
            "sundesk.queue": event.queue,
            "sundesk.sla.target": event.target,
            "sundesk.sla.state": event.state,
            "sundesk.epoch": epoch,
        }
        with self._tracer.start_as_current_span("sla.event", attributes=attributes) as span:
            region = self._region
            level = min(max(view.escalation_level, event.level), MAX_LEVEL)

            # The record first: if the node stops between the two writes, the ticket is
            # still unrecorded and the next scan (here or at the next owner) finishes.
            def record(current: ReplicatedTicket | None, now: datetime) -> Any:
                if current is not None and "id" in current.values:
                    return None  # first write wins
                return BREACH_RECORD, record_fields(event, epoch, region, now, level)

            await self._store.write_record(event.id, record, self._trace(view))

            def build(current: TicketView | None, now: datetime) -> tuple[str, dict[str, Any]]:
                assert current is not None
                return TICKET_UPDATE, ticket_fields(current, event, epoch, region, now)

            try:
                after, _ = await self._store.write(event.code, build, self._trace(view))
            except AlreadyRecorded:
                span.set_attribute("sundesk.sla.duplicate", True)
                return False
            except FailedPrecondition as exc:
                log.info("%s", exc)  # a newer epoch acted on it: this one lost
                return False
        labels = {"queue": event.queue, "tier": event.tier, "target": event.target}
        if event.state == BREACHED:
            self._metrics.sla_breaches_total.labels(**labels).inc()
        else:
            self._metrics.sla_at_risk_total.labels(**labels).inc()
        if after.escalation_level != view.escalation_level:
            self._metrics.escalations_total.labels(level=f"L{after.escalation_level}").inc()
        log.info(
            "%s: %s %s (due %s), L%d, epoch %d",
            event.code,
            event.target,
            event.state,
            event.due,
            after.escalation_level,
            epoch,
        )
        return True

    def _trace(self, view: TicketView) -> dict[str, str]:
        if self._carrier is None:
            return {}
        ticket = self._store.get_replicated(view.code)
        trace = ticket.values.get("trace") if ticket is not None else None
        return self._carrier(trace if isinstance(trace, dict) else {})


def breach_records(store: SqliteTicketStore, queue: str = "") -> list[dict[str, Any]]:
    """Every SLA event record this node holds, oldest first."""
    found = [r.values for r in store.records(BREACH_PREFIX, queue) if "id" in r.values]
    return sorted(found, key=lambda v: (str(v.get("at", "")), str(v["id"])))
