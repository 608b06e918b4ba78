"""Heartbeats one node ingests alongside ticket traffic, and what they cost that traffic.

One real node (Vélizy, owning its queue through a real etcd, so the owner's silence scan
runs too) and, in alternating rounds of one run: a ticket probe alone (CreateTicket at a
fixed rate, open loop), then the same probe while a separate process simulates a fleet
(``sundesk machines simulate``: by default 5,000 machines beating every 10 s, 500/s),
then the probe beside a fleet beating 5x faster, to see where ingest stops keeping up.

The fleet runs in its own process so its client work does not slow the probe's clock.
Run: ``.venv/bin/python -m bench.telemetry [--assets 5000 --seconds 15 --rounds 2]``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import grpc

from bench.load import Result, median
from federation.config import load_config
from ops.etcd_process import EtcdServer
from ops.processes import ROOT, NodeProcess, free_ports
from sundesk.v1 import desk_pb2 as pb
from sundesk.v1 import desk_pb2_grpc

TICKETS_PER_SECOND = 50


async def probe(address: str, seconds: float, rate: float = TICKETS_PER_SECOND) -> Result:
    """CreateTicket at ``rate`` per second, open loop: latency is what a user would see."""
    latencies: list[float] = []
    errors = 0
    async with grpc.aio.insecure_channel(address) as channel:
        stub = desk_pb2_grpc.DeskStub(channel)

        async def one(i: int) -> None:
            nonlocal errors
            t0 = time.perf_counter()
            try:
                await stub.CreateTicket(
                    pb.CreateTicketRequest(title=f"bench {i}", customer="walk-in", priority=3)
                )
            except grpc.RpcError:
                errors += 1
                return
            latencies.append(time.perf_counter() - t0)

        start = time.perf_counter()
        tasks = []
        i = 0
        while (now := time.perf_counter()) - start < seconds:
            while i < (now - start) * rate:
                tasks.append(asyncio.ensure_future(one(i)))
                i += 1
            await asyncio.sleep(0.005)
        await asyncio.gather(*tasks)
    return Result(len(latencies), errors, seconds, latencies)


def simulate(
    address: str, assets: int, heartbeat: int, seconds: float, register: bool
) -> subprocess.Popen[bytes]:
    cmd = [
        sys.executable, "-m", "ops.cli", "machines", "simulate", "--node", address,
        "--region", "velizy", "--assets", str(assets), "--heartbeat", str(heartbeat),
        "--seconds", str(seconds), "--json",
    ]  # fmt: skip
    if not register:
        cmd.append("--no-register")
    return subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE)


def fleet_result(proc: subprocess.Popen[bytes]) -> dict[str, Any]:
    out, _ = proc.communicate(timeout=600)
    result: dict[str, Any] = json.loads(out)
    return result


def with_fleet(address: str, assets: int, heartbeat: int, seconds: float) -> tuple[Result, Any]:
    fleet = simulate(address, assets, heartbeat, seconds + 2, register=False)
    time.sleep(1.5)  # the fleet's process starts and reaches its pace before we measure
    ticket = asyncio.run(probe(address, seconds))
    return ticket, fleet_result(fleet)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--assets", type=int, default=5000)
    parser.add_argument("--heartbeat", type=int, default=10, help="seconds between beats")
    parser.add_argument("--seconds", type=float, default=15.0)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()

    (port,) = free_ports(1)
    address = f"127.0.0.1:{port}"
    with tempfile.TemporaryDirectory(prefix="sundesk-bench-") as tmp:
        base = Path(tmp)
        etcd = EtcdServer(base / "etcd").start()
        config = load_config(None).with_addresses(
            {"velizy": address}, etcd_endpoints=[etcd.endpoint]
        )
        config_path = base / "federation.toml"
        config_path.write_text(config.to_toml())
        node = NodeProcess(
            "velizy", address, base / "velizy", config_path, base / "node.log",
            extra_args=["--clock-start", "2026-03-04T09:30:00Z", "--metrics-port", "0"],
        )  # fmt: skip
        node.start()
        rows: list[tuple[str, Result, Any]] = []
        try:
            started = time.perf_counter()
            fleet_result(simulate(address, args.assets, args.heartbeat, 1, register=True))
            print(f"registered {args.assets} machines in {time.perf_counter() - started:.1f} s")
            for r in range(args.rounds):
                alone = asyncio.run(probe(address, args.seconds))
                rows.append(("tickets alone", alone, None))
                print(f"round {r + 1}: tickets alone            {alone.summary()}")
                for beat in (args.heartbeat, max(1, args.heartbeat // 5)):
                    ticket, fleet = with_fleet(address, args.assets, beat, args.seconds)
                    offered = args.assets / beat
                    label = f"+ {offered:.0f} heartbeats/s offered"
                    rows.append((label, ticket, fleet))
                    print(
                        f"round {r + 1}: tickets {label:<28} {ticket.summary()}  |  "
                        f"ingested {fleet['heartbeats_per_second']}/s, heartbeat p99 "
                        f"{fleet['heartbeat_p99_ms']} ms, errors {fleet['errors'] or 0}"
                    )
        finally:
            node.terminate()
            etcd.close()
    print("medians over rounds (ticket p99 ms; heartbeats ingested per second):")
    for label in dict.fromkeys(label for label, _, _ in rows):
        mine = [(t, f) for lab, t, f in rows if lab == label]
        p99 = median([t.pct(0.99) * 1000 for t, _ in mine])
        ingested = median([f["heartbeats_per_second"] for _, f in mine]) if mine[0][1] else 0
        print(f"  {label:<32} ticket p99 {p99:6.1f} ms   heartbeats {ingested:7.1f}/s")


if __name__ == "__main__":
    main()
