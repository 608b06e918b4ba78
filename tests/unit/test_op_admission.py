"""Only operations signed by their origin's key are admitted; the rest are counted."""

from __future__ import annotations

import dataclasses

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from federation.op_admission import SignedOnly
from federation.operations import TICKET_CREATE, Operation
from federation.signing import ForgedOperation, Signer, Verifier

KEYS = {
    r: Ed25519PrivateKey.from_private_bytes(bytes([i + 1]) * 32)
    for i, r in enumerate(["uk", "japan"])
}
SIGNERS = {r: Signer(r, k) for r, k in KEYS.items()}
VERIFIER = Verifier({r: k.public_key() for r, k in KEYS.items()})


def op(origin: str, seq: int, title: str = "t") -> Operation:
    return Operation(origin, seq, seq << 16, f"JPN-{seq:06d}", TICKET_CREATE, {"title": title})


def test_genuine_operations_pass_in_order() -> None:
    ops = [SIGNERS["japan"].sign(op("japan", 1)), SIGNERS["uk"].sign(op("uk", 1))]
    assert SignedOnly(VERIFIER)(ops) == ops


def test_a_forgery_is_dropped_and_reported_the_rest_kept() -> None:
    forged = dataclasses.replace(
        op("japan", 2), signature=KEYS["uk"].sign(op("japan", 2).signed_payload())
    )
    altered = dataclasses.replace(SIGNERS["japan"].sign(op("japan", 3)), fields={"title": "x"})
    unsigned = op("japan", 4)
    unknown = dataclasses.replace(op("mars", 1), signature=b"\0" * 64)
    good = SIGNERS["uk"].sign(op("uk", 2))
    seen: list[tuple[str, str]] = []
    admit = SignedOnly(VERIFIER, on_rejected=lambda o, e: seen.append((o.op_id, type(e).__name__)))
    assert admit([forged, altered, good, unsigned, unknown]) == [good]
    assert admit.rejected == 4
    assert seen == [
        ("japan:2", ForgedOperation.__name__),
        ("japan:3", ForgedOperation.__name__),
        ("japan:4", ForgedOperation.__name__),
        ("mars:1", ForgedOperation.__name__),
    ]


def test_the_trace_context_is_not_signed_so_relays_may_add_to_it() -> None:
    signed = SIGNERS["japan"].sign(op("japan", 1))
    relayed = dataclasses.replace(signed, trace_context={"traceparent": "00-ab-cd-01"})
    assert SignedOnly(VERIFIER)([relayed]) == [relayed]
