"""A small client for the CLI and tests: one channel, the stubs, and table output."""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from types import TracebackType
from typing import TYPE_CHECKING, Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from rich.console import Console
from rich.table import Table

from sundesk.v1 import desk_pb2_grpc, federation_pb2_grpc

if TYPE_CHECKING:
    from ops.credentials import ClientCredentials

DEFAULT_NODE = "127.0.0.1:50051"


def default_node() -> str:
    return os.environ.get("SUNDESK_NODE", DEFAULT_NODE)


class Client:
    """``credentials`` None dials plaintext (a node started with ``--insecure``)."""

    def __init__(self, address: str, credentials: ClientCredentials | None = None) -> None:
        self.address = address
        options = [("grpc.max_receive_message_length", 64 * 1024 * 1024)]
        if credentials is None:
            self.channel = grpc.insecure_channel(address, options=options)
        else:
            self.channel = grpc.secure_channel(
                address, credentials.channel_credentials(), options=options
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
        return (
            f"error: UNAVAILABLE: cannot reach a node at {address}; is `sundesk node` running, "
            "and does it serve what you dial (mTLS by default, plaintext with --insecure)?"
        )
    if code == grpc.StatusCode.RESOURCE_EXHAUSTED and "larger than max" in (details or ""):
        return f"error: RESOURCE_EXHAUSTED: the request is too large ({details}); send less"
    if code == grpc.StatusCode.UNAVAILABLE and "handshake" in (details or "").lower():
        return (
            f"error: UNAVAILABLE: TLS with the node at {address} failed ({details}); "
            "check --ca/--cert/--key, or --insecure for a plaintext node"
        )
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


def connect(args: Any, role: str = "agent") -> Client:
    """A client for a CLI command: ``--node`` and the credentials the command presents."""
    from ops.credentials import for_command

    return Client(args.node, for_command(args, role, subject=getattr(args, "by", "") or ""))
