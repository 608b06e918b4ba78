"""Caller tokens: who a person or a machine is, signed with the federation's secret.

A token is ``base64url(JSON claims) "." base64url(HMAC-SHA256(secret, first part))``,
issued by ``sundesk tokens issue`` with the federation's ``tokens.key``. Tokens cannot be
revoked one by one: give them a TTL (the CLI's default is a shift), and replace
``tokens.key`` to revoke them all. ``node`` is reserved for federation peers, which
authenticate with their node certificate: no token of role ``node`` is issued.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import re
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from node.errors import InvalidArgument, Unauthenticated

AGENT, ONCALL, OPS, MACHINE, NODE = "agent", "oncall", "ops", "machine", "node"
ISSUABLE_ROLES = frozenset({AGENT, ONCALL, OPS, MACHINE})
ROLES = ISSUABLE_ROLES | {NODE}

MIN_SECRET_BYTES = 32
MAX_TOKEN_CHARS = 4096  # refuse to decode anything bigger: a token is a few hundred bytes
TOKEN_VERSION = 1
_B64URL = re.compile(r"^[A-Za-z0-9_-]+$")


@dataclass(frozen=True)
class Claims:
    role: str
    subject: str = ""
    region: str | None = None  # the caller's home region: informational, not a restriction
    asset: str | None = None  # machines: the one asset they speak for
    issued_at: int = 0  # UNIX seconds
    expires_at: int | None = None  # UNIX seconds; None never expires

    @property
    def caller(self) -> str:
        """A stable name for this caller in logs and rate limits."""
        who = self.subject or (self.asset if self.role == MACHINE else "") or "anonymous"
        return f"{self.role}:{who}"

    def to_json(self) -> dict[str, Any]:
        doc: dict[str, Any] = {"v": TOKEN_VERSION, "role": self.role, "iat": self.issued_at}
        if self.subject:
            doc["sub"] = self.subject
        if self.region is not None:
            doc["region"] = self.region
        if self.asset is not None:
            doc["asset"] = self.asset
        if self.expires_at is not None:
            doc["exp"] = self.expires_at
        return doc


def _b64encode(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _b64decode(text: str) -> bytes:
    if not _B64URL.match(text):
        raise ValueError("not base64url")
    data = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    if _b64encode(data) != text:  # spare bits set: one token, one spelling
        raise ValueError("not canonical base64url")
    return data


def _mac(secret: bytes, body: str) -> bytes:
    return hmac.new(secret, body.encode("ascii"), hashlib.sha256).digest()


def check_secret(secret: bytes) -> None:
    if len(secret) < MIN_SECRET_BYTES:
        raise InvalidArgument(
            f"the token secret has {len(secret)} bytes; it needs at least {MIN_SECRET_BYTES}"
        )


def epoch(now: datetime) -> int:
    if now.tzinfo is None:
        raise InvalidArgument("token times must be timezone-aware")
    return int(now.timestamp())


def issue_token(
    secret: bytes,
    role: str,
    *,
    region: str | None = None,
    asset: str | None = None,
    subject: str = "",
    ttl_seconds: int | None = None,
    now: datetime,
) -> str:
    check_secret(secret)
    if role == NODE:
        raise InvalidArgument(
            "role node is reserved for federation peers, which authenticate with their node "
            "certificate; no token carries it"
        )
    if role not in ISSUABLE_ROLES:
        raise InvalidArgument(
            f"unknown role {role!r}; choose one of {', '.join(sorted(ISSUABLE_ROLES))}"
        )
    if role == MACHINE and not asset:
        raise InvalidArgument("a machine token needs --asset: the asset it speaks for")
    if role != MACHINE and asset:
        raise InvalidArgument(f"--asset is for machine tokens only, not {role}")
    if role in (AGENT, ONCALL) and not subject.strip():
        raise InvalidArgument(f"a {role} token needs --subject: who the person is")
    if ttl_seconds is not None and ttl_seconds <= 0:
        raise InvalidArgument(f"--ttl {ttl_seconds} must be positive (omit it: no expiry)")
    iat = epoch(now)
    claims = Claims(
        role=role,
        subject=subject.strip(),
        region=region,
        asset=asset,
        issued_at=iat,
        expires_at=None if ttl_seconds is None else iat + ttl_seconds,
    )
    body = _b64encode(json.dumps(claims.to_json(), sort_keys=True, separators=(",", ":")).encode())
    return f"{body}.{_b64encode(_mac(secret, body))}"


def verify_token(secret: bytes, token: str, now: datetime) -> Claims:
    """The claims of a genuine, unexpired token; ``Unauthenticated`` says what is wrong."""
    check_secret(secret)
    if len(token) > MAX_TOKEN_CHARS:
        raise Unauthenticated(f"token is malformed: longer than {MAX_TOKEN_CHARS} characters")
    body, sep, mac_text = token.partition(".")
    if not sep or not body or not mac_text or "." in mac_text:
        raise Unauthenticated("token is malformed: expected CLAIMS.SIGNATURE in base64url")
    try:
        mac = _b64decode(mac_text)
        raw = _b64decode(body)
    except (ValueError, binascii.Error):
        raise Unauthenticated("token is malformed: not base64url") from None
    if not hmac.compare_digest(mac, _mac(secret, body)):
        raise Unauthenticated(
            "token signature does not match: issued for another federation, or altered"
        )
    claims = _claims_from(raw)
    if claims.expires_at is not None and epoch(now) >= claims.expires_at:
        expired = datetime.fromtimestamp(claims.expires_at, UTC).isoformat()
        raise Unauthenticated(f"token expired at {expired}; ask for a new one")
    return claims


def _claims_from(raw: bytes) -> Claims:
    # The MAC held, so this came from someone with the secret; still, trust only the shape.
    try:
        doc = json.loads(raw)
    except ValueError:
        raise Unauthenticated("token is malformed: its claims are not JSON") from None
    if not isinstance(doc, dict) or doc.get("v") != TOKEN_VERSION:
        raise Unauthenticated("token is malformed: unknown token version")
    role, sub = doc.get("role"), doc.get("sub", "")
    region, asset = doc.get("region"), doc.get("asset")
    iat, exp = doc.get("iat", 0), doc.get("exp")
    if (
        role not in ROLES
        or not isinstance(sub, str)
        or not (region is None or isinstance(region, str))
        or not (asset is None or isinstance(asset, str))
        or not _is_int(iat)
        or not (exp is None or _is_int(exp))
    ):
        raise Unauthenticated("token is malformed: its claims are not Sundesk claims")
    return Claims(role, sub, region, asset, iat, exp)


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


__all__ = [
    "ISSUABLE_ROLES",
    "ROLES",
    "Claims",
    "check_secret",
    "epoch",
    "issue_token",
    "verify_token",
]
