"""HEPv3 (zeroslee/hep.py): the bytes a Homer collector or sngrep reads, frozen against
the chunk layout of the HEP3 specification, written out by hand here."""

from __future__ import annotations

import socket

import pytest

from zeroslee import hep

SIP = b"OPTIONS sip:a SIP/2.0\r\n\r\n"


def chunk(kind: int, value_hex: str) -> str:
    """vendor 0, type, length (6 header bytes + the value), value."""
    value = bytes.fromhex(value_hex)
    return f"0000{kind:04x}{6 + len(value):04x}" + value.hex()


def test_ipv4_udp_packet_is_the_specified_bytes() -> None:
    body = "".join(
        [
            chunk(0x01, "02"),  # IPv4
            chunk(0x02, "11"),  # UDP
            chunk(0x03, "0a000001"),  # 10.0.0.1
            chunk(0x04, "0a000002"),  # 10.0.0.2
            chunk(0x07, "13c4"),  # 5060
            chunk(0x08, "13ce"),  # 5070
            chunk(0x09, "6553f100"),  # 1,700,000,000 s
            chunk(0x0A, "0001e240"),  # 123,456 us
            chunk(0x0B, "01"),  # SIP
            chunk(0x0C, "000007d1"),  # capture agent 2001
            chunk(0x11, b"abc".hex()),  # correlation: the Call-ID
            chunk(0x13, b"node-1".hex()),  # which process captured it
            chunk(0x0F, SIP.hex()),  # the message itself, last
        ]
    )
    expected = bytes.fromhex(b"HEP3".hex() + f"{6 + len(body) // 2:04x}" + body)
    packet = hep.encode(
        ("10.0.0.1", 5060), ("10.0.0.2", 5070), SIP, 1_700_000_000_123_456, hep.UDP, 2001, "abc", "node-1"
    )
    assert packet == expected


def test_ipv6_and_tcp_use_the_v6_chunks_and_protocol_6() -> None:
    packet = hep.encode(("::1", 5060), ("2001:db8::2", 5070), SIP, 5, hep.TCP)
    chunks = hep.decode(packet)
    assert chunks[0x01] == bytes([10]) and chunks[0x02] == bytes([6])
    assert chunks[0x05] == socket.inet_pton(socket.AF_INET6, "::1")
    assert hep.address(chunks, "destination") == ("2001:db8::2", 5070)
    assert 0x03 not in chunks and 0x11 not in chunks  # no empty correlation chunk either


def test_a_v4_peer_of_a_v6_socket_is_written_v4_mapped() -> None:
    chunks = hep.decode(hep.encode(("127.0.0.1", 1), ("::1", 2), SIP, 0))
    assert hep.address(chunks, "source") == ("::ffff:7f00:1", 1)


def test_decode_round_trips_every_field() -> None:
    packet = hep.encode(("192.0.2.1", 1), ("192.0.2.2", 2), SIP, 3_000_004, hep.UDP, 7, "cid", "balancer")
    chunks = hep.decode(packet)
    assert hep.address(chunks, "source") == ("192.0.2.1", 1)
    assert hep.address(chunks, "destination") == ("192.0.2.2", 2)
    assert int.from_bytes(chunks[0x09], "big") == 3 and int.from_bytes(chunks[0x0A], "big") == 4
    assert chunks[0x11] == b"cid" and chunks[0x13] == b"balancer" and chunks[0x0F] == SIP


@pytest.mark.parametrize(
    "junk",
    [b"", b"HEP2\x00\x06", b"HEP3\x00\x07\x00", b"HEP3\x00\x0c\x00\x00\x00\x01\x00\x02", b"HEP3\x00\x0b\x00\x00\x00"],
)
def test_malformed_packets_are_refused_not_misread(junk: bytes) -> None:
    with pytest.raises(hep.BadPacket):
        hep.decode(junk)


def test_mirror_counts_a_copy_it_cannot_send_and_never_raises() -> None:
    mirror = hep.Mirror("127.0.0.1:9", 1, "node-1")
    try:
        mirror.copy(SIP, ("not-an-address", 1), ("127.0.0.1", 2), 0, "x")
        assert (mirror.sent, mirror.lost) == (0, 1)
        mirror.copy(SIP, ("127.0.0.1", 1), ("127.0.0.1", 2), 0, "x")
        assert mirror.sent == 1
    finally:
        mirror.close()
