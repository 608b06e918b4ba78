"""Sessions and queue ownership in one process, for unit tests of the code that uses them.

``MemoryEtcd`` keeps what ownership needs of etcd: a revision counter, keys attached to
leases, lease expiry, and the event history for watches. Lease time is manual: it moves
only with ``advance(seconds)``, which then lets every open session do what its keepalive
task would (renew; after a loss, revoke and take a new lease). ``reachable = False``
makes every call fail with ``Unavailable`` and renewals fail, as a dead etcd would.

The semantics match ``etcd_leases``: same keys, same guards, same named errors.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import AsyncGenerator
from dataclasses import dataclass
from typing import Any

from federation.leases import (
    MEMBERS_PREFIX,
    OWNERS_PREFIX,
    LeaseLost,
    LocalView,
    MemberGone,
    NotOwner,
    Owner,
    OwnerEvent,
    OwnershipConflict,
    SessionState,
    decode_json,
    describe,
    encode_json,
    member_key,
    owner_key,
    owner_value,
)
from node.clock import Clock, SystemClock
from node.errors import InvalidArgument, Unavailable


@dataclass(frozen=True)
class _Entry:
    value: bytes
    mod_revision: int
    lease: int


class MemoryEtcd:
    def __init__(self) -> None:
        self.now = 0.0
        self.revision = 1
        self.reachable = True
        self.keys: dict[str, _Entry] = {}
        self.leases: dict[int, float] = {}  # lease id -> expiry (lease time)
        self._ids = itertools.count(0x1000)
        self._history: list[tuple[int, str, _Entry | None]] = []
        self._watchers: list[asyncio.Queue[tuple[int, str, _Entry | None]]] = []
        self._sessions: list[MemorySession] = []

    def advance(self, seconds: float) -> None:
        """Move lease time in one jump, expire leases, then let sessions catch up."""
        self.now += seconds
        self.expire()
        for session in list(self._sessions):
            session.tick()

    def check(self) -> None:
        if not self.reachable:
            raise Unavailable("memory etcd is unreachable")
        self.expire()

    def expire(self) -> None:
        for lease, expiry in list(self.leases.items()):
            if expiry <= self.now:
                self.revoke(lease)

    def grant(self, ttl: float) -> int:
        lease = next(self._ids)
        self.leases[lease] = self.now + ttl
        return lease

    def revoke(self, lease: int) -> None:
        self.leases.pop(lease, None)
        for key, entry in list(self.keys.items()):
            if entry.lease == lease:
                self.delete(key)

    def put(self, key: str, value: bytes, lease: int) -> int:
        if lease and lease not in self.leases:
            raise MemberGone(f"lease {lease:x} not found")
        self.revision += 1
        entry = _Entry(value, self.revision, lease)
        self.keys[key] = entry
        self._emit(key, entry)
        return self.revision

    def delete(self, key: str) -> int:
        if self.keys.pop(key, None) is not None:
            self.revision += 1
            self._emit(key, None)
        return self.revision

    def _emit(self, key: str, entry: _Entry | None) -> None:
        event = (self.revision, key, entry)
        self._history.append(event)
        for queue in self._watchers:
            queue.put_nowait(event)


class MemorySession:
    def __init__(
        self,
        store: MemoryEtcd,
        region: str,
        ttl: float = 3.0,
        clock: Clock | None = None,
        *,
        address: str = "",
    ) -> None:
        member_key(region)
        self.store = store
        self.region = region
        self.ttl = ttl
        self.clock: Clock = clock or SystemClock()
        self.address = address
        self._lease: int | None = None
        self._stale: int | None = None
        self._deadline = 0.0
        self._failing = False
        self._closed = False
        self._done = asyncio.Event()
        self._done.set()
        self._started = ""

    @property
    def lease_id(self) -> int | None:
        return self._lease if self.alive() else None

    @property
    def state(self) -> SessionState:
        if not self.alive():
            return "lost"
        return "expiring" if self._failing else "alive"

    def alive(self) -> bool:
        return (
            self._lease is not None
            and not self._closed
            and self.store.now < self._deadline
            and (not self.store.reachable or self._lease in self.store.leases)
        )

    async def wait_done(self) -> None:
        await self._done.wait()

    async def start(self) -> MemorySession:
        self.store.check()
        self._started = self.clock.now().isoformat()
        self._establish()
        self.store._sessions.append(self)
        return self

    async def close(self) -> None:
        if self._closed:
            return
        lease = self._lease
        self._stop()
        if lease is not None and self.store.reachable:
            self.store.revoke(lease)

    async def orphan(self) -> None:
        self._stop()

    async def __aenter__(self) -> MemorySession:
        return await self.start()

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    def tick(self) -> None:
        """What the keepalive task does when lease time moves."""
        if self._closed:
            return
        if not self.store.reachable:
            self._failing = True
            if self.store.now >= self._deadline:
                self._lose()
            return
        self.store.expire()
        if self._lease is not None and self._lease not in self.store.leases:
            self._lose()
        if self._lease is None:
            if self._stale is not None:
                self.store.revoke(self._stale)
                self._stale = None
            self._establish()
        else:
            self.store.leases[self._lease] = self.store.now + self.ttl
            self._deadline = self.store.now + self.ttl
            self._failing = False

    def _establish(self) -> None:
        self._lease = self.store.grant(self.ttl)
        self._deadline = self.store.now + self.ttl
        self._failing = False
        self._done = asyncio.Event()
        value = {"region": self.region, "address": self.address, "started": self._started}
        self.store.put(member_key(self.region), encode_json(value), self._lease)

    def _lose(self) -> None:
        if self._lease is not None:
            self._stale, self._lease = self._lease, None
            self._done.set()

    def _stop(self) -> None:
        self._closed = True
        self._lease = None
        self._done.set()
        if self in self.store._sessions:
            self.store._sessions.remove(self)


class MemoryOwnership:
    def __init__(self, session: MemorySession) -> None:
        self.session = session
        self.store = session.store
        self._view = LocalView()

    async def acquire(self, queue: str, kind: str) -> int:
        key = owner_key(queue)
        value = owner_value(self.session.region, kind, self.session.clock.now())
        lease = self._our_lease()
        entry = self.store.keys.get(key)
        if entry is None:
            epoch = self.store.put(key, value, lease)
            self._view.observe(queue, epoch, (epoch, lease))
            return epoch
        self._view.observe(queue, self.store.revision, (entry.mod_revision, entry.lease))
        if entry.lease == lease:
            return entry.mod_revision
        current = _owner(entry)
        raise OwnershipConflict(
            f"queue {queue!r} is owned by {describe(current)}", queue=queue, current=current
        )

    async def handoff(
        self, queue: str, to_region: str, to_lease_id: int, kind: str, expected_epoch: int
    ) -> int:
        if to_lease_id <= 0:
            raise InvalidArgument("handoff needs the incoming node's lease id")
        key = owner_key(queue)
        value = owner_value(to_region, kind, self.session.clock.now())
        lease = self._our_lease()
        self._guard(queue, key, expected_epoch, lease, "handoff")
        target = self.store.keys.get(member_key(to_region))
        if target is None or target.lease != to_lease_id:
            seen = f"lease {target.lease:x}" if target else "no member key"
            raise MemberGone(
                f"handoff of {queue!r}: {to_region} is not on lease {to_lease_id:x} ({seen})"
            )
        epoch = self.store.put(key, value, to_lease_id)
        self._view.observe(queue, epoch, (epoch, to_lease_id))
        return epoch

    async def release(self, queue: str, expected_epoch: int) -> None:
        key = owner_key(queue)
        self._guard(queue, key, expected_epoch, self._our_lease(), "release")
        self._view.observe(queue, self.store.delete(key), None)

    def is_owner(self, queue: str) -> int | None:
        return self._view.held(queue, self.session.lease_id)

    async def owner(self, queue: str) -> Owner | None:
        self.store.check()
        entry = self.store.keys.get(owner_key(queue))
        holder = (entry.mod_revision, entry.lease) if entry else None
        self._view.observe(queue, self.store.revision, holder)
        return _owner(entry) if entry else None

    async def owners(self) -> dict[str, Owner]:
        self.store.check()
        queues = {k[len(OWNERS_PREFIX) :] for k in self.store.keys if k.startswith(OWNERS_PREFIX)}
        return {
            queue: owner
            for queue in sorted(queues | self._view.queues())
            if (owner := await self.owner(queue)) is not None
        }

    async def member(self, region: str) -> dict[str, Any] | None:
        self.store.check()
        entry = self.store.keys.get(member_key(region))
        return {**decode_json(entry.value), "lease_id": entry.lease} if entry else None

    async def members(self) -> dict[str, dict[str, Any]]:
        self.store.check()
        return {
            key[len(MEMBERS_PREFIX) :]: {**decode_json(entry.value), "lease_id": entry.lease}
            for key, entry in self.store.keys.items()
            if key.startswith(MEMBERS_PREFIX)
        }

    async def watch(
        self, prefix: str = OWNERS_PREFIX, start_revision: int | None = None
    ) -> AsyncGenerator[OwnerEvent, None]:
        self.store.check()
        live: asyncio.Queue[tuple[int, str, _Entry | None]] = asyncio.Queue()
        self.store._watchers.append(live)
        backlog = [e for e in self.store._history if start_revision and e[0] >= start_revision]
        last = 0
        try:
            for event in backlog:
                last = event[0]
                if event[1].startswith(prefix):
                    yield self._event(prefix, *event)
            while True:
                event = await live.get()
                if event[0] > last and event[1].startswith(prefix):
                    yield self._event(prefix, *event)
        finally:
            self.store._watchers.remove(live)

    def _event(self, prefix: str, revision: int, key: str, entry: _Entry | None) -> OwnerEvent:
        queue = key.removeprefix(OWNERS_PREFIX if key.startswith(OWNERS_PREFIX) else prefix)
        if entry is None:
            self._view.observe(queue, revision, None)
            return OwnerEvent(queue, None, revision)
        self._view.observe(queue, revision, (revision, entry.lease))
        owner = _owner(entry)
        return OwnerEvent(queue, owner.region, revision, owner.kind)

    def _our_lease(self) -> int:
        self.store.check()
        lease = self.session.lease_id
        if lease is None:
            raise LeaseLost(f"{self.session.region} holds no live lease")
        return lease

    def _guard(self, queue: str, key: str, expected_epoch: int, lease: int, what: str) -> None:
        entry = self.store.keys.get(key)
        holder = (entry.mod_revision, entry.lease) if entry else None
        self._view.observe(queue, self.store.revision, holder)
        if entry is None or entry.mod_revision != expected_epoch or entry.lease != lease:
            current = _owner(entry) if entry else None
            raise NotOwner(
                f"{what} of {queue!r} at epoch {expected_epoch}: the key is held by "
                f"{describe(current)}",
                queue=queue,
                current=current,
            )


def _owner(entry: _Entry) -> Owner:
    value = decode_json(entry.value)
    return Owner(str(value.get("region", "")), entry.mod_revision, value)
