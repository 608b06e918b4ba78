"""`sundesk demo`: a scripted session on a real local federation.

Starts etcd and the five regional nodes, opens tickets in every region, works them from
other regions, cuts a region off by killing its node, keeps writing, brings it back, and
shows that every region ends with the same tickets. Exits 0 when all of that held.
"""

from __future__ import annotations

import argparse
import random
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

from ops import local
from ops.client import Client
from ops.processes import wait_for
from sundesk.v1 import desk_pb2 as pb

CUSTOMERS = {
    "velizy": ["Airbus Défense", "SNCF Réseau"],
    "germany": ["Siemens Energy", "DB Netz"],
    "uk": ["NHS Digital", "BAE Systems"],
    "us": ["Boeing", "Kaiser Permanente"],
    "japan": ["Toyota", "NTT Data"],
}
PROBLEMS = [
    ("Disk array degraded after controller firmware update", 2, "hardware"),
    ("Cluster failover takes longer than 5 minutes", 1, "configuration"),
    ("Licence server refuses new seats", 3, "licensing"),
    ("Backup job fails on Sunday nights", 3, "software"),
    ("Question about extending the platinum contract", 4, "information"),
]


def say(text: str) -> None:
    print(text, flush=True)


def digests(base: Path) -> dict[str, Any]:
    return {row["region"]: row["digest"] for row in local.status(base)}


def converge(base: Path, timeout: float = 60.0) -> float:
    started = time.monotonic()

    def same() -> bool:
        d = digests(base)
        return None not in d.values() and len(set(d.values())) == 1

    wait_for("every region to hold the same tickets", same, timeout, interval=0.1)
    return time.monotonic() - started


def run(base: Path, seed: int = 7) -> None:
    rnd = random.Random(seed)
    say(f"Starting etcd and five regional nodes in {base} ...")
    state = local.up(base, collector=False)
    nodes = {r: n["address"] for r, n in state["nodes"].items()}
    for r, address in nodes.items():
        say(f"  {r:8} serving on {address}")
    try:
        codes: dict[str, str] = {}
        say("\nEach region opens tickets for its own customers:")
        for region, address in nodes.items():
            with Client(address) as c:
                for customer in CUSTOMERS[region]:
                    title, priority, _ = rnd.choice(PROBLEMS)
                    t = c.desk.CreateTicket(
                        pb.CreateTicketRequest(
                            title=title,
                            priority=priority,
                            customer=customer,
                            created_by=f"agent-{region}",
                        )
                    )
                    codes[t.code] = region
                    say(f"  {t.code}  P{t.priority}  {customer:18} {title}")
        seconds = converge(base)
        say(f"\nAll five regions hold all {len(codes)} tickets after {seconds:.2f} s.")

        code = next(iter(codes))
        say(f"\nJapan works on {code}, opened in Vélizy:")
        with Client(nodes["japan"]) as c:
            wait_for(f"{code} in Japan", lambda: _has(c, code))
            c.desk.UpdateTicket(pb.UpdateTicketRequest(code=code, actor="kenji", assignee="kenji"))
            c.desk.AddComment(
                pb.AddCommentRequest(
                    code=code, author="kenji", text="Collected controller logs overnight."
                )
            )
        converge(base)
        with Client(nodes["velizy"]) as c:
            t = c.desk.GetTicket(pb.GetTicketRequest(code=code))
        say(
            f"  seen from Vélizy: assignee {t.assignee}, comment «{t.comments[-1].text}» "
            f"written in {t.comments[-1].region}; applied in {', '.join(t.replication.applied_in)}"
        )

        say("\nThe US node crashes (SIGKILL); the others keep writing:")
        local.kill(base, "us")
        for region in ("velizy", "uk", "japan"):
            with Client(nodes[region]) as c:
                t = c.desk.CreateTicket(
                    pb.CreateTicketRequest(
                        title="Written while the US is down", customer=CUSTOMERS[region][0]
                    )
                )
                say(f"  {t.code} opened in {region}")
        local.start(base, "us")
        seconds = converge(base)
        say(f"  US back: caught up and identical everywhere after {seconds:.2f} s.")

        say("\nFinal state:")
        for row in local.status(base):
            say(f"  {row['region']:8} tickets {row['tickets']:3}  digest {row['digest'][:16]}")
        say("\nDemo finished: every region holds the same tickets.")
    finally:
        local.down(base)


def _has(c: Client, code: str) -> bool:
    import grpc

    try:
        c.desk.GetTicket(pb.GetTicketRequest(code=code), timeout=1)
        return True
    except grpc.RpcError:
        return False


def add_parser(sub: Any) -> None:
    p = sub.add_parser("demo", help="a scripted session on a local federation")
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
