"""Operations signed by their origin region, so a relay cannot forge or alter them.

Each region holds one Ed25519 private key and signs every operation it originates, over
``Operation.signed_payload()`` (everything but the signature and the trace context).
Every node holds every region's public key and checks an operation against its ORIGIN's
key, whoever relayed it: Japan accepts Vélizy's changes through the UK only because
Vélizy's signature still holds, and the UK cannot pass off an operation of its own as
Japan's. Mutual TLS says who is on the other end of a link; the signature says who
wrote the change.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)

from federation.operations import Operation
from node.errors import InvalidArgument, PermissionDenied
from ops.certs import CertPaths, load_signing_key, load_signing_public_keys

SIGNATURE_BYTES = 64


class ForgedOperation(PermissionDenied):
    """An operation whose signature does not prove it was written by its origin."""


class Signer:
    """Signs the operations this region originates, and only those."""

    def __init__(self, region: str, private_key: Ed25519PrivateKey) -> None:
        self.region = region
        self._key = private_key

    @property
    def public_key(self) -> Ed25519PublicKey:
        return self._key.public_key()

    def sign(self, op: Operation) -> Operation:
        if op.origin != self.region:
            raise InvalidArgument(
                f"region {self.region} cannot sign operation {op.op_id}: "
                f"only {op.origin} signs what {op.origin} originates"
            )
        return dataclasses.replace(op, signature=self._key.sign(op.signed_payload()))


class Verifier:
    """Checks that an operation was signed by its origin region's key."""

    def __init__(self, public_keys: Mapping[str, Ed25519PublicKey]) -> None:
        self._keys = dict(public_keys)

    @property
    def regions(self) -> frozenset[str]:
        return frozenset(self._keys)

    def verify(self, op: Operation) -> None:
        key = self._keys.get(op.origin)
        if key is None:
            raise ForgedOperation(
                f"operation {op.op_id} claims origin {op.origin!r}, a region with no known "
                f"signing key (known: {', '.join(sorted(self._keys)) or 'none'}); rejected"
            )
        if not op.signature:
            raise ForgedOperation(f"operation {op.op_id} is not signed; rejected")
        if len(op.signature) != SIGNATURE_BYTES:
            raise ForgedOperation(
                f"operation {op.op_id} has a {len(op.signature)}-byte signature, "
                f"not an Ed25519 one; rejected"
            )
        try:
            key.verify(op.signature, op.signed_payload())
        except InvalidSignature:
            raise ForgedOperation(
                f"operation {op.op_id} is not signed by {op.origin}'s key "
                "(altered, or signed by another region); rejected"
            ) from None


def load_signer(dir: Path, region: str) -> Signer:
    return Signer(region, load_signing_key(CertPaths(Path(dir)).signing_key(region)))


def load_verifier(dir: Path) -> Verifier:
    return Verifier(load_signing_public_keys(Path(dir)))


__all__ = ["ForgedOperation", "Signer", "Verifier", "load_signer", "load_verifier"]
