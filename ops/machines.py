"""A fleet of simulated machines calling home, for the CLI, the demo and the benchmark.

Each machine beats every ``heartbeat_seconds`` (real seconds), the fleet's beats spread
evenly over the interval so a node sees a steady rate, not a wave; alarms come at
``alarm_rate`` per second across the fleet, drawn from a seeded generator, with a few
codes per machine so repeats are counted as occurrences.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Coroutine
from dataclasses import dataclass, field
from typing import Any

import grpc
from grpc import aio

from node.convert import TIER_TO_PB
from node.tickets import Tier
from sundesk.v1 import contracts_pb2 as cpb
from sundesk.v1 import contracts_pb2_grpc, telemetry_pb2_grpc
from sundesk.v1 import desk_pb2 as pb
from sundesk.v1 import telemetry_pb2 as tpb

ALARM_CODES = ("E-101", "E-204", "W-17")
SEVERITIES = (
    tpb.ALARM_SEVERITY_CRITICAL,
    tpb.ALARM_SEVERITY_MAJOR,
    tpb.ALARM_SEVERITY_MINOR,
    tpb.ALARM_SEVERITY_WARNING,
)
TICK = 0.02  # scheduling grain: 50 sends a second per machine slot at most


@dataclass
class FleetReport:
    heartbeats: int = 0
    alarms: int = 0
    tickets: set[str] = field(default_factory=set)
    opened: int = 0
    errors: dict[str, int] = field(default_factory=dict)
    dropped: int = 0  # heartbeats not sent: ``concurrency`` calls were already waiting
    latencies: list[float] = field(default_factory=list)  # heartbeat round trips, seconds
    seconds: float = 0.0

    def error(self, err: grpc.RpcError) -> None:
        name = err.code().name if hasattr(err, "code") else "ERROR"
        self.errors[name] = self.errors.get(name, 0) + 1


def asset_ids(region: str, count: int) -> list[str]:
    return [f"sim-{region}-{i:05d}" for i in range(count)]


async def register_fleet(
    channel: aio.Channel, region: str, count: int, heartbeat_seconds: int, tier: pb.ContractTier
) -> list[str]:
    """The simulator's customer (homed in ``region``) and its machines; re-running with the
    same arguments registers nothing new."""
    stub = contracts_pb2_grpc.ContractsStub(channel)
    customer = f"sim-{region}"
    await stub.RegisterCustomer(
        cpb.RegisterCustomerRequest(
            customer=cpb.Customer(
                id=customer, name=f"Simulated fleet ({region})", home_region=region, tier=tier
            )
        )
    )
    ids = asset_ids(region, count)
    sem = asyncio.Semaphore(32)

    async def one(asset: str) -> None:
        async with sem:
            await stub.RegisterAsset(
                cpb.RegisterAssetRequest(
                    asset=cpb.Asset(
                        id=asset,
                        customer=customer,
                        model="SIM-1",
                        serial=asset.upper(),
                        monitored=True,
                        heartbeat_seconds=heartbeat_seconds,
                    )
                )
            )

    await asyncio.gather(*(one(a) for a in ids))
    return ids


async def run_fleet(
    channel: aio.Channel,
    assets: list[str],
    heartbeat_seconds: float,
    duration: float,
    alarm_rate: float = 0.0,
    seed: int = 7,
    silent: frozenset[str] = frozenset(),
    concurrency: int = 128,
) -> FleetReport:
    """Send heartbeats (and alarms) for ``duration`` real seconds; ``silent`` machines
    send nothing (to show a silent-machine ticket)."""
    stub = telemetry_pb2_grpc.TelemetryStub(channel)
    rng = random.Random(seed)
    report = FleetReport()
    sem = asyncio.Semaphore(concurrency)
    pending: set[asyncio.Task[None]] = set()
    n = len(assets)
    start = time.perf_counter()

    in_flight = 0

    async def beat(asset: str) -> None:
        nonlocal in_flight
        in_flight += 1
        try:
            await send_beat(asset)
        finally:
            in_flight -= 1

    async def send_beat(asset: str) -> None:
        async with sem:
            t0 = time.perf_counter()
            try:
                await stub.Heartbeat(tpb.HeartbeatRequest(asset=asset, diagnostics={"ok": "1"}))
            except grpc.RpcError as err:
                report.error(err)
                return
            report.latencies.append(time.perf_counter() - t0)
            report.heartbeats += 1

    async def alarm(asset: str, code: str, severity: tpb.AlarmSeverity) -> None:
        async with sem:
            try:
                reply = await stub.Alarm(
                    tpb.AlarmRequest(
                        asset=asset, code=code, severity=severity, message="simulated alarm"
                    )
                )
            except grpc.RpcError as err:
                report.error(err)
                return
            report.alarms += 1
            report.tickets.add(reply.ticket)
            report.opened += reply.opened

    def spawn(coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.ensure_future(coro)
        pending.add(task)
        task.add_done_callback(pending.discard)

    sent = 0  # heartbeats scheduled so far, fleet-wide
    alarm_debt = 0.0
    last = start
    while (now := time.perf_counter()) - start < duration:
        due = int((now - start) / heartbeat_seconds * n) + 1 if n else 0
        while sent < due:
            asset = assets[sent % n]
            if asset in silent:
                pass
            elif in_flight >= concurrency:
                # A node that cannot keep up must show as a lower ingest rate, not as a
                # queue in this process that grows for as long as the run lasts.
                report.dropped += 1
            else:
                spawn(beat(asset))
            sent += 1
        alarm_debt += (now - last) * alarm_rate
        last = now
        while alarm_debt >= 1.0:
            alarm_debt -= 1.0
            asset = rng.choice(assets)
            spawn(alarm(asset, rng.choice(ALARM_CODES), rng.choice(SEVERITIES)))
        await asyncio.sleep(TICK)
    if pending:
        await asyncio.gather(*pending)
    report.seconds = time.perf_counter() - start
    return report


def tier_by_name(name: str) -> pb.ContractTier:
    return TIER_TO_PB[Tier(name)]
