"""The owner's watch over silent machines: every period, for each queue this node owns
under a valid epoch, the monitored assets of that queue's customers whose last heartbeat
(anywhere in the federation, ``HeartbeatBook``) is older than ``missed`` intervals get
one "machine silent" ticket (after a further interval of slack, as last-seen is
replicated coarsely: ``node.heartbeats``); a heartbeat seen after the silence adds a note to it.

Only the owner acts (``owner_action`` refuses on a lost lease or a newer epoch), the
epoch is written on the ticket and a write under an older one than recorded is refused,
and the ticket code is derived (``node.telemetry``), so two owners on either side of a
handoff still open one ticket, not two.

A machine never heard of is measured from the later of its registration and this
node's start: a restarted owner gives every machine a full window before judging it.

A scan must stay cheap with thousands of machines (it runs on the event loop): the
monitored assets are re-read only when the number of asset records changes, and only
machines silent by the clock, or known to have an open silent ticket, are looked up in
the store. Silent tickets another owner opened are learnt from a full pass over the
owned queues every ``REFRESH_SCANS`` scans (and on the first scan as owner).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterable, Sequence
from datetime import datetime, timedelta
from typing import Any

from opentelemetry.trace import Tracer

from federation.operations import TICKET_CREATE, TICKET_UPDATE
from node.call_home import CallHome, is_proactive
from node.contracts import Asset, Contracts, Customer
from node.errors import FailedPrecondition, SundeskError
from node.heartbeats import HeartbeatBook
from node.registry import ASSET_PREFIX, CUSTOMER_PREFIX, Registry
from node.sla_monitor import QueueOwner
from node.slices import sliced
from node.sqlite_store import SqliteTicketStore
from node.store import Change
from node.telemetry import (
    SILENT_CODE,
    back_note_fields,
    is_silent,
    silence_window,
    silent_ticket_fields,
    ticket_code,
)
from node.tickets import TicketView, iso, parse_iso
from ops.metrics import Metrics

log = logging.getLogger("sundesk.telemetry")
REFRESH_SCANS = 20


class SilenceMonitor:
    def __init__(
        self,
        region: str,
        store: SqliteTicketStore,
        registry: Registry,
        book: HeartbeatBook,
        call_home: CallHome,
        contracts: Contracts,
        owner: Callable[[], QueueOwner | None],
        now: Callable[[], datetime],
        metrics: Metrics,
        tracer: Tracer,
        missed: int,
    ) -> None:
        self._region = region
        self._store = store
        self._registry = registry
        self._book = book
        self._call_home = call_home
        self._contracts = contracts
        self._owner = owner
        self._now = now
        self._metrics = metrics
        self._tracer = tracer
        self._missed = missed
        self._started = now()
        # The monitored assets and their customers, kept from commits: a full read when a
        # customer registers (or at start), the changed assets alone otherwise.
        self._pairs: dict[str, tuple[Asset, Customer]] = {}
        self._reload = True
        self._changed: set[str] = set()
        self._widest = timedelta(0)
        store.add_listener(self._registered)
        self._known_silent: set[str] = set()  # assets with an open silent ticket
        self._scans = 0
        self._baselines: dict[str, datetime] = {}
        self._owned: frozenset[str] = frozenset()

    async def run(self, period: float) -> None:
        while True:
            try:
                await self._book.flush()
                await self.scan()
            except SundeskError as exc:
                log.warning("silence scan stopped early: %s", exc)
            await asyncio.sleep(period)

    async def scan(self) -> list[str]:
        """One pass; returns the codes of the tickets this node opened or noted."""
        owner = self._owner()
        if owner is None:
            return []
        mine = frozenset(st.queue for st in owner.status() if st.mine)
        if not mine:
            self._owned = mine
            return []
        by_queue: dict[str, list[tuple[Asset, Customer]]] = {}
        for asset, customer in self._monitored():
            if customer.home_region in mine:
                by_queue.setdefault(customer.home_region, []).append((asset, customer))
        if not by_queue:
            return []
        if mine != self._owned or self._scans % REFRESH_SCANS == 0:
            await self._refresh_known([a for pairs in by_queue.values() for a, _ in pairs])
        self._owned = mine
        self._scans += 1
        now = self._now()
        seen = self._book.last_seen_all(now, self._widest + timedelta(hours=1))
        acted: list[str] = []
        for queue, pairs in by_queue.items():
            try:
                epoch = await owner.owner_action(queue, "watch silent machines")
            except FailedPrecondition:
                continue
            async for asset, customer in sliced(pairs):
                code = await self._check(asset, customer, seen.get(asset.id), epoch, now)
                if code:
                    acted.append(code)
        return acted

    def _registered(self, changes: Sequence[Change]) -> None:
        for change in changes:
            key = change.op.ticket
            if key.startswith(ASSET_PREFIX):
                self._changed.add(key[len(ASSET_PREFIX) :])
            elif key.startswith(CUSTOMER_PREFIX):
                self._reload = True

    def _monitored(self) -> Iterable[tuple[Asset, Customer]]:
        if self._reload:
            self._reload, self._changed = False, set()
            customers = {c.id: c for c in self._registry.customers()}
            self._pairs = {
                a.id: (a, customers[a.customer])
                for a in self._registry.assets(monitored_only=True)
                if a.customer in customers
            }
            self._widest = max(
                (silence_window(a, self._missed) for a, _ in self._pairs.values()),
                default=timedelta(0),
            )
        elif self._changed:
            changed, self._changed = self._changed, set()
            for id in changed:
                asset = self._registry.get_asset(id)
                customer = self._registry.get_customer(asset.customer) if asset else None
                if asset is None or customer is None or not asset.monitored:
                    self._pairs.pop(id, None)
                    continue
                self._pairs[id] = (asset, customer)
                self._widest = max(self._widest, silence_window(asset, self._missed))
        return self._pairs.values()

    async def _refresh_known(self, assets: list[Asset]) -> None:
        self._known_silent = {
            a.id
            async for a in sliced(assets)
            if self._call_home.current_ticket(a.id, SILENT_CODE) is not None
        }

    def _baseline(self, asset: Asset) -> datetime:
        found = self._baselines.get(asset.id)
        if found is None:
            found = self._baselines[asset.id] = self._read_baseline(asset)
        return found

    def _read_baseline(self, asset: Asset) -> datetime:
        rec = self._store.get_record(ASSET_PREFIX + asset.id)
        registered = rec.values.get("registered_at", "") if rec is not None else ""
        start = self._started
        return max(start, parse_iso(registered)) if registered else start

    async def _check(
        self, asset: Asset, customer: Customer, last: datetime | None, epoch: int, now: datetime
    ) -> str:
        heard = last or self._baseline(asset)
        slack = self._book.slack(asset.heartbeat_seconds)
        silent = is_silent(asset, heard, now, self._missed, slack)
        if not silent and asset.id not in self._known_silent:
            return ""  # alive and no silent ticket: the common case, no store read
        current = self._call_home.current_ticket(asset.id, SILENT_CODE)
        if current is None:
            self._known_silent.discard(asset.id)
            if not silent:
                return ""
            code = await self._open(asset, customer, heard, epoch)
            self._known_silent.add(asset.id)
            return code
        self._known_silent.add(asset.id)
        if last is not None and not current.heartbeat_back_at and iso(last) > current.silent_since:
            return await self._back(asset, current, last, epoch)
        return ""

    async def _open(self, asset: Asset, customer: Customer, heard: datetime, epoch: int) -> str:
        n = self._call_home.latest_incarnation(asset.id, SILENT_CODE) + 1
        proactive = is_proactive(self._contracts, customer)
        region, missed = self._region, self._missed

        def build(current: TicketView | None, now: datetime) -> Any:
            if current is not None:
                _fence(current, epoch)
                return None
            return TICKET_CREATE, silent_ticket_fields(
                asset, customer, heard, missed, n, epoch, proactive, region, now
            )

        return await self._write(ticket_code(asset.id, SILENT_CODE, n), build, epoch, "silent")

    async def _back(self, asset: Asset, current: TicketView, seen: datetime, epoch: int) -> str:
        region = self._region

        def build(ticket: TicketView | None, now: datetime) -> Any:
            assert ticket is not None
            _fence(ticket, epoch)
            if ticket.heartbeat_back_at:
                return None
            return TICKET_UPDATE, back_note_fields(asset, seen, epoch, region, now)

        return await self._write(current.code, build, epoch, "back")

    async def _write(self, code: str, build: Any, epoch: int, what: str) -> str:
        attributes: dict[str, str | int] = {"sundesk.ticket": code, "sundesk.epoch": epoch}
        with self._tracer.start_as_current_span(f"telemetry.{what}", attributes=attributes):
            try:
                view, op = await self._store.write(code, _skip_none(build), may_create=True)
            except _Nothing:
                return ""
            except FailedPrecondition as exc:
                log.info("%s", exc)  # a newer owner acted on it: this one lost
                return ""
        if op is None:
            return ""
        if what == "silent":
            tier = view.tier.value if view.tier else "none"
            self._metrics.machine_tickets_total.labels(reason="silent", tier=tier).inc()
        else:
            self._metrics.machines_back_total.inc()
        log.info("%s: machine %s (epoch %d)", code, what, epoch)
        return code


class _Nothing(Exception):
    """The write has nothing to do (someone already did it)."""


def _skip_none(build: Any) -> Any:
    def wrapped(current: TicketView | None, now: datetime) -> Any:
        planned = build(current, now)
        if planned is None:
            raise _Nothing()
        return planned

    return wrapped


def _fence(ticket: TicketView, epoch: int) -> None:
    if ticket.silence_epoch > epoch:
        raise FailedPrecondition(
            f"{ticket.code}: epoch {epoch} is older than {ticket.silence_epoch}, which already "
            "acted on this silent machine"
        )
