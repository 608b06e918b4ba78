"""Method handlers wrapped once, when services register, instead of by interceptors.

grpc.aio runs a server's interceptors on every call: a chain of coroutines, and each
interceptor that wraps builds a new handler. The node's own wrappers (error mapping,
metrics and spans) are the same for every call of a method, so ``WrappingRegistrar``
applies them at registration: it stands in for the server in the generated
``add_*Servicer_to_server`` functions and hands the server wrapped handlers. A call then
costs one wrapper per layer and no interceptor at all.

Every service's methods go into one table that the server sees as a single generic
handler (the generated code registers each method both ways; the table answers first),
never as grpc's "registered methods": grpc.aio 1.85 keeps one pending
request-call future per registered method and, for every call it accepts, runs
``asyncio.wait`` over all of them (``_server_main_loop`` in the aio ``server.pyx.pxi``).
With the node's ~30 methods that was a callback added to and removed from 31 futures per
call: serving them from one table raised ``bench.create_ticket`` from 2,900 to 3,180
calls/s (CPU per call 379 -> 349 µs), side by side in one run.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import grpc
from grpc import aio

from ops.interceptors import ObservabilityInterceptor

Wrap = Callable[[str, grpc.RpcMethodHandler], grpc.RpcMethodHandler]


class _WrappedGeneric(grpc.GenericRpcHandler):
    """A generic handler whose answers are wrapped, once per method name."""

    def __init__(self, inner: grpc.GenericRpcHandler, wrap: Wrap) -> None:
        self._inner = inner
        self._wrap = wrap
        self._wrapped: dict[str, grpc.RpcMethodHandler] = {}

    def service(
        self, handler_call_details: grpc.HandlerCallDetails
    ) -> grpc.RpcMethodHandler | None:
        method: str = handler_call_details.method  # type: ignore[attr-defined]
        wrapped = self._wrapped.get(method)
        if wrapped is None:
            handler = self._inner.service(handler_call_details)
            if handler is None:
                # Unknown names are not remembered: a client must not grow this table.
                return None
            wrapped = self._wrapped[method] = self._wrap(method, handler)
        return wrapped


# A call's metadata -> its wrapped handler (``ObservabilityInterceptor.call_router``).
Route = Callable[[Any], grpc.RpcMethodHandler]


class _Dispatcher(grpc.GenericRpcHandler):
    """The server's one handler: the registered methods' table (by full method name,
    ``/sundesk.v1.Desk/CreateTicket``, the route to each call's wrapped handler), then
    generic handlers in the order they were added, for names the table lacks."""

    def __init__(self) -> None:
        self.table: dict[str, Route] = {}
        self.generic: list[_WrappedGeneric] = []

    def service(
        self, handler_call_details: grpc.HandlerCallDetails
    ) -> grpc.RpcMethodHandler | None:
        route = self.table.get(handler_call_details.method)  # type: ignore[attr-defined]
        if route is not None:
            return route(handler_call_details.invocation_metadata)  # type: ignore[attr-defined]
        for generic in self.generic:
            handler = generic.service(handler_call_details)
            if handler is not None:
                return handler
        return None


class WrappingRegistrar:
    """What the generated ``add_*Servicer_to_server`` functions need of a server. The
    server itself gets one generic handler, the dispatcher (see the module's docstring)."""

    def __init__(
        self, server: aio.Server, wrap: Wrap, observe: ObservabilityInterceptor | None = None
    ) -> None:
        """``observe``, if given, wraps outside ``wrap``: from the table it is given each
        call's metadata as grpc already parsed it (``call_router``)."""
        self._wrap = wrap
        self._observe = observe
        self._dispatcher = _Dispatcher()
        server.add_generic_rpc_handlers([self._dispatcher])

    def add_generic_rpc_handlers(self, handlers: Sequence[grpc.GenericRpcHandler]) -> None:
        wrap = (
            self._wrap if self._observe is None else chain(self._observe.wrap_handler, self._wrap)
        )
        self._dispatcher.generic.extend(_WrappedGeneric(h, wrap) for h in handlers)

    def add_registered_method_handlers(
        self, service: str, handlers: Mapping[str, grpc.RpcMethodHandler]
    ) -> None:
        table = self._dispatcher.table
        for name, handler in handlers.items():
            method = f"/{service}/{name}"
            if method in table:
                raise ValueError(f"{method} is registered twice")
            wrapped = self._wrap(method, handler)
            if self._observe is not None:
                table[method] = self._observe.call_router(method, wrapped)
            else:
                table[method] = _always(wrapped)


def _always(handler: grpc.RpcMethodHandler) -> Route:
    return lambda metadata: handler


def passing_bytes(method: str, handler: grpc.RpcMethodHandler) -> grpc.RpcMethodHandler:
    """``handler`` answering either with its response message or with that message already
    encoded (``bytes``, e.g. ``node.ticket_wire``'s tickets), which grpc then sends as it
    is: unary responses only; a stream's items are always messages."""
    serialize = handler.response_serializer
    if handler.unary_unary is None or serialize is None:
        return handler

    def serializer(response: Any) -> bytes:
        if response.__class__ is bytes:
            return response  # type: ignore[no-any-return]
        return serialize(response)  # type: ignore[no-any-return]

    return grpc.unary_unary_rpc_method_handler(
        handler.unary_unary,
        request_deserializer=handler.request_deserializer,
        response_serializer=serializer,
    )


def chain(*wraps: Wrap) -> Wrap:
    """One wrap from several, the first outermost."""

    def wrap(method: str, handler: grpc.RpcMethodHandler) -> grpc.RpcMethodHandler:
        for one in reversed(wraps):
            handler = one(method, handler)
        return handler

    return wrap


def make_server(
    options: Sequence[tuple[str, Any]],
    observe: ObservabilityInterceptor | None,
    interceptors: Sequence[aio.ServerInterceptor],
    *wraps: Wrap,
    maximum_concurrent_rpcs: int | None = None,
) -> tuple[aio.Server, WrappingRegistrar]:
    """A server, and the registrar to add its services through.

    Every unary method may answer with its response already encoded (``passing_bytes``,
    innermost). ``observe`` (metrics and spans of every call) wraps the handlers outside
    ``wraps`` (innermost last) when there are no other ``interceptors``; with some, it runs
    as the first interceptor, outside them, so the calls they refuse are counted and traced
    too.
    """
    chained = list(interceptors)
    if observe is not None and chained:
        chained.insert(0, observe)
        observe = None
    server = aio.server(
        interceptors=chained or None,
        options=list(options),
        maximum_concurrent_rpcs=maximum_concurrent_rpcs,
    )
    return server, WrappingRegistrar(server, chain(*wraps, passing_bytes), observe)
