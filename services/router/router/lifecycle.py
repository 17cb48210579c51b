"""Service lifecycle at run time, cluster-wide (JAIN SLEE 1.1 §8.2: Inactive, Active,
Stopping), and how a service's State may evolve between versions. Pure.

A service the cluster file deploys is active from the start, run by the file's `sbb`, in
generation 0. Once an operator changes it (`zeroslee-admin service activate | deactivate |
upgrade`), the clustered store holds its `ServiceRecord` (`svc/<name>`), which from then
on decides over the file's `sbb`. Every delivery that uses a service reads its record in
its own transaction, so a change commits between deliveries, on every node at once: a
delivery that ran on the record before the change fails its commit and runs again on the
new one.

- `stopping` (deactivate): no new root entities; existing ones go on getting their
  events. When none is left, the service is `inactive`; a router's sweep records it.
- `active` again (activate): a `ServiceStartedEvent` is fired on the service's activity.
- Upgrade (`--sbb module:Class`, the code installed on every node beforehand) is one
  commit: the new class takes new root entities and the service is active. What happens
  to the existing entities depends on the new root's State (and its children's):
  - **the same State type name: an evolution.** It must follow msgspec's schema evolution
    rules: a field added has a default; a field kept keeps its type (and its place, for
    `array_like`); a field may go (its value is dropped at the entity's next save) unless
    the new State forbids unknown fields. Child relations stay, each child's State
    evolving by the same rules. The existing entities move to the new code at once, with
    their state. An evolution that breaks a rule is refused, naming each, before any
    entity or record is touched.
  - **a State of another name: a new schema.** The existing entities finish on the old
    version's code; new root entities start a new *generation*, with convergence names
    of their own, so no new call converges on an old entity. A generation is forgotten
    once its last entity is gone.
"""

from __future__ import annotations

from typing import Any

import msgspec
import msgspec.inspect as mi

ACTIVE, STOPPING, INACTIVE = "active", "stopping", "inactive"
SERVICE_ACTIVITY = "service"  # the type of a service's activity (not listed by `activities`)


class ServiceError(ValueError):
    """A lifecycle change refused: unknown service, code that does not load, a State
    that breaks the evolution rules."""


class ServiceRecord(msgspec.Struct):
    """A service's lifecycle, cluster-wide (`svc/<name>`)."""

    name: str
    state: str = ACTIVE
    generation: int = 0  # the generation new root entities are created in
    classes: dict[int, str] = {}  # generation -> "module:Class" that runs its entities
    release: int = 0  # how many upgrades it has had (shown by zeroslee-admin services)


class ServiceTable(msgspec.Struct):
    """Every changed service's record, under one key (`keys.SERVICES`): a delivery reads
    one key, whatever the number of services."""

    services: dict[str, ServiceRecord] = {}


def initial(name: str, sbb: str) -> ServiceRecord:
    """The record a service deployed by the cluster file has before anyone changes it."""
    return ServiceRecord(name, ACTIVE, 0, {0: sbb})


def describe(t: Any) -> str:
    """A msgspec.inspect type, short: `int`, `list[str]`, `SipRequest | None`."""
    cls = getattr(t, "cls", None)
    if isinstance(cls, type) and not hasattr(t, "item_type"):
        return cls.__name__
    if isinstance(t, mi.UnionType):
        return " | ".join(describe(x) for x in t.types)
    name = type(t).__name__.removesuffix("Type").lower()
    if hasattr(t, "item_type"):
        return f"{name}[{describe(t.item_type)}]"
    if hasattr(t, "key_type"):
        return f"{name}[{describe(t.key_type)}, {describe(t.value_type)}]"
    if hasattr(t, "item_types"):
        return f"{name}[{', '.join(describe(x) for x in t.item_types)}]"
    return name


def state_errors(old: type[msgspec.Struct], new: type[msgspec.Struct], where: str) -> list[str]:
    """Why records of `old` cannot be read as `new` (msgspec's evolution rules); [] if
    they can."""
    was, now = mi.type_info(old), mi.type_info(new)
    assert isinstance(was, mi.StructType) and isinstance(now, mi.StructType)
    errors = []
    if was.array_like != now.array_like:
        errors.append(f"{where}: array_like changed (the encoding itself)")
    if was.tag != now.tag or was.tag_field != now.tag_field:
        errors.append(f"{where}: its tag changed")
    before = {f.encode_name: f for f in was.fields}
    for i, f in enumerate(now.fields):
        old_field = before.get(f.encode_name)
        if old_field is None:
            if f.required:
                errors.append(f"{where}.{f.name}: a field added needs a default")
        elif old_field.type != f.type:
            errors.append(f"{where}.{f.name}: its type changed ({describe(old_field.type)} -> {describe(f.type)})")
        elif now.array_like and (i >= len(was.fields) or was.fields[i].encode_name != f.encode_name):
            errors.append(f"{where}.{f.name}: moved (array_like fields keep their places)")
    gone = [name for name in before if name not in {f.encode_name for f in now.fields}]
    if gone and now.forbid_unknown_fields:
        errors.append(f"{where}: fields {', '.join(gone)} removed, and the new State forbids unknown fields")
    return errors


def evolution_errors(old: Any, new: Any, where: str = "") -> list[str] | None:
    """Whether SBB class `new` evolves `old` (the same State type name): [] if every
    rule holds for its State and its children's, the broken rules if not; None if `new`
    has a State of another name (a new schema: the old entities finish on the old code)."""
    if old.State.__qualname__ != new.State.__qualname__:
        if not where:
            return None
        return [f"{where}: its State is another type ({old.State.__qualname__} -> {new.State.__qualname__})"]
    errors = state_errors(old.State, new.State, where + new.State.__qualname__)
    for relation, child in old.child_relations.items():
        found = new.child_relations.get(relation)
        if found is None:
            errors.append(f"child relation {relation!r}: removed (its entities would get no more events)")
            continue
        errors += evolution_errors(child.sbb, found.sbb, f"child relation {relation!r}: ") or []
    return errors


def activate(record: ServiceRecord) -> tuple[ServiceRecord, bool]:
    """(the record, whether it changed): a ServiceStartedEvent goes with each change."""
    if record.state == ACTIVE:
        return record, False
    return msgspec.structs.replace(record, state=ACTIVE), True


def deactivate(record: ServiceRecord) -> tuple[ServiceRecord, bool]:
    if record.state != ACTIVE:
        return record, False
    return msgspec.structs.replace(record, state=STOPPING), True


def upgrade(record: ServiceRecord, old: Any, sbb: str, new: Any) -> tuple[ServiceRecord, bool]:
    """The record with `new` (loaded from `sbb`) taking new root entities, active; and
    whether the existing entities moved to it (an evolution). ServiceError if `new`
    claims to evolve `old` and breaks a rule."""
    errors = evolution_errors(old, new)
    classes = dict(record.classes)
    if errors:
        raise ServiceError(f"{record.name}: {sbb} cannot take over its entities: " + "; ".join(errors))
    if errors is None:  # a new schema: a generation of its own
        generation = max(classes) + 1
    else:
        generation = record.generation
    classes[generation] = sbb
    changed = msgspec.structs.replace(
        record, state=ACTIVE, generation=generation, classes=classes, release=record.release + 1
    )
    return changed, errors is not None


def settle(record: ServiceRecord, populated: set[int]) -> ServiceRecord | None:
    """What the sweep records once entities are gone (`populated`: the generations that
    still have root entities): older generations without any are forgotten, and a
    stopping service without any is inactive. None if nothing changes."""
    classes = {g: sbb for g, sbb in record.classes.items() if g == record.generation or g in populated}
    state = INACTIVE if record.state == STOPPING and not populated else record.state
    if classes == record.classes and state == record.state:
        return None
    return msgspec.structs.replace(record, state=state, classes=classes)


def convergence_space(service: str, generation: int) -> str:
    """Where a generation's convergence names live: generation 0 has the service's name
    (as before generations existed), later ones `name@N`."""
    return service if generation == 0 else f"{service}@{generation}"
