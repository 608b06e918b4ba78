"""Wiring of one regional node: store, services, health, reflection, graceful stop.

Ticket reads and writes depend only on the local store: etcd, peers and the trace
collector may all be unreachable and the node still serves its region.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import signal
import sys
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
from grpc import aio
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection, reflection_pb2_grpc
from opentelemetry.trace import Tracer

from federation.config import FederationConfig, RegionConfig
from federation.etcd_leases import EtcdOwnership, EtcdSession
from federation.replication_service import CommitSignal, FederationService
from federation.replicator import Replicator
from federation.sun import SunCoordinator, SunHooks
from node import native
from node.call_home import CallHome
from node.clock import Clock, SystemClock
from node.contracts import load_contracts
from node.contracts_wiring import build_contract_parts
from node.desk_service import DeskService
from node.errors import StorageError, SundeskError, Unavailable
from node.group_pacing import DEFAULT_DELAY_S as DEFAULT_GROUP_DELAY_S
from node.grpc_errors import wrap_errors
from node.handlers import WrappingRegistrar, make_server
from node.handoff_log import SqliteHandoffLog
from node.heartbeats import HeartbeatBook
from node.limits import NodeLimits
from node.observe import NodeObserver
from node.roster import load_roster
from node.silence_monitor import SilenceMonitor
from node.sqlite_store import SqliteTicketStore
from node.sun_service import SunService
from node.telemetry import DEFAULT_MISSED_HEARTBEATS
from node.telemetry_service import TelemetryService
from node.trust import NodeTrust
from node.watch import WatchHub
from ops.interceptors import ObservabilityInterceptor
from ops.metrics import Metrics
from ops.tracing import export_stats, get_tracer, make_tracer_provider, shutdown_tracing
from sundesk.v1 import (
    contracts_pb2,
    contracts_pb2_grpc,
    desk_pb2,
    desk_pb2_grpc,
    federation_pb2,
    federation_pb2_grpc,
    sun_pb2,
    sun_pb2_grpc,
    telemetry_pb2,
    telemetry_pb2_grpc,
)

log = logging.getLogger("sundesk.node")

MAX_MESSAGE = 4 * 1024 * 1024
GAUGE_PERIOD = 2.0
SERVICES = (
    desk_pb2.DESCRIPTOR.services_by_name["Desk"].full_name,
    federation_pb2.DESCRIPTOR.services_by_name["Federation"].full_name,
    sun_pb2.DESCRIPTOR.services_by_name["Sun"].full_name,
    contracts_pb2.DESCRIPTOR.services_by_name["Contracts"].full_name,
    telemetry_pb2.DESCRIPTOR.services_by_name["Telemetry"].full_name,
)


@dataclass
class NodeOptions:
    region: str
    listen: str = ""
    data_dir: Path = Path("var/node")
    metrics_port: int | None = None
    otlp_endpoint: str | None = None
    observability: bool = True  # RPC metrics and spans, store and replication spans
    peer_addresses: dict[str, str] = field(default_factory=dict)  # overrides, e.g. proxies
    etcd_endpoints: tuple[str, ...] | None = None  # None: the federation config's
    ownership: bool = True  # take part in follow-the-sun queue ownership (needs etcd)
    extra_interceptors: list[aio.ServerInterceptor] = field(default_factory=list)
    contracts_path: Path | None = None  # tier terms; None: node/default_contracts.toml
    sla_period: float = 1.0  # real seconds between the owner's SLA scans
    roster_path: Path | None = None  # engineers; None: node/default_roster.toml
    # None serves plaintext with no tokens: only for tests that ask for it (--insecure).
    trust: NodeTrust | None = None
    limits: NodeLimits = field(default_factory=NodeLimits)
    telemetry_period: float = 2.0  # real seconds between heartbeat flushes / silence scans
    missed_heartbeats: int = DEFAULT_MISSED_HEARTBEATS  # intervals before "machine silent"
    group_commit_delay_s: float = DEFAULT_GROUP_DELAY_S  # see node.group_pacing


def server_options(limits: NodeLimits | None = None) -> list[tuple[str, int]]:
    # grpc turns SO_REUSEPORT on by default, which would let two nodes share a port
    # silently; a second node on a taken port must fail loudly instead.
    return [
        ("grpc.so_reuseport", 0),
        (
            "grpc.max_receive_message_length",
            limits.max_request_bytes if limits is not None else MAX_MESSAGE,
        ),
        ("grpc.max_send_message_length", 64 * 1024 * 1024),
    ]


class Node:
    def __init__(
        self, config: FederationConfig, options: NodeOptions, clock: Clock | None = None
    ) -> None:
        self.config = config
        self.options = options
        self.region: RegionConfig = config.region(options.region)
        self.clock = clock or SystemClock()
        self.contracts = load_contracts(options.contracts_path)  # a bad file fails first
        self.roster = load_roster(options.roster_path, config.region_names())
        self.listen = options.listen or self.region.address
        self.store: SqliteTicketStore | None = None
        self.server: aio.Server | None = None
        self.federation_service: FederationService | None = None
        self.hub = WatchHub()
        self.coordinator: SunCoordinator | None = None
        self.session: EtcdSession | None = None
        self._stopping = asyncio.Event()
        self._on_stop: list[Callable[[], object]] = []

    async def start(self) -> None:
        self.metrics = Metrics(self.region.name)
        self.metrics.init_labels(self.config.region_names(), self.config.queue_names())
        self.tracer_provider = make_tracer_provider(
            self.region.name,
            otlp_endpoint=self.options.otlp_endpoint,
            enabled=self.options.observability,
        )
        tracer = get_tracer(self.tracer_provider)
        span_stats = export_stats(self.tracer_provider)
        if span_stats is not None:
            self.metrics.watch_spans(span_stats)
        self.observer = obs = NodeObserver(self.region.name, self.metrics, tracer, self.clock)
        trust = self.options.trust
        self.store = SqliteTicketStore(
            self.options.data_dir,
            self.region.name,
            self.region.code,
            self.clock,
            max_skew_seconds=self.config.max_clock_skew_seconds,
            on_skew=obs.on_skew,
            on_commit=obs.on_commit,
            on_commit_spans=obs.on_commit_spans if self.options.observability else None,
            sign=trust.signer.sign if trust is not None else None,
            admit_remote=trust.admission(self.metrics) if trust is not None else None,
            group_delay_s=self.options.group_commit_delay_s,
        )
        self.store.add_listener(self.hub.publish)
        self.store.add_listener(obs.on_changes)
        self.signal = CommitSignal()
        self.store.add_listener(self.signal.notify)
        peers = {
            r.name: self.options.peer_addresses.get(r.name, r.address)
            for r in self.config.regions
            if r.name != self.region.name
        }
        self.replicator = Replicator(
            self.store,
            self.region.name,
            peers,
            self.clock,
            hooks=obs.replication_hooks(),
            credentials=trust.peer if trust is not None else None,
        )
        queues = {r.name: r.name for r in self.config.regions}
        carrier = obs.change_carrier if self.options.observability else None
        parts = build_contract_parts(
            self.config,
            self.region.name,
            self.store,
            self.contracts,
            self.roster,
            lambda: self.coordinator,
            self.clock.now,
            self.metrics,
            tracer,
            carrier,
        )
        self.registry, self.dues, self.sla_monitor = parts.registry, parts.dues, parts.monitor
        desk = DeskService(
            self.store,
            self.hub,
            queues,
            trace_carrier=obs.trace_carrier,
            replication_info=self._replication_info,
            change_carrier=carrier,
            tag_ticket=obs.tag_ticket,
            registry=self.registry,
            dues=self.dues,
            roster=self.roster,
            now=self.clock.now,
        )
        observe = (
            ObservabilityInterceptor(self.metrics, tracer, self.region.name)
            if self.options.observability
            else None
        )
        # Auth, like error mapping and RPC metrics, wraps each handler once at registration.
        guards = (
            [trust.interceptor(self.options.limits, self.metrics).wrap_handler] if trust else []
        )
        server, registrar = make_server(
            server_options(self.options.limits),
            observe,
            self.options.extra_interceptors,
            *guards,
            wrap_errors,
            maximum_concurrent_rpcs=self.options.limits.max_concurrent_rpcs,
        )
        desk_pb2_grpc.add_DeskServicer_to_server(desk, registrar)
        self.handoffs = SqliteHandoffLog(self.store)
        self.sun = SunService(
            self.region.name,
            self.store,
            self.handoffs,
            lambda: self.coordinator,
            self.clock.now,
        )
        self.store.add_listener(self.sun.on_changes)
        sun_pb2_grpc.add_SunServicer_to_server(self.sun, registrar)
        contracts_pb2_grpc.add_ContractsServicer_to_server(parts.service, registrar)
        self._wire_telemetry(registrar, tracer)
        on_send = obs.on_send if self.options.observability else None
        self.federation_service = FederationService(
            self.store, self.signal, self.status, on_batch=on_send
        )
        federation_pb2_grpc.add_FederationServicer_to_server(self.federation_service, registrar)
        health_servicer = _health_servicer()
        health_pb2_grpc.add_HealthServicer_to_server(health_servicer, registrar)
        # enable_server_reflection() wants the server itself; this is what it registers.
        reflection_pb2_grpc.add_ServerReflectionServicer_to_server(
            reflection.aio.ReflectionServicer(
                (
                    *SERVICES,
                    health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
                    reflection.SERVICE_NAME,
                )
            ),
            registrar,
        )
        try:
            port = (
                server.add_secure_port(self.listen, trust.server)
                if trust is not None
                else server.add_insecure_port(self.listen)
            )
        except RuntimeError as exc:
            port = 0
            cause: Exception | None = exc
        else:
            cause = None
        if not port:
            await self.store.close()
            raise Unavailable(
                f"cannot listen on {self.listen}: the address is taken or not local; "
                "stop the other process or choose another --listen"
            ) from cause
        await server.start()
        for name in ("", *SERVICES):
            await health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
        self._health = health_servicer
        self.server = server
        self.replicator.start()
        self._start_metrics_endpoint()
        self._gauges = asyncio.create_task(self._refresh_gauges())
        self._sla = asyncio.create_task(self.sla_monitor.run(self.options.sla_period))
        self._silence = asyncio.create_task(self.silence_monitor.run(self.options.telemetry_period))
        if self.options.ownership:
            self._ownership = asyncio.create_task(self._join_ownership())
        log.info("region %s serving on %s", self.region.name, self.listen)
        compiled, late = native.compiled(), native.stale()
        self.metrics.compiled_modules.labels("fresh").set(len(compiled) - len(late))
        self.metrics.compiled_modules.labels("stale").set(len(late))
        (log.warning if late else log.info)("%s", native.summary())

    def _wire_telemetry(self, server: WrappingRegistrar, tracer: Tracer) -> None:
        """Machines calling home: the Telemetry service and the owner's silence watch."""
        assert self.store is not None
        obs = self.observer
        self.heartbeats = HeartbeatBook(self.store, self.region.name, self.config.region_names())
        call_home = CallHome(
            self.store,
            self.registry,
            self.contracts,
            self.metrics,
            dues=self.dues,
            carrier=obs.trace_carrier,
        )
        telemetry_pb2_grpc.add_TelemetryServicer_to_server(
            TelemetryService(
                self.region.name,
                call_home,
                self.heartbeats,
                self.metrics,
                self.clock.now,
                tag_ticket=obs.tag_ticket,
            ),
            server,
        )
        self.silence_monitor = SilenceMonitor(
            self.region.name,
            self.store,
            self.registry,
            self.heartbeats,
            call_home,
            self.contracts,
            lambda: self.coordinator,
            self.clock.now,
            self.metrics,
            tracer,
            self.options.missed_heartbeats,
        )

    async def _join_ownership(self) -> None:
        """Open an etcd session and start the coordinator, retrying until etcd answers.

        Tickets are served meanwhile: ownership is the only thing that waits for etcd.
        """
        endpoints = self.options.etcd_endpoints or self.config.etcd_endpoints
        trust = self.options.trust
        delay = 0.5
        warned = False
        while True:
            session = EtcdSession(
                list(endpoints),
                self.region.name,
                ttl=self.config.lease_ttl_seconds,
                clock=self.clock,
                address=self.listen,
                credentials=trust.etcd.credentials() if trust and trust.etcd else None,
            )
            try:
                await session.start()
                break
            except SundeskError as exc:
                if not warned:
                    log.warning("no etcd yet (%s); queue ownership waits, tickets do not", exc)
                    warned = True
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)
        self.session = session
        hooks = SunHooks(
            on_owner_change=self._owner_changed,
            on_handoff=lambda rec: self.metrics.handoffs_total.labels(
                queue=rec.queue, kind=rec.kind
            ).inc(),
            on_failover=lambda queue: self.metrics.failovers_total.labels(queue=queue).inc(),
            on_lease_state=self.metrics.set_lease_state,
        )
        coordinator = SunCoordinator(
            self.region.name,
            self.config,
            self.clock,
            EtcdOwnership(session),
            self.handoffs,
            hooks=hooks,
        )
        await coordinator.start()
        self.coordinator = coordinator
        log.info("region %s joined follow-the-sun ownership via %s", self.region.name, endpoints)

    def _owner_changed(self, queue: str, owner: str | None, kind: str | None, epoch: int) -> None:
        if owner is None:
            self.metrics.clear_queue_owner(queue)
        else:
            self.metrics.set_queue_owner(queue, owner, kind or "", epoch)

    async def _leave_ownership(self) -> None:
        task = getattr(self, "_ownership", None)
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if self.coordinator is not None:
            # Hand our queues to the next live region so a planned stop leaves no gap;
            # bounded, because etcd may be the reason we are stopping.
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.coordinator.stop(handover=True), 5)
            self.coordinator = None
        if self.session is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.session.close(), 3)
            self.session = None

    def _start_metrics_endpoint(self) -> None:
        port = self.options.metrics_port
        if port is None:
            port = self.region.metrics_port
        if not port:
            return
        try:
            self.metrics.start_http_server(port)
        except OSError as exc:
            # Metrics matter, but not more than serving tickets: say so and go on.
            log.error("metrics endpoint not started: port %d: %s", port, exc.strerror)
        else:
            log.info("metrics on http://127.0.0.1:%d/metrics", port)

    async def _refresh_gauges(self) -> None:
        """Gauges that are cheaper to sample than to track on every change."""
        while True:
            assert self.store is not None
            self.metrics.set_ticket_counts(self.store.ticket_counts())
            self.observer.set_backlog(
                {p: self.replicator.backlog(p) for p in self.replicator.peers}
            )
            await asyncio.sleep(GAUGE_PERIOD)

    async def stop(self, grace: float = 5.0) -> None:
        if self.server is not None:
            for name in ("", *SERVICES):
                await self._health.set(name, health_pb2.HealthCheckResponse.NOT_SERVING)
            self._gauges.cancel()
            self._sla.cancel()
            self._silence.cancel()
            # Each step bounded and named: a stop that hangs says where, and still ends.
            await _bounded("leaving queue ownership", self._leave_ownership(), 10)
            await _bounded("stopping replication", self.replicator.stop(), 5)
            if self.federation_service is not None:
                self.federation_service.close()  # peers' Pull streams end now, not at grace
            await _bounded("stopping the gRPC server", self.server.stop(grace), grace + 2)
            self.server = None
            self.metrics.stop_http_server()
            await _bounded(
                "flushing traces", asyncio.to_thread(shutdown_tracing, self.tracer_provider), 8
            )
        for hook in self._on_stop:
            result = hook()
            if asyncio.iscoroutine(result):
                await result
        if self.store is not None:
            await self.store.close()
            self.store = None

    def _replication_info(self, change_id: str) -> tuple[list[str], list[str], Mapping[str, int]]:
        assert self.store is not None
        vv = self.store.durable_vv
        if not change_id:
            return [self.region.name], [], vv
        origin, _, seq = change_id.rpartition(":")
        have, missing = self.replicator.applied_in(origin, int(seq))
        return have, missing, vv

    def status(self, with_digest: bool = True) -> federation_pb2.NodeStatus:
        assert self.store is not None
        if with_digest:
            count, digest = self.store.digest()
        else:  # progress polling: the digest hashes every ticket, the counts are kept
            count, digest = sum(self.store.ticket_counts().values()), ""
        msg = federation_pb2.NodeStatus(
            region=self.region.name,
            tickets=count,
            digest=digest,
            version_vector=self.store.version_vector(),
        )
        for name, peer in self.replicator.peers.items():
            msg.peers[name].CopyFrom(
                federation_pb2.PeerStatus(
                    address=peer.address,
                    connected=peer.connected,
                    version_vector=peer.vv,
                    backlog=self.replicator.backlog(name),
                    applied=peer.applied,
                    lag_seconds=peer.lag_seconds,
                )
            )
        return msg

    def request_stop(self) -> None:
        self._stopping.set()

    async def run_until_signal(self) -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.request_stop)
        await self._stopping.wait()
        log.info("region %s stopping", self.region.name)
        started = time.monotonic()
        await self.stop()
        log.info("region %s stopped in %.1f s", self.region.name, time.monotonic() - started)


async def _bounded(step: str, work: Awaitable[Any], seconds: float) -> None:
    started = time.monotonic()
    try:
        await asyncio.wait_for(work, seconds)
    except TimeoutError:
        log.warning("stop: %s did not finish in %.0f s; going on without it", step, seconds)
        return
    took = time.monotonic() - started
    if took > 2:
        log.warning("stop: %s took %.1f s", step, took)


def _health_servicer() -> health.aio.HealthServicer:
    return health.aio.HealthServicer()


def tune_interpreter() -> None:
    """The interpreter settings a node serves with, once it has started (benchmarks that
    drive the node's parts in-process apply them too).

    The store's writer thread and the gRPC loop share the GIL. The default 5 ms switch
    interval makes each wait for the other in long slices; 0.5 ms keeps replies flowing
    while a group is being written. Everything built at start-up lives as long as the
    node: it is kept out of the collector's way, and the young generation is collected
    less often than the default 700 (hot write path) but not so rarely that one
    collection stalls every call: at 50,000 a young collection took 40-70 ms
    (bench.telemetry, ticket p99); at 10,000 about 10."""
    sys.setswitchinterval(0.0005)
    gc.freeze()
    gc.set_threshold(10_000, 20, 100)


async def run_node(config: FederationConfig, options: NodeOptions, clock: Clock | None) -> None:
    node = Node(config, options, clock)
    await node.start()
    tune_interpreter()
    await node.run_until_signal()


__all__ = ["Node", "NodeOptions", "StorageError", "grpc", "run_node", "tune_interpreter"]
