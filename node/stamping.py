"""Writes carry the person who made them: the token's subject, not a name typed freely.

Each write request names its actor in one field (``created_by``, ``actor``, ``author``
or ``by``). For a caller with a token, an empty actor is filled with the token's subject,
and a different one is refused: an agent cannot record a change in a colleague's name.
Pure over the protobuf message the servicer is about to receive.
"""

from __future__ import annotations

from typing import Any

from node.errors import PermissionDenied

ACTOR_FIELDS = {
    "/sundesk.v1.Desk/CreateTicket": "created_by",
    "/sundesk.v1.Desk/UpdateTicket": "actor",
    "/sundesk.v1.Desk/AddComment": "author",
    "/sundesk.v1.Sun/AckHandoff": "by",
    "/sundesk.v1.Sun/SetNote": "by",
    "/sundesk.v1.Sun/EscalateTicket": "by",
}


def stamps(method: str) -> bool:
    return method in ACTOR_FIELDS


def stamp_actor(subject: str, method: str, request: Any) -> None:
    """Fill or check the request's actor against ``subject``; raise ``PermissionDenied``."""
    name = ACTOR_FIELDS.get(method)
    if name is None or not subject:
        return
    given = str(getattr(request, name, "")).strip()
    if not given:
        setattr(request, name, subject)
        return
    if given != subject:
        raise PermissionDenied(
            f"this token belongs to {subject!r}; it cannot write as {given!r} "
            f"(leave {name} empty, or use {given}'s own token)"
        )


__all__ = ["ACTOR_FIELDS", "stamp_actor", "stamps"]
