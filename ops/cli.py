"""`sundesk`: the one command line of Sundesk.

Errors print as one line on stderr and exit non-zero; `--json` output is for scripts.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING

import grpc

from node.clock import Clock, ScaledClock, SystemClock
from node.errors import SundeskError
from node.group_pacing import DEFAULT_DELAY_S
from ops import (
    certs_cli,
    contracts_cli,
    credentials,
    demo,
    local,
    machines_cli,
    ops_cli,
    sla_cli,
    sun_cli,
    ticket_cli,
)
from ops.client import default_node, rpc_error_line

if TYPE_CHECKING:
    from node.limits import NodeLimits
    from node.trust import NodeTrust


def _clock(args: argparse.Namespace) -> Clock:
    if not args.clock_start:
        return SystemClock()
    try:
        start = datetime.fromisoformat(args.clock_start.replace("Z", "+00:00"))
    except ValueError:
        raise SundeskError(
            f"--clock-start {args.clock_start!r} is not an ISO 8601 instant "
            "(e.g. 2026-03-02T06:00:00Z)"
        ) from None
    if start.tzinfo is None:
        raise SundeskError("--clock-start needs a time zone, e.g. 2026-03-02T06:00:00Z")
    if getattr(args, "sla_period", 1.0) <= 0:
        raise SundeskError(f"--sla-period {args.sla_period} must be positive")
    if args.speed <= 0:
        raise SundeskError(f"--speed {args.speed} must be positive")
    return ScaledClock(start, args.speed, origin_real=args.clock_origin)


def _peers(items: list[str]) -> dict[str, str]:
    peers = {}
    for item in items:
        region, sep, address = item.partition("=")
        if not sep or not address:
            raise SundeskError(f"--peer {item!r} must look like REGION=HOST:PORT")
        peers[region] = address
    return peers


def _trust(args: argparse.Namespace, region: str) -> NodeTrust | None:
    from node.trust import load_node_trust

    if args.insecure and args.tls_dir:
        raise SundeskError("--insecure and --tls-dir contradict each other; choose one")
    if args.insecure:
        return None
    if not args.tls_dir:
        raise SundeskError(
            "a node serves mTLS by default: give --tls-dir DIR (create it with "
            "`sundesk certs init --dir DIR`), or --insecure for a plaintext test node"
        )
    return load_node_trust(Path(args.tls_dir), region)


def _limits(args: argparse.Namespace) -> NodeLimits:
    from node.limits import NodeLimits

    defaults = NodeLimits()
    return NodeLimits(
        write_rate_per_s=args.write_rate or defaults.write_rate_per_s,
        write_burst=args.write_burst or defaults.write_burst,
    )


def _group_delay(ms: float) -> float:
    if not 0 <= ms <= 1000:
        raise SundeskError(f"--group-commit-delay-ms {ms:g} is out of range; use 0 to 1000")
    return ms / 1000


def cmd_node(args: argparse.Namespace) -> int:
    from federation.config import load_config
    from node.server import NodeOptions, run_node

    config = load_config(args.config)
    if args.telemetry_period <= 0:
        raise SundeskError(f"--telemetry-period {args.telemetry_period} must be positive")
    if not 1 <= args.missed_heartbeats <= 100:
        raise SundeskError(f"--missed-heartbeats {args.missed_heartbeats} must be 1 to 100")
    group_delay_s = _group_delay(args.group_commit_delay_ms)
    options = NodeOptions(
        region=config.region(args.region).name,
        listen=args.listen,
        data_dir=Path(args.data_dir or f"var/{config.region(args.region).name}"),
        metrics_port=args.metrics_port,
        otlp_endpoint=args.otlp_endpoint,
        observability=not args.no_observability,
        etcd_endpoints=tuple(args.etcd.split(",")) if args.etcd else None,
        peer_addresses=_peers(args.peer),
        contracts_path=Path(args.contracts) if args.contracts else None,
        sla_period=args.sla_period,
        telemetry_period=args.telemetry_period,
        missed_heartbeats=args.missed_heartbeats,
        roster_path=Path(args.roster) if args.roster else None,
        trust=_trust(args, config.region(args.region).name),
        limits=_limits(args),
        group_commit_delay_s=group_delay_s,
    )
    asyncio.run(run_node(config, options, _clock(args)))
    return 0


def cmd_plan(args: argparse.Namespace) -> int:
    from federation.config import load_config
    from ops.plan_cli import run_plan

    try:
        start = datetime.strptime(args.start, "%Y-%m-%d").date()
    except ValueError:
        raise SundeskError(f"--from {args.start!r} is not a date; use YYYY-MM-DD") from None
    if not 1 <= args.days <= 366:
        raise SundeskError(f"--days {args.days} is out of range; plan 1 to 366 days")
    print(run_plan(load_config(args.config), start, args.days, args.json))
    return 0


def build_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--node", default=default_node(), help="HOST:PORT of a node")
    common.add_argument("--json", action="store_true", help="machine-readable output")
    common.add_argument("--timeout", type=float, default=10.0, help="seconds per call")
    credentials.add_flags(common)

    parser = argparse.ArgumentParser(prog="sundesk", description="federated support desk")
    parser.add_argument("-v", "--verbose", action="store_true")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("node", help="run one regional node")
    p.add_argument("--region", required=True, help="region name or code, e.g. velizy")
    p.add_argument("--listen", default="", help="HOST:PORT (default: the region's address)")
    p.add_argument("--data-dir", default="", help="where the store lives (default var/REGION)")
    p.add_argument("--config", default=None, help="federation TOML (default: shipped)")
    p.add_argument("--contracts", default=None, help="contracts TOML (default: shipped)")
    p.add_argument("--roster", default=None, help="engineers TOML (default: shipped)")
    p.add_argument(
        "--sla-period", type=float, default=1.0, help="seconds between the owner's SLA scans"
    )
    p.add_argument(
        "--telemetry-period",
        type=float,
        default=2.0,
        help="seconds between heartbeat replication flushes and the owner's silence scans",
    )
    p.add_argument(
        "--missed-heartbeats",
        type=int,
        default=3,
        help="heartbeat intervals a monitored machine may miss before it is declared silent",
    )
    p.add_argument("--metrics-port", type=int, default=None)
    p.add_argument("--otlp-endpoint", default=None, help="HOST:PORT of an OTLP/gRPC receiver")
    p.add_argument("--etcd", default="", help="etcd endpoints HOST:PORT[,...] (default: config)")
    p.add_argument(
        "--no-observability",
        action="store_true",
        help="no RPC metrics and no spans (for measuring their cost)",
    )
    p.add_argument("--clock-start", default="", help="simulated clock start (ISO 8601)")
    p.add_argument("--speed", type=float, default=1.0, help="simulated seconds per second")
    p.add_argument(
        "--peer",
        action="append",
        default=[],
        metavar="REGION=HOST:PORT",
        help="dial this address to reach REGION (e.g. through a WAN proxy)",
    )
    p.add_argument("--clock-origin", type=float, default=None, help=argparse.SUPPRESS)
    p.add_argument(
        "--tls-dir",
        default="",
        help="certs directory (`sundesk certs init`): mTLS, tokens, signed operations",
    )
    p.add_argument(
        "--insecure",
        action="store_true",
        help="plaintext, no tokens, unsigned operations: for tests only",
    )
    p.add_argument(
        "--group-commit-delay-ms",
        type=float,
        default=DEFAULT_DELAY_S * 1000,
        help="how long a commit group may wait for concurrent writers (0: never wait)",
    )
    p.add_argument("--write-rate", type=float, default=None, help="writes/s per caller")
    p.add_argument("--write-burst", type=int, default=None, help="write burst per caller")
    p.set_defaults(func=cmd_node)

    ticket_cli.add_parser(sub, common)
    sun_cli.add_parser(sub, common)
    sla_cli.add_parser(sub)
    contracts_cli.add_parser(sub, common)
    machines_cli.add_parser(sub)
    local.add_parser(sub)
    ops_cli.add_parser(sub)
    certs_cli.add_parser(sub)
    demo.add_parser(sub)

    p = sub.add_parser("plan", help="who owns each queue, when")
    p.add_argument("--from", dest="start", required=True, help="YYYY-MM-DD (UTC)")
    p.add_argument("--days", type=int, default=1)
    p.add_argument("--config", default=None)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_plan)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    try:
        code: int = args.func(args)
    except grpc.RpcError as err:
        print(rpc_error_line(err, getattr(args, "node", "")), file=sys.stderr)
        return 1
    except SundeskError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        # The reader (e.g. `| head`) went away: not an error of ours, and no traceback.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 0
    return code


if __name__ == "__main__":
    sys.exit(main())
