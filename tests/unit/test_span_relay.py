"""The span relay: spans cross the pipe unchanged, and a dead relay is replaced."""

from __future__ import annotations

import asyncio
from pathlib import Path

from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans as otlp
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExportResult
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import Link, SpanKind, Status, StatusCode

from ops.collector import SpanStore, serve_collector
from ops.span_relay import RelayExporter, decode_spans, encode_spans


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
