"""The node observer's store spans, checked with the SDK's in-memory exporter."""

from __future__ import annotations

from collections.abc import Mapping

from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import TracerProvider

from node.clock import FakeClock
from node.observe import MAX_LINKS, NodeObserver
from ops.metrics import Metrics
from ops.tracing import flush_tracing, get_tracer, inject_context, make_tracer_provider


def observer() -> tuple[NodeObserver, InMemorySpanExporter, TracerProvider]:
    exporter = InMemorySpanExporter()
    provider = make_tracer_provider("velizy", otlp_endpoint=None, exporter=exporter)
    tracer = get_tracer(provider)
    return NodeObserver("velizy", Metrics("velizy"), tracer, FakeClock()), exporter, provider


def rpc_carriers(obs: NodeObserver, n: int) -> list[Mapping[str, str]]:
    carriers: list[Mapping[str, str]] = []
    for i in range(n):
        span = obs.tracer.start_span(f"rpc {i}")
        carriers.append(inject_context(span))
        span.end()
    return carriers


def test_one_commit_span_per_group_in_the_first_trace_linked_to_the_others() -> None:
    obs, exporter, provider = observer()
    carriers = rpc_carriers(obs, 3)
    obs.on_commit_spans([carriers[0], {}, carriers[1], carriers[2]], 1_000, 5_000, 4)
    assert flush_tracing(provider)
    spans = {s.name: s for s in exporter.get_finished_spans()}
    commit = [s for s in exporter.get_finished_spans() if s.name == "store.commit"]
    assert len(commit) == 1
    span = commit[0]
    first = spans["rpc 0"].context
    assert span.context.trace_id == first.trace_id
    assert span.parent is not None and span.parent.span_id == first.span_id
    linked = {link.context.span_id for link in span.links}
    assert linked == {spans["rpc 1"].context.span_id, spans["rpc 2"].context.span_id}
    assert (span.start_time, span.end_time) == (1_000, 5_000)
    assert span.attributes is not None
    assert span.attributes["sundesk.batch_size"] == 4
    assert span.attributes["sundesk.traced_writes"] == 3


def test_links_are_bounded_and_untraced_groups_make_no_span() -> None:
    obs, exporter, provider = observer()
    obs.on_commit_spans([{}, {}], 1, 2, 2)
    carriers = rpc_carriers(obs, MAX_LINKS + 5)
    obs.on_commit_spans(carriers, 1, 2, len(carriers))
    assert flush_tracing(provider)
    commits = [s for s in exporter.get_finished_spans() if s.name == "store.commit"]
    assert len(commits) == 1
    assert len(commits[0].links) == MAX_LINKS


def test_a_write_carrier_that_is_not_a_valid_traceparent_is_no_link() -> None:
    # Carriers come back from stored operations: whatever they hold, the commit span is
    # exported, with a link for each valid one (a trace state included) and none other.
    obs, exporter, provider = observer()
    first, good = rpc_carriers(obs, 2)
    with_state = {**rpc_carriers(obs, 1)[0], "tracestate": "vendor=1"}
    bad = [
        {"traceparent": "00-" + "0" * 32 + "-b7ad6b7169203331-01"},
        {"traceparent": "not a traceparent"},
        {"traceparent": 7},
    ]
    obs.on_commit_spans([first, *bad, good, with_state], 1, 2, 6)  # type: ignore[list-item]
    assert flush_tracing(provider)
    commit = next(s for s in exporter.get_finished_spans() if s.name == "store.commit")
    linked = {link.context.span_id for link in commit.links}
    assert linked == {int(c["traceparent"][36:52], 16) for c in (good, with_state)}
