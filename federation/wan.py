"""The WAN between regions, reproduced on one machine.

``ProxyMesh`` puts a ``LinkProxy`` on every ordered pair of regions: the link ``(a, b)``
is what ``a`` dials to reach ``b``. Cluster tests and ``sundesk local`` use its verbs —
``cut``, ``heal``, ``isolate``, ``heal_all`` — and ``set_wan`` to switch the real-world
latencies below on or off.
"""

from __future__ import annotations

import zlib
from collections.abc import Mapping
from itertools import permutations
from types import TracebackType

from federation.link_proxy import ControlServer, LinkProxy, select_links

_RTT_MS: dict[frozenset[str], float] = {
    frozenset(pair): rtt
    for pair, rtt in {
        ("velizy", "germany"): 10,
        ("velizy", "uk"): 10,
        ("germany", "uk"): 13,
        ("velizy", "us"): 80,
        ("germany", "us"): 92,
        ("uk", "us"): 75,
        ("us", "japan"): 165,
        ("velizy", "japan"): 240,
        ("germany", "japan"): 235,
        ("uk", "japan"): 245,
    }.items()
}
REGIONS = frozenset(r for pair in _RTT_MS for r in pair)


def rtt_ms(a: str, b: str) -> float:
    unknown = sorted({a, b} - REGIONS)
    if unknown:
        raise ValueError(f"unknown regions {unknown}; the WAN joins {sorted(REGIONS)}")
    return 0.0 if a == b else _RTT_MS[frozenset((a, b))]


def one_way_delay(a: str, b: str) -> float:
    """Seconds from ``a`` to ``b``: half the round trip."""
    return rtt_ms(a, b) / 2 / 1000


class ProxyMesh:
    """One proxy per ordered pair of ``nodes`` (region -> the node's real listener)."""

    def __init__(
        self,
        nodes: Mapping[str, tuple[str, int]],
        *,
        wan: bool = False,
        seed: int = 0,
        listen_host: str = "127.0.0.1",
    ) -> None:
        if wan:
            for a, b in permutations(nodes, 2):
                one_way_delay(a, b)
        self._wan = wan
        self._links: dict[tuple[str, str], LinkProxy] = {
            (a, b): LinkProxy(
                listen_host,
                0,
                *nodes[b],
                one_way_delay=one_way_delay(a, b) if wan else 0.0,
                # Stable across runs, unlike hash() of a string.
                seed=seed ^ zlib.crc32(f"{a}->{b}".encode()),
                name=f"{a}->{b}",
            )
            for a, b in permutations(nodes, 2)
        }
        self._control: ControlServer | None = None

    @property
    def links(self) -> Mapping[tuple[str, str], LinkProxy]:
        return self._links

    async def start(self) -> None:
        try:
            for proxy in self._links.values():
                await proxy.start()
        except BaseException:
            await self.stop()
            raise

    async def stop(self) -> None:
        if self._control is not None:
            await self._control.stop()
            self._control = None
        for proxy in self._links.values():
            await proxy.stop()

    async def __aenter__(self) -> ProxyMesh:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()

    async def serve_control(self, host: str = "127.0.0.1", port: int = 0) -> int:
        """Accept ``link_proxy.control()`` commands for this mesh; returns the port."""
        if self._control is None:
            self._control = ControlServer(self._links, host, port)
            await self._control.start()
        return self._control.port

    def link(self, from_region: str, to_region: str) -> LinkProxy:
        try:
            return self._links[(from_region, to_region)]
        except KeyError:
            raise ValueError(f"no link {from_region}->{to_region} in this mesh") from None

    def address_for(self, from_region: str, to_region: str) -> str:
        """Where ``from_region`` dials to reach ``to_region``."""
        proxy = self.link(from_region, to_region)
        return f"{proxy.listen_host}:{proxy.port}"

    def cut(self, a: str, b: str) -> None:
        for proxy in select_links(self._links, a, b):
            proxy.cut()

    def heal(self, a: str, b: str) -> None:
        for proxy in select_links(self._links, a, b):
            proxy.heal()

    def isolate(self, region: str) -> None:
        for proxy in select_links(self._links, region):
            proxy.cut()

    def heal_all(self) -> None:
        for proxy in self._links.values():
            proxy.heal()

    def drop_connections(self, a: str, b: str) -> None:
        for proxy in select_links(self._links, a, b):
            proxy.drop_connections()

    @property
    def wan(self) -> bool:
        return self._wan

    def set_wan(self, enabled: bool) -> None:
        delays = {
            pair: one_way_delay(*pair) if enabled else 0.0 for pair in self._links
        }  # computed first, so an unknown region changes nothing
        for pair, delay in delays.items():
            self._links[pair].set_delay(delay)
        self._wan = enabled
