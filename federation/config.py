"""Federation configuration: regions, queues, on-call rota and lease timings.

The TOML file is read once (stdlib ``tomllib``) into frozen, hashable dataclasses, so the
calendars and the plan downstream work on values that are already validated and can be
used as cache keys. Every error names the offending field as a path
(``regions[2].timezone``) because the person fixing it is looking at the file, not at a
traceback. Unknown keys are rejected: a typo such as ``lease_ttl_secs`` must not silently
fall back to the default. The schema is documented in ``default_federation.toml``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import date, time
from pathlib import Path

from federation.config_parse import (
    DEFAULT_HOURS,
    WEEKDAY_KEYS,
    Invalid,
    Table,
    check_address,
    check_port,
    parse_federation,
    parse_toml,
    read_toml,
    toml_value,
)
from federation.oncall import OncallRota, OncallWeek
from node.errors import ConfigError

__all__ = [
    "DEFAULT_HOURS",
    "DEFAULT_PATH",
    "FederationConfig",
    "OncallRota",
    "OncallWeek",
    "QueueConfig",
    "RegionConfig",
    "load_config",
    "load_config_text",
]

DEFAULT_PATH = Path(__file__).with_name("default_federation.toml")

Hours = tuple[tuple[tuple[time, time], ...], ...]


@dataclass(frozen=True)
class RegionConfig:
    """One support centre.

    ``hours[weekday]`` (Monday is 0) holds the local opening intervals of that weekday,
    sorted and disjoint. An end of ``time(0)`` means midnight at the end of the day
    ("24:00" in the file). A tuple indexed by weekday rather than a dict keeps the
    dataclass hashable.
    """

    name: str
    code: str
    label: str
    timezone: str
    country: str
    address: str
    metrics_port: int
    hours: Hours = DEFAULT_HOURS
    subdivision: str | None = None
    extra_closed_dates: tuple[date, ...] = ()


@dataclass(frozen=True)
class QueueConfig:
    """A queue of tickets; ``borrowers`` None means any region may borrow it."""

    name: str
    home: str
    borrowers: tuple[str, ...] | None = None

    def may_borrow(self, region: str) -> bool:
        if region == self.home:
            return False
        return self.borrowers is None or region in self.borrowers


@dataclass(frozen=True)
class FederationConfig:
    regions: tuple[RegionConfig, ...]
    queues: tuple[QueueConfig, ...]
    lease_ttl_seconds: float = 3.0
    handoff_ack_minutes: float = 15.0
    max_clock_skew_seconds: float = 60.0
    etcd_endpoints: tuple[str, ...] = ("127.0.0.1:2379",)
    oncall: OncallRota = field(default_factory=lambda: OncallRota(anchor=date(2026, 1, 5)))

    def region(self, name_or_code: str) -> RegionConfig:
        """Look a region up by name or code, ignoring case (CLI users type both)."""
        wanted = name_or_code.strip().lower()
        for region in self.regions:
            if wanted in (region.name, region.code.lower()):
                return region
        known = ", ".join(f"{r.name} ({r.code})" for r in self.regions)
        raise ConfigError(f"unknown region {name_or_code!r}; known regions: {known}")

    def region_names(self) -> list[str]:
        return [r.name for r in self.regions]

    def queue(self, name: str) -> QueueConfig:
        for queue in self.queues:
            if queue.name == name.strip().lower():
                return queue
        known = ", ".join(q.name for q in self.queues)
        raise ConfigError(f"unknown queue {name!r}; known queues: {known}")

    def queue_names(self) -> list[str]:
        return [q.name for q in self.queues]

    def with_addresses(
        self,
        addresses: Mapping[str, str],
        metrics_ports: Mapping[str, int] | None = None,
        etcd_endpoints: list[str] | tuple[str, ...] | None = None,
    ) -> FederationConfig:
        """A copy with some regions moved to other ports (tests and the local runner
        pick free ports); keys are region names or codes."""
        new_addresses = {self.region(k).name: v for k, v in addresses.items()}
        new_ports = {self.region(k).name: v for k, v in (metrics_ports or {}).items()}
        try:
            for name, address in new_addresses.items():
                check_address(address, f"addresses[{name}]")
            for name, port in new_ports.items():
                check_port(port, f"metrics_ports[{name}]")
            for i, endpoint in enumerate(etcd_endpoints or ()):
                check_address(endpoint, f"etcd_endpoints[{i}]")
        except Invalid as exc:
            raise ConfigError(str(exc)) from None
        regions = tuple(
            dataclasses.replace(
                r,
                address=new_addresses.get(r.name, r.address),
                metrics_port=new_ports.get(r.name, r.metrics_port),
            )
            for r in self.regions
        )
        endpoints = tuple(etcd_endpoints) if etcd_endpoints else self.etcd_endpoints
        return dataclasses.replace(self, regions=regions, etcd_endpoints=endpoints)

    def to_toml(self) -> str:
        """Everything spelled out, so a generated file reads the same on any machine."""
        lines = [
            "[federation]",
            f"lease_ttl_seconds = {toml_value(self.lease_ttl_seconds)}",
            f"handoff_ack_minutes = {toml_value(self.handoff_ack_minutes)}",
            f"max_clock_skew_seconds = {toml_value(self.max_clock_skew_seconds)}",
            f"etcd_endpoints = {toml_value(list(self.etcd_endpoints))}",
            "",
            "[oncall]",
            f"anchor = {toml_value(self.oncall.anchor.isoformat())}",
            f"timezone = {toml_value(self.oncall.timezone)}",
        ]
        for week in self.oncall.weeks:
            lines += ["", "[[oncall.weeks]]"]
            if week.start is not None:
                lines.append(f"start = {toml_value(week.start.isoformat())}")
            lines.append(f"primary = {toml_value(week.primary)}")
            lines.append(f"secondary = {toml_value(week.secondary)}")
        for r in self.regions:
            lines += ["", "[[regions]]"]
            for key in ("name", "code", "label", "timezone", "country", "address"):
                lines.append(f"{key} = {toml_value(getattr(r, key))}")
            lines.append(f"metrics_port = {r.metrics_port}")
            if r.subdivision is not None:
                lines.append(f"subdivision = {toml_value(r.subdivision)}")
            closed = [d.isoformat() for d in r.extra_closed_dates]
            lines.append(f"extra_closed_dates = {toml_value(closed)}")
            lines.append("[regions.hours]")
            for key, intervals in zip(WEEKDAY_KEYS, r.hours, strict=True):
                spelled = [f"{_hhmm(s, False)}-{_hhmm(e, True)}" for s, e in intervals]
                lines.append(f"{key} = {toml_value(spelled)}")
        for q in self.queues:
            lines += ["", "[[queues]]", f"name = {toml_value(q.name)}"]
            lines.append(f"home = {toml_value(q.home)}")
            if q.borrowers is not None:
                lines.append(f"borrowers = {toml_value(list(q.borrowers))}")
        return "\n".join(lines) + "\n"


def _hhmm(value: time, is_end: bool) -> str:
    if is_end and value == time(0):
        return "24:00"
    return value.strftime("%H:%M")


def load_config(path: str | Path | None = None) -> FederationConfig:
    """Load a federation file; ``None`` loads the shipped default."""
    source = Path(path) if path is not None else DEFAULT_PATH
    return load_config_text(read_toml(source, "the configuration"), str(source))


def load_config_text(text: str, source: str = "<string>") -> FederationConfig:
    return parse_toml(text, source, _build)


def _build(root: Table) -> FederationConfig:
    parsed = parse_federation(root)
    regions = tuple(RegionConfig(**fields) for fields in parsed.regions)
    if parsed.queues is None:
        queues = tuple(QueueConfig(name=r.name, home=r.name) for r in regions)
    else:
        queues = tuple(QueueConfig(**fields) for fields in parsed.queues)
    return FederationConfig(regions=regions, queues=queues, **parsed.settings)
