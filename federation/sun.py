"""The follow-the-sun coordinator: every node runs one; together they move each queue's
owner key (``/sundesk/owners/<queue>``) the way the plan says.

Each tick reads the owner keys and the member keys once, then for every queue:

- **Target.** The plan's segment at the clock's instant names an owner. If that region
  has a member key (its node is up) it is the target, as the segment's kind. Otherwise
  the first live region in failover order is: the plan's ``candidates_at`` and then
  every other region in configuration order, so a queue keeps an owner while any node
  lives. A stand-in takes the kind ``home`` if it is the queue's home, else ``borrowed``.
- **On-call segments.** No region is staffed, so the key does not travel: it stays with
  the node that held the queue last, which carries the owner-only work for the on-call
  engineer. Only when no node holds it does the failover order apply (the plan puts the
  home first). Moving the key to a closed office would cost a handoff and a risk for
  nothing.
- **One epoch per segment.** The key is current when it is on the target's lease, with
  the target's kind, written (``since``) at or after the segment began. A holder whose
  key is not current moves it with ``handoff`` — to the target's lease, or to its own
  lease when only the kind or the segment changed (a borrower keeping the queue into
  on-call, a new rota week). Either way the change is one transaction guarded by the
  key's revision: no moment without an owner, never two. The new revision is the new
  epoch, and the node that made it writes the handoff record ``HO-<queue>-<epoch>``.
- **Failover.** When the key is absent (the holder's lease expired, or nobody held it
  yet), the target alone tries ``acquire`` (create-if-absent) and writes a ``failover``
  record naming the holder it last saw.
- **On-call records and escalation.** The first record of an on-call segment is of kind
  ``on-call`` and addressed to the rota's primary. The node holding the key checks it
  every tick: unacknowledged ``handoff_ack_minutes`` (simulated time) after it was
  written, it escalates it to the secondary. Once: the escalation is an owner-only
  action (current epoch, fenced), the log refuses a second escalation of a record
  (``FailedPrecondition``), and the holder remembers what it escalated. Across a failover
  it is once as long as the escalation has replicated to the new holder before it takes
  over; otherwise the secondary may be paged twice, never zero times.

Errors of guarded operations (``NotOwner``, ``OwnershipConflict``, ``MemberGone``,
``LeaseLost``, ``Unavailable``) mean someone moved first or etcd is away: the tick
stops for that queue and the next tick decides again from fresh reads. A watch on the
owner keys wakes the loop at once, so a node that has just been handed a queue knows it
(``is_owner``) before its next tick. A handoff whose answer was lost (``Unavailable``,
maybe committed) makes ``owner_action`` refuse that queue until the next read settles
it; if the key moved as asked, the outgoing node writes the record then.

Owner-only actions call ``owner_action(queue, name)`` for the epoch to carry; it answers
from local state, so an owner whose lease is lost or past its local deadline is refused
at once. ``fence`` is the ``EpochFence`` for replicated owner-only operations: the
coordinator feeds it every epoch it reads, so an action under an older epoch loses
here as well as on the peers.

The ``since`` written in the owner key comes from the session's clock: give the lease
session the same (simulated) ``Clock`` as the coordinator.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from federation import plan
from federation.config import FederationConfig
from federation.handoffs import (
    FAILOVER,
    ON_CALL,
    PLANNED,
    HandoffLog,
    HandoffRecord,
    open_ticket_summary,
    record_id,
)
from federation.leases import EpochFence, LeaseBackend, NotOwner, Owner, StaleEpoch
from federation.plan import Segment
from node.clock import Clock
from node.errors import FailedPrecondition, SundeskError, Unavailable
from node.tickets import iso, parse_iso

logger = logging.getLogger(__name__)

HOME, BORROWED = plan.HOME, plan.BORROWED
_LONG_AGO = datetime.min.replace(tzinfo=UTC)
_WATCH_RETRY_SECONDS = 0.25


@dataclass(frozen=True)
class _Attempt:
    """A guarded change whose answer was lost; ``expected_epoch`` 0 for an acquire."""

    from_region: str
    to_region: str
    kind: str
    segment: Segment
    expected_epoch: int


@dataclass(frozen=True)
class QueueStatus:
    queue: str
    owner: str | None  # region holding the key, as last read; None when nobody
    kind: str | None
    epoch: int | None
    since: str
    mine: bool
    planned: Segment
    next_handoff: Segment | None


def _ignore(*_: Any) -> None:
    return None


@dataclass
class SunHooks:
    """Callbacks for metrics and traces; each runs in the loop and must not block."""

    on_owner_change: Callable[[str, str | None, str | None, int], None] = _ignore
    on_handoff: Callable[[HandoffRecord], None] = _ignore
    on_failover: Callable[[str], None] = _ignore
    on_lease_state: Callable[[str], None] = _ignore
    on_escalation: Callable[[HandoffRecord], None] = _ignore


class SunCoordinator:
    def __init__(
        self,
        region: str,
        config: FederationConfig,
        clock: Clock,
        backend: LeaseBackend,
        log: HandoffLog,
        *,
        tick_seconds: float = 0.2,
        hooks: SunHooks | None = None,
        fence: EpochFence | None = None,
    ) -> None:
        self.region = config.region(region).name
        self.config = config
        self.clock = clock
        self.backend = backend
        self.log = log
        self.tick_seconds = tick_seconds
        self.hooks = hooks or SunHooks()
        self.fence = fence or EpochFence()
        self._queues = config.queue_names()
        self._homes = {q.name: q.home for q in config.queues}
        self._segments: dict[str, Segment] = {}
        self._next: dict[tuple[str, datetime], Segment | None] = {}
        self._candidates: dict[tuple[str, datetime], list[str]] = {}
        self._owners: dict[str, Owner | None] = {}
        self._last_holder: dict[str, str] = {}
        self._pending: list[HandoffRecord] = []
        self._escalated: set[str] = set()
        self._oncall_ids: dict[tuple[str, datetime], str] = {}
        self._unsure: dict[str, _Attempt] = {}
        self._lease_state: str | None = None
        self._lock = asyncio.Lock()
        self._wake = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []

    # -- life ------------------------------------------------------------------------

    async def start(self) -> None:
        """Start the loop and the owner watch. The backend's session must be started."""
        if self._tasks:
            return
        self._tasks = [
            asyncio.create_task(self._run(), name=f"sun-{self.region}"),
            asyncio.create_task(self._watch(), name=f"sun-watch-{self.region}"),
        ]

    async def stop(self, *, handover: bool = True) -> None:
        """Stop the loop; with ``handover``, first give every queue this node holds to
        the next live region in the plan's order, so a restart leaves no gap. The
        session is the caller's to close afterwards."""
        tasks, self._tasks = self._tasks, []
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if handover:
            async with self._lock:
                await self._hand_over_all()

    async def tick(self) -> None:
        """One pass over every queue. Never raises for etcd or ownership trouble."""
        async with self._lock:
            try:
                await self._tick()
            except Exception:  # a surprise must not end ownership for the node's life
                logger.exception("%s: follow-the-sun tick failed", self.region)

    # -- for owner-only actions and operators ------------------------------------------

    async def owner_action(self, queue: str, action_name: str) -> int:
        """The epoch to carry if this node owns ``queue`` now; ``NotOwner`` otherwise
        (also when its lease is lost or past its local deadline, or a newer epoch of
        the queue was seen)."""
        epoch = self.backend.is_owner(queue)
        if epoch is None or queue in self._unsure:
            state = self.backend.session.state
            why = "a handoff's outcome is unknown" if epoch else f"session {state}"
            raise NotOwner(
                f"{self.region} may not {action_name} on queue {queue!r}: not its owner ({why})",
                queue=queue,
                current=self._owners.get(queue),
            )
        try:
            self.fence.check(queue, epoch)
        except StaleEpoch as exc:
            raise NotOwner(
                f"{self.region} may not {action_name} on queue {queue!r}: {exc}",
                queue=queue,
                current=self._owners.get(queue),
            ) from exc
        logger.debug("%s: %s on %s at epoch %d", self.region, action_name, queue, epoch)
        return epoch

    def status(self) -> list[QueueStatus]:
        now = self.clock.now()
        result = []
        for queue in self._queues:
            segment = self._segment(queue, now)
            owner = self._owners.get(queue)
            result.append(
                QueueStatus(
                    queue=queue,
                    owner=owner.region if owner else None,
                    kind=owner.kind if owner else None,
                    epoch=owner.epoch if owner else None,
                    since=owner.since if owner else "",
                    mine=self.backend.is_owner(queue) is not None,
                    planned=segment,
                    next_handoff=self._next_handoff(queue, segment),
                )
            )
        return result

    # -- the loop --------------------------------------------------------------------

    async def _run(self) -> None:
        while True:
            self._wake.clear()
            await self.tick()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.tick_seconds):
                    await self._wake.wait()

    async def _watch(self) -> None:
        """Keeps the backend's view of the owner keys fresh between ticks (a received
        handoff is known at once) and wakes the loop on every change."""
        while True:
            stream = self.backend.watch()
            try:
                async for _ in stream:
                    self._wake.set()
            except Unavailable as exc:
                logger.debug("%s: owner watch broke: %s", self.region, exc)
            except Exception:
                logger.exception("%s: owner watch failed", self.region)
            finally:
                with contextlib.suppress(Exception):
                    await stream.aclose()
            self._wake.set()  # a tick re-reads whatever the broken watch missed
            await asyncio.sleep(_WATCH_RETRY_SECONDS)

    async def _tick(self) -> None:
        self._note_lease_state()
        await self._flush_pending()
        try:
            owners = await self.backend.owners()
            members = await self.backend.members()
        except Unavailable as exc:
            logger.debug("%s: etcd unavailable, ownership paused: %s", self.region, exc)
            return
        for queue in self._queues:
            self._observe(queue, owners.get(queue))
        await self._settle_unsure(owners)
        if not self.backend.session.alive():
            return
        live = set(members) & set(self.config.region_names())
        for queue in self._queues:
            try:
                await self._step(queue, owners.get(queue), members, live)
            except (FailedPrecondition, Unavailable) as exc:
                logger.info("%s: queue %s: %s; deciding again next tick", self.region, queue, exc)
            except SundeskError as exc:
                logger.warning("%s: queue %s: %s", self.region, queue, exc)

    async def _step(
        self,
        queue: str,
        holder: Owner | None,
        members: Mapping[str, Mapping[str, Any]],
        live: Collection[str],
    ) -> None:
        now = self.clock.now()
        if holder is None:
            segment = self._segment(queue, now)
            target = self._target(queue, segment, None, live, now)
            if target is not None and target[0] == self.region:
                await self._acquire(queue, segment, target[1])
            return
        if self.backend.is_owner(queue) != holder.epoch:
            return
        # The key was written by a clock at least this late; plan from there, so a clock
        # a little behind the previous holder's does not hand the queue straight back.
        since = _since(holder)
        segment = self._segment(queue, max(now, since))
        target = self._target(queue, segment, holder, live, now)
        if target is None:
            return
        region, kind = target
        if (region, kind) == (holder.region, holder.kind) and since >= segment.start:
            if segment.kind == ON_CALL:
                await self._maybe_escalate(queue, segment)
            return
        lease = int(members[region]["lease_id"])
        await self._handoff(queue, segment, holder, region, kind, lease)

    def _target(
        self,
        queue: str,
        segment: Segment,
        holder: Owner | None,
        live: Collection[str],
        now: datetime,
    ) -> tuple[str, str] | None:
        """Which region should hold ``queue`` now, and as what kind; None if no node
        is up."""
        if segment.kind == ON_CALL and holder is not None and holder.region in live:
            return holder.region, ON_CALL
        if segment.owner in live:
            return segment.owner, segment.kind
        for region in self._failover_order(queue, now):
            if region in live:
                if segment.kind == ON_CALL:
                    return region, ON_CALL
                return region, HOME if region == self._homes[queue] else BORROWED
        return None

    # -- ownership changes -------------------------------------------------------------

    async def _acquire(self, queue: str, segment: Segment, kind: str) -> None:
        previous = self._last_holder.get(queue, "")
        try:
            epoch = await self.backend.acquire(queue, kind)
        except Unavailable:
            self._unsure[queue] = _Attempt(previous, self.region, kind, segment, 0)
            raise
        await self._took(queue, segment, previous, epoch)

    async def _took(self, queue: str, segment: Segment, previous: str, epoch: int) -> None:
        self._seen_epoch(queue, epoch)
        logger.warning(
            "%s: took queue %s at epoch %d (last holder: %s)",
            self.region,
            queue,
            epoch,
            previous or "none",
        )
        self._call(self.hooks.on_failover, queue)
        rec_kind = ON_CALL if self._needs_oncall_record(queue, segment) else FAILOVER
        await self._write(self._record(queue, previous, self.region, rec_kind, segment, epoch))

    async def _handoff(
        self, queue: str, segment: Segment, holder: Owner, region: str, kind: str, lease: int
    ) -> None:
        try:
            epoch = await self.backend.handoff(queue, region, lease, kind, holder.epoch)
        except Unavailable:
            # It may have applied: act as owner again only once a read says so.
            self._unsure[queue] = _Attempt(holder.region, region, kind, segment, holder.epoch)
            raise
        self._seen_epoch(queue, epoch)
        logger.info(
            "%s: handed queue %s to %s (%s) at epoch %d", self.region, queue, region, kind, epoch
        )
        rec_kind = ON_CALL if self._needs_oncall_record(queue, segment) else PLANNED
        await self._write(self._record(queue, holder.region, region, rec_kind, segment, epoch))

    async def _hand_over_all(self) -> None:
        try:
            owners = await self.backend.owners()
            members = await self.backend.members()
        except Unavailable as exc:
            logger.warning("%s: cannot hand queues over, etcd unavailable: %s", self.region, exc)
            return
        live = (set(members) & set(self.config.region_names())) - {self.region}
        now = self.clock.now()
        for queue, holder in owners.items():
            if queue not in self._homes or self.backend.is_owner(queue) != holder.epoch:
                continue
            segment = self._segment(queue, max(now, _since(holder)))
            target = self._target(queue, segment, holder, live, now)
            if target is None:
                continue
            try:
                lease = int(members[target[0]]["lease_id"])
                await self._handoff(queue, segment, holder, target[0], target[1], lease)
            except (FailedPrecondition, Unavailable) as exc:
                logger.warning("%s: queue %s not handed over: %s", self.region, queue, exc)
        await self._flush_pending()

    async def _settle_unsure(self, owners: Mapping[str, Owner]) -> None:
        """A handoff whose answer was lost: once a read shows the key on the target as
        the kind we asked, it applied (only the holder's lease can move the key), so
        its record is ours to write."""
        unsure, self._unsure = self._unsure, {}
        for queue, attempt in unsure.items():
            owner = owners.get(queue)
            if owner is None or owner.epoch <= attempt.expected_epoch:
                continue
            if (owner.region, owner.kind) != (attempt.to_region, attempt.kind):
                continue
            segment = attempt.segment
            if attempt.expected_epoch == 0:  # an acquire: applied if the key is on our lease
                if self.backend.is_owner(queue) == owner.epoch:
                    await self._took(queue, segment, attempt.from_region, owner.epoch)
                continue
            rec_kind = ON_CALL if self._needs_oncall_record(queue, segment) else PLANNED
            record = self._record(
                queue, attempt.from_region, owner.region, rec_kind, segment, owner.epoch
            )
            await self._write(record)

    # -- records -----------------------------------------------------------------------

    def _record(
        self,
        queue: str,
        from_region: str,
        to_region: str,
        kind: str,
        segment: Segment,
        epoch: int,
    ) -> HandoffRecord:
        try:
            tickets = open_ticket_summary(self.log.open_tickets(queue))
            note = self.log.note(queue)
        except Exception:  # the epoch is taken already: record it with what we have
            logger.exception("%s: open tickets of %s unreadable", self.region, queue)
            tickets, note = (), ""
        return HandoffRecord(
            id=record_id(queue, epoch),
            queue=queue,
            from_region=from_region,
            to_region=to_region,
            to_engineer=(segment.primary or "") if segment.kind == ON_CALL else "",
            kind=kind,
            at=iso(self.clock.now()),
            epoch=epoch,
            open_tickets=tickets,
            note=note,
        )

    async def _write(self, record: HandoffRecord) -> None:
        """Write now or keep it for the next ticks: the epoch is taken, so its record
        must follow even if the store is busy."""
        try:
            stored = await self.log.record(record)
        except Exception as exc:
            logger.warning("%s: handoff %s not recorded yet: %s", self.region, record.id, exc)
            self._pending.append(record)
            return
        self._call(self.hooks.on_handoff, stored)

    async def _flush_pending(self) -> None:
        pending, self._pending = self._pending, []
        for record in pending:
            await self._write(record)

    def _oncall_record(self, queue: str, segment: Segment) -> HandoffRecord | None:
        """The first on-call record of this segment, to its primary (looked up in the
        whole log once, then by id)."""
        key = (queue, segment.start)
        known = self._oncall_ids.get(key)
        if known is not None:
            return self.log.get(known)
        start, end = iso(segment.start), iso(segment.end)
        for rec in self.log.list(queue):
            if rec.kind == ON_CALL and start <= rec.at < end:
                if rec.to_engineer == (segment.primary or ""):
                    if len(self._oncall_ids) > 4 * len(self._queues):
                        self._oncall_ids.clear()
                    self._oncall_ids[key] = rec.id
                    return rec
        return None

    def _needs_oncall_record(self, queue: str, segment: Segment) -> bool:
        return segment.kind == ON_CALL and self._oncall_record(queue, segment) is None

    async def _maybe_escalate(self, queue: str, segment: Segment) -> None:
        if not segment.secondary:
            return
        rec = self._oncall_record(queue, segment)
        if rec is None or rec.acked or rec.escalated or rec.id in self._escalated:
            return
        wait = timedelta(minutes=self.config.handoff_ack_minutes)
        if self.clock.now() < parse_iso(rec.at) + wait:
            return
        epoch = await self.owner_action(queue, "escalate the on-call handoff")
        try:
            escalated = await self.log.escalate(rec.id, segment.secondary, epoch=epoch)
        except FailedPrecondition as exc:  # acknowledged or escalated meanwhile
            logger.info("%s: %s not escalated: %s", self.region, rec.id, exc)
            self._escalated.add(rec.id)
            return
        self._escalated.add(rec.id)
        logger.warning(
            "%s: handoff %s unacknowledged after %g min, escalated to %s",
            self.region,
            rec.id,
            self.config.handoff_ack_minutes,
            segment.secondary,
        )
        self._call(self.hooks.on_escalation, escalated)

    # -- what this node has seen -------------------------------------------------------

    def _observe(self, queue: str, owner: Owner | None) -> None:
        before = self._owners.get(queue)
        self._owners[queue] = owner
        if owner is not None:
            self._last_holder[queue] = owner.region
            self._seen_epoch(queue, owner.epoch)
        was = (before.region, before.epoch) if before else None
        now = (owner.region, owner.epoch) if owner else None
        if was != now:
            epoch = owner.epoch if owner else (before.epoch if before else 0)
            self._call(
                self.hooks.on_owner_change,
                queue,
                owner.region if owner else None,
                owner.kind if owner else None,
                epoch,
            )

    def _seen_epoch(self, queue: str, epoch: int) -> None:
        with contextlib.suppress(StaleEpoch):  # a read older than one we already had
            self.fence.check(queue, epoch)

    def _note_lease_state(self) -> None:
        state = self.backend.session.state
        if state != self._lease_state:
            self._lease_state = state
            self._call(self.hooks.on_lease_state, state)

    def _call(self, hook: Callable[..., None], *args: Any) -> None:
        try:
            hook(*args)
        except Exception:
            logger.exception("%s: follow-the-sun hook %s failed", self.region, hook)

    # -- the plan, cached --------------------------------------------------------------

    def _segment(self, queue: str, instant: datetime) -> Segment:
        cached = self._segments.get(queue)
        if cached is None or not cached.contains(instant):
            cached = self._segments[queue] = plan.owner_at(self.config, queue, instant)
        return cached

    def _next_handoff(self, queue: str, segment: Segment) -> Segment | None:
        key = (queue, segment.start)
        if key not in self._next:
            if len(self._next) > 4 * len(self._queues):
                self._next.clear()
            self._next[key] = plan.next_handoff(self.config, queue, segment.start)
        return self._next[key]

    def _failover_order(self, queue: str, now: datetime) -> list[str]:
        """``candidates_at`` then every other region, recomputed once a simulated minute."""
        key = (queue, now.replace(second=0, microsecond=0))
        order = self._candidates.get(key)
        if order is None:
            if len(self._candidates) > 4 * len(self._queues):
                self._candidates.clear()
            order = plan.candidates_at(self.config, queue, now)
            order += [r for r in self.config.region_names() if r not in order]
            self._candidates[key] = order
        return order


def _since(owner: Owner) -> datetime:
    try:
        since = datetime.fromisoformat(owner.since)
    except ValueError:
        return _LONG_AGO
    return since.astimezone(UTC) if since.tzinfo else _LONG_AGO
