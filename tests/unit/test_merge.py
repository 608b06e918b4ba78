"""Merge is deterministic: any permutation and duplication of operations gives one state."""

from __future__ import annotations

import random
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from federation.merge import ReplicatedTicket, apply_in_place, merge_all, merged, node_digest
from federation.operations import TICKET_COMMENT, TICKET_CREATE, TICKET_UPDATE, Operation

REGIONS = ["velizy", "germany", "uk", "us", "japan"]


def create(origin: str = "velizy", seq: int = 1, hlc: int = 100) -> Operation:
    return Operation(
        origin,
        seq,
        hlc,
        "VEL-000001",
        TICKET_CREATE,
        {"created": True, "title": "t", "state": "new", "priority": 3},
    )


@st.composite
def histories(draw: st.DrawFn) -> list[Operation]:
    """Operations from several origins: contiguous seqs per origin, arbitrary HLCs."""
    ops = [create()]
    seqs = {r: 0 for r in REGIONS}
    seqs["velizy"] = 1
    for _ in range(draw(st.integers(0, 25))):
        origin = draw(st.sampled_from(REGIONS))
        seqs[origin] += 1
        hlc = draw(st.integers(1, 50)) << 16
        code = draw(st.sampled_from(["VEL-000001", "JPN-000001"]))
        fields: dict[str, Any]
        if draw(st.booleans()):
            fields = {
                draw(st.sampled_from(["priority", "assignee", "state"])): draw(st.integers(1, 4))
            }
            kind = TICKET_UPDATE
            if draw(st.booleans()):
                fields["transition"] = {"from": "new", "to": "assigned", "by": origin}
        else:
            fields = {"comment": {"author": origin, "text": str(hlc)}}
            kind = TICKET_COMMENT
        ops.append(Operation(origin, seqs[origin], hlc, code, kind, fields))
    return ops


def state_of(ops: list[Operation]) -> dict[str, bytes]:
    return {code: t.encode() for code, t in merge_all(ops).items()}


@settings(max_examples=300, deadline=None)
@given(histories(), st.randoms(use_true_random=False))
def test_any_permutation_and_duplication_merges_to_the_same_state(
    ops: list[Operation], rnd: random.Random
) -> None:
    expected = state_of(ops)
    shuffled = ops + [rnd.choice(ops) for _ in range(len(ops) // 2)]
    rnd.shuffle(shuffled)
    assert state_of(shuffled) == expected


def test_last_writer_wins_by_hlc_then_origin() -> None:
    t = merged(None, create())
    a = Operation("uk", 1, 500, "VEL-000001", TICKET_UPDATE, {"priority": 1})
    b = Operation("japan", 1, 500, "VEL-000001", TICKET_UPDATE, {"priority": 2})
    c = Operation("us", 1, 400, "VEL-000001", TICKET_UPDATE, {"priority": 4})
    for order in ([a, b, c], [c, b, a], [b, c, a]):
        t2 = ReplicatedTicket.from_json(t.to_json())
        for op in order:
            apply_in_place(t2, op)
        # Same HLC: the origin breaks the tie ("uk" > "japan"); the older "us" loses.
        assert t2.values["priority"] == 1
        assert t2.version == 4


def test_concurrent_comments_both_survive() -> None:
    t = merged(None, create())
    c1 = Operation("uk", 1, 500, "VEL-000001", TICKET_COMMENT, {"comment": {"text": "a"}})
    c2 = Operation("japan", 1, 500, "VEL-000001", TICKET_COMMENT, {"comment": {"text": "b"}})
    t = merged(merged(t, c1), c2)
    assert [c["text"] for c in t.sorted_comments()] == ["b", "a"]


def test_duplicates_do_nothing() -> None:
    t = merged(None, create())
    assert not apply_in_place(t, create())
    assert t.version == 1


def test_first_response_keeps_the_earliest() -> None:
    t = merged(None, create())
    late = Operation(
        "uk", 1, 900, "VEL-000001", TICKET_UPDATE, {"first_response_at": "2026-01-01T10:00:00.000Z"}
    )
    early = Operation(
        "us", 1, 800, "VEL-000001", TICKET_UPDATE, {"first_response_at": "2026-01-01T09:00:00.000Z"}
    )
    assert merged(merged(t, late), early).values["first_response_at"].startswith("2026-01-01T09")
    assert merged(merged(t, early), late).values["first_response_at"].startswith("2026-01-01T09")


def test_update_before_create_converges() -> None:
    upd = Operation("japan", 1, 900, "VEL-000001", TICKET_UPDATE, {"priority": 1})
    one = merged(merged(None, upd), create())
    two = merged(merged(None, create()), upd)
    assert one.encode() == two.encode() and one.created and one.values["priority"] == 1


def test_node_digest_ignores_order() -> None:
    assert node_digest([("a", "1"), ("b", "2")]) == node_digest([("b", "2"), ("a", "1")])
    assert node_digest([("a", "1")]) != node_digest([("a", "2")])
