"""The ticket store's role: durable tickets plus the operation log replication streams.

Every local write becomes an operation appended to the log and merged into the ticket in
one transaction; the call returns only once that transaction is durable. Remote operations
are applied idempotently, a batch per transaction.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol

from federation.operations import Operation
from node.tickets import Kind, State, TicketView

# A rule: given the ticket as it is now (None when creating) and the instant, return the
# operation kind and fields to write, or raise a domain error.
Build = Callable[[TicketView | None, datetime], tuple[str, dict[str, Any]]]


@dataclass(frozen=True)
class TicketFilter:
    states: tuple[State, ...] = ()
    queue: str = ""
    customer: str = ""
    kind: Kind | None = None
    tiered: bool = False  # only tickets under a contract tier (the ones with SLA clocks)


@dataclass(frozen=True)
class Page:
    tickets: tuple[TicketView, ...]
    next_token: str
    total: int


@dataclass(frozen=True)
class Change:
    """What a committed operation did, for watchers and metrics."""

    op: Operation
    ticket: TicketView | None  # None when nobody asked for views (no watchers)
    local: bool
    previous_state: State | None = None


class TicketStore(Protocol):
    region: str

    async def write(
        self,
        code: str | None,
        build: Build,
        trace_context: Mapping[str, str] | None = None,
        request_id: str = "",
    ) -> tuple[TicketView, Operation | None]:
        """Run ``build`` on the current ticket and durably record its operation.

        ``code`` None creates a ticket with a new code. Returns the ticket after the
        change and the operation (None when ``request_id`` matched an earlier create).
        """
        ...

    async def apply_remote(self, ops: Sequence[Operation]) -> list[Operation]:
        """Apply a batch from a peer in one transaction; returns the ops that were new."""
        ...

    def get(self, code: str) -> TicketView: ...

    def list_tickets(self, flt: TicketFilter, page_size: int, page_token: str) -> Page: ...

    def version_vector(self) -> dict[str, int]: ...

    def read_ops(self, after: Mapping[str, int], limit: int) -> list[Operation]:
        """For each origin named in ``after``, its operations past that seq, in order."""
        ...

    def digest(self) -> tuple[int, str]: ...

    async def close(self) -> None: ...


def every_ticket(
    store: TicketStore, flt: TicketFilter | None = None, page: int = 500
) -> Iterator[TicketView]:
    """Every ticket matching ``flt``, page by page (pages are consistent by creation)."""
    token = ""
    while True:
        found = store.list_tickets(flt or TicketFilter(), page, token)
        yield from found.tickets
        token = found.next_token
        if not token:
            return
