"""SIP over TCP in the balancer's core and its stream framer (RFC 3261 §18, RFC 5626
§4.4.1, RFC 5658): pure, `now` by hand."""

from __future__ import annotations

import pytest

from balancer.core import TCP, Balancer
from balancer.stream import MAX_HEAD, StreamFramer
from tests.unit.test_balancer import NODES, balancer
from zeroslee.sipmsg import parse

TCP_UA = ("10.0.0.9", 41000)  # the connection's remote address (an ephemeral port)


def tcp_invite(call_id: str = "t1", body: bytes = b"") -> bytes:
    lines = [
        "INVITE sip:room@example.com SIP/2.0",
        "Via: SIP/2.0/TCP 10.0.0.9:5060;branch=z9hG4bKtcp1",
        "Max-Forwards: 70",
        "From: <sip:ua@example.com>;tag=ua",
        "To: <sip:room@example.com>",
        f"Call-ID: {call_id}",
        "CSeq: 1 INVITE",
        "Contact: <sip:ua@10.0.0.9:5060;transport=tcp>",
        f"Content-Length: {len(body)}",
    ]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


def forwarded(b: Balancer) -> tuple[bytes, tuple[str, int]]:
    [(data, addr)] = [(d, a) for d, a in b.datagrams_to_send() if not d.startswith(b"SIP/2.0")]
    return data, addr


def test_a_tcp_request_is_double_record_routed_and_its_responses_go_back_on_its_connection() -> None:
    b = balancer()
    node = b.receive_datagram(tcp_invite(), TCP_UA, 0.0, TCP)
    # 100 Trying on the connection the INVITE came on; the INVITE to the node by UDP.
    [(trying, back, _)] = b.stream_messages_to_send()
    assert parse(trying).status == 100 and back == TCP_UA
    data, addr = forwarded(b)
    assert addr == NODES[node]
    msg = parse(data)
    top = msg.get_all("Via")[0]
    assert top.startswith("SIP/2.0/UDP 127.0.0.1:5060;") and ";zst=" in top  # the node hop stays UDP
    # RFC 5658: the entry facing the node (UDP) on top, the one facing the UA names TCP.
    assert msg.get_all("Record-Route") == [
        f"<sip:127.0.0.1:5060;lr;zsnode={node}>",
        f"<sip:127.0.0.1:5060;transport=tcp;lr;zsnode={node}>",
    ]
    assert b.connection_aliases() == [(("10.0.0.9", 5060), TCP_UA)]
    # The node's 200 (Via: ours, then the UA's) goes back on that connection.
    ok = msg.to_bytes().replace(b"INVITE sip:room@example.com SIP/2.0", b"SIP/2.0 200 OK", 1)
    b.receive_datagram(ok, NODES[node], 0.1)
    [(response, back, _)] = b.stream_messages_to_send()
    assert back == TCP_UA and parse(response).status == 200
    assert parse(response).get_all("Via") == ["SIP/2.0/TCP 10.0.0.9:5060;branch=z9hG4bKtcp1"]
    assert b.datagrams_to_send() == []


def test_a_tcp_ua_in_dialog_request_through_both_routes_reaches_its_node() -> None:
    b = balancer()
    routes = "<sip:127.0.0.1:5060;transport=tcp;lr;zsnode=node-2>, <sip:127.0.0.1:5060;lr;zsnode=node-2>"
    bye = (
        "BYE sip:n@127.0.0.1:5060;zsnode=node-2 SIP/2.0\r\nVia: SIP/2.0/TCP 10.0.0.9:5060;branch=z9hG4bKb1\r\n"
        f"Route: {routes}\r\nMax-Forwards: 70\r\nFrom: <sip:ua@x>;tag=ua\r\nTo: <sip:room@x>;tag=n\r\n"
        "Call-ID: t2\r\nCSeq: 2 BYE\r\nContent-Length: 0\r\n\r\n"
    ).encode()
    assert b.receive_datagram(bye, TCP_UA, 0.0, TCP) == "node-2"
    data, addr = forwarded(b)
    assert addr == NODES["node-2"] and parse(data).get("Route") is None  # both of ours popped


def node_request(uri: str, body: bytes = b"") -> bytes:
    return (
        f"INFO {uri} SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:5071;branch=z9hG4bKn1;rport\r\n"
        "Route: <sip:127.0.0.1:5060;lr;zsnode=node-1>\r\nMax-Forwards: 70\r\n"
        "From: <sip:room@x>;tag=n\r\nTo: <sip:ua@x>;tag=ua\r\nCall-ID: t3\r\nCSeq: 5 INFO\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    ).encode() + body


def test_a_request_toward_a_tcp_contact_goes_over_tcp_and_its_via_says_so() -> None:
    b = balancer()
    b.receive_datagram(node_request("sip:ua@10.0.0.9:5060;transport=tcp"), NODES["node-1"], 0.0)
    [(data, addr, may_fall_back)] = b.stream_messages_to_send()
    assert addr == ("10.0.0.9", 5060) and not may_fall_back
    assert parse(data).get_all("Via")[0].startswith("SIP/2.0/TCP 127.0.0.1:5060;")
    assert b.datagrams_to_send() == []


def test_a_large_request_toward_a_udp_peer_goes_over_tcp_and_back_to_udp_if_it_must() -> None:
    """§18.1.1: over 1300 bytes on a path of unknown MTU: TCP; UDP if TCP is refused."""
    b = balancer()
    b.receive_datagram(node_request("sip:ua@10.0.0.9:5062", b"x" * 1400), NODES["node-1"], 0.0)
    [(data, addr, may_fall_back)] = b.stream_messages_to_send()
    assert may_fall_back and parse(data).get_all("Via")[0].startswith("SIP/2.0/TCP ")
    b.over_udp(data, addr)
    [(again, to)] = b.datagrams_to_send()
    assert to == addr and parse(again).get_all("Via")[0].startswith("SIP/2.0/UDP ")
    # Small, or bound to UDP by its URI: a datagram.
    b.receive_datagram(node_request("sip:ua@10.0.0.9:5062;transport=udp", b"x" * 1400), NODES["node-1"], 0.0)
    b.receive_datagram(node_request("sip:ua@10.0.0.9:5062", b"x" * 10), NODES["node-1"], 0.0)
    assert b.stream_messages_to_send() == [] and len(b.datagrams_to_send()) == 2


def test_a_node_calling_a_tcp_callee_record_routes_twice_facing_it_on_top() -> None:
    b = balancer()
    invite = (
        node_request("sip:ua@10.0.0.9:5060;transport=tcp")
        .replace(b"INFO", b"INVITE")
        .replace(b"To: <sip:ua@x>;tag=ua", b"To: <sip:ua@x>")
    )
    b.receive_datagram(invite, NODES["node-1"], 0.0)
    [(data, _, _)] = b.stream_messages_to_send()
    assert parse(data).get_all("Record-Route") == [
        "<sip:127.0.0.1:5060;transport=tcp;lr;zsnode=node-1>",
        "<sip:127.0.0.1:5060;lr;zsnode=node-1>",
    ]


def test_the_framer_splits_messages_by_content_length_and_answers_pings() -> None:
    framer = StreamFramer()
    one, two = tcp_invite("a", b"v=0\r\n"), tcp_invite("b")
    stream = b"\r\n\r\n" + one + b"\r\n" + two
    got = []
    for i in range(0, len(stream), 7):  # any segmentation
        got += framer.feed(stream[i : i + 7])
    assert got == [one, two] and framer.take_pings() == 1 and framer.failed is None
    assert framer.feed(b"\r\n") == [] and framer.take_pings() == 0  # half a ping: wait
    assert framer.feed(b"\r\n") == [] and framer.take_pings() == 1


@pytest.mark.parametrize(
    ("data", "status"),
    [
        (b"OPTIONS sip:x SIP/2.0\r\nVia: SIP/2.0/TCP h;branch=z9hG4bK1\r\n\r\n", 400),  # no Content-Length
        (b"OPTIONS sip:x SIP/2.0\r\nl: many\r\n\r\n", 400),
        (b"OPTIONS sip:x SIP/2.0\r\nContent-Length: 999999999\r\n\r\n", 513),
        (b"OPTIONS sip:x SIP/2.0\r\nX: " + b"y" * (MAX_HEAD + 1), 513),
    ],
)
def test_the_framer_gives_up_on_a_stream_it_cannot_frame(data: bytes, status: int) -> None:
    framer = StreamFramer()
    assert framer.feed(data) == []
    assert framer.failed is not None and framer.failed.status == status
    assert framer.feed(tcp_invite()) == []  # nothing more is read from it


def test_a_response_goes_back_the_way_its_request_came_whatever_the_via_claims() -> None:
    """A datagram whose Via says TCP (RFC 4475 has several) is answered by datagram, to
    the Via's sent-by (no rport asked for), never over a TCP connection."""
    b = balancer()
    node = b.receive_datagram(tcp_invite("claims-tcp"), TCP_UA, 0.0)  # came over UDP
    out = b.datagrams_to_send()
    assert [parse(d).status for d, a in out if d.startswith(b"SIP/2.0")] == [100]
    [data] = [d for d, _ in out if not d.startswith(b"SIP/2.0")]
    ok = data.replace(b"INVITE sip:room@example.com SIP/2.0", b"SIP/2.0 200 OK", 1)
    b.receive_datagram(ok, NODES[node], 0.1)
    assert b.stream_messages_to_send() == []
    [(response, to)] = b.datagrams_to_send()
    assert parse(response).status == 200 and to == ("10.0.0.9", 5060)
