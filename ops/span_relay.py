"""Spans leave a node through a child process that encodes and exports them over OTLP.

The OTLP exporter turns every span into protobuf objects in Python; on a node writing
1,000 tickets a second that was about a tenth of the event loop's GIL time, taken from
the batch processor's thread. ``RelayExporter`` is the node's exporter instead: it writes
each batch as compact JSON to the stdin of ``python -m ops.span_relay``, which encodes it
as an OTLP ``ExportTraceServiceRequest`` and sends it to the endpoint over plain
OTLP/gRPC, then answers with one byte. Waiting for that byte keeps the exporter's
contract, ``force_flush`` included: a batch is exported when ``export`` returns.

The relay writes the request's protobuf bytes itself (``otlp_request``): rebuilding SDK
spans and running the SDK's encoder cost about 45 µs a span, most of the relay's CPU and,
on a two-core machine, CPU the node's own loop then waits for; the bytes cost about 7 µs.
They parse to the very message the SDK's encoder makes (tests/unit/test_span_relay.py).
As the SDK's exporter does, a send the endpoint refuses with a transient status is
retried with backoff until the timeout.

If the relay dies, batches fail (the SDK drops them, as it does when a collector is down)
and the next batch starts a new relay.

Frames on both pipes: a 4-byte big-endian length, then the payload.
"""

from __future__ import annotations

import argparse
import logging
import re
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Mapping, Sequence
from typing import IO, Any

import grpc
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

from ops.priority import lower_priority
from ops.protowire import length_delimited, varint

log = logging.getLogger("sundesk.tracing")

_LENGTH = struct.Struct(">I")
OK, FAILED = b"\x01", b"\x00"


# ----- spans as JSON ----------------------------------------------------------------------


def context_row(c: SpanContext | None) -> list[Any] | None:
    """A span context as a row: ``[trace id, span id, flags, remote]`` and, when there is
    one, its trace state as a W3C ``tracestate`` header. Ids are hex, as in
    ``traceparent``: 128-bit trace ids are beyond JSON integers in orjson."""
    if c is None:
        return None
    row = [f"{c.trace_id:032x}", f"{c.span_id:016x}", int(c.trace_flags), c.is_remote]
    if c.trace_state:
        row.append(c.trace_state.to_header())
    return row


# The one traceparent shape this node writes (version 00, no tracestate), parsed here
# directly; ``ops.tracing`` sends anything else through the W3C propagator.
_TRACEPARENT = re.compile(r"00-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})")
ZERO_TRACE_ID, ZERO_SPAN_ID = "0" * 32, "0" * 16  # as hex: invalid ids


def traceparent_row(header: str) -> list[Any] | None:
    """The (remote) context row of a ``traceparent`` of that shape; None for any other
    text, or for the all-zero ids, which are invalid."""
    if _TRACEPARENT.fullmatch(header) is None:
        return None
    trace_id, span_id = header[3:35], header[36:52]
    if trace_id == ZERO_TRACE_ID or span_id == ZERO_SPAN_ID:
        return None
    return [trace_id, span_id, int(header[53:55], 16), True]


def _link_rows(links: Sequence[Any]) -> list[tuple[list[Any], Mapping[str, Any]]]:
    """A row's links as (context row, attributes): each is one already, or the
    ``traceparent`` text of a link without attributes, read here, off the node's loop.
    Text that is not a valid traceparent is no link."""
    out: list[tuple[list[Any], Mapping[str, Any]]] = []
    for link in links:
        if isinstance(link, str):
            row = traceparent_row(link)
            if row is not None:
                out.append((row, {}))
        else:
            out.append((link[0], link[1]))
    return out


def row_context(v: list[Any]) -> SpanContext:
    """The span context a ``context_row`` describes."""
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
    context: list[Any] | None,
    parent: list[Any] | None,
    resource: int,
    attributes: Mapping[str, Any],
    events: Sequence[Event],
    links: Sequence[Link],
    kind: SpanKind,
    scope: list[Any] | None,
    status: Status,
    start: int | None,
    end: int | None,
    link_rows: Sequence[list[Any] | str] = (),
) -> list[Any]:
    """One span as a JSON-ready row; ``resource`` indexes the batch's resources.
    ``context`` and ``parent`` are rows (``context_row``); ``link_rows`` are further
    links, each already a row or the ``traceparent`` text of one."""
    return [
        name,
        context,
        parent,
        resource,
        attributes,
        [[e.name, _attrs(e.attributes), e.timestamp] for e in events] if events else [],
        [*([context_row(k.context), _attrs(k.attributes)] for k in links), *link_rows]
        if links or link_rows
        else [],
        KIND_VALUES[kind],
        scope,
        [_STATUS_VALUES[status.status_code], status.description],
        start,
        end,
    ]


# ``Enum.value`` is a property, looked up through the enum machinery on every span.
KIND_VALUES = {kind: kind.value for kind in SpanKind}
_STATUS_VALUES = {code: code.value for code in StatusCode}


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
                context_row(s.context),
                context_row(s.parent),
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
                context=row_context(ctx),
                parent=None if parent is None else row_context(parent),
                resource=resources[res],
                attributes=attrs,
                events=[Event(n, a, timestamp=t) for n, a, t in events],
                links=[Link(row_context(c), a) for c, a in _link_rows(links)],
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


# ----- rows as OTLP protobuf --------------------------------------------------------------
# Field numbers are those of opentelemetry/proto/trace/v1/trace.proto and common.proto;
# fields are written in field-number order, as protobuf's own serializers do.

_FIXED64 = struct.Struct("<Q").pack
_FIXED32 = struct.Struct("<I").pack
_DOUBLE = struct.Struct("<d").pack
_HAS_IS_REMOTE, _IS_REMOTE = 0x100, 0x200  # SpanFlags
_SPAN_KIND_OFFSET = 1  # SDK SpanKind.INTERNAL is 0, OTLP's SPAN_KIND_INTERNAL is 1
_KEY_VALUES: dict[tuple[int, str, type, Any], bytes] = {}  # most attributes repeat
_MAX_CACHED = 4096


def _any_value(value: Any) -> bytes:
    """An ``AnyValue``'s fields, typed as the SDK's encoder types them (bool before int)."""
    if value is None:
        return b""
    if isinstance(value, bool):
        return b"\x10" + varint(int(value))
    if isinstance(value, str):
        return length_delimited(1, value.encode())
    if isinstance(value, int):
        return b"\x18" + varint(value & 0xFFFF_FFFF_FFFF_FFFF)  # int64, two's complement
    if isinstance(value, float):
        return b"\x21" + _DOUBLE(value)
    if isinstance(value, list | tuple):
        return length_delimited(5, b"".join(length_delimited(1, _any_value(v)) for v in value))
    if isinstance(value, Mapping):
        pairs = b"".join(_key_value(1, str(k), v) for k, v in value.items())
        return length_delimited(6, pairs)
    return length_delimited(1, str(value).encode())


def _key_value(field: int, key: str, value: Any) -> bytes:
    pair = length_delimited(1, key.encode()) + length_delimited(2, _any_value(value))
    return length_delimited(field, pair)


_CACHEABLE = frozenset((str, int, float, bool))


def _attributes_of(field: int, attributes: Mapping[str, Any] | None) -> bytes:
    """Attributes as repeated ``KeyValue`` fields. Most pairs repeat from span to span
    (method, region, status) and are encoded once; the cache starts over when full, so
    that values seen once (ticket codes) cannot crowd out the ones that repeat."""
    if not attributes:
        return b""
    cache = _KEY_VALUES
    parts = []
    for key, value in attributes.items():
        kind = value.__class__
        if kind not in _CACHEABLE:
            parts.append(_key_value(field, key, value))
            continue
        cache_key = (field, key, kind, value)  # the type tells True from 1
        encoded = cache.get(cache_key)
        if encoded is None:
            encoded = _key_value(field, key, value)
            if len(cache) >= _MAX_CACHED:
                cache.clear()
            cache[cache_key] = encoded
        parts.append(encoded)
    return b"".join(parts)


def _flags(context: list[Any] | None) -> bytes:
    remote = context is not None and context[3]
    return _FIXED32(_HAS_IS_REMOTE | (_IS_REMOTE if remote else 0))


_NAMES: dict[str, bytes] = {}  # a span's name field, by name: names repeat
_KINDS = {kind: b"\x30" + varint(kind + _SPAN_KIND_OFFSET) for kind in range(5)}
_TIMES = struct.Struct("<BQBQ").pack  # start and end: fixed64 fields 7 and 8
_UNSET_STATUS = length_delimited(15, b"")
_LOCAL_FLAGS = b"\x85\x01" + _FIXED32(_HAS_IS_REMOTE)
_REMOTE_FLAGS = b"\x85\x01" + _FIXED32(_HAS_IS_REMOTE | _IS_REMOTE)


def _span(row: list[Any]) -> bytes:
    name, ctx, parent, _, attrs, events, links, kind, _, status, start, end = row
    # Trace and span ids (fields 1 and 2) from their hex text in one step.
    parts = [bytes.fromhex(f"0a10{ctx[0]}1208{ctx[1]}")]
    if len(ctx) > 4 and ctx[4]:
        parts.append(length_delimited(3, ctx[4].encode()))
    if parent is not None:
        parts.append(bytes.fromhex(f"2208{parent[1]}"))
    if name:
        named = _NAMES.get(name)
        if named is None:
            named = length_delimited(5, name.encode())
            if len(_NAMES) < _MAX_CACHED:
                _NAMES[name] = named
        parts.append(named)
    parts.append(_KINDS.get(kind) or b"\x30" + varint(kind + _SPAN_KIND_OFFSET))
    if start and end:
        parts.append(_TIMES(0x39, start, 0x41, end))
    else:
        if start:
            parts.append(b"\x39" + _FIXED64(start))
        if end:
            parts.append(b"\x41" + _FIXED64(end))
    if attrs:
        parts.append(_attributes_of(9, attrs))
    for event_name, event_attrs, timestamp in events:
        body = (b"\x09" + _FIXED64(timestamp) if timestamp else b"") + (
            length_delimited(2, event_name.encode()) if event_name else b""
        )
        parts.append(length_delimited(11, body + _attributes_of(3, event_attrs)))
    for link_ctx, link_attrs in _link_rows(links):
        body = bytes.fromhex(f"0a10{link_ctx[0]}1208{link_ctx[1]}")
        body += _attributes_of(4, link_attrs) + b"\x35" + _flags(link_ctx)
        parts.append(length_delimited(13, body))
    code, message = status
    if code or message:
        parts.append(
            length_delimited(
                15,
                (length_delimited(2, message.encode()) if message else b"")
                + (b"\x18" + varint(code) if code else b""),
            )
        )
    else:
        parts.append(_UNSET_STATUS)
    parts.append(_REMOTE_FLAGS if parent is not None and parent[3] else _LOCAL_FLAGS)
    return b"".join(parts)


def otlp_request(batch: Mapping[str, Any]) -> bytes:
    """A batch of rows (``encode_rows``, decoded) as the bytes of an OTLP
    ``ExportTraceServiceRequest``: spans grouped by resource, then by scope, in order."""
    resources: Sequence[Mapping[str, Any]] = batch["resources"]
    groups: dict[int, dict[tuple[str, str | None] | None, list[bytes]]] = {}
    for row in batch["spans"]:
        scope = row[8]
        key = None if scope is None else (scope[0], scope[1])
        groups.setdefault(row[3], {}).setdefault(key, []).append(length_delimited(2, _span(row)))
    out = []
    for index, scopes in groups.items():
        body = length_delimited(1, _attributes_of(1, resources[index]))
        for scope_key, spans in scopes.items():
            scope = b""
            if scope_key is not None:
                scope_name, version = scope_key
                scope = (length_delimited(1, scope_name.encode()) if scope_name else b"") + (
                    length_delimited(2, version.encode()) if version else b""
                )
            body += length_delimited(2, length_delimited(1, scope) + b"".join(spans))
        out.append(length_delimited(1, body))
    return b"".join(out)


# gRPC servers refuse messages over 4 MiB unless configured otherwise (the OpenTelemetry
# Collector's OTLP receiver among them): a batch whose request is larger goes in parts.
MAX_REQUEST_BYTES = 3 << 20


def otlp_requests(batch: Mapping[str, Any], limit: int = MAX_REQUEST_BYTES) -> list[bytes]:
    """``otlp_request`` of the batch, split in halves until each request is at most
    ``limit`` bytes (a single span larger than that goes alone)."""
    request = otlp_request(batch)
    spans = batch["spans"]
    if len(request) <= limit or len(spans) <= 1:
        return [request]
    half = len(spans) // 2
    return otlp_requests({**batch, "spans": spans[:half]}, limit) + otlp_requests(
        {**batch, "spans": spans[half:]}, limit
    )


class OtlpSender:
    """Sends encoded ``ExportTraceServiceRequest``s over OTLP/gRPC, retrying transient
    refusals with exponential backoff until ``timeout_s`` (the SDK exporter's policy)."""

    METHOD = "/opentelemetry.proto.collector.trace.v1.TraceService/Export"
    RETRYABLE = frozenset(
        {
            grpc.StatusCode.CANCELLED,
            grpc.StatusCode.DEADLINE_EXCEEDED,
            grpc.StatusCode.RESOURCE_EXHAUSTED,
            grpc.StatusCode.ABORTED,
            grpc.StatusCode.OUT_OF_RANGE,
            grpc.StatusCode.UNAVAILABLE,
            grpc.StatusCode.DATA_LOSS,
        }
    )

    def __init__(self, endpoint: str, timeout_s: float) -> None:
        target = endpoint.split("://", 1)[-1]
        self._channel = grpc.insecure_channel(target)
        self._export = self._channel.unary_unary(self.METHOD)  # bytes in, bytes out
        self._timeout_s = timeout_s

    def send(self, request: bytes) -> bool:
        deadline = time.monotonic() + self._timeout_s
        backoff = 0.1
        while True:
            remaining = deadline - time.monotonic()
            try:
                self._export(request, timeout=max(remaining, 0.001))
                return True
            except grpc.RpcError as exc:
                code = exc.code() if isinstance(exc, grpc.Call) else None
                if code not in self.RETRYABLE or remaining <= backoff:
                    log.warning("span export to the endpoint failed: %s", code)
                    return False
            time.sleep(backoff)
            backoff *= 2

    def close(self) -> None:
        self._channel.close()


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
    parser = argparse.ArgumentParser(description="Export spans from stdin over OTLP/gRPC.")
    parser.add_argument("--endpoint", required=True)
    parser.add_argument("--timeout", type=float, default=5.0)
    args = parser.parse_args(argv)
    lower_priority()  # the node that started it serves first
    sender = OtlpSender(args.endpoint, args.timeout)
    inp, out = sys.stdin.buffer, sys.stdout.buffer
    try:
        while (frame := read_frame(inp)) is not None:
            try:
                requests = otlp_requests(orjson.loads(frame))
                sent = all([sender.send(request) for request in requests])
            except Exception:  # a bad batch must not end the relay
                log.exception("span relay could not export a batch")
                sent = False
            write_frame(out, OK if sent else FAILED)
    except (BrokenPipeError, KeyboardInterrupt):
        pass
    finally:
        sender.close()


if __name__ == "__main__":
    main()
