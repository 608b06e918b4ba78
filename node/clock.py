"""The one way time enters Sundesk.

Domain rules take instants as arguments; services get a ``Clock`` through their
constructor. ``ScaledClock`` runs simulated time (``--clock-start``/``--speed``) so a day
of shifts plays in minutes; ``FakeClock`` is for tests and moves only when told.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta
from typing import Protocol


class Clock(Protocol):
    def now(self) -> datetime:
        """The current instant, UTC-aware."""
        ...

    def speed(self) -> float:
        """Simulated seconds per real second (1.0 for real time)."""
        ...


class SystemClock:
    def now(self) -> datetime:
        return datetime.now(UTC)

    def speed(self) -> float:
        return 1.0


class ScaledClock:
    """Simulated time: starts at ``start`` when ``origin_real`` (a UNIX time) was now.

    Every node of a local federation gets the same start, origin and speed, so they agree
    on the simulated instant without talking to each other.
    """

    def __init__(self, start: datetime, speed: float, origin_real: float | None = None) -> None:
        if start.tzinfo is None:
            raise ValueError("clock start must be timezone-aware")
        if speed <= 0:
            raise ValueError("clock speed must be positive")
        self._start = start.astimezone(UTC)
        self._speed = speed
        self._origin = time.time() if origin_real is None else origin_real

    def now(self) -> datetime:
        elapsed = (time.time() - self._origin) * self._speed
        return self._start + timedelta(seconds=elapsed)

    def speed(self) -> float:
        return self._speed


class FakeClock:
    def __init__(self, start: datetime | None = None) -> None:
        self._now = start or datetime(2026, 1, 5, 9, 0, tzinfo=UTC)

    def now(self) -> datetime:
        return self._now

    def speed(self) -> float:
        return 1.0

    def advance(self, seconds: float) -> None:
        self._now += timedelta(seconds=seconds)

    def set(self, instant: datetime) -> None:
        self._now = instant.astimezone(UTC)
