"""OpenTelemetry tracing of one regional node.

``make_tracer_provider`` builds the provider the node hands to its parts (the RPC
interceptor, the store, the replicator). Nothing here installs a global provider or
propagator: two nodes in one process trace under their own region.

Spans are recorded by ``ops.spans`` (the OpenTelemetry API at a fraction of the SDK's
cost per span). They leave from an export thread, never from the RPC path, through a
relay process that encodes them (``ops.span_relay``) for an OTLP/gRPC endpoint: the
embedded collector (``ops.collector``), an OpenTelemetry Collector, Jaeger or Tempo. When
the endpoint is down, spans are dropped after the exporter's retries; tickets are never
held up by tracing.

The trace context crosses process boundaries as W3C ``traceparent``/``tracestate``: in
gRPC metadata for RPCs and in ``Operation.trace_context`` for replicated operations.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from contextvars import ContextVar, Token
from typing import Any, cast

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.context.contextvars_context import ContextVarsRuntimeContext
from opentelemetry.sdk.resources import SERVICE_NAME, Resource
from opentelemetry.sdk.trace.export import SpanExporter
from opentelemetry.trace import Span, SpanContext, TraceFlags, Tracer, TracerProvider
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from ops.span_relay import RelayExporter, traceparent_row
from ops.spans import RecordSpan, RecordTracerProvider

SERVICE = "sundesk-node"
INSTRUMENTATION = "sundesk"

# Span and resource attributes of our own, next to the OpenTelemetry conventions.
ATTR_REGION = "sundesk.region"
ATTR_QUEUE = "sundesk.queue"
ATTR_TICKET = "sundesk.ticket"
ATTR_ORIGIN = "sundesk.origin"
ATTR_OP_ID = "sundesk.op_id"

EXPORT_TIMEOUT_S = 5.0
SCHEDULE_DELAY_MS = 1000  # a trace shows up in the collector about a second after it ends

# Stateless; an instance rather than opentelemetry.propagate's global, which any library
# may replace.
_PROPAGATOR = TraceContextTextMapPropagator()
# The key under which the API keeps the current span (``trace.set_span_in_context``),
# read once: a context holding a span is then made in one step, and read in one.
(SPAN_KEY,) = trace.set_span_in_context(trace.INVALID_SPAN, Context())


def _context_calls() -> tuple[
    Callable[[Context], Token[Context]],
    Callable[[Token[Context]], None],
    Callable[[], Context],
]:
    """``attach``, ``detach`` and ``get_current`` for the hot paths: the methods of the
    ``ContextVar`` that OpenTelemetry's default runtime context keeps, which its functions
    reach two calls deep; OpenTelemetry's own functions under any other runtime context.
    A traced call makes, reads and resets its context on every RPC, and in a node each of
    those frames runs with cold caches (``bench.span_cost``). Unlike OpenTelemetry's
    ``detach``, the fast one raises if the token is not this context's: callers use it
    where they attached in the same task."""
    var = getattr(otel_context._RUNTIME_CONTEXT, "_current_context", None)
    if isinstance(otel_context._RUNTIME_CONTEXT, ContextVarsRuntimeContext) and isinstance(
        var, ContextVar
    ):
        return var.set, var.reset, var.get
    return otel_context.attach, otel_context.detach, otel_context.get_current


attach_current, detach_current, get_current = _context_calls()


def current_span() -> Span:
    """``trace.get_current_span()`` in one lookup of the current context rather than
    three calls deep: 0.17 against 0.47 µs, and a traced write asks twice."""
    span = get_current().get(SPAN_KEY)  # only ever a span: set_span_in_context sets it
    return cast(Span, span) if span is not None else trace.INVALID_SPAN


def make_tracer_provider(
    region: str,
    *,
    otlp_endpoint: str | None,
    exporter: SpanExporter | None = None,
    enabled: bool = True,
) -> TracerProvider:
    """The node's tracer provider.

    ``exporter`` wins over ``otlp_endpoint`` (tests pass an ``InMemorySpanExporter``).
    Disabled, or with nowhere to send spans, the provider is the API's no-op one: its
    spans cost a few hundred nanoseconds and still carry an incoming parent's context
    onward, so a trace passing through a node without tracing is not broken.
    """
    if not enabled or (exporter is None and not otlp_endpoint):
        return trace.NoOpTracerProvider()
    resource = Resource.create({SERVICE_NAME: SERVICE, ATTR_REGION: region})
    if exporter is None:
        assert otlp_endpoint is not None
        # OTLP encoding runs in a child process (ops.span_relay), off this node's GIL.
        exporter = RelayExporter(otlp_endpoint, EXPORT_TIMEOUT_S)
    return RecordTracerProvider(exporter, resource, delay_s=SCHEDULE_DELAY_MS / 1000)


def get_tracer(provider: TracerProvider) -> Tracer:
    return provider.get_tracer(INSTRUMENTATION)


def flush_tracing(provider: TracerProvider, timeout_s: float = EXPORT_TIMEOUT_S) -> bool:
    """Export every finished span now; False if that did not finish in time."""
    if isinstance(provider, RecordTracerProvider):
        return provider.force_flush(timeout_s)
    return True


def export_stats(provider: TracerProvider) -> Callable[[], tuple[int, int, int, int]] | None:
    """What reads the provider's export counts (``SpanQueue.stats``); None when it
    records nothing."""
    if isinstance(provider, RecordTracerProvider):
        return provider.queue.stats
    return None


def shutdown_tracing(provider: TracerProvider, timeout_s: float = EXPORT_TIMEOUT_S) -> None:
    """Flush and stop exporting. Blocking (the exporter is synchronous): from a coroutine,
    run it with ``asyncio.to_thread``, above all when the collector is in-process."""
    if isinstance(provider, RecordTracerProvider):
        provider.shutdown(timeout_s)


# The one traceparent shape this node writes (version 00, no tracestate) is formatted and
# parsed directly (``ops.span_relay.traceparent_row``); anything else goes through the W3C
# propagator. Every traced write injects once and its commit span extracts once, and the
# propagator's general path (context objects, header validation in several steps) was
# 15-20 µs each.


def inject_context(span: Span | None = None) -> dict[str, str]:
    """The W3C trace context of ``span`` (default: the current span) as a plain dict, for
    gRPC metadata or ``Operation.trace_context``. Empty when there is no valid span."""
    if span is None:
        span = current_span()
    if isinstance(span, RecordSpan):
        return span.carrier()
    sc = span.get_span_context()
    if not sc.is_valid:
        return {}
    if not sc.trace_state:
        return {"traceparent": f"00-{sc.trace_id:032x}-{sc.span_id:016x}-{sc.trace_flags:02x}"}
    carrier: dict[str, str] = {}
    _PROPAGATOR.inject(carrier, context=trace.set_span_in_context(trace.NonRecordingSpan(sc)))
    return carrier


def carried_span_context(carrier: Mapping[str, object]) -> SpanContext:
    """The (remote) span context ``carrier`` describes; invalid when there is none."""
    found = _fast_context(carrier)
    if found is not None:
        return found
    return trace.get_current_span(_PROPAGATOR.extract(carrier)).get_span_context()


def extract_context(carrier: Mapping[str, object]) -> Context:
    """A context whose parent is the span described by ``carrier``; an empty context
    (so a new root) when the carrier holds no valid ``traceparent``."""
    found = _fast_context(carrier)
    if found is not None:
        return trace.set_span_in_context(trace.NonRecordingSpan(found), Context())
    return _PROPAGATOR.extract(carrier)


def carried_row(carrier: Mapping[str, object]) -> list[Any] | None:
    """``carrier``'s span context as a row (``ops.span_relay.context_row``: hex ids,
    flags, remote), read from the traceparent text without making a ``SpanContext``, for
    ``RecordTracer.start_child`` and span links. None when the carrier is not the one
    shape this node writes (or holds invalid ids); the caller then takes the general
    path, which says what the carrier holds. Carriers come from other regions'
    operations, so their values are not assumed to be text: compiled (``make native``),
    a value typed ``str`` is checked, and one that is not would raise."""
    if len(carrier) != 1:
        return None
    header = carrier.get("traceparent")
    return traceparent_row(header) if isinstance(header, str) else None


def _fast_context(carrier: Mapping[str, object]) -> SpanContext | None:
    # None (tracestate, nothing, anything odd, all-zero ids): the propagator's general path.
    row = carried_row(carrier)
    if row is None:
        return None
    return SpanContext(
        int(row[0], 16), int(row[1], 16), is_remote=True, trace_flags=TraceFlags(row[2])
    )
