"""The node's own Python per CreateTicket, without gRPC: CPU time per call.

``DeskService.CreateTicket`` is driven directly by 64 concurrent tasks over a real
durable store (WAL, fsync before the reply), wired as a node wires it (metrics, no-op
tracer, watch hub), and each reply is serialized. What the end-to-end benchmark cannot
separate from grpc.aio's own cost and from a busy machine, this measures alone: CPU per
call of the process, fsync included. With ``--baseline DIR`` another checkout (plus its
generated ``sundesk/``) runs in alternating rounds, each round in a fresh process. With
``--traced`` this checkout also runs traced: each call inside the RPC wrapper (metrics and
span), commit spans, and spans encoded for export but then dropped: the node's own share
of what tracing costs, without the relay and collector processes.

Run: ``.venv/bin/python -m bench.write_path [--seconds 3 --rounds 5 --baseline DIR
--traced]``.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult

ROOT = Path(__file__).resolve().parents[1]


class _NullExporter(SpanExporter):
    """Takes encoded batches and drops them: the node's side of span export only."""

    def export_encoded(self, payload: bytes, count: int) -> SpanExportResult:
        return SpanExportResult.SUCCESS

    def export(self, spans: Any) -> SpanExportResult:
        return SpanExportResult.SUCCESS


async def _drive(seconds: float, in_flight: int, traced: bool) -> tuple[int, float]:
    import grpc

    from node.clock import SystemClock
    from node.desk_service import DeskService
    from node.observe import NodeObserver
    from node.server import tune_interpreter
    from node.sqlite_store import SqliteTicketStore
    from node.watch import WatchHub
    from ops.interceptors import ObservabilityInterceptor
    from ops.metrics import Metrics
    from ops.tracing import get_tracer, make_tracer_provider
    from sundesk.v1 import desk_pb2 as pb

    class Context:
        def invocation_metadata(self) -> tuple[Any, ...]:
            return ()

        def code(self) -> None:
            return None

    with tempfile.TemporaryDirectory(prefix="sundesk-bench-") as tmp:
        clock = SystemClock()
        metrics = Metrics("velizy")
        provider = make_tracer_provider(
            "velizy", otlp_endpoint=None, exporter=_NullExporter() if traced else None
        )
        tracer = get_tracer(provider)
        observer = NodeObserver("velizy", metrics, tracer, clock)
        store = SqliteTicketStore(
            tmp,
            "velizy",
            "VEL",
            clock,
            on_commit=observer.on_commit,
            on_commit_spans=observer.on_commit_spans if traced else None,
        )
        hub = WatchHub()
        store.add_listener(hub.publish)
        store.add_listener(observer.on_changes)
        regions = {r: r for r in ("velizy", "germany", "uk", "us", "japan")}
        desk = DeskService(
            store,
            hub,
            regions,
            trace_carrier=observer.trace_carrier,
            tag_ticket=observer.tag_ticket,
        )
        context: Any = Context()
        create: Any = desk.CreateTicket
        if traced:
            # As a node serves it: inside the RPC metrics and span wrapper.
            wrapper = ObservabilityInterceptor(metrics, tracer, "velizy")
            method = "/sundesk.v1.Desk/CreateTicket"
            create = wrapper.wrap_handler(
                method, grpc.unary_unary_rpc_method_handler(desk.CreateTicket)
            ).unary_unary
        tune_interpreter()  # as a node does once started
        calls = 0
        stop_at = time.perf_counter() + seconds

        async def worker() -> None:
            nonlocal calls
            while time.perf_counter() < stop_at:
                request = pb.CreateTicketRequest(
                    title=f"bench ticket {calls}", customer="bench", priority=3
                )
                reply = await create(request, context)
                if not isinstance(reply, bytes):  # a node before replies were encoded
                    reply.SerializeToString()
                calls += 1

        before = os.times()
        await asyncio.gather(*(worker() for _ in range(in_flight)))
        after = os.times()
        await store.close()
    cpu = (after.user + after.system) - (before.user + before.system)
    return calls, cpu


def _child(seconds: float, in_flight: int, traced: bool) -> None:
    calls, cpu = asyncio.run(_drive(seconds, in_flight, traced))
    print(f"{calls} {cpu}")


def _round(source: Path, seconds: float, in_flight: int, traced: bool) -> tuple[int, float]:
    child = ["--child", str(seconds), str(in_flight), "traced" if traced else "plain"]
    out = subprocess.run(
        [sys.executable, str(Path(__file__).resolve()), *child],
        cwd=source,
        env={**os.environ, "PYTHONPATH": str(source)},
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    ).stdout.split()
    return int(out[0]), float(out[1])


def main() -> None:
    if len(sys.argv) == 5 and sys.argv[1] == "--child":
        _child(float(sys.argv[2]), int(sys.argv[3]), sys.argv[4] == "traced")
        return
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--in-flight", type=int, default=64)
    parser.add_argument("--baseline", type=Path, help="another checkout, measured alternately")
    parser.add_argument(
        "--traced",
        action="store_true",
        help="also measure this checkout with spans recorded (RPC wrapper, commit spans) "
        "and exported to an exporter that drops them",
    )
    args = parser.parse_args()
    trees: dict[str, tuple[Path, bool]] = {"this": (ROOT, False)}
    if args.baseline is not None:
        trees["baseline"] = (args.baseline.resolve(), False)
    if args.traced:
        trees["traced"] = (ROOT, True)
    per_call: dict[str, list[float]] = {name: [] for name in trees}
    for r in range(args.rounds):
        order = list(trees) if r % 2 == 0 else list(reversed(trees))
        for name in order:
            source, traced = trees[name]
            calls, cpu = _round(source, args.seconds, args.in_flight, traced)
            per_call[name].append(cpu / calls)
            print(
                f"round {r + 1}: {name:8} {calls / args.seconds:7.0f} calls/s  "
                f"cpu/call {cpu / calls * 1e6:5.0f} us"
            )
    medians = {name: statistics.median(v) for name, v in per_call.items()}
    summary = ", ".join(f"{name} {m * 1e6:.0f} us" for name, m in medians.items())
    print(f"median CPU per CreateTicket without gRPC: {summary}", end="")
    for other in ("baseline", "traced"):
        if other in medians:
            change = (medians["this"] / medians[other] - 1) * 100
            print(f" (this against {other}: {change:+.0f}%)", end="")
    print(f"; load average {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
