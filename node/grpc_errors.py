"""The one place where domain errors become gRPC statuses.

``ErrorInterceptor`` (or ``wrap_errors`` at registration) wraps every handler: a
``SundeskError`` becomes its status with the error's message; anything unexpected is
logged with its traceback here and reaches the client as INTERNAL with an incident id,
never as a traceback. Bytes that do not parse as the method's request message become
INVALID_ARGUMENT (gRPC alone would answer UNKNOWN with the parser's exception): the
deserializer hands a ``MalformedRequest`` on instead of raising, and the wrapped handler
refuses it before the servicer sees it.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc
from grpc import aio

from node.errors import InvalidArgument, SundeskError

log = logging.getLogger("sundesk.grpc")


def status_of(err: SundeskError) -> grpc.StatusCode:
    return getattr(grpc.StatusCode, err.code_name, grpc.StatusCode.INTERNAL)


async def _abort(context: aio.ServicerContext, exc: Exception) -> None:
    if isinstance(exc, SundeskError):
        await context.abort(status_of(exc), str(exc))
    incident = uuid.uuid4().hex[:12]
    log.error("internal error %s", incident, exc_info=exc)
    await context.abort(grpc.StatusCode.INTERNAL, f"internal error {incident}; see the node's log")


class MalformedRequest:
    """What a request that could not be parsed turns into; never reaches a servicer."""

    def __init__(self, message: str) -> None:
        self.message = message

    def error(self) -> InvalidArgument:
        return InvalidArgument(self.message)


def _tolerant(deserialize: Callable[[bytes], Any] | None) -> Callable[[bytes], Any] | None:
    if deserialize is None:
        return None
    owner = getattr(deserialize, "__self__", None)
    name = getattr(getattr(owner, "DESCRIPTOR", None), "full_name", "request")

    def parse(data: bytes) -> Any:
        try:
            return deserialize(data)
        except Exception:
            return MalformedRequest(
                f"the request is not a valid {name} message ({len(data)} bytes that do not "
                "parse as protobuf); send the message the method expects"
            )

    return parse


async def _parsed(requests: AsyncIterator[Any]) -> AsyncIterator[Any]:
    async for request in requests:
        if isinstance(request, MalformedRequest):
            raise request.error()
        yield request


def _wrap_unary(behavior: Callable[..., Awaitable[Any]]) -> Callable[..., Awaitable[Any]]:
    async def handler(request: Any, context: aio.ServicerContext) -> Any:
        try:
            if isinstance(request, MalformedRequest):
                raise request.error()
            return await behavior(request, context)
        except aio.AbortError:
            raise
        except Exception as exc:
            await _abort(context, exc)

    return handler


def _wrap_stream(
    behavior: Callable[..., AsyncIterator[Any]], stream_in: bool = False
) -> Callable[..., AsyncIterator[Any]]:
    async def handler(request: Any, context: aio.ServicerContext) -> AsyncIterator[Any]:
        try:
            if isinstance(request, MalformedRequest):
                raise request.error()
            if stream_in:
                request = _parsed(request)
            async for item in behavior(request, context):
                yield item
        except aio.AbortError:
            raise
        except Exception as exc:
            await _abort(context, exc)

    return handler


class ErrorInterceptor(aio.ServerInterceptor):
    """Wraps each method's handler once; later calls reuse the wrapped handler."""

    def __init__(self) -> None:
        self._wrapped: dict[str, grpc.RpcMethodHandler] = {}

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        method = handler_call_details.method
        cached = self._wrapped.get(method)
        if cached is not None:
            return cached
        handler = await continuation(handler_call_details)
        if handler is None:
            return handler
        wrapped = _wrap(handler)
        self._wrapped[method] = wrapped
        return wrapped


def wrap_errors(method: str, handler: grpc.RpcMethodHandler) -> grpc.RpcMethodHandler:
    """``handler`` with its errors mapped, for ``node.handlers.WrappingRegistrar``: the same
    wrapping as ``ErrorInterceptor``'s, done once at registration."""
    return _wrap(handler)


def _wrap(handler: grpc.RpcMethodHandler) -> grpc.RpcMethodHandler:
    if handler.unary_unary is not None:
        return grpc.unary_unary_rpc_method_handler(
            _wrap_unary(handler.unary_unary),
            request_deserializer=_tolerant(handler.request_deserializer),
            response_serializer=handler.response_serializer,
        )
    if handler.unary_stream is not None:
        return grpc.unary_stream_rpc_method_handler(
            _wrap_stream(handler.unary_stream),
            request_deserializer=_tolerant(handler.request_deserializer),
            response_serializer=handler.response_serializer,
        )
    if handler.stream_stream is not None:
        # The first argument is the request iterator; the wrapper passes it through.
        return grpc.stream_stream_rpc_method_handler(
            _wrap_stream(handler.stream_stream, stream_in=True),
            request_deserializer=_tolerant(handler.request_deserializer),
            response_serializer=handler.response_serializer,
        )
    return handler
