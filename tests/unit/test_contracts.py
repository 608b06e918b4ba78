"""Contracts: the shipped tiers, the file's validation, customers, assets and engineers."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest

from federation.calendars import Always24x7Calendar, RegionCalendar
from federation.config import load_config
from node.contracts import (
    Asset,
    Contracts,
    Coverage,
    Customer,
    Engineer,
    Level,
    check_customer,
    load_contracts,
    load_contracts_text,
    validate_id,
)
from node.errors import ConfigError, InvalidArgument
from node.tickets import Tier

CONTRACTS = load_contracts()
CONFIG = load_config()
H = timedelta(hours=1)


# ----- the shipped defaults ---------------------------------------------------------------


def test_every_tier_is_shipped_with_four_priorities() -> None:
    assert [p.tier for p in CONTRACTS.policies] == list(Tier)
    for policy in CONTRACTS.policies:
        for priority in (1, 2, 3, 4):
            response, resolution = policy.targets(priority)
            assert timedelta() < response <= resolution


def test_shipped_tiers_follow_the_founding_documents() -> None:
    bronze, silver, gold, platinum = (CONTRACTS.tier(t) for t in Tier)
    assert bronze.scope == ("hardware",) and "software" in silver.scope
    assert [p.engineer_level for p in (bronze, silver, gold, platinum)] == [
        Level.JUNIOR, Level.JUNIOR, Level.CONFIRMED, Level.SENIOR,
    ]  # fmt: skip
    assert [p.second_engineer for p in (bronze, silver, gold, platinum)] == [
        False, False, True, True,
    ]  # fmt: skip
    assert [p.proactive_monitoring for p in (bronze, silver, gold, platinum)] == [
        False, False, False, True,
    ]  # fmt: skip
    assert gold.named_account_engineer and platinum.named_account_engineer
    assert CONTRACTS.at_risk_fraction == 0.2


def test_coverage_per_tier_and_priority() -> None:
    def coverages(tier: str) -> list[Coverage]:
        return [CONTRACTS.tier(tier).coverage(p) for p in (1, 2, 3, 4)]

    business, always = Coverage.BUSINESS, Coverage.ALWAYS
    assert coverages("bronze") == [business] * 4
    assert coverages("silver") == [business] * 4
    assert coverages("gold") == [always, business, business, business]
    assert coverages("platinum") == [always] * 4


def test_calendar_for_uses_the_home_region_or_round_the_clock() -> None:
    velizy = CONFIG.region("velizy")
    gold = CONTRACTS.tier("gold")
    assert isinstance(gold.calendar_for(1, velizy), Always24x7Calendar)
    business = gold.calendar_for(2, velizy)
    assert isinstance(business, RegionCalendar) and business.region == velizy
    assert gold.calendar_for(3, velizy) is business  # one calendar (and cache) per region


def test_targets_in_hours() -> None:
    assert CONTRACTS.tier("gold").targets(1) == (1 * H, 8 * H)
    assert CONTRACTS.tier("platinum").targets(1) == (timedelta(minutes=15), 4 * H)
    assert CONTRACTS.tier("bronze").targets(4) == (27 * H, 180 * H)


def test_tier_lookup() -> None:
    assert CONTRACTS.tier(" Gold ").tier is Tier.GOLD
    assert CONTRACTS.tier(Tier.SILVER).tier is Tier.SILVER
    with pytest.raises(InvalidArgument, match=r"unknown contract tier 'diamond'.*bronze"):
        CONTRACTS.tier("diamond")


@pytest.mark.parametrize("priority", [0, 5, -1, True])
def test_priority_out_of_range(priority: int) -> None:
    with pytest.raises(InvalidArgument, match="out of range"):
        CONTRACTS.tier("gold").targets(priority)


def test_load_from_a_file(tmp_path: Path) -> None:
    path = tmp_path / "contracts.toml"
    path.write_text(document(gold={"response_hours": "{ 1 = 0.5, 2 = 2, 3 = 3, 4 = 4 }"}))
    contracts = load_contracts(path)
    assert isinstance(contracts, Contracts)
    assert contracts.tier("gold").targets(1)[0] == timedelta(minutes=30)
    with pytest.raises(ConfigError, match="cannot read the contracts"):
        load_contracts(tmp_path / "missing.toml")


# ----- validation -------------------------------------------------------------------------

BASE = {
    "scope": '["hardware"]',
    "coverage": '"business"',
    "response_hours": "{ 1 = 1, 2 = 2, 3 = 4, 4 = 8 }",
    "resolution_hours": "{ 1 = 8, 2 = 16, 3 = 24, 4 = 40 }",
    "engineer_level": '"junior"',
}


def document(*, gold: dict[str, str | None] | None = None, head: str = "", drop: str = "") -> str:
    """A valid contracts file; ``gold`` replaces (None: removes) keys of the gold tier."""
    lines = [head]
    for tier in Tier:
        if tier.value == drop:
            continue
        lines.append(f"[tiers.{tier.value}]")
        fields: dict[str, str | None] = dict(BASE)
        if tier is Tier.GOLD:
            fields.update(gold or {})
        lines += [f"{key} = {value}" for key, value in fields.items() if value is not None]
    return "\n".join(lines) + "\n"


def test_the_minimal_document_is_valid() -> None:
    contracts = load_contracts_text(document())
    gold = contracts.tier("gold")
    assert not gold.second_engineer and gold.label == "Gold" and gold.description == ""


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("not = [toml", "not valid TOML"),
        (document(head="colour = 1"), "colour: unknown key"),
        (document(head="[tiers.diamond]"), "tiers.diamond: unknown key"),
        (document(drop="silver"), "tiers.silver: is required"),
        (document(gold={"respons_hours": "1"}), "tiers.gold.respons_hours: unknown key; did you"),
        (document(gold={"response_hours": None}), "tiers.gold.response_hours: is required"),
        (
            document(gold={"response_hours": "{ 1 = 1, 2 = 2, 4 = 8 }"}),
            "tiers.gold.response_hours.3: is required",
        ),
        (
            document(gold={"response_hours": "{ 1 = 1, 2 = 2, 3 = 4, 4 = 8, 5 = 9 }"}),
            "tiers.gold.response_hours.5: unknown key",
        ),
        (
            document(gold={"response_hours": "{ 1 = 0, 2 = 2, 3 = 4, 4 = 8 }"}),
            "tiers.gold.response_hours.1: must be more than 0",
        ),
        (
            document(gold={"resolution_hours": '{ 1 = 8, 2 = "16", 3 = 24, 4 = 40 }'}),
            "tiers.gold.resolution_hours.2: must be a number of hours",
        ),
        (
            document(gold={"resolution_hours": "{ 1 = 8, 2 = true, 3 = 24, 4 = 40 }"}),
            "tiers.gold.resolution_hours.2: must be a number of hours",
        ),
        (
            document(gold={"response_hours": "{ 1 = 9, 2 = 2, 3 = 4, 4 = 8 }"}),
            "tiers.gold.response_hours.1: 9 h is longer than the resolution target 8 h",
        ),
        (document(gold={"coverage": '"weekdays"'}), "tiers.gold.coverage: 'weekdays' is not"),
        (
            document(gold={"coverage_by_priority": '{ 1 = "always" }'}),
            "tiers.gold.coverage_by_priority.1: 'always' is not one of 'business', '24x7'",
        ),
        (
            document(gold={"coverage_by_priority": '{ 0 = "24x7" }'}),
            "tiers.gold.coverage_by_priority.0: unknown key",
        ),
        (document(gold={"engineer_level": '"guru"'}), "tiers.gold.engineer_level: 'guru'"),
        (document(gold={"engineer_level": None}), "tiers.gold.engineer_level: is required"),
        (document(gold={"scope": "[]"}), "tiers.gold.scope: needs at least one"),
        (document(gold={"scope": '["printers"]'}), r"tiers.gold.scope\[0\]: 'printers'"),
        (document(gold={"second_engineer": '"yes"'}), "tiers.gold.second_engineer: must be true"),
        (document(head="[sla]\nat_risk_fraction = 1.5"), "sla.at_risk_fraction: must be between"),
        (document(head="[sla]\nat_risk = 0.1"), "sla.at_risk: unknown key"),
    ],
)
def test_invalid_files_name_the_field(text: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_contracts_text(text, "contracts.toml")


def test_coverage_override_per_priority() -> None:
    contracts = load_contracts_text(document(gold={"coverage_by_priority": '{ 2 = "24x7" }'}))
    gold = contracts.tier("gold")
    assert [gold.coverage(p) for p in (1, 2, 3, 4)] == [
        Coverage.BUSINESS, Coverage.ALWAYS, Coverage.BUSINESS, Coverage.BUSINESS,
    ]  # fmt: skip


# ----- customers, assets, engineers -------------------------------------------------------


@pytest.mark.parametrize("value", ["acme", "a", "acme-paris-2", "0day", "x" * 64])
def test_valid_ids(value: str) -> None:
    assert validate_id(value, "customer id") == value


@pytest.mark.parametrize("value", ["", "Acme", "-acme", "acme_paris", "acme paris", "x" * 65, 7])
def test_invalid_ids(value: object) -> None:
    with pytest.raises(InvalidArgument, match="customer id"):
        validate_id(value, "customer id")


def test_customer() -> None:
    customer = Customer("acme", "ACME Industries", "velizy", Tier.GOLD)
    assert check_customer(customer, CONFIG).timezone == "Europe/Paris"
    with pytest.raises(InvalidArgument, match="unknown region 'mars'"):
        check_customer(Customer("acme", "ACME", "mars", Tier.GOLD), CONFIG)
    with pytest.raises(InvalidArgument, match="customer id 'ACME'"):
        Customer("ACME", "ACME", "velizy", Tier.GOLD)
    with pytest.raises(InvalidArgument, match="name must be a non-empty text"):
        Customer("acme", "  ", "velizy", Tier.GOLD)
    with pytest.raises(InvalidArgument, match="home region 'Velizy'"):
        Customer("acme", "ACME", "Velizy", Tier.GOLD)
    with pytest.raises(InvalidArgument, match="tier 'gold' is not a tier"):
        Customer("acme", "ACME", "velizy", "gold")  # type: ignore[arg-type]


def test_asset() -> None:
    monitored = Asset("ftx-01", "acme", "ftServer 6800", "SN123", True, 300)
    assert monitored.monitored and monitored.heartbeat_seconds == 300
    assert Asset("ftx-02", "acme", "ftServer", "SN124").heartbeat_seconds == 0
    with pytest.raises(InvalidArgument, match="heartbeat_seconds 0 must be 1 to"):
        Asset("ftx-03", "acme", "ftServer", "SN125", True, 0)
    with pytest.raises(InvalidArgument, match="heartbeat_seconds must be an integer"):
        Asset("ftx-03", "acme", "ftServer", "SN125", True, 1.5)  # type: ignore[arg-type]
    with pytest.raises(InvalidArgument, match="asset ftx-03 customer"):
        Asset("ftx-03", "Acme", "ftServer", "SN125")
    with pytest.raises(InvalidArgument, match="serial must be a non-empty text"):
        Asset("ftx-03", "acme", "ftServer", "")


def test_engineer() -> None:
    camille = Engineer("camille.martin", "velizy", Level.CONFIRMED)
    assert camille.qualifies_for(CONTRACTS.tier("gold"))
    assert camille.qualifies_for(CONTRACTS.tier("bronze"))
    assert not camille.qualifies_for(CONTRACTS.tier("platinum"))
    with pytest.raises(InvalidArgument, match="engineer name 'Camille'"):
        Engineer("Camille", "velizy", Level.SENIOR)
    with pytest.raises(InvalidArgument, match="level 'expert' is not a level"):
        Engineer("camille", "velizy", "expert")  # type: ignore[arg-type]
