"""One real `sundesk node` process over gRPC: the lifecycle, durability, and bad input."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from sundesk.v1 import desk_pb2 as pb
from sundesk.v1 import desk_pb2_grpc
from tests.support.nodes import ROOT, Federation, NodeProcess, free_ports, kill_during_burst

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def fed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Federation]:
    f = Federation.make(tmp_path_factory.mktemp("one"), regions=["velizy"])
    f.start()
    yield f
    f.stop()


@pytest.fixture
def node(fed: Federation) -> NodeProcess:
    n = fed.node("velizy")
    if not n.alive:
        n.start()
    return n


def cli(node: NodeProcess, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "ops.cli", *args, "--node", node.address],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=30,
    )


def cli_json(node: NodeProcess, *args: str) -> dict:
    done = cli(node, *args, "--json")
    assert done.returncode == 0, done.stderr
    result: dict = json.loads(done.stdout)
    return result


def test_lifecycle_through_the_cli(node: NodeProcess) -> None:
    t = cli_json(
        node,
        "ticket",
        "create",
        "--title",
        "Disk array degraded",
        "--priority",
        "2",
        "--customer",
        "acme",
        "--kind",
        "incident",
        "--by",
        "ana",
    )
    code = t["code"]
    assert code.startswith("VEL-") and len(code) == 10
    assert (t["state"], t["priority"], t["kind"], t["customer"], t["queue"], t["version"]) == (
        "new",
        2,
        "incident",
        "acme",
        "velizy",
        1,
    )
    t = cli_json(node, "ticket", "assign", code, "--to", "bob", "--by", "lead")
    assert (t["state"], t["assignee"]) == ("assigned", "bob")
    t = cli_json(node, "ticket", "start", code, "--by", "bob", "--version", str(t["version"]))
    t = cli_json(node, "ticket", "comment", code, "--text", "Replacing disk 3", "--by", "bob")
    t = cli_json(node, "ticket", "pend", code, "--by", "bob")
    t = cli_json(node, "ticket", "reopen", code, "--by", "bob")
    assert t["state"] == "in_progress"
    t = cli_json(node, "ticket", "resolve", code, "--by", "bob", "--cause", "hardware")
    t = cli_json(node, "ticket", "close", code, "--by", "bob")
    shown = cli_json(node, "ticket", "show", code)
    assert shown["state"] == "closed" and shown["cause"] == "hardware"
    assert shown["version"] == 8
    assert shown["comments"] == [
        {
            "id": shown["comments"][0]["id"],
            "author": "bob",
            "text": "Replacing disk 3",
            "at": shown["comments"][0]["at"],
            "region": "velizy",
            "internal": False,
        }
    ]
    assert [h["to"] for h in shown["history"]] == [
        "assigned",
        "in_progress",
        "pending_customer",
        "in_progress",
        "resolved",
        "closed",
    ]
    listed = cli_json(node, "ticket", "list", "--state", "closed", "--customer", "acme")
    assert code in [x["code"] for x in listed["tickets"]]
    human = cli(node, "ticket", "show", code)
    assert human.returncode == 0 and "Replacing disk 3" in human.stdout


def test_paging_visits_every_ticket_once(node: NodeProcess) -> None:
    with node.client() as c:
        made = {
            c.desk.CreateTicket(pb.CreateTicketRequest(title=f"p{i}", customer="pager")).code
            for i in range(23)
        }
        seen: list[str] = []
        token = ""
        while True:
            resp = c.desk.ListTickets(
                pb.ListTicketsRequest(customer="pager", page_size=5, page_token=token)
            )
            assert resp.total == 23
            seen.extend(t.code for t in resp.tickets)
            token = resp.next_page_token
            if not token:
                break
    assert sorted(seen) == sorted(made)


def test_acknowledged_changes_survive_sigkill(node: NodeProcess) -> None:
    async def burst() -> dict[str, tuple[int, int]]:
        async with grpc.aio.insecure_channel(node.address) as ch:
            stub = desk_pb2_grpc.DeskStub(ch)
            created = await asyncio.gather(
                *(
                    stub.CreateTicket(
                        pb.CreateTicketRequest(title=f"burst {i}", customer="durable")
                    )
                    for i in range(200)
                )
            )
            acked: dict[str, tuple[int, int]] = {}
            updates = [
                stub.UpdateTicket(pb.UpdateTicketRequest(code=t.code, actor="a", priority=1))
                for t in created[:100]
            ]
            comments = [
                stub.AddComment(pb.AddCommentRequest(code=t.code, author="a", text="note"))
                for t in created[100:]
            ]
            for t in await asyncio.gather(*updates, *comments):
                acked[t.code] = (t.version, len(t.comments))
            return acked

    acked = asyncio.run(burst())
    node.kill()
    node.start()
    with node.client() as c:
        for code, (version, comments) in acked.items():
            t = c.desk.GetTicket(pb.GetTicketRequest(code=code))
            assert (t.version, len(t.comments)) == (version, comments), code
        resp = c.desk.ListTickets(pb.ListTicketsRequest(customer="durable", page_size=1))
        assert resp.total == 200


def test_writes_in_flight_at_sigkill_are_all_or_nothing(node: NodeProcess) -> None:
    """Kill during a write burst: every acknowledged write is there, nothing half-written."""
    acked = kill_during_burst(node, total=400, kill_after=50, customer="midkill")
    node.start()
    with node.client() as c:
        present = {
            t.code: t
            for t in c.desk.ListTickets(
                pb.ListTicketsRequest(customer="midkill", page_size=500)
            ).tickets
        }
    assert set(acked) <= set(present)
    for t in present.values():
        assert t.title.startswith("midkill ") and t.version == 1 and t.state == pb.TICKET_STATE_NEW


def test_watch_streams_changes(node: NodeProcess) -> None:
    async def run() -> list[pb.TicketEvent]:
        async with grpc.aio.insecure_channel(node.address) as ch:
            stub = desk_pb2_grpc.DeskStub(ch)
            await stub.CreateTicket(pb.CreateTicketRequest(title="already there"))
            # The server subscribes before it sends the initial tickets, so the first
            # initial event proves every later change will be seen.
            stream = stub.WatchTickets(pb.WatchTicketsRequest(queue="velizy", send_initial=True))
            first = await stream.read()
            assert first.type == pb.TicketEvent.TYPE_INITIAL
            t = await stub.CreateTicket(pb.CreateTicketRequest(title="watched"))
            await stub.AddComment(pb.AddCommentRequest(code=t.code, author="x", text="y"))
            await stub.UpdateTicket(pb.UpdateTicketRequest(code=t.code, actor="x", priority=1))
            got: list[pb.TicketEvent] = []
            while len(got) < 3:
                ev = await asyncio.wait_for(stream.read(), 10)
                if ev.type != pb.TicketEvent.TYPE_INITIAL:
                    got.append(ev)
            stream.cancel()
            return got

    events = asyncio.run(run())
    assert [e.type for e in events] == [
        pb.TicketEvent.TYPE_CREATED,
        pb.TicketEvent.TYPE_COMMENTED,
        pb.TicketEvent.TYPE_UPDATED,
    ]
    assert events[2].ticket.priority == 1 and events[0].region == "velizy"
    assert len({e.ticket.code for e in events}) == 1


def test_health_and_reflection(node: NodeProcess) -> None:
    with node.client() as c:
        resp = c.health.Check(health_pb2.HealthCheckRequest(service="sundesk.v1.Desk"))
        assert resp.status == health_pb2.HealthCheckResponse.SERVING
        stub = reflection_pb2_grpc.ServerReflectionStub(c.channel)
        answers = list(
            stub.ServerReflectionInfo(
                iter([reflection_pb2.ServerReflectionRequest(list_services="")])
            )
        )
        names = {s.name for s in answers[0].list_services_response.service}
        assert {"sundesk.v1.Desk", "sundesk.v1.Contracts", "grpc.health.v1.Health"} <= names


# ---- bad input: the right status, a message that says what to fix, nothing written ----


def _code_of(node: NodeProcess, call) -> tuple[grpc.StatusCode, str]:  # type: ignore[no-untyped-def]
    with node.client() as c:
        with pytest.raises(grpc.RpcError) as info:
            call(c.desk)
    return info.value.code(), info.value.details()


@pytest.fixture
def victim(node: NodeProcess) -> pb.Ticket:
    with node.client() as c:
        t: pb.Ticket = c.desk.CreateTicket(pb.CreateTicketRequest(title="victim"))
        return t


@pytest.mark.parametrize(
    ("make", "status", "message"),
    [
        (
            lambda v: lambda d: d.CreateTicket(pb.CreateTicketRequest(title="")),
            grpc.StatusCode.INVALID_ARGUMENT,
            "title is empty",
        ),
        (
            lambda v: lambda d: d.CreateTicket(pb.CreateTicketRequest(title="x" * 10_000_000)),
            grpc.StatusCode.RESOURCE_EXHAUSTED,
            "larger than max",
        ),
        (
            lambda v: lambda d: d.CreateTicket(pb.CreateTicketRequest(title="x" * 300)),
            grpc.StatusCode.INVALID_ARGUMENT,
            "at most 200",
        ),
        (
            lambda v: lambda d: d.GetTicket(pb.GetTicketRequest(code="VEL-999999")),
            grpc.StatusCode.NOT_FOUND,
            "no ticket VEL-999999",
        ),
        (
            lambda v: (
                lambda d: d.UpdateTicket(
                    pb.UpdateTicketRequest(code=v.code, actor="a", state=pb.TICKET_STATE_CLOSED)
                )
            ),
            grpc.StatusCode.FAILED_PRECONDITION,
            "cannot go from new to closed",
        ),
        (
            lambda v: (
                lambda d: d.UpdateTicket(
                    pb.UpdateTicketRequest(
                        code=v.code, actor="a", priority=1, expected_version=v.version + 5
                    )
                )
            ),
            grpc.StatusCode.ABORTED,
            "read it again and retry",
        ),
        (
            lambda v: lambda d: d.CreateTicket(pb.CreateTicketRequest(title="t", kind=42)),  # type: ignore[arg-type]
            grpc.StatusCode.INVALID_ARGUMENT,
            "kind 42 is not a ticket kind",
        ),
        (
            lambda v: (
                lambda d: d.UpdateTicket(
                    pb.UpdateTicketRequest(code=v.code, actor="a", state=17)  # type: ignore[arg-type]
                )
            ),
            grpc.StatusCode.INVALID_ARGUMENT,
            "state 17 is not a ticket state",
        ),
        (
            lambda v: lambda d: d.CreateTicket(pb.CreateTicketRequest(title="t", priority=9)),
            grpc.StatusCode.INVALID_ARGUMENT,
            "priority 9 is out of range",
        ),
        (
            lambda v: lambda d: d.ListTickets(pb.ListTicketsRequest(page_token="garbage!")),
            grpc.StatusCode.INVALID_ARGUMENT,
            "page token",
        ),
        (
            lambda v: lambda d: d.AddComment(pb.AddCommentRequest(code=v.code, author="a")),
            grpc.StatusCode.INVALID_ARGUMENT,
            "comment text is empty",
        ),
    ],
    ids=[
        "empty-title",
        "10MB-title",
        "long-title",
        "unknown-code",
        "illegal-transition",
        "stale-version",
        "unknown-kind",
        "unknown-state",
        "bad-priority",
        "bad-page-token",
        "empty-comment",
    ],
)
def test_bad_input_gets_its_status_and_writes_nothing(
    node: NodeProcess,
    victim: pb.Ticket,
    make,
    status,
    message,  # type: ignore[no-untyped-def]
) -> None:
    with node.client() as c:
        before = c.desk.ListTickets(pb.ListTicketsRequest(page_size=1)).total
    code, details = _code_of(node, make(victim))
    assert code == status
    assert message in details
    with node.client() as c:
        assert c.desk.ListTickets(pb.ListTicketsRequest(page_size=1)).total == before
        assert c.desk.GetTicket(pb.GetTicketRequest(code=victim.code)).version == victim.version


def test_cli_prints_errors_in_one_line(node: NodeProcess) -> None:
    done = cli(node, "ticket", "show", "VEL-424242")
    assert done.returncode == 1
    assert done.stderr.strip().count("\n") == 0
    assert done.stderr.startswith("error: NOT_FOUND: no ticket VEL-424242")
    done = cli(node, "ticket", "create", "--title", "x" * 100_000)
    assert done.returncode == 1
    assert "INVALID_ARGUMENT: title is 100000 characters long; at most 200" in done.stderr
    assert done.stderr.strip().count("\n") == 0


def test_cli_says_when_no_node_answers() -> None:
    port = free_ports(1)[0]
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "ops.cli",
            "ticket",
            "list",
            "--node",
            f"127.0.0.1:{port}",
            "--timeout",
            "2",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert done.returncode == 1
    assert "UNAVAILABLE" in done.stderr and done.stderr.strip().count("\n") == 0


def _run_node(tmp_path: Path, fed: Federation, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "ops.cli",
            "node",
            "--region",
            "velizy",
            "--config",
            str(fed.config_path),
            "--insecure",
            *args,
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=30,
    )


def test_port_already_taken(node: NodeProcess, fed: Federation, tmp_path: Path) -> None:
    done = _run_node(tmp_path, fed, "--listen", node.address, "--data-dir", str(tmp_path / "d"))
    assert done.returncode == 1
    assert f"cannot listen on {node.address}" in done.stderr
    assert "Traceback" not in done.stderr


def test_data_dir_that_is_a_file(fed: Federation, tmp_path: Path) -> None:
    bogus = tmp_path / "not-a-dir"
    bogus.write_text("hello")
    port = free_ports(1)[0]
    done = _run_node(tmp_path, fed, "--listen", f"127.0.0.1:{port}", "--data-dir", str(bogus))
    assert done.returncode == 1
    assert "is not a directory" in done.stderr and "Traceback" not in done.stderr


def test_data_dir_with_a_corrupt_database(fed: Federation, tmp_path: Path) -> None:
    data = tmp_path / "corrupt"
    data.mkdir()
    (data / "sundesk.db").write_bytes(b"this is not sqlite" * 100)
    port = free_ports(1)[0]
    done = _run_node(tmp_path, fed, "--listen", f"127.0.0.1:{port}", "--data-dir", str(data))
    assert done.returncode == 1
    assert "not a usable Sundesk database" in done.stderr and "Traceback" not in done.stderr
    assert (data / "sundesk.db").read_bytes() == b"this is not sqlite" * 100


def test_sigterm_stops_gracefully(fed: Federation, tmp_path: Path) -> None:
    port = free_ports(1)[0]
    n = NodeProcess(
        "velizy", f"127.0.0.1:{port}", tmp_path / "g", fed.config_path, tmp_path / "g.log"
    )
    n.start()
    assert n.terminate() == 0
    assert "stopping" in n.log()
