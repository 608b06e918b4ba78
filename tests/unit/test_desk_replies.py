"""Replies of the Desk servicer carry each ticket's replication status: which regions have
its last change, which lack it, and the node's durable version vector. The status is
encoded once per commit and reused, so a reply must never show a stale one."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from node.clock import SystemClock
from node.desk_service import DeskService
from node.sqlite_store import SqliteTicketStore
from node.watch import WatchHub
from sundesk.v1 import desk_pb2 as pb

REGIONS = {r: r for r in ("velizy", "germany", "uk", "us", "japan")}


class Context:
    def invocation_metadata(self) -> tuple[Any, ...]:
        return ()


def _ticket(reply: bytes) -> pb.Ticket:
    # Replies are encoded tickets (``node.ticket_wire``), sent by grpc as they are.
    assert isinstance(reply, bytes)
    return pb.Ticket.FromString(reply)


def test_replies_show_the_replication_status_of_their_commit(tmp_path: Path) -> None:
    have: dict[str, list[str]] = {}  # change id -> regions that applied it

    async def run() -> list[pb.Ticket]:
        store = SqliteTicketStore(tmp_path, "velizy", "VEL", SystemClock())

        def info(change_id: str) -> tuple[list[str], list[str], Mapping[str, int]]:
            applied = have.get(change_id, ["velizy"])
            missing = [r for r in sorted(REGIONS) if r not in applied]
            return applied, missing, store.durable_vv

        desk = DeskService(store, WatchHub(), REGIONS, replication_info=info)
        replies = []
        try:
            for i in range(2):
                request = pb.CreateTicketRequest(title=f"ticket {i}", customer="acme")
                replies.append(_ticket(await desk.CreateTicket(request, Context())))  # type: ignore[arg-type]
            # Germany has the first ticket's change now: the same commit's status differs.
            have["velizy:1"] = ["velizy", "germany"]
            for reply in replies[:2]:
                request = pb.GetTicketRequest(code=reply.code)
                replies.append(_ticket(await desk.GetTicket(request, Context())))  # type: ignore[arg-type]
        finally:
            await store.close()
        return replies

    first, second, first_again, second_again = asyncio.run(run())
    assert first.replication.last_change_id == "velizy:1"
    assert list(first.replication.applied_in) == ["velizy"]
    assert list(first.replication.missing_in) == ["germany", "japan", "uk", "us"]
    assert dict(first.replication.version_vector) == {"velizy": 1}
    # A later commit: a new version vector, never the cached one of the first reply.
    assert second.replication.last_change_id == "velizy:2"
    assert dict(second.replication.version_vector) == {"velizy": 2}
    assert list(first_again.replication.applied_in) == ["velizy", "germany"]
    assert list(first_again.replication.missing_in) == ["japan", "uk", "us"]
    assert dict(first_again.replication.version_vector) == {"velizy": 2}
    assert list(second_again.replication.applied_in) == ["velizy"]
    assert list(second_again.replication.missing_in) == ["germany", "japan", "uk", "us"]
