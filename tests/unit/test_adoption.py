"""Who takes over a dead node's work: its activities, timers, and the events it fired."""

from __future__ import annotations

from router.adoption import adoptions
from router.records import ActivityRecord, PendingEvent, encode
from zeroslee import hashing

LIVE = ["node-2", "node-3"]


def activity(aid: str, owner: str) -> tuple[str, bytes]:
    return f"aci/{aid}", encode(ActivityRecord(aid, "null", owner))


def event(aid: str, eid: str, node: str) -> tuple[str, bytes]:
    return f"evt/{aid}/{eid}", encode(PendingEvent(eid, aid, "m:T", b"", node))


def test_a_dead_nodes_activities_are_spread_by_rendezvous_hashing() -> None:
    acts = [activity(f"a{i}", "node-1") for i in range(20)] + [activity("live", "node-2")]
    taken = {me: {key for key, _ in adoptions(me, LIVE, acts, [], [], []).activities} for me in LIVE}
    assert taken["node-2"] | taken["node-3"] == {f"aci/a{i}" for i in range(20)}
    assert not taken["node-2"] & taken["node-3"]
    assert taken["node-2"] and taken["node-3"]


def test_events_a_dead_node_fired_on_a_live_nodes_activity_are_taken_over() -> None:
    # The room is node-2's; node-1 fired a MessageEvent on it and died before delivering it.
    acts = [activity("room", "node-2")]
    events = [event("room", "e1", "node-1"), event("room", "e2", "node-2"), event("room", "e3", "")]
    winner = hashing.choose("room", LIVE)
    for me in LIVE:
        found = adoptions(me, LIVE, acts, [], events, [])
        assert not found.activities  # the activity's owner lives: it stays node-2's
        expected = ["evt/room/e1"] if me == winner else []
        assert [key for key, _ in found.events] == expected  # node-2's own: node-2 delivers


def test_events_on_an_adopted_activity_come_with_it_not_twice() -> None:
    acts = [activity("room", "node-1")]
    events = [event("room", "e1", "node-1")]
    winner = hashing.choose("room", LIVE)
    assert winner is not None
    found = adoptions(winner, LIVE, acts, [], events, [])
    assert [key for key, _ in found.activities] == ["aci/room"]
    assert found.events == []  # delivered by the activity's adoption
