"""The federation file: defaults, every rejected mistake named by its field, round trip."""

from __future__ import annotations

from datetime import UTC, date, datetime, time
from pathlib import Path

import pytest

from federation.config import (
    DEFAULT_HOURS,
    DEFAULT_PATH,
    FederationConfig,
    OncallRota,
    OncallWeek,
    load_config,
    load_config_text,
)
from node.errors import ConfigError, InvalidArgument

DEFAULT_TEXT = load_config().to_toml()  # everything spelled out, hours included
SHIPPED_TEXT = DEFAULT_PATH.read_text(encoding="utf-8")  # no [[queues]]: one per region

EXTRA_QUEUE = '\n[[queues]]\nname = "vip"\nhome = "velizy"\n'

CUSTOM = """
[federation]
lease_ttl_seconds = 5
etcd_endpoints = ["10.0.0.1:2379", "10.0.0.2:2379"]

[oncall]
anchor = 2026-01-05
timezone = "Europe/Paris"
[[oncall.weeks]]
primary = "Zoé \\"Z\\" Lefèvre"
secondary = "bob"
[[oncall.weeks]]
primary = "carol"
secondary = "dave"
start = "2026-08-03"

[[regions]]
name = "munich"
code = "MUC"
label = "München"
timezone = "Europe/Berlin"
country = "de"
subdivision = "BY"
address = "[::1]:6000"
metrics_port = 6001
extra_closed_dates = ["2026-12-31", "2026-12-24", 2026-12-24]
[regions.hours]
mon = ["13:00-18:00", "08:00-12:00"]
sat = ["10:00-24:00"]

[[regions]]
name = "tokyo"
code = "TYO"
timezone = "Asia/Tokyo"
country = "JP"
address = "host.example:7000"
metrics_port = 7001

[[queues]]
name = "munich"
home = "munich"
borrowers = ["tokyo"]

[[queues]]
name = "tokyo"
home = "TOKYO"
"""


def test_default_federation_has_five_regions_and_their_queues() -> None:
    config = load_config()
    rows = [
        (r.name, r.code, r.timezone, r.country, r.address, r.metrics_port) for r in config.regions
    ]
    assert rows == [
        ("velizy", "VEL", "Europe/Paris", "FR", "127.0.0.1:50051", 9451),
        ("germany", "DEU", "Europe/Berlin", "DE", "127.0.0.1:50052", 9452),
        ("uk", "GBR", "Europe/London", "GB", "127.0.0.1:50053", 9453),
        ("us", "USA", "America/New_York", "US", "127.0.0.1:50054", 9454),
        ("japan", "JPN", "Asia/Tokyo", "JP", "127.0.0.1:50055", 9455),
    ]
    assert config.region("velizy").label == "Vélizy"
    assert all(r.hours == DEFAULT_HOURS and r.subdivision is None for r in config.regions)
    assert DEFAULT_HOURS[0] == ((time(9), time(18)),) and DEFAULT_HOURS[5] == ()
    assert [(q.name, q.home, q.borrowers) for q in config.queues] == [
        (n, n, None) for n in config.region_names()
    ]
    assert config.lease_ttl_seconds == 3.0
    assert config.handoff_ack_minutes == 15.0
    assert config.max_clock_skew_seconds == 60.0
    assert config.etcd_endpoints == ("127.0.0.1:2379",)
    assert config.oncall.anchor == date(2026, 1, 5) and len(config.oncall.weeks) == 5


def test_region_lookup_by_name_or_code_ignores_case() -> None:
    config = load_config()
    assert config.region("VEL").name == "velizy"
    assert config.region("Japan").code == "JPN"
    assert config.region("usa").name == "us"
    with pytest.raises(ConfigError, match=r"unknown region 'mars'; known regions: velizy \(VEL\)"):
        config.region("mars")
    assert config.queue("UK").home == "uk"
    with pytest.raises(ConfigError, match="unknown queue 'vip'"):
        config.queue("vip")


def test_config_error_is_an_invalid_argument() -> None:
    assert issubclass(ConfigError, InvalidArgument)


def test_custom_file_with_every_option() -> None:
    config = load_config_text(CUSTOM)
    munich = config.region("MUC")
    assert munich.country == "DE" and munich.subdivision == "BY" and munich.label == "München"
    assert munich.hours[0] == ((time(8), time(12)), (time(13), time(18)))
    assert munich.hours[1] == DEFAULT_HOURS[1]  # weekdays not given keep the default
    assert munich.hours[5] == ((time(10), time(0)),)  # 24:00 is midnight ending the day
    assert munich.extra_closed_dates == (date(2026, 12, 24), date(2026, 12, 31))
    assert config.region("tokyo").label == "Tokyo"
    assert config.queue("munich").borrowers == ("tokyo",)
    assert config.queue("tokyo").home == "tokyo" and config.queue("tokyo").borrowers is None
    assert config.lease_ttl_seconds == 5.0
    assert config.oncall.weeks[1] == OncallWeek("carol", "dave", date(2026, 8, 3))


@pytest.mark.parametrize("text", [DEFAULT_TEXT, CUSTOM], ids=["default", "custom"])
def test_to_toml_round_trips(text: str) -> None:
    config = load_config_text(text)
    assert load_config_text(config.to_toml()) == config


def test_load_config_from_a_path(tmp_path: Path) -> None:
    path = tmp_path / "fed.toml"
    path.write_text(CUSTOM, encoding="utf-8")
    assert load_config(path) == load_config_text(CUSTOM)
    assert load_config(str(path)).region_names() == ["munich", "tokyo"]
    with pytest.raises(ConfigError, match=r"missing\.toml: cannot read"):
        load_config(tmp_path / "missing.toml")
    path.write_text(CUSTOM.replace("lease_ttl_seconds = 5", "lease_ttl_seconds = -5"))
    with pytest.raises(ConfigError, match=r"fed\.toml: federation\.lease_ttl_seconds"):
        load_config(path)


def test_with_addresses_moves_regions_and_keeps_the_original() -> None:
    config = load_config()
    moved = config.with_addresses(
        {"velizy": "127.0.0.1:61001", "JPN": "127.0.0.1:61005"},
        metrics_ports={"uk": 62003},
        etcd_endpoints=["127.0.0.1:62379"],
    )
    assert moved.region("velizy").address == "127.0.0.1:61001"
    assert moved.region("japan").address == "127.0.0.1:61005"
    assert moved.region("germany").address == "127.0.0.1:50052"
    assert moved.region("uk").metrics_port == 62003
    assert moved.etcd_endpoints == ("127.0.0.1:62379",)
    assert config.region("velizy").address == "127.0.0.1:50051"
    assert load_config_text(moved.to_toml()) == moved
    assert config.with_addresses({}).etcd_endpoints == config.etcd_endpoints
    with pytest.raises(ConfigError, match="unknown region 'mars'"):
        config.with_addresses({"mars": "127.0.0.1:1"})
    with pytest.raises(ConfigError, match=r"addresses\[uk\]: 'nowhere' must look like HOST:PORT"):
        config.with_addresses({"uk": "nowhere"})
    with pytest.raises(ConfigError, match=r"metrics_ports\[uk\]"):
        config.with_addresses({}, metrics_ports={"uk": 70000})


def _edit(old: str, new: str, count: int = 1) -> str:
    assert old in DEFAULT_TEXT, old
    return DEFAULT_TEXT.replace(old, new, count)


INVALID = [
    (
        _edit('"Europe/London"', '"Europe/Pariss"'),
        "regions[2].timezone: unknown time zone 'Europe/Pariss'",
    ),
    (_edit('name = "germany"', 'name = "velizy"'), "regions[1].name: duplicate region name"),
    (_edit('code = "DEU"', 'code = "VEL"'), "regions[1].code: duplicate region code 'VEL'"),
    (_edit('code = "DEU"', 'code = "UK"'), "regions[1].code: 'UK' is regions[2]'s name"),
    (_edit('name = "germany"', 'name = "Oncall"'), "regions[1].name: 'oncall' must be"),
    (_edit('name = "germany"', 'name = "west germany"'), "regions[1].name"),
    (_edit('code = "DEU"', 'code = "D"'), "regions[1].code: 'D' must be 2 to 8"),
    (
        _edit('mon = ["09:00-18:00"]', 'mon = ["09:00-25:00"]'),
        "regions[0].hours.mon[0]: bad time '25:00'",
    ),
    (_edit('tue = ["09:00-18:00"]', 'tue = ["9h-18h"]'), "hours.tue[0]: bad time '9h'"),
    (_edit('tue = ["09:00-18:00"]', 'tue = ["09:00"]'), "regions[0].hours.tue[0]: must look"),
    (_edit('mon = ["09:00-18:00"]', 'mon = ["24:00-24:00"]'), "hours.mon[0]: bad time '24:00'"),
    (_edit('mon = ["09:00-18:00"]', 'mon = ["09:60-18:00"]'), "hours.mon[0]: bad time '09:60'"),
    (
        _edit('mon = ["09:00-18:00"]', 'mon = ["18:00-09:00"]'),
        "regions[0].hours.mon[0]: end 09:00 is before start 18:00",
    ),
    (_edit('mon = ["09:00-18:00"]', 'mon = ["09:00-09:00"]'), "hours.mon[0]: end 09:00 equals"),
    (
        _edit('mon = ["09:00-18:00"]', 'mon = ["12:00-18:00", "09:00-13:00"]'),
        "regions[0].hours.mon: intervals overlap at 12:00",
    ),
    (_edit("sun = []", 'sunday = ["09:00-12:00"]'), "regions[0].hours.sunday: unknown key"),
    (
        _edit('country = "JP"', 'country = "XX"'),
        "regions[4].country: unknown country 'XX' for public holidays",
    ),
    (
        _edit('country = "FR"', 'country = "FR"\nsubdivision = "ZZ"'),
        "regions[0].subdivision: unknown subdivision 'ZZ' of FR",
    ),
    (
        SHIPPED_TEXT + '\n[[queues]]\nname = "vip"\nhome = "mars"\n',
        "queues[0].home: 'mars' is not a region; known regions: velizy, germany",
    ),
    (
        SHIPPED_TEXT + EXTRA_QUEUE + 'borrowers = ["uk", "venus"]\n',
        "queues[0].borrowers[1]: 'venus' is not a region",
    ),
    (SHIPPED_TEXT + EXTRA_QUEUE + 'borrowers = ["velizy"]\n', "queues[0].borrowers[0]"),
    (SHIPPED_TEXT + EXTRA_QUEUE + EXTRA_QUEUE, "queues[1].name: duplicate queue name 'vip'"),
    (
        _edit("lease_ttl_seconds = 3.0", "lease_ttl_seconds = -1.0"),
        "federation.lease_ttl_seconds: must be greater than 0, not -1.0",
    ),
    (_edit("lease_ttl_seconds = 3.0", "lease_ttl_seconds = true"), "must be a number"),
    (_edit("lease_ttl_seconds = 3.0", 'lease_ttl_seconds = "3"'), "must be a number"),
    (_edit("handoff_ack_minutes = 15.0", "handoff_ack_minutes = 0"), "handoff_ack_minutes"),
    (_edit("max_clock_skew_seconds = 60.0", "max_clock_skew_seconds = nan"), "max_clock_skew"),
    (
        _edit("lease_ttl_seconds = 3.0", "lease_ttl_secs = 3.0"),
        "federation.lease_ttl_secs: unknown key; did you mean 'lease_ttl_seconds'?",
    ),
    (
        _edit("metrics_port = 9451", "metric_port = 9451"),
        "regions[0].metric_port: unknown key; did you mean 'metrics_port'?",
    ),
    (_edit("[federation]", "[federaton]"), "federaton: unknown key; did you mean 'federation'?"),
    (_edit('primary = "camille.martin"', 'primari = "x"'), "oncall.weeks[0].primari"),
    (_edit("metrics_port = 9452", "metrics_port = 0"), "regions[1].metrics_port: 0 must be"),
    (_edit("metrics_port = 9452\n", ""), "regions[1].metrics_port: is required"),
    (_edit('"127.0.0.1:50053"', '"127.0.0.1"'), "regions[2].address: '127.0.0.1' must look"),
    (_edit('"127.0.0.1:50053"', '"127.0.0.1:50051"'), "regions[2].address: duplicate address"),
    (_edit('["127.0.0.1:2379"]', "[]"), "federation.etcd_endpoints: needs at least one"),
    (_edit('["127.0.0.1:2379"]', '["etcd"]'), "federation.etcd_endpoints[0]: 'etcd'"),
    (_edit('"2026-01-05"', '"2026-01-06"'), "oncall.anchor: 2026-01-06 is a Tuesday"),
    (_edit('"2026-01-05"', '"soon"'), "oncall.anchor: 'soon' must be a date"),
    (
        _edit("extra_closed_dates = []", 'extra_closed_dates = ["2026-02-30"]'),
        "regions[0].extra_closed_dates[0]: '2026-02-30' must be a date",
    ),
    (_edit('timezone = "UTC"', 'timezone = "Mars/Olympus"'), "oncall.timezone: unknown time"),
    (_edit('secondary = "jonas.weber"', 'secondary = ""'), "oncall.weeks[0].secondary"),
    ("[federation]\n", "regions: at least one [[regions]] table is required"),
    ("regions = 3\n", "regions: must be an array of tables"),
    ("[federation\n", "not valid TOML"),
]


@pytest.mark.parametrize(("text", "message"), INVALID, ids=[m for _, m in INVALID])
def test_invalid_config_names_the_field(text: str, message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load_config_text(text, source="fed.toml")
    assert str(caught.value).startswith("fed.toml: ")
    assert message in str(caught.value)


def test_dated_rota_weeks_must_not_repeat() -> None:
    week = '\n[[oncall.weeks]]\nprimary = "a"\nsecondary = "b"\nstart = "2026-03-02"\n'
    text = DEFAULT_TEXT.replace("\n[[regions]]", week + week + "\n[[regions]]", 1)
    with pytest.raises(ConfigError, match=r"oncall\.weeks\[6\]\.start: week 2026-03-02"):
        load_config_text(text)


def _at(day: str, hour: int = 12) -> datetime:
    return datetime.fromisoformat(day).replace(hour=hour, tzinfo=UTC)


def test_oncall_rota_cycles_weekly_from_the_anchor() -> None:
    rota = load_config().oncall
    assert rota.oncall_for(_at("2026-01-05", 0)) == ("camille.martin", "jonas.weber")
    assert rota.oncall_for(_at("2026-01-11", 23)) == ("camille.martin", "jonas.weber")
    assert rota.oncall_for(_at("2026-01-12", 0)) == ("emily.clarke", "mike.johnson")
    assert rota.oncall_for(_at("2026-02-09")) == ("camille.martin", "jonas.weber")  # 5 weeks on
    assert rota.oncall_for(_at("2026-01-04")) == ("mike.johnson", "haruto.sato")  # before anchor


def test_oncall_dated_week_overrides_the_cycle_in_the_rota_time_zone() -> None:
    rota = OncallRota(
        anchor=date(2026, 1, 5),
        weeks=(OncallWeek("a", "b"), OncallWeek("x", "y", date(2026, 3, 2))),
        timezone="Asia/Tokyo",
    )
    # Monday 2 March 00:00 in Tokyo is Sunday 1 March 15:00 UTC.
    assert rota.oncall_for(_at("2026-03-01", 14)) == ("a", "b")
    assert rota.oncall_for(_at("2026-03-01", 15)) == ("x", "y")
    assert rota.oncall_for(_at("2026-03-08", 15)) == ("a", "b")
    assert rota.changes_between(_at("2026-03-01", 0), _at("2026-03-09", 0)) == [
        _at("2026-03-01", 15),
        _at("2026-03-08", 15),
    ]
    assert OncallRota(anchor=date(2026, 1, 5)).oncall_for(_at("2026-03-01")) is None
    only_dated = OncallRota(date(2026, 1, 5), (OncallWeek("x", "y", date(2026, 3, 2)),))
    assert only_dated.oncall_for(_at("2026-03-03")) == ("x", "y")
    assert only_dated.oncall_for(_at("2026-03-10")) is None


def test_federation_config_is_hashable_so_plans_can_be_cached() -> None:
    config = load_config()
    assert isinstance(config, FederationConfig)
    assert hash(config) == hash(load_config_text(config.to_toml()))
