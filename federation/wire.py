"""Operations to and from their protobuf form."""

from __future__ import annotations

import orjson

from federation.operations import Operation
from node.errors import InvalidArgument
from sundesk.v1 import federation_pb2 as fpb


def op_to_pb(op: Operation) -> fpb.Operation:
    return fpb.Operation(
        origin=op.origin,
        seq=op.seq,
        hlc=op.hlc,
        ticket=op.ticket,
        kind=op.kind,
        fields=op.fields_json(),
        trace_context=dict(op.trace_context),
        signature=op.signature,
    )


def op_from_pb(msg: fpb.Operation) -> Operation:
    try:
        fields = orjson.loads(msg.fields)
    except orjson.JSONDecodeError as exc:
        raise InvalidArgument(f"operation {msg.origin}:{msg.seq} has malformed fields") from exc
    if not isinstance(fields, dict) or not msg.origin or msg.seq < 1 or not msg.ticket:
        raise InvalidArgument(f"operation {msg.origin}:{msg.seq} is malformed")
    return Operation(
        origin=msg.origin,
        seq=msg.seq,
        hlc=msg.hlc,
        ticket=msg.ticket,
        kind=msg.kind,
        fields=fields,
        trace_context=dict(msg.trace_context),
        signature=msg.signature,
    )
