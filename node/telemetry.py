"""Machines calling home (pure): alarm reports, the tickets they open, and silence.

Coordination-free deduplication: the code of a machine's ticket is derived from the
asset, the alarm code and an *incarnation* number (``MCH-<hash>-<n>``). Two regions that
receive the same alarm at once both write ``ticket.create`` for the same code, and the
merge makes them one ticket. Every report, the first included, adds an *occurrence*
(a grow-only set keyed by operation id, ``federation.merge``), so ten repeats sent to two
regions are ten occurrences on one ticket everywhere. Once that ticket is resolved or
closed, the next report opens incarnation ``n + 1``.

A silent machine uses the same scheme with the reserved code ``_SILENT`` (alarm codes
cannot start with ``_``), so even two owners acting across a handoff open one ticket.
"""

from __future__ import annotations

import base64
import hashlib
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Any

from federation.merge import COMMENT_KEY, OCCURRENCE_KEY
from node.contracts import Asset, Customer
from node.errors import InvalidArgument
from node.rules import NewTicket, create_fields
from node.tickets import Kind, Role, Tier, iso

TICKET_PREFIX = "MCH-"
SILENT_CODE = "_SILENT"
MAX_MESSAGE = 2000
MAX_DIAGNOSTICS = 64
MAX_DIAGNOSTIC_TEXT = 200
DEFAULT_MISSED_HEARTBEATS = 3
_ALARM_CODE = re.compile(r"^[A-Z0-9][A-Z0-9_.-]{0,31}$")


class Severity(StrEnum):
    CRITICAL = "critical"
    MAJOR = "major"
    MINOR = "minor"
    WARNING = "warning"


# Priority 1 (critical) .. 4 (low) from the severity; gold and platinum contracts raise
# every non-critical alarm one level (they pay for faster attention), bronze lowers a
# warning to nothing less than 4.
_BASE_PRIORITY = {Severity.CRITICAL: 1, Severity.MAJOR: 2, Severity.MINOR: 3, Severity.WARNING: 4}


@dataclass(frozen=True)
class Alarm:
    asset: str
    code: str
    severity: Severity
    message: str


@dataclass(frozen=True)
class Heartbeat:
    asset: str
    diagnostics: Mapping[str, str] = field(default_factory=dict)


def parse_severity(text: str) -> Severity:
    value = text.strip().lower()
    try:
        return Severity(value)
    except ValueError:
        allowed = ", ".join(s.value for s in Severity)
        raise InvalidArgument(
            f"alarm severity {text!r} is not known; use one of: {allowed}"
        ) from None


def checked_alarm(asset: str, code: str, severity: str, message: str) -> Alarm:
    """An alarm report with every field checked; the message names what to fix.

    Codes are compared case-insensitively (``e-42`` and ``E-42`` are one alarm)."""
    clean = code.strip().upper()
    if not clean:
        raise InvalidArgument(f"alarm code is empty; give the machine's code, e.g. E-42 ({asset})")
    if len(clean) > 32:
        raise InvalidArgument(f"alarm code {clean[:32]}... is {len(clean)} characters; at most 32")
    if not _ALARM_CODE.match(clean):
        raise InvalidArgument(
            f"alarm code {clean!r} may hold only letters, digits, '-', '_' and '.', "
            "starting with a letter or digit"
        )
    if len(message) > MAX_MESSAGE:
        raise InvalidArgument(
            f"alarm message is {len(message)} characters long; at most {MAX_MESSAGE} allowed"
        )
    return Alarm(asset=asset, code=clean, severity=parse_severity(severity), message=message)


def checked_heartbeat(asset: str, diagnostics: Mapping[str, str]) -> Heartbeat:
    if len(diagnostics) > MAX_DIAGNOSTICS:
        raise InvalidArgument(
            f"heartbeat carries {len(diagnostics)} diagnostics; at most {MAX_DIAGNOSTICS}"
        )
    for key, value in diagnostics.items():
        if not key.strip() or len(key) > MAX_DIAGNOSTIC_TEXT:
            raise InvalidArgument(
                f"diagnostic name {key[:40]!r} must be 1 to {MAX_DIAGNOSTIC_TEXT} characters"
            )
        if len(value) > MAX_DIAGNOSTIC_TEXT:
            raise InvalidArgument(
                f"diagnostic {key} is {len(value)} characters; at most {MAX_DIAGNOSTIC_TEXT}"
            )
    return Heartbeat(asset=asset, diagnostics=dict(diagnostics))


def alarm_priority(severity: Severity, tier: Tier | None) -> int:
    base = _BASE_PRIORITY[severity]
    if tier in (Tier.GOLD, Tier.PLATINUM):
        return max(1, base - 1)
    return base


def ticket_code(asset: str, alarm_code: str, incarnation: int) -> str:
    """The code every region derives for this asset, alarm and incarnation."""
    digest = hashlib.sha256(f"{asset}\x00{alarm_code}".encode()).digest()
    return f"{TICKET_PREFIX}{base64.b32encode(digest).decode()[:10]}-{incarnation}"


def occurrence_fields(alarm: Alarm, region: str, now: datetime) -> dict[str, Any]:
    return {
        OCCURRENCE_KEY: {
            "at": iso(now),
            "region": region,
            "severity": alarm.severity.value,
            "message": alarm.message[:200],
        }
    }


def alarm_ticket_fields(
    alarm: Alarm,
    asset: Asset,
    customer: Customer | None,
    incarnation: int,
    proactive: bool,
    region: str,
    now: datetime,
) -> dict[str, Any]:
    """The create operation of an alarm's ticket, its first occurrence included.

    ``proactive`` (a platinum contract's remote monitoring) records that the customer was
    told: a register, so two regions creating the ticket at once record it once."""
    tier = customer.tier if customer else None
    new = NewTicket(
        title=f"{asset.model or 'machine'} {asset.id}: alarm {alarm.code} ({alarm.severity})",
        description=alarm.message,
        kind=Kind.INCIDENT,
        priority=alarm_priority(alarm.severity, tier),
        customer=asset.customer,
        asset=asset.id,
        tier=tier,
        home_region=customer.home_region if customer else "",
        created_by=f"machine:{asset.id}",
        role=Role.SYSTEM,
        source="machine",
        labels={"alarm": alarm.code, "severity": alarm.severity.value},
    )
    fields = create_fields(new, region, now)
    fields.update(occurrence_fields(alarm, region, now))
    fields["incarnation"] = incarnation
    if proactive:
        fields["customer_notified_at"] = iso(now)
    return fields


# ----- silence ----------------------------------------------------------------------------


def silence_window(asset: Asset, missed: int) -> timedelta:
    return timedelta(seconds=asset.heartbeat_seconds * missed)


def is_silent(
    asset: Asset,
    last_seen: datetime,
    now: datetime,
    missed: int,
    slack: timedelta = timedelta(),
) -> bool:
    """Monitored and not heard of for ``missed`` heartbeat intervals.

    ``slack`` is how much older than the true last heartbeat ``last_seen`` may be (a
    coarsely replicated value): waiting for it too means a machine is never declared
    silent before it really missed ``missed`` intervals."""
    return asset.monitored and now - last_seen > silence_window(asset, missed) + slack


def silent_ticket_fields(
    asset: Asset,
    customer: Customer | None,
    last_seen: datetime,
    missed: int,
    incarnation: int,
    epoch: int,
    proactive: bool,
    region: str,
    now: datetime,
) -> dict[str, Any]:
    tier = customer.tier if customer else None
    new = NewTicket(
        title=f"machine silent: {asset.model or 'machine'} {asset.id}",
        description=(
            f"No heartbeat from {asset.id} (serial {asset.serial or '?'}) since "
            f"{iso(last_seen)}: {missed} intervals of {asset.heartbeat_seconds} s missed."
        ),
        kind=Kind.INCIDENT,
        priority=alarm_priority(Severity.MAJOR, tier),
        customer=asset.customer,
        asset=asset.id,
        tier=tier,
        home_region=customer.home_region if customer else "",
        created_by=f"machine:{asset.id}",
        role=Role.SYSTEM,
        source="machine",
        labels={"alarm": "silent"},
    )
    fields = create_fields(new, region, now)
    fields.update(
        {
            "incarnation": incarnation,
            "silent_since": iso(last_seen),
            "silence_epoch": epoch,
            "heartbeat_back_at": "",
        }
    )
    if proactive:
        fields["customer_notified_at"] = iso(now)
    return fields


def back_note_fields(
    asset: Asset, seen: datetime, epoch: int, region: str, now: datetime
) -> dict[str, Any]:
    """The note a silent machine's ticket gets when its heartbeat comes back."""
    return {
        "heartbeat_back_at": iso(seen),
        "silence_epoch": epoch,
        COMMENT_KEY: {
            "author": "sundesk",
            "text": f"heartbeat from {asset.id} is back (last seen {iso(seen)})",
            "at": iso(now),
            "region": region,
            "internal": False,
            "role": Role.SYSTEM.value,
        },
    }
