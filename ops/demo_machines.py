"""Machines calling home in the demo: a platinum customer's two scanners in Vélizy.

One beats all day; the other falls silent at 11:00 and comes back at 16:00 (the queue's
owner opens one "machine silent" ticket, then notes the return); at 09:00 one alarm
reaches Vélizy and Tokyo at once, three times, and stays one ticket with its repeats.
Intervals are simulated seconds (the demo's clock runs 1200x).
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from typing import Any

import grpc

from ops.client import Client
from sundesk.v1 import contracts_pb2 as cpb
from sundesk.v1 import contracts_pb2_grpc, telemetry_pb2_grpc
from sundesk.v1 import desk_pb2 as pb
from sundesk.v1 import telemetry_pb2 as tpb

CUSTOMER = "airbus-defense"
STEADY, FLAKY = "airbus-mri-1", "airbus-mri-2"
HEARTBEAT = 3600  # simulated seconds: three real seconds at 1200x


# (address, role, subject) -> an open client presenting that caller's credentials
ClientFor = Callable[[str, str, str], Client]


class DemoMachines:
    def __init__(self, nodes: dict[str, str], say: Any, client: ClientFor) -> None:
        self._nodes = nodes
        self._client = client
        self._say = say
        self.alarm_ticket = ""
        self._alarmed = self._silent_said = self._back_said = False

    def setup(self) -> None:
        c = self._client(self._nodes["velizy"], "agent", "demo-machines")
        stub = contracts_pb2_grpc.ContractsStub(c.channel)
        stub.RegisterCustomer(
            cpb.RegisterCustomerRequest(
                customer=cpb.Customer(
                    id=CUSTOMER,
                    name="Airbus Défense",
                    home_region="velizy",
                    tier=pb.CONTRACT_TIER_PLATINUM,
                )
            ),
            timeout=5,
        )
        for asset in (STEADY, FLAKY):
            stub.RegisterAsset(
                cpb.RegisterAssetRequest(
                    asset=cpb.Asset(
                        id=asset,
                        customer=CUSTOMER,
                        model="MRI-7",
                        serial=asset.upper(),
                        monitored=True,
                        heartbeat_seconds=HEARTBEAT,
                    )
                ),
                timeout=5,
            )
        self._say(f"  machines: {STEADY} and {FLAKY} (platinum, heartbeat every 1 h) call home")

    def tick(self, now: datetime) -> None:
        self._beat(STEADY)
        if not 11 <= now.hour < 16:
            self._beat(FLAKY)
        if not self._alarmed and now.hour >= 9:
            self._alarmed = True
            self._alarm_twice(now)
        silent = self._silent_ticket()
        if silent is not None and not self._silent_said:
            self._silent_said = True
            self._say(f"  {now:%H:%M}Z  {FLAKY} is silent: {silent.code} opened by the owner")
        if (
            silent is not None
            and not self._back_said
            and any("is back" in c.text for c in silent.comments)
        ):
            self._back_said = True
            self._say(f"  {now:%H:%M}Z  {FLAKY} calls home again: noted on {silent.code}")

    def _beat(self, asset: str) -> None:
        c = self._client(self._nodes["velizy"], "machine", asset)
        telemetry_pb2_grpc.TelemetryStub(c.channel).Heartbeat(
            tpb.HeartbeatRequest(asset=asset, diagnostics={"helium": "92%"}), timeout=5
        )

    def _alarm_twice(self, now: datetime) -> None:
        request = tpb.AlarmRequest(
            asset=STEADY, code="HE-LOW", severity=tpb.ALARM_SEVERITY_MAJOR, message="helium 71%"
        )

        # Opened here, not in the pool's threads: the client cache is not thread-safe.
        clients = {r: self._client(self._nodes[r], "machine", STEADY) for r in ("velizy", "japan")}

        def send(region: str) -> tpb.AlarmReply:
            c = clients[region]
            reply: tpb.AlarmReply = telemetry_pb2_grpc.TelemetryStub(c.channel).Alarm(
                request, timeout=5
            )
            return reply

        with ThreadPoolExecutor(2) as pool:
            replies = list(pool.map(send, ["velizy", "japan"] * 3))
        self.alarm_ticket = replies[0].ticket
        notified = " (customer notified: platinum)" if replies[0].customer_notified else ""
        self._say(
            f"  {now:%H:%M}Z  alarm HE-LOW from {STEADY} reached velizy and japan 3 times at "
            f"once: tickets {sorted({r.ticket for r in replies})}{notified}"
        )

    def _silent_ticket(self) -> pb.Ticket | None:
        c = self._client(self._nodes["velizy"], "agent", "demo-machines")
        found = c.desk.ListTickets(pb.ListTicketsRequest(customer=CUSTOMER), timeout=5)
        for t in found.tickets:
            full = c.desk.GetTicket(pb.GetTicketRequest(code=t.code), timeout=5)
            if full.asset == FLAKY and full.title.startswith("machine silent"):
                return full
        return None

    def summary(self) -> None:
        if not self.alarm_ticket:
            return
        lines = []
        for region, address in self._nodes.items():
            c = self._client(address, "agent", "demo-machines")
            try:
                t = c.desk.GetTicket(pb.GetTicketRequest(code=self.alarm_ticket), timeout=5)
            except grpc.RpcError:
                continue
            lines.append(f"{region} {t.occurrences}")
        self._say(f"  alarm {self.alarm_ticket} occurrences per region: {', '.join(lines)}")
