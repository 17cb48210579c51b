"""Chat-relay load: two asyncio SIP UAs in one room, INFO in from one, INFO out to the other.

The sender behaves like a phone (RFC 3261 §17.1.2: each INFO retransmitted at T1, 2*T1...
up to T2 until a final response); the receiver answers every relayed INFO 200 and notes
when it arrived. Both run in one process, so a relay's latency is read off one monotonic
clock: from the INFO's first transmission to the relayed INFO's arrival.
"""

from __future__ import annotations

import asyncio
import secrets
import socket
import time
from dataclasses import dataclass, field
from typing import cast

from zeroslee.runtime import UDP_BUFFER
from zeroslee.sipmsg import SipMessage, parse, parse_name_addr, parse_via

Addr = tuple[str, int]


@dataclass
class Dialog:
    call_id: str
    local_tag: str
    local_uri: str
    remote_uri: str
    remote_tag: str = ""
    target: str = ""
    routes: list[str] = field(default_factory=list)
    cseq: int = 1


class ChatUA(asyncio.DatagramProtocol):
    def __init__(self, name: str, proxy: Addr, t1: float = 0.5, t2: float = 4.0) -> None:
        self.name, self.proxy, self.t1, self.t2 = name, proxy, t1, t2
        self.transport: asyncio.DatagramTransport | None = None
        self.addr: Addr = ("127.0.0.1", 0)
        self.dialog: Dialog | None = None
        self.pending: dict[str, asyncio.Future[SipMessage]] = {}
        self.relayed: dict[int, float] = {}  # seq -> first arrival (monotonic)
        self.duplicates = 0

    # --- transport ----------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.DatagramTransport, transport)
        self.addr = transport.get_extra_info("sockname")[:2]

    def datagram_received(self, data: bytes, addr: Addr) -> None:
        now = time.monotonic()
        try:
            msg = parse(data)
        except ValueError:
            return
        if msg.is_request:
            self._answer(msg, addr, now)
            return
        if msg.status < 200:
            return
        branch = parse_via(msg.get_all("Via")[0]).branch
        fut = self.pending.get(branch)
        if fut is not None and not fut.done():
            fut.set_result(msg)

    def _send(self, data: bytes) -> None:
        assert self.transport is not None
        self.transport.sendto(data, self.proxy)

    def _answer(self, request: SipMessage, addr: Addr, now: float) -> None:
        if request.method == "ACK":
            return
        if request.method == "INFO":
            text = request.body.decode("ascii", "replace")
            if text.startswith("seq "):
                seq = int(text.split()[1])
                if seq in self.relayed:
                    self.duplicates += 1
                else:
                    self.relayed[seq] = now
        response = SipMessage(status=200, reason="OK")
        response.headers = [(k, v) for k, v in request.headers if k in ("Via", "From", "To", "Call-ID", "CSeq")]
        response.headers.append(("Content-Length", "0"))
        assert self.transport is not None
        self.transport.sendto(response.to_bytes(), addr)

    # --- requests -------------------------------------------------------------------
    def _request(self, method: str, uri: str, body: bytes = b"") -> tuple[str, bytes]:
        d = self.dialog
        assert d is not None
        branch = "z9hG4bK" + secrets.token_hex(8)
        msg = SipMessage(method=method, uri=uri)
        msg.headers = [
            ("Via", f"SIP/2.0/UDP {self.addr[0]}:{self.addr[1]};branch={branch};rport"),
            ("Max-Forwards", "70"),
            ("From", f"{d.local_uri};tag={d.local_tag}"),
            ("To", d.remote_uri + (f";tag={d.remote_tag}" if d.remote_tag else "")),
            ("Call-ID", d.call_id),
            ("CSeq", f"{d.cseq} {method}"),
        ]
        msg.headers += [("Route", r) for r in d.routes]
        msg.headers.append(("Contact", f"<sip:{self.name}@{self.addr[0]}:{self.addr[1]}>"))
        if body:
            msg.headers.append(("Content-Type", "text/plain"))
        msg.body = body
        return branch, msg.to_bytes()

    async def transact(self, branch: str, data: bytes, invite: bool = False, timeout: float = 32.0) -> SipMessage:
        """Send and retransmit (Timer A/E) until a final response or `timeout`."""
        fut: asyncio.Future[SipMessage] = asyncio.get_running_loop().create_future()
        self.pending[branch] = fut
        interval = self.t1
        deadline = time.monotonic() + timeout
        try:
            self._send(data)
            while True:
                wait = min(interval, deadline - time.monotonic())
                if wait <= 0:
                    raise TimeoutError(f"{self.name}: no final response within {timeout}s")
                try:
                    return await asyncio.wait_for(asyncio.shield(fut), wait)
                except TimeoutError:
                    self._send(data)
                    interval = interval * 2 if invite else min(interval * 2, self.t2)
        finally:
            self.pending.pop(branch, None)

    async def join(self, room: str, call_id: str) -> None:
        self.dialog = Dialog(call_id, secrets.token_hex(4), f"<sip:{self.name}@bench>", f"<sip:{room}@bench>")
        branch, data = self._request("INVITE", f"sip:{room}@bench")
        response = await self.transact(branch, data, invite=True)
        if response.status >= 300:
            raise RuntimeError(f"{self.name}: INVITE answered {response.status}")
        d = self.dialog
        d.remote_tag = parse_name_addr(response.get("To") or "").tag
        d.target = parse_name_addr(response.get_all("Contact")[0]).uri
        d.routes = list(reversed(response.get_all("Record-Route")))
        _, ack = self._request("ACK", d.target)
        self._send(ack)

    async def info(self, seq: int) -> int:
        """One chat line; the final status (the caller notes the send time first)."""
        d = self.dialog
        assert d is not None
        d.cseq += 1
        branch, data = self._request("INFO", d.target, f"seq {seq}".encode())
        return (await self.transact(branch, data)).status

    async def leave(self) -> None:
        d = self.dialog
        assert d is not None
        d.cseq += 1
        branch, data = self._request("BYE", d.target)
        await self.transact(branch, data)


async def open_ua(name: str, proxy: Addr, port: int) -> ChatUA:
    """A UA on 127.0.0.1:`port` with 4 MiB socket buffers (like SIPp's -buff_size): at
    1,000 INFOs/s the default buffer dropped the relayed INFOs and 200s in the load
    generator itself."""
    loop = asyncio.get_running_loop()
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, UDP_BUFFER)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, UDP_BUFFER)
    sock.bind(("127.0.0.1", port))
    sock.setblocking(False)
    _, ua = await loop.create_datagram_endpoint(lambda: ChatUA(name, proxy), sock=sock)
    return ua


@dataclass
class Stream:
    """INFOs sent at a fixed rate and what became of them."""

    sent: dict[int, float] = field(default_factory=dict)  # seq -> first send (monotonic)
    status: dict[int, int] = field(default_factory=dict)  # seq -> final status (0: none)
    tasks: list[asyncio.Task[None]] = field(default_factory=list)


async def send_stream(sender: ChatUA, rate: float, count: int, first: int, stream: Stream) -> None:
    """`count` INFOs at `rate` per second, paced on absolute times, each its own transaction."""

    async def one(seq: int) -> None:
        try:
            stream.status[seq] = await sender.info(seq)
        except TimeoutError:
            stream.status[seq] = 0

    start = time.monotonic()
    for i in range(count):
        due = start + i / rate
        delay = due - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)  # pacing the offered load, not synchronisation
        seq = first + i
        stream.sent[seq] = time.monotonic()
        stream.tasks.append(asyncio.create_task(one(seq)))


async def drain(stream: Stream, receiver: ChatUA, timeout: float) -> None:
    """Until every INFO got a final response and every 200-acknowledged one was relayed."""
    deadline = time.monotonic() + timeout
    if stream.tasks:
        await asyncio.wait(stream.tasks, timeout=max(0.1, deadline - time.monotonic()))
    while time.monotonic() < deadline:
        if all(seq in receiver.relayed for seq, st in stream.status.items() if st == 200):
            return
        await asyncio.sleep(0.02)  # polling what the receiver got, bounded by `timeout`


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q / 100 * (len(ordered) - 1))))]
