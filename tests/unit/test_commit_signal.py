"""The senders' wake-up: a commit wakes only the streams that send one of its origins."""

from __future__ import annotations

import asyncio

from federation.operations import TICKET_CREATE, Operation
from federation.replication_service import CommitSignal, _PullState, _wait
from node.store import Change
from sundesk.v1 import federation_pb2 as fpb


def change(origin: str) -> Change:
    op = Operation(origin, 1, 1 << 16, "T-1", TICKET_CREATE, {"created": True})
    return Change(op=op, ticket=None, local=origin == "velizy")


def stream(*origins: str) -> _PullState:
    return _PullState(fpb.PullRequest(region="x", origins=origins))


def test_a_commit_wakes_the_streams_of_its_origins_only() -> None:
    async def run() -> None:
        signal = CommitSignal()
        own, relay, every = stream("velizy"), stream("japan", "uk"), stream()
        for s in (own, relay, every):
            signal.subscribe(s)

        signal.notify([change("germany")])
        assert not own.wake.is_set() and not relay.wake.is_set() and every.wake.is_set()

        signal.notify([change("uk"), change("germany")])
        assert relay.wake.is_set() and not own.wake.is_set()

        signal.notify([change("velizy")])
        assert own.wake.is_set()

        # The puller changes what it wants: the next commit is judged on the new origins.
        own.wake.clear()
        own.update(fpb.PullRequest(region="x", origins=["germany"]))
        own.wake.clear()
        signal.notify([change("velizy")])
        assert not own.wake.is_set()
        signal.notify([change("germany")])
        assert own.wake.is_set()

        relay.wake.clear()
        signal.unsubscribe(relay)
        signal.notify(None)  # no detail: wake every subscribed stream
        assert not relay.wake.is_set()

    asyncio.run(run())


def test_wait_tells_a_wake_up_from_a_timeout() -> None:
    async def run() -> None:
        event = asyncio.Event()
        assert not await _wait(event, 0.01)  # nobody set it: timed out
        event.clear()
        asyncio.get_running_loop().call_soon(event.set)
        assert await _wait(event, 5.0)
        assert await _wait(event, 0.0)  # already set: at once

    asyncio.run(run())
