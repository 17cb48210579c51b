"""The SLEE container's core: one event delivery as one optimistic transaction (pure).

Theory of operation. The shell gives `deliver()` a consistent read view of the local
replica, the event and the activity it was fired on. The delivery:
1. runs initial event selection: for each service whose root SBB has an initial handler
   for the event, the convergence name picks an existing root entity or creates one,
   which is attached to the activity;
2. delivers the event to every SBB entity attached to the activity, highest priority
   first, loading each entity's state from the clustered store (wherever it was created);
3. removes root entities left with no attachment, and ends null activities nothing
   references any more (no attachment, no name).
Everything is buffered in a `Transaction`: the versions read, the writes, the SIP
messages to send and the events fired. The shell commits reads+writes to the primary
store; only if that succeeds do the messages leave and the fired events get queued. On a
version conflict the shell runs the whole delivery again on fresh data.
"""

from __future__ import annotations

import importlib
import re
import secrets
from dataclasses import dataclass, field
from typing import Protocol

import msgspec

from router.sbb import (
    ActivityEnding,
    FacilityError,
    HandlerFailed,
    NameAlreadyBound,
    NameNotBound,
    Sbb,
    SipRequest,
    SipResponse,
)
from zeroslee import bus, keys
from zeroslee.records import ServerResponse


class SbbRecord(msgspec.Struct):
    id: str
    service: str
    convergence: str
    state: bytes
    created_on: str


class ActivityRecord(msgspec.Struct):
    id: str
    type: str  # "null" | "sip-dialog"
    owner: str
    ending: bool = False
    ra_keys: list[str] = []  # the resource adaptor's data, removed when the activity ends


class TimerRecord(msgspec.Struct):
    """A replicated timer: fires as a `TimerEvent` on its activity, on the owner node."""

    id: str
    activity: str
    fire_at: float  # seconds since the epoch: comparable across nodes
    owner: str


class PendingEvent(msgspec.Struct):
    """A fired event, journaled with the commit that fired it (DESIGN §4)."""

    id: str
    activity: str
    type: str  # "module:QualName"
    payload: bytes


class View(Protocol):
    def get(self, key: str) -> tuple[int, bytes | None]: ...
    def scan(self, prefix: str, limit: int = ...) -> list[tuple[str, int, bytes]]: ...


_enc = msgspec.msgpack.Encoder()


def encode(value: msgspec.Struct) -> bytes:
    return _enc.encode(value)


def event_type_name(event: msgspec.Struct) -> str:
    cls = type(event)
    return f"{cls.__module__}:{cls.__qualname__}"


def decode_event(pending: PendingEvent) -> msgspec.Struct:
    module, _, name = pending.type.partition(":")
    cls = getattr(importlib.import_module(module), name)
    return msgspec.msgpack.decode(pending.payload, type=cls)  # type: ignore[no-any-return]


@dataclass
class Service:
    """A deployed service. Option `users` (a regular expression) limits its initial SIP
    events to Request-URI users it matches, so services can share a cluster."""

    name: str
    root: type[Sbb]
    options: dict[str, str] = field(default_factory=dict)

    def selects(self, event: msgspec.Struct) -> bool:
        pattern = self.options.get("users")
        return pattern is None or not isinstance(event, SipRequest) or re.search(pattern, event.user) is not None


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

    def scan(self, prefix: str, guard: bool = False) -> list[str]:
        """Keys under `prefix` as this transaction sees them. `guard` makes the commit
        fail if anything under the prefix changes meanwhile (a decision on a range)."""
        found = self.view.scan(prefix)
        if guard and prefix not in self.prefix_reads:
            self.prefix_reads[prefix] = (len(found), max((v for _, v, _ in found), default=0))
        present = {k for k, _, _ in found}
        for key, value in self.writes.items():
            if key.startswith(prefix):
                if value is None:
                    present.discard(key)
                else:
                    present.add(key)
        return sorted(present)

    def commit_message(self, req: int) -> bus.Commit:
        return bus.Commit(
            req=req,
            reads=sorted(self.reads.items()),
            writes=sorted(self.writes.items()),
            prefix_reads=[(p, c, v) for p, (c, v) in sorted(self.prefix_reads.items())],
            origin="router",
        )


class Context:
    """The `SbbContext` one SBB entity sees during one delivery."""

    def __init__(self, tx: Transaction, sbb_id: str, activity: str, container: Container, service: Service) -> None:
        self.tx = tx
        self.sbb_id = sbb_id
        self.activity = activity
        self.container = container
        self.service = service

    @property
    def options(self) -> dict[str, str]:
        """The service's options from the cluster file."""
        return self.service.options

    # timer facility (JAIN SLEE TimerFacility, one-shot)
    def set_timer(self, activity: str, delay: float) -> str:
        self._require_activity(activity)
        ident = "t" + secrets.token_hex(8)
        record = TimerRecord(ident, activity, self.container.now + delay, self.tx.node)
        self.tx.put(keys.timer(activity, ident), encode(record))
        self.tx.timers.append(record)
        return ident

    def cancel_timer(self, activity: str, timer_id: str) -> None:
        self.tx.delete(keys.timer(activity, timer_id))

    # naming facility (JAIN SLEE ActivityContextNamingFacility)
    def lookup(self, name: str) -> str | None:
        raw = self.tx.get(keys.name(name))
        if raw is None:
            return None
        activity = raw.decode()
        if self.tx.get(keys.activity(activity)) is None:
            # A stale name: remove it whatever happens to this delivery (DESIGN §5).
            self.container.stale_names.append(name)
            raise FacilityError(f"name {name!r} is bound to an activity that has ended")
        return activity

    def bind(self, name: str, activity: str) -> None:
        if self.tx.get(keys.name(name)) is not None:
            raise NameAlreadyBound(name)
        self._require_activity(activity)
        self.tx.put(keys.name(name), activity.encode())
        self.tx.put(keys.activity_name(activity, name), b"")

    def unbind(self, name: str) -> None:
        raw = self.tx.get(keys.name(name))
        if raw is None:
            raise NameNotBound(name)
        self.tx.delete(keys.name(name))
        self.tx.delete(keys.activity_name(raw.decode(), name))
        self.container.touched.add(raw.decode())

    def create_null_activity(self) -> str:
        ident = "n" + secrets.token_hex(10)
        record = ActivityRecord(ident, "null", self.tx.node)
        self.tx.put(keys.activity(ident), encode(record))
        return ident

    def attach(self, activity: str) -> None:
        self._require_activity(activity)
        self.container.attach(self.tx, activity, self.sbb_id)

    def detach(self, activity: str) -> None:
        self.container.detach(self.tx, activity, self.sbb_id)

    def attachment_count(self, activity: str) -> int:
        """Exact: the commit fails if anyone joins or leaves meanwhile."""
        return len(self.tx.scan(keys.attachments_of(activity), guard=True))

    def has_attachments(self, activity: str) -> bool:
        """Whether any SBB is attached, guarded just enough for a last-one-out decision.

        "Yes" rests on one other attachment: if it leaves concurrently, one of the two
        commits fails its version check and re-runs, so one leaver always sees "no".
        "No" guards the whole range, so a concurrent join makes this commit re-run. Joins
        and leaves to a busy room therefore rarely conflict (DESIGN §3, one busy room).
        """
        present = self.tx.scan(keys.attachments_of(activity))
        if not present:
            self.tx.scan(keys.attachments_of(activity), guard=True)
            return False
        self.tx.get(present[0])
        return True

    def fire(self, activity: str, event: msgspec.Struct) -> None:
        record = self._require_activity(activity)
        if record.ending:
            raise ActivityEnding(activity)
        pending = PendingEvent("e" + secrets.token_hex(8), activity, event_type_name(event), encode(event))
        self.tx.put(keys.pending_event(activity, pending.id), encode(pending))
        self.tx.fired.append(pending)

    # SIP facility (the SIP RA's SBB interface)
    def respond(
        self, event: SipRequest, status: int, reason: str = "", body: bytes = b"", content_type: str = ""
    ) -> None:
        self.container.responded.add(event.tx)
        self.tx.messages.append(bus.SendResponse(event.tx, status, reason, content_type, body))
        if event.activity_type == "sip-dialog" and status >= 200:
            # Replicated with this delivery, so a node taking the dialog over answers a
            # retransmission of this request from it instead of handling it twice.
            record = ServerResponse(event.cseq, event.method, status, reason, content_type, body)
            self.tx.put(keys.last_response(event.activity), record.encode())
        if event.method == "BYE" and 200 <= status < 300:
            self.container.end_activity(self.tx, event.activity)

    def create_dialog(self) -> str:
        """A new SIP dialog activity (UAC side); the SIP RA creates it when `invite` is sent."""
        ident = "d" + secrets.token_hex(12)
        self.tx.put(keys.activity(ident), encode(ActivityRecord(ident, "sip-dialog", self.tx.node)))
        return ident

    def invite(self, dialog: str, from_uri: str, to_uri: str, body: bytes = b"", content_type: str = "") -> None:
        """Call `to_uri` on a dialog from `create_dialog`; responses come as `SipResponse`."""
        self._require_activity(dialog)
        self.tx.messages.append(
            bus.SendRequest(dialog, "INVITE", content_type, body, self.sbb_id, from_uri=from_uri, to_uri=to_uri)
        )

    def send_request(self, dialog: str, method: str, body: bytes = b"", content_type: str = "") -> None:
        self.tx.messages.append(bus.SendRequest(dialog, method, content_type, body, self.sbb_id))

    def _require_activity(self, activity: str) -> ActivityRecord:
        raw = self.tx.get(keys.activity(activity))
        if raw is None:
            raise FacilityError(f"activity {activity} does not exist")
        return msgspec.msgpack.decode(raw, type=ActivityRecord)


@dataclass
class Outcome:
    delivered_to: list[str]
    created: list[str]
    loaded_remote: list[str]  # entities created on another node, loaded from the store
    stale_names: list[str]


class Container:
    """Routes one event per call of `deliver`; holds only per-delivery scratch state."""

    def __init__(self, node: str, services: list[Service]) -> None:
        self.node = node
        self.services = services
        self.by_service = {s.name: s for s in services}
        self.touched: set[str] = set()
        self.responded: set[str] = set()
        self.stale_names: list[str] = []
        self.now = 0.0

    def deliver(self, tx: Transaction, event: msgspec.Struct, activity: str, now: float = 0.0) -> Outcome:
        """Deliver `event`; `now` is cluster time (epoch seconds) for timers set."""
        self.touched, self.responded, self.stale_names, self.now = {activity}, set(), [], now
        if isinstance(event, SipRequest):
            self._ensure_sip_activity(tx, event)
        created = self._initial_selection(tx, event, activity)
        delivered: list[str] = []
        remote: list[str] = []
        for sbb_id in self._attached_by_priority(tx, activity):
            record_raw = tx.get(keys.sbb(sbb_id))
            if record_raw is None:
                continue
            record = msgspec.msgpack.decode(record_raw, type=SbbRecord)
            service = self.by_service.get(record.service)
            if service is None:
                continue
            handler = service.root.handler_for(event)
            if handler is None:
                continue
            sbb = service.root(msgspec.msgpack.decode(record.state, type=service.root.State))
            try:
                handler.function(sbb, event, Context(tx, sbb_id, activity, self, service))
            except Exception as exc:  # the service's code failed, not ours: roll back
                raise HandlerFailed(sbb_id, exc) from exc
            self._save(tx, record, sbb)
            delivered.append(sbb_id)
            if record.created_on != self.node:
                remote.append(sbb_id)
        self._default_response(tx, event, delivered)
        if isinstance(event, SipResponse) and ended_by(event):
            self.end_activity(tx, activity)
        self._collect_garbage(tx)
        return Outcome(delivered, created, remote, list(self.stale_names))

    def _ensure_sip_activity(self, tx: Transaction, event: SipRequest) -> None:
        if event.activity_type == "sip-dialog" and event.created_dialog:
            if tx.get(keys.activity(event.activity)) is None:
                record = ActivityRecord(event.activity, "sip-dialog", self.node, ra_keys=list(event.ra_keys))
                tx.put(keys.activity(event.activity), encode(record))

    def _initial_selection(self, tx: Transaction, event: msgspec.Struct, activity: str) -> list[str]:
        created: list[str] = []
        for service in self.services:
            handler = service.root.handler_for(event)
            if handler is None or handler.initial_by is None or not service.selects(event):
                continue
            name = handler.initial_by(event)
            if name is None:
                continue
            conv = keys.convergence(service.name, name)
            existing = tx.get(conv)
            if existing is not None:
                sbb_id = existing.decode()
            else:
                sbb_id = "s" + secrets.token_hex(10)
                state = service.root.State()
                record = SbbRecord(sbb_id, service.name, name, encode(state), self.node)
                tx.put(conv, sbb_id.encode())
                tx.put(keys.sbb(sbb_id), encode(record))
                sbb = service.root(state)
                sbb.created(Context(tx, sbb_id, activity, self, service))
                self._save(tx, record, sbb)
                created.append(sbb_id)
            self.attach(tx, activity, sbb_id)
        return created

    def _attached_by_priority(self, tx: Transaction, activity: str) -> list[str]:
        prefix = keys.attachments_of(activity)
        ids = [keys.last(k) for k in tx.scan(prefix)]
        ranked = []
        for sbb_id in ids:
            raw = tx.get(keys.attachment(activity, sbb_id))
            ranked.append((-int(raw or b"0"), sbb_id))
        return [sbb_id for _, sbb_id in sorted(ranked)]

    def attach(self, tx: Transaction, activity: str, sbb_id: str) -> None:
        if tx.get(keys.attachment(activity, sbb_id)) is not None:
            return
        record_raw = tx.get(keys.sbb(sbb_id))
        priority = 0
        if record_raw is not None:
            service = self.by_service.get(msgspec.msgpack.decode(record_raw, type=SbbRecord).service)
            priority = service.root.priority if service else 0
        tx.put(keys.attachment(activity, sbb_id), str(priority).encode())
        tx.put(keys.sbb_attachment(sbb_id, activity), b"")
        self.touched.add(activity)

    def detach(self, tx: Transaction, activity: str, sbb_id: str) -> None:
        tx.delete(keys.attachment(activity, sbb_id))
        tx.delete(keys.sbb_attachment(sbb_id, activity))
        self.touched.add(activity)

    def end_activity(self, tx: Transaction, activity: str) -> None:
        """End: detach everyone, drop names, pending events and the RA's data."""
        for key in tx.scan(keys.attachments_of(activity)):
            self.detach(tx, activity, keys.last(key))
        for key in tx.scan(keys.activity_names_of(activity)):
            tx.delete(key)
            tx.delete(keys.name(keys.last(key)))
        for key in tx.scan(f"evt/{activity}/") + tx.scan(keys.timers_of(activity)):
            tx.delete(key)
        raw = tx.get(keys.activity(activity))
        if raw is not None:
            record = msgspec.msgpack.decode(raw, type=ActivityRecord)
            for key in record.ra_keys:
                tx.delete(key)
            if record.type == "sip-dialog":
                tx.delete(keys.dialog(activity))
                tx.delete(keys.last_response(activity))
        tx.delete(keys.activity(activity))

    def _default_response(self, tx: Transaction, event: msgspec.Struct, delivered: list[str]) -> None:
        """Every request gets an answer, even one no service handled (DESIGN §3)."""
        if not isinstance(event, SipRequest) or event.tx in self.responded:
            return
        if event.method == "CANCEL":  # the RA answered it (§9.2); the dialog never was
            self.end_activity(tx, event.activity)
            return
        if event.method == "OPTIONS":
            status = 200
        elif event.method == "BYE":
            status = 200
            self.end_activity(tx, event.activity)
        elif delivered:
            status = 500
        else:
            status = 405
        tx.messages.append(bus.SendResponse(event.tx, status))

    def _collect_garbage(self, tx: Transaction) -> None:
        """Remove orphaned root entities; end null activities nothing references."""
        for activity in sorted(self.touched):
            raw = tx.get(keys.activity(activity))
            if raw is None:
                continue
            record = msgspec.msgpack.decode(raw, type=ActivityRecord)
            if (
                record.type == "null"
                and not tx.scan(keys.attachments_of(activity))
                and not tx.scan(keys.activity_names_of(activity))
            ):
                self.end_activity(tx, activity)
        for key, value in list(tx.writes.items()):
            if value is None and key.startswith("satt/"):
                sbb_id = key.split("/")[1]
                if not tx.scan(keys.sbb_attachments_of(sbb_id), guard=True):
                    self._remove_entity(tx, sbb_id)

    def _remove_entity(self, tx: Transaction, sbb_id: str) -> None:
        raw = tx.get(keys.sbb(sbb_id))
        if raw is None:
            return
        record = msgspec.msgpack.decode(raw, type=SbbRecord)
        tx.delete(keys.sbb(sbb_id))
        tx.delete(keys.convergence(record.service, record.convergence))

    def _save(self, tx: Transaction, record: SbbRecord, sbb: Sbb) -> None:
        state = encode(sbb.state)
        if state != record.state and tx.get(keys.sbb(record.id)) is not None:
            record.state = state
            tx.put(keys.sbb(record.id), encode(record))


def ended_by(response: SipResponse) -> bool:
    """A dialog we created ends on the final answer to our BYE, or on a failed INVITE."""
    status: int = response.status
    if response.method == "BYE":
        return status >= 200
    return response.method == "INVITE" and status >= 300
