"""Closed-loop load: N calls in flight for a fixed time, throughput and latency out."""

from __future__ import annotations

import asyncio
import os
import statistics
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path


@dataclass
class Result:
    calls: int
    errors: int
    seconds: float
    latencies: list[float]
    completed: int = 0  # calls answered, warm-up included
    server_cpu: float | None = None  # CPU seconds the server spent over the whole run

    @property
    def cpu_per_call(self) -> float | None:
        """Server CPU per answered call. On a shared machine it moves less than the rate:
        time the server waited for a core is not in it."""
        if self.server_cpu is None or not self.completed:
            return None
        return self.server_cpu / self.completed

    @property
    def rate(self) -> float:
        return self.calls / self.seconds

    def pct(self, q: float) -> float:
        if not self.latencies:
            return float("nan")
        ordered = sorted(self.latencies)
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))]

    def summary(self) -> str:
        cpu = self.cpu_per_call
        return (
            f"{self.rate:8.0f} calls/s  p50 {self.pct(0.5) * 1000:6.1f} ms  "
            f"p99 {self.pct(0.99) * 1000:6.1f} ms  errors {self.errors}"
            + (f"  server cpu/call {cpu * 1e6:4.0f} us" if cpu is not None else "")
        )


async def closed_loop(
    call: Callable[[int], Awaitable[object]],
    in_flight: int,
    seconds: float,
    warmup: float = 0.5,
    server_pid: int | None = None,
) -> Result:
    stop_at = time.perf_counter() + warmup + seconds
    measure_from = time.perf_counter() + warmup
    latencies: list[float] = []
    counter = 0
    errors = 0
    completed = 0

    async def worker() -> None:
        nonlocal counter, errors, completed
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
            completed += 1
            if now >= measure_from:
                latencies.append(end - now)

    cpu_before = cpu_seconds(server_pid) if server_pid is not None else None
    await asyncio.gather(*(worker() for _ in range(in_flight)))
    result = Result(len(latencies), errors, seconds, latencies, completed)
    if server_pid is not None and cpu_before is not None:
        result.server_cpu = cpu_seconds(server_pid) - cpu_before
    return result


def cpu_seconds(pid: int) -> float:
    """User and system CPU time of process ``pid`` so far, all threads (Linux)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def median(values: list[float]) -> float:
    return statistics.median(values)
