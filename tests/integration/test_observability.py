"""Global ops see the federation: a real Prometheus scrapes five nodes, and one ticket's
trace gathers the work of every region in the embedded collector."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from node import native
from ops.collector import SpanStore, ticket_trace
from ops.metrics import scrape
from ops.priority import BACKGROUND_NICENESS
from sundesk.v1 import desk_pb2 as pb
from tests.support.nodes import ROOT, Federation, free_ports, wait_for

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def collector(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path]]:
    base = tmp_path_factory.mktemp("collector")
    port = free_ports(1)[0]
    db = base / "traces.db"
    proc = subprocess.Popen(
        [sys.executable, "-m", "ops.collector", "--db", str(db), "--listen", f"127.0.0.1:{port}"],
        cwd=ROOT,
        stdout=(base / "collector.log").open("wb"),
        stderr=subprocess.STDOUT,
    )
    wait_for("collector database", db.exists)
    yield f"127.0.0.1:{port}", db
    proc.terminate()
    proc.wait(10)


@pytest.fixture(scope="module")
def fed(
    tmp_path_factory: pytest.TempPathFactory, collector: tuple[str, Path]
) -> Iterator[Federation]:
    f = Federation.make(
        tmp_path_factory.mktemp("observed"), extra_args=["--otlp-endpoint", collector[0]]
    )
    f.start()
    yield f
    f.stop()


def test_one_trace_per_ticket_with_apply_spans_from_every_region(
    fed: Federation, collector: tuple[str, Path]
) -> None:
    with fed.node("velizy").client() as c:
        code = c.desk.CreateTicket(pb.CreateTicketRequest(title="traced", customer="acme")).code
    with fed.node("japan").client() as c:
        wait_for(f"{code} in Japan", lambda: _exists(c, code))
        c.desk.AddComment(pb.AddCommentRequest(code=code, author="kenji", text="looking"))
    store = SpanStore(collector[1])
    try:

        def complete() -> dict | None:
            trace = ticket_trace(store, code)
            regions = {s["region"] for s in trace["spans"] if s["name"] == "replication.apply"}
            return trace if regions == set(fed.nodes) else None

        trace = wait_for("apply spans from all five regions in one trace", complete, timeout=30)
    finally:
        store.close()
    names = {s["name"] for s in trace["spans"]}
    assert {"sundesk.v1.Desk/CreateTicket", "store.commit", "replication.apply"} <= names
    assert "ticket.change" in names  # Japan's comment joined the ticket's trace
    ids = {s["span_id"] for s in trace["spans"]}
    roots = [s for s in trace["spans"] if not s["parent"] or s["parent"] not in ids]
    assert len(roots) == 1 and roots[0]["name"] == "sundesk.v1.Desk/CreateTicket"
    assert roots[0]["region"] == "velizy"
    shown = subprocess.run(
        [
            sys.executable,
            "-m",
            "ops.cli",
            "ops",
            "trace",
            code,
            "--db",
            str(collector[1]),
            "--json",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert shown.returncode == 0, shown.stderr
    assert json.loads(shown.stdout)["trace_id"] == trace["trace_id"]


def _exists(c, code: str) -> bool:  # type: ignore[no-untyped-def]
    import grpc

    try:
        c.desk.GetTicket(pb.GetTicketRequest(code=code), timeout=2)
        return True
    except grpc.RpcError:
        return False


@pytest.fixture
def prometheus(fed: Federation, tmp_path: Path) -> Iterator[str]:
    binary = shutil.which("prometheus")
    assert binary, "prometheus is not installed: `apt-get install prometheus` (done by .ci/run)"
    port = free_ports(1)[0]
    targets = "\n".join(
        f"      - targets: ['127.0.0.1:{fed.config.region(r).metrics_port}']\n"
        f"        labels: {{region: '{r}'}}"
        for r in fed.nodes
    )
    config = tmp_path / "prometheus.yml"
    config.write_text(
        "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n"
        "scrape_configs:\n  - job_name: sundesk\n    static_configs:\n" + targets + "\n"
    )
    proc = subprocess.Popen(
        [
            binary,
            f"--config.file={config}",
            f"--storage.tsdb.path={tmp_path / 'tsdb'}",
            f"--web.listen-address=127.0.0.1:{port}",
        ],
        stdout=(tmp_path / "prometheus.log").open("wb"),
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_for("prometheus ready", lambda: _get(f"{url}/-/ready") is not None, timeout=60)
        yield url
    finally:
        proc.terminate()
        proc.wait(20)


def _get(url: str) -> bytes | None:
    try:
        with urllib.request.urlopen(url, timeout=2) as reply:
            body: bytes = reply.read()
            return body
    except OSError:
        return None


def test_prometheus_finds_a_ticket_counter_per_region(fed: Federation, prometheus: str) -> None:
    for region, node in fed.nodes.items():
        with node.client() as c:
            c.desk.CreateTicket(pb.CreateTicketRequest(title=f"counted in {region}"))
    query = urllib.parse.quote("sum by (region) (sundesk_tickets_created_total)")

    def per_region() -> dict[str, float] | None:
        body = _get(f"{prometheus}/api/v1/query?query={query}")
        if body is None:
            return None
        result = json.loads(body)["data"]["result"]
        values = {r["metric"]["region"]: float(r["value"][1]) for r in result}
        return values if set(values) == set(fed.nodes) and all(values.values()) else None

    values = wait_for("a ticket counter per region in Prometheus", per_region, timeout=60)
    assert all(v >= 1 for v in values.values())


def _children(pid: int) -> list[int]:
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            # pid (comm) state ppid ...: comm may hold spaces, so read after its ")".
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue  # a process that has just exited
        if int(fields[1]) == pid:
            found.append(int(stat.parent.name))
    return found


def test_span_export_runs_below_the_node_and_every_span_is_counted(
    fed: Federation, collector: tuple[str, Path]
) -> None:
    node = fed.node("uk")
    with node.client() as c:
        c.desk.CreateTicket(pb.CreateTicketRequest(title="exported", customer="acme"))
    port = fed.config.region("uk").metrics_port

    def exported() -> dict[str, float] | None:
        values = scrape(port)
        return values if values["sundesk_spans_exported_total"] > 0 else None

    values = wait_for("uk's spans exported", exported, timeout=30)
    assert values['sundesk_spans_dropped_total{reason="queue_full"}'] == 0
    assert values['sundesk_spans_dropped_total{reason="export_failed"}'] == 0
    assert "sundesk_spans_queued" in values
    assert node.pid is not None
    own = os.getpriority(os.PRIO_PROCESS, node.pid)
    relays = [p for p in _children(node.pid) if b"ops.span_relay" in _cmdline(p)]
    assert len(relays) == 1
    assert os.getpriority(os.PRIO_PROCESS, relays[0]) == max(own, BACKGROUND_NICENESS)
    (collector_pid,) = [p for p in _children(os.getpid()) if b"ops.collector" in _cmdline(p)]
    assert os.getpriority(os.PRIO_PROCESS, collector_pid) >= BACKGROUND_NICENESS


def test_each_node_says_whether_it_runs_compiled(fed: Federation) -> None:
    values = scrape(fed.config.region("japan").metrics_port)
    assert values['sundesk_compiled_modules{state="fresh"}'] == len(native.compiled())
    assert values['sundesk_compiled_modules{state="stale"}'] == 0


def _cmdline(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return b""
