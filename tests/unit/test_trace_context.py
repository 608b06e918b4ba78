"""The traceparent fast paths agree with the W3C propagator on every carrier."""

from __future__ import annotations

import pytest
from opentelemetry import trace
from opentelemetry.trace import NonRecordingSpan, SpanContext, TraceFlags, TraceState
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from ops.span_relay import context_row
from ops.tracing import (
    carried_row,
    carried_span_context,
    current_span,
    extract_context,
    inject_context,
)

W3C = TraceContextTextMapPropagator()
TID, SID = 0x0AF7651916CD43DD8448EB211C80319C, 0xB7AD6B7169203331


def by_propagator(carrier: dict[str, str]) -> SpanContext:
    return trace.get_current_span(W3C.extract(carrier)).get_span_context()


CARRIERS = [
    {"traceparent": f"00-{TID:032x}-{SID:016x}-01"},
    {"traceparent": f"00-{TID:032x}-{SID:016x}-00"},
    {"traceparent": f"00-{TID:032x}-{SID:016x}-01", "tracestate": "vendor=1"},
    {"traceparent": f"00-{0:032x}-{SID:016x}-01"},  # all-zero trace id
    {"traceparent": f"00-{TID:032x}-{0:016x}-01"},  # all-zero span id
    {"traceparent": f"00-{TID:032X}-{SID:016x}-01"},  # upper case
    {"traceparent": f"ff-{TID:032x}-{SID:016x}-01"},  # forbidden version
    {"traceparent": f"01-{TID:032x}-{SID:016x}-01-extra"},  # a future version
    {"traceparent": f"00-{TID:032x}-{SID:016x}-01 "},
    {"traceparent": "00-0_f7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"},
    {"traceparent": "garbage"},
    {"other": "x"},
    {},
]


@pytest.mark.parametrize("carrier", CARRIERS)
def test_extracting_agrees_with_the_propagator(carrier: dict[str, str]) -> None:
    expected = by_propagator(carrier)
    assert carried_span_context(carrier) == expected
    assert trace.get_current_span(extract_context(carrier)).get_span_context() == expected


@pytest.mark.parametrize(
    "context",
    [
        SpanContext(TID, SID, is_remote=False, trace_flags=TraceFlags(1)),
        SpanContext(TID, SID, is_remote=False, trace_flags=TraceFlags(0)),
        SpanContext(TID, SID, False, TraceFlags(1), TraceState([("vendor", "1")])),
        SpanContext(0, 0, is_remote=False),  # invalid: nothing to carry
    ],
)
def test_injecting_agrees_with_the_propagator(context: SpanContext) -> None:
    span = NonRecordingSpan(context)
    expected: dict[str, str] = {}
    W3C.inject(expected, context=trace.set_span_in_context(span))
    assert inject_context(span) == expected
    with trace.use_span(span):
        assert inject_context() == expected


@pytest.mark.parametrize("carrier", CARRIERS)
def test_context_rows_agree_with_the_propagator_or_defer_to_it(carrier: dict[str, str]) -> None:
    row = carried_row(carrier)
    expected = by_propagator(carrier)
    # None sends the caller to carried_span_context, which agrees with the propagator.
    if row is not None:
        assert expected.is_valid and row == context_row(expected)


def test_our_own_traceparents_take_the_link_row_path() -> None:
    for flags in ("00", "01"):
        assert carried_row({"traceparent": f"00-{TID:032x}-{SID:016x}-{flags}"})


def test_current_span_is_the_apis_current_span() -> None:
    assert current_span() is trace.get_current_span() is trace.INVALID_SPAN
    outer = NonRecordingSpan(SpanContext(TID, SID, False, TraceFlags(1)))
    with trace.use_span(outer):
        assert current_span() is trace.get_current_span() is outer
        inner = NonRecordingSpan(SpanContext(TID, SID + 1, False, TraceFlags(1)))
        with trace.use_span(inner):
            assert current_span() is inner
        assert current_span() is outer
    assert current_span() is trace.INVALID_SPAN
