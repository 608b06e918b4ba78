"""Spans leave a node through a child process that encodes and exports them over OTLP.

The OTLP exporter turns every span into protobuf objects in Python; on a node writing
1,000 tickets a second that was about a tenth of the event loop's GIL time, taken from
the batch processor's thread. ``RelayExporter`` is the node's exporter instead: it writes
each batch as compact JSON to the stdin of ``python -m ops.span_relay``, which rebuilds
the spans and hands them to the standard ``OTLPSpanExporter`` (so the endpoint still
receives plain OTLP/gRPC), then answers with one byte. Waiting for that byte keeps the
exporter's contract, ``force_flush`` included: a batch is exported when ``export``
returns, and the result is the real exporter's.

If the relay dies, batches fail (the SDK drops them, as it does when a collector is down)
and the next batch starts a new relay.

Frames on both pipes: a 4-byte big-endian length, then the payload.
"""

from __future__ import annotations

import argparse
import logging
import struct
import subprocess
import sys
import threading
from collections.abc import Mapping, Sequence
from typing import IO, Any

import orjson
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import Event, ReadableSpan
from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult
from opentelemetry.sdk.util.instrumentation import InstrumentationScope
from opentelemetry.trace import (
    Link,
    SpanContext,
    SpanKind,
    Status,
    StatusCode,
    TraceFlags,
    TraceState,
)

log = logging.getLogger("sundesk.tracing")

_LENGTH = struct.Struct(">I")
OK, FAILED = b"\x01", b"\x00"


# ----- spans as JSON ----------------------------------------------------------------------


def _ctx(c: SpanContext | None) -> list[Any] | None:
    # Trace ids are 128-bit, beyond JSON integers in orjson: hex, as in ``traceparent``.
    # A trace state, when there is one, travels as its W3C ``tracestate`` header.
    if c is None:
        return None
    row = [f"{c.trace_id:032x}", f"{c.span_id:016x}", int(c.trace_flags), c.is_remote]
    if c.trace_state:
        row.append(c.trace_state.to_header())
    return row


def _unctx(v: list[Any] | None) -> SpanContext | None:
    if v is None:
        return None
    trace_id, span_id, flags, remote, *state = v
    return SpanContext(
        int(trace_id, 16),
        int(span_id, 16),
        is_remote=remote,
        trace_flags=TraceFlags(flags),
        trace_state=TraceState.from_header(state) if state else None,
    )


def _attrs(a: Mapping[str, Any] | None) -> Mapping[str, Any]:
    # Sequences come back as lists, which the OTLP encoder takes as it takes tuples.
    return dict(a) if a else {}


def _own(span: ReadableSpan, private: str, public: str) -> Any:
    """What a span holds under ``public``, read from the SDK's own container where it has
    one: the public properties copy ``BoundedAttributes``' dict and ``BoundedList``'s deque
    under a lock (4 µs a span). Mappings come out as dicts, for orjson."""
    inner = getattr(span, private, None)
    for raw in ("_dict", "_dq"):
        found = getattr(inner, raw, None)
        if found is not None:
            return found
    if isinstance(inner, tuple | list | dict):
        return inner
    value = getattr(span, public)
    return _attrs(value) if isinstance(value, Mapping) else value


def span_row(
    name: str,
    context: SpanContext | None,
    parent: SpanContext | None,
    resource: int,
    attributes: Mapping[str, Any],
    events: Sequence[Event],
    links: Sequence[Link],
    kind: SpanKind,
    scope: list[Any] | None,
    status: Status,
    start: int | None,
    end: int | None,
) -> list[Any]:
    """One span as a JSON-ready row; ``resource`` indexes the batch's resources."""
    return [
        name,
        _ctx(context),
        _ctx(parent),
        resource,
        attributes,
        [[e.name, _attrs(e.attributes), e.timestamp] for e in events],
        [[_ctx(k.context), _attrs(k.attributes)] for k in links],
        kind.value,
        scope,
        [status.status_code.value, status.description],
        start,
        end,
    ]


def encode_rows(resources: Sequence[Mapping[str, Any]], rows: Sequence[list[Any]]) -> bytes:
    return orjson.dumps({"resources": resources, "spans": rows}, default=str)


def encode_spans(spans: Sequence[ReadableSpan]) -> bytes:
    """One batch of SDK spans as JSON; resources are written once per batch."""
    resources: list[Mapping[str, Any]] = []
    resource_index: dict[int, int] = {}
    rows = []
    for s in spans:
        key = id(s.resource)
        if key not in resource_index:
            resource_index[key] = len(resources)
            resources.append(_attrs(s.resource.attributes))
        scope = s.instrumentation_scope
        rows.append(
            span_row(
                s.name,
                s.context,
                s.parent,
                resource_index[key],
                _own(s, "_attributes", "attributes"),
                _own(s, "_events", "events"),
                _own(s, "_links", "links"),
                s.kind,
                [scope.name, scope.version] if scope is not None else None,
                s.status,
                s.start_time,
                s.end_time,
            )
        )
    return encode_rows(resources, rows)


def decode_rows(resources: Sequence[Resource], rows: Sequence[list[Any]]) -> list[ReadableSpan]:
    """SDK spans from rows (``span_row``), ``resources`` being the batch's, built."""
    scopes: dict[tuple[str, str | None], InstrumentationScope] = {}
    spans = []
    for row in rows:
        name, ctx, parent, res, attrs, events, links, kind, scope, status, start, end = row
        found = None
        if scope is not None:
            found = scopes.get((scope[0], scope[1]))
            if found is None:
                found = scopes[(scope[0], scope[1])] = InstrumentationScope(scope[0], scope[1])
        spans.append(
            ReadableSpan(
                name,
                context=_unctx(ctx),
                parent=_unctx(parent),
                resource=resources[res],
                attributes=attrs,
                events=[Event(n, a, timestamp=t) for n, a, t in events],
                links=[Link(_unctx(c), a) for c, a in links],  # type: ignore[arg-type]
                kind=SpanKind(kind),
                status=Status(StatusCode(status[0]), status[1]),
                start_time=start,
                end_time=end,
                instrumentation_scope=found,
            )
        )
    return spans


def decode_spans(data: bytes) -> list[ReadableSpan]:
    batch = orjson.loads(data)
    return decode_rows([Resource(attrs) for attrs in batch["resources"]], batch["spans"])


# ----- pipes ------------------------------------------------------------------------------


def write_frame(out: IO[bytes], payload: bytes) -> None:
    out.write(_LENGTH.pack(len(payload)) + payload)
    out.flush()


def read_frame(inp: IO[bytes]) -> bytes | None:
    head = inp.read(_LENGTH.size)
    if len(head) < _LENGTH.size:
        return None
    (n,) = _LENGTH.unpack(head)
    body = inp.read(n)
    return body if len(body) == n else None


class RelayExporter(SpanExporter):
    """The node's span exporter: encoding and OTLP export happen in a child process.

    ``export_encoded`` takes a batch already encoded: ``ops.spans`` turns each span into
    its row when it ends, so the node never builds ``ReadableSpan``s and its export thread
    only joins rows (one ``orjson`` call) and writes them to the pipe."""

    def __init__(self, endpoint: str, timeout_s: float) -> None:
        self._cmd = [
            sys.executable, "-m", "ops.span_relay", "--endpoint", endpoint,
            "--timeout", str(timeout_s),
        ]  # fmt: skip
        self._proc: subprocess.Popen[bytes] | None = None
        self._lock = threading.Lock()  # export and shutdown may come from two threads

    def _relay(self) -> subprocess.Popen[bytes]:
        if self._proc is None or self._proc.poll() is not None:
            self._proc = subprocess.Popen(
                self._cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, close_fds=True
            )
        return self._proc

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        return self.export_encoded(encode_spans(spans), len(spans))

    def export_encoded(self, payload: bytes, count: int) -> SpanExportResult:
        with self._lock:
            try:
                proc = self._relay()
                assert proc.stdin is not None and proc.stdout is not None
                write_frame(proc.stdin, payload)
                answer = read_frame(proc.stdout)
            except OSError as exc:
                log.warning("span relay failed (%s); %d spans dropped", exc, count)
                self._stop()
                return SpanExportResult.FAILURE
        if answer is None:
            log.warning("span relay exited; %d spans dropped", count)
            self._stop()
            return SpanExportResult.FAILURE
        return SpanExportResult.SUCCESS if answer == OK else SpanExportResult.FAILURE

    def _stop(self) -> None:
        proc, self._proc = self._proc, None
        if proc is None:
            return
        if proc.stdin is not None:
            try:
                proc.stdin.close()
            except OSError:
                pass
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()

    def shutdown(self) -> None:
        with self._lock:
            self._stop()

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return True  # nothing is buffered here: each export waits for the relay's answer


def main(argv: Sequence[str] | None = None) -> None:
    from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter

    parser = argparse.ArgumentParser(description="Export spans from stdin over OTLP/gRPC.")
    parser.add_argument("--endpoint", required=True)
    parser.add_argument("--timeout", type=float, default=5.0)
    args = parser.parse_args(argv)
    endpoint = args.endpoint if "://" in args.endpoint else f"http://{args.endpoint}"
    exporter = OTLPSpanExporter(endpoint=endpoint, insecure=True, timeout=args.timeout)
    inp, out = sys.stdin.buffer, sys.stdout.buffer
    try:
        while (frame := read_frame(inp)) is not None:
            try:
                result = exporter.export(decode_spans(frame))
            except Exception:  # a bad batch must not end the relay
                log.exception("span relay could not export a batch")
                result = SpanExportResult.FAILURE
            write_frame(out, OK if result is SpanExportResult.SUCCESS else FAILED)
    except (BrokenPipeError, KeyboardInterrupt):
        pass
    finally:
        exporter.shutdown()


if __name__ == "__main__":
    main()
