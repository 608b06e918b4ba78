"""Operations signed by their origin: forgeries, tampering and honest relays."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import given, settings
from hypothesis import strategies as st

from federation.operations import TICKET_UPDATE, Operation
from federation.signing import ForgedOperation, Signer, Verifier, load_signer, load_verifier
from federation.wire import op_from_pb, op_to_pb
from node.errors import InvalidArgument, PermissionDenied
from ops.certs import init_certs

REGIONS = ("velizy", "uk", "japan")
KEYS = {r: Ed25519PrivateKey.generate() for r in REGIONS}
SIGNERS = {r: Signer(r, k) for r, k in KEYS.items()}
VERIFIER = Verifier({r: k.public_key() for r, k in KEYS.items()})


def op(origin: str = "japan", seq: int = 7, **fields: object) -> Operation:
    return Operation(
        origin=origin,
        seq=seq,
        hlc=(1_767_600_000_000 << 16) | 3,
        ticket="JPN-000042",
        kind=TICKET_UPDATE,
        fields=fields or {"state": "resolved", "cause": "fan", "note": "réparé ✓"},
        trace_context={"traceparent": "00-" + "a" * 32 + "-" + "b" * 16 + "-01"},
    )


def test_a_genuine_operation_is_accepted() -> None:
    signed = SIGNERS["japan"].sign(op())
    assert len(signed.signature) == 64
    VERIFIER.verify(signed)


def test_relayed_unchanged_through_a_third_region_is_accepted() -> None:
    signed = SIGNERS["japan"].sign(op())
    relayed = op_from_pb(op_to_pb(signed))  # through the UK, on the wire, and back
    relayed = dataclasses.replace(relayed, trace_context={"traceparent": "relay's own"})
    VERIFIER.verify(relayed)  # the trace context is not signed: relays may add spans


def test_origin_japan_signed_with_the_uk_key_is_forged() -> None:
    forged = dataclasses.replace(op(), signature=KEYS["uk"].sign(op().signed_payload()))
    with pytest.raises(ForgedOperation, match="not signed by japan's key"):
        VERIFIER.verify(forged)


def test_a_region_signs_only_its_own_operations() -> None:
    with pytest.raises(InvalidArgument, match="only japan signs"):
        SIGNERS["uk"].sign(op(origin="japan"))


def test_unsigned_and_unknown_origins_are_forged() -> None:
    with pytest.raises(ForgedOperation, match="not signed"):
        VERIFIER.verify(op())
    stranger = Signer("mars", Ed25519PrivateKey.generate()).sign(op(origin="mars"))
    with pytest.raises(ForgedOperation, match="no known signing key"):
        VERIFIER.verify(stranger)
    truncated = dataclasses.replace(SIGNERS["japan"].sign(op()), signature=b"\x01" * 10)
    with pytest.raises(ForgedOperation, match="10-byte signature"):
        VERIFIER.verify(truncated)


def test_forged_operation_is_a_permission_denial() -> None:
    assert issubclass(ForgedOperation, PermissionDenied)


@pytest.mark.parametrize(
    "change",
    [
        {"seq": 8},
        {"hlc": 1},
        {"ticket": "JPN-000043"},
        {"kind": "ticket.comment"},
        {"origin": "uk"},
        {"fields": {"state": "closed", "cause": "fan", "note": "réparé ✓"}},
        {"fields": {"state": "resolved", "cause": "fan"}},
        {"fields": {"state": "resolved", "cause": "fan", "note": "réparé ✓", "x": 1}},
    ],
)
def test_tampered_fields_are_rejected(change: dict[str, object]) -> None:
    signed = SIGNERS["japan"].sign(op())
    with pytest.raises(ForgedOperation):
        VERIFIER.verify(dataclasses.replace(signed, **change))  # type: ignore[arg-type]


@settings(max_examples=150, deadline=None)
@given(data=st.data())
def test_any_single_byte_change_to_fields_is_rejected(data: st.DataObject) -> None:
    signed = SIGNERS["japan"].sign(op())
    wire = bytearray(op_to_pb(signed).fields)
    i = data.draw(st.integers(0, len(wire) - 1), label="position")
    new = data.draw(st.integers(0, 255).filter(lambda b: b != wire[i]), label="byte")
    wire[i] = new
    try:
        fields = json.loads(bytes(wire))
    except ValueError:
        return  # not JSON any more: refused before signatures are even checked
    if not isinstance(fields, dict):
        return
    tampered = dataclasses.replace(signed, fields=fields)
    if tampered.signed_payload() == signed.signed_payload():
        return  # the same operation spelled differently is not a change
    with pytest.raises(ForgedOperation):
        VERIFIER.verify(tampered)


@settings(max_examples=150, deadline=None)
@given(seq=st.integers(1, 2**63 - 1), hlc=st.integers(0, 2**63 - 1))
def test_any_change_of_seq_or_hlc_is_rejected(seq: int, hlc: int) -> None:
    signed = SIGNERS["japan"].sign(op())
    if seq != signed.seq:
        with pytest.raises(ForgedOperation):
            VERIFIER.verify(dataclasses.replace(signed, seq=seq))
    if hlc != signed.hlc:
        with pytest.raises(ForgedOperation):
            VERIFIER.verify(dataclasses.replace(signed, hlc=hlc))


@settings(max_examples=100, deadline=None)
@given(data=st.data())
def test_any_single_byte_change_to_the_signature_is_rejected(data: st.DataObject) -> None:
    signed = SIGNERS["japan"].sign(op())
    sig = bytearray(signed.signature)
    i = data.draw(st.integers(0, len(sig) - 1))
    sig[i] ^= data.draw(st.integers(1, 255))
    with pytest.raises(ForgedOperation):
        VERIFIER.verify(dataclasses.replace(signed, signature=bytes(sig)))


def test_keys_load_from_a_certs_directory(tmp_path: Path) -> None:
    paths = init_certs(tmp_path / "certs", ["velizy", "japan"])
    verifier = load_verifier(paths.dir)
    assert verifier.regions == {"velizy", "japan"}
    signed = load_signer(paths.dir, "japan").sign(op())
    verifier.verify(signed)
    wrong = dataclasses.replace(
        load_signer(paths.dir, "velizy").sign(op(origin="velizy")), origin="japan"
    )
    with pytest.raises(ForgedOperation):
        verifier.verify(wrong)
