"""Follow the sun with real etcd and five real node processes on a simulated clock.

The day runs at 3600x (an hour a second); the failure tests run at 60x so that lease
TTLs (real seconds) are short against the plan's shifts.
"""

from __future__ import annotations

import signal
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from ops.etcd_process import EtcdServer
from ops.owner_watch import OwnerEvent, OwnerWatcher
from sundesk.v1 import desk_pb2 as pb
from sundesk.v1 import sun_pb2 as spb
from sundesk.v1 import sun_pb2_grpc
from tests.support.nodes import Federation, NodeProcess, wait_for

pytestmark = pytest.mark.integration

TTL = 3.0  # the shipped default lease TTL


def sun(node: NodeProcess) -> sun_pb2_grpc.SunStub:
    return sun_pb2_grpc.SunStub(grpc.insecure_channel(node.address))


def owners(node: NodeProcess) -> dict[str, tuple[str, int]]:
    try:
        st = sun(node).GetStatus(spb.SunStatusRequest(), timeout=2)
    except grpc.RpcError:
        return {}
    return {q.queue: (q.owner, q.epoch) for q in st.queues}


def start_federation(base: Path, etcd: EtcdServer, clock_start: str, speed: float) -> Federation:
    fed = Federation.make(
        base,
        etcd=etcd.endpoint,
        extra_args=[
            "--clock-start",
            clock_start,
            "--speed",
            str(speed),
            "--clock-origin",
            repr(time.time()),
        ],
    )
    return fed.start()


# ----- a simulated day -------------------------------------------------------------------


@pytest.fixture(scope="module")
def day(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Federation, OwnerWatcher]]:
    base = tmp_path_factory.mktemp("day")
    etcd = EtcdServer(base / "etcd").start()
    watcher = OwnerWatcher(etcd.endpoint)
    # Wednesday 4 March 2026, 06:00 UTC: Japan is open, Europe and the US are not yet.
    fed = start_federation(base, etcd, "2026-03-04T06:00:00Z", 3600)
    try:
        yield fed, watcher
    finally:
        fed.stop()
        watcher.stop()
        etcd.close()


def test_a_day_of_planned_handoffs_has_no_gap_and_records_everywhere(
    day: tuple[Federation, OwnerWatcher],
) -> None:
    fed, watcher = day

    def past_midnight() -> bool:
        st = sun(fed.node("velizy")).GetStatus(spb.SunStatusRequest(), timeout=2)
        return st.now >= "2026-03-05T00:30"

    wait_for("the simulated day to end", past_midnight, timeout=60, interval=0.2)
    assert not [e for e in watcher.events if e.kind == "delete"], "an owner key vanished"
    per_queue: dict[str, list[OwnerEvent]] = {}
    for e in watcher.events:
        per_queue.setdefault(e.queue, []).append(e)
    assert set(per_queue) == set(fed.config.queue_names())
    for queue, events in per_queue.items():
        epochs = [e.epoch for e in events]
        assert epochs == sorted(set(epochs)), f"{queue}: epochs not strictly increasing"
        assert len({e.region for e in events}) >= 2, f"{queue} never moved"

    def same_records() -> list[str] | None:
        lists = []
        for node in fed.nodes.values():
            resp = sun(node).ListHandoffs(spb.ListHandoffsRequest(), timeout=5)
            lists.append([(h.id, h.acked_by, h.escalated_to) for h in resp.handoffs])
        return [h[0] for h in lists[0]] if all(x == lists[0] for x in lists) else None

    ids = wait_for("every handoff record on all five nodes", same_records, timeout=20)
    epochs_seen = {(e.queue, e.epoch) for e in watcher.events if e.kind == "put"}
    assert {f"HO-{q}-{ep}" for q, ep in epochs_seen} <= set(ids)
    records = sun(fed.node("japan")).ListHandoffs(spb.ListHandoffsRequest(), timeout=5).handoffs
    oncall = [h for h in records if h.kind == "on-call"]
    assert oncall, "no after-hours handoff to the on-call engineer"
    # Nobody acknowledged tonight's on-call handoffs: each escalated to the secondary once.
    assert all(h.escalated_to and h.to_engineer != h.escalated_to for h in oncall)


# ----- failures --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def etcd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EtcdServer]:
    server = EtcdServer(tmp_path_factory.mktemp("etcd") / "data").start()
    yield server
    server.close()


@pytest.fixture(scope="module")
def office(tmp_path_factory: pytest.TempPathFactory, etcd: EtcdServer) -> Iterator[Federation]:
    # Wednesday 10:00 UTC at 60x: Europe is open for hours of simulated time to come.
    fed = start_federation(tmp_path_factory.mktemp("office"), etcd, "2026-03-04T10:00:00Z", 60)
    yield fed
    fed.stop()


@pytest.fixture
def settled(office: Federation, etcd: EtcdServer) -> Federation:
    if not etcd.running():
        etcd.restart()
    for node in office.nodes.values():
        if not node.alive:
            node.start()
        else:
            node.signal(signal.SIGCONT)

    def homes_hold_their_queues() -> bool:
        seen = owners(office.node("uk"))
        return all(seen.get(q, ("", 0))[0] == q for q in ("velizy", "germany"))

    wait_for("Vélizy and Germany to hold their own queues", homes_hold_their_queues, timeout=30)
    return office


def test_failover_after_sigkill_within_ttl_plus_one_second(settled: Federation) -> None:
    fed = settled
    before = owners(fed.node("uk"))["velizy"]
    killed_at = time.monotonic()
    fed.node("velizy").kill()

    def new_owner() -> tuple[str, int] | None:
        owner, epoch = owners(fed.node("uk")).get("velizy", ("", 0))
        return (owner, epoch) if owner and owner != "velizy" else None

    owner, epoch = wait_for(
        "another region to take the velizy queue", new_owner, timeout=15, interval=0.05
    )
    elapsed = time.monotonic() - killed_at
    print(f"\nfailover: {owner} holds velizy at epoch {epoch} after {elapsed:.2f} s")
    assert epoch > before[1]
    assert elapsed <= TTL + 1.0 + 0.3  # the last 0.3 s: the status poll's own interval
    records = sun(fed.node("uk")).ListHandoffs(spb.ListHandoffsRequest(queue="velizy"))
    assert any(h.kind == "failover" and h.epoch == epoch for h in records.handoffs)


def test_fencing_a_paused_owner(settled: Federation) -> None:
    fed = settled
    with fed.node("uk").client() as c:
        code = c.desk.CreateTicket(
            pb.CreateTicketRequest(title="fenced", home_region="germany")
        ).code
    germany = fed.node("germany")
    wait_for("the ticket in Germany", lambda: _has(germany, code))
    old_epoch = owners(fed.node("uk"))["germany"][1]
    germany.signal(signal.SIGSTOP)
    try:

        def taken() -> tuple[str, int] | None:
            owner, epoch = owners(fed.node("uk")).get("germany", ("", 0))
            return (owner, epoch) if owner != "germany" and epoch > old_epoch else None

        new_owner, new_epoch = wait_for(
            "another region to take the germany queue", taken, timeout=20, interval=0.05
        )
    finally:
        germany.signal(signal.SIGCONT)
    with pytest.raises(grpc.RpcError) as info:
        sun(germany).EscalateTicket(spb.EscalateTicketRequest(code=code, by="stale"), timeout=5)
    assert info.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "not its owner" in info.value.details()
    done = sun(fed.node(new_owner)).EscalateTicket(
        spb.EscalateTicketRequest(code=code, by="owner"), timeout=5
    )
    assert done.escalation_level == 2 and done.epoch >= new_epoch


def _has(node: NodeProcess, code: str) -> bool:
    with node.client() as c:
        try:
            c.desk.GetTicket(pb.GetTicketRequest(code=code), timeout=2)
            return True
        except grpc.RpcError:
            return False


def test_etcd_down_for_ten_seconds(settled: Federation, etcd: EtcdServer) -> None:
    fed = settled
    with fed.node("velizy").client() as c:
        code = c.desk.CreateTicket(pb.CreateTicketRequest(title="during outage")).code
    etcd.stop()
    stopped_at = time.monotonic()
    written = 0
    try:
        # Ten seconds of real work: every region keeps writing and reading tickets.
        while time.monotonic() - stopped_at < 10:
            for node in fed.nodes.values():
                with node.client() as c:
                    t = c.desk.CreateTicket(pb.CreateTicketRequest(title="etcd is down"), timeout=2)
                    assert c.desk.GetTicket(pb.GetTicketRequest(code=t.code)).code == t.code
                    written += 1
        # Leases could not be renewed for longer than the TTL: owner-only actions pause.
        with pytest.raises(grpc.RpcError) as info:
            sun(fed.node("velizy")).EscalateTicket(
                spb.EscalateTicketRequest(code=code, by="owner"), timeout=5
            )
        assert info.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    finally:
        etcd.restart()
    assert written >= 5 * 5

    def escalated() -> bool:
        try:
            sun(fed.node("velizy")).EscalateTicket(
                spb.EscalateTicketRequest(code=code, by="owner"), timeout=5
            )
            return True
        except grpc.RpcError:
            return False

    wait_for("ownership to resume after etcd is back", escalated, timeout=30, interval=0.2)
    wait_for(
        "every queue to have an owner again",
        lambda: len(o := owners(fed.node("japan"))) == 5 and all(r for r, _ in o.values()),
        timeout=30,
    )
