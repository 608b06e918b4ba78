"""Last heartbeat per asset, known federation-wide at a coarse grain.

A heartbeat is never a ticket operation: at 5,000 assets every 10 s that would be 500
replicated operations a second on one node. Each node keeps the exact last-seen instant
of the heartbeats *it* received in memory, and every ``flush_seconds`` writes one record
operation holding the assets whose last-seen moved by at least ``refresh_fraction`` of
their interval since this node last replicated them. The saving is the batching: one
operation per flush, not one per heartbeat. The queue owner, wherever the machine
reports, knows of a heartbeat at most ``slack`` (one interval) plus one flush late, and
waits that slack on top of the silence window before judging (``is_silent``).

Records are keyed by hour slot and region (``HB-<slot>-<region>``): each has one writer
(no conflicts), and a record's list of applied operations stays bounded by one hour of
flushes. A book reads the slots that cover the silence window once, then keeps the latest
last-seen per asset in memory from each heartbeat operation the store commits (local or
replicated): the owner's scan every few seconds must not re-read and re-parse records of
thousands of assets (40 ms at 5,000, on the loop that serves calls).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import datetime, timedelta
from typing import Any, Protocol

from federation.merge import ReplicatedTicket
from node.store import Change
from node.tickets import iso, parse_iso

RECORD_PREFIX = "HB-"
HEARTBEAT_RECORD = "telemetry.seen"
SLOT = timedelta(hours=1)

RecordBuild = Callable[[ReplicatedTicket | None, datetime], Any]


class RecordStore(Protocol):
    """What the book needs of the node's store."""

    def get_record(self, key: str) -> ReplicatedTicket | None: ...

    async def write_record(self, key: str, build: RecordBuild) -> ReplicatedTicket | None: ...

    def add_listener(self, listener: Callable[[list[Change]], None]) -> None: ...


def slot_of(instant: datetime) -> int:
    return int(instant.timestamp() // SLOT.total_seconds())


def record_key(slot: int, region: str) -> str:
    return f"{RECORD_PREFIX}{slot:08d}-{region}"


class HeartbeatBook:
    def __init__(
        self,
        store: RecordStore,
        region: str,
        regions: Iterable[str],
        refresh_fraction: float = 1.0,
    ) -> None:
        self._store = store
        self._region = region
        self._regions = tuple(regions)
        self._refresh = refresh_fraction
        self._local: dict[str, datetime] = {}
        self._sent: dict[str, datetime] = {}  # what this node last replicated, per asset
        self._sent_slot = -1
        self._due: dict[str, str] = {}  # asset -> last-seen text waiting for the next flush
        # Latest replicated last-seen per asset, from every region, as ISO text (in UTC it
        # sorts as instants: compare without parsing) and parsed; None until the first
        # reader loads the recent slots.
        self._heard: dict[str, str] | None = None
        self._heard_at: dict[str, datetime] = {}
        store.add_listener(self._observe)

    def _observe(self, changes: Sequence[Change]) -> None:
        if self._heard is None:
            return  # nobody has read yet: the first reader loads the records themselves
        for change in changes:
            op = change.op
            if op.kind == HEARTBEAT_RECORD and op.ticket.startswith(RECORD_PREFIX):
                self._merge(op.fields)

    def _merge(self, values: Mapping[str, Any]) -> None:
        heard = self._heard
        assert heard is not None
        for asset, text in values.items():
            if asset != "queue" and isinstance(text, str) and text > heard.get(asset, ""):
                heard[asset] = text
                self._heard_at[asset] = parse_iso(text)

    def record(self, asset: str, interval_seconds: int, at: datetime) -> None:
        """A heartbeat received here (cheap: memory only)."""
        self._local[asset] = at
        slot = slot_of(at)
        if slot != self._sent_slot:
            # A new slot's record must list every asset again: readers of that slot
            # alone would otherwise think them silent.
            self._sent_slot = slot
            self._sent.clear()
        sent = self._sent.get(asset)
        if sent is None or (at - sent).total_seconds() >= interval_seconds * self._refresh:
            self._due[asset] = iso(at)
            self._sent[asset] = at

    def slack(self, interval_seconds: int) -> timedelta:
        """How much older than the true last heartbeat a replicated last-seen may be."""
        return timedelta(seconds=interval_seconds * self._refresh)

    @property
    def pending(self) -> int:
        return len(self._due)

    async def flush(self) -> int:
        """Replicate what is due in one operation; returns how many assets it named."""
        if not self._due:
            return 0
        due, self._due = self._due, {}
        slot = slot_of(parse_iso(max(due.values())))  # UTC ISO texts sort as instants

        def build(current: ReplicatedTicket | None, now: datetime) -> Any:
            return HEARTBEAT_RECORD, {"queue": self._region, **due}

        try:
            await self._store.write_record(record_key(slot, self._region), build)
        except BaseException:
            # Not replicated: try again next flush rather than lose the news.
            self._due = {**due, **self._due}
            raise
        return len(due)

    def local(self, asset: str) -> datetime | None:
        return self._local.get(asset)

    def last_seen_all(self, now: datetime, window: timedelta) -> dict[str, datetime]:
        """The latest heartbeat per asset heard of anywhere: here exactly, elsewhere as
        replicated. The first call reads the records of the slots covering ``window``
        before now; later calls cost no store read."""
        if self._heard is None:
            self._heard = {}
            first, last = slot_of(now - window - SLOT), slot_of(now)
            for slot in range(first, last + 1):
                for region in self._regions:
                    rec = self._store.get_record(record_key(slot, region))
                    if rec is not None:
                        self._merge(rec.values)
        seen = dict(self._heard_at)
        for asset, at in self._local.items():
            if asset not in seen or at > seen[asset]:
                seen[asset] = at
        return seen
