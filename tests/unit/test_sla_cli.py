"""`sundesk sla due`, driven through its own subparser (ops/cli.py wires it in)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest

from node.errors import ConfigError, InvalidArgument
from ops import sla_cli


def run(*argv: str) -> int:
    parser = argparse.ArgumentParser(prog="sundesk")
    sla_cli.add_parser(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["sla", "due", *argv])
    code: int = args.func(args)
    return code


def due_json(capsys: pytest.CaptureFixture[str], *argv: str) -> dict[str, str]:
    assert run(*argv, "--json") == 0
    document: dict[str, str] = json.loads(capsys.readouterr().out)
    return document


def test_gold_priority_2_runs_on_business_hours(capsys: pytest.CaptureFixture[str]) -> None:
    # Friday 16:00 CET: 2 business hours end at the close; 18 end on Tuesday 16:00 CEST.
    assert due_json(
        capsys, "--tier", "gold", "--priority", "2", "--region", "VEL",
        "--at", "2026-03-27T15:00:00Z",
    ) == {
        "response_due": "2026-03-27T17:00:00.000Z",
        "resolution_due": "2026-03-31T14:00:00.000Z",
    }  # fmt: skip


def test_gold_priority_1_runs_round_the_clock(capsys: pytest.CaptureFixture[str]) -> None:
    assert due_json(
        capsys, "--tier", "gold", "--priority", "1", "--region", "velizy",
        "--at", "2026-03-27T16:00:00+01:00",
    ) == {
        "response_due": "2026-03-27T16:00:00.000Z",
        "resolution_due": "2026-03-27T23:00:00.000Z",
    }  # fmt: skip


def test_pauses(capsys: pytest.CaptureFixture[str]) -> None:
    # Bronze P1 in Tokyo, Tue 10 Feb 16:00 JST: 4 h → Thu 11:00 (Wed is a holiday).
    # Paused Tue 17:00 to Thu 10:00 JST: 1 h + 1 h of open time → Thu 13:00 JST.
    base = ("--tier", "bronze", "--priority", "1", "--region", "japan",
            "--at", "2026-02-10T07:00:00Z")  # fmt: skip
    assert due_json(capsys, *base)["response_due"] == "2026-02-12T02:00:00.000Z"
    paused = due_json(
        capsys, *base,
        "--pending-from", "2026-02-10T08:00:00Z", "--pending-to", "2026-02-12T01:00:00Z",
    )  # fmt: skip
    assert paused["response_due"] == "2026-02-12T04:00:00.000Z"


def test_human_output(capsys: pytest.CaptureFixture[str]) -> None:
    assert run("--tier", "silver", "--priority", "3", "--region", "us",
               "--at", "2026-03-06T21:00:00Z") == 0  # fmt: skip
    out = capsys.readouterr().out
    assert "silver priority 3, business hours of us (America/New_York)" in out
    # 9 business hours from Friday 16:00 EST: 2 on Friday, 7 on Monday (after DST).
    assert "response due    2026-03-09T20:00:00.000Z  (Mon 2026-03-09 16:00 EDT)" in out


def test_own_contracts_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    text = (Path(sla_cli.__file__).parent.parent / "node" / "default_contracts.toml").read_text()
    custom = tmp_path / "contracts.toml"
    custom.write_text(
        text.replace("response_hours = { 1 = 1, 2 = 2,", "response_hours = { 1 = 1, 2 = 3,")
    )
    document = due_json(capsys, "--tier", "gold", "--priority", "2", "--region", "velizy",
                        "--at", "2026-03-27T15:00:00Z", "--contracts", str(custom))  # fmt: skip
    assert document["response_due"] == "2026-03-30T08:00:00.000Z"  # 2 h Fri + 1 h Monday
    broken = tmp_path / "broken.toml"
    broken.write_text("[tiers]\n")
    with pytest.raises(ConfigError, match=r"tiers\.bronze: is required"):
        run("--tier", "gold", "--priority", "2", "--region", "velizy",
            "--at", "2026-03-27T15:00:00Z", "--contracts", str(broken))  # fmt: skip


GOOD = {"--tier": "gold", "--priority": "2", "--region": "velizy", "--at": "2026-03-27T15:00Z"}


@pytest.mark.parametrize(
    ("changes", "extra", "message"),
    [
        ({"--tier": "diamond"}, [], "unknown contract tier 'diamond'"),
        ({"--region": "mars"}, [], "unknown region 'mars'"),
        ({"--priority": "0"}, [], "--priority '0' is out of range"),
        ({"--priority": "5"}, [], "--priority '5' is out of range"),
        ({"--priority": "high"}, [], "--priority 'high' is out of range"),
        ({"--at": "yesterday"}, [], "--at 'yesterday' is not an ISO 8601 instant"),
        ({"--at": "2026-03-27T15:00"}, [], "needs a time zone"),
        ({}, ["--pending-from", "2026-03-27T16:00Z"], "1 --pending-from but 0 --pending-to"),
        (
            {},
            ["--pending-from", "2026-03-27T16:00Z", "--pending-to", "2026-03-27T15:00Z"],
            "pause 1: --pending-to 2026-03-27T15:00Z is before --pending-from",
        ),
        ({}, ["--pending-from", "soon", "--pending-to", "later"], "--pending-from 'soon'"),
    ],
)
def test_bad_input_is_one_line(changes: dict[str, str], extra: list[str], message: str) -> None:
    options = {**GOOD, **changes}
    argv = [item for pair in options.items() for item in pair] + extra
    with pytest.raises(InvalidArgument, match=message) as caught:
        run(*argv)
    assert "\n" not in str(caught.value)
