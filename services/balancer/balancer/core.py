"""The balancer's core: which node gets a datagram, and how it is rewritten (pure).

Theory of operation. Routing is a pure function of the live node set and hints carried
in the messages, so any number of balancers agree without sharing state (DESIGN §7):
- a request carrying our Record-Route node hint (`;zsnode=`) goes to that node while it
  lives; otherwise
- the request goes to the rendezvous hash of its Call-ID over the live nodes.
Because the choice depends on liveness, which a stateless proxy must not use (RFC 3261
§16.11), the balancer keeps soft per-transaction state: retransmissions of a request
(and its CANCEL and non-2xx ACK, which share the branch) go where its first copy went.

Transactions match as RFC 3261 §17.2.3 says, by branch, sent-by and method (a CANCEL and
a non-2xx ACK map onto their INVITE's node and forwarded branch), so two UAs that reuse a
branch value are two transactions; our own branch is derived from all three.

The cluster is one SIP element (DESIGN §6). A node's dialogs carry the balancer's address
as Contact and Record-Route, with the node as a hint (`;zsnode=`), found in our Route or,
from a UA that does not route, in the Request-URI. Requests from a node (its sip-ra's
address) go out towards the UA: our Route is popped, the node's Via is folded into ours
(`;zsv=`, hex) so that nothing leaving names a node, and the next hop is the next Route or
the Request-URI. Requests from anyone else always go to a node: the Request-URI's host is
never used (DESIGN §2). Responses lose our Via (restoring a folded node Via) and follow
the next one (with `received`/`rport`).
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from dataclasses import dataclass, field

from balancer.admission import Loss, Throttle
from balancer.lean import Head, Request, Response, own_hint, read_request, read_response
from zeroslee import hashing
from zeroslee.config import format_hostport, parse_hostport
from zeroslee.liveness import Liveness
from zeroslee.sipmsg import (
    ParseError,
    SipMessage,
    Via,
    error_response,
    keepalive_kind,
    parse,
    parse_name_addr,
    parse_uri,
    parse_via,
)

Addr = tuple[str, int]
UDP, TCP = "udp", "tcp"
# §18.1.1: a request this large (and not bound to UDP by its URI) goes over TCP, since
# the path MTU is unknown; if TCP cannot be had, it goes back to UDP.
UDP_SIZE_LIMIT = 1300
BRANCH_PREFIX = "z9hG4bKzsb"
SOFT_STATE_TTL = 32.0  # 64*T1: how long a transaction's node choice is remembered
REFUSED = ""  # the soft state of a transaction we refused (503): its ACK, CANCEL and retransmissions stay here
REFUSAL_TAG = "zsbusy"  # To tag of our stateless 503s (+ a hash of the request): their ACKs are ours
EXEMPT = ("ACK", "CANCEL", "BYE", "OPTIONS")  # never refused for load: they end work, or ask how we are
OC_VALIDITY_MS = 500  # RFC 7339 §5.2: how long our `oc` holds
_REFUSAL_TAG = REFUSAL_TAG.encode()
_QUICK_METHODS = {b"INVITE", b"MESSAGE", b"SUBSCRIBE", b"REGISTER", b"PUBLISH", b"NOTIFY", b"REFER"}
_COPIED = {b"via": b"Via", b"v": b"Via", b"from": b"From", b"f": b"From", b"to": b"To", b"t": b"To",
           b"call-id": b"Call-ID", b"i": b"Call-ID", b"cseq": b"CSeq"}  # fmt: skip


def quick_look(data: bytes) -> tuple[str, str, str, list[tuple[bytes, bytes]]] | None:
    """A new out-of-dialog request, read without the full parser: (method, top Via,
    Call-ID, the header lines a response copies). None for anything else, or for
    anything unusual (a Route, folding, several Vias on a line, `oc`), which the full
    path handles. This is what lets the balancer refuse at 8x capacity at a fraction of
    the cost of a parse (measured: 80 -> under 20 us per refused INVITE here)."""
    head = data.partition(b"\r\n\r\n")[0]
    lines = head.split(b"\r\n")
    method, _, rest = lines[0].partition(b" ")
    if method not in _QUICK_METHODS or b"zsnode" in rest:
        return None
    copied: list[tuple[bytes, bytes]] = []
    via = call_id = b""
    for line in lines[1:]:
        name, colon, value = line.partition(b":")
        if not colon or line[:1] in (b" ", b"\t"):
            return None
        key = name.strip().lower()
        if key == b"route":
            return None
        canonical = _COPIED.get(key)
        if canonical is None:
            continue
        value = value.strip()
        if canonical == b"Via":
            if b"," in value or b";oc" in value:
                return None
            via = via or value
        elif canonical == b"To":
            if b"tag=" in value.lower():
                return None  # within a dialog
        elif canonical == b"Call-ID":
            call_id = value
        copied.append((canonical, value))
    if not via or not call_id:
        return None
    try:
        return method.decode(), via.decode(), call_id.decode(), copied
    except UnicodeDecodeError:
        return None


def rfc3261_key(via: Via, method: str) -> str:
    """§17.2.3: a server transaction is its branch, its sent-by and its method."""
    return f"{via.branch}|{via.host.lower()}:{via.port or 5060}|{method}"


def refusal_tag(call_id: str) -> str:
    """The To tag of our stateless 503 (§8.2.6.2: the same for every retransmission)."""
    return REFUSAL_TAG + hashlib.blake2b(call_id.encode(), digest_size=4).hexdigest()


def format_via(transport: str, host: str, port: int | None, params: dict[str, str]) -> str:
    sent_by = host + (f":{port}" if port else "")
    return f"SIP/2.0/{transport} {sent_by}" + "".join(f";{k}={v}" if v else f";{k}" for k, v in params.items())


@dataclass
class PendingRequest:
    """A request we forwarded that has no final response yet. If its node dies we forward
    it again to a survivor at once: for an INVITE the UA will not retransmit (it has our
    100 Trying); for any other request its retransmission would come only after T1 or
    more, and meanwhile later requests of the dialog would overtake it (a CSeq out of
    order, 500 by §12.2.2)."""

    node: str
    data: bytes
    call_id: str
    expiry: float
    forwards: int = 1  # re-forwarded at most once: a request that kills nodes is poison
    sent: float = 0.0  # when it was forwarded (its response's delay feeds admission control)
    initial: bool = False  # a new request, let through by the node's throttle
    timed: bool = False  # its first response other than 100 has been timed
    rerouted: bool = False  # sent on to a survivor: its delay is the failover's, not timed
    heard: bool = False  # its node answered it, if only with 100 Trying: the node's to end


@dataclass
class Balancer:
    address: Addr
    liveness: Liveness
    spread: bool = False
    # Both tables are kept in expiry order (every entry lives SOFT_STATE_TTL from its last
    # write, which moves it to the end), so expiring takes only the entries that are due.
    soft: OrderedDict[str, tuple[str, float]] = field(default_factory=OrderedDict)  # branch -> (node, expiry)
    pending: OrderedDict[str, PendingRequest] = field(default_factory=OrderedDict)  # our branch -> request
    # (Call-ID, CSeq number) of an INVITE -> (the node that answered it 2xx, expiry): its
    # ACK goes there, whatever the dialog's route says (a re-INVITE another node took;
    # a drained node's 2xx, which it re-sends until the ACK comes).
    answered: OrderedDict[tuple[str, int], tuple[str, float]] = field(default_factory=OrderedDict)
    outbox: list[tuple[bytes, Addr]] = field(default_factory=list)  # datagrams (UDP)
    # Messages for TCP: (data, address, may go over UDP instead if TCP cannot be had).
    stream_outbox: list[tuple[bytes, Addr, bool]] = field(default_factory=list)
    # (a Contact's address, the connection it came on): a TCP UA's Contact names where it
    # listens, not the connection it uses; requests toward it reuse that connection.
    aliases: list[tuple[Addr, Addr]] = field(default_factory=list)
    timed_out: list[tuple[str, str, int]] = field(default_factory=list)  # (Call-ID, node, forwards): to log
    # (method, new call, seconds): each forwarded request's wait for its node's first
    # response other than 100 (the shell's setup and relay latency histograms).
    delays: list[tuple[str, bool, float]] = field(default_factory=list)
    counters: dict[str, int] = field(default_factory=dict)
    target_delay: float = 0.1
    max_rate: float = 5000.0
    retry_after: int = 1
    throttles: dict[str, Throttle] = field(default_factory=dict)
    loss: Loss = field(default_factory=Loss)  # RFC 7339: what downstream servers ask us to shed
    quiet_until: float = 0.0  # until then, a request with no node known yet is dropped, not 503
    lean: bool = True  # route plain messages from their header lines (lean.py); False: all the full way
    _turn: int = 0
    _host: str = ""
    _host_of: Addr = ("", 0)
    _oc_seq: int = 0
    _admitted: str = ""  # the transaction the quick path let through (not to be counted twice)
    _now: float = 0.0  # the time of the datagram being handled
    _transport: str = UDP  # what the message being handled came over
    _seen_live: list[str] = field(default_factory=list)  # at the last `notice`
    _seen_reachable: list[str] = field(default_factory=list)

    def throttle(self, node: str) -> Throttle:
        throttle = self.throttles.get(node)
        if throttle is None:
            throttle = self.throttles[node] = Throttle(self.target_delay, self.max_rate)
        return throttle

    def refused_share(self) -> float:
        """The share of new requests refused over the last judged period, all nodes."""
        if not self.throttles:
            return 0.0
        return max(t.refused_share for t in self.throttles.values())

    @property
    def host(self) -> str:
        if self._host_of != self.address:  # worked out once per address, not per message
            self._host, self._host_of = format_hostport(*self.address), self.address
        return self._host

    def count(self, name: str) -> None:
        self.counters[name] = self.counters.get(name, 0) + 1

    def datagrams_to_send(self) -> list[tuple[bytes, Addr]]:
        out, self.outbox = self.outbox, []
        return out

    def stream_messages_to_send(self) -> list[tuple[bytes, Addr, bool]]:
        """What goes over TCP: to the connection with that remote address (or an alias
        of it) if one is open, else over a new one. The flag: §18.1.1's size rule chose
        TCP, and the message may go over UDP (`over_udp`) if no connection can be made."""
        out, self.stream_outbox = self.stream_outbox, []
        return out

    def connection_aliases(self) -> list[tuple[Addr, Addr]]:
        out, self.aliases = self.aliases, []
        return out

    def _emit(self, data: bytes, addr: Addr, transport: str, may_fall_back: bool = False) -> None:
        if transport == TCP:
            self.stream_outbox.append((data, addr, may_fall_back))
        else:
            self.outbox.append((data, addr))

    def over_udp(self, data: bytes, addr: Addr) -> None:
        """§18.1.1: a request sent over TCP only for its size, to a peer that takes no
        TCP connection, goes by UDP after all; its top Via (ours) says so."""
        self.count("tcp.fell_back_to_udp")
        self.outbox.append((data.replace(b"Via: SIP/2.0/TCP ", b"Via: SIP/2.0/UDP ", 1), addr))

    def serving(self, live: list[str]) -> list[str]:
        """Of `live`, the nodes that take new work: not drained (all, if every one is)."""
        return [n for n in live if not self.liveness.nodes[n].draining] or live

    def draining(self) -> list[str]:
        return sorted(n for n, state in self.liveness.nodes.items() if state.draining)

    def node_at(self, addr: Addr) -> str | None:
        for node, state in self.liveness.nodes.items():
            if state.addr == addr:
                return node
        return None

    def receive_datagram(self, data: bytes, addr: Addr, now: float, transport: str = UDP) -> str:
        """Route one datagram, or one message framed from a TCP connection whose remote
        address is `addr`; returns a short summary for the shell's counters."""
        self._now = now
        self._transport = transport
        self._admitted = ""
        if data.startswith(b"ACK ") and _REFUSAL_TAG in data:  # the ACK of one of our 503s
            self.count("overload.ack_absorbed")
            return "absorbed"
        if self.node_at(addr) is None and (quick := self._quick_admission(data, addr, now)) is not None:
            return quick
        if kind := keepalive_kind(data):
            self.count(f"keepalive.{kind}")
            return "keepalive"
        if self.lean and transport == UDP and (lean := self._lean(data, addr, now)) is not None:
            return lean
        try:
            msg = parse(data)
        except ParseError as exc:
            self.count("rejected.sip")
            response = error_response(data, exc)
            if response is not None:
                self._emit(response.to_bytes(), addr, transport)
            return f"rejected: {exc.reason}"
        try:
            if not msg.is_request:
                return self._relay_response(msg, addr, now)
            node = self.node_at(addr)
            if node is not None:
                return self._from_node(msg, node)
            return self._from_outside(msg, addr, now)
        except ParseError as exc:  # a header we needed turned out malformed
            self.count("rejected.sip")
            if msg.is_request and msg.method != "ACK" and exc.status:
                self._reply(msg, addr, exc.status, "Bad Request", [("Warning", f'399 zeroslee "{exc.reason}"')])
            return f"rejected: {exc.reason}"

    # --- the lean path (lean.py): an ordinary call's messages, by line ---------------

    def _lean(self, data: bytes, addr: Addr, now: float) -> str | None:
        """Route a plain message from its header lines; None: take the full path (nothing
        has been changed then)."""
        is_response = data.startswith(b"SIP/")
        if not is_response and self.node_at(addr) is not None:
            return None  # a node's request: its Via is folded (topology hiding), the full way
        head = Head.split(data)
        if head is None:
            return None
        if is_response:
            response = read_response(head, BRANCH_PREFIX)
            if response is None:
                return None
            self.count("lean.responses")  # the share of messages the lean path takes, in the stats
            return self._lean_response(response, addr, now)
        request = read_request(head)
        summary = None if request is None else self._lean_request(request, addr, now)
        if summary is not None:
            self.count("lean.requests")
        return summary

    def _lean_request(self, request: Request, addr: Addr, now: float) -> str | None:
        """`_from_outside`, for a plain request over UDP."""
        hinted = own_hint(request, self.address)
        if hinted is None:
            return None
        hint, popped = hinted
        method, head = request.method, request.head
        match = rfc3261_key(request.via, "INVITE" if method == "ACK" else method)
        remembered = self.soft.get(match)
        if remembered is not None and remembered[0] == REFUSED:
            return None  # what we refused: its retransmission, its ACK (the full path answers)
        if not (self.liveness.live(now) or self.liveness.reachable(now)):
            return None  # no node: the full path drops (starting) or answers 503
        seen = remembered is not None
        node = self._choose(method, request.call_id, request.cseq, hint, match, now)
        assert node is not None  # there is a live or reachable node
        initial = not seen and method not in EXEMPT and not request.to_tag
        if initial and match != self._admitted and not self.throttle(node).admit(now):
            self._note_refused(match, now)
            self._lean_reply(request, addr, 503, "Service Unavailable", ("Retry-After: " + str(self.retry_after),))
            return "refused"
        stamped = self._stamped(request.via, addr)
        head.replace(request.via_line, "Via: " + stamped)
        ours = self._branch(match)
        top = [f"Via: SIP/2.0/UDP {self.host};branch={ours}"]
        if method == "INVITE" and not request.to_tag:
            top.append(f"Record-Route: <sip:{self.host};lr;zsnode={node}>")
        if request.max_forwards is None:
            top.append("Max-Forwards: 70")  # §16.6 step 3
        else:
            head.replace(head.at["Max-Forwards"][0], f"Max-Forwards: {request.max_forwards - 1}")
        data = head.to_bytes(top, tuple(popped))
        pending_key = f"{ours}|{method}"
        answered = seen and pending_key not in self.pending  # see _from_outside
        self._send_on(node, data, method, request.call_id, pending_key, initial, answered, now)
        if method == "INVITE" and not answered:
            self._lean_reply(request, addr, 100, "Trying")
        self.count(f"to.{node}")
        return node

    def _lean_reply(self, request: Request, addr: Addr, status: int, reason: str, extra: tuple[str, ...] = ()) -> None:
        """`_reply` from the request's lines (its top Via already stamped, if forwarded)."""
        head = request.head
        vias = [head.value(span) for span in head.at["Via"]]
        vias[0] = self._with_oc(vias[0])
        to = head.one("To") or ""
        if status > 100 and not request.to_tag:
            to += ";tag=" + refusal_tag(request.call_id)
        lines = [f"SIP/2.0 {status} {reason}", *(f"Via: {v}" for v in vias), f"From: {head.one('From')}"]
        lines += [f"To: {to}", f"Call-ID: {request.call_id}", f"CSeq: {head.one('CSeq')}", *extra]
        self.outbox.append(
            ("\r\n".join(lines).encode("utf-8", "surrogateescape") + b"\r\nContent-Length: 0\r\n\r\n", addr)
        )

    def _lean_response(self, response: Response, source: Addr, now: float) -> str:
        """`_relay_response`, for a plain response to a request from outside."""
        r = response
        if not self._answers(r.ours.branch, r.method, r.status, r.call_id, r.cseq, source, now):
            return "100 absorbed"
        target, transport = self._response_hop(r.ours, r.nxt)
        self._emit(r.head.to_bytes(drop=(r.ours_line,)), target, transport)
        return "response"

    # --- requests from UAs -----------------------------------------------------------

    def _from_outside(self, msg: SipMessage, addr: Addr, now: float) -> str:
        mf = msg.get("Max-Forwards")
        if mf is not None and int(mf) <= 0 and msg.method != "ACK":
            self._reply(msg, addr, 483, "Too Many Hops")
            return "483"
        required = [tag.strip() for value in msg.get_all("Proxy-Require") for tag in value.split(",") if tag.strip()]
        if required and msg.method not in ("ACK", "CANCEL"):
            # §16.3 step 4: we support no proxy extension.
            self._reply(msg, addr, 420, "Bad Extension", [("Unsupported", ", ".join(required))])
            return "420"
        hint = self._hint(msg)
        vias = msg.get_all("Via")
        match = self._match_key(msg, vias[0]) if vias else ""
        remembered = self.soft.get(match) if match else None
        if (remembered is not None and remembered[0] == REFUSED) or (
            msg.method == "ACK" and REFUSAL_TAG in (msg.get("To") or "")
        ):
            return self._refused_again(msg, addr)
        seen = remembered is not None
        node = self._choose(msg.method, msg.call_id, msg.cseq[0] if msg.method == "ACK" else 0, hint, match, now)
        if node is None and now < self.quiet_until:
            # Just started (a restart, a --take-over): no node's heartbeat heard yet. Not a
            # 503: the UA sends it again (T1), by when the nodes are known.
            self.count("no_node.starting")
            return "dropped: starting"
        if node is None:
            if msg.method != "ACK":
                self._reply(msg, addr, 503, "Service Unavailable", [("Retry-After", "5")])
            self.count("no_node")
            return "503"
        to_tag = parse_name_addr(msg.get("To") or "").tag
        initial = not seen and msg.method not in EXEMPT and not to_tag
        if initial and match != self._admitted and not self.throttle(node).admit(now):
            return self._refuse(msg, addr, match, now)
        self._stamp_received(msg, addr)
        # §16.6 step 3: a copy without Max-Forwards gets one.
        msg.set("Max-Forwards", str(int(mf) - 1) if mf is not None else "70")
        if msg.method == "INVITE" and not to_tag:
            self._record_route(msg, node, inbound=self._transport, outbound=UDP)
        ours = self._branch(match)
        # Over TCP, the response must go back on the connection the request came on
        # (§18.2.2): its remote address travels in our Via, and returns with the response.
        back = f";zst={format_hostport(*addr).encode().hex()}" if self._transport == TCP else ""
        msg.prepend("Via", f"SIP/2.0/UDP {self.host};branch={ours}{back}")
        if self._transport == TCP:
            self._note_alias(msg, addr)
        data = msg.to_bytes()
        # A CANCEL is a transaction of its own beside its INVITE's (same forwarded branch):
        # each has its pending entry, so a node dying while ringing re-forwards the INVITE.
        pending_key = f"{ours}|{msg.method}"
        # A retransmission of a request whose final response already passed us (the UA
        # lost it; the node answers again): forwarded, but no 100 Trying, which could
        # reach the UA after that final response, and no pending entry to re-forward.
        answered = seen and msg.method != "CANCEL" and pending_key not in self.pending
        self._send_on(node, data, msg.method, msg.call_id, pending_key, initial, answered, now)
        if msg.method == "INVITE" and not answered:
            # After the forwarded INVITE, not before: a UA that has our 100 stops
            # retransmitting (§17.1.1.2), so a balancer that died between the two sends
            # must have sent the INVITE on; then the node's answer reaches the UA
            # through whichever balancer holds our address next.
            self._reply(msg, addr, 100, "Trying", strip_top_via=True)
        self.count(f"to.{node}")
        return node

    def _send_on(
        self, node: str, data: bytes, method: str, call_id: str, key: str, initial: bool, answered: bool, now: float
    ) -> None:
        """Forward a request to its node, remembering it until its final response (to
        time it, and to send it on to a survivor if the node dies first)."""
        if method != "ACK" and not answered:  # ACK has no response: nothing tells us it arrived
            self.pending[key] = PendingRequest(node, data, call_id, now + SOFT_STATE_TTL, sent=now, initial=initial)
            if initial:
                self.throttle(node).sent(key, now)
            self.pending.move_to_end(key)
        self.outbox.append((data, self.liveness.nodes[node].addr))

    def _quick_admission(self, data: bytes, addr: Addr, now: float) -> str | None:
        """Admission for a new request before it is parsed: "refused" (answered 503 from
        the raw header lines), or None to go on with the full path (admitted, or not
        something the quick path reads)."""
        quick = quick_look(data)
        if quick is None or self.spread:
            return None
        method, top_via, call_id, copied = quick
        try:
            via = parse_via(top_via)
        except ParseError:
            return None
        if not via.branch.startswith("z9hG4bK"):
            return None
        match = rfc3261_key(via, method)
        if match in self.soft:
            return None  # a retransmission: the full path knows what became of it
        live = self.liveness.live(now) or self.liveness.reachable(now)
        node = hashing.choose(call_id, self.serving(live))
        if node is None:
            return None
        if self.throttle(node).admit(now):
            self._admitted = match
            return None
        self._note_refused(match, now)
        tag = refusal_tag(call_id).encode()
        out = [b"SIP/2.0 503 Service Unavailable"]
        for name, value in copied:
            if name == b"To":
                value += b";tag=" + tag
            out.append(name + b": " + value)
        out.append(b"Retry-After: " + str(self.retry_after).encode())
        out.append(b"Content-Length: 0\r\n\r\n")
        self._emit(b"\r\n".join(out), addr, self._transport)
        return "refused"

    def _refuse(self, msg: SipMessage, addr: Addr, match: str, now: float) -> str:
        """Overload, at the edge (DESIGN §7): a new request the node's throttle did not
        admit gets 503 with Retry-After now, statelessly (§8.2.6: a To tag derived from
        the request, so a retransmission gets the same answer), and costs no node any
        work. The transaction is remembered as refused, so that its retransmissions, its
        ACK and a CANCEL that crossed the 503 are answered here too."""
        self._note_refused(match, now)
        self._refusal(msg, addr)
        return "refused"

    def _note_refused(self, match: str, now: float) -> None:
        self.count("overload.refused")
        if match:
            self.soft[match] = (REFUSED, now + SOFT_STATE_TTL)
            self.soft.move_to_end(match)

    def _refusal(self, msg: SipMessage, addr: Addr) -> None:
        headers = [("Retry-After", str(self.retry_after))]
        self._reply(msg, addr, 503, "Service Unavailable", headers, to_tag=refusal_tag(msg.call_id))

    def _refused_again(self, msg: SipMessage, addr: Addr) -> str:
        """A request of a transaction we refused: its ACK is absorbed (§17.2.1: the 503's
        ACK ends our part); a CANCEL that crossed our 503 is answered 200 (§9.2: the
        INVITE has its final response already); a retransmission gets the 503 again."""
        if msg.method == "ACK":
            self.count("overload.ack_absorbed")
            return "absorbed"
        if msg.method == "CANCEL":
            self.count("overload.cancel_absorbed")
            self._reply(msg, addr, 200, "OK")
            return "absorbed"
        self.count("overload.refused_again")
        self._refusal(msg, addr)
        return "refused"

    @staticmethod
    def _match_key(msg: SipMessage, top_via: str) -> str:
        """The server transaction a request belongs to (§17.2.3): branch, sent-by and
        method, where a CANCEL and an ACK belong with their INVITE. Without the magic
        cookie (RFC 2543), the Request-URI, From tag, Call-ID, CSeq number and top Via."""
        via = parse_via(top_via)
        method = "INVITE" if msg.method in ("ACK", "CANCEL") else msg.method
        if via.branch.startswith("z9hG4bK"):
            return rfc3261_key(via, method)
        from_tag = parse_name_addr(msg.get("From") or "").tag
        return f"{msg.uri}|{from_tag}|{msg.call_id}|{msg.cseq[0]}|{top_via}|{method}"

    def _hint(self, msg: SipMessage) -> str | None:
        """The node a request names: our Route's hint (popped, §16.4 loose routing), else
        the Request-URI's, when it is our Contact (a UA that sends straight to the remote
        target) or our Record-Route put there by a strict router (§16.4: the Request-URI
        then becomes the last Route)."""
        hint = self._pop_own_route(msg)
        if hint is not None:
            return hint
        try:
            uri = parse_uri(msg.uri)
        except ParseError:
            return None
        if (uri.host.strip("[]"), uri.port or 5060) != self.address:
            return None
        if "lr" in uri.params and (routes := msg.get_all("Route")):
            msg.uri = parse_name_addr(routes[-1]).uri
            msg.remove("Route")
            msg.headers += [("Route", route) for route in routes[:-1]]
        return uri.params.get("zsnode")

    def _choose(self, method: str, call_id: str, cseq: int, hint: str | None, match: str, now: float) -> str | None:
        # With no node ready (e.g. the survivor's store is being elected), a node that is
        # still heartbeating gets the request rather than the UA a 503 from us: it waits
        # for its store or answers for itself.
        live = self.liveness.live(now) or self.liveness.reachable(now)
        if not live:
            return None
        remembered = self.soft.get(match)
        if remembered is not None and remembered[0] in live:
            return remembered[0]  # a retransmission, a CANCEL, a non-2xx ACK: its transaction's node
        if method == "ACK":
            answered = self.answered.get((call_id, cseq))
            if answered is not None and answered[0] in live:
                return answered[0]  # the node re-sending its 2xx until this ACK comes
        serving = self.serving(live)  # a drained node takes nothing new
        if self.spread:
            self._turn += 1
            node: str | None = serving[self._turn % len(serving)]
        elif hint in serving:
            node = hint
        else:
            node = hashing.choose(call_id, serving)
        if match and node is not None:
            self.soft[match] = (node, now + SOFT_STATE_TTL)
            self.soft.move_to_end(match)
        return node

    def _pop_own_route(self, msg: SipMessage) -> str | None:
        """Remove our own Route entries (loose routing, §16.4: two of them where we
        record-routed twice, RFC 5658); return their node hint."""
        routes = msg.get_all("Route")
        hint: str | None = None
        ours = 0
        for route in routes:
            uri = parse_uri(parse_name_addr(route).uri)
            if (uri.host.strip("[]"), uri.port or 5060) != self.address:
                break
            hint = uri.params.get("zsnode", hint)
            ours += 1
        if not ours:
            return None
        msg.remove("Route")
        for route in routes[ours:]:
            msg.headers.append(("Route", route))
        return hint

    def _record_route(self, msg: SipMessage, node: str, inbound: str, outbound: str) -> None:
        """Stay on the dialog's path. Where the request came in over one transport and
        leaves over another, twice (RFC 5658 §4: "double record-routing"): the entry on
        top faces the next hop downstream, the one below faces where the request came
        from, each naming its transport, so each side reaches us the way it can."""

        def entry(transport: str) -> str:
            params = ";transport=tcp" if transport == TCP else ""
            return f"<sip:{self.host}{params};lr;zsnode={node}>"

        if inbound != outbound:
            msg.prepend("Record-Route", entry(inbound))
        msg.prepend("Record-Route", entry(outbound))

    def _note_alias(self, msg: SipMessage, addr: Addr) -> None:
        """A TCP UA's Contact (where it says it listens) leads to the connection it
        uses, while that connection lives (the shell keeps the alias with it)."""
        contact = msg.get("Contact")
        if not contact or contact.strip() == "*":
            return
        try:
            uri = parse_uri(parse_name_addr(contact).uri)
        except ParseError:
            return
        target = (uri.host.strip("[]"), uri.port or 5060)
        if target != addr:
            self.aliases.append((target, addr))

    @staticmethod
    def _stamped(via: Via, addr: Addr) -> str:
        """§18.2.1 and RFC 3581: the top Via, noting where the request really came from."""
        params = dict(via.params)
        if via.host.strip("[]").lower() != addr[0].lower():
            params["received"] = addr[0]  # RFC 5118 §4.5: an IPv6 address without brackets
        if "rport" in params:
            params["rport"] = str(addr[1])
        return format_via(via.transport, via.host, via.port, params)

    def _stamp_received(self, msg: SipMessage, addr: Addr) -> None:
        vias = msg.get_all("Via")
        top = self._stamped(parse_via(vias[0]), addr)
        msg.remove("Via")
        msg.headers = [("Via", top)] + [("Via", v) for v in vias[1:]] + msg.headers

    @staticmethod
    def _move_vias_first(msg: SipMessage) -> None:
        vias = [(k, v) for k, v in msg.headers if k == "Via"]
        msg.headers = vias + [(k, v) for k, v in msg.headers if k != "Via"]

    @staticmethod
    def _branch(match: str) -> str:
        """Deterministic in the transaction's match key, so retransmissions, CANCEL and a
        non-2xx ACK carry the forwarded INVITE's branch (§16.11)."""
        return BRANCH_PREFIX + hashlib.blake2b(match.encode(), digest_size=8).hexdigest()

    # --- requests from nodes ----------------------------------------------------------

    def _from_node(self, msg: SipMessage, node: str) -> str:
        self._pop_own_route(msg)
        routes = msg.get_all("Route")
        target_uri = parse_name_addr(routes[0]).uri if routes else msg.uri
        try:
            uri = parse_uri(target_uri)
        except ParseError:
            self.count("rejected.target")
            return "bad target"
        named = uri.params.get("transport", "").lower()
        transport = TCP if named == TCP else UDP
        if msg.method == "INVITE" and not parse_name_addr(msg.get("To") or "").tag:
            # A node calling out: stay on the path, so the callee's requests come back here
            # and reach that node (or a survivor) like any other dialog's.
            self._record_route(msg, node, inbound=UDP, outbound=transport)
        vias = msg.get_all("Via")
        if not vias:
            self.count("rejected.no_via")
            return "no Via"
        # Topology hiding: the node's Via travels folded into ours and is restored on the
        # way back, so nothing that leaves the cluster names a node's address.
        msg.remove("Via")
        msg.headers = [("Via", v) for v in vias[1:]] + msg.headers
        ours = self._branch(self._match_key(msg, vias[0]))
        # `oc`: we take RFC 7339 loss-based overload control from the next hop.
        via = f"{self.host};branch={ours};zsv={vias[0].encode().hex()};oc"
        size = len(msg.to_bytes()) + len(via) + len("Via: SIP/2.0/UDP \r\n")
        # §18.1.1: larger than 1300 bytes on a path of unknown MTU, and not bound to UDP.
        upgraded = transport == UDP and not named and size > UDP_SIZE_LIMIT
        if upgraded:
            transport = TCP
        msg.prepend("Via", f"SIP/2.0/{transport.upper()} {via}")
        target = (uri.host.strip("[]"), uri.port or 5060)
        fresh = msg.method not in EXEMPT and not parse_name_addr(msg.get("To") or "").tag
        if fresh and self.loss.drop(target, self._now):
            self.count("overload.shed_downstream")
            self._answer_node(msg, 503, "Service Unavailable", [("Retry-After", str(self.retry_after))])
            return "shed"
        self._emit(msg.to_bytes(), target, transport, may_fall_back=upgraded)
        self.count("from_node")
        return "outbound"

    # --- responses --------------------------------------------------------------------

    def _relay_response(self, msg: SipMessage, source: Addr | None = None, now: float = 0.0) -> str:
        vias = msg.get_all("Via")
        if not vias or BRANCH_PREFIX not in vias[0]:
            self.count("response.not_ours")
            return "dropped"
        ours = parse_via(vias[0])
        number, method = msg.cseq
        if not self._answers(ours.branch, method, msg.status, msg.call_id, number, source, now):
            return "100 absorbed"
        if "zsv" in ours.params:  # a response to a node's request: restore its Via
            if "oc" in ours.params and ours.params["oc"] and source is not None:
                # RFC 7339 §5.10: the downstream server asks us to shed a share of what we send it.
                params = ours.params
                self.loss.heard(source, params["oc"], params.get("oc-validity"), params.get("oc-seq"), now)
            try:
                folded = bytes.fromhex(ours.params["zsv"]).decode()
            except (ValueError, UnicodeDecodeError):
                self.count("response.bad_folded_via")
                return "dropped"
            vias = [vias[0], folded] + vias[1:]
        if len(vias) < 2:
            self.count("response.no_next_via")
            return "dropped"
        target, transport = self._response_hop(ours, parse_via(vias[1]))
        if "zsv" in ours.params:
            target = self._live_node_for(target, msg.call_id)
        msg.remove("Via")
        vias[1] = self._with_oc(vias[1])
        for value in vias[1:]:
            msg.headers.append(("Via", value))
        self._move_vias_first(msg)
        self._emit(msg.to_bytes(), target, transport)
        return "response"

    def _answers(
        self, branch: str, method: str, status: int, call_id: str, cseq: int, source: Addr | None, now: float
    ) -> bool:
        """What a response tells us of its request (ours: `branch`): its node is working
        on it, how long the node took (admission control), that it is done, which node
        answered an INVITE 2xx (its ACK goes there). False for a 100 Trying, which goes no
        further (hop by hop, §16.7: we sent our own)."""
        key = f"{branch}|{method}"
        pending = self.pending.get(key)
        if status == 100:
            if pending is not None:
                pending.heard = True
            return False
        if (
            pending is not None
            and not pending.timed
            and not pending.rerouted
            and source == self.liveness.nodes[pending.node].addr
        ):
            # The node's response time: what admission control holds near its target.
            pending.timed = True
            self.throttle(pending.node).observe(now - pending.sent, now, pending.initial, key)
            self.delays.append((method, pending.initial, now - pending.sent))
        if status >= 200:
            self.pending.pop(key, None)
            if status < 300 and method == "INVITE" and source is not None:
                node = self.node_at(source)
                if node is not None:
                    self.answered[(call_id, cseq)] = (node, now + SOFT_STATE_TTL)
                    self.answered.move_to_end((call_id, cseq))
        return True

    def _live_node_for(self, target: Addr, call_id: str) -> Addr:
        """A response to a node's request goes to that node; if it is gone (its client
        transaction died with it: a callee's 200, sent again and again), to the survivor
        the Call-ID hashes to, which adopts the transaction from the replicated dialog."""
        node = self.node_at(target)
        if node is None or node in self.liveness.reachable(self._now):
            return target
        survivor = hashing.choose(call_id, self.liveness.live(self._now) or self.liveness.reachable(self._now))
        if survivor is None:
            return target
        self.count("response.to_survivor")
        return self.liveness.nodes[survivor].addr

    @staticmethod
    def _response_hop(ours: Via, nxt: Via) -> tuple[Addr, str]:
        """Where a response goes (§18.2.2): back on the TCP connection its request came
        on (named in our Via), else by UDP, the way its request came, to the next Via's
        `received`/`rport` (or sent-by), whatever transport that Via claims."""
        back = ours.params.get("zst")
        if back:
            try:
                return parse_hostport(bytes.fromhex(back).decode()), TCP
            except (ValueError, UnicodeDecodeError):
                pass
        host = nxt.params.get("received") or nxt.host
        port = int(nxt.params["rport"]) if nxt.params.get("rport", "").isdigit() else (nxt.port or 5060)
        return (host.strip("[]"), port), UDP

    def send_failed(self, data: bytes) -> None:
        """A datagram we could not send (its next hop has no address, or the send failed).
        §16.9: a request then behaves as if it had got a 503, which goes back the way a
        response would; a response or an ACK is dropped (counted)."""
        msg = parse(data)  # we built it: it parses
        if not msg.is_request or msg.method == "ACK":
            self.count("unsendable.dropped")
            return
        self.count("unsendable.503")
        self._answer_node(msg, 503, "Service Unavailable")

    def _answer_node(
        self, msg: SipMessage, status: int, reason: str, extra: list[tuple[str, str]] | None = None
    ) -> None:
        """Answer a request we forward for a node as if the next hop had (it goes back
        through our Via, which restores the node's)."""
        copied = [(k, v) for k, v in msg.headers if k in ("Via", "From", "Call-ID", "CSeq")]
        to = msg.get("To") or ""
        to = to if parse_name_addr(to).tag else f"{to};tag=zsb"
        response = SipMessage(status=status, reason=reason, headers=copied + [("To", to)] + (extra or []))
        self._relay_response(response)

    def _reply(
        self,
        msg: SipMessage,
        addr: Addr,
        status: int,
        reason: str,
        headers: list[tuple[str, str]] | None = None,
        strip_top_via: bool = False,
        to_tag: str = "",
    ) -> None:
        vias = msg.get_all("Via")
        if strip_top_via:
            vias = vias[1:]
        if vias:
            vias[0] = self._with_oc(vias[0])
        response = SipMessage(status=status, reason=reason)
        response.headers = [("Via", v) for v in vias]
        for name in ("From", "To", "Call-ID", "CSeq"):
            value = msg.get(name) or ""
            if name == "To" and to_tag and not parse_name_addr(value).tag:
                value = f"{value};tag={to_tag}"
            response.headers.append((name, value))
        response.headers.extend(headers or [])
        self._emit(response.to_bytes(), addr, self._transport)

    def _with_oc(self, via: str) -> str:
        """RFC 7339 §5.2: a client whose Via offers `oc` learns, in that Via of every
        response we send it, the share of new requests it should shed (the share we
        refused over the last judged period, in %), with the algorithm (`loss`, the one we
        implement, mandatory to offer), how long it holds, and a sequence (monotonic
        time in ms: newer reports have larger ones)."""
        if ";oc" not in via:
            return via
        parsed = parse_via(via)
        if "oc" not in parsed.params or "oc-seq" in parsed.params:
            return via
        self._oc_seq = max(self._oc_seq + 1, int(self._now * 1000))
        share = round(self.refused_share() * 100)
        params = dict(parsed.params)
        params.update({"oc": str(share), "oc-algo": '"loss"', "oc-validity": str(OC_VALIDITY_MS if share else 0)})
        params["oc-seq"] = str(self._oc_seq)  # §5.2: oc-validity=0 says "not in overload"
        return format_via(parsed.transport, parsed.host, parsed.port, params)

    def expire(self, now: float) -> None:
        """Forget what is due, oldest first: the work is the number of entries that
        expire, not the number held (the shell calls this ~20 times a second; scanning
        every entry of 32 s of transactions each time cost more CPU than the SIP)."""
        while self.soft and next(iter(self.soft.values()))[1] <= now:
            self.soft.popitem(last=False)
        while self.answered and next(iter(self.answered.values()))[1] <= now:
            self.answered.popitem(last=False)
        while self.pending and next(iter(self.pending.values())).expiry <= now:
            key, expired = self.pending.popitem(last=False)
            if expired.initial and expired.node in self.throttles:
                self.throttles[expired.node].forget(key)
            if key.endswith("|INVITE") and not (expired.timed or expired.heard):
                self._time_out(expired)

    def _time_out(self, expired: PendingRequest) -> None:
        """An INVITE we answered 100 Trying that no node has answered at all in 64*T1:
        the UA, which stopped retransmitting at our 100, would wait for ever. It gets
        408, as from a proxy whose client transaction timed out (§16.7 step 10 with
        §16.8). One its node answered at all (100 Trying, ringing) is the node's to end."""
        msg = parse(expired.data)
        vias = msg.get_all("Via")
        self.count("timeout.408")
        self.timed_out.append((expired.call_id, expired.node, expired.forwards))
        target, self._transport = self._response_hop(parse_via(vias[0]), parse_via(vias[1]))
        self._reply(msg, target, 408, "Request Timeout", strip_top_via=True)

    def notice(self, now: float) -> list[str]:
        """Look at liveness again; the live nodes. Requests held by a node that left
        the live set, or that is gone (exited or silent) having left it earlier, go to a
        survivor now: a node that stops being ready keeps what it was sent, but one that
        then dies (a node's store is killed first, its RA a moment later) leaves the
        live set unchanged, and a UA that had our 100 Trying would not retransmit."""
        live = self.liveness.live(now)
        reachable = self.liveness.reachable(now)
        lost = set(self._seen_live) - set(live)
        gone = set(self._seen_reachable) - set(reachable)
        self._seen_live, self._seen_reachable = live, reachable
        if lost or gone:
            self.reroute(now)
        return live

    def reroute(self, now: float) -> None:
        """Requests whose node died before answering go to a survivor (which recognises a
        request it already took, from the replicated state), or get 503 if none is left."""
        # Only from a node that is gone (exited, or silent): one that is heartbeating but
        # not ready (slowed by load, its store electing) still works on what it has, and
        # a second copy on another node would double the load and race the first.
        alive = self.liveness.reachable(now)
        live = self.serving(self.liveness.live(now) or alive)
        for gone in [n for n in self.throttles if n not in alive]:
            # A node that is gone answers nothing it was sent: its bucket starts afresh
            # (at its ceiling) when it is back, not with what it measured before.
            del self.throttles[gone]
        for branch, pending in list(self.pending.items()):
            if pending.node in alive:
                continue
            msg = parse(pending.data)
            node = hashing.choose(pending.call_id, live)
            # Its first two nodes both died with it unanswered: it does not get a third (a
            # request that crashes whoever takes it would stop every node in turn): 500.
            poison = node is not None and pending.forwards >= 2
            if poison:
                self.count(f"poison.{msg.method}")
            if node is None or poison:
                del self.pending[branch]
                vias = msg.get_all("Via")
                target, self._transport = self._response_hop(parse_via(vias[0]), parse_via(vias[1]))
                status, reason, extra = (
                    (500, "Server Internal Error", [])
                    if poison
                    else (503, "Service Unavailable", [("Retry-After", "5")])
                )
                self._reply(msg, target, status, reason, extra, strip_top_via=True)
                continue
            routes = msg.get_all("Record-Route")
            if routes and f"zsnode={pending.node}>" in routes[0]:
                msg.remove("Record-Route")
                msg.headers += [("Record-Route", routes[0].replace(f"zsnode={pending.node}>", f"zsnode={node}>"))]
                msg.headers += [("Record-Route", r) for r in routes[1:]]
            pending.node, pending.data, pending.forwards = node, msg.to_bytes(), pending.forwards + 1
            # Not timed: its answer's delay counts from the first copy, sent to the node
            # that died, and is the failover's, not a queue at the survivor (timing it cut
            # a survivor's admission to a trickle, refusing new calls for seconds: 124 of
            # 300 B2BUA calls after a kill -9, on make cluster).
            pending.rerouted = True
            self.outbox.append((pending.data, self.liveness.nodes[node].addr))
            self.count(f"rerouted.{msg.method}")
