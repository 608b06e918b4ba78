"""The Desk servicer: thin. It converts messages, calls the rules through the store, and
converts back; errors are mapped to statuses by ``node.grpc_errors``."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Mapping
from datetime import datetime

from grpc import aio

from federation.operations import TICKET_COMMENT, TICKET_CREATE, TICKET_UPDATE
from node import convert, rules, ticket_wire
from node.dues import DueClock
from node.errors import InvalidArgument
from node.registry import Registry, with_registered
from node.roster import Roster, staffing
from node.sqlite_store import SqliteTicketStore
from node.store import Change, TicketFilter
from node.tickets import TicketView
from node.watch import WatchHub
from sundesk.v1 import desk_pb2 as pb
from sundesk.v1 import desk_pb2_grpc

DEFAULT_PAGE = 50
MAX_PAGE = 500

# A change id -> the regions that have applied it, those that lack it, and this node's
# durable version vector (``SqliteTicketStore.durable_vv``: read-only, a new object after
# each commit).
ReplicationInfo = Callable[[str], tuple[list[str], list[str], Mapping[str, int]]]


def _local_only(store: SqliteTicketStore) -> ReplicationInfo:
    def info(change_id: str) -> tuple[list[str], list[str], Mapping[str, int]]:
        return [store.region], [], store.durable_vv

    return info


class DeskService(desk_pb2_grpc.DeskServicer):
    def __init__(
        self,
        store: SqliteTicketStore,
        hub: WatchHub,
        known_regions: Mapping[str, str],
        trace_carrier: Callable[[], dict[str, str]] = dict,
        replication_info: ReplicationInfo | None = None,
        change_carrier: Callable[[Mapping[str, str]], dict[str, str]] | None = None,
        tag_ticket: Callable[[str, str], None] | None = None,
        registry: Registry | None = None,
        dues: DueClock | None = None,
        roster: Roster | None = None,
        now: Callable[[], datetime] | None = None,
    ) -> None:
        self._store = store
        self._hub = hub
        self._regions = known_regions  # region name -> queue names it homes
        self._carrier = trace_carrier
        self._replication = replication_info or _local_only(store)
        self._replication_cache: tuple[Mapping[str, int], list[str], list[str], bytes] | None = None
        self._change_carrier = change_carrier
        self._tag = tag_ticket or (lambda code, queue: None)
        self._registry = registry
        self._dues = dues
        self._roster = roster
        self._now = now

    def _trace_for(self, code: str) -> dict[str, str]:
        """Trace context for a change to ``code``: within the ticket's own trace."""
        if self._change_carrier is None:
            return self._carrier()
        ticket = self._store.get_replicated(code)
        trace = ticket.values.get("trace") if ticket is not None else None
        return self._change_carrier(trace if isinstance(trace, dict) else {})

    def _reply(self, view: TicketView) -> bytes:
        """``view`` as the ``Ticket`` a reply carries, encoded (``node.ticket_wire``): with
        its SLA clocks if it has a contract, and its replication status. Writes have it
        made as their commit group is delivered (``SqliteTicketStore.write_answered``)."""
        sla = None
        if view.tier is not None and self._dues is not None and self._now is not None:
            sla = self._dues.status(view, self._now())
        return ticket_wire.ticket(view, self._replication_status(view.last_change_id), sla)

    def _message(self, view: TicketView) -> pb.Ticket:
        return pb.Ticket.FromString(self._reply(view))

    def _replication_status(self, change_id: str) -> bytes:
        """``ReplicationStatus`` without ``last_change_id``, serialized. Every reply of a
        commit group has the same one (same regions, same version vector): it is encoded
        once and merged into each reply, where filling the lists and the map field by field
        was half of what a reply cost."""
        applied, missing, vv = self._replication(change_id)
        cached = self._replication_cache
        if cached is not None and cached[0] is vv and cached[1] == applied and cached[2] == missing:
            return cached[3]
        status = pb.ReplicationStatus(applied_in=applied, missing_in=missing, version_vector=vv)
        data = status.SerializeToString()
        self._replication_cache = (vv, applied, missing, data)
        return data

    def _check_region(self, name: str, what: str) -> None:
        if name and name not in self._regions:
            raise InvalidArgument(
                f"{what} {name!r} is not a region of this federation; use one of: "
                f"{', '.join(self._regions)}"
            )

    async def CreateTicket(
        self, request: pb.CreateTicketRequest, context: aio.ServicerContext
    ) -> bytes:
        region = self._store.region
        carrier = self._carrier()
        dues = self._dues
        registered, check_region = self._registered, self._check_region

        def build(_: TicketView | None, now: datetime) -> tuple[str, dict[str, object]]:
            # The request is read and checked here, with the other writes of its commit
            # group, one after the other (see ``SqliteTicketStore.write_answered``); a bad
            # one fails alone and writes nothing.
            new = registered(convert.new_ticket_from_pb(request))
            check_region(new.home_region, "home region")
            fields = rules.create_fields(new, region, now)
            if dues is not None:
                fields.update(dues.on_create(fields))
            fields["trace"] = carrier  # the ticket's trace: later changes join it
            return TICKET_CREATE, fields

        view, reply = await self._store.write_answered(
            None, build, self._reply, carrier, request_id=request.request_id[:100]
        )
        self._tag(view.code, view.queue)
        return reply

    def _load(self) -> dict[str, int]:
        return self._store.open_load()

    def _registered(self, new: rules.NewTicket) -> rules.NewTicket:
        if self._registry is None:
            return new
        asset = self._registry.get_asset(new.asset) if new.asset else None
        customer_id = new.customer or (asset.customer if asset else "")
        customer = self._registry.get_customer(customer_id) if customer_id else None
        return with_registered(new, customer, asset)

    async def GetTicket(self, request: pb.GetTicketRequest, context: aio.ServicerContext) -> bytes:
        code = _code(request.code)
        return self._reply(self._store.get(code))

    async def ListTickets(
        self, request: pb.ListTicketsRequest, context: aio.ServicerContext
    ) -> bytes:
        if request.page_size < 0:
            raise InvalidArgument(f"page_size {request.page_size} is negative")
        size = min(request.page_size or DEFAULT_PAGE, MAX_PAGE)
        states = tuple(
            s for s in (convert.state_from_pb(v) for v in request.states) if s is not None
        )
        flt = TicketFilter(
            states=states,
            queue=request.queue,
            customer=request.customer,
            kind=convert.kind_from_pb(request.kind, default=None),
        )
        page = self._store.list_tickets(flt, size, request.page_token)
        return ticket_wire.tickets_page(
            [self._reply(t) for t in page.tickets], page.next_token, page.total
        )

    async def UpdateTicket(
        self, request: pb.UpdateTicketRequest, context: aio.ServicerContext
    ) -> bytes:
        code = _code(request.code)
        change = convert.change_from_pb(request)
        region = self._store.region
        dues = self._dues
        roster = self._roster

        def build(current: TicketView | None, now: datetime) -> tuple[str, dict[str, object]]:
            assert current is not None
            fields = rules.update_fields(current, change, region, now)
            if dues is not None:
                fields.update(dues.on_update(current, fields))
            if roster is not None and dues is not None and current.tier is not None:
                policy = dues.contracts.tier(current.tier)
                fields.update(staffing(roster, policy, current, fields, self._load))
            return TICKET_UPDATE, fields

        view, reply = await self._store.write_answered(
            code, build, self._reply, self._trace_for(code)
        )
        self._tag(view.code, view.queue)
        return reply

    async def AddComment(
        self, request: pb.AddCommentRequest, context: aio.ServicerContext
    ) -> bytes:
        code = _code(request.code)
        role = convert.role_from_pb(request.role)
        region = self._store.region

        def build(current: TicketView | None, now: datetime) -> tuple[str, dict[str, object]]:
            assert current is not None
            fields = rules.comment_fields(
                current, request.author, request.text, role, request.internal, region, now
            )
            return TICKET_COMMENT, fields

        view, reply = await self._store.write_answered(
            code, build, self._reply, self._trace_for(code)
        )
        self._tag(view.code, view.queue)
        return reply

    async def WatchTickets(
        self, request: pb.WatchTicketsRequest, context: aio.ServicerContext
    ) -> AsyncIterator[pb.TicketEvent]:
        self._store.want_views = True
        sub = self._hub.subscribe(request.queue)
        if request.send_initial:
            token = ""
            while True:
                page = self._store.list_tickets(TicketFilter(queue=request.queue), MAX_PAGE, token)
                for view in page.tickets:
                    yield pb.TicketEvent(
                        type=pb.TicketEvent.TYPE_INITIAL, ticket=self._message(view)
                    )
                token = page.next_token
                if not token:
                    break
        to_pb = _summary if request.changes_only else self._message
        async for change in sub:
            yield _event(change, to_pb)


_EVENT_TYPES = {
    TICKET_CREATE: pb.TicketEvent.TYPE_CREATED,
    TICKET_UPDATE: pb.TicketEvent.TYPE_UPDATED,
    TICKET_COMMENT: pb.TicketEvent.TYPE_COMMENTED,
}


def _event(change: Change, to_pb: Callable[[TicketView], pb.Ticket]) -> pb.TicketEvent:
    assert change.ticket is not None
    return pb.TicketEvent(
        type=_EVENT_TYPES.get(change.op.kind, pb.TicketEvent.TYPE_UPDATED),
        ticket=to_pb(change.ticket),
        change_id=change.op.op_id,
        region=change.op.origin,
    )


def _summary(view: TicketView) -> pb.Ticket:
    return pb.Ticket(code=view.code, version=view.version, queue=view.queue)


def _code(code: str) -> str:
    code = code.strip().upper()
    if not code:
        raise InvalidArgument("ticket code is empty; give a code such as VEL-000123")
    if len(code) > 32:
        raise InvalidArgument(f"ticket code {code[:32]}... is too long; codes look like VEL-000123")
    return code
