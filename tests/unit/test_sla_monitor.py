"""The owner's SLA watch over a real store, with a fake queue owner: only the owner acts,
once per event, and an older epoch loses to a newer one."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from opentelemetry.trace import NoOpTracer

from federation.config import load_config
from federation.leases import NotOwner
from federation.operations import TICKET_CREATE
from node import rules
from node.auto_assign import AutoAssigner
from node.clock import FakeClock
from node.contracts import load_contracts
from node.dues import DueClock
from node.roster import load_roster
from node.rules import NewTicket
from node.sla_monitor import SlaMonitor, breach_records
from node.sqlite_store import SqliteTicketStore
from node.tickets import TicketView, Tier
from ops.metrics import Metrics

T0 = datetime(2026, 3, 4, 9, 0, tzinfo=UTC)
ROSTER = load_roster(None)
DUES = DueClock(load_contracts(None), load_config(None).region)
BREACHES = 'sundesk_sla_breaches_total{queue="velizy",target="response",tier="gold"} 1.0'


@dataclass
class QueueState:
    queue: str
    mine: bool


class FakeOwner:
    """Owns ``velizy`` at ``epoch`` unless ``mine`` is False (then it refuses)."""

    def __init__(self, epoch: int, mine: bool = True) -> None:
        self.epoch = epoch
        self.mine = mine

    def status(self) -> list[QueueState]:
        return [QueueState("velizy", self.mine), QueueState("germany", False)]

    async def owner_action(self, queue: str, action_name: str) -> int:
        if not self.mine or queue != "velizy":
            raise NotOwner(f"not the owner of {queue}", queue=queue)
        return self.epoch


def run(tmp_path: Path, body: Callable[..., Awaitable[Any]]) -> Any:
    async def main() -> Any:
        clock = FakeClock(T0)
        store = SqliteTicketStore(tmp_path, "velizy", "VEL", clock)
        try:

            def build(_: TicketView | None, now: datetime) -> tuple[str, dict[str, Any]]:
                new = NewTicket(title="down", tier=Tier.GOLD, priority=1)
                fields = rules.create_fields(new, "velizy", now)
                fields.update(DUES.on_create(fields))
                return TICKET_CREATE, fields

            view, _ = await store.write(None, build)

            def monitor(owner: FakeOwner, metrics: Metrics) -> SlaMonitor:
                assign = AutoAssigner(
                    "velizy", store, DUES.contracts, ROSTER, store.open_load, metrics, NoOpTracer()
                )
                return SlaMonitor(
                    "velizy",
                    store,
                    DUES,
                    lambda: owner,
                    clock.now,
                    metrics,
                    NoOpTracer(),
                    on_owned_ticket=assign,
                )

            return await body(store, clock, view.code, monitor)
        finally:
            await store.close()

    return asyncio.run(main())


def test_only_the_owner_records_and_only_once(tmp_path: Path) -> None:
    async def body(store: SqliteTicketStore, clock: FakeClock, code: str, monitor: Any) -> None:
        metrics = Metrics("velizy")
        clock.advance(61 * 60)  # gold P1: one hour to answer, 24x7
        assert await monitor(FakeOwner(5, mine=False), metrics).scan() == []
        assert store.get(code).escalation_level == 1
        owner = monitor(FakeOwner(5), metrics)
        (event,) = await owner.scan()
        assert (event.target, event.state) == ("response", "breached")
        assert await owner.scan() == []
        t = store.get(code)
        assert (t.escalation_level, t.sla_recorded, t.sla_epoch) == (
            2,
            {"response": "breached"},
            5,
        )
        (record,) = breach_records(store)
        assert (record["id"], record["epoch"], record["region"]) == (event.id, 5, "velizy")
        assert BREACHES in metrics.render().decode()
        # The owner also assigned it first, to Vélizy's confirmed+ engineers, never alone.
        assert (t.assignee, t.second_engineer) == ("lucas.bernard", "camille.martin")
        assert 'sundesk_auto_assignments_total{queue="velizy",tier="gold"} 1.0' in (
            metrics.render().decode()
        )

    run(tmp_path, body)


def test_an_older_epoch_loses_to_a_newer_one(tmp_path: Path) -> None:
    async def body(store: SqliteTicketStore, clock: FakeClock, code: str, monitor: Any) -> None:
        clock.advance(61 * 60)
        await monitor(FakeOwner(9), Metrics("velizy")).scan()
        clock.advance(6 * 3600)  # the resolution target (8 h) is now at risk
        stale = Metrics("velizy")
        assert await monitor(FakeOwner(8), stale).scan() == []
        t = store.get(code)
        assert (t.escalation_level, t.sla_epoch) == (2, 9)
        assert "resolution" not in t.sla_recorded
        assert "sundesk_sla_at_risk_total{" not in stale.render().decode()
        (event,) = await monitor(FakeOwner(10), Metrics("velizy")).scan()
        assert (event.target, event.state, store.get(code).escalation_level) == (
            "resolution",
            "at_risk",
            3,
        )

    run(tmp_path, body)
