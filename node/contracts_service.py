"""The Contracts servicer: thin. Messages become domain objects (whose constructors
validate and name the field), the registry and the other collaborators do the work."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from grpc import aio

from node.contracts import Asset, Customer
from node.convert import TIER_TO_PB, tier_from_pb
from node.errors import InvalidArgument
from node.registry import Registry, checked_id
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
    ) -> None:
        self._registry = registry
        self._breaches = breaches

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

    async def ListBreaches(
        self, request: cpb.ListBreachesRequest, context: aio.ServicerContext
    ) -> Any:
        found = self._breaches(request.queue.strip())
        return cpb.ListBreachesResponse(breaches=[breach_to_pb(v) for v in found])
