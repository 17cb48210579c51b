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

import re
import secrets
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import msgspec

from router.context import Context
from router.lifecycle import (
    ACTIVE,
    SERVICE_ACTIVITY,
    STOPPING,
    ServiceError,
    ServiceRecord,
    ServiceTable,
    activate,
    convergence_space,
    deactivate,
    initial,
    settle,
    upgrade,
)
from router.records import (
    ActivityRecord,
    AlarmRecord,
    Attachment,
    EventTypes,
    PendingEvent,
    SbbRecord,
    TimerRecord,
    Transaction,
    UnknownEventType,
    decode,
    encode,
    timer_expiries,
    type_name,
)
from router.sbb import (
    ActivityEndEvent,
    Convergence,
    FacilityError,
    HandlerFailed,
    RollbackRequested,
    Sbb,
    ServiceStartedEvent,
    SipRequest,
    SipResponse,
    SleeError,
    TimerEvent,
)
from router.tracer import Sink
from router.usage import UsageSet
from zeroslee import bus, keys
from zeroslee.records import ServerResponse


@dataclass
class Service:
    """A deployed service, as one delivery sees it. Option `users` (a regular expression)
    limits its initial SIP events to Request-URI users it matches, so services can share
    a cluster. `root` takes new root entities (generation `generation`); `classes` runs
    each generation's entities (router/lifecycle.py)."""

    name: str
    root: type[Sbb]
    options: dict[str, str] = field(default_factory=dict)
    state: str = ACTIVE
    generation: int = 0
    classes: dict[int, type[Sbb]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.classes = self.classes or {self.generation: self.root}

    def selects(self, event: msgspec.Struct) -> bool:
        if isinstance(event, ServiceStartedEvent):
            return event.service == self.name  # its own start only
        pattern = self.options.get("users")
        return pattern is None or not isinstance(event, SipRequest) or re.search(pattern, event.user) is not None


def load_nothing(path: str) -> type[Sbb]:
    raise ServiceError(f"cannot load {path}: this container loads no code")


@dataclass
class Outcome:
    delivered_to: list[str]
    created: list[str]
    loaded_remote: list[str]  # entities created on another node, loaded from the store
    stale_names: list[str]
    services: list[str] = field(default_factory=list)  # the service of each delivery, in order
    # For `zeroslee-admin trace`: (key, to whom, what), keyed by Call-ID and by SBB id.
    notes: list[tuple[str, str, str]] = field(default_factory=list)


@contextmanager
def service_code(sbb_id: str, service: str, hook: bool = True) -> Iterator[None]:
    """Around every call into a service's code: whatever it raises is its failure, never
    the node's (the delivery rolls back and the request gets 500)."""
    try:
        yield
    except SleeError as exc:
        if isinstance(exc, HandlerFailed):
            raise
        raise HandlerFailed(sbb_id, exc, service, hook) from exc
    except Exception as exc:
        raise HandlerFailed(sbb_id, exc, service, hook) from exc


class Container:
    """Routes one event per call of `deliver`; holds only per-delivery scratch state."""

    def __init__(self, node: str, services: list[Service], load: Callable[[str], type[Sbb]] = load_nothing) -> None:
        self.node = node
        self.services = services  # as the cluster file deploys them
        self.by_service = {s.name: s for s in services}
        self.event_types = EventTypes(t for s in services for t in s.root.declared_event_types())
        self.event_types.add([ServiceStartedEvent])
        self.load = load  # "module:Class" -> the SBB class (the shell imports it)
        self.paths = {s.name: f"{s.root.__module__}:{s.root.__qualname__}" for s in services}
        self._table: tuple[bytes | None, dict[str, Service]] = (None, self.by_service)
        self._table_tx: Transaction | None = None
        self.touched: set[str] = set()
        self.responded: set[str] = set()
        self.stale_names: list[str] = []
        self.ending: set[str] = set()
        self.now = 0.0
        self.hook_failures: list[HandlerFailed] = []  # `rolled_back` hooks that raised
        # This delivery's (SBB id, service, node it was created on, event type) for each SBB run.
        self.served: list[tuple[str, str, str, str]] = []
        self.rollback_requested: set[str] = set()  # SBBs that called set_rollback_only
        self.fired = 0  # events fired through this container: their ids keep the order
        self.usage = {s.name: UsageSet.declared(s.root.usage_counters, s.root.usage_samples) for s in services}
        # Alarms SBBs raised or cleared, not transactional: the shell stores them after each run.
        self.alarm_ops: list[tuple[str, str, AlarmRecord | None]] = []
        self.profile_tables: dict[str, type[msgspec.Struct]] = {}  # the cluster file's (router/profiles.py)
        self.trace_levels: dict[str, str] = {}  # service -> trace level (router/tracer.py); default info
        self.trace_sink: Sink = lambda service, sbb, level, message, fields: None
        self.refused_by = ""

    def services_in(self, tx: Transaction) -> dict[str, Service]:
        """The services as this transaction sees them: the cluster file's, changed by the
        lifecycle record if an operator made one (read once per transaction, so a change
        committed meanwhile makes the delivery run again on the new one)."""
        if self._table_tx is tx:
            return self._table[1]
        self._table_tx = tx
        raw = tx.get(keys.SERVICES)
        if raw != self._table[0]:
            self._table = (raw, self.services_from(decode(raw, ServiceTable) if raw else ServiceTable()))
        return self._table[1]

    def services_from(self, table: ServiceTable) -> dict[str, Service]:
        """Each deployed service's view under `table`, its code loaded (and its event
        types and usage names learnt) for every generation still running."""
        views = {}
        for name, deployed in self.by_service.items():
            record = table.services.get(name) or initial(name, self.paths[name])
            views[name] = self.view(deployed, record)
        return views

    def view(self, deployed: Service, record: ServiceRecord) -> Service:
        classes = {}
        for generation, path in record.classes.items():
            try:
                cls = deployed.root if path == self.paths[deployed.name] else self.load(path)
            except ServiceError as exc:  # installed on the node that checked, not here
                raise FacilityError(f"service {deployed.name}: {exc}") from None
            classes[generation] = cls
            self.event_types.add(cls.declared_event_types())
            self.usage[deployed.name].declare(cls.usage_counters, cls.usage_samples)
        root = classes[record.generation]
        return Service(deployed.name, root, deployed.options, record.state, record.generation, classes)

    def _records(self, tx: Transaction) -> ServiceTable:
        raw = tx.get(keys.SERVICES)
        return decode(raw, ServiceTable) if raw else ServiceTable()

    def change_service(self, tx: Transaction, name: str, action: str, sbb: str = "", now: float = 0.0) -> str:
        """Management (`zeroslee-admin service`): activate, deactivate or upgrade `name`
        cluster-wide, in one transaction; what happened, in words. ServiceError if refused
        (nothing is written then)."""
        self.now = now
        services = self.services_in(tx)
        if name not in services:
            raise ServiceError(f"no service {name!r} (deployed: {', '.join(services)})")
        table = self._records(tx)
        record = table.services.get(name) or initial(name, self.paths[name])
        current = services[name]
        if action == "activate":
            changed, done = activate(record)
            said = "activated" if done else "already active"
        elif action == "deactivate":
            changed, done = deactivate(record)
            said = "deactivated: no new calls; calls in progress go on" if done else f"already {record.state}"
        elif action == "upgrade":
            if not sbb:
                raise ServiceError("upgrade needs the new version's module:Class")
            new = self.load(sbb)
            changed, moved = upgrade(record, current.root, sbb, new)
            done = True
            if moved:
                said = f"upgraded to {sbb}: its entities moved to the new code (the State evolves)"
            else:
                said = (
                    f"upgraded to {sbb}, generation {changed.generation}: entities in progress finish on the old code"
                )
        else:
            raise ServiceError(f"unknown action {action!r} (activate, deactivate, upgrade)")
        if not done:
            return said
        table.services[name] = changed
        tx.put(keys.SERVICES, encode(table))
        if changed.state == STOPPING or changed.generation != record.generation:
            # JAIN SLEE 1.1 §8.2: the service activity ends as the service (or, at an
            # upgrade to a new schema, its old version) starts stopping, so the SBBs
            # attached to it only can go; the calls in progress go on.
            self.touched, self.ending = set(), set()
            self.end_activity(tx, keys.service_activity(name))
            self._collect_garbage(tx)
        if changed.state == ACTIVE:
            self.start_service(tx, name, changed)
        return said

    def start_service(self, tx: Transaction, name: str, record: ServiceRecord) -> None:
        """The service's activity, and a ServiceStartedEvent on it if its code takes one."""
        activity = keys.service_activity(name)
        if tx.get(keys.activity(activity)) is None:
            tx.put(keys.activity(activity), encode(ActivityRecord(activity, SERVICE_ACTIVITY, self.node)))
        root = self.services_from(ServiceTable({name: record}))[name].root
        if ServiceStartedEvent not in root.declared_event_types():
            return
        event = ServiceStartedEvent(name, record.generation)
        pending = PendingEvent(self.next_event_id(), activity, type_name(ServiceStartedEvent), encode(event), self.node)
        tx.put(keys.pending_event(activity, pending.id), encode(pending))
        tx.fired.append(pending)

    def start_deployed(self, tx: Transaction) -> list[str]:
        """At a cluster's first start: the services the cluster file deploys that take a
        ServiceStartedEvent get one (and their record), once for the cluster's life."""
        table = self._records(tx)
        started = []
        for name, service in self.by_service.items():
            if name not in table.services and ServiceStartedEvent in service.root.declared_event_types():
                table.services[name] = initial(name, self.paths[name])
                self.start_service(tx, name, table.services[name])
                started.append(name)
        if started:
            tx.put(keys.SERVICES, encode(table))
        return started

    def settle_services(self, tx: Transaction) -> list[str]:
        """A router's sweep: a stopping service none of whose root entities is left is
        inactive; an old generation without entities is forgotten. What changed."""
        raw = tx.get(keys.SERVICES)
        if raw is None:
            return []
        table = decode(raw, ServiceTable)
        changes = []
        for name, record in list(table.services.items()):
            if record.state != STOPPING and len(record.classes) < 2:
                continue
            populated = {g for g in record.classes if tx.holds_any(keys.convergences_of(convergence_space(name, g)))}
            settled = settle(record, populated)
            if settled is not None:
                table.services[name] = settled
                changes.append(f"{name}: {settled.state}, generations {sorted(settled.classes)}")
        if changes:
            tx.put(keys.SERVICES, encode(table))
        return changes

    def deliver(self, tx: Transaction, event: msgspec.Struct, activity: str, now: float = 0.0) -> Outcome:
        """Deliver `event`; `now` is cluster time (epoch seconds) for timers set."""
        self.touched, self.responded, self.stale_names, self.now = {activity}, set(), [], now
        self.ending = set()
        self.served = []
        self.rollback_requested = set()
        self.refused_by = ""  # an inactive service that would have taken this initial event
        if isinstance(event, SipRequest):
            if self._answered_already(tx, event):
                return Outcome([], [], [], [])
            self._ensure_sip_activity(tx, event)
        created, initial = self._initial_selection(tx, event, activity)
        delivered, remote = self._deliver_to_attached(tx, event, activity, initial)
        self._default_response(tx, event, delivered)
        if isinstance(event, SipResponse) and ended_by(event):
            self.end_activity(tx, activity)
        self.remove_stale_names(tx)
        self._collect_garbage(tx)
        services = [service for _, service, _, _ in self.served]
        return Outcome(delivered, created, remote, list(self.stale_names), services, self._notes(event, created))

    def _notes(self, event: msgspec.Struct, created: list[str]) -> list[tuple[str, str, str]]:
        """What `zeroslee-admin trace` shows of this delivery: which SBB of which
        service got which event, on this node, keyed by the Call-ID and by the SBB."""
        call_id = getattr(event, "call_id", "")
        notes = []
        for sbb_id, service, origin, what in self.served:
            whence = " (new)" if sbb_id in created else f" (created on {origin})" if origin != self.node else ""
            note = (f"{service} sbb {sbb_id}", f"{what}{whence}")
            if call_id:
                notes.append((call_id, *note))
            notes.append((sbb_id, *note))
        return notes

    def _answered_already(self, tx: Transaction, event: SipRequest) -> bool:
        """A request of a dialog whose CSeq another delivery already answered (its node
        saw the store die mid-commit and re-ran the delivery while the UA's retransmission
        was served by another node): answer it again, deliver nothing twice. The record is
        read in this transaction, so a concurrent answer makes one of the two re-run.
        ACK and CANCEL carry their INVITE's CSeq and are never answered this way."""
        if event.activity_type != "sip-dialog" or event.method in ("ACK", "CANCEL"):
            return False
        raw = tx.get(keys.last_response(event.activity))
        if raw is None:
            return False
        done = ServerResponse.decode(raw)
        if (done.cseq, done.method) == (event.cseq, event.method):
            tx.messages.append(
                bus.SendResponse(event.tx, done.status, done.reason, done.content_type, done.body, list(done.headers))
            )
            return True
        if done.cseq >= event.cseq:
            # RFC 3261 §12.2.2: "the request is out of order and MUST be rejected with a 500".
            tx.messages.append(bus.SendResponse(event.tx, 500, "CSeq out of order"))
            return True
        return False

    def fire_timer(self, tx: Transaction, timer_key: str, now: float) -> Outcome | None:
        """A timer's expiry: deliver the TimerEvents due under its missed policy and
        reschedule or delete its record, in one transaction. None: cancelled meanwhile."""
        raw = tx.get(timer_key)
        if raw is None:
            return None
        timer = decode(raw, TimerRecord)
        if timer.owner != self.node:
            return None  # adopted by another node meanwhile: only the owner fires (DESIGN §4)
        count, after = timer_expiries(timer, now)
        if after is None:
            tx.delete(timer_key)
        else:
            tx.put(timer_key, encode(after))
            tx.timers.append(after)
        outcome = Outcome([], [], [], [])
        for _ in range(count):
            outcome = self.deliver(tx, TimerEvent(timer.id, timer.activity, timer.fire_at), timer.activity, now)
        return outcome

    def end(self, tx: Transaction, activity: str, now: float = 0.0) -> Outcome:
        """End `activity` as a transaction of its own (management, or its RA gave up)."""
        self.touched, self.responded, self.stale_names, self.ending, self.now = set(), set(), [], set(), now
        self.end_activity(tx, activity)
        self._collect_garbage(tx)
        return Outcome([], [], [], [])

    def remove_stale_names(self, tx: Transaction) -> None:
        """Names found bound to an ended activity go (DESIGN §5). The shell calls this in
        a transaction of its own when the delivery that found them rolls back."""
        for name in self.stale_names:
            raw = tx.get(keys.name(name))
            if raw is not None and tx.get(keys.activity(raw.decode())) is None:
                tx.delete(keys.name(name))
                tx.delete(keys.activity_name(raw.decode(), name))

    def roll_back(self, tx: Transaction, failure: HandlerFailed, activity: str) -> None:
        """JAIN SLEE sbbRolledBack: after a handler raised and its delivery rolled back,
        the SBB hears of it in a new transaction (this one)."""
        raw = tx.get(keys.sbb(failure.sbb_id))
        if raw is None:
            return
        record = decode(raw, SbbRecord)
        service = self.services_in(tx).get(record.service)
        cls = self.class_of(record, service) if service is not None else None
        if service is None or cls is None or not failure.hook:
            return
        before = (dict(tx.writes), list(tx.messages), list(tx.fired), list(tx.timers))
        try:
            sbb = cls(decode(record.state, cls.State))
            sbb.rolled_back(Context(tx, record.id, activity, self, service), failure.error)
        except Exception as exc:  # the hook failed too: it goes no further, and its effects go
            tx.writes, tx.messages, tx.fired, tx.timers = before
            self.hook_failures.append(HandlerFailed(record.id, exc, record.service, hook=False))
            return
        self._save(tx, record, sbb)

    def next_event_id(self) -> str:
        """A fired event's id, in firing order (cluster time in microseconds, then a
        counter, then randomness for uniqueness across nodes): the journal keys of one
        activity's events list them in the order they were fired."""
        self.fired = (self.fired + 1) % 0x10000
        return f"e{int(self.now * 1_000_000):014x}{self.fired:04x}{secrets.token_hex(4)}"

    def _deliver_fired_before_end(self, tx: Transaction, activity: str) -> None:
        """JAIN SLEE 1.1 §7.3.3: events fired on an activity before it ended are delivered
        before its ActivityEndEvent, in the order they were fired (here, within the
        delivery that ends it; their journal entries go, so the copies queued for them
        find nothing to deliver). One of a type no deployed service declares goes with
        the activity, undelivered, as before."""
        for key in tx.scan(keys.pending_events_of(activity)):
            raw = tx.get(key)
            if raw is None:
                continue
            tx.delete(key)
            try:
                event = self.event_types.decode(decode(raw, PendingEvent))
            except (UnknownEventType, ValueError, msgspec.DecodeError):
                continue
            self._deliver_to_attached(tx, event, activity, set())

    def _exception_thrown(
        self, sbb: Sbb, ctx: Context, error: BaseException, event: object, sbb_id: str, service: str
    ) -> None:
        """JAIN SLEE sbbExceptionThrown, inside the delivery that is rolling back; a hook
        that raises too is noted (`hook_failures`) and changes nothing."""
        try:
            sbb.exception_thrown(ctx, error, event)
        except Exception as exc:
            self.hook_failures.append(HandlerFailed(sbb_id, exc, service, hook=False))

    def _deliver_to_attached(
        self, tx: Transaction, event: msgspec.Struct, activity: str, initial: set[str]
    ) -> tuple[list[str], list[str]]:
        delivered: list[str] = []
        remote: list[str] = []
        kind = type(event).__name__
        for sbb_id, attachment in self._attached_by_priority(tx, activity, initial):
            if kind in attachment.mask:
                continue
            record_raw = tx.get(keys.sbb(sbb_id))
            if record_raw is None:
                continue
            record = decode(record_raw, SbbRecord)
            service = self.services_in(tx).get(record.service)
            cls = self.class_of(record, service) if service else None
            handler = cls.handler_for(event) if cls else None
            if service is None or cls is None or handler is None:
                continue
            with service_code(sbb_id, service.name, hook=False):
                sbb = cls(decode(record.state, cls.State))
            # Noted before the handler runs: what it causes (an activity it ends) comes after.
            self.served.append(
                (sbb_id, service.name, record.created_on, f"{kind} {getattr(event, 'method', '')}".rstrip())
            )
            ctx = Context(tx, sbb_id, activity, self, service)
            with service_code(sbb_id, service.name):
                try:
                    handler.function(sbb, event, ctx)
                except Exception as exc:
                    if not isinstance(exc, HandlerFailed):  # another SBB's failure passing through
                        self._exception_thrown(sbb, ctx, exc, event, sbb_id, service.name)
                    raise
            if sbb_id in self.rollback_requested:
                raise HandlerFailed(sbb_id, RollbackRequested("set_rollback_only"), service.name, requested=True)
            self._save(tx, record, sbb)
            delivered.append(sbb_id)
            if record.created_on != self.node:
                remote.append(sbb_id)
        return delivered, remote

    def _ensure_sip_activity(self, tx: Transaction, event: SipRequest) -> None:
        if event.activity_type == "sip-dialog" and event.created_dialog:
            if tx.get(keys.activity(event.activity)) is None:
                record = ActivityRecord(event.activity, "sip-dialog", self.node, ra_keys=list(event.ra_keys))
                tx.put(keys.activity(event.activity), encode(record))

    def _initial_selection(self, tx: Transaction, event: msgspec.Struct, activity: str) -> tuple[list[str], set[str]]:
        """Create or reuse the root entity per convergence name; returns (created, selected)."""
        created: list[str] = []
        selected: set[str] = set()
        if isinstance(event, SipRequest) and event.activity_type == "sip-dialog" and not event.created_dialog:
            # A request within a dialog is no initial event (JAIN SLEE's SIP RA: only what
            # can begin a dialog or stand alone is): it goes to the SBBs attached to the
            # dialog, never to a service whose `users` its Request-URI (our Contact) fits.
            return created, selected
        for service in self.services_in(tx).values():
            handler = service.root.handler_for(event)
            if handler is None or handler.initial_by is None or not service.selects(event):
                continue
            if service.state != ACTIVE:  # stopping or inactive: no new root entities
                self.refused_by = self.refused_by or service.name
                continue
            select = handler.initial_by
            with service_code(f"{service.name}:initial_by", service.name, hook=False):
                if isinstance(select, Convergence):
                    name = select.name(event, activity, lambda: secrets.token_hex(8))
                else:
                    name = select(event)
            if name is None:
                continue
            conv = keys.convergence(convergence_space(service.name, service.generation), name)
            existing = tx.get(conv)
            if existing is not None:
                sbb_id = existing.decode()
            else:
                sbb_id = "s" + secrets.token_hex(10)
                with service_code(sbb_id, service.name, hook=False):  # no entity if it fails
                    state = service.root.State()
                    record = SbbRecord(
                        sbb_id, service.name, name, encode(state), self.node, generation=service.generation
                    )
                    tx.put(conv, sbb_id.encode())
                    tx.put(keys.sbb(sbb_id), encode(record))
                    sbb = service.root(state)
                    sbb.created(Context(tx, sbb_id, activity, self, service))
                self._save(tx, record, sbb)
                created.append(sbb_id)
            selected.add(sbb_id)
            self.attach(tx, activity, sbb_id)
        return created, selected

    def _attached_by_priority(self, tx: Transaction, activity: str, initial: set[str]) -> list[tuple[str, Attachment]]:
        """Highest priority first; on a tie the entity this event was initial for wins."""
        ranked = []
        for key in tx.scan(keys.attachments_of(activity)):
            sbb_id = keys.last(key)
            raw = tx.get(key)
            attachment = decode(raw, Attachment) if raw else Attachment()
            ranked.append((-attachment.priority, sbb_id not in initial, sbb_id, attachment))
        return [(sbb_id, attachment) for _, _, sbb_id, attachment in sorted(ranked, key=lambda r: r[:3])]

    def attach(self, tx: Transaction, activity: str, sbb_id: str, mask: tuple[str, ...] = ()) -> None:
        if tx.get(keys.attachment(activity, sbb_id)) is not None:
            return
        record_raw = tx.get(keys.sbb(sbb_id))
        priority = 0
        if record_raw is not None:
            record = decode(record_raw, SbbRecord)
            service = self.services_in(tx).get(record.service)
            priority = self.priority_of(record, service) if service else 0
        tx.put(keys.attachment(activity, sbb_id), encode(Attachment(priority, list(mask))))
        tx.put(keys.sbb_attachment(sbb_id, activity), b"")
        self.touched.add(activity)

    def detach(self, tx: Transaction, activity: str, sbb_id: str) -> None:
        tx.delete(keys.attachment(activity, sbb_id))
        tx.delete(keys.sbb_attachment(sbb_id, activity))
        self.touched.add(activity)

    def end_activity(self, tx: Transaction, activity: str) -> None:
        """End an activity (JAIN SLEE 1.1 §7.3.3): it takes no new events; the events
        fired on it before are delivered; its attached SBBs get an ActivityEndEvent, then
        are detached; its names, timers and its resource adaptor's data go with it."""
        if activity in self.ending:
            return
        self.ending.add(activity)
        raw = tx.get(keys.activity(activity))
        if raw is not None:
            self._deliver_fired_before_end(tx, activity)
            self._deliver_to_attached(tx, ActivityEndEvent(activity), activity, set())
        for key in tx.scan(keys.attachments_of(activity)):
            self.detach(tx, activity, keys.last(key))
        for key in tx.scan(keys.activity_names_of(activity)):
            tx.delete(key)
            tx.delete(keys.name(keys.last(key)))
        for key in tx.scan(keys.pending_events_of(activity)) + tx.scan(keys.timers_of(activity)):
            tx.delete(key)
        if raw is not None:
            record = decode(raw, ActivityRecord)
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
        reason = ""
        if event.method == "OPTIONS":
            status = 200
        elif event.method == "BYE":
            status = 200
            self.end_activity(tx, event.activity)
        elif delivered:
            status = 500
        elif self.refused_by:  # its service is deactivated: the call is not ours to take
            status, reason = 480, "Service Inactive"
        else:
            status = 405
        tx.messages.append(bus.SendResponse(event.tx, status, reason))

    def _collect_garbage(self, tx: Transaction) -> None:
        """Remove root entities left with no attachment; end null activities nothing
        references: no attachment, no name, no timer, no pending event (JAIN SLEE §7.10)."""
        for activity in sorted(self.touched):
            raw = tx.get(keys.activity(activity))
            if raw is None or decode(raw, ActivityRecord).type != "null":
                continue
            references = (
                keys.attachments_of(activity),
                keys.activity_names_of(activity),
                keys.timers_of(activity),
                keys.pending_events_of(activity),
            )
            if not tx.holds_any(*references):
                self.end_activity(tx, activity)
        for key, value in list(tx.writes.items()):
            if value is None and key.startswith("satt/"):
                sbb_id = keys.parts(key)[1]
                if self._is_child(tx, sbb_id):
                    continue  # a child lives while its parent does, attached or not
                if not tx.scan(keys.sbb_attachments_of(sbb_id), guard=True):
                    self._remove_entity(tx, sbb_id)

    @staticmethod
    def _class_at(service: Service, path: str, generation: int) -> type[Sbb] | None:
        """The SBB class at `path` (relation names from the root's class of `generation`,
        "/"-separated); None if that version has no such relation, or is gone."""
        root = service.classes.get(generation)
        if root is None:
            return None
        cls: type[Sbb] = root
        for relation in path.split("/") if path else ():
            child = cls.child_relations.get(relation)
            if child is None:
                return None
            cls = child.sbb
        return cls

    def class_of(self, record: SbbRecord, service: Service) -> type[Sbb] | None:
        """An entity's SBB class: the root's, or a child's along its relations' path."""
        return self._class_at(service, record.path, record.generation)

    def priority_of(self, record: SbbRecord, service: Service) -> int:
        """A root's class priority, or a child's relation's."""
        if not record.path:
            root = service.classes.get(record.generation)
            return root.priority if root else 0
        parent_path, _, relation = record.path.rpartition("/")
        parent = self._class_at(service, parent_path, record.generation)
        found = parent.child_relations.get(relation) if parent else None
        return found.priority if found else 0

    def create_child(self, tx: Transaction, parent: SbbRecord, service: Service, relation: str) -> str:
        """A child entity of `parent` in `relation` (JAIN SLEE ChildRelation.create)."""
        cls = self.class_of(parent, service)
        found = cls.child_relations.get(relation) if cls else None
        if found is None:
            raise FacilityError(f"{service.name}: no child relation {relation!r}")
        child_id = "s" + secrets.token_hex(10)
        path = f"{parent.path}/{relation}" if parent.path else relation
        state = found.sbb.State()
        record = SbbRecord(
            child_id,
            service.name,
            "",
            encode(state),
            self.node,
            parent=parent.id,
            path=path,
            generation=parent.generation,
        )
        tx.put(keys.sbb(child_id), encode(record))
        tx.put(keys.child(parent.id, child_id), b"")
        sbb = found.sbb(state)
        sbb.created(Context(tx, child_id, "", self, service))
        self._save(tx, record, sbb)
        return child_id

    def remove_entity(self, tx: Transaction, sbb_id: str) -> None:
        """Remove an entity that may still be attached (a child removed by its parent):
        detached from its activities, then removed with its children (`_remove_entity`)."""
        for key in tx.scan(keys.sbb_attachments_of(sbb_id)):
            self.detach(tx, keys.last(key), sbb_id)
        self._remove_entity(tx, sbb_id)

    def _is_child(self, tx: Transaction, sbb_id: str) -> bool:
        raw = tx.get(keys.sbb(sbb_id))
        return raw is not None and bool(decode(raw, SbbRecord).parent)

    def _remove_entity(self, tx: Transaction, sbb_id: str) -> None:
        raw = tx.get(keys.sbb(sbb_id))
        if raw is None:
            return
        record = decode(raw, SbbRecord)
        for key in tx.scan(keys.children_of(sbb_id)):  # cascade (JAIN SLEE §6.8): children first
            self.remove_entity(tx, keys.last(key))
        service = self.services_in(tx).get(record.service)
        cls = self.class_of(record, service) if service is not None else None
        if service is not None and cls is not None:  # JAIN SLEE sbbRemove: the entity's last word
            with service_code(sbb_id, service.name, hook=False):
                sbb = cls(decode(record.state, cls.State))
                sbb.removed(Context(tx, sbb_id, "", self, service))
        tx.delete(keys.sbb(sbb_id))
        if record.parent:
            tx.delete(keys.child(record.parent, sbb_id))
        else:
            tx.delete(keys.convergence(convergence_space(record.service, record.generation), record.convergence))

    def _save(self, tx: Transaction, record: SbbRecord, sbb: Sbb) -> None:
        with service_code(record.id, record.service, hook=False):  # a State it cannot encode
            state = encode(sbb.state)
        if state != record.state and tx.get(keys.sbb(record.id)) is not None:
            record.state = state
            tx.put(keys.sbb(record.id), encode(record))


def ended_by(response: SipResponse) -> bool:
    """A dialog we created ends on the final answer to our BYE, or on a failed INVITE."""
    status: int = response.status
    if response.ends_activity:  # the final answer to a request sent outside a dialog
        return True
    if response.method == "BYE":
        return status >= 200
    return response.method == "INVITE" and status >= 300
