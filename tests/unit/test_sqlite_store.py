"""The SQLite store on its own: group commit, isolation of failures, idempotency, reopen."""

from __future__ import annotations

import asyncio
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from federation.operations import TICKET_COMMENT, TICKET_CREATE, TICKET_UPDATE, Operation
from node import rules
from node.clock import FakeClock
from node.errors import InvalidArgument, NotFound, StorageError
from node.rules import NewTicket, TicketChange
from node.sqlite_store import SqliteTicketStore
from node.store import TicketFilter
from node.tickets import Role, State, TicketView


def create(title: str = "t") -> Any:
    def build(_: TicketView | None, now: datetime) -> tuple[str, dict[str, Any]]:
        return TICKET_CREATE, rules.create_fields(NewTicket(title=title), "velizy", now)

    return build


def update(**kw: Any) -> Any:
    def build(current: TicketView | None, now: datetime) -> tuple[str, dict[str, Any]]:
        assert current is not None
        return TICKET_UPDATE, rules.update_fields(current, TicketChange("ana", **kw), "velizy", now)

    return build


def open_store(path: Path, region: str = "velizy", code: str = "VEL") -> SqliteTicketStore:
    return SqliteTicketStore(path, region, code, FakeClock())


def test_concurrent_writes_share_commits_and_all_land(tmp_path: Path) -> None:
    batches: list[int] = []

    async def run() -> list[TicketView]:
        store = SqliteTicketStore(
            tmp_path, "velizy", "VEL", FakeClock(), on_commit=lambda n, s: batches.append(n)
        )
        try:
            results = await asyncio.gather(
                *(store.write(None, create(f"t{i}")) for i in range(300))
            )
            return [view for view, _ in results]
        finally:
            await store.close()

    views = asyncio.run(run())
    assert sorted(v.code for v in views) == [f"VEL-{i:06d}" for i in range(1, 301)]
    assert sum(batches) == 300 and len(batches) < 300  # grouped, not one commit per call


def test_a_failing_write_is_rolled_back_alone(tmp_path: Path) -> None:
    async def run() -> None:
        store = open_store(tmp_path)
        try:
            good, _ = await store.write(None, create("good"))
            outcomes = await asyncio.gather(
                store.write(good.code, update(priority=1)),
                store.write(good.code, update(state=State.CLOSED)),  # illegal from new
                store.write(None, create("")),  # empty title
                store.write(good.code, update(priority=2)),
                return_exceptions=True,
            )
            assert isinstance(outcomes[1], Exception) and isinstance(outcomes[2], InvalidArgument)
            final = store.get(good.code)
            assert final.version == 3 and final.priority == 2
            assert store.version_vector() == {"velizy": 3}
            assert store.digest()[0] == 1
        finally:
            await store.close()

    asyncio.run(run())


def test_request_id_makes_create_idempotent(tmp_path: Path) -> None:
    async def run() -> None:
        store = open_store(tmp_path)
        try:
            a, op_a = await store.write(None, create("once"), request_id="r-1")
            b, op_b = await store.write(None, create("once"), request_id="r-1")
            assert a.code == b.code and op_a is not None and op_b is None
            assert store.version_vector() == {"velizy": 1}
        finally:
            await store.close()

    asyncio.run(run())


def test_remote_ops_apply_once_and_in_order(tmp_path: Path) -> None:
    ops = [
        Operation(
            "japan",
            1,
            10 << 16,
            "JPN-000001",
            TICKET_CREATE,
            {"created": True, "title": "remote", "state": "new", "queue": "japan"},
        ),
        Operation(
            "japan",
            2,
            11 << 16,
            "JPN-000001",
            TICKET_COMMENT,
            {"comment": {"author": "k", "text": "hi"}},
        ),
        Operation("japan", 4, 13 << 16, "JPN-000001", TICKET_UPDATE, {"priority": 1}),  # gap
    ]

    async def run() -> None:
        store = open_store(tmp_path)
        try:
            applied = await store.apply_remote(ops)
            assert [op.seq for op in applied] == [1, 2]
            assert await store.apply_remote(ops[:2]) == []
            assert store.version_vector() == {"japan": 2}
            t = store.get("JPN-000001")
            assert t.title == "remote" and [c.text for c in t.comments] == ["hi"]
            assert [op.seq for op in store.read_ops({"japan": 0}, 10)] == [1, 2]
            assert [op.seq for op in store.read_ops({"japan": 1}, 10)] == [2]
        finally:
            await store.close()

    asyncio.run(run())


def test_state_survives_reopen_and_codes_continue(tmp_path: Path) -> None:
    async def first() -> str:
        store = open_store(tmp_path)
        try:
            view, _ = await store.write(None, create("kept"))
            await store.write(view.code, update(state=State.IN_PROGRESS))
            return view.code
        finally:
            await store.close()

    async def second(code: str) -> None:
        store = open_store(tmp_path)
        try:
            t = store.get(code)
            assert (t.state, t.version, t.assignee) == (State.IN_PROGRESS, 2, "ana")
            nxt, _ = await store.write(None, create("next"))
            assert nxt.code == "VEL-000002"
            page = store.list_tickets(TicketFilter(states=(State.IN_PROGRESS,)), 10, "")
            assert [p.code for p in page.tickets] == [code]
        finally:
            await store.close()

    code = asyncio.run(first())
    asyncio.run(second(code))


def test_unknown_ticket_and_wrong_region(tmp_path: Path) -> None:
    async def run() -> None:
        store = open_store(tmp_path)
        try:
            with pytest.raises(NotFound, match="no ticket VEL-000404"):
                await store.write("VEL-000404", update(priority=1))
        finally:
            await store.close()

    asyncio.run(run())
    with pytest.raises(StorageError, match="holds region 'velizy', not 'japan'"):
        open_store(tmp_path, "japan", "JPN")


def test_customer_role_passes_through(tmp_path: Path) -> None:
    async def run() -> None:
        store = open_store(tmp_path)
        try:
            view, _ = await store.write(None, create("c"))

            def comment(current: TicketView | None, now: datetime) -> tuple[str, dict[str, Any]]:
                assert current is not None
                return TICKET_COMMENT, rules.comment_fields(
                    current, "cust", "hello", Role.CUSTOMER, False, "velizy", now
                )

            after, _ = await store.write(view.code, comment)
            assert after.comments[0].author == "cust" and not after.first_response_at
        finally:
            await store.close()

    asyncio.run(run())
