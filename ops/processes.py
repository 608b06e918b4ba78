"""Node processes on this machine: start, wait until healthy, signal, stop.

Used by ``sundesk local``, the integration tests and the benchmarks alike.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, TypeVar

import grpc

from ops.client import Client
from ops.credentials import ClientCredentials
from sundesk.v1 import federation_pb2

ROOT = Path(__file__).resolve().parents[1]
T = TypeVar("T")


# Ports this process has handed out. Sockets are closed before their users bind them, so
# without this a later call (the WAN proxies after the nodes' ports, say) could be given a
# port an earlier caller has not bound yet: two listeners on one port, one of them lost.
_HANDED_OUT: set[int] = set()


def free_ports(n: int) -> list[int]:
    """``n`` distinct loopback ports that were free a moment ago and that no earlier call
    in this process returned."""
    socks: list[socket.socket] = []
    found: list[int] = []
    try:
        while len(found) < n:
            if len(socks) > n + 1000:
                raise OSError(f"found only {len(found)} of {n} free loopback ports")
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            socks.append(s)  # held open until all are found: distinct within one call
            port = s.getsockname()[1]
            if port not in _HANDED_OUT:
                found.append(port)
    finally:
        for s in socks:
            s.close()
    _HANDED_OUT.update(found)
    return found


def wait_for(
    what: str, check: Callable[[], T | None], timeout: float = 20.0, interval: float = 0.02
) -> T:
    """Poll ``check`` until it returns something truthy; fail naming ``what`` at the deadline."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = check()
        if last:
            return last
        time.sleep(interval)
    raise TimeoutError(f"timed out after {timeout}s waiting for {what} (last: {last!r})")


class NodeProcess:
    """One ``sundesk node`` child process, logging to a file.

    ``tls_dir`` is the node's ``--tls-dir``; None starts it ``--insecure`` (plaintext, for
    tests and benchmarks that say so). ``credentials`` are what health checks and status
    calls present to a secure node.
    """

    def __init__(
        self,
        region: str,
        address: str,
        data_dir: Path,
        config_path: Path,
        log_path: Path,
        extra_args: Iterable[str] = (),
        credentials: ClientCredentials | None = None,
        tls_dir: Path | None = None,
        source: Path = ROOT,
    ) -> None:
        self.region = region
        self.source = source  # the checkout whose code runs (benchmarks compare two)
        self.address = address
        self.data_dir = data_dir
        self.config_path = config_path
        self.log_path = log_path
        self.extra_args = list(extra_args)
        self.credentials = credentials
        self.tls_dir = tls_dir
        self.proc: subprocess.Popen[bytes] | None = None
        self.pid: int | None = None

    def command(self) -> list[str]:
        return [
            sys.executable,
            "-m",
            "ops.cli",
            "node",
            "--region",
            self.region,
            "--listen",
            self.address,
            "--data-dir",
            str(self.data_dir),
            "--config",
            str(self.config_path),
            *(["--tls-dir", str(self.tls_dir)] if self.tls_dir else ["--insecure"]),
            *self.extra_args,
        ]

    def start(self, wait: bool = True, detach: bool = False) -> NodeProcess:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                self.command(),
                cwd=self.source,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env={**os.environ, "PYTHONUNBUFFERED": "1"},
                start_new_session=detach,
            )
        self.pid = self.proc.pid
        if wait:
            self.wait_healthy()
        return self

    def wait_healthy(self, timeout: float = 20.0) -> None:
        def ready() -> bool:
            if self.proc is not None and self.proc.poll() is not None:
                raise RuntimeError(
                    f"node {self.region} exited with {self.proc.returncode}:\n{self.log()}"
                )
            with self.client() as c:
                return c.healthy(timeout=0.5)

        wait_for(f"node {self.region} healthy", ready, timeout)

    def client(self) -> Client:
        return Client(self.address, self.credentials)

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

    def status(self, timeout: float = 2.0) -> federation_pb2.NodeStatus | None:
        try:
            with self.client() as c:
                resp: federation_pb2.NodeStatus = c.federation.Status(
                    federation_pb2.NodeStatusRequest(), timeout=timeout
                )
                return resp
        except grpc.RpcError:
            return None
