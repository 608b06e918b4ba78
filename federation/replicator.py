"""The pulling side of replication: one long-lived stream per peer.

From each peer we ask for the peer's own operations. For an origin we cannot reach
directly, we ask every peer we can reach, so Japan still gets Vélizy's changes through
the UK when the Vélizy–Japan link is down. Streams reconnect with capped, jittered
exponential backoff and resume from our version vector; applying is idempotent.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import grpc
from grpc import aio

from federation.operations import Operation
from federation.wire import op_from_pb
from node.clock import Clock
from node.sqlite_store import SqliteTicketStore
from sundesk.v1 import federation_pb2 as fpb
from sundesk.v1 import federation_pb2_grpc

log = logging.getLogger("sundesk.replication")

IDLE_TIMEOUT = 5.0  # no batch (not even a heartbeat) for this long: the link is dead
CHANNEL_OPTIONS = [
    ("grpc.keepalive_time_ms", 2000),
    ("grpc.keepalive_timeout_ms", 2000),
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.http2.max_pings_without_data", 0),
    ("grpc.max_receive_message_length", 64 * 1024 * 1024),
    ("grpc.initial_reconnect_backoff_ms", 100),
    ("grpc.max_reconnect_backoff_ms", 2000),
]


class LinkIdle(Exception):
    """A peer sent nothing, not even a heartbeat, for ``IDLE_TIMEOUT`` seconds."""

    def __init__(self, peer: str) -> None:
        super().__init__(f"nothing from {peer} for {IDLE_TIMEOUT:.0f} s")


class _IdleWatchdog:
    """Cancels a pull whose peer has been silent for ``IDLE_TIMEOUT``: one timer handle per
    stream, re-armed from ``peer.last_seen``, instead of ``asyncio.wait_for`` around each
    read, which runs every read as a task of its own."""

    def __init__(self, peer: PeerState, call: aio.StreamStreamCall) -> None:
        self.fired = False
        self._peer = peer
        self._call = call
        peer.last_seen = time.monotonic()
        self._loop = asyncio.get_running_loop()
        self._timer = self._loop.call_later(IDLE_TIMEOUT, self._check)

    def _check(self) -> None:
        silent = time.monotonic() - self._peer.last_seen
        if silent < IDLE_TIMEOUT:
            self._timer = self._loop.call_later(IDLE_TIMEOUT - silent, self._check)
            return
        self.fired = True
        self._call.cancel()

    def stop(self) -> None:
        self._timer.cancel()


@dataclass
class PeerState:
    region: str
    address: str
    connected: bool = False
    vv: dict[str, int] = field(default_factory=dict)  # the peer's, as last seen
    applied: int = 0
    batches: int = 0
    caught_up: bool = False
    last_seen: float = 0.0
    lag_seconds: float = 0.0  # origin commit to apply here, for the last op applied
    updates: asyncio.Queue[fpb.PullRequest | None] = field(default_factory=asyncio.Queue)


@dataclass
class ReplicationHooks:
    """Observability of replication, supplied by the node (metrics and traces)."""

    on_applied: Callable[[str, list[Operation]], None] = lambda peer, ops: None
    on_peer: Callable[[PeerState], None] = lambda peer: None


class Replicator:
    def __init__(
        self,
        store: SqliteTicketStore,
        region: str,
        peers: Mapping[str, str],
        clock: Clock,
        hooks: ReplicationHooks | None = None,
        max_batch: int = 2000,
        seed: int | None = None,
        credentials: grpc.ChannelCredentials | None = None,
    ) -> None:
        self._store = store
        self.region = region
        self.peers = {r: PeerState(r, addr) for r, addr in peers.items() if r != region}
        self._clock = clock
        self._hooks = hooks or ReplicationHooks()
        self._max_batch = max_batch
        self._rng = random.Random(seed)
        self._tasks: list[asyncio.Task[None]] = []
        self._credentials = credentials  # mTLS with our node certificate; None: plaintext

    def start(self) -> None:
        for peer in self.peers.values():
            self._tasks.append(asyncio.create_task(self._run(peer), name=f"pull-{peer.region}"))

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self._tasks.clear()

    # ----- what to ask each peer for -----------------------------------------------------

    def wanted_from(self, peer: str) -> list[str]:
        """The peer's own origin, plus every origin we have no live link to."""
        unreachable = [r for r, p in self.peers.items() if r != peer and not p.connected]
        return sorted({peer, *unreachable})

    def _link_changed(self) -> None:
        vv = self._store.version_vector()
        for p in self.peers.values():
            if p.connected:
                p.updates.put_nowait(
                    fpb.PullRequest(
                        region=self.region, version_vector=vv, origins=self.wanted_from(p.region)
                    )
                )

    # ----- one peer ----------------------------------------------------------------------

    async def _run(self, peer: PeerState) -> None:
        backoff = 0.1
        while True:
            try:
                await self._pull(peer)
            except asyncio.CancelledError:
                raise
            except (grpc.RpcError, LinkIdle) as exc:
                log.debug("pull from %s failed: %s", peer.region, exc)
            except Exception:
                log.exception("pull from %s failed", peer.region)
            if peer.connected:
                peer.connected = False
                self._hooks.on_peer(peer)
                self._link_changed()
                backoff = 0.1
            delay = backoff * (0.5 + self._rng.random())
            backoff = min(backoff * 2, 3.0)
            await asyncio.sleep(delay)

    async def _pull(self, peer: PeerState) -> None:
        async with self._channel(peer.address) as channel:
            stub = federation_pb2_grpc.FederationStub(channel)
            peer.updates = asyncio.Queue()
            first = fpb.PullRequest(
                region=self.region,
                version_vector=self._store.version_vector(),
                max_batch=self._max_batch,
                origins=self.wanted_from(peer.region),
            )

            async def requests():  # type: ignore[no-untyped-def]
                yield first
                while (update := await peer.updates.get()) is not None:
                    yield update

            call = stub.Pull(requests())
            watchdog = _IdleWatchdog(peer, call)
            try:
                while True:
                    try:
                        batch = await call.read()
                    except asyncio.CancelledError:
                        if watchdog.fired:  # the link is dead, not this task cancelled
                            raise LinkIdle(peer.region) from None
                        raise
                    if batch is aio.EOF:
                        return
                    await self._on_batch(peer, batch)
            finally:
                watchdog.stop()
                call.cancel()
                # Ends the request stream too: gRPC's task feeding it would otherwise wait
                # on the queue, and closing the channel waits for that task (5 s at stop).
                peer.updates.put_nowait(None)

    def _channel(self, address: str) -> aio.Channel:
        if self._credentials is None:
            return aio.insecure_channel(address, options=CHANNEL_OPTIONS)
        return aio.secure_channel(address, self._credentials, options=CHANNEL_OPTIONS)

    async def _on_batch(self, peer: PeerState, batch: fpb.OperationBatch) -> None:
        peer.last_seen = time.monotonic()
        peer.vv = dict(batch.sender_version_vector)
        peer.caught_up = batch.caught_up
        if not peer.connected:
            peer.connected = True
            log.info("replicating from %s (%s)", peer.region, peer.address)
            self._link_changed()
        if batch.operations:
            ops = [op_from_pb(m) for m in batch.operations]
            applied = await self._store.apply_remote(ops)
            peer.applied += len(applied)
            peer.batches += 1
            if applied:
                wall_ms = applied[-1].hlc >> 16
                now_ms = self._clock.now().timestamp() * 1000
                peer.lag_seconds = max(0.0, (now_ms - wall_ms) / 1000 / self._clock.speed())
                self._hooks.on_applied(peer.region, applied)
        self._hooks.on_peer(peer)

    # ----- what we know of the others ----------------------------------------------------

    def backlog(self, peer: str) -> int:
        """Operations we hold that ``peer`` lacks, as far as we know its vector."""
        mine = self._store.version_vector()
        theirs = self.peers[peer].vv
        return sum(max(0, seq - theirs.get(origin, 0)) for origin, seq in mine.items())

    def applied_in(self, origin: str, seq: int) -> tuple[list[str], list[str]]:
        have = [self.region]
        missing: list[str] = []
        for r, p in sorted(self.peers.items()):
            (have if p.vv.get(origin, 0) >= seq else missing).append(r)
        return have, missing
