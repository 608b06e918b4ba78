"""Group-commit pacing: the pure rule, then the store following it with real commits.

The store tests use a delay far longer than their own deadline, so a group that waited
for the timer instead of for its writers fails the test rather than slowing it down.
"""

from __future__ import annotations

import asyncio
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from federation.operations import TICKET_CREATE, Operation
from node import rules
from node.clock import FakeClock
from node.group_pacing import GroupPacer
from node.rules import NewTicket
from node.sqlite_store import SqliteTicketStore
from node.tickets import TicketView
from ops import cli

NEVER = 30.0  # a delay no test waits out: see the module docstring
DEADLINE = 10.0


def create(_: TicketView | None, now: datetime) -> tuple[str, dict[str, Any]]:
    return TICKET_CREATE, rules.create_fields(NewTicket(title="t"), "velizy", now)


def test_a_lone_writer_never_waits() -> None:
    pacer = GroupPacer(delay_s=NEVER)
    assert pacer.ready(1)
    pacer.started(1)
    assert pacer.ready(1)


def test_after_a_group_of_k_the_next_starts_at_k() -> None:
    pacer = GroupPacer(delay_s=NEVER)
    pacer.started(5)
    assert not pacer.ready(4)
    assert pacer.ready(5) and pacer.ready(9)
    pacer.started(2)  # writers went away: the timer made a smaller group
    assert pacer.ready(2)


def test_no_delay_means_no_waiting_and_the_cap_bounds_expectations() -> None:
    assert GroupPacer(delay_s=0).ready(1)
    pacer = GroupPacer(delay_s=NEVER, max_group=16)
    pacer.started(500)
    assert pacer.ready(16)


def _store(path: Path, batches: list[int], delay: float) -> SqliteTicketStore:
    return SqliteTicketStore(
        path,
        "velizy",
        "VEL",
        FakeClock(),
        on_commit=lambda n, _: batches.append(n),
        group_delay_s=delay,
    )


def test_writers_taking_turns_fill_each_group_without_waiting_for_the_timer(
    tmp_path: Path,
) -> None:
    batches: list[int] = []

    async def writer(store: SqliteTicketStore) -> None:
        for _ in range(10):
            await store.write(None, create)

    async def run() -> None:
        store = _store(tmp_path, batches, NEVER)
        try:
            await asyncio.wait_for(asyncio.gather(*(writer(store) for _ in range(8))), DEADLINE)
        finally:
            await store.close()

    asyncio.run(run())
    assert batches == [8] * 10


def test_a_lone_writer_after_a_crowd_waits_once_then_goes_alone(tmp_path: Path) -> None:
    batches: list[int] = []

    async def run() -> None:
        store = _store(tmp_path, batches, 0.05)
        try:
            await asyncio.gather(*(store.write(None, create) for _ in range(6)))
            for _ in range(5):
                await asyncio.wait_for(store.write(None, create), DEADLINE)
        finally:
            await store.close()

    asyncio.run(run())
    # The first lone write waited for company that did not come (the timer); after that
    # the store expects one writer and never waits again.
    assert batches == [6, 1, 1, 1, 1, 1]


def test_lone_writes_and_replicated_batches_do_not_wait(tmp_path: Path) -> None:
    batches: list[int] = []
    op = Operation(
        "japan",
        1,
        10 << 16,
        "JPN-000001",
        TICKET_CREATE,
        {"created": True, "title": "remote", "state": "new", "queue": "japan"},
    )

    async def run() -> None:
        store = _store(tmp_path, batches, NEVER)
        try:
            for _ in range(3):
                await asyncio.wait_for(store.write(None, create), DEADLINE)
            await asyncio.gather(*(store.write(None, create) for _ in range(4)))
            # The store now expects four writers; a replicated batch still goes at once.
            applied = await asyncio.wait_for(store.apply_remote([op]), DEADLINE)
            assert [o.seq for o in applied] == [1]
        finally:
            await store.close()

    asyncio.run(run())
    assert batches == [1, 1, 1, 4, 1]


def test_the_node_refuses_a_delay_out_of_range_in_one_line(
    capsys: pytest.CaptureFixture[str],
) -> None:
    for bad in ("-1", "1001"):
        assert (
            cli.main(["node", "--region", "velizy", "--insecure", "--group-commit-delay-ms", bad])
            != 0
        )
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1
        assert "--group-commit-delay-ms" in err and "use 0 to 1000" in err
