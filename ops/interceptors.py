"""RPC metrics and server spans for every call a node serves.

``ObservabilityInterceptor`` wraps each method handler so that one call gives one
``sundesk_rpc_requests_total{service,method,code}`` increment, one
``sundesk_rpc_duration_seconds`` observation and one SERVER span named
``sundesk.v1.Desk/CreateTicket`` (OpenTelemetry RPC conventions: ``rpc.system.name``,
``rpc.method``, ``rpc.response.status_code``, ``error.type``), parented on the caller's
``traceparent`` metadata when it sends one.

The final status is read the way grpc.aio produces it: ``context.code()`` after the
handler returned (OK unless it called ``set_code``) or after it raised ``AbortError``;
any other exception reaches the client as UNKNOWN, and a cancelled call (client gone,
deadline passed) as CANCELLED or DEADLINE_EXCEEDED.

Place it first in the server's interceptor list, outside ``node.grpc_errors``'
``ErrorInterceptor``: then domain errors arrive here already turned into aborts and are
counted under their own code rather than as UNKNOWN. A node without other interceptors
wraps each method once at registration instead (``call_router``, used by
``node.handlers``), in the same place: outside the error mapping.

Cost, calling the wrapped handler directly on this 2-CPU box (2026-12-04): 1.0 µs a call
with tracing disabled (``ops.metrics``' lock-free RPC metrics, handler wrapping); with a
handler that injects and tags as CreateTicket does, 1.9 µs untraced and 7.3 µs with the
node's own spans (``ops.spans``), 2 µs of that the span's row made as it ends. On
2026-12-05, with a call without trace context made a root inline (``_wrap_unary``):
6.3 µs warm, and 18.9 µs against 11.5 µs untraced with caches cold (``bench.span_cost``),
where the general path took 21-26 µs in the same runs. Later that day, with a root's ids
taken ready-made (``RecordTracer.start_root``) and its row made at export, the span
added 2.7 µs warm and 6.9-7.0 µs cold, against 4.3-4.6 and 9.8-10.6 µs before, side by
side in one run. When this
first wrapped every call with the SDK's spans and prometheus_client's metrics it cost
10-16 µs untraced and 40-65 µs traced. Names, attributes and metric children are built
once per method; ``traceparent`` is parsed only when the caller sends one.
"""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc
from grpc import aio
from opentelemetry import trace
from opentelemetry.context import Context, attach, detach
from opentelemetry.trace import Span, SpanKind, Status, StatusCode, Tracer

from ops.metrics import Children, Metrics
from ops.spans import RecordSpan, RecordTracer
from ops.tracing import (
    ATTR_REGION,
    SPAN_KEY,
    attach_current,
    carried_row,
    detach_current,
    extract_context,
)

_CODE_NAMES: dict[Any, str] = {code: code.name for code in grpc.StatusCode}
_CODE_NAMES.update({code.value[0]: code.name for code in grpc.StatusCode})
_TRACE_KEYS = ("traceparent", "tracestate")
_EMPTY = Context()
_SERVER = SpanKind.SERVER


class _Method:
    """What is known of a method before any call: names, attributes, metric children."""

    __slots__ = ("attributes", "counters", "duration", "method", "name", "service")

    def __init__(self, full_method: str, metrics: Metrics, region: str) -> None:
        self.name = full_method.lstrip("/")
        self.service, _, self.method = self.name.rpartition("/")
        self.attributes = {
            "rpc.system.name": "grpc",
            "rpc.method": self.name,
            ATTR_REGION: region,
        }
        self.duration = metrics.rpc_duration_seconds.labels(self.service, self.method)
        self.counters = Children(metrics.rpc_requests_total)  # by (service, method, code)

    def record(self, code: str, seconds: float, span: Span) -> None:
        self.counters[self.service, self.method, code].inc()
        self.duration.observe(seconds)
        if isinstance(span, RecordSpan):
            span.end_call(code)
            return
        span.set_attribute("rpc.response.status_code", code)
        if code != "OK":
            span.set_attribute("error.type", code)
            span.set_status(Status(StatusCode.ERROR, code))
        span.end()


def _code_name(context: aio.ServicerContext, default: str) -> str:
    code = context.code()
    if code is None:
        return default
    return _CODE_NAMES.get(code, "UNKNOWN")


def _carrier(metadata: Any) -> dict[str, str]:
    carrier: dict[str, str] = {}
    for key, value in metadata or ():
        if key in _TRACE_KEYS:
            carrier[key] = value
    return carrier


def _interrupted_code(context: aio.ServicerContext) -> str:
    remaining = context.time_remaining()
    return "DEADLINE_EXCEEDED" if remaining is not None and remaining <= 0 else "CANCELLED"


class ObservabilityInterceptor(aio.ServerInterceptor):
    def __init__(self, metrics: Metrics, tracer: Tracer, region: str) -> None:
        self._metrics = metrics
        self._tracer = tracer
        # Tracing off: a call without a caller's context has no span to record or carry.
        self._untraced = isinstance(tracer, trace.NoOpTracer)
        self._record = tracer if isinstance(tracer, RecordTracer) else None
        self._region = region
        self._methods: dict[str, _Method] = {}

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(handler_call_details)
        if handler is None:
            # Unknown method: grpc answers UNIMPLEMENTED itself. Not counted, so a client
            # cannot grow our label sets with made-up method names.
            return handler
        full_method: str = handler_call_details.method
        carrier = _carrier(handler_call_details.invocation_metadata)
        return self._wrap(handler, self._method(full_method), carrier)

    def wrap_handler(
        self, full_method: str, handler: grpc.RpcMethodHandler
    ) -> grpc.RpcMethodHandler:
        """``handler`` with this interceptor's metrics and span, wrapped once for every call:
        for a server that wraps its handlers at registration instead of running an
        interceptor per call. The caller's trace context is read from each call's metadata."""
        return self._wrap(handler, self._method(full_method), None)

    def call_router(
        self, full_method: str, handler: grpc.RpcMethodHandler
    ) -> Callable[[Any], grpc.RpcMethodHandler]:
        """For a server that sees each call's metadata before it picks the call's handler
        (``node.handlers``' dispatcher, given grpc's ``HandlerCallDetails``): a function
        from that metadata to the handler. A call without trace context gets ``handler``
        wrapped once, which reads no metadata; one with a ``traceparent`` gets it wrapped
        for that call. ``context.invocation_metadata()`` builds the call's metadata anew
        on every read: ~3 µs a call, while grpc has already built it for the lookup."""
        method = self._method(full_method)
        plain = self._wrap(handler, method, {})

        def route(metadata: Any) -> grpc.RpcMethodHandler:
            carrier = _carrier(metadata)
            return self._wrap(handler, method, carrier) if carrier else plain

        return route

    def _method(self, full_method: str) -> _Method:
        method = self._methods.get(full_method)
        if method is None:
            method = self._methods[full_method] = _Method(full_method, self._metrics, self._region)
        return method

    def _wrap(
        self, handler: grpc.RpcMethodHandler, method: _Method, carrier: dict[str, str] | None
    ) -> grpc.RpcMethodHandler:
        if handler.unary_unary is not None:
            return grpc.unary_unary_rpc_method_handler(
                self._wrap_unary(handler.unary_unary, method, carrier),
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        if handler.unary_stream is not None:
            return grpc.unary_stream_rpc_method_handler(
                self._wrap_stream(handler.unary_stream, method, carrier),
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        if handler.stream_unary is not None:
            return grpc.stream_unary_rpc_method_handler(
                self._wrap_unary(handler.stream_unary, method, carrier),
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        if handler.stream_stream is not None:
            return grpc.stream_stream_rpc_method_handler(
                self._wrap_stream(handler.stream_stream, method, carrier),
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        return handler

    def _start(
        self, method: _Method, carrier: dict[str, str] | None, context: aio.ServicerContext
    ) -> tuple[Span, Context | None]:
        """The call's span and the context to make current (None: nothing to make current)."""
        if carrier is None:
            carrier = _carrier(context.invocation_metadata())
        if not carrier and self._untraced:
            return trace.INVALID_SPAN, None
        # Without a traceparent the parent is an empty context, never whatever context the
        # server task happened to inherit: each incoming call is then a root.
        if self._record is not None:
            # The node's own tracer takes the caller's traceparent as text, ids unparsed.
            row = carried_row(carrier) if carrier else None
            if row is not None or not carrier:
                span = self._record.start_child(
                    method.name, row, SpanKind.SERVER, method.attributes
                )
                return span, Context({SPAN_KEY: span})
        parent = extract_context(carrier) if carrier else _EMPTY
        span = self._tracer.start_span(
            method.name, context=parent, kind=SpanKind.SERVER, attributes=method.attributes
        )
        return span, trace.set_span_in_context(span, parent)

    def _wrap_unary(
        self, behavior: Callable[..., Any], method: _Method, carrier: dict[str, str] | None
    ) -> Callable[..., Awaitable[Any]]:
        # With the node's own tracer, a call that brings no trace context (a new root:
        # every CreateTicket of the benchmarks) has its span made by ``start_root`` and
        # ended by ``end_call`` right here, without ``_start``, ``_Method.record`` and the
        # span's ``set_attribute`` and ``end`` calls: every call of a traced node runs this
        # with cold caches (``bench.span_cost``), where each call saved is worth about a µs.
        tracer = self._record if carrier is not None and not carrier else None
        name, attributes = method.name, method.attributes
        counters, duration = method.counters, method.duration
        service, rpc = method.service, method.method
        perf_counter = time.perf_counter

        async def handler(request: Any, context: aio.ServicerContext) -> Any:
            start = perf_counter()
            span: Any  # a Span; a RecordSpan when ``tracer`` is set
            if tracer is None:
                span, ctx = self._start(method, carrier, context)
                token = attach_current(ctx) if ctx is not None else None
            else:
                span = tracer.start_root(name, _SERVER, attributes)
                token = attach_current(Context({SPAN_KEY: span}))
            code = "UNKNOWN"
            try:
                result = behavior(request, context)
                if inspect.isawaitable(result):
                    result = await result
                code = _code_name(context, "OK")
                return result
            except aio.AbortError:
                code = _code_name(context, "UNKNOWN")
                raise
            except asyncio.CancelledError:
                code = _interrupted_code(context)
                raise
            except Exception as exc:
                # grpc sends UNKNOWN, or the code the handler set before raising.
                code = _code_name(context, "UNKNOWN")
                span.record_exception(exc)
                raise
            finally:
                if token is not None:
                    detach_current(token)  # attached above, in this same coroutine
                if tracer is None:
                    method.record(code, perf_counter() - start, span)
                else:
                    counters[service, rpc, code].inc()
                    duration.observe(perf_counter() - start)
                    span.end_call(code)

        return handler

    def _wrap_stream(
        self, behavior: Callable[..., Any], method: _Method, carrier: dict[str, str] | None
    ) -> Callable[..., AsyncIterator[Any]]:
        # Streams are written either as async generators or as coroutines calling
        # ``await context.write()``; an async generator wrapper serves both. The span is
        # current only while the handler's own code runs, not across our yields: grpc may
        # finalize a dropped stream from another context, where detaching would fail.
        async def handler(request: Any, context: aio.ServicerContext) -> AsyncIterator[Any]:
            start = time.perf_counter()
            span, started = self._start(method, carrier, context)
            ctx = started if started is not None else Context()
            code = "UNKNOWN"
            iterator: Any = None
            try:
                token = attach(ctx)
                try:
                    result = behavior(request, context)
                    if inspect.isawaitable(result):
                        await result
                    else:
                        iterator = result.__aiter__()
                finally:
                    detach(token)
                while iterator is not None:
                    token = attach(ctx)
                    try:
                        item = await iterator.__anext__()
                    except StopAsyncIteration:
                        break
                    finally:
                        detach(token)
                    yield item
                code = _code_name(context, "OK")
            except aio.AbortError:
                code = _code_name(context, "UNKNOWN")
                raise
            except (asyncio.CancelledError, GeneratorExit):
                code = _interrupted_code(context)
                raise
            except Exception as exc:
                # grpc sends UNKNOWN, or the code the handler set before raising.
                code = _code_name(context, "UNKNOWN")
                span.record_exception(exc)
                raise
            finally:
                try:
                    if iterator is not None and hasattr(iterator, "aclose"):
                        await iterator.aclose()
                finally:
                    method.record(code, time.perf_counter() - start, span)

        return handler
