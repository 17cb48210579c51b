"""Child SBBs (JAIN SLEE 1.1 §6.8): create, priority, delivery to children attached to an
activity, removal and cascade removal; a child outlives its attachments, not its parent."""

from __future__ import annotations

from typing import Any

import pytest

from router.container import Container, Service
from router.context import Context
from router.records import SbbRecord, Transaction, decode
from router.sbb import ChildRelation, FacilityError, Sbb, SipRequest, on
from tests.unit.test_container import ORDER, Probe, Run, sip
from zeroslee import keys


class Grandchild(Sbb):
    @on(Probe)
    def on_probe(self, event: Probe, ctx: Any) -> None:
        ORDER.append("grandchild")

    def removed(self, ctx: Any) -> None:
        ORDER.append("grandchild:removed")


class Leg(Sbb):
    child_relations = {"sub": ChildRelation(Grandchild)}

    @on(Probe)
    def on_probe(self, event: Probe, ctx: Any) -> None:
        ORDER.append("leg")

    def created(self, ctx: Any) -> None:
        ORDER.append("leg:created")

    def removed(self, ctx: Any) -> None:
        ORDER.append("leg:removed")


class Parent(Sbb):
    child_relations = {"leg": ChildRelation(Leg, priority=9), "low": ChildRelation(Leg, priority=-1)}

    @on(SipRequest, method="OPTIONS", initial_by=lambda e: e.activity)
    def on_options(self, event: SipRequest, ctx: Any) -> None:
        ctx.respond(event, 200)

    @on(Probe)
    def on_probe(self, event: Probe, ctx: Any) -> None:
        ORDER.append("parent")

    def removed(self, ctx: Any) -> None:
        ORDER.append("parent:removed")


def family() -> tuple[Run, Container, str, Context]:
    """A parent entity attached to a null activity, and a Context for it."""
    run = Run()
    container = Container("node-1", [Service("p", Parent)])
    tx = Transaction(run.view, "node-1")
    container.deliver(tx, sip("OPTIONS", "t1"), "t1")
    parent = tx.get(keys.convergence("p", "t1")).decode()  # type: ignore[union-attr]
    run.view.apply(tx, 1)
    tx = Transaction(run.view, "node-1")
    ctx = Context(tx, parent, "t1", container, container.services[0])
    room = ctx.create_null_activity()
    ctx.attach(room)
    return run, container, room, ctx


def test_a_child_is_created_in_a_declared_relation_and_an_undeclared_one_is_refused() -> None:
    _, _, _, ctx = family()
    ORDER.clear()
    child = ctx.create_child("leg")
    assert ORDER == ["leg:created"] and ctx.children() == [child] and ctx.children("low") == []
    record = decode(ctx.tx.get(keys.sbb(child)) or b"", SbbRecord)
    assert (record.parent, record.path) == (ctx.sbb_id, "leg")
    with pytest.raises(FacilityError, match="no child relation 'nope'"):
        ctx.create_child("nope")


def test_children_attached_to_an_activity_get_its_events_by_their_relations_priority() -> None:
    run, container, room, ctx = family()
    high, low = ctx.create_child("leg"), ctx.create_child("low")
    ctx.attach_child(high, room)
    ctx.attach_child(low, room)
    run.view.apply(ctx.tx, 2)
    ORDER.clear()
    container.deliver(Transaction(run.view, "node-1"), Probe(1), room)
    assert ORDER == ["leg", "parent", "leg"]  # priority 9, then the parent's 0, then -1


def test_a_child_outlives_its_attachments_but_not_its_parent_cascade_included() -> None:
    run, container, room, ctx = family()
    leg = ctx.create_child("leg")
    ctx.attach_child(leg, room)
    grandchild = Context(ctx.tx, leg, room, container, container.services[0]).create_child("sub")
    run.view.apply(ctx.tx, 2)
    tx = Transaction(run.view, "node-1")
    container.detach(tx, room, leg)
    container._collect_garbage(tx)
    run.view.apply(tx, 3)
    assert run.view.get(keys.sbb(leg))[1] is not None  # detached from everything, still alive
    ORDER.clear()
    tx = Transaction(run.view, "node-1")
    container.end_activity(tx, "t1")  # the parent's own activity...
    container.end_activity(tx, room)  # ...and the room: the parent has no attachment left
    container._collect_garbage(tx)
    assert ORDER == ["grandchild:removed", "leg:removed", "parent:removed"]  # children first
    run.view.apply(tx, 4)
    for sbb_id in (ctx.sbb_id, leg, grandchild):
        assert run.view.get(keys.sbb(sbb_id))[1] is None
    assert run.view.scan("child/") == []


def test_remove_child_takes_only_that_child_and_its_own_children() -> None:
    run, container, room, ctx = family()
    keep, drop = ctx.create_child("leg"), ctx.create_child("leg")
    Context(ctx.tx, drop, room, container, container.services[0]).create_child("sub")
    ctx.attach_child(drop, room)
    ORDER.clear()
    ctx.remove_child(drop)
    assert ORDER == ["grandchild:removed", "leg:removed"] and ctx.children() == [keep]
    assert ctx.tx.scan(keys.attachments_of(room)) == [keys.attachment(room, ctx.sbb_id)]
    with pytest.raises(FacilityError, match="is not a child"):
        ctx.remove_child(drop)
