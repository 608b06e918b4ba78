"""Processes that serve ops run below the nodes: each check runs in a child process, so
that the test runner keeps its own priority."""

from __future__ import annotations

import os
import subprocess
import sys

from ops.priority import BACKGROUND_NICENESS
from ops.processes import ROOT


def _niceness_after(start: int, asked: int) -> tuple[int, int]:
    code = (
        "import os; from ops.priority import lower_priority; "
        f"os.nice({start} - os.getpriority(os.PRIO_PROCESS, 0)); "
        f"print(lower_priority({asked}), os.getpriority(os.PRIO_PROCESS, 0))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout.split()
    return int(out[0]), int(out[1])


# Where the runner itself starts: a child can only go lower (higher niceness) from there.
OWN = os.getpriority(os.PRIO_PROCESS, 0)


def test_a_process_is_lowered_to_the_niceness_asked() -> None:
    expected = max(OWN, BACKGROUND_NICENESS)
    assert _niceness_after(OWN, BACKGROUND_NICENESS) == (expected, expected)


def test_a_process_already_lower_stays_where_it_is() -> None:
    start = max(OWN, BACKGROUND_NICENESS + 5)
    assert _niceness_after(start, BACKGROUND_NICENESS) == (start, start)
