"""Hybrid logical clock (Kulkarni et al., 2014) stamping replicated operations.

A timestamp is one int64: ``(wall_ms << 16) | logical``. Comparing the integers compares
``(wall, logical)``, so the stamp sorts like the pair and fits an SQLite INTEGER and a
protobuf ``int64`` as is.

The wall part tracks the injected ``Clock``; the logical part orders events that share a
millisecond, or that happen while the local clock lags a peer's. A peer whose clock runs
more than ``max_skew`` ahead of ours is not followed: one bad clock would otherwise drag
every region's stamps into the future, and LWW would then favour that region's writes
until real time caught up.

Not thread-safe: a ``HybridClock`` belongs to one asyncio loop, and every method runs to
completion without awaiting.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from datetime import UTC, datetime, timedelta

from node.clock import Clock

LOGICAL_BITS = 16
LOGICAL_MAX = (1 << LOGICAL_BITS) - 1
WALL_MAX = (1 << (63 - LOGICAL_BITS)) - 1
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MS = timedelta(milliseconds=1)

log = logging.getLogger("sundesk.hlc")


def pack(wall_ms: int, logical: int) -> int:
    if not 0 <= wall_ms <= WALL_MAX:
        raise ValueError(f"HLC wall time {wall_ms} ms is outside 0..{WALL_MAX}")
    if not 0 <= logical <= LOGICAL_MAX:
        raise ValueError(f"HLC logical counter {logical} is outside 0..{LOGICAL_MAX}")
    return (wall_ms << LOGICAL_BITS) | logical


def unpack(ts: int) -> tuple[int, int]:
    if not 0 <= ts <= pack(WALL_MAX, LOGICAL_MAX):
        raise ValueError(f"HLC timestamp {ts} is not a non-negative int64")
    return ts >> LOGICAL_BITS, ts & LOGICAL_MAX


def to_datetime(ts: int) -> datetime:
    """The wall part of ``ts`` as a UTC instant (the logical part is dropped)."""
    wall_ms, _ = unpack(ts)
    return _EPOCH + wall_ms * _MS


def _normalized(wall_ms: int, logical: int) -> int:
    # A full logical counter borrows the next millisecond: the stamp stays unique and
    # increasing, at the price of running up to that millisecond ahead of real time.
    if logical > LOGICAL_MAX:
        return pack(wall_ms + 1, 0)
    return pack(wall_ms, logical)


class HybridClock:
    def __init__(
        self,
        clock: Clock,
        max_skew_seconds: float = 60.0,
        on_skew: Callable[[int, int], None] | None = None,
        *,
        start: int = 0,
    ) -> None:
        """``start`` is the highest stamp issued before a restart (read from the operation
        log), so a clock that went back while the node was down cannot reorder an origin's
        own operations."""
        if max_skew_seconds < 0:
            raise ValueError("max_skew_seconds must not be negative")
        unpack(start)
        self._clock = clock
        self._max_skew_ms = round(max_skew_seconds * 1000)
        self._on_skew = on_skew
        self._last = start
        self.skew_rejections = 0

    @property
    def last(self) -> int:
        return self._last

    def now(self) -> int:
        """Stamp a local or send event: greater than every stamp returned or observed."""
        physical = self._physical_ms()
        wall, logical = unpack(self._last)
        if physical > wall:
            self._last = pack(physical, 0)
        else:
            self._last = _normalized(wall, logical + 1)
        return self._last

    def observe(self, remote: int) -> int:
        """Merge a received stamp and return the new local stamp.

        A remote stamp too far ahead of local physical time is reported and ignored: the
        local clock does not move and its current value is returned unchanged.
        """
        remote_wall, remote_logical = unpack(remote)
        physical = self._physical_ms()
        if remote_wall - physical > self._max_skew_ms:
            self._reject(remote, physical)
            return self._last
        wall, logical = unpack(self._last)
        new_wall = max(wall, remote_wall, physical)
        if new_wall == wall == remote_wall:
            new_logical = max(logical, remote_logical) + 1
        elif new_wall == wall:
            new_logical = logical + 1
        elif new_wall == remote_wall:
            new_logical = remote_logical + 1
        else:
            new_logical = 0
        self._last = _normalized(new_wall, new_logical)
        return self._last

    def observe_many(self, remotes: Iterable[int]) -> int:
        """Merge a batch of received stamps: each one too far ahead is reported and ignored
        as in :meth:`observe`, then the highest of the others is observed once. The clock
        ends above every accepted stamp, as after observing them one by one, without a
        logical step per stamp (a node catching up observes thousands at a time)."""
        physical = self._physical_ms()
        highest = -1
        for remote in remotes:
            remote_wall, _ = unpack(remote)
            if remote_wall - physical > self._max_skew_ms:
                self._reject(remote, physical)
            elif remote > highest:
                highest = remote
        return self.observe(highest) if highest >= 0 else self._last

    def _reject(self, remote: int, physical: int) -> None:
        self.skew_rejections += 1
        ahead_s = (unpack(remote)[0] - physical) / 1000
        log.warning(
            "ignoring HLC %d: %.3f s ahead of local time, more than the %.3f s allowed",
            remote,
            ahead_s,
            self._max_skew_ms / 1000,
        )
        if self._on_skew is not None:
            self._on_skew(remote, physical)

    def _physical_ms(self) -> int:
        return (self._clock.now() - _EPOCH) // _MS
