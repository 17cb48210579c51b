"""The B2BUA service (router/b2b.py) on the pure container: one entity on both legs, the
relays of each flow, and a request within a dialog being no initial event."""

from __future__ import annotations

import msgspec

from router.b2b import B2bSbb
from router.chat import ChatSbb
from router.container import Container, Service
from router.records import SbbRecord, Transaction, decode
from router.sbb import SipResponse
from tests.unit.test_container import DictView, sip
from zeroslee import bus, keys


class Call:
    def __init__(self) -> None:
        self.view = DictView()
        chat = Service("chat", ChatSbb, {"users": "^(?!b2b-)"})
        self.container = Container("node-1", [chat, Service("b2b", B2bSbb, {"users": "^b2b-"})])
        self.seq = 0

    def run(self, event: msgspec.Struct, activity: str) -> list[bus.Message]:
        tx = Transaction(self.view, "node-1")
        self.container.deliver(tx, event, activity)
        self.seq += 1
        self.view.apply(tx, self.seq)
        return tx.messages

    def entities(self) -> list[SbbRecord]:
        return [decode(v, SbbRecord) for k, (_, v) in self.view.data.items() if k.startswith("sbb/")]

    def activities(self) -> list[str]:
        return sorted(keys.last(k) for k in self.view.data if k.startswith("aci/"))


def placed() -> tuple[Call, str]:
    """The caller's INVITE to b2b-6800 on dialog A: the callee's leg B, called."""
    call = Call()
    out = call.run(sip("INVITE", "A", b"v=0 offer", room="b2b-6800", created=True), "A")
    (invite,) = [m for m in out if isinstance(m, bus.SendRequest)]
    assert (invite.method, invite.to_uri, invite.body) == ("INVITE", "sip:uas@127.0.0.1:6800", b"v=0 offer")
    assert [(m.status) for m in out if isinstance(m, bus.SendResponse)] == [100]
    return call, invite.dialog


def responses(out: list[bus.Message]) -> list[tuple[int, bytes]]:
    return [(m.status, m.body) for m in out if isinstance(m, bus.SendResponse)]


def test_both_legs_belong_to_one_entity() -> None:
    call, b = placed()
    (entity,) = call.entities()
    assert keys.attachment("A", entity.id) in call.view.data and keys.attachment(b, entity.id) in call.view.data


def test_the_callee_s_ringing_and_answer_reach_the_caller_with_its_sdp() -> None:
    call, b = placed()
    assert responses(call.run(SipResponse(b, "INVITE", 180, "cb", reason="Ringing"), b)) == [(180, b"")]
    answer = SipResponse(b, "INVITE", 200, "cb", "application/sdp", b"v=0 answer")
    assert responses(call.run(answer, b)) == [(200, b"v=0 answer")]


def test_a_failed_call_is_relayed_and_leaves_nothing() -> None:
    call, b = placed()
    assert responses(call.run(SipResponse(b, "INVITE", 486, "cb", reason="Busy Here"), b)) == [(486, b"")]
    assert call.entities() == [] and call.activities() == []


def test_info_and_reinvite_wait_for_the_other_side_s_answer() -> None:
    call, b = placed()
    call.run(SipResponse(b, "INVITE", 200, "cb"), b)
    out = call.run(sip("INFO", "A", b"hello", room="b2b-6800", cseq=2), "A")
    assert [(m.method, m.body) for m in out if isinstance(m, bus.SendRequest)] == [("INFO", b"hello")]
    assert responses(out) == []  # deferred: no default 500
    assert responses(call.run(SipResponse(b, "INFO", 200, "cb"), b)) == [(200, b"")]
    reinvite = call.run(sip("INVITE", "A", b"v=0 again", room="b2b-6800", cseq=3), "A")
    assert [m.method for m in reinvite if isinstance(m, bus.SendRequest)] == ["INVITE"]
    assert len(call.entities()) == 1  # a re-INVITE is no initial event: no second entity (nor a chat one)


def test_a_second_reinvite_while_one_is_relayed_is_glare() -> None:
    call, b = placed()
    call.run(SipResponse(b, "INVITE", 200, "cb"), b)
    call.run(sip("INVITE", "A", room="b2b-6800", cseq=3), "A")
    second = call.run(sip("INVITE", "A", room="b2b-6800", cseq=4), "A")
    assert [m.status for m in second if isinstance(m, bus.SendResponse)] == [491]


def test_a_hang_up_on_either_side_is_answered_and_passed_on() -> None:
    call, b = placed()
    call.run(SipResponse(b, "INVITE", 200, "cb"), b)
    bye = sip("BYE", b, room="b2b-6800", cseq=5)
    out = call.run(bye, b)
    assert [m.method for m in out if isinstance(m, bus.SendRequest)] == ["BYE"]  # on A
    assert responses(out) == [(200, b"")]
    call.run(SipResponse("A", "BYE", 200, "ca"), "A")
    assert call.entities() == [] and call.activities() == []


def test_cancel_while_ringing_cancels_the_callee_and_its_487_ends_it() -> None:
    call, b = placed()
    call.run(SipResponse(b, "INVITE", 180, "cb"), b)
    out = call.run(sip("CANCEL", "A", room="b2b-6800"), "A")
    assert [m.method for m in out if isinstance(m, bus.SendRequest)] == ["CANCEL"]
    assert responses(call.run(SipResponse(b, "INVITE", 487, "cb"), b)) == []  # the RA answered the caller 487
    assert call.entities() == [] and call.activities() == []


def test_an_answer_racing_the_cancel_is_hung_up() -> None:
    call, b = placed()
    call.run(sip("CANCEL", "A", room="b2b-6800"), "A")
    out = call.run(SipResponse(b, "INVITE", 200, "cb"), b)
    assert [m.method for m in out if isinstance(m, bus.SendRequest)] == ["BYE"] and responses(out) == []


def test_a_copy_of_the_caller_s_invite_a_survivor_gets_takes_the_callee_s_answer() -> None:
    """node-1 died with the caller's INVITE unanswered; the balancer sent it on (a new
    transaction on node-2): the callee's answer, adopted there, goes to that copy."""
    call, b = placed()
    copy = msgspec.structs.replace(sip("INVITE", "A", room="b2b-6800", created=True), tx="tx-on-node-2")
    assert responses(call.run(copy, "A")) == [(100, b"")]
    out = call.run(SipResponse(b, "INVITE", 200, "cb", "application/sdp", b"v=0 answer"), b)
    assert [(m.tx, m.status, m.body) for m in out if isinstance(m, bus.SendResponse)] == [
        ("tx-on-node-2", 200, b"v=0 answer")
    ]
    late = msgspec.structs.replace(copy, tx="tx-later")  # another copy after the answer: the same answer
    assert responses(call.run(late, "A")) == [(200, b"v=0 answer")]
    assert len(call.entities()) == 1
