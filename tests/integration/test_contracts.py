"""Customers and assets on real node processes: registered on one region, known on the
other, deciding the tier and queue of tickets; bad input gets its status."""

from __future__ import annotations

import json
import subprocess
import sys
import urllib.request
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta
from typing import Any

import grpc
import pytest

from ops.client import Client
from sundesk.v1 import contracts_pb2 as cpb
from sundesk.v1 import contracts_pb2_grpc, federation_pb2
from sundesk.v1 import desk_pb2 as pb
from tests.support.nodes import ROOT, Federation, NodeProcess, wait_for

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def fed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Federation]:
    f = Federation.make(tmp_path_factory.mktemp("contracts"), regions=["velizy", "germany"])
    f.start()
    yield f
    f.stop()


@pytest.fixture(scope="module")
def bosch(fed: Federation) -> cpb.Customer:
    """Registered once; registering the same again (as the CLI test does) is a no-op."""
    customer = cpb.Customer(
        id="bosch-ulm", name="Bosch Ulm", home_region="germany", tier=pb.CONTRACT_TIER_GOLD
    )
    with fed.node("velizy").client() as c:
        got: cpb.Customer = contracts(c).RegisterCustomer(
            cpb.RegisterCustomerRequest(customer=customer)
        )
    return got


def cli(node: NodeProcess, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "ops.cli", *args, "--node", node.address],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=30,
    )


def cli_json(node: NodeProcess, *args: str) -> Any:
    done = cli(node, *args, "--json")
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def _metric(fed: Federation, region: str, series: str) -> float:
    url = f"http://127.0.0.1:{fed.config.region(region).metrics_port}/metrics"
    with urllib.request.urlopen(url, timeout=2) as reply:
        for line in reply.read().decode().splitlines():
            if line.startswith(series + " "):
                return float(line.rsplit(" ", 1)[1])
    return 0.0


def contracts(c: Client) -> contracts_pb2_grpc.ContractsStub:
    return contracts_pb2_grpc.ContractsStub(c.channel)


def test_registered_customer_is_known_everywhere_and_decides_the_queue(
    fed: Federation, bosch: cpb.Customer
) -> None:
    velizy, germany = fed.node("velizy"), fed.node("germany")
    got = cli_json(
        velizy, "customer", "add", "bosch-ulm", "--name", "Bosch Ulm", "--region", "germany",
        "--tier", "gold",
    )  # fmt: skip
    assert got == {"id": "bosch-ulm", "name": "Bosch Ulm", "home_region": "germany", "tier": "gold"}
    asset = cli_json(
        velizy, "asset", "add", "ulm-mri-1", "--customer", "bosch-ulm", "--model", "MRI 3T",
        "--serial", "X1", "--monitored", "--heartbeat", "60",
    )  # fmt: skip
    assert asset["monitored"] is True and asset["heartbeat_seconds"] == 60

    def known_in_germany() -> bool:
        listed = cli_json(germany, "asset", "list", "--monitored")["assets"]
        return [a["id"] for a in listed] == ["ulm-mri-1"]

    wait_for("the asset to replicate to germany", known_in_germany, timeout=15)
    listed = cli_json(germany, "customer", "list", "--region", "germany")["customers"]
    assert [c["id"] for c in listed] == ["bosch-ulm"]
    table = cli(germany, "customer", "list")
    assert table.returncode == 0 and "Bosch Ulm" in table.stdout and "gold" in table.stdout

    # Created in Vélizy, the ticket of a German gold customer is gold and in Germany's queue.
    ticket = cli_json(velizy, "ticket", "create", "--title", "MRI down", "--asset", "ulm-mri-1")
    assert (ticket["customer"], ticket["tier"], ticket["home_region"], ticket["queue"]) == (
        "bosch-ulm",
        "gold",
        "germany",
        "germany",
    )
    walk_in = cli_json(velizy, "ticket", "create", "--title", "?", "--customer", "passer-by")
    assert (walk_in["tier"], walk_in["queue"]) == ("", "velizy")


def _register_customer(**kw: Any) -> Callable[[contracts_pb2_grpc.ContractsStub], Any]:
    customer = cpb.Customer(**{"id": "c1", "name": "C1", "home_region": "velizy", "tier": 1, **kw})
    return lambda s: s.RegisterCustomer(cpb.RegisterCustomerRequest(customer=customer))


def _register_asset(**kw: Any) -> Callable[[contracts_pb2_grpc.ContractsStub], Any]:
    asset = cpb.Asset(**{"id": "a1", "customer": "bosch-ulm", "model": "M", "serial": "S", **kw})
    return lambda s: s.RegisterAsset(cpb.RegisterAssetRequest(asset=asset))


@pytest.mark.parametrize(
    ("call", "status", "message"),
    [
        (_register_customer(id="Bad Id"), grpc.StatusCode.INVALID_ARGUMENT, "customer id 'Bad Id'"),
        (_register_customer(name=""), grpc.StatusCode.INVALID_ARGUMENT, "c1 name must be"),
        (_register_customer(tier=0), grpc.StatusCode.INVALID_ARGUMENT, "c1 tier is missing"),
        (_register_customer(tier=9), grpc.StatusCode.INVALID_ARGUMENT, "tier 9 is not"),
        (_register_customer(home_region="mars"), grpc.StatusCode.INVALID_ARGUMENT, "'mars'"),
        (
            _register_customer(id="bosch-ulm", name="Other"),
            grpc.StatusCode.ALREADY_EXISTS,
            "customer bosch-ulm is already registered",
        ),
        (_register_asset(customer="ghost"), grpc.StatusCode.NOT_FOUND, "'ghost' is not registered"),
        (_register_asset(serial=""), grpc.StatusCode.INVALID_ARGUMENT, "a1 serial must be"),
        (
            _register_asset(monitored=True),
            grpc.StatusCode.INVALID_ARGUMENT,
            "heartbeat_seconds 0 must be 1 to",
        ),
    ],
    ids=[
        "bad-id",
        "no-name",
        "no-tier",
        "unknown-tier",
        "unknown-region",
        "taken-id",
        "unknown-customer",
        "no-serial",
        "monitored-without-heartbeat",
    ],
)
def test_bad_registrations_get_their_status_and_write_nothing(
    fed: Federation, bosch: cpb.Customer, call: Any, status: grpc.StatusCode, message: str
) -> None:
    with fed.node("velizy").client() as c:
        before = c.federation.Status(federation_pb2.NodeStatusRequest()).version_vector
        with pytest.raises(grpc.RpcError) as info:
            call(contracts(c))
        assert info.value.code() == status
        assert message in info.value.details()
        after = c.federation.Status(federation_pb2.NodeStatusRequest()).version_vector
    assert after == before


def test_a_ticket_contradicting_its_customer_is_refused(
    fed: Federation, bosch: cpb.Customer
) -> None:
    with fed.node("velizy").client() as c:
        with pytest.raises(grpc.RpcError) as info:
            c.desk.CreateTicket(
                pb.CreateTicketRequest(
                    title="x", customer="bosch-ulm", tier=pb.CONTRACT_TIER_BRONZE
                )
            )
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "gold contract, not bronze" in info.value.details()


def test_cli_errors_are_one_line(fed: Federation) -> None:
    done = cli(fed.node("velizy"), "asset", "add", "x1", "--customer", "nobody", "--model", "m",
               "--serial", "s")  # fmt: skip
    assert done.returncode == 1
    assert done.stderr.strip().startswith("error: NOT_FOUND: asset x1 customer 'nobody'")
    assert done.stderr.strip().count("\n") == 0


def test_ticket_show_gives_dues_and_time_left(fed: Federation, bosch: cpb.Customer) -> None:
    velizy = fed.node("velizy")
    # Gold priority 1 runs round the clock: answered within 1 h, resolved within 8 h.
    t = cli_json(velizy, "ticket", "create", "--title", "down", "--customer", "bosch-ulm",
                 "--priority", "1")  # fmt: skip
    created = datetime.fromisoformat(t["created_at"])
    due = datetime.fromisoformat(t["response_due"])
    assert due - created == timedelta(hours=1)
    assert datetime.fromisoformat(t["resolution_due"]) - created == timedelta(hours=8)
    assert t["sla"]["response"] == "ok" and 3000 < t["sla"]["response_left_seconds"] <= 3600
    shown = cli(velizy, "ticket", "show", t["code"])
    assert shown.returncode == 0
    assert f"response due {t['response_due']}  59m left  ok" in shown.stdout
    assert "resolution due" in shown.stdout and "7h 59m left" in shown.stdout
    walk_in = cli_json(velizy, "ticket", "create", "--title", "?", "--customer", "nobody")
    assert walk_in["response_due"] == "" and walk_in["sla"] is None


def test_gold_assignment_respects_levels_and_attaches_a_second_engineer(
    fed: Federation, bosch: cpb.Customer
) -> None:
    velizy = fed.node("velizy")
    t = cli_json(velizy, "ticket", "create", "--title", "slow", "--customer", "bosch-ulm")
    junior = cli(velizy, "ticket", "assign", t["code"], "--to", "felix.wagner")
    assert junior.returncode == 1
    assert "FAILED_PRECONDITION: assignee felix.wagner is junior" in junior.stderr
    outsider = cli(velizy, "ticket", "assign", t["code"], "--to", "bob")
    assert "INVALID_ARGUMENT: assignee 'bob' is not on the roster" in outsider.stderr
    done = cli_json(velizy, "ticket", "assign", t["code"], "--to", "jonas.weber")
    assert (done["assignee"], done["second_engineer"]) == ("jonas.weber", "lena.fischer")
    engineers = cli_json(velizy, "engineer", "list", "--region", "germany")["engineers"]
    assert {(e["name"], e["level"]) for e in engineers} == {
        ("jonas.weber", "senior"),
        ("lena.fischer", "confirmed"),
        ("felix.wagner", "junior"),
    }


def test_rating_and_stats_through_the_cli(fed: Federation, bosch: cpb.Customer) -> None:
    germany = fed.node("germany")
    t = cli_json(germany, "ticket", "create", "--title", "fan noise", "--customer", "bosch-ulm",
                 "--priority", "3")  # fmt: skip
    cli_json(germany, "ticket", "assign", t["code"], "--to", "lena.fischer", "--by", "lena")
    cli_json(germany, "ticket", "resolve", t["code"], "--cause", "fan", "--by", "lena.fischer")
    bad = cli(germany, "ticket", "rate", t["code"], "--score", "0")
    assert bad.returncode == 1 and "--score 0 is out of range" in bad.stderr
    rated = cli_json(germany, "ticket", "rate", t["code"], "--score", "4")
    assert rated["satisfaction"] == 4
    day = t["created_at"][:10]
    stats = cli_json(germany, "stats", "--region", "germany", "--from", day)
    assert stats["opened"] >= 1 and stats["resolved"] >= 1
    assert stats["satisfaction"] == {"mean": 4.0, "count": 1}
    assert any(c["cause"] == "fan" for c in stats["pareto"])
    assert _metric(fed, "germany", 'sundesk_satisfaction_ratings_total{score="4"}') == 1
    assert _metric(fed, "velizy", 'sundesk_registrations_total{kind="customer"}') == 1
    table = cli(germany, "stats", "--region", "germany")
    assert table.returncode == 0 and "satisfaction" in table.stdout and "4.00 / 5" in table.stdout


@pytest.mark.parametrize(
    ("request_fields", "message"),
    [
        ({"from": "yesterday"}, "from 'yesterday' is not a date or instant"),
        ({"to": "2026-03-04T10:00:00"}, "needs a time zone"),
        ({"from": "2026-03-05", "to": "2026-03-04"}, "is not after from"),
        ({"region": "mars"}, "region 'mars' is not a region"),
    ],
    ids=["bad-from", "naive-to", "empty-period", "unknown-region"],
)
def test_bad_stats_requests_are_invalid_arguments(
    fed: Federation, request_fields: dict[str, str], message: str
) -> None:
    request = cpb.StatsRequest()
    for key, value in request_fields.items():
        setattr(request, key, value)
    with fed.node("velizy").client() as c:
        with pytest.raises(grpc.RpcError) as info:
            contracts(c).Stats(request)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert message in info.value.details()
