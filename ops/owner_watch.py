"""A watch on the owner keys of every queue, from a thread of its own: what tests,
benchmarks and the demo use to see ownership move (and to prove it never had a gap)."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from dataclasses import dataclass

import aetcd
import grpc

from federation.etcd_tls import etcd_client
from federation.leases import OWNERS_PREFIX


@dataclass
class OwnerEvent:
    queue: str
    kind: str  # "put" or "delete"
    epoch: int
    region: str
    at: float = 0.0  # time.monotonic() when the watch delivered it


class OwnerWatcher:
    """Watches /sundesk/owners/ in etcd from a thread of its own."""

    def __init__(self, endpoint: str, credentials: grpc.ChannelCredentials | None = None) -> None:
        self._credentials = credentials  # an etcd with client-certificate auth
        self.host, port = endpoint.rsplit(":", 1)
        self.port = int(port)
        self.events: list[OwnerEvent] = []
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        if not self._ready.wait(10):
            raise TimeoutError(f"no watch on {endpoint} within 10 s")

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        self._loop.run_until_complete(self._watch())

    async def _watch(self) -> None:
        client = etcd_client(self.host, self.port, self._credentials)
        watch = await client.watch_prefix(OWNERS_PREFIX.encode())
        self._ready.set()
        self._watch_handle = watch
        try:
            async for ev in watch:
                queue = ev.kv.key.decode().rsplit("/", 1)[1]
                if ev.kind == aetcd.EventKind.PUT:
                    region = json.loads(ev.kv.value)["region"]
                    self.events.append(
                        OwnerEvent(queue, "put", ev.kv.mod_revision, region, time.monotonic())
                    )
                else:
                    self.events.append(
                        OwnerEvent(queue, "delete", ev.kv.mod_revision, "", time.monotonic())
                    )
        except Exception:
            return

    def stop(self) -> None:
        async def cancel() -> None:
            await self._watch_handle.cancel()

        asyncio.run_coroutine_threadsafe(cancel(), self._loop).result(5)
        self._thread.join(5)
