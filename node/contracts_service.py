"""The Contracts servicer: thin. Messages become domain objects (whose constructors
validate and name the field), the registry and the other collaborators do the work."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from datetime import UTC, date, datetime, time, timedelta
from typing import Any

from grpc import aio

from node.contracts import Asset, Customer
from node.convert import TIER_TO_PB, tier_from_pb
from node.errors import InvalidArgument
from node.registry import Registry, checked_id
from node.roster import Roster
from node.stats import Ratio, Stats, compute_stats
from node.tickets import TicketView, iso, parse_iso
from sundesk.v1 import contracts_pb2 as cpb
from sundesk.v1 import contracts_pb2_grpc
from sundesk.v1 import desk_pb2 as pb


def customer_to_pb(c: Customer) -> cpb.Customer:
    return cpb.Customer(id=c.id, name=c.name, home_region=c.home_region, tier=TIER_TO_PB[c.tier])


def asset_to_pb(a: Asset) -> cpb.Asset:
    return cpb.Asset(
        id=a.id,
        customer=a.customer,
        model=a.model,
        serial=a.serial,
        monitored=a.monitored,
        heartbeat_seconds=a.heartbeat_seconds,
    )


def customer_from_pb(msg: cpb.Customer) -> Customer:
    cid = checked_id(msg.id, "customer id")
    if msg.tier == pb.CONTRACT_TIER_UNSPECIFIED:
        raise InvalidArgument(
            f"customer {cid} tier is missing; use bronze, silver, gold or platinum"
        )
    tier = tier_from_pb(msg.tier)
    assert tier is not None
    if not msg.home_region.strip():
        raise InvalidArgument(f"customer {cid} home_region is missing, e.g. 'velizy'")
    return Customer(id=cid, name=msg.name.strip(), home_region=msg.home_region.strip(), tier=tier)


def asset_from_pb(msg: cpb.Asset) -> Asset:
    aid = checked_id(msg.id, "asset id")
    return Asset(
        id=aid,
        customer=checked_id(msg.customer, f"asset {aid} customer"),
        model=msg.model.strip(),
        serial=msg.serial.strip(),
        monitored=msg.monitored,
        heartbeat_seconds=msg.heartbeat_seconds,
    )


def breach_to_pb(v: Mapping[str, Any]) -> cpb.Breach:
    return cpb.Breach(
        id=str(v["id"]),
        code=str(v.get("code", "")),
        queue=str(v.get("queue", "")),
        tier=str(v.get("tier", "")),
        target=str(v.get("target", "")),
        state=str(v.get("state", "")),
        due=str(v.get("due", "")),
        at=str(v.get("at", "")),
        region=str(v.get("region", "")),
        epoch=int(v.get("epoch", 0)),
        escalation_level=int(v.get("escalation_level", 0)),
    )


class ContractsService(contracts_pb2_grpc.ContractsServicer):
    def __init__(
        self,
        registry: Registry,
        breaches: Callable[[str], list[dict[str, Any]]] = lambda queue: [],
        tickets: Callable[[], Iterable[TicketView]] = tuple,
        roster: Roster | None = None,
    ) -> None:
        self._registry = registry
        self._breaches = breaches
        self._tickets = tickets
        self._roster = roster or Roster(())

    async def RegisterCustomer(
        self, request: cpb.RegisterCustomerRequest, context: aio.ServicerContext
    ) -> Any:
        customer = customer_from_pb(request.customer)
        return customer_to_pb(await self._registry.register_customer(customer))

    async def ListCustomers(
        self, request: cpb.ListCustomersRequest, context: aio.ServicerContext
    ) -> Any:
        found = self._registry.customers(request.home_region.strip())
        return cpb.ListCustomersResponse(customers=[customer_to_pb(c) for c in found])

    async def RegisterAsset(
        self, request: cpb.RegisterAssetRequest, context: aio.ServicerContext
    ) -> Any:
        asset = asset_from_pb(request.asset)
        return asset_to_pb(await self._registry.register_asset(asset))

    async def ListAssets(self, request: cpb.ListAssetsRequest, context: aio.ServicerContext) -> Any:
        found = self._registry.assets(request.monitored_only, request.customer.strip())
        return cpb.ListAssetsResponse(assets=[asset_to_pb(a) for a in found])

    async def ListEngineers(
        self, request: cpb.ListEngineersRequest, context: aio.ServicerContext
    ) -> Any:
        region = request.region.strip()
        found = self._roster.region(region) if region else list(self._roster.engineers)
        return cpb.ListEngineersResponse(
            engineers=[
                cpb.Engineer(name=e.name, region=e.region, level=e.level.value) for e in found
            ]
        )

    async def ListBreaches(
        self, request: cpb.ListBreachesRequest, context: aio.ServicerContext
    ) -> Any:
        found = self._breaches(request.queue.strip())
        return cpb.ListBreachesResponse(breaches=[breach_to_pb(v) for v in found])

    async def Stats(self, request: cpb.StatsRequest, context: aio.ServicerContext) -> Any:
        start = parse_bound(getattr(request, "from"), "from")
        end = parse_bound(request.to, "to")
        if start is not None and end is not None and end <= start:
            raise InvalidArgument(f"to {request.to!r} is not after from; give a later --to")
        region = request.region.strip()
        if region and region not in self._registry.regions:
            raise InvalidArgument(
                f"region {region!r} is not a region of this federation; use one of: "
                f"{', '.join(self._registry.regions)}"
            )
        stats = compute_stats(self._tickets(), region=region or None, start=start, end=end)
        cohort = {
            t.code
            for t in self._tickets()
            if (not region or t.home_region == region) and _created_in(t, start, end)
        }
        missed = sum(
            1 for b in self._breaches("") if b.get("state") == "breached" and b["code"] in cohort
        )
        return stats_to_pb(stats, missed)


def _created_in(t: TicketView, start: datetime | None, end: datetime | None) -> bool:
    if not t.created_at:
        return False
    created = parse_iso(t.created_at)
    return (start is None or created >= start) and (end is None or created < end)


def parse_bound(text: str, what: str) -> datetime | None:
    """A period bound: a date (midnight UTC) or an ISO 8601 instant; empty is open."""
    text = text.strip()
    if not text:
        return None
    try:
        if len(text) == 10:
            return datetime.combine(date.fromisoformat(text), time(), UTC)
        value = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise InvalidArgument(
            f"{what} {text!r} is not a date or instant; use YYYY-MM-DD or 2026-03-04T09:00:00Z"
        ) from None
    if value.tzinfo is None:
        raise InvalidArgument(f"{what} {text!r} needs a time zone, e.g. 2026-03-04T09:00:00Z")
    return value.astimezone(UTC)


def _rate(r: Ratio) -> cpb.Rate:
    return cpb.Rate(count=r.count, total=r.total, rate=r.rate or 0.0)


def stats_to_pb(s: Stats, breaches: int) -> cpb.StatsReport:
    def seconds(value: timedelta | None) -> float:
        return value.total_seconds() if value is not None else 0.0

    msg = cpb.StatsReport(
        region=s.region or "",
        to=iso(s.end) if s.end else "",
        opened=s.opened,
        resolved=s.resolved,
        open_now=s.open_now,
        responded=s.responded,
        mean_time_to_respond_seconds=seconds(s.mean_time_to_respond),
        mean_time_to_resolve_seconds=seconds(s.mean_time_to_resolve),
        response_sla=_rate(s.response_sla),
        resolution_sla=_rate(s.resolution_sla),
        first_contact_resolution=_rate(s.first_contact_resolution),
        definitive_resolution=_rate(s.definitive_resolution),
        satisfaction_mean=s.satisfaction_mean or 0.0,
        satisfaction_count=s.satisfaction_count,
        causes_total=s.causes_total,
        pareto=[
            cpb.CauseShare(
                cause=c.cause,
                count=c.count,
                percent=c.percent,
                cumulative_percent=c.cumulative_percent,
            )
            for c in s.pareto
        ],
        breaches=breaches,
        machine_first=_rate(s.machine_first),
    )
    setattr(msg, "from", iso(s.start) if s.start else "")  # "from" is a Python keyword
    return msg
