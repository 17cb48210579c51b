"""The SIP RA core: datagrams in, datagrams and events out, `now` set by hand."""

from __future__ import annotations

import msgspec

from sip_ra.core import RaCore
from sip_ra.dialog import Dialog, uac_dialog
from zeroslee import bus, keys
from zeroslee.config import SipTimers
from zeroslee.records import ServerResponse
from zeroslee.sipmsg import SipMessage, parse, parse_name_addr

UA = ("127.0.0.1", 6000)
FRONT = "<sip:127.0.0.1:5060;lr;zsnode=node-1>"


def core(stored: dict[str, bytes] | None = None, node: str = "node-1") -> RaCore:
    """An RA core reading the clustered store from `stored` (key -> record bytes)."""
    known = stored if stored is not None else {}
    return RaCore(node, "127.0.0.1:5071", SipTimers(), known.get)


def invite(call_id: str = "c1", branch: str = "z9hG4bK1", to_tag: str = "", cseq: int = 1) -> bytes:
    return (
        f"INVITE sip:room@127.0.0.1:5071 SIP/2.0\r\n"
        f"Via: SIP/2.0/UDP 127.0.0.1:6000;branch={branch};rport\r\n"
        f"Record-Route: {FRONT}\r\n"
        f"From: <sip:ua@x>;tag=ua\r\nTo: <sip:room@x>{';tag=' + to_tag if to_tag else ''}\r\n"
        f"Call-ID: {call_id}\r\nCSeq: {cseq} INVITE\r\nContact: <sip:ua@127.0.0.1:6000>\r\n"
        "Content-Length: 0\r\n\r\n"
    ).encode()


def out(ra: RaCore) -> list[SipMessage]:
    return [parse(d) for d, _ in ra.datagrams_to_send()]


def answered_invite(ra: RaCore) -> tuple[str, Dialog]:
    outcome = ra.receive_datagram(invite(), UA, 0.0)
    assert outcome.event is not None and outcome.new_dialog is not None
    ra.respond(outcome.event.tx, 200, "", 0.05)  # type: ignore[union-attr]
    return outcome.event.tx, outcome.new_dialog  # type: ignore[union-attr]


def test_new_invite_creates_a_dialog_from_its_record_route_and_contact() -> None:
    ra = core()
    outcome = ra.receive_datagram(invite(), UA, 0.0)
    dialog = outcome.new_dialog
    assert dialog is not None and outcome.event is not None
    assert dialog.route_set == [FRONT] and dialog.remote_target == "sip:ua@127.0.0.1:6000"
    assert outcome.event.activity == dialog.id and outcome.event.created_dialog


def test_100_trying_only_when_the_tu_is_slower_than_200_ms() -> None:
    ra = core()
    ra.receive_datagram(invite(), UA, 0.0)
    assert ra.deadline() == 0.2
    ra.on_timer(0.2)
    assert [m.status for m in out(ra)] == [100]
    fast = core()
    tx, _ = answered_invite(fast)
    fast.on_timer(0.2)
    assert [m.status for m in out(fast)] == [200]


def test_2xx_is_retransmitted_until_the_ack_then_stops() -> None:
    ra = core()
    _, dialog = answered_invite(ra)
    out(ra)
    ra.on_timer(0.55)
    assert [m.status for m in out(ra)] == [200]
    ack = invite(to_tag=dialog.local_tag).replace(b"INVITE sip", b"ACK sip").replace(b"1 INVITE", b"1 ACK")
    ra.receive_datagram(ack, UA, 0.6)
    ra.on_timer(10.0)
    assert out(ra) == []


def test_retransmitted_invite_is_absorbed_after_the_2xx() -> None:
    ra = core()
    answered_invite(ra)
    out(ra)
    outcome = ra.receive_datagram(invite(), UA, 0.3)
    assert outcome.event is None and out(ra) == []


def test_request_on_an_unknown_dialog_is_481() -> None:
    ra = core()
    ra.receive_datagram(invite(to_tag="nope").replace(b"INVITE", b"INFO"), UA, 0.0)
    assert [m.status for m in out(ra)] == [481]


def test_re_invite_while_ours_is_pending_is_491() -> None:
    ra = core()
    _, dialog = answered_invite(ra)
    out(ra)
    ra.send_in_dialog(msgspec.structs.replace(dialog, local_cseq=1), "INVITE", b"", "", 1.0)
    [sent] = out(ra)
    assert sent.method == "INVITE" and sent.get("Route") == FRONT
    ra.receive_datagram(invite(to_tag=dialog.local_tag, branch="z9hG4bK2", cseq=2), UA, 1.1)
    assert [m.status for m in out(ra)] == [491]


def test_cancel_of_a_pending_invite_gets_200_and_the_invite_487() -> None:
    ra = core()
    ra.receive_datagram(invite(), UA, 0.0)
    cancel = invite().replace(b"INVITE sip", b"CANCEL sip").replace(b"1 INVITE", b"1 CANCEL")
    ra.receive_datagram(cancel, UA, 0.1)
    assert sorted((m.status, m.cseq[1]) for m in out(ra)) == [(200, "CANCEL"), (487, "INVITE")]


def replicated(dialog: Dialog, outcome_event: object, record: ServerResponse) -> dict[str, bytes]:
    """What node-1's commits put in the store for this dialog (dialog, index, response)."""
    ra_keys = outcome_event.ra_keys
    return {keys.dialog(dialog.id): dialog.encode(), keys.last_response(dialog.id): record.encode()} | {
        k: dialog.id.encode() for k in ra_keys
    }


def test_invite_retransmission_on_a_new_node_replays_the_answer_instead_of_a_second_dialog() -> None:
    first = core()
    outcome = first.receive_datagram(invite(), UA, 0.0)
    assert outcome.new_dialog is not None
    store = replicated(outcome.new_dialog, outcome.event, ServerResponse(1, "INVITE", 200))
    survivor = core(store, node="node-2")
    again = survivor.receive_datagram(invite(), UA, 0.6)
    assert again.event is None and again.new_dialog is None
    [ok] = out(survivor)
    assert ok.status == 200 and f"tag={outcome.new_dialog.local_tag}" in (ok.get("To") or "")
    assert survivor.counters["takeover.replayed"] == 1


def test_in_dialog_retransmission_on_a_new_node_is_answered_from_the_record_not_delivered() -> None:
    first = core()
    outcome = first.receive_datagram(invite(), UA, 0.0)
    dialog = outcome.new_dialog
    assert dialog is not None
    info = invite(to_tag=dialog.local_tag, branch="z9hG4bK9", cseq=2).replace(b"INVITE", b"INFO")
    survivor = core(replicated(dialog, outcome.event, ServerResponse(2, "INFO", 200)), node="node-2")
    assert survivor.receive_datagram(info, UA, 1.0).event is None
    assert [m.status for m in out(survivor)] == [200]
    fresh = info.replace(b"2 INFO", b"3 INFO").replace(b"z9hG4bK9", b"z9hG4bK10")
    assert survivor.receive_datagram(fresh, UA, 1.1).event is not None  # a new request is delivered


def test_transport_error_ends_the_transactions_to_that_peer() -> None:
    ra = core()
    _, dialog = answered_invite(ra)
    out(ra)
    ra.send_in_dialog(msgspec.structs.replace(dialog, local_cseq=1), "INFO", b"x", "text/plain", 1.0)
    [sent] = ra.datagrams_to_send()
    [failed] = ra.transport_error(sent[1], 1.1)
    assert (failed.method, failed.status) == ("INFO", 503)
    assert all(tx.peer != sent[1] for tx in ra.transactions.values())


def test_new_calls_get_503_when_too_many_requests_wait_for_the_router() -> None:
    import sip_ra.core as ra_core

    ra = core()
    for i in range(ra_core.MAX_PENDING):
        ra.receive_datagram(invite(call_id=f"c{i}", branch=f"z9hG4bKb{i}"), UA, 0.0)
    outcome = ra.receive_datagram(invite(call_id="late", branch="z9hG4bKlate"), UA, 0.0)
    assert outcome.event is None
    assert [m.status for m in out(ra)] == [503]


def test_uac_dialog_is_confirmed_by_its_2xx_and_then_follows_the_reversed_record_route() -> None:
    ra = core()
    dialog = uac_dialog(
        "d1",
        "sip:svc@zeroslee",
        "sip:ua@127.0.0.1:6000",
        "node-1",
        "<sip:127.0.0.1:5071>",
        "127.0.0.1:5060",
        "127.0.0.1:5071",
    )
    sent = ra.send_in_dialog(dialog, "INVITE", b"", "", 0.0)
    [(_, hop)] = ra.datagrams_to_send()
    assert hop == ("127.0.0.1", 5060) and "tag=" not in (sent.get("To") or "")
    ok = SipMessage(
        status=200, reason="OK", headers=[(k, v) for k, v in sent.headers if k in ("Via", "From", "Call-ID", "CSeq")]
    )
    ok.headers += [
        ("To", f"{sent.get('To')};tag=callee"),
        ("Contact", "<sip:ua@127.0.0.1:6000>"),
        ("Record-Route", "<sip:127.0.0.1:5060;lr;zsnode=node-1>"),
    ]
    outcome = ra.receive_datagram(ok.to_bytes(), ("127.0.0.1", 5060), 0.1)
    confirmed = outcome.new_dialog
    assert confirmed is not None and confirmed.remote_tag == "callee"
    assert confirmed.route_set == ["<sip:127.0.0.1:5060;lr;zsnode=node-1>"]
    [ack] = out(ra)
    assert ack.method == "ACK" and ack.cseq == (1, "ACK") and ack.get("Route") == confirmed.route_set[0]
    assert isinstance(outcome.event, bus.ResponseReceived) and outcome.event.status == 200


def test_dialog_cache_keeps_the_most_recently_used() -> None:
    from sip_ra.dialog import DialogCache

    cache = DialogCache(2)
    a, b, c = (Dialog(x, "c", "l", "r", "u", "v", "t", [], 1, 1, "node-1") for x in "abc")
    cache["a"], cache["b"] = a, b
    assert cache.get("a") is a  # a is now the most recent: b goes first
    cache["c"] = c
    assert "b" not in cache and cache.get("a") is a and cache.get("c") is c and len(cache) == 2


def test_an_evicted_dialog_is_read_back_from_the_store() -> None:
    """A one-dialog cache: a second call evicts the first, whose INFO is still answered
    and delivered, from the dialog the store holds."""
    store: dict[str, bytes] = {}
    ra = RaCore("node-1", "127.0.0.1:5071", SipTimers(dialog_cache=1), store.get)
    first = ra.receive_datagram(invite(call_id="c1"), UA, 0.0)
    assert first.new_dialog is not None and first.event is not None
    store.update(replicated(first.new_dialog, first.event, ServerResponse(1, "INVITE", 200)))
    second = ra.receive_datagram(invite(call_id="c2", branch="z9hG4bK2"), UA, 0.0)
    assert second.new_dialog is not None
    assert first.new_dialog.id not in ra.dialogs
    info = invite(call_id="c1", to_tag=first.new_dialog.local_tag, branch="z9hG4bK9", cseq=2).replace(
        b"INVITE", b"INFO"
    )
    delivered = ra.receive_datagram(info, UA, 1.0).event
    assert isinstance(delivered, bus.RequestReceived) and delivered.activity == first.new_dialog.id


def cancel_of(data: bytes) -> bytes:
    return data.replace(b"INVITE sip", b"CANCEL sip").replace(b"1 INVITE", b"1 CANCEL")


def test_the_487_carries_the_to_tag_of_the_cancels_200() -> None:
    ra = core()
    ra.receive_datagram(invite(), UA, 0.0)
    ra.receive_datagram(cancel_of(invite()), UA, 0.1)
    tags = {m.cseq[1]: parse_name_addr(m.get("To") or "").tag for m in out(ra)}
    assert tags["CANCEL"] and tags["CANCEL"] == tags["INVITE"]


def test_a_cancel_after_the_final_response_gets_200_and_changes_nothing() -> None:
    """§9.2: "the CANCEL request has no effect ... The UAS MUST then respond with 200"."""
    ra = core()
    answered_invite(ra)
    out(ra)
    outcome = ra.receive_datagram(cancel_of(invite()), UA, 0.1)
    assert outcome.event is None
    assert [(m.status, m.cseq[1]) for m in out(ra)] == [(200, "CANCEL")]


def test_a_bye_without_a_to_tag_matches_no_dialog_and_gets_481() -> None:
    ra = core()
    bye = invite().replace(b"INVITE sip", b"BYE sip").replace(b"1 INVITE", b"1 BYE")
    outcome = ra.receive_datagram(bye, UA, 0.0)
    assert outcome.event is None and [m.status for m in out(ra)] == [481]


def test_a_re_invite_with_a_new_contact_refreshes_the_target_to_be_replicated() -> None:
    ra = core()
    _, dialog = answered_invite(ra)
    out(ra)
    moved = invite(to_tag=dialog.local_tag, branch="z9hG4bK2", cseq=2).replace(b"ua@127.0.0.1:6000>", b"ua@[::1]:7000>")
    outcome = ra.receive_datagram(moved, UA, 1.0)
    assert outcome.refreshed is not None and outcome.refreshed.remote_target == "sip:ua@[::1]:7000"
    same = invite(to_tag=dialog.local_tag, branch="z9hG4bK3", cseq=3).replace(b"INVITE sip", b"INFO sip")
    assert ra.receive_datagram(same.replace(b"3 INVITE", b"3 INFO"), UA, 2.0).refreshed is None


def test_a_dialog_read_back_takes_its_remote_cseq_from_the_last_replicated_answer() -> None:
    """The stored dialog says CSeq 1 (its INVITE); node-2 answered CSeq 5 since. A copy
    of CSeq 4 reaching a node that reads the dialog fresh is out of order (§12.2.2)."""
    dialog = answered_invite(core())[1]
    ra = core(
        {
            keys.dialog(dialog.id): dialog.encode(),
            keys.last_response(dialog.id): ServerResponse(5, "INFO", 200).encode(),
        }
    )
    late = invite(to_tag=dialog.local_tag, branch="z9hG4bK4", cseq=4).replace(b"INVITE sip", b"INFO sip")
    ra.receive_datagram(late.replace(b"4 INVITE", b"4 INFO"), UA, 0.0)
    assert [m.status for m in out(ra)] == [500]


def test_timer_c_cancels_an_invite_that_only_rings_then_gives_it_up() -> None:
    """A callee answering 180 for ever must not hold the dialog's re-INVITEs (491) for
    good: after Timer C our INVITE is CANCELled (§9.1), 64*T1 later it is over (408)."""
    ra = core()
    dialog = uac_dialog("d1", "sip:svc@z", "sip:ua@127.0.0.1:6000", "node-1", "<sip:f>", "127.0.0.1:5060", "z")
    sent = ra.send_in_dialog(dialog, "INVITE", b"", "", 0.0)
    ra.datagrams_to_send()
    ringing = SipMessage(status=180, reason="Ringing", headers=[(k, v) for k, v in sent.headers if k != "Route"])
    ra.receive_datagram(ringing.to_bytes(), ("127.0.0.1", 5060), 0.1)
    c = SipTimers().timer_c
    assert ra.on_timer(c - 1) == [] and out(ra) == []
    ra.on_timer(c)
    [cancel] = out(ra)
    assert cancel.method == "CANCEL" and cancel.get_all("Via") == sent.get_all("Via")[:1]
    assert cancel.cseq == (sent.cseq[0], "CANCEL") and dialog.id in ra.reinvite_out
    [given_up] = ra.on_timer(c + 64 * SipTimers().t1)
    assert (given_up.dialog, given_up.method, given_up.status) == ("d1", "INVITE", 408)
    assert dialog.id not in ra.reinvite_out


def ipv6_request(uri: str, via: str = "[2001:db8::9:1]", received: str = "", method: str = "REGISTER") -> bytes:
    params = f";received={received}" if received else ""
    return (
        f"{method} {uri} SIP/2.0\r\n"
        f"Via: SIP/2.0/UDP {via}{params};branch=z9hG4bKv6{len(uri)}\r\n"
        "Max-Forwards: 70\r\nFrom: <sip:u@[2001:db8::9]>;tag=v6\r\nTo: <sip:u@[2001:db8::9]>\r\n"
        f'Call-ID: v6-{len(uri)}\r\nCSeq: 1 {method}\r\nContact: "Caller" <sip:caller@[2001:db8::1]:5080>\r\n'
        "Content-Length: 0\r\n\r\n"
    ).encode()


def test_ipv6_requests_get_their_answers_on_the_address_they_came_from() -> None:
    """RFC 5118 shapes: references in the Request-URI, Via (received with and without
    brackets), From, To and Contact; the answer goes back to the sending socket."""
    peer = ("2001:db8::9:1", 5060)
    for data in (
        ipv6_request("sip:[2001:db8::10]"),
        ipv6_request("sip:[2001:db8::10:5070]"),
        ipv6_request("sip:[2001:db8::10]:5070"),
        ipv6_request("sip:[2001:db8::10]", received="[2001:db8::9:255]"),
        ipv6_request("sip:[2001:db8::10]", received="2001:db8::9:255"),
    ):
        ra = core()
        outcome = ra.receive_datagram(data, peer, 0.0)
        assert outcome.event is not None, data  # well-formed: it reaches the service layer
        ra.respond(outcome.event.tx, 405, "", 0.01)  # type: ignore[union-attr]
        [(sent, addr)] = ra.datagrams_to_send()
        assert (parse(sent).status, addr) == (405, peer), data
    bad = core()
    bad.receive_datagram(ipv6_request("sip:2001:db8::10"), peer, 0.0)  # §4.2: no brackets
    [(sent, addr)] = bad.datagrams_to_send()
    assert (parse(sent).status, addr) == (400, peer)


def with_headers(data: bytes, *headers: str) -> bytes:
    return data.replace(b"Content-Length: 0", "\r\n".join([*headers, "Content-Length: 0"]).encode())


def test_session_timers_are_a_supported_extension_others_get_420() -> None:
    ra = core()
    timer = with_headers(invite(), "Require: timer", "Session-Expires: 1800")
    outcome = ra.receive_datagram(timer, UA, 0.0)
    assert outcome.event is not None and outcome.new_dialog is not None
    assert (outcome.new_dialog.session_interval, outcome.new_dialog.refresher) == (1800, "uac")
    ra.respond(outcome.event.tx, 200, "", 0.05)  # type: ignore[union-attr]
    [ok] = out(ra)
    assert ok.get("Session-Expires") == "1800;refresher=uac" and ok.get("Require") == "timer"
    assert outcome.new_dialog.id in ra.dialogs
    other = with_headers(invite(call_id="c2", branch="z9hG4bK2"), "Require: 100rel, timer")
    ra.receive_datagram(other, UA, 0.0)
    [refused] = out(ra)
    assert refused.status == 420 and refused.get("Unsupported") == "100rel"


def test_an_interval_below_min_se_is_422_and_creates_no_dialog() -> None:
    ra = core()
    outcome = ra.receive_datagram(with_headers(invite(), "Supported: timer", "Session-Expires: 30"), UA, 0.0)
    assert outcome.event is None
    [refused] = out(ra)
    assert refused.status == 422 and refused.get("Min-SE") == "90"
    assert len(ra.dialogs) == 0
