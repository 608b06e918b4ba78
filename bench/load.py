"""Closed-loop load: N calls in flight for a fixed time, throughput and latency out."""

from __future__ import annotations

import asyncio
import statistics
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass


@dataclass
class Result:
    calls: int
    errors: int
    seconds: float
    latencies: list[float]

    @property
    def rate(self) -> float:
        return self.calls / self.seconds

    def pct(self, q: float) -> float:
        if not self.latencies:
            return float("nan")
        ordered = sorted(self.latencies)
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))]

    def summary(self) -> str:
        return (
            f"{self.rate:8.0f} calls/s  p50 {self.pct(0.5) * 1000:6.1f} ms  "
            f"p99 {self.pct(0.99) * 1000:6.1f} ms  errors {self.errors}"
        )


async def closed_loop(
    call: Callable[[int], Awaitable[object]], in_flight: int, seconds: float, warmup: float = 0.5
) -> Result:
    stop_at = time.perf_counter() + warmup + seconds
    measure_from = time.perf_counter() + warmup
    latencies: list[float] = []
    counter = 0
    errors = 0

    async def worker() -> None:
        nonlocal counter, errors
        while True:
            now = time.perf_counter()
            if now >= stop_at:
                return
            counter += 1
            try:
                await call(counter)
            except Exception:
                errors += 1
                continue
            end = time.perf_counter()
            if now >= measure_from:
                latencies.append(end - now)

    await asyncio.gather(*(worker() for _ in range(in_flight)))
    return Result(len(latencies), errors, seconds, latencies)


def median(values: list[float]) -> float:
    return statistics.median(values)
