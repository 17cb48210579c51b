"""The balancer's lean path (lean.py) against its full path: the same messages through
two cores, one routing plain messages from their header lines and one parsing all of
them, must send the same messages to the same places and keep the same state; and the
lean path must be the one that ran, or this would compare the full path with itself."""

from __future__ import annotations

from collections import defaultdict

from balancer.core import Balancer
from balancer.lean import Head, read_request
from tests.unit.test_balancer import NODES, balancer
from zeroslee import hashing
from zeroslee.sipmsg import parse

UA = ("127.0.0.1", 6010)
CALL = "lean-1@127.0.0.1"
NODE = hashing.choose(CALL, ["node-1", "node-2"]) or ""


def invite(extra: str = "", via: str = "Via: SIP/2.0/UDP 127.0.0.1:6010;branch=z9hG4bK-1-1-0") -> bytes:
    sdp = b"v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\nm=audio 6000 RTP/AVP 0\r\n"
    head = (
        f"INVITE sip:service@127.0.0.1:5060 SIP/2.0\r\n{via}\r\n"
        f"From: sipp <sip:sipp@127.0.0.1:6010>;tag=1SIPpTag001\r\nTo: service <sip:service@127.0.0.1:5060>\r\n"
        f"Call-ID: {CALL}\r\nCSeq: 1 INVITE\r\nContact: sip:sipp@127.0.0.1:6010\r\nMax-Forwards: 70\r\n{extra}"
        f"Content-Type: application/sdp\r\nContent-Length: {len(sdp)}\r\n\r\n"
    )
    return head.encode() + sdp


def in_dialog(method: str, cseq: int, extra: str = "", compact: bool = False) -> bytes:
    names = ("v", "f", "t", "i", "l") if compact else ("Via", "From", "To", "Call-ID", "Content-Length")
    return (
        f"{method} sip:sipp@127.0.0.1:5060;zsnode={NODE} SIP/2.0\r\n"
        f"{names[0]}: SIP/2.0/UDP 127.0.0.1:6010;branch=z9hG4bK-1-{cseq}-{method};rport\r\n"
        f"{names[1]}: sipp <sip:sipp@127.0.0.1:6010>;tag=1SIPpTag001\r\n{names[2]}: <sip:service@x>;tag=n1\r\n"
        f"{names[3]}: {CALL}\r\nCSeq: {cseq} {method}\r\nRoute: <sip:127.0.0.1:5060;lr;zsnode={NODE}>\r\n"
        f"{extra}{names[4]}: 0\r\n\r\n"
    ).encode()


def answer(request: bytes, status: int, reason: str) -> bytes:
    """The node's response to what the balancer forwarded it."""
    msg = parse(request)
    lines = [f"SIP/2.0 {status} {reason}", *(f"Via: {v}" for v in msg.get_all("Via"))]
    lines += [f"Record-Route: {r}" for r in msg.get_all("Record-Route")]
    to = msg.get("To") or ""
    lines += [f"From: {msg.get('From')}", f"To: {to}" + ("" if "tag=" in to else ";tag=n1")]
    lines += [f"Call-ID: {msg.call_id}", f"CSeq: {msg.get('CSeq')}", "Content-Length: 0", "", ""]
    return "\r\n".join(lines).encode()


def canonical_form(data: bytes) -> tuple[str, dict[str, list[str]], bytes]:
    """A message as what it says: its start line, each header's values in order (the
    order between different headers is no part of SIP's meaning, §7.3.1), its body."""
    msg = parse(data)
    start = f"{msg.method} {msg.uri}" if msg.is_request else f"{msg.status} {msg.reason}"
    headers: dict[str, list[str]] = defaultdict(list)
    for name, value in msg.headers:
        headers[name].append(value)
    return start, dict(headers), msg.body


def both() -> tuple[Balancer, Balancer]:
    lean, full = balancer(), balancer()
    full.lean = False
    for b in (lean, full):
        b.liveness.dead_after = 60.0  # the nodes' heartbeats (at 0) hold for the whole test
    return lean, full


def step(pair: tuple[Balancer, Balancer], data: bytes, source: tuple[str, int], now: float) -> list[bytes]:
    """Feed one message to both; they must agree; what the lean one sent."""
    lean, full = pair
    summary = lean.receive_datagram(data, source, now)
    assert summary == full.receive_datagram(data, source, now)
    out, reference = lean.datagrams_to_send(), full.datagrams_to_send()
    assert [addr for _, addr in out] == [addr for _, addr in reference]
    for (mine, _), (theirs, _) in zip(out, reference, strict=True):
        assert canonical_form(mine) == canonical_form(theirs)
    assert set(lean.soft) == set(full.soft) and set(lean.pending) == set(full.pending)
    assert lean.answered == full.answered
    return [data for data, _ in out]


def forwarded(out: list[bytes]) -> bytes:
    [request] = [d for d in out if not d.startswith(b"SIP/2.0")]
    return request


def test_a_call_through_the_lean_path_is_what_the_full_path_makes_of_it() -> None:
    pair = both()
    to_node = forwarded(step(pair, invite(), UA, 1.0))  # the forwarded INVITE and our 100
    node = NODES[NODE]
    for status, reason in ((100, "Trying"), (180, "Ringing"), (200, "OK")):
        step(pair, answer(to_node, status, reason), node, 1.01)
    assert pair[0].throttles[NODE].completed + pair[0].throttles[NODE].judgements >= 1  # the 180 was timed
    step(pair, in_dialog("ACK", 1), UA, 1.02)
    bye = forwarded(step(pair, in_dialog("BYE", 2, compact=True), UA, 2.0))
    step(pair, answer(bye, 200, "OK"), node, 2.01)
    info = forwarded(step(pair, in_dialog("INFO", 3, "Max-Forwards: 7\r\nX-Any: kept\r\n"), UA, 2.1))
    assert b"Max-Forwards: 6" in info and b"X-Any: kept" in info
    step(pair, info, UA, 2.2)  # a retransmission: forwarded again, no second pending entry
    # The lean path ran (else this compared the full path with itself): every request
    # but the INVITE (the quick admission's, then lean), every response.
    lean, full = pair
    assert lean.counters.get("lean.requests") == 5 and lean.counters.get("lean.responses") == 4
    assert "lean.requests" not in full.counters


def test_a_request_through_an_edge_proxy_keeps_its_vias_and_the_response_goes_back_to_the_edge() -> None:
    pair = both()
    edge = ("127.0.0.1", 6100)
    vias = (
        "Via: SIP/2.0/UDP 127.0.0.1:6100;branch=z9hG4bKedge1;rport\r\nVia: SIP/2.0/UDP 10.0.0.9:5062;branch=z9hG4bKua"
    )
    out = step(pair, invite(via=vias), edge, 1.0)
    response = step(pair, answer(forwarded(out), 200, "OK"), NODES[NODE], 1.1)
    assert len(response) == 1 and response[0].count(b"Via:") == 2
    assert pair[0].counters.get("lean.requests") == 1 and pair[0].counters.get("lean.responses") == 1


def test_what_the_lean_path_does_not_read_goes_the_full_way() -> None:
    folded = invite().replace(b"Max-Forwards: 70\r\n", b"Subject: a\r\n long\r\nMax-Forwards: 70\r\n")
    two_in_one = invite(via="Via: SIP/2.0/UDP 127.0.0.1:6010;branch=z9hG4bKa, SIP/2.0/UDP 10.0.0.1;branch=z9hG4bKb")
    for data in (
        folded,
        two_in_one,
        invite(extra="Proxy-Require: foo\r\n"),
        invite(via="Via: SIP/2.0/UDP 127.0.0.1:6010;branch=rfc2543"),
        invite().replace(b"Max-Forwards: 70", b"Max-Forwards: 0"),
        invite().replace(b"Content-Length: ", b"Content-Length: 1"),
        in_dialog("CANCEL", 1),
    ):
        head = Head.split(data)
        assert head is None or read_request(head) is None, data[:60]
        pair = both()  # and the full path's answer is what the balancer gives
        step(pair, data, UA, 1.0)
        assert "lean.requests" not in pair[0].counters
