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
flushes. A reader looks at the slots that cover the silence window it cares about.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from datetime import datetime, timedelta
from typing import Any, Protocol

from federation.merge import ReplicatedTicket
from node.tickets import iso, parse_iso

RECORD_PREFIX = "HB-"
HEARTBEAT_RECORD = "telemetry.seen"
SLOT = timedelta(hours=1)

RecordBuild = Callable[[ReplicatedTicket | None, datetime], Any]


class RecordStore(Protocol):
    """What the book needs of the node's store."""

    def get_record(self, key: str) -> ReplicatedTicket | None: ...

    async def write_record(self, key: str, build: RecordBuild) -> ReplicatedTicket | None: ...


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
        slot = slot_of(max(map(parse_iso, due.values())))

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
        """The latest heartbeat per asset heard of anywhere within ``window`` before now."""
        # ISO texts in UTC sort as instants: compare them and parse only the winners.
        seen: dict[str, str] = {asset: iso(at) for asset, at in self._local.items()}
        first, last = slot_of(now - window - SLOT), slot_of(now)
        for slot in range(first, last + 1):
            for region in self._regions:
                rec = self._store.get_record(record_key(slot, region))
                if rec is None:
                    continue
                for asset, text in rec.values.items():
                    if asset == "queue":
                        continue
                    if text > seen.get(asset, ""):
                        seen[asset] = text
        return {asset: parse_iso(text) for asset, text in seen.items()}
