"""What the CLI, tools and tests present to a secure node: a client certificate and a token.

Where they come from, first match wins:

- ``--insecure``: plaintext, no token (only for nodes started with ``--insecure``);
- ``--ca/--cert/--key`` (all three), else the certs of the local federation:
  ``$SUNDESK_HOME/certs`` (default ``var/local/certs``); with neither, plaintext;
- ``--token``, else ``$SUNDESK_TOKEN``, else, when the certs directory holds the
  federation's ``tokens.key`` (the machine that ran ``sundesk local up``), a short-lived
  token minted for the command: role ``agent`` for tickets, ``oncall`` to acknowledge,
  ``ops`` for status, with the command's ``--by`` as its subject. Whoever can read
  ``tokens.key`` can mint any token anyway; elsewhere, hand out tokens with
  ``sundesk tokens issue``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import grpc

from node.errors import ConfigError
from node.tokens import MACHINE, issue_token
from ops.certs import CertPaths, load_token_secret

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_HOME = ROOT / "var" / "local"
MINTED_TTL = 3600


def sundesk_home() -> Path:
    return Path(os.environ.get("SUNDESK_HOME") or DEFAULT_HOME)


@dataclass(frozen=True)
class ClientCredentials:
    ca: bytes
    cert: bytes
    key: bytes
    token: str = ""

    def tls(self) -> grpc.ChannelCredentials:
        """The certificate alone; pair it with ``metadata()`` on each call."""
        return grpc.ssl_channel_credentials(
            root_certificates=self.ca, private_key=self.key, certificate_chain=self.cert
        )

    def metadata(self) -> tuple[tuple[str, str], ...]:
        return (("authorization", f"Bearer {self.token}"),) if self.token else ()

    def channel_credentials(self) -> grpc.ChannelCredentials:
        """TLS plus the token on every call of the channel, for stubs used as they are.

        gRPC runs such call credentials through a Python plugin on a thread per call;
        hot loops (the bench) send ``metadata()`` with each call instead.
        """
        if not self.token:
            return self.tls()
        return grpc.composite_channel_credentials(
            self.tls(), grpc.access_token_call_credentials(self.token)
        )

    def with_token(self, token: str) -> ClientCredentials:
        return replace(self, token=token)


def _read(path: Path, what: str) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"cannot read {what} {path}: {exc.strerror}") from exc


def from_files(ca: Path, cert: Path, key: Path, token: str = "") -> ClientCredentials:
    return ClientCredentials(
        _read(ca, "the CA certificate (--ca)"),
        _read(cert, "the client certificate (--cert)"),
        _read(key, "the client key (--key)"),
        token,
    )


def from_certs_dir(dir: Path, token: str = "") -> ClientCredentials:
    """The CLI client certificate of a certs directory made by ``sundesk certs init``."""
    paths = CertPaths(Path(dir))
    return from_files(paths.ca_cert, paths.cli_cert, paths.cli_key, token)


def mint_token(dir: Path, role: str, subject: str = "", asset: str | None = None) -> str:
    """A short-lived token from the federation's own secret (local federations only)."""
    return issue_token(
        load_token_secret(Path(dir)),
        role,
        subject=subject or f"local-{role}",
        asset=asset if role == MACHINE else None,
        ttl_seconds=MINTED_TTL,
        now=datetime.now(UTC),
    )


def for_command(args: Any, role: str, subject: str = "") -> ClientCredentials | None:
    """The credentials a CLI command presents (see the module docstring for the order)."""
    if getattr(args, "insecure", False):
        return None
    flags = [getattr(args, name, "") or "" for name in ("ca", "cert", "key")]
    home_certs = sundesk_home() / "certs"
    if any(flags):
        if not all(flags):
            raise ConfigError("give --ca, --cert and --key together (or none of them)")
        creds = from_files(Path(flags[0]), Path(flags[1]), Path(flags[2]))
    elif CertPaths(home_certs).ca_cert.exists():
        creds = from_certs_dir(home_certs)
    else:
        return None
    token = getattr(args, "token", "") or os.environ.get("SUNDESK_TOKEN", "")
    if not token and CertPaths(home_certs).token_secret.exists():
        token = mint_token(home_certs, role, subject)
    return creds.with_token(token)


def add_flags(parser: Any) -> None:
    parser.add_argument("--ca", default="", help="federation CA certificate (PEM)")
    parser.add_argument("--cert", default="", help="client certificate (PEM)")
    parser.add_argument("--key", default="", help="client private key (PEM)")
    parser.add_argument(
        "--token", default="", help="caller token (default $SUNDESK_TOKEN or the local one)"
    )
    parser.add_argument(
        "--insecure", action="store_true", help="plaintext, for nodes started with --insecure"
    )


__all__ = [
    "ClientCredentials",
    "add_flags",
    "for_command",
    "from_certs_dir",
    "from_files",
    "mint_token",
    "sundesk_home",
]
