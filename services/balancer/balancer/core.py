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

from zeroslee import hashing
from zeroslee.config import format_hostport
from zeroslee.liveness import Liveness
from zeroslee.sipmsg import (
    ParseError,
    SipMessage,
    error_response,
    keepalive_kind,
    parse,
    parse_name_addr,
    parse_uri,
    parse_via,
)

Addr = tuple[str, int]
BRANCH_PREFIX = "z9hG4bKzsb"
SOFT_STATE_TTL = 32.0  # 64*T1: how long a transaction's node choice is remembered


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


@dataclass
class Balancer:
    address: Addr
    liveness: Liveness
    spread: bool = False
    # Both tables are kept in expiry order (every entry lives SOFT_STATE_TTL from its last
    # write, which moves it to the end), so expiring takes only the entries that are due.
    soft: OrderedDict[str, tuple[str, float]] = field(default_factory=OrderedDict)  # branch -> (node, expiry)
    pending: OrderedDict[str, PendingRequest] = field(default_factory=OrderedDict)  # our branch -> request
    outbox: list[tuple[bytes, Addr]] = field(default_factory=list)
    counters: dict[str, int] = field(default_factory=dict)
    _turn: int = 0

    @property
    def host(self) -> str:
        return format_hostport(*self.address)

    def count(self, name: str) -> None:
        self.counters[name] = self.counters.get(name, 0) + 1

    def datagrams_to_send(self) -> list[tuple[bytes, Addr]]:
        out, self.outbox = self.outbox, []
        return out

    def node_at(self, addr: Addr) -> str | None:
        for node, state in self.liveness.nodes.items():
            if state.addr == addr:
                return node
        return None

    def receive_datagram(self, data: bytes, addr: Addr, now: float) -> str:
        """Route one datagram; returns a short summary for the shell's counters."""
        if kind := keepalive_kind(data):
            self.count(f"keepalive.{kind}")
            return "keepalive"
        try:
            msg = parse(data)
        except ParseError as exc:
            self.count("rejected.sip")
            response = error_response(data, exc)
            if response is not None:
                self.outbox.append((response.to_bytes(), addr))
            return f"rejected: {exc.reason}"
        try:
            if not msg.is_request:
                return self._relay_response(msg)
            node = self.node_at(addr)
            if node is not None:
                return self._from_node(msg, node)
            return self._from_outside(msg, addr, now)
        except ParseError as exc:  # a header we needed turned out malformed
            self.count("rejected.sip")
            if msg.is_request and msg.method != "ACK" and exc.status:
                self._reply(msg, addr, exc.status, "Bad Request", [("Warning", f'399 zeroslee "{exc.reason}"')])
            return f"rejected: {exc.reason}"

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
        seen = bool(match) and match in self.soft
        node = self._choose(msg, hint, match, now)
        if node is None:
            if msg.method != "ACK":
                self._reply(msg, addr, 503, "Service Unavailable", [("Retry-After", "5")])
            self.count("no_node")
            return "503"
        self._stamp_received(msg, addr)
        # §16.6 step 3: a copy without Max-Forwards gets one.
        msg.set("Max-Forwards", str(int(mf) - 1) if mf is not None else "70")
        if msg.method == "INVITE" and not parse_name_addr(msg.get("To") or "").tag:
            msg.prepend("Record-Route", f"<sip:{self.host};lr;zsnode={node}>")
        ours = self._branch(match)
        msg.prepend("Via", f"SIP/2.0/UDP {self.host};branch={ours}")
        data = msg.to_bytes()
        # A CANCEL is a transaction of its own beside its INVITE's (same forwarded branch):
        # each has its pending entry, so a node dying while ringing re-forwards the INVITE.
        pending_key = f"{ours}|{msg.method}"
        # A retransmission of a request whose final response already passed us (the UA
        # lost it; the node answers again): forwarded, but no 100 Trying, which could
        # reach the UA after that final response, and no pending entry to re-forward.
        answered = seen and msg.method != "CANCEL" and pending_key not in self.pending
        if msg.method == "INVITE" and not answered:
            self._reply(msg, addr, 100, "Trying", strip_top_via=True)
        if msg.method != "ACK" and not answered:  # ACK has no response: nothing tells us it arrived
            self.pending[pending_key] = PendingRequest(node, data, msg.call_id, now + SOFT_STATE_TTL)
            self.pending.move_to_end(pending_key)
        self.outbox.append((data, self.liveness.nodes[node].addr))
        self.count(f"to.{node}")
        return node

    @staticmethod
    def _match_key(msg: SipMessage, top_via: str) -> str:
        """The server transaction a request belongs to (§17.2.3): branch, sent-by and
        method, where a CANCEL and an ACK belong with their INVITE. Without the magic
        cookie (RFC 2543), the Request-URI, From tag, Call-ID, CSeq number and top Via."""
        via = parse_via(top_via)
        method = "INVITE" if msg.method in ("ACK", "CANCEL") else msg.method
        sent_by = f"{via.host.lower()}:{via.port or 5060}"
        if via.branch.startswith("z9hG4bK"):
            return f"{via.branch}|{sent_by}|{method}"
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

    def _choose(self, msg: SipMessage, hint: str | None, match: str, now: float) -> str | None:
        # With no node ready (e.g. the survivor's store is being elected), a node that is
        # still heartbeating gets the request rather than the UA a 503 from us: it waits
        # for its store or answers for itself.
        live = self.liveness.live(now) or self.liveness.reachable(now)
        if not live:
            return None
        remembered = self.soft.get(match)
        if remembered is not None and remembered[0] in live:
            return remembered[0]
        if self.spread:
            self._turn += 1
            node: str | None = live[self._turn % len(live)]
        elif hint in live:
            node = hint
        else:
            node = hashing.choose(msg.call_id, live)
        if match and node is not None:
            self.soft[match] = (node, now + SOFT_STATE_TTL)
            self.soft.move_to_end(match)
        return node

    def _pop_own_route(self, msg: SipMessage) -> str | None:
        """Remove our own Route entry (loose routing, §16.4); return its node hint."""
        routes = msg.get_all("Route")
        if not routes:
            return None
        top = parse_name_addr(routes[0])
        uri = parse_uri(top.uri)
        if (uri.host.strip("[]"), uri.port or 5060) != self.address:
            return None
        msg.remove("Route")
        for route in routes[1:]:
            msg.headers.append(("Route", route))
        return uri.params.get("zsnode")

    def _stamp_received(self, msg: SipMessage, addr: Addr) -> None:
        """§18.2.1 and RFC 3581: note in the top Via where the request really came from."""
        vias = msg.get_all("Via")
        via = parse_via(vias[0])
        params = dict(via.params)
        if via.host.strip("[]").lower() != addr[0].lower():
            params["received"] = addr[0]  # RFC 5118 §4.5: an IPv6 address without brackets
        if "rport" in params:
            params["rport"] = str(addr[1])
        sent_by = via.host + (f":{via.port}" if via.port else "")
        top = f"SIP/2.0/{via.transport} {sent_by}" + "".join(f";{k}={v}" if v else f";{k}" for k, v in params.items())
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
        if msg.method == "INVITE" and not parse_name_addr(msg.get("To") or "").tag:
            # A node calling out: stay on the path, so the callee's requests come back here
            # and reach that node (or a survivor) like any other dialog's.
            msg.prepend("Record-Route", f"<sip:{self.host};lr;zsnode={node}>")
        routes = msg.get_all("Route")
        target_uri = parse_name_addr(routes[0]).uri if routes else msg.uri
        try:
            uri = parse_uri(target_uri)
        except ParseError:
            self.count("rejected.target")
            return "bad target"
        vias = msg.get_all("Via")
        if not vias:
            self.count("rejected.no_via")
            return "no Via"
        # Topology hiding: the node's Via travels folded into ours and is restored on the
        # way back, so nothing that leaves the cluster names a node's address.
        msg.remove("Via")
        msg.headers = [("Via", v) for v in vias[1:]] + msg.headers
        ours = self._branch(self._match_key(msg, vias[0]))
        msg.prepend("Via", f"SIP/2.0/UDP {self.host};branch={ours};zsv={vias[0].encode().hex()}")
        self.outbox.append((msg.to_bytes(), (uri.host.strip("[]"), uri.port or 5060)))
        self.count("from_node")
        return "outbound"

    # --- responses --------------------------------------------------------------------

    def _relay_response(self, msg: SipMessage) -> str:
        vias = msg.get_all("Via")
        if not vias or BRANCH_PREFIX not in vias[0]:
            self.count("response.not_ours")
            return "dropped"
        if msg.status == 100:
            return "100 absorbed"  # hop by hop (§16.7): we sent our own 100
        ours = parse_via(vias[0])
        if msg.status >= 200:
            self.pending.pop(f"{ours.branch}|{msg.cseq[1]}", None)
        if "zsv" in ours.params:  # a response to a node's request: restore its Via
            try:
                folded = bytes.fromhex(ours.params["zsv"]).decode()
            except (ValueError, UnicodeDecodeError):
                self.count("response.bad_folded_via")
                return "dropped"
            vias = [vias[0], folded] + vias[1:]
        if len(vias) < 2:
            self.count("response.no_next_via")
            return "dropped"
        nxt = parse_via(vias[1])
        host = nxt.params.get("received") or nxt.host
        port = int(nxt.params["rport"]) if nxt.params.get("rport", "").isdigit() else (nxt.port or 5060)
        msg.remove("Via")
        for value in vias[1:]:
            msg.headers.append(("Via", value))
        self._move_vias_first(msg)
        self.outbox.append((msg.to_bytes(), (host.strip("[]"), port)))
        return "response"

    def send_failed(self, data: bytes) -> None:
        """A datagram we could not send (its next hop has no address, or the send failed).
        §16.9: a request then behaves as if it had got a 503, which goes back the way a
        response would; a response or an ACK is dropped (counted)."""
        msg = parse(data)  # we built it: it parses
        if not msg.is_request or msg.method == "ACK":
            self.count("unsendable.dropped")
            return
        self.count("unsendable.503")
        copied = [(k, v) for k, v in msg.headers if k in ("Via", "From", "Call-ID", "CSeq")]
        to = msg.get("To") or ""
        to = to if parse_name_addr(to).tag else f"{to};tag=zsb"
        self._relay_response(SipMessage(status=503, reason="Service Unavailable", headers=copied + [("To", to)]))

    def _reply(
        self,
        msg: SipMessage,
        addr: Addr,
        status: int,
        reason: str,
        headers: list[tuple[str, str]] | None = None,
        strip_top_via: bool = False,
    ) -> None:
        vias = msg.get_all("Via")
        if strip_top_via:
            vias = vias[1:]
        response = SipMessage(status=status, reason=reason)
        response.headers = [("Via", v) for v in vias]
        for name in ("From", "To", "Call-ID", "CSeq"):
            response.headers.append((name, msg.get(name) or ""))
        response.headers.extend(headers or [])
        self.outbox.append((response.to_bytes(), addr))

    def expire(self, now: float) -> None:
        """Forget what is due, oldest first: the work is the number of entries that
        expire, not the number held (the shell calls this ~20 times a second; scanning
        every entry of 32 s of transactions each time cost more CPU than the SIP)."""
        while self.soft and next(iter(self.soft.values()))[1] <= now:
            self.soft.popitem(last=False)
        while self.pending and next(iter(self.pending.values())).expiry <= now:
            self.pending.popitem(last=False)

    def reroute(self, now: float) -> None:
        """Requests whose node died before answering go to a survivor (which recognises a
        request it already took, from the replicated state), or get 503 if none is left."""
        # Only from a node that is gone (exited, or silent): one that is heartbeating but
        # not ready (slowed by load, its store electing) still works on what it has, and
        # a second copy on another node would double the load and race the first.
        alive = self.liveness.reachable(now)
        live = self.liveness.live(now) or alive
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
                vias = msg.get_all("Via")[1:]
                nxt = parse_via(vias[0])
                port = int(nxt.params["rport"]) if nxt.params.get("rport", "").isdigit() else (nxt.port or 5060)
                status, reason, extra = (
                    (500, "Server Internal Error", [])
                    if poison
                    else (503, "Service Unavailable", [("Retry-After", "5")])
                )
                self._reply(
                    msg, (nxt.params.get("received") or nxt.host, port), status, reason, extra, strip_top_via=True
                )
                continue
            routes = msg.get_all("Record-Route")
            if routes and f"zsnode={pending.node}>" in routes[0]:
                msg.remove("Record-Route")
                msg.headers += [("Record-Route", routes[0].replace(f"zsnode={pending.node}>", f"zsnode={node}>"))]
                msg.headers += [("Record-Route", r) for r in routes[1:]]
            pending.node, pending.data, pending.forwards = node, msg.to_bytes(), pending.forwards + 1
            self.outbox.append((pending.data, self.liveness.nodes[node].addr))
            self.count(f"rerouted.{msg.method}")
