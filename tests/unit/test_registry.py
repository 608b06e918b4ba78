"""Customers and assets as replicated records; tickets take tier and home from them."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TypeVar

import pytest

from node.clock import FakeClock
from node.contracts import Asset, Customer
from node.errors import AlreadyExists, InvalidArgument, NotFound
from node.registry import Registry, with_registered
from node.rules import NewTicket
from node.sqlite_store import SqliteTicketStore
from node.tickets import Tier

T = TypeVar("T")
REGIONS = ("velizy", "germany", "uk", "us", "japan")
ACME = Customer(id="acme", name="Acme SA", home_region="germany", tier=Tier.GOLD)
SCANNER = Asset(id="acme-ct-1", customer="acme", model="CT 9", serial="SN1", monitored=True,
                heartbeat_seconds=60)  # fmt: skip


def run(tmp_path: Path, body: Callable[[Registry, SqliteTicketStore], Awaitable[T]]) -> T:
    async def main() -> T:
        store = SqliteTicketStore(tmp_path, "velizy", "VEL", FakeClock())
        try:
            return await body(Registry(store, REGIONS), store)
        finally:
            await store.close()

    return asyncio.run(main())


def test_registered_customers_and_assets_read_back_and_replicate(tmp_path: Path) -> None:
    async def body(reg: Registry, store: SqliteTicketStore) -> None:
        assert await reg.register_customer(ACME) == ACME
        assert await reg.register_asset(SCANNER) == SCANNER
        plain = Asset(id="acme-pc", customer="acme", model="PC", serial="SN2")
        await reg.register_asset(plain)
        assert reg.get_customer("acme") == ACME
        assert reg.get_asset("acme-ct-1") == SCANNER
        assert reg.get_customer("nobody") is None and reg.get_asset("nothing") is None
        assert reg.customers() == [ACME]
        assert reg.customers("germany") == [ACME] and reg.customers("uk") == []
        assert reg.assets() == [SCANNER, plain]
        assert reg.assets(monitored_only=True) == [SCANNER]
        # Each registration is one operation in the log, so peers stream it like a ticket.
        ops = store.read_ops({"velizy": 0}, 100)
        assert [(o.ticket, o.kind) for o in ops] == [
            ("CU-acme", "registry.customer"),
            ("AS-acme-ct-1", "registry.asset"),
            ("AS-acme-pc", "registry.asset"),
        ]

    run(tmp_path, body)


def test_registering_the_same_again_is_a_no_op_and_a_different_one_is_refused(
    tmp_path: Path,
) -> None:
    async def body(reg: Registry, store: SqliteTicketStore) -> None:
        await reg.register_customer(ACME)
        await reg.register_customer(ACME)
        assert store.version_vector() == {"velizy": 1}
        with pytest.raises(AlreadyExists, match="customer acme is already registered"):
            await reg.register_customer(Customer("acme", "Other", "uk", Tier.BRONZE))
        await reg.register_asset(SCANNER)
        with pytest.raises(AlreadyExists, match="asset acme-ct-1 is already registered"):
            await reg.register_asset(Asset("acme-ct-1", "acme", "CT 9", "OTHER"))
        assert reg.get_customer("acme") == ACME

    run(tmp_path, body)


def test_bad_registrations_name_the_field(tmp_path: Path) -> None:
    async def body(reg: Registry, store: SqliteTicketStore) -> None:
        with pytest.raises(InvalidArgument, match="home_region 'mars'"):
            await reg.register_customer(Customer("acme", "Acme", "mars", Tier.GOLD))
        with pytest.raises(NotFound, match="customer 'ghost' is not registered"):
            await reg.register_asset(Asset("ghost-pc", "ghost", "PC", "SN"))
        assert store.version_vector() == {}

    run(tmp_path, body)


def test_a_registered_customer_decides_tier_and_home() -> None:
    new = with_registered(NewTicket(title="down", customer="acme"), ACME, None)
    assert (new.tier, new.home_region) == (Tier.GOLD, "germany")
    walk_in = NewTicket(title="down", customer="walk-in", tier=Tier.BRONZE)
    assert with_registered(walk_in, None, None) == walk_in
    via_asset = with_registered(NewTicket(title="alarm", asset="acme-ct-1"), ACME, SCANNER)
    assert (via_asset.customer, via_asset.tier) == ("acme", Tier.GOLD)


@pytest.mark.parametrize(
    ("new", "message"),
    [
        (NewTicket(title="x", customer="acme", tier=Tier.BRONZE), "gold contract, not bronze"),
        (NewTicket(title="x", customer="acme", home_region="uk"), "homed in germany, not uk"),
        (NewTicket(title="x", customer="other", asset="acme-ct-1"), "belongs to customer acme"),
    ],
)
def test_a_ticket_contradicting_the_registry_is_refused(new: NewTicket, message: str) -> None:
    with pytest.raises(InvalidArgument, match=message):
        with_registered(new, ACME, SCANNER)


def test_a_remembered_miss_is_forgotten_when_the_registration_replicates(tmp_path: Path) -> None:
    async def main() -> None:
        here = SqliteTicketStore(tmp_path / "velizy", "velizy", "VEL", FakeClock())
        there = SqliteTicketStore(tmp_path / "uk", "uk", "GBR", FakeClock())
        try:
            local, remote = Registry(here, REGIONS), Registry(there, REGIONS)
            assert local.get_customer("acme") is None  # a walk-in so far, and remembered
            assert local.get_asset("acme-ct-1") is None
            await remote.register_customer(ACME)
            await remote.register_asset(SCANNER)
            await here.apply_remote(there.read_ops({"uk": 0}, 100))
            assert local.get_customer("acme") == ACME
            assert local.get_asset("acme-ct-1") == SCANNER
        finally:
            await here.close()
            await there.close()

    asyncio.run(main())
