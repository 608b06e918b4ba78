"""`sundesk ticket ...`: create, show, list, comment, and the lifecycle verbs."""

from __future__ import annotations

import argparse
import json
from typing import Any

from google.protobuf.json_format import MessageToDict

from node.convert import (
    KIND_FROM_PB,
    KIND_TO_PB,
    STATE_FROM_PB,
    STATE_TO_PB,
    TIER_FROM_PB,
    TIER_TO_PB,
    ts_to_iso,
)
from node.errors import SundeskError
from node.tickets import Kind, State, Tier
from ops.client import connect, print_table
from sundesk.v1 import desk_pb2 as pb

KIND_BY_NAME = {k.value: v for k, v in KIND_TO_PB.items()}
TIER_BY_NAME = {k.value: v for k, v in TIER_TO_PB.items()}
STATE_BY_NAME = {k.value: v for k, v in STATE_TO_PB.items()}

# verb -> target state of the lifecycle (assign is special: it names the assignee).
VERBS = {
    "start": State.IN_PROGRESS,
    "pend": State.PENDING_CUSTOMER,
    "resolve": State.RESOLVED,
    "close": State.CLOSED,
    "reopen": State.IN_PROGRESS,
}


def ticket_json(t: pb.Ticket) -> dict[str, Any]:
    return {
        "code": t.code,
        "title": t.title,
        "description": t.description,
        "state": STATE_FROM_PB[t.state].value,
        "priority": t.priority,
        "kind": KIND_FROM_PB[t.kind].value,
        "customer": t.customer,
        "asset": t.asset,
        "tier": TIER_FROM_PB[t.tier].value if t.tier else "",
        "home_region": t.home_region,
        "queue": t.queue,
        "assignee": t.assignee,
        "second_engineer": t.second_engineer,
        "escalation_level": t.escalation_level,
        "version": t.version,
        "created_by": t.created_by,
        "origin_region": t.origin_region,
        "created_at": ts_to_iso(t.created_at),
        "updated_at": ts_to_iso(t.updated_at),
        "cause": t.cause,
        "satisfaction": t.satisfaction,
        "reopen_count": t.reopen_count,
        "response_due": ts_to_iso(t.response_due) if t.HasField("response_due") else "",
        "resolution_due": ts_to_iso(t.resolution_due) if t.HasField("resolution_due") else "",
        "sla": MessageToDict(t.sla, preserving_proto_field_name=True)
        if t.HasField("sla")
        else None,
        "source": t.source,
        "occurrences": t.occurrences,
        "first_seen": ts_to_iso(t.first_seen) if t.HasField("first_seen") else "",
        "last_seen": ts_to_iso(t.last_seen) if t.HasField("last_seen") else "",
        "customer_notified_at": ts_to_iso(t.customer_notified_at)
        if t.HasField("customer_notified_at")
        else "",
        "digest": t.digest,
        "comments": [
            {
                "id": c.id,
                "author": c.author,
                "text": c.text,
                "at": ts_to_iso(c.at),
                "region": c.region,
                "internal": c.internal,
            }
            for c in t.comments
        ],
        "history": [
            {
                "from": STATE_FROM_PB[h.from_state].value,
                "to": STATE_FROM_PB[h.to_state].value,
                "by": h.by,
                "at": ts_to_iso(h.at),
                "region": h.region,
                "note": h.note,
            }
            for h in t.history
        ],
        "replication": MessageToDict(t.replication, preserving_proto_field_name=True),
    }


def left_text(seconds: float) -> str:
    """Counted time left for people: '3h 20m left', '1d 2h 0m overdue'."""
    minutes = int(abs(seconds) // 60)
    days, rest = divmod(minutes, 1440)
    hours, mins = divmod(rest, 60)
    parts = ([f"{days}d"] if days else []) + ([f"{hours}h"] if hours or days else [])
    text = " ".join([*parts, f"{mins}m"])
    return f"{text} overdue" if seconds < 0 else f"{text} left"


def _show(t: pb.Ticket) -> str:
    d = ticket_json(t)
    lines = [
        f"{d['code']}  {d['title']}",
        f"  state {d['state']}  priority P{d['priority']}  kind {d['kind']}"
        f"  version {d['version']}",
        f"  customer {d['customer'] or '-'}  asset {d['asset'] or '-'}  tier {d['tier'] or '-'}",
        f"  queue {d['queue']}  home {d['home_region']}  assignee {d['assignee'] or '-'}"
        f"  escalation L{d['escalation_level']}",
        f"  created {d['created_at']} by {d['created_by']} in {d['origin_region']}",
    ]
    if d["cause"]:
        lines.append(f"  cause {d['cause']}")
    if d["occurrences"]:
        lines.append(
            f"  alarm occurrences {d['occurrences']}  first seen {d['first_seen']}"
            f"  last seen {d['last_seen']}"
        )
    if d["customer_notified_at"]:
        lines.append(f"  customer notified {d['customer_notified_at']} (proactive monitoring)")
    if t.HasField("sla"):
        paused = "  (paused: pending the customer)" if t.sla.paused else ""
        for target, due, state, left, recorded in (
            ("response", d["response_due"], t.sla.response, t.sla.response_left_seconds,
             t.sla.response_recorded),
            ("resolution", d["resolution_due"], t.sla.resolution,
             t.sla.resolution_left_seconds, t.sla.resolution_recorded),
        ):  # fmt: skip
            mark = f", recorded {recorded}" if recorded else ""
            lines.append(f"  {target} due {due}  {left_text(left)}  {state}{mark}{paused}")
    rep = t.replication
    if rep.last_change_id:
        missing = f", not yet in {', '.join(rep.missing_in)}" if rep.missing_in else ""
        lines.append(
            f"  latest change {rep.last_change_id} applied in {', '.join(rep.applied_in)}{missing}"
        )
    if d["history"]:
        lines.append("  history:")
        for h in d["history"]:
            note = f" ({h['note']})" if h["note"] else ""
            lines.append(f"    {h['at']}  {h['from']} → {h['to']}  by {h['by']}{note}")
    if d["comments"]:
        lines.append("  comments:")
        for c in d["comments"]:
            lines.append(f"    {c['at']}  {c['author']} [{c['region']}]: {c['text']}")
    return "\n".join(lines)


def _emit(args: argparse.Namespace, t: pb.Ticket) -> None:
    if args.json:
        print(json.dumps(ticket_json(t), ensure_ascii=False, indent=2))
    else:
        print(_show(t))


def cmd_create(args: argparse.Namespace) -> int:
    with connect(args) as c:
        t = c.desk.CreateTicket(
            pb.CreateTicketRequest(
                title=args.title,
                description=args.description,
                kind=KIND_BY_NAME[args.kind],
                priority=args.priority,
                customer=args.customer,
                asset=args.asset,
                tier=TIER_BY_NAME[args.tier] if args.tier else pb.CONTRACT_TIER_UNSPECIFIED,
                home_region=args.home_region,
                queue=args.queue,
                created_by=args.by,
                request_id=args.request_id,
            ),
            timeout=args.timeout,
        )
    _emit(args, t)
    return 0


def cmd_show(args: argparse.Namespace) -> int:
    with connect(args) as c:
        t = c.desk.GetTicket(pb.GetTicketRequest(code=args.code), timeout=args.timeout)
    _emit(args, t)
    return 0


def cmd_list(args: argparse.Namespace) -> int:
    req = pb.ListTicketsRequest(
        states=[STATE_BY_NAME[s] for s in args.state or []],
        queue=args.queue,
        customer=args.customer,
        kind=KIND_BY_NAME[args.kind] if args.kind else pb.TICKET_KIND_UNSPECIFIED,
        page_size=args.page_size,
        page_token=args.page_token,
    )
    tickets: list[pb.Ticket] = []
    with connect(args) as c:
        while True:
            resp = c.desk.ListTickets(req, timeout=args.timeout)
            tickets.extend(resp.tickets)
            if not args.all or not resp.next_page_token:
                break
            req.page_token = resp.next_page_token
    if args.json:
        out = {
            "tickets": [ticket_json(t) for t in tickets],
            "next_page_token": "" if args.all else resp.next_page_token,
            "total": resp.total,
        }
        print(json.dumps(out, ensure_ascii=False, indent=2))
        return 0
    rows = [
        [
            t.code,
            STATE_FROM_PB[t.state].value,
            f"P{t.priority}",
            KIND_FROM_PB[t.kind].value,
            t.queue,
            t.customer,
            t.assignee,
            t.title[:50],
        ]
        for t in tickets
    ]
    print_table(["code", "state", "prio", "kind", "queue", "customer", "assignee", "title"], rows)
    more = f"; next page: --page-token {resp.next_page_token}" if resp.next_page_token else ""
    print(f"{len(tickets)} of {resp.total} tickets{more}")
    return 0


def cmd_comment(args: argparse.Namespace) -> int:
    with connect(args) as c:
        t = c.desk.AddComment(
            pb.AddCommentRequest(
                code=args.code, author=args.by, text=args.text, internal=args.internal
            ),
            timeout=args.timeout,
        )
    _emit(args, t)
    return 0


def _update(args: argparse.Namespace, **fields: Any) -> int:
    with connect(args) as c:
        t = c.desk.UpdateTicket(
            pb.UpdateTicketRequest(
                code=args.code,
                actor=args.by,
                expected_version=args.version,
                note=args.note,
                **fields,
            ),
            timeout=args.timeout,
        )
    _emit(args, t)
    return 0


def cmd_assign(args: argparse.Namespace) -> int:
    return _update(args, assignee=args.to)


def cmd_verb(args: argparse.Namespace) -> int:
    extra: dict[str, Any] = {"state": STATE_TO_PB[VERBS[args.verb]]}
    if args.verb == "resolve":
        extra["cause"] = args.cause
    return _update(args, **extra)


def cmd_rate(args: argparse.Namespace) -> int:
    score = args.score_opt if args.score_opt is not None else args.score
    if score is None or not 1 <= score <= 5:
        raise SundeskError(f"--score {score} is out of range; rate from 1 (poor) to 5 (excellent)")
    return _update(args, satisfaction=score)


def add_parser(sub: Any, common: argparse.ArgumentParser) -> None:
    ticket = sub.add_parser("ticket", help="create, read and move tickets")
    tsub = ticket.add_subparsers(dest="ticket_cmd", required=True, metavar="COMMAND")

    p = tsub.add_parser("create", parents=[common], help="open a ticket")
    p.add_argument("--title", required=True)
    p.add_argument("--description", default="")
    p.add_argument("--kind", choices=[k.value for k in Kind], default=Kind.INCIDENT.value)
    p.add_argument("--priority", type=int, default=3, help="1 (critical) .. 4 (low)")
    p.add_argument("--customer", default="")
    p.add_argument("--asset", default="")
    p.add_argument("--tier", choices=[t.value for t in Tier], default="")
    p.add_argument("--home-region", default="")
    p.add_argument("--queue", default="")
    p.add_argument("--by", default="agent")
    p.add_argument("--request-id", default="", help="idempotency key for safe retries")
    p.set_defaults(func=cmd_create)

    p = tsub.add_parser("show", parents=[common], help="one ticket, whole")
    p.add_argument("code")
    p.set_defaults(func=cmd_show)

    p = tsub.add_parser("list", parents=[common], help="tickets, filtered and paged")
    p.add_argument("--state", action="append", choices=[s.value for s in State])
    p.add_argument("--queue", default="")
    p.add_argument("--customer", default="")
    p.add_argument("--kind", choices=[k.value for k in Kind], default="")
    p.add_argument("--page-size", type=int, default=50)
    p.add_argument("--page-token", default="")
    p.add_argument("--all", action="store_true", help="follow every page")
    p.set_defaults(func=cmd_list)

    p = tsub.add_parser("comment", parents=[common], help="add a comment")
    p.add_argument("code")
    p.add_argument("--text", required=True)
    p.add_argument("--by", default="agent")
    p.add_argument("--internal", action="store_true", help="not shown to the customer")
    p.set_defaults(func=cmd_comment)

    def change_parser(name: str, help_text: str) -> argparse.ArgumentParser:
        cp: argparse.ArgumentParser = tsub.add_parser(name, parents=[common], help=help_text)
        cp.add_argument("code")
        cp.add_argument("--by", default="agent", help="who does it")
        cp.add_argument("--version", type=int, default=0, help="fail unless still at VERSION")
        cp.add_argument("--note", default="")
        return cp

    p = change_parser("assign", "give the ticket to an engineer")
    p.add_argument("--to", required=True)
    p.set_defaults(func=cmd_assign)
    for verb, help_text in (
        ("start", "work starts (in progress)"),
        ("pend", "wait for the customer"),
        ("resolve", "resolved, with its cause"),
        ("close", "closed after resolution"),
        ("reopen", "back to in progress"),
    ):
        p = change_parser(verb, help_text)
        if verb == "resolve":
            p.add_argument("--cause", required=True, help="category of the root cause")
        p.set_defaults(func=cmd_verb, verb=verb)
    p = change_parser("rate", "record the customer's satisfaction, 1..5")
    p.add_argument("score", type=int, nargs="?", help=argparse.SUPPRESS)  # older form
    p.add_argument("--score", dest="score_opt", type=int, help="1 (poor) .. 5 (excellent)")
    p.set_defaults(func=cmd_rate)
