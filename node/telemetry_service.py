"""The Telemetry servicer: thin. A report is checked (``node.telemetry``), its asset looked
up, and the work done by ``CallHome`` (alarms) and ``HeartbeatBook`` (heartbeats).

Checks come before anything is written, so a malformed or unknown-asset report opens
nothing and changes nothing."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime

from grpc import aio

from node.call_home import CallHome
from node.errors import InvalidArgument, SundeskError
from node.heartbeats import HeartbeatBook
from node.registry import checked_id
from node.telemetry import SILENT_CODE, Severity, checked_alarm, checked_heartbeat
from ops.metrics import Metrics
from sundesk.v1 import telemetry_pb2 as tpb
from sundesk.v1 import telemetry_pb2_grpc

SEVERITY_FROM_PB = {
    tpb.ALARM_SEVERITY_CRITICAL: Severity.CRITICAL,
    tpb.ALARM_SEVERITY_MAJOR: Severity.MAJOR,
    tpb.ALARM_SEVERITY_MINOR: Severity.MINOR,
    tpb.ALARM_SEVERITY_WARNING: Severity.WARNING,
}
SEVERITY_TO_PB = {v: k for k, v in SEVERITY_FROM_PB.items()}


def severity_from_pb(value: int) -> Severity:
    found = SEVERITY_FROM_PB.get(value)  # type: ignore[call-overload]
    if found is None:
        raise InvalidArgument(
            f"alarm severity {value} is missing or unknown; use critical, major, minor or warning"
        )
    return found


class TelemetryService(telemetry_pb2_grpc.TelemetryServicer):
    def __init__(
        self,
        region: str,
        call_home: CallHome,
        book: HeartbeatBook,
        metrics: Metrics,
        now: Callable[[], datetime],
        tag_ticket: Callable[[str, str], None] = lambda code, queue: None,
    ) -> None:
        self._region = region
        self._call_home = call_home
        self._book = book
        self._metrics = metrics
        self._now = now
        self._tag = tag_ticket

    def _malformed(self, kind: str, exc: SundeskError) -> SundeskError:
        self._metrics.telemetry_rejected_total.labels(kind=kind, reason="malformed").inc()
        return exc

    async def Heartbeat(
        self, request: tpb.HeartbeatRequest, context: aio.ServicerContext
    ) -> tpb.HeartbeatReply:
        try:
            beat = checked_heartbeat(
                checked_id(request.asset, "asset id"), dict(request.diagnostics)
            )
        except InvalidArgument as exc:
            raise self._malformed("heartbeat", exc) from None
        asset, _ = self._call_home.asset(beat.asset, "heartbeat")
        if not asset.monitored:
            raise self._malformed(
                "heartbeat",
                InvalidArgument(
                    f"asset {asset.id} is not monitored; register it with --monitored and a "
                    "heartbeat interval to send heartbeats"
                ),
            )
        self._book.record(asset.id, asset.heartbeat_seconds, self._now())
        self._metrics.telemetry_heartbeats_total.inc()
        silent = self._call_home.current_ticket(asset.id, SILENT_CODE)
        return tpb.HeartbeatReply(
            received_by=self._region, silent_ticket=silent.code if silent else ""
        )

    async def Alarm(
        self, request: tpb.AlarmRequest, context: aio.ServicerContext
    ) -> tpb.AlarmReply:
        try:
            asset_id = checked_id(request.asset, "asset id")
            alarm = checked_alarm(
                asset_id, request.code, severity_from_pb(request.severity).value, request.message
            )
        except InvalidArgument as exc:
            raise self._malformed("alarm", exc) from None
        asset, customer = self._call_home.asset(alarm.asset, "alarm")
        self._metrics.telemetry_alarms_total.labels(severity=alarm.severity.value).inc()
        outcome = await self._call_home.alarm(alarm, asset, customer)
        view = outcome.ticket
        self._tag(view.code, view.queue)
        return tpb.AlarmReply(
            ticket=view.code,
            opened=outcome.opened,
            occurrences=len(view.occurrences),
            customer_notified=bool(view.customer_notified_at),
        )
