"""Node metrics: names and labels as exposed, state gauges that replace their label sets,
and the /metrics endpoint of one registry."""

from __future__ import annotations

import urllib.request

import pytest
from prometheus_client.parser import text_string_to_metric_families

from ops.metrics import Children, Metrics, scrape


def samples(metrics: Metrics) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    text = metrics.render().decode()
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def value(metrics: Metrics, name: str, **labels: str) -> float | None:
    return samples(metrics).get((name, tuple(sorted(labels.items()))))


def test_every_metric_is_exposed_with_its_labels() -> None:
    m = Metrics("velizy")
    m.tickets_created_total.labels(queue="velizy").inc()
    m.transitions_total.labels(from_state="new", to_state="assigned").inc()
    m.comments_total.inc()
    m.rpc_requests_total.labels(service="sundesk.v1.Desk", method="GetTicket", code="OK").inc()
    m.rpc_duration_seconds.labels(service="sundesk.v1.Desk", method="GetTicket").observe(0.002)
    m.store_commit_seconds.observe(0.001)
    m.store_commit_batch_size.observe(3)
    m.replication_lag_seconds.labels(origin="japan").observe(0.4)
    m.replication_backlog.labels(peer="uk").set(7)
    m.replication_applied_total.labels(origin="japan").inc()
    m.replication_batches_total.labels(peer="uk").inc()
    m.replication_peer_connected.labels(peer="uk").set(1)
    m.hlc_skew_rejections_total.inc()
    m.queue_epoch.labels(queue="velizy").set(12)
    m.handoffs_total.labels(queue="velizy", kind="planned").inc()
    m.failovers_total.labels(queue="us").inc()
    m.handoff_ack_seconds.observe(42)
    m.sla_breaches_total.labels(queue="us", tier="gold", target="response").inc()
    m.escalations_total.labels(level="L2").inc()
    m.telemetry_heartbeats_total.inc()
    m.telemetry_alarms_total.labels(severity="critical").inc()
    m.set_ticket_counts({("new", "velizy", "gold"): 3})
    m.set_queue_owner("velizy", "velizy", "region", epoch=12)
    m.set_lease_state("alive")

    text = m.render().decode()
    for line in (
        'sundesk_node_info{region="velizy"} 1.0',
        'sundesk_tickets{queue="velizy",state="new",tier="gold"} 3.0',
        'sundesk_tickets_created_total{queue="velizy"} 1.0',
        'sundesk_transitions_total{from_state="new",to_state="assigned"} 1.0',
        "sundesk_comments_total 1.0",
        'sundesk_rpc_requests_total{code="OK",method="GetTicket",service="sundesk.v1.Desk"} 1.0',
        'sundesk_rpc_duration_seconds_bucket{le="0.0025",method="GetTicket",'
        'service="sundesk.v1.Desk"} 1.0',
        'sundesk_store_commit_seconds_bucket{le="0.001"} 1.0',
        'sundesk_store_commit_batch_size_bucket{le="4.0"} 1.0',
        'sundesk_replication_lag_seconds_count{origin="japan"} 1.0',
        'sundesk_replication_backlog{peer="uk"} 7.0',
        'sundesk_replication_applied_total{origin="japan"} 1.0',
        'sundesk_replication_batches_total{peer="uk"} 1.0',
        'sundesk_replication_peer_connected{peer="uk"} 1.0',
        "sundesk_hlc_skew_rejections_total 1.0",
        'sundesk_queue_owner{kind="region",owner="velizy",queue="velizy"} 1.0',
        'sundesk_queue_epoch{queue="velizy"} 12.0',
        'sundesk_lease_state{state="alive"} 1.0',
        'sundesk_lease_state{state="lost"} 0.0',
        'sundesk_handoffs_total{kind="planned",queue="velizy"} 1.0',
        'sundesk_failovers_total{queue="us"} 1.0',
        "sundesk_handoff_ack_seconds_sum 42.0",
        'sundesk_sla_breaches_total{queue="us",target="response",tier="gold"} 1.0',
        'sundesk_escalations_total{level="L2"} 1.0',
        "sundesk_telemetry_heartbeats_total 1.0",
        'sundesk_telemetry_alarms_total{severity="critical"} 1.0',
    ):
        assert line in text, line
    # Histograms in base units, with buckets spanning 0.5 ms to 5 s for RPCs.
    assert 'le="0.0005"' in text and 'le="5.0"' in text
    assert "milliseconds" not in text


def test_each_node_has_its_own_registry() -> None:
    a, b = Metrics("velizy"), Metrics("japan")
    a.comments_total.inc()
    assert value(a, "sundesk_comments_total") == 1
    assert value(b, "sundesk_comments_total") == 0
    assert value(b, "sundesk_node_info", region="japan") == 1


def test_children_are_made_once_per_label_values_in_label_order() -> None:
    m = Metrics("de")
    made: list[tuple[str, ...]] = []
    labels = m.rpc_requests_total.labels

    class Spy:
        def labels(self, *values: str) -> object:
            made.append(values)
            return labels(*values)

    counters = Children(Spy())
    counters["sundesk.v1.Desk", "CreateTicket", "OK"].inc()
    counters["sundesk.v1.Desk", "CreateTicket", "OK"].inc()
    counters["sundesk.v1.Desk", "CreateTicket", "NOT_FOUND"].inc()
    assert made == [
        ("sundesk.v1.Desk", "CreateTicket", "OK"),
        ("sundesk.v1.Desk", "CreateTicket", "NOT_FOUND"),
    ]
    ok = {"service": "sundesk.v1.Desk", "method": "CreateTicket", "code": "OK"}
    assert value(m, "sundesk_rpc_requests_total", **ok) == 2
    # A single label value is its own key, not a one-element tuple.
    queues = Children(m.tickets_created_total)
    queues["velizy"].inc()
    assert queues["velizy"] is queues["velizy"]
    assert value(m, "sundesk_tickets_created_total", queue="velizy") == 1


def test_loop_metrics_count_and_bucket_like_prometheus_client() -> None:
    """The RPC metrics skip prometheus_client's per-update lock; what they expose must
    not differ: inclusive bucket bounds, cumulative buckets, +Inf, count and sum."""
    m = Metrics("uk")
    desk = {"service": "sundesk.v1.Desk", "method": "GetTicket"}
    hist = m.rpc_duration_seconds.labels(**desk)
    assert hist is m.rpc_duration_seconds.labels("sundesk.v1.Desk", "GetTicket")
    for seconds in (0.0004, 0.0005, 0.0006, 7.0):
        hist.observe(seconds)
    assert value(m, "sundesk_rpc_duration_seconds_bucket", le="0.0005", **desk) == 2
    assert value(m, "sundesk_rpc_duration_seconds_bucket", le="0.001", **desk) == 3
    assert value(m, "sundesk_rpc_duration_seconds_bucket", le="5.0", **desk) == 3
    assert value(m, "sundesk_rpc_duration_seconds_bucket", le="+Inf", **desk) == 4
    assert value(m, "sundesk_rpc_duration_seconds_count", **desk) == 4
    assert value(m, "sundesk_rpc_duration_seconds_sum", **desk) == pytest.approx(7.0015)
    ok = m.rpc_requests_total.labels(code="OK", **desk)
    ok.inc()
    ok.inc(2)
    assert value(m, "sundesk_rpc_requests_total", code="OK", **desk) == 3
    with pytest.raises(ValueError, match="non-negative"):
        ok.inc(-1)
    with pytest.raises(ValueError, match="takes labels service, method, code"):
        m.rpc_requests_total.labels("sundesk.v1.Desk", "GetTicket")
    with pytest.raises(ValueError, match="takes labels service, method, code"):
        m.rpc_requests_total.labels(service="sundesk.v1.Desk", method="GetTicket")
    with pytest.raises(ValueError, match="by position or by name"):
        m.rpc_requests_total.labels("sundesk.v1.Desk", method="GetTicket", code="OK")


def test_queue_owner_replaces_the_previous_owner() -> None:
    m = Metrics("uk")
    m.set_queue_owner("velizy", "velizy", "region", epoch=5)
    m.set_queue_owner("velizy", "us", "region", epoch=9)
    m.set_queue_owner("japan", "alice", "oncall", epoch=3)
    owners = {
        labels: v for (name, labels), v in samples(m).items() if name == "sundesk_queue_owner"
    }
    assert owners == {
        (("kind", "region"), ("owner", "us"), ("queue", "velizy")): 1.0,
        (("kind", "oncall"), ("owner", "alice"), ("queue", "japan")): 1.0,
    }
    assert value(m, "sundesk_queue_epoch", queue="velizy") == 9

    m.clear_queue_owner("velizy")
    assert value(m, "sundesk_queue_owner", kind="region", owner="us", queue="velizy") is None


def test_ticket_counts_zero_vanished_label_sets() -> None:
    m = Metrics("us")
    m.set_ticket_counts({("new", "us", "gold"): 2, ("assigned", "us", "silver"): 1})
    m.set_ticket_counts({("assigned", "us", "gold"): 2})
    assert value(m, "sundesk_tickets", state="new", queue="us", tier="gold") == 0
    assert value(m, "sundesk_tickets", state="assigned", queue="us", tier="silver") == 0
    assert value(m, "sundesk_tickets", state="assigned", queue="us", tier="gold") == 2


def test_lease_state_is_one_of_three() -> None:
    m = Metrics("japan")
    m.set_lease_state("expiring")
    assert [value(m, "sundesk_lease_state", state=s) for s in ("alive", "expiring", "lost")] == [
        0,
        1,
        0,
    ]
    with pytest.raises(ValueError, match="lease state"):
        m.set_lease_state("zombie")


def test_init_labels_creates_zero_series_without_self_as_peer() -> None:
    m = Metrics("velizy")
    m.init_labels(["velizy", "uk"])
    assert value(m, "sundesk_tickets_created_total", queue="uk") == 0
    assert value(m, "sundesk_replication_backlog", peer="uk") == 0
    assert value(m, "sundesk_replication_backlog", peer="velizy") is None


def test_http_server_on_port_zero_serves_this_registry() -> None:
    m = Metrics("germany")
    m.comments_total.inc(3)
    port = m.start_http_server(0)
    try:
        assert port > 0
        direct = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # loopback only
        with direct.open(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
            assert resp.status == 200
            assert resp.headers["Content-Type"].startswith("text/plain")
            body = resp.read().decode()
        series = scrape(port)
    finally:
        m.stop_http_server()
    assert series["sundesk_comments_total"] == 3
    assert series['sundesk_node_info{region="germany"}'] == 1
    assert "sundesk_comments_total 3.0" in body
    assert 'sundesk_node_info{region="germany"} 1.0' in body
    # Only this registry: none of prometheus_client's default process/platform collectors.
    assert "process_cpu_seconds_total" not in body
    assert "python_info" not in body


def test_span_export_counts_are_read_at_each_scrape() -> None:
    m = Metrics("velizy")
    counts = [10, 0, 0, 3]
    m.watch_spans(lambda: (counts[0], counts[1], counts[2], counts[3]))
    assert value(m, "sundesk_spans_exported_total") == 10
    assert value(m, "sundesk_spans_dropped_total", reason="queue_full") == 0
    assert value(m, "sundesk_spans_queued") == 3
    counts[:] = [12, 4, 2048, 0]
    assert value(m, "sundesk_spans_exported_total") == 12
    assert value(m, "sundesk_spans_dropped_total", reason="queue_full") == 4
    assert value(m, "sundesk_spans_dropped_total", reason="export_failed") == 2048
    assert value(m, "sundesk_spans_queued") == 0
