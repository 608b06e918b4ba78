"""The store's committer thread, kept out of the compiled modules (``make native``).

It is called once per commit group, so compiling it gains nothing, and tests replace its
``commit`` to hold or fail a group: a compiled (native) class does not allow that.
"""

from __future__ import annotations

import asyncio
import queue
import sqlite3
import threading
from collections.abc import Callable
from typing import Any

from federation.operations import Operation

_STOP = object()


class Committer:
    """The thread that signs a group's local operations and runs COMMIT, so the loop keeps
    serving while the disk syncs. Ed25519 releases the GIL: on a second core the
    signatures cost the loop nothing (they were 6% of a CreateTicket on it)."""

    def __init__(self, conn: sqlite3.Connection, name: str) -> None:
        self._conn = conn
        self._requests: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def commit(
        self,
        loop: asyncio.AbstractEventLoop,
        done: Callable[[Exception | None], None],
        unsigned: list[Operation],
        sign: Callable[[Operation], Operation] | None,
    ) -> None:
        """Sign ``unsigned`` (in place: nobody sees them before ``done``) and their rows, and
        COMMIT; then ``done(None)``, or ``done(error)``, on ``loop``."""
        self._requests.put((loop, done, unsigned, sign))

    def _run(self) -> None:
        while True:
            request = self._requests.get()
            if request is _STOP:
                return
            loop, done, unsigned, sign = request
            error: Exception | None = None
            try:
                if unsigned and sign is not None:
                    for op in unsigned:
                        # The group's results and changes hold these very objects.
                        object.__setattr__(op, "signature", sign(op).signature)
                    self._conn.executemany(
                        "UPDATE ops SET signature=? WHERE origin=? AND seq=?",
                        [(op.signature, op.origin, op.seq) for op in unsigned],
                    )
                self._conn.execute("COMMIT")
            except Exception as exc:  # sqlite, or a key that cannot sign: nothing commits
                error = exc
            loop.call_soon_threadsafe(done, error)

    def stop(self) -> None:
        self._requests.put(_STOP)
        self._thread.join()
