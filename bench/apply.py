"""The catch-up apply path in one process, without gRPC or peers: decode serialized
batches, ``apply_remote`` them (one transaction each, fsync included), run the node's
``on_applied`` hook. It bounds what a catching-up node can do on this machine.

Operations come from four origins, in per-origin batches as the streams send them; a
share of them comment on tickets created earlier (seeded). The garbage collector is set
as ``sundesk node`` sets it.

Run: ``.venv/bin/python -m bench.apply [--ops 20000 --batch 2000 --comments 0.3]``.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import tempfile
import time
from datetime import UTC, datetime

from opentelemetry.trace import NoOpTracer

from federation.operations import TICKET_COMMENT, TICKET_CREATE, Operation
from federation.wire import op_from_pb, op_to_pb
from node import rules
from node.clock import SystemClock
from node.observe import NodeObserver
from node.rules import NewTicket
from node.server import tune_interpreter
from node.sqlite_store import SqliteTicketStore
from ops.metrics import Metrics
from sundesk.v1 import federation_pb2 as fpb

ORIGINS = ("velizy", "germany", "uk", "us")
TRACE = {"traceparent": "00-" + "1" * 32 + "-" + "2" * 16 + "-01"}


def make_batches(total: int, batch: int, comments: float) -> tuple[list[bytes], dict[str, int]]:
    rnd = random.Random(1)
    now = datetime.now(UTC)
    hlc = int(time.time() * 1000) << 16
    seqs = dict.fromkeys(ORIGINS, 0)
    codes: list[str] = []
    by_origin: dict[str, list[Operation]] = {o: [] for o in ORIGINS}
    for i in range(total):
        origin = ORIGINS[i % len(ORIGINS)]
        seqs[origin] += 1
        if codes and rnd.random() < comments:
            code, kind = rnd.choice(codes), TICKET_COMMENT
            fields = {"comment": {"author": "a", "text": "replacing disk 3", "at": now.isoformat()}}
        else:
            code, kind = f"{origin[:3].upper()}-{seqs[origin]:06d}", TICKET_CREATE
            fields = rules.create_fields(NewTicket(title=f"catch-up {i}"), origin, now)
            codes.append(code)
        op = Operation(origin, seqs[origin], hlc + i, code, kind, fields, TRACE)
        by_origin[origin].append(op)
    # Round-robin over the origins, as four streams interleave; seq order kept per origin.
    chunks = [[ops[k : k + batch] for k in range(0, len(ops), batch)] for ops in by_origin.values()]
    out = []
    for round_ in range(max(len(c) for c in chunks)):
        for c in chunks:
            if round_ < len(c):
                msg = fpb.OperationBatch(operations=[op_to_pb(op) for op in c[round_]])
                out.append(msg.SerializeToString())
    return out, seqs


async def apply_all(batches: list[bytes], expect: dict[str, int]) -> tuple[float, float]:
    clock = SystemClock()
    with tempfile.TemporaryDirectory(prefix="sundesk-apply-") as d:
        store = SqliteTicketStore(d, "japan", "JPN", clock)
        observer = NodeObserver("japan", Metrics("japan"), NoOpTracer(), clock)
        wall, cpu = time.perf_counter(), time.thread_time()
        for raw in batches:
            ops = [op_from_pb(m) for m in fpb.OperationBatch.FromString(raw).operations]
            observer.on_applied("peer", await store.apply_remote(ops))
        wall, cpu = time.perf_counter() - wall, time.thread_time() - cpu
        if store.version_vector() != expect:
            raise SystemExit(f"applied {store.version_vector()}, expected {expect}")
        await store.close()
    return wall, cpu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--ops", type=int, default=20_000)
    parser.add_argument("--batch", type=int, default=2000)
    parser.add_argument("--comments", type=float, default=0.3)
    args = parser.parse_args()
    batches, expect = make_batches(args.ops, args.batch, args.comments)
    tune_interpreter()
    wall, cpu = asyncio.run(apply_all(batches, expect))
    print(
        f"apply: {args.ops / wall:,.0f} operations/s wall, {args.ops / cpu:,.0f} per CPU second "
        f"of the loop thread ({args.ops:,} ops, batches of {args.batch}, "
        f"{args.comments:.0%} comments)"
    )


if __name__ == "__main__":
    main()
