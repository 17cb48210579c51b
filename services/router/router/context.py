"""What an SBB can do during a delivery: the `SbbContext` the container hands it.

Every facility writes into the delivery's `Transaction`: nothing takes effect before the
commit, and a rollback leaves no trace (JAIN SLEE's transactional facilities).
"""

from __future__ import annotations

import re
import secrets
from collections.abc import Sequence
from typing import TYPE_CHECKING

import msgspec

from router.profiles import ProfileFacility
from router.records import (
    ActivityRecord,
    AlarmRecord,
    Attachment,
    Outgoing,
    PendingEvent,
    SbbRecord,
    TimerRecord,
    Transaction,
    UnknownEventType,
    decode,
    encode,
)
from router.sbb import ActivityEnding, FacilityError, NameAlreadyBound, NameNotBound, SipRequest
from router.tracer import Tracer
from router.usage import Usage
from zeroslee import bus, keys
from zeroslee.alarms import parse_level as parse_alarm_level
from zeroslee.records import ServerResponse
from zeroslee.sipmsg import RA_OWNED, canonical

if TYPE_CHECKING:
    from router.container import Container, Service


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

    @property
    def profiles(self) -> ProfileFacility:
        """Profile tables (router/profiles.py): `get(table, key)`, `watch(table)`, `tables`."""
        return ProfileFacility(self.tx, self.container.profile_tables, self.attach)

    @property
    def alarms(self) -> AlarmFacility:
        """JAIN SLEE's alarm facility: `ctx.alarms.raise_alarm(id, level, message)`, `clear(id)`."""
        return AlarmFacility(self.container, self.service.name)

    @property
    def usage(self) -> Usage:
        """The service's usage parameters (router/usage.py): `ctx.usage.increment("x")`."""
        return Usage(self.service.name, self.container.usage[self.service.name])

    @property
    def tracer(self) -> Tracer:
        """The service's tracer (router/tracer.py): `ctx.tracer.fine("text", key=value)`."""
        return Tracer(self.service.name, self.sbb_id, self.container.trace_levels, self.container.trace_sink)

    # timer facility (JAIN SLEE TimerFacility)
    def set_timer(
        self, activity: str, delay: float, period: float = 0.0, repetitions: int = 1, missed: str = "all"
    ) -> str:
        """A timer firing `TimerEvent`s on `activity`: once after `delay`, or every `period`
        seconds (`repetitions` times, 0 = until cancelled). `missed`: "all", "last", "none"."""
        if missed not in ("all", "last", "none") or delay < 0 or period < 0:
            raise FacilityError("bad timer options")
        self._require_activity(activity)
        ident = "t" + secrets.token_hex(8)
        record = TimerRecord(
            ident, activity, self.container.now + delay, self.tx.node, period, repetitions if period else 1, missed
        )
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

    def attach(self, activity: str, mask: tuple[str, ...] = ()) -> None:
        """Attach to `activity`; events whose type name is in `mask` are not delivered."""
        record = self._require_activity(activity)
        if record.ending or activity in self.container.ending:
            raise ActivityEnding(activity)
        self.container.attach(self.tx, activity, self.sbb_id, mask)

    # child relations (JAIN SLEE ChildRelation)
    def create_child(self, relation: str) -> str:
        """A new child entity in `relation` (declared in `child_relations`); its id. It
        lives until removed, or until this entity is (cascade), attached or not."""
        return self.container.create_child(self.tx, self._own_record(), self.service, relation)

    def children(self, relation: str | None = None) -> list[str]:
        """This entity's children (in `relation`, if given), oldest first by id."""
        out = []
        for key in self.tx.scan(keys.children_of(self.sbb_id)):
            child_id = keys.last(key)
            raw = self.tx.get(keys.sbb(child_id))
            if raw is not None and (relation is None or decode(raw, SbbRecord).path.rsplit("/", 1)[-1] == relation):
                out.append(child_id)
        return out

    def remove_child(self, child_id: str) -> None:
        """Remove a child of this entity, and its own children (JAIN SLEE's cascade)."""
        if self.tx.get(keys.child(self.sbb_id, child_id)) is None:
            raise FacilityError(f"{child_id} is not a child of {self.sbb_id}")
        self.container.remove_entity(self.tx, child_id)

    def attach_child(self, child_id: str, activity: str, mask: tuple[str, ...] = ()) -> None:
        """Attach a child of this entity to `activity`: its handlers get the events there,
        in the order of its relation's priority among the attached."""
        if self.tx.get(keys.child(self.sbb_id, child_id)) is None:
            raise FacilityError(f"{child_id} is not a child of {self.sbb_id}")
        record = self._require_activity(activity)
        if record.ending or activity in self.container.ending:
            raise ActivityEnding(activity)
        self.container.attach(self.tx, activity, child_id, mask)

    def _own_record(self) -> SbbRecord:
        raw = self.tx.get(keys.sbb(self.sbb_id))
        if raw is None:
            raise FacilityError(f"{self.sbb_id} is gone")
        return decode(raw, SbbRecord)

    def mask_event(self, activity: str, mask: tuple[str, ...]) -> None:
        """Replace the event mask of this SBB's attachment to `activity`."""
        key = keys.attachment(activity, self.sbb_id)
        raw = self.tx.get(key)
        if raw is None:
            raise FacilityError(f"not attached to {activity}")
        self.tx.put(key, encode(msgspec.structs.replace(decode(raw, Attachment), mask=list(mask))))

    def detach(self, activity: str) -> None:
        self.container.detach(self.tx, activity, self.sbb_id)

    def attachment_count(self, activity: str) -> int:
        """Exact: the commit fails if anyone joins or leaves meanwhile."""
        return len(self.tx.scan(keys.attachments_of(activity), guard=True))

    def has_attachments(self, activity: str) -> bool:
        """Whether any SBB is attached, guarded just enough for a last-one-out decision
        (`Transaction.holds_any`): joins and leaves to a busy room rarely conflict."""
        return self.tx.holds_any(keys.attachments_of(activity))

    def fire(self, activity: str, event: msgspec.Struct) -> None:
        record = self._require_activity(activity)
        if record.ending or activity in self.container.ending:
            raise ActivityEnding(f"activity {activity} is ending: no new events")
        try:
            name = self.container.event_types.name_of(event)
        except UnknownEventType as exc:  # the SBB's mistake: its delivery rolls back
            raise FacilityError(f"{exc}: list it in the SBB's event_types") from None
        pending = PendingEvent(self.container.next_event_id(), activity, name, encode(event), self.tx.node)
        self.tx.put(keys.pending_event(activity, pending.id), encode(pending))
        self.tx.fired.append(pending)

    # transactions (JAIN SLEE SbbContext.setRollbackOnly)
    def set_rollback_only(self) -> None:
        """This delivery must not commit: once the handler returns, it rolls back (nothing
        it or any SBB did in it takes effect), `rolled_back` is called in a transaction of
        its own, and a SIP request it was for is answered 500. Asked for, so it is neither
        counted as the service's failure nor alarmed."""
        self.container.rollback_requested.add(self.sbb_id)

    # SIP facility (the SIP RA's SBB interface)
    def respond(
        self,
        event: SipRequest,
        status: int,
        reason: str = "",
        body: bytes = b"",
        content_type: str = "",
        headers: Sequence[tuple[str, str]] = (),
    ) -> None:
        """Answer `event`; `headers` adds any header but those the RA writes (Via, From,
        To, Call-ID, CSeq, Contact, Record-Route...): Reason, Warning, X-..."""
        extra = checked_headers(headers)
        if not 100 <= status <= 699:
            raise FacilityError(f"a SIP status is 100 to 699, not {status}")
        self.container.responded.add(event.tx)
        self.tx.messages.append(bus.SendResponse(event.tx, status, reason, content_type, body, extra))
        if event.activity_type == "sip-dialog" and status >= 200:
            # Replicated with this delivery, so a node taking the dialog over answers a
            # retransmission of this request from it instead of handling it twice.
            record = ServerResponse(event.cseq, event.method, status, reason, content_type, body, extra)
            self.tx.put(keys.last_response(event.activity), record.encode())
        if event.method == "BYE" and 200 <= status < 300:
            self.container.end_activity(self.tx, event.activity)
        elif event.method == "INVITE" and event.created_dialog and status >= 300:
            self.container.end_activity(self.tx, event.activity)  # §12.1: no dialog came of it

    def defer(self, event: SipRequest) -> None:
        """This request is answered later, by a delivery to come (a B2BUA waits for the
        other leg): no default answer now. Unanswered after 8 s, the RA answers 500."""
        self.container.responded.add(event.tx)

    def create_dialog(self) -> str:
        """A new SIP dialog activity (UAC side); the SIP RA creates it when `invite` is sent."""
        call_id, tag = f"{secrets.token_hex(10)}@zeroslee", secrets.token_hex(6)
        ident = keys.sip_dialog_id(call_id, tag)  # what the callee's requests will name
        record = ActivityRecord(ident, "sip-dialog", self.tx.node, call_id=call_id, local_tag=tag)
        self.tx.put(keys.activity(ident), encode(record))
        return ident

    def invite(
        self,
        dialog: str,
        from_uri: str,
        to_uri: str,
        body: bytes = b"",
        content_type: str = "",
        headers: Sequence[tuple[str, str]] = (),
    ) -> None:
        """Call `to_uri` on a dialog from `create_dialog`; responses come as `SipResponse`
        (provisional ones too, 101-199; the RA ACKs a 2xx itself)."""
        self.send_initial(dialog, "INVITE", from_uri, to_uri, body, content_type, headers)

    def send_initial(
        self,
        activity: str,
        method: str,
        from_uri: str,
        to_uri: str,
        body: bytes = b"",
        content_type: str = "",
        headers: Sequence[tuple[str, str]] = (),
    ) -> None:
        """A request outside any dialog, on an activity from `create_dialog`: INVITE
        (see `invite`), or MESSAGE, OPTIONS... whose final response (`SipResponse`) ends
        the activity. Sent through the balancer, from the cluster."""
        record = self._require_activity(activity)
        if method in ("ACK", "CANCEL", "BYE") or not method.isalpha() or not method.isupper():
            raise FacilityError(f"{method!r} cannot start a transaction outside a dialog")
        for uri in (from_uri, to_uri):
            if not uri.lower().startswith(("sip:", "sips:")) or any(c in uri for c in "\r\n<> "):
                raise FacilityError(f"not a SIP URI: {uri!r}")
        extra = checked_headers(headers)
        request = bus.SendRequest(
            activity, method, content_type, body, self.sbb_id, from_uri, to_uri, headers=extra,
            call_id=record.call_id, local_tag=record.local_tag,
        )  # fmt: skip
        self._send(request)

    def send_request(
        self,
        dialog: str,
        method: str,
        body: bytes = b"",
        content_type: str = "",
        headers: Sequence[tuple[str, str]] = (),
    ) -> None:
        """A request within `dialog` (INFO, BYE, re-INVITE, UPDATE...); its final response
        comes as a `SipResponse` on the dialog."""
        if method in ("ACK", "CANCEL") or not method.isalpha() or not method.isupper():
            raise FacilityError(f"{method!r} is not sent this way (the RA ACKs; use cancel)")
        self._send(bus.SendRequest(dialog, method, content_type, body, self.sbb_id, headers=checked_headers(headers)))

    def cancel(self, dialog: str, headers: Sequence[tuple[str, str]] = ()) -> None:
        """CANCEL our INVITE on `dialog` if it has no final response yet (§9.1): it then
        gets 487 as its `SipResponse`; if the callee answered first, the 2xx comes
        instead, and the dialog is to be ended with BYE. `headers`: a Reason, say."""
        self._require_activity(dialog)
        self._send(bus.SendRequest(dialog, "CANCEL", "", b"", self.sbb_id, headers=checked_headers(headers)))

    def _send(self, request: bus.SendRequest) -> None:
        """Journal the request with this delivery (`Outgoing`); it leaves after the commit."""
        key = keys.outgoing(request.dialog, secrets.token_hex(8))
        request = msgspec.structs.replace(request, outgoing=key)
        self.tx.put(key, encode(Outgoing(self.tx.node, bus.encode(request))))
        self.tx.messages.append(request)

    def _require_activity(self, activity: str) -> ActivityRecord:
        raw = self.tx.get(keys.activity(activity))
        if raw is None:
            raise FacilityError(f"activity {activity} does not exist")
        return decode(raw, ActivityRecord)


TOKEN = re.compile(r"^[A-Za-z0-9.!%*_+`'~-]+$")  # RFC 3261 §25.1 token


def checked_headers(headers: Sequence[tuple[str, str]]) -> list[tuple[str, str]]:
    """A service's extra headers, refused (the SBB's failure) if one would set what the
    RA writes or is not a well-formed header (a line break in a value would inject one)."""
    out = []
    for name, value in headers:
        if not isinstance(name, str) or not isinstance(value, str) or not TOKEN.match(name):
            raise FacilityError(f"not a header name: {name!r}")
        if canonical(name) in RA_OWNED:
            raise FacilityError(f"{canonical(name)} is written by the SIP RA, not by a service")
        if "\r" in value or "\n" in value or "\0" in value:
            raise FacilityError(f"{name}: a header value is one line")
        out.append((name, value))
    return out


class AlarmFacility:
    """Alarms an SBB raises and clears, cluster-wide (`zeroslee-admin alarms`, and
    `zeroslee_sbb_alarms` in /metrics): one per (service, id) until cleared, whichever node
    clears it. Not transactional (as in JAIN SLEE): raised even if the delivery rolls back.
    Levels: critical, major, minor, warning, indeterminate."""

    def __init__(self, container: Container, service: str) -> None:
        self.container, self.service = container, service

    def raise_alarm(self, alarm_id: str, level: str, message: str) -> None:
        try:
            level = parse_alarm_level(level)
        except ValueError as exc:
            raise FacilityError(str(exc)) from None
        if not alarm_id or len(alarm_id) > 200:
            raise FacilityError("an alarm id is 1 to 200 characters")
        record = AlarmRecord(
            self.service, alarm_id, level, str(message)[:1000], self.container.now, self.container.node
        )
        self.container.alarm_ops.append((self.service, alarm_id, record))

    def clear(self, alarm_id: str) -> None:
        self.container.alarm_ops.append((self.service, alarm_id, None))
