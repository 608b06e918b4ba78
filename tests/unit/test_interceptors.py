"""The observability interceptor on a real grpc.aio server: status codes as the client
sees them, duration histograms, and SERVER spans parented on incoming traceparent.

Every test runs twice: with the interceptors in the server's chain, and with the same
wrapping applied once at registration (``node.handlers``), as a node does."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

import grpc
import pytest
from grpc import aio
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import NoOpTracer, SpanKind, StatusCode

from node.errors import InvalidArgument
from node.grpc_errors import ErrorInterceptor, wrap_errors
from node.handlers import make_server
from ops.interceptors import ObservabilityInterceptor
from ops.metrics import Metrics
from ops.tracing import (
    extract_context,
    flush_tracing,
    get_tracer,
    inject_context,
    shutdown_tracing,
)
from ops.tracing import make_tracer_provider as make_provider
from sundesk.v1 import desk_pb2, desk_pb2_grpc

DESK = "sundesk.v1.Desk"
TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT_ID = "00f067aa0ba902b7"


class FakeDesk(desk_pb2_grpc.DeskServicer):
    """One behaviour per method: OK, abort, set_code, domain error, crash, stream."""

    async def GetTicket(self, request: Any, context: aio.ServicerContext) -> desk_pb2.Ticket:
        # What the real servicer does to put the trace into a replicated operation.
        return desk_pb2.Ticket(code=request.code, labels=inject_context())

    async def UpdateTicket(self, request: Any, context: aio.ServicerContext) -> desk_pb2.Ticket:
        await context.abort(grpc.StatusCode.NOT_FOUND, f"no ticket {request.code}")
        raise AssertionError("abort returned")

    async def ListTickets(self, request: Any, context: aio.ServicerContext) -> Any:
        context.set_code(grpc.StatusCode.FAILED_PRECONDITION)
        context.set_details("page token from another query")
        return desk_pb2.ListTicketsResponse()

    async def CreateTicket(self, request: Any, context: aio.ServicerContext) -> desk_pb2.Ticket:
        raise InvalidArgument("title is empty")

    async def AddComment(self, request: Any, context: aio.ServicerContext) -> desk_pb2.Ticket:
        raise RuntimeError("bug")

    async def WatchTickets(
        self, request: Any, context: aio.ServicerContext
    ) -> AsyncIterator[desk_pb2.TicketEvent]:
        for i in range(3 if request.queue != "forever" else 10**9):
            yield desk_pb2.TicketEvent(
                change_id=f"velizy:{i}", ticket=desk_pb2.Ticket(labels=inject_context())
            )
            if request.queue == "forever":
                await asyncio.sleep(0.01)
        if request.queue == "broken":
            await context.abort(grpc.StatusCode.UNAVAILABLE, "store closed")


WIRINGS = ("interceptors", "registration")


@pytest.fixture(params=WIRINGS, autouse=True)
def wiring(request: pytest.FixtureRequest) -> str:
    Env.wiring = request.param
    return str(request.param)


class Env:
    wiring = WIRINGS[0]

    def __init__(self) -> None:
        self.metrics = Metrics("velizy")
        self.exporter = InMemorySpanExporter()
        self.provider = make_provider("velizy", otlp_endpoint=None, exporter=self.exporter)
        self.stub: Any = None
        self.channel: aio.Channel | None = None

    def count(self, method: str, code: str, service: str = DESK) -> float:
        value = self.metrics.registry.get_sample_value(
            "sundesk_rpc_requests_total", {"service": service, "method": method, "code": code}
        )
        return value or 0.0

    def observations(self, method: str, service: str = DESK) -> float:
        value = self.metrics.registry.get_sample_value(
            "sundesk_rpc_duration_seconds_count", {"service": service, "method": method}
        )
        return value or 0.0

    def spans(self) -> dict[str, list[ReadableSpan]]:
        """Finished spans by name (``serving`` flushed them when it stopped)."""
        by_name: dict[str, list[ReadableSpan]] = {}
        for span in self.exporter.get_finished_spans():
            by_name.setdefault(span.name, []).append(span)
        return by_name


@asynccontextmanager
async def serving(
    env: Env, extra: Callable[[aio.Server], None] | None = None, map_errors: bool = True
) -> AsyncIterator[Env]:
    # Outermost, as on a node: domain errors reach us already mapped by ErrorInterceptor.
    interceptor = ObservabilityInterceptor(env.metrics, get_tracer(env.provider), "velizy")
    registrar: Any
    if env.wiring == "interceptors":
        inner = [ErrorInterceptor()] if map_errors else []
        server = registrar = aio.server(interceptors=[interceptor, *inner])
    else:
        server, registrar = make_server((), interceptor, (), *([wrap_errors] if map_errors else []))
    desk_pb2_grpc.add_DeskServicer_to_server(FakeDesk(), registrar)
    if extra is not None:
        extra(registrar)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        async with aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            env.channel = channel
            env.stub = desk_pb2_grpc.DeskStub(channel)
            yield env
    finally:
        await server.stop(None)
        assert flush_tracing(env.provider)
        shutdown_tracing(env.provider)


async def status_of(call: Awaitable[Any]) -> grpc.StatusCode:
    try:
        await call
    except aio.AioRpcError as exc:
        return exc.code()
    return grpc.StatusCode.OK


def run_with_server(test: Callable[[Env], Awaitable[None]]) -> Env:
    env = Env()

    async def main() -> None:
        async with serving(env):
            await asyncio.wait_for(test(env), timeout=30)

    asyncio.run(main())
    return env


def test_unary_codes_are_counted_as_the_client_sees_them() -> None:
    seen: dict[str, grpc.StatusCode] = {}

    async def calls(env: Env) -> None:
        stub = env.stub
        seen["GetTicket"] = await status_of(stub.GetTicket(desk_pb2.GetTicketRequest(code="A")))
        await stub.GetTicket(desk_pb2.GetTicketRequest(code="B"))
        seen["UpdateTicket"] = await status_of(stub.UpdateTicket(desk_pb2.UpdateTicketRequest()))
        seen["ListTickets"] = await status_of(stub.ListTickets(desk_pb2.ListTicketsRequest()))
        seen["CreateTicket"] = await status_of(stub.CreateTicket(desk_pb2.CreateTicketRequest()))
        seen["AddComment"] = await status_of(stub.AddComment(desk_pb2.AddCommentRequest()))

    env = run_with_server(calls)
    assert seen == {
        "GetTicket": grpc.StatusCode.OK,
        "UpdateTicket": grpc.StatusCode.NOT_FOUND,  # context.abort
        "ListTickets": grpc.StatusCode.FAILED_PRECONDITION,  # set_code, then return
        "CreateTicket": grpc.StatusCode.INVALID_ARGUMENT,  # domain error, mapped inside us
        "AddComment": grpc.StatusCode.INTERNAL,  # unexpected error, mapped inside us
    }
    assert env.count("GetTicket", "OK") == 2
    assert env.observations("GetTicket") == 2
    for method, code in seen.items():
        assert env.count(method, code.name) >= 1, (method, code)
        assert env.observations(method) >= 1
    assert env.count("UpdateTicket", "OK") == 0
    assert env.count("UpdateTicket", "UNKNOWN") == 0


def test_server_spans_carry_rpc_attributes_and_error_status() -> None:
    async def calls(env: Env) -> None:
        await env.stub.GetTicket(desk_pb2.GetTicketRequest(code="A"))
        await status_of(env.stub.UpdateTicket(desk_pb2.UpdateTicketRequest()))

    spans = run_with_server(calls).spans()
    ok = spans[f"{DESK}/GetTicket"][0]
    assert ok.kind is SpanKind.SERVER
    assert ok.parent is None  # no traceparent sent: a root, not the server task's context
    assert ok.attributes is not None
    assert dict(ok.attributes) == {
        "rpc.system.name": "grpc",
        "rpc.method": f"{DESK}/GetTicket",
        "rpc.response.status_code": "OK",
        "sundesk.region": "velizy",
    }
    assert ok.status.status_code is StatusCode.UNSET
    assert ok.resource.attributes["service.name"] == "sundesk-node"
    assert ok.resource.attributes["sundesk.region"] == "velizy"

    failed = spans[f"{DESK}/UpdateTicket"][0]
    assert failed.attributes is not None
    assert failed.attributes["rpc.response.status_code"] == "NOT_FOUND"
    assert failed.attributes["error.type"] == "NOT_FOUND"
    assert failed.status.status_code is StatusCode.ERROR


def test_incoming_traceparent_becomes_the_parent_and_the_handler_sees_the_span() -> None:
    replies: list[desk_pb2.Ticket] = []

    async def calls(env: Env) -> None:
        metadata = (("traceparent", f"00-{TRACE_ID}-{PARENT_ID}-01"),)
        replies.append(await env.stub.GetTicket(desk_pb2.GetTicketRequest(), metadata=metadata))

    span = run_with_server(calls).spans()[f"{DESK}/GetTicket"][0]
    assert span.parent is not None and span.parent.is_remote
    assert span.parent.span_id == int(PARENT_ID, 16)
    assert span.context.trace_id == int(TRACE_ID, 16)
    # Inside the handler the server span is current: what it injects names that span.
    carried = dict(replies[0].labels)
    assert carried["traceparent"] == f"00-{TRACE_ID}-{span.context.span_id:016x}-01"
    assert extract_context(carried)  # and it reads back


def test_server_stream_counts_once_at_the_end() -> None:
    events: list[desk_pb2.TicketEvent] = []
    codes: list[grpc.StatusCode] = []

    async def calls(env: Env) -> None:
        metadata = (("traceparent", f"00-{TRACE_ID}-{PARENT_ID}-01"),)
        async for event in env.stub.WatchTickets(desk_pb2.WatchTicketsRequest(), metadata=metadata):
            events.append(event)
        try:
            async for _ in env.stub.WatchTickets(desk_pb2.WatchTicketsRequest(queue="broken")):
                pass
        except aio.AioRpcError as exc:
            codes.append(exc.code())

    env = run_with_server(calls)
    assert len(events) == 3
    assert codes == [grpc.StatusCode.UNAVAILABLE]
    assert env.count("WatchTickets", "OK") == 1
    assert env.count("WatchTickets", "UNAVAILABLE") == 1
    assert env.observations("WatchTickets") == 2
    spans = env.spans()[f"{DESK}/WatchTickets"]
    assert {s.attributes["rpc.response.status_code"] for s in spans if s.attributes} == {
        "OK",
        "UNAVAILABLE",
    }
    ok = next(s for s in spans if s.status.status_code is StatusCode.UNSET)
    assert ok.parent is not None and ok.parent.span_id == int(PARENT_ID, 16)
    # Each step of the generator ran with the stream's span current.
    for event in events:
        assert f"-{ok.context.span_id:016x}-" in event.ticket.labels["traceparent"]


def test_stream_cancelled_by_the_client_is_counted_cancelled() -> None:
    async def calls(env: Env) -> None:
        call = env.stub.WatchTickets(desk_pb2.WatchTicketsRequest(queue="forever"))
        await call.read()
        call.cancel()
        deadline = time.monotonic() + 10
        while env.count("WatchTickets", "CANCELLED") == 0:
            assert time.monotonic() < deadline, "cancellation never recorded"
            await asyncio.sleep(0.01)

    env = run_with_server(calls)
    assert env.count("WatchTickets", "CANCELLED") == 1
    assert env.count("WatchTickets", "OK") == 0


@pytest.mark.parametrize("style", ["write", "generator"])
def test_generic_streams_written_either_way(style: str) -> None:
    async def by_write(request: bytes, context: aio.ServicerContext) -> None:
        for part in request.split(b","):
            await context.write(part)

    async def by_generator(request: bytes, context: aio.ServicerContext) -> AsyncIterator[bytes]:
        for part in request.split(b","):
            yield part

    behavior = by_write if style == "write" else by_generator
    handlers = {"Split": grpc.unary_stream_rpc_method_handler(behavior)}

    def extra(server: Any) -> None:
        server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler("t.Echo", handlers),))

    env = Env()
    parts: list[bytes] = []

    async def main() -> None:
        # Without ErrorInterceptor, which only wraps async-generator streams.
        async with serving(env, extra, map_errors=False):
            assert env.channel is not None
            async for part in env.channel.unary_stream("/t.Echo/Split")(b"a,b,c"):
                parts.append(part)

    asyncio.run(main())
    assert parts == [b"a", b"b", b"c"]
    assert env.count("Split", "OK", service="t.Echo") == 1
    assert list(env.spans()) == ["t.Echo/Split"]


def test_tracing_disabled_still_counts_and_passes_the_callers_trace_on() -> None:
    env = Env()
    env.provider = make_provider("velizy", otlp_endpoint=None, enabled=False)
    replies: list[desk_pb2.Ticket] = []

    async def main() -> None:
        async with serving(env):
            metadata = (("traceparent", f"00-{TRACE_ID}-{PARENT_ID}-01"),)
            replies.append(await env.stub.GetTicket(desk_pb2.GetTicketRequest(), metadata=metadata))
            replies.append(await env.stub.GetTicket(desk_pb2.GetTicketRequest()))

    asyncio.run(main())
    assert env.count("GetTicket", "OK") == 2
    assert env.exporter.get_finished_spans() == ()
    # No span of ours, but an operation written here still joins the caller's trace.
    assert replies[0].labels["traceparent"] == f"00-{TRACE_ID}-{PARENT_ID}-01"
    assert dict(replies[1].labels) == {}


def test_call_router_wraps_once_for_calls_without_trace_context() -> None:
    """The dispatcher hands over the metadata grpc parsed for the lookup: a call without
    trace context gets the handler wrapped at registration, one with it its own."""
    interceptor = ObservabilityInterceptor(Metrics("velizy"), NoOpTracer(), "velizy")
    handler = grpc.unary_unary_rpc_method_handler(FakeDesk().GetTicket)
    route = interceptor.call_router(f"/{DESK}/GetTicket", handler)
    plain = route((("user-agent", "grpc-python"),))
    assert route(()) is plain and plain is not handler
    traced = route((("traceparent", f"00-{TRACE_ID}-{PARENT_ID}-01"),))
    assert traced is not plain and traced.unary_unary is not None


def test_a_call_without_trace_context_is_a_root_the_handler_sees() -> None:
    """Without a traceparent the call's span is a new root (made inline when the node's
    own tracer is wired at registration); inside the handler it is the current span, and
    a crash (which the error mapping inside turns into INTERNAL) ends it in error."""
    replies: list[desk_pb2.Ticket] = []

    async def calls(env: Env) -> None:
        replies.append(await env.stub.GetTicket(desk_pb2.GetTicketRequest()))
        await status_of(env.stub.AddComment(desk_pb2.AddCommentRequest()))

    spans = run_with_server(calls).spans()
    span = spans[f"{DESK}/GetTicket"][0]
    assert span.parent is None and span.context.is_valid and span.context.trace_flags.sampled
    assert dict(replies[0].labels) == {
        "traceparent": f"00-{span.context.trace_id:032x}-{span.context.span_id:016x}-01"
    }
    crashed = spans[f"{DESK}/AddComment"][0]
    assert crashed.parent is None and crashed.status.status_code is StatusCode.ERROR
    assert crashed.attributes is not None
    assert crashed.attributes["rpc.response.status_code"] == "INTERNAL"
