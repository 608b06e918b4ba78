"""The embedded collector: real OTLP exports from two regions' providers into SQLite,
then a ticket's trace read back as JSON and as a waterfall."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import grpc
import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, ArrayValue, KeyValue
from opentelemetry.proto.trace.v1.trace_pb2 import ResourceSpans, ScopeSpans, Span, Status
from opentelemetry.trace import SpanKind, TracerProvider

from ops.collector import (
    EXPORT_METHOD,
    SpanStore,
    render_waterfall,
    serve_collector,
    spans_from_request,
    ticket_trace,
)
from ops.tracing import (
    ATTR_OP_ID,
    ATTR_ORIGIN,
    ATTR_TICKET,
    extract_context,
    get_tracer,
    inject_context,
    make_tracer_provider,
    shutdown_tracing,
)

ROOT = Path(__file__).resolve().parents[2]
TICKET = "VEL-000001"


def record_ticket_story(velizy: TracerProvider, japan: TracerProvider) -> dict[str, str]:
    """Vélizy creates a ticket and commits it; Japan applies the replicated operation
    under the trace context carried by the operation; later Japan updates the ticket in
    a trace of its own. Returns the ids that matter, in hex."""
    tv, tj = get_tracer(velizy), get_tracer(japan)
    with tv.start_as_current_span(
        "sundesk.v1.Desk/CreateTicket", kind=SpanKind.SERVER, attributes={ATTR_TICKET: TICKET}
    ) as create:
        time.sleep(0.002)
        with tv.start_as_current_span("store.commit"):
            time.sleep(0.001)
        carried = inject_context()  # what goes into Operation.trace_context
    time.sleep(0.003)
    with tj.start_as_current_span(
        "replication.apply",
        context=extract_context(carried),
        attributes={ATTR_TICKET: TICKET, ATTR_ORIGIN: "velizy", ATTR_OP_ID: "velizy:1"},
    ) as apply:
        time.sleep(0.001)
    with tj.start_as_current_span("sundesk.v1.Desk/UpdateTicket", attributes={ATTR_TICKET: TICKET}):
        pass
    with tv.start_as_current_span("sundesk.v1.Desk/CreateTicket", attributes={ATTR_TICKET: "X-2"}):
        pass
    return {
        "trace": f"{create.get_span_context().trace_id:032x}",
        "create": f"{create.get_span_context().span_id:016x}",
        "apply": f"{apply.get_span_context().span_id:016x}",
    }


def test_ticket_trace_spans_two_regions(tmp_path: Path) -> None:
    db = tmp_path / "traces.db"

    async def main() -> dict[str, str]:
        server, port = await serve_collector(db)
        try:
            endpoint = f"127.0.0.1:{port}"
            velizy = make_tracer_provider("velizy", otlp_endpoint=endpoint)
            japan = make_tracer_provider("japan", otlp_endpoint=f"http://{endpoint}")
            ids = record_ticket_story(velizy, japan)
            # The exporter is synchronous: flush off the loop that serves the receiver.
            await asyncio.to_thread(shutdown_tracing, velizy)
            await asyncio.to_thread(shutdown_tracing, japan)
            return ids
        finally:
            await server.stop(1)

    ids = asyncio.run(asyncio.wait_for(main(), timeout=60))

    store = SpanStore(db)  # a reader of its own, as the command line would be
    try:
        assert len(store.trace_ids_for_ticket(TICKET)) == 2  # the creation and the update
        assert store.trace_ids_for_ticket(TICKET)[0] == ids["trace"]
        trace = ticket_trace(store, TICKET)
        raw = store.spans(ids["trace"])
        assert ticket_trace(store, "NOPE-1") == {"trace_id": None, "spans": []}
    finally:
        store.close()

    assert json.loads(json.dumps(trace)) == trace
    assert trace["trace_id"] == ids["trace"]
    spans = trace["spans"]
    assert [(s["name"], s["region"]) for s in spans] == [
        ("sundesk.v1.Desk/CreateTicket", "velizy"),
        ("store.commit", "velizy"),
        ("replication.apply", "japan"),
    ]
    for span in spans:
        assert set(span) == {"span_id", "name", "region", "start", "end", "parent"}
        start, end = datetime.fromisoformat(span["start"]), datetime.fromisoformat(span["end"])
        assert start.utcoffset() == timedelta(0)
        assert len(span["start"].split(".")[1]) == len("123456+00:00")  # microseconds
        assert start <= end
    create, commit, apply = spans
    assert create["span_id"] == ids["create"] and create["parent"] is None
    assert commit["parent"] == ids["create"]
    assert apply["span_id"] == ids["apply"] and apply["parent"] == ids["create"]

    # The raw rows keep every attribute, typed.
    by_name = {r["name"]: r for r in raw}
    assert by_name["replication.apply"]["attributes"][ATTR_OP_ID] == "velizy:1"
    assert by_name["replication.apply"]["ticket"] == TICKET
    assert by_name["store.commit"]["ticket"] is None

    text = render_waterfall(trace, width=120)
    assert ids["trace"] in text
    for name in ("sundesk.v1.Desk/CreateTicket", "store.commit", "replication.apply"):
        assert name in text
    assert "japan" in text and "velizy" in text and "█" in text
    assert "\x1b[" not in text  # plain unless asked for colour
    assert "\x1b[" in render_waterfall(trace, color=True)
    # Children indented under their parent.
    assert "  store.commit" in text and "  replication.apply" in text
    assert "no trace" in render_waterfall({"trace_id": None, "spans": []})


def test_otlp_values_become_json_and_a_retried_span_is_read_once(tmp_path: Path) -> None:
    def kv(key: str, value: AnyValue) -> KeyValue:
        return KeyValue(key=key, value=value)

    span = Span(
        trace_id=bytes(range(16)),
        span_id=bytes(range(8)),
        name="handoff",
        start_time_unix_nano=1_767_603_600_123_456_789,
        end_time_unix_nano=1_767_603_600_223_456_789,
        status=Status(code=Status.STATUS_CODE_ERROR, message="lease lost"),
        attributes=[
            kv(ATTR_TICKET, AnyValue(string_value="UK-000042")),
            kv("n", AnyValue(int_value=3)),
            kv("ok", AnyValue(bool_value=True)),
            kv("tags", AnyValue(array_value=ArrayValue(values=[AnyValue(double_value=1.5)]))),
            kv("raw", AnyValue(bytes_value=b"\x01\xff")),
        ],
    )
    request = ExportTraceServiceRequest(
        resource_spans=[ResourceSpans(scope_spans=[ScopeSpans(spans=[span])])]
    )
    (row,) = spans_from_request(request)
    assert row.trace_id == bytes(range(16)).hex() and row.parent_span_id is None
    assert row.region is None and row.ticket == "UK-000042"
    assert row.attributes == {
        ATTR_TICKET: "UK-000042",
        "n": 3,
        "ok": True,
        "tags": [1.5],
        "raw": "01ff",
        "otel.status_code": "ERROR",
        "otel.status_description": "lease lost",
    }

    store = SpanStore(tmp_path / "t.db")
    try:
        data = request.SerializeToString()
        assert store.add_request(data) == 1
        assert store.add_request(data) == 1  # an exporter's retry
        assert store.count() == 2
        assert len(store.spans(row.trace_id)) == 1
        # A trace id found across the bytes of two others matches their request, whose
        # parse then yields nothing of it.
        a, b = bytes(range(100, 116)), bytes(range(200, 216))
        two = [Span(trace_id=t, span_id=b"\x01" * 8, name="x") for t in (a, b)]
        store.add_request(
            ExportTraceServiceRequest(
                resource_spans=[ResourceSpans(scope_spans=[ScopeSpans(spans=two)])]
            ).SerializeToString()
        )
        straddling = a[8:] + b[:8]
        assert store._db.execute(
            "SELECT COUNT(*) FROM request_index WHERE instr(trace_ids, ?) > 0", (straddling,)
        ).fetchone() == (1,)
        assert store.spans(straddling.hex()) == []
        assert [s["name"] for s in store.spans(a.hex())] == ["x"]
        trace = ticket_trace(store, "UK-000042")
        assert trace["spans"][0]["start"] == "2026-01-05T09:00:00.123456+00:00"
        assert store._db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        with pytest.raises(ValueError, match="not an OTLP ExportTraceServiceRequest"):
            store.add_request(b"\xff\xff not protobuf")
        assert store.trace_ids_for_ticket("UK-000042") == [row.trace_id]  # nothing added
    finally:
        store.close()


def test_a_request_that_is_not_otlp_is_refused_with_invalid_argument(tmp_path: Path) -> None:
    async def main() -> grpc.StatusCode:
        server, port = await serve_collector(tmp_path / "t.db")
        try:
            async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
                export = channel.unary_unary(EXPORT_METHOD)
                try:
                    await export(b"\xff\xff not protobuf", timeout=10)
                except grpc.aio.AioRpcError as exc:
                    assert "ExportTraceServiceRequest" in (exc.details() or "")
                    return exc.code()
                return grpc.StatusCode.OK
        finally:
            await server.stop(1)

    assert asyncio.run(main()) is grpc.StatusCode.INVALID_ARGUMENT


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
    return port


def test_process_entry_serves_until_sigterm(tmp_path: Path) -> None:
    db, port = tmp_path / "traces.db", free_port()
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "ops.collector", "--db", str(db), "--listen", f"127.0.0.1:{port}"],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert "listening" in line, line
        provider = make_tracer_provider("uk", otlp_endpoint=f"127.0.0.1:{port}")
        with get_tracer(provider).start_as_current_span("x", attributes={ATTR_TICKET: "UK-1"}):
            pass
        shutdown_tracing(provider)
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=20)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, out
    assert "stopping" in out
    store = SpanStore(db)
    try:
        trace: dict[str, Any] = ticket_trace(store, "UK-1")
    finally:
        store.close()
    assert [(s["name"], s["region"]) for s in trace["spans"]] == [("x", "uk")]


OLD_SCHEMA = """
CREATE TABLE spans (
    trace_id TEXT NOT NULL, span_id TEXT NOT NULL, parent_span_id TEXT, name TEXT NOT NULL,
    region TEXT, ticket TEXT, start_ns INTEGER NOT NULL, end_ns INTEGER NOT NULL,
    attributes TEXT NOT NULL
);
CREATE UNIQUE INDEX spans_by_id ON spans (trace_id, span_id);
CREATE INDEX spans_by_ticket ON spans (ticket, start_ns) WHERE ticket IS NOT NULL;
"""


def test_a_database_of_span_rows_is_moved_to_requests_and_keeps_its_spans(
    tmp_path: Path,
) -> None:
    path = tmp_path / "old.db"
    old = sqlite3.connect(path)
    old.executescript(OLD_SCHEMA)
    trace_id = "f" * 16 + "0" * 16  # above 2**63: a negative key
    old.executemany(
        "INSERT INTO spans VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
        [
            (trace_id, "1" * 16, None, "handoff", "uk", "UK-000001", 1, 5, "{}"),
            (
                trace_id,
                "2" * 16,
                "1" * 16,
                "store.commit",
                "uk",
                None,
                2,
                4,
                '{"n": 3, "otel.status_code": "ERROR", "otel.status_description": "disk"}',
            ),
        ],
    )
    old.commit()
    old.close()
    store = SpanStore(path)
    try:
        handoff, commit = store.spans(trace_id)
        assert (handoff["name"], handoff["ticket"], handoff["region"]) == (
            "handoff",
            "UK-000001",
            "uk",
        )
        assert (commit["parent_span_id"], commit["start_ns"], commit["end_ns"]) == ("1" * 16, 2, 4)
        assert commit["attributes"] == {
            "n": 3,
            "otel.status_code": "ERROR",
            "otel.status_description": "disk",
        }
        assert store.trace_ids_for_ticket("UK-000001") == [trace_id]
        tables = {r[0] for r in store._db.execute("SELECT name FROM sqlite_master")}
        assert "spans" not in tables
    finally:
        store.close()
    store = SpanStore(path)  # opened again: nothing left to move, nothing doubled
    try:
        assert len(store.spans(trace_id)) == 2
        assert store._db.execute("SELECT COUNT(*) FROM requests").fetchone()[0] == 1
    finally:
        store.close()
