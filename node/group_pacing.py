"""When the store's next commit group starts: the group-commit delay, decided purely.

Every group pays a fixed cost whatever its size: the hand-off to the committer thread and
back, and the fsync, whose kernel work alone is 150-200 µs of CPU on our VMs. At 2,500
writes/s a group started as soon as the previous one committed held about 5 writes, and
that fixed cost was more of a CreateTicket's CPU than the store's own work per write.

So a group may wait a little for company, as PostgreSQL's ``commit_delay`` waits only when
``commit_siblings`` other transactions are active. Our sign of company is the last group:
the next one starts as soon as as many writes wait as the last group held, or ``delay``
after the store became free, whichever comes first. A lone writer (last group of one)
never waits; K clients writing in turn fill each group as soon as all K have written
again; when writers go away, one group waits the full delay and the next expects fewer.
"""

from __future__ import annotations

from dataclasses import dataclass

DEFAULT_DELAY_S = 0.010


@dataclass
class GroupPacer:
    delay_s: float = DEFAULT_DELAY_S
    max_group: int = 512
    expected: int = 1  # writes the last group held

    def ready(self, waiting: int) -> bool:
        """Whether a group of ``waiting`` writes should start now rather than wait."""
        return self.delay_s <= 0 or waiting >= self.expected

    def started(self, size: int) -> None:
        """A group of ``size`` writes started: the next one expects as many."""
        self.expected = max(1, min(size, self.max_group))
