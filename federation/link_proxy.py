"""A fault-injecting TCP proxy for peer links, after etcd's ``bridge.go``.

Kernel netem needs root, so each peer link (what region A dials to reach region B) goes
through a userspace proxy that can delay it (a delay line: every chunk is delivered a
fixed time after it was read, so latency is added without capping throughput), cut it
(``Blackhole``), heal it, and drop its connections (``DropConnections``).

Delays are real network latency, so they are measured on the event loop's monotonic
clock, not on the injected domain ``Clock``: a simulated day at 60x speed still has 80 ms
between Vélizy and the US. Jitter draws from an RNG seeded per proxy.

Run standalone (``python -m federation.link_proxy --spec FILE``) to serve a set of links
in another process; its control port takes JSON lines such as
``{"op": "cut", "from": "velizy", "to": "japan"}`` and ``control()`` sends them.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import random
import signal
import socket
import struct
import sys
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass
from typing import Any

CHUNK_BYTES = 64 * 1024
# Per direction: bounds what a slow receiver makes the proxy hold (16 MiB at most), and
# lets TCP flow control reach the sender once it is full.
QUEUE_CHUNKS = 256
CONNECT_TIMEOUT = 5.0

_EOF = None
_Chunk = tuple[float, bytes]


@dataclass
class LinkStats:
    bytes_to_target: int = 0
    bytes_to_client: int = 0
    bytes_dropped: int = 0
    connections_accepted: int = 0
    connections_refused: int = 0


def _reset(writer: asyncio.StreamWriter) -> None:
    """Close with RST rather than FIN, so the peer sees the link break, not end."""
    sock = writer.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()


class _Connection:
    def __init__(self, client: asyncio.StreamWriter, task: asyncio.Task[Any] | None) -> None:
        self.client = client
        self.upstream: asyncio.StreamWriter | None = None
        self.task = task
        self.in_flight = 0  # read from one side, not yet written to the other

    def abort(self, stats: LinkStats) -> None:
        stats.bytes_dropped += self.in_flight
        self.in_flight = 0
        _reset(self.client)
        if self.upstream is not None:
            _reset(self.upstream)


class LinkProxy:
    """Forwards ``listen_host:listen_port`` to ``target_host:target_port``.

    A connection accepted here opens one to the target and copies bytes both ways, each
    chunk delivered ``delay`` (+ jitter) after it was read, in order.
    """

    def __init__(
        self,
        listen_host: str,
        listen_port: int,
        target_host: str,
        target_port: int,
        *,
        one_way_delay: float = 0.0,
        jitter: float = 0.0,
        seed: int = 0,
        name: str = "",
    ) -> None:
        self.listen_host = listen_host
        self.port = listen_port
        self.target_host = target_host
        self.target_port = target_port
        self.name = name or f"{listen_host}:{listen_port}->{target_host}:{target_port}"
        self.stats = LinkStats()
        self._delay = 0.0
        self._jitter = 0.0
        self.set_delay(one_way_delay)
        self.set_jitter(jitter)
        self._rng = random.Random(seed)
        self._cut = False
        self._server: asyncio.Server | None = None
        self._connections: set[_Connection] = set()

    @property
    def delay(self) -> float:
        return self._delay

    @property
    def is_cut(self) -> bool:
        return self._cut

    @property
    def bytes_in_flight(self) -> int:
        return sum(c.in_flight for c in self._connections)

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._accept, self.listen_host, self.port)
        self.port = self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
        tasks = [c.task for c in self._connections if c.task is not None]
        self.drop_connections()
        await asyncio.gather(*tasks, return_exceptions=True)
        if self._server is not None:
            await self._server.wait_closed()
            self._server = None

    def set_delay(self, one_way_seconds: float) -> None:
        """Applies to both directions, from the next chunk read on."""
        if one_way_seconds < 0:
            raise ValueError(f"{self.name}: delay must not be negative")
        self._delay = one_way_seconds

    def set_jitter(self, seconds: float) -> None:
        """Up to ``seconds`` more per chunk, drawn from the seeded RNG; order is kept."""
        if seconds < 0:
            raise ValueError(f"{self.name}: jitter must not be negative")
        self._jitter = seconds

    def due(self, read_time: float, previous: float) -> float:
        """When a chunk read at ``read_time`` is delivered: never before the chunk before
        it in the same direction (``previous``), since TCP delivers in order."""
        extra = self._rng.uniform(0.0, self._jitter) if self._jitter else 0.0
        return max(previous, read_time + self._delay + extra)

    def cut(self) -> None:
        """Blackhole: drop data in flight, break every connection, refuse new ones."""
        self._cut = True
        self.drop_connections()

    def heal(self) -> None:
        self._cut = False

    def drop_connections(self) -> None:
        for connection in list(self._connections):
            connection.abort(self.stats)
            if connection.task is not None:
                connection.task.cancel()
        self._connections.clear()

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self._cut:
            # Accept-then-reset fails a dialer at once, where silence would leave it to a
            # connect timeout.
            self.stats.connections_refused += 1
            _reset(writer)
            return
        self.stats.connections_accepted += 1
        connection = _Connection(writer, asyncio.current_task())
        self._connections.add(connection)
        try:
            await self._serve(connection, reader)
        except asyncio.CancelledError:
            pass  # cut, drop_connections or stop: the connection is already aborted
        finally:
            self._connections.discard(connection)

    async def _serve(self, connection: _Connection, client_reader: asyncio.StreamReader) -> None:
        client = connection.client
        try:
            upstream_reader, upstream = await asyncio.wait_for(
                asyncio.open_connection(self.target_host, self.target_port), CONNECT_TIMEOUT
            )
        except (OSError, TimeoutError):
            _reset(client)
            return
        connection.upstream = upstream
        broken = False
        try:
            async with asyncio.TaskGroup() as group:
                for source, sink, to_target in (
                    (client_reader, upstream, True),
                    (upstream_reader, client, False),
                ):
                    queue: asyncio.Queue[_Chunk | None] = asyncio.Queue(QUEUE_CHUNKS)
                    group.create_task(self._read(connection, source, queue))
                    group.create_task(self._deliver(connection, queue, sink, to_target))
        except* OSError:
            broken = True
        if broken:
            connection.abort(self.stats)
        else:
            client.close()
            upstream.close()

    async def _read(
        self,
        connection: _Connection,
        source: asyncio.StreamReader,
        queue: asyncio.Queue[_Chunk | None],
    ) -> None:
        loop = asyncio.get_running_loop()
        previous = 0.0
        while data := await source.read(CHUNK_BYTES):
            previous = self.due(loop.time(), previous)
            connection.in_flight += len(data)
            await queue.put((previous, data))
        await queue.put(_EOF)

    async def _deliver(
        self,
        connection: _Connection,
        queue: asyncio.Queue[_Chunk | None],
        sink: asyncio.StreamWriter,
        to_target: bool,
    ) -> None:
        loop = asyncio.get_running_loop()
        while (item := await queue.get()) is not _EOF:
            at, data = item
            if (wait := at - loop.time()) > 0:
                await asyncio.sleep(wait)
            sink.write(data)
            connection.in_flight -= len(data)
            if to_target:
                self.stats.bytes_to_target += len(data)
            else:
                self.stats.bytes_to_client += len(data)
            await sink.drain()
        if sink.can_write_eof():
            sink.write_eof()


Links = Mapping[tuple[str, str], LinkProxy]


def select_links(
    links: Links, a: str | None = None, b: str | None = None, *, oneway: bool = False
) -> list[LinkProxy]:
    """Links between ``a`` and ``b`` (both directions unless ``oneway``), every link of
    ``a`` when ``b`` is None, every link when both are None."""
    regions = {r for pair in links for r in pair}
    unknown = sorted(r for r in (a, b) if r is not None and r not in regions)
    if unknown:
        raise ValueError(f"unknown regions {unknown}; links join {sorted(regions)}")
    if b is not None and a is None:
        raise ValueError("'to' needs 'from'")
    if a is None:
        return list(links.values())
    if b is None:
        return [p for (x, y), p in links.items() if a in (x, y)]
    wanted = {(a, b)} if oneway else {(a, b), (b, a)}
    return [p for pair, p in links.items() if pair in wanted]


def apply_command(links: Links, command: Mapping[str, Any]) -> dict[str, Any]:
    """Carry out one control command; raises ValueError for a bad one.

    ``op`` is ``cut``, ``heal``, ``drop`` (connections), ``delay`` (sets ``delay`` and
    ``jitter``, default 0, in seconds) or ``stats``. ``from``/``to``/``oneway`` choose the
    links as ``select_links`` does; without them a command applies to every link.
    """
    op = command.get("op")
    chosen = select_links(
        links, command.get("from"), command.get("to"), oneway=bool(command.get("oneway"))
    )
    if op == "cut":
        for proxy in chosen:
            proxy.cut()
    elif op == "heal":
        for proxy in chosen:
            proxy.heal()
    elif op == "drop":
        for proxy in chosen:
            proxy.drop_connections()
    elif op == "delay":
        if "delay" not in command:
            raise ValueError("op 'delay' needs 'delay' (one-way seconds)")
        delay = float(command["delay"])
        jitter = float(command.get("jitter", 0.0))
        for proxy in chosen:
            proxy.set_delay(delay)
            proxy.set_jitter(jitter)
    elif op == "stats":
        return {
            "ok": True,
            "links": {
                f"{a}->{b}": {"cut": p.is_cut, "delay": p.delay, **asdict(p.stats)}
                for (a, b), p in links.items()
                if p in chosen
            },
        }
    else:
        raise ValueError(f"unknown op {op!r}; expected cut, heal, drop, delay or stats")
    return {"ok": True, "links": sorted(p.name for p in chosen)}


class ControlServer:
    """JSON lines over loopback TCP: one command in, one reply out, per line."""

    def __init__(self, links: Links, host: str = "127.0.0.1", port: int = 0) -> None:
        self._links = links
        self.host = host
        self.port = port
        self._server: asyncio.Server | None = None
        self._sessions: set[asyncio.StreamWriter] = set()

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._session, self.host, self.port)
        self.port = self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            # Since 3.12 wait_closed() also waits for open sessions; a controller that
            # keeps its connection must not hold up shutdown.
            for writer in self._sessions:
                writer.close()
            await self._server.wait_closed()
            self._server = None

    async def _session(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._sessions.add(writer)
        try:
            while line := await reader.readline():
                try:
                    command = json.loads(line)
                    if not isinstance(command, dict):
                        raise ValueError("a command is a JSON object")
                    reply = apply_command(self._links, command)
                except (ValueError, KeyError, TypeError) as e:
                    reply = {"ok": False, "error": str(e)}
                writer.write(json.dumps(reply).encode() + b"\n")
                await writer.drain()
        except ConnectionError:
            pass
        finally:
            self._sessions.discard(writer)
            writer.close()


class LinkControlError(RuntimeError):
    """The proxy process refused a control command."""


def control(host: str, port: int, command: dict[str, Any], timeout: float = 5.0) -> dict[str, Any]:
    """Send one command to a proxy's control port; returns its reply or raises
    ``LinkControlError`` with the proxy's reason."""
    with socket.create_connection((host, port), timeout=timeout) as sock:
        sock.sendall(json.dumps(command).encode() + b"\n")
        with sock.makefile("rb") as replies:
            line = replies.readline()
    if not line:
        raise LinkControlError(f"control port {host}:{port} closed without a reply")
    reply: dict[str, Any] = json.loads(line)
    if not reply.get("ok"):
        raise LinkControlError(reply.get("error", "unknown error"))
    return reply


def _split_address(address: str) -> tuple[str, int]:
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit():
        raise ValueError(f"expected host:port, got {address!r}")
    return host, int(port)


def links_from_spec(spec: Mapping[str, Any], seed: int = 0) -> dict[tuple[str, str], LinkProxy]:
    links: dict[tuple[str, str], LinkProxy] = {}
    for n, entry in enumerate(spec["links"]):
        pair = (entry["from"], entry["to"])
        if pair in links:
            raise ValueError(f"link {pair[0]}->{pair[1]} is listed twice")
        host, port = _split_address(entry["target"])
        links[pair] = LinkProxy(
            entry.get("listen_host", "127.0.0.1"),
            int(entry.get("listen_port", 0)),
            host,
            port,
            one_way_delay=float(entry.get("delay", 0.0)),
            seed=seed + n,
            name=f"{pair[0]}->{pair[1]}",
        )
    return links


async def serve(spec: Mapping[str, Any], control_host: str, control_port: int, seed: int) -> None:
    """Serve the spec's links until SIGTERM or SIGINT."""
    links = links_from_spec(spec, seed)
    control_server = ControlServer(links, control_host, control_port)
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stopping.set)
    try:
        for proxy in links.values():
            await proxy.start()
        await control_server.start()
        ready = {
            "control": f"{control_server.host}:{control_server.port}",
            "links": [{"from": a, "to": b, "port": p.port} for (a, b), p in links.items()],
        }
        print(json.dumps(ready), flush=True)
        await stopping.wait()
    finally:
        await control_server.stop()
        for proxy in links.values():
            await proxy.stop()


def main(argv: Iterable[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m federation.link_proxy",
        description="Serve fault-injecting peer links; print one JSON line when ready.",
    )
    parser.add_argument("--spec", required=True, help="JSON file: {'links': [...]}")
    parser.add_argument("--control-host", default="127.0.0.1")
    parser.add_argument("--control-port", type=int, help="default: the spec's, else any")
    parser.add_argument("--seed", type=int, default=0, help="seeds each link's jitter")
    args = parser.parse_args(None if argv is None else list(argv))
    with open(args.spec, encoding="utf-8") as f:
        spec = json.load(f)
    port = args.control_port if args.control_port is not None else spec.get("control_port", 0)
    asyncio.run(serve(spec, args.control_host, int(port), args.seed))
    return 0


if __name__ == "__main__":
    sys.exit(main())
