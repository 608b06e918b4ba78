"""What a node tells global ops: the hooks that turn store and replication events into
Prometheus metrics and OpenTelemetry spans.

Spans of replicated work join the origin's trace: each operation carries the trace
context of the RPC that made it, so applying it in Tokyo shows up under the span of the
call made in Vélizy.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from typing import Any

from opentelemetry.trace import Link, NoOpTracer, Span, SpanKind, Tracer, get_current_span

from federation.hlc import LOGICAL_BITS
from federation.operations import TICKET_COMMENT, TICKET_CREATE, Operation
from federation.replicator import PeerState, ReplicationHooks
from node.clock import Clock
from node.registry import REGISTRY_OP_KINDS
from node.store import Change
from ops.metrics import Children, Metrics
from ops.spans import RecordSpan, RecordTracer
from ops.tracing import (
    ATTR_OP_ID,
    ATTR_ORIGIN,
    ATTR_QUEUE,
    ATTR_REGION,
    ATTR_TICKET,
    carried_row,
    carried_span_context,
    current_span,
    extract_context,
    inject_context,
)

MAX_LINKS = 32


class NodeObserver:
    def __init__(self, region: str, metrics: Metrics, tracer: Tracer, clock: Clock) -> None:
        self.region = region
        self.metrics = metrics
        self.tracer = tracer
        self._clock = clock
        # Without an exporter the tracer is a no-op: skip building spans per applied op.
        self._spans = not isinstance(tracer, NoOpTracer)
        self._record = tracer if isinstance(tracer, RecordTracer) else None
        # ``on_changes`` runs for every write, ``on_applied`` and ``on_peer`` for every batch.
        self._created = Children(metrics.tickets_created_total)  # by queue
        self._transitions = Children(metrics.transitions_total)  # by (from, to)
        self._lag = Children(metrics.replication_lag_seconds)  # by origin
        self._applied = Children(metrics.replication_applied_total)  # by origin
        self._batches = Children(metrics.replication_batches_total)  # by peer
        self._connected = Children(metrics.replication_peer_connected)  # by peer

    def _under(
        self,
        carrier: Mapping[str, object],
        name: str,
        *,
        kind: SpanKind = SpanKind.INTERNAL,
        attributes: dict[str, Any],
        start_time: int | None = None,
    ) -> Span:
        """A span in the trace ``carrier`` (not empty) holds: its traceparent taken as text
        by the node's own tracer when it has our one shape, else through the propagator."""
        if self._record is not None:
            row = carried_row(carrier)
            if row is not None:
                return self._record.start_child(name, row, kind, attributes, start_time=start_time)
        return self.tracer.start_span(
            name,
            context=extract_context(carrier),
            kind=kind,
            attributes=attributes,
            start_time=start_time,
        )

    # ----- RPCs --------------------------------------------------------------------------

    def trace_carrier(self) -> dict[str, str]:
        """The current span's context, stored in the operation the RPC writes."""
        span = current_span()
        # A RecordSpan makes it itself, one call where inject_context is two.
        return span.carrier() if isinstance(span, RecordSpan) else inject_context(span)

    def change_carrier(self, ticket_trace: Mapping[str, object]) -> dict[str, str]:
        """Context for an operation on an existing ticket: a ``ticket.change`` span in the
        ticket's own trace (begun when it was created), linked to the current RPC. Every
        region's apply spans then join that one trace per ticket."""
        current = get_current_span()
        rpc = current.get_span_context()
        if not rpc.is_valid:
            return {}
        attributes = {ATTR_REGION: self.region}
        if ticket_trace:
            span = self._under(ticket_trace, "ticket.change", attributes=attributes)
        else:
            span = self.tracer.start_span("ticket.change", attributes=attributes)
        if isinstance(current, RecordSpan) and isinstance(span, RecordSpan):
            span.add_link_rows([[current.row, {}]])
        else:
            span.add_link(rpc)
        carrier = inject_context(span)
        span.end()
        return carrier

    @staticmethod
    def tag_ticket(code: str, queue: str = "") -> None:
        span = current_span()
        if isinstance(span, RecordSpan):
            span.tag(ATTR_TICKET, code, ATTR_QUEUE, queue)  # one call where three were
        elif span.is_recording():
            span.set_attribute(ATTR_TICKET, code)
            if queue:
                span.set_attribute(ATTR_QUEUE, queue)

    # ----- the store ---------------------------------------------------------------------

    def on_commit(self, batch: int, seconds: float) -> None:
        self.metrics.store_commit_seconds.observe(seconds)
        self.metrics.store_commit_batch_size.observe(batch)

    def on_commit_spans(
        self, traces: Sequence[Mapping[str, object]], start_ns: int, end_ns: int, batch: int
    ) -> None:
        """One ``store.commit`` span per group commit: in the trace of the group's first
        traced write, linked to the others (up to ``MAX_LINKS``). A span per write cost
        as much as the write's own RPC span, for one fsync shared by all of them."""
        if not self._spans:
            return
        carriers = [c for c in traces if c]
        if not carriers:
            return
        span = self._under(
            carriers[0],
            "store.commit",
            start_time=start_ns,
            attributes={
                ATTR_REGION: self.region,
                "sundesk.batch_size": batch,
                "sundesk.traced_writes": len(carriers),
            },
        )
        # The node's own spans take the writes' traceparent text as it is: it is read at
        # export, in the relay process. Parsing each into ids here, even without making
        # a SpanContext, was most of this span's cost.
        linked = carriers[1 : MAX_LINKS + 1]
        if isinstance(span, RecordSpan):
            texts: list[object] = [c.get("traceparent") for c in linked if len(c) == 1]
            span.add_link_rows([t for t in texts if isinstance(t, str)])
            linked = [c for c in linked if len(c) != 1 or "traceparent" not in c]
        for carrier in linked:
            link = _link(carrier)
            if link is not None:
                span.add_link(link.context)
        span.end(end_time=end_ns)

    def on_skew(self, remote: int, local_ms: int) -> None:
        self.metrics.hlc_skew_rejections_total.inc()

    def on_changes(self, changes: list[Change]) -> None:
        """Count what this region did; replicated changes are counted where they were made."""
        for change in changes:
            if not change.local:
                continue
            op = change.op
            if op.kind == TICKET_CREATE:
                self._created[str(op.fields.get("queue", ""))].inc()
            elif op.kind == TICKET_COMMENT:
                self.metrics.comments_total.inc()
            elif op.kind in REGISTRY_OP_KINDS:
                self.metrics.registrations_total.labels(kind=op.kind.partition(".")[2]).inc()
            score = op.fields.get("satisfaction")
            if isinstance(score, int) and 1 <= score <= 5:
                self.metrics.satisfaction_ratings_total.labels(score=str(score)).inc()
            transition = op.fields.get("transition")
            if isinstance(transition, dict):
                key = (str(transition.get("from", "")), str(transition.get("to", "")))
                self._transitions[key].inc()

    # ----- replication -------------------------------------------------------------------

    def replication_hooks(self) -> ReplicationHooks:
        return ReplicationHooks(on_applied=self.on_applied, on_peer=self.on_peer)

    def on_applied(self, peer: str, ops: list[Operation]) -> None:
        """Lag of every applied operation; counters once per origin and batch, because a
        node catching up applies thousands of operations per batch."""
        now_ms = self._clock.now().timestamp() * 1000
        speed = self._clock.speed()
        end_ns = time.time_ns()
        per_origin: dict[str, int] = {}
        for op in ops:
            origin = op.origin
            per_origin[origin] = per_origin.get(origin, 0) + 1
            lag = max(0.0, (now_ms - (op.hlc >> LOGICAL_BITS)) / 1000 / speed)
            self._lag[origin].observe(lag)
            if op.trace_context and self._spans:
                self._apply_span(peer, op, end_ns, lag)
        for origin, n in per_origin.items():
            self._applied[origin].inc(n)
        self._batches[peer].inc()

    def _apply_span(self, peer: str, op: Operation, end_ns: int, lag: float) -> None:
        span = self._under(
            op.trace_context,
            "replication.apply",
            kind=SpanKind.CONSUMER,
            start_time=end_ns - int(lag * 1e9),
            attributes={
                ATTR_REGION: self.region,
                ATTR_ORIGIN: op.origin,
                ATTR_TICKET: op.ticket,
                ATTR_OP_ID: op.op_id,
                ATTR_QUEUE: str(op.fields.get("queue", "")),
                "sundesk.peer": peer,
            },
        )
        span.end(end_time=end_ns)

    def on_peer(self, peer: PeerState) -> None:
        """Runs for every batch a peer sends, heartbeats included."""
        self._connected[peer.region].set(1 if peer.connected else 0)

    def set_backlog(self, backlog: Mapping[str, int]) -> None:
        for peer, value in backlog.items():
            self.metrics.replication_backlog.labels(peer=peer).set(value)

    def on_send(self, peer: str, ops: list[Operation]) -> None:
        """A ``replication.send`` span per batch, linked to the traces it carries."""
        if not self._spans:  # the links alone parse every operation's trace context
            return
        links = [
            Link(get_current_span(extract_context(op.trace_context)).get_span_context())
            for op in ops[:MAX_LINKS]
            if op.trace_context
        ]
        span = self.tracer.start_span(
            "replication.send",
            kind=SpanKind.PRODUCER,
            links=links,
            attributes={
                ATTR_REGION: self.region,
                "sundesk.peer": peer,
                "sundesk.batch_size": len(ops),
            },
        )
        span.end()


def _link(carrier: Mapping[str, object]) -> Link | None:
    context = carried_span_context(carrier)
    return Link(context) if context.is_valid else None
