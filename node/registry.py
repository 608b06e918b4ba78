"""Customers and their assets as replicated records, so every region knows every customer.

A customer is the record ``CU-<id>``, an asset ``AS-<id>``; both are written by one
operation (``registry.customer`` / ``registry.asset``) holding every field, merged last
writer wins like a ticket. Registering the same id again with the same fields is a no-op
(a retried command must not fail); with different fields it is refused rather than
silently overwriting what another region registered.

The record's ``queue`` column holds the customer's home region (the asset's customer for
an asset) so ``records(prefix, queue)`` can list one region's customers cheaply.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import replace
from datetime import datetime
from typing import Any

from federation.merge import ReplicatedTicket
from node.contracts import Asset, Customer, validate_id
from node.errors import AlreadyExists, InvalidArgument, NotFound
from node.rules import NewTicket
from node.sqlite_store import SqliteTicketStore
from node.store import Change
from node.tickets import Tier, iso

CUSTOMER_PREFIX = "CU-"
ASSET_PREFIX = "AS-"
CUSTOMER_REGISTER = "registry.customer"
ASSET_REGISTER = "registry.asset"
REGISTRY_OP_KINDS = frozenset({CUSTOMER_REGISTER, ASSET_REGISTER})
# Lookups remembered, misses too (walk-in customers); past this many ids, start afresh.
CACHE_LIMIT = 20_000


def customer_key(id: str) -> str:
    return CUSTOMER_PREFIX + id


def asset_key(id: str) -> str:
    return ASSET_PREFIX + id


def customer_fields(c: Customer) -> dict[str, Any]:
    return {"id": c.id, "name": c.name, "home_region": c.home_region, "tier": c.tier.value}


def asset_fields(a: Asset) -> dict[str, Any]:
    return {
        "id": a.id,
        "customer": a.customer,
        "model": a.model,
        "serial": a.serial,
        "monitored": a.monitored,
        "heartbeat_seconds": a.heartbeat_seconds,
    }


def customer_from_record(r: ReplicatedTicket | None) -> Customer | None:
    if r is None or "id" not in r.values:
        return None
    v = r.values
    return Customer(id=v["id"], name=v["name"], home_region=v["home_region"], tier=Tier(v["tier"]))


def asset_from_record(r: ReplicatedTicket | None) -> Asset | None:
    if r is None or "id" not in r.values:
        return None
    v = r.values
    return Asset(
        id=v["id"],
        customer=v["customer"],
        model=v["model"],
        serial=v["serial"],
        monitored=bool(v["monitored"]),
        heartbeat_seconds=int(v["heartbeat_seconds"]),
    )


class Registry:
    """Customers and assets over the node's store. ``regions``, when given, are the
    federation's region names: a customer's home region must be one of them."""

    def __init__(self, store: SqliteTicketStore, regions: Collection[str] = ()) -> None:
        self._store = store
        self._regions = tuple(regions)
        # Every ticket created and every machine report looks its customer or asset up;
        # a record changes only through a commit, which ``_forget`` hears of.
        self._cache: dict[str, Customer | Asset | None] = {}
        store.add_listener(self._forget)

    def _forget(self, changes: Sequence[Change]) -> None:
        for change in changes:
            if change.op.kind in REGISTRY_OP_KINDS:
                self._cache.pop(change.op.ticket, None)

    def _lookup(self, key: str) -> Customer | Asset | None:
        try:
            return self._cache[key]
        except KeyError:
            pass
        record = self._store.get_record(key)
        found: Customer | Asset | None = (
            customer_from_record(record)
            if key.startswith(CUSTOMER_PREFIX)
            else asset_from_record(record)
        )
        if len(self._cache) >= CACHE_LIMIT:
            self._cache.clear()
        self._cache[key] = found
        return found

    @property
    def regions(self) -> tuple[str, ...]:
        return self._regions

    # ----- reads (committed state of this node) -----------------------------------------

    def get_customer(self, id: str) -> Customer | None:
        found = self._lookup(customer_key(id))
        return found if isinstance(found, Customer) else None

    def get_asset(self, id: str) -> Asset | None:
        found = self._lookup(asset_key(id))
        return found if isinstance(found, Asset) else None

    def customers(self, home_region: str = "") -> list[Customer]:
        found = map(customer_from_record, self._store.records(CUSTOMER_PREFIX, home_region))
        return sorted((c for c in found if c is not None), key=lambda c: c.id)

    def assets(self, monitored_only: bool = False, customer: str = "") -> list[Asset]:
        found = map(asset_from_record, self._store.records(ASSET_PREFIX, customer))
        return sorted(
            (a for a in found if a is not None and (a.monitored or not monitored_only)),
            key=lambda a: a.id,
        )

    # ----- writes -----------------------------------------------------------------------

    async def register_customer(self, customer: Customer) -> Customer:
        if self._regions and customer.home_region not in self._regions:
            raise InvalidArgument(
                f"customer {customer.id} home_region {customer.home_region!r} is not a region "
                f"of this federation; use one of: {', '.join(self._regions)}"
            )
        fields = customer_fields(customer)
        key = customer_key(customer.id)

        def build(current: ReplicatedTicket | None, now: datetime) -> Any:
            existing = customer_from_record(current)
            if existing == customer:
                return None
            if existing is not None:
                raise AlreadyExists(
                    f"customer {customer.id} is already registered ({existing.name}, "
                    f"{existing.tier.value}, home {existing.home_region}); choose another id"
                )
            return CUSTOMER_REGISTER, {
                **fields,
                "queue": customer.home_region,
                "registered_at": iso(now),
            }

        stored = customer_from_record(await self._store.write_record(key, build))
        assert stored is not None
        return stored

    async def register_asset(self, asset: Asset) -> Asset:
        if self.get_customer(asset.customer) is None:
            raise NotFound(
                f"asset {asset.id} customer {asset.customer!r} is not registered; register it "
                "first with `sundesk customer add`"
            )
        fields = asset_fields(asset)

        def build(current: ReplicatedTicket | None, now: datetime) -> Any:
            existing = asset_from_record(current)
            if existing == asset:
                return None
            if existing is not None:
                raise AlreadyExists(
                    f"asset {asset.id} is already registered (customer {existing.customer}, "
                    f"serial {existing.serial}); choose another id"
                )
            return ASSET_REGISTER, {**fields, "queue": asset.customer, "registered_at": iso(now)}

        stored = asset_from_record(await self._store.write_record(asset_key(asset.id), build))
        assert stored is not None
        return stored


def checked_id(value: str, what: str) -> str:
    """An id from a request, trimmed; the message names the field."""
    return validate_id(value.strip(), what)


def with_registered(new: NewTicket, customer: Customer | None, asset: Asset | None) -> NewTicket:
    """A new ticket as its registered customer (and asset) define it (pure).

    A registered customer decides the tier and the home region, hence the queue and the
    SLA calendar; a request that says otherwise is refused rather than silently changed.
    An unregistered customer is a walk-in: the ticket keeps what the request says.
    A registered asset names its customer, which a request may leave out.
    """
    if asset is not None:
        if new.customer and new.customer != asset.customer:
            raise InvalidArgument(
                f"asset {asset.id} belongs to customer {asset.customer}, not {new.customer}; "
                "fix customer or asset"
            )
        new = replace(new, customer=asset.customer)
    if customer is None:
        return new
    if new.tier is not None and new.tier != customer.tier:
        raise InvalidArgument(
            f"customer {customer.id} has a {customer.tier.value} contract, not {new.tier.value}; "
            "leave tier empty to use the contract"
        )
    if new.home_region and new.home_region != customer.home_region:
        raise InvalidArgument(
            f"customer {customer.id} is homed in {customer.home_region}, not "
            f"{new.home_region}; leave home_region empty"
        )
    return replace(new, tier=customer.tier, home_region=customer.home_region)
