"""Who takes over what a dead node owned (pure).

When a node dies, each of its activities and timers goes to the survivor that wins the
rendezvous hash of the activity id over the live nodes: the dead node's work is spread
over the survivors, and every survivor computes the same answer without talking. The
adopter records itself as owner (a versioned commit, so two adopters cannot both win),
re-arms the timers and delivers the activities' journaled events.

An event is delivered by the node that fired it (the seed: "routed on Node-2 only"), which
need not own the activity. So the journaled events a dead node fired on an activity that a
live node owns are orphans too: the same rendezvous winner delivers them (at least once;
a delivery deletes the journal entry in its commit, so a second attempt finds nothing).
So are the SIP requests a dead node's deliveries sent but its RA had not sent yet
(`Outgoing`): the rendezvous winner of the dialog hands them to its own RA.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from router.records import ActivityRecord, Outgoing, PendingEvent, TimerRecord, decode
from zeroslee import hashing, keys


@dataclass
class Adoption:
    """What `me` must take over: (key, record) pairs to rewrite with the new owner."""

    activities: list[tuple[str, ActivityRecord]] = field(default_factory=list)
    timers: list[tuple[str, TimerRecord]] = field(default_factory=list)
    events: list[tuple[str, PendingEvent]] = field(default_factory=list)  # on live nodes' activities
    outgoing: list[tuple[str, Outgoing]] = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(self.activities or self.timers or self.events or self.outgoing)


def inherits(me: str, live: list[str], owner: str, key: str) -> bool:
    """Whether `me` takes over `owner`'s work on `key`: the owner is dead and `me` wins
    the rendezvous hash of `key` over the live nodes."""
    return owner not in live and hashing.choose(key, live) == me


def adoptions(
    me: str,
    live: list[str],
    activities: list[tuple[str, bytes]],
    timers: list[tuple[str, bytes]],
    events: list[tuple[str, bytes]],
    outgoing: list[tuple[str, bytes]],
) -> Adoption:
    """Records owned by nodes not in `live` whose rendezvous winner is `me`."""
    found = Adoption()
    orphaned: set[str] = set()  # activities whose owner is dead: adopted with their events
    for key, raw in activities:
        activity = decode(raw, ActivityRecord)
        if activity.owner not in live:
            orphaned.add(activity.id)
            if inherits(me, live, activity.owner, activity.id):
                found.activities.append((key, activity))
    for key, raw in events:
        event = decode(raw, PendingEvent)
        fired_here = event.node != "" and event.activity not in orphaned  # "": an older record
        if fired_here and inherits(me, live, event.node, event.activity):
            found.events.append((key, event))
    for key, raw in outgoing:
        request = decode(raw, Outgoing)
        if inherits(me, live, request.node, keys.dialog_of_outgoing(key)):
            found.outgoing.append((key, request))
    for key, raw in timers:
        timer = decode(raw, TimerRecord)
        if inherits(me, live, timer.owner, timer.activity):
            found.timers.append((key, timer))
    return found
