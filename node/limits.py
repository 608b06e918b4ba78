"""Limits of a node, and per-caller rate limits on writes (a token bucket per caller).

``NodeLimits`` gathers what keeps one bad client from starving a region: the largest
request a node reads, the calls it runs at once (beyond that gRPC answers
RESOURCE_EXHAUSTED at once instead of queueing), and the write rate per caller. Pages
are capped by the Desk service (500 tickets) and watch queues by the watch hub.

Each caller (a token's subject, or a machine's asset) may make ``burst`` writes at once
and then ``rate_per_s`` per second. Buckets live in an LRU of ``max_callers``; a caller
evicted for being idle comes back with a full bucket, which is what an idle caller would
have anyway. Time comes from ``clock_fn`` (monotonic seconds), so tests drive it. Not
thread-safe: one node's event loop owns it.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

from node.errors import InvalidArgument, ResourceExhausted

DEFAULT_MAX_CALLERS = 10_000


@dataclass(frozen=True)
class NodeLimits:
    # A ticket with a long description is a few kB; a megabyte is already generous.
    max_request_bytes: int = 1024 * 1024
    # In-flight calls, replication streams and watches included.
    max_concurrent_rpcs: int = 512
    # A person or a script writes a few times a second; bursts absorb a batch import.
    write_rate_per_s: float = 200.0
    write_burst: int = 400

    def __post_init__(self) -> None:
        if self.max_request_bytes < 1024:
            raise InvalidArgument(f"max request size {self.max_request_bytes} is below 1 kB")
        if self.max_concurrent_rpcs < 16:
            raise InvalidArgument(
                f"max concurrent calls {self.max_concurrent_rpcs} is below 16: replication "
                "streams alone need one per peer"
            )
        RateLimiter(self.write_rate_per_s, self.write_burst)  # validates both

    def limiter(self) -> RateLimiter:
        return RateLimiter(self.write_rate_per_s, self.write_burst)


class RateLimited(ResourceExhausted):
    """Too many writes from one caller; ``retry_after`` says when one more will pass."""

    def __init__(self, message: str, caller: str, retry_after: float) -> None:
        super().__init__(message)
        self.caller = caller
        self.retry_after = retry_after


class RateLimiter:
    def __init__(
        self,
        rate_per_s: float,
        burst: int,
        clock_fn: Callable[[], float] = time.monotonic,
        max_callers: int = DEFAULT_MAX_CALLERS,
    ) -> None:
        if not rate_per_s > 0:
            raise InvalidArgument(f"rate {rate_per_s} must be a positive number per second")
        if burst < 1:
            raise InvalidArgument(f"burst {burst} must be at least 1")
        if max_callers < 1:
            raise InvalidArgument(f"max_callers {max_callers} must be at least 1")
        self.rate = float(rate_per_s)
        self.burst = burst
        self.max_callers = max_callers
        self._clock = clock_fn
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()  # tokens, at

    def __len__(self) -> int:
        return len(self._buckets)

    def check(self, caller: str) -> None:
        """Spend one write for ``caller``, or raise ``RateLimited`` without spending."""
        now = self._clock()
        tokens, last = self._buckets.get(caller, (float(self.burst), now))
        # A clock that steps back must not mint tokens, nor take any away.
        tokens = min(float(self.burst), tokens + max(0.0, now - last) * self.rate)
        if tokens >= 1.0:
            self._store(caller, tokens - 1.0, now)
            return
        self._store(caller, tokens, now)
        retry_after = (1.0 - tokens) / self.rate
        raise RateLimited(
            f"slow down: at most {self.rate:g} writes per second for {caller} "
            f"(bursts of {self.burst}); retry in {retry_after:.2f} s",
            caller,
            retry_after,
        )

    def _store(self, caller: str, tokens: float, at: float) -> None:
        self._buckets[caller] = (tokens, at)
        self._buckets.move_to_end(caller)
        while len(self._buckets) > self.max_callers:
            self._buckets.popitem(last=False)


__all__ = ["NodeLimits", "RateLimited", "RateLimiter"]
