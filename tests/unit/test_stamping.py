"""Writes carry the token's subject as their actor; another name is refused."""

from __future__ import annotations

from typing import Any

import pytest

from node.auth import Claims, authorize
from node.errors import PermissionDenied
from node.stamping import ACTOR_FIELDS, stamp_actor
from sundesk.v1 import desk_pb2, sun_pb2

REQUESTS: dict[str, Any] = {
    "/sundesk.v1.Desk/CreateTicket": desk_pb2.CreateTicketRequest,
    "/sundesk.v1.Desk/UpdateTicket": desk_pb2.UpdateTicketRequest,
    "/sundesk.v1.Desk/AddComment": desk_pb2.AddCommentRequest,
    "/sundesk.v1.Sun/AckHandoff": sun_pb2.AckHandoffRequest,
    "/sundesk.v1.Sun/SetNote": sun_pb2.SetNoteRequest,
    "/sundesk.v1.Sun/EscalateTicket": sun_pb2.EscalateTicketRequest,
}


def test_every_stamped_method_has_its_request_and_field() -> None:
    assert set(REQUESTS) == set(ACTOR_FIELDS)
    for method, message in REQUESTS.items():
        assert ACTOR_FIELDS[method] in message.DESCRIPTOR.fields_by_name


@pytest.mark.parametrize("method", sorted(ACTOR_FIELDS))
def test_an_empty_actor_becomes_the_subject(method: str) -> None:
    request = REQUESTS[method]()
    stamp_actor("alice", method, request)
    assert getattr(request, ACTOR_FIELDS[method]) == "alice"


@pytest.mark.parametrize("method", sorted(ACTOR_FIELDS))
def test_writing_in_someone_elses_name_is_refused(method: str) -> None:
    request = REQUESTS[method]()
    setattr(request, ACTOR_FIELDS[method], "mallory")
    with pytest.raises(PermissionDenied, match="belongs to 'alice'; it cannot write as 'mallory'"):
        stamp_actor("alice", method, request)
    assert getattr(request, ACTOR_FIELDS[method]) == "mallory"


def test_the_own_name_passes_and_reads_are_untouched() -> None:
    request = desk_pb2.UpdateTicketRequest(actor="alice")
    stamp_actor("alice", "/sundesk.v1.Desk/UpdateTicket", request)
    assert request.actor == "alice"
    get = desk_pb2.GetTicketRequest(code="VEL-000001")
    stamp_actor("alice", "/sundesk.v1.Desk/GetTicket", get)
    assert get.code == "VEL-000001"


def test_authorize_stamps_agent_writes() -> None:
    request = desk_pb2.CreateTicketRequest(title="t")
    authorize(Claims("agent", "alice"), "/sundesk.v1.Desk/CreateTicket", request)
    assert request.created_by == "alice"
    ack = sun_pb2.AckHandoffRequest(id="HO-1", by="bob")
    with pytest.raises(PermissionDenied):
        authorize(Claims("oncall", "carol"), "/sundesk.v1.Sun/AckHandoff", ack)
