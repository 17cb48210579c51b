"""Profile tables (JAIN SLEE 1.1 §10, in the small): replicated rows of one typed schema.

A table is declared in the cluster file (`[[profiles]] name, schema = "module:Class"`, a
msgspec Struct whose fields have defaults, so rows written by an older schema still
decode). Rows live in the clustered store (`profile/<table>/<key>`, msgpack), so every node
sees the same ones. SBBs read them inside their delivery's transaction
(`ctx.profiles.get(table, key)`): a row changed meanwhile makes the commit conflict and
the delivery run again on fresh data. An SBB that wants to hear of changes calls
`ctx.profiles.watch(table)`: it is attached to the table's activity, on which every write
or removal fires a `ProfileUpdatedEvent`. Rows are edited with `zeroslee-admin profile`,
through a router, which checks them against the schema first. Pure.
"""

from __future__ import annotations

import importlib
from typing import Any

import msgspec

from router.records import ActivityRecord, PendingEvent, Transaction, decode, encode, type_name
from router.sbb import FacilityError, ProfileUpdatedEvent
from zeroslee import keys
from zeroslee.config import ProfileTableConfig

PROFILE_ACTIVITY = "profile"  # the type of a table's activity (not listed by `activities`)


class ProfileError(ValueError):
    """A row that does not fit its table, or a table that does not exist."""


def load_tables(configs: list[ProfileTableConfig]) -> dict[str, type[msgspec.Struct]]:
    tables = {}
    for cfg in configs:
        module, _, name = cfg.schema.partition(":")
        schema = getattr(importlib.import_module(module), name)
        if not (isinstance(schema, type) and issubclass(schema, msgspec.Struct)):
            raise TypeError(f"profile table {cfg.name}: {cfg.schema} is not a msgspec Struct")
        tables[cfg.name] = schema
    return tables


def parse_row(tables: dict[str, type[msgspec.Struct]], table: str, text: str) -> msgspec.Struct:
    schema = tables.get(table)
    if schema is None:
        raise ProfileError(f"no profile table {table!r} (tables: {', '.join(tables) or 'none'})")
    try:
        return msgspec.json.decode(text.encode(), type=schema)
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        raise ProfileError(f"{table}: {exc}") from None


def write_row(tx: Transaction, table: str, key: str, row: msgspec.Struct | None, node: str, event_id: str) -> None:
    """Write (or, with None, remove) a row and fire its change on the table's activity,
    if any SBB watches it (the activity exists)."""
    if not key or len(key) > 200:
        raise ProfileError("a profile key is 1 to 200 characters")
    if row is None:
        tx.delete(keys.profile(table, key))
    else:
        tx.put(keys.profile(table, key), encode(row))
    activity = keys.profile_activity(table)
    if tx.get(keys.activity(activity)) is not None:
        event = ProfileUpdatedEvent(table, key, removed=row is None)
        pending = PendingEvent(event_id, activity, type_name(ProfileUpdatedEvent), encode(event), node)
        tx.put(keys.pending_event(activity, pending.id), encode(pending))
        tx.fired.append(pending)


class ProfileFacility:
    """What `ctx.profiles` is during one delivery."""

    def __init__(self, tx: Transaction, tables: dict[str, type[msgspec.Struct]], watch: Any) -> None:
        self.tx, self.tables, self._watch = tx, tables, watch

    def has(self, table: str) -> bool:
        """Whether this cluster declares `table` (a service may use one only if there)."""
        return table in self.tables

    def get(self, table: str, key: str) -> Any:
        """The row, typed by its table's schema; None if there is none."""
        schema = self.tables.get(table)
        if schema is None:
            raise FacilityError(f"no profile table {table!r}")
        raw = self.tx.get(keys.profile(table, key))
        if raw is None:
            return None
        try:
            return decode(raw, schema)
        except msgspec.DecodeError as exc:
            raise FacilityError(f"profile {table}/{key} does not decode: {exc}") from None

    def watch(self, table: str) -> None:
        """Attach this SBB to the table's activity: it gets a ProfileUpdatedEvent per change."""
        if table not in self.tables:
            raise FacilityError(f"no profile table {table!r}")
        activity = keys.profile_activity(table)
        if self.tx.get(keys.activity(activity)) is None:
            self.tx.put(keys.activity(activity), encode(ActivityRecord(activity, PROFILE_ACTIVITY, self.tx.node)))
        self._watch(activity)
