"""The router core: one delivery as one transaction, on an in-memory view."""

from __future__ import annotations

import msgspec
import pytest

from router.chat import ChatSbb, MessageEvent
from router.container import Container, Service
from router.context import Context
from router.records import ActivityRecord, Outgoing, TimerRecord, Transaction, decode, encode, timer_expiries
from router.sbb import (
    ActivityEndEvent,
    ActivityEnding,
    FacilityError,
    HandlerFailed,
    NameAlreadyBound,
    NameNotBound,
    Sbb,
    SipRequest,
    on,
)
from zeroslee import bus, keys


class DictView:
    """A replica snapshot: key -> (version, value)."""

    def __init__(self, data: dict[str, tuple[int, bytes]] | None = None) -> None:
        self.data = data or {}

    def get(self, key: str) -> tuple[int, bytes | None]:
        version, value = self.data.get(key, (0, None))
        return version, value

    def scan(self, prefix: str, limit: int = 1_000_000) -> list[tuple[str, int, bytes]]:
        return [(k, v, b) for k, (v, b) in sorted(self.data.items()) if k.startswith(prefix)][:limit]

    def apply(self, tx: Transaction, seq: int) -> None:
        for key, value in tx.writes.items():
            if value is None:
                self.data.pop(key, None)
            else:
                self.data[key] = (seq, value)


CSEQ = {"INVITE": 1, "BYE": 9}  # a dialog's requests in the order a UA sends them


def sip(
    method: str, activity: str, body: bytes = b"", room: str = "room-7", created: bool = False, cseq: int = 0
) -> SipRequest:
    return SipRequest(
        event_id="e",
        tx=f"tx-{method}-{activity}",
        activity=activity,
        # As the RA fires them: an OPTIONS stands alone (its transaction is its activity).
        activity_type="sip-transaction" if method == "OPTIONS" else "sip-dialog",
        method=method,
        request_uri=f"sip:{room}@example.com",
        call_id=f"call-{activity}",
        from_uri="sip:a@b",
        to_uri=f"sip:{room}@b",
        cseq=cseq or CSEQ.get(method, 2),
        content_type="text/plain" if body else "",
        body=body,
        created_dialog=created,
    )


class Run:
    def __init__(self) -> None:
        self.view = DictView()
        self.container = Container("node-1", [Service("chat", ChatSbb)])
        self.seq = 0

    def deliver(self, event: msgspec.Struct, activity: str) -> Transaction:
        tx = Transaction(self.view, "node-1")
        self.container.deliver(tx, event, activity)
        self.seq += 1
        self.view.apply(tx, self.seq)
        return tx


def test_initial_invite_creates_root_entity_room_and_name() -> None:
    run = Run()
    tx = run.deliver(sip("INVITE", "d1", created=True), "d1")
    [room] = [v.decode() for k, (_, v) in run.view.data.items() if k == keys.name("room-7")]
    assert len(run.view.scan(keys.attachments_of(room))) == 1
    assert len(run.view.scan("sbb/")) == 1
    assert tx.messages == [bus.SendResponse("tx-INVITE-d1", 200)]


def test_second_participant_reuses_the_named_room() -> None:
    run = Run()
    run.deliver(sip("INVITE", "d1", created=True), "d1")
    run.deliver(sip("INVITE", "d2", created=True), "d2")
    assert len(run.view.scan("name/")) == 1
    room = run.view.get(keys.name("room-7"))[1].decode()  # type: ignore[union-attr]
    assert len(run.view.scan(keys.attachments_of(room))) == 2


def test_info_fires_message_event_only_as_a_post_commit_effect() -> None:
    run = Run()
    run.deliver(sip("INVITE", "d1", created=True), "d1")
    run.deliver(sip("INVITE", "d2", created=True), "d2")
    tx = run.deliver(sip("INFO", "d2", body=b"hello"), "d2")
    [pending] = tx.fired
    room = run.view.get(keys.name("room-7"))[1].decode()  # type: ignore[union-attr]
    assert pending.activity == room
    assert keys.pending_event(room, pending.id) in tx.writes  # journaled in the same commit
    relay = run.deliver(MessageEvent(b"hello", "text/plain", sender=_sbb_of(run, "d2")), room)
    [request] = relay.messages
    assert isinstance(request, bus.SendRequest)
    journal = request.outgoing
    assert request == bus.SendRequest("d1", "INFO", "text/plain", b"hello", _sbb_of(run, "d1"), outgoing=journal)
    # The request is journaled with the delivery (no text lost if the node dies before its
    # RA sends it), under a key of the dialog, holding this very request.
    assert journal.startswith("out/d1/")
    raw = relay.writes[journal]
    assert raw is not None
    outgoing = decode(raw, Outgoing)
    assert bus.decode(outgoing.request) == request


def _sbb_of(run: Run, dialog: str) -> str:
    return run.view.get(keys.convergence("chat", dialog))[1].decode()  # type: ignore[union-attr]


def test_last_bye_unbinds_the_room_and_ends_everything() -> None:
    run = Run()
    run.deliver(sip("INVITE", "d1", created=True), "d1")
    run.deliver(sip("INVITE", "d2", created=True), "d2")
    run.deliver(sip("BYE", "d1"), "d1")
    assert run.view.scan("name/") != []
    tx = run.deliver(sip("BYE", "d2"), "d2")
    assert run.view.data == {}
    assert bus.SendResponse("tx-BYE-d2", 200) in tx.messages


def test_last_bye_guards_the_empty_range_against_a_concurrent_join() -> None:
    run = Run()
    run.deliver(sip("INVITE", "d1", created=True), "d1")
    tx = run.deliver(sip("BYE", "d1"), "d1")
    assert any(p.startswith("att/") for p in tx.prefix_reads)


def stale_reads(view: DictView, tx: Transaction) -> list[str]:
    """What the primary's version check would reject (the store's rule, on a dict)."""
    stale = [k for k, v in tx.reads.items() if view.get(k)[0] != v]
    for prefix, (count, top) in tx.prefix_reads.items():
        found = view.scan(prefix)
        if (len(found), max((v for _, v, _ in found), default=0)) != (count, top):
            stale.append(prefix)
    return stale


def test_two_last_participants_leaving_at_once_still_end_the_room() -> None:
    """Both BYEs run on the same snapshot; each sees the other. Under last-write-wins
    both would commit and the room's name would stay bound forever."""
    run = Run()
    run.deliver(sip("INVITE", "d1", created=True), "d1")
    run.deliver(sip("INVITE", "d2", created=True), "d2")
    first, second = Transaction(run.view, "node-1"), Transaction(run.view, "node-2")
    run.container.deliver(first, sip("BYE", "d1"), "d1")
    run.container.deliver(second, sip("BYE", "d2"), "d2")
    assert keys.name("room-7") not in first.writes and keys.name("room-7") not in second.writes
    run.view.apply(first, 10)  # the primary takes the first commit...
    assert stale_reads(run.view, second)  # ...and rejects the second, which re-runs
    run.deliver(sip("BYE", "d2"), "d2")
    assert run.view.data == {}


def test_join_and_leave_of_others_do_not_conflict_in_a_busy_room() -> None:
    run = Run()
    for d in ("d1", "d2", "d3"):
        run.deliver(sip("INVITE", d, created=True), d)
    leave, join = Transaction(run.view, "node-1"), Transaction(run.view, "node-2")
    run.container.deliver(leave, sip("BYE", "d3"), "d3")
    run.container.deliver(join, sip("INVITE", "d4", created=True), "d4")
    run.view.apply(join, 10)
    assert stale_reads(run.view, leave) == []


def test_lookup_of_stale_name_reports_it_and_raises() -> None:
    run = Run()
    run.view.data[keys.name("ghost")] = (1, b"n-gone")

    class Looker(Sbb):
        @on(SipRequest, method="OPTIONS", initial_by=lambda e: e.activity)
        def look(self, event: SipRequest, ctx) -> None:  # type: ignore[no-untyped-def]
            ctx.lookup("ghost")

    container = Container("node-1", [Service("look", Looker)])
    tx = Transaction(run.view, "node-1")
    with pytest.raises(HandlerFailed) as failure:
        container.deliver(tx, sip("OPTIONS", "t1"), "t1")
    assert isinstance(failure.value.error, FacilityError)
    assert container.stale_names == ["ghost"]


def test_unhandled_options_is_200_and_unhandled_register_is_405() -> None:
    run = Run()
    assert run.deliver(sip("OPTIONS", "t1"), "t1").messages == [bus.SendResponse("tx-OPTIONS-t1", 200)]
    assert run.deliver(sip("REGISTER", "t2"), "t2").messages == [bus.SendResponse("tx-REGISTER-t2", 405)]


def test_room_name_is_the_request_uri_user_unescaped_once() -> None:
    assert sip("INVITE", "d1", room="room%2D7").user == "room-7"
    assert sip("INVITE", "d1", room="a%2541").user == "a%41"  # not recursively


# --- JAIN SLEE rules, one test each ------------------------------------------------


class Probe(msgspec.Struct, frozen=True):
    n: int = 0


class Log(msgspec.Struct):
    seen: list[str] = []


def probe_service(name: str, priority: int = 0, fail: bool = False, mask: tuple[str, ...] = ()) -> type[Sbb]:
    """A root SBB that records what it is given (initial for OPTIONS, per transaction)."""

    class ProbeSbb(Sbb):
        State = Log

        @on(SipRequest, method="OPTIONS", initial_by=lambda e: e.activity)
        def on_options(self, event: SipRequest, ctx) -> None:  # type: ignore[no-untyped-def]
            ctx.respond(event, 200)
            if mask:
                ctx.mask_event(event.activity, mask)

        @on(Probe)
        def on_probe(self, event: Probe, ctx) -> None:  # type: ignore[no-untyped-def]
            self.state.seen.append(f"{name}:{event.n}")
            ORDER.append(name)
            if fail:
                raise RuntimeError("boom")

        @on(ActivityEndEvent)
        def on_end(self, event: ActivityEndEvent, ctx) -> None:  # type: ignore[no-untyped-def]
            ORDER.append(f"{name}:end")

        def removed(self, ctx) -> None:  # type: ignore[no-untyped-def]
            ORDER.append(f"{name}:removed")

        def rolled_back(self, ctx, error) -> None:  # type: ignore[no-untyped-def]
            ORDER.append(f"{name}:rolled_back:{error}")

    ProbeSbb.priority = priority
    return ProbeSbb


ORDER: list[str] = []


def null_with(run: Run, *names: str) -> tuple[Container, str]:
    """A null activity with one entity of each named probe service attached."""
    services = [Service(n, probe_service(n, priority=int(p))) for n, p in (n.split("/") for n in names)]
    container = Container("node-1", services)
    tx = Transaction(run.view, "node-1")
    activity = "n-test"
    tx.put(keys.activity(activity), encode(ActivityRecord(activity, "null", "node-1")))
    tx.put(keys.name("keep"), activity.encode())
    tx.put(keys.activity_name(activity, "keep"), b"")
    run.view.apply(tx, 1)
    for i, service in enumerate(services):
        tx = Transaction(run.view, "node-1")
        container.deliver(tx, sip("OPTIONS", f"t{i}"), f"t{i}")
        sbb_id = tx.get(keys.convergence(service.name, f"t{i}")).decode()  # type: ignore[union-attr]
        container.attach(tx, activity, sbb_id)
        run.view.apply(tx, 2 + i)
    return container, activity


def test_attached_sbbs_are_served_by_priority() -> None:
    run = Run()
    container, activity = null_with(run, "low/1", "high/9", "mid/5")
    ORDER.clear()
    container.deliver(Transaction(run.view, "node-1"), Probe(1), activity)
    assert ORDER == ["high", "mid", "low"]


def test_an_exception_rolls_back_and_the_rolled_back_hook_runs_in_a_new_transaction() -> None:
    run = Run()
    container = Container("node-1", [Service("bad", probe_service("bad", fail=True))])
    tx = Transaction(run.view, "node-1")
    container.deliver(tx, sip("OPTIONS", "t1"), "t1")
    run.view.apply(tx, 1)
    ORDER.clear()
    failing = Transaction(run.view, "node-1")
    with pytest.raises(HandlerFailed) as failure:
        container.deliver(failing, Probe(1), "t1")
    again = Transaction(run.view, "node-1")
    container.roll_back(again, failure.value, "t1")
    assert ORDER == ["bad", "bad:rolled_back:boom"]
    assert failing.fired == [] and again is not failing


def test_event_mask_keeps_masked_events_from_an_attachment() -> None:
    run = Run()
    container = Container("node-1", [Service("deaf", probe_service("deaf", mask=("Probe",)))])
    tx = Transaction(run.view, "node-1")
    container.deliver(tx, sip("OPTIONS", "t1"), "t1")
    run.view.apply(tx, 1)
    ORDER.clear()
    outcome = container.deliver(Transaction(run.view, "node-1"), Probe(1), "t1")
    assert ORDER == [] and outcome.delivered_to == []


def test_ending_an_activity_delivers_the_end_event_then_detaches_and_removes_orphans() -> None:
    run = Run()
    container, activity = null_with(run, "a/0")
    ORDER.clear()
    tx = Transaction(run.view, "node-1")
    container.deliver(tx, sip("BYE", "t0"), "t0")  # its other activity ends too (BYE)
    container.end_activity(tx, activity)
    container._collect_garbage(tx)
    assert ORDER == ["a:end", "a:removed"]  # end event first, then the orphan goes
    run.view.apply(tx, 10)
    assert run.view.scan(keys.attachments_of(activity)) == [] and run.view.scan("name/") == []


def test_an_ending_activity_refuses_new_events() -> None:
    run = Run()
    container, activity = null_with(run, "a/0")
    tx = Transaction(run.view, "node-1")
    container.ending = {activity}
    context = Context(tx, "s", activity, container, container.services[0])
    with pytest.raises(ActivityEnding):
        context.fire(activity, Probe(1))


def test_a_null_activity_lives_while_a_timer_or_a_name_references_it() -> None:
    run = Run()
    container, activity = null_with(run, "a/0")
    sbb = keys.last(run.view.scan(keys.attachments_of(activity))[0][0])
    tx = Transaction(run.view, "node-1")
    context = Context(tx, sbb, activity, container, container.services[0])
    context.set_timer(activity, 5.0)
    context.unbind("keep")
    container.detach(tx, activity, sbb)
    container.touched = {activity}
    container._collect_garbage(tx)
    assert tx.get(keys.activity(activity)) is not None  # the timer keeps it alive


def test_naming_errors() -> None:
    run = Run()
    container, activity = null_with(run, "a/0")
    context = Context(Transaction(run.view, "node-1"), "s", activity, container, container.services[0])
    with pytest.raises(NameAlreadyBound):
        context.bind("keep", activity)
    with pytest.raises(NameNotBound):
        context.unbind("nobody")
    assert context.lookup("nobody") is None


def test_periodic_timer_missed_policies() -> None:
    timer = TimerRecord("t", "a", fire_at=10.0, owner="n", period=1.0, repetitions=0, missed="all")
    assert timer_expiries(timer, 9.0) == (0, timer)
    count, after = timer_expiries(timer, 13.5)  # 10, 11, 12, 13 are due
    assert count == 4 and after is not None and after.fire_at == 14.0
    assert timer_expiries(msgspec.structs.replace(timer, missed="last"), 13.5)[0] == 1
    assert timer_expiries(msgspec.structs.replace(timer, missed="none"), 13.5)[0] == 0
    assert timer_expiries(msgspec.structs.replace(timer, missed="none"), 10.2)[0] == 1
    limited = msgspec.structs.replace(timer, repetitions=3)
    assert timer_expiries(limited, 13.5) == (3, None)
    assert timer_expiries(TimerRecord("t", "a", 10.0, "n"), 10.0) == (1, None)


def test_lookup_of_stale_name_unbinds_it_even_when_the_handler_carries_on() -> None:
    run = Run()
    run.view.data[keys.name("ghost")] = (1, b"n-gone")

    class Tolerant(Sbb):
        @on(SipRequest, method="OPTIONS", initial_by=lambda e: e.activity)
        def look(self, event: SipRequest, ctx) -> None:  # type: ignore[no-untyped-def]
            try:
                ctx.lookup("ghost")
            except FacilityError:
                pass
            ctx.respond(event, 200)

    container = Container("node-1", [Service("tolerant", Tolerant)])
    tx = Transaction(run.view, "node-1")
    container.deliver(tx, sip("OPTIONS", "t1"), "t1")
    assert tx.writes[keys.name("ghost")] is None


def test_ending_a_dialog_without_bye_takes_its_participant_out_of_the_room() -> None:
    run = Run()
    run.deliver(sip("INVITE", "d1", created=True), "d1")
    tx = Transaction(run.view, "node-1")
    run.container.end(tx, "d1")
    run.view.apply(tx, 9)
    assert run.view.data == {}  # dialog, entity, room and its name: all gone


def test_a_relay_consumed_while_the_last_participant_leaves_still_ends_the_room() -> None:
    """The last BYE and the delivery of the room's last journaled event run on one
    snapshot: the BYE sees the event and keeps the room, the delivery sees the name and
    keeps it too. Unless the BYE's "still referenced" rests on a checked read, both
    commit and nothing ever ends the room (seen in test_kills after a store kill)."""
    run = Run()
    run.deliver(sip("INVITE", "d1", created=True), "d1")
    run.deliver(sip("INVITE", "d2", created=True), "d2")
    [pending] = run.deliver(sip("INFO", "d2", body=b"hi"), "d2").fired
    run.deliver(sip("BYE", "d2"), "d2")
    room = pending.activity
    relay, leave = Transaction(run.view, "node-1"), Transaction(run.view, "node-2")
    relay.delete(keys.pending_event(room, pending.id))  # the shell's journal dedup
    run.container.deliver(relay, MessageEvent(b"hi", "text/plain", sender="gone"), room)
    run.container.deliver(leave, sip("BYE", "d1"), "d1")
    assert keys.activity(room) not in leave.writes  # the journaled event still holds it
    run.view.apply(relay, 20)
    assert stale_reads(run.view, leave)  # the primary rejects the leave, which re-runs...
    run.deliver(sip("BYE", "d1"), "d1")
    assert run.view.get(keys.activity(room)) == (0, None)  # ...and ends the room
    assert run.view.scan("name/") == run.view.scan("att/") == []


def test_a_request_delivered_again_after_another_node_answered_it_is_answered_not_run() -> None:
    """A node re-runs a delivery whose commit met a dying store; the UA's retransmission
    was meanwhile served by another node, and the dialog moved on. The re-run must not
    relay the chat line twice."""
    run = Run()
    run.deliver(sip("INVITE", "d1", created=True), "d1")
    run.deliver(sip("INVITE", "d2", created=True), "d2")
    assert run.deliver(sip("INFO", "d1", body=b"once", cseq=2), "d1").fired
    again = run.deliver(sip("INFO", "d1", body=b"once", cseq=2), "d1")
    assert (again.fired, again.writes, again.messages) == ([], {}, [bus.SendResponse("tx-INFO-d1", 200)])
    run.deliver(sip("INFO", "d1", body=b"next", cseq=3), "d1")
    late = run.deliver(sip("INFO", "d1", body=b"once", cseq=2), "d1")
    assert (late.fired, late.writes) == ([], {})
    assert late.messages == [bus.SendResponse("tx-INFO-d1", 500, "CSeq out of order")]
    # ACK and CANCEL share their INVITE's CSeq: never taken for a duplicate.
    assert not run.container._answered_already(Transaction(run.view, "node-1"), sip("ACK", "d1", cseq=3))


# --- service code is contained (a bad SBB is its own failure, never the node's) ----------


class Boom(RuntimeError):
    pass


def hostile_service(where: str) -> type[Sbb]:
    """A root SBB (initial for OPTIONS) whose code raises in `where`."""

    def select(event: SipRequest) -> str:
        if where == "initial_by":
            raise Boom("selector")
        return event.activity

    class State(msgspec.Struct):
        n: int = 0

        def __post_init__(self) -> None:
            if where == "state":
                raise Boom("state")

    class HostileSbb(Sbb):
        @on(SipRequest, method="OPTIONS", initial_by=select)
        def on_options(self, event: SipRequest, ctx) -> None:  # type: ignore[no-untyped-def]
            if where == "handler" and event.cseq == 3:  # the entity exists by then
                ctx.respond(event, 202)
                raise Boom("handler")
            if where == "unencodable":
                self.state.n = object()  # type: ignore[assignment]
            ctx.respond(event, 200)

        def created(self, ctx) -> None:  # type: ignore[no-untyped-def]
            if where == "created":
                raise Boom("created")

        def rolled_back(self, ctx, error) -> None:  # type: ignore[no-untyped-def]
            ORDER.append(f"rolled_back:{error}")
            if where == "handler":
                ctx.respond(sip("OPTIONS", "t1"), 299)  # an effect of the failing hook...
                raise Boom("rolled_back too")

    HostileSbb.State = State
    return HostileSbb


@pytest.mark.parametrize("where", ["initial_by", "created", "state", "unencodable"])
def test_service_code_failing_before_an_entity_exists_leaves_none_and_calls_no_hook(where: str) -> None:
    run = Run()
    container = Container("node-1", [Service("hostile", hostile_service(where))])
    tx = Transaction(run.view, "node-1")
    with pytest.raises(HandlerFailed) as failure:
        container.deliver(tx, sip("OPTIONS", "t1"), "t1")
    assert isinstance(failure.value.error, Boom | TypeError) and failure.value.service == "hostile"
    assert not failure.value.hook
    ORDER.clear()
    again = Transaction(run.view, "node-1")
    container.roll_back(again, failure.value, "t1")
    assert ORDER == [] and again.writes == {} and run.view.data == {}


def test_a_failing_rolled_back_hook_goes_no_further_and_its_effects_go() -> None:
    run = Run()
    container = Container("node-1", [Service("hostile", hostile_service("handler"))])
    tx = Transaction(run.view, "node-1")
    container.deliver(tx, sip("OPTIONS", "t1", cseq=2), "t1")
    run.view.apply(tx, 1)  # the entity exists
    failing = Transaction(run.view, "node-1")
    with pytest.raises(HandlerFailed) as failure:
        container.deliver(failing, sip("OPTIONS", "t1", cseq=3), "t1")
    assert failure.value.hook
    ORDER.clear()
    again = Transaction(run.view, "node-1")
    container.roll_back(again, failure.value, "t1")  # raises nothing
    assert [str(f.error) for f in container.hook_failures] == ["rolled_back too"]
    assert again.messages == []  # the hook's 299 went with it


class CountingView(DictView):
    """Counts the entries each range read returns."""

    def __init__(self, data: dict[str, tuple[int, bytes]]) -> None:
        super().__init__(data)
        self.entries_read = 0

    def scan(self, prefix: str, limit: int = 1_000_000) -> list[tuple[str, int, bytes]]:
        found = super().scan(prefix, limit)
        self.entries_read += len(found)
        return found


def test_the_last_one_out_check_of_a_busy_room_reads_a_few_entries_not_every_member() -> None:
    """Issue 22, "no slowdown with history": a leave read the whole attachment range, so
    a room whose members piled up (leaked ones included) made every call cost more."""
    members = {keys.attachment("room", f"sbb-{i:05d}"): (1, b"") for i in range(10_000)}
    view = CountingView(members)
    tx = Transaction(view, "node-1")
    tx.delete(keys.attachment("room", "sbb-00000"))  # the first member in key order leaves
    assert tx.holds_any(keys.attachments_of("room"))
    assert view.entries_read <= 2
    assert keys.attachment("room", "sbb-00001") in tx.reads  # "yes" rests on a key read
    # The last one out: nothing left under the range, decided with the range guarded.
    alone = CountingView({keys.attachment("hall", "sbb-1"): (3, b"")})
    last = Transaction(alone, "node-1")
    last.delete(keys.attachment("hall", "sbb-1"))
    assert not last.holds_any(keys.attachments_of("hall"))
    assert keys.attachments_of("hall") in last.prefix_reads
