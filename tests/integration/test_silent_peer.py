"""A peer that stops talking without closing the connection (frozen, or a link that drops
packets silently) is given up after ``IDLE_TIMEOUT`` and pulled from again.

The peer here is a real grpc.aio server on loopback whose ``Pull`` answers once and then
goes silent; the puller is the node's real ``Replicator`` over a real store.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from grpc import aio

from federation import replicator as replicator_module
from federation.replicator import PeerState, ReplicationHooks, Replicator
from node.clock import SystemClock
from node.sqlite_store import SqliteTicketStore
from sundesk.v1 import federation_pb2 as fpb
from sundesk.v1 import federation_pb2_grpc
from tests.support.nodes import free_ports

pytestmark = pytest.mark.integration

IDLE = 0.5


class SilentPeer(federation_pb2_grpc.FederationServicer):
    def __init__(self) -> None:
        self.pulls = 0
        self.second_pull = asyncio.Event()

    async def Pull(
        self, request_iterator: AsyncIterator[fpb.PullRequest], context: aio.ServicerContext
    ) -> AsyncIterator[fpb.OperationBatch]:
        self.pulls += 1
        if self.pulls >= 2:
            self.second_pull.set()
        yield fpb.OperationBatch(caught_up=True)
        await asyncio.Event().wait()  # then nothing, ever, on an open stream


def test_a_silent_peer_is_dropped_after_the_idle_timeout_and_pulled_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(replicator_module, "IDLE_TIMEOUT", IDLE)

    async def run() -> None:
        (port,) = free_ports(1)
        peer = SilentPeer()
        server = aio.server()
        federation_pb2_grpc.add_FederationServicer_to_server(peer, server)
        server.add_insecure_port(f"127.0.0.1:{port}")
        await server.start()
        store = SqliteTicketStore(tmp_path, "velizy", "VEL", SystemClock())
        seen: list[bool] = []
        down = asyncio.Event()

        def on_peer(state: PeerState) -> None:
            seen.append(state.connected)
            if seen[0] and not state.connected:
                down.set()

        rep = Replicator(
            store,
            "velizy",
            {"japan": f"127.0.0.1:{port}"},
            SystemClock(),
            hooks=ReplicationHooks(on_peer=on_peer),
            seed=1,
        )
        loop = asyncio.get_running_loop()
        started = loop.time()
        rep.start()
        try:
            await asyncio.wait_for(down.wait(), 10)
            dropped_after = loop.time() - started
            await asyncio.wait_for(peer.second_pull.wait(), 10)
        finally:
            await rep.stop()
            await server.stop(0)
            await store.close()
        assert seen[0] is True  # the first batch made the link live
        # Dropped for its silence, not before the timeout and not much after it.
        assert IDLE <= dropped_after < IDLE + 2.0, dropped_after
        assert peer.pulls >= 2

    asyncio.run(run())
