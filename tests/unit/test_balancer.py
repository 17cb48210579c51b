"""The balancer's routing decisions and rewrites, on a core with `now` set by hand."""

from __future__ import annotations

from balancer.core import Balancer
from zeroslee import hashing
from zeroslee.liveness import Liveness
from zeroslee.sipmsg import SipMessage, parse

FRONT = ("127.0.0.1", 5060)
NODES = {"node-1": ("127.0.0.1", 5071), "node-2": ("127.0.0.1", 5072)}
UA = ("127.0.0.1", 6000)


def balancer(live: tuple[str, ...] = ("node-1", "node-2"), now: float = 0.0) -> Balancer:
    b = Balancer(FRONT, Liveness(dead_after=0.4, alive_after=2))
    for node, addr in NODES.items():
        for _ in range(2):
            b.liveness.heartbeat(node, node in live, addr, now)
    return b


def request(
    method: str = "INVITE", call_id: str = "c1", to_tag: str = "", route: str = "", branch: str = "z9hG4bKua1"
) -> bytes:
    lines = [
        f"{method} sip:room@example.com SIP/2.0",
        f"Via: SIP/2.0/UDP 10.0.0.9:6000;branch={branch};rport",
        "Max-Forwards: 70",
        "From: <sip:ua@example.com>;tag=ua",
        "To: <sip:room@example.com>" + (f";tag={to_tag}" if to_tag else ""),
        f"Call-ID: {call_id}",
        f"CSeq: 1 {method}",
    ]
    if route:
        lines.append(f"Route: {route}")
    return ("\r\n".join(lines) + "\r\nContent-Length: 0\r\n\r\n").encode()


def sent(b: Balancer) -> list[tuple[SipMessage, tuple[str, int]]]:
    return [(parse(data), addr) for data, addr in b.datagrams_to_send()]


def test_new_call_goes_to_the_rendezvous_choice_with_our_via_and_record_route() -> None:
    b = balancer()
    node = b.receive_datagram(request(call_id="abc"), UA, 0.0)
    assert node == hashing.choose("abc", ["node-1", "node-2"])
    out = sent(b)
    trying = [m for m, addr in out if not m.is_request]
    forwarded = [(m, addr) for m, addr in out if m.is_request]
    assert [m.status for m in trying] == [100]
    [(msg, addr)] = forwarded
    assert addr == NODES[node]
    assert msg.get_all("Via")[0].startswith("SIP/2.0/UDP 127.0.0.1:5060;branch=z9hG4bKzsb")
    assert "received=127.0.0.1" in msg.get_all("Via")[1] and "rport=6000" in msg.get_all("Via")[1]
    assert msg.get_all("Record-Route") == [f"<sip:127.0.0.1:5060;lr;zsnode={node}>"]
    assert msg.get("Max-Forwards") == "69"


def test_in_dialog_request_follows_the_node_hint_and_loses_our_route() -> None:
    b = balancer()
    other = "node-1" if hashing.choose("abc", ["node-1", "node-2"]) == "node-2" else "node-2"
    b.receive_datagram(request("BYE", "abc", "t1", f"<sip:127.0.0.1:5060;lr;zsnode={other}>"), UA, 0.0)
    [(msg, addr)] = sent(b)
    assert addr == NODES[other] and msg.get("Route") is None


def test_hint_to_a_dead_node_falls_back_to_hashing_over_the_survivors() -> None:
    b = balancer(live=("node-2",))
    b.receive_datagram(request("BYE", "abc", "t1", "<sip:127.0.0.1:5060;lr;zsnode=node-1>"), UA, 0.0)
    [(_, addr)] = sent(b)
    assert addr == NODES["node-2"]


def test_retransmission_reaches_the_node_the_first_copy_reached_despite_a_new_node() -> None:
    b = balancer(live=("node-1",))
    b.receive_datagram(request("OPTIONS", "abc"), UA, 0.0)
    first = sent(b)[0][1]
    for _ in range(2):
        b.liveness.heartbeat("node-2", True, NODES["node-2"], 0.1)
    b.receive_datagram(request("OPTIONS", "abc"), UA, 0.2)
    assert sent(b)[0][1] == first


def test_no_live_node_means_503_and_ack_is_dropped() -> None:
    b = balancer(live=())
    b.receive_datagram(request("OPTIONS"), UA, 1.0)  # every node silent for 1 s
    [(msg, addr)] = sent(b)
    assert msg.status == 503 and addr == UA
    b.receive_datagram(request("ACK", to_tag="x"), UA, 1.0)
    assert sent(b) == []


def test_with_no_node_ready_a_node_still_heartbeating_gets_the_request_not_the_ua_a_503() -> None:
    b = balancer(live=())  # both heartbeat "not ready" (say, a store election under way)
    node = b.receive_datagram(request("OPTIONS", call_id="abc"), UA, 0.1)
    [(msg, addr)] = sent(b)
    assert msg.method == "OPTIONS" and addr == NODES[node]
    b.liveness.gone(node)  # its process exited: not even a fallback any more
    other = b.receive_datagram(request("OPTIONS", call_id="abc", branch="z9hG4bKua2"), UA, 0.1)
    assert other != node


def test_an_unanswered_info_goes_to_the_survivor_at_once_when_its_node_dies() -> None:
    b = balancer()
    node = b.receive_datagram(request("INFO", call_id="abc", to_tag="t"), UA, 0.0)
    [(first, _)] = sent(b)
    b.liveness.gone(node)
    b.reroute(0.01)
    [(again, addr)] = sent(b)
    survivor = ({"node-1", "node-2"} - {node}).pop()
    assert addr == NODES[survivor] and again.get_all("Via") == first.get_all("Via")
    assert b.counters["rerouted.INFO"] == 1
    response = again.to_bytes().replace(b"INFO sip:room@example.com SIP/2.0", b"SIP/2.0 200 OK", 1)
    b.receive_datagram(response, NODES[survivor], 0.02)
    assert b.pending == {}  # answered: nothing left to re-forward


def test_liveness_needs_two_ready_beats_and_ends_after_silence() -> None:
    live = Liveness(dead_after=0.4, alive_after=2)
    live.heartbeat("n", True, ("127.0.0.1", 1), 0.0)
    assert live.live(0.0) == []
    live.heartbeat("n", True, ("127.0.0.1", 1), 0.1)
    assert live.live(0.1) == ["n"]
    assert live.live(0.6) == []
    live.heartbeat("n", False, ("127.0.0.1", 1), 0.7)
    assert live.live(0.7) == []


def test_liveness_gone_is_down_at_once_and_a_late_beat_does_not_revive_it() -> None:
    live = Liveness(dead_after=0.4, alive_after=2)
    for t in (0.0, 0.1):
        live.heartbeat("n", True, ("127.0.0.1", 1), t)
    live.gone("n")  # its publisher's connection closed: the process exited
    assert live.live(0.15) == []
    live.heartbeat("n", True, ("127.0.0.1", 1), 0.16)  # a beat that was already queued
    assert live.live(0.16) == []
    live.heartbeat("n", True, ("127.0.0.1", 1), 0.26)  # the restarted process, twice
    assert live.live(0.26) == ["n"]


def test_response_loses_our_via_and_goes_to_the_received_rport_of_the_next() -> None:
    b = balancer()
    b.receive_datagram(request(call_id="abc"), UA, 0.0)
    forwarded = [m for m, _ in sent(b) if m.is_request][0]
    response = SipMessage(
        status=200,
        reason="OK",
        headers=[(k, v) for k, v in forwarded.headers if k in ("Via", "From", "To", "Call-ID", "CSeq")],
    )
    b.receive_datagram(response.to_bytes(), NODES["node-1"], 0.1)
    [(msg, addr)] = sent(b)
    assert addr == UA and len(msg.get_all("Via")) == 1


def test_request_from_a_node_goes_out_to_the_request_uri_via_us() -> None:
    b = balancer()
    data = request("INFO", "abc", "t", "<sip:127.0.0.1:5060;lr;zsnode=node-1>").replace(
        b"sip:room@example.com SIP", b"sip:ua@127.0.0.1:6000 SIP"
    )
    b.receive_datagram(data, NODES["node-2"], 0.0)
    [(msg, addr)] = sent(b)
    assert addr == ("127.0.0.1", 6000)
    # Topology hiding: the node's Via is folded into ours, so no header names the node.
    assert msg.get("Route") is None and len(msg.get_all("Via")) == 1
    node_host = f"{NODES['node-2'][0]}:{NODES['node-2'][1]}"
    assert node_host.encode() not in msg.to_bytes()


def test_unparsable_request_with_enough_headers_gets_400() -> None:
    b = balancer()
    summary = b.receive_datagram(request("OPTIONS").replace(b"CSeq: 1 OPTIONS", b"CSeq: 1 BYE"), UA, 0.0)
    assert summary.startswith("rejected")
    [(msg, addr)] = sent(b)
    assert msg.status == 400 and addr == UA


def test_a_node_that_is_only_not_ready_keeps_its_unanswered_requests() -> None:
    # A node slowed down by load says "not ready" for a beat: new calls go elsewhere, but
    # what it is working on is not sent a second time to the other node (that doubled the
    # load and raced the first copy: 481s and 503s at 200 calls/s).
    b = balancer()
    node = b.receive_datagram(request("BYE", call_id="abc", to_tag="t"), UA, 0.0)
    sent(b)
    b.liveness.heartbeat(node, False, NODES[node], 0.05)
    assert node not in b.liveness.live(0.06)
    b.reroute(0.06)
    assert sent(b) == [] and "rerouted.BYE" not in b.counters
    b.liveness.gone(node)
    b.reroute(0.07)
    assert [m.method for m, _ in sent(b)] == ["BYE"]


def test_steady_keeps_a_briefly_unready_node_and_drops_one_unready_for_long() -> None:
    live = Liveness(dead_after=1.0, alive_after=2)
    for t in (0.0, 0.1):
        live.heartbeat("n", True, ("127.0.0.1", 1), t)
    for t in (0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0, 1.1):
        live.heartbeat("n", False, ("127.0.0.1", 1), t)  # its router answers late
        assert live.live(t) == []
        assert live.steady(t) == ["n"]  # not robbed of its work for a moment of load
    live.heartbeat("n", False, ("127.0.0.1", 1), 1.3)
    assert live.steady(1.3) == []  # not ready for over `dead_after`: its work moves
    live.gone("n")
    assert live.steady(1.3) == []


def test_soft_state_expires_after_64_t1_in_order() -> None:
    """Each transaction's node choice is forgotten 64*T1 (32 s) after it was made, the
    oldest first."""
    from balancer.core import SOFT_STATE_TTL

    b = balancer()
    for i, t in enumerate((0.0, 1.0, 2.0)):
        b.liveness.heartbeat("node-1", True, NODES["node-1"], t)
        b.liveness.heartbeat("node-2", True, NODES["node-2"], t)
        b.receive_datagram(request(method="OPTIONS", call_id=f"c{i}", branch=f"z9hG4bKe{i}"), UA, t)
    branches = [key.split("|")[0] for key in b.soft]
    assert branches == ["z9hG4bKe0", "z9hG4bKe1", "z9hG4bKe2"] and len(b.pending) == 3
    b.expire(SOFT_STATE_TTL + 1.0)  # the first two are due, the third is not
    assert [key.split("|")[0] for key in b.soft] == ["z9hG4bKe2"] and len(b.pending) == 1
    b.expire(SOFT_STATE_TTL + 2.0)
    assert not b.soft and not b.pending


def test_invite_sent_again_after_its_200_passed_gets_no_100_trying() -> None:
    """The UA lost the 200 and sends the INVITE again: the node answers it again, and a
    100 Trying of ours could reach the UA after that 200 (SIPp counts it unexpected)."""
    b = balancer()
    node = b.receive_datagram(request(call_id="abc"), UA, 0.0)
    forwarded = [m for m, _ in sent(b) if m.is_request][0]
    ok = SipMessage(
        status=200,
        reason="OK",
        headers=[(k, v) for k, v in forwarded.headers if k in ("Via", "From", "To", "Call-ID", "CSeq")],
    )
    b.receive_datagram(ok.to_bytes(), NODES[node], 0.1)
    assert [m.status for m, _ in sent(b)] == [200]
    b.receive_datagram(request(call_id="abc"), UA, 0.3)  # the same branch: a retransmission
    again = sent(b)
    assert [(m.method, addr) for m, addr in again] == [("INVITE", NODES[node])]  # forwarded, no 100
    assert not b.pending


def test_invite_sent_again_before_any_final_response_gets_100_trying_again() -> None:
    b = balancer()
    node = b.receive_datagram(request(call_id="abc"), UA, 0.0)
    sent(b)
    b.receive_datagram(request(call_id="abc"), UA, 0.3)
    again = sent(b)
    assert sorted((m.status or 0, addr) for m, addr in again) == [(0, NODES[node]), (100, UA)]


def answer(forwarded: SipMessage, status: int = 200, reason: str = "OK") -> bytes:
    """A node's response to a request we forwarded it."""
    copied = [(k, v) for k, v in forwarded.headers if k in ("Via", "From", "To", "Call-ID", "CSeq")]
    return SipMessage(status=status, reason=reason, headers=copied).to_bytes()


def test_two_uas_reusing_one_branch_are_two_transactions_each_answered_to_its_sender() -> None:
    """§17.2.3: branch, sent-by and method; RFC 4475's messages share branches."""
    b = balancer()
    other_ua = ("127.0.0.1", 6001)
    b.receive_datagram(request("OPTIONS", call_id="one"), UA, 0.0)
    second = request("OPTIONS", call_id="two").replace(b"10.0.0.9:6000", b"10.0.0.8:6001")
    b.receive_datagram(second, other_ua, 0.0)
    first_fwd, second_fwd = [m for m, _ in sent(b)]
    assert first_fwd.get_all("Via")[0] != second_fwd.get_all("Via")[0]  # two forwarded branches
    assert len(b.pending) == 2
    b.receive_datagram(answer(second_fwd), NODES["node-1"], 0.1)
    b.receive_datagram(answer(first_fwd), NODES["node-1"], 0.1)
    assert [(m.call_id, addr) for m, addr in sent(b)] == [("two", other_ua), ("one", UA)]


def test_cancel_has_its_own_entry_and_a_node_dying_while_ringing_reforwards_the_invite() -> None:
    b = balancer()
    node = b.receive_datagram(request("INVITE", call_id="ring"), UA, 0.0)
    invite = [m for m, _ in sent(b) if m.is_request][0]
    assert b.receive_datagram(request("CANCEL", call_id="ring"), UA, 0.1) == node  # same node
    [(cancel, _)] = sent(b)
    assert cancel.get_all("Via")[0] == invite.get_all("Via")[0]  # the INVITE's forwarded branch
    b.receive_datagram(answer(cancel), NODES[node], 0.15)  # 200 to the CANCEL
    sent(b)
    b.liveness.gone(node)
    b.reroute(0.2)
    [(again, addr)] = sent(b)
    assert again.method == "INVITE" and addr != NODES[node]


def test_proxy_require_gets_420_and_a_missing_max_forwards_is_added() -> None:
    b = balancer()
    with_ext = request("OPTIONS").replace(b"Max-Forwards: 70\r\n", b"Proxy-Require: foo, bar\r\n")
    b.receive_datagram(with_ext, UA, 0.0)
    [(refusal, addr)] = sent(b)
    assert (refusal.status, refusal.get("Unsupported"), addr) == (420, "foo, bar", UA)
    b.receive_datagram(request("OPTIONS").replace(b"Max-Forwards: 70\r\n", b""), UA, 0.0)
    [(forwarded, _)] = sent(b)
    assert forwarded.get("Max-Forwards") == "70"


def test_a_ua_sending_to_our_contact_without_route_reaches_the_hinted_node() -> None:
    b = balancer()
    for node in ("node-1", "node-2"):
        data = request("INFO", to_tag="t", branch=f"z9hG4bK{node}").replace(
            b"INFO sip:room@example.com", f"INFO sip:127.0.0.1:5060;zsnode={node}".encode()
        )
        b.receive_datagram(data, UA, 0.0)
        [(msg, addr)] = sent(b)
        assert addr == NODES[node]


def test_a_strict_router_before_us_gets_its_request_uri_restored_from_the_last_route() -> None:
    """§16.4: our Record-Route in the Request-URI (put there by a strict router): the
    Request-URI becomes the last Route value, which is removed."""
    b = balancer()
    data = request("BYE", to_tag="t", route="<sip:ua@10.0.0.9:6000>").replace(
        b"BYE sip:room@example.com", b"BYE sip:127.0.0.1:5060;lr;zsnode=node-2"
    )
    b.receive_datagram(data, UA, 0.0)
    [(msg, addr)] = sent(b)
    assert addr == NODES["node-2"] and msg.uri == "sip:ua@10.0.0.9:6000" and msg.get("Route") is None


def test_a_response_to_a_nodes_request_gets_its_folded_via_back_and_goes_to_that_node() -> None:
    b = balancer()
    data = request("INFO", "abc", "t", "<sip:127.0.0.1:5060;lr;zsnode=node-2>").replace(
        b"sip:room@example.com SIP", b"sip:ua@127.0.0.1:6000 SIP"
    )
    data = data.replace(b"10.0.0.9:6000;branch=z9hG4bKua1", b"127.0.0.1:5072;branch=z9hG4bKnode2")
    b.receive_datagram(data, NODES["node-2"], 0.0)
    [(out, _)] = sent(b)
    b.receive_datagram(answer(out), UA, 0.1)
    [(response, addr)] = sent(b)
    assert addr == NODES["node-2"]
    assert response.get_all("Via") == ["SIP/2.0/UDP 127.0.0.1:5072;branch=z9hG4bKnode2;rport"]


def test_keepalives_are_counted_never_answered_nor_rejected() -> None:
    b = balancer()
    assert b.receive_datagram(b"\r\n\r\n", UA, 0.0) == "keepalive"
    assert sent(b) == [] and b.counters == {"keepalive.crlf": 1}


def test_a_nodes_request_that_cannot_be_sent_comes_back_to_it_as_a_503() -> None:
    """§16.9: a transport error on forwarding behaves as a 503 from the next hop; the
    node's transaction then ends at once instead of by Timer F."""
    b = balancer()
    data = request("INFO", "abc", "t", "<sip:127.0.0.1:5060;lr;zsnode=node-2>").replace(
        b"sip:room@example.com SIP", b"sip:ua@host5.example.net SIP"
    )
    data = data.replace(b"10.0.0.9:6000;branch=z9hG4bKua1", b"127.0.0.1:5072;branch=z9hG4bKnode2")
    b.receive_datagram(data, NODES["node-2"], 0.0)
    [(out, addr)] = b.datagrams_to_send()
    assert addr == ("host5.example.net", 5060)  # the shell resolves it, off the loop
    b.send_failed(out)
    [(response, back)] = sent(b)
    assert (response.status, back) == (503, NODES["node-2"])
    assert response.get_all("Via") == ["SIP/2.0/UDP 127.0.0.1:5072;branch=z9hG4bKnode2;rport"]
    assert "tag=" in (response.get("To") or "")


def test_a_request_is_reforwarded_once_then_answered_500_not_passed_to_a_third_node() -> None:
    """No poison ping-pong: a request whose node died with it unanswered goes to one
    survivor; if that one dies too, the request is answered, not sent on."""
    nodes = {"node-1": ("127.0.0.1", 5071), "node-2": ("127.0.0.1", 5072), "node-3": ("127.0.0.1", 5073)}
    b = Balancer(FRONT, Liveness(dead_after=0.4, alive_after=2))
    for node, addr in nodes.items():
        for _ in range(2):
            b.liveness.heartbeat(node, True, addr, 0.0)
    first = b.receive_datagram(request("INVITE", call_id="poison"), UA, 0.0)
    sent(b)
    b.liveness.gone(first)
    b.reroute(0.01)
    [(again, second_addr)] = sent(b)
    second = next(n for n, a in nodes.items() if a == second_addr)
    assert second != first and again.method == "INVITE"
    b.liveness.gone(second)
    b.reroute(0.02)
    [(answer_, addr)] = sent(b)
    assert (answer_.status, addr) == (500, UA) and b.pending == {}
    assert b.counters["poison.INVITE"] == 1


def test_an_invite_no_node_ever_answers_gets_408_but_one_that_rings_does_not() -> None:
    """The UA stopped retransmitting at our 100 Trying: after 64*T1 with no response at
    all, it hears 408 from us; a call that rings, or that its node took (its own 100
    Trying), is the node's to end."""
    b = balancer()
    node = b.receive_datagram(request(call_id="silent"), UA, 0.0)
    b.receive_datagram(request(call_id="rings", branch="z9hG4bKua2"), UA, 0.0)
    out = sent(b)
    forwarded = [m for m, _ in out if m.is_request and m.call_id == "rings"][0]
    ringing = forwarded.to_bytes().replace(b"INVITE sip:room@example.com SIP/2.0", b"SIP/2.0 180 Ringing", 1)
    b.receive_datagram(ringing, NODES[hashing.choose("rings", ["node-1", "node-2"])], 1.0)
    b.receive_datagram(request(call_id="slow", branch="z9hG4bKua3"), UA, 0.0)
    slow = [m for m, _ in sent(b) if m.is_request and m.call_id == "slow"][0]
    trying = slow.to_bytes().replace(b"INVITE sip:room@example.com SIP/2.0", b"SIP/2.0 100 Trying", 1)
    b.receive_datagram(trying, NODES[hashing.choose("slow", ["node-1", "node-2"])], 1.0)  # a slow service
    sent(b)
    b.expire(31.0)
    assert sent(b) == []
    b.expire(33.0)
    [(timeout, to)] = sent(b)
    assert (timeout.status, timeout.call_id, to) == (408, "silent", UA), node
    assert b.counters["timeout.408"] == 1


def test_a_request_held_by_a_node_that_stopped_being_ready_moves_when_that_node_dies() -> None:
    """A kill of a whole node: its store first (the node says not ready, and keeps what
    it holds), its RA a moment later (exited: what it held goes to a survivor)."""
    b = balancer()
    b.notice(0.0)
    call = next(f"held-{i}" for i in range(100) if hashing.choose(f"held-{i}", ["node-1", "node-2"]) == "node-1")
    assert b.receive_datagram(request(call_id=call), UA, 0.0) == "node-1"
    sent(b)
    b.liveness.heartbeat("node-1", False, NODES["node-1"], 0.05)  # store gone: not ready
    assert b.notice(0.05) == ["node-2"]
    assert sent(b) == []  # still its node's: it works on what it has
    b.liveness.gone("node-1")  # its RA exited
    assert b.notice(0.06) == ["node-2"]
    [(moved, addr)] = sent(b)
    assert addr == NODES["node-2"] and moved.call_id == call and moved.method == "INVITE"
