"""The store signs what it originates and applies nothing of a remote op that fails checks."""

from __future__ import annotations

import asyncio
import dataclasses
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from federation.op_admission import SignedOnly
from federation.operations import TICKET_CREATE
from federation.signing import Signer, Verifier
from node import rules
from node.clock import FakeClock
from node.errors import NotFound
from node.rules import NewTicket
from node.sqlite_store import SqliteTicketStore
from node.tickets import TicketView

KEYS = {
    r: Ed25519PrivateKey.from_private_bytes(bytes([i + 7]) * 32)
    for i, r in enumerate(["velizy", "japan", "uk"])
}
VERIFIER = Verifier({r: k.public_key() for r, k in KEYS.items()})


def create(region: str) -> Any:
    def build(_: TicketView | None, now: datetime) -> tuple[str, dict[str, Any]]:
        return TICKET_CREATE, rules.create_fields(NewTicket(title="t"), region, now)

    return build


def store(path: Path, region: str, code: str) -> SqliteTicketStore:
    return SqliteTicketStore(
        path,
        region,
        code,
        FakeClock(),
        sign=Signer(region, KEYS[region]).sign,
        admit_remote=SignedOnly(VERIFIER),
    )


def test_local_writes_are_signed_and_verify_at_every_peer(tmp_path: Path) -> None:
    async def run() -> None:
        japan, velizy = (
            store(tmp_path / "j", "japan", "JPN"),
            store(tmp_path / "v", "velizy", "VEL"),
        )
        try:
            _, op = await japan.write(None, create("japan"))
            assert op is not None and len(op.signature) == 64
            logged = japan.read_ops({"japan": 0}, 10)
            assert [o.signature for o in logged] == [op.signature]  # stored with the op
            assert await velizy.apply_remote(logged) == logged
            assert velizy.get(op.ticket).code == op.ticket
        finally:
            await japan.close()
            await velizy.close()

    asyncio.run(run())


def test_a_forged_remote_op_leaves_no_trace(tmp_path: Path) -> None:
    async def run() -> None:
        japan, velizy = (
            store(tmp_path / "j", "japan", "JPN"),
            store(tmp_path / "v", "velizy", "VEL"),
        )
        try:
            _, op = await japan.write(None, create("japan"))
            assert op is not None
            forged = dataclasses.replace(op, signature=KEYS["uk"].sign(op.signed_payload()))
            before = velizy.digest()
            assert await velizy.apply_remote([forged]) == []
            assert velizy.version_vector().get("japan", 0) == 0
            assert velizy.read_ops({"japan": 0}, 10) == []
            assert velizy.digest() == before
            with pytest.raises(NotFound):
                velizy.get(op.ticket)
            # The genuine one is still welcome afterwards.
            assert await velizy.apply_remote([op]) == [op]
        finally:
            await japan.close()
            await velizy.close()

    asyncio.run(run())
