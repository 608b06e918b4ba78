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
from collections.abc import Callable, Iterable, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, NamedTuple

import grpc
import orjson
from grpc import aio
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
from rich.console import Console
from rich.table import Table
from rich.text import Text

from ops.priority import BACKGROUND_NICENESS, lower_priority
from ops.tracing import ATTR_REGION, ATTR_TICKET

log = logging.getLogger("sundesk.collector")

# Rows in arrival order (rowid), found by trace through an index on the trace id's first
# 64 bits as an integer. Trace ids are random, so each span's index entry lands on a random
# leaf page, and a batch rewrites (in the WAL) every leaf page it touches: with the ids as
# the table's own key (WITHOUT ROWID) that was the whole table, 35 µs a span at 100,000
# spans; with a unique index on the two hex ids, 11-16 µs a span averaged over the first
# 100,000-200,000 spans; with this 8-byte key, a third of the pages, 5-6 µs
# (scratch harness, batches of 2,048 as the nodes send them). A span an exporter sent twice
# is stored twice and read once (``spans``).
SCHEMA = """
CREATE TABLE IF NOT EXISTS spans (
    trace_id TEXT NOT NULL,
    span_id TEXT NOT NULL,
    parent_span_id TEXT,
    name TEXT NOT NULL,
    region TEXT,
    ticket TEXT,
    start_ns INTEGER NOT NULL,
    end_ns INTEGER NOT NULL,
    attributes TEXT NOT NULL,
    trace_key INTEGER
);
CREATE INDEX IF NOT EXISTS spans_by_ticket ON spans (ticket, start_ns) WHERE ticket IS NOT NULL;
"""
# Databases written before trace_key: the column is added and filled, the old unique index
# on the hex ids dropped.
MIGRATE = """
ALTER TABLE spans ADD COLUMN trace_key INTEGER;
UPDATE spans SET trace_key = trace_key(trace_id);
DROP INDEX IF EXISTS spans_by_id;
"""
INDEX_TRACES = "CREATE INDEX IF NOT EXISTS spans_by_trace ON spans (trace_key)"
_KEYS = (
    "trace_id",
    "span_id",
    "parent_span_id",
    "name",
    "region",
    "ticket",
    "start_ns",
    "end_ns",
    "attributes",
)
_COLUMNS = ", ".join(_KEYS)


def trace_key(trace_id: str) -> int:
    """The first 64 bits of a trace id (hex) as SQLite's signed integer."""
    key = int(trace_id[:16], 16)
    return key - (1 << 64) if key >= 1 << 63 else key


_STATUS_NAMES = {1: "OK", 2: "ERROR"}  # OTLP Status.code; UNSET is not recorded
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


class SpanRow(NamedTuple):  # a tuple: made for every span received
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
        # The index pages a batch touches stay cached, and the WAL is copied back into the
        # database every 10,000 pages rather than 1,000: pages that batch after batch
        # rewrites are checkpointed once per 10,000.
        self._db.execute("PRAGMA cache_size=-65536")
        self._db.execute("PRAGMA wal_autocheckpoint=10000")
        self._db.create_function("trace_key", 1, trace_key, deterministic=True)
        self._db.executescript(SCHEMA)
        columns = {row[1] for row in self._db.execute("PRAGMA table_info(spans)")}
        if "trace_key" not in columns:
            self._db.executescript(f"BEGIN IMMEDIATE;{MIGRATE}COMMIT;")
        self._db.execute(INDEX_TRACES)

    def add_spans(self, rows: Iterable[SpanRow]) -> int:
        """Store spans in one transaction. Returns the number of rows written."""
        values = [
            (
                r.trace_id,
                r.span_id,
                r.parent_span_id,
                r.name,
                r.region,
                r.ticket,
                r.start_ns,
                r.end_ns,
                orjson.dumps(r.attributes, option=orjson.OPT_SORT_KEYS).decode(),
                trace_key(r.trace_id),
            )
            for r in rows
        ]
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                self._db.executemany(
                    f"INSERT INTO spans ({_COLUMNS}, trace_key) VALUES ({', '.join('?' * 10)})",
                    values,
                )
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")
        return len(values)

    def trace_ids_for_ticket(self, code: str) -> list[str]:
        """Traces with a span tagged with this ticket, the earliest-started first."""
        with self._lock:
            rows = self._db.execute(
                "SELECT trace_id FROM spans WHERE ticket = ? GROUP BY trace_id "
                "ORDER BY MIN(start_ns), trace_id",
                (code,),
            ).fetchall()
        return [r[0] for r in rows]

    def spans(self, trace_id: str) -> list[dict[str, Any]]:
        """Every span of a trace, by start time (enclosing spans first on a tie); a span
        stored twice (an exporter's retry of a batch that had arrived) is given once."""
        with self._lock:
            rows = self._db.execute(
                f"SELECT DISTINCT {_COLUMNS} FROM spans WHERE trace_key = ? AND trace_id = ? "
                "ORDER BY start_ns, end_ns DESC",
                (trace_key(trace_id), trace_id),
            ).fetchall()
        result = [dict(zip(_KEYS, row, strict=True)) for row in rows]
        for span in result:
            span["attributes"] = json.loads(span["attributes"])
        return result

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


def spans_from_request(request: trace_service_pb2.ExportTraceServiceRequest) -> list[SpanRow]:
    rows = []
    for resource_spans in request.resource_spans:
        resource = _attributes(resource_spans.resource.attributes)
        for scope_spans in resource_spans.scope_spans:
            for span in scope_spans.spans:
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


class TraceReceiver(trace_service_pb2_grpc.TraceServiceServicer):
    def __init__(self, store: SpanStore) -> None:
        self._store = store

    async def Export(
        self,
        request: trace_service_pb2.ExportTraceServiceRequest,
        context: aio.ServicerContext,
    ) -> trace_service_pb2.ExportTraceServiceResponse:
        # Written inline: one short WAL transaction per request, in a process that does
        # nothing else. UNAVAILABLE tells the exporter to retry later.
        try:
            self._store.add_spans(spans_from_request(request))
        except sqlite3.Error as exc:
            log.error("cannot store spans in %s: %s", self._store.path, exc)
            await context.abort(grpc.StatusCode.UNAVAILABLE, f"cannot store spans: {exc}")
        return trace_service_pb2.ExportTraceServiceResponse()


async def start_receiver(store: SpanStore, host: str, port: int) -> tuple[aio.Server, int]:
    server = aio.server(
        options=[("grpc.so_reuseport", 0), ("grpc.max_receive_message_length", 32 << 20)]
    )
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(TraceReceiver(store), server)
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
