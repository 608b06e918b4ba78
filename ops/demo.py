"""`sundesk demo`: a simulated working day on a real local federation.

Starts etcd, the trace collector and the five regional nodes on a shared accelerated
clock, then plays Wednesday 4 March 2026 from 05:00 to 01:00 UTC: tickets arrive in each
region during its business hours, queues follow the sun from owner to owner (each
handoff printed as it happens), the on-call engineer acknowledges the night's handoff
(or, once, forgets to and the secondary is paged), a node crashes and comes back, and
the day ends with a summary and every region holding the same tickets; machines call
home (``ops/demo_machines.py``: an alarm reaching two regions at once, a scanner that
falls silent and comes back).

It runs secure, as ``local up`` does: each person and machine calls with a token of its
own role (agents create tickets, the on-call engineer acknowledges, machines report for
their own asset), minted from the local federation's secret, over mTLS.
"""

from __future__ import annotations

import argparse
import queue
import random
import shutil
import tempfile
import threading
import time
from collections import Counter
from datetime import datetime
from pathlib import Path
from typing import Any

import grpc

from federation.calendars import RegionCalendar
from federation.config import load_config
from node.tickets import parse_iso
from ops import local
from ops.client import Client
from ops.credentials import ClientCredentials, from_certs_dir, mint_token
from ops.demo_machines import DemoMachines
from ops.processes import wait_for
from sundesk.v1 import desk_pb2 as pb
from sundesk.v1 import sun_pb2 as spb
from sundesk.v1 import sun_pb2_grpc

START = "2026-03-04T05:00:00Z"
END = "2026-03-05T01:00:00Z"
SPEED = 1200.0  # twenty simulated minutes per second: the day plays in a minute
CUSTOMERS = {
    "velizy": ["Airbus Défense", "SNCF Réseau"],
    "germany": ["Siemens Energy", "DB Netz"],
    "uk": ["NHS Digital", "BAE Systems"],
    "us": ["Boeing", "Kaiser Permanente"],
    "japan": ["Toyota", "NTT Data"],
}
PROBLEMS = [
    ("Disk array degraded after controller firmware update", 2),
    ("Cluster failover takes longer than 5 minutes", 1),
    ("Licence server refuses new seats", 3),
    ("Backup job fails on Sunday nights", 3),
    ("Question about extending the platinum contract", 4),
]


def say(text: str) -> None:
    print(text, flush=True)


class HandoffFeed:
    """Prints handoffs as they happen (from one node's WatchHandoffs stream)."""

    def __init__(self, address: str, creds: ClientCredentials | None) -> None:
        self.address = address
        self.seen: dict[str, spb.Handoff] = {}
        self.events: queue.Queue[spb.Handoff] = queue.Queue()
        self._channel = Client(address, creds).channel
        self._stream = sun_pb2_grpc.SunStub(self._channel).WatchHandoffs(spb.WatchHandoffsRequest())
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        try:
            for h in self._stream:
                self.events.put(h)
        except grpc.RpcError:
            return

    def drain(self) -> list[spb.Handoff]:
        out = []
        while True:
            try:
                out.append(self.events.get_nowait())
            except queue.Empty:
                return out

    def close(self) -> None:
        self._stream.cancel()
        self._channel.close()


def _describe(h: spb.Handoff) -> str:
    sim = h.at[11:16]
    who = f"{h.from_region or '(nobody)'} → {h.to_region}"
    if h.kind == "on-call":
        who += f", on-call engineer {h.to_engineer}"
    due = f", soonest due {h.open_tickets[0].code}" if h.open_tickets else ""
    gap = "no gap: key moved in one transaction" if h.kind != "failover" else "after lease expiry"
    note = f', note: "{h.note}"' if h.note else ""
    return (
        f"  {sim}Z  {h.queue:8} {who}  [{h.kind}, epoch {h.epoch}, "
        f"{len(h.open_tickets)} open{due}; {gap}{note}]"
    )


def run(base: Path, seed: int = 7) -> None:
    rnd = random.Random(seed)
    config = load_config(None)
    calendars = {r.name: RegionCalendar(r) for r in config.regions}
    say(f"Starting etcd, the trace collector and five regional nodes in {base} ...")
    state = local.up(base, clock_start=START, speed=SPEED)
    nodes = {r: n["address"] for r, n in state["nodes"].items()}
    for r, address in nodes.items():
        say(f"  {r:8} {address}   metrics :{state['nodes'][r]['metrics']}")
    say(f"\nSimulated clock: Wednesday {START[:10]} from {START[11:16]} UTC, x{SPEED:.0f}.")
    certs = Path(state["certs"]) if state.get("certs") else None

    callers = Callers(certs)
    feed = HandoffFeed(nodes["velizy"], callers.credentials("ops", "demo-ops"))
    machines = DemoMachines(nodes, say, callers.client)
    machines.setup()
    created: Counter[str] = Counter()
    handoffs: list[spb.Handoff] = []
    acked: set[str] = set()
    forgotten = ""
    crashed = restarted = False
    first_code = ""
    end = parse_iso(END)
    try:
        while True:
            now = _sim_now(callers.client(nodes["velizy"], "ops", "demo-ops"))
            if now >= end:
                break
            for region, address in nodes.items():
                if (
                    calendars[region].is_open(now)
                    and rnd.random() < 0.5
                    and (region != "us" or not crashed or restarted)
                ):
                    code = _open_ticket(
                        callers.client(address, "agent", f"agent-{region}"), region, rnd
                    )
                    created[region] += 1
                    first_code = first_code or code
            machines.tick(now)
            for h in feed.drain():
                if h.id not in {x.id for x in handoffs}:
                    handoffs.append(h)
                    say(_describe(h))
                elif h.escalated_to:
                    say(
                        f"  {h.escalated_at[11:16]}Z  {h.queue:8} {h.id} not acknowledged in "
                        f"{config.handoff_ack_minutes:.0f} min: paged secondary {h.escalated_to}"
                    )
                elif h.acked_by:
                    say(f"  {h.acked_at[11:16]}Z  {h.queue:8} {h.id} acknowledged by {h.acked_by}")
                if h.kind == "on-call" and not h.acked_by and h.id not in acked:
                    acked.add(h.id)
                    if not forgotten:
                        forgotten = h.id  # tonight, one engineer misses a page
                    else:
                        _ack(callers.client(nodes["japan"], "oncall", h.to_engineer), h.id)
            if not crashed and now.hour >= 15:
                say(f"  {now:%H:%M}Z  -- the US node crashes (SIGKILL) --")
                local.kill(base, "us")
                crashed = True
                crash_at = time.monotonic()
            if crashed and not restarted and time.monotonic() - crash_at > 4:
                local.start(base, "us")
                restarted = True
                back = _sim_now(callers.client(nodes["velizy"], "ops", "demo-ops"))
                say(f"  {back:%H:%M}Z  -- the US node is back and catches up --")
            time.sleep(0.25)
        for h in feed.drain():
            if h.escalated_to:
                say(f"  {h.queue:8} {h.id}: paged secondary {h.escalated_to}")
        seconds = _converge(base)
        rows = local.status(base)
        kinds = Counter(h.kind for h in handoffs)
        say("\nSummary of the day:")
        say(
            f"  tickets opened: {sum(created.values())} "
            f"({', '.join(f'{r} {n}' for r, n in created.items())})"
        )
        say(f"  handoffs: {len(handoffs)} ({', '.join(f'{k} {n}' for k, n in kinds.items())})")
        say(
            f"  on-call handoffs acknowledged: {len(acked) - bool(forgotten)}, "
            f"escalated to the secondary: {1 if forgotten else 0}"
        )
        say(
            f"  replicas identical {seconds:.2f} s after the last write: "
            + ", ".join(f"{r['region']} {r['tickets']}" for r in rows)
            + f" tickets, digest {rows[0]['digest'][:16]}"
        )
        machines.summary()
        if first_code:
            say(
                f"  trace of {first_code}: `sundesk ops trace {first_code} --dir {base}` "
                "while the federation runs"
            )
        say("\nDemo finished.")
    finally:
        feed.close()
        callers.close()
        local.down(base)


class Callers:
    """One open client per (node, role, person): each with a token of its own, and the
    TLS handshake paid once, not on every call (acknowledgements race the escalation)."""

    def __init__(self, certs: Path | None) -> None:
        self._certs = certs
        self._clients: dict[tuple[str, str, str], Client] = {}

    def credentials(self, role: str, subject: str) -> ClientCredentials | None:
        if self._certs is None:
            return None
        asset = subject if role == "machine" else None  # a machine speaks for one asset
        return from_certs_dir(self._certs, mint_token(self._certs, role, subject, asset))

    def client(self, address: str, role: str, subject: str) -> Client:
        key = (address, role, subject)
        if key not in self._clients:
            self._clients[key] = Client(address, self.credentials(role, subject))
        return self._clients[key]

    def close(self) -> None:
        for c in self._clients.values():
            c.close()


def _sim_now(c: Client) -> datetime:
    st = sun_pb2_grpc.SunStub(c.channel).GetStatus(spb.SunStatusRequest(), timeout=5)
    return parse_iso(st.now)


def _open_ticket(c: Client, region: str, rnd: random.Random) -> str:
    title, priority = rnd.choice(PROBLEMS)
    t = c.desk.CreateTicket(
        pb.CreateTicketRequest(
            title=title,
            priority=priority,
            customer=rnd.choice(CUSTOMERS[region]),
            created_by=f"agent-{region}",
        ),
        timeout=5,
    )
    return str(t.code)


def _ack(c: Client, handoff_id: str) -> None:
    # The handoff is stamped with the engineer whose token acknowledges it.
    try:
        sun_pb2_grpc.SunStub(c.channel).AckHandoff(spb.AckHandoffRequest(id=handoff_id), timeout=5)
    except grpc.RpcError:
        pass  # already escalated or acknowledged: the feed shows which


def _converge(base: Path, timeout: float = 60.0) -> float:
    started = time.monotonic()

    def same() -> bool:
        d = [row["digest"] for row in local.status(base)]
        return None not in d and len(set(d)) == 1

    wait_for("every region to hold the same tickets", same, timeout, interval=0.1)
    return time.monotonic() - started


def add_parser(sub: Any) -> None:
    p = sub.add_parser("demo", help="a simulated follow-the-sun day on a local federation")
    p.add_argument("--dir", default="", help="where to keep it (default: a temp dir)")
    p.add_argument("--seed", type=int, default=7)
    p.set_defaults(func=_cmd_demo)


def _cmd_demo(args: argparse.Namespace) -> int:
    if args.dir:
        run(Path(args.dir), args.seed)
        return 0
    tmp = Path(tempfile.mkdtemp(prefix="sundesk-demo-"))
    try:
        run(tmp, args.seed)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return 0
