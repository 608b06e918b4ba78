"""A bare grpc.aio service with the Desk messages: CreateTicket echoes the title back.

The baseline for the CreateTicket benchmark: the same messages, the same server options,
no store, no rules, no observability.
"""

from __future__ import annotations

import argparse
import asyncio
import signal

from grpc import aio

from node.server import server_options
from sundesk.v1 import desk_pb2 as pb
from sundesk.v1 import desk_pb2_grpc


class Echo(desk_pb2_grpc.DeskServicer):
    async def CreateTicket(self, request: pb.CreateTicketRequest, context: object) -> pb.Ticket:
        return pb.Ticket(code="ECHO-000000", title=request.title, customer=request.customer)


async def serve(listen: str) -> None:
    server = aio.server(options=server_options())
    desk_pb2_grpc.add_DeskServicer_to_server(Echo(), server)
    server.add_insecure_port(listen)
    await server.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_signal_handler(signal.SIGINT, stop.set)
    await stop.wait()
    await server.stop(1)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--listen", required=True)
    asyncio.run(serve(parser.parse_args().listen))


if __name__ == "__main__":
    main()
