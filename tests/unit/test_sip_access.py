"""Full SIP access for SBBs: any header read (compact forms, multi-valued), extra
headers on what they send (never those the RA writes, never a line break), requests
outside a dialog, provisional responses and CANCEL of our own INVITE (RA core)."""

from __future__ import annotations

import pytest

from router.b2b import B2bTarget, target_of
from router.context import checked_headers
from router.sbb import FacilityError, SipRequest, SipResponse
from sip_ra.dialog import uac_dialog
from tests.unit.test_ra_core import core, invite, out
from zeroslee import bus, keys
from zeroslee.sipmsg import SipMessage

UA = ("127.0.0.1", 6000)
FRONT_ADDR = ("127.0.0.1", 5060)


def test_a_request_event_carries_its_headers_and_reads_any_one_by_any_name() -> None:
    ra = core()
    data = invite().replace(b"Content-Length: 0", b"X-Account: 42\r\nX-Account: 43\r\nk: timer, 100rel\r\nl: 0")
    event = ra.receive_datagram(data, UA, 0.0).event
    assert isinstance(event, bus.RequestReceived)
    request = SipRequest(**{f: getattr(event, f) for f in event.__struct_fields__})
    assert request.header("call-id") == request.header("i") == "c1"
    assert request.header_values("X-Account") == ["42", "43"]
    assert request.header_values("Supported") == ["timer", "100rel"]  # compact form, comma list split
    assert request.header("Record-Route") == "<sip:127.0.0.1:5060;lr;zsnode=node-1>"
    assert request.header("Nope") is None and "X-Account" in request.header_names()


def test_a_made_up_response_reads_no_headers_rather_than_failing() -> None:
    assert SipResponse("d1", "INVITE", 408, "c1").header("To") is None


@pytest.mark.parametrize(
    "header",
    [("Via", "SIP/2.0/UDP evil"), ("call-id", "x"), ("i", "x"), ("X-A", "one\r\nVia: injected"), ("Bad Name", "v")],
)
def test_an_extra_header_may_not_set_what_the_ra_writes_nor_inject_a_line(header: tuple[str, str]) -> None:
    with pytest.raises(FacilityError):
        checked_headers([header])


def test_reason_warning_and_x_headers_are_a_services_to_add() -> None:
    extra = [("Reason", 'SIP;cause=200;text="done"'), ("Warning", '399 zs "x"'), ("X-Trace", "7")]
    assert checked_headers(extra) == extra


def uac_invite(ra: object, method: str = "INVITE", standalone: bool = False) -> SipMessage:
    dialog = uac_dialog("d1", "sip:svc@z", "sip:uas@127.0.0.1:6800", "node-1", "<sip:f>", "127.0.0.1:5060", "z")
    sent = ra.send_in_dialog(dialog, method, b"", "", 0.0, [("X-Leg", "b")], standalone)  # type: ignore[attr-defined]
    ra.datagrams_to_send()  # type: ignore[attr-defined]
    return sent  # type: ignore[no-any-return]


def reply(sent: SipMessage, status: int, reason: str, tag: str = "callee") -> bytes:
    msg = SipMessage(status=status, reason=reason, headers=[(k, v) for k, v in sent.headers if k != "Route"])
    msg.set("To", f"{sent.get('To')};tag={tag}")
    return msg.to_bytes()


def test_extra_headers_go_out_with_a_request_and_the_ra_keeps_its_own() -> None:
    ra = core()
    sent = uac_invite(ra)
    assert sent.get("X-Leg") == "b" and sent.get_all("Via")[0].startswith("SIP/2.0/UDP 127.0.0.1:5071")


def test_a_provisional_response_to_our_invite_reaches_the_service_a_100_does_not() -> None:
    ra = core()
    sent = uac_invite(ra)
    assert ra.receive_datagram(reply(sent, 100, "Trying"), FRONT_ADDR, 0.1).event is None
    ringing = ra.receive_datagram(reply(sent, 180, "Ringing"), FRONT_ADDR, 0.2).event
    assert isinstance(ringing, bus.ResponseReceived)
    assert (ringing.dialog, ringing.status, ringing.reason, ringing.ends_activity) == ("d1", 180, "Ringing", False)
    assert b"180 Ringing" in ringing.headers


def test_cancel_of_our_ringing_invite_sends_cancel_then_the_487_comes_to_the_service() -> None:
    ra = core()
    sent = uac_invite(ra)
    assert ra.cancel("d1", 0.05, [("Reason", "SIP;cause=487")])  # before any 1xx: held (§9.1)
    assert out(ra) == []
    ra.receive_datagram(reply(sent, 180, "Ringing"), FRONT_ADDR, 0.1)
    [cancel] = out(ra)
    assert cancel.method == "CANCEL" and cancel.get("Reason") == "SIP;cause=487"
    assert cancel.get_all("Via") == sent.get_all("Via")[:1] and cancel.cseq == (1, "CANCEL")
    terminated = ra.receive_datagram(reply(sent, 487, "Request Terminated"), FRONT_ADDR, 0.2).event
    assert isinstance(terminated, bus.ResponseReceived) and terminated.status == 487
    assert ra.cancel("d1", 0.3) is False  # nothing left to cancel


def test_the_final_answer_to_a_request_outside_a_dialog_ends_its_activity() -> None:
    ra = core()
    sent = uac_invite(ra, "MESSAGE", standalone=True)
    assert sent.method == "MESSAGE" and "tag=" not in (sent.get("To") or "")
    done = ra.receive_datagram(reply(sent, 202, "Accepted"), FRONT_ADDR, 0.1).event
    assert isinstance(done, bus.ResponseReceived) and done.ends_activity and done.status == 202


def test_a_request_outside_a_dialog_that_times_out_ends_its_activity_too() -> None:
    ra = core()
    uac_invite(ra, "OPTIONS", standalone=True)
    timeouts = ra.on_timer(64 * 0.5 + 1)
    assert [(t.status, t.ends_activity) for t in timeouts] == [(408, True)]


def test_b2b_targets_only_the_test_clients_range_unless_a_profile_row_says() -> None:
    assert target_of("b2b-6800", "6000-6999", None) == "sip:uas@127.0.0.1:6800"
    assert target_of("b2b-5060", "6000-6999", None) is None  # the cluster's own ports: no loop
    assert target_of("b2b-7000", "6000-6999", None) is None
    assert target_of("b2b-68x", "6000-6999", None) is None and target_of("alice", "6000-6999", None) is None
    assert target_of("alice", "6000-6999", B2bTarget("sip:alice@10.0.0.5")) == "sip:alice@10.0.0.5"


def survivor_of(sent_by: object) -> tuple[object, SipMessage]:
    """node-1 sent the B leg's INVITE (its dialog replicated first), then died; node-2's
    RA, reading the same store, gets the callee's answers."""
    dialog = uac_dialog(
        keys.sip_dialog_id("b1@zeroslee", "ourtag"), "sip:a@z", "sip:uas@127.0.0.1:6800", "node-1",
        "<sip:f>", "127.0.0.1:5060", "z", "b1@zeroslee", "ourtag",
    )  # fmt: skip
    sent = sent_by.send_in_dialog(dialog, "INVITE", b"", "", 0.0)  # type: ignore[attr-defined]
    return core({keys.dialog(dialog.id): dialog.encode()}, node="node-2"), sent


def test_a_survivor_adopts_the_callee_s_2xx_to_a_dead_node_s_invite_and_acks_each_copy() -> None:
    survivor, sent = survivor_of(core())
    ok = reply(sent, 200, "OK").replace(b"Content-Length: 0", b"Contact: <sip:uas@127.0.0.1:6800>\r\nContent-Length: 0")
    first = survivor.receive_datagram(ok, FRONT_ADDR, 1.0)  # type: ignore[attr-defined]
    assert isinstance(first.event, bus.ResponseReceived) and first.event.status == 200
    assert first.new_dialog is not None and first.new_dialog.remote_tag == "callee"
    [ack] = out(survivor)  # type: ignore[arg-type]
    assert ack.method == "ACK" and ack.cseq == (1, "ACK")
    again = survivor.receive_datagram(ok, FRONT_ADDR, 1.5)  # type: ignore[attr-defined]
    assert again.event is None and [m.method for m in out(survivor)] == ["ACK"]  # type: ignore[arg-type]


def test_a_survivor_acks_a_failure_to_a_dead_node_s_invite_hop_by_hop_and_tells_it_once() -> None:
    survivor, sent = survivor_of(core())
    busy = reply(sent, 486, "Busy Here")
    first = survivor.receive_datagram(busy, FRONT_ADDR, 1.0)  # type: ignore[attr-defined]
    assert isinstance(first.event, bus.ResponseReceived) and first.event.status == 486
    [ack] = out(survivor)  # type: ignore[arg-type]
    assert ack.method == "ACK" and ack.get_all("Via") == sent.get_all("Via")[:1]  # the INVITE's branch
    assert survivor.receive_datagram(busy, FRONT_ADDR, 1.5).event is None  # type: ignore[attr-defined]


def test_a_response_matching_no_transaction_nor_dialog_is_dropped() -> None:
    ra = core()
    stray = SipMessage(status=200, reason="OK")
    stray.headers = [("Via", "SIP/2.0/UDP 127.0.0.1:5071;branch=z9hG4bKgone"), ("From", "<sip:a@z>;tag=nobody")]
    stray.headers += [("To", "<sip:b@z>;tag=x"), ("Call-ID", "unknown"), ("CSeq", "1 INVITE")]
    assert ra.receive_datagram(stray.to_bytes(), FRONT_ADDR, 0.0).event is None
    assert ra.counters["sip.response_unmatched"] == 1
