"""`sundesk local`: a whole federation on this machine, as background processes.

``up`` starts a real etcd, the embedded trace collector, optionally the WAN delay proxies,
and the five regional nodes on loopback, then returns once every node is healthy. The
state (pids, addresses, ports) lives in ``DIR/state.json`` so later commands find them.

Secure by default: the first ``up`` runs ``certs init`` into ``DIR/certs``; etcd then
requires client certificates, every node serves mTLS with tokens and signs its
operations, and the CLI finds the credentials there (``$SUNDESK_HOME``, default
``var/local``). ``--insecure`` runs all of it plaintext, as the tests of other parts do.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from federation.config import load_config
from node.errors import FailedPrecondition, InvalidArgument, SundeskError
from ops.certs import CertPaths, init_certs
from ops.client import print_table
from ops.credentials import ClientCredentials, from_certs_dir, mint_token, sundesk_home
from ops.etcd_process import EtcdServer, EtcdTlsFiles
from ops.processes import ROOT, NodeProcess, free_ports, wait_for

DEFAULT_DIR = ROOT / "var" / "local"


@dataclass
class LocalFederation:
    base: Path

    @property
    def state_path(self) -> Path:
        return self.base / "state.json"

    def load(self) -> dict[str, Any]:
        if not self.state_path.exists():
            raise FailedPrecondition(
                f"no local federation in {self.base}; start one with `sundesk local up`"
            )
        state: dict[str, Any] = json.loads(self.state_path.read_text())
        return state

    def save(self, state: dict[str, Any]) -> None:
        self.base.mkdir(parents=True, exist_ok=True)
        tmp = self.state_path.with_suffix(".tmp")
        tmp.write_text(json.dumps(state, indent=2))
        tmp.replace(self.state_path)

    def node_process(self, state: dict[str, Any], region: str) -> NodeProcess:
        if region not in state["nodes"]:
            raise InvalidArgument(
                f"no region {region!r} here; regions: {', '.join(state['nodes'])}"
            )
        n = state["nodes"][region]
        certs = Path(state["certs"]) if state.get("certs") else None
        return NodeProcess(
            region,
            n["address"],
            Path(n["data_dir"]),
            Path(state["config"]),
            Path(n["log"]),
            extra_args=n["args"],
            credentials=operator_credentials(certs),
            tls_dir=certs,
        )


def operator_credentials(certs: Path | None, role: str = "ops") -> ClientCredentials | None:
    """What this machine's operator presents to the local nodes (None: plaintext)."""
    if certs is None:
        return None
    return from_certs_dir(certs, mint_token(certs, role))


def etcd_tls(certs: Path) -> EtcdTlsFiles:
    paths = CertPaths(certs)
    return EtcdTlsFiles(
        paths.ca_cert,
        paths.etcd_server_cert,
        paths.etcd_server_key,
        paths.etcd_client_cert,
        paths.etcd_client_key,
    )


def pid_alive(pid: int | None) -> bool:
    if not pid:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie child (we started it and never waited) is not alive.
    with contextlib.suppress(OSError):
        stat = Path(f"/proc/{pid}/stat").read_text()
        if stat.rsplit(")", 1)[1].split()[0] == "Z":
            return False
    return True


def _signal(pid: int | None, sig: int) -> None:
    if pid_alive(pid):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)  # type: ignore[arg-type]


def _wait_gone(pid: int | None, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while pid_alive(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    if pid_alive(pid):
        _signal(pid, signal.SIGKILL)


def up(
    base: Path,
    wan: bool = False,
    clock_start: str = "",
    speed: float = 1.0,
    regions: list[str] | None = None,
    collector: bool = True,
    insecure: bool = False,
) -> dict[str, Any]:
    fed = LocalFederation(base)
    if fed.state_path.exists():
        previous = fed.load()
        if any(pid_alive(n.get("pid")) for n in previous["nodes"].values()):
            raise FailedPrecondition(
                f"a local federation is already running in {base}; `sundesk local down` first"
            )
    base.mkdir(parents=True, exist_ok=True)
    default = load_config(None)
    names = regions or default.region_names()
    ports = free_ports(2 * len(names))
    addresses = {r: f"127.0.0.1:{ports[i]}" for i, r in enumerate(names)}
    metrics = {r: ports[len(names) + i] for i, r in enumerate(names)}

    certs: Path | None = None
    if not insecure:
        # Keeps what exists: a second `up` reuses the CA, keys and tokens of the first.
        certs = init_certs(base / "certs", default.region_names()).dir
    etcd = EtcdServer(
        data_dir=base / "etcd",
        name="sundesk-local",
        detach=True,
        tls=etcd_tls(certs) if certs else None,
    ).start()
    state: dict[str, Any] = {
        "created": datetime.now(UTC).isoformat(),
        "etcd": {"pid": etcd.pid, "endpoint": etcd.endpoint, "tls": certs is not None},
        "nodes": {},
        "wan": wan,
        "certs": str(certs) if certs else None,
    }
    config = default.with_addresses(addresses, metrics, etcd_endpoints=[etcd.endpoint])
    config_path = base / "federation.toml"
    config_path.write_text(config.to_toml())
    state["config"] = str(config_path)

    common: list[str] = []
    if collector:
        state["collector"] = _start_collector(base)
        common += ["--otlp-endpoint", state["collector"]["endpoint"]]
    if clock_start:
        common += [
            "--clock-start",
            clock_start,
            "--speed",
            str(speed),
            "--clock-origin",
            repr(time.time()),
        ]
        state["clock"] = {"start": clock_start, "speed": speed}
    peer_args: dict[str, list[str]] = {r: [] for r in names}
    if wan:
        state["proxy"], routes = _start_proxies(base, addresses)
        for (src, dst), address in routes.items():
            peer_args[src] += ["--peer", f"{dst}={address}"]

    procs = []
    for r in names:
        args = [*common, "--metrics-port", str(metrics[r]), *peer_args[r]]
        node = NodeProcess(
            r,
            addresses[r],
            base / r,
            config_path,
            base / f"{r}.log",
            args,
            credentials=operator_credentials(certs),
            tls_dir=certs,
        )
        node.start(wait=False, detach=True)
        procs.append(node)
        state["nodes"][r] = {
            "pid": node.pid,
            "address": addresses[r],
            "metrics": metrics[r],
            "data_dir": str(base / r),
            "log": str(base / f"{r}.log"),
            "args": args,
        }
    fed.save(state)
    for node in procs:
        node.wait_healthy(timeout=30)
    return state


def _start_collector(base: Path) -> dict[str, Any]:
    port = free_ports(1)[0]
    log = (base / "collector.log").open("ab")
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "ops.collector",
            "--db",
            str(base / "traces.db"),
            "--listen",
            f"127.0.0.1:{port}",
        ],
        cwd=ROOT,
        stdout=log,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        start_new_session=True,
    )
    log.close()
    return {"pid": proc.pid, "endpoint": f"127.0.0.1:{port}", "db": str(base / "traces.db")}


def _start_proxies(
    base: Path, addresses: dict[str, str]
) -> tuple[dict[str, Any], dict[tuple[str, str], str]]:
    """One delay proxy per ordered pair of regions, in one background process."""
    from federation.wan import one_way_delay

    names = list(addresses)
    pairs = [(a, b) for a in names for b in names if a != b]
    ports = free_ports(len(pairs) + 1)
    control_port = ports[-1]
    links = []
    routes: dict[tuple[str, str], str] = {}
    for (src, dst), port in zip(pairs, ports, strict=False):
        links.append(
            {
                "from": src,
                "to": dst,
                "listen_port": port,
                "target": addresses[dst],
                "delay": one_way_delay(src, dst),
            }
        )
        routes[(src, dst)] = f"127.0.0.1:{port}"
    spec = base / "wan.json"
    spec.write_text(json.dumps({"links": links, "control_port": control_port}))
    log = (base / "proxy.log").open("ab")
    proc = subprocess.Popen(
        [sys.executable, "-m", "federation.link_proxy", "--spec", str(spec)],
        cwd=ROOT,
        stdout=log,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        start_new_session=True,
    )
    log.close()
    return {"pid": proc.pid, "control_port": control_port, "spec": str(spec)}, routes


def status(base: Path) -> list[dict[str, Any]]:
    fed = LocalFederation(base)
    state = fed.load()
    rows = []
    for region in state["nodes"]:
        node = fed.node_process(state, region)
        info = state["nodes"][region]
        st = node.status(timeout=1.0) if pid_alive(info["pid"]) else None
        rows.append(
            {
                "region": region,
                "address": info["address"],
                "pid": info["pid"] if pid_alive(info["pid"]) else None,
                "healthy": st is not None,
                "tickets": st.tickets if st else None,
                "digest": st.digest if st else None,
                "version_vector": dict(st.version_vector) if st else {},
                "metrics": f"http://127.0.0.1:{info['metrics']}/metrics",
                "peers": {
                    p: {"connected": ps.connected, "backlog": ps.backlog}
                    for p, ps in (st.peers.items() if st else [])
                },
            }
        )
    return rows


def kill(base: Path, region: str) -> None:
    fed = LocalFederation(base)
    state = fed.load()
    fed.node_process(state, region)  # validates the name
    pid = state["nodes"][region]["pid"]
    if not pid_alive(pid):
        raise FailedPrecondition(f"{region} is not running")
    _signal(pid, signal.SIGKILL)
    _wait_gone(pid)


def start(base: Path, region: str) -> None:
    fed = LocalFederation(base)
    state = fed.load()
    node = fed.node_process(state, region)
    if pid_alive(state["nodes"][region]["pid"]):
        raise FailedPrecondition(f"{region} is already running")
    node.start(wait=False, detach=True)
    state["nodes"][region]["pid"] = node.pid
    fed.save(state)
    node.wait_healthy(timeout=30)


def down(base: Path) -> None:
    fed = LocalFederation(base)
    state = fed.load()
    pids = [n["pid"] for n in state["nodes"].values()]
    for pid in pids:
        _signal(pid, signal.SIGTERM)
    for pid in pids:
        _wait_gone(pid, 15)
    for extra in ("proxy", "collector", "etcd"):
        pid = state.get(extra, {}).get("pid")
        _signal(pid, signal.SIGTERM)
        _wait_gone(pid)
    state["stopped"] = datetime.now(UTC).isoformat()
    for n in state["nodes"].values():
        n["pid"] = None
    fed.save(state)


# ----- command line ----------------------------------------------------------------------


def add_parser(sub: Any) -> None:
    local = sub.add_parser("local", help="a whole federation on this machine")
    lsub = local.add_subparsers(dest="local_cmd", required=True, metavar="COMMAND")
    dir_arg = argparse.ArgumentParser(add_help=False)
    dir_arg.add_argument("--dir", default=str(sundesk_home()), help="state and data directory")

    p = lsub.add_parser("up", parents=[dir_arg], help="start etcd and the five nodes")
    p.add_argument("--wan", action="store_true", help="route peer links through delay proxies")
    p.add_argument("--clock-start", default="", help="simulated clock start (ISO 8601)")
    p.add_argument("--speed", type=float, default=1.0)
    p.add_argument(
        "--insecure", action="store_true", help="plaintext everywhere (no certs, no tokens)"
    )
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=_cmd_up)
    p = lsub.add_parser("status", parents=[dir_arg], help="every node's health and digest")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=_cmd_status)
    for verb, help_text in (
        ("kill", "SIGKILL one region's node"),
        ("start", "start one region's node again"),
    ):
        p = lsub.add_parser(verb, parents=[dir_arg], help=help_text)
        p.add_argument("region")
        p.set_defaults(func=_cmd_kill if verb == "kill" else _cmd_start)
    p = lsub.add_parser("down", parents=[dir_arg], help="stop everything")
    p.set_defaults(func=_cmd_down)


def _cmd_up(args: argparse.Namespace) -> int:
    try:
        state = up(
            Path(args.dir),
            wan=args.wan,
            clock_start=args.clock_start,
            speed=args.speed,
            insecure=args.insecure,
        )
    except (RuntimeError, TimeoutError) as exc:
        raise SundeskError(f"local federation did not start: {exc}") from exc
    if args.json:
        print(json.dumps(state, indent=2))
    else:
        trust = (
            f"mTLS, tokens, signed operations ({state['certs']})"
            if state["certs"]
            else ("PLAINTEXT (--insecure)")
        )
        print(f"etcd {state['etcd']['endpoint']}; {trust}; nodes:")
        for r, n in state["nodes"].items():
            print(f"  {r:8} {n['address']}  metrics :{n['metrics']}  pid {n['pid']}")
    return 0


def _cmd_status(args: argparse.Namespace) -> int:
    rows = status(Path(args.dir))
    if args.json:
        print(json.dumps({"nodes": rows}, indent=2))
        return 0
    print_table(
        ["region", "address", "pid", "healthy", "tickets", "digest", "applied"],
        [
            [
                r["region"],
                r["address"],
                r["pid"] or "-",
                "yes" if r["healthy"] else "NO",
                r["tickets"] if r["tickets"] is not None else "-",
                (r["digest"] or "-")[:12],
                " ".join(f"{o}:{s}" for o, s in sorted(r["version_vector"].items())),
            ]
            for r in rows
        ],
    )
    return 0


def _cmd_kill(args: argparse.Namespace) -> int:
    kill(Path(args.dir), args.region)
    return 0


def _cmd_start(args: argparse.Namespace) -> int:
    start(Path(args.dir), args.region)
    return 0


def _cmd_down(args: argparse.Namespace) -> int:
    down(Path(args.dir))
    return 0


__all__ = ["LocalFederation", "add_parser", "down", "kill", "start", "status", "up", "wait_for"]
