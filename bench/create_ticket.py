"""CreateTicket throughput (durable, 64 in flight) against a bare grpc.aio echo service.

Both servers run as separate processes on loopback and are measured in alternating rounds
in one run, each round in the opposite order of the one before, so machine noise hits
both alike. It prints the ratio of the two medians and the median of the rounds' own
ratios (each round's two measurements are seconds apart; this machine's speed drifts by
10% and more over minutes). Run: ``make bench`` or
``.venv/bin/python -m bench.create_ticket [--seconds 4 --rounds 8]``.
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
    parser.add_argument("--seconds", type=float, default=4.0)
    parser.add_argument("--rounds", type=int, default=8)
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
        targets = {"echo": (f"127.0.0.1:{echo_port}", echo.pid), "node": (node.address, node.pid)}
        if baseline is not None:
            targets["baseline"] = (baseline.address, baseline.pid)
        labels = {"echo": "echo        ", "node": "CreateTicket", "baseline": "baseline    "}
        rates: dict[str, list[float]] = {name: [] for name in targets}
        cpu: dict[str, list[float]] = {name: [] for name in targets}
        try:
            for r in range(args.rounds):
                # Every other round in the opposite order: whatever drifts during a round
                # (other load, the machine's speed) favours neither server.
                order = list(targets) if r % 2 == 0 else list(reversed(targets))
                for name in order:
                    address, pid = targets[name]
                    result = asyncio.run(measure(address, args.in_flight, args.seconds, pid))
                    rates[name].append(result.rate)
                    cpu[name].append(result.cpu_per_call or 0.0)
                    print(f"round {r + 1}: {labels[name]} {result.summary()}")
                print(f"round {r + 1}: ratio {rates['node'][-1] / rates['echo'][-1]:.2f}")
        finally:
            echo.terminate()
            echo.wait(10)
            node.terminate()
            if baseline is not None:
                baseline.terminate()
    echo_rates, node_rates = rates["echo"], rates["node"]
    paired = [n / e for n, e in zip(node_rates, echo_rates, strict=True)]
    ratio = median(node_rates) / median(echo_rates)
    print(
        f"median echo {median(echo_rates):.0f}/s, CreateTicket {median(node_rates):.0f}/s "
        f"(durable, {args.in_flight} in flight): ratio {ratio:.2f}; paired by round: median "
        f"{median(paired):.2f} (rounds {min(paired):.2f} to {max(paired):.2f})"
    )
    e_cpu, n_cpu = median(cpu["echo"]), median(cpu["node"])
    print(
        f"median server CPU per call: echo {e_cpu * 1e6:.0f} us, CreateTicket "
        f"{n_cpu * 1e6:.0f} us: CPU ratio {e_cpu / n_cpu:.2f}; load average "
        f"{os.getloadavg()[0]:.1f}"
    )
    if baseline is not None:
        old, old_c = median(rates["baseline"]), median(cpu["baseline"])
        print(
            f"baseline {old:.0f}/s: ratio {old / median(echo_rates):.2f}; CPU per call "
            f"{old_c * 1e6:.0f} us: CPU ratio {e_cpu / old_c:.2f}"
        )


if __name__ == "__main__":
    main()
