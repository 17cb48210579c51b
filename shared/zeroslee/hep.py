"""HEPv3 (Homer Encapsulation Protocol, version 3): copies of SIP messages for a capture
server (Homer, heplify-server) or `sngrep -L udp:HOST:PORT`.

No maintained Python HEP library exists, so this module is the encoder, with a decoder
for tests and tools; tests/unit/test_hep.py freezes the bytes. A HEPv3 packet is the
4 bytes "HEP3", its total length (uint16, network order), then chunks: vendor id
(uint16, 0 = generic), chunk type (uint16), chunk length (uint16, the 6 header bytes
included), and the value. The generic chunk types we write:

  0x0001 IP family (uint8: 2 = IPv4, 10 = IPv6)   0x0002 IP protocol (uint8: 17 UDP, 6 TCP)
  0x0003/0x0004 IPv4 source/destination           0x0005/0x0006 IPv6 source/destination
  0x0007/0x0008 source/destination port (uint16)  0x0009/0x000a time: s, and us (uint32)
  0x000b payload protocol (uint8: 1 = SIP)        0x000c capture agent id (uint32)
  0x000f payload (the SIP message as sent)        0x0011 correlation id (the Call-ID)
  0x0013 group id (text): which process captured it (`balancer`, `node-1`...)

`Mirror` sends one UDP datagram per copy, never blocking and never raising into the SIP
path: a collector that is down or slow loses copies (counted), not calls.
"""

from __future__ import annotations

import ipaddress
import socket
import struct

from zeroslee.config import parse_hostport

MAGIC = b"HEP3"
UDP, TCP = 17, 6
SIP = 1
(FAMILY, PROTOCOL, SRC4, DST4, SRC6, DST6, SRC_PORT, DST_PORT, SECONDS, MICROS, PAYLOAD_TYPE, AGENT) = range(1, 13)
PAYLOAD, CORRELATION, GROUP = 0x0F, 0x11, 0x13


def _chunk(kind: int, value: bytes) -> bytes:
    return struct.pack("!HHH", 0, kind, 6 + len(value)) + value


def encode(
    source: tuple[str, int],
    destination: tuple[str, int],
    payload: bytes,
    when_us: int,
    protocol: int = UDP,
    agent_id: int = 0,
    correlation: str = "",
    group: str = "",
) -> bytes:
    """One HEPv3 packet; `when_us` is the capture time in microseconds since the epoch."""
    src, dst = ipaddress.ip_address(source[0]), ipaddress.ip_address(destination[0])
    v6 = src.version == 6 or dst.version == 6
    if v6:
        src_b = (src if src.version == 6 else ipaddress.IPv6Address(f"::ffff:{src}")).packed
        dst_b = (dst if dst.version == 6 else ipaddress.IPv6Address(f"::ffff:{dst}")).packed
    else:
        src_b, dst_b = src.packed, dst.packed
    parts = [
        _chunk(FAMILY, bytes([10 if v6 else 2])),
        _chunk(PROTOCOL, bytes([protocol])),
        _chunk(SRC6 if v6 else SRC4, src_b),
        _chunk(DST6 if v6 else DST4, dst_b),
        _chunk(SRC_PORT, struct.pack("!H", source[1])),
        _chunk(DST_PORT, struct.pack("!H", destination[1])),
        _chunk(SECONDS, struct.pack("!I", when_us // 1_000_000)),
        _chunk(MICROS, struct.pack("!I", when_us % 1_000_000)),
        _chunk(PAYLOAD_TYPE, bytes([SIP])),
        _chunk(AGENT, struct.pack("!I", agent_id)),
    ]
    if correlation:
        parts.append(_chunk(CORRELATION, correlation.encode()))
    if group:
        parts.append(_chunk(GROUP, group.encode()))
    parts.append(_chunk(PAYLOAD, payload))
    body = b"".join(parts)
    return MAGIC + struct.pack("!H", 6 + len(body)) + body


class BadPacket(ValueError):
    pass


def decode(packet: bytes) -> dict[int, bytes]:
    """The generic chunks of one HEPv3 packet, by type (raw values)."""
    if len(packet) < 6 or packet[:4] != MAGIC:
        raise BadPacket("not HEP3")
    (total,) = struct.unpack_from("!H", packet, 4)
    if total != len(packet):
        raise BadPacket(f"length {total} != {len(packet)}")
    chunks: dict[int, bytes] = {}
    at = 6
    while at < total:
        if at + 6 > total:
            raise BadPacket("truncated chunk header")
        vendor, kind, length = struct.unpack_from("!HHH", packet, at)
        if length < 6 or at + length > total:
            raise BadPacket(f"bad chunk length {length}")
        if vendor == 0:
            chunks[kind] = packet[at + 6 : at + length]
        at += length
    return chunks


def address(chunks: dict[int, bytes], side: str) -> tuple[str, int]:
    """("source" or "destination") -> (host, port) of a decoded packet."""
    four, six, port = (SRC4, SRC6, SRC_PORT) if side == "source" else (DST4, DST6, DST_PORT)
    raw = chunks.get(four) or chunks[six]
    return str(ipaddress.ip_address(raw)), struct.unpack("!H", chunks[port])[0]


class Mirror:
    """Copies to one collector over UDP, from a non-blocking socket of its own."""

    def __init__(self, collector: str, agent_id: int, group: str) -> None:
        host, port = parse_hostport(collector)
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self.collector = (host, port)
        self.agent_id = agent_id
        self.group = group
        self.sock = socket.socket(family, socket.SOCK_DGRAM)
        self.sock.setblocking(False)
        self.sent = 0
        self.lost = 0

    def copy(
        self,
        data: bytes,
        source: tuple[str, int],
        destination: tuple[str, int],
        when_us: int,
        call_id: str,
        protocol: int = UDP,
    ) -> None:
        try:
            packet = encode(source, destination, data, when_us, protocol, self.agent_id, call_id, self.group)
            self.sock.sendto(packet, self.collector)
            self.sent += 1
        except (OSError, ValueError):  # full buffer, no route, an unnamed address: lost copy
            self.lost += 1

    def close(self) -> None:
        self.sock.close()
