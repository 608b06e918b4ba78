"""CreateTicket throughput (durable, 64 in flight) against a bare grpc.aio echo service.

Both servers run as separate processes on loopback and are measured in alternating rounds
in one run, so machine noise hits both alike. Run: ``make bench`` or
``.venv/bin/python -m bench.create_ticket [--seconds 5 --rounds 3]``.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import grpc

from bench.load import Result, closed_loop, median
from federation.config import load_config
from ops.client import Client
from ops.processes import ROOT, NodeProcess, free_ports, wait_for
from sundesk.v1 import desk_pb2 as pb
from sundesk.v1 import desk_pb2_grpc


async def measure(
    address: str, in_flight: int, seconds: float, server_pid: int | None = None
) -> Result:
    async with grpc.aio.insecure_channel(address) as channel:
        stub = desk_pb2_grpc.DeskStub(channel)

        async def call(i: int) -> object:
            return await stub.CreateTicket(
                pb.CreateTicketRequest(title=f"bench ticket {i}", customer="bench", priority=3)
            )

        return await closed_loop(call, in_flight, seconds, server_pid=server_pid)


def start_echo(port: int) -> subprocess.Popen[bytes]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "bench.echo_server", "--listen", f"127.0.0.1:{port}"], cwd=ROOT
    )

    def up() -> bool:
        with Client(f"127.0.0.1:{port}") as c:
            try:
                c.desk.CreateTicket(pb.CreateTicketRequest(title="x"), timeout=0.5)
                return True
            except grpc.RpcError:
                return False

    wait_for("echo server", up)
    return proc


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--in-flight", type=int, default=64)
    parser.add_argument(
        "--node-arg", action="append", default=[], help="extra argument for the node (repeatable)"
    )
    parser.add_argument(
        "--baseline",
        type=Path,
        help="another checkout (e.g. `git archive OLD | tar -x -C DIR`, plus its generated "
        "sundesk/ package) whose node is measured in the same rounds: before/after figures",
    )
    args = parser.parse_args()

    echo_port, node_port, baseline_port = free_ports(3)
    with tempfile.TemporaryDirectory(
        prefix="sundesk-bench-", dir=ROOT / "var" if (ROOT / "var").is_dir() else None
    ) as tmp:
        base = Path(tmp)
        config = load_config(None).with_addresses({"velizy": f"127.0.0.1:{node_port}"})
        config_path = base / "federation.toml"
        config_path.write_text(config.to_toml())
        node = NodeProcess(
            "velizy",
            f"127.0.0.1:{node_port}",
            base / "velizy",
            config_path,
            base / "node.log",
            extra_args=args.node_arg,
        )
        baseline = None
        if args.baseline is not None:
            config = load_config(None).with_addresses({"velizy": f"127.0.0.1:{baseline_port}"})
            (base / "baseline.toml").write_text(config.to_toml())
            baseline = NodeProcess(
                "velizy",
                f"127.0.0.1:{baseline_port}",
                base / "baseline",
                base / "baseline.toml",
                base / "baseline.log",
                extra_args=args.node_arg,
                source=args.baseline.resolve(),
            ).start()
        echo = start_echo(echo_port)
        node.start()
        echo_rates: list[float] = []
        node_rates: list[float] = []
        echo_cpu: list[float] = []
        node_cpu: list[float] = []
        old_rates: list[float] = []
        old_cpu: list[float] = []
        try:
            for r in range(args.rounds):
                e = asyncio.run(
                    measure(f"127.0.0.1:{echo_port}", args.in_flight, args.seconds, echo.pid)
                )
                n = asyncio.run(measure(node.address, args.in_flight, args.seconds, node.pid))
                echo_rates.append(e.rate)
                node_rates.append(n.rate)
                echo_cpu.append(e.cpu_per_call or 0.0)
                node_cpu.append(n.cpu_per_call or 0.0)
                print(f"round {r + 1}: echo        {e.summary()}")
                print(f"round {r + 1}: CreateTicket {n.summary()}")
                if baseline is not None:
                    b = asyncio.run(
                        measure(baseline.address, args.in_flight, args.seconds, baseline.pid)
                    )
                    old_rates.append(b.rate)
                    old_cpu.append(b.cpu_per_call or 0.0)
                    print(f"round {r + 1}: baseline    {b.summary()}")
        finally:
            echo.terminate()
            echo.wait(10)
            node.terminate()
            if baseline is not None:
                baseline.terminate()
    ratio = median(node_rates) / median(echo_rates)
    print(
        f"median echo {median(echo_rates):.0f}/s, CreateTicket {median(node_rates):.0f}/s "
        f"(durable, {args.in_flight} in flight): ratio {ratio:.2f}"
    )
    e_cpu, n_cpu = median(echo_cpu), median(node_cpu)
    print(
        f"median server CPU per call: echo {e_cpu * 1e6:.0f} us, CreateTicket "
        f"{n_cpu * 1e6:.0f} us: CPU ratio {e_cpu / n_cpu:.2f}; load average "
        f"{os.getloadavg()[0]:.1f}"
    )
    if old_rates:
        old, old_c = median(old_rates), median(old_cpu)
        print(
            f"baseline {old:.0f}/s: ratio {old / median(echo_rates):.2f}; CPU per call "
            f"{old_c * 1e6:.0f} us: CPU ratio {e_cpu / old_c:.2f}"
        )


if __name__ == "__main__":
    main()
