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
from federation.operations import TICKET_CREATE, Operation
from federation.signing import Signer, Verifier
from node import rules
from node.clock import FakeClock
from node.errors import InvalidArgument, NotFound, StorageError
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


def test_a_group_with_a_refused_write_signs_each_logged_op_for_itself(tmp_path: Path) -> None:
    # The committer signs a whole group at once; a refused job in the middle gives its
    # sequence number to the next job, which must not inherit the refused op's signature.
    def refused(_: TicketView | None, now: datetime) -> tuple[str, dict[str, Any]]:
        raise InvalidArgument("title is empty; give a short title")

    def unwritable(current: TicketView | None, now: datetime) -> tuple[str, dict[str, Any]]:
        kind, fields = create("velizy")(current, now)
        return kind, {**fields, "title": object()}  # fails in the log insert, after the op

    async def run() -> None:
        velizy = store(tmp_path, "velizy", "VEL")
        try:
            ok = create("velizy")
            builds = [ok, refused, ok, unwritable, ok]
            outcomes = await asyncio.gather(
                *(velizy.write(None, b) for b in builds), return_exceptions=True
            )
            failed = [type(o) for o in outcomes if isinstance(o, Exception)]
            assert failed == [InvalidArgument, StorageError]
            logged = velizy.read_ops({"velizy": 0}, 10)
            assert [o.seq for o in logged] == [1, 2, 3]
            for o in logged:
                VERIFIER.verify(o)  # raises ForgedOperation if it is another op's signature
            returned = [o[1] for o in outcomes if isinstance(o, tuple)]
            assert [o.signature if o else None for o in returned] == [o.signature for o in logged]
        finally:
            await velizy.close()

    asyncio.run(run())


def test_a_key_that_cannot_sign_fails_the_group_and_commits_nothing(tmp_path: Path) -> None:
    broken = {"on": True}
    signer = Signer("velizy", KEYS["velizy"])

    def sign(op: Operation) -> Operation:
        if broken["on"]:
            raise RuntimeError("signing key unavailable")
        return signer.sign(op)

    async def run() -> None:
        velizy = SqliteTicketStore(tmp_path, "velizy", "VEL", FakeClock(), sign=sign)
        try:
            outcomes = await asyncio.gather(
                *(velizy.write(None, create("velizy")) for _ in range(3)), return_exceptions=True
            )
            assert all(isinstance(o, StorageError) for o in outcomes)
            assert velizy.read_ops({"velizy": 0}, 10) == [] and velizy.version_vector() == {}
            broken["on"] = False
            view, op = await velizy.write(None, create("velizy"))
            assert view.code == "VEL-000001" and op is not None
            VERIFIER.verify(op)
        finally:
            await velizy.close()

    asyncio.run(run())
