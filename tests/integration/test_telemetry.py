"""Machines calling home, on real etcd and five real node processes with a simulated
clock at 60x (a 60 s heartbeat interval is one real second), from Wednesday 4 March 2026
09:30 UTC, when Vélizy is open and owns its own queue.

- ten repeats of one alarm sent to two regions at once: one open ticket, ten
  occurrences, on all five nodes;
- a machine that stops its heartbeats (sent to Germany, judged by Vélizy, the owner)
  gets exactly one silent ticket within the window, and a note when it comes back;
- malformed and unknown-asset reports get clear errors and open nothing.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import grpc
import pytest
from grpc import aio

from node.convert import ts_to_iso
from node.tickets import iso, parse_iso
from ops.etcd_process import EtcdServer
from sundesk.v1 import contracts_pb2 as cpb
from sundesk.v1 import contracts_pb2_grpc, desk_pb2_grpc, sun_pb2_grpc, telemetry_pb2_grpc
from sundesk.v1 import desk_pb2 as pb
from sundesk.v1 import sun_pb2 as spb
from sundesk.v1 import telemetry_pb2 as tpb
from tests.support.nodes import ROOT, Federation, NodeProcess, wait_for

pytestmark = pytest.mark.integration

SPEED = 60
INTERVAL = 60  # simulated seconds between heartbeats
MISSED = 3
START = datetime(2026, 3, 4, 9, 30, tzinfo=UTC)
ORIGIN = time.time()
OPEN = [pb.TICKET_STATE_NEW, pb.TICKET_STATE_ASSIGNED, pb.TICKET_STATE_IN_PROGRESS,
        pb.TICKET_STATE_PENDING_CUSTOMER]  # fmt: skip


@pytest.fixture(scope="module")
def fed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Federation]:
    base = tmp_path_factory.mktemp("telemetry")
    etcd = EtcdServer(base / "etcd").start()
    f = Federation.make(
        base,
        etcd=etcd.endpoint,
        extra_args=[
            "--clock-start", "2026-03-04T09:30:00Z", "--speed", str(SPEED),
            "--clock-origin", repr(ORIGIN), "--telemetry-period", "0.25",
            "--missed-heartbeats", str(MISSED),
        ],
    )  # fmt: skip
    try:
        for n in f.nodes.values():
            n.start(wait=False)
        for n in f.nodes.values():
            n.wait_healthy(timeout=90)  # five Python processes on a shared 2-core machine
        yield f
    finally:
        f.stop()
        etcd.close()


def telemetry(node: NodeProcess) -> telemetry_pb2_grpc.TelemetryStub:
    return telemetry_pb2_grpc.TelemetryStub(grpc.insecure_channel(node.address))


def desk(node: NodeProcess) -> desk_pb2_grpc.DeskStub:
    return desk_pb2_grpc.DeskStub(grpc.insecure_channel(node.address))


def register(
    node: NodeProcess, customer: str, tier: pb.ContractTier, asset: str, monitored: bool
) -> None:
    stub = contracts_pb2_grpc.ContractsStub(grpc.insecure_channel(node.address))
    stub.RegisterCustomer(
        cpb.RegisterCustomerRequest(
            customer=cpb.Customer(id=customer, name=customer, home_region="velizy", tier=tier)
        ),
        timeout=5,
    )
    stub.RegisterAsset(
        cpb.RegisterAssetRequest(
            asset=cpb.Asset(
                id=asset,
                customer=customer,
                model="MRI-7",
                serial=f"SN-{asset}",
                monitored=monitored,
                heartbeat_seconds=INTERVAL if monitored else 0,
            )
        ),
        timeout=5,
    )


def tickets_of(node: NodeProcess, customer: str, open_only: bool = False) -> list[pb.Ticket]:
    reply = desk(node).ListTickets(
        pb.ListTicketsRequest(customer=customer, states=OPEN if open_only else [], page_size=500),
        timeout=5,
    )
    return [
        desk(node).GetTicket(pb.GetTicketRequest(code=t.code), timeout=5) for t in reply.tickets
    ]


def wait_registered(fed: Federation, asset: str) -> None:
    for node in fed.nodes.values():
        stub = contracts_pb2_grpc.ContractsStub(grpc.insecure_channel(node.address))

        def known(stub: contracts_pb2_grpc.ContractsStub = stub) -> bool:
            return any(
                a.id == asset for a in stub.ListAssets(cpb.ListAssetsRequest(), timeout=5).assets
            )

        wait_for(
            f"{node.region} to know {asset}",
            known,
            timeout=20,
        )


def test_malformed_and_unknown_asset_reports_get_clear_errors_and_open_nothing(
    fed: Federation,
) -> None:
    velizy = fed.node("velizy")
    register(velizy, "bad-reports", pb.CONTRACT_TIER_GOLD, "bad-mri", monitored=False)
    stub = telemetry(velizy)
    cases = [
        (tpb.AlarmRequest(asset="ghost", code="E1", severity=tpb.ALARM_SEVERITY_MAJOR),
         grpc.StatusCode.NOT_FOUND, "asset 'ghost' is not registered"),
        (tpb.AlarmRequest(asset="bad-mri", code="  ", severity=tpb.ALARM_SEVERITY_MAJOR),
         grpc.StatusCode.INVALID_ARGUMENT, "alarm code is empty"),
        (tpb.AlarmRequest(asset="bad-mri", code="E" * 40, severity=tpb.ALARM_SEVERITY_MAJOR),
         grpc.StatusCode.INVALID_ARGUMENT, "at most 32"),
        (tpb.AlarmRequest(asset="bad-mri", code="E/1", severity=tpb.ALARM_SEVERITY_MAJOR),
         grpc.StatusCode.INVALID_ARGUMENT, "may hold only letters"),
        (tpb.AlarmRequest(asset="bad-mri", code="E1"),
         grpc.StatusCode.INVALID_ARGUMENT, "severity 0 is missing or unknown"),
        (tpb.AlarmRequest(asset="bad-mri", code="E1", severity=tpb.ALARM_SEVERITY_MINOR,
                          message="x" * 2001),
         grpc.StatusCode.INVALID_ARGUMENT, "at most 2000"),
        (tpb.AlarmRequest(asset="", code="E1", severity=tpb.ALARM_SEVERITY_MINOR),
         grpc.StatusCode.INVALID_ARGUMENT, "asset id"),
    ]  # fmt: skip
    for request, status, text in cases:
        with pytest.raises(grpc.RpcError) as err:
            stub.Alarm(request, timeout=5)
        assert err.value.code() == status, request
        assert text in (err.value.details() or ""), err.value.details()
    heartbeats = [
        (tpb.HeartbeatRequest(asset="ghost"), grpc.StatusCode.NOT_FOUND, "not registered"),
        (tpb.HeartbeatRequest(asset="bad-mri"), grpc.StatusCode.INVALID_ARGUMENT,
         "is not monitored"),
        (tpb.HeartbeatRequest(asset="bad-mri", diagnostics={f"k{i}": "v" for i in range(65)}),
         grpc.StatusCode.INVALID_ARGUMENT, "at most 64"),
    ]  # fmt: skip
    for beat, status, text in heartbeats:
        with pytest.raises(grpc.RpcError) as err:
            stub.Heartbeat(beat, timeout=5)
        assert err.value.code() == status
        assert text in (err.value.details() or "")
    # A valid alarm afterwards is the first ticket of this customer: nothing was opened.
    ok = stub.Alarm(
        tpb.AlarmRequest(asset="bad-mri", code="e1", severity=tpb.ALARM_SEVERITY_MINOR), timeout=5
    )
    found = tickets_of(velizy, "bad-reports")
    assert [t.code for t in found] == [ok.ticket]
    assert found[0].occurrences == 1
    assert found[0].priority == 2  # minor, raised one level for gold
    assert not found[0].HasField("customer_notified_at")  # gold is not proactive


def test_ten_repeats_sent_to_two_regions_at_once_make_one_ticket_everywhere(
    fed: Federation,
) -> None:
    velizy, japan = fed.node("velizy"), fed.node("japan")
    register(velizy, "clinic-lyon", pb.CONTRACT_TIER_PLATINUM, "lyon-mri", monitored=False)
    wait_registered(fed, "lyon-mri")

    async def burst() -> list[tpb.AlarmReply]:
        channels = [aio.insecure_channel(n.address) for n in (velizy, japan)]
        stubs = [telemetry_pb2_grpc.TelemetryStub(c) for c in channels]
        request = tpb.AlarmRequest(
            asset="lyon-mri", code="E-42", severity=tpb.ALARM_SEVERITY_MAJOR, message="helium low"
        )
        try:
            return list(
                await asyncio.gather(*(stubs[i % 2].Alarm(request, timeout=10) for i in range(10)))
            )
        finally:
            for c in channels:
                await c.close()

    replies = asyncio.run(burst())
    codes = {r.ticket for r in replies}
    assert len(codes) == 1, codes
    (code,) = codes

    def agreed() -> bool:
        digests = set()
        for node in fed.nodes.values():
            found = tickets_of(node, "clinic-lyon", open_only=True)
            if [t.code for t in found] != [code] or found[0].occurrences != 10:
                return False
            digests.add(found[0].digest)
        # The owner may auto-assign the new ticket meanwhile: wait for every region to
        # hold that change too, then they are byte-identical.
        return len(digests) == 1

    wait_for("one open ticket with ten occurrences, identical on all five nodes", agreed, 30)
    ticket = desk(japan).GetTicket(pb.GetTicketRequest(code=code), timeout=5)
    assert ticket.source == "machine"
    assert ticket.kind == pb.TICKET_KIND_INCIDENT
    assert ticket.priority == 1  # major, raised one level for platinum
    assert ticket.HasField("customer_notified_at")  # platinum: proactive monitoring
    assert ts_to_iso(ticket.first_seen) <= ts_to_iso(ticket.last_seen)


def test_a_silent_machine_gets_one_ticket_in_the_window_and_a_note_when_back(
    fed: Federation,
) -> None:
    velizy, germany = fed.node("velizy"), fed.node("germany")
    wait_for(
        "velizy to own its queue",
        lambda: any(
            q.queue == "velizy" and q.mine
            for q in sun_pb2_grpc.SunStub(grpc.insecure_channel(velizy.address))
            .GetStatus(spb.SunStatusRequest(), timeout=2)
            .queues
        ),
        timeout=30,
    )
    register(velizy, "clinic-nice", pb.CONTRACT_TIER_SILVER, "nice-ct", monitored=True)
    wait_registered(fed, "nice-ct")
    beat = telemetry(germany)  # the machine reports to Germany; Vélizy owns the queue

    def beat_for(real_seconds: float) -> str:
        last = ""
        deadline = time.monotonic() + real_seconds
        while time.monotonic() < deadline:
            beat.Heartbeat(tpb.HeartbeatRequest(asset="nice-ct", diagnostics={"temp": "41"}))
            last = sim_now()
            time.sleep(0.25)  # the machine's own pace (15 simulated s), not a wait
        return last

    beat_for(5.0)  # five intervals: a live machine is not silent
    assert tickets_of(velizy, "clinic-nice") == []
    last = beat_for(0.3)

    wait_for(
        "the silent ticket",
        lambda: tickets_of(velizy, "clinic-nice", open_only=True),
        timeout=20,
    )
    (silent,) = tickets_of(velizy, "clinic-nice")
    assert silent.title.startswith("machine silent")
    assert silent.origin_region == "velizy"  # the owner opened it
    opened_after = (parse_iso(ts_to_iso(silent.created_at)) - parse_iso(last)).total_seconds()
    # Never before the window; at most one interval of slack (last-seen is replicated
    # coarsely), one flush and a scan after it, plus an interval for a loaded machine.
    window = INTERVAL * MISSED
    assert window <= opened_after + 1 <= window + 3 * INTERVAL, opened_after

    beat_for(1.0)
    note = "is back"

    def noted() -> bool:
        for node in fed.nodes.values():
            found = tickets_of(node, "clinic-nice")
            if len(found) != 1 or not any(note in c.text for c in found[0].comments):
                return False
        return True

    wait_for("the note on all five nodes", noted, timeout=20)
    reply = beat.Heartbeat(tpb.HeartbeatRequest(asset="nice-ct"), timeout=5)
    assert reply.silent_ticket == silent.code  # still open: an engineer closes it
    (again,) = tickets_of(germany, "clinic-nice")
    assert sum(note in c.text for c in again.comments) == 1


def sim_now() -> str:
    """The federation's simulated instant: every node runs the same scaled clock."""
    return iso(START + timedelta(seconds=(time.time() - ORIGIN) * SPEED))


def test_the_simulator_registers_a_fleet_and_calls_home(fed: Federation) -> None:
    uk = fed.node("uk")
    run = subprocess.run(
        [sys.executable, "-m", "ops.cli", "machines", "simulate", "--node", uk.address,
         "--region", "uk", "--assets", "4", "--heartbeat", "1", "--seconds", "2",
         "--alarm-rate", "4", "--json"],
        capture_output=True, text=True, timeout=60, cwd=ROOT,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    report = json.loads(run.stdout)
    assert report["assets"] == 4 and report["errors"] == {}
    assert report["heartbeats"] >= 4 and report["alarms"] >= 4
    # Three alarm codes on four machines: repeats are counted, not opened again.
    assert 1 <= len(report["alarm_tickets"]) <= 12
    bad = subprocess.run(
        [sys.executable, "-m", "ops.cli", "machines", "simulate", "--node", uk.address,
         "--region", "uk", "--assets", "0"],
        capture_output=True, text=True, timeout=60, cwd=ROOT,
    )  # fmt: skip
    assert bad.returncode == 1
    assert bad.stderr.strip() == "error: --assets 0 must be 1 to 100000"
