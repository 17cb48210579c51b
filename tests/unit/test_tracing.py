"""The per-Call-ID trace rings (zeroslee/tracing.py) and the raw-bytes helpers."""

from __future__ import annotations

from zeroslee.config import TraceConfig
from zeroslee.metrics import SipCounts, sip_first_line, status_class
from zeroslee.tracing import Trace, call_id_of, first_line

INVITE = b"INVITE sip:room@x SIP/2.0\r\nVia: SIP/2.0/UDP h;branch=z9hG4bK1\r\ni: abc@h \r\nCSeq: 1 INVITE\r\n\r\n"


def test_call_id_is_found_in_full_and_compact_form() -> None:
    assert call_id_of(INVITE) == "abc@h"
    assert call_id_of(b"SIP/2.0 200 OK\r\nCALL-ID:\tx-1\r\n\r\n") == "x-1"
    assert call_id_of(b"\r\n\r\n") == ""


def test_first_line_drops_the_version() -> None:
    assert first_line(INVITE) == "INVITE sip:room@x"
    assert first_line(b"SIP/2.0 180 Ringing\r\n\r\n") == "180 Ringing"


def test_rings_are_bounded_in_keys_and_records() -> None:
    trace = Trace(TraceConfig(calls=2, per_call=3))
    for i in range(5):
        trace.record("a", "ua", "balancer", f"m{i}")
    trace.record("b", "ua", "balancer", "x")
    trace.record("c", "ua", "balancer", "y")  # the oldest key, "a", is forgotten
    assert [r[4] for r in trace.records(["a", "b", "c"])] == ["x", "y"]
    trace.record("b", "ua", "balancer", "x2")
    trace.record("b", "ua", "balancer", "x3")
    trace.record("b", "ua", "balancer", "x4")
    assert [r[4] for r in trace.records(["b"])] == ["x2", "x3", "x4"]


def test_tracing_off_records_nothing() -> None:
    trace = Trace(TraceConfig(calls=0))
    trace.sip(INVITE, "ua", "balancer")
    assert trace.records(["abc@h"]) == [] and not trace.rings


def test_sip_counts_label_by_method_and_class_with_bounded_values() -> None:
    counts = SipCounts()
    for data in (INVITE, INVITE, b"FOO sip:x SIP/2.0\r\n", b"SIP/2.0 486 Busy\r\n", b"\r\n\r\n", b"SIP/2.0 99x"):
        counts.count(data, "in")
    assert counts.requests == {("INVITE", "in"): 2, ("other", "in"): 1}
    assert counts.responses == {("4xx", "in"): 1}
    assert sip_first_line(b"SIP/2.0 200 OK") == ("", 200)
    assert status_class(700) == "other" and status_class(100) == "1xx"
