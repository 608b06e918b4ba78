"""Follow-the-sun ownership: planned-handoff gap and crash failover time against the TTL.

Planned handoffs: five nodes play two simulated days at 3600x while a watch on the owner
keys records every change; the gap of a handoff is the time the queue had no owner key
(a delete before the next put), so a handoff done as one guarded transaction has gap 0.

Failover: at 60x in the middle of a European morning, the node owning the Vélizy queue is
SIGKILLed, and the time until another region's owner key appears is measured; the node
is restarted, takes its queue back, and the trial repeats.

Run: ``.venv/bin/python -m bench.ownership [--trials 20]``.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import grpc

from bench.replication import pct
from federation.config import load_config
from ops import local
from ops.client import Client
from ops.owner_watch import OwnerEvent, OwnerWatcher
from ops.processes import wait_for
from sundesk.v1 import sun_pb2 as spb
from sundesk.v1 import sun_pb2_grpc


def planned_gaps(days: float) -> tuple[list[float], int]:
    base = Path(tempfile.mkdtemp(prefix="sundesk-bench-"))
    try:
        state = local.up(
            base, clock_start="2026-03-04T05:00:00Z", speed=3600, collector=False, insecure=True
        )
        watcher = OwnerWatcher(state["etcd"]["endpoint"])
        try:
            time.sleep(days * 24)  # a simulated day takes 24 real seconds at 3600x
        finally:
            watcher.stop()
            local.down(base)
    finally:
        shutil.rmtree(base, ignore_errors=True)
    gaps: list[float] = []
    moves = 0
    last: dict[str, OwnerEvent] = {}
    for ev in watcher.events:
        prev = last.get(ev.queue)
        if ev.kind == "put" and prev is not None:
            if prev.kind == "delete":
                gaps.append(ev.at - prev.at)
            elif prev.region != ev.region:
                gaps.append(0.0)  # moved from one lease to the next in one transaction
                moves += 1
        last[ev.queue] = ev
    return gaps, moves


def failovers(trials: int) -> list[float]:
    base = Path(tempfile.mkdtemp(prefix="sundesk-bench-"))
    times: list[float] = []
    try:
        state = local.up(
            base, clock_start="2026-03-04T09:30:00Z", speed=60, collector=False, insecure=True
        )
        watcher = OwnerWatcher(state["etcd"]["endpoint"])
        try:
            for _ in range(trials):
                wait_for("Vélizy to hold its queue", lambda: _holder(state) == "velizy", 30)
                seen = len(watcher.events)
                killed = time.monotonic()
                local.kill(base, "velizy")

                def taken(seen: int = seen) -> OwnerEvent | None:
                    return next(
                        (
                            e
                            for e in watcher.events[seen:]
                            if e.queue == "velizy" and e.kind == "put" and e.region != "velizy"
                        ),
                        None,
                    )

                event = wait_for("another region to take the queue", taken, timeout=30)
                times.append(event.at - killed)
                local.start(base, "velizy")
        finally:
            watcher.stop()
            local.down(base)
    finally:
        shutil.rmtree(base, ignore_errors=True)
    return times


def _holder(state: dict[str, Any]) -> str:
    """The velizy queue's owner as the UK node sees it."""
    try:
        with Client(state["nodes"]["uk"]["address"]) as c:
            st = sun_pb2_grpc.SunStub(c.channel).GetStatus(spb.SunStatusRequest(), timeout=2)
    except grpc.RpcError:
        return ""
    return next((q.owner for q in st.queues if q.queue == "velizy"), "")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--trials", type=int, default=20)
    parser.add_argument("--days", type=float, default=2.0)
    args = parser.parse_args()
    ttl = load_config(None).lease_ttl_seconds
    gaps, moves = planned_gaps(args.days)
    print(
        f"planned handoffs: {moves} region-to-region moves over {args.days:g} simulated days; "
        f"gap p50 {pct(gaps, 0.5) * 1000:.1f} ms, p99 {pct(gaps, 0.99) * 1000:.1f} ms, "
        f"max {max(gaps) * 1000:.1f} ms (target 0)"
    )
    times = failovers(args.trials)
    print(
        f"crash failover over {len(times)} trials: p50 {pct(times, 0.5):.2f} s, "
        f"p99 {pct(times, 0.99):.2f} s, mean {statistics.mean(times):.2f} s; "
        f"TTL {ttl:g} s (target p99 <= TTL + 1 s = {ttl + 1:g} s)"
    )


if __name__ == "__main__":
    main()
