"""The sending side of replication: the ``Federation`` servicer.

A puller opens ``Pull`` with its version vector and the origins it wants from us; we
stream what it lacks in per-origin seq order, then every new operation as it commits.
Awaiting each write is the back-pressure: a slow puller slows only its own stream.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable

from grpc import aio

from federation.operations import Operation
from federation.wire import op_to_pb
from node.sqlite_store import SqliteTicketStore
from node.store import Change
from sundesk.v1 import federation_pb2 as fpb
from sundesk.v1 import federation_pb2_grpc

log = logging.getLogger("sundesk.replication")

DEFAULT_BATCH = 500
MAX_BATCH = 5000
HEARTBEAT_SECONDS = 1.0


class CommitSignal:
    """Wakes the senders waiting for an origin after each durable commit that holds one of
    its operations.

    A node applies every peer's batches, so most commits carry nothing a given stream
    sends (it sends the peer's own origin); waking every stream on every commit cost more
    loop time than the sending. Each stream subscribes its own wake-up event with the
    origins it sends (read live: the puller may change them). A stream clears its event
    *before* reading the log: a commit that lands in between sets it again, so no wake-up
    is lost.
    """

    def __init__(self) -> None:
        self._streams: set[_PullState] = set()

    def subscribe(self, stream: _PullState) -> None:
        self._streams.add(stream)

    def unsubscribe(self, stream: _PullState) -> None:
        self._streams.discard(stream)

    def notify(self, changes: list[Change] | None = None) -> None:
        """Wake the streams that send an origin of ``changes``; None wakes every stream."""
        changed = None if changes is None else {c.op.origin for c in changes}
        for stream in self._streams:
            origins = stream.origins
            if changed is None or not origins or not origins.isdisjoint(changed):
                stream.wake.set()


class _PullState:
    def __init__(self, first: fpb.PullRequest) -> None:
        self.region = first.region
        self.cursor: dict[str, int] = dict(first.version_vector)
        self.origins: frozenset[str] = frozenset(first.origins)  # empty: every origin
        self.max_batch = min(first.max_batch or DEFAULT_BATCH, MAX_BATCH)
        self.wake = asyncio.Event()

    def update(self, req: fpb.PullRequest) -> None:
        for origin, seq in req.version_vector.items():
            if seq > self.cursor.get(origin, 0):
                self.cursor[origin] = seq
        self.origins = frozenset(req.origins)
        self.wake.set()


class FederationService(federation_pb2_grpc.FederationServicer):
    def __init__(
        self,
        store: SqliteTicketStore,
        signal: CommitSignal,
        status: Callable[[bool], fpb.NodeStatus],
        on_batch: Callable[[str, list[Operation]], None] | None = None,
    ) -> None:
        self._store = store
        self._signal = signal
        self._status = status
        self._on_batch = on_batch
        self._closing = False

    def close(self) -> None:
        """End every Pull stream now (the node is stopping): the server's grace period is
        then not spent waiting for streams that never end by themselves."""
        self._closing = True
        self._signal.notify(None)

    async def Status(
        self, request: fpb.NodeStatusRequest, context: aio.ServicerContext
    ) -> fpb.NodeStatus:
        return self._status(not request.skip_digest)

    async def Pull(
        self, request_iterator: AsyncIterator[fpb.PullRequest], context: aio.ServicerContext
    ) -> AsyncIterator[fpb.OperationBatch]:
        first = await anext(aiter(request_iterator), None)
        if first is None:
            return
        state = _PullState(first)
        reader = asyncio.create_task(_read_updates(request_iterator, state))
        self._signal.subscribe(state)
        try:
            idle_sent = False
            while not self._closing:
                state.wake.clear()
                batch = self._next_batch(state)
                if batch is None:
                    if not idle_sent:
                        yield self._batch([], caught_up=True)
                        idle_sent = True
                    if not await _wait(state.wake, HEARTBEAT_SECONDS):
                        # Heartbeat: lets the puller see the link is alive and our vector.
                        yield self._batch([], caught_up=True)
                    continue
                idle_sent = False
                msg, ops = batch
                yield msg
                if self._on_batch is not None:
                    self._on_batch(state.region, ops)
        finally:
            self._signal.unsubscribe(state)
            reader.cancel()

    def _next_batch(self, state: _PullState) -> tuple[fpb.OperationBatch, list[Operation]] | None:
        vv = self._store.version_vector()
        wanted = {
            origin: state.cursor.get(origin, 0)
            for origin, seq in vv.items()
            if (not state.origins or origin in state.origins) and seq > state.cursor.get(origin, 0)
        }
        if not wanted:
            return None
        ops = self._store.read_ops(wanted, state.max_batch)
        if not ops:
            return None
        for op in ops:
            state.cursor[op.origin] = op.seq
        caught_up = len(ops) < state.max_batch
        return self._batch([op_to_pb(op) for op in ops], caught_up=caught_up, vv=vv), ops

    def _batch(
        self, ops: list[fpb.Operation], caught_up: bool, vv: dict[str, int] | None = None
    ) -> fpb.OperationBatch:
        return fpb.OperationBatch(
            operations=ops,
            sender_version_vector=vv if vv is not None else self._store.version_vector(),
            caught_up=caught_up,
        )


async def _wait(event: asyncio.Event, within: float) -> bool:
    """Wait until ``event`` is set; False if it is not within ``within`` seconds.

    A timer handle rather than ``asyncio.wait_for``, which runs the wait as a task of its
    own: a sender waits once per batch it sends, and the task cost more than the send.
    """
    if event.is_set():
        return True
    expired = False

    def expire() -> None:
        nonlocal expired
        expired = True
        event.set()

    timer = asyncio.get_running_loop().call_later(within, expire)
    try:
        await event.wait()
    finally:
        timer.cancel()
    return not expired


async def _read_updates(requests: AsyncIterator[fpb.PullRequest], state: _PullState) -> None:
    with contextlib.suppress(Exception):
        async for req in requests:
            state.update(req)
