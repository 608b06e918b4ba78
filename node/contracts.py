"""Support contracts: what each tier promises, and who the customers, assets and engineers are.

Targets live in a TOML file (``default_contracts.toml`` is shipped and documents the
schema), read once into frozen dataclasses. As with the federation file, every error
names the offending field (``tiers.gold.response_hours.3``) and unknown keys are refused.

A target is a number of hours counted on the priority's *coverage calendar*: the
business hours of the customer's home region, or round the clock. ``TierPolicy`` only
says which; ``calendar_for`` builds the calendar from the region's configuration, so the
policy itself stays a plain value.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from datetime import timedelta
from enum import StrEnum
from functools import lru_cache
from pathlib import Path
from typing import Any, TypeVar

from federation.calendars import Always24x7Calendar, BusinessCalendar, RegionCalendar
from federation.config import FederationConfig, RegionConfig
from federation.config_parse import Invalid, Table, parse_toml, read_toml
from node.errors import InvalidArgument
from node.tickets import Tier

__all__ = [
    "DEFAULT_CONTRACTS_PATH",
    "PRIORITIES",
    "Asset",
    "Contracts",
    "Coverage",
    "Customer",
    "Engineer",
    "Level",
    "TierPolicy",
    "check_customer",
    "load_contracts",
    "load_contracts_text",
    "validate_id",
]

DEFAULT_CONTRACTS_PATH = Path(__file__).with_name("default_contracts.toml")
PRIORITIES = (1, 2, 3, 4)  # 1 is critical, 4 is low (node/rules.py)
MAX_TARGET_HOURS = 8760.0  # one year: anything longer is a typo, not a promise
AT_RISK_FRACTION = 0.2
_E = TypeVar("_E", bound=StrEnum)

_ID = re.compile(r"^[a-z0-9][a-z0-9-]{0,63}$")
_PERSON = re.compile(r"^[a-z0-9][a-z0-9._-]{0,63}$")  # on-call names look like "jo.weber"
_REGION = re.compile(r"^[a-z][a-z0-9_]*$")
_SCOPES = ("hardware", "software")
_TIER_KEYS = (
    "label", "description", "scope", "coverage", "coverage_by_priority",
    "response_hours", "resolution_hours", "engineer_level",
    "named_account_engineer", "proactive_monitoring", "second_engineer",
)  # fmt: skip


class Coverage(StrEnum):
    BUSINESS = "business"
    ALWAYS = "24x7"


class Level(StrEnum):
    """Engineer levels of the founding documents, lowest first."""

    JUNIOR = "junior"
    CONFIRMED = "confirmed"
    SENIOR = "senior"

    @property
    def rank(self) -> int:
        return list(Level).index(self)


@dataclass(frozen=True)
class PriorityTerms:
    coverage: Coverage
    response: timedelta
    resolution: timedelta


@dataclass(frozen=True)
class TierPolicy:
    """One tier's promises; ``terms[p - 1]`` holds priority ``p``."""

    tier: Tier
    label: str
    description: str
    scope: tuple[str, ...]
    terms: tuple[PriorityTerms, ...]
    engineer_level: Level
    named_account_engineer: bool
    proactive_monitoring: bool
    second_engineer: bool

    def _terms(self, priority: int) -> PriorityTerms:
        if isinstance(priority, bool) or priority not in PRIORITIES:
            raise InvalidArgument(
                f"priority {priority!r} is out of range; use 1 (critical) to 4 (low)"
            )
        return self.terms[priority - 1]

    def targets(self, priority: int) -> tuple[timedelta, timedelta]:
        """(response, resolution) targets, counted on ``coverage(priority)``."""
        terms = self._terms(priority)
        return terms.response, terms.resolution

    def coverage(self, priority: int) -> Coverage:
        return self._terms(priority).coverage

    def calendar_for(self, priority: int, home_region: RegionConfig) -> BusinessCalendar:
        """The calendar the SLA clocks of a ``priority`` case run on."""
        if self.coverage(priority) is Coverage.ALWAYS:
            return Always24x7Calendar()
        return _region_calendar(home_region)


@lru_cache(maxsize=64)
def _region_calendar(region: RegionConfig) -> RegionCalendar:
    # A calendar caches the intervals of the days it has computed; sharing one per
    # region keeps that work across tickets. RegionConfig is frozen, so a fine key.
    return RegionCalendar(region)


@dataclass(frozen=True)
class Contracts:
    policies: tuple[TierPolicy, ...]
    at_risk_fraction: float = AT_RISK_FRACTION

    def tier(self, name: str | Tier) -> TierPolicy:
        wanted = str(name).strip().lower()
        for policy in self.policies:
            if policy.tier.value == wanted:
                return policy
        known = ", ".join(p.tier.value for p in self.policies)
        raise InvalidArgument(f"unknown contract tier {str(name)!r}; known tiers: {known}")


# ----- customers, assets, engineers -------------------------------------------------------


def validate_id(value: object, what: str) -> str:
    """An id as used in URLs and commands: lowercase letters, digits and '-', 1 to 64."""
    if not isinstance(value, str) or not _ID.match(value):
        raise InvalidArgument(
            f"{what} {value!r} must be 1 to 64 lowercase letters, digits or '-', "
            "starting with a letter or digit (e.g. 'acme-paris')"
        )
    return value


def _text(value: object, what: str, limit: int = 200) -> str:
    if not isinstance(value, str) or not value.strip():
        raise InvalidArgument(f"{what} must be a non-empty text, not {value!r}")
    if len(value) > limit:
        raise InvalidArgument(f"{what} is {len(value)} characters long; at most {limit}")
    return value


def _region_name(value: object, what: str) -> str:
    if not isinstance(value, str) or not _REGION.match(value):
        raise InvalidArgument(f"{what} {value!r} must be a region name such as 'velizy'")
    return value


@dataclass(frozen=True)
class Customer:
    id: str
    name: str
    home_region: str
    tier: Tier

    def __post_init__(self) -> None:
        validate_id(self.id, "customer id")
        _text(self.name, f"customer {self.id} name")
        _region_name(self.home_region, f"customer {self.id} home region")
        if not isinstance(self.tier, Tier):
            raise InvalidArgument(f"customer {self.id} tier {self.tier!r} is not a tier")


def check_customer(customer: Customer, config: FederationConfig) -> RegionConfig:
    """The customer's home region; raises if the federation has no such region."""
    return config.region(customer.home_region)


MAX_HEARTBEAT_SECONDS = 7 * 86400


@dataclass(frozen=True)
class Asset:
    """A customer's machine. A monitored one calls home every ``heartbeat_seconds``."""

    id: str
    customer: str
    model: str
    serial: str
    monitored: bool = False
    heartbeat_seconds: int = 0

    def __post_init__(self) -> None:
        validate_id(self.id, "asset id")
        validate_id(self.customer, f"asset {self.id} customer")
        _text(self.model, f"asset {self.id} model", 100)
        _text(self.serial, f"asset {self.id} serial", 100)
        beat = self.heartbeat_seconds
        if isinstance(beat, bool) or not isinstance(beat, int):
            raise InvalidArgument(f"asset {self.id} heartbeat_seconds must be an integer")
        low = 1 if self.monitored else 0
        if not low <= beat <= MAX_HEARTBEAT_SECONDS:
            raise InvalidArgument(
                f"asset {self.id} heartbeat_seconds {beat} must be {low} to "
                f"{MAX_HEARTBEAT_SECONDS}" + (" for a monitored asset" if low else "")
            )


@dataclass(frozen=True)
class Engineer:
    name: str
    region: str
    level: Level

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not _PERSON.match(self.name):
            raise InvalidArgument(
                f"engineer name {self.name!r} must be 1 to 64 lowercase letters, digits, "
                "'.', '_' or '-' (e.g. 'camille.martin')"
            )
        _region_name(self.region, f"engineer {self.name} region")
        if not isinstance(self.level, Level):
            raise InvalidArgument(f"engineer {self.name} level {self.level!r} is not a level")

    def qualifies_for(self, policy: TierPolicy) -> bool:
        """At or above the tier's preferred level (a preference: the documents insist
        the matching "n'a rien de systématique")."""
        return self.level.rank >= policy.engineer_level.rank


# ----- loading ----------------------------------------------------------------------------


def load_contracts(path: str | Path | None = None) -> Contracts:
    """Load a contracts file; ``None`` loads the shipped default."""
    source = Path(path) if path is not None else DEFAULT_CONTRACTS_PATH
    return load_contracts_text(read_toml(source, "the contracts file"), str(source))


def load_contracts_text(text: str, source: str = "<string>") -> Contracts:
    return parse_toml(text, source, _parse)


def _parse(root: Table) -> Contracts:
    root.only("sla", "tiers")
    sla = root.table("sla")
    sla.only("at_risk_fraction")
    fraction = _number(sla, "at_risk_fraction", AT_RISK_FRACTION)
    if not 0 < fraction < 1:
        raise Invalid(sla.at("at_risk_fraction"), f"must be between 0 and 1, not {fraction!r}")
    tiers = root.table("tiers")
    tiers.only(*(t.value for t in Tier))
    policies = []
    for tier in Tier:
        if tier.value not in tiers.data:
            raise Invalid(tiers.at(tier.value), "is required: every tier needs its terms")
        policies.append(_parse_tier(tiers.table(tier.value), tier))
    return Contracts(policies=tuple(policies), at_risk_fraction=fraction)


def _parse_tier(t: Table, tier: Tier) -> TierPolicy:
    t.only(*_TIER_KEYS)
    scope = t.array("scope")
    if not scope:
        raise Invalid(t.at("scope"), f"needs at least one of {', '.join(_SCOPES)}")
    for i, item in enumerate(scope):
        if item not in _SCOPES:
            raise Invalid(f"{t.at('scope')}[{i}]", f"{item!r} is not one of {_SCOPES}")
    default = _enum(Coverage, t.string("coverage"), t.at("coverage"))
    overrides = _per_priority(t, "coverage_by_priority", required=False)
    response = _per_priority(t, "response_hours", required=True)
    resolution = _per_priority(t, "resolution_hours", required=True)
    terms = []
    for p in PRIORITIES:
        key = str(p)
        coverage = default
        if key in overrides:
            coverage = _enum(Coverage, overrides[key], f"{t.at('coverage_by_priority')}.{key}")
        respond = _hours(response[key], f"{t.at('response_hours')}.{key}")
        resolve = _hours(resolution[key], f"{t.at('resolution_hours')}.{key}")
        if respond > resolve:
            raise Invalid(
                f"{t.at('response_hours')}.{key}",
                f"{response[key]} h is longer than the resolution target "
                f"{resolution[key]} h: a case cannot be resolved before it is answered",
            )
        terms.append(PriorityTerms(coverage, respond, resolve))
    return TierPolicy(
        tier=tier,
        label=t.string("label", tier.value.capitalize()),
        description=str(t.get("description", "")),
        scope=tuple(scope),
        terms=tuple(terms),
        engineer_level=_enum(Level, t.string("engineer_level"), t.at("engineer_level")),
        named_account_engineer=_bool(t, "named_account_engineer"),
        proactive_monitoring=_bool(t, "proactive_monitoring"),
        second_engineer=_bool(t, "second_engineer"),
    )


def _per_priority(t: Table, key: str, *, required: bool) -> dict[str, Any]:
    """An inline table keyed by priority (TOML bare keys "1".."4")."""
    if key not in t.data:
        if required:
            raise Invalid(t.at(key), "is required, e.g. { 1 = 1, 2 = 4, 3 = 8, 4 = 24 }")
        return {}
    table = t.table(key)
    table.only(*(str(p) for p in PRIORITIES))
    if required:
        for p in PRIORITIES:
            table.get(str(p))  # raises "is required", naming the priority
    return dict(table.data)


def _hours(value: Any, path: str) -> timedelta:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise Invalid(path, f"must be a number of hours, not {value!r}")
    if not 0 < value <= MAX_TARGET_HOURS:
        raise Invalid(path, f"must be more than 0 and at most {MAX_TARGET_HOURS:g} hours")
    return timedelta(hours=value)


def _number(t: Table, key: str, default: float) -> float:
    value = t.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise Invalid(t.at(key), f"must be a number, not {value!r}")
    return float(value)


def _bool(t: Table, key: str) -> bool:
    value = t.get(key, False)
    if not isinstance(value, bool):
        raise Invalid(t.at(key), f"must be true or false, not {value!r}")
    return value


def _enum(kind: type[_E], value: Any, path: str) -> _E:
    try:
        return kind(value)
    except ValueError:
        known = ", ".join(repr(m.value) for m in kind)
        raise Invalid(path, f"{value!r} is not one of {known}") from None
