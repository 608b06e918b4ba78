"""`sundesk machines simulate`: a fleet of machines calling home to one region."""

from __future__ import annotations

import argparse
import asyncio
import json
from typing import Any

from grpc import aio

from node.errors import SundeskError
from node.tickets import Tier
from ops.client import print_table
from ops.machines import asset_ids, register_fleet, run_fleet, tier_by_name


def _address(args: argparse.Namespace) -> str:
    if args.node:
        return str(args.node)
    from federation.config import load_config

    return load_config(args.config).region(args.region).address


def cmd_simulate(args: argparse.Namespace) -> int:
    if not 1 <= args.assets <= 100_000:
        raise SundeskError(f"--assets {args.assets} must be 1 to 100000")
    if args.alarm_rate < 0:
        raise SundeskError(f"--alarm-rate {args.alarm_rate} must be 0 or more (alarms/s)")
    if not 1 <= args.heartbeat <= 86_400:
        raise SundeskError(f"--heartbeat {args.heartbeat} must be 1 to 86400 seconds")
    if args.seconds <= 0:
        raise SundeskError(f"--seconds {args.seconds} must be positive")
    address = _address(args)

    async def run() -> dict[str, Any]:
        async with aio.insecure_channel(address) as channel:
            if args.no_register:
                assets = asset_ids(args.region, args.assets)
            else:
                assets = await register_fleet(
                    channel, args.region, args.assets, args.heartbeat, tier_by_name(args.tier)
                )
            report = await run_fleet(
                channel, assets, args.heartbeat, args.seconds, args.alarm_rate, args.seed
            )
        lat = sorted(report.latencies)
        return {
            "node": address,
            "assets": len(assets),
            "seconds": round(report.seconds, 2),
            "heartbeats": report.heartbeats,
            "heartbeats_per_second": round(report.heartbeats / report.seconds, 1),
            "heartbeat_p99_ms": round(lat[int(0.99 * (len(lat) - 1))] * 1000, 2) if lat else None,
            "dropped": report.dropped,
            "alarms": report.alarms,
            "alarm_tickets": sorted(report.tickets),
            "opened_here": report.opened,
            "errors": report.errors,
        }

    d = asyncio.run(run())
    if args.json:
        print(json.dumps(d, indent=2))
        return 0
    print_table(
        ["figure", "value"],
        [
            ["assets", d["assets"]],
            ["heartbeats", f"{d['heartbeats']} ({d['heartbeats_per_second']}/s)"],
            ["heartbeat p99", f"{d['heartbeat_p99_ms']} ms"],
            ["not sent (node behind)", d["dropped"]],
            ["alarms", d["alarms"]],
            ["tickets they count on", len(d["alarm_tickets"])],
            ["errors", ", ".join(f"{k} {v}" for k, v in d["errors"].items()) or "-"],
        ],
        title=f"machines calling {args.region} ({d['node']}) for {d['seconds']} s",
    )
    return 1 if d["errors"] else 0


def add_parser(sub: Any) -> None:
    machines = sub.add_parser("machines", help="simulated machines calling home")
    msub = machines.add_subparsers(dest="machines_cmd", required=True, metavar="COMMAND")
    p = msub.add_parser("simulate", help="register a fleet and send heartbeats and alarms")
    p.add_argument("--assets", type=int, required=True, help="how many machines")
    p.add_argument("--region", required=True, help="region they call and their customer's home")
    p.add_argument("--alarm-rate", type=float, default=0.0, help="alarms per second, fleet-wide")
    p.add_argument("--heartbeat", type=int, default=10, help="seconds between each one's beats")
    p.add_argument("--seconds", type=float, default=30.0, help="how long to run")
    p.add_argument("--tier", default="platinum", choices=[t.value for t in Tier])
    p.add_argument("--seed", type=int, default=7, help="seed of the alarm generator")
    p.add_argument("--node", default="", help="HOST:PORT (default: the region's address)")
    p.add_argument("--config", default=None, help="federation TOML (default: shipped)")
    p.add_argument(
        "--no-register", action="store_true", help="the fleet is registered already (benchmarks)"
    )
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=cmd_simulate)
