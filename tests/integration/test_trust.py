"""Trust between regions on a real `sundesk local up` federation (secure by default).

Five real node processes and a real etcd that requires client certificates: strangers
are refused at the handshake, callers get what their role allows, and a region that
relays a forged operation gets it rejected by every other region.
"""

from __future__ import annotations

import json
import os
import re
import sqlite3
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from federation.operations import TICKET_CREATE, Operation, canonical_json
from ops import local
from ops.certs import CertPaths, init_certs, load_signing_key
from ops.client import Client
from ops.credentials import from_certs_dir, from_files, mint_token
from ops.processes import ROOT, wait_for
from sundesk.v1 import contracts_pb2 as cpb
from sundesk.v1 import (
    contracts_pb2_grpc,
    federation_pb2_grpc,
    sun_pb2,
    sun_pb2_grpc,
    telemetry_pb2_grpc,
)
from sundesk.v1 import desk_pb2 as pb
from sundesk.v1 import federation_pb2 as fpb
from sundesk.v1 import telemetry_pb2 as tpb

pytestmark = pytest.mark.timeout(240)

TIMEOUT = 5.0


@pytest.fixture(scope="module")
def fed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    base = tmp_path_factory.mktemp("trust") / "local"
    state = local.up(base, collector=False)
    state["base"] = str(base)
    try:
        yield state
    finally:
        local.down(base)


def certs_of(fed: dict[str, Any]) -> Path:
    return Path(fed["certs"])


def address(fed: dict[str, Any], region: str) -> str:
    return str(fed["nodes"][region]["address"])


def as_role(fed: dict[str, Any], role: str, subject: str = "", asset: str = "") -> Client:
    certs = certs_of(fed)
    token = mint_token(certs, role, subject or f"test-{role}", asset=asset or None)
    return Client(address(fed, "velizy"), from_certs_dir(certs, token))


def code_of(call: Any) -> grpc.StatusCode:
    try:
        call()
    except grpc.RpcError as err:
        return err.code()  # type: ignore[no-any-return]
    return grpc.StatusCode.OK


def error_of(call: Any) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as info:
        call()
    return info.value


def node_channel(fed: dict[str, Any], region: str, to: str = "velizy") -> grpc.Channel:
    """A channel presenting ``region``'s node certificate, as that node's replicator does."""
    paths = CertPaths(certs_of(fed))
    creds = from_files(paths.ca_cert, paths.node_cert(region), paths.node_key(region))
    return grpc.secure_channel(address(fed, to), creds.channel_credentials())


# ----- strangers -------------------------------------------------------------------------


def test_local_up_is_secure_everywhere(fed: dict[str, Any]) -> None:
    assert fed["certs"] and fed["etcd"]["tls"]
    for region in fed["nodes"]:
        command = local.LocalFederation(Path(fed["base"])).node_process(fed, region).command()
        assert "--tls-dir" in command and "--insecure" not in command
    paths = CertPaths(certs_of(fed))
    assert paths.token_secret.stat().st_mode & 0o077 == 0
    rows = local.status(Path(fed["base"]))
    assert all(r["healthy"] for r in rows), rows


def test_a_plaintext_client_is_refused(fed: dict[str, Any]) -> None:
    with grpc.insecure_channel(address(fed, "velizy")) as ch:
        health = health_pb2_grpc.HealthStub(ch)
        assert (
            code_of(lambda: health.Check(health_pb2.HealthCheckRequest(), timeout=2))
            == grpc.StatusCode.UNAVAILABLE
        )


def test_a_client_with_a_certificate_of_another_ca_is_refused(
    fed: dict[str, Any], tmp_path: Path
) -> None:
    other = init_certs(tmp_path / "other", ["velizy"]).dir
    token = mint_token(other, "agent", "mallory")
    with Client(address(fed, "velizy"), from_certs_dir(other, token)) as c:
        err = error_of(lambda: c.desk.ListTickets(pb.ListTicketsRequest(), timeout=TIMEOUT))
        assert err.code() == grpc.StatusCode.UNAVAILABLE
        assert not c.healthy(timeout=2)
    # Our CA's certificate with the other federation's token: the handshake passes,
    # the token does not.
    with Client(address(fed, "velizy"), from_certs_dir(certs_of(fed), token)) as c:
        err = error_of(lambda: c.desk.ListTickets(pb.ListTicketsRequest(), timeout=TIMEOUT))
        assert err.code() == grpc.StatusCode.UNAUTHENTICATED
        assert "another federation" in err.details()


def test_a_node_certificate_presented_as_a_client_token_is_refused(fed: dict[str, Any]) -> None:
    paths = CertPaths(certs_of(fed))
    pem = paths.node_cert("uk").read_text()
    as_token = pem.replace("\n", "").replace("-----BEGIN CERTIFICATE-----", "")
    as_token = as_token.replace("-----END CERTIFICATE-----", "")
    with Client(address(fed, "velizy"), from_certs_dir(paths.dir, as_token)) as c:
        err = error_of(lambda: c.desk.ListTickets(pb.ListTicketsRequest(), timeout=TIMEOUT))
        assert err.code() == grpc.StatusCode.UNAUTHENTICATED
        assert "token is malformed" in err.details()
    # The node certificate itself, as a client of the Desk: it is no token.
    with node_channel(fed, "uk") as ch:
        desk = pb_desk(ch)
        err = error_of(lambda: desk.ListTickets(pb.ListTicketsRequest(), timeout=TIMEOUT))
        assert err.code() == grpc.StatusCode.UNAUTHENTICATED
        assert "needs a token" in err.details()


def pb_desk(ch: grpc.Channel) -> Any:
    from sundesk.v1 import desk_pb2_grpc

    return desk_pb2_grpc.DeskStub(ch)


def test_only_a_node_pulling_as_itself_may_replicate(fed: dict[str, Any]) -> None:
    with as_role(fed, "agent") as c:
        err = error_of(
            lambda: next(
                iter(c.federation.Pull(iter([fpb.PullRequest(region="uk")]), timeout=TIMEOUT))
            )
        )
        assert err.code() == grpc.StatusCode.PERMISSION_DENIED
        assert "node certificate" in err.details()
    with node_channel(fed, "uk") as ch:
        fed_stub = federation_pb2_grpc.FederationStub(ch)
        stream = fed_stub.Pull(iter([fpb.PullRequest(region="japan")]), timeout=TIMEOUT)
        err = error_of(lambda: next(iter(stream)))
        assert err.code() == grpc.StatusCode.PERMISSION_DENIED
        assert "uk's, but it claims to be 'japan'" in err.details()
        # As itself, the same certificate is served.
        stream = fed_stub.Pull(iter([fpb.PullRequest(region="uk")]), timeout=TIMEOUT)
        first = next(iter(stream))
        assert first.sender_version_vector
        stream.cancel()


def test_etcd_requires_a_client_certificate(fed: dict[str, Any]) -> None:
    paths = CertPaths(certs_of(fed))
    url = f"https://{fed['etcd']['endpoint']}/health"
    no_cert = ssl.create_default_context(cafile=str(paths.ca_cert))
    with pytest.raises((ssl.SSLError, urllib.error.URLError, ConnectionError)):
        urllib.request.urlopen(url, timeout=3, context=no_cert).read()
    with pytest.raises((urllib.error.URLError, ConnectionError, OSError)):
        urllib.request.urlopen(f"http://{fed['etcd']['endpoint']}/health", timeout=3).read()
    with_cert = ssl.create_default_context(cafile=str(paths.ca_cert))
    with_cert.load_cert_chain(str(paths.etcd_client_cert), str(paths.etcd_client_key))
    with urllib.request.urlopen(url, timeout=3, context=with_cert) as reply:
        assert json.loads(reply.read())["health"] == "true"


def test_nodes_hold_queue_ownership_through_tls_etcd(fed: dict[str, Any]) -> None:
    with as_role(fed, "ops") as c:
        sun = sun_pb2_grpc.SunStub(c.channel)

        def owned() -> Any:
            st = sun.GetStatus(sun_pb2.SunStatusRequest(), timeout=TIMEOUT)
            return st if st.lease_state == "alive" and all(q.owner for q in st.queues) else None

        status = wait_for("every queue owned through etcd", owned, timeout=30)
        assert {q.queue for q in status.queues} == set(fed["nodes"])


# ----- roles -----------------------------------------------------------------------------


def test_each_role_gets_what_it_may_and_nothing_else(fed: dict[str, Any]) -> None:
    with as_role(fed, "agent", "alice") as agent:
        t = agent.desk.CreateTicket(pb.CreateTicketRequest(title="Disk", customer="acme"))
        assert t.created_by == "alice"  # stamped with the token's subject
        err = error_of(
            lambda: agent.desk.AddComment(
                pb.AddCommentRequest(code=t.code, author="bob", text="x"), timeout=TIMEOUT
            )
        )
        assert err.code() == grpc.StatusCode.PERMISSION_DENIED
        assert "cannot write as 'bob'" in err.details()
        agent.desk.AddComment(pb.AddCommentRequest(code=t.code, text="on it"), timeout=TIMEOUT)
        assert agent.desk.GetTicket(pb.GetTicketRequest(code=t.code)).version == 2
    allowed = {
        "oncall": {"list", "sun", "ack"},
        "ops": {"list", "sun", "status"},
        "machine": set(),
    }
    for role, may in allowed.items():
        with as_role(fed, role, asset="MRI-0042" if role == "machine" else "") as c:
            sun = sun_pb2_grpc.SunStub(c.channel)
            calls = {
                "list": lambda c=c: c.desk.ListTickets(pb.ListTicketsRequest(), timeout=TIMEOUT),
                "sun": lambda sun=sun: sun.GetStatus(sun_pb2.SunStatusRequest(), timeout=TIMEOUT),
                "status": lambda c=c: c.federation.Status(fpb.NodeStatusRequest(), timeout=TIMEOUT),
                "create": lambda c=c: c.desk.CreateTicket(
                    pb.CreateTicketRequest(title="no"), timeout=TIMEOUT
                ),
                "update": lambda c=c: c.desk.UpdateTicket(
                    pb.UpdateTicketRequest(code=t.code, priority=1), timeout=TIMEOUT
                ),
                "note": lambda sun=sun: sun.SetNote(
                    sun_pb2.SetNoteRequest(queue="velizy", text="no"), timeout=TIMEOUT
                ),
                # No such handoff: an allowed caller reaches the service and hears so.
                "ack": lambda sun=sun: sun.AckHandoff(
                    sun_pb2.AckHandoffRequest(id="HO-velizy-999999"), timeout=TIMEOUT
                ),
            }
            for name, call in calls.items():
                code = code_of(call)
                if name not in may:
                    expected = grpc.StatusCode.PERMISSION_DENIED
                else:
                    expected = grpc.StatusCode.NOT_FOUND if name == "ack" else grpc.StatusCode.OK
                assert code == expected, (role, name, code)
    with as_role(fed, "agent") as agent:
        assert agent.desk.GetTicket(pb.GetTicketRequest(code=t.code)).version == 2
        # Federation status is for nodes and ops, not agents.
        assert (
            code_of(lambda: agent.federation.Status(fpb.NodeStatusRequest(), timeout=TIMEOUT))
            == grpc.StatusCode.PERMISSION_DENIED
        )


def test_a_machine_reports_for_its_own_asset_only(fed: dict[str, Any]) -> None:
    with as_role(fed, "agent", "alice") as agent:
        contracts = contracts_pb2_grpc.ContractsStub(agent.channel)
        contracts.RegisterCustomer(
            cpb.RegisterCustomerRequest(
                customer=cpb.Customer(
                    id="initech", name="Initech", home_region="velizy", tier=pb.CONTRACT_TIER_GOLD
                )
            ),
            timeout=TIMEOUT,
        )
        for asset in ("initech-mri-1", "initech-mri-2"):
            contracts.RegisterAsset(
                cpb.RegisterAssetRequest(
                    asset=cpb.Asset(
                        id=asset,
                        customer="initech",
                        model="MRI",
                        serial=asset,
                        monitored=True,
                        heartbeat_seconds=60,
                    )
                ),
                timeout=TIMEOUT,
            )
        # People do not send telemetry, not even agents.
        agent_beat = telemetry_pb2_grpc.TelemetryStub(agent.channel).Heartbeat
        assert (
            code_of(
                lambda: agent_beat(tpb.HeartbeatRequest(asset="initech-mri-1"), timeout=TIMEOUT)
            )
            == grpc.StatusCode.PERMISSION_DENIED
        )
    with as_role(fed, "machine", asset="initech-mri-1") as machine:
        beat = telemetry_pb2_grpc.TelemetryStub(machine.channel).Heartbeat
        beat(tpb.HeartbeatRequest(asset="initech-mri-1"), timeout=TIMEOUT)
        err = error_of(lambda: beat(tpb.HeartbeatRequest(asset="initech-mri-2"), timeout=TIMEOUT))
        assert err.code() == grpc.StatusCode.PERMISSION_DENIED
        assert "initech-mri-2" in err.details() or "own asset" in err.details()


def test_without_a_token_a_client_is_unauthenticated(fed: dict[str, Any]) -> None:
    with Client(address(fed, "velizy"), from_certs_dir(certs_of(fed))) as c:
        assert c.healthy(timeout=TIMEOUT)  # health stays open to clients of the CA
        err = error_of(lambda: c.desk.ListTickets(pb.ListTicketsRequest(), timeout=TIMEOUT))
        assert err.code() == grpc.StatusCode.UNAUTHENTICATED
        assert "sundesk tokens issue" in err.details()


def test_the_cli_finds_the_local_credentials(fed: dict[str, Any]) -> None:
    env = {**os.environ, "SUNDESK_HOME": fed["base"]}

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "ops.cli", *args, "--node", address(fed, "uk")],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=30,
        )

    made = cli("ticket", "create", "--title", "From the CLI", "--by", "carla", "--json")
    assert made.returncode == 0, made.stderr
    assert json.loads(made.stdout)["created_by"] == "carla"
    plain = cli("ticket", "list", "--insecure")
    assert plain.returncode == 1 and plain.stderr.count("\n") == 1
    assert plain.stderr.startswith("error: UNAVAILABLE")
    # Contracts go through the same credentials: an agent registers, anyone reads.
    added = cli("customer", "add", "globex", "--name", "Globex", "--region", "uk", "--tier", "gold")
    assert added.returncode == 0, added.stderr
    listed = cli("customer", "list", "--json")
    assert listed.returncode == 0, listed.stderr
    assert "globex" in listed.stdout
    stats = cli("stats", "--json")
    assert stats.returncode == 0, stats.stderr
    assert json.loads(stats.stdout)["opened"] >= 1


# ----- forged operations -----------------------------------------------------------------


def rejected(fed: dict[str, Any], region: str, origin: str) -> float:
    port = fed["nodes"][region]["metrics"]
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=3) as reply:
        text = reply.read().decode()
    pattern = rf'^sundesk_operations_rejected_total{{origin="{origin}"}} (\S+)$'
    match = re.search(pattern, text, re.M)
    return float(match.group(1)) if match else 0.0


def test_a_relayed_forgery_is_rejected_everywhere(fed: dict[str, Any]) -> None:
    base = Path(fed["base"])
    certs = certs_of(fed)
    local.kill(base, "japan")
    local.kill(base, "uk")
    # The compromised UK node holds an operation claiming Japan as origin, signed with
    # the UK's own key, next in Japan's sequence; it will offer it to whoever lacks it.
    db = sqlite3.connect(base / "uk" / "sundesk.db")
    (japan_seq,) = db.execute(
        "SELECT coalesce(max(seq), 0) FROM ops WHERE origin='japan'"
    ).fetchone()
    forged = Operation(
        origin="japan",
        seq=japan_seq + 1,
        hlc=int(time.time() * 1000) << 16,
        ticket="JPN-999999",
        kind=TICKET_CREATE,
        fields={"title": "wire the money", "state": "new", "queue": "japan"},
    )
    uk_key = load_signing_key(CertPaths(certs).signing_key("uk"))
    signature = uk_key.sign(forged.signed_payload())  # what a rogue UK can do
    db.execute(
        "INSERT INTO ops VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
        (
            forged.origin,
            forged.seq,
            forged.hlc,
            forged.ticket,
            forged.kind,
            canonical_json(dict(forged.fields)),
            b"{}",
            signature,
        ),
    )
    db.execute("INSERT OR REPLACE INTO vv VALUES ('japan', ?)", (forged.seq,))
    db.commit()
    db.close()
    before = {r: rejected(fed, r, "japan") for r in ("velizy", "germany", "us")}
    local.start(base, "uk")
    # Japan is down, so every other region asks the UK for Japan's operations.
    for region in ("velizy", "germany", "us"):

        def refused(region: str = region) -> bool:
            return rejected(fed, region, "japan") > before[region]

        wait_for(f"{region} to reject the forgery", refused, timeout=30)
    local.start(base, "japan")
    with Client(
        address(fed, "japan"), from_certs_dir(certs, mint_token(certs, "agent", "kenji"))
    ) as c:
        real = c.desk.CreateTicket(pb.CreateTicketRequest(title="genuine"), timeout=TIMEOUT)
    honest = ("velizy", "germany", "us", "japan")

    def converged() -> bool:
        statuses = [local.LocalFederation(base).node_process(fed, r).status() for r in honest]
        digests = {s.digest for s in statuses if s is not None}
        return None not in statuses and len(digests) == 1

    wait_for("the honest regions to converge", converged, timeout=60)
    state = local.LocalFederation(base).load()
    for region in honest:
        creds = from_certs_dir(certs, mint_token(certs, "agent", "checker"))
        with Client(state["nodes"][region]["address"], creds) as c:
            assert (
                code_of(
                    lambda c=c: c.desk.GetTicket(
                        pb.GetTicketRequest(code="JPN-999999"), timeout=TIMEOUT
                    )
                )
                == grpc.StatusCode.NOT_FOUND
            )
            got = c.desk.GetTicket(pb.GetTicketRequest(code=real.code), timeout=TIMEOUT)
            assert got.title == "genuine"
    for region in ("velizy", "germany", "us"):
        assert rejected(fed, region, "japan") > before[region]
