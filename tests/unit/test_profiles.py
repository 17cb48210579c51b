"""Profile tables (router/profiles.py): typed rows, read in the delivery's transaction."""

from __future__ import annotations

import pytest

from router.chat import RoomProfile
from router.container import Container, Service
from router.context import Context
from router.profiles import ProfileError, parse_row, write_row
from router.records import ActivityRecord, Transaction, decode, encode
from router.sbb import FacilityError, ProfileUpdatedEvent
from tests.ra.watcher import WatcherSbb
from tests.unit.test_container import Run, sip
from zeroslee import keys

TABLES = {"rooms": RoomProfile}


def test_a_row_is_checked_against_its_schema_and_unknown_tables_are_refused() -> None:
    assert parse_row(TABLES, "rooms", '{"max_members": 3}') == RoomProfile(max_members=3)
    with pytest.raises(ProfileError, match="Expected `int`"):
        parse_row(TABLES, "rooms", '{"max_members": "many"}')
    with pytest.raises(ProfileError, match="no profile table 'nope'"):
        parse_row(TABLES, "nope", "{}")
    with pytest.raises(ProfileError):
        parse_row(TABLES, "rooms", "not json")


def test_sbbs_read_typed_rows_inside_their_transaction() -> None:
    run = Run()
    tx = Transaction(run.view, "node-1")
    write_row(tx, "rooms", "r1", RoomProfile(max_members=2, title="two"), "node-1", "e1")
    run.view.apply(tx, 1)
    container = Container("node-1", [Service("w", WatcherSbb)])
    container.profile_tables = TABLES
    reading = Transaction(run.view, "node-1")
    ctx = Context(reading, "s1", "a1", container, container.services[0])
    assert ctx.profiles.get("rooms", "r1") == RoomProfile(2, "two")
    assert ctx.profiles.get("rooms", "absent") is None
    assert reading.reads[keys.profile("rooms", "r1")] == 1  # a change meanwhile conflicts
    with pytest.raises(FacilityError, match="no profile table"):
        ctx.profiles.get("other", "r1")


def test_a_change_fires_an_event_on_the_tables_activity_once_someone_watches() -> None:
    run = Run()
    quiet = Transaction(run.view, "node-1")
    write_row(quiet, "rooms", "r1", RoomProfile(1), "node-1", "e1")
    assert quiet.fired == []  # nobody watches: no activity, no event
    run.view.apply(quiet, 1)
    container = Container("node-1", [Service("w", WatcherSbb)])
    container.profile_tables = TABLES
    tx = Transaction(run.view, "node-1")
    container.deliver(tx, sip("INVITE", "d1", room="watch-rooms", created=True), "d1")
    run.view.apply(tx, 2)
    activity = keys.profile_activity("rooms")
    record = decode(run.view.get(keys.activity(activity))[1] or b"", ActivityRecord)
    assert record.type == "profile" and run.view.scan(keys.attachments_of(activity))
    change = Transaction(run.view, "node-1")
    write_row(change, "rooms", "r1", None, "node-1", "e2")
    [pending] = change.fired
    assert pending.activity == activity and change.writes[keys.profile("rooms", "r1")] is None
    event = container.event_types.decode(pending)
    assert event == ProfileUpdatedEvent("rooms", "r1", removed=True)


def test_a_key_too_long_or_empty_is_refused() -> None:
    tx = Transaction(Run().view, "node-1")
    with pytest.raises(ProfileError):
        write_row(tx, "rooms", "", RoomProfile(), "node-1", "e")
    with pytest.raises(ProfileError):
        write_row(tx, "rooms", "k" * 201, RoomProfile(), "node-1", "e")
    assert encode(RoomProfile()) and tx.writes == {}
