"""`sundesk sun ...`: who owns each queue, the handoffs, on-call acknowledgement, notes."""

from __future__ import annotations

import argparse
import json
from typing import Any

from google.protobuf.json_format import MessageToDict

from ops.client import Client, connect, print_table
from sundesk.v1 import sun_pb2 as spb
from sundesk.v1 import sun_pb2_grpc


def _stub(c: Client) -> sun_pb2_grpc.SunStub:
    return sun_pb2_grpc.SunStub(c.channel)


def _dict(msg: Any) -> dict[str, Any]:
    out: dict[str, Any] = MessageToDict(
        msg, preserving_proto_field_name=True, always_print_fields_with_no_presence=True
    )
    return out


def cmd_status(args: argparse.Namespace) -> int:
    with connect(args) as c:
        st = _stub(c).GetStatus(spb.SunStatusRequest(), timeout=args.timeout)
    if args.json:
        print(json.dumps(_dict(st), indent=2))
        return 0
    print(f"{st.region}: lease {st.lease_state}, clock {st.now}")
    print_table(
        ["queue", "owner", "kind", "epoch", "since", "next handoff"],
        [
            [
                q.queue,
                q.owner or "-",
                q.kind or "-",
                q.epoch or "-",
                q.since or "-",
                f"{q.next_owner} ({q.next_kind}) at {q.next_at}" if q.next_owner else "-",
            ]
            for q in st.queues
        ],
    )
    return 0


def cmd_handoffs(args: argparse.Namespace) -> int:
    with connect(args) as c:
        resp = _stub(c).ListHandoffs(
            spb.ListHandoffsRequest(queue=args.queue), timeout=args.timeout
        )
    if args.json:
        print(json.dumps({"handoffs": [_dict(h) for h in resp.handoffs]}, indent=2))
        return 0
    print_table(
        ["id", "kind", "from → to", "at", "open", "acknowledged", "escalated"],
        [
            [
                h.id,
                h.kind,
                f"{h.from_region or '-'} → {h.to_region}"
                + (f" ({h.to_engineer})" if h.to_engineer else ""),
                h.at,
                len(h.open_tickets),
                h.acked_by or "-",
                h.escalated_to or "-",
            ]
            for h in resp.handoffs
        ],
    )
    return 0


def cmd_ack(args: argparse.Namespace) -> int:
    with connect(args, "oncall") as c:
        h = _stub(c).AckHandoff(spb.AckHandoffRequest(id=args.id, by=args.by), timeout=args.timeout)
    print(json.dumps(_dict(h), indent=2) if args.json else f"{h.id} acknowledged by {h.acked_by}")
    return 0


def cmd_note(args: argparse.Namespace) -> int:
    with connect(args) as c:
        _stub(c).SetNote(
            spb.SetNoteRequest(queue=args.queue, text=args.text, by=args.by), timeout=args.timeout
        )
    print(f"note for the next handoff of {args.queue} recorded")
    return 0


def cmd_escalate(args: argparse.Namespace) -> int:
    with connect(args) as c:
        r = _stub(c).EscalateTicket(
            spb.EscalateTicketRequest(code=args.code, by=args.by, reason=args.reason),
            timeout=args.timeout,
        )
    if args.json:
        print(json.dumps(_dict(r), indent=2))
    else:
        print(f"{r.code} escalated to L{r.escalation_level} by {r.region} (epoch {r.epoch})")
    return 0


def add_parser(sub: Any, common: argparse.ArgumentParser) -> None:
    sun = sub.add_parser("sun", help="follow-the-sun ownership, handoffs and on-call")
    ssub = sun.add_subparsers(dest="sun_cmd", required=True, metavar="COMMAND")
    p = ssub.add_parser("status", parents=[common], help="per queue: owner, kind, epoch, next")
    p.set_defaults(func=cmd_status)
    p = ssub.add_parser("handoffs", parents=[common], help="handoff records, oldest first")
    p.add_argument("--queue", default="")
    p.set_defaults(func=cmd_handoffs)
    p = ssub.add_parser("ack", parents=[common], help="acknowledge an on-call handoff")
    p.add_argument("id")
    p.add_argument("--by", required=True)
    p.set_defaults(func=cmd_ack)
    p = ssub.add_parser("note", parents=[common], help="note for the next handoff of a queue")
    p.add_argument("queue")
    p.add_argument("--text", required=True)
    p.add_argument("--by", default="agent")
    p.set_defaults(func=cmd_note)
    p = ssub.add_parser("escalate", parents=[common], help="raise a ticket's level (owner only)")
    p.add_argument("code")
    p.add_argument("--by", default="owner")
    p.add_argument("--reason", default="")
    p.set_defaults(func=cmd_escalate)
