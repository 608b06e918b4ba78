"""Follow-the-sun on a real etcd: five coordinators on real sessions, an accelerated clock.

A Wednesday from 07:55 to 23:20 UTC plays in about 16 s: the morning shifts, the evening
borrowers, the on-call stretch and its escalation. A watcher on the owner keys proves
there was no gap and that epochs only grew. Then a crash: the owner's session is
orphaned and the next candidate must hold the queue within TTL + 1 s. Lease TTLs are
real seconds whatever the clock's speed.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable, Coroutine
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from federation import plan
from federation.config import load_config
from federation.etcd_leases import EtcdOwnership, EtcdSession
from federation.handoffs import ON_CALL, HandoffRecord, MemoryHandoffLog, record_id
from federation.leases import NotOwner, OwnerEvent
from federation.sun import SunCoordinator, SunHooks
from node.clock import Clock, ScaledClock
from ops.etcd_process import EtcdServer

CONFIG = load_config()
REGIONS = CONFIG.region_names()
QUEUES = CONFIG.queue_names()
TTL = 2.0  # etcd's smallest practical lease
WEDNESDAY = datetime(2026, 1, 14, tzinfo=UTC)


def at(hour: int, minute: int = 0) -> datetime:
    return WEDNESDAY + timedelta(hours=hour, minutes=minute)


def run(scenario: Coroutine[Any, Any, None], deadline: float) -> None:
    asyncio.run(asyncio.wait_for(scenario, deadline))


async def eventually(probe: Callable[[], Any], within: float, what: str) -> Any:
    limit = time.monotonic() + within
    while not (value := probe()):
        if time.monotonic() >= limit:
            raise AssertionError(f"not within {within} s: {what}")
        await asyncio.sleep(0.02)
    return value


class HeldClock:
    """A ``ScaledClock`` that starts running only at ``release()``, so a slow setup
    does not eat into the simulated day (the nodes start at the same instant)."""

    def __init__(self, start: datetime, speed: float) -> None:
        self._start, self._speed = start, speed
        self._running: ScaledClock | None = None

    def release(self) -> None:
        self._running = ScaledClock(self._start, self._speed)

    def now(self) -> datetime:
        return self._running.now() if self._running else self._start

    def speed(self) -> float:
        return self._speed


@contextlib.asynccontextmanager
async def federation(
    server: EtcdServer, clock: Clock, log: MemoryHandoffLog, hooks: SunHooks | None = None
) -> AsyncIterator[tuple[dict[str, EtcdSession], dict[str, SunCoordinator]]]:
    """Five nodes' sessions and coordinators; the handoff log is shared (replicated)."""
    sessions: dict[str, EtcdSession] = {}
    nodes: dict[str, SunCoordinator] = {}
    try:
        for region in REGIONS:
            sessions[region] = session = await EtcdSession(
                server.endpoint, region, ttl=TTL, clock=clock, call_timeout=1.0
            ).start()
            nodes[region] = SunCoordinator(
                region, CONFIG, clock, EtcdOwnership(session), log, tick_seconds=0.05, hooks=hooks
            )
        for node in nodes.values():
            await node.start()
        yield sessions, nodes
    finally:
        for node in nodes.values():
            await node.stop(handover=False)
        for session in sessions.values():
            await session.close()


def acting(nodes: dict[str, SunCoordinator], queue: str) -> list[str]:
    return [r for r, n in nodes.items() if n.backend.is_owner(queue) is not None]


@pytest.mark.integration
@pytest.mark.timeout(40)
def test_a_simulated_day_moves_every_queue_without_gaps(etcd_server: EtcdServer) -> None:
    escalated: list[HandoffRecord] = []

    async def scenario() -> None:
        clock = HeldClock(at(7, 55), speed=3600)
        log = MemoryHandoffLog(clock)
        hooks = SunHooks(on_escalation=escalated.append)
        async with federation(etcd_server, clock, log, hooks) as (_, nodes):
            await eventually(lambda: len(log.list()) == len(QUEUES), 5, "first owners")
            clock.release()
            events: list[OwnerEvent] = []
            watch = nodes["velizy"].backend.watch(start_revision=1)

            async def collect() -> None:
                async for event in watch:
                    events.append(event)

            collector = asyncio.create_task(collect())
            try:
                await eventually(
                    lambda: len(escalated) == len(QUEUES), 25, "the on-call escalations"
                )
                assert clock.now() >= at(23, 15)
                for node in nodes.values():
                    await node.stop(handover=False)
                epochs = {r.epoch for r in log.list()}
                await eventually(
                    lambda: epochs <= {e.epoch for e in events}, 5, "the watcher caught up"
                )
            finally:
                collector.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await collector
                await watch.aclose()

        # No gap: never a delete, only moves; epochs strictly increasing.
        assert [e for e in events if e.region is None] == []
        assert [e.epoch for e in events] == sorted({e.epoch for e in events})
        day = plan.plan(CONFIG, at(7, 55), at(23, 20))
        for queue in QUEUES:
            owners = [e.region for e in events if e.queue == queue]
            expected = [s.owner for s in day.for_queue(queue)]
            assert owners == [o if o != plan.ONCALL_OWNER else "us" for o in expected], queue
        # One record per epoch, on the (shared, replicated) log.
        assert {r.id for r in log.list()} == {record_id(e.queue, e.epoch) for e in events}
        for event in events:
            assert log.get(record_id(event.queue, event.epoch)).to_region == event.region
        # Each on-call record escalated once, after 15 simulated minutes.
        oncall = [r for r in log.list() if r.kind == ON_CALL]
        assert sorted(r.queue for r in oncall) == sorted(QUEUES)
        assert sorted(r.id for r in escalated) == sorted(r.id for r in oncall)
        for rec in escalated:
            late = datetime.fromisoformat(rec.escalated_at) - datetime.fromisoformat(rec.at)
            assert timedelta(minutes=15) <= late < timedelta(minutes=45)  # before on-call ends
            assert rec.escalated_to == "mike.johnson"

    run(scenario(), 35)


@pytest.mark.integration
@pytest.mark.timeout(30)
def test_crashed_owner_is_replaced_within_ttl_plus_one_second(etcd_server: EtcdServer) -> None:
    async def scenario() -> None:
        clock = ScaledClock(at(12), speed=1)
        log = MemoryHandoffLog(clock)
        async with federation(etcd_server, clock, log) as (sessions, nodes):
            await eventually(lambda: acting(nodes, "velizy") == ["velizy"], 5, "velizy owns")
            before = nodes["velizy"].backend.is_owner("velizy")
            assert before is not None
            expected = next(
                r for r in plan.candidates_at(CONFIG, "velizy", at(12)) if r != "velizy"
            )

            crashed = time.monotonic()
            await nodes["velizy"].stop(handover=False)
            await sessions["velizy"].orphan()  # the lease lives on until etcd expires it
            with pytest.raises(NotOwner):
                await nodes["velizy"].owner_action("velizy", "auto-assign")

            await eventually(
                lambda: acting(nodes, "velizy") == [expected], TTL + 1, "failover to " + expected
            )
            assert time.monotonic() - crashed <= TTL + 1
            epoch = await nodes[expected].owner_action("velizy", "auto-assign")
            assert epoch > before
            rec = log.get(record_id("velizy", epoch))
            assert (rec.kind, rec.from_region, rec.to_region) == ("failover", "velizy", expected)

    run(scenario(), 25)
