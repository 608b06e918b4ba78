"""A gold ticket nobody answers, on real etcd and five real node processes with a
simulated clock: the queue's owner assigns it, sees the response target missed, records
it once and escalates once; all five regions agree, and metrics and stats show it.

The first test runs the clock at 240x (an hour in 15 s) from Wednesday 4 March 2026
09:30 UTC, when Germany is open and owns its own queue; the second at 60x across
Germany's 17:00 handoff to the US, with margins of twenty real seconds either side.
"""

from __future__ import annotations

import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from node.contracts import DEFAULT_CONTRACTS_PATH
from node.convert import ts_to_iso
from ops.etcd_process import EtcdServer
from sundesk.v1 import contracts_pb2 as cpb
from sundesk.v1 import contracts_pb2_grpc, sun_pb2_grpc
from sundesk.v1 import desk_pb2 as pb
from sundesk.v1 import sun_pb2 as spb
from tests.support.nodes import Federation, NodeProcess, wait_for

pytestmark = pytest.mark.integration

SPEED = 240
BREACH_METRIC = 'sundesk_sla_breaches_total{queue="germany",target="response",tier="gold"}'


@pytest.fixture
def fed(tmp_path: Path) -> Iterator[Federation]:
    """One federation per test: two of five nodes at once are too many for a small box."""
    base = tmp_path
    etcd = EtcdServer(base / "etcd").start()
    f = Federation.make(
        base,
        etcd=etcd.endpoint,
        extra_args=[
            "--clock-start", "2026-03-04T09:30:00Z", "--speed", str(SPEED),
            "--clock-origin", repr(time.time()), "--sla-period", "0.25",
        ],
    )  # fmt: skip
    try:
        yield f.start()
    finally:
        f.stop()
        etcd.close()


def contracts(node: NodeProcess) -> contracts_pb2_grpc.ContractsStub:
    return contracts_pb2_grpc.ContractsStub(grpc.insecure_channel(node.address))


def sun_status(node: NodeProcess) -> spb.SunStatus:
    """The node's view of ownership; empty when it does not answer in time (busy box)."""
    stub = sun_pb2_grpc.SunStub(grpc.insecure_channel(node.address))
    try:
        status: spb.SunStatus = stub.GetStatus(spb.SunStatusRequest(), timeout=5)
    except grpc.RpcError as err:
        if err.code() not in (grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.UNAVAILABLE):
            raise
        return spb.SunStatus()
    return status


def metric(fed: Federation, region: str, series: str) -> float:
    url = f"http://127.0.0.1:{fed.config.region(region).metrics_port}/metrics"
    with urllib.request.urlopen(url, timeout=10) as reply:
        for line in reply.read().decode().splitlines():
            if line.startswith(series + " "):
                return float(line.rsplit(" ", 1)[1])
    return 0.0


def test_an_unanswered_gold_ticket_breaches_and_is_escalated_exactly_once(
    fed: Federation,
) -> None:
    velizy, germany = fed.node("velizy"), fed.node("germany")
    wait_for(
        "germany to own its queue",
        lambda: any(q.queue == "germany" and q.mine for q in sun_status(germany).queues),
        timeout=30,
    )
    customer = cpb.Customer(
        id="bmw-munich", name="BMW München", home_region="germany", tier=pb.CONTRACT_TIER_GOLD
    )
    contracts(velizy).RegisterCustomer(cpb.RegisterCustomerRequest(customer=customer), timeout=5)
    with velizy.client() as c:
        created = c.desk.CreateTicket(
            pb.CreateTicketRequest(title="Line stopped", customer="bmw-munich", priority=1),
            timeout=5,
        )
    code = created.code
    assert (created.queue, created.tier, created.sla.response) == (
        "germany",
        pb.CONTRACT_TIER_GOLD,
        "ok",
    )

    def ticket(node: NodeProcess) -> pb.Ticket:
        """The ticket as ``node`` holds it; empty while it has not replicated there yet."""
        with node.client() as c:
            try:
                t: pb.Ticket = c.desk.GetTicket(pb.GetTicketRequest(code=code), timeout=5)
            except grpc.RpcError as err:
                if err.code() != grpc.StatusCode.NOT_FOUND:
                    raise
                return pb.Ticket()
            return t

    # The owner (Germany) assigns it to a qualified German engineer, never alone.
    assigned = wait_for("the owner's assignment", lambda: ticket(germany).assignee, timeout=30)
    t = ticket(germany)
    assert {assigned, t.second_engineer} <= {"jonas.weber", "lena.fischer"}
    assert t.second_engineer and t.second_engineer != assigned

    def escalated_everywhere() -> bool:
        seen = [ticket(n) for n in fed.nodes.values()]
        return (
            all(s.sla.response_recorded == "breached" and s.escalation_level == 2 for s in seen)
            and len({s.digest for s in seen}) == 1
        )

    # An hour of simulated time is 15 s; the scans run every 0.25 s.
    wait_for("the breach to be recorded in all five regions", escalated_everywhere, timeout=60)

    def same_breaches() -> list[cpb.Breach] | None:
        lists = [
            list(contracts(n).ListBreaches(cpb.ListBreachesRequest(), timeout=5).breaches)
            for n in fed.nodes.values()
        ]
        return lists[0] if all(x == lists[0] for x in lists) else None

    records = wait_for("the same breach records on all five nodes", same_breaches, timeout=20)
    missed = [b for b in records if b.code == code and b.state == "breached"]
    assert len(missed) == 1
    (breach,) = missed
    owner_epoch = next(q.epoch for q in sun_status(germany).queues if q.queue == "germany")
    assert (breach.target, breach.region, breach.epoch, breach.escalation_level) == (
        "response",
        "germany",
        owner_epoch,
        2,
    )
    assert breach.due == ts_to_iso(created.response_due)

    def counted() -> dict[str, float]:
        return {r: metric(fed, r, BREACH_METRIC) for r in fed.nodes}

    assert counted() == {"velizy": 0, "germany": 1, "uk": 0, "us": 0, "japan": 0}
    escalations = sum(metric(fed, r, 'sundesk_escalations_total{level="L2"}') for r in fed.nodes)
    assert escalations == 1

    # Thirty more simulated minutes are some thirty scans by the owner: nothing new.
    due_plus = "2026-03-04T11:00"
    wait_for("half an hour past the due", lambda: sun_status(germany).now > due_plus, timeout=30)
    assert counted() == {"velizy": 0, "germany": 1, "uk": 0, "us": 0, "japan": 0}
    final = same_breaches()
    assert final is not None
    assert [b.id for b in final if b.state == "breached"] == [breach.id]
    japan = fed.node("japan")
    assert ticket(japan).escalation_level == 2

    # Stats on any region count the case, its breach, and no response met.
    request = cpb.StatsRequest(region="germany", to="2026-03-05")
    setattr(request, "from", "2026-03-04")
    stats = contracts(japan).Stats(request, timeout=5)
    assert (stats.opened, stats.open_now, stats.breaches, stats.responded) == (1, 1, 1, 0)
    assert stats.response_sla.total == 0


# ----- across a handoff -------------------------------------------------------------------


@pytest.fixture
def evening(tmp_path: Path) -> Iterator[Federation]:
    """From 15:40 UTC at 60x: Germany owns its queue until 17:00, then the US borrows it.
    The at-risk share is raised to half the target so that a gold P1 opened at 16:10 is
    at risk well before the handoff and missed well after it."""
    terms = DEFAULT_CONTRACTS_PATH.read_text().replace(
        "at_risk_fraction = 0.2", "at_risk_fraction = 0.5"
    )
    contracts_file = tmp_path / "contracts.toml"
    contracts_file.write_text(terms)
    etcd = EtcdServer(tmp_path / "etcd").start()
    f = Federation.make(
        tmp_path,
        etcd=etcd.endpoint,
        extra_args=[
            "--clock-start", "2026-03-04T15:40:00Z", "--speed", "60",
            "--clock-origin", repr(time.time()), "--sla-period", "0.25",
            "--contracts", str(contracts_file),
        ],
    )  # fmt: skip
    try:
        yield f.start()
    finally:
        f.stop()
        etcd.close()


def test_events_on_both_sides_of_a_handoff_are_each_recorded_once(evening: Federation) -> None:
    fed = evening
    germany, us = fed.node("germany"), fed.node("us")
    wait_for(
        "Germany to own its queue",
        lambda: any(q.queue == "germany" and q.mine for q in sun_status(germany).queues),
        timeout=60,
    )
    wait_for("16:10", lambda: sun_status(germany).now >= "2026-03-04T16:10", timeout=60)
    with germany.client() as c:
        created = c.desk.CreateTicket(
            pb.CreateTicketRequest(title="Robot cell down", priority=1, tier=pb.CONTRACT_TIER_GOLD),
            timeout=5,
        )
    code = created.code
    # Due within the hour: at risk from 30 minutes before it, Germany's; missed, the US's.
    assert "2026-03-04T17:00" < ts_to_iso(created.response_due) < "2026-03-04T17:30"

    def events() -> dict[str, cpb.Breach] | None:
        lists = [
            [b for b in contracts(n).ListBreaches(cpb.ListBreachesRequest(), timeout=5).breaches
             if b.code == code]
            for n in fed.nodes.values()
        ]  # fmt: skip
        if not all(x == lists[0] for x in lists):
            return None
        found = {f"{b.target} {b.state}": b for b in lists[0]}
        return found if "response breached" in found else None

    found = wait_for("the missed response, the same in all five regions", events, timeout=120)
    assert sorted(found) == ["response at_risk", "response breached"]
    risk, missed = found["response at_risk"], found["response breached"]
    # At risk before 17:00, seen by Germany; missed after, seen by the US under a newer epoch.
    assert (risk.region, risk.escalation_level) == ("germany", 1)
    assert (missed.region, missed.escalation_level) == ("us", 2)
    assert missed.epoch > risk.epoch
    series = {
        "risk": 'sundesk_sla_at_risk_total{queue="germany",target="response",tier="gold"}',
        "missed": BREACH_METRIC,
        "L2": 'sundesk_escalations_total{level="L2"}',
    }
    counts = {k: {r: metric(fed, r, s) for r in fed.nodes if metric(fed, r, s)}
              for k, s in series.items()}  # fmt: skip
    assert counts == {"risk": {"germany": 1}, "missed": {"us": 1}, "L2": {"us": 1}}
    with us.client() as c:
        t = c.desk.GetTicket(pb.GetTicketRequest(code=code), timeout=5)
    assert (t.escalation_level, t.sla.response_recorded) == (2, "breached")
