"""Alarms to tickets: the I/O around ``node.telemetry``'s rules.

An alarm is written to its derived code with ``may_create``: the first report (here or
concurrently in another region) creates the ticket, every report adds an occurrence.
If the latest incarnation turns out closed when the write runs, the next incarnation is
tried; the probe starts from the last one this node used, so a repeat costs one lookup.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol

from federation.operations import TICKET_CREATE, TICKET_UPDATE
from node.contracts import Asset, Contracts, Customer
from node.errors import InvalidArgument, NotFound
from node.sqlite_store import SqliteTicketStore
from node.telemetry import (
    Alarm,
    alarm_ticket_fields,
    occurrence_fields,
    ticket_code,
)
from node.tickets import TicketView
from ops.metrics import Metrics

log = logging.getLogger("sundesk.telemetry")
MAX_INCARNATIONS = 10_000  # a runaway probe is a bug, not a busy machine


class AssetLookup(Protocol):
    """What call home needs of the registry."""

    def get_asset(self, id: str) -> Asset | None: ...

    def get_customer(self, id: str) -> Customer | None: ...


class DuesOnCreate(Protocol):
    def on_create(self, fields: Mapping[str, Any]) -> dict[str, str]: ...


@dataclass(frozen=True)
class AlarmOutcome:
    ticket: TicketView
    opened: bool


class _Closed(Exception):
    """The incarnation probed is closed by the time the write runs: try the next."""


def is_proactive(contracts: Contracts, customer: Customer | None) -> bool:
    return customer is not None and contracts.tier(customer.tier).proactive_monitoring


class CallHome:
    def __init__(
        self,
        store: SqliteTicketStore,
        lookup: AssetLookup,
        contracts: Contracts,
        metrics: Metrics,
        dues: DuesOnCreate | None = None,
        carrier: Callable[[], dict[str, str]] = dict,
    ) -> None:
        self._store = store
        self._lookup = lookup
        self._contracts = contracts
        self._metrics = metrics
        self._dues = dues
        self._carrier = carrier
        self._incarnation: dict[tuple[str, str], int] = {}

    def asset(self, id: str, kind: str) -> tuple[Asset, Customer | None]:
        asset = self._lookup.get_asset(id)
        if asset is None:
            self._metrics.telemetry_rejected_total.labels(kind=kind, reason="unknown_asset").inc()
            raise NotFound(
                f"asset {id!r} is not registered; register it with `sundesk asset add` "
                "before it calls home"
            )
        return asset, self._lookup.get_customer(asset.customer)

    def latest_incarnation(self, asset: str, code: str) -> int:
        """The newest incarnation this node knows of (0 for none)."""
        n = self._incarnation.get((asset, code), 0)
        while n < MAX_INCARNATIONS:
            found = self._store.get_replicated(ticket_code(asset, code, n + 1))
            if found is None or not found.created:
                break
            n += 1
        self._incarnation[(asset, code)] = n
        return n

    def current_ticket(self, asset: str, code: str) -> TicketView | None:
        """The open ticket of this asset and code, if this node knows one."""
        n = self.latest_incarnation(asset, code)
        if n == 0:
            return None
        view = self._store.get(ticket_code(asset, code, n))
        return view if view.is_open else None

    async def alarm(self, alarm: Alarm, asset: Asset, customer: Customer | None) -> AlarmOutcome:
        proactive = is_proactive(self._contracts, customer)
        region = self._store.region
        dues = self._dues
        n = max(1, self.latest_incarnation(asset.id, alarm.code))
        trace = self._carrier()
        while True:
            code = ticket_code(asset.id, alarm.code, n)

            def build(current: TicketView | None, now: datetime, n: int = n) -> Any:
                if current is None:
                    fields = alarm_ticket_fields(alarm, asset, customer, n, proactive, region, now)
                    if dues is not None:
                        fields.update(dues.on_create(fields))
                    fields["trace"] = trace
                    return TICKET_CREATE, fields
                if not current.is_open:
                    raise _Closed(current.code)
                return TICKET_UPDATE, occurrence_fields(alarm, region, now)

            try:
                view, op = await self._store.write(code, build, trace, may_create=True)
            except _Closed:
                n += 1
                if n > MAX_INCARNATIONS:
                    raise InvalidArgument(f"too many tickets for {asset.id} {alarm.code}") from None
                continue
            self._incarnation[(asset.id, alarm.code)] = n
            opened = op is not None and op.kind == TICKET_CREATE
            if opened:
                tier = customer.tier.value if customer else "none"
                self._metrics.machine_tickets_total.labels(reason="alarm", tier=tier).inc()
                log.info("%s opened for %s alarm %s", view.code, asset.id, alarm.code)
            return AlarmOutcome(ticket=view, opened=opened)
