"""Where the CLI finds what it presents: flags, then the local federation, then nothing."""

from __future__ import annotations

import argparse
from datetime import UTC, datetime
from pathlib import Path

import pytest

from node.errors import ConfigError
from node.tokens import verify_token
from ops.certs import CertPaths, init_certs, load_token_secret
from ops.credentials import add_flags, for_command


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    base = tmp_path_factory.mktemp("home")
    init_certs(base / "certs", ["velizy"])
    return base


def args(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_flags(parser)
    return parser.parse_args(list(argv))


def test_insecure_wins_over_everything(home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SUNDESK_HOME", str(home))
    assert for_command(args("--insecure", "--token", "x"), "agent") is None


def test_without_certs_anywhere_the_cli_dials_plaintext(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SUNDESK_HOME", str(tmp_path))
    assert for_command(args(), "agent") is None


def test_the_local_federation_mints_a_token_for_the_command(
    home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SUNDESK_HOME", str(home))
    monkeypatch.delenv("SUNDESK_TOKEN", raising=False)
    creds = for_command(args(), "oncall", subject="ana")
    assert creds is not None
    assert creds.cert == CertPaths(home / "certs").cli_cert.read_bytes()
    claims = verify_token(load_token_secret(home / "certs"), creds.token, datetime.now(UTC))
    assert (claims.role, claims.subject) == ("oncall", "ana")
    assert claims.expires_at is not None  # minted tokens are short-lived


def test_a_given_token_is_used_as_it_is(home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SUNDESK_HOME", str(home))
    monkeypatch.setenv("SUNDESK_TOKEN", "from-env")
    assert for_command(args(), "agent").token == "from-env"  # type: ignore[union-attr]
    assert for_command(args("--token", "flag"), "agent").token == "flag"  # type: ignore[union-attr]


def test_explicit_files_come_together(home: Path, tmp_path: Path) -> None:
    paths = CertPaths(home / "certs")
    creds = for_command(
        args(
            "--ca", str(paths.ca_cert), "--cert", str(paths.cli_cert), "--key", str(paths.cli_key)
        ),
        "agent",
    )
    assert creds is not None and creds.key == paths.cli_key.read_bytes()
    with pytest.raises(ConfigError, match="together"):
        for_command(args("--ca", str(paths.ca_cert)), "agent")
    with pytest.raises(ConfigError, match="cannot read the client key"):
        for_command(
            args("--ca", str(paths.ca_cert), "--cert", str(paths.cli_cert), "--key", "/nope"),
            "agent",
        )
