"""Who takes over what a dead node owned (pure).

When a node dies, each of its activities and timers goes to the survivor that wins the
rendezvous hash of the activity id over the live nodes: the dead node's work is spread
over the survivors, and every survivor computes the same answer without talking. The
adopter records itself as owner (a versioned commit, so two adopters cannot both win),
re-arms the timers and delivers the activities' journaled events.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from router.records import ActivityRecord, TimerRecord, decode
from zeroslee import hashing


@dataclass
class Adoption:
    """What `me` must take over: (key, record) pairs to rewrite with the new owner."""

    activities: list[tuple[str, ActivityRecord]] = field(default_factory=list)
    timers: list[tuple[str, TimerRecord]] = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(self.activities or self.timers)


def adoptions(
    me: str, live: list[str], activities: list[tuple[str, bytes]], timers: list[tuple[str, bytes]]
) -> Adoption:
    """Records owned by nodes not in `live` whose rendezvous winner is `me`."""
    found = Adoption()
    for key, raw in activities:
        activity = decode(raw, ActivityRecord)
        if activity.owner not in live and hashing.choose(activity.id, live) == me:
            found.activities.append((key, activity))
    for key, raw in timers:
        timer = decode(raw, TimerRecord)
        if timer.owner not in live and hashing.choose(timer.activity, live) == me:
            found.timers.append((key, timer))
    return found
