"""CPU priority for the processes that serve ops rather than tickets.

The span relay and the embedded collector share the machine with the nodes they
observe. On two cores, CPU they used beside a node's event loop came out of the node's
throughput nearly point for point (bench.observability); at a lower priority the
scheduler gives the node's loop the core first and the export path the time it leaves.
Spans then wait a little longer; they are not dropped unless the node's export queue
fills (``ops.spans.MAX_QUEUE``), which ``sundesk_spans_dropped_total`` counts.
"""

from __future__ import annotations

import os

BACKGROUND_NICENESS = 10  # 19 (the lowest) measured no better, and starves sooner


def lower_priority(niceness: int = BACKGROUND_NICENESS) -> int:
    """Run this process at ``niceness`` at least (never raised back: a process already
    started lower stays there). Returns the niceness it now has."""
    current = os.getpriority(os.PRIO_PROCESS, 0)
    if niceness > current:
        os.setpriority(os.PRIO_PROCESS, 0, niceness)
    return os.getpriority(os.PRIO_PROCESS, 0)
