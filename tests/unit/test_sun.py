"""Follow-the-sun ownership on a memory etcd: five coordinators, one event loop, a fake
clock driven minute by minute through a whole day, then the faults.

Lease time (``MemoryEtcd.advance``) and business time (``FakeClock.advance``) move
separately, as in the real system: leases count real seconds, the plan simulated ones.
The day is driven by explicit ticks (``Federation.settle``) so every step is the same on
every run; one test runs the coordinators' own loops and watches instead.
"""

from __future__ import annotations

import asyncio
import functools
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from federation import plan
from federation.config import FederationConfig, load_config
from federation.handoffs import (
    FAILOVER,
    ON_CALL,
    PLANNED,
    HandoffRecord,
    MemoryHandoffLog,
    ack_fields,
    escalate_fields,
    handoff_fields,
    note_fields,
    open_ticket_summary,
    record_id,
)
from federation.leases import OWNERS_PREFIX, NotOwner, StaleEpoch, decode_json, owner_key
from federation.memory_leases import MemoryEtcd, MemoryOwnership, MemorySession
from federation.sun import SunCoordinator, SunHooks
from node.clock import FakeClock
from node.errors import FailedPrecondition, InvalidArgument, NotFound, Unavailable
from node.tickets import Kind, State, TicketView, iso

CONFIG = load_config()
REGIONS = CONFIG.region_names()
QUEUES = CONFIG.queue_names()
TTL = CONFIG.lease_ttl_seconds
WEDNESDAY = datetime(2026, 1, 14, tzinfo=UTC)  # no public holiday in any region


def run(scenario: Coroutine[Any, Any, None], deadline: float = 8.0) -> None:
    asyncio.run(asyncio.wait_for(scenario, deadline))


def at(hour: int, minute: int = 0) -> datetime:
    return WEDNESDAY + timedelta(hours=hour, minutes=minute)


def ticket(code: str, priority: int, response_due: str = "", resolution_due: str = "") -> Any:
    return TicketView(
        code=code, title=code, description="", kind=Kind.INCIDENT, state=State.NEW,
        priority=priority, customer="acme", asset="", tier=None, home_region="velizy",
        queue="velizy", assignee="", second_engineer="", escalation_level=1, version=1,
        created_by="ana", origin_region="velizy", created_at="", updated_at="", cause="",
        satisfaction=0, first_response_at="", resolved_at="", response_due=response_due,
        resolution_due=resolution_due, source="agent", last_change_id="", digest="",
    )  # fmt: skip


class CountingLog(MemoryHandoffLog):
    """The shared log, a perfectly replicated store; counts escalation calls."""

    escalations: int = 0

    async def escalate(self, id: str, to: str, *, epoch: int | None = None) -> HandoffRecord:
        self.escalations += 1
        return await super().escalate(id, to, epoch=epoch)


@dataclass
class Federation:
    """Five regions on one memory etcd, one shared clock and one shared handoff log."""

    config: FederationConfig
    clock: FakeClock
    etcd: MemoryEtcd = field(default_factory=MemoryEtcd)
    sessions: dict[str, MemorySession] = field(default_factory=dict)
    nodes: dict[str, SunCoordinator] = field(default_factory=dict)
    events: list[tuple[str, Any]] = field(default_factory=list)
    log: CountingLog = field(init=False)

    def __post_init__(self) -> None:
        self.log = CountingLog(self.clock)

    async def up(
        self,
        region: str,
        tick_seconds: float = 3600.0,
        backend: type[MemoryOwnership] = MemoryOwnership,
    ) -> SunCoordinator:
        session = await MemorySession(self.etcd, region, TTL, self.clock).start()
        hooks = SunHooks(
            on_owner_change=lambda queue, owner, kind, epoch: self.events.append(
                ("owner", (region, queue, owner, kind, epoch))
            ),
            on_handoff=lambda rec: self.events.append(("handoff", rec.id)),
            on_failover=lambda queue: self.events.append(("failover", (region, queue))),
            on_lease_state=lambda state: self.events.append(("lease", (region, state))),
            on_escalation=lambda rec: self.events.append(("escalation", (region, rec.id))),
        )
        node = SunCoordinator(
            region,
            self.config,
            self.clock,
            backend(session),
            self.log,
            tick_seconds=tick_seconds,
            hooks=hooks,
        )
        self.sessions[region], self.nodes[region] = session, node
        return node

    async def settle(self, rounds: int = 2) -> None:
        for _ in range(rounds):
            for node in self.nodes.values():
                await node.tick()

    async def step(self, minutes: float = 1.0, lease_seconds: float = 1.0) -> None:
        self.clock.advance(minutes * 60)
        self.etcd.advance(lease_seconds)
        await self.settle()

    def owner(self, queue: str) -> tuple[str, str, int] | None:
        """(region, kind, epoch) straight from the memory etcd."""
        entry = self.etcd.keys.get(owner_key(queue))
        if entry is None:
            return None
        value = decode_json(entry.value)
        return value["region"], value["kind"], entry.mod_revision

    def acting_owners(self, queue: str) -> list[str]:
        """Regions whose owner-only actions on ``queue`` would pass right now."""
        return [r for r, n in self.nodes.items() if n.backend.is_owner(queue) is not None]

    def owner_puts(self) -> list[tuple[int, str, str]]:
        """(epoch, queue, region) of every write of an owner key, in revision order."""
        puts = []
        for revision, key, entry in self.etcd._history:
            if key.startswith(OWNERS_PREFIX) and entry is not None:
                region = decode_json(entry.value)["region"]
                puts.append((revision, key.removeprefix(OWNERS_PREFIX), region))
        return puts

    def owner_deletes(self) -> list[str]:
        history = self.etcd._history
        return [key for _, key, entry in history if entry is None and key.startswith(OWNERS_PREFIX)]


async def federation_at(start: datetime, config: FederationConfig = CONFIG) -> Federation:
    fed = Federation(config, FakeClock(start))
    for region in REGIONS:
        await fed.up(region)
    await fed.settle()
    return fed


@functools.lru_cache(maxsize=4)
def _days_around_wednesday(config: FederationConfig) -> plan.PlanResult:
    return plan.plan(config, WEDNESDAY - timedelta(days=1), WEDNESDAY + timedelta(days=2))


def planned(config: FederationConfig, queue: str, instant: datetime) -> plan.Segment:
    """The plan's segment at ``instant``, from one cached plan (owner_at costs ms)."""
    day = _days_around_wednesday(config)
    return next(s for s in day.for_queue(queue) if s.contains(instant))


def assert_follows_plan(fed: Federation, alive: set[str] | None = None) -> None:
    now = fed.clock.now()
    for queue in QUEUES:
        owner = fed.owner(queue)
        assert owner is not None, f"{iso(now)}: queue {queue} has no owner"
        assert fed.acting_owners(queue) == [owner[0]], f"{iso(now)}: {queue}"
        segment = planned(fed.config, queue, now)
        if segment.kind == ON_CALL:
            assert owner[1] == ON_CALL, f"{iso(now)}: {queue} {owner}"
        elif alive is None or segment.owner in alive:
            assert owner[:2] == (segment.owner, segment.kind), f"{iso(now)}: {queue} {owner}"


# -- a whole day -------------------------------------------------------------------------


def test_a_day_of_shifts_follows_the_plan_without_gaps_and_escalates_once() -> None:
    async def scenario() -> None:
        fed = await federation_at(WEDNESDAY)
        fed.log.tickets["velizy"] = [
            ticket("VEL-000003", 2, resolution_due="2026-01-14T20:00:00.000Z"),
            ticket("VEL-000001", 3),
            ticket("VEL-000002", 1, response_due="2026-01-14T18:00:00.000Z"),
            ticket("VEL-000004", 4, response_due="2026-01-14T18:00:00.000Z"),
        ]
        first = {q: fed.owner(q) for q in QUEUES}
        assert {q: o[0] for q, o in first.items() if o} == dict.fromkeys(QUEUES, "japan")
        assert_follows_plan(fed)

        while fed.clock.now() < WEDNESDAY + timedelta(days=1, minutes=30):
            if fed.clock.now() == at(16, 50):
                await fed.log.set_note("velizy", "VEL-000002 waits on a part", "ana")
            if fed.clock.now() == at(23, 5):
                oncall = [r for r in fed.log.list("velizy") if r.kind == ON_CALL]
                assert [r.to_engineer for r in oncall] == ["emily.clarke"]
                await fed.log.acknowledge(oncall[0].id, "emily.clarke")
            await fed.step()
            assert_follows_plan(fed)

        # No gap: an owner key was never deleted, only moved; epochs only grow.
        assert fed.owner_deletes() == []
        puts = fed.owner_puts()
        for queue in QUEUES:
            epochs = [e for e, q, _ in puts if q == queue]
            assert epochs == sorted(set(epochs))
            owners = [r for _, q, r in puts if q == queue]
            planned = [
                s.owner
                for s in plan.plan(
                    fed.config, WEDNESDAY, WEDNESDAY + timedelta(days=1, hours=1)
                ).for_queue(queue)
            ]
            # On-call keeps the key where it was: us, the last borrower of the evening.
            assert owners == [o if o != plan.ONCALL_OWNER else "us" for o in planned]

        # One record per owner epoch, written by the node that created the epoch.
        records = {r.id: r for r in fed.log.list()}
        assert set(records) == {record_id(q, e) for e, q, _ in puts}
        for epoch, queue, region in puts:
            rec = records[record_id(queue, epoch)]
            assert (rec.to_region, rec.epoch) == (region, epoch)
        seen_by_germany = [
            (owner, epoch)
            for kind, (node, queue, owner, _, epoch) in (e for e in fed.events if e[0] == "owner")
            if (node, queue) == ("germany", "velizy")
        ]
        assert seen_by_germany == [(r, e) for e, q, r in puts if q == "velizy"]
        kinds = [r.kind for r in fed.log.list("velizy")]
        assert kinds == [FAILOVER, PLANNED, PLANNED, ON_CALL, PLANNED]

        evening = next(r for r in fed.log.list("velizy") if r.from_region == "velizy")
        assert (evening.to_region, evening.at) == ("us", "2026-01-14T17:00:00.000Z")
        assert evening.note == "VEL-000002 waits on a part"
        assert [t["code"] for t in evening.open_tickets] == [
            "VEL-000002", "VEL-000004", "VEL-000003", "VEL-000001"
        ]  # fmt: skip
        assert fed.log.note("velizy") == ""  # the note went with that handoff

        # Each on-call record to the primary; unacknowledged ones escalated once, 15 min on.
        oncall = [r for r in fed.log.list() if r.kind == ON_CALL]
        assert len(oncall) == len(QUEUES)
        assert {(r.from_region, r.to_region, r.to_engineer) for r in oncall} == {
            ("us", "us", "emily.clarke")
        }
        for rec in oncall:
            rec = fed.log.get(rec.id)
            if rec.queue == "velizy":
                assert (rec.acked_by, rec.escalated_to) == ("emily.clarke", "")
            else:
                assert (rec.escalated_to, rec.escalated_at) == (
                    "mike.johnson",
                    "2026-01-14T23:15:00.000Z",
                )
        assert fed.log.escalations == len(QUEUES) - 1
        escalations = [e for kind, e in fed.events if kind == "escalation"]
        assert len(escalations) == len(QUEUES) - 1 and {r for r, _ in escalations} == {"us"}

    run(scenario(), deadline=30)  # a whole day: about 1 s, more on a busy machine


def _lease_events(fed: Federation) -> list[tuple[str, tuple[str, str]]]:
    return [(kind, value) for kind, value in fed.events if kind == "lease"]


# -- faults ------------------------------------------------------------------------------


def test_dead_owner_is_replaced_by_the_next_candidate_after_ttl() -> None:
    async def scenario() -> None:
        fed = await federation_at(at(12))
        before = fed.owner("velizy")
        assert before is not None and before[0] == "velizy"
        assert await fed.nodes["velizy"].owner_action("velizy", "assign") == before[2]

        await fed.sessions["velizy"].orphan()  # a crash: no renewals, nothing revoked
        with pytest.raises(NotOwner, match="session lost"):
            await fed.nodes["velizy"].owner_action("velizy", "assign")
        expected = next(
            r for r in plan.candidates_at(fed.config, "velizy", at(12)) if r != "velizy"
        )

        waited = 0.0
        while fed.owner("velizy") == before:
            assert waited < TTL, "the dead owner's key outlived its lease"
            await fed.step(minutes=0, lease_seconds=0.5)
            waited += 0.5
        # The lease expired at TTL; the candidate took the key in the same round.
        assert waited == TTL
        after = fed.owner("velizy")
        assert after is not None and after[0] == expected and after[2] > before[2]
        assert fed.acting_owners("velizy") == [expected]
        rec = fed.log.get(record_id("velizy", after[2]))
        assert (rec.kind, rec.from_region, rec.to_region) == (FAILOVER, "velizy", expected)
        assert ("failover", (expected, "velizy")) in fed.events
        # The other queues, held by live nodes, did not move.
        assert fed.owner_deletes() == [owner_key("velizy")]

    run(scenario())


def test_lost_lease_stops_owner_actions_at_once_and_ownership_resumes() -> None:
    async def scenario() -> None:
        fed = await federation_at(at(12))
        epochs = {q: fed.owner(q) for q in QUEUES}
        fed.etcd.reachable = False
        fed.etcd.advance(TTL / 2)
        await fed.settle()  # no crash, nothing moves
        uk = fed.nodes["uk"]
        # Renewals fail but the local deadline has not passed: still the owner.
        assert fed.sessions["uk"].state == "expiring"
        assert await uk.owner_action("uk", "escalate") == epochs["uk"][2]  # type: ignore[index]

        fed.etcd.advance(TTL / 2)  # the local deadline passes: no tick needed to stop
        for region, node in fed.nodes.items():
            with pytest.raises(NotOwner):
                await node.owner_action(region, "escalate")
        await fed.settle()
        assert ("lease", ("uk", "expiring")) in fed.events
        assert ("lease", ("uk", "lost")) in fed.events

        fed.etcd.reachable = True
        await fed.step(minutes=0)  # new leases; the old ones are revoked with their keys
        assert_follows_plan(fed)
        for queue, old in epochs.items():
            new = fed.owner(queue)
            assert old is not None and new is not None and new[2] > old[2]
        uk_states = [state for kind, (region, state) in _lease_events(fed) if region == "uk"]
        assert uk_states == ["alive", "expiring", "lost", "alive"]

    run(scenario())


def test_paused_owner_is_fenced_after_another_takes_over() -> None:
    async def scenario() -> None:
        fed = await federation_at(at(12))
        old = fed.owner("germany")
        assert old is not None and old[0] == "germany"
        germany = fed.sessions["germany"]
        fed.etcd._sessions.remove(germany)  # SIGSTOP: its keepalives stop, nothing else
        paused = fed.nodes.pop("germany")

        for _ in range(int(TTL / 0.5) + 1):
            await fed.step(minutes=0, lease_seconds=0.5)
        new = fed.owner("germany")
        assert new is not None and new[0] != "germany" and new[2] > old[2]

        fed.etcd._sessions.append(germany)  # SIGCONT, before its keepalive runs again
        fed.nodes["germany"] = paused
        with pytest.raises(NotOwner):
            await paused.owner_action("germany", "auto-assign")
        # A replicated owner-only operation still carrying the old epoch loses on peers.
        with pytest.raises(StaleEpoch):
            fed.nodes[new[0]].fence.check("germany", old[2])
        fed.etcd.advance(0.5)  # its session notices the loss and takes a new lease
        await fed.settle()
        assert_follows_plan(fed)
        assert fed.acting_owners("germany") == ["germany"]

    run(scenario())


def test_planned_handoff_skips_a_down_region_and_returns_when_it_is_back() -> None:
    async def scenario() -> None:
        fed = await federation_at(at(16, 58))
        node = fed.nodes.pop("us")
        await node.stop()  # hands its own queue over first
        await fed.sessions.pop("us").close()
        await fed.step()
        await fed.step()  # 17:00: velizy closes, us should borrow velizy but is down
        live = set(fed.nodes)
        stand_in = next(r for r in plan.candidates_at(fed.config, "velizy", at(17)) if r in live)
        owner = fed.owner("velizy")
        assert owner is not None and owner[:2] == (stand_in, "borrowed")
        assert fed.owner_deletes() == []

        await fed.up("us")
        await fed.step()
        assert_follows_plan(fed)
        assert fed.owner("velizy")[:2] == ("us", "borrowed")  # type: ignore[index]
        kinds = [(r.from_region, r.to_region, r.kind) for r in fed.log.list("velizy")]
        assert kinds[-2:] == [("velizy", stand_in, PLANNED), (stand_in, "us", PLANNED)]

    run(scenario())


class AnswerLost(MemoryOwnership):
    """Handoffs commit but their answer never arrives, as after an etcd call timeout."""

    async def handoff(
        self, queue: str, to_region: str, to_lease_id: int, kind: str, expected_epoch: int
    ) -> int:
        other = MemoryOwnership(self.session)  # commits without updating our own view
        await other.handoff(queue, to_region, to_lease_id, kind, expected_epoch)
        raise Unavailable("etcd did not answer the handoff within 2 s")


def test_handoff_with_a_lost_answer_stops_acting_and_still_gets_its_record() -> None:
    async def scenario() -> None:
        fed = Federation(CONFIG, FakeClock(at(16, 59)))
        for region in REGIONS:
            await fed.up(region, backend=AnswerLost if region == "velizy" else MemoryOwnership)
        await fed.settle()
        velizy = fed.nodes["velizy"]
        old = await velizy.owner_action("velizy", "assign")

        fed.clock.advance(60)  # 17:00: velizy hands its queue to us; the answer is lost
        await velizy.tick()
        assert velizy.backend.is_owner("velizy") == old  # its view has not caught up...
        with pytest.raises(NotOwner, match="outcome is unknown"):  # ...but it holds back
            await velizy.owner_action("velizy", "assign")
        new = fed.owner("velizy")
        assert new is not None and new[0] == "us" and new[2] > old

        await velizy.tick()  # a read settles it: the handoff was velizy's, so is its record
        assert velizy.backend.is_owner("velizy") is None
        rec = fed.log.get(record_id("velizy", new[2]))
        assert (rec.from_region, rec.to_region, rec.kind) == ("velizy", "us", PLANNED)
        await fed.settle()
        assert_follows_plan(fed)

    run(scenario())


def test_stop_hands_held_queues_over_without_a_gap() -> None:
    async def scenario() -> None:
        fed = await federation_at(at(12))
        japan_queue_owner = fed.owner("japan")
        assert japan_queue_owner is not None
        holder = japan_queue_owner[0]
        node = fed.nodes.pop(holder)
        await node.stop()
        await fed.sessions.pop(holder).close()
        owner = fed.owner("japan")
        assert owner is not None and owner[0] != holder and owner[2] > japan_queue_owner[2]
        assert fed.owner_deletes() == []
        await fed.settle()
        assert_follows_plan(fed, alive=set(fed.nodes))

    run(scenario())


def test_loops_and_watches_move_the_queue_without_explicit_ticks() -> None:
    async def scenario() -> None:
        fed = Federation(CONFIG, FakeClock(at(16, 59)))
        for region in REGIONS:
            await (await fed.up(region, tick_seconds=0.01)).start()

        async def until(probe: Callable[[], bool], what: str) -> None:
            limit = time.monotonic() + 3
            while not probe():
                assert time.monotonic() < limit, what
                await asyncio.sleep(0.005)

        await until(lambda: fed.acting_owners("velizy") == ["velizy"], "velizy holds velizy")
        fed.clock.advance(60)
        await until(lambda: fed.acting_owners("velizy") == ["us"], "us borrows velizy")
        status = {s.queue: s for s in fed.nodes["us"].status()}["velizy"]
        assert (status.owner, status.kind, status.mine) == ("us", "borrowed", True)
        assert status.planned.owner == "us" and status.next_handoff is not None
        assert status.next_handoff.kind == ON_CALL
        for node in fed.nodes.values():
            await node.stop(handover=False)

    run(scenario())


# -- records, pure ---------------------------------------------------------------------


def test_records_round_trip_and_their_operation_fields() -> None:
    rec = HandoffRecord(
        id="HO-uk-7", queue="uk", from_region="uk", to_region="us", to_engineer="",
        kind=PLANNED, at="2026-01-14T18:00:00.000Z", epoch=7,
        open_tickets=({"code": "GBR-1", "priority": 1, "state": "new", "due": ""},),
        note="n", acked_by="x", acked_at="y",
    )  # fmt: skip
    assert HandoffRecord.from_json(rec.to_json()) == rec
    fields = handoff_fields(rec)
    assert "acked_by" not in fields and "escalated_to" not in fields
    assert HandoffRecord.from_json(fields).acked_by == ""
    assert ack_fields("ana", "t") == {"acked_by": "ana", "acked_at": "t"}
    assert escalate_fields("bo", "t", epoch=9)["escalated_epoch"] == 9
    assert note_fields("uk", "hi", "ana", "t")["note"] == "hi"
    with pytest.raises(InvalidArgument):
        HandoffRecord.from_json({**rec.to_json(), "id": "HO-uk-8"})
    with pytest.raises(InvalidArgument):
        HandoffRecord.from_json({**rec.to_json(), "kind": "coffee"})
    summary = open_ticket_summary(
        [ticket("B", 2), ticket("A", 1, resolution_due="2026-01-15T00:00:00.000Z"), ticket("C", 1)]
    )
    assert [t["code"] for t in summary] == ["A", "C", "B"]


def test_memory_log_acknowledges_and_escalates_once() -> None:
    async def scenario() -> None:
        log = MemoryHandoffLog(FakeClock(at(23)))
        rec = HandoffRecord(
            id="HO-uk-3", queue="uk", from_region="us", to_region="us",
            to_engineer="emily.clarke", kind=ON_CALL, at=iso(at(23)), epoch=3,
        )  # fmt: skip
        assert await log.record(rec) == rec
        assert await log.record(rec) == rec  # idempotent
        escalated = await log.escalate(rec.id, "mike.johnson", epoch=3)
        assert escalated.escalated_to == "mike.johnson"
        with pytest.raises(FailedPrecondition):
            await log.escalate(rec.id, "mike.johnson")
        acked = await log.acknowledge(rec.id, "mike.johnson")
        assert acked.acked_by == "mike.johnson" and log.get(rec.id) == acked
        with pytest.raises(FailedPrecondition):
            await log.acknowledge(rec.id, "emily.clarke")
        with pytest.raises(NotFound):
            await log.acknowledge("HO-uk-4", "x")
        assert (await log.record(rec)).acked_by == "mike.johnson"  # a replay keeps the ack

    run(scenario())
