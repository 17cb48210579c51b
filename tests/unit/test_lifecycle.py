"""Service lifecycle at run time (router/lifecycle.py): one test per rule, on the pure
container with an in-memory view; and the State evolution rules."""

from __future__ import annotations

import msgspec
import pytest

from router.container import Container, Service
from router.lifecycle import ServiceError, ServiceTable, evolution_errors
from router.records import ActivityRecord, PendingEvent, SbbRecord, Transaction, decode
from router.sbb import ChildRelation, Sbb, ServiceStartedEvent, on
from tests.ra import versions, versions_bad, versions_v2, versions_v3
from tests.unit.test_container import DictView, sip
from zeroslee import keys

CLASSES = {
    "tests.ra.versions:CounterSbb": versions.CounterSbb,
    "tests.ra.versions:StartedCounterSbb": versions.StartedCounterSbb,
    "tests.ra.versions_v2:CounterSbb2": versions_v2.CounterSbb2,
    "tests.ra.versions_v3:CounterSbb3": versions_v3.CounterSbb3,
    "tests.ra.versions_bad:CounterSbbBad": versions_bad.CounterSbbBad,
}


def load(path: str) -> type[Sbb]:
    if path not in CLASSES:
        raise ServiceError(f"cannot load {path}")
    return CLASSES[path]


class Cluster:
    """One container over an in-memory store, committing each transaction."""

    def __init__(self, root: type[Sbb] = versions.CounterSbb) -> None:
        self.view = DictView()
        self.container = Container("node-1", [Service("counter", root)], load)
        self.seq = 0

    def run(self, body: object) -> Transaction:
        tx = Transaction(self.view, "node-1")
        body(tx)  # type: ignore[operator]
        self.seq += 1
        self.view.apply(tx, self.seq)
        return tx

    def deliver(self, event: msgspec.Struct, activity: str) -> Transaction:
        return self.run(lambda tx: self.container.deliver(tx, event, activity))

    def change(self, action: str, sbb: str = "") -> str:
        said: list[str] = []
        self.run(lambda tx: said.append(self.container.change_service(tx, "counter", action, sbb)))
        return said[0]

    def answer(self, tx: Transaction) -> tuple[int, str]:
        (message,) = tx.messages
        return message.status, message.body.decode()  # type: ignore[attr-defined]

    def record(self) -> ServiceTable:
        return decode(self.view.data[keys.SERVICES][1], ServiceTable)

    def entities(self) -> list[SbbRecord]:
        return [decode(v, SbbRecord) for k, (_, v) in self.view.data.items() if k.startswith("sbb/")]

    def deliver_fired(self, tx: Transaction) -> list[Transaction]:
        done = []
        for pending in tx.fired:
            event = self.container.event_types.decode(pending)

            def body(t: Transaction, p: PendingEvent = pending, e: msgspec.Struct = event) -> None:
                t.delete(keys.pending_event(p.activity, p.id))
                self.container.deliver(t, e, p.activity)

            done.append(self.run(body))
        return done


def call(cluster: Cluster, dialog: str) -> None:
    assert cluster.answer(cluster.deliver(sip("INVITE", dialog, room="count-1", created=True), dialog))[0] == 200


def info(cluster: Cluster, dialog: str, cseq: int) -> tuple[int, str]:
    return cluster.answer(cluster.deliver(sip("INFO", dialog, room="count-1", cseq=cseq), dialog))


# --- State evolution -------------------------------------------------------------------


class Base(msgspec.Struct):
    n: int = 0
    names: list[str] = []


def state_named(name: str, **fields: tuple[type, object]) -> type[msgspec.Struct]:
    """A State class called `name`, each field given as (type, default)."""
    return msgspec.defstruct(name, [(field, kind, default) for field, (kind, default) in fields.items()])


def sbb_with(state: type[msgspec.Struct], relations: dict[str, ChildRelation] | None = None) -> type[Sbb]:
    return type("X", (Sbb,), {"State": state, "child_relations": relations or {}})


def test_evolution_a_field_added_with_a_default_is_compatible() -> None:
    new = state_named("Base", n=(int, 0), names=(list[str], []), label=(str, "x"))
    assert evolution_errors(sbb_with(Base), sbb_with(new)) == []


def test_evolution_a_field_added_without_a_default_is_refused() -> None:
    new = msgspec.defstruct("Base", [("owner", str), ("n", int, 0), ("names", list[str], [])])
    assert evolution_errors(sbb_with(Base), sbb_with(new)) == ["Base.owner: a field added needs a default"]


def test_evolution_a_field_that_changes_type_is_refused() -> None:
    new = state_named("Base", n=(str, ""), names=(list[str], []))
    assert evolution_errors(sbb_with(Base), sbb_with(new)) == ["Base.n: its type changed (int -> str)"]


def test_evolution_a_field_removed_is_compatible_unless_unknown_fields_are_forbidden() -> None:
    fewer = msgspec.defstruct("Base", [("n", int, 0)])
    strict = msgspec.defstruct("Base", [("n", int, 0)], forbid_unknown_fields=True)
    assert evolution_errors(sbb_with(Base), sbb_with(fewer)) == []
    assert evolution_errors(sbb_with(Base), sbb_with(strict)) == [
        "Base: fields names removed, and the new State forbids unknown fields"
    ]


def test_evolution_array_like_fields_keep_their_places() -> None:
    old = msgspec.defstruct("Row", [("a", int, 0), ("b", int, 0)], array_like=True)
    swapped = msgspec.defstruct("Row", [("b", int, 0), ("a", int, 0)], array_like=True)
    appended = msgspec.defstruct("Row", [("a", int, 0), ("b", int, 0), ("c", int, 0)], array_like=True)
    assert evolution_errors(sbb_with(old), sbb_with(appended)) == []
    assert evolution_errors(sbb_with(old), sbb_with(swapped)) == [
        "Row.b: moved (array_like fields keep their places)",
        "Row.a: moved (array_like fields keep their places)",
    ]


def test_evolution_a_state_of_another_name_is_a_new_schema() -> None:
    assert evolution_errors(sbb_with(Base), sbb_with(state_named("Other", n=(str, "")))) is None


def test_evolution_checks_child_states_and_refuses_a_removed_relation() -> None:
    child = sbb_with(Base)
    bad_child = sbb_with(state_named("Base", n=(bytes, b"")))
    old = sbb_with(Base, {"leg": ChildRelation(child)})
    assert evolution_errors(old, sbb_with(Base, {"leg": ChildRelation(bad_child)})) == [
        "child relation 'leg': Base.n: its type changed (int -> bytes)"
    ]
    assert evolution_errors(old, sbb_with(Base)) == [
        "child relation 'leg': removed (its entities would get no more events)"
    ]


# --- lifecycle -------------------------------------------------------------------------


def test_a_delivery_reads_the_services_record_so_a_change_meanwhile_makes_it_run_again() -> None:
    cluster = Cluster()
    tx = cluster.deliver(sip("INVITE", "d1", room="count-1", created=True), "d1")
    assert keys.SERVICES in tx.reads


def test_deactivation_stops_new_root_entities_and_answers_new_calls_480() -> None:
    cluster = Cluster()
    call(cluster, "d1")
    assert cluster.change("deactivate").startswith("deactivated")
    assert cluster.record().services["counter"].state == "stopping"
    tx = cluster.deliver(sip("INVITE", "d2", room="count-1", created=True), "d2")
    assert [(m.status, m.reason) for m in tx.messages] == [(480, "Service Inactive")]  # type: ignore[attr-defined]
    assert len(cluster.entities()) == 1


def test_deactivation_lets_calls_in_progress_go_on() -> None:
    cluster = Cluster()
    call(cluster, "d1")
    cluster.change("deactivate")
    assert info(cluster, "d1", 2) == (200, "v1 1")


def test_a_stopping_service_is_inactive_once_its_last_entity_is_gone() -> None:
    cluster = Cluster()
    call(cluster, "d1")
    cluster.change("deactivate")
    assert cluster.run(cluster.container.settle_services).writes == {}  # d1 is still there
    cluster.deliver(sip("BYE", "d1", room="count-1"), "d1")
    cluster.run(cluster.container.settle_services)
    assert cluster.record().services["counter"].state == "inactive"


def test_activation_fires_service_started_event_on_the_service_activity() -> None:
    cluster = Cluster(versions.StartedCounterSbb)
    cluster.change("deactivate")
    assert cluster.change("activate") == "activated"
    activity = keys.service_activity("counter")
    assert decode(cluster.view.data[keys.activity(activity)][1], ActivityRecord).type == "service"
    tx = cluster.run(lambda tx: cluster.container.change_service(tx, "counter", "activate"))
    assert tx.fired == []  # already active: nothing changes, nothing is fired
    cluster.change("deactivate")
    started = cluster.run(lambda tx: cluster.container.change_service(tx, "counter", "activate"))
    (pending,) = started.fired
    assert pending.activity == activity
    assert cluster.container.event_types.decode(pending) == ServiceStartedEvent("counter", 0)
    cluster.deliver_fired(started)
    (starter,) = [e for e in cluster.entities() if e.convergence == "starter"]
    assert keys.attachment(activity, starter.id) in cluster.view.data


def test_deactivation_ends_the_service_activity_and_its_attached_entities_go() -> None:
    cluster = Cluster(versions.StartedCounterSbb)
    cluster.change("deactivate")
    cluster.deliver_fired(cluster.run(lambda tx: cluster.container.change_service(tx, "counter", "activate")))
    assert [e.convergence for e in cluster.entities()] == ["starter"]
    cluster.change("deactivate")
    assert cluster.entities() == []
    assert keys.activity(keys.service_activity("counter")) not in cluster.view.data


def test_a_cluster_first_start_fires_service_started_for_services_that_take_it_once() -> None:
    cluster = Cluster(versions.StartedCounterSbb)
    first = cluster.run(cluster.container.start_deployed)
    assert [cluster.container.event_types.decode(p) for p in first.fired] == [ServiceStartedEvent("counter", 0)]
    assert cluster.run(cluster.container.start_deployed).writes == {}  # the cluster's record says it was
    plain = Cluster(versions.CounterSbb)
    assert plain.run(plain.container.start_deployed).writes == {}  # nothing to tell it: no record either


def test_an_upgrade_to_a_new_schema_ends_the_old_version_service_activity() -> None:
    cluster = Cluster(versions.StartedCounterSbb)
    cluster.deliver_fired(cluster.run(cluster.container.start_deployed))
    assert [e.convergence for e in cluster.entities()] == ["starter"]
    cluster.change("upgrade", "tests.ra.versions_v3:CounterSbb3")
    assert cluster.entities() == []  # attached to the service activity only: gone with it


def test_a_started_event_goes_to_its_own_service_only() -> None:
    assert not Service("other", versions.StarterSbb).selects(ServiceStartedEvent("counter"))
    assert Service("counter", versions.StarterSbb).selects(ServiceStartedEvent("counter"))


def test_an_upgrade_whose_state_evolves_moves_the_entities_to_the_new_code() -> None:
    cluster = Cluster()
    call(cluster, "d1")
    assert info(cluster, "d1", 2) == (200, "v1 1")
    said = cluster.change("upgrade", "tests.ra.versions_v2:CounterSbb2")
    assert "moved to the new code" in said
    assert info(cluster, "d1", 3) == (200, "v2 2")  # its count kept, the new code running it
    call(cluster, "d2")
    assert {e.generation for e in cluster.entities()} == {0}


def test_an_upgrade_with_a_new_schema_leaves_entities_in_progress_on_the_old_code() -> None:
    cluster = Cluster()
    call(cluster, "d1")
    said = cluster.change("upgrade", "tests.ra.versions_v3:CounterSbb3")
    assert "generation 1" in said
    assert info(cluster, "d1", 2) == (200, "v1 1")
    call(cluster, "d2")
    assert info(cluster, "d2", 2) == (200, "v3 1")
    generations = {e.convergence: e.generation for e in cluster.entities()}
    assert generations == {"d1": 0, "d2": 1}
    assert keys.convergence("counter@1", "d2") in cluster.view.data  # convergence names of its own


def test_an_old_generation_is_forgotten_once_its_last_entity_is_gone() -> None:
    cluster = Cluster()
    call(cluster, "d1")
    cluster.change("upgrade", "tests.ra.versions_v3:CounterSbb3")
    cluster.run(cluster.container.settle_services)
    assert sorted(cluster.record().services["counter"].classes) == [0, 1]
    cluster.deliver(sip("BYE", "d1", room="count-1"), "d1")
    cluster.run(cluster.container.settle_services)
    assert cluster.record().services["counter"].classes == {1: "tests.ra.versions_v3:CounterSbb3"}


def test_an_upgrade_that_breaks_the_evolution_rules_is_refused_before_anything_is_written() -> None:
    cluster = Cluster()
    call(cluster, "d1")
    before = dict(cluster.view.data)
    with pytest.raises(ServiceError, match="Count.owner: a field added needs a default; Count.n: its type changed"):
        cluster.change("upgrade", "tests.ra.versions_bad:CounterSbbBad")
    assert cluster.view.data == before


def test_an_upgrade_to_code_that_does_not_load_is_refused() -> None:
    cluster = Cluster()
    with pytest.raises(ServiceError, match="cannot load tests.ra.nowhere:Sbb"):
        cluster.change("upgrade", "tests.ra.nowhere:Sbb")


def test_an_upgraded_service_with_new_event_types_teaches_them_to_the_container() -> None:
    class Ping(msgspec.Struct, frozen=True):
        n: int = 0

    class WithPing(versions.CounterSbb):
        @on(Ping)
        def on_ping(self, event: Ping, ctx: object) -> None:
            pass

    CLASSES["tests.unit.test_lifecycle:WithPing"] = WithPing
    cluster = Cluster()
    cluster.change("upgrade", "tests.unit.test_lifecycle:WithPing")
    cluster.deliver(sip("INVITE", "d1", room="count-1", created=True), "d1")
    assert cluster.container.event_types.name_of(Ping(1))


def test_a_subclass_inherits_its_base_handlers() -> None:
    assert {h.function.__name__ for h in versions.StartedCounterSbb.handlers} == {
        "on_invite",
        "on_info",
        "on_bye",
        "on_started",
    }
    assert versions_v2.CounterSbb2.handler_for(sip("INFO", "d")).function is versions_v2.CounterSbb2.on_info  # type: ignore[union-attr]


def test_a_service_the_cluster_file_deploys_needs_no_record_to_run() -> None:
    cluster = Cluster()
    call(cluster, "d1")
    assert keys.SERVICES not in cluster.view.data
    assert info(cluster, "d1", 2) == (200, "v1 1")
