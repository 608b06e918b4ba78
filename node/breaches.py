"""SLA events and escalation (pure): what the queue's owner records when a target comes
close or is missed.

An event is a ``(ticket, target, state)`` with ``state`` "at_risk" or "breached". It is
recorded twice, by the owner only: on the ticket (registers ``sla_<target>`` and the
escalation level) and as a record ``BR-<code>-<target>-<state>`` that ops can list.
Both are idempotent by construction, so exactly one event exists per ticket, target and
state however many times and from however many regions it is detected:

- the record's id is deterministic and its first write wins;
- the ticket's level is *set* from the events recorded (never incremented), so two
  writes of the same event leave the same level;
- a ticket already at (or past) the state is not written again.

Levels (L1 at creation): a missed response is L2, a resolution at risk L3, a missed
resolution L4. A response at risk is recorded but escalates nobody: it is a warning for
the engineer on the case.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from node.errors import FailedPrecondition
from node.sla import AT_RISK, BREACHED, SlaStatus
from node.tickets import TicketView, iso

BREACH_PREFIX = "BR-"
BREACH_RECORD = "sla.breach"
TARGETS = ("response", "resolution")
_RANK = {"": 0, "ok": 0, AT_RISK: 1, BREACHED: 2}
LEVELS: dict[tuple[str, str], int] = {
    ("response", BREACHED): 2,
    ("resolution", AT_RISK): 3,
    ("resolution", BREACHED): 4,
}
MAX_LEVEL = 4


@dataclass(frozen=True)
class SlaEvent:
    code: str
    queue: str
    tier: str
    target: str
    state: str
    due: str

    @property
    def id(self) -> str:
        return f"{BREACH_PREFIX}{self.code}-{self.target}-{self.state}"

    @property
    def level(self) -> int:
        return LEVELS.get((self.target, self.state), 1)


class AlreadyRecorded(FailedPrecondition):
    """The ticket already carries this event (another detection, or another region)."""


def detect(ticket: TicketView, status: SlaStatus) -> list[SlaEvent]:
    """Events the ticket does not carry yet. Only open tickets; an answered clock can
    only have been breached (answered late), never be at risk."""
    if not ticket.is_open or ticket.tier is None:
        return []
    found = []
    answered = bool(ticket.first_response_at)
    for target, state, due in (
        ("response", status.response, status.due.response_due),
        ("resolution", status.resolution, status.due.resolution_due),
    ):
        if state not in (AT_RISK, BREACHED) or (
            target == "response" and answered and state == AT_RISK
        ):
            continue
        if _RANK[state] <= _RANK[ticket.sla_recorded.get(target, "")]:
            continue
        found.append(
            SlaEvent(ticket.code, ticket.queue, ticket.tier.value, target, state, iso(due))
        )
    return found


def ticket_fields(
    current: TicketView, event: SlaEvent, epoch: int, region: str, now: datetime
) -> dict[str, Any]:
    """The ticket operation recording ``event``; raises ``AlreadyRecorded`` if it is there,
    ``FailedPrecondition`` if a newer owner epoch already recorded an event on it."""
    if _RANK[event.state] <= _RANK[current.sla_recorded.get(event.target, "")]:
        raise AlreadyRecorded(f"{current.code} already has its {event.target} {event.state}")
    if current.sla_epoch > epoch:
        raise FailedPrecondition(
            f"{current.code}: epoch {epoch} is older than {current.sla_epoch}, which already "
            "acted on it; the stale owner loses"
        )
    fields: dict[str, Any] = {
        f"sla_{event.target}": event.state,
        "sla_epoch": epoch,
        f"sla_{event.target}_event": {
            "state": event.state,
            "due": event.due,
            "at": iso(now),
            "region": region,
            "epoch": epoch,
        },
    }
    level = min(max(current.escalation_level, event.level), MAX_LEVEL)
    if level != current.escalation_level:
        fields["escalation_level"] = level
        fields["escalation"] = {
            "by": "sla",
            "reason": f"{event.target} {event.state.replace('_', ' ')} (due {event.due})",
            "epoch": epoch,
            "region": region,
            "at": iso(now),
        }
    return fields


def record_fields(
    event: SlaEvent, epoch: int, region: str, now: datetime, level: int
) -> dict[str, Any]:
    return {
        "id": event.id,
        "code": event.code,
        "queue": event.queue,
        "tier": event.tier,
        "target": event.target,
        "state": event.state,
        "due": event.due,
        "at": iso(now),
        "region": region,
        "epoch": epoch,
        "escalation_level": level,
    }
