"""`sundesk customer ...` and `sundesk asset ...`: register and list the replicated
customers and their machines on any node."""

from __future__ import annotations

import argparse
import json
from typing import Any

from google.protobuf.json_format import MessageToDict

from node.convert import TIER_FROM_PB, TIER_TO_PB
from node.tickets import Tier
from ops.client import Client, print_table
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
    with Client(args.node) as c:
        got = stub(c).RegisterCustomer(
            cpb.RegisterCustomerRequest(customer=msg), timeout=args.timeout
        )
    if args.json:
        print(json.dumps(customer_json(got), indent=2))
    else:
        print(f"customer {got.id} registered ({customer_json(got)['tier']}, {got.home_region})")
    return 0


def cmd_customer_list(args: argparse.Namespace) -> int:
    with Client(args.node) as c:
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
    with Client(args.node) as c:
        got = stub(c).RegisterAsset(cpb.RegisterAssetRequest(asset=msg), timeout=args.timeout)
    if args.json:
        print(json.dumps(as_dict(got), indent=2))
    else:
        watch = f", calls home every {got.heartbeat_seconds} s" if got.monitored else ""
        print(f"asset {got.id} registered for {got.customer}{watch}")
    return 0


def cmd_asset_list(args: argparse.Namespace) -> int:
    with Client(args.node) as c:
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


def add_parser(sub: Any, common: argparse.ArgumentParser) -> None:
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
