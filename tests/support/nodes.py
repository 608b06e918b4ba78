"""Real node processes for integration tests: start, wait healthy, kill, restart.

Reads like a script, in the spirit of raft's MakeCluster: ``Federation.start(tmp_path)``,
``fed.node("velizy").kill()``, ``fed.wait_same_digest()``.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path

from federation.config import FederationConfig, load_config
from ops.credentials import ClientCredentials, from_certs_dir, mint_token
from ops.processes import ROOT, NodeProcess, free_ports, wait_for

__all__ = ["ROOT", "Federation", "NodeProcess", "free_ports", "wait_for"]


class Federation:
    """A set of real node processes sharing one generated config.

    Nodes run plaintext (``--insecure``) unless ``tls_dir`` names a certs directory: then
    they serve mTLS with tokens and signed operations, and the helper's own health and
    status calls present the CLI certificate with an ops token.
    """

    def __init__(
        self,
        base: Path,
        config: FederationConfig,
        regions: list[str],
        proxied: bool = False,
        extra_args: list[str] | None = None,
        tls_dir: Path | None = None,
    ) -> None:
        self.base = base
        self.tls_dir = tls_dir
        self.config = config
        self.config_path = base / "federation.toml"
        self.config_path.write_text(config.to_toml())
        self.proxy: subprocess.Popen[bytes] | None = None
        self.control_port = 0
        peer_args: dict[str, list[str]] = {r: [] for r in regions}
        if proxied:
            peer_args = self._start_proxies(regions)
        self.nodes = {
            r: NodeProcess(
                r,
                config.region(r).address,
                base / r,
                self.config_path,
                base / f"{r}.log",
                extra_args=[*peer_args[r], *(extra_args or [])],
                credentials=self.credentials("ops"),
                tls_dir=tls_dir,
            )
            for r in regions
        }

    def credentials(self, role: str, subject: str = "") -> ClientCredentials | None:
        """The CLI certificate with a fresh token of ``role``; None for plaintext nodes."""
        if self.tls_dir is None:
            return None
        return from_certs_dir(self.tls_dir, mint_token(self.tls_dir, role, subject))

    def _start_proxies(self, regions: list[str]) -> dict[str, list[str]]:
        """One fault-injecting proxy per directed link, all in one helper process."""
        pairs = [(a, b) for a in regions for b in regions if a != b]
        ports = free_ports(len(pairs) + 1)
        self.control_port = ports[-1]
        links = []
        args: dict[str, list[str]] = {r: [] for r in regions}
        for (src, dst), port in zip(pairs, ports, strict=False):
            links.append(
                {
                    "from": src,
                    "to": dst,
                    "listen_port": port,
                    "target": self.config.region(dst).address,
                    "delay": 0.0,
                }
            )
            args[src] += ["--peer", f"{dst}=127.0.0.1:{port}"]
        spec = self.base / "links.json"
        spec.write_text(json.dumps({"links": links, "control_port": self.control_port}))
        log = (self.base / "proxy.log").open("ab")
        self.proxy = subprocess.Popen(
            [sys.executable, "-m", "federation.link_proxy", "--spec", str(spec)],
            cwd=ROOT,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        log.close()
        wait_for("link proxies", lambda: self._control({"op": "stats"}) is not None)
        return args

    def _control(self, command: dict[str, object]) -> dict[str, object] | None:
        from federation.link_proxy import LinkControlError, control

        try:
            return control("127.0.0.1", self.control_port, command)
        except (OSError, LinkControlError):
            return None

    def cut(self, a: str, b: str) -> None:
        """Blackhole both directions of the a–b link."""
        for src, dst in ((a, b), (b, a)):
            assert self._control({"op": "cut", "from": src, "to": dst}) is not None

    def heal(self, a: str, b: str) -> None:
        for src, dst in ((a, b), (b, a)):
            assert self._control({"op": "heal", "from": src, "to": dst}) is not None

    def isolate(self, region: str) -> None:
        for other in self.nodes:
            if other != region:
                self.cut(region, other)

    def heal_all(self) -> None:
        for a in self.nodes:
            for b in self.nodes:
                if a < b:
                    self.heal(a, b)

    @classmethod
    def make(
        cls,
        base: Path,
        regions: list[str] | None = None,
        etcd: str | None = None,
        proxied: bool = False,
        extra_args: list[str] | None = None,
        tls_dir: Path | None = None,
    ) -> Federation:
        default = load_config(None)
        names = regions or default.region_names()
        ports = free_ports(2 * len(names))
        addresses = {r: f"127.0.0.1:{ports[i]}" for i, r in enumerate(names)}
        metrics = {r: ports[len(names) + i] for i, r in enumerate(names)}
        config = default.with_addresses(addresses, metrics, etcd_endpoints=[etcd] if etcd else None)
        return cls(base, config, names, proxied=proxied, extra_args=extra_args, tls_dir=tls_dir)

    def node(self, region: str) -> NodeProcess:
        return self.nodes[region]

    def start(self) -> Federation:
        for n in self.nodes.values():
            n.start(wait=False)
        for n in self.nodes.values():
            n.wait_healthy()
        return self

    def stop(self) -> None:
        """SIGTERM every node at once, then wait: stopping in turn would make each node
        hand its queues to the next one about to stop."""
        running = [n for n in self.nodes.values() if n.alive]
        for n in running:
            n.signal(signal.SIGCONT)
            n.signal(signal.SIGTERM)
        for n in running:
            try:
                n.terminate(15)
            except subprocess.TimeoutExpired:
                n.kill()
        if self.proxy is not None:
            self.proxy.terminate()
            self.proxy.wait(10)

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


def kill_during_burst(node: NodeProcess, total: int, kill_after: int, customer: str) -> list[str]:
    """Send ``total`` concurrent creates; SIGKILL the node once ``kill_after`` are acknowledged.

    Returns the codes the node acknowledged before it died.
    """
    import asyncio

    import grpc

    from sundesk.v1 import desk_pb2 as pb
    from sundesk.v1 import desk_pb2_grpc

    acked: list[str] = []

    async def burst() -> None:
        enough = asyncio.Event()
        async with grpc.aio.insecure_channel(node.address) as ch:
            stub = desk_pb2_grpc.DeskStub(ch)

            async def one(i: int) -> None:
                try:
                    t = await stub.CreateTicket(
                        pb.CreateTicketRequest(title=f"{customer} {i}", customer=customer)
                    )
                except grpc.aio.AioRpcError:
                    return
                acked.append(t.code)
                if len(acked) >= kill_after:
                    enough.set()

            tasks = [asyncio.create_task(one(i)) for i in range(total)]
            await asyncio.wait_for(enough.wait(), 60)
            node.kill()
            await asyncio.gather(*tasks)

    asyncio.run(burst())
    return acked
