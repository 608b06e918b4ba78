"""Fan-out of committed changes to ``WatchTickets`` streams, with bounded queues.

A watcher that falls more than ``capacity`` changes behind is cut off with a clear error
instead of letting memory grow: it can reconnect with ``send_initial``.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

from node.errors import ResourceExhausted
from node.store import Change


class Subscription:
    def __init__(self, hub: WatchHub, queue_name: str, capacity: int) -> None:
        self._hub = hub
        self.queue_name = queue_name
        self.events: asyncio.Queue[Change] = asyncio.Queue(maxsize=capacity)
        self.overflowed = False

    def offer(self, change: Change) -> None:
        if self.overflowed or change.ticket is None:
            return
        if self.queue_name and change.ticket.queue != self.queue_name:
            return
        try:
            self.events.put_nowait(change)
        except asyncio.QueueFull:
            self.overflowed = True
            self.events = asyncio.Queue(maxsize=1)
            self.events.put_nowait(change)

    async def __aiter__(self) -> AsyncIterator[Change]:
        try:
            while True:
                change = await self.events.get()
                if self.overflowed:
                    raise ResourceExhausted(
                        "this watch fell too far behind and was cut off; reconnect with "
                        "send_initial to resynchronise"
                    )
                yield change
        finally:
            self._hub.unsubscribe(self)


class WatchHub:
    def __init__(self, capacity: int = 1024) -> None:
        self._subs: set[Subscription] = set()
        self._capacity = capacity

    @property
    def active(self) -> int:
        return len(self._subs)

    def subscribe(self, queue_name: str = "") -> Subscription:
        sub = Subscription(self, queue_name, self._capacity)
        self._subs.add(sub)
        return sub

    def unsubscribe(self, sub: Subscription) -> None:
        self._subs.discard(sub)

    def publish(self, changes: list[Change]) -> None:
        for sub in list(self._subs):
            for change in changes:
                sub.offer(change)
