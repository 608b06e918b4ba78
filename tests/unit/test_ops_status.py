"""`sundesk ops status` shows the SLA events next to health, owners and replication."""

from __future__ import annotations

from rich.console import Console

from ops.ops_cli import render_status


def test_status_screen_lists_breaches_latest_first() -> None:
    breach = {"code": "VEL-000001", "queue": "velizy", "tier": "gold", "target": "response",
              "due": "2026-03-04T10:00:00.000Z", "by": "velizy (epoch 7)", "level": 2}  # fmt: skip
    view = {
        "at": "now",
        "regions": {"velizy": {"healthy": True, "tickets": 2, "digest": "abc", "peers": {}}},
        "owners": [],
        "breaches": [
            {**breach, "code": "VEL-000001", "state": "at_risk", "level": 1},
            {**breach, "code": "VEL-000002", "state": "breached"},
        ],
    }
    console = Console(width=160, record=True)
    console.print(render_status(view))
    text = console.export_text()
    assert "SLA: 1 missed, 1 at risk" in text
    lines = [line for line in text.splitlines() if "VEL-00000" in line]
    assert "VEL-000002" in lines[0] and "missed" in lines[0] and "L2" in lines[0]
    assert "VEL-000001" in lines[1] and "at risk" in lines[1]
