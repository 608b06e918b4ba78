"""Reading the federation TOML into checked field values.

Kept apart from ``config.py`` so the public dataclasses stay short. Everything here
raises ``Invalid`` with the field's path (``regions[2].hours.mon[0]``);
``load_config_text`` prefixes the file name and turns it into ``ConfigError``.
"""

from __future__ import annotations

import difflib
import json
import math
import re
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import date, datetime, time
from itertools import pairwise
from pathlib import Path
from typing import Any, TypeVar
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import holidays

from federation.oncall import OncallRota, OncallWeek
from node.errors import ConfigError

T = TypeVar("T")

WEEKDAY_KEYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
_OFFICE = ((time(9), time(18)),)
DEFAULT_HOURS = (_OFFICE,) * 5 + ((), ())
RESERVED_OWNERS = frozenset({"oncall"})  # the plan's owner string when no region is open

_NAME = re.compile(r"^[a-z][a-z0-9_]*$")
_CODE = re.compile(r"^[A-Z][A-Z0-9]{1,7}$")
_TIME = re.compile(r"^(\d{1,2}):(\d{2})$")
_MISSING: Any = object()
_REGION_KEYS = (
    "name", "code", "label", "timezone", "country", "subdivision",
    "address", "metrics_port", "hours", "extra_closed_dates",
)  # fmt: skip


class Invalid(Exception):
    def __init__(self, path: str, message: str) -> None:
        super().__init__(f"{path}: {message}" if path else message)


class Table:
    """A TOML table read field by field, each error naming the field's path."""

    def __init__(self, data: Mapping[str, Any], path: str) -> None:
        self.data = data
        self.path = path

    def at(self, key: str) -> str:
        return f"{self.path}.{key}" if self.path else key

    def only(self, *known: str) -> None:
        """Reject unknown keys before reading any, so a typo is reported as itself
        rather than as the missing field it was meant to be."""
        unknown = sorted(set(self.data) - set(known))
        if not unknown:
            return
        key = unknown[0]
        close = difflib.get_close_matches(key, known, n=1)
        hint = f"did you mean {close[0]!r}?" if close else f"known keys: {', '.join(known)}"
        raise Invalid(self.at(key), f"unknown key; {hint}")

    def get(self, key: str, default: Any = _MISSING) -> Any:
        if key in self.data:
            return self.data[key]
        if default is _MISSING:
            raise Invalid(self.at(key), "is required")
        return default

    def string(self, key: str, default: Any = _MISSING) -> str:
        value = self.get(key, default)
        if not isinstance(value, str) or not value.strip():
            raise Invalid(self.at(key), f"must be a non-empty string, not {value!r}")
        return value.strip()

    def number(self, key: str, default: float, minimum: float, strict: bool) -> float:
        value = self.get(key, default)
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise Invalid(self.at(key), f"must be a number, not {value!r}")
        low_ok = value > minimum if strict else value >= minimum
        if not math.isfinite(value) or not low_ok:
            bound = "greater than" if strict else "at least"
            raise Invalid(self.at(key), f"must be {bound} {minimum:g}, not {value!r}")
        return float(value)

    def array(self, key: str, default: Any = _MISSING) -> list[Any]:
        value = self.get(key, default)
        if not isinstance(value, list):
            raise Invalid(self.at(key), f"must be a list, not {value!r}")
        return value

    def table(self, key: str) -> Table:
        value = self.get(key, {})
        if not isinstance(value, dict):
            raise Invalid(self.at(key), "must be a table")
        return Table(value, self.at(key))

    def tables(self, key: str) -> list[Table] | None:
        value = self.get(key, None)
        if value is None:
            return None
        if not isinstance(value, list) or not all(isinstance(v, dict) for v in value):
            raise Invalid(self.at(key), f"must be an array of tables ([[{key}]])")
        return [Table(v, f"{self.at(key)}[{i}]") for i, v in enumerate(value)]


@dataclass
class Parsed:
    regions: list[dict[str, Any]]
    queues: list[dict[str, Any]] | None
    settings: dict[str, Any]


def read_toml(source: Path, what: str) -> str:
    """The text of a TOML file, or a ``ConfigError`` naming the file and ``what`` it is."""
    try:
        return source.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"{source}: cannot read {what}: {exc.strerror}") from exc
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{source}: {what} is not UTF-8 text") from exc


def parse_toml(text: str, source: str, build: Callable[[Table], T]) -> T:
    """Parse ``text`` and ``build`` from it; every error names ``source`` and the field."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{source}: not valid TOML: {exc}") from exc
    try:
        return build(Table(data, ""))
    except Invalid as exc:
        raise ConfigError(f"{source}: {exc}") from None


def parse_federation(root: Table) -> Parsed:
    root.only("federation", "oncall", "regions", "queues")
    fed = root.table("federation")
    fed.only("lease_ttl_seconds", "handoff_ack_minutes", "max_clock_skew_seconds", "etcd_endpoints")
    endpoints = fed.array("etcd_endpoints", ["127.0.0.1:2379"])
    if not endpoints:
        raise Invalid(fed.at("etcd_endpoints"), "needs at least one HOST:PORT")
    for i, endpoint in enumerate(endpoints):
        check_address(endpoint, f"{fed.at('etcd_endpoints')}[{i}]")
    settings: dict[str, Any] = {
        "lease_ttl_seconds": fed.number("lease_ttl_seconds", 3.0, 0.0, strict=True),
        "handoff_ack_minutes": fed.number("handoff_ack_minutes", 15.0, 0.0, strict=True),
        "max_clock_skew_seconds": fed.number("max_clock_skew_seconds", 60.0, 0.0, strict=False),
        "etcd_endpoints": tuple(endpoints),
    }
    settings["oncall"] = _parse_oncall(root.table("oncall"))
    region_tables = root.tables("regions")
    if not region_tables:
        raise Invalid("regions", "at least one [[regions]] table is required")
    regions = [_parse_region(t) for t in region_tables]
    _check_unique_regions(regions)
    queue_tables = root.tables("queues")
    queues = None
    if queue_tables is not None:
        names = [r["name"] for r in regions]
        queues = [_parse_queue(t, names) for t in queue_tables]
        _check_unique(queues, "name", "queues", "queue name")
    return Parsed(regions=regions, queues=queues, settings=settings)


def _parse_region(t: Table) -> dict[str, Any]:
    t.only(*_REGION_KEYS)
    name = t.string("name").lower()
    if not _NAME.match(name) or name in RESERVED_OWNERS:
        raise Invalid(t.at("name"), f"{name!r} must be a lowercase identifier, not 'oncall'")
    code = t.string("code").upper()
    if not _CODE.match(code):
        raise Invalid(t.at("code"), f"{code!r} must be 2 to 8 letters or digits, e.g. 'VEL'")
    timezone = t.string("timezone")
    check_zone(timezone, t.at("timezone"))
    country = t.string("country").upper()
    subdivision = t.get("subdivision", None)
    if subdivision is not None and (not isinstance(subdivision, str) or not subdivision):
        raise Invalid(t.at("subdivision"), f"must be a non-empty string, not {subdivision!r}")
    _check_holidays(country, subdivision, t)
    address = t.string("address")
    check_address(address, t.at("address"))
    closed = t.array("extra_closed_dates", [])
    fields = {
        "name": name,
        "code": code,
        "label": t.string("label", name.capitalize()),
        "timezone": timezone,
        "country": country,
        "address": address,
        "metrics_port": check_port(t.get("metrics_port"), t.at("metrics_port")),
        "hours": _parse_hours(t.table("hours")),
        "subdivision": subdivision,
        "extra_closed_dates": tuple(
            sorted({_date(v, f"{t.at('extra_closed_dates')}[{i}]") for i, v in enumerate(closed)})
        ),
    }
    return fields


def _parse_hours(t: Table) -> tuple[tuple[tuple[time, time], ...], ...]:
    t.only(*WEEKDAY_KEYS)
    days = list(DEFAULT_HOURS)
    for weekday, key in enumerate(WEEKDAY_KEYS):
        if key not in t.data:
            continue
        spans = []
        for i, text in enumerate(t.array(key)):
            spans.append(_parse_span(text, f"{t.at(key)}[{i}]"))
        spans.sort()
        for (_, end), (start, _) in pairwise(spans):
            if start < end:
                raise Invalid(t.at(key), f"intervals overlap at {_minutes_text(start)}")
        # 24:00 is stored as time(0): the dataclass keeps datetime.time values.
        days[weekday] = tuple((_as_time(s), _as_time(e % 1440)) for s, e in spans)
    return tuple(days)


def _parse_span(text: Any, path: str) -> tuple[int, int]:
    """'09:00-18:00' as minutes of the day; the end may be 24:00."""
    if not isinstance(text, str) or text.count("-") != 1:
        raise Invalid(path, f"must look like '09:00-18:00', not {text!r}")
    start_text, end_text = (part.strip() for part in text.split("-"))
    start = _parse_minutes(start_text, path, allow_24=False)
    end = _parse_minutes(end_text, path, allow_24=True)
    if end < start:
        raise Invalid(path, f"end {end_text} is before start {start_text}")
    if end == start:
        raise Invalid(path, f"end {end_text} equals start; leave the list empty for closed")
    return start, end


def _parse_minutes(text: str, path: str, allow_24: bool) -> int:
    match = _TIME.match(text)
    hour, minute = (int(match[1]), int(match[2])) if match else (99, 99)
    ok = (hour < 24 and minute < 60) or (allow_24 and (hour, minute) == (24, 0))
    if not ok:
        raise Invalid(path, f"bad time {text!r}; use HH:MM from 00:00 to 24:00")
    return hour * 60 + minute


def _as_time(minutes: int) -> time:
    return time(minutes // 60, minutes % 60)


def _minutes_text(minutes: int) -> str:
    return f"{minutes // 60:02d}:{minutes % 60:02d}"


def _parse_oncall(t: Table) -> OncallRota:
    t.only("anchor", "timezone", "weeks")
    anchor = _monday(t.get("anchor", "2026-01-05"), t.at("anchor"))
    timezone = t.string("timezone", "UTC")
    check_zone(timezone, t.at("timezone"))
    weeks = []
    starts: dict[date, str] = {}
    for w in t.tables("weeks") or []:
        w.only("primary", "secondary", "start")
        start = w.get("start", None)
        if start is not None:
            start = _monday(start, w.at("start"))
            if start in starts:
                raise Invalid(w.at("start"), f"week {start} is already given in {starts[start]}")
            starts[start] = w.path
        weeks.append(OncallWeek(w.string("primary"), w.string("secondary"), start))
    return OncallRota(anchor=anchor, weeks=tuple(weeks), timezone=timezone)


def _parse_queue(t: Table, regions: list[str]) -> dict[str, Any]:
    t.only("name", "home", "borrowers")
    name = t.string("name").lower()
    if not _NAME.match(name):
        raise Invalid(t.at("name"), f"{name!r} must be a lowercase identifier")
    home = t.string("home").lower()
    known = ", ".join(regions)
    if home not in regions:
        raise Invalid(t.at("home"), f"{home!r} is not a region; known regions: {known}")
    borrowers = t.get("borrowers", None)
    if borrowers is not None:
        borrowers = [b.lower() if isinstance(b, str) else b for b in t.array("borrowers")]
        for i, region in enumerate(borrowers):
            path = f"{t.at('borrowers')}[{i}]"
            if region not in regions:
                raise Invalid(path, f"{region!r} is not a region; known regions: {known}")
            if region == home:
                raise Invalid(path, f"{region!r} is the queue's home, not a borrower")
            if region in borrowers[:i]:
                raise Invalid(path, f"{region!r} is listed twice")
        borrowers = tuple(borrowers)
    return {"name": name, "home": home, "borrowers": borrowers}


def _check_unique_regions(regions: list[dict[str, Any]]) -> None:
    _check_unique(regions, "name", "regions", "region name")
    _check_unique(regions, "code", "regions", "region code")
    _check_unique(regions, "address", "regions", "address")
    # region() accepts a name or a code, so one region's code must not be another's name.
    names = {r["name"]: i for i, r in enumerate(regions)}
    for i, r in enumerate(regions):
        other = names.get(r["code"].lower())
        if other is not None and other != i:
            raise Invalid(f"regions[{i}].code", f"{r['code']!r} is regions[{other}]'s name")


def _check_unique(items: list[dict[str, Any]], key: str, table: str, what: str) -> None:
    seen: dict[Any, int] = {}
    for i, item in enumerate(items):
        if item[key] in seen:
            first = f"{table}[{seen[item[key]]}]"
            raise Invalid(f"{table}[{i}].{key}", f"duplicate {what} {item[key]!r} (see {first})")
        seen[item[key]] = i


def _check_holidays(country: str, subdivision: str | None, t: Table) -> None:
    try:
        holidays.country_holidays(country)
    except NotImplementedError:
        raise Invalid(t.at("country"), f"unknown country {country!r} for public holidays") from None
    try:
        holidays.country_holidays(country, subdiv=subdivision)
    except NotImplementedError:
        message = f"unknown subdivision {subdivision!r} of {country} for public holidays"
        raise Invalid(t.at("subdivision"), message) from None


def check_zone(name: str, path: str) -> None:
    try:
        ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise Invalid(path, f"unknown time zone {name!r}") from None


def check_address(address: Any, path: str) -> str:
    host, sep, port = address.rpartition(":") if isinstance(address, str) else ("", "", "")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise Invalid(path, f"{address!r} must look like HOST:PORT")
    return address


def check_port(port: Any, path: str) -> int:
    if isinstance(port, bool) or not isinstance(port, int) or not 0 < port < 65536:
        raise Invalid(path, f"{port!r} must be a port number from 1 to 65535")
    return port


def _date(value: Any, path: str) -> date:
    if isinstance(value, date) and not isinstance(value, datetime):
        return value
    if isinstance(value, str):
        try:
            return date.fromisoformat(value.strip())
        except ValueError:
            pass
    raise Invalid(path, f"{value!r} must be a date, YYYY-MM-DD")


def _monday(value: Any, path: str) -> date:
    day = _date(value, path)
    if day.weekday() != 0:
        raise Invalid(path, f"{day} is a {day:%A}; rota weeks start on a Monday")
    return day


def toml_value(value: Any) -> str:
    """A TOML literal for the few types the config holds."""
    if isinstance(value, str):
        # JSON string escapes are valid TOML; DEL is the one character TOML also forbids raw.
        return json.dumps(value, ensure_ascii=False).replace("\x7f", "\\u007f")
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, list | tuple):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    raise TypeError(f"cannot write {value!r} as TOML")
