"""Protobuf's wire format, the few pieces that the node's hand-written encoders need
(the span relay's OTLP requests, ``ops.span_relay``; the node's tickets,
``node.ticket_wire``).

A field is its key (``number << 3 | wire type``) as a varint, then a varint (type 0),
eight little-endian bytes (type 1), or a length and that many bytes (type 2: strings,
bytes, sub-messages, packed and map entries). Source: the protobuf encoding guide
(protobuf.dev/programming-guides/encoding).
"""

from __future__ import annotations

VARINT = 0
FIXED64 = 1
LENGTH = 2


def _encode(value: int) -> bytes:
    out = bytearray()
    while value >= 0x80:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


# Keys, lengths and most numbers are below this: looked up rather than computed.
_TABLE_SIZE = 1 << 14
_TABLE: list[bytes] = [_encode(n) for n in range(_TABLE_SIZE)]


def varint(value: int) -> bytes:
    """``value`` as a varint; a negative one as its 64-bit two's complement (ten bytes), as
    int32 and int64 fields carry it."""
    if 0 <= value < _TABLE_SIZE:
        return _TABLE[value]
    if value < 0:
        value &= 0xFFFF_FFFF_FFFF_FFFF
    return _encode(value)


def key(number: int, wire_type: int) -> bytes:
    return varint(number << 3 | wire_type)


def length_delimited(number: int, body: bytes) -> bytes:
    """Field ``number`` holding ``body`` (UTF-8 text, bytes, a sub-message's encoding)."""
    return varint(number << 3 | LENGTH) + varint(len(body)) + body
