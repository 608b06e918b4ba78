"""LinkProxy and ProxyMesh over real loopback sockets, against an asyncio echo server."""

from __future__ import annotations

import asyncio
import json
import os
import random
import signal
import sys
import time
from collections.abc import Awaitable, Callable, Coroutine
from pathlib import Path
from typing import Any

import pytest

from federation.link_proxy import LinkControlError, LinkProxy, control
from federation.wan import REGIONS, ProxyMesh, one_way_delay, rtt_ms

pytestmark = pytest.mark.timeout(5)

HOST = "127.0.0.1"
REPO = Path(__file__).resolve().parents[2]


class EchoServer:
    """Echoes every byte back, prefixed once per connection by ``greeting``."""

    def __init__(self, greeting: bytes = b"") -> None:
        self.greeting = greeting
        self.port = 0
        self.received: list[int] = []  # bytes received by each finished connection
        self._server: asyncio.Server | None = None

    async def start(self) -> EchoServer:
        self._server = await asyncio.start_server(self._echo, HOST, 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def stop(self) -> None:
        assert self._server is not None
        self._server.close()
        await self._server.wait_closed()

    async def _echo(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        total = 0
        try:
            if self.greeting:
                writer.write(self.greeting)
            while data := await reader.read(65536):
                total += len(data)
                writer.write(data)
                await writer.drain()
        except ConnectionError:
            pass
        finally:
            self.received.append(total)
            writer.close()


def run(test: Callable[[], Coroutine[Any, Any, None]]) -> None:
    asyncio.run(asyncio.wait_for(test(), 4.5))


async def wait_until(condition: Callable[[], bool], within: float = 2.0) -> None:
    # The conditions are counters of the code under test, which has no event to offer.
    async with asyncio.timeout(within):
        while not condition():  # noqa: ASYNC110
            await asyncio.sleep(0.005)


async def proxied(echo: EchoServer, **kwargs: Any) -> LinkProxy:
    proxy = LinkProxy(HOST, 0, HOST, echo.port, **kwargs)
    await proxy.start()
    return proxy


async def connect(port: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    return await asyncio.open_connection(HOST, port)


async def ping(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> float:
    started = time.perf_counter()
    writer.write(b"ping")
    await writer.drain()
    assert await asyncio.wait_for(reader.readexactly(4), 2) == b"ping"
    return time.perf_counter() - started


async def is_broken(reader: asyncio.StreamReader, within: float = 1.0) -> bool:
    """True if the connection ends (EOF or reset) within ``within`` seconds."""
    try:
        return await asyncio.wait_for(reader.read(1024), within) == b""
    except ConnectionError:
        return True


async def dial_fails(port: int) -> bool:
    try:
        reader, writer = await connect(port)
    except ConnectionError:
        return True
    try:
        writer.write(b"ping")
        return await is_broken(reader)
    finally:
        writer.close()


async def with_echo(body: Callable[[EchoServer], Awaitable[None]], greeting: bytes = b"") -> None:
    echo = await EchoServer(greeting).start()
    try:
        await body(echo)
    finally:
        await echo.stop()


@pytest.mark.parametrize("delay", [0.0, 0.02])
def test_data_passes_intact_both_ways_and_eof_follows_it(delay: float) -> None:
    payload = random.Random(1).randbytes(300_000)

    async def body(echo: EchoServer) -> None:
        proxy = await proxied(echo, one_way_delay=delay)
        reader, writer = await connect(proxy.port)
        writer.write(payload)
        writer.write_eof()
        assert await reader.read() == payload  # read() to EOF: the half-close came through
        writer.close()
        await wait_until(lambda: echo.received == [len(payload)])
        assert proxy.stats.bytes_to_target == proxy.stats.bytes_to_client == len(payload)
        assert proxy.stats.connections_accepted == 1
        await proxy.stop()

    run(lambda: with_echo(body))


def test_round_trip_through_a_50ms_one_way_delay() -> None:
    async def body(echo: EchoServer) -> None:
        proxy = await proxied(echo, one_way_delay=0.05)
        reader, writer = await connect(proxy.port)
        rtts = [await ping(reader, writer) for _ in range(4)]
        assert all(0.1 <= rtt < 0.2 for rtt in rtts), rtts
        writer.close()
        await proxy.stop()

    run(lambda: with_echo(body))


def test_delay_is_a_delay_line_not_a_throttle() -> None:
    payload = random.Random(2).randbytes(1_000_000)

    async def body(echo: EchoServer) -> None:
        proxy = await proxied(echo, one_way_delay=0.02)
        reader, writer = await connect(proxy.port)
        started = time.perf_counter()
        writer.write(payload)
        echoed = await reader.readexactly(len(payload))
        elapsed = time.perf_counter() - started
        assert echoed == payload
        # 1 MB is at least 16 reads of 64 KiB each way; one 20 ms sleep per chunk in
        # turn would take 0.64 s or more.
        assert 0.04 <= elapsed < 0.4, elapsed
        writer.close()
        await proxy.stop()

    run(lambda: with_echo(body))


def test_set_delay_applies_to_open_connections() -> None:
    async def body(echo: EchoServer) -> None:
        proxy = await proxied(echo)
        reader, writer = await connect(proxy.port)
        assert await ping(reader, writer) < 0.1
        proxy.set_delay(0.06)
        assert await ping(reader, writer) >= 0.12
        proxy.set_delay(0.0)
        assert await ping(reader, writer) < 0.1
        writer.close()
        await proxy.stop()

    run(lambda: with_echo(body))


def test_seeded_jitter_keeps_order_and_repeats() -> None:
    first, second = (LinkProxy(HOST, 0, HOST, 1, jitter=0.05, seed=7) for _ in range(2))
    assert [first.due(t, 0.0) for t in range(5)] == [second.due(t, 0.0) for t in range(5)]
    assert first.due(1.0, previous=9.0) == 9.0
    payload = random.Random(3).randbytes(200_000)

    async def body(echo: EchoServer) -> None:
        proxy = await proxied(echo, one_way_delay=0.005, jitter=0.02, seed=11)
        reader, writer = await connect(proxy.port)
        for i in range(0, len(payload), 1000):
            writer.write(payload[i : i + 1000])
            await writer.drain()
        assert await reader.readexactly(len(payload)) == payload
        writer.close()
        await proxy.stop()

    run(lambda: with_echo(body))


def test_cut_breaks_connections_refuses_new_ones_and_heal_restores() -> None:
    async def body(echo: EchoServer) -> None:
        proxy = await proxied(echo)
        reader, writer = await connect(proxy.port)
        await ping(reader, writer)
        proxy.cut()
        assert await is_broken(reader)
        await wait_until(lambda: echo.received == [4])  # the target's side is gone too
        assert await dial_fails(proxy.port)
        assert proxy.stats.connections_refused >= 1
        proxy.heal()
        reader, writer = await connect(proxy.port)
        await ping(reader, writer)
        writer.close()
        await proxy.stop()

    run(lambda: with_echo(body))


def test_cut_drops_data_in_flight() -> None:
    async def body(echo: EchoServer) -> None:
        proxy = await proxied(echo)
        reader, writer = await connect(proxy.port)
        await ping(reader, writer)
        proxy.set_delay(1.0)
        writer.write(b"x" * 1000)
        await wait_until(lambda: proxy.bytes_in_flight == 1000)
        proxy.cut()
        assert proxy.stats.bytes_dropped == 1000
        assert await is_broken(reader)
        await wait_until(lambda: len(echo.received) == 1)
        assert echo.received == [4]  # the ping only: the 1000 bytes never arrived
        await proxy.stop()

    run(lambda: with_echo(body))


def test_drop_connections_breaks_current_ones_and_keeps_accepting() -> None:
    async def body(echo: EchoServer) -> None:
        proxy = await proxied(echo)
        reader, writer = await connect(proxy.port)
        await ping(reader, writer)
        proxy.drop_connections()
        assert await is_broken(reader)
        reader, writer = await connect(proxy.port)
        await ping(reader, writer)
        assert proxy.stats.connections_accepted == 2
        writer.close()
        await proxy.stop()

    run(lambda: with_echo(body))


def test_unreachable_target_fails_the_client_quickly() -> None:
    async def body() -> None:
        # A port that was just free: nothing listens there.
        probe = await asyncio.start_server(lambda r, w: None, HOST, 0)
        dead_port = probe.sockets[0].getsockname()[1]
        probe.close()
        await probe.wait_closed()
        proxy = LinkProxy(HOST, 0, HOST, dead_port)
        await proxy.start()
        assert await dial_fails(proxy.port)
        await proxy.stop()

    run(body)


def test_control_protocol_round_trip_with_a_proxy_process(tmp_path: Path) -> None:
    async def body(echo: EchoServer) -> None:
        spec = tmp_path / "links.json"
        target = f"{HOST}:{echo.port}"
        links = [{"from": "a", "to": "b", "listen_port": 0, "target": target, "delay": 0}]
        spec.write_text(json.dumps({"links": links}))
        env = {**os.environ, "PYTHONPATH": str(REPO)}
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "federation.link_proxy",
            "--spec",
            str(spec),
            stdout=asyncio.subprocess.PIPE,
            cwd=REPO,
            env=env,
        )
        try:
            assert process.stdout is not None
            ready = json.loads(await asyncio.wait_for(process.stdout.readline(), 3))
            control_host, control_port = ready["control"].rsplit(":", 1)
            port = ready["links"][0]["port"]

            def send(**command: Any) -> Awaitable[dict[str, Any]]:
                return asyncio.to_thread(control, control_host, int(control_port), command)

            reader, writer = await connect(port)
            await ping(reader, writer)
            assert (await send(op="cut", **{"from": "a", "to": "b"}))["links"] == ["a->b"]
            assert await is_broken(reader)
            assert await dial_fails(port)
            await send(op="heal", **{"from": "a"})
            await send(op="delay", delay=0.05)
            reader, writer = await connect(port)
            assert await ping(reader, writer) >= 0.1
            stats = (await send(op="stats"))["links"]["a->b"]
            assert stats["cut"] is False and stats["delay"] == 0.05
            assert stats["bytes_to_client"] == 8 and stats["connections_refused"] >= 1
            with pytest.raises(LinkControlError, match="unknown regions"):
                await send(op="cut", **{"from": "nowhere"})
            with pytest.raises(LinkControlError, match="unknown op"):
                await send(op="explode")
            writer.close()
            process.send_signal(signal.SIGTERM)
            assert await asyncio.wait_for(process.wait(), 3) == 0
        finally:
            if process.returncode is None:
                process.kill()
                await process.wait()

    run(lambda: with_echo(body))


def test_one_way_delay_is_half_the_rtt_and_symmetric() -> None:
    expected = {
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
    }
    assert {r for pair in expected for r in pair} == REGIONS
    for (a, b), rtt in expected.items():
        assert rtt_ms(a, b) == rtt_ms(b, a) == rtt
        assert one_way_delay(a, b) == one_way_delay(b, a) == pytest.approx(rtt / 2000)
    for region in REGIONS:
        assert one_way_delay(region, region) == 0.0


def test_one_way_delay_names_unknown_regions() -> None:
    with pytest.raises(ValueError, match="mars"):
        one_way_delay("velizy", "mars")


def test_proxy_mesh_routes_cuts_isolates_and_heals() -> None:
    regions = ["velizy", "uk", "japan"]

    async def body() -> None:
        servers = {r: await EchoServer(greeting=r.encode() + b";").start() for r in regions}
        mesh = ProxyMesh({r: (HOST, s.port) for r, s in servers.items()}, seed=3)
        await mesh.start()

        async def reaches(a: str, b: str) -> bool:
            _, port = mesh.address_for(a, b).rsplit(":", 1)
            try:
                reader, writer = await connect(int(port))
            except ConnectionError:
                return False
            try:
                greeting = await asyncio.wait_for(reader.read(64), 1)
            except ConnectionError:
                return False
            finally:
                writer.close()
            assert greeting in (b"", b.encode() + b";")
            return greeting != b""

        async def reachable() -> set[tuple[str, str]]:
            return {(a, b) for a in regions for b in regions if a != b and await reaches(a, b)}

        everything = {(a, b) for a in regions for b in regions if a != b}
        try:
            assert mesh.address_for("velizy", "japan").startswith("127.0.0.1:")
            assert await reachable() == everything
            mesh.cut("velizy", "japan")
            assert await reachable() == everything - {("velizy", "japan"), ("japan", "velizy")}
            mesh.heal("japan", "velizy")
            mesh.isolate("uk")
            assert await reachable() == {("velizy", "japan"), ("japan", "velizy")}
            mesh.heal_all()
            assert await reachable() == everything
            port = await mesh.serve_control()
            command = {"op": "cut", "from": "uk", "to": "japan", "oneway": True}
            await asyncio.to_thread(control, HOST, port, command)
            assert await reachable() == everything - {("uk", "japan")}
            await asyncio.to_thread(control, HOST, port, {"op": "heal"})
            assert await reachable() == everything
            mesh.set_wan(True)
            assert mesh.link("uk", "japan").delay == pytest.approx(0.1225)
            mesh.set_wan(False)
            assert all(link.delay == 0 for link in mesh.links.values())
            with pytest.raises(ValueError, match="no link"):
                mesh.address_for("uk", "uk")
        finally:
            await mesh.stop()
            for server in servers.values():
                await server.stop()

    run(body)


def test_proxy_mesh_with_wan_refuses_unknown_regions() -> None:
    with pytest.raises(ValueError, match="atlantis"):
        ProxyMesh({"velizy": (HOST, 1), "atlantis": (HOST, 2)}, wan=True)
    mesh = ProxyMesh({"a": (HOST, 1), "b": (HOST, 2)})
    with pytest.raises(ValueError):
        mesh.set_wan(True)
    assert not mesh.wan and mesh.link("a", "b").delay == 0
