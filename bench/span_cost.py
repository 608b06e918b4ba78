"""What an RPC span costs a call, with caches warm and with caches cold.

The node's RPC wrapper (``ops.interceptors``: metrics and span) is driven directly around a
handler that does what CreateTicket does with tracing (reads the current span's context
for its operation, tags the span with the ticket), untraced and traced, the spans
exported to an exporter that drops each encoded batch. Warm, the calls follow each other
and the wrapper's code and objects stay in the CPU's caches. Cold, 4 MiB of other data are
copied between calls, as grpc, SQLite and the rest of a call touch them in a node: there
the span's share grew from about 6 to 13 µs, the size of what the node's CPU per call
rises end to end (README, Benchmarks > Observability). A span that touches less code and
fewer objects is what lowers the cold figure.

Run: ``.venv/bin/python -m bench.span_cost [--calls 10000 --rounds 3 --cold-mib 4]``.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
from collections.abc import Callable
from typing import Any

import grpc

from bench.write_path import _NullExporter
from node.clock import SystemClock
from node.observe import NodeObserver
from ops.interceptors import ObservabilityInterceptor
from ops.metrics import Metrics
from ops.tracing import get_tracer, make_tracer_provider

METHOD = "/sundesk.v1.Desk/CreateTicket"


class _Context:
    def invocation_metadata(self) -> tuple[Any, ...]:
        return ()

    def code(self) -> None:
        return None


def _wrapped(traced: bool) -> Callable[..., Any]:
    metrics = Metrics("velizy")
    provider = make_tracer_provider(
        "velizy", otlp_endpoint=None, exporter=_NullExporter() if traced else None
    )
    tracer = get_tracer(provider)
    observer = NodeObserver("velizy", metrics, tracer, SystemClock())

    async def create(request: Any, context: Any) -> dict[str, str]:
        carrier = observer.trace_carrier()
        observer.tag_ticket("VEL-000001", "velizy")
        return carrier

    wrapper = ObservabilityInterceptor(metrics, tracer, "velizy")
    handler = grpc.unary_unary_rpc_method_handler(create)
    # As a node routes a call that brings no trace context (``node.handlers``).
    call: Callable[..., Any] = wrapper.call_router(METHOD, handler)(()).unary_unary
    return call


async def _per_call(call: Callable[..., Any], calls: int, touch: Callable[[], None]) -> float:
    """Mean wall time of one wrapped call, in µs; ``touch`` runs between calls, untimed."""
    context = _Context()
    total = 0
    for i in range(calls):
        touch()
        start = time.perf_counter_ns()
        await call(i, context)
        total += time.perf_counter_ns() - start
    return total / calls / 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--calls", type=int, default=10_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--cold-mib", type=int, default=4, help="MiB copied between calls")
    args = parser.parse_args()
    source, target = bytes(args.cold_mib << 20), bytearray(args.cold_mib << 20)

    def cold() -> None:
        target[:] = source  # one memcpy: every cache line of both, at C speed

    calls = {"untraced": _wrapped(False), "traced": _wrapped(True)}
    results: dict[tuple[str, str], list[float]] = {}
    for r in range(args.rounds):
        for caches, touch in (("warm", lambda: None), ("cold", cold)):
            for name, call in calls.items():
                us = asyncio.run(_per_call(call, args.calls, touch))
                results.setdefault((caches, name), []).append(us)
                print(f"round {r + 1}: {caches} {name:8}  {us:6.2f} µs a call")
    for caches in ("warm", "cold"):
        untraced = statistics.median(results[caches, "untraced"])
        traced = statistics.median(results[caches, "traced"])
        print(
            f"{caches}: untraced {untraced:.2f} µs, traced {traced:.2f} µs a call, "
            f"the span {traced - untraced:.2f} µs (medians of {args.rounds} rounds)"
        )


if __name__ == "__main__":
    main()
