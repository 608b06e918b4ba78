"""`sundesk sla due`: when a case of a given tier, priority and region falls due.

Offline: it reads the federation and contracts files and computes, no node needed. Times
are ISO 8601 UTC ending in ``Z``, as stored on tickets; the human form adds the home
region's local time, since "due at 08:00Z" means little to the engineer in Tokyo.
"""

from __future__ import annotations

import argparse
import json
from datetime import datetime
from typing import Any
from zoneinfo import ZoneInfo

from federation.config import load_config
from node.contracts import PRIORITIES, load_contracts
from node.errors import InvalidArgument
from node.sla import SlaDue, sla_due
from node.tickets import iso


def parse_instant(text: str, option: str) -> datetime:
    """An ISO 8601 instant with a zone (a bare local time would be a guess)."""
    try:
        value = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    except ValueError:
        raise InvalidArgument(
            f"{option} {text!r} is not an ISO 8601 instant (e.g. 2026-03-02T09:30:00Z)"
        ) from None
    if value.tzinfo is None:
        raise InvalidArgument(f"{option} {text!r} needs a time zone, e.g. Z or +01:00")
    return value


def _priority(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value not in PRIORITIES:
        raise InvalidArgument(f"--priority {text!r} is out of range; use 1 (critical) to 4 (low)")
    return value


def _pauses(froms: list[str], tos: list[str]) -> list[tuple[datetime, datetime]]:
    if len(froms) != len(tos):
        raise InvalidArgument(
            f"{len(froms)} --pending-from but {len(tos)} --pending-to; give them in pairs"
        )
    pauses = []
    for i, (a, b) in enumerate(zip(froms, tos, strict=True), start=1):
        start, end = parse_instant(a, "--pending-from"), parse_instant(b, "--pending-to")
        if end < start:
            raise InvalidArgument(f"pause {i}: --pending-to {b} is before --pending-from {a}")
        pauses.append((start, end))
    return pauses


def run_due(args: argparse.Namespace) -> int:
    priority = _priority(args.priority)
    opened = parse_instant(args.at, "--at")
    pauses = _pauses(args.pending_from, args.pending_to)
    config = load_config(args.config)
    region = config.region(args.region)
    policy = load_contracts(args.contracts).tier(args.tier)
    calendar = policy.calendar_for(priority, region)
    due = sla_due(policy, priority, calendar, opened, pauses)
    if args.json:
        print(json.dumps(due.to_json(), indent=2))
        return 0
    coverage = policy.coverage(priority)
    hours = "business hours" if coverage.value == "business" else "24x7"
    print(
        f"{policy.tier.value} priority {priority}, {hours} of {region.name} "
        f"({region.timezone}); opened {iso(opened)}"
        + (f"; {len(pauses)} pause(s)" if pauses else "")
    )
    for line in _lines(due, ZoneInfo(region.timezone)):
        print(line)
    return 0


def _lines(due: SlaDue, zone: ZoneInfo) -> list[str]:
    rows = (("response due", due.response_due), ("resolution due", due.resolution_due))
    return [
        f"  {label:<15} {iso(at)}  ({at.astimezone(zone).strftime('%a %Y-%m-%d %H:%M %Z')})"
        for label, at in rows
    ]


def add_parser(sub: Any) -> None:
    sla = sub.add_parser("sla", help="SLA due times from the contracts")
    ssub = sla.add_subparsers(dest="sla_cmd", required=True, metavar="COMMAND")
    p = ssub.add_parser("due", help="response and resolution due times of a case")
    p.add_argument("--tier", required=True, help="bronze, silver, gold or platinum")
    # A string, so a bad value gets the one-line error rather than argparse's usage.
    p.add_argument("--priority", required=True, help="1 (critical) to 4 (low)")
    p.add_argument("--region", required=True, help="the customer's home region (name or code)")
    p.add_argument("--at", required=True, help="when the case was opened (ISO 8601)")
    p.add_argument(
        "--pending-from",
        action="append",
        default=[],
        metavar="ISO",
        help="start of a wait on the customer (repeat, paired with --pending-to)",
    )
    p.add_argument("--pending-to", action="append", default=[], metavar="ISO")
    p.add_argument("--json", action="store_true")
    p.add_argument("--config", default=None, help="federation TOML (default: shipped)")
    p.add_argument("--contracts", default=None, help="contracts TOML (default: shipped)")
    p.set_defaults(func=run_due)
