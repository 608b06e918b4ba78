"""The node's own Python per CreateTicket, without gRPC: CPU time per call.

``DeskService.CreateTicket`` is driven directly by 64 concurrent tasks over a real
durable store (WAL, fsync before the reply), wired as a node wires it (metrics, no-op
tracer, watch hub), and each reply is serialized. What the end-to-end benchmark cannot
separate from grpc.aio's own cost and from a busy machine, this measures alone: CPU per
call of the process, fsync included. With ``--baseline DIR`` another checkout (plus its
generated ``sundesk/``) runs in alternating rounds, each round in a fresh process.

Run: ``.venv/bin/python -m bench.write_path [--seconds 3 --rounds 5 --baseline DIR]``.
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

ROOT = Path(__file__).resolve().parents[1]


async def _drive(seconds: float, in_flight: int) -> tuple[int, float]:
    from node.clock import SystemClock
    from node.desk_service import DeskService
    from node.observe import NodeObserver
    from node.sqlite_store import SqliteTicketStore
    from node.watch import WatchHub
    from ops.metrics import Metrics
    from ops.tracing import get_tracer, make_tracer_provider
    from sundesk.v1 import desk_pb2 as pb

    class Context:
        def invocation_metadata(self) -> tuple[Any, ...]:
            return ()

    with tempfile.TemporaryDirectory(prefix="sundesk-bench-") as tmp:
        clock = SystemClock()
        metrics = Metrics("velizy")
        tracer = get_tracer(make_tracer_provider("velizy", otlp_endpoint=None))
        observer = NodeObserver("velizy", metrics, tracer, clock)
        store = SqliteTicketStore(tmp, "velizy", "VEL", clock, on_commit=observer.on_commit)
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
        calls = 0
        stop_at = time.perf_counter() + seconds

        async def worker() -> None:
            nonlocal calls
            while time.perf_counter() < stop_at:
                request = pb.CreateTicketRequest(
                    title=f"bench ticket {calls}", customer="bench", priority=3
                )
                reply = await desk.CreateTicket(request, context)
                reply.SerializeToString()
                calls += 1

        before = os.times()
        await asyncio.gather(*(worker() for _ in range(in_flight)))
        after = os.times()
        await store.close()
    cpu = (after.user + after.system) - (before.user + before.system)
    return calls, cpu


def _child(seconds: float, in_flight: int) -> None:
    calls, cpu = asyncio.run(_drive(seconds, in_flight))
    print(f"{calls} {cpu}")


def _round(source: Path, seconds: float, in_flight: int) -> tuple[int, float]:
    out = subprocess.run(
        [sys.executable, str(Path(__file__).resolve()), "--child", str(seconds), str(in_flight)],
        cwd=source,
        env={**os.environ, "PYTHONPATH": str(source)},
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    ).stdout.split()
    return int(out[0]), float(out[1])


def main() -> None:
    if len(sys.argv) == 4 and sys.argv[1] == "--child":
        _child(float(sys.argv[2]), int(sys.argv[3]))
        return
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--in-flight", type=int, default=64)
    parser.add_argument("--baseline", type=Path, help="another checkout, measured alternately")
    args = parser.parse_args()
    trees = {"this": ROOT}
    if args.baseline is not None:
        trees["baseline"] = args.baseline.resolve()
    per_call: dict[str, list[float]] = {name: [] for name in trees}
    for r in range(args.rounds):
        order = list(trees) if r % 2 == 0 else list(reversed(trees))
        for name in order:
            calls, cpu = _round(trees[name], args.seconds, args.in_flight)
            per_call[name].append(cpu / calls)
            print(
                f"round {r + 1}: {name:8} {calls / args.seconds:7.0f} calls/s  "
                f"cpu/call {cpu / calls * 1e6:5.0f} us"
            )
    medians = {name: statistics.median(v) for name, v in per_call.items()}
    summary = ", ".join(f"{name} {m * 1e6:.0f} us" for name, m in medians.items())
    print(f"median CPU per CreateTicket without gRPC: {summary}", end="")
    if "baseline" in medians:
        print(f" ({(medians['this'] / medians['baseline'] - 1) * 100:+.0f}%)", end="")
    print(f"; load average {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
