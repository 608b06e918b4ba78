"""The engineers' roster and who gets a case (pure).

The roster is configuration, like the contracts: a TOML file (``default_roster.toml`` is
shipped and documents the schema), identical on every node, so every region makes the
same checks without replicating anything. Assignment rules, for a ticket with a tier:

- the assignee and the second engineer must be on the roster, at or above the tier's
  ``engineer_level`` (a junior does not take a platinum case);
- when the tier says ``second_engineer`` (gold, platinum) a case is never left with one
  engineer: a manual assignment without a second one gets one from the assignee's region
  (least loaded, qualified), and is refused when there is none to take it;
- the second engineer is not the assignee.

A ticket without a tier (a walk-in) takes any name, as before there were contracts.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from federation.config_parse import Invalid, Table, parse_toml, read_toml
from node.contracts import Engineer, Level, TierPolicy
from node.errors import FailedPrecondition, InvalidArgument, SundeskError
from node.tickets import TicketView

DEFAULT_ROSTER_PATH = Path(__file__).with_name("default_roster.toml")


@dataclass(frozen=True)
class Roster:
    engineers: tuple[Engineer, ...]

    def get(self, name: str) -> Engineer | None:
        return next((e for e in self.engineers if e.name == name), None)

    def region(self, region: str) -> list[Engineer]:
        return [e for e in self.engineers if e.region == region]

    def pick(
        self,
        policy: TierPolicy,
        region: str,
        load: Mapping[str, int],
        exclude: Iterable[str] = (),
    ) -> Engineer | None:
        """The qualified engineer of ``region`` with the fewest open cases (``load``); the
        lowest sufficient level first, so seniors stay free for the cases that need them;
        then by name, so every node picks the same."""
        skip = set(exclude)
        fit = [e for e in self.region(region) if e.qualifies_for(policy) and e.name not in skip]
        if not fit:
            return None
        return min(fit, key=lambda e: (load.get(e.name, 0), e.level.rank, e.name))

    def check(self, name: str, policy: TierPolicy, role: str) -> Engineer:
        engineer = self.get(name)
        if engineer is None:
            raise InvalidArgument(
                f"{role} {name!r} is not on the roster; a {policy.tier.value} case goes to a "
                "rostered engineer (see `sundesk engineer list`)"
            )
        if not engineer.qualifies_for(policy):
            raise FailedPrecondition(
                f"{role} {name} is {engineer.level.value}; a {policy.tier.value} case needs "
                f"{policy.engineer_level.value} or above"
            )
        return engineer


def staffing(
    roster: Roster,
    policy: TierPolicy,
    ticket: TicketView,
    fields: Mapping[str, Any],
    load: Callable[[], Mapping[str, int]],
) -> dict[str, str]:
    """Checks a change's assignee and second engineer against the tier, and returns the
    second engineer to attach ({} when none is needed or one is already there)."""
    assignee = str(fields.get("assignee", ticket.assignee))
    second = str(fields.get("second_engineer", ticket.second_engineer))
    touched = "assignee" in fields or "second_engineer" in fields
    if not touched or not assignee:
        return {}
    lead = roster.check(assignee, policy, "assignee")
    if second:
        if second == assignee:
            raise InvalidArgument(f"the second engineer cannot be the assignee ({assignee})")
        roster.check(second, policy, "second engineer")
        return {}
    if not policy.second_engineer:
        return {}
    partner = roster.pick(policy, lead.region, load(), exclude=[assignee])
    if partner is None:
        raise FailedPrecondition(
            f"a {policy.tier.value} case needs a second engineer and {lead.region} has no "
            f"other {policy.engineer_level.value}+ engineer; name one with second_engineer"
        )
    return {"second_engineer": partner.name}


def load_roster(path: str | Path | None = None, regions: Iterable[str] | None = None) -> Roster:
    """Load a roster file; ``None`` loads the shipped default."""
    source = Path(path) if path is not None else DEFAULT_ROSTER_PATH
    return load_roster_text(read_toml(source, "the roster file"), str(source), regions)


def load_roster_text(
    text: str, source: str = "<string>", regions: Iterable[str] | None = None
) -> Roster:
    known = list(regions) if regions is not None else None

    def build(root: Table) -> Roster:
        root.only("engineers")
        engineers: list[Engineer] = []
        for t in root.tables("engineers") or []:
            t.only("name", "region", "level")
            level = t.string("level")
            if level not in {lv.value for lv in Level}:
                raise Invalid(t.at("level"), f"{level!r} is not junior, confirmed or senior")
            region = t.string("region")
            if known is not None and region not in known:
                raise Invalid(t.at("region"), f"{region!r} is not one of {', '.join(known)}")
            try:
                engineer = Engineer(t.string("name"), region, Level(level))
            except SundeskError as exc:
                raise Invalid(t.at("name"), str(exc)) from None
            if any(e.name == engineer.name for e in engineers):
                raise Invalid(t.at("name"), f"{engineer.name} is listed twice")
            engineers.append(engineer)
        return Roster(tuple(engineers))

    return parse_toml(text, source, build)
