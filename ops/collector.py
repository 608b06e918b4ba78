"""The embedded trace collector: an OTLP/gRPC receiver that keeps spans in SQLite.

Every node exports its spans here by default (``sundesk local up`` starts one on
loopback); any OTLP backend can take its place, since nodes speak plain OTLP. The
receiver answers ``TraceService.Export`` and writes each request in one transaction to a
WAL database, which the command line reads at the same time to show a ticket's trace:

    python -m ops.collector --db var/traces.db --listen 127.0.0.1:4317

A ticket's trace is the trace of its creation: of all traces with a span tagged
``sundesk.ticket=<code>``, the one whose tagged span started first. Because the trace
context travels inside replicated operations, that trace also holds the apply spans of
every region the creation reached.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import logging
import signal
import sqlite3
import threading
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, NamedTuple

import grpc
import orjson
from google.protobuf.message import DecodeError
from grpc import aio
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
from rich.console import Console
from rich.table import Table
from rich.text import Text

from ops.priority import BACKGROUND_NICENESS, lower_priority
from ops.span_relay import otlp_request
from ops.tracing import ATTR_REGION, ATTR_TICKET

log = logging.getLogger("sundesk.collector")

# Each Export request is kept as it arrived, in one row, and beside it the trace ids of its
# spans (16 bytes each, concatenated) and the tickets they are tagged with (each between
# newlines). Finding a trace or a ticket scans those two columns with ``instr`` (C, a few
# milliseconds per 100,000 spans) and parses the requests that match; a request matched by
# chance (a trace id across two others' bytes) is parsed and yields nothing. Storing a
# request of 2,048 spans is then one parse and two rows. A row per span instead cost
# 11-16 µs a span (every attribute parsed into JSON, a ten-column row, an index entry on a
# random page), and an index of trace ids, even of 8-byte keys, still 5-6 µs, most of it
# rewriting random index pages in the WAL at each commit (scratch harness, batches of
# 2,048). The collector shares its machine with the nodes it watches: in one side-by-side
# run (12 x 3 s) a node exporting to it lost 2-3 points of throughput more than one
# exporting to a collector that discarded everything.
SCHEMA = """
CREATE TABLE IF NOT EXISTS requests (id INTEGER PRIMARY KEY, data BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS request_index (
    request INTEGER PRIMARY KEY, trace_ids BLOB NOT NULL, tickets TEXT NOT NULL,
    spans INTEGER NOT NULL
);
"""
_MATCHING = (
    "SELECT data FROM requests WHERE id IN "
    "(SELECT request FROM request_index WHERE instr({column}, ?) > 0) ORDER BY id"
)
_OLD_SPANS = (  # the row per span of databases written before 2026-12-05
    "SELECT trace_id, span_id, parent_span_id, name, region, ticket, start_ns, end_ns, "
    "attributes FROM spans ORDER BY rowid"
)


_Request = trace_service_pb2.ExportTraceServiceRequest
_STATUS_NAMES = {1: "OK", 2: "ERROR"}  # OTLP Status.code; UNSET is not recorded
_STATUS_CODES = {name: code for code, name in _STATUS_NAMES.items()}
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


class SpanRow(NamedTuple):  # a span as read back: a tuple, made for each span a read parses
    trace_id: str
    span_id: str
    parent_span_id: str | None
    name: str
    region: str | None
    ticket: str | None
    start_ns: int
    end_ns: int
    attributes: dict[str, Any]


class SpanStore:
    """Spans in one SQLite database in WAL mode: one writer (the receiver) and any
    number of readers (the command line) at once. ``synchronous=NORMAL``: a power cut
    may lose the last spans received, never corrupt the file; traces are diagnostics."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.execute("PRAGMA busy_timeout=5000")
        self._db.executescript(SCHEMA)
        old = self._db.execute("SELECT 1 FROM sqlite_master WHERE name = 'spans'").fetchone()
        if old is not None:
            self._migrate()

    def add_request(self, data: bytes) -> int:
        """Store one ``ExportTraceServiceRequest`` as received, in one transaction.
        Returns its number of spans; raises ``ValueError`` if it is not such a request."""
        try:
            request = _Request.FromString(data)
        except DecodeError as exc:
            raise ValueError(f"not an OTLP ExportTraceServiceRequest: {exc}") from exc
        traces: dict[bytes, None] = {}
        tickets: dict[str, None] = {}
        count = 0
        for resource_spans in request.resource_spans:
            for scope_spans in resource_spans.scope_spans:
                for span in scope_spans.spans:
                    count += 1
                    traces[span.trace_id] = None
                    for kv in span.attributes:
                        if kv.key == ATTR_TICKET:
                            tickets[str(_value(kv.value))] = None
                            break
        if not count:
            return 0
        tagged = "".join(f"\n{t}" for t in tickets if "\n" not in t) + "\n"
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                row = self._db.execute("INSERT INTO requests (data) VALUES (?)", (data,))
                self._db.execute(
                    "INSERT INTO request_index VALUES (?, ?, ?, ?)",
                    (row.lastrowid, b"".join(traces), tagged, count),
                )
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")
        return count

    def _requests(self, column: str, value: str | bytes) -> list[_Request]:
        """The requests whose ``column`` holds ``value``, parsed, oldest first."""
        with self._lock:
            found = self._db.execute(_MATCHING.format(column=column), (value,)).fetchall()
        return [_Request.FromString(d) for (d,) in found]

    def count(self) -> int:
        """Spans stored (a span received twice counts twice)."""
        with self._lock:
            (total,) = self._db.execute("SELECT TOTAL(spans) FROM request_index").fetchone()
        return int(total)

    def trace_ids_for_ticket(self, code: str) -> list[str]:
        """Traces with a span tagged with this ticket, the earliest-started first."""
        first: dict[str, int] = {}
        for request in self._requests("tickets", f"\n{code}\n"):
            for row in spans_from_request(request):
                if row.ticket == code:
                    first[row.trace_id] = min(row.start_ns, first.get(row.trace_id, row.start_ns))
        return sorted(first, key=lambda trace_id: (first[trace_id], trace_id))

    def spans(self, trace_id: str) -> list[dict[str, Any]]:
        """Every span of a trace, by start time (enclosing spans first on a tie); a span
        received twice (an exporter's retry of a request that had arrived) is given once."""
        wanted = bytes.fromhex(trace_id)
        rows: dict[tuple[Any, ...], SpanRow] = {}
        for request in self._requests("trace_ids", wanted):
            for row in spans_from_request(request, wanted):
                rows.setdefault((*row[:-1], orjson.dumps(row.attributes)), row)
        ordered = sorted(rows.values(), key=lambda r: (r.start_ns, -r.end_ns))
        return [r._asdict() for r in ordered]

    def _migrate(self) -> None:
        """Move the spans of a database written a row per span into requests (one per
        2,048 spans, encoded as the span relay encodes), then drop the old table. The span
        kind was not kept there: such spans come back as INTERNAL. Interrupted, it starts
        over on the next open, and the spans it had moved are then read once (``spans``)."""
        old = self._db.execute(_OLD_SPANS).fetchall()
        resources: dict[str | None, int] = {}
        rows = []
        for trace_id, span_id, parent, name, region, ticket, start, end, attributes in old:
            attrs = json.loads(attributes)
            if ticket is not None:
                attrs.setdefault(ATTR_TICKET, ticket)
            code = _STATUS_CODES.get(attrs.pop("otel.status_code", None), 0)
            message = attrs.pop("otel.status_description", None)
            index = resources.setdefault(region, len(resources))
            context = [trace_id, span_id, 1, False]
            parent_row = [trace_id, parent, 1, False] if parent else None
            rows.append(
                [name, context, parent_row, index, attrs, [], [], 0, None, [code, message],
                 start, end]
            )  # fmt: skip
        regions = [{ATTR_REGION: r} if r is not None else {} for r in resources]
        for first in range(0, len(rows), 2048):
            self.add_request(
                otlp_request({"resources": regions, "spans": rows[first : first + 2048]})
            )
        self._db.execute("DROP TABLE spans")
        log.info("moved %d spans of %s to the request store", len(rows), self.path)

    def close(self) -> None:
        with self._lock:
            self._db.close()


# -- OTLP to rows ---------------------------------------------------------------------------


def _value(value: AnyValue) -> Any:
    kind = value.WhichOneof("value")
    if kind == "string_value":
        return value.string_value
    if kind is None:
        return None
    if kind == "array_value":
        return [_value(v) for v in value.array_value.values]
    if kind == "kvlist_value":
        return _attributes(value.kvlist_value.values)
    if kind == "bytes_value":
        return value.bytes_value.hex()
    return getattr(value, kind)


def _attributes(pairs: Sequence[KeyValue]) -> dict[str, Any]:
    return {kv.key: _value(kv.value) for kv in pairs}


def spans_from_request(
    request: trace_service_pb2.ExportTraceServiceRequest, trace_id: bytes | None = None
) -> list[SpanRow]:
    """The request's spans as rows; only those of ``trace_id`` if given."""
    rows = []
    for resource_spans in request.resource_spans:
        resource = _attributes(resource_spans.resource.attributes)
        for scope_spans in resource_spans.scope_spans:
            for span in scope_spans.spans:
                if trace_id is not None and span.trace_id != trace_id:
                    continue
                attributes = _attributes(span.attributes)
                status = _STATUS_NAMES.get(span.status.code)
                if status is not None:
                    attributes["otel.status_code"] = status
                    if span.status.message:
                        attributes["otel.status_description"] = span.status.message
                region = resource.get(ATTR_REGION, attributes.get(ATTR_REGION))
                ticket = attributes.get(ATTR_TICKET)
                rows.append(
                    SpanRow(
                        trace_id=span.trace_id.hex(),
                        span_id=span.span_id.hex(),
                        parent_span_id=span.parent_span_id.hex() or None,
                        name=span.name,
                        region=None if region is None else str(region),
                        ticket=None if ticket is None else str(ticket),
                        start_ns=span.start_time_unix_nano,
                        end_ns=span.end_time_unix_nano,
                        attributes=attributes,
                    )
                )
    return rows


# -- the receiver -----------------------------------------------------------------------------


EXPORT_METHOD = "/opentelemetry.proto.collector.trace.v1.TraceService/Export"


def _receiver(store: SpanStore) -> grpc.GenericRpcHandler:
    """``TraceService.Export`` taking the request's bytes as they arrive: they are what
    the store keeps, so they are parsed once, for its indexes, and never re-encoded."""

    async def export(data: bytes, context: aio.ServicerContext) -> bytes:
        # Written inline: one short WAL transaction per request, in a process that does
        # nothing else. UNAVAILABLE tells the exporter to retry later.
        try:
            store.add_request(data)
        except ValueError as exc:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        except sqlite3.Error as exc:
            log.error("cannot store spans in %s: %s", store.path, exc)
            await context.abort(grpc.StatusCode.UNAVAILABLE, f"cannot store spans: {exc}")
        return b""  # an empty ExportTraceServiceResponse: everything was accepted

    service, _, method = EXPORT_METHOD[1:].partition("/")
    return grpc.method_handlers_generic_handler(
        service, {method: grpc.unary_unary_rpc_method_handler(export)}
    )


async def start_receiver(store: SpanStore, host: str, port: int) -> tuple[aio.Server, int]:
    server = aio.server(
        options=[("grpc.so_reuseport", 0), ("grpc.max_receive_message_length", 32 << 20)]
    )
    server.add_generic_rpc_handlers([_receiver(store)])
    address = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    try:
        bound = server.add_insecure_port(address)
    except RuntimeError as exc:
        raise OSError(f"trace collector cannot listen on {address}: {exc}") from exc
    if not bound:
        raise OSError(f"trace collector cannot listen on {address}: address in use?")
    await server.start()
    return server, bound


async def serve_collector(
    db_path: str | Path, host: str = "127.0.0.1", port: int = 0
) -> tuple[aio.Server, int]:
    """Start a receiver writing to ``db_path``; returns the server and its bound port.
    Stop it with ``await server.stop(grace)``."""
    return await start_receiver(SpanStore(db_path), host, port)


# -- reading a ticket's trace ---------------------------------------------------------------


def _iso(ns: int) -> str:
    return (_EPOCH + timedelta(microseconds=ns // 1000)).isoformat(timespec="microseconds")


def ticket_trace(store: SpanStore, code: str) -> dict[str, Any]:
    """The ticket's creation trace as JSON-ready data: ``{"trace_id", "spans": [{"span_id",
    "name", "region", "start", "end", "parent"}]}``, spans by start time, times ISO 8601
    UTC, ``parent`` the parent's ``span_id`` (None for a root). ``trace_id`` is None and
    ``spans`` empty when no span mentions the ticket (yet)."""
    trace_ids = store.trace_ids_for_ticket(code)
    if not trace_ids:
        return {"trace_id": None, "spans": []}
    return {
        "trace_id": trace_ids[0],
        "spans": [
            {
                "span_id": s["span_id"],
                "name": s["name"],
                "region": s["region"],
                "start": _iso(s["start_ns"]),
                "end": _iso(s["end_ns"]),
                "parent": s["parent_span_id"],
            }
            for s in store.spans(trace_ids[0])
        ],
    }


_REGION_STYLES = ("cyan", "magenta", "green", "yellow", "blue", "red", "bright_cyan")


def _tree(
    spans: list[dict[str, Any]], start: Callable[[dict[str, Any]], datetime]
) -> list[tuple[int, dict[str, Any]]]:
    """Spans depth-first, children under their parent in start order; a span whose
    parent is not in the trace (a client that does not export) counts as a root."""
    ids = {s.get("span_id") for s in spans}
    children: dict[Any, list[dict[str, Any]]] = {}
    for span in sorted(spans, key=start):
        parent = span.get("parent") if span.get("parent") in ids else None
        children.setdefault(parent, []).append(span)
    ordered: list[tuple[int, dict[str, Any]]] = []
    stack = [(0, s) for s in reversed(children.get(None, []))]
    while stack:
        depth, span = stack.pop()
        ordered.append((depth, span))
        stack.extend((depth + 1, c) for c in reversed(children.get(span.get("span_id"), [])))
    if len(ordered) < len(spans):  # a parent cycle in corrupt data: show the rest flat
        shown = {id(s) for _, s in ordered}
        ordered += [(0, s) for s in sorted(spans, key=start) if id(s) not in shown]
    return ordered


def render_waterfall(trace: dict[str, Any], *, width: int = 120, color: bool = False) -> str:
    """A terminal waterfall of ``ticket_trace``'s result: one row per span with its
    region, start offset and duration in milliseconds, and a bar on a common time axis."""
    spans = trace.get("spans") or []
    if not spans:
        return "no trace recorded for this ticket\n"
    times = {
        id(s): (datetime.fromisoformat(s["start"]), datetime.fromisoformat(s["end"])) for s in spans
    }
    t0 = min(start for start, _ in times.values())
    total_ms = max((end - t0).total_seconds() * 1000 for _, end in times.values()) or 1.0
    bar_width = max(10, width - 70)
    regions = sorted({str(s.get("region")) for s in spans})
    styles = {r: _REGION_STYLES[i % len(_REGION_STYLES)] for i, r in enumerate(regions)}

    table = Table(
        title=f"trace {trace.get('trace_id')}  ({total_ms:.3f} ms)",
        box=None,
        pad_edge=False,
        expand=False,
        title_justify="left",
    )
    table.add_column("span", no_wrap=True, overflow="ellipsis", max_width=40)
    table.add_column("region", no_wrap=True)
    table.add_column("start ms", justify="right", no_wrap=True)
    table.add_column("dur ms", justify="right", no_wrap=True)
    table.add_column("", no_wrap=True, width=bar_width)
    for depth, span in _tree(spans, lambda s: times[id(s)][0]):
        start, end = times[id(span)]
        offset_ms = (start - t0).total_seconds() * 1000
        duration_ms = (end - start).total_seconds() * 1000
        lead = round(offset_ms / total_ms * bar_width)
        length = max(1, round(duration_ms / total_ms * bar_width))
        region = str(span.get("region"))
        bar = Text(" " * min(lead, bar_width - 1))
        bar.append("█" * min(length, bar_width - len(bar)), style=styles[region])
        table.add_row(
            "  " * depth + str(span.get("name")),
            region,
            f"{offset_ms:.3f}",
            f"{duration_ms:.3f}",
            bar,
        )
    out = io.StringIO()
    console = Console(
        file=out,
        width=width,
        force_terminal=color,
        color_system="standard" if color else None,
        highlight=False,
    )
    console.print(table)
    return "".join(line.rstrip() + "\n" for line in out.getvalue().splitlines())


# -- process entry ----------------------------------------------------------------------------


def _split_listen(listen: str) -> tuple[str, int]:
    host, sep, port = listen.rpartition(":")
    if not sep or not port.isdigit():
        raise argparse.ArgumentTypeError(f"--listen wants HOST:PORT, got {listen!r}")
    return host.strip("[]") or "127.0.0.1", int(port)


async def _run(db: Path, host: str, port: int, grace: float) -> None:
    store = SpanStore(db)
    try:
        server, bound = await start_receiver(store, host, port)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        log.info("trace collector listening on %s:%d, writing %s", host, bound, db)
        await stop.wait()
        log.info("trace collector stopping")
        await server.stop(grace)  # in-flight exports finish and are committed
    finally:
        store.close()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m ops.collector", description="OTLP/gRPC trace receiver into SQLite"
    )
    parser.add_argument("--db", type=Path, required=True, help="SQLite database of spans")
    parser.add_argument(
        "--listen",
        type=_split_listen,
        default=("127.0.0.1", 4317),
        metavar="HOST:PORT",
        help="default 127.0.0.1:4317",
    )
    parser.add_argument("--grace", type=float, default=5.0, help="seconds to finish exports")
    parser.add_argument(
        "--nice",
        type=int,
        choices=range(20),
        default=BACKGROUND_NICENESS,
        metavar="0..19",
        help=f"CPU niceness: below the nodes it serves (default {BACKGROUND_NICENESS})",
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    lower_priority(args.nice)
    host, port = args.listen
    try:
        asyncio.run(_run(args.db, host, port, args.grace))
    except OSError as exc:
        log.error("%s", exc)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
