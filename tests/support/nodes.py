"""Real node processes for integration tests: start, wait healthy, kill, restart.

Reads like a script, in the spirit of raft's MakeCluster: ``Federation.start(tmp_path)``,
``fed.node("velizy").kill()``, ``fed.wait_same_digest()``.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, TypeVar

import grpc

from federation.config import FederationConfig, load_config
from ops.client import Client
from sundesk.v1 import federation_pb2

ROOT = Path(__file__).resolve().parents[2]
T = TypeVar("T")


def free_ports(n: int) -> list[int]:
    import socket

    socks = []
    try:
        for _ in range(n):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def wait_for(
    what: str, check: Callable[[], T | None], timeout: float = 20.0, interval: float = 0.02
) -> T:
    """Poll ``check`` until it returns something truthy; fail with ``what`` at the deadline."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = check()
        if last:
            return last
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what} (last: {last!r})")


class NodeProcess:
    def __init__(
        self, region: str, address: str, data_dir: Path, config_path: Path, log_path: Path,
        extra_args: Iterable[str] = (),
    ) -> None:
        self.region = region
        self.address = address
        self.data_dir = data_dir
        self.config_path = config_path
        self.log_path = log_path
        self.extra_args = list(extra_args)
        self.proc: subprocess.Popen[bytes] | None = None

    def command(self) -> list[str]:
        return [
            sys.executable, "-m", "ops.cli", "node", "--region", self.region,
            "--listen", self.address, "--data-dir", str(self.data_dir),
            "--config", str(self.config_path), *self.extra_args,
        ]

    def start(self, wait: bool = True) -> NodeProcess:
        log = self.log_path.open("ab")
        self.proc = subprocess.Popen(
            self.command(), cwd=ROOT, stdout=log, stderr=subprocess.STDOUT,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
        log.close()
        if wait:
            self.wait_healthy()
        return self

    def wait_healthy(self, timeout: float = 20.0) -> None:
        def ready() -> bool:
            if self.proc is not None and self.proc.poll() is not None:
                raise AssertionError(
                    f"node {self.region} exited with {self.proc.returncode}:\n{self.log()}"
                )
            with Client(self.address) as c:
                return c.healthy(timeout=0.5)

        wait_for(f"node {self.region} healthy", ready, timeout)

    def client(self) -> Client:
        return Client(self.address)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-4000:]

    def kill(self) -> None:
        """SIGKILL: no goodbye, no flush."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)

    def terminate(self, timeout: float = 15.0) -> int:
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout)

    def signal(self, sig: int) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def status(self) -> federation_pb2.NodeStatus | None:
        try:
            with self.client() as c:
                resp: federation_pb2.NodeStatus = c.federation.Status(
                    federation_pb2.NodeStatusRequest(), timeout=2
                )
                return resp
        except grpc.RpcError:
            return None


class Federation:
    """A set of real node processes sharing one generated config."""

    def __init__(self, base: Path, config: FederationConfig, regions: list[str]) -> None:
        self.base = base
        self.config = config
        self.config_path = base / "federation.toml"
        self.config_path.write_text(config.to_toml())
        self.nodes = {
            r: NodeProcess(
                r,
                config.region(r).address,
                base / r,
                self.config_path,
                base / f"{r}.log",
            )
            for r in regions
        }

    @classmethod
    def make(
        cls, base: Path, regions: list[str] | None = None, etcd: str | None = None,
        peer_addresses: dict[str, str] | None = None,
    ) -> Federation:
        default = load_config(None)
        names = regions or default.region_names()
        ports = free_ports(2 * len(names))
        addresses = {r: f"127.0.0.1:{ports[i]}" for i, r in enumerate(names)}
        metrics = {r: ports[len(names) + i] for i, r in enumerate(names)}
        config = default.with_addresses(
            addresses, metrics, etcd_endpoints=[etcd] if etcd else None
        )
        return cls(base, config, names)

    def node(self, region: str) -> NodeProcess:
        return self.nodes[region]

    def start(self) -> Federation:
        for n in self.nodes.values():
            n.start(wait=False)
        for n in self.nodes.values():
            n.wait_healthy()
        return self

    def stop(self) -> None:
        for n in self.nodes.values():
            if n.alive:
                try:
                    n.terminate(10)
                except subprocess.TimeoutExpired:
                    n.kill()

    def digests(self) -> dict[str, str]:
        out = {}
        for r, n in self.nodes.items():
            st = n.status()
            out[r] = st.digest if st is not None else "<down>"
        return out

    def wait_same_digest(self, timeout: float = 30.0) -> str:
        def same() -> str | None:
            d = self.digests()
            values = set(d.values())
            return values.pop() if len(values) == 1 and "<down>" not in d.values() else None

        return wait_for("every region to have the same digest", same, timeout, interval=0.1)

    def dump(self) -> str:
        return json.dumps({r: n.log()[-1500:] for r, n in self.nodes.items()}, indent=1)
