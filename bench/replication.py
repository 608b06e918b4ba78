"""Replication lag and catch-up rate on a real five-node local federation.

Lag: a fixed offered load (default 200 changes/s spread round-robin over the five nodes,
half creates, half comments on tickets the same region made earlier) runs for a while.
Each node measures the lag of every operation it applies, from the HLC stamp the origin
gave it inside its commit group (so at most one group commit before it was durable) to
the end of the COMMIT that made it durable here: the ``sundesk_replication_lag_seconds``
histogram. All nodes run on this machine, so the two clocks are one. The bench reads
every node's histogram before and after the load and reports percentiles of the
difference, interpolated inside buckets (1–50 ms wide under 0.3 s, see ops/metrics.py),
and the exact share of deliveries within the target, which is a bucket bound. It waits
until every node holds every change before reading, so nothing late is left out. Measured
on loopback and then with the WAN delay proxies, in one run.

Catch-up: Japan is killed, the others take N operations, Japan is started again and timed
until its version vector holds all of them; progress is polled with ``Status`` without the
digest, which would hash every ticket on every poll.

Run: ``.venv/bin/python -m bench.replication [--rate 200 --seconds 10 --catchup 100000]``.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import os
import random
import re
import shutil
import tempfile
import time
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import grpc

from federation.config import load_config
from federation.wan import one_way_delay
from ops import local
from sundesk.v1 import desk_pb2 as pb
from sundesk.v1 import desk_pb2_grpc, federation_pb2, federation_pb2_grpc

LOOPBACK_TARGET = 0.050
WAN_SLACK = 0.050
_BUCKET = re.compile(r"^sundesk_replication_lag_seconds_bucket\{(.*?)\} (\S+)$", re.M)


def pct(values: list[float], q: float) -> float:
    """Nearest-rank percentile of raw samples (bench/ownership.py uses it too)."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def load_average() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


# ----- reading the nodes ------------------------------------------------------------------


def lag_buckets(metrics_port: int) -> dict[float, float]:
    """Cumulative lag histogram of one node, summed over origins: upper bound -> count."""
    url = f"http://127.0.0.1:{metrics_port}/metrics"
    with urllib.request.urlopen(url, timeout=10) as resp:
        text = resp.read().decode()
    out: dict[float, float] = {}
    for labels, value in _BUCKET.findall(text):
        le = float(re.search(r'le="([^"]+)"', labels).group(1))  # type: ignore[union-attr]
        out[le] = out.get(le, 0.0) + float(value)
    return out


def quantile(cumulative: Mapping[float, float], q: float) -> float:
    """Like Prometheus' ``histogram_quantile``: linear inside the bucket holding rank q."""
    bounds = sorted(cumulative)
    total = cumulative[bounds[-1]]
    rank = q * total
    lower, below = 0.0, 0.0
    for bound in bounds:
        count = cumulative[bound]
        if count >= rank:
            if bound == float("inf"):
                return lower
            share = (rank - below) / (count - below) if count > below else 1.0
            return lower + (bound - lower) * share
        lower, below = bound, count
    return lower


def share_within(cumulative: Mapping[float, float], bound: float) -> float:
    """Exact share of observations <= the largest bucket bound not above ``bound``."""
    total = cumulative[float("inf")]
    eligible = [b for b in cumulative if b <= bound + 1e-12]
    return cumulative[max(eligible)] / total if eligible and total else 0.0


def cpu_seconds(pids: Mapping[str, int]) -> float:
    """User + system CPU of the node processes, from /proc (Linux)."""
    total = 0
    for pid in pids.values():
        stat = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        total += int(stat[11]) + int(stat[12])
    return total / os.sysconf("SC_CLK_TCK")


class Statuses:
    """Cheap ``Status`` polls (no digest) over channels kept open."""

    def __init__(self, addresses: Mapping[str, str]) -> None:
        self._channels = {r: grpc.insecure_channel(a) for r, a in addresses.items()}
        self._stubs = {r: federation_pb2_grpc.FederationStub(c) for r, c in self._channels.items()}

    def get(self, region: str) -> federation_pb2.NodeStatus | None:
        try:
            status: federation_pb2.NodeStatus = self._stubs[region].Status(
                federation_pb2.NodeStatusRequest(skip_digest=True), timeout=5
            )
            return status
        except grpc.RpcError:
            return None

    def vector(self, region: str) -> dict[str, int]:
        status = self.get(region)
        return dict(status.version_vector) if status else {}

    def close(self) -> None:
        for ch in self._channels.values():
            ch.close()


def wait_until(what: str, check: object, within: float, every: float = 0.05) -> None:
    deadline = time.monotonic() + within
    while not check():  # type: ignore[operator]
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {within:.0f} s waiting for {what}")
        time.sleep(every)


# ----- lag --------------------------------------------------------------------------------


@dataclass
class LagResult:
    p50: float
    p99: float
    within: float  # share of deliveries within the target
    deliveries: int
    sent: int
    failed: int
    cores: float  # CPU used by the five nodes during the load, in cores
    load: str


async def offer_load(addresses: Mapping[str, str], rate: float, seconds: float) -> tuple[int, int]:
    """Send ``rate`` changes/s for ``seconds``, open loop; returns (sent, failed)."""
    channels = {r: grpc.aio.insecure_channel(a) for r, a in addresses.items()}
    stubs = {r: desk_pb2_grpc.DeskStub(ch) for r, ch in channels.items()}
    rnd = random.Random(3)
    # Comments go to tickets their region created: a comment must not fail because the
    # ticket has not reached that region yet, which is the very lag being measured.
    codes: dict[str, list[str]] = {r: [] for r in addresses}

    async def send(region: str, call: object) -> None:
        result = await call  # type: ignore[misc]
        if isinstance(result, pb.Ticket) and not result.comments:
            codes[region].append(result.code)

    regions = itertools.cycle(addresses)
    pending: list[asyncio.Future[None]] = []
    start = time.perf_counter()
    n = 0
    while time.perf_counter() - start < seconds:
        region = next(regions)
        if codes[region] and rnd.random() < 0.5:
            req = pb.AddCommentRequest(code=rnd.choice(codes[region]), author="bench", text="lag")
            call: object = stubs[region].AddComment(req)
        else:
            call = stubs[region].CreateTicket(pb.CreateTicketRequest(title=f"lag {n}"))
        pending.append(asyncio.ensure_future(send(region, call)))
        n += 1
        await asyncio.sleep(max(0.0, start + n / rate - time.perf_counter()))
    results = await asyncio.gather(*pending, return_exceptions=True)
    for ch in channels.values():
        await ch.close()
    return n, sum(1 for r in results if isinstance(r, BaseException))


def lag_bench(rate: float, seconds: float, wan: bool, target: float) -> LagResult:
    base = Path(tempfile.mkdtemp(prefix="sundesk-bench-"))
    try:
        state = local.up(base, wan=wan, collector=False, insecure=True)
        nodes = state["nodes"]
        addresses = {r: n["address"] for r, n in nodes.items()}
        statuses = Statuses(addresses)
        try:

            def mesh_up() -> bool:
                rows = [statuses.get(r) for r in nodes]
                return all(s and all(p.connected for p in s.peers.values()) for s in rows)

            wait_until("every peer link to connect", mesh_up, 60)
            before = {r: lag_buckets(n["metrics"]) for r, n in nodes.items()}
            pids = {r: n["pid"] for r, n in nodes.items()}
            cpu0, t0 = cpu_seconds(pids), time.perf_counter()
            sent, failed = asyncio.run(offer_load(addresses, rate, seconds))
            cores = (cpu_seconds(pids) - cpu0) / (time.perf_counter() - t0)
            load = load_average()

            def converged() -> bool:
                vectors = [statuses.vector(r) for r in nodes]
                return all(v and v == vectors[0] for v in vectors)

            # Every change reaches every node before the histograms are read: a late one
            # counts with its full lag instead of being left out.
            wait_until("every node to hold every change", converged, 120, every=0.1)
            diff: dict[float, float] = {}
            for r, n in nodes.items():
                for le, count in lag_buckets(n["metrics"]).items():
                    diff[le] = diff.get(le, 0.0) + count - before[r].get(le, 0.0)
        finally:
            statuses.close()
            local.down(base)
    finally:
        shutil.rmtree(base, ignore_errors=True)
    return LagResult(
        p50=quantile(diff, 0.5),
        p99=quantile(diff, 0.99),
        within=share_within(diff, target),
        deliveries=int(diff[float("inf")]),
        sent=sent,
        failed=failed,
        cores=cores,
        load=load,
    )


# ----- catch-up ---------------------------------------------------------------------------


async def _write(address: str, total: int, in_flight: int = 64) -> None:
    async with grpc.aio.insecure_channel(address) as ch:
        stub = desk_pb2_grpc.DeskStub(ch)
        counter = itertools.count()

        async def worker() -> None:
            while next(counter) < total:
                await stub.CreateTicket(pb.CreateTicketRequest(title="catch-up"))

        await asyncio.gather(*(worker() for _ in range(in_flight)))


@dataclass
class CatchupResult:
    missed: int
    write_rate: float
    restart: float  # process start to serving
    seconds: float  # serving to holding every missed operation
    cpu: float  # CPU seconds the catching-up node used meanwhile
    load: str

    @property
    def rate(self) -> float:
        return self.missed / self.seconds

    @property
    def rate_with_restart(self) -> float:
        return self.missed / (self.restart + self.seconds)


def catchup_bench(total: int, late: str = "japan") -> CatchupResult:
    base = Path(tempfile.mkdtemp(prefix="sundesk-bench-"))
    try:
        state = local.up(base, collector=False, insecure=True)
        addresses = {r: n["address"] for r, n in state["nodes"].items()}
        writers = [r for r in addresses if r != late]
        statuses = Statuses(addresses)
        try:
            local.kill(base, late)
            t0 = time.perf_counter()

            async def write_all() -> None:
                share = total // len(writers)
                await asyncio.gather(*(_write(addresses[r], share) for r in writers))

            asyncio.run(write_all())
            write_rate = total / (time.perf_counter() - t0)

            def writers_agree() -> bool:
                vectors = [statuses.vector(r) for r in writers]
                return all(v and v == vectors[0] for v in vectors)

            wait_until("the others to hold every write", writers_agree, 600, every=0.5)
            target = statuses.vector(writers[0])
            started = time.perf_counter()
            local.start(base, late)  # returns once it serves (health check)
            serving = time.perf_counter()
            had = statuses.vector(late)
            pid = {late: local.LocalFederation(base).load()["nodes"][late]["pid"]}
            cpu0 = cpu_seconds(pid)

            def caught_up() -> bool:
                vv = statuses.vector(late)
                return all(vv.get(o, 0) >= seq for o, seq in target.items())

            wait_until(f"{late} to catch up", caught_up, 600, every=0.05)
            done = time.perf_counter()
            cpu = cpu_seconds(pid) - cpu0
            load = load_average()
        finally:
            statuses.close()
            local.down(base)
    finally:
        shutil.rmtree(base, ignore_errors=True)
    # What it lacked when it began serving; the few it got before the first poll count too,
    # so the rate is, if anything, understated.
    missed = sum(seq - had.get(o, 0) for o, seq in target.items())
    return CatchupResult(missed, write_rate, serving - started, done - serving, cpu, load)


# ----- main -------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rate", type=float, default=200.0, help="changes/s over five nodes")
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--catchup", type=int, default=100_000, help="0 skips it")
    parser.add_argument("--no-wan", action="store_true")
    parser.add_argument("--no-loopback", action="store_true")
    args = parser.parse_args()
    names = load_config(None).region_names()
    worst = max(one_way_delay(a, b) for a in names for b in names if a != b)
    print(f"load average at start: {load_average()} ({os.cpu_count()} cores)")
    runs = []
    if not args.no_loopback:
        runs.append(("loopback", False, LOOPBACK_TARGET))
    if not args.no_wan:
        runs.append(("WAN", True, worst + WAN_SLACK))
    for name, wan, target in runs:
        r = lag_bench(args.rate, args.seconds, wan=wan, target=target)
        print(
            f"{name + ':':9} lag p50 {r.p50 * 1000:.1f} ms  p99 {r.p99 * 1000:.1f} ms  "
            f"{r.within:.2%} within {target * 1000:.1f} ms (target p99 <= {target * 1000:.1f} "
            f"ms); {r.deliveries} deliveries of {r.sent} changes at {args.rate:.0f}/s, "
            f"{r.failed} failed; nodes used {r.cores:.2f} cores; load average {r.load}"
        )
    if args.catchup:
        c = catchup_bench(args.catchup)
        print(
            f"catch-up: {c.rate:,.0f} operations/s: {c.missed:,} missed operations applied in "
            f"{c.seconds:.2f} s once serving (target >= 10,000/s); with the restart "
            f"({c.restart:.2f} s) {c.rate_with_restart:,.0f}/s; it used {c.cpu:.2f} CPU s "
            f"({c.missed / max(c.cpu, 1e-9):,.0f} operations per CPU second); written at "
            f"{c.write_rate:,.0f}/s; load average {c.load}"
        )


if __name__ == "__main__":
    main()
