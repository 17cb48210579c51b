"""JAIN SLEE 1.1 rules of the container, one test per rule, each named for it."""

from __future__ import annotations

from typing import Any

import msgspec
import pytest

from router.container import Container, Service
from router.context import Context
from router.records import SbbRecord, Transaction, decode
from router.sbb import (
    ActivityEndEvent,
    Convergence,
    HandlerFailed,
    RollbackRequested,
    Sbb,
    SipRequest,
    on,
)
from tests.unit.test_container import ORDER, Log, Probe, Run, null_with, sip
from zeroslee import keys


def attached(run: Run, activity: str) -> str:
    return keys.last(run.view.scan(keys.attachments_of(activity))[0][0])


def test_events_fired_on_an_activity_before_it_ended_are_delivered_before_its_end_event() -> None:
    run = Run()
    container, activity = null_with(run, "a/0")
    sbb = attached(run, activity)
    tx = Transaction(run.view, "node-1")
    ctx = Context(tx, sbb, activity, container, container.services[0])
    for n in (1, 2, 3):
        ctx.fire(activity, Probe(n))
    run.view.apply(tx, 20)  # journaled, not yet delivered (the router's queue holds them)
    ORDER.clear()
    ending = Transaction(run.view, "node-1")
    container.end_activity(ending, activity)
    assert ORDER == ["a", "a", "a", "a:end"]  # every fired event first, then the end
    assert [note for note in container.served if note[3] == "Probe"] == [(sbb, "a", "node-1", "Probe")] * 3
    run.view.apply(ending, 21)
    assert run.view.scan(keys.pending_events_of(activity)) == []  # their queued copies find nothing


def test_events_fired_before_the_end_keep_their_firing_order() -> None:
    run = Run()
    container, activity = null_with(run, "a/0")
    sbb = attached(run, activity)
    for n in (5, 3, 9, 1):  # one delivery each; ids follow the firing order, not the values
        tx = Transaction(run.view, "node-1")
        Context(tx, sbb, activity, container, container.services[0]).fire(activity, Probe(n))
        run.view.apply(tx, 30 + n)
    ending = Transaction(run.view, "node-1")
    container.end_activity(ending, activity)
    raw = ending.writes[keys.sbb(sbb)]  # the entity's state as the deliveries left it
    assert raw is not None
    state = decode(decode(raw, SbbRecord).state, Log)
    assert state.seen == ["a:5", "a:3", "a:9", "a:1"]


def thrower_class(hook_fails: bool = False) -> type[Sbb]:
    """Records every lifecycle call; raises for Probe(n) with n < 0; asks for a rollback
    for Probe(0). Its effect (the state's count) must not survive either."""

    class Thrower(Sbb):
        State = Log

        @on(SipRequest, method="OPTIONS", initial_by=lambda e: e.activity)
        def on_options(self, event: SipRequest, ctx: Any) -> None:
            ctx.respond(event, 200)

        @on(Probe)
        def on_probe(self, event: Probe, ctx: Any) -> None:
            ORDER.append(f"handler:{event.n}")
            self.state.seen.append(str(event.n))
            if event.n < 0:
                raise RuntimeError("boom")
            if event.n == 0:
                ctx.set_rollback_only()

        def exception_thrown(self, ctx: Any, error: BaseException, event: object) -> None:
            if hook_fails:
                raise ValueError("hook broke")
            ORDER.append(f"exception_thrown:{error}:{type(event).__name__}")

        def rolled_back(self, ctx: Any, error: BaseException) -> None:
            ORDER.append(f"rolled_back:{type(error).__name__}")

    return Thrower


def thrower(run: Run, hook_fails: bool = False) -> tuple[Container, str]:
    """The thrower's entity, attached to a null activity the events go to."""
    container, activity = null_with(run)
    container = Container("node-1", [Service("t", thrower_class(hook_fails))])
    tx = Transaction(run.view, "node-1")
    container.deliver(tx, sip("OPTIONS", "t1"), "t1")
    sbb_id = tx.get(keys.convergence("t", "t1")).decode()  # type: ignore[union-attr]
    container.attach(tx, activity, sbb_id)
    run.view.apply(tx, 5)
    return container, activity


def test_a_handler_exception_calls_exception_thrown_then_rolls_back_then_rolled_back() -> None:
    run = Run()
    container, activity = thrower(run)
    ORDER.clear()
    failing = Transaction(run.view, "node-1")
    with pytest.raises(HandlerFailed) as failure:
        container.deliver(failing, Probe(-1), activity)
    assert ORDER == ["handler:-1", "exception_thrown:boom:Probe"]  # at once, in the failing delivery
    assert not failure.value.requested
    container.roll_back(Transaction(run.view, "node-1"), failure.value, activity)
    assert ORDER[-1] == "rolled_back:RuntimeError"


def test_a_failing_exception_thrown_hook_changes_nothing_and_is_noted() -> None:
    run = Run()
    container, activity = thrower(run, hook_fails=True)
    with pytest.raises(HandlerFailed) as failure:
        container.deliver(Transaction(run.view, "node-1"), Probe(-1), activity)
    assert isinstance(failure.value.error, RuntimeError)  # the handler's failure, not the hook's
    assert [str(h.error) for h in container.hook_failures] == ["hook broke"]


def test_set_rollback_only_rolls_the_delivery_back_as_requested_not_as_a_failure() -> None:
    run = Run()
    container, activity = thrower(run)
    ORDER.clear()
    tx = Transaction(run.view, "node-1")
    with pytest.raises(HandlerFailed) as failure:
        container.deliver(tx, Probe(0), activity)
    assert failure.value.requested and isinstance(failure.value.error, RollbackRequested)
    assert ORDER == ["handler:0"]  # no exception_thrown: nothing was thrown
    container.roll_back(Transaction(run.view, "node-1"), failure.value, activity)
    assert ORDER[-1] == "rolled_back:RollbackRequested"
    # Delivered normally, the same handler's effect is saved: the rollback is what kept it out.
    kept = Transaction(run.view, "node-1")
    container.deliver(kept, Probe(2), activity)
    assert [w for w in kept.writes if w.startswith("sbb/")] and not [w for w in tx.writes if w.startswith("sbb/")]


class Caller(msgspec.Struct):
    entities: int = 0


def convergent(select: Convergence) -> Container:
    class Root(Sbb):
        State = Caller

        @on(SipRequest, method="INVITE", initial_by=select)
        def on_invite(self, event: SipRequest, ctx: Any) -> None:
            ctx.respond(event, 200)

    return Container("node-1", [Service("root", Root)])


def invite(activity: str, caller: str, event_id: str = "e") -> SipRequest:
    return msgspec.structs.replace(sip("INVITE", activity, created=True), from_uri=caller, event_id=event_id)


def roots(run: Run) -> int:
    return len(run.view.scan("sbb/"))


def deliver_all(select: Convergence, events: list[SipRequest]) -> int:
    run = Run()
    container = convergent(select)
    for i, event in enumerate(events):
        event = msgspec.structs.replace(event, cseq=i + 1, tx=f"tx-{i}")  # no retransmission of another
        tx = Transaction(run.view, "node-1")
        container.deliver(tx, event, event.activity)
        run.view.apply(tx, i + 1)
    return roots(run)


def test_convergence_by_address_gives_one_root_entity_per_caller() -> None:
    calls = [invite("d1", "sip:alice@x"), invite("d2", "sip:alice@x"), invite("d3", "sip:bob@x")]
    assert deliver_all(Convergence(address=True), calls) == 2


def test_convergence_by_activity_context_gives_one_root_entity_per_activity() -> None:
    calls = [invite("d1", "sip:alice@x"), invite("d2", "sip:alice@x"), invite("d1", "sip:bob@x")]
    assert deliver_all(Convergence(activity_context=True), calls) == 2


def test_convergence_by_event_gives_every_event_its_own_root_entity() -> None:
    calls = [invite("d1", "sip:a@x", "ev1"), invite("d1", "sip:a@x", "ev2"), invite("d1", "sip:a@x", "ev1")]
    assert deliver_all(Convergence(event=True), calls) == 2  # ev1 again: the same event, run again


def test_convergence_by_event_type_gives_one_root_entity_per_type() -> None:
    calls = [invite("d1", "sip:a@x"), invite("d2", "sip:b@x")]
    assert deliver_all(Convergence(event_type=True), calls) == 1


def test_convergence_variables_combine() -> None:
    calls = [invite("d1", "sip:a@x"), invite("d1", "sip:b@x"), invite("d2", "sip:a@x"), invite("d1", "sip:a@x")]
    assert deliver_all(Convergence(activity_context=True, address=True), calls) == 3


def test_convergence_by_address_selects_nothing_for_an_event_without_one() -> None:
    class NoAddress(msgspec.Struct, frozen=True):
        n: int = 0

    assert Convergence(address=True).name(NoAddress(), "a1", lambda: "u") is None
    assert Convergence(address=True).name(ActivityEndEvent("a1"), "a1", lambda: "u") is None


def test_convergence_must_select_a_variable_and_address_profile_is_refused() -> None:
    with pytest.raises(ValueError, match="no variable"):
        Convergence()
    with pytest.raises(ValueError, match="profile facility"):
        Convergence(address=True, address_profile=True)
