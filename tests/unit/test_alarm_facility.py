"""Alarms: the state alarms `set`/`clear` (zeroslee/alarms.py) and the SBBs' facility
(ctx.alarms, router/context.py), which is not transactional."""

from __future__ import annotations

from typing import Any

import pytest

from router.container import Container, Service
from router.records import Transaction
from router.sbb import FacilityError, HandlerFailed, Sbb, SipRequest, on
from tests.unit.test_container import Run, sip
from zeroslee.alarms import Alarms, parse_level


def test_a_state_alarm_stays_until_cleared_and_a_failure_alarm_clears_with_time() -> None:
    alarms = Alarms(threshold=1, clear_after=10.0)
    alarms.set("replication", "major", "no backup", 0.0)
    alarms.failed("svc", "boom", 0.0)
    assert [a.source for a in alarms.active(5.0)] == ["replication", "svc"]
    assert [a.source for a in alarms.active(100.0)] == ["replication"]  # quiet: the failure alarm went
    alarms.set("replication", "critical", "still none", 101.0)
    assert [(a.level, a.message) for a in alarms.active(102.0)] == [("critical", "still none")]
    assert alarms.clear("replication") and not alarms.clear("replication")
    assert alarms.active(103.0) == []


def test_alarm_levels_are_jslees_and_others_are_refused() -> None:
    assert parse_level("MAJOR") == "major"
    with pytest.raises(ValueError, match="one of critical, major"):
        parse_level("cleared")


class Raiser(Sbb):
    @on(SipRequest, method="OPTIONS", initial_by=lambda e: e.activity)
    def on_options(self, event: SipRequest, ctx: Any) -> None:
        if event.body == b"clear":
            ctx.alarms.clear("a1")
        else:
            ctx.alarms.raise_alarm("a1", event.body.decode() or "minor", "text")
        raise RuntimeError("rolled back anyway")


def test_sbb_alarms_are_not_transactional_and_a_bad_level_is_the_services_failure() -> None:
    run = Run()
    container = Container("node-1", [Service("svc", Raiser)])
    with pytest.raises(HandlerFailed):
        container.deliver(Transaction(run.view, "node-1"), sip("OPTIONS", "t1"), "t1")
    with pytest.raises(HandlerFailed):
        container.deliver(Transaction(run.view, "node-1"), sip("OPTIONS", "t2", body=b"clear"), "t2")
    (svc, ident, record), cleared = container.alarm_ops
    assert (svc, ident) == ("svc", "a1") and record is not None and record.level == "minor"
    assert cleared == ("svc", "a1", None)  # kept for the shell, though both deliveries rolled back
    container.alarm_ops.clear()
    with pytest.raises(HandlerFailed) as failure:
        container.deliver(Transaction(run.view, "node-1"), sip("OPTIONS", "t3", body=b"loud"), "t3")
    assert isinstance(failure.value.error, FacilityError) and container.alarm_ops == []
