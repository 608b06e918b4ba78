"""Sessions and queue ownership on a real etcd, through aetcd (asyncio, etcd v3 API).

``EtcdSession`` holds one lease and renews it every TTL/3. It keeps a *local lease
deadline*: the send time of the last keepalive that etcd answered, plus the TTL etcd
granted. etcd started that TTL no earlier than we sent the request, so the server-side
expiry is never before the local deadline; an owner that stops acting at the local
deadline has stopped before anyone else can take its keys. Lease timing uses
``time.monotonic()``: the business ``Clock`` may be simulated and must not drive it.

Once the deadline passes (or etcd says the lease is gone) the lease is lost for good.
When etcd answers again the session revokes the old lease — so none of its owner keys
outlive it — then grants a new one and writes the member key again. Holders of the old
lease learn it through ``wait_done()``, ``alive()`` and the changed ``lease_id``.

``EtcdOwnership`` moves ``/sundesk/owners/<queue>`` only by transactions guarded by the
key's revision (and by the lease it is attached to); the revision is the fencing epoch.

Every etcd call has a deadline (``call_timeout``, 2 s by default); failures become
``Unavailable`` naming the endpoint and the operation, with the aetcd error as cause.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections.abc import AsyncGenerator, Awaitable, Sequence
from typing import Any, TypeVar

import aetcd
import grpc
from aetcd import rpc, transactions

from federation.etcd_tls import etcd_client
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

log = logging.getLogger(__name__)
T = TypeVar("T")

# Loopback and LAN: reconnect quickly after etcd comes back (gRPC's default backoff
# grows to two minutes, far longer than a lease).
_CHANNEL_OPTIONS = {
    "grpc.initial_reconnect_backoff_ms": 100,
    "grpc.min_reconnect_backoff_ms": 100,
    "grpc.max_reconnect_backoff_ms": 1000,
}


class _NoSuchLease(Exception):
    """etcd answered "requested lease not found"; each caller decides what that means."""


class _LeaseIs(transactions.BaseCompare):
    """Compare the lease a key is attached to (aetcd 1.0 has no such compare)."""

    def build_compare(self, compare: Any) -> None:
        compare.target = rpc.Compare.LEASE
        compare.lease = int(self.value)


def _grpc_target(endpoints: str | Sequence[str]) -> tuple[str, int, str]:
    """aetcd dials f"{host}:{port}"; several endpoints become one gRPC ``ipv4:`` target
    (IP literals only) so the channel fails over between them."""
    items = [endpoints] if isinstance(endpoints, str) else list(endpoints)
    names = [e.strip().removeprefix("http://") for item in items for e in item.split(",")]
    names = [n for n in names if n]
    if not names:
        raise InvalidArgument("no etcd endpoint given")
    host, _, port = names[-1].rpartition(":")
    if not host or not port.isdigit():
        raise InvalidArgument(f"etcd endpoint {names[-1]!r} is not host:port")
    if len(names) > 1:
        host = "ipv4:" + ",".join([*names[:-1], host])
    return host, int(port), ",".join(names)


class EtcdSession:
    """One lease for the node's life, kept alive every TTL/3 (etcd's ``Session``).

    ``await start()`` grants the first lease (or raises ``Unavailable``); ``close()``
    revokes it; ``orphan()`` stops renewing without revoking, as a crash would.
    """

    def __init__(
        self,
        endpoints: str | Sequence[str],
        region: str,
        ttl: float = 3.0,
        clock: Clock | None = None,
        *,
        address: str = "",
        call_timeout: float = 2.0,
        credentials: grpc.ChannelCredentials | None = None,
    ) -> None:
        if ttl <= 0 or call_timeout <= 0:
            raise InvalidArgument("session ttl and call_timeout must be positive")
        member_key(region)  # validates the name
        self.region = region
        self.ttl = ttl
        self.clock: Clock = clock or SystemClock()
        self.address = address
        self.call_timeout = call_timeout
        host, port, self.endpoints = _grpc_target(endpoints)
        # With credentials: mTLS to an etcd that requires client certificates.
        self.client = etcd_client(
            host, port, credentials, timeout=call_timeout, options=dict(_CHANNEL_OPTIONS)
        )
        self._lease: int | None = None
        self._stale_lease: int | None = None  # lost, revoked before a new grant
        self._granted_ttl = float(math.ceil(ttl))
        self._deadline = 0.0
        self._next_renew = 0.0
        self._failing = False
        self._closed = False
        self._started_at = ""
        self._done = asyncio.Event()
        self._done.set()
        self._established = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    # -- the Session role --------------------------------------------------------------

    @property
    def lease_id(self) -> int | None:
        return self._lease if self.alive() else None

    @property
    def state(self) -> SessionState:
        if not self.alive():
            return "lost"
        return "expiring" if self._failing else "alive"

    @property
    def deadline(self) -> float:
        """The local lease deadline, on the ``time.monotonic()`` scale."""
        return self._deadline

    def alive(self) -> bool:
        return self._lease is not None and not self._closed and time.monotonic() < self._deadline

    async def wait_done(self) -> None:
        await self._done.wait()

    @property
    def done(self) -> asyncio.Event:
        """Set when the current lease is lost or the session closed (a new lease gets a
        new event)."""
        return self._done

    async def wait_alive(self) -> int:
        """Wait until a lease is held (after a loss: until etcd grants a new one)."""
        while True:
            await self._established.wait()
            lease = self.lease_id
            if lease is not None:
                return lease
            if self._closed:
                raise LeaseLost(f"session of {self.region} is closed")
            self._established.clear()

    async def start(self) -> EtcdSession:
        if self._task is not None:
            return self
        self._started_at = self.clock.now().isoformat()
        try:
            await self._establish()
        except (Unavailable, asyncio.CancelledError):
            # Cancelled too (the node stopping while etcd is away): an unclosed client
            # keeps its channel reconnecting.
            await self.client.close()
            raise
        self._task = asyncio.create_task(self._keep_alive(), name=f"etcd-session-{self.region}")
        return self

    async def close(self) -> None:
        """Stop renewing and revoke the lease. If etcd cannot be reached the lease simply
        expires within its TTL; close does not fail for that."""
        if self._closed:
            return
        lease = self._lease
        await self._stop(f"session of {self.region} closed")
        for stale in {lease, self._stale_lease} - {None}:
            assert stale is not None
            try:
                await self._call("lease revoke", self.client.revoke_lease(stale))
            except _NoSuchLease:
                pass
            except Unavailable as exc:
                log.warning("lease %x not revoked, it will expire by itself: %s", stale, exc)
        await self.client.close()

    async def orphan(self) -> None:
        """Stop renewing and disconnect without revoking (etcd's ``Session.Orphan``): the
        lease and its keys live until etcd expires them, as after a crash."""
        if self._closed:
            return
        await self._stop(f"session of {self.region} orphaned")
        await self.client.close()

    async def __aenter__(self) -> EtcdSession:
        return await self.start()

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    # -- lease upkeep ------------------------------------------------------------------

    async def _stop(self, reason: str) -> None:
        self._closed = True
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._mark_lost(reason)
        self._established.set()  # wake wait_alive() so it can report the close

    def _mark_lost(self, reason: str) -> None:
        if self._lease is None:
            return
        if not self._closed:
            log.warning("%s: lease %x lost: %s", self.region, self._lease, reason)
            self._stale_lease = self._lease
        self._lease = None
        self._failing = False
        self._done.set()
        self._established.clear()

    def _lease_gone(self, lease: int) -> None:
        """An ownership call learnt from etcd that our lease no longer exists."""
        if lease == self._lease:
            self._mark_lost("etcd no longer knows the lease")

    async def _establish(self) -> None:
        if self._stale_lease is not None:
            # Revoke first: owner keys of the lost lease must be gone before we act anew.
            with contextlib.suppress(_NoSuchLease):
                await self._call("lease revoke", self.client.revoke_lease(self._stale_lease))
            self._stale_lease = None
        sent = time.monotonic()
        granted = await self._call("lease grant", self.client.lease(math.ceil(self.ttl)))
        member = encode_json(
            {"region": self.region, "address": self.address, "started": self._started_at}
        )
        try:
            await self._call(
                "member put",
                self.client.put(member_key(self.region).encode(), member, lease=granted.id),
            )
        except (Unavailable, _NoSuchLease) as exc:
            self._stale_lease = granted.id
            raise Unavailable(f"member key of {self.region} not written: {exc}") from exc
        self._granted_ttl = float(granted.ttl)
        self._lease = granted.id
        self._deadline = sent + self._granted_ttl
        self._next_renew = sent + self._granted_ttl / 3
        self._failing = False
        self._done = asyncio.Event()
        self._established.set()
        log.info("%s: lease %x granted, ttl %g s", self.region, granted.id, granted.ttl)

    async def _keep_alive(self) -> None:
        while not self._closed:
            try:
                await self._step()
            except Unavailable as exc:
                log.debug("%s: no lease yet: %s", self.region, exc)
                await asyncio.sleep(self._retry_delay())
            except Exception:
                # A surprise from the client must not end renewals for the node's life.
                log.exception("%s: lease upkeep failed; retrying", self.region)
                await asyncio.sleep(self._retry_delay())

    async def _step(self) -> None:
        if self._lease is None:
            await self._establish()
            return
        now = time.monotonic()
        if now >= self._deadline:
            self._mark_lost("local lease deadline passed without a keepalive answer")
        elif now < self._next_renew:
            await asyncio.sleep(min(self._next_renew, self._deadline) - now)
        else:
            await self._renew(self._lease, now)

    async def _renew(self, lease: int, sent: float) -> None:
        # Never wait for an answer past the deadline: it would come too late to count.
        budget = min(self.call_timeout, self._deadline - sent)
        try:
            reply = await self._call("lease keepalive", self.client.refresh_lease(lease), budget)
        except _NoSuchLease:
            self._mark_lost("etcd no longer knows the lease")
            return
        except Unavailable as exc:
            if not self._failing:
                log.warning("%s: keepalive of lease %x failing: %s", self.region, lease, exc)
            self._failing = True
            self._next_renew = time.monotonic() + self._retry_delay()
            return
        if lease != self._lease:
            return
        if reply is None or reply.TTL <= 0:
            self._mark_lost("etcd says the lease expired or was revoked")
        elif time.monotonic() >= self._deadline:
            self._mark_lost("keepalive answered after the local lease deadline")
        else:
            self._deadline = sent + float(reply.TTL)
            self._next_renew = sent + float(reply.TTL) / 3
            if self._failing:
                log.info("%s: keepalive of lease %x answered again", self.region, lease)
            self._failing = False

    def _retry_delay(self) -> float:
        return min(self._granted_ttl / 3, 0.25)

    async def _call(self, what: str, call: Awaitable[T], budget: float | None = None) -> T:
        """Run one etcd call under a deadline; errors become ``Unavailable``."""
        limit = self.call_timeout if budget is None else max(budget, 0.001)
        try:
            async with asyncio.timeout(limit):
                return await call
        except TimeoutError as exc:
            raise Unavailable(
                f"etcd at {self.endpoints} did not answer {what} within {limit:.3g} s"
            ) from exc
        except aetcd.ClientError as exc:
            if "requested lease not found" in str(exc):
                raise _NoSuchLease(str(exc)) from exc
            raise Unavailable(f"etcd at {self.endpoints} failed {what}: {exc}") from exc


class EtcdOwnership:
    """Queue ownership for one node, on its session (etcd's ``Election``)."""

    def __init__(self, session: EtcdSession) -> None:
        self.session = session
        self._client = session.client
        self._tx = session.client.transactions
        self._view = LocalView()

    # -- changes -----------------------------------------------------------------------

    async def acquire(self, queue: str, kind: str) -> int:
        """Create-if-absent under our lease. Idempotent for our own current lease (a
        retry after a timeout that did apply), whatever kind it was taken as."""
        key = owner_key(queue).encode()
        value = owner_value(self.session.region, kind, self.session.clock.now())
        lease = self._our_lease()
        ok, responses = await self._txn(
            f"acquire of {queue}",
            lease,
            compare=[self._tx.create(key) == 0],
            success=[self._tx.put(key, value, lease=lease), self._tx.get(key)],
            failure=[self._tx.get(key)],
        )
        found = await self._settle(queue, responses[1] if ok else responses[0])
        if found is not None and found[1] == lease:
            return found[0].epoch
        current = found[0] if found else None
        raise OwnershipConflict(
            f"queue {queue!r} is owned by {describe(current)}", queue=queue, current=current
        )

    async def handoff(
        self, queue: str, to_region: str, to_lease_id: int, kind: str, expected_epoch: int
    ) -> int:
        """Move the owner key to ``to_region``'s lease in one transaction, guarded by the
        epoch, by our lease holding the key and by the member key of ``to_region`` still
        being on ``to_lease_id``: never zero owners, never two."""
        if to_lease_id <= 0:
            raise InvalidArgument("handoff needs the incoming node's lease id")
        key = owner_key(queue).encode()
        target = member_key(to_region).encode()
        value = owner_value(to_region, kind, self.session.clock.now())
        lease = self._our_lease()
        ok, responses = await self._txn(
            f"handoff of {queue} to {to_region}",
            lease,
            compare=[
                self._tx.mod(key) == expected_epoch,
                _LeaseIs(key) == lease,
                _LeaseIs(target) == to_lease_id,
            ],
            success=[self._tx.put(key, value, lease=to_lease_id), self._tx.get(key)],
            failure=[self._tx.get(key), self._tx.get(target)],
            puts_for=to_lease_id,
        )
        found = await self._settle(queue, responses[1] if ok else responses[0])
        if ok and found is not None:
            return found[0].epoch
        if found is None or found[0].epoch != expected_epoch or found[1] != lease:
            current = found[0] if found else None
            raise NotOwner(
                f"handoff of {queue!r} at epoch {expected_epoch}: the key is held by "
                f"{describe(current)}",
                queue=queue,
                current=current,
            )
        members = responses[1]
        seen = f"lease {members[0][1].lease:x}" if members else "no member key"
        raise MemberGone(
            f"handoff of {queue!r}: {to_region} is not on lease {to_lease_id:x} ({seen})"
        )

    async def release(self, queue: str, expected_epoch: int) -> None:
        key = owner_key(queue).encode()
        lease = self._our_lease()
        ok, responses = await self._txn(
            f"release of {queue}",
            lease,
            compare=[self._tx.mod(key) == expected_epoch, _LeaseIs(key) == lease],
            success=[self._tx.delete(key)],
            failure=[self._tx.get(key)],
        )
        if ok:
            revision = responses[0].response_delete_range.header.revision
            self._observe(queue, revision or expected_epoch + 1, None)
            return
        found = await self._settle(queue, responses[0])
        current = found[0] if found else None
        raise NotOwner(
            f"release of {queue!r} at epoch {expected_epoch}: the key is held by "
            f"{describe(current)}",
            queue=queue,
            current=current,
        )

    def is_owner(self, queue: str) -> int | None:
        return self._view.held(queue, self.session.lease_id)

    # -- reads -------------------------------------------------------------------------

    async def owner(self, queue: str) -> Owner | None:
        found = await self._read(queue)
        return found[0] if found else None

    async def owners(self) -> dict[str, Owner]:
        got = await self.session._call(
            "read of owners", self._client.get_prefix(OWNERS_PREFIX.encode())
        )
        result: dict[str, Owner] = {}
        for kv in got:
            queue = kv.key.decode()[len(OWNERS_PREFIX) :]
            found = _owner_in([(kv.value, kv)])
            if found is not None:
                result[queue] = found[0]
                self._observe(queue, got.header.revision, found)
        for queue in self._view.queues() - set(result):
            self._observe(queue, got.header.revision, None)
        return result

    async def member(self, region: str) -> dict[str, Any] | None:
        got = await self.session._call(
            f"read of member {region}", self._client.get(member_key(region).encode())
        )
        if got is None:
            return None
        return {**decode_json(got.value), "lease_id": got.lease}

    async def members(self) -> dict[str, dict[str, Any]]:
        got = await self.session._call(
            "read of members", self._client.get_prefix(MEMBERS_PREFIX.encode())
        )
        return {
            kv.key.decode()[len(MEMBERS_PREFIX) :]: {**decode_json(kv.value), "lease_id": kv.lease}
            for kv in got
        }

    async def watch(
        self, prefix: str = OWNERS_PREFIX, start_revision: int | None = None
    ) -> AsyncGenerator[OwnerEvent, None]:
        """Owner changes under ``prefix``, from ``start_revision`` if given (inclusive).

        A broken stream (etcd gone, history compacted) raises ``Unavailable``; resume
        with ``start_revision`` = last event's epoch + 1. Close with ``aclose()``.
        """
        what = f"watch of {prefix}"
        watch = await self.session._call(
            what, self._client.watch_prefix(prefix.encode(), start_revision=start_revision)
        )
        try:
            async for event in watch:
                key = event.kv.key.decode()
                queue = key.removeprefix(OWNERS_PREFIX if key.startswith(OWNERS_PREFIX) else prefix)
                epoch = event.kv.mod_revision
                if event.kind == aetcd.EventKind.PUT:
                    value = decode_json(event.kv.value)
                    owner = Owner(str(value.get("region", "")), epoch, value)
                    self._observe(queue, epoch, (owner, event.kv.lease))
                    yield OwnerEvent(queue, value.get("region"), epoch, value.get("kind"))
                else:
                    self._observe(queue, epoch, None)
                    yield OwnerEvent(queue, None, epoch)
        except aetcd.ClientError as exc:
            raise Unavailable(f"etcd at {self.session.endpoints}: {what} broke: {exc}") from exc
        finally:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(watch.cancel(), self.session.call_timeout)

    # -- internals ---------------------------------------------------------------------

    def _our_lease(self) -> int:
        lease = self.session.lease_id
        if lease is None:
            raise LeaseLost(
                f"{self.session.region} holds no live lease (session {self.session.state})"
            )
        return lease

    async def _txn(
        self,
        what: str,
        lease: int,
        *,
        compare: list[Any],
        success: list[Any],
        failure: list[Any],
        puts_for: int | None = None,
    ) -> tuple[bool, list[Any]]:
        """One transaction. ``puts_for``: the lease the success branch attaches the key
        to, when it is not ours (a handoff)."""
        try:
            ok, responses = await self.session._call(
                what, self._client.transaction(compare=compare, success=success, failure=failure)
            )
        except _NoSuchLease as exc:
            if puts_for is not None:
                raise MemberGone(f"{what}: lease {puts_for:x} no longer exists") from exc
            self.session._lease_gone(lease)
            raise LeaseLost(f"{what}: etcd no longer knows lease {lease:x}") from exc
        return bool(ok), list(responses)

    async def _read(self, queue: str) -> tuple[Owner, int] | None:
        key = owner_key(queue).encode()
        got = await self.session._call(
            f"read of owner {queue}", self._client.get_range(key, key + b"\0")
        )
        found = _owner_in([(kv.value, kv) for kv in got])
        self._observe(queue, got.header.revision, found)
        return found

    async def _settle(self, queue: str, range_result: list[Any]) -> tuple[Owner, int] | None:
        """Record the owner key a transaction returned. A txn that found no key tells no
        revision (aetcd drops the txn header), so read it again to order the view."""
        found = _owner_in(range_result)
        if found is not None:
            self._observe(queue, range_result[0][1].header.revision, found)
            return found
        try:
            return await self._read(queue)
        except Unavailable:
            self._view.forget(queue)
            return None

    def _observe(self, queue: str, as_of: int, found: tuple[Owner, int] | None) -> None:
        self._view.observe(queue, as_of, (found[0].epoch, found[1]) if found else None)


def _owner_in(range_result: list[Any]) -> tuple[Owner, int] | None:
    """The owner and its lease from a txn range result ``[(value, Get)]``."""
    if not range_result:
        return None
    _, kv = range_result[0]
    value = decode_json(kv.value)
    return Owner(str(value.get("region", "")), kv.mod_revision, value), kv.lease
