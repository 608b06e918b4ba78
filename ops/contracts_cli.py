"""`sundesk customer ...` and `sundesk asset ...`: register and list the replicated
customers and their machines on any node."""

from __future__ import annotations

import argparse
import json
from typing import Any

from google.protobuf.json_format import MessageToDict

from node.convert import TIER_FROM_PB, TIER_TO_PB
from node.tickets import Tier
from ops.client import Client, connect, print_table
from sundesk.v1 import contracts_pb2 as cpb
from sundesk.v1 import contracts_pb2_grpc

TIER_BY_NAME = {k.value: v for k, v in TIER_TO_PB.items()}


def stub(c: Client) -> contracts_pb2_grpc.ContractsStub:
    return contracts_pb2_grpc.ContractsStub(c.channel)


def as_dict(msg: Any) -> dict[str, Any]:
    out: dict[str, Any] = MessageToDict(
        msg, preserving_proto_field_name=True, always_print_fields_with_no_presence=True
    )
    return out


def customer_json(c: cpb.Customer) -> dict[str, Any]:
    tier = TIER_FROM_PB.get(c.tier)
    return {
        "id": c.id,
        "name": c.name,
        "home_region": c.home_region,
        "tier": tier.value if tier else "",
    }


def cmd_customer_add(args: argparse.Namespace) -> int:
    msg = cpb.Customer(
        id=args.id, name=args.name, home_region=args.region, tier=TIER_BY_NAME[args.tier]
    )
    with connect(args) as c:
        got = stub(c).RegisterCustomer(
            cpb.RegisterCustomerRequest(customer=msg), timeout=args.timeout
        )
    if args.json:
        print(json.dumps(customer_json(got), indent=2))
    else:
        print(f"customer {got.id} registered ({customer_json(got)['tier']}, {got.home_region})")
    return 0


def cmd_customer_list(args: argparse.Namespace) -> int:
    with connect(args) as c:
        resp = stub(c).ListCustomers(
            cpb.ListCustomersRequest(home_region=args.region), timeout=args.timeout
        )
    rows = [customer_json(x) for x in resp.customers]
    if args.json:
        print(json.dumps({"customers": rows}, indent=2))
        return 0
    print_table(
        ["id", "name", "home region", "tier"],
        [[r["id"], r["name"], r["home_region"], r["tier"]] for r in rows],
    )
    return 0


def cmd_asset_add(args: argparse.Namespace) -> int:
    msg = cpb.Asset(
        id=args.id,
        customer=args.customer,
        model=args.model,
        serial=args.serial,
        monitored=args.monitored,
        heartbeat_seconds=args.heartbeat,
    )
    with connect(args) as c:
        got = stub(c).RegisterAsset(cpb.RegisterAssetRequest(asset=msg), timeout=args.timeout)
    if args.json:
        print(json.dumps(as_dict(got), indent=2))
    else:
        watch = f", calls home every {got.heartbeat_seconds} s" if got.monitored else ""
        print(f"asset {got.id} registered for {got.customer}{watch}")
    return 0


def cmd_asset_list(args: argparse.Namespace) -> int:
    with connect(args) as c:
        resp = stub(c).ListAssets(
            cpb.ListAssetsRequest(monitored_only=args.monitored, customer=args.customer),
            timeout=args.timeout,
        )
    if args.json:
        print(json.dumps({"assets": [as_dict(a) for a in resp.assets]}, indent=2))
        return 0
    print_table(
        ["id", "customer", "model", "serial", "monitored", "heartbeat"],
        [
            [
                a.id,
                a.customer,
                a.model,
                a.serial,
                "yes" if a.monitored else "no",
                f"{a.heartbeat_seconds} s" if a.monitored else "-",
            ]
            for a in resp.assets
        ],
    )
    return 0


def _rate(r: cpb.Rate) -> dict[str, Any]:
    return {"count": r.count, "total": r.total, "rate": round(r.rate, 4) if r.total else None}


def stats_json(s: cpb.StatsReport) -> dict[str, Any]:
    def maybe(value: float, present: bool) -> float | None:
        return round(value, 3) if present else None

    return {
        "region": s.region or None,
        "from": getattr(s, "from") or None,
        "to": s.to or None,
        "opened": s.opened,
        "resolved": s.resolved,
        "open_now": s.open_now,
        "responded": s.responded,
        "mean_time_to_respond_seconds": maybe(s.mean_time_to_respond_seconds, s.responded > 0),
        "mean_time_to_resolve_seconds": maybe(s.mean_time_to_resolve_seconds, s.resolved > 0),
        "response_sla": _rate(s.response_sla),
        "resolution_sla": _rate(s.resolution_sla),
        "first_contact_resolution": _rate(s.first_contact_resolution),
        "definitive_resolution": _rate(s.definitive_resolution),
        "satisfaction": {
            "mean": maybe(s.satisfaction_mean, s.satisfaction_count > 0),
            "count": s.satisfaction_count,
        },
        "sla_breaches": s.breaches,
        "machine_first": _rate(s.machine_first),
        "causes_total": s.causes_total,
        "pareto": [
            {
                "cause": c.cause,
                "count": c.count,
                "percent": round(c.percent, 2),
                "cumulative_percent": round(c.cumulative_percent, 2),
            }
            for c in s.pareto
        ],
    }


def _pct(rate: dict[str, Any]) -> str:
    if rate["rate"] is None:
        return "-"
    return f"{rate['rate'] * 100:.1f}% ({rate['count']}/{rate['total']})"


def _hours(seconds: float | None) -> str:
    return "-" if seconds is None else f"{seconds / 3600:.2f} h"


def cmd_stats(args: argparse.Namespace) -> int:
    req = cpb.StatsRequest(region=args.region, to=args.to)
    setattr(req, "from", args.start)  # "from" is a Python keyword
    with connect(args) as c:
        got = stub(c).Stats(req, timeout=args.timeout)
    d = stats_json(got)
    if args.json:
        print(json.dumps(d, indent=2))
        return 0
    period = f"{d['from'] or 'the beginning'} to {d['to'] or 'now'}"
    sat = d["satisfaction"]
    print_table(
        ["figure", "value"],
        [
            ["opened", d["opened"]],
            ["resolved", d["resolved"]],
            ["open now", d["open_now"]],
            ["mean time to respond", _hours(d["mean_time_to_respond_seconds"])],
            ["mean time to resolve", _hours(d["mean_time_to_resolve_seconds"])],
            ["response SLA met", _pct(d["response_sla"])],
            ["resolution SLA met", _pct(d["resolution_sla"])],
            ["SLA breaches recorded", d["sla_breaches"]],
            ["first-contact resolution", _pct(d["first_contact_resolution"])],
            ["definitive resolution", _pct(d["definitive_resolution"])],
            ["incidents machines opened first", _pct(d["machine_first"])],
            [
                "satisfaction",
                f"{sat['mean']:.2f} / 5 ({sat['count']} rated)" if sat["count"] else "-",
            ],
        ],
        title=f"{d['region'] or 'all regions'}, {period}",
    )
    if d["pareto"]:
        print_table(
            ["cause", "tickets", "%", "cumulative %"],
            [
                [c["cause"], c["count"], f"{c['percent']:.1f}", f"{c['cumulative_percent']:.1f}"]
                for c in d["pareto"]
            ],
            title=f"causes of 80% of {d['causes_total']} resolved tickets",
        )
    return 0


def cmd_engineer_list(args: argparse.Namespace) -> int:
    with connect(args) as c:
        resp = stub(c).ListEngineers(
            cpb.ListEngineersRequest(region=args.region), timeout=args.timeout
        )
    if args.json:
        print(json.dumps({"engineers": [as_dict(e) for e in resp.engineers]}, indent=2))
        return 0
    print_table(["name", "region", "level"], [[e.name, e.region, e.level] for e in resp.engineers])
    return 0


def add_parser(sub: Any, common: argparse.ArgumentParser) -> None:
    eng = sub.add_parser("engineer", help="the engineers' roster")
    esub = eng.add_subparsers(dest="engineer_cmd", required=True, metavar="COMMAND")
    p = esub.add_parser("list", parents=[common], help="engineers and their levels")
    p.add_argument("--region", default="")
    p.set_defaults(func=cmd_engineer_list)

    p = sub.add_parser("stats", parents=[common], help="support-centre statistics of a period")
    p.add_argument("--region", default="", help="home region of the tickets (default: all)")
    p.add_argument("--from", dest="start", default="", help="YYYY-MM-DD or ISO instant (UTC)")
    p.add_argument("--to", default="", help="exclusive end, YYYY-MM-DD or ISO instant")
    p.set_defaults(func=cmd_stats)

    cust = sub.add_parser("customer", help="register and list customers")
    csub = cust.add_subparsers(dest="customer_cmd", required=True, metavar="COMMAND")
    p = csub.add_parser("add", parents=[common], help="register a customer")
    p.add_argument("id", help="lowercase id, e.g. acme-paris")
    p.add_argument("--name", required=True)
    p.add_argument("--region", required=True, help="home region, e.g. velizy")
    p.add_argument("--tier", required=True, choices=[t.value for t in Tier])
    p.set_defaults(func=cmd_customer_add)
    p = csub.add_parser("list", parents=[common], help="customers, by id")
    p.add_argument("--region", default="", help="only those homed in this region")
    p.set_defaults(func=cmd_customer_list)

    asset = sub.add_parser("asset", help="register and list customers' machines")
    asub = asset.add_subparsers(dest="asset_cmd", required=True, metavar="COMMAND")
    p = asub.add_parser("add", parents=[common], help="register a machine of a customer")
    p.add_argument("id", help="lowercase id, e.g. acme-scanner-1")
    p.add_argument("--customer", required=True)
    p.add_argument("--model", required=True)
    p.add_argument("--serial", required=True)
    p.add_argument("--monitored", action="store_true", help="it calls home")
    p.add_argument("--heartbeat", type=int, default=0, help="seconds between heartbeats")
    p.set_defaults(func=cmd_asset_add)
    p = asub.add_parser("list", parents=[common], help="machines, by id")
    p.add_argument("--customer", default="")
    p.add_argument("--monitored", action="store_true", help="only those that call home")
    p.set_defaults(func=cmd_asset_list)
