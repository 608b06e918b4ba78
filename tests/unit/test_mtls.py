"""Mutual TLS and caller tokens on a real grpc.aio server over loopback.

Humans and machines verify the node against the federation CA and present the client
certificate ``cli.crt`` plus a token; peers present their node certificate, which alone
opens the Federation service.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import grpc
import pytest
from grpc import aio
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from node.auth import AuthInterceptor, current_claims, current_peer_region, issue_token
from node.errors import InvalidArgument
from node.grpc_errors import ErrorInterceptor
from node.limits import RateLimiter
from node.server import server_options
from ops.certs import (
    CertPaths,
    channel_credentials,
    client_channel_credentials,
    init_certs,
    load_token_secret,
    server_credentials,
)
from sundesk.v1 import desk_pb2, desk_pb2_grpc, federation_pb2, federation_pb2_grpc

pytestmark = pytest.mark.timeout(20)

TIMEOUT = 5.0
HEARTBEAT = "/sundesk.v1.Telemetry/Heartbeat"
UPLOAD = "/sundesk.v1.Telemetry/Upload"


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> CertPaths:
    return init_certs(tmp_path_factory.mktemp("mtls") / "certs", ["velizy", "uk"])


@pytest.fixture(scope="module")
def foreign(tmp_path_factory: pytest.TempPathFactory) -> CertPaths:
    """Another federation: a valid-looking CA that ours does not trust."""
    return init_certs(tmp_path_factory.mktemp("foreign") / "certs", ["uk"])


class Desk(desk_pb2_grpc.DeskServicer):
    async def GetTicket(self, request: Any, context: aio.ServicerContext) -> Any:
        await asyncio.sleep(0.005)  # let concurrent calls interleave before reading claims
        claims = current_claims.get()
        return desk_pb2.Ticket(code=request.code, created_by=claims.caller if claims else "")

    async def CreateTicket(self, request: Any, context: aio.ServicerContext) -> Any:
        claims = current_claims.get()
        assert claims is not None
        return desk_pb2.Ticket(code="VEL-000001", title=request.title, created_by=claims.subject)

    async def WatchTickets(self, request: Any, context: aio.ServicerContext) -> Any:
        for i in range(2):
            claims = current_claims.get()
            yield desk_pb2.TicketEvent(
                change_id=f"velizy:{i}", region=claims.role if claims else ""
            )


class Federation(federation_pb2_grpc.FederationServicer):
    async def Status(self, request: Any, context: aio.ServicerContext) -> Any:
        return federation_pb2.NodeStatus(region=current_peer_region.get() or "")

    async def Pull(self, request_iterator: Any, context: aio.ServicerContext) -> Any:
        async for request in request_iterator:
            yield federation_pb2.OperationBatch(
                sender_version_vector={request.region: 1},
                caught_up=current_peer_region.get() == request.region,
            )


def telemetry_handler() -> grpc.GenericRpcHandler:
    """A stand-in Telemetry service: any message with an ``asset`` field will do."""

    async def heartbeat(request: Any, context: aio.ServicerContext) -> Any:
        return desk_pb2.Ticket(asset=request.asset)

    async def upload(requests: AsyncIterator[Any], context: aio.ServicerContext) -> Any:
        count = 0
        async for _ in requests:
            count += 1
        return desk_pb2.Ticket(priority=count)

    kw: dict[str, Any] = {
        "request_deserializer": desk_pb2.CreateTicketRequest.FromString,
        "response_serializer": desk_pb2.Ticket.SerializeToString,
    }
    return grpc.method_handlers_generic_handler(
        "sundesk.v1.Telemetry",
        {
            "Heartbeat": grpc.unary_unary_rpc_method_handler(heartbeat, **kw),
            "Upload": grpc.stream_unary_rpc_method_handler(upload, **kw),
        },
    )


@contextlib.asynccontextmanager
async def serving(
    certs: CertPaths, limiter: RateLimiter | None = None, require_tokens: bool = True
) -> AsyncIterator[str]:
    secret = load_token_secret(certs.dir)
    auth = AuthInterceptor(secret, require_tokens=require_tokens, limiter=limiter)
    server = aio.server(interceptors=[auth, ErrorInterceptor()], options=server_options())
    desk_pb2_grpc.add_DeskServicer_to_server(Desk(), server)
    federation_pb2_grpc.add_FederationServicer_to_server(Federation(), server)
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    server.add_generic_rpc_handlers((telemetry_handler(),))
    port = server.add_secure_port("127.0.0.1:0", server_credentials(certs.dir, "velizy"))
    await server.start()
    try:
        yield f"127.0.0.1:{port}"
    finally:
        await server.stop(None)


def token(certs: CertPaths, role: str, **kw: Any) -> list[tuple[str, str]]:
    now = kw.pop("now", datetime.now(UTC))
    value = issue_token(load_token_secret(certs.dir), role, now=now, **kw)
    return [("authorization", f"Bearer {value}")]


def handmade_node_token(certs: CertPaths) -> list[tuple[str, str]]:
    """What someone holding tokens.key could mint though ``issue_token`` refuses it."""
    import base64
    import hashlib
    import hmac
    import json

    def b64(data: bytes) -> str:
        return base64.urlsafe_b64encode(data).rstrip(b"=").decode()

    body = b64(json.dumps({"v": 1, "role": "node", "sub": "uk", "iat": 0}).encode())
    mac = hmac.new(load_token_secret(certs.dir), body.encode(), hashlib.sha256).digest()
    return [("authorization", f"Bearer {body}.{b64(mac)}")]


Scenario = Callable[[str], Awaitable[None]]


def run(certs: CertPaths, scenario: Scenario, **server_kw: Any) -> None:
    async def main() -> None:
        async with serving(certs, **server_kw) as address:
            await asyncio.wait_for(scenario(address), 15)

    asyncio.run(main())


async def code_of(call: Awaitable[Any]) -> grpc.StatusCode:
    try:
        await call
    except aio.AioRpcError as err:
        return err.code()
    return grpc.StatusCode.OK


async def error_of(call: Awaitable[Any]) -> aio.AioRpcError:
    with pytest.raises(aio.AioRpcError) as info:
        await call
    return info.value


def cli(certs: CertPaths, address: str) -> aio.Channel:
    return aio.secure_channel(address, client_channel_credentials(certs.dir))


def node(certs: CertPaths, address: str, region: str) -> aio.Channel:
    return aio.secure_channel(address, channel_credentials(certs.dir, region))


# ----- transport ----------------------------------------------------------------------------


def test_a_plaintext_client_cannot_complete_the_handshake(certs: CertPaths) -> None:
    async def scenario(address: str) -> None:
        async with aio.insecure_channel(address) as ch:
            stub = federation_pb2_grpc.FederationStub(ch)
            code = await code_of(stub.Status(federation_pb2.NodeStatusRequest(), timeout=TIMEOUT))
            assert code == grpc.StatusCode.UNAVAILABLE
            health_stub = health_pb2_grpc.HealthStub(ch)
            code = await code_of(
                health_stub.Check(health_pb2.HealthCheckRequest(), timeout=TIMEOUT)
            )
            assert code == grpc.StatusCode.UNAVAILABLE

    run(certs, scenario)


def test_a_certificate_from_another_ca_is_refused(certs: CertPaths, foreign: CertPaths) -> None:
    async def scenario(address: str) -> None:
        ca = certs.ca_cert.read_bytes()  # the client trusts our CA, but its cert is foreign
        creds = grpc.ssl_channel_credentials(
            root_certificates=ca,
            private_key=foreign.node_key("uk").read_bytes(),
            certificate_chain=foreign.node_cert("uk").read_bytes(),
        )
        async with aio.secure_channel(address, creds) as ch:
            stub = federation_pb2_grpc.FederationStub(ch)
            code = await code_of(stub.Status(federation_pb2.NodeStatusRequest(), timeout=TIMEOUT))
            assert code == grpc.StatusCode.UNAVAILABLE

    run(certs, scenario)


def test_a_client_without_a_certificate_is_refused(certs: CertPaths) -> None:
    async def scenario(address: str) -> None:
        creds = grpc.ssl_channel_credentials(root_certificates=certs.ca_cert.read_bytes())
        async with aio.secure_channel(address, creds) as ch:
            stub = desk_pb2_grpc.DeskStub(ch)
            request = desk_pb2.GetTicketRequest(code="VEL-000001")
            call = stub.GetTicket(request, metadata=token(certs, "ops"), timeout=TIMEOUT)
            assert await code_of(call) == grpc.StatusCode.UNAVAILABLE

    run(certs, scenario)


def test_a_node_of_another_federation_is_not_trusted_as_a_server(
    certs: CertPaths, foreign: CertPaths
) -> None:
    async def scenario(address: str) -> None:
        async with node(foreign, address, "uk") as ch:  # trusts only the foreign CA
            stub = federation_pb2_grpc.FederationStub(ch)
            code = await code_of(stub.Status(federation_pb2.NodeStatusRequest(), timeout=TIMEOUT))
            assert code == grpc.StatusCode.UNAVAILABLE

    run(certs, scenario)


def test_health_stays_open_to_any_client_of_the_ca(certs: CertPaths) -> None:
    async def scenario(address: str) -> None:
        async with cli(certs, address) as ch:
            stub = health_pb2_grpc.HealthStub(ch)
            resp = await stub.Check(health_pb2.HealthCheckRequest(), timeout=TIMEOUT)
            assert resp.status == health_pb2.HealthCheckResponse.SERVING

    run(certs, scenario)


# ----- the Federation service: node certificates only --------------------------------------


def test_a_node_certificate_may_call_federation(certs: CertPaths) -> None:
    async def scenario(address: str) -> None:
        async with node(certs, address, "uk") as ch:
            stub = federation_pb2_grpc.FederationStub(ch)
            status = await stub.Status(federation_pb2.NodeStatusRequest(), timeout=TIMEOUT)
            assert status.region == "uk"  # the handler sees which region called
            pull = stub.Pull(timeout=TIMEOUT)
            await pull.write(federation_pb2.PullRequest(region="uk"))
            batch = await pull.read()
            assert batch.caught_up and dict(batch.sender_version_vector) == {"uk": 1}
            await pull.done_writing()

    run(certs, scenario)


def test_a_client_certificate_may_not_call_federation_even_with_a_token(
    certs: CertPaths,
) -> None:
    async def scenario(address: str) -> None:
        async with cli(certs, address) as ch:
            stub = federation_pb2_grpc.FederationStub(ch)
            meta = token(certs, "agent", subject="alice")
            err = await error_of(
                stub.Status(federation_pb2.NodeStatusRequest(), metadata=meta, timeout=TIMEOUT)
            )
            assert err.code() == grpc.StatusCode.PERMISSION_DENIED
            assert "node certificate" in (err.details() or "")
            pull = stub.Pull(metadata=meta, timeout=TIMEOUT)
            await pull.write(federation_pb2.PullRequest(region="uk"))
            assert await code_of(pull.read()) == grpc.StatusCode.PERMISSION_DENIED

    run(certs, scenario)


def test_a_node_certificate_needs_a_token_outside_federation(certs: CertPaths) -> None:
    async def scenario(address: str) -> None:
        async with node(certs, address, "uk") as ch:
            stub = desk_pb2_grpc.DeskStub(ch)
            request = desk_pb2.GetTicketRequest(code="VEL-000001")
            err = await error_of(stub.GetTicket(request, timeout=TIMEOUT))
            assert err.code() == grpc.StatusCode.UNAUTHENTICATED
            call = stub.GetTicket(request, metadata=handmade_node_token(certs), timeout=TIMEOUT)
            err = await error_of(call)
            assert err.code() == grpc.StatusCode.PERMISSION_DENIED
            assert "role node" in (err.details() or "")

    run(certs, scenario)


def test_tokens_of_role_node_cannot_be_issued(certs: CertPaths) -> None:
    with pytest.raises(InvalidArgument, match="reserved for federation peers"):
        token(certs, "node", subject="uk")


# ----- people and machines: client certificate and token -----------------------------------


def test_an_agent_reads_and_writes_stamped_with_its_subject(certs: CertPaths) -> None:
    async def scenario(address: str) -> None:
        async with cli(certs, address) as ch:
            stub = desk_pb2_grpc.DeskStub(ch)
            meta = token(certs, "agent", subject="alice", ttl_seconds=600)
            got = await stub.GetTicket(
                desk_pb2.GetTicketRequest(code="VEL-000001"), metadata=meta, timeout=TIMEOUT
            )
            assert got.created_by == "agent:alice"
            made = await stub.CreateTicket(
                desk_pb2.CreateTicketRequest(title="fan noise"), metadata=meta, timeout=TIMEOUT
            )
            assert made.created_by == "alice"
            events = [
                e
                async for e in stub.WatchTickets(
                    desk_pb2.WatchTicketsRequest(), metadata=meta, timeout=TIMEOUT
                )
            ]
            assert [e.region for e in events] == ["agent", "agent"]

    run(certs, scenario)


def test_concurrent_callers_each_see_their_own_claims(certs: CertPaths) -> None:
    async def scenario(address: str) -> None:
        async with cli(certs, address) as ch:
            stub = desk_pb2_grpc.DeskStub(ch)
            names = [f"agent-{i}" for i in range(20)]
            calls = [
                stub.GetTicket(
                    desk_pb2.GetTicketRequest(code="VEL-1"),
                    metadata=token(certs, "agent", subject=name),
                    timeout=TIMEOUT,
                )
                for name in names
            ]
            got = await asyncio.gather(*calls)
            assert [t.created_by for t in got] == [f"agent:{name}" for name in names]

    run(certs, scenario)


def test_ops_reads_but_may_not_write(certs: CertPaths) -> None:
    async def scenario(address: str) -> None:
        async with cli(certs, address) as ch:
            stub = desk_pb2_grpc.DeskStub(ch)
            meta = token(certs, "ops", subject="carol")
            got = await stub.GetTicket(
                desk_pb2.GetTicketRequest(code="VEL-000001"), metadata=meta, timeout=TIMEOUT
            )
            assert got.created_by == "ops:carol"
            err = await error_of(
                stub.CreateTicket(
                    desk_pb2.CreateTicketRequest(title="x"), metadata=meta, timeout=TIMEOUT
                )
            )
            assert err.code() == grpc.StatusCode.PERMISSION_DENIED
            assert err.details() == (
                "role ops may not call sundesk.v1.Desk/CreateTicket: ops is read-only"
            )

    run(certs, scenario)


@pytest.mark.parametrize(
    ("metadata", "message"),
    [
        ([], "needs a token"),
        ([("authorization", "Basic YWxpY2U6cHc=")], "must be 'Bearer <token>'"),
        ([("authorization", "Bearer not-a-token")], "malformed"),
        ([("authorization", "Bearer e30.AAAA")], "signature does not match"),
        ("expired", "token expired"),
        ("foreign", "signature does not match"),
    ],
)
def test_missing_and_bad_tokens_are_unauthenticated(
    certs: CertPaths, foreign: CertPaths, metadata: Any, message: str
) -> None:
    if metadata == "expired":
        an_hour_ago = datetime.now(UTC) - timedelta(hours=1)
        metadata = token(certs, "ops", ttl_seconds=60, now=an_hour_ago)
    elif metadata == "foreign":
        metadata = token(foreign, "ops")

    async def scenario(address: str) -> None:
        async with cli(certs, address) as ch:
            stub = desk_pb2_grpc.DeskStub(ch)
            err = await error_of(
                stub.GetTicket(
                    desk_pb2.GetTicketRequest(code="VEL-1"), metadata=metadata, timeout=TIMEOUT
                )
            )
            assert err.code() == grpc.StatusCode.UNAUTHENTICATED
            assert message in (err.details() or "")
            assert "Traceback" not in (err.details() or "")

    run(certs, scenario)


def test_a_machine_sends_telemetry_for_its_own_asset_only(certs: CertPaths) -> None:
    async def scenario(address: str) -> None:
        async with cli(certs, address) as ch:
            heartbeat = ch.unary_unary(
                HEARTBEAT,
                request_serializer=desk_pb2.CreateTicketRequest.SerializeToString,
                response_deserializer=desk_pb2.Ticket.FromString,
            )
            upload = ch.stream_unary(
                UPLOAD,
                request_serializer=desk_pb2.CreateTicketRequest.SerializeToString,
                response_deserializer=desk_pb2.Ticket.FromString,
            )
            meta = token(certs, "machine", asset="MRI-0042")
            own = desk_pb2.CreateTicketRequest(asset="MRI-0042")
            other = desk_pb2.CreateTicketRequest(asset="MRI-0099")
            got = await heartbeat(own, metadata=meta, timeout=TIMEOUT)
            assert got.asset == "MRI-0042"
            err = await error_of(heartbeat(other, metadata=meta, timeout=TIMEOUT))
            assert err.code() == grpc.StatusCode.PERMISSION_DENIED
            assert "MRI-0099" in (err.details() or "")
            got = await upload(iter([own, own]), metadata=meta, timeout=TIMEOUT)
            assert got.priority == 2
            code = await code_of(upload(iter([own, other]), metadata=meta, timeout=TIMEOUT))
            assert code == grpc.StatusCode.PERMISSION_DENIED
            agent = token(certs, "agent", subject="alice")
            code = await code_of(heartbeat(own, metadata=agent, timeout=TIMEOUT))
            assert code == grpc.StatusCode.PERMISSION_DENIED
            desk = desk_pb2_grpc.DeskStub(ch)
            call = desk.GetTicket(
                desk_pb2.GetTicketRequest(code="VEL-1"), metadata=meta, timeout=TIMEOUT
            )
            assert await code_of(call) == grpc.StatusCode.PERMISSION_DENIED

    run(certs, scenario)


def test_writes_are_rate_limited_per_caller(certs: CertPaths) -> None:
    async def scenario(address: str) -> None:
        async with cli(certs, address) as ch:
            stub = desk_pb2_grpc.DeskStub(ch)
            alice = token(certs, "agent", subject="alice")
            bob = token(certs, "agent", subject="bob")
            request = desk_pb2.CreateTicketRequest(title="x")
            for _ in range(2):
                await stub.CreateTicket(request, metadata=alice, timeout=TIMEOUT)
            err = await error_of(stub.CreateTicket(request, metadata=alice, timeout=TIMEOUT))
            assert err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            assert "slow down" in (err.details() or "") and "agent:alice" in (err.details() or "")
            await stub.CreateTicket(request, metadata=bob, timeout=TIMEOUT)
            for _ in range(5):  # reads are not limited
                await stub.GetTicket(
                    desk_pb2.GetTicketRequest(code="VEL-1"), metadata=alice, timeout=TIMEOUT
                )

    run(certs, scenario, limiter=RateLimiter(0.001, burst=2))


def test_without_required_tokens_calls_pass_but_bad_tokens_do_not(certs: CertPaths) -> None:
    async def scenario(address: str) -> None:
        async with cli(certs, address) as ch:
            stub = desk_pb2_grpc.DeskStub(ch)
            got = await stub.GetTicket(desk_pb2.GetTicketRequest(code="VEL-1"), timeout=TIMEOUT)
            assert got.created_by == ""  # no claims
            bad = [("authorization", "Bearer e30.AAAA")]
            call = stub.GetTicket(
                desk_pb2.GetTicketRequest(code="VEL-1"), metadata=bad, timeout=TIMEOUT
            )
            assert await code_of(call) == grpc.StatusCode.UNAUTHENTICATED
            fed = federation_pb2_grpc.FederationStub(ch)
            code = await code_of(fed.Status(federation_pb2.NodeStatusRequest(), timeout=TIMEOUT))
            assert code == grpc.StatusCode.PERMISSION_DENIED

    run(certs, scenario, require_tokens=False)
