"""Method handlers wrapped once, when services register, instead of by interceptors.

grpc.aio runs a server's interceptors on every call: a chain of coroutines, and each
interceptor that wraps builds a new handler. The node's own wrappers (error mapping,
metrics and spans) are the same for every call of a method, so ``WrappingRegistrar``
applies them at registration: it stands in for the server in the generated
``add_*Servicer_to_server`` functions and hands the server wrapped handlers. A call then
costs one wrapper per layer and no interceptor at all.
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


class WrappingRegistrar:
    """What the generated ``add_*Servicer_to_server`` functions need of a server."""

    def __init__(self, server: aio.Server, wrap: Wrap) -> None:
        self._server = server
        self._wrap = wrap

    def add_generic_rpc_handlers(self, handlers: Sequence[grpc.GenericRpcHandler]) -> None:
        self._server.add_generic_rpc_handlers([_WrappedGeneric(h, self._wrap) for h in handlers])

    def add_registered_method_handlers(
        self, service: str, handlers: Mapping[str, grpc.RpcMethodHandler]
    ) -> None:
        self._server.add_registered_method_handlers(
            service, {name: self._wrap(f"/{service}/{name}", h) for name, h in handlers.items()}
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

    ``observe`` (metrics and spans of every call) wraps the handlers like ``wraps`` do
    (innermost last) when there are no other ``interceptors``; with some, it runs as the
    first interceptor, outside them, so the calls they refuse are counted and traced too.
    """
    wrapping = list(wraps)
    chained = list(interceptors)
    if observe is not None:
        if chained:
            chained.insert(0, observe)
        else:
            wrapping.insert(0, observe.wrap_handler)
    server = aio.server(
        interceptors=chained or None,
        options=list(options),
        maximum_concurrent_rpcs=maximum_concurrent_rpcs,
    )
    return server, WrappingRegistrar(server, chain(*wrapping))
