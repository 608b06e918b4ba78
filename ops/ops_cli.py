"""`sundesk ops ...`: what global ops look at — one ticket's trace, and the federation at a
glance (health, queue owners, replication lag and backlog between regions)."""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import grpc
from rich.console import Console, Group
from rich.table import Table

from node.errors import FailedPrecondition, NotFound
from ops.client import Client
from ops.collector import SpanStore, render_waterfall, ticket_trace
from ops.credentials import sundesk_home
from ops.local import LocalFederation, operator_credentials, pid_alive
from sundesk.v1 import contracts_pb2 as cpb
from sundesk.v1 import contracts_pb2_grpc, sun_pb2_grpc
from sundesk.v1 import sun_pb2 as spb


def _trace_db(args: argparse.Namespace) -> Path:
    if args.db:
        return Path(args.db)
    state = LocalFederation(Path(args.dir)).load()
    if "collector" not in state:
        raise FailedPrecondition("this local federation runs without the embedded collector")
    return Path(state["collector"]["db"])


def cmd_trace(args: argparse.Namespace) -> int:
    db = _trace_db(args)
    if not db.exists():
        raise NotFound(f"no trace database at {db}")
    store = SpanStore(db)
    try:
        trace = ticket_trace(store, args.code.strip().upper())
    finally:
        store.close()
    if not trace["spans"]:
        raise NotFound(f"no trace recorded for {args.code}; spans reach the collector within ~2 s")
    if args.json:
        print(json.dumps(trace, indent=2))
    else:
        print(render_waterfall(trace))
    return 0


def gather(base: Path) -> dict[str, Any]:
    """Everything the status screen shows, from each node's Federation.Status."""
    fed = LocalFederation(base)
    state = fed.load()
    regions: dict[str, Any] = {}
    for region, info in state["nodes"].items():
        node = fed.node_process(state, region)
        st = node.status(timeout=1.0) if pid_alive(info["pid"]) else None
        regions[region] = {
            "healthy": st is not None,
            "tickets": st.tickets if st else None,
            "digest": st.digest[:12] if st else None,
            "peers": {
                p: {"connected": ps.connected, "backlog": ps.backlog, "lag": ps.lag_seconds}
                for p, ps in (st.peers.items() if st else [])
            },
        }
    owners: list[dict[str, Any]] = []
    breaches: list[dict[str, Any]] = []
    lease = ""
    for region, r in regions.items():
        if not r["healthy"]:
            continue
        try:
            creds = operator_credentials(Path(state["certs"]) if state.get("certs") else None)
            with Client(state["nodes"][region]["address"], creds) as c:
                sun = sun_pb2_grpc.SunStub(c.channel).GetStatus(spb.SunStatusRequest(), timeout=2)
                listed = contracts_pb2_grpc.ContractsStub(c.channel).ListBreaches(
                    cpb.ListBreachesRequest(), timeout=2
                )
        except grpc.RpcError:
            continue
        # Every region holds every record (replicated): one node's list is the federation's.
        breaches = [
            {
                "code": b.code,
                "queue": b.queue,
                "tier": b.tier,
                "target": b.target,
                "state": b.state,
                "due": b.due,
                "at": b.at,
                "by": f"{b.region} (epoch {b.epoch})",
                "level": b.escalation_level,
            }
            for b in listed.breaches
        ]
        lease = f"{region}: lease {sun.lease_state}, clock {sun.now}"
        owners = [
            {
                "queue": q.queue,
                "owner": q.owner,
                "kind": q.kind,
                "epoch": q.epoch,
                "since": q.since,
                "next": f"{q.next_owner} at {q.next_at}" if q.next_owner else "",
            }
            for q in sun.queues
        ]
        break
    return {
        "regions": regions,
        "owners": owners,
        "breaches": breaches,
        "seen_by": lease,
        "at": time.strftime("%Y-%m-%d %H:%M:%S"),
    }


def render_status(view: dict[str, Any]) -> Group:
    regions = view["regions"]
    health = Table(title=f"Sundesk federation — {view['at']}", show_edge=False)
    for col in ("region", "health", "tickets", "digest"):
        health.add_column(col)
    for region, r in regions.items():
        health.add_row(
            region,
            "[green]up[/green]" if r["healthy"] else "[red]DOWN[/red]",
            str(r["tickets"] if r["tickets"] is not None else "-"),
            r["digest"] or "-",
        )
    owners = Table(
        title=f"queue owners ({view.get('seen_by') or 'no etcd session'})", show_edge=False
    )
    for col in ("queue", "owner", "kind", "epoch", "since", "next handoff"):
        owners.add_column(col)
    for o in view.get("owners", []):
        owners.add_row(
            o["queue"],
            o["owner"] or "[red]none[/red]",
            o["kind"],
            str(o["epoch"]),
            o["since"],
            o["next"],
        )
    links = Table(
        title="replication: lag (s) / backlog (ops the peer lacks), row → column", show_edge=False
    )
    names = list(regions)
    links.add_column("from \\ to")
    for name in names:
        links.add_column(name)
    for src in names:
        row = []
        for dst in names:
            if src == dst:
                row.append("·")
                continue
            peer = regions[src]["peers"].get(dst)
            if peer is None:
                row.append("?")
            elif not peer["connected"]:
                row.append(f"[red]cut {peer['backlog']}[/red]")
            else:
                # src's view of dst: dst's backlog, and the lag of dst's changes at src
                lag = regions[src]["peers"][dst]["lag"]
                row.append(f"{lag:.3f} / {peer['backlog']}")
        links.add_row(src, *row)
    return Group(health, owners, links, _breach_table(view.get("breaches", [])))


MAX_BREACH_ROWS = 15


def _breach_table(breaches: list[dict[str, Any]]) -> Table:
    missed = sum(b["state"] == "breached" for b in breaches)
    table = Table(
        title=f"SLA: {missed} missed, {len(breaches) - missed} at risk (latest first)",
        show_edge=False,
    )
    for col in ("ticket", "queue", "tier", "target", "state", "due", "detected by", "level"):
        table.add_column(col)
    for b in list(reversed(breaches))[:MAX_BREACH_ROWS]:
        state = "[red]missed[/red]" if b["state"] == "breached" else "[yellow]at risk[/yellow]"
        table.add_row(
            b["code"],
            b["queue"],
            b["tier"],
            b["target"],
            state,
            b["due"],
            b["by"],
            f"L{b['level']}",
        )
    return table


def cmd_status(args: argparse.Namespace) -> int:
    base = Path(args.dir)
    console = Console()
    if args.json:
        print(json.dumps(gather(base), indent=2))
        return 0
    if not args.watch:
        console.print(render_status(gather(base)))
        return 0
    from rich.live import Live

    with Live(render_status(gather(base)), console=console, refresh_per_second=2) as live:
        while True:
            time.sleep(args.interval)
            live.update(render_status(gather(base)))


def add_parser(sub: Any) -> None:
    ops = sub.add_parser("ops", help="global ops: traces and the federation at a glance")
    osub = ops.add_subparsers(dest="ops_cmd", required=True, metavar="COMMAND")
    p = osub.add_parser("trace", help="one ticket's trace as a waterfall")
    p.add_argument("code")
    p.add_argument("--db", default="", help="the collector's SQLite file")
    p.add_argument("--dir", default=str(sundesk_home()), help="local federation directory")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_trace)
    p = osub.add_parser("status", help="health, owners, lag and backlog on one screen")
    p.add_argument("--dir", default=str(sundesk_home()))
    p.add_argument("--watch", action="store_true", help="refresh until Ctrl-C")
    p.add_argument("--interval", type=float, default=1.0)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_status)
