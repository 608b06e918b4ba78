"""CreateTicket throughput with tracing and metrics on against off, side by side.

Four real node processes: one with observability on (RPC metrics and spans, store and
replication spans, exported over OTLP to the embedded collector), one with metrics only
(no ``--otlp-endpoint``, so no spans), and two started with ``--no-observability``: the
second of those ("control") is the same configuration as "off", so its difference from
"off" is what this machine's noise alone makes of two identical nodes. Rounds visit the
nodes in alternating order (off, control, metrics, on, then back), and each round's
overhead is taken against that round's "off": the figures are the median of those paired
overheads and the overhead of the medians. The target is on against off; metrics only
shows how the overhead divides between metrics and traces.

Run: ``.venv/bin/python -m bench.observability [--seconds 3 --rounds 10]``.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from bench.create_ticket import measure
from bench.load import median
from federation.config import load_config
from ops.collector import SpanStore
from ops.metrics import scrape
from ops.processes import ROOT, NodeProcess, free_ports, wait_for

ORDER = ("off", "control", "metrics", "on")
DROPPED = 'sundesk_spans_dropped_total{{reason="{}"}}'


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--in-flight", type=int, default=64)
    args = parser.parse_args()
    on_port, metrics_port, off_port, control_port, collector_port, scrape_port = free_ports(6)
    with tempfile.TemporaryDirectory(prefix="sundesk-bench-") as tmp:
        base = Path(tmp)
        collector = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "ops.collector",
                "--db",
                str(base / "traces.db"),
                "--listen",
                f"127.0.0.1:{collector_port}",
            ],
            cwd=ROOT,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        wait_for("collector", (base / "traces.db").exists)
        nodes = {}
        for name, port, extra in (
            ("on", on_port, ["--otlp-endpoint", f"127.0.0.1:{collector_port}"]),
            ("metrics", metrics_port, []),
            ("off", off_port, ["--no-observability"]),
            ("control", control_port, ["--no-observability"]),
        ):
            config = load_config(None).with_addresses({"velizy": f"127.0.0.1:{port}"})
            path = base / f"{name}.toml"
            path.write_text(config.to_toml())
            nodes[name] = NodeProcess(
                "velizy",
                f"127.0.0.1:{port}",
                base / name,
                path,
                base / f"{name}.log",
                extra_args=[*extra, "--metrics-port", str(scrape_port if name == "on" else 0)],
            ).start()
        rates: dict[str, list[float]] = {name: [] for name in nodes}
        cpu: dict[str, list[float]] = {name: [] for name in nodes}
        try:
            for r in range(args.rounds):
                order = ORDER if r % 2 == 0 else ORDER[::-1]
                for name in order:
                    node = nodes[name]
                    result = asyncio.run(
                        measure(node.address, args.in_flight, args.seconds, node.pid)
                    )
                    rates[name].append(result.rate)
                    cpu[name].append(result.cpu_per_call or 0.0)
                    print(f"round {r + 1}: observability {name:7}  {result.summary()}")
            # Every span the "on" node made reached the collector, none was dropped: the
            # relay and the collector run below the node's priority (ops.priority), and
            # waiting spans must not become lost ones.
            spans = wait_for("the on node's span queue drained", lambda: _drained(scrape_port))
        finally:
            for node in nodes.values():
                node.terminate()
            collector.terminate()
            collector.wait(10)
        store = SpanStore(base / "traces.db")
        stored = store.count()
        store.close()
    off = median(rates["off"])
    for name, what in (
        ("control", "control (no observability, like off)"),
        ("metrics", "metrics only"),
        ("on", "tracing+metrics"),
    ):
        paired = median([1 - x / o for x, o in zip(rates[name], rates["off"], strict=True)])
        print(
            f"{what}: median {median(rates[name]):.0f}/s against off {off:.0f}/s, "
            f"overhead {(1 - median(rates[name]) / off) * 100:.1f}% of medians, "
            f"{paired * 100:.1f}% paired by round" + (" (target <= 10%)" if name == "on" else "")
        )
    on_cpu, off_cpu = median(cpu["on"]), median(cpu["off"])
    print(
        f"median node CPU per call {on_cpu * 1e6:.0f} us with, {off_cpu * 1e6:.0f} us without "
        f"(+{(on_cpu / off_cpu - 1) * 100:.0f}%, the collector's own CPU not included); "
        f"load average {os.getloadavg()[0]:.1f}"
    )
    print(
        f"spans of the on node: {spans['sundesk_spans_exported_total']:.0f} exported, "
        f"{spans[DROPPED.format('queue_full')]:.0f} dropped (queue full), "
        f"{spans[DROPPED.format('export_failed')]:.0f} lost (export failed); "
        f"{stored} in the collector after shutdown"
    )


def _drained(port: int) -> dict[str, float] | None:
    """The node's metrics once no span waits for export (None until then)."""
    values = scrape(port)
    return values if values.get("sundesk_spans_queued", 1) == 0 else None


if __name__ == "__main__":
    main()
