"""Which remote operations a node may apply: only those signed by their origin's key.

``admit`` is what the store calls on every batch from a peer, before anything of it is
written. An operation that fails verification is dropped (never applied, never logged
as ours), reported through ``on_rejected`` (a metric and a log line on the node), and
the rest of the batch goes on. Because a store applies each origin's operations strictly
in seq order, a dropped forgery also holds back that origin's later operations in the
same batch until the genuine one arrives from a peer that has it.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence

from federation.operations import Operation
from federation.signing import ForgedOperation, Verifier

log = logging.getLogger("sundesk.trust")

Rejected = Callable[[Operation, ForgedOperation], None]


class SignedOnly:
    """Keeps the operations whose signature holds for their origin region."""

    def __init__(self, verifier: Verifier, on_rejected: Rejected | None = None) -> None:
        self._verifier = verifier
        self._on_rejected = on_rejected
        self.rejected = 0

    def __call__(self, ops: Sequence[Operation]) -> list[Operation]:
        kept: list[Operation] = []
        for op in ops:
            try:
                self._verifier.verify(op)
            except ForgedOperation as exc:
                self.rejected += 1
                log.warning("rejected remote operation %s: %s", op.op_id, exc)
                if self._on_rejected is not None:
                    self._on_rejected(op, exc)
                continue
            kept.append(op)
        return kept


__all__ = ["SignedOnly"]
