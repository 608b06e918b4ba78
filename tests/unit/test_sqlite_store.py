"""The SQLite store on its own: group commit, isolation of failures, idempotency, reopen."""

from __future__ import annotations

import asyncio
import sqlite3
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from federation.operations import TICKET_COMMENT, TICKET_CREATE, TICKET_UPDATE, Operation
from node import rules
from node.clock import FakeClock
from node.errors import InvalidArgument, NotFound, StorageError
from node.rules import NewTicket, TicketChange
from node.sqlite_store import SqliteTicketStore, _filter_terms
from node.store import TicketFilter
from node.tickets import OPEN_STATES, Role, State, TicketView, Tier


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


def test_a_write_that_fails_in_sqlite_fails_alone(tmp_path: Path) -> None:
    """A write whose own statement SQLite refuses (a request id keeps it out of the
    group's batched inserts, so it fails as it runs) fails alone; its group is redone."""

    async def run() -> None:
        store = open_store(tmp_path)
        store._wconn.execute(
            "CREATE TRIGGER refuse BEFORE INSERT ON ops WHEN instr(NEW.fields, '\"bad\"') > 0 "
            "BEGIN SELECT RAISE(ABORT, 'simulated'); END"
        )
        try:
            outcomes = await asyncio.gather(
                store.write(None, create("a")),
                store.write(None, create("bad"), request_id="r-bad"),
                store.write(None, create("b")),
                return_exceptions=True,
            )
            assert isinstance(outcomes[1], StorageError) and "simulated" in str(outcomes[1])
            a, b = (o[0] for o in (outcomes[0], outcomes[2]) if isinstance(o, tuple))
            assert (a.code, b.code) == ("VEL-000001", "VEL-000002")
            assert store.version_vector() == {"velizy": 2}
            assert [op.seq for op in store.read_ops({"velizy": 0}, 10)] == [1, 2]
        finally:
            await store.close()

    asyncio.run(run())


def test_new_tickets_written_together_still_fail_alone(tmp_path: Path) -> None:
    """New tickets of a group are written in one statement per table; when SQLite refuses
    one row of it, the group is redone job by job and only that ticket fails."""

    async def run() -> None:
        store = open_store(tmp_path)
        store._wconn.execute(
            "CREATE TRIGGER refuse BEFORE INSERT ON ops WHEN instr(NEW.fields, '\"bad\"') > 0 "
            "BEGIN SELECT RAISE(ABORT, 'simulated'); END"
        )
        try:
            outcomes = await asyncio.gather(
                *(store.write(None, create(t)) for t in ("a", "bad", "b", "c")),
                return_exceptions=True,
            )
            assert isinstance(outcomes[1], StorageError) and "simulated" in str(outcomes[1])
            views = [o[0] for o in outcomes if isinstance(o, tuple)]
            assert [(v.code, v.title) for v in views] == [
                ("VEL-000001", "a"),
                ("VEL-000002", "b"),
                ("VEL-000003", "c"),
            ]
            assert store.version_vector() == {"velizy": 3}
            assert [store.get(v.code).title for v in views] == ["a", "b", "c"]
            assert [op.seq for op in store.read_ops({"velizy": 0}, 10)] == [1, 2, 3]
        finally:
            await store.close()

    asyncio.run(run())


def test_a_group_mixing_new_tickets_and_changes_sees_its_own_writes(tmp_path: Path) -> None:
    async def run() -> None:
        store = open_store(tmp_path)
        try:
            first, _ = await store.write(None, create("first"))
            outcomes = await asyncio.gather(
                store.write(None, create("new one")),
                store.write(first.code, update(priority=1)),
                store.write(None, create("dup"), request_id="r1"),
                store.write(None, create("dup"), request_id="r1"),
                store.write(None, create("last")),
            )
            (new, _), (changed, _), (dup1, _), (dup2, _), (last, _) = outcomes
            assert changed.priority == 1 and changed.version == 2
            assert dup1.code == dup2.code  # the second found the request id the first wrote
            assert [new.code, dup1.code, last.code] == ["VEL-000002", "VEL-000003", "VEL-000004"]
            assert store.get(last.code).title == "last"
            assert store.version_vector() == {"velizy": 5}
        finally:
            await store.close()

    asyncio.run(run())


def test_replies_wait_for_the_commit(tmp_path: Path) -> None:
    async def run() -> None:
        store = open_store(tmp_path)
        held: list[Any] = []
        commit = store._committer.commit
        store._committer.commit = lambda *request: held.append(request)  # type: ignore[method-assign]
        try:
            write = asyncio.ensure_future(store.write(None, create("durable")))
            for _ in range(10):
                await asyncio.sleep(0)
            assert held and not write.done()
            assert store.version_vector() == {} and store.digest()[0] == 0
            commit(*held[0])
            view, _ = await write
            assert store.get(view.code).title == "durable"
            assert store.version_vector() == {"velizy": 1}
        finally:
            store._committer.commit = commit  # type: ignore[method-assign]
            await store.close()

    asyncio.run(run())


def test_a_failed_commit_fails_its_group_and_nothing_moves(tmp_path: Path) -> None:
    async def run() -> None:
        store = open_store(tmp_path)
        commit = store._committer.commit

        def fail(loop: asyncio.AbstractEventLoop, done: Any, *_: Any) -> None:
            loop.call_soon(done, sqlite3.OperationalError("disk I/O error"))

        store._committer.commit = fail  # type: ignore[method-assign,assignment]
        try:
            outcomes = await asyncio.gather(
                *(store.write(None, create(f"t{i}")) for i in range(3)), return_exceptions=True
            )
            assert all(isinstance(o, StorageError) for o in outcomes)
            assert store.version_vector() == {} and store.ticket_counts() == {}
            store._committer.commit = commit  # type: ignore[method-assign]
            view, op = await store.write(None, create("after"))
            assert view.code == "VEL-000001" and op is not None and op.seq == 1
        finally:
            store._committer.commit = commit  # type: ignore[method-assign]
            await store.close()

    asyncio.run(run())


def test_ticket_counts_follow_commits_and_survive_reopen(tmp_path: Path) -> None:
    remote = Operation(
        "japan",
        1,
        10 << 16,
        "JPN-000001",
        TICKET_CREATE,
        {"created": True, "title": "r", "state": "new", "queue": "japan", "tier": "gold"},
    )

    async def run() -> dict[tuple[str, str, str], int]:
        store = open_store(tmp_path)
        try:
            a, _ = await store.write(None, create("a"))
            await store.write(None, create("b"))
            await store.write(a.code, update(state=State.IN_PROGRESS))
            await store.apply_remote([remote])
            await asyncio.gather(
                store.write(a.code, update(state=State.CLOSED)),  # illegal: counts stay
                return_exceptions=True,
            )
            return store.ticket_counts()
        finally:
            await store.close()

    counts = asyncio.run(run())
    assert counts == {
        ("new", "velizy", "none"): 1,
        ("in_progress", "velizy", "none"): 1,
        ("new", "japan", "gold"): 1,
    }

    async def reopened() -> dict[tuple[str, str, str], int]:
        store = open_store(tmp_path)
        try:
            return store.ticket_counts()
        finally:
            await store.close()

    assert asyncio.run(reopened()) == counts


def test_remote_records_apply_while_watchers_want_views(tmp_path: Path) -> None:
    record = Operation(
        "japan", 1, 10 << 16, "HO-1", "handoff.create", {"id": "HO-1", "kind": "planned"}
    )
    ticket = Operation(
        "japan",
        2,
        11 << 16,
        "JPN-000001",
        TICKET_CREATE,
        {"created": True, "title": "r", "state": "new", "queue": "japan"},
    )
    changes: list[Any] = []

    async def run() -> None:
        store = open_store(tmp_path)
        store.want_views = True
        store.add_listener(changes.extend)
        try:
            assert [op.seq for op in await store.apply_remote([record, ticket])] == [1, 2]
            assert store.get_record("HO-1") is not None
        finally:
            await store.close()

    asyncio.run(run())
    assert [c.ticket.code if c.ticket else None for c in changes] == [None, "JPN-000001"]


def test_a_batch_touching_a_ticket_many_times_equals_one_op_at_a_time(tmp_path: Path) -> None:
    def op(seq: int, code: str, kind: str, fields: dict[str, Any]) -> Operation:
        return Operation("japan", seq, (10 + seq) << 16, code, kind, fields)

    fields = {"created": True, "title": "r", "state": "new", "queue": "japan", "tier": "gold"}
    ops = [
        op(1, "JPN-000001", TICKET_CREATE, fields),
        op(2, "JPN-000002", TICKET_CREATE, fields),
        op(3, "JPN-000001", TICKET_COMMENT, {"comment": {"author": "k", "text": "a"}}),
        op(4, "JPN-000001", TICKET_UPDATE, {"state": "in_progress"}),
        op(5, "JPN-000002", TICKET_COMMENT, {"comment": {"author": "k", "text": "b"}}),
        op(6, "JPN-000001", TICKET_COMMENT, {"comment": {"author": "k", "text": "c"}}),
    ]
    seen: list[tuple[str, int, str]] = []

    async def apply(path: Path, batches: list[list[Operation]]) -> tuple[Any, ...]:
        store = open_store(path)
        store.want_views = True
        store.add_listener(
            lambda changes: seen.extend(
                (c.op.op_id, c.ticket.version, c.previous_state or "") for c in changes if c.ticket
            )
        )
        try:
            for batch in batches:
                await store.apply_remote(batch)
            return store.digest(), store.ticket_counts(), store.version_vector()
        finally:
            await store.close()

    batched = asyncio.run(apply(tmp_path / "a", [ops]))
    seen_batched, seen[:] = list(seen), []
    single = asyncio.run(apply(tmp_path / "b", [[o] for o in ops]))
    assert batched == single
    assert batched[1] == {("in_progress", "japan", "gold"): 1, ("new", "japan", "gold"): 1}
    # Watchers see each operation's own result, not the batch's final state.
    assert seen_batched == seen
    assert [v for _, v, _ in seen_batched] == [1, 1, 2, 3, 2, 4]


def test_tiered_filter_finds_contract_tickets_also_in_a_database_made_before_the_column(
    tmp_path: Path,
) -> None:
    def create_tiered(tier: Tier) -> Any:
        def build(_: TicketView | None, now: datetime) -> tuple[str, dict[str, Any]]:
            return TICKET_CREATE, rules.create_fields(
                NewTicket(title="t", tier=tier), "velizy", now
            )

        return build

    async def write() -> tuple[str, str]:
        store = open_store(tmp_path)
        try:
            walk_in, _ = await store.write(None, create("walk-in"))
            gold, _ = await store.write(None, create_tiered(Tier.GOLD))
            page = store.list_tickets(TicketFilter(tiered=True), 10, "")
            assert [t.code for t in page.tickets] == [gold.code] and page.total == 1
            return walk_in.code, gold.code
        finally:
            await store.close()

    async def reopen() -> list[str]:
        store = open_store(tmp_path)
        try:
            return [t.code for t in store.list_tickets(TicketFilter(tiered=True), 10, "").tickets]
        finally:
            await store.close()

    _, gold = asyncio.run(write())
    # As an older node left it: no tier column. Reopening adds it and fills it from bodies.
    conn = sqlite3.connect(tmp_path / "sundesk.db")
    for column, index in (
        ("tier", "tickets_tiered"),
        ("assignee", "tickets_assignee"),
        ("second_engineer", "tickets_second"),
    ):
        conn.execute(f"DROP INDEX {index}")
        conn.execute(f"ALTER TABLE tickets DROP COLUMN {column}")
    conn.commit()
    conn.close()
    assert asyncio.run(reopen()) == [gold]


def test_the_sla_scan_query_reads_only_tickets_under_a_contract(tmp_path: Path) -> None:
    # Walk-in tickets are most of a busy desk; the owner's scan every few seconds must not
    # walk them (the planner would otherwise take the creation-order index over all).
    async def plan() -> str:
        store = open_store(tmp_path)
        try:
            for _ in range(50):
                await store.write(None, create("walk-in"))
            flt = TicketFilter(states=tuple(OPEN_STATES), queue="velizy", tiered=True)
            where, args = _filter_terms(flt)
            rows = store._rconn.execute(
                "EXPLAIN QUERY PLAN SELECT code FROM tickets WHERE "
                f"{' AND '.join(where)} ORDER BY created_at, code",
                args,
            ).fetchall()
            return " ".join(str(r[-1]) for r in rows)
        finally:
            await store.close()

    assert "USING INDEX tickets_tiered" in asyncio.run(plan())


def test_engineers_load_counts_open_tickets_in_both_roles_also_after_migration(
    tmp_path: Path,
) -> None:
    async def write() -> dict[str, int]:
        store = open_store(tmp_path)
        try:
            for i in range(3):
                t, _ = await store.write(None, create())
                await store.write(t.code, update(assignee="ana", second_engineer=f"e{i % 2}"))
                if i == 2:
                    await store.write(t.code, update(state=State.RESOLVED, cause="fixed"))
            await store.write(None, create())  # nobody on it
            return store.open_load()
        finally:
            await store.close()

    async def reopen() -> dict[str, int]:
        store = open_store(tmp_path)
        try:
            return store.open_load()
        finally:
            await store.close()

    assert asyncio.run(write()) == {"ana": 2, "e0": 1, "e1": 1}
    conn = sqlite3.connect(tmp_path / "sundesk.db")
    conn.execute("DROP INDEX tickets_assignee")
    conn.execute("ALTER TABLE tickets DROP COLUMN assignee")
    conn.commit()
    conn.close()
    assert asyncio.run(reopen()) == {"ana": 2, "e0": 1, "e1": 1}
