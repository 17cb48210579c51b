"""A small scripted SIP user agent over UDP, for the demo and the integration tests.

It plays a chat participant against the cluster the way a phone would: INVITE with
retransmissions through its outbound proxy, then every in-dialog request (ACK, INFO, BYE)
to where the route set and the remote target say, never to a fixed proxy; and it answers
requests the cluster sends it (INFO relays) with 200. Blocking, one call at a time.
"""

from __future__ import annotations

import secrets
import socket
import time
from dataclasses import dataclass, field

from zeroslee.config import format_hostport
from zeroslee.sipmsg import SipMessage, parse, parse_name_addr, parse_uri, parse_via

Addr = tuple[str, int]


class UaError(Exception):
    """No final response (status 0), or a final response that is a failure."""

    def __init__(self, message: str, status: int = 0, response: SipMessage | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.response = response


@dataclass
class Call:
    call_id: str
    local_tag: str
    local_uri: str
    remote_uri: str
    remote_tag: str = ""
    remote_target: str = ""
    route_set: list[str] = field(default_factory=list)
    cseq: int = 1


class UserAgent:
    def __init__(self, name: str, port: int, proxy: Addr, t1: float = 0.5, host: str = "127.0.0.1") -> None:
        self.name = name
        self.proxy = proxy
        self.t1 = t1
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self.sock = socket.socket(family, socket.SOCK_DGRAM)
        self.sock.bind((host, port))
        self.addr: Addr = self.sock.getsockname()[:2]
        self.hostport = format_hostport(*self.addr)  # as SIP writes it: [v6]:port
        self.call: Call | None = None
        self.received: list[SipMessage] = []  # requests the cluster sent us, not yet waited for
        self.history: list[SipMessage] = []  # every request the cluster sent us
        self.responses: list[SipMessage] = []

    def close(self) -> None:
        self.sock.close()

    @property
    def contact(self) -> str:
        return f"<sip:{self.name}@{self.hostport}>"

    def _request(self, method: str, uri: str, call: Call, headers: list[tuple[str, str]], body: bytes) -> SipMessage:
        msg = SipMessage(method=method, uri=uri)
        branch = "z9hG4bK" + secrets.token_hex(8)
        msg.headers = [
            ("Via", f"SIP/2.0/UDP {self.hostport};branch={branch};rport"),
            ("Max-Forwards", "70"),
            ("From", f"{call.local_uri};tag={call.local_tag}"),
            ("To", call.remote_uri + (f";tag={call.remote_tag}" if call.remote_tag else "")),
            ("Call-ID", call.call_id),
            ("CSeq", f"{call.cseq} {method}"),
        ]
        msg.headers += [("Route", r) for r in call.route_set]
        msg.headers += [("Contact", self.contact)] + headers
        msg.body = body
        return msg

    def _next_hop(self, call: Call | None) -> Addr:
        """Where a phone sends (§12.2.1.1, §8.1.2): in a dialog, the top of the route set
        (or the remote target if the set is empty), never a fixed proxy; outside one,
        the outbound proxy (`proxy`)."""
        if call is not None and call.route_set:
            return uri_addr(parse_name_addr(call.route_set[0]).uri)
        if call is not None and call.remote_target:
            return uri_addr(call.remote_target)
        return self.proxy

    def transact(self, msg: SipMessage, timeout: float = 10.0) -> SipMessage:
        """Send, retransmitting on Timer E/A, until a final response for this request."""
        data = msg.to_bytes()
        branch = parse_via(msg.get_all("Via")[0]).branch
        deadline = time.monotonic() + timeout
        interval = self.t1
        hop = self._next_hop(self.call)
        self.sock.sendto(data, hop)
        resend_at = time.monotonic() + interval
        provisional = False
        while time.monotonic() < deadline:
            wait = max(0.001, min(resend_at, deadline) - time.monotonic())
            incoming = self._recv(wait)
            if incoming is None:
                if time.monotonic() >= resend_at and not provisional:
                    self.sock.sendto(data, hop)
                    interval = min(interval * 2, 4.0)
                    resend_at = time.monotonic() + interval
                continue
            if incoming.is_request:
                continue
            if parse_via(incoming.get_all("Via")[0]).branch != branch or incoming.cseq[1] != msg.method:
                continue
            if incoming.status < 200:
                provisional = msg.method == "INVITE"
                continue
            return incoming
        raise UaError(f"{self.name}: no final response to {msg.method} within {timeout}s")

    def _recv(self, timeout: float) -> SipMessage | None:
        self.sock.settimeout(timeout)
        try:
            data, addr = self.sock.recvfrom(65535)
        except TimeoutError:
            return None
        msg = parse(data)
        if msg.is_request:
            self._answer(msg, addr)
        else:
            self.responses.append(msg)
        return msg

    def _answer(self, request: SipMessage, addr: Addr) -> None:
        if request.method == "ACK":
            return
        self.received.append(request)
        self.history.append(request)
        response = SipMessage(status=200, reason="OK")
        response.headers = [(k, v) for k, v in request.headers if k in ("Via", "From", "To", "Call-ID", "CSeq")]
        if request.method == "INVITE":  # answering a call: a dialog, as a UAS (§12.1.1)
            response.headers = [(k, f"{v};tag={self.name}-uas" if k == "To" else v) for k, v in response.headers]
            response.headers += [("Record-Route", v) for v in request.get_all("Record-Route")]
            response.headers.append(("Contact", self.contact))
        self.sock.sendto(response.to_bytes(), addr)

    def invite(
        self,
        room: str,
        call_id: str | None = None,
        domain: str = "chat.example",
        sdp: bytes = b"",
        headers: list[tuple[str, str]] | None = None,
    ) -> SipMessage:
        """Join `room` (with an SDP offer if given); the 200, after our ACK."""
        call = Call(
            call_id=call_id or f"{secrets.token_hex(8)}@{self.name}",
            local_tag=secrets.token_hex(4),
            local_uri=f"<sip:{self.name}@{domain}>",
            remote_uri=f"<sip:{room}@{domain}>",
        )
        self.call = call
        uri = f"sip:{room}@{domain}"
        extra = ([("Content-Type", "application/sdp")] if sdp else []) + list(headers or [])
        invite = self._request("INVITE", uri, call, extra, sdp)
        response = self.transact(invite)
        if response.status >= 300:
            raise UaError(f"{self.name}: INVITE answered {response.status}", response.status, response)
        call.remote_tag = parse_name_addr(response.get("To") or "").tag
        call.remote_target = parse_name_addr(response.get_all("Contact")[0]).uri
        call.route_set = list(reversed(response.get_all("Record-Route")))  # §12.1.2
        ack = self._request("ACK", call.remote_target, call, [], b"")
        self.sock.sendto(ack.to_bytes(), self._next_hop(call))
        return response

    def request(
        self,
        method: str,
        body: bytes = b"",
        content_type: str = "text/plain",
        headers: list[tuple[str, str]] | None = None,
        timeout: float = 10.0,
    ) -> SipMessage:
        """An in-dialog request and its final response (a re-INVITE's 2xx is ACKed)."""
        call = self.call
        if call is None:
            raise UaError("no call")
        call.cseq += 1
        extra = ([("Content-Type", content_type)] if body else []) + list(headers or [])
        response = self.transact(self._request(method, call.remote_target, call, extra, body), timeout)
        if method == "INVITE" and 200 <= response.status < 300:
            ack = self._request("ACK", call.remote_target, call, [], b"")
            self.sock.sendto(ack.to_bytes(), self._next_hop(call))
        return response

    def burst(self, method: str, bodies: list[bytes], timeout: float = 10.0) -> list[SipMessage]:
        """Send one in-dialog request per body back to back (consecutive CSeqs, each its
        own transaction, none waiting for another), retransmit each until its final
        response (Timer E), and return the final responses in sending order."""
        call = self.call
        if call is None:
            raise UaError("no call")
        pending: dict[str, bytes] = {}
        order: list[str] = []
        for body in bodies:
            call.cseq += 1
            msg = self._request(method, call.remote_target, call, [("Content-Type", "text/plain")], body)
            branch = parse_via(msg.get_all("Via")[0]).branch
            pending[branch] = msg.to_bytes()
            order.append(branch)
            self.sock.sendto(pending[branch], self._next_hop(call))
        finals: dict[str, SipMessage] = {}
        deadline = time.monotonic() + timeout
        interval = self.t1
        resend_at = time.monotonic() + interval
        while len(finals) < len(order):
            if time.monotonic() >= deadline:
                raise UaError(f"{self.name}: {len(order) - len(finals)} of {len(order)} {method}s unanswered")
            incoming = self._recv(max(0.001, min(resend_at, deadline) - time.monotonic()))
            if incoming is not None and not incoming.is_request and incoming.status >= 200:
                branch = parse_via(incoming.get_all("Via")[0]).branch
                if branch in pending and incoming.cseq[1] == method:
                    finals[branch] = incoming
            if time.monotonic() >= resend_at:
                for branch, data in pending.items():
                    if branch not in finals:
                        self.sock.sendto(data, self._next_hop(call))
                interval = min(interval * 2, 4.0)
                resend_at = time.monotonic() + interval
        return [finals[branch] for branch in order]

    def pump(self, timeout: float) -> None:
        """Receive (and answer) whatever arrives within `timeout`."""
        self._recv(timeout)

    def wait_request(self, method: str, timeout: float = 10.0) -> SipMessage:
        """Wait until the cluster has sent us a `method` request (answered 200)."""
        deadline = time.monotonic() + timeout
        while True:
            for msg in self.received:
                if msg.method == method:
                    self.received.remove(msg)
                    return msg
            left = deadline - time.monotonic()
            if left <= 0:
                raise UaError(f"{self.name}: no {method} within {timeout}s")
            self._recv(left)


def via_hosts(msg: SipMessage) -> list[Addr]:
    """The sent-by addresses of a message's Via headers, top first, with the node's Via
    the balancer folded into its own (`;zsv=`, topology hiding) unfolded after it: which
    node sent a request, for the tests; a UA sees only the balancer."""
    out = []
    for value in msg.get_all("Via"):
        via = parse_via(value)
        out.append((via.host.strip("[]"), via.port or 5060))
        if "zsv" in via.params:
            folded = parse_via(bytes.fromhex(via.params["zsv"]).decode())
            out.append((folded.host.strip("[]"), folded.port or 5060))
    return out


def uri_addr(uri: str) -> Addr:
    parsed = parse_uri(uri)
    return parsed.host.strip("[]"), parsed.port or 5060
