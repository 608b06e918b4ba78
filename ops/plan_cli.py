"""`sundesk plan`: print the follow-the-sun plan for the coming days.

The plan is computed in UTC days (``--from`` is midnight UTC) because the federation
spans time zones and no single local day fits everyone; the table says so in its header.
JSON output is for scripts and dashboards: times are ISO 8601 UTC ending in ``Z``.
"""

from __future__ import annotations

import json
from datetime import UTC, date, datetime, time, timedelta

from federation.config import FederationConfig
from federation.plan import ON_CALL, PlanResult, Segment, plan
from node.errors import InvalidArgument


def run_plan(config: FederationConfig, from_date: date, days: int, as_json: bool) -> str:
    if days < 1:
        raise InvalidArgument(f"--days {days} must be at least 1")
    start = datetime.combine(from_date, time(0), tzinfo=UTC)
    return render_plan(plan(config, start, start + timedelta(days=days)), as_json)


def render_plan(plan_result: PlanResult, as_json: bool) -> str:
    segments = sorted(plan_result.segments, key=lambda s: (s.queue, s.start))
    if as_json:
        document = {
            "segments": [_segment_json(s) for s in segments],
            "warnings": list(plan_result.warnings),
        }
        return json.dumps(document, indent=2, ensure_ascii=False)
    return _table(segments, plan_result.warnings)


def _iso(instant: datetime) -> str:
    return instant.astimezone(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def _segment_json(segment: Segment) -> dict[str, str | None]:
    item: dict[str, str | None] = {
        "queue": segment.queue,
        "owner": segment.owner,
        "kind": segment.kind,
        "start": _iso(segment.start),
        "end": _iso(segment.end),
    }
    if segment.kind == ON_CALL:
        item["primary"] = segment.primary
        item["secondary"] = segment.secondary
    return item


def _table(segments: list[Segment], warnings: tuple[str, ...]) -> str:
    header = ("QUEUE", "OWNER", "KIND", "START (UTC)", "END (UTC)", "HOURS", "ON CALL")
    rows: list[tuple[str, ...]] = []
    for s in segments:
        on_call = ""
        if s.kind == ON_CALL:
            on_call = f"{s.primary} / {s.secondary}" if s.primary else "NOBODY"
        hours = f"{(s.end - s.start).total_seconds() / 3600:.1f}"
        rows.append((s.queue, s.owner, s.kind, _short(s.start), _short(s.end), hours, on_call))
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
    lines = []
    previous_queue = None
    for row in [header, *rows]:
        if previous_queue is not None and row[0] != previous_queue:
            lines.append("")
        if row is not header:
            previous_queue = row[0]
        cells = [
            cell.rjust(width) if i == 5 else cell.ljust(width)
            for i, (cell, width) in enumerate(zip(row, widths, strict=True))
        ]
        lines.append("  ".join(cells).rstrip())
    lines.append("")
    if warnings:
        lines.append(f"{len(warnings)} coverage gap(s):")
        lines += [f"  warning: {w}" for w in warnings]
    else:
        lines.append("No coverage gaps: every queue has an open region or an on-call engineer.")
    return "\n".join(lines)


def _short(instant: datetime) -> str:
    return instant.astimezone(UTC).strftime("%Y-%m-%d %H:%M")
