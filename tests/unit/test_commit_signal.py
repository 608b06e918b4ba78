"""The senders' wake-up: a commit wakes only the streams that send one of its origins."""

from __future__ import annotations

import asyncio

from federation.operations import TICKET_CREATE, Operation
from federation.replication_service import CommitSignal
from node.store import Change


def change(origin: str) -> Change:
    op = Operation(origin, 1, 1 << 16, "T-1", TICKET_CREATE, {"created": True})
    return Change(op=op, ticket=None, local=origin == "velizy")


def test_a_commit_wakes_the_streams_of_its_origins_only() -> None:
    async def run() -> None:
        signal = CommitSignal()
        own = signal.current(frozenset({"velizy"}))
        relay = signal.current(frozenset({"japan", "uk"}))
        every = signal.current()
        assert signal.current(frozenset({"velizy"})) is own  # streams share one event

        signal.notify([change("germany")])
        assert not own.is_set() and not relay.is_set() and every.is_set()

        signal.notify([change("uk"), change("germany")])
        assert relay.is_set() and not own.is_set()

        signal.notify([change("velizy")])
        assert own.is_set()
        # Taken after the wake: a fresh event, woken by the next commit of its origin only.
        again = signal.current(frozenset({"velizy"}))
        assert again is not own and not again.is_set()
        signal.notify(None)  # no detail: wake everyone
        assert again.is_set()

    asyncio.run(run())
