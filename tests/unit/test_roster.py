"""The roster: levels respected, never an engineer alone on gold and platinum."""

from __future__ import annotations

import re
from typing import Any

import pytest

from node.contracts import load_contracts
from node.errors import ConfigError, FailedPrecondition, InvalidArgument
from node.roster import load_roster, load_roster_text, staffing
from node.tickets import Tier
from tests.unit.test_dues import Ticket

CONTRACTS = load_contracts(None)
ROSTER = load_roster(None, ["velizy", "germany", "uk", "us", "japan"])
GOLD, PLATINUM, BRONZE = (CONTRACTS.tier(t) for t in (Tier.GOLD, Tier.PLATINUM, Tier.BRONZE))


def no_load() -> dict[str, int]:
    return {}


def test_pick_takes_the_least_loaded_lowest_sufficient_level() -> None:
    # Velizy: camille (senior), lucas (confirmed), ines (junior). Gold needs confirmed+.
    pick = ROSTER.pick(GOLD, "velizy", {})
    assert pick is not None and pick.name == "lucas.bernard"
    busy = ROSTER.pick(GOLD, "velizy", {"lucas.bernard": 3, "camille.martin": 1})
    assert busy is not None and busy.name == "camille.martin"
    bronze = ROSTER.pick(BRONZE, "velizy", {})
    assert bronze is not None and bronze.name == "ines.moreau"
    assert ROSTER.pick(PLATINUM, "velizy", {}, exclude=["camille.martin"]) is None


def test_a_gold_assignment_gets_a_second_engineer_from_the_assignee_region() -> None:
    view = Ticket(Tier.GOLD, 2).view
    assert staffing(ROSTER, GOLD, view, {"assignee": "jonas.weber"}, no_load) == {
        "second_engineer": "lena.fischer"
    }
    named = {"assignee": "jonas.weber", "second_engineer": "lena.fischer"}
    assert staffing(ROSTER, GOLD, view, named, no_load) == {}
    assert staffing(ROSTER, BRONZE, view, {"assignee": "felix.wagner"}, no_load) == {}
    assert staffing(ROSTER, GOLD, view, {"priority": 1}, no_load) == {}


@pytest.mark.parametrize(
    ("policy", "fields", "error", "message"),
    [
        (GOLD, {"assignee": "felix.wagner"}, FailedPrecondition, "felix.wagner is junior"),
        (GOLD, {"assignee": "bob"}, InvalidArgument, "'bob' is not on the roster"),
        (
            GOLD,
            {"assignee": "jonas.weber", "second_engineer": "jonas.weber"},
            InvalidArgument,
            "cannot be the assignee",
        ),
        (
            PLATINUM,
            {"assignee": "camille.martin"},
            FailedPrecondition,
            "velizy has no other senior+ engineer",
        ),
    ],
)
def test_assignments_against_the_tier_are_refused(
    policy: Any, fields: dict[str, str], error: type[Exception], message: str
) -> None:
    with pytest.raises(error, match=re.escape(message)):
        staffing(ROSTER, policy, Ticket(Tier.GOLD, 2).view, fields, no_load)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('[[engineers]]\nname = "x"\nregion = "velizy"\nlevel = "guru"', "engineers[0].level"),
        ('[[engineers]]\nname = "x"\nregion = "mars"\nlevel = "junior"', "'mars' is not one"),
        ('[[engineers]]\nname = "X Y"\nregion = "velizy"\nlevel = "junior"', "engineers[0].name"),
        ("[[engineers]]\nname = 'x'\nregion = 'uk'\nlevel = 'junior'\nshift = 1", "shift"),
    ],
)
def test_a_bad_roster_names_the_field(text: str, message: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(message)):
        load_roster_text(text, "roster.toml", ["velizy", "uk"])
