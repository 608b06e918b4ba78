"""Caller tokens and the access policy, without sockets."""

from __future__ import annotations

import base64
import copy
import hashlib
import hmac
import json
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from node.auth import Claims, authorize, is_open, is_read, issue_token, verify_token
from node.errors import InvalidArgument, PermissionDenied, Unauthenticated
from sundesk.v1 import desk_pb2, sun_pb2

SECRET = bytes(range(32))
NOW = datetime(2026, 3, 2, 6, 0, tzinfo=UTC)


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def signed(doc: dict[str, object], secret: bytes = SECRET) -> str:
    """A token made by hand, as someone holding the secret could."""
    body = b64(json.dumps(doc).encode())
    return f"{body}.{b64(hmac.new(secret, body.encode(), hashlib.sha256).digest())}"


# ----- tokens -----------------------------------------------------------------------------


def test_issue_then_verify_round_trips() -> None:
    token = issue_token(SECRET, "agent", subject="alice", region="velizy", ttl_seconds=60, now=NOW)
    assert "." in token and all(c.isalnum() or c in "-_." for c in token)
    claims = verify_token(SECRET, token, NOW)
    assert claims == Claims(
        "agent", "alice", "velizy", None, int(NOW.timestamp()), int(NOW.timestamp()) + 60
    )
    assert claims.caller == "agent:alice"


def test_machine_tokens_name_their_asset() -> None:
    token = issue_token(SECRET, "machine", asset="MRI-0042", now=NOW)
    claims = verify_token(SECRET, token, NOW + timedelta(days=3650))  # no ttl: no expiry
    assert (claims.role, claims.asset, claims.expires_at) == ("machine", "MRI-0042", None)
    assert claims.caller == "machine:MRI-0042"


def test_expired_tokens_are_refused_at_the_second() -> None:
    token = issue_token(SECRET, "ops", ttl_seconds=60, now=NOW)
    verify_token(SECRET, token, NOW + timedelta(seconds=59))
    with pytest.raises(Unauthenticated, match="token expired at 2026-03-02T06:01:00"):
        verify_token(SECRET, token, NOW + timedelta(seconds=60))


def test_another_federations_secret_is_a_bad_signature() -> None:
    token = issue_token(SECRET, "ops", now=NOW)
    with pytest.raises(Unauthenticated, match="signature does not match"):
        verify_token(bytes(32), token, NOW)


def test_claims_cannot_be_swapped_under_a_signature() -> None:
    ops = issue_token(SECRET, "ops", now=NOW)
    agent = issue_token(SECRET, "agent", subject="mallory", now=NOW)
    forged = agent.split(".")[0] + "." + ops.split(".")[1]
    with pytest.raises(Unauthenticated, match="signature does not match"):
        verify_token(SECRET, forged, NOW)


@settings(max_examples=200, deadline=None)
@given(data=st.data())
def test_any_single_character_change_is_refused(data: st.DataObject) -> None:
    token = issue_token(SECRET, "agent", subject="alice", ttl_seconds=600, now=NOW)
    i = data.draw(st.integers(0, len(token) - 1))
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_.=+/ "
    c = data.draw(st.sampled_from(alphabet).filter(lambda c: c != token[i]))
    tampered = token[:i] + c + token[i + 1 :]
    with pytest.raises(Unauthenticated):
        verify_token(SECRET, tampered, NOW)


def test_a_token_has_one_spelling() -> None:
    token = issue_token(SECRET, "ops", now=NOW)
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
    last = alphabet.index(token[-1])
    respelled = token[:-1] + alphabet[last ^ 1]  # only the spare bits of the MAC differ
    assert base64.urlsafe_b64decode(respelled.split(".")[1] + "=") == base64.urlsafe_b64decode(
        token.split(".")[1] + "="
    )
    with pytest.raises(Unauthenticated, match="not base64url"):
        verify_token(SECRET, respelled, NOW)


@pytest.mark.parametrize(
    ("token", "message"),
    [
        ("", "malformed"),
        ("nodot", "malformed"),
        ("a.b.c", "malformed"),
        ("abc.d$f", "not base64url"),
        ("x" * 5000 + ".y", "longer than"),
        (signed({"v": 1, "role": "agent", "iat": 0}, secret=bytes(32)), "signature"),
        (signed({"v": 2, "role": "agent", "iat": 0}), "unknown token version"),
        (signed({"v": 1, "role": "root", "iat": 0}), "not Sundesk claims"),
        (signed({"v": 1, "role": "agent", "iat": "yesterday"}), "not Sundesk claims"),
        (signed({"v": 1, "role": "agent", "iat": 0, "exp": True}), "not Sundesk claims"),
        (
            b64(b"[1]") + "." + b64(hmac.new(SECRET, b64(b"[1]").encode(), "sha256").digest()),
            "unknown token version",
        ),
    ],
)
def test_malformed_tokens_say_so(token: str, message: str) -> None:
    with pytest.raises(Unauthenticated, match=message):
        verify_token(SECRET, token, NOW)


@pytest.mark.parametrize(
    ("role", "kwargs", "message"),
    [
        ("node", {}, "reserved for federation peers"),
        ("root", {}, "unknown role 'root'"),
        ("machine", {}, "needs --asset"),
        ("agent", {"asset": "MRI-1", "subject": "a"}, "for machine tokens only"),
        ("agent", {}, "needs --subject"),
        ("oncall", {"subject": "  "}, "needs --subject"),
        ("ops", {"ttl_seconds": 0}, "must be positive"),
    ],
)
def test_tokens_that_cannot_be_issued(role: str, kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(InvalidArgument, match=message):
        issue_token(SECRET, role, now=NOW, **kwargs)  # type: ignore[arg-type]


def test_short_secrets_and_naive_times_are_refused() -> None:
    with pytest.raises(InvalidArgument, match="at least 32"):
        issue_token(b"short", "ops", now=NOW)
    with pytest.raises(InvalidArgument, match="timezone-aware"):
        issue_token(SECRET, "ops", now=datetime(2026, 1, 1))


# ----- policy -----------------------------------------------------------------------------

AGENT = Claims("agent", "alice")
ONCALL = Claims("oncall", "bob")
OPS = Claims("ops", "carol")
MACHINE = Claims("machine", asset="MRI-0042")
NODE = Claims("node", "uk")
EVERYONE = {"agent": AGENT, "oncall": ONCALL, "ops": OPS, "machine": MACHINE, "node": NODE}

HEARTBEAT = "/sundesk.v1.Telemetry/Heartbeat"
OWN = desk_pb2.CreateTicketRequest(asset="MRI-0042")  # any message with an asset field
OTHER = desk_pb2.CreateTicketRequest(asset="MRI-0099")

# method, request, roles allowed
TABLE: list[tuple[str, object | None, set[str]]] = [
    ("/sundesk.v1.Desk/GetTicket", None, {"agent", "oncall", "ops"}),
    ("/sundesk.v1.Desk/ListTickets", None, {"agent", "oncall", "ops"}),
    ("/sundesk.v1.Desk/WatchTickets", None, {"agent", "oncall", "ops"}),
    ("/sundesk.v1.Ops/Status", None, {"agent", "oncall", "ops"}),
    ("/sundesk.v1.Sun/GetPlan", None, {"agent", "oncall", "ops"}),
    ("/sundesk.v1.Desk/CreateTicket", desk_pb2.CreateTicketRequest(), {"agent"}),
    ("/sundesk.v1.Desk/UpdateTicket", desk_pb2.UpdateTicketRequest(), {"agent"}),
    ("/sundesk.v1.Desk/AddComment", desk_pb2.AddCommentRequest(), {"agent"}),
    ("/sundesk.v1.Desk/CreateTicket", None, set()),  # a write is checked against its actor
    ("/sundesk.v1.Sun/AckHandoff", sun_pb2.AckHandoffRequest(), {"agent", "oncall"}),
    ("/sundesk.v1.Sun/SetNote", sun_pb2.SetNoteRequest(), {"agent"}),
    ("/sundesk.v1.Sun/EscalateTicket", sun_pb2.EscalateTicketRequest(), {"agent"}),
    ("/sundesk.v1.Contracts/RegisterCustomer", None, {"agent"}),
    ("/sundesk.v1.Contracts/RegisterAsset", None, {"agent"}),
    ("/sundesk.v1.Contracts/ListCustomers", None, {"agent", "oncall", "ops"}),
    ("/sundesk.v1.Contracts/Stats", None, {"agent", "oncall", "ops"}),
    ("/sundesk.v1.Ops/Restart", None, set()),
    ("/sundesk.v1.Federation/Pull", None, set()),
    ("/sundesk.v1.Federation/Status", None, {"ops"}),
    (HEARTBEAT, OWN, {"machine"}),
    (HEARTBEAT, OTHER, set()),
    (HEARTBEAT, None, set()),
    ("/sundesk.v1.Telemetry/GetAlarms", OWN, {"machine"}),
]


@pytest.mark.parametrize(("method", "request_", "allowed"), TABLE)
@pytest.mark.parametrize("role", sorted(EVERYONE))
def test_policy_table(method: str, request_: object | None, allowed: set[str], role: str) -> None:
    request_ = copy.deepcopy(request_)  # authorize stamps the actor into the request
    if role in allowed:
        authorize(EVERYONE[role], method, request_)
    else:
        with pytest.raises(PermissionDenied):
            authorize(EVERYONE[role], method, request_)


@pytest.mark.parametrize(
    ("claims", "method", "request_", "message"),
    [
        (
            OPS,
            "/sundesk.v1.Desk/CreateTicket",
            None,
            "role ops may not call sundesk.v1.Desk/CreateTicket: ops is read-only",
        ),
        (ONCALL, "/sundesk.v1.Desk/UpdateTicket", None, "changes are made by agents"),
        (MACHINE, "/sundesk.v1.Desk/GetTicket", None, "only sends telemetry"),
        (AGENT, "/sundesk.v1.Federation/Status", None, "for regional nodes only"),
        (NODE, "/sundesk.v1.Desk/GetTicket", None, "present a node certificate, not a token"),
        (AGENT, HEARTBEAT, OWN, "telemetry is sent by machines only"),
        (MACHINE, HEARTBEAT, OTHER, "may not send telemetry for asset 'MRI-0099'"),
        (MACHINE, HEARTBEAT, desk_pb2.GetTicketRequest(code="x"), "has none"),
        (OPS, "/sundesk.v1.Sun/AckHandoff", None, "acknowledged by on-call"),
        (AGENT, "Desk.CreateTicket", None, "not a gRPC method path"),
    ],
)
def test_refusals_explain_themselves(
    claims: Claims, method: str, request_: object | None, message: str
) -> None:
    with pytest.raises(PermissionDenied, match=message.replace(".", r"\.").replace("(", r"\(")):
        authorize(claims, method, request_)


def test_open_and_read_methods() -> None:
    assert is_open("/grpc.health.v1.Health/Check")
    assert is_open("/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo")
    assert not is_open("/sundesk.v1.Desk/GetTicket")
    assert is_read("/sundesk.v1.Desk/ListTickets")
    assert not is_read("/sundesk.v1.Desk/CreateTicket")
    assert not is_read("/sundesk.v1.Federation/Status")  # peers only, never a token read
