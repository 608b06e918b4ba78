"""Wiring of the contract features of a node: the registry, the due clock, the owner's
SLA watch with auto-assignment, and the Contracts servicer, over the node's store."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime
from functools import partial

from opentelemetry.trace import Tracer

from federation.config import FederationConfig
from node.auto_assign import AutoAssigner
from node.contracts import Contracts
from node.contracts_service import ContractsService
from node.dues import DueClock
from node.registry import Registry
from node.roster import Roster
from node.sla_monitor import QueueOwner, SlaMonitor, breach_records
from node.sqlite_store import SqliteTicketStore
from node.store import every_ticket
from ops.metrics import Metrics


@dataclass
class ContractParts:
    registry: Registry
    dues: DueClock
    monitor: SlaMonitor
    service: ContractsService


def build_contract_parts(
    config: FederationConfig,
    region: str,
    store: SqliteTicketStore,
    contracts: Contracts,
    roster: Roster,
    owner: Callable[[], QueueOwner | None],
    now: Callable[[], datetime],
    metrics: Metrics,
    tracer: Tracer,
    change_carrier: Callable[[Mapping[str, str]], dict[str, str]] | None,
) -> ContractParts:
    registry = Registry(store, config.region_names())
    dues = DueClock(contracts, config.region)
    assigner = AutoAssigner(region, store, contracts, roster, store.open_load, metrics, tracer)
    monitor = SlaMonitor(
        region,
        store,
        dues,
        owner,
        now,
        metrics,
        tracer,
        change_carrier=change_carrier,
        on_owned_ticket=assigner,
    )
    service = ContractsService(
        registry,
        breaches=partial(breach_records, store),
        tickets=partial(every_ticket, store),
        roster=roster,
    )
    return ContractParts(registry, dues, monitor, service)
