"""Limits on a real secure node: per-caller write rates, and a fuzzer on every RPC.

The fuzzer sends thousands of malformed, random and oversized requests to every method
of Desk, Sun and Federation (the latter with a node certificate), with a seeded
hypothesis run. Each call must end in a clean status (never UNKNOWN, never one of our
"internal error" incidents, never the node going away), and afterwards every ticket the
node acknowledged is still there, also after a restart.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.protobuf.descriptor import FieldDescriptor, MethodDescriptor
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from node.limits import NodeLimits
from ops.certs import CertPaths, init_certs
from ops.client import Client
from ops.credentials import from_certs_dir, from_files, mint_token
from ops.metrics import scrape
from sundesk.v1 import desk_pb2, federation_pb2, sun_pb2
from sundesk.v1 import desk_pb2 as pb
from tests.support.nodes import ROOT, Federation, free_ports

pytestmark = pytest.mark.timeout(300)

TIMEOUT = 5.0
OVERSIZED = NodeLimits().max_request_bytes + 64 * 1024
METHODS: list[MethodDescriptor] = [
    *desk_pb2.DESCRIPTOR.services_by_name["Desk"].methods,
    *sun_pb2.DESCRIPTOR.services_by_name["Sun"].methods,
    *federation_pb2.DESCRIPTOR.services_by_name["Federation"].methods,
]


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return init_certs(tmp_path_factory.mktemp("limits") / "certs", ["velizy", "uk"]).dir


def _single(base: Path, certs: Path, *args: str) -> Federation:
    return Federation.make(base, regions=["velizy"], tls_dir=certs, extra_args=list(args))


@pytest.fixture(scope="module")
def node_fed(tmp_path_factory: pytest.TempPathFactory, certs: Path) -> Iterator[Federation]:
    fed = _single(tmp_path_factory.mktemp("fuzz"), certs, "--write-rate", "10000")
    fed.start()
    try:
        yield fed
    finally:
        fed.stop()


def metric(fed: Federation, name: str) -> float:
    return scrape(fed.config.region("velizy").metrics_port).get(name, 0.0)


def agent(fed: Federation, certs: Path, subject: str) -> Client:
    creds = from_certs_dir(certs, mint_token(certs, "agent", subject))
    return Client(fed.node("velizy").address, creds)


# ----- secure by default ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        ((), "a node serves mTLS by default: give --tls-dir DIR"),
        (("--insecure", "--tls-dir", "somewhere"), "contradict each other"),
        (("--tls-dir", "/nonexistent/certs"), "does not exist; create it with `sundesk certs"),
    ],
)
def test_a_node_will_not_start_plaintext_by_accident(
    tmp_path: Path, flags: tuple[str, ...], message: str
) -> None:
    port = free_ports(1)[0]
    done = subprocess.run(
        [
            *(sys.executable, "-m", "ops.cli", "node", "--region", "velizy"),
            *("--listen", f"127.0.0.1:{port}", "--data-dir", str(tmp_path / "d"), *flags),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert done.returncode == 1
    assert message in done.stderr and done.stderr.count("\n") == 1, done.stderr
    assert not (tmp_path / "d").exists()  # nothing written before refusing


# ----- rate limits -----------------------------------------------------------------------


def test_writes_are_limited_per_caller(tmp_path: Path, certs: Path) -> None:
    fed = _single(tmp_path, certs, "--write-rate", "0.5", "--write-burst", "3").start()
    try:
        with agent(fed, certs, "alice") as alice, agent(fed, certs, "bob") as bob:
            for i in range(3):
                alice.desk.CreateTicket(pb.CreateTicketRequest(title=f"a{i}"), timeout=TIMEOUT)
            with pytest.raises(grpc.RpcError) as info:
                alice.desk.CreateTicket(pb.CreateTicketRequest(title="a4"), timeout=TIMEOUT)
            assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            assert "slow down" in info.value.details() and "agent:alice" in info.value.details()
            # Another caller is not starved, and the limited one still reads.
            bob.desk.CreateTicket(pb.CreateTicketRequest(title="b1"), timeout=TIMEOUT)
            page = alice.desk.ListTickets(pb.ListTicketsRequest(), timeout=TIMEOUT)
            assert page.total == 4
        assert metric(fed, "sundesk_writes_rate_limited_total") >= 1
    finally:
        fed.stop()


def test_pages_are_capped(node_fed: Federation, certs: Path) -> None:
    with agent(node_fed, certs, "pager") as c:
        for i in range(3):
            c.desk.CreateTicket(pb.CreateTicketRequest(title=f"p{i}"), timeout=TIMEOUT)
        page = c.desk.ListTickets(pb.ListTicketsRequest(page_size=10**9), timeout=TIMEOUT)
        assert len(page.tickets) <= 500 and page.total >= 3


# ----- the fuzzer ------------------------------------------------------------------------

SCALARS: dict[int, st.SearchStrategy[Any]] = {
    FieldDescriptor.TYPE_STRING: st.one_of(
        st.text(max_size=40),
        st.sampled_from(["", "VEL-000001", "velizy", "uk", "HO-velizy-1", " ", "\x00"]),
    ),
    FieldDescriptor.TYPE_BYTES: st.binary(max_size=64),
    FieldDescriptor.TYPE_BOOL: st.booleans(),
    FieldDescriptor.TYPE_INT32: st.integers(-(2**31), 2**31 - 1),
    FieldDescriptor.TYPE_INT64: st.integers(-(2**63), 2**63 - 1),
    FieldDescriptor.TYPE_UINT64: st.integers(0, 2**64 - 1),
    FieldDescriptor.TYPE_ENUM: st.integers(-5, 40),
    FieldDescriptor.TYPE_DOUBLE: st.floats(allow_nan=True),
}


@st.composite
def message_bytes(draw: st.DrawFn, method: MethodDescriptor) -> bytes:
    """A message of the method's input type with random values, or random bytes."""
    if draw(st.integers(0, 3)) == 0:
        return draw(st.binary(max_size=512))
    cls = _message_class(method)
    msg = cls()
    for field in cls.DESCRIPTOR.fields:
        strategy = SCALARS.get(field.type)
        if strategy is None or not draw(st.booleans()):
            continue
        if field.message_type is not None and field.message_type.GetOptions().map_entry:
            continue
        value = draw(strategy)
        try:
            if field.is_repeated:
                getattr(msg, field.name).extend([value])
            else:
                setattr(msg, field.name, value)
        except (ValueError, TypeError):
            continue  # e.g. an enum the runtime refuses: leave the field unset
    data: bytes = msg.SerializeToString()
    return data


def _message_class(method: MethodDescriptor) -> Any:
    module = {"Desk": desk_pb2, "Sun": sun_pb2, "Federation": federation_pb2}
    return getattr(module[method.containing_service.name], method.input_type.name)


class Fuzzer:
    def __init__(self, fed: Federation, certs: Path) -> None:
        paths = CertPaths(certs)
        address = fed.node("velizy").address
        person = from_certs_dir(certs, mint_token(certs, "agent", "fuzz"))
        peer = from_files(paths.ca_cert, paths.node_cert("uk"), paths.node_key("uk"))
        options = [("grpc.max_send_message_length", 8 * 1024 * 1024)]
        self.person = grpc.secure_channel(address, person.channel_credentials(), options)
        self.peer = grpc.secure_channel(address, peer.channel_credentials(), options)
        self.acked: set[str] = set()
        self.codes: dict[str, int] = {}

    def close(self) -> None:
        self.person.close()
        self.peer.close()

    def call(
        self, method: MethodDescriptor, data: bytes, stream_wait: float = 0.3
    ) -> grpc.StatusCode:
        """One call; a stream is read for its first reply for at most ``stream_wait`` s."""
        path = f"/{method.containing_service.full_name}/{method.name}"
        channel = self.peer if method.containing_service.name == "Federation" else self.person
        streaming = method.server_streaming or method.client_streaming
        try:
            if method.client_streaming:
                responses = channel.stream_stream(path)(iter([data]), timeout=stream_wait)
                next(iter(responses))
                responses.cancel()
            elif method.server_streaming:
                responses = channel.unary_stream(path)(data, timeout=stream_wait)
                next(iter(responses))
                responses.cancel()
            else:
                reply = channel.unary_unary(path)(data, timeout=TIMEOUT)
                if method.name == "CreateTicket":
                    self.acked.add(pb.Ticket.FromString(reply).code)
            code = grpc.StatusCode.OK
        except StopIteration:
            code = grpc.StatusCode.OK
        except grpc.RpcError as err:
            code = err.code()
            details = err.details() or ""
            assert code != grpc.StatusCode.UNKNOWN, (path, details)
            assert "internal error" not in details, (path, details)
            if code == grpc.StatusCode.UNAVAILABLE:
                # Owner-only actions wait for etcd (this node has none); the node itself
                # must not go away.
                assert "etcd" in details and "connect" not in details, (path, details)
            if code == grpc.StatusCode.DEADLINE_EXCEEDED:
                assert streaming, (path, "a unary call hung")
            if code == grpc.StatusCode.CANCELLED:
                assert streaming, (path, details)
        self.codes[code.name] = self.codes.get(code.name, 0) + 1
        return code


@pytest.fixture(scope="module")
def fuzzer(node_fed: Federation, certs: Path) -> Iterator[Fuzzer]:
    f = Fuzzer(node_fed, certs)
    try:
        yield f
    finally:
        f.close()


@settings(
    max_examples=2500,
    deadline=None,
    derandomize=True,  # the same requests on every run
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
    database=None,
)
@given(data=st.data())
def test_every_rpc_answers_malformed_requests_cleanly(fuzzer: Fuzzer, data: st.DataObject) -> None:
    method = data.draw(st.sampled_from(METHODS))
    fuzzer.call(method, data.draw(message_bytes(method)))


def test_oversized_requests_are_refused_on_every_rpc(fuzzer: Fuzzer) -> None:
    for method in METHODS:
        payload = desk_pb2.CreateTicketRequest(description="x" * OVERSIZED).SerializeToString()
        code = fuzzer.call(method, payload, stream_wait=TIMEOUT)
        assert code == grpc.StatusCode.RESOURCE_EXHAUSTED, method.name


def test_after_the_fuzz_the_node_serves_and_lost_nothing(
    node_fed: Federation, certs: Path, fuzzer: Fuzzer
) -> None:
    assert sum(fuzzer.codes.values()) >= 2500, fuzzer.codes
    assert fuzzer.acked, "the fuzzer never created a ticket: its messages are too broken"
    node = node_fed.node("velizy")
    assert node.alive
    assert node.terminate() == 0
    node.start()
    with agent(node_fed, certs, "auditor") as c:
        for code in sorted(fuzzer.acked):
            assert c.desk.GetTicket(pb.GetTicketRequest(code=code), timeout=TIMEOUT).code == code
    assert "Traceback" not in node.log_path.read_text(errors="replace")
