"""The span relay: spans cross the pipe unchanged, and a dead relay is replaced."""

from __future__ import annotations

import asyncio
from concurrent import futures
from pathlib import Path
from typing import Any

import grpc
import orjson
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans as otlp
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExportResult
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import (
    Link,
    NonRecordingSpan,
    SpanContext,
    SpanKind,
    Status,
    StatusCode,
    TraceFlags,
    TraceState,
    set_span_in_context,
)

from ops.collector import SpanStore, serve_collector
from ops.span_relay import (
    OtlpSender,
    RelayExporter,
    decode_spans,
    encode_spans,
    otlp_request,
    otlp_requests,
)


def some_spans() -> tuple[ReadableSpan, ...]:
    memory = InMemorySpanExporter()
    provider = TracerProvider(resource=Resource.create({"sundesk.region": "velizy"}))
    provider.add_span_processor(SimpleSpanProcessor(memory))
    tracer = provider.get_tracer("sundesk", "1.0")
    with tracer.start_as_current_span(
        "sundesk.v1.Desk/CreateTicket",
        kind=SpanKind.SERVER,
        attributes={"sundesk.ticket": "VEL-000001", "rpc.system": "grpc", "n": 3, "ok": True},
    ) as rpc:
        with tracer.start_as_current_span("child", attributes={"codes": ("a", "b")}) as child:
            child.record_exception(ValueError("bad title"))
            child.set_status(Status(StatusCode.ERROR, "bad title"))
    link = Link(rpc.get_span_context(), {"sundesk.ticket": "VEL-000001"})
    with tracer.start_as_current_span("store.commit", links=[link], attributes={"size": 0.5}):
        pass
    return memory.get_finished_spans()


def test_a_batch_crosses_the_pipe_into_the_same_otlp_request() -> None:
    spans = some_spans()
    back = decode_spans(encode_spans(spans))
    assert [s.name for s in back] == ["child", "sundesk.v1.Desk/CreateTicket", "store.commit"]
    assert otlp(back).SerializeToString() == otlp(spans).SerializeToString()


def other_spans() -> tuple[ReadableSpan, ...]:
    """Another resource and scope (no version), a remote parent with a trace state, every
    attribute type, an event, a link to a remote span, a status with no message."""
    memory = InMemorySpanExporter()
    provider = TracerProvider(resource=Resource.create({"sundesk.region": "japan", "n": 5}))
    provider.add_span_processor(SimpleSpanProcessor(memory))
    tracer = provider.get_tracer("sundesk.apply")
    remote = SpanContext(
        0x0AF7651916CD43DD8448EB211C80319C,
        0xB7AD6B7169203331,
        is_remote=True,
        trace_flags=TraceFlags(1),
        trace_state=TraceState([("vendor", "x1"), ("other", "y")]),
    )
    attributes: dict[str, Any] = {
        "neg": -7,
        "big": 2**40,
        "f": -0.25,
        "b": False,
        "s": "",
        "ints": (1, -2),
    }
    with tracer.start_as_current_span(
        "replication.apply",
        context=set_span_in_context(NonRecordingSpan(remote)),
        kind=SpanKind.CONSUMER,
        attributes=attributes,
        links=[Link(remote, {"why": "relayed"})],
    ) as span:
        span.add_event("", {"k": "v"})
        span.set_status(Status(StatusCode.OK))
    return memory.get_finished_spans()


def test_the_relays_own_bytes_parse_to_the_sdk_encoders_request() -> None:
    for spans in (some_spans(), other_spans(), some_spans() + other_spans()):
        ours = ExportTraceServiceRequest.FromString(otlp_request(orjson.loads(encode_spans(spans))))
        assert ours == otlp(spans)
        assert ours.SerializeToString() == otlp(spans).SerializeToString()


def test_a_link_given_as_traceparent_text_is_read_at_export_and_bad_text_is_no_link() -> None:
    # A commit span hands the relay its writes' traceparents as text, unparsed.
    trace_id, span_id = "0af7651916cd43dd8448eb211c80319c", "b7ad6b7169203331"
    row = orjson.loads(encode_spans(some_spans()))
    commit = next(r for r in row["spans"] if r[0] == "store.commit")
    commit[6] = [
        f"00-{trace_id}-{span_id}-01",
        "00-not-a-traceparent",
        f"00-{trace_id}-{0:016x}-01",
    ]
    spans = {
        s.name: s
        for s in ExportTraceServiceRequest.FromString(otlp_request(row))
        .resource_spans[0]
        .scope_spans[0]
        .spans
    }
    links = spans["store.commit"].links
    assert [(link.trace_id.hex(), link.span_id.hex()) for link in links] == [(trace_id, span_id)]
    assert links[0].flags == 0x300  # remote: it came from another span's carrier


def test_a_batch_too_large_for_one_request_goes_in_parts_with_every_span() -> None:
    batch = orjson.loads(encode_spans(some_spans()))
    template = batch["spans"][0]
    batch["spans"] = [
        [f"big {i}", *template[1:4], {"blob": "x" * 100_000}, *template[5:]] for i in range(10)
    ]
    requests = otlp_requests(batch, limit=300_000)
    assert len(requests) > 1 and all(len(r) <= 300_000 for r in requests)
    names = [
        span.name
        for r in requests
        for span in ExportTraceServiceRequest.FromString(r).resource_spans[0].scope_spans[0].spans
    ]
    assert names == [f"big {i}" for i in range(10)]
    assert otlp_requests(batch) == [otlp_request(batch)]  # under the default limit: one


def test_the_relay_exports_to_a_real_receiver_and_is_replaced_when_it_dies(
    tmp_path: Path,
) -> None:
    db = tmp_path / "traces.db"

    async def main() -> list[SpanExportResult]:
        server, port = await serve_collector(db)
        relay = RelayExporter(f"127.0.0.1:{port}", timeout_s=5)
        try:
            first = await asyncio.to_thread(relay.export, some_spans())
            assert relay._proc is not None
            relay._proc.kill()  # a relay that died between two batches
            relay._proc.wait()
            second = await asyncio.to_thread(relay.export, some_spans())
            return [first, second]
        finally:
            await asyncio.to_thread(relay.shutdown)
            await server.stop(1)

    results = asyncio.run(asyncio.wait_for(main(), timeout=60))
    assert results == [SpanExportResult.SUCCESS, SpanExportResult.SUCCESS]
    store = SpanStore(db)
    try:
        assert len(store.trace_ids_for_ticket("VEL-000001")) == 2  # one trace per batch
    finally:
        store.close()


class _Refusing:
    """An OTLP endpoint answering each Export with the next status of ``codes``."""

    def __init__(self, codes: list[grpc.StatusCode]) -> None:
        self.codes = codes
        self.calls = 0

    def export(self, request: bytes, context: grpc.ServicerContext) -> bytes:
        code = self.codes[min(self.calls, len(self.codes) - 1)]
        self.calls += 1
        if code is not grpc.StatusCode.OK:
            context.abort(code, "not now")
        return b""


def _serve(endpoint: _Refusing) -> tuple[grpc.Server, int]:
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    handler = grpc.method_handlers_generic_handler(
        "opentelemetry.proto.collector.trace.v1.TraceService",
        {"Export": grpc.unary_unary_rpc_method_handler(endpoint.export)},
    )
    server.add_generic_rpc_handlers((handler,))
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    return server, port


def test_the_sender_retries_a_transient_refusal_and_gives_up_on_a_permanent_one() -> None:
    transient = _Refusing([grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.OK])
    permanent = _Refusing([grpc.StatusCode.INVALID_ARGUMENT])
    for endpoint, sent, calls in ((transient, True, 2), (permanent, False, 1)):
        server, port = _serve(endpoint)
        sender = OtlpSender(f"http://127.0.0.1:{port}", timeout_s=5)
        try:
            assert sender.send(otlp_request(orjson.loads(encode_spans(some_spans())))) is sent
            assert endpoint.calls == calls
        finally:
            sender.close()
            server.stop(None)
