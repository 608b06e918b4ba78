"""Queue ownership on a real etcd: sessions, guarded handoffs, failover, a frozen etcd.

Each test starts its own etcd (``etcd_server``) and drives asyncio with ``asyncio.run``
under a hard deadline. Waits are for conditions, each with its own deadline.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import time
from collections.abc import AsyncIterator, Callable, Coroutine
from typing import Any

import pytest

from federation.etcd_leases import EtcdOwnership, EtcdSession
from federation.leases import (
    EpochFence,
    LeaseLost,
    MemberGone,
    NotOwner,
    OwnerEvent,
    OwnershipConflict,
    StaleEpoch,
)
from federation.memory_leases import MemoryEtcd, MemoryOwnership, MemorySession
from node.errors import FailedPrecondition, Unavailable
from tests.support import etcd as support_etcd
from tests.support.etcd import EtcdServer, free_port

etcd_server = support_etcd.etcd_server  # the fixture, one fresh etcd per test

TTL = 2.0


def run(scenario: Coroutine[Any, Any, None], deadline: float = 12.0) -> None:
    asyncio.run(asyncio.wait_for(scenario, deadline))


async def eventually(probe: Callable[[], Any], within: float, what: str) -> Any:
    """Poll ``probe`` (plain or async) until it returns something truthy, for at most
    ``within`` seconds; the value is returned."""
    limit = time.monotonic() + within
    while True:
        value = probe()
        if inspect.isawaitable(value):
            value = await value
        if value:
            return value
        if time.monotonic() >= limit:
            raise AssertionError(f"not within {within} s: {what}")
        await asyncio.sleep(0.02)


@contextlib.asynccontextmanager
async def node(
    server: EtcdServer, region: str, **options: Any
) -> AsyncIterator[tuple[EtcdSession, EtcdOwnership]]:
    session = await EtcdSession(server.endpoint, region, ttl=TTL, **options).start()
    try:
        yield session, EtcdOwnership(session)
    finally:
        await session.close()


# -- sessions ------------------------------------------------------------------------


@pytest.mark.integration
@pytest.mark.timeout(15)
def test_session_grants_lease_registers_member_and_close_revokes(etcd_server: EtcdServer) -> None:
    async def scenario() -> None:
        async with node(etcd_server, "ger") as (_, observer):
            session = await EtcdSession(
                etcd_server.endpoint, "vel", ttl=TTL, address="127.0.0.1:7101"
            ).start()
            lease = session.lease_id
            assert lease and session.alive() and session.state == "alive"
            member = await observer.member("vel")
            assert member is not None
            assert member["lease_id"] == lease
            assert member["region"] == "vel" and member["address"] == "127.0.0.1:7101"
            epoch = await EtcdOwnership(session).acquire("VEL", "home")
            owner = await observer.owner("VEL")
            assert owner is not None and (owner.region, owner.epoch, owner.kind) == (
                "vel",
                epoch,
                "home",
            )

            await session.close()

            assert not session.alive() and session.state == "lost" and session.lease_id is None
            await asyncio.wait_for(session.wait_done(), 0.1)
            assert await observer.member("vel") is None
            assert await observer.owner("VEL") is None
            info = await observer.session.client.get_lease_info(lease)
            assert info.TTL == -1  # etcd no longer knows the lease

    run(scenario())


@pytest.mark.timeout(15)
def test_session_without_etcd_fails_fast_with_unavailable() -> None:
    async def scenario() -> None:
        session = EtcdSession(f"127.0.0.1:{free_port()}", "vel", ttl=TTL, call_timeout=0.5)
        started = time.monotonic()
        with pytest.raises(Unavailable, match="lease grant"):
            await session.start()
        assert time.monotonic() - started < 1.5

    run(scenario())


# -- ownership changes ----------------------------------------------------------------


@pytest.mark.integration
@pytest.mark.timeout(15)
def test_acquire_conflict_and_guarded_handoff(etcd_server: EtcdServer) -> None:
    async def scenario() -> None:
        async with node(etcd_server, "vel") as (sa, a), node(etcd_server, "ger") as (sb, b):
            e1 = await a.acquire("VEL", "home")
            assert a.is_owner("VEL") == e1 and b.is_owner("VEL") is None
            with pytest.raises(OwnershipConflict, match="vel") as conflict:
                await b.acquire("VEL", "borrowed")
            assert conflict.value.current is not None and conflict.value.current.epoch == e1
            assert await a.acquire("VEL", "home") == e1  # a retry by the owner is harmless

            events: list[OwnerEvent] = []
            watch = b.watch(start_revision=e1)

            async def collect() -> None:
                async for event in watch:
                    events.append(event)
                    if len(events) == 3:
                        return

            collecting = asyncio.create_task(collect())

            member_b = await a.member("ger")
            assert member_b is not None and member_b["lease_id"] == sb.lease_id
            e2 = await a.handoff("VEL", "ger", member_b["lease_id"], "borrowed", e1)
            assert e2 == e1 + 1  # one transaction, one revision: no moment without owner
            assert a.is_owner("VEL") is None
            owner = await b.owner("VEL")
            assert owner is not None and (owner.region, owner.epoch, owner.kind) == (
                "ger",
                e2,
                "borrowed",
            )
            assert b.is_owner("VEL") == e2

            with pytest.raises(NotOwner):  # the old owner, with its old epoch
                await a.handoff("VEL", "ger", member_b["lease_id"], "borrowed", e1)
            with pytest.raises(NotOwner):  # the new owner, with a stale epoch
                await b.handoff("VEL", "vel", sa.lease_id or 0, "home", e1)
            e3 = await b.handoff("VEL", "vel", sa.lease_id or 0, "home", e2)

            await asyncio.wait_for(collecting, 5)
            await watch.aclose()
            assert [(e.queue, e.region, e.epoch) for e in events] == [
                ("VEL", "vel", e1),
                ("VEL", "ger", e2),
                ("VEL", "vel", e3),
            ]
            assert e1 < e2 < e3
            assert b.is_owner("VEL") is None
            # The incoming node acts once it has seen the key (a read or its own watch).
            assert a.is_owner("VEL") is None
            assert await a.owner("VEL") is not None and a.is_owner("VEL") == e3

            with pytest.raises(MemberGone):  # the incoming lease must be the member's
                await a.handoff("VEL", "ger", (sb.lease_id or 0) + 1, "borrowed", e3)
            assert a.is_owner("VEL") == e3
            with pytest.raises(NotOwner):
                await a.release("VEL", e2)
            await a.release("VEL", e3)
            assert await b.owner("VEL") is None and a.is_owner("VEL") is None

    run(scenario())


@pytest.mark.integration
@pytest.mark.timeout(15)
def test_failover_after_owner_stops_renewing(etcd_server: EtcdServer) -> None:
    async def scenario() -> None:
        async with node(etcd_server, "uk") as (_, b):
            sa = await EtcdSession(etcd_server.endpoint, "vel", ttl=TTL).start()
            a = EtcdOwnership(sa)
            e1 = await a.acquire("VEL", "home")

            crashed = time.monotonic()
            await sa.orphan()  # keepalives stop, nothing revoked: a crash as etcd sees it

            assert a.is_owner("VEL") is None
            with pytest.raises(OwnershipConflict):  # the key lives until the lease expires
                await b.acquire("VEL", "borrowed")

            async def take() -> int | None:
                with contextlib.suppress(OwnershipConflict):
                    return await b.acquire("VEL", "borrowed")
                return None

            e2 = await eventually(take, TTL + 1, "the borrower takes the queue")
            assert time.monotonic() - crashed <= TTL + 1
            assert e2 > e1 and b.is_owner("VEL") == e2
            assert await b.member("vel") is None

    run(scenario())


# -- a frozen or restarted etcd --------------------------------------------------------


@pytest.mark.integration
@pytest.mark.timeout(15)
def test_owner_stops_at_local_deadline_while_etcd_is_frozen(etcd_server: EtcdServer) -> None:
    async def scenario() -> None:
        async with node(etcd_server, "jpn", call_timeout=0.5) as (session, own):
            e1 = await own.acquire("JPN", "home")
            old = session.lease_id
            done = session.done
            etcd_server.pause()
            try:
                frozen = time.monotonic()
                acting = await eventually(
                    lambda: session.state == "expiring" and own.is_owner("JPN"),
                    TTL,
                    "renewals failing while the owner still acts within its lease",
                )
                assert acting == e1
                await eventually(lambda: not session.alive(), TTL + 0.5, "lease deadline")
                assert time.monotonic() - frozen <= TTL + 0.1
                assert own.is_owner("JPN") is None and session.state == "lost"
                await asyncio.wait_for(done.wait(), 0.5)
                with pytest.raises(LeaseLost):
                    await own.acquire("OTHER", "home")
                with pytest.raises(Unavailable, match="did not answer"):
                    await own.owner("JPN")  # etcd has still not answered anything
                assert time.monotonic() - frozen > TTL
            finally:
                etcd_server.resume()

            new = await asyncio.wait_for(session.wait_alive(), 5)
            assert new != old and session.state == "alive"
            assert await own.owner("JPN") is None  # went with the old lease
            member = await own.member("jpn")
            assert member is not None and member["lease_id"] == new
            assert await own.acquire("JPN", "home") > e1

    run(scenario())


@pytest.mark.integration
@pytest.mark.timeout(15)
def test_session_takes_a_new_lease_after_etcd_restarts(etcd_server: EtcdServer) -> None:
    async def scenario() -> None:
        async with node(etcd_server, "us", call_timeout=0.5) as (session, own):
            await own.acquire("US", "home")
            old = session.lease_id
            etcd_server.kill()
            await eventually(lambda: not session.alive(), TTL + 0.5, "lease deadline")
            etcd_server.restart()
            new = await asyncio.wait_for(session.wait_alive(), 6)
            assert new != old
            # etcd restores leases on restart; the session revoked the old one first.
            assert await own.owner("US") is None
            info = await session.client.get_lease_info(old)
            assert info.TTL == -1

    run(scenario())


# -- the fence and the in-memory backend (no etcd) ------------------------------------


def test_epoch_fence_lets_equal_and_newer_epochs_pass() -> None:
    fence = EpochFence()
    assert fence.highest("VEL") is None
    fence.check("VEL", 5)
    fence.check("VEL", 5)
    fence.check("VEL", 9)
    fence.check("GER", 2)  # queues are fenced apart
    assert fence.highest("VEL") == 9 and fence.highest("GER") == 2


def test_epoch_fence_rejects_older_epochs() -> None:
    fence = EpochFence()
    fence.check("VEL", 9)
    with pytest.raises(StaleEpoch) as stale:
        fence.check("VEL", 8)
    assert isinstance(stale.value, FailedPrecondition)
    assert (stale.value.queue, stale.value.epoch, stale.value.highest) == ("VEL", 8, 9)
    assert fence.highest("VEL") == 9  # a rejected epoch is not recorded


def test_memory_backend_follows_the_same_rules() -> None:
    async def scenario() -> None:
        store = MemoryEtcd()
        sa = await MemorySession(store, "vel", ttl=TTL).start()
        sb = await MemorySession(store, "ger", ttl=TTL).start()
        a, b = MemoryOwnership(sa), MemoryOwnership(sb)
        e1 = await a.acquire("VEL", "home")
        with pytest.raises(OwnershipConflict):
            await b.acquire("VEL", "borrowed")
        watch = b.watch(start_revision=e1)
        e2 = await a.handoff("VEL", "ger", sb.lease_id or 0, "borrowed", e1)
        assert e2 == e1 + 1 and a.is_owner("VEL") is None
        with pytest.raises(NotOwner):
            await a.handoff("VEL", "ger", sb.lease_id or 0, "borrowed", e1)
        seen = [await anext(watch), await anext(watch)]
        await watch.aclose()
        assert [(e.region, e.epoch) for e in seen] == [("vel", e1), ("ger", e2)]
        assert b.is_owner("VEL") == e2

        store.advance(TTL / 3)  # keepalives keep both alive
        assert b.is_owner("VEL") == e2
        await sb.orphan()
        store.advance(TTL)  # ger's lease expires: the key goes with it
        assert await a.owner("VEL") is None
        assert await a.acquire("VEL", "home") > e2

        store.reachable = False
        store.advance(TTL / 2)
        assert sa.state == "expiring" and a.is_owner("VEL") is not None
        store.advance(TTL)
        assert sa.state == "lost" and a.is_owner("VEL") is None
        store.reachable = True
        store.advance(0.1)  # back: a new lease, the old one revoked with its keys
        assert sa.alive() and await a.owner("VEL") is None
        await sa.close()

    run(scenario())
