"""Tickets written straight as protobuf wire bytes (``sundesk.v1.Ticket``).

Every write and every read answers with a ticket. Building the ``pb.Ticket`` field by
field (about 25 fields, two timestamps, the replication status) and letting grpc
serialize it cost the event loop's thread about 23 µs of a CreateTicket's 250 under the
benchmark's load (a node answering with one cached message instead: 225 against
248 µs a call, 10% more calls a second, side by side). Here the same message is written as
bytes, in field-number order, as protobuf's own encoder writes it; a unary method that
answers with ``bytes`` has them sent as they are (``node.handlers.passing_bytes``), and
the few places that need a message (``WatchTickets``' events) parse them back.

The proto is the contract: ``tests/unit/test_ticket_wire.py`` compares what this writes
with a message built through the protobuf API for tickets with every field set, and
fails when ``Ticket`` gains a field that this module does not write.

Proto3 fields left at their default are not written; sub-messages that were set are,
even when empty (the wire format itself: ``ops.protowire``).
"""

from __future__ import annotations

import math
import struct
from collections.abc import Mapping
from datetime import UTC, datetime
from functools import lru_cache

from node.convert import KIND_TO_PB, ROLE_TO_PB, STATE_TO_PB, TIER_TO_PB
from node.sla import SlaStatus
from node.tickets import CommentView, State, StateChangeView, TicketView, parse_iso
from ops.protowire import FIXED64, LENGTH, VARINT, key, varint
from sundesk.v1 import desk_pb2 as pb

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_DOUBLE = struct.Struct("<d")


def _put_string(out: list[bytes], tag: bytes, text: str) -> None:
    if text:
        _put_message(out, tag, text.encode())


def _put_int(out: list[bytes], tag: bytes, value: int) -> None:
    if value:
        out.append(tag)
        out.append(varint(value))


def _put_message(out: list[bytes], tag: bytes, body: bytes) -> None:
    out.append(tag)
    out.append(varint(len(body)))
    out.append(body)


@lru_cache(maxsize=4096)
def timestamp(text: str) -> bytes:
    """The body of a ``google.protobuf.Timestamp`` for an ISO-8601 time (``seconds`` = 1,
    ``nanos`` = 2); the writes of one millisecond share it."""
    delta = parse_iso(text) - _EPOCH
    seconds = delta.days * 86400 + delta.seconds
    nanos = delta.microseconds * 1000
    out: list[bytes] = []
    _put_int(out, _V1, seconds)
    _put_int(out, _V2, nanos)
    return b"".join(out)


def _put_time(out: list[bytes], tag: bytes, text: str) -> None:
    if text:
        _put_message(out, tag, timestamp(text))


def _put_double(out: list[bytes], tag: bytes, value: float) -> None:
    if value != 0.0 or math.copysign(1.0, value) < 0:  # -0.0 is not the default: written
        out.append(tag)
        out.append(_DOUBLE.pack(value))


# Ticket's fields, by number (desk.proto).
_CODE = key(1, LENGTH)
_TITLE = key(2, LENGTH)
_DESCRIPTION = key(3, LENGTH)
_KIND = key(4, VARINT)
_STATE = key(5, VARINT)
_PRIORITY = key(6, VARINT)
_CUSTOMER = key(7, LENGTH)
_ASSET = key(8, LENGTH)
_TIER = key(9, VARINT)
_HOME_REGION = key(10, LENGTH)
_QUEUE = key(11, LENGTH)
_ASSIGNEE = key(12, LENGTH)
_SECOND_ENGINEER = key(13, LENGTH)
_ESCALATION_LEVEL = key(14, VARINT)
_VERSION = key(15, VARINT)
_CREATED_BY = key(16, LENGTH)
_ORIGIN_REGION = key(17, LENGTH)
_CREATED_AT = key(18, LENGTH)
_UPDATED_AT = key(19, LENGTH)
_COMMENTS = key(20, LENGTH)
_HISTORY = key(21, LENGTH)
_CAUSE = key(22, LENGTH)
_SATISFACTION = key(23, VARINT)
_FIRST_RESPONSE_AT = key(24, LENGTH)
_RESOLVED_AT = key(25, LENGTH)
_RESPONSE_DUE = key(26, LENGTH)
_RESOLUTION_DUE = key(27, LENGTH)
_REOPEN_COUNT = key(28, VARINT)
_REPLICATION = key(29, LENGTH)
_DIGEST = key(30, LENGTH)
_SOURCE = key(31, LENGTH)
_LABELS = key(32, LENGTH)
_SLA = key(33, LENGTH)
_OCCURRENCES = key(34, VARINT)
_FIRST_SEEN = key(35, LENGTH)
_LAST_SEEN = key(36, LENGTH)
_CUSTOMER_NOTIFIED_AT = key(37, LENGTH)

# Comment: id 1, author 2, text 3, at 4, region 5, internal 6.
# StateChange: from_state 1, to_state 2, by 3, role 4, at 5, region 6, note 7.
# SlaClock: response 1, resolution 2, response_left_seconds 3, resolution_left_seconds 4,
# paused 5, response_recorded 6, resolution_recorded 7.
# ReplicationStatus: last_change_id 1 (the rest comes encoded, see ``ticket``).
_F1 = key(1, LENGTH)
_F2 = key(2, LENGTH)
_F3 = key(3, LENGTH)
_F4 = key(4, LENGTH)
_F5 = key(5, LENGTH)
_F6 = key(6, LENGTH)
_F7 = key(7, LENGTH)
_V1 = key(1, VARINT)
_V2 = key(2, VARINT)
_V3 = key(3, VARINT)
_V4 = key(4, VARINT)
_V5 = key(5, VARINT)
_V6 = key(6, VARINT)
_D3 = key(3, FIXED64)
_D4 = key(4, FIXED64)
_TRUE = varint(1)


def _comment(out: list[bytes], c: CommentView) -> None:
    body: list[bytes] = []
    _put_string(body, _F1, c.id)
    _put_string(body, _F2, c.author)
    _put_string(body, _F3, c.text)
    _put_time(body, _F4, c.at)
    _put_string(body, _F5, c.region)
    if c.internal:
        body.append(_V6)
        body.append(_TRUE)
    _put_message(out, _COMMENTS, b"".join(body))


def _state_change(out: list[bytes], h: StateChangeView) -> None:
    body: list[bytes] = []
    _put_int(body, _V1, STATE_TO_PB[h.from_state])
    _put_int(body, _V2, STATE_TO_PB[h.to_state])
    _put_string(body, _F3, h.by)
    _put_int(body, _V4, ROLE_TO_PB[h.role])
    _put_time(body, _F5, h.at)
    _put_string(body, _F6, h.region)
    _put_string(body, _F7, h.note)
    _put_message(out, _HISTORY, b"".join(body))


def _labels(out: list[bytes], labels: Mapping[str, str]) -> None:
    # A map is a repeated entry message (key 1, value 2); both are written, as protobuf's
    # encoder writes them, in key order so that equal tickets give equal bytes.
    for name in sorted(labels):
        k = name.encode()
        v = labels[name].encode()
        entry = _F1 + varint(len(k)) + k + _F2 + varint(len(v)) + v
        _put_message(out, _LABELS, entry)


def sla_clock(status: SlaStatus, paused: bool, recorded: Mapping[str, str]) -> bytes:
    """The body of a ``SlaClock``: the two clocks' states and counted time left, whether
    they stand still (pending the customer), and what the queue's owner recorded."""
    out: list[bytes] = []
    _put_string(out, _F1, status.response)
    _put_string(out, _F2, status.resolution)
    _put_double(out, _D3, status.response_left.total_seconds())
    _put_double(out, _D4, status.resolution_left.total_seconds())
    if paused:
        out.append(_V5)
        out.append(_TRUE)
    _put_string(out, _F6, recorded.get("response", ""))
    _put_string(out, _F7, recorded.get("resolution", ""))
    return b"".join(out)


def ticket(t: TicketView, replication: bytes = b"", sla: SlaStatus | None = None) -> bytes:
    """``t`` as a ``sundesk.v1.Ticket``'s bytes. ``replication``: the encoded
    ``ReplicationStatus`` fields after ``last_change_id`` (applied_in, missing_in,
    version_vector), shared by every reply of a commit group; ``sla``: the SLA clocks
    when the ticket has them (its ``sla`` field is left out otherwise)."""
    out: list[bytes] = []
    _put_string(out, _CODE, t.code)
    _put_string(out, _TITLE, t.title)
    _put_string(out, _DESCRIPTION, t.description)
    _put_int(out, _KIND, KIND_TO_PB[t.kind])
    _put_int(out, _STATE, STATE_TO_PB[t.state])
    _put_int(out, _PRIORITY, t.priority)
    _put_string(out, _CUSTOMER, t.customer)
    _put_string(out, _ASSET, t.asset)
    if t.tier is not None:
        _put_int(out, _TIER, TIER_TO_PB[t.tier])
    _put_string(out, _HOME_REGION, t.home_region)
    _put_string(out, _QUEUE, t.queue)
    _put_string(out, _ASSIGNEE, t.assignee)
    _put_string(out, _SECOND_ENGINEER, t.second_engineer)
    _put_int(out, _ESCALATION_LEVEL, t.escalation_level)
    _put_int(out, _VERSION, t.version)
    _put_string(out, _CREATED_BY, t.created_by)
    _put_string(out, _ORIGIN_REGION, t.origin_region)
    _put_time(out, _CREATED_AT, t.created_at)
    _put_time(out, _UPDATED_AT, t.updated_at)
    for c in t.comments:
        _comment(out, c)
    for h in t.history:
        _state_change(out, h)
    _put_string(out, _CAUSE, t.cause)
    _put_int(out, _SATISFACTION, t.satisfaction)
    _put_time(out, _FIRST_RESPONSE_AT, t.first_response_at)
    _put_time(out, _RESOLVED_AT, t.resolved_at)
    _put_time(out, _RESPONSE_DUE, t.response_due)
    _put_time(out, _RESOLUTION_DUE, t.resolution_due)
    if t.history:
        _put_int(out, _REOPEN_COUNT, t.reopen_count)
    status: list[bytes] = []
    _put_string(status, _F1, t.last_change_id)
    status.append(replication)
    _put_message(out, _REPLICATION, b"".join(status))
    _put_string(out, _DIGEST, t.digest)
    _put_string(out, _SOURCE, t.source)
    if t.labels:
        _labels(out, t.labels)
    if sla is not None:
        _put_message(out, _SLA, sla_clock(sla, t.state == State.PENDING_CUSTOMER, t.sla_recorded))
    if t.occurrences:
        _put_int(out, _OCCURRENCES, len(t.occurrences))
        _put_time(out, _FIRST_SEEN, t.first_seen)
        _put_time(out, _LAST_SEEN, t.last_seen)
    _put_time(out, _CUSTOMER_NOTIFIED_AT, t.customer_notified_at)
    return b"".join(out)


def ticket_message(
    t: TicketView, replication: bytes = b"", sla: SlaStatus | None = None
) -> pb.Ticket:
    """``ticket``'s bytes as a message, for the few places that need one (a stream's
    event, tools)."""
    return pb.Ticket.FromString(ticket(t, replication, sla))


def tickets_page(tickets: list[bytes], next_page_token: str, total: int) -> bytes:
    """A ``ListTicketsResponse`` (tickets 1, next_page_token 2, total 3) of encoded
    tickets."""
    out: list[bytes] = []
    for one in tickets:
        _put_message(out, _F1, one)
    _put_string(out, _F2, next_page_token)
    _put_int(out, _V3, total)
    return b"".join(out)
