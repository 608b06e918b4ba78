"""Prometheus metrics of one regional node, in a registry of its own.

Every metric lives in the ``CollectorRegistry`` the ``Metrics`` object was built with (a
fresh one by default), never in prometheus_client's global registry: two nodes in one
process (tests, benchmarks) keep separate numbers, and the node's wiring hands the object
to whatever records into it.

Naming follows https://prometheus.io/docs/practices/naming/: the ``sundesk_`` prefix,
``_total`` on counters, base units (seconds) with the unit as suffix. Every label has a
small, known set of values: regions, queues (one per home region), ticket states, tiers,
status codes, on-call names. Ticket codes, customers and operation ids never become
labels; they belong on spans. The node's region is not a label on every series (that is
the scraper's target label) but is exposed once, as ``sundesk_node_info{region=...}``.
"""

from __future__ import annotations

import threading
import urllib.request
from bisect import bisect_left
from collections.abc import Callable, Iterable, Mapping
from typing import Any
from wsgiref.simple_server import WSGIServer

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    Info,
    generate_latest,
)
from prometheus_client import start_http_server as _serve_registry
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.utils import floatToGoString

# RPCs: a local SQLite read is well under a millisecond, a durable write a few, a large
# page or a slow disk up to seconds.
RPC_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
# One SQLite transaction, fsync included.
COMMIT_BUCKETS = (1e-4, 2.5e-4, 5e-4, 1e-3, 2.5e-3, 5e-3, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0)
# Operations per store transaction: one for a local write, up to a replication batch.
BATCH_SIZE_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)
# Commit at the origin to apply here: milliseconds on a LAN, WAN one-way delays when
# healthy, minutes to hours when a region was cut off and catches up. Fine below 0.3 s,
# where the targets are (50 ms on loopback, largest one-way delay + 50 ms on the WAN), so
# percentiles read from the buckets (bench/replication.py) are close to exact.
LAG_BUCKETS = (
    *(0.001, 0.0025, 0.005, 0.0075, 0.01, 0.015, 0.02, 0.025, 0.03, 0.04, 0.05, 0.075),
    *(0.1, 0.125, 0.15, 0.175, 0.2, 0.25, 0.3, 0.4, 0.5, 0.75, 1, 2.5, 5, 10, 30, 60),
    *(300, 900, 3600),
)
# A person acknowledging a handoff: seconds when at the desk, up to hours after hours.
ACK_BUCKETS = (5, 15, 30, 60, 120, 300, 600, 900, 1800, 3600, 7200, 14400)

LEASE_STATES = ("alive", "expiring", "lost")
TIERS = ("bronze", "silver", "gold", "platinum")  # node.tickets.Tier


class _LoopCount:
    """One labelled count of a ``LoopCounter``."""

    __slots__ = ("value",)

    def __init__(self) -> None:
        self.value = 0.0

    def inc(self, amount: float = 1.0) -> None:
        if amount < 0:
            raise ValueError("counters can only be incremented by non-negative amounts")
        self.value += amount


class _LoopObservations:
    """One labelled histogram of a ``LoopHistogram``: counts per bucket (not cumulative;
    the last one is +Inf) and the sum."""

    __slots__ = ("_bounds", "counts", "sum")

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self._bounds = bounds
        self.counts = [0] * (len(bounds) + 1)
        self.sum = 0.0

    def observe(self, amount: float) -> None:
        # ``le`` is inclusive: the first bucket whose bound is >= the value.
        self.counts[bisect_left(self._bounds, amount)] += 1
        self.sum += amount


class _LoopMetric:
    """A labelled metric for the per-call paths of the event loop, exposed like
    prometheus_client's own but updated without its lock per update.

    prometheus_client takes a mutex for every ``inc`` and every ``observe`` (twice for a
    histogram), since any thread may update any metric. The RPC metrics are updated on
    every call, and only ever from the node's event loop thread; the scrape reads them
    from the HTTP server's thread, one list copy at a time under the GIL, so a scrape
    that races a call may see its count before its sum, never a torn number.
    """

    def __init__(
        self, name: str, documentation: str, labelnames: list[str], registry: CollectorRegistry
    ) -> None:
        self._name = name
        self._documentation = documentation
        self._labelnames = tuple(labelnames)
        self._children: dict[tuple[str, ...], Any] = {}
        registry.register(self)  # type: ignore[arg-type]

    def _new(self) -> Any:
        raise NotImplementedError

    def labels(self, *values: str, **named: str) -> Any:
        if named:
            if values:
                raise ValueError("give label values by position or by name, not both")
            if set(named) != set(self._labelnames):
                raise ValueError(f"{self._name} takes labels {', '.join(self._labelnames)}")
            values = tuple(named[n] for n in self._labelnames)
        if len(values) != len(self._labelnames):
            raise ValueError(f"{self._name} takes labels {', '.join(self._labelnames)}")
        key = tuple(str(v) for v in values)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = self._new()
        return child

    def describe(self) -> list[Metric]:
        return []


class LoopCounter(_LoopMetric):
    def __init__(
        self, name: str, documentation: str, labelnames: list[str], registry: CollectorRegistry
    ) -> None:
        if not name.endswith("_total"):
            raise ValueError(f"counter {name} must end in _total")
        super().__init__(name, documentation, labelnames, registry)

    def _new(self) -> _LoopCount:
        return _LoopCount()

    def collect(self) -> list[Metric]:
        family = CounterMetricFamily(self._name, self._documentation, labels=list(self._labelnames))
        for key, child in list(self._children.items()):
            family.add_metric(list(key), child.value)
        return [family]


class LoopHistogram(_LoopMetric):
    def __init__(
        self,
        name: str,
        documentation: str,
        labelnames: list[str],
        registry: CollectorRegistry,
        buckets: tuple[float, ...],
    ) -> None:
        super().__init__(name, documentation, labelnames, registry)
        self._bounds = tuple(sorted(buckets))
        self._les = [floatToGoString(b) for b in self._bounds] + ["+Inf"]

    def _new(self) -> _LoopObservations:
        return _LoopObservations(self._bounds)

    def collect(self) -> list[Metric]:
        family = HistogramMetricFamily(
            self._name, self._documentation, labels=list(self._labelnames)
        )
        for key, child in list(self._children.items()):
            counts, total = list(child.counts), child.sum
            cumulative, buckets = 0, []
            for le, n in zip(self._les, counts, strict=True):
                cumulative += n
                buckets.append((le, cumulative))
            family.add_metric(list(key), buckets, total)
        return [family]


class Children(dict[Any, Any]):
    """A metric's children by label values (one value, or a tuple of them in the metric's
    label order), each made by ``labels()`` on first use only: on paths that run for
    every call or batch, ``labels()`` costs more than the increment itself."""

    def __init__(self, metric: Any) -> None:
        super().__init__()
        self._metric = metric

    def __missing__(self, key: Any) -> Any:
        child = self[key] = self._metric.labels(*(key if isinstance(key, tuple) else (key,)))
        return child


class _SpanQueueCollector:
    def __init__(self, stats: Callable[[], tuple[int, int, int, int]]) -> None:
        self._stats = stats

    def describe(self) -> list[Metric]:
        return []

    def collect(self) -> list[Metric]:
        exported, dropped, failed, waiting = self._stats()
        sent = CounterMetricFamily(
            "sundesk_spans_exported", "Spans this node's exporter delivered."
        )
        sent.add_metric([], exported)
        lost = CounterMetricFamily(
            "sundesk_spans_dropped",
            "Spans lost (reason: queue_full, the export queue was full when the span ended; "
            "export_failed, the endpoint did not take the batch).",
            labels=["reason"],
        )
        lost.add_metric(["queue_full"], dropped)
        lost.add_metric(["export_failed"], failed)
        queued = GaugeMetricFamily(
            "sundesk_spans_queued", "Ended spans not yet exported (queued, or being exported)."
        )
        queued.add_metric([], waiting)
        return [sent, lost, queued]


class Metrics:
    """The node's instruments. Attributes are the prometheus_client metrics themselves
    (``metrics.comments_total.inc()``); the few gauges that describe a current state
    (tickets per state, queue owners, lease state) are set through methods that also
    clear the label sets that no longer apply."""

    def __init__(self, region: str, registry: CollectorRegistry | None = None) -> None:
        self.region = region
        self.registry = registry if registry is not None else CollectorRegistry()
        self._lock = threading.Lock()
        self._ticket_keys: set[tuple[str, str, str]] = set()
        self._owners: dict[str, tuple[str, str]] = {}
        self._http: WSGIServer | None = None
        self._http_thread: threading.Thread | None = None
        r = self.registry

        Info("sundesk_node", "The regional node this endpoint belongs to.", registry=r).info(
            {"region": region}
        )
        # Whether the node runs its hot modules compiled (`make native`, node.native): a
        # node that runs them interpreted is slower, one with stale ones runs old code.
        self.compiled_modules = Gauge(
            "sundesk_compiled_modules",
            "Modules this node runs compiled, by state: fresh, or stale (older than their source).",
            ["state"],
            registry=r,
        )

        # Tickets.
        self.tickets = Gauge(
            "sundesk_tickets",
            "Tickets held by this node, by state, queue and contract tier.",
            ["state", "queue", "tier"],
            registry=r,
        )
        self.tickets_created_total = Counter(
            "sundesk_tickets_created_total",
            "Tickets created on this node.",
            ["queue"],
            registry=r,
        )
        self.transitions_total = Counter(
            "sundesk_transitions_total",
            "Ticket state changes made on this node.",
            ["from_state", "to_state"],
            registry=r,
        )
        self.comments_total = Counter(
            "sundesk_comments_total", "Comments added on this node.", registry=r
        )

        # RPCs (recorded by ops.interceptors.ObservabilityInterceptor, on the event loop).
        self.rpc_requests_total = LoopCounter(
            "sundesk_rpc_requests_total",
            "RPCs handled, by final status code.",
            ["service", "method", "code"],
            registry=r,
        )
        self.rpc_duration_seconds = LoopHistogram(
            "sundesk_rpc_duration_seconds",
            "Time spent handling an RPC.",
            ["service", "method"],
            registry=r,
            buckets=RPC_BUCKETS,
        )

        # Store.
        self.store_commit_seconds = Histogram(
            "sundesk_store_commit_seconds",
            "Duration of one durable store transaction.",
            buckets=COMMIT_BUCKETS,
            registry=r,
        )
        self.store_commit_batch_size = Histogram(
            "sundesk_store_commit_batch_size",
            "Operations written by one store transaction.",
            buckets=BATCH_SIZE_BUCKETS,
            registry=r,
        )

        # Replication.
        self.replication_lag_seconds = Histogram(
            "sundesk_replication_lag_seconds",
            "Time from an operation's HLC stamp in its origin's commit to its durable apply here.",
            ["origin"],
            buckets=LAG_BUCKETS,
            registry=r,
        )
        self.replication_backlog = Gauge(
            "sundesk_replication_backlog",
            "Operations this node holds that a peer lacks.",
            ["peer"],
            registry=r,
        )
        self.replication_applied_total = Counter(
            "sundesk_replication_applied_total",
            "Replicated operations applied, by origin.",
            ["origin"],
            registry=r,
        )
        self.operations_rejected_total = Counter(
            "sundesk_operations_rejected_total",
            "Remote operations refused because their signature does not prove their origin.",
            ["origin"],
            registry=r,
        )
        self.writes_rate_limited_total = Counter(
            "sundesk_writes_rate_limited_total",
            "Writes refused because their caller exceeded its write rate.",
            registry=r,
        )
        self.replication_batches_total = Counter(
            "sundesk_replication_batches_total",
            "Operation batches received from a peer.",
            ["peer"],
            registry=r,
        )
        self.replication_peer_connected = Gauge(
            "sundesk_replication_peer_connected",
            "1 while the pull stream to a peer is open.",
            ["peer"],
            registry=r,
        )
        self.hlc_skew_rejections_total = Counter(
            "sundesk_hlc_skew_rejections_total",
            "Operations refused because their clock is too far ahead of ours.",
            registry=r,
        )

        # Follow-the-sun ownership.
        self.queue_owner = Gauge(
            "sundesk_queue_owner",
            "1 for each queue's current owner as this node sees it (kind: region or oncall).",
            ["queue", "owner", "kind"],
            registry=r,
        )
        self.queue_epoch = Gauge(
            "sundesk_queue_epoch",
            "Fencing epoch (owner key revision) of each queue.",
            ["queue"],
            registry=r,
        )
        self.lease_state = Gauge(
            "sundesk_lease_state",
            "1 for this node's current etcd lease state.",
            ["state"],
            registry=r,
        )
        self.handoffs_total = Counter(
            "sundesk_handoffs_total",
            "Queue handoffs performed by this node.",
            ["queue", "kind"],
            registry=r,
        )
        self.failovers_total = Counter(
            "sundesk_failovers_total",
            "Queues taken over after their owner's lease expired.",
            ["queue"],
            registry=r,
        )
        self.handoff_ack_seconds = Histogram(
            "sundesk_handoff_ack_seconds",
            "Time from a handoff to its acknowledgement.",
            buckets=ACK_BUCKETS,
            registry=r,
        )

        # SLA and escalation.
        self.sla_breaches_total = Counter(
            "sundesk_sla_breaches_total",
            "SLA targets missed (target: response or resolution).",
            ["queue", "tier", "target"],
            registry=r,
        )
        self.sla_at_risk_total = Counter(
            "sundesk_sla_at_risk_total",
            "SLA targets found at risk (less than the at-risk fraction of the target left).",
            ["queue", "tier", "target"],
            registry=r,
        )
        self.sla_at_risk = Gauge(
            "sundesk_sla_at_risk_open",
            "Open tickets of the queues this node owns whose target is at risk now.",
            ["queue", "target"],
            registry=r,
        )
        self.sla_scan_seconds = Histogram(
            "sundesk_sla_scan_seconds",
            "One SLA scan of the queues this node owns.",
            buckets=RPC_BUCKETS,
            registry=r,
        )
        self.registrations_total = Counter(
            "sundesk_registrations_total",
            "Customers and assets registered on this node (kind: customer or asset).",
            ["kind"],
            registry=r,
        )
        self.satisfaction_ratings_total = Counter(
            "sundesk_satisfaction_ratings_total",
            "Satisfaction ratings recorded on this node, by score (1..5).",
            ["score"],
            registry=r,
        )
        self.auto_assignments_total = Counter(
            "sundesk_auto_assignments_total",
            "New tickets assigned by this node as their queue's owner.",
            ["queue", "tier"],
            registry=r,
        )
        self.escalations_total = Counter(
            "sundesk_escalations_total",
            "Escalations, by level reached (L1..L4).",
            ["level"],
            registry=r,
        )

        # Call home.
        self.telemetry_heartbeats_total = Counter(
            "sundesk_telemetry_heartbeats_total",
            "Heartbeats received from machines.",
            registry=r,
        )
        self.telemetry_alarms_total = Counter(
            "sundesk_telemetry_alarms_total",
            "Alarms received from machines.",
            ["severity"],
            registry=r,
        )
        self.telemetry_rejected_total = Counter(
            "sundesk_telemetry_rejected_total",
            "Machine reports refused (reason: unknown_asset or malformed).",
            ["kind", "reason"],
            registry=r,
        )
        self.machine_tickets_total = Counter(
            "sundesk_machine_tickets_total",
            "Tickets machines opened through this node (reason: alarm or silent).",
            ["reason", "tier"],
            registry=r,
        )
        self.heartbeats_replicated_total = Counter(
            "sundesk_heartbeats_replicated_total",
            "Last-seen entries this node replicated (coarse: far fewer than heartbeats).",
            registry=r,
        )
        self.machines_back_total = Counter(
            "sundesk_machines_back_total",
            "Silent machines whose heartbeat came back, noted by the queue owner.",
            registry=r,
        )

        for state in LEASE_STATES:
            self.lease_state.labels(state=state).set(0)

    def watch_spans(self, stats: Callable[[], tuple[int, int, int, int]]) -> None:
        """Expose the span export queue's counts (``ops.spans.SpanQueue.stats``), read at
        each scrape: spans exported, spans lost (dropped by a full queue, or in a failed
        export) and spans waiting. The queue counts with plain integers on its own
        threads; nothing is added to the path of a span."""
        self.registry.register(_SpanQueueCollector(stats))  # type: ignore[arg-type]

    # -- current-state gauges -------------------------------------------------------------

    def set_ticket_counts(self, counts: Mapping[tuple[str, str, str], int]) -> None:
        """Replace the ticket census: keys are ``(state, queue, tier)``. Label sets that
        were present before and are absent now drop to 0 rather than disappearing, so a
        rate or an alert on them sees the drop."""
        with self._lock:
            for key in self._ticket_keys - counts.keys():
                self.tickets.labels(*key).set(0)
            for key, value in counts.items():
                self.tickets.labels(*key).set(value)
            self._ticket_keys |= counts.keys()

    def set_queue_owner(self, queue: str, owner: str, kind: str, epoch: int | None = None) -> None:
        """Record the queue's owner as this node sees it; the previous owner's series is
        removed, so ``sundesk_queue_owner{queue=q} == 1`` always has exactly one answer."""
        with self._lock:
            previous = self._owners.get(queue)
            if previous is not None and previous != (owner, kind):
                self.queue_owner.remove(queue, *previous)
            self.queue_owner.labels(queue, owner, kind).set(1)
            self._owners[queue] = (owner, kind)
        if epoch is not None:
            self.queue_epoch.labels(queue).set(epoch)

    def clear_queue_owner(self, queue: str) -> None:
        """The queue has no known owner (key absent during a failover)."""
        with self._lock:
            previous = self._owners.pop(queue, None)
            if previous is not None:
                self.queue_owner.remove(queue, *previous)

    def set_lease_state(self, state: str) -> None:
        if state not in LEASE_STATES:
            raise ValueError(f"lease state must be one of {', '.join(LEASE_STATES)}: {state!r}")
        for name in LEASE_STATES:
            self.lease_state.labels(name).set(1 if name == state else 0)

    def set_peers_connected(self, connected: Mapping[str, bool]) -> None:
        for peer, up in connected.items():
            self.replication_peer_connected.labels(peer).set(1 if up else 0)

    def init_labels(self, regions: Iterable[str], queues: Iterable[str] | None = None) -> None:
        """Create the per-region and per-queue series at zero, so a counter that has not
        moved yet is present and ``rate()`` works from the first scrape. Queues default to
        the regions (one queue per home region); this node is not its own peer."""
        regions = list(regions)
        for queue in regions if queues is None else queues:
            self.tickets_created_total.labels(queue)
            self.failovers_total.labels(queue)
            for target in ("response", "resolution"):
                self.sla_at_risk.labels(queue=queue, target=target)
                for tier in TIERS:
                    self.sla_breaches_total.labels(queue=queue, tier=tier, target=target)
                    self.sla_at_risk_total.labels(queue=queue, tier=tier, target=target)
        for name in regions:
            self.replication_applied_total.labels(name)
            self.operations_rejected_total.labels(name)
            if name != self.region:
                self.replication_backlog.labels(name)
                self.replication_batches_total.labels(name)
                self.replication_peer_connected.labels(name)

    # -- exposition -----------------------------------------------------------------------

    def render(self) -> bytes:
        """The text exposition of this registry (what /metrics serves)."""
        return generate_latest(self.registry)

    def start_http_server(self, port: int, host: str = "127.0.0.1") -> int:
        """Serve /metrics for this registry only, from a daemon thread. Port 0 picks a free
        port; the bound port is returned."""
        if self._http is not None:
            raise RuntimeError("metrics HTTP server already started")
        server, thread = _serve_registry(port, addr=host, registry=self.registry)
        self._http, self._http_thread = server, thread
        return int(server.server_port)

    def stop_http_server(self) -> None:
        server, thread = self._http, self._http_thread
        self._http = self._http_thread = None
        if server is not None:
            server.shutdown()
            server.server_close()
        if thread is not None:
            thread.join(timeout=5)


def scrape(port: int, host: str = "127.0.0.1", timeout: float = 5.0) -> dict[str, float]:
    """A node's /metrics as ``{series: value}``, each series written as in PromQL:
    ``name`` or ``name{label="value",...}`` with labels by name. For tests and benchmarks;
    raises ``OSError`` when nothing answers."""
    direct = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # no proxy
    with direct.open(f"http://{host}:{port}/metrics", timeout=timeout) as reply:
        text = reply.read().decode()
    values = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            labels = ",".join(f'{k}="{v}"' for k, v in sorted(sample.labels.items()))
            values[f"{sample.name}{{{labels}}}" if labels else sample.name] = sample.value
    return values
