"""A small client for the CLI and tests: one channel, the stubs, and table output."""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from types import TracebackType
from typing import Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from rich.console import Console
from rich.table import Table

from sundesk.v1 import desk_pb2_grpc, federation_pb2_grpc

DEFAULT_NODE = "127.0.0.1:50051"


def default_node() -> str:
    return os.environ.get("SUNDESK_NODE", DEFAULT_NODE)


class Client:
    def __init__(self, address: str) -> None:
        self.address = address
        self.channel = grpc.insecure_channel(
            address, options=[("grpc.max_receive_message_length", 64 * 1024 * 1024)]
        )
        self.desk = desk_pb2_grpc.DeskStub(self.channel)
        self.federation = federation_pb2_grpc.FederationStub(self.channel)
        self.health = health_pb2_grpc.HealthStub(self.channel)

    def healthy(self, timeout: float = 1.0) -> bool:
        try:
            resp = self.health.Check(health_pb2.HealthCheckRequest(), timeout=timeout)
        except grpc.RpcError:
            return False
        return bool(resp.status == health_pb2.HealthCheckResponse.SERVING)

    def close(self) -> None:
        self.channel.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


def rpc_error_line(err: grpc.RpcError, address: str) -> str:
    """One line for a failed call: the status and the node's message."""
    code: Any = err.code() if hasattr(err, "code") else None
    details = err.details() if hasattr(err, "details") else str(err)
    name = code.name if code is not None else "UNKNOWN"
    if code == grpc.StatusCode.UNAVAILABLE and "failed to connect" in (details or "").lower():
        return f"error: UNAVAILABLE: cannot reach a node at {address}; is `sundesk node` running?"
    if code == grpc.StatusCode.RESOURCE_EXHAUSTED and "larger than max" in (details or ""):
        return f"error: RESOURCE_EXHAUSTED: the request is too large ({details}); send less"
    if code == grpc.StatusCode.DEADLINE_EXCEEDED:
        return f"error: DEADLINE_EXCEEDED: the node at {address} did not answer in time"
    return f"error: {name}: {details}"


def print_table(headers: Sequence[str], rows: Sequence[Sequence[Any]], title: str = "") -> None:
    table = Table(title=title or None, show_edge=False, header_style="bold")
    for h in headers:
        table.add_column(h)
    for row in rows:
        table.add_row(*(str(v) for v in row))
    Console(file=sys.stdout, width=max(100, Console().width)).print(table)
