"""The node's record tracer, checked against what the SDK's tracer would have exported."""

from __future__ import annotations

import os
import threading
from collections.abc import Sequence

import pytest
from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult
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
)

import ops.spans as span_module
from ops.span_relay import decode_spans, span_row
from ops.spans import RecordSpan, RecordTracerProvider

RESOURCE = Resource.create({"service.name": "sundesk-node", "sundesk.region": "velizy"})


def provider() -> tuple[RecordTracerProvider, InMemorySpanExporter]:
    memory = InMemorySpanExporter()
    return RecordTracerProvider(memory, RESOURCE, delay_s=60.0), memory


def finished(p: RecordTracerProvider, memory: InMemorySpanExporter) -> dict[str, ReadableSpan]:
    assert p.force_flush(5.0)
    return {s.name: s for s in memory.get_finished_spans()}


def remote(flags: int, state: TraceState | None = None) -> Context:
    parent = SpanContext(
        0xABC, 0xDEF, is_remote=True, trace_flags=TraceFlags(flags), trace_state=state
    )
    return trace.set_span_in_context(NonRecordingSpan(parent), Context())


def test_a_root_is_sampled_and_a_child_joins_its_parents_trace() -> None:
    p, memory = provider()
    tracer = p.get_tracer("sundesk")
    root = tracer.start_span("root", context=Context(), kind=SpanKind.SERVER, attributes={"a": 1})
    child = tracer.start_span("child", context=trace.set_span_in_context(root))
    child_end = 2_000_000_000_000_000_000
    child.end(end_time=child_end)
    root.end()
    spans = finished(p, memory)
    r, c = spans["root"], spans["child"]
    assert r.context.trace_flags.sampled and r.parent is None and r.kind is SpanKind.SERVER
    assert c.context.trace_id == r.context.trace_id and c.context.span_id != r.context.span_id
    assert c.parent is not None and c.parent.span_id == r.context.span_id
    assert c.end_time == child_end
    assert r.resource.attributes["sundesk.region"] == "velizy"
    assert r.instrumentation_scope is not None and r.instrumentation_scope.name == "sundesk"
    assert dict(r.attributes or {}) == {"a": 1}


def test_an_unsampled_parent_gives_a_non_recording_span_in_its_trace() -> None:
    p, memory = provider()
    span = p.get_tracer("sundesk").start_span("quiet", context=remote(0))
    assert not span.is_recording()
    ctx = span.get_span_context()
    assert ctx.trace_id == 0xABC and not ctx.trace_flags.sampled and ctx.span_id != 0xDEF
    span.end()
    assert finished(p, memory) == {}


def test_a_sampled_remote_parent_passes_on_its_trace_state() -> None:
    p, memory = provider()
    state = TraceState([("vendor", "x")])
    p.get_tracer("sundesk").start_span("joined", context=remote(1, state)).end()
    span = finished(p, memory)["joined"]
    assert span.context.trace_state == state
    assert span.parent is not None and span.parent.is_remote and span.parent.span_id == 0xDEF


def test_an_ended_span_ignores_changes_and_ok_is_final() -> None:
    p, memory = provider()
    span = p.get_tracer("sundesk").start_span("s", attributes={"gone": None, "kept": "x"})
    span.set_status(Status(StatusCode.OK))
    span.set_status(StatusCode.ERROR, "too late: OK is final")
    span.add_link(SpanContext(0, 0, False))  # invalid: dropped
    span.add_link(SpanContext(5, 6, False), {"why": "linked"})
    span.end(end_time=10)
    span.set_attribute("after", 1)
    span.update_name("renamed")
    span.end(end_time=20)
    assert not span.is_recording()
    s = finished(p, memory)["s"]
    assert s.status.status_code is StatusCode.OK
    assert dict(s.attributes or {}) == {"kept": "x"}
    assert [(k.context.span_id, dict(k.attributes or {})) for k in s.links] == [
        (6, {"why": "linked"})
    ]
    assert s.end_time == 10
    assert len(memory.get_finished_spans()) == 1


def test_start_as_current_span_records_an_escaping_exception() -> None:
    p, memory = provider()
    tracer = p.get_tracer("sundesk")
    with pytest.raises(ValueError), tracer.start_as_current_span("failing") as span:
        assert trace.get_current_span() is span
        raise ValueError("bad queue")
    assert trace.get_current_span() is not span
    s = finished(p, memory)["failing"]
    assert s.status.status_code is StatusCode.ERROR
    (event,) = s.events
    assert event.name == "exception"
    attrs = dict(event.attributes or {})
    assert attrs["exception.type"] == "ValueError"
    assert attrs["exception.message"] == "bad queue"
    assert "Traceback" in str(attrs["exception.stacktrace"])


class _Encoded(SpanExporter):
    """Takes batches already encoded, as the relay exporter does."""

    def __init__(self) -> None:
        self.batches: list[list[ReadableSpan]] = []

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        raise AssertionError("an exporter with export_encoded gets no SDK spans")

    def export_encoded(self, payload: bytes, count: int) -> SpanExportResult:
        spans = decode_spans(payload)
        assert len(spans) == count
        self.batches.append(spans)
        return SpanExportResult.SUCCESS

    def shutdown(self) -> None:
        pass


def test_an_encoded_batch_decodes_to_the_spans_that_were_recorded() -> None:
    encoded = _Encoded()
    p = RecordTracerProvider(encoded, RESOURCE, delay_s=60.0)
    tracer = p.get_tracer("sundesk", "1.0")
    state = TraceState([("vendor", "x")])
    span = tracer.start_span(
        "store.commit",
        context=remote(1, state),
        links=[Link(SpanContext(7, 8, False), {"n": 2})],
        attributes={"sizes": (1, 2)},
        start_time=100,
    )
    span.add_event("fsync", {"ms": 0.5}, timestamp=150)
    span.set_status(StatusCode.ERROR, "disk")
    span.end(end_time=200)
    assert p.force_flush(5.0)
    ((back,),) = encoded.batches
    assert back.name == "store.commit" and (back.start_time, back.end_time) == (100, 200)
    assert back.context == span.get_span_context()
    assert back.context.trace_state == state
    assert back.parent is not None and back.parent.trace_state == state and back.parent.is_remote
    sizes = dict(back.attributes or {})["sizes"]
    assert isinstance(sizes, list | tuple) and list(sizes) == [1, 2]
    assert [(e.name, e.timestamp) for e in back.events] == [("fsync", 150)]
    assert back.links[0].context.span_id == 8
    assert dict(back.links[0].attributes or {}) == {"n": 2}
    assert back.status.status_code is StatusCode.ERROR and back.status.description == "disk"
    assert back.instrumentation_scope is not None and back.instrumentation_scope.version == "1.0"
    assert back.resource.attributes["sundesk.region"] == "velizy"


def test_a_full_queue_drops_new_spans_and_counts_them_and_shutdown_exports_the_rest() -> None:
    encoded = _Encoded()
    p = RecordTracerProvider(encoded, RESOURCE, delay_s=60.0, max_queue=3, max_batch=2)
    queue = p.queue
    tracer = p.get_tracer("sundesk")
    spans = [tracer.start_span(f"s{i}") for i in range(5)]
    for s in spans:
        s.end()
    # A full batch (2) wakes the export thread, so between 3 and 5 spans get through.
    p.shutdown(5.0)
    exported = [s.name for b in encoded.batches for s in b]
    assert len(exported) + queue.dropped == 5
    assert exported == [f"s{i}" for i in range(len(exported))]
    assert all(len(b) <= 2 for b in encoded.batches)
    tracer.start_span("after shutdown").end()
    assert queue.dropped == 5 - len(exported) + 1
    assert queue.stats() == (len(exported), queue.dropped, 0, 0)


class _Failing(SpanExporter):
    """Refuses one batch, raises on the next, then takes the rest."""

    def __init__(self) -> None:
        self.calls = 0

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        self.calls += 1
        if self.calls == 1:
            return SpanExportResult.FAILURE
        if self.calls == 2:
            raise ConnectionError("endpoint gone")
        return SpanExportResult.SUCCESS


def test_spans_lost_in_a_failed_export_are_counted_apart_from_those_exported() -> None:
    p = RecordTracerProvider(_Failing(), RESOURCE, delay_s=60.0, max_queue=100, max_batch=10)
    tracer = p.get_tracer("sundesk")
    for n in (3, 2, 4):  # one batch for each export
        for i in range(n):
            tracer.start_span(f"s{i}").end()
        assert p.queue.stats()[3] == n  # waiting
        assert p.force_flush(5.0)
    assert p.queue.stats() == (4, 0, 5, 0)
    p.shutdown(5.0)


def test_the_export_thread_sends_a_partial_batch_only_first_and_a_flush_sends_it_all() -> None:
    # The export thread's turn: after its first batch, only full ones; spans that end
    # while a batch is exported wait for the next turn rather than go in a small batch.
    encoded = _Encoded()
    p = RecordTracerProvider(encoded, RESOURCE, delay_s=60.0, max_queue=100, max_batch=4)
    queue = p.queue
    tracer = p.get_tracer("sundesk")
    with queue._export_lock:  # the export thread, woken by a full batch, waits here
        for i in range(6):
            tracer.start_span(f"s{i}").end()
        queue._export_all(full_only=True)
        assert [len(b) for b in encoded.batches] == [4]
        for i in range(6, 9):
            tracer.start_span(f"s{i}").end()
        queue._export_all(full_only=True)  # 5 wait: one full batch, then 1 waits
        assert [len(b) for b in encoded.batches] == [4, 4]
    assert p.force_flush(5.0)
    exported = [s.name for b in encoded.batches for s in b]
    assert exported == [f"s{i}" for i in range(9)]
    p.shutdown(5.0)


class _Held(SpanExporter):
    """Holds each export until released."""

    def __init__(self) -> None:
        self.entered = threading.Event()
        self.release = threading.Event()

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        self.entered.set()
        assert self.release.wait(10)
        return SpanExportResult.SUCCESS


def test_a_batch_being_exported_still_counts_as_waiting() -> None:
    held = _Held()
    p = RecordTracerProvider(held, RESOURCE, delay_s=60.0, max_queue=100, max_batch=10)
    tracer = p.get_tracer("sundesk")
    for i in range(4):
        tracer.start_span(f"s{i}").end()
    flushing = threading.Thread(target=p.force_flush, args=(10.0,))
    flushing.start()
    try:
        assert held.entered.wait(10)
        assert p.queue.stats() == (0, 0, 0, 4)  # out of the queue, not exported yet
    finally:
        held.release.set()
        flushing.join(10)
    assert p.queue.stats() == (4, 0, 0, 0)
    p.shutdown(5.0)


def test_a_plain_span_row_is_the_row_span_row_makes() -> None:
    """A span without events, links or status has its row built without ``span_row``
    (``RecordSpan._row``, at export): the very row ``span_row`` makes for it."""
    ended: list[RecordSpan] = []
    p, _ = provider()
    p.queue.put = ended.append  # type: ignore[method-assign,assignment]
    span = p.get_tracer("sundesk", "1.0").start_span(
        "plain", kind=SpanKind.CLIENT, attributes={"a": "b"}, start_time=10
    )
    span.end(end_time=20)
    assert isinstance(span, RecordSpan)
    assert ended == [span]
    assert [span._row()] == [
        span_row(
            "plain",
            span.row,
            None,
            0,
            {"a": "b"},
            [],
            [],
            SpanKind.CLIENT,
            ["sundesk", "1.0"],
            Status(StatusCode.UNSET),
            10,
            20,
        )
    ]


@pytest.mark.parametrize("code", ["OK", "NOT_FOUND"])
def test_end_call_sets_the_status_code_and_ends(code: str) -> None:
    p, memory = provider()
    span = p.get_tracer("sundesk").start_span("rpc", kind=SpanKind.SERVER)
    assert isinstance(span, RecordSpan)
    span.end_call(code)
    span.end_call("INTERNAL")  # ended: ignored
    span.set_attribute("late", 1)
    (back,) = finished(p, memory).values()
    attributes = dict(back.attributes or {})
    assert attributes.pop("rpc.response.status_code") == code
    if code == "OK":
        assert attributes == {} and back.status.status_code is StatusCode.UNSET
    else:
        assert attributes == {"error.type": code}
        assert back.status.status_code is StatusCode.ERROR and back.status.description == code


def test_end_call_keeps_a_status_of_ok() -> None:
    p, memory = provider()
    span = p.get_tracer("sundesk").start_span("rpc")
    assert isinstance(span, RecordSpan)
    span.set_status(StatusCode.OK)
    span.end_call("UNAVAILABLE")
    (back,) = finished(p, memory).values()
    assert back.status.status_code is StatusCode.OK
    assert dict(back.attributes or {})["error.type"] == "UNAVAILABLE"


def test_new_traces_take_distinct_valid_ids_from_the_pool_and_carry_them() -> None:
    p, memory = provider()
    tracer = p.get_tracer("sundesk")
    spans = [tracer.start_span(f"s{i}", context=Context()) for i in range(600)]  # > 2 draws
    ids = set()
    for span in spans:
        assert isinstance(span, RecordSpan)
        sc = span.get_span_context()
        assert sc.is_valid and sc.trace_flags.sampled and span.parent is None
        assert span.carrier() == {"traceparent": f"00-{sc.trace_id:032x}-{sc.span_id:016x}-01"}
        ids.add(sc.trace_id)
        span.end()
    assert len(ids) == 600
    exported = finished(p, memory)
    assert {s.context.trace_id for s in exported.values()} == ids


def test_a_draw_skips_invalid_ids_and_a_forked_child_does_not_reuse_the_parents(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    pool = span_module._TRACEPARENTS
    pool.clear()
    # 256 ids of 48 hex digits: the first has a zero trace id, the second a zero span id.
    drawn = ["0" * 32 + "1" * 16, "1" * 32 + "0" * 16] + [f"{i:016x}" * 3 for i in range(2, 256)]
    monkeypatch.setattr(span_module.random, "getrandbits", lambda n: int("".join(drawn), 16))
    first = span_module._refilled()
    assert len(pool) == 253 and first not in pool
    assert sorted([first, *pool]) == sorted(f"00-{d[:32]}-{d[32:]}-01" for d in drawn[2:])
    monkeypatch.undo()
    read, write = os.pipe()
    child = os.fork()
    if child == 0:  # the child starts without the parent's ready ids
        os.close(read)
        os.write(write, str(len(span_module._TRACEPARENTS)).encode())
        os._exit(0)
    os.close(write)
    try:
        assert os.read(read, 16) == b"0"
        assert len(pool) == 253
    finally:
        os.close(read)
        os.waitpid(child, 0)
        pool.clear()  # not random: no later test may draw them


def test_a_span_whose_row_cannot_be_made_is_lost_with_its_batch_and_export_goes_on() -> None:
    # Rows are made at export now: a failure there counts the batch as lost and leaves
    # the export running, as a failing exporter does.
    p, memory = provider()
    p.queue.put("not a span")  # type: ignore[arg-type]
    p.get_tracer("sundesk").start_span("same batch").end()
    assert p.force_flush(5.0)
    assert p.queue.stats() == (0, 0, 2, 0)
    p.get_tracer("sundesk").start_span("next batch").end()
    assert set(finished(p, memory)) == {"next batch"}
    assert p.queue.stats() == (1, 0, 2, 0)
    p.shutdown(5.0)
