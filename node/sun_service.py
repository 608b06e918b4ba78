"""The Sun servicer: queue ownership, handoffs and on-call, over the node's coordinator.

Ticket service never waits on this: when etcd is unreachable the coordinator is absent
or its lease is lost, and these calls say so while tickets keep flowing.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from datetime import datetime
from typing import Any

from grpc import aio

from federation.handoffs import HANDOFF_OP_KINDS, HandoffRecord
from federation.operations import TICKET_UPDATE
from federation.sun import SunCoordinator
from node.errors import FailedPrecondition, InvalidArgument, ResourceExhausted, Unavailable
from node.handoff_log import SqliteHandoffLog
from node.sqlite_store import SqliteTicketStore
from node.store import Change
from node.tickets import TicketView, iso
from sundesk.v1 import sun_pb2 as spb
from sundesk.v1 import sun_pb2_grpc

MAX_LEVEL = 4
WATCH_CAPACITY = 256


def handoff_to_pb(rec: HandoffRecord) -> spb.Handoff:
    return spb.Handoff(
        id=rec.id,
        queue=rec.queue,
        from_region=rec.from_region,
        to_region=rec.to_region,
        to_engineer=rec.to_engineer,
        kind=rec.kind,
        at=rec.at,
        epoch=rec.epoch,
        open_tickets=[
            spb.OpenTicketSummary(
                code=str(t.get("code", "")),
                priority=int(t.get("priority", 0)),
                state=str(t.get("state", "")),
                due=str(t.get("due", "")),
            )
            for t in rec.open_tickets
        ],
        note=rec.note,
        acked_by=rec.acked_by,
        acked_at=rec.acked_at,
        escalated_to=rec.escalated_to,
        escalated_at=rec.escalated_at,
    )


class SunService(sun_pb2_grpc.SunServicer):
    def __init__(
        self,
        region: str,
        store: SqliteTicketStore,
        log: SqliteHandoffLog,
        coordinator: Callable[[], SunCoordinator | None],
        now: Callable[[], datetime],
    ) -> None:
        self._region = region
        self._store = store
        self._log = log
        self._coordinator = coordinator
        self._now = now
        self._watchers: set[tuple[str, asyncio.Queue[HandoffRecord | None]]] = set()

    # ----- replicated handoff records reach watchers ------------------------------------

    def on_changes(self, changes: list[Change]) -> None:
        keys = {c.op.ticket for c in changes if c.op.kind in HANDOFF_OP_KINDS}
        if not keys or not self._watchers:
            return
        for key in sorted(keys):
            if not key.startswith("HO-"):
                continue
            rec = self._log.get(key)
            for queue_name, q in list(self._watchers):
                if queue_name and rec.queue != queue_name:
                    continue
                try:
                    q.put_nowait(rec)
                except asyncio.QueueFull:
                    # Too far behind: drop what it has not read and tell it to reconnect.
                    while not q.empty():
                        q.get_nowait()
                    q.put_nowait(None)
                    self._watchers.discard((queue_name, q))

    # ----- RPCs --------------------------------------------------------------------------

    async def GetStatus(self, request: spb.SunStatusRequest, context: aio.ServicerContext) -> Any:
        coord = self._coordinator()
        msg = spb.SunStatus(region=self._region, now=iso(self._now()))
        if coord is None:
            msg.lease_state = "disconnected"
            return msg
        msg.lease_state = coord.backend.session.state
        for st in coord.status():
            q = msg.queues.add(
                queue=st.queue,
                owner=st.owner or "",
                kind=st.kind or "",
                epoch=st.epoch or 0,
                since=st.since,
                mine=st.mine,
            )
            if st.next_handoff is not None:
                q.next_owner = st.next_handoff.owner
                q.next_kind = st.next_handoff.kind
                q.next_at = iso(st.next_handoff.start)
        return msg

    async def ListHandoffs(
        self, request: spb.ListHandoffsRequest, context: aio.ServicerContext
    ) -> Any:
        return spb.ListHandoffsResponse(
            handoffs=[handoff_to_pb(r) for r in self._log.list(request.queue or None)]
        )

    async def AckHandoff(self, request: spb.AckHandoffRequest, context: aio.ServicerContext) -> Any:
        if not request.id.strip():
            raise InvalidArgument("give the handoff id, e.g. HO-velizy-42")
        if not request.by.strip():
            raise InvalidArgument("give who acknowledges it with --by NAME")
        return handoff_to_pb(await self._log.acknowledge(request.id.strip(), request.by))

    async def SetNote(self, request: spb.SetNoteRequest, context: aio.ServicerContext) -> Any:
        if not request.queue or not request.text.strip():
            raise InvalidArgument("a note needs a queue and some text")
        if len(request.text) > 4096:
            raise InvalidArgument(f"the note is {len(request.text)} characters; at most 4096")
        await self._log.set_note(request.queue, request.text, request.by or "anonymous")
        return spb.SetNoteResponse()

    async def EscalateTicket(
        self, request: spb.EscalateTicketRequest, context: aio.ServicerContext
    ) -> Any:
        coord = self._coordinator()
        if coord is None:
            raise Unavailable(f"{self._region} has no etcd session: owner-only actions pause")
        ticket = self._store.get(request.code)
        epoch = await coord.owner_action(ticket.queue, "escalate")
        if ticket.escalation_level >= MAX_LEVEL:
            raise FailedPrecondition(f"{ticket.code} is already at L{MAX_LEVEL}")
        region = self._region

        def build(current: TicketView | None, now: datetime) -> tuple[str, dict[str, object]]:
            assert current is not None
            if current.escalation_level >= MAX_LEVEL:
                raise FailedPrecondition(f"{current.code} is already at L{MAX_LEVEL}")
            return TICKET_UPDATE, {
                "escalation_level": current.escalation_level + 1,
                "escalation": {
                    "by": request.by or "owner",
                    "reason": request.reason,
                    "epoch": epoch,
                    "region": region,
                    "at": iso(now),
                },
            }

        view, _ = await self._store.write(ticket.code, build)
        return spb.EscalateTicketResponse(
            code=view.code, escalation_level=view.escalation_level, epoch=epoch, region=region
        )

    async def WatchHandoffs(
        self, request: spb.WatchHandoffsRequest, context: aio.ServicerContext
    ) -> AsyncIterator[spb.Handoff]:
        q: asyncio.Queue[HandoffRecord | None] = asyncio.Queue(maxsize=WATCH_CAPACITY)
        entry = (request.queue, q)
        self._watchers.add(entry)
        try:
            while True:
                rec = await q.get()
                if rec is None:
                    raise ResourceExhausted("this watch fell behind and was cut off; reconnect")
                yield handoff_to_pb(rec)
        finally:
            self._watchers.discard(entry)
