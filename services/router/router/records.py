"""The router's records in the clustered store, and the transaction one delivery runs in.

A delivery reads through `Transaction.get`/`scan`, which remember the version of every
key read (and, when asked, the fingerprint of a range), and buffers its writes; the shell
sends the lot to the primary store as one `Commit`, which fails if anything read moved.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Protocol, TypeVar

import msgspec

from zeroslee import bus


class SbbRecord(msgspec.Struct):
    id: str
    service: str
    convergence: str
    state: bytes
    created_on: str
    parent: str = ""  # a child SBB's parent entity ("": a root entity)
    path: str = ""  # a child's relation names from the root's class, "/"-separated
    generation: int = 0  # its service's generation (router/lifecycle.py): which code runs it


class ActivityRecord(msgspec.Struct):
    """An activity context. `owner` runs its owner-only work (timers) and is moved to a
    survivor, chosen by rendezvous hashing, when that node dies."""

    id: str
    type: str  # "null" | "sip-dialog"
    owner: str
    ending: bool = False
    ra_keys: list[str] = []  # the resource adaptor's data, removed when the activity ends
    call_id: str = ""  # a dialog we begin (ctx.create_dialog): its Call-ID and our tag
    local_tag: str = ""


class Attachment(msgspec.Struct):
    """One SBB attached to one activity (its own key, so joins and leaves do not contend)."""

    priority: int = 0
    mask: list[str] = []  # event type names not delivered through this attachment


class TimerRecord(msgspec.Struct):
    """A replicated timer: fires as a `TimerEvent` on its activity, on the owner node.

    `period` > 0 makes it periodic, `repetitions` 0 meaning forever; `missed` is JAIN
    SLEE's preserve-missed policy for expiries that passed while nobody could fire them
    (the owner died, or was busy): "all" delivers each, "last" one, "none" none.
    """

    id: str
    activity: str
    fire_at: float  # seconds since the epoch: comparable across nodes
    owner: str
    period: float = 0.0
    repetitions: int = 1
    missed: str = "all"
    fired: int = 0


def timer_expiries(timer: TimerRecord, now: float) -> tuple[int, TimerRecord | None]:
    """How many TimerEvents are due at `now`, and the record afterwards (None: done).

    An expiry counts as missed when the next one is also already due."""
    if timer.fire_at > now:
        return 0, timer
    if timer.period <= 0:
        return 1, None
    due = int((now - timer.fire_at) // timer.period) + 1
    left = timer.repetitions - timer.fired if timer.repetitions > 0 else due
    due = min(due, left)
    if timer.missed == "all":
        deliver = due
    elif timer.missed == "last":
        deliver = 1
    else:  # "none": only an expiry that is not late
        deliver = 1 if due == 1 else 0
    fired = timer.fired + due
    if timer.repetitions > 0 and fired >= timer.repetitions:
        return deliver, None
    return deliver, msgspec.structs.replace(timer, fire_at=timer.fire_at + due * timer.period, fired=fired)


class PendingEvent(msgspec.Struct):
    """A fired event, journaled with the commit that fired it (DESIGN §4)."""

    id: str
    activity: str
    type: str  # "module:QualName"
    payload: bytes
    node: str = ""  # the node that fired it and delivers it; "" in records of older versions


class AlarmRecord(msgspec.Struct):
    """An alarm an SBB raised (ctx.alarms), cluster-wide until an SBB clears it."""

    service: str
    id: str
    level: str  # zeroslee.alarms.LEVELS
    message: str
    raised_at: float  # cluster time (epoch seconds)
    node: str  # where it was raised


class Outgoing(msgspec.Struct):
    """A SIP request an SBB sent, journaled with the delivery that sent it and deleted by
    the commit in which the SIP RA takes the dialog's next CSeq to send it. If the node dies
    between the two, a survivor hands it to its own RA: sent at least once, and the RA's
    version check on this key makes a second copy find it gone (DESIGN §4: no text lost)."""

    node: str  # the node whose RA was asked to send it
    request: bytes  # the bus-encoded `SendRequest`


class View(Protocol):
    def get(self, key: str) -> tuple[int, bytes | None]: ...
    def scan(self, prefix: str, limit: int = ...) -> list[tuple[str, int, bytes]]: ...


_enc = msgspec.msgpack.Encoder()
T = TypeVar("T")


def encode(value: msgspec.Struct) -> bytes:
    return _enc.encode(value)


def decode(raw: bytes, kind: type[T]) -> T:
    return msgspec.msgpack.decode(raw, type=kind)


def type_name(cls: type) -> str:
    """An event type's name in journaled events and FireEvent: `module:QualName`."""
    return f"{cls.__module__}:{cls.__qualname__}"


class UnknownEventType(Exception):
    """A journaled or fired event names a type no deployed service declares."""


class EventTypes:
    """The event types the deployed services declare (`Sbb.event_types`, and every type
    a handler takes): the only ones a pending event may be decoded as. A name read from
    the store or the bus is looked up here, never imported: whoever can write a record
    must not choose which code the router loads."""

    def __init__(self, types: Iterable[type]) -> None:
        self.by_name: dict[str, type] = {}
        self.add(types)

    def add(self, types: Iterable[type]) -> None:
        """A new version's types too (service upgrade)."""
        self.by_name.update((type_name(t), t) for t in types if isinstance(t, type) and issubclass(t, msgspec.Struct))

    def name_of(self, event: msgspec.Struct) -> str:
        name = type_name(type(event))
        if self.by_name.get(name) is not type(event):
            raise UnknownEventType(f"{name} is not an event type any deployed service declares")
        return name

    def decode(self, pending: PendingEvent) -> msgspec.Struct:
        """The event `pending` carries; UnknownEventType or msgspec.DecodeError if none."""
        cls = self.by_name.get(pending.type)
        if cls is None:
            raise UnknownEventType(f"{pending.type[:100]!r} is not an event type any deployed service declares")
        return msgspec.msgpack.decode(pending.payload, type=cls)


@dataclass
class Transaction:
    """Reads with their versions, buffered writes, and post-commit effects."""

    view: View
    node: str
    reads: dict[str, int] = field(default_factory=dict)
    writes: dict[str, bytes | None] = field(default_factory=dict)
    prefix_reads: dict[str, tuple[int, int]] = field(default_factory=dict)
    messages: list[bus.Message] = field(default_factory=list)
    fired: list[PendingEvent] = field(default_factory=list)
    timers: list[TimerRecord] = field(default_factory=list)  # set in this delivery
    # The view is one snapshot, so a range read once need not be read again (a delivery
    # looks at a busy room's attachments several times): prefix -> [(key, version)].
    scanned: dict[str, list[tuple[str, int]]] = field(default_factory=dict)

    def get(self, key: str) -> bytes | None:
        if key in self.writes:
            return self.writes[key]
        version, value = self.view.get(key)
        self.reads.setdefault(key, version)
        return value

    def put(self, key: str, value: bytes) -> None:
        self.writes[key] = value

    def delete(self, key: str) -> None:
        self.writes[key] = None

    def holds_any(self, *prefixes: str) -> bool:
        """Whether anything is under `prefixes`, guarded just enough for a last-one-out
        decision (a busy room's joins and leaves must not contend, DESIGN §3).

        "Yes" rests on one key found: if it goes concurrently, this commit fails its
        version check and re-runs, so of two concurrent releases the later always sees
        "no" (without it, each saw the other's reference and nobody ended the activity).
        "No" guards every range, so a concurrent new reference makes this commit re-run."""
        for prefix in prefixes:
            ours = [(k, v) for k, v in self.writes.items() if k.startswith(prefix)]
            if any(v is not None for _, v in ours):
                return True  # this transaction itself adds a reference
            # Only as many entries as this transaction removes, plus one, are read: a busy
            # room's last-one-out check costs the same with 3 members or 10,000 (reading
            # the whole range made every leave O(members): with a room's leaked members
            # piling up, the CPU per call grew with the cluster's history).
            removed = {k for k, _ in ours}
            found = self.scanned.get(prefix) or [(k, v) for k, v, _ in self.view.scan(prefix, len(removed) + 1)]
            for key, _ in found:
                if key not in removed:
                    self.get(key)
                    return True
        for prefix in prefixes:
            self.scan(prefix, guard=True)  # every entry in range is one we remove: few
        return False

    def scan(self, prefix: str, guard: bool = False) -> list[str]:
        """Keys under `prefix` as this transaction sees them. `guard` makes the commit
        fail if anything under the prefix changes meanwhile (a decision on a range)."""
        found = self.scanned.get(prefix)
        if found is None:
            found = self.scanned[prefix] = [(k, v) for k, v, _ in self.view.scan(prefix)]
        if guard and prefix not in self.prefix_reads:
            self.prefix_reads[prefix] = (len(found), max((v for _, v in found), default=0))
        present = {k for k, _ in found}
        for key, value in self.writes.items():
            if key.startswith(prefix):
                if value is None:
                    present.discard(key)
                else:
                    present.add(key)
        return sorted(present)
