"""Usage parameters (router/usage.py): declared counters and samples, per service."""

from __future__ import annotations

from typing import Any

import pytest

from router.container import Container, Service
from router.records import Transaction
from router.sbb import HandlerFailed, Sbb, SipRequest, on
from router.usage import Usage, UsageError, UsageSet
from tests.unit.test_container import Run, sip


def test_declared_counters_and_samples_count_and_undeclared_names_are_refused() -> None:
    params = UsageSet.declared(("calls",), ("bytes",))
    usage = Usage("svc", params)
    usage.increment("calls")
    usage.increment("calls", 4)
    for value in (7, 2, 11):
        usage.sample("bytes", value)
    assert params.counters == {"calls": 5}
    s = params.samples["bytes"]
    assert (s.count, s.total, s.low, s.high) == (3, 20.0, 2.0, 11.0)
    with pytest.raises(UsageError, match="no usage counter 'other'"):
        usage.increment("other")
    with pytest.raises(UsageError, match="no usage sample 'calls'"):
        usage.sample("calls", 1)
    with pytest.raises(UsageError, match="only grows"):
        usage.increment("calls", -1)
    with pytest.raises(UsageError, match="a number"):
        usage.sample("bytes", float("nan"))


class Counting(Sbb):
    usage_counters = ("seen",)

    @on(SipRequest, method="OPTIONS", initial_by=lambda e: e.activity)
    def on_options(self, event: SipRequest, ctx: Any) -> None:
        ctx.usage.increment("seen")
        if event.body == b"fail":
            raise RuntimeError("after counting")
        if event.body == b"undeclared":
            ctx.usage.increment("nope")
        ctx.respond(event, 200)


def test_usage_is_not_transactional_and_an_undeclared_name_is_the_services_failure() -> None:
    run = Run()
    container = Container("node-1", [Service("counting", Counting)])
    container.deliver(Transaction(run.view, "node-1"), sip("OPTIONS", "t1"), "t1")
    with pytest.raises(HandlerFailed):  # rolled back, yet counted (as JAIN SLEE's usage is)
        container.deliver(Transaction(run.view, "node-1"), sip("OPTIONS", "t2", body=b"fail"), "t2")
    assert container.usage["counting"].counters == {"seen": 2}
    with pytest.raises(HandlerFailed, match="declares no usage counter 'nope'"):
        container.deliver(Transaction(run.view, "node-1"), sip("OPTIONS", "t3", body=b"undeclared"), "t3")
