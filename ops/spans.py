"""A small OpenTelemetry tracer for the node: spans are plain records until export.

The SDK's ``Tracer.start_span`` and ``Span.end`` cost about 25 µs a span on these
machines (sampler, span limits, bounded containers, span processors, locks). A node
writing 1,800 tickets a second makes one RPC span per call, and the SDK's share of its
CPU was 15-18% (py-spy, stop 13). ``RecordTracer`` implements the same API
(``opentelemetry.trace.Tracer``) with spans that keep their fields in slots and, when
they end, are appended to a queue that a background thread exports in batches, as the
SDK's ``BatchSpanProcessor`` does.

What is kept of the SDK's behaviour: parent-based sampling with every root sampled (a
child of an unsampled parent does not record, and keeps the parent's trace id and
flags); random 64/128-bit ids; the trace state is inherited from the parent; attributes
whose value is ``None`` are dropped; an ended span ignores changes; a status of OK is
final; ``record_exception`` writes the conventional ``exception`` event;
``start_as_current_span`` records an escaping exception and sets the status to ERROR.
Not kept: span limits (our spans carry a handful of attributes and at most
``node.observe.MAX_LINKS`` links) and span processors other than the exporter.

An ended span waits in the export queue as it is, and the export thread makes each its
JSON-ready row (``ops.span_relay.span_row``), a batch at a time. The relay
exporter (``ops.span_relay``) takes a batch of rows encoded as they are; any other
``SpanExporter`` (``InMemorySpanExporter`` in tests) gets SDK ``ReadableSpan``s rebuilt
from the rows, as the relay rebuilds them on its side.
"""

from __future__ import annotations

import contextlib
import logging
import os
import random
import threading
import time
import traceback
from collections import deque
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import Event
from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult
from opentelemetry.sdk.util.instrumentation import InstrumentationScope
from opentelemetry.trace import (
    Link,
    NonRecordingSpan,
    SpanContext,
    SpanKind,
    Status,
    StatusCode,
)
from opentelemetry.util import types

from ops.span_relay import (
    KIND_VALUES,
    ZERO_SPAN_ID,
    ZERO_TRACE_ID,
    context_row,
    decode_rows,
    encode_rows,
    row_context,
    span_row,
)

log = logging.getLogger("sundesk.tracing")

_UNSET = Status(StatusCode.UNSET)
_OK = StatusCode.OK

# Spans per export call. The SDK's default is 512; each export also wakes the relay and
# makes one OTLP call to the collector, and on a two-core machine taking 2,700 spans a
# second those per-batch costs were worth more than the encoding: bench.observability's
# overhead was 20% with batches of 512, 13% with 2,048 (12-13% with 4,096), side by side.
# The relay splits a batch whose request would be too large for a collector to take.
MAX_BATCH = 2048
MAX_QUEUE = 4 * MAX_BATCH  # spans waiting for export; beyond it, new spans are dropped


class RecordSpan(trace.Span):
    """A recording span: its fields, and the queue its row goes to when it ends.

    Its ids are kept as the hex text that both its row and its ``traceparent`` are made
    of (``row``: ``ops.span_relay.context_row``); the ``SpanContext`` is built only when
    something asks for it. Formatting a 128-bit id, and parsing it back, was a large part
    of what a span cost the RPC that made it."""

    __slots__ = (
        "_attributes",
        "_context",
        "_events",
        "_link_rows",
        "_links",
        "_queue",
        "_scope",
        "_traceparent",
        "end_time",
        "kind",
        "name",
        "parent_row",
        "row",
        "start_time",
        "status",
    )

    def __init__(
        self,
        tracer: RecordTracer,
        name: str,
        row: list[Any],
        parent_row: list[Any] | None,
        kind: SpanKind,
        attributes: types.Attributes,
        links: Sequence[Link] | None,
        start_time: int | None,
    ) -> None:
        self._queue = tracer.queue
        self.name = name
        self.row = row
        self.parent_row = parent_row
        self.kind = kind
        self._scope = tracer.scope_row
        self._attributes: dict[str, Any] = (
            ({k: v for k, v in attributes.items() if v is not None})
            if attributes and None in attributes.values()
            else dict(attributes or ())
        )
        # Most spans have no events and no links: they share an empty tuple until a first
        # one is added, rather than make three lists that stay empty.
        self._events: list[Event] | tuple[()] = ()
        self._links: list[Link] | tuple[()] = (
            [k for k in links if k.context.is_valid] if links else ()
        )
        self._link_rows: list[list[Any] | str] | tuple[()] = ()
        self._context: SpanContext | None = None
        self._traceparent: str | None = None
        self.status = _UNSET
        self.start_time = start_time if start_time is not None else time.time_ns()
        self.end_time: int | None = None

    @property
    def context(self) -> SpanContext:
        if self._context is None:
            self._context = row_context(self.row)
        return self._context

    @property
    def parent(self) -> SpanContext | None:
        return None if self.parent_row is None else row_context(self.parent_row)

    def carrier(self) -> dict[str, str]:
        """This span's W3C trace context, as ``ops.tracing.inject_context`` gives it."""
        if self._traceparent is None:
            self._traceparent = f"00-{self.row[0]}-{self.row[1]}-01"
        if len(self.row) > 4:
            return {"traceparent": self._traceparent, "tracestate": self.row[4]}
        return {"traceparent": self._traceparent}

    # ----- opentelemetry.trace.Span --------------------------------------------------------

    def get_span_context(self) -> SpanContext:
        return self.context

    def is_recording(self) -> bool:
        return self.end_time is None

    def set_attribute(self, key: str, value: types.AttributeValue) -> None:
        if self.end_time is None and value is not None:
            self._attributes[key] = value

    def tag(self, key: str, value: str, other: str = "", other_value: str = "") -> None:
        """``set_attribute(key, value)``, and ``other`` too if its value is not empty, in
        one call: on a traced write's path, each call is a frame run with cold caches."""
        if self.end_time is None:
            self._attributes[key] = value
            if other_value:
                self._attributes[other] = other_value

    def set_attributes(self, attributes: Mapping[str, types.AttributeValue]) -> None:
        for key, value in attributes.items():
            self.set_attribute(key, value)

    def add_event(
        self, name: str, attributes: types.Attributes = None, timestamp: int | None = None
    ) -> None:
        if self.end_time is None:
            if not self._events:
                self._events = []
            self._events.append(Event(name, attributes, timestamp or time.time_ns()))

    def add_link(self, context: SpanContext, attributes: types.Attributes = None) -> None:
        if self.end_time is None and context.is_valid:
            if not self._links:
                self._links = []
            self._links.append(Link(context, attributes))

    def add_link_rows(self, rows: Sequence[list[Any] | str]) -> None:
        """Links already in the form of ``ops.span_relay.span_row``'s link rows: a row
        (``[ops.tracing.carried_row(...), attributes]``) or a ``traceparent`` text, read at
        export."""
        if self.end_time is None:
            if not self._link_rows:
                self._link_rows = []
            self._link_rows.extend(rows)

    def update_name(self, name: str) -> None:
        if self.end_time is None:
            self.name = name

    def set_status(self, status: Status | StatusCode, description: str | None = None) -> None:
        if self.end_time is not None or self.status.status_code is _OK:
            return
        if isinstance(status, StatusCode):
            status = Status(status, description)
        self.status = status

    def record_exception(
        self,
        exception: BaseException,
        attributes: types.Attributes = None,
        timestamp: int | None = None,
        escaped: bool = False,
    ) -> None:
        kind = type(exception)
        module = kind.__module__
        name = (
            f"{module}.{kind.__qualname__}"
            if module and module != "builtins"
            else kind.__qualname__
        )
        event: dict[str, Any] = {
            "exception.type": name,
            "exception.message": str(exception),
            "exception.stacktrace": "".join(traceback.format_exception(exception)),
            "exception.escaped": str(escaped),
        }
        if attributes:
            event.update(attributes)
        self.add_event("exception", event, timestamp)

    def end(self, end_time: int | None = None) -> None:
        if self.end_time is not None:
            return
        self.end_time = end_time if end_time is not None else time.time_ns()
        self._queue.put(self)

    def end_call(self, code: str) -> None:
        """End an RPC's span with its status code (``rpc.response.status_code``; any code
        but OK also sets ``error.type`` and an ERROR status): what ``set_attribute``,
        ``set_status`` and ``end`` do, in one call on every RPC's path."""
        if self.end_time is not None:
            return
        self._attributes["rpc.response.status_code"] = code
        if code != "OK":
            self._attributes["error.type"] = code
            if self.status.status_code is not _OK:
                self.status = Status(StatusCode.ERROR, code)
        self.end_time = time.time_ns()
        self._queue.put(self)

    def _row(self) -> list[Any]:
        """This ended span as ``ops.span_relay.span_row`` makes it, built here without
        that call in the common case (no events, no links, status unset). Made by the
        export thread, for a whole batch in one loop: an ended span no longer changes."""
        if self._events or self._links or self._link_rows or self.status is not _UNSET:
            return span_row(
                self.name,
                self.row,
                self.parent_row,
                0,
                self._attributes,
                self._events,
                self._links,
                self.kind,
                self._scope,
                self.status,
                self.start_time,
                self.end_time,
                self._link_rows,
            )
        return [
            self.name,
            self.row,
            self.parent_row,
            0,
            self._attributes,
            [],
            [],
            KIND_VALUES[self.kind],
            self._scope,
            [0, None],
            self.start_time,
            self.end_time,
        ]


class SpanQueue:
    """Ended spans on their way to the exporter, which runs on this queue's own thread.

    The node's threads only append to a deque (atomic in CPython); the export thread
    wakes every ``delay_s``, or as soon as a full batch is waiting, and makes the batch's
    rows, then encodes them in one ``orjson`` call. Rows used to be made as each span
    ended, to keep this thread's turns under the GIL short; but a span ends on the event
    loop between two calls, with cold caches, where making its row cost about 1.6 µs
    (``bench.span_cost``), and here, in a loop over a batch, about 0.6 µs. A batch
    of 2,048 rows holds the GIL for a few milliseconds, within the switch interval
    (5 ms). The rows also let the relay and in-process exporters share one decoder."""

    def __init__(
        self,
        exporter: SpanExporter,
        resource: Resource,
        *,
        delay_s: float,
        max_queue: int = MAX_QUEUE,
        max_batch: int = MAX_BATCH,
    ) -> None:
        self.resource = resource
        self._resources = [resource]
        self._resource_rows = [dict(resource.attributes)]
        self._exporter = exporter
        # The relay exporter takes a batch already encoded; any other is given SDK spans.
        self._encoded = getattr(exporter, "export_encoded", None)
        self._delay_s = delay_s
        self._max_queue = max_queue
        self._max_batch = max_batch
        self._spans: deque[RecordSpan] = deque()
        self._wake = threading.Event()
        self._export_lock = threading.Lock()  # the export thread and force_flush
        self._stopped = False
        # Counts for the node's metrics (``Metrics.watch_spans``), each written by one
        # thread: spans refused by a full queue, exported, lost with a failed export.
        self.dropped = 0
        self.exported = 0
        self.failed = 0
        self._in_flight = 0  # spans of the batch being exported
        self._thread = threading.Thread(target=self._run, name="sundesk-spans", daemon=True)
        self._thread.start()

    def put(self, span: RecordSpan) -> None:
        spans = self._spans
        if len(spans) >= self._max_queue or self._stopped:
            self.dropped += 1
            return
        spans.append(span)
        if len(spans) >= self._max_batch and not self._wake.is_set():
            self._wake.set()

    def _run(self) -> None:
        while not self._stopped:
            self._wake.wait(self._delay_s)
            self._wake.clear()
            with self._export_lock:
                self._export_all(full_only=True)

    def _export_all(self, full_only: bool = False) -> None:
        """Export what waits, in batches. ``full_only``: after the first batch, only full
        ones, so that the spans ending while a batch is exported wait for the next turn
        rather than go in a small batch of their own: each batch wakes the relay and
        makes an OTLP call, and at 2,700 spans a second the small batches were as many as
        the full ones."""
        spans = self._spans
        first = True
        while spans and (first or not full_only or len(spans) >= self._max_batch):
            first = False
            # Counted as waiting until counted as exported or lost (``stats``): set
            # before the batch leaves the queue, cleared after it is counted.
            self._in_flight = min(len(spans), self._max_batch)
            batch = [spans.popleft() for _ in range(self._in_flight)]
            result = SpanExportResult.FAILURE
            try:
                rows = [span._row() for span in batch]
                if self._encoded is not None:
                    result = self._encoded(encode_rows(self._resource_rows, rows), len(rows))
                else:
                    result = self._exporter.export(decode_rows(self._resources, rows))
            except Exception:  # nothing failing here may end the export thread
                log.exception("exporting %d spans failed", len(batch))
            if result is SpanExportResult.SUCCESS:
                self.exported += len(batch)
            else:
                self.failed += len(batch)
            self._in_flight = 0

    def stats(self) -> tuple[int, int, int, int]:
        """(exported, dropped because the queue was full, lost in failed exports,
        waiting now: queued or being exported)."""
        return self.exported, self.dropped, self.failed, len(self._spans) + self._in_flight

    def force_flush(self, timeout_s: float) -> bool:
        """Export every ended span now; False if the export thread held on too long."""
        if not self._export_lock.acquire(timeout=timeout_s):
            return False
        try:
            self._export_all()
        finally:
            self._export_lock.release()
        return True

    def shutdown(self, timeout_s: float) -> None:
        self._stopped = True
        self._wake.set()
        self._thread.join(timeout_s)
        self.force_flush(timeout_s)
        if self.dropped:
            log.warning("%d spans were dropped: the export queue was full", self.dropped)
        self._exporter.shutdown()


class RecordTracer(trace.Tracer):
    def __init__(self, queue: SpanQueue, scope: InstrumentationScope) -> None:
        self.queue = queue
        self.scope_row = [scope.name, scope.version]

    def start_span(
        self,
        name: str,
        context: Context | None = None,
        kind: SpanKind = SpanKind.INTERNAL,
        attributes: types.Attributes = None,
        links: Sequence[Link] | None = None,
        start_time: int | None = None,
        record_exception: bool = True,
        set_status_on_exception: bool = True,
    ) -> trace.Span:
        parent = trace.get_current_span(context)
        if isinstance(parent, RecordSpan):
            return self.start_child(name, parent.row, kind, attributes, links, start_time)
        found = parent.get_span_context()
        if not found.is_valid:
            return self.start_child(name, None, kind, attributes, links, start_time)
        return self.start_child(name, context_row(found), kind, attributes, links, start_time)

    def start_child(
        self,
        name: str,
        parent: list[Any] | None,
        kind: SpanKind = SpanKind.INTERNAL,
        attributes: types.Attributes = None,
        links: Sequence[Link] | None = None,
        start_time: int | None = None,
    ) -> trace.Span:
        """``start_span`` under a parent given as its row (``context_row``; None: a new
        root), for callers that hold the parent's ids as text (``ops.tracing.carried_row``)
        rather than as a context."""
        if parent is None:
            return self.start_root(name, kind, attributes, links, start_time)
        new_id = _new_span_id()
        if not parent[2] & 1:  # not sampled: nothing recorded, the trace goes on
            unsampled = row_context(parent)
            return NonRecordingSpan(
                SpanContext(
                    unsampled.trace_id,
                    new_id,
                    False,
                    unsampled.trace_flags,
                    unsampled.trace_state,
                )
            )
        row = [parent[0], f"{new_id:016x}", 1, False, *parent[4:5]]
        return RecordSpan(self, name, row, parent, kind, attributes, links, start_time)

    def start_root(
        self,
        name: str,
        kind: SpanKind = SpanKind.INTERNAL,
        attributes: types.Attributes = None,
        links: Sequence[Link] | None = None,
        start_time: int | None = None,
    ) -> RecordSpan:
        """A span beginning a new trace: ``start_child`` without a parent. Its ids come
        ready-made, with the traceparent that carries them (``_TRACEPARENTS``)."""
        try:
            traceparent = _TRACEPARENTS.pop()
        except IndexError:
            traceparent = _refilled()
        row = [traceparent[3:35], traceparent[36:52], 1, False]
        span = RecordSpan(self, name, row, None, kind, attributes, links, start_time)
        span._traceparent = traceparent
        return span

    # The API types this as its private ``_AgnosticContextManager``, a contextmanager that
    # also works as a decorator; ours is used in ``with`` statements only.
    @contextlib.contextmanager
    def start_as_current_span(  # type: ignore[override]
        self,
        name: str,
        context: Context | None = None,
        kind: SpanKind = SpanKind.INTERNAL,
        attributes: types.Attributes = None,
        links: Sequence[Link] | None = None,
        start_time: int | None = None,
        record_exception: bool = True,
        set_status_on_exception: bool = True,
        end_on_exit: bool = True,
    ) -> Iterator[trace.Span]:
        span = self.start_span(name, context, kind, attributes, links, start_time)
        with trace.use_span(
            span,
            end_on_exit=end_on_exit,
            record_exception=record_exception,
            set_status_on_exception=set_status_on_exception,
        ) as current:
            yield current


class RecordTracerProvider(trace.TracerProvider):
    """One resource and one export queue, shared by the tracers of every scope."""

    def __init__(
        self,
        exporter: SpanExporter,
        resource: Resource,
        *,
        delay_s: float,
        max_queue: int = MAX_QUEUE,
        max_batch: int = MAX_BATCH,
    ) -> None:
        self.resource = resource
        self.queue = SpanQueue(
            exporter, resource, delay_s=delay_s, max_queue=max_queue, max_batch=max_batch
        )

    def get_tracer(
        self,
        instrumenting_module_name: str,
        instrumenting_library_version: str | None = None,
        schema_url: str | None = None,
        attributes: types.Attributes = None,
    ) -> trace.Tracer:
        scope = InstrumentationScope(instrumenting_module_name, instrumenting_library_version)
        return RecordTracer(self.queue, scope)

    def force_flush(self, timeout_s: float) -> bool:
        return self.queue.force_flush(timeout_s)

    def shutdown(self, timeout_s: float) -> None:
        self.queue.shutdown(timeout_s)


# The traceparents of new traces (``00-<trace id>-<span id>-01``), drawn 256 at a time.
# Every CreateTicket begins a trace, and in a node each step of its call runs with cold
# caches (``bench.span_cost``): drawing its ids, formatting them as hex and slicing them
# apart cost about 1.5 µs more that way than taking one of these (4 MiB copied between
# calls), and the traceparent its operation carries now comes with them; drawn and
# formatted here in a loop, a trace's ids cost about 0.4 µs. Ids are random.getrandbits'
# as before, as the SDK's ``RandomIdGenerator`` draws them. Threads share the list
# (``pop`` and ``append`` are atomic); a child process starts without the parent's.
_POOL = 256
_TRACEPARENTS: list[str] = []
os.register_at_fork(after_in_child=_TRACEPARENTS.clear)


def _refilled() -> str:
    """One new traceparent, after drawing more into ``_TRACEPARENTS``."""
    while True:
        bits = f"{random.getrandbits(192 * _POOL):0{48 * _POOL}x}"
        for at in range(0, len(bits), 48):
            trace_id, span_id = bits[at : at + 32], bits[at + 32 : at + 48]
            if trace_id != ZERO_TRACE_ID and span_id != ZERO_SPAN_ID:  # the invalid ids
                _TRACEPARENTS.append(f"00-{trace_id}-{span_id}-01")
        try:
            return _TRACEPARENTS.pop()
        except IndexError:  # other threads took them all first
            continue


def _new_span_id() -> int:
    return random.getrandbits(64) or 1  # zero is the invalid id
