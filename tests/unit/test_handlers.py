"""Handlers wrapped once at registration: both of grpc's registration paths are wrapped,
each method once, and made-up method names are not remembered. Services the generated
code would register as grpc's registered methods go into one table instead."""

from __future__ import annotations

import asyncio
from typing import Any

import grpc
import pytest
from grpc import aio

from node.handlers import WrappingRegistrar, chain, make_server
from sundesk.v1 import desk_pb2, desk_pb2_grpc, sun_pb2_grpc


class Desk(desk_pb2_grpc.DeskServicer):
    async def GetTicket(self, request: Any, context: aio.ServicerContext) -> desk_pb2.Ticket:
        return desk_pb2.Ticket(code=request.code)


def tagging(tag: str, wrapped: list[tuple[str, str]]) -> Any:
    """A wrap that records what it wrapped and appends ``tag`` to every reply's title."""

    def wrap(method: str, handler: grpc.RpcMethodHandler) -> grpc.RpcMethodHandler:
        wrapped.append((tag, method))
        if handler.unary_unary is None:
            return handler
        inner = handler.unary_unary

        async def call(request: Any, context: aio.ServicerContext) -> Any:
            reply = await inner(request, context)
            reply.title += tag
            return reply

        return grpc.unary_unary_rpc_method_handler(
            call,
            request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer,
        )

    return wrap


class Details(grpc.HandlerCallDetails):
    def __init__(self, method: str) -> None:
        self.method = method
        self.invocation_metadata = ()


def test_calls_go_through_the_wraps_first_outermost() -> None:
    wrapped: list[tuple[str, str]] = []

    async def run() -> str:
        server, registrar = make_server(
            (), None, (), tagging("<outer", wrapped), tagging("<inner", wrapped)
        )
        desk_pb2_grpc.add_DeskServicer_to_server(Desk(), registrar)
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        try:
            async with aio.insecure_channel(f"127.0.0.1:{port}") as channel:
                for _ in range(3):
                    reply = await desk_pb2_grpc.DeskStub(channel).GetTicket(
                        desk_pb2.GetTicketRequest(code="VEL-000001"), timeout=10
                    )
                return str(reply.title)
        finally:
            await server.stop(None)

    title = asyncio.run(run())
    assert title == "<inner<outer"  # the inner wrap ran first on the way out
    # Handlers are wrapped once per method at registration, not per call.
    get = "/sundesk.v1.Desk/GetTicket"
    assert wrapped.count(("<inner", get)) == wrapped.count(("<outer", get)) == 1


class RecordingServer:
    def __init__(self) -> None:
        self.generic: list[Any] = []
        self.registered: list[str] = []

    def add_generic_rpc_handlers(self, handlers: Any) -> None:
        self.generic.extend(handlers)

    def add_registered_method_handlers(self, service: str, handlers: Any) -> None:
        self.registered.append(service)


def test_services_share_one_method_table_and_no_registered_methods() -> None:
    server = RecordingServer()
    registrar = WrappingRegistrar(server, chain())  # type: ignore[arg-type]
    desk_pb2_grpc.add_DeskServicer_to_server(Desk(), registrar)
    sun_pb2_grpc.add_SunServicer_to_server(sun_pb2_grpc.SunServicer(), registrar)
    # grpc.aio waits on one future per registered method for every call it accepts.
    assert server.registered == []
    (dispatcher,) = server.generic
    for method in ("/sundesk.v1.Desk/GetTicket", "/sundesk.v1.Sun/AckHandoff"):
        assert method in dispatcher.table  # answered by the table, not a generic handler
        handler = dispatcher.service(Details(method))
        assert handler is not None and handler.unary_unary is not None
    assert dispatcher.service(Details("/sundesk.v1.Desk/Nope")) is None
    with pytest.raises(ValueError, match=r"/sundesk\.v1\.Desk/CreateTicket is registered twice"):
        desk_pb2_grpc.add_DeskServicer_to_server(Desk(), registrar)


def test_generic_handlers_wrap_each_method_once_and_forget_unknown_names() -> None:
    wrapped: list[tuple[str, str]] = []
    added: list[Any] = []

    class Server:
        def add_generic_rpc_handlers(self, handlers: Any) -> None:
            added.extend(handlers)

    registrar = WrappingRegistrar(Server(), chain(tagging("t", wrapped)))  # type: ignore[arg-type]
    handlers = {
        "GetTicket": grpc.unary_unary_rpc_method_handler(Desk().GetTicket),
    }
    registrar.add_generic_rpc_handlers(
        (grpc.method_handlers_generic_handler("sundesk.v1.Desk", handlers),)
    )
    (dispatcher,) = added
    (generic,) = dispatcher.generic
    assert dispatcher.service(Details("/sundesk.v1.Desk/GetTicket")) is not None
    first = generic.service(Details("/sundesk.v1.Desk/GetTicket"))
    again = generic.service(Details("/sundesk.v1.Desk/GetTicket"))
    assert first is again and first is not handlers["GetTicket"]
    for i in range(5):
        assert generic.service(Details(f"/made.up/M{i}")) is None
    assert wrapped == [("t", "/sundesk.v1.Desk/GetTicket")]
    assert len(generic._wrapped) == 1
    assert dispatcher.service(Details("/made.up/M0")) is None


def test_a_method_the_server_does_not_have_is_unimplemented() -> None:
    """With every method behind one generic handler, a name it lacks must still get
    grpc's own UNIMPLEMENTED, for a made-up service and for a made-up method alike."""

    async def run() -> list[grpc.StatusCode]:
        server, registrar = make_server((), None, ())
        desk_pb2_grpc.add_DeskServicer_to_server(Desk(), registrar)
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        codes = []
        try:
            async with aio.insecure_channel(f"127.0.0.1:{port}") as channel:
                for method in ("/sundesk.v1.Desk/Nope", "/made.up.Service/Call"):
                    call = channel.unary_unary(method)
                    try:
                        await call(b"", timeout=10)
                    except aio.AioRpcError as exc:
                        codes.append(exc.code())
                # The server still serves what it has.
                reply = await desk_pb2_grpc.DeskStub(channel).GetTicket(
                    desk_pb2.GetTicketRequest(code="VEL-000007"), timeout=10
                )
                assert reply.code == "VEL-000007"
        finally:
            await server.stop(None)
        return codes

    assert asyncio.run(run()) == [grpc.StatusCode.UNIMPLEMENTED] * 2
