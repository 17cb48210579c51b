"""The SIP RA's core: datagrams in, datagrams and router events out (pure: no I/O).

Theory of operation. `receive_datagram(data, addr, now)` parses one datagram and runs it
through the transaction layer:
- a retransmission is absorbed by its server transaction, which resends the last
  response (§17.2);
- a new request opens a server transaction and becomes a `RequestReceived` event for the
  router, on its dialog activity (in-dialog requests and INVITEs) or on a transaction
  activity (other out-of-dialog requests). A new INVITE's dialog is returned with its
  event so the shell can replicate the dialog before the router sees it;
- an ACK for a 2xx stops that 2xx's retransmission (§13.3.1.4);
- a response completes the client transaction it matches.
The router answers with `respond()` and asks for in-dialog requests with
`send_in_dialog()`. Timers: `deadline()` says when to call `on_timer(now)` next.

Dialogs not in memory are read from the clustered store through `read` (the shell reads
the local replica): that is how a node sends and receives on dialogs another node created.

Takeover (RFC 3261 §17.2.3 meets failover). A node sees retransmissions of transactions
another node started. An initial INVITE is looked up by Call-ID and From tag
(`keys.invite_index`) so it never creates a second dialog; a request whose CSeq and
method match the response recorded for its dialog (`keys.last_response`) is answered from
that record, not handled twice.
"""

from __future__ import annotations

import heapq
import secrets
from collections.abc import Callable
from dataclasses import dataclass, field

import msgspec

from sip_ra import transaction as txn
from sip_ra.dialog import (
    Dialog,
    DialogCache,
    ack_for_non_2xx,
    build_request,
    build_response,
    cancel_for,
    confirmed_by,
    dialog_id,
    invite_digest,
    new_tag,
    stored_keys,
    top_branch,
    uas_dialog,
)
from sip_ra.session_timer import Session, negotiate, option_tags, response_headers
from zeroslee import bus, keys
from zeroslee.config import SipTimers
from zeroslee.records import ServerResponse
from zeroslee.sipmsg import (
    RA_OWNED,
    ParseError,
    SipMessage,
    canonical,
    error_response,
    keepalive_kind,
    parse,
    parse_name_addr,
    parse_uri,
    parse_via,
    target_of,
)

Addr = tuple[str, int]
ADOPTED_MEMORY = 4096  # adopted final responses remembered (retransmissions absorbed)
ALLOW = "INVITE, ACK, BYE, CANCEL, INFO, OPTIONS"
SUPPORTED = frozenset({"timer"})  # option tags a request may Require of us (RFC 4028)
# Methods we recognise (RFC 3261 and its common extensions): others get 501 (§8.2.1);
# recognised ones no service handles get 405 from the router.
KNOWN_METHODS = frozenset(
    "INVITE ACK BYE CANCEL INFO OPTIONS REGISTER MESSAGE SUBSCRIBE NOTIFY REFER PRACK UPDATE PUBLISH".split()
)
# A bound on the requests we hold awaiting the router's answer (memory): past it new calls
# get 503. Load is shed much earlier by the shell (`[sip] max_in_flight`, sip-ra README).
MAX_PENDING = 2000
TRYING_AFTER = 0.2  # §17.2.1: send 100 if the TU has not answered an INVITE within 200 ms


@dataclass
class Unacked:
    """A 2xx to INVITE retransmitted until its ACK arrives (§13.3.1.4)."""

    data: bytes
    peer: Addr
    interval: float
    next_at: float
    give_up_at: float


@dataclass
class Pending:
    """A server transaction's request, kept until the router answers it."""

    request: SipMessage
    tx: txn.Transaction
    dialog: Dialog | None
    session: Session | None = None  # RFC 4028: what our 2xx will grant


@dataclass
class Outcome:
    """What one inbound datagram produced, for the shell to act on."""

    event: bus.RequestReceived | bus.ResponseReceived | None = None
    new_dialog: Dialog | None = None  # replicate (create or confirm) before sending `event`
    refreshed: Dialog | None = None  # a target refresh (§12.2.2): replicate before `event`
    summary: str = ""


@dataclass
class RaCore:
    node: str
    sip_host: str  # host:port as we appear in Via and Contact
    timers: SipTimers
    read: Callable[[str], bytes | None]  # a key of the clustered store, from the local replica
    transactions: dict[str, txn.Transaction] = field(default_factory=dict)
    pending: dict[str, Pending] = field(default_factory=dict)
    client_meta: dict[str, tuple[str, str, str]] = field(default_factory=dict)
    dialogs: DialogCache = field(init=False)
    unacked: dict[str, Unacked] = field(default_factory=dict)
    outbox: list[tuple[bytes, Addr]] = field(default_factory=list)
    wakeups: list[tuple[float, str]] = field(default_factory=list)  # lazy heap
    reinvite_out: set[str] = field(default_factory=set)  # dialogs with our INVITE pending
    abandoned: list[tuple[str, list[str]]] = field(default_factory=list)  # ended for want of an ACK: (id, keys)
    reinvite_in: dict[str, str] = field(default_factory=dict)  # dialog -> pending server tx
    cancelled: set[str] = field(default_factory=set)  # our INVITEs CANCELled by Timer C
    standalone: set[str] = field(default_factory=set)  # activities of requests sent outside a dialog
    cancel_on_1xx: dict[str, list[tuple[str, str]]] = field(default_factory=dict)  # INVITE tx -> CANCEL's headers
    # Final responses adopted from a dead node's transactions, (branch, status), oldest first:
    # a copy sent again is not told twice.
    adopted: dict[tuple[str, int], None] = field(default_factory=dict)
    _head: bytes = b""  # the datagram being handled: its start line and headers, for the event
    counters: dict[str, int] = field(default_factory=dict)
    # The Contact this node puts in its dialogs: the balancer's address with this node as
    # a hint (`;zsnode=`), never the node's own, so that a UA's in-dialog requests cross
    # the balancer and reach a survivor after this node dies (DESIGN §6).
    contact: str = ""

    def __post_init__(self) -> None:
        self.dialogs = DialogCache(self.timers.dialog_cache)

    def count(self, name: str) -> None:
        self.counters[name] = self.counters.get(name, 0) + 1

    def datagrams_to_send(self) -> list[tuple[bytes, Addr]]:
        out, self.outbox = self.outbox, []
        return out

    # --- inbound -------------------------------------------------------------------

    def receive_datagram(self, data: bytes, addr: Addr, now: float) -> Outcome:
        if kind := keepalive_kind(data):
            self.count(f"sip.keepalive.{kind}")
            return Outcome(summary="keepalive")
        try:
            msg = parse(data)
        except ParseError as exc:
            self.count("sip.rejected")
            self._answer_unparsable(data, addr, exc)
            return Outcome(summary=f"rejected: {exc.reason}")
        end = data.find(b"\r\n\r\n")
        self._head = data[:end] if end >= 0 else data  # a service reads headers from it, lazily
        try:
            if msg.is_request:
                return self._on_request(msg, addr, now)
            return self._on_response(msg, now)
        except ParseError as exc:  # a header we needed turned out malformed
            self.count("sip.rejected")
            self._answer_unparsable(data, addr, exc)
            return Outcome(summary=f"rejected: {exc.reason}")

    def _answer_unparsable(self, data: bytes, addr: Addr, exc: ParseError) -> None:
        response = error_response(data, exc)
        if response is not None:
            self.outbox.append((response.to_bytes(), addr))

    def _response_peer(self, request: SipMessage, addr: Addr) -> Addr:
        """§18.2.2 with RFC 3581: answer to the source unless Via names a port and no rport."""
        try:
            via = parse_via(request.get_all("Via")[0])
        except (ParseError, IndexError):
            return addr
        if "rport" in via.params or "received" in via.params:
            return addr
        return (addr[0], via.port or 5060)

    def _server_key(self, msg: SipMessage, addr: Addr) -> str:
        method = "INVITE" if msg.method == "ACK" else msg.method
        branch = top_branch(msg)
        if branch.startswith("z9hG4bK"):
            via = parse_via(msg.get_all("Via")[0])
            return f"{branch}|{via.host}:{via.port}|{method}"
        # RFC 2543 peers: match on the request's identity instead (§17.2.3 fallback).
        tag = parse_name_addr(msg.get("From") or "").tag
        return f"{msg.call_id}|{msg.cseq[0]}|{tag}|{msg.get_all('Via')[0]}|{method}"

    def _on_request(self, msg: SipMessage, addr: Addr, now: float) -> Outcome:
        key = self._server_key(msg, addr)
        existing = self.transactions.get(key)
        if msg.method == "ACK":
            return self._on_ack(msg, existing, now)
        if existing is not None:
            self._step(existing, txn.Input.REQUEST, now)
            self.count("sip.retransmission")
            return Outcome(summary="retransmission absorbed")
        tx = txn.server(key, msg.method == "INVITE", self.timers, self._response_peer(msg, addr))
        if msg.method == "CANCEL":
            return self._on_cancel(msg, tx, now)
        problem = self._check(msg)
        if problem is not None:
            return self._answer_now(msg, tx, None, problem, now)
        to_tag = parse_name_addr(msg.get("To") or "").tag
        from_tag = parse_name_addr(msg.get("From") or "").tag
        dialog: Dialog | None = None
        new_dialog: Dialog | None = None
        refreshed = False
        if to_tag:
            dialog = self.find_dialog(dialog_id(msg.call_id, to_tag))
            if dialog is None or dialog.remote_tag != from_tag:
                return self._answer_now(msg, tx, None, (481, "", []), now)
            recorded = self._recorded(dialog, msg)
            if recorded is not None:
                return self._replay(msg, tx, dialog, recorded, now)
            if msg.cseq[0] <= dialog.remote_cseq:
                return self._answer_now(msg, tx, None, (500, "CSeq Out Of Order", []), now)
            dialog = self._remember(_with(dialog, remote_cseq=msg.cseq[0]))
            self.unacked.pop(dialog.id, None)  # any request on the dialog proves our 2xx arrived
            if msg.method == "INVITE":
                glare = self._check_reinvite(dialog.id)
                if glare is not None:  # refused: the dialog keeps its target (RFC 6141)
                    return self._answer_now(msg, tx, None, glare, now)
                self.reinvite_in[dialog.id] = key
            target = self._refreshed_target(msg, dialog)
            if refreshed := target != dialog.remote_target:
                dialog = self._remember(_with(dialog, remote_target=target))
                self.count("sip.target_refreshed")
        elif msg.method == "BYE":
            # §15.1.2: a BYE that matches no dialog gets 481; without a To tag it cannot.
            return self._answer_now(msg, tx, None, (481, "", []), now)
        elif msg.method == "INVITE":
            known = self.read(keys.invite_index(invite_digest(msg.call_id, from_tag)))
            dialog = self.find_dialog(known.decode()) if known is not None else None
            if dialog is not None:
                self.count("takeover.invite_seen_elsewhere")
                recorded = self._recorded(dialog, msg)
                if recorded is not None:
                    return self._replay(msg, tx, dialog, recorded, now)
            elif len(self.pending) >= MAX_PENDING:
                # Overload: refuse new calls early and cheaply rather than queue them past
                # the UA's retransmission timers (RFC 3261 §21.5.4).
                self.count("overload.rejected")
                return self._answer_now(msg, tx, None, (503, "", [("Retry-After", "2")]), now)
            else:
                new_dialog = uas_dialog(msg, self.node, self.contact or f"<sip:{self.sip_host}>")
                dialog = self._remember(new_dialog)
        session: Session | None = None
        if msg.method in ("INVITE", "UPDATE") and dialog is not None:
            session, refusal = negotiate(msg, self.timers.min_se, self.timers.session_expires)
            if refusal is not None:
                if new_dialog is not None:
                    self.forget_dialog(new_dialog.id)
                return self._answer_now(msg, tx, None, refusal, now)
            if new_dialog is not None and session is not None:
                new_dialog = dialog = self._remember(
                    _with(new_dialog, session_interval=session.interval, refresher=session.refresher)
                )
        self.transactions[key] = tx
        self.pending[key] = Pending(msg, tx, dialog, session)
        if msg.method == "INVITE":
            heapq.heappush(self.wakeups, (now + TRYING_AFTER, "100:" + key))
        # The INVITE's index goes with the activity it creates, also when another node wrote
        # it (that node died before its router took the INVITE, and the balancer sent the
        # INVITE here): without it, the activity's end left the index behind for good.
        initial = msg.method == "INVITE" and not to_tag
        ra_keys = [keys.invite_index(invite_digest(msg.call_id, from_tag))] if initial else []
        event = self._event(msg, key, dialog, msg.method == "INVITE" and not to_tag, ra_keys)
        refresh = dialog if to_tag and refreshed else None
        return Outcome(event=event, new_dialog=new_dialog, refreshed=refresh, summary=msg.method)

    @staticmethod
    def _refreshed_target(msg: SipMessage, dialog: Dialog) -> str:
        """§12.2.2: a target refresh request (re-INVITE, UPDATE) replaces the remote
        target with its Contact's URI."""
        contacts = [c for c in msg.get_all("Contact") if c != "*"]
        if msg.method not in ("INVITE", "UPDATE") or not contacts:
            return dialog.remote_target
        return parse_name_addr(contacts[0]).uri

    def _event(
        self, msg: SipMessage, key: str, dialog: Dialog | None, created: bool, ra_keys: list[str]
    ) -> bus.RequestReceived:
        """The router's view of a request: an event on its dialog or transaction activity."""
        content_type = msg.get("Content-Type") or ""
        return bus.RequestReceived(
            event_id=secrets.token_hex(8),
            tx=key,
            activity=dialog.id if dialog else key,
            activity_type="sip-dialog" if dialog else "sip-transaction",
            method=msg.method,
            request_uri=msg.uri,
            call_id=msg.call_id,
            from_uri=parse_name_addr(msg.get("From") or "").uri,
            to_uri=parse_name_addr(msg.get("To") or "").uri,
            cseq=msg.cseq[0],
            content_type=content_type,
            body=msg.body,
            has_sdp_offer=content_type.lower().startswith("application/sdp") and bool(msg.body),
            created_dialog=created,
            ra_keys=ra_keys,
            contact=parse_name_addr(contacts[0]).uri
            if (contacts := msg.get_all("Contact")) and contacts[0] != "*"
            else "",
            headers=self._head,
        )

    def _answer_now(
        self,
        msg: SipMessage,
        tx: txn.Transaction,
        dialog: Dialog | None,
        answer: tuple[int, str, list[tuple[str, str]]],
        now: float,
    ) -> Outcome:
        """Answer at the transaction layer, without the router (errors, replays)."""
        self.transactions[tx.key] = tx
        self.pending[tx.key] = Pending(msg, tx, dialog)
        self.respond(tx.key, answer[0], answer[1], now, headers=answer[2])
        return Outcome(summary=f"answered {answer[0]}")

    def _replay(
        self, msg: SipMessage, tx: txn.Transaction, dialog: Dialog, record: ServerResponse, now: float
    ) -> Outcome:
        """A retransmission of a request another node already answered: same answer."""
        self.count("takeover.replayed")
        self.transactions[tx.key] = tx
        self.pending[tx.key] = Pending(msg, tx, dialog)
        self.respond(
            tx.key,
            record.status,
            record.reason,
            now,
            headers=list(record.headers),
            body=record.body,
            content_type=record.content_type,
        )
        return Outcome(summary=f"replayed {record.status}")

    def _check_reinvite(self, ident: str) -> tuple[int, str, list[tuple[str, str]]] | None:
        """§14.2: 491 if our own re-INVITE is pending; 500 if theirs still is."""
        if ident in self.reinvite_out:
            return 491, "", []
        pending = self.reinvite_in.get(ident)
        if pending is not None and pending in self.pending:
            return 500, "", [("Retry-After", "1")]
        return None

    def _check(self, msg: SipMessage) -> tuple[int, str, list[tuple[str, str]]] | None:
        """What a UAS rejects before any service sees the request (§8.2.1-§8.2.3)."""
        try:
            parse_uri(msg.uri)
        except ParseError as exc:
            return exc.status, "" if exc.status == 416 else exc.reason, []
        if msg.method not in KNOWN_METHODS:
            return 501, "", [("Allow", ALLOW)]
        unsupported = option_tags(msg, "Require") - SUPPORTED
        if unsupported and msg.method not in ("ACK", "CANCEL"):
            return 420, "", [("Unsupported", ", ".join(sorted(unsupported)))]
        if msg.method == "INVITE" and msg.body:
            content_type = (msg.get("Content-Type") or "").split(";")[0].strip().lower()
            if content_type != "application/sdp":
                return 415, "", [("Accept", "application/sdp")]
            accept = [a.split(";")[0].strip().lower() for a in msg.get_all("Accept")]
            if accept and not {"application/sdp", "application/*", "*/*"} & set(accept):
                return 406, "", [("Warning", '399 zeroslee "cannot answer in the formats in Accept"')]
        return None

    def _on_ack(self, msg: SipMessage, existing: txn.Transaction | None, now: float) -> Outcome:
        if existing is not None and existing.state in (txn.State.COMPLETED, txn.State.CONFIRMED):
            self._step(existing, txn.Input.ACK, now)  # ACK for a non-2xx: hop by hop
            return Outcome(summary="ACK (non-2xx)")
        to_tag = parse_name_addr(msg.get("To") or "").tag
        ident = dialog_id(msg.call_id, to_tag)
        if self.unacked.pop(ident, None) is None:
            self.count("sip.ack_unmatched")
        return Outcome(summary="ACK")

    def _on_cancel(self, msg: SipMessage, tx: txn.Transaction, now: float) -> Outcome:
        """§9.2: 200 to the CANCEL; 487 to the INVITE if it has no final response yet."""
        invite_key = tx.key.rsplit("|", 1)[0] + "|INVITE"
        self.transactions[tx.key] = tx
        self.pending[tx.key] = Pending(msg, tx, None)
        invite = self.transactions.get(invite_key)
        if invite is None:
            self.respond(tx.key, 481, "", now)
            return Outcome(summary="CANCEL 481")
        if invite.state is not txn.State.PROCEEDING:
            # §9.2: the INVITE has its final response already; the CANCEL has no effect,
            # "The UAS MUST then respond to the CANCEL with 200".
            self.respond(tx.key, 200, "", now)
            return Outcome(summary="CANCEL after final")
        dialog = self.pending[invite_key].dialog if invite_key in self.pending else None
        # The 487 carries the same To tag as the CANCEL's 200: the early dialog's, if any.
        tag = dialog.local_tag if dialog is not None else new_tag()
        self.respond(tx.key, 200, "", now, to_tag=tag)
        self.respond(invite_key, 487, "", now, to_tag=tag)
        if dialog is None:
            return Outcome(summary="CANCEL 487")
        # The early dialog is gone: tell the router, so its services let go of it.
        self.forget_dialog(dialog.id)
        return Outcome(event=self._event(msg, tx.key, dialog, False, []), summary="CANCEL 487")

    def _on_response(self, msg: SipMessage, now: float) -> Outcome:
        key = f"{top_branch(msg)}|{msg.cseq[1]}"
        tx = self.transactions.get(key)
        if tx is None:
            return self._adopt_response(msg)
        is_invite = msg.cseq[1] == "INVITE"
        if msg.status < 200:
            kind = txn.Input.RECV_1XX
        elif msg.status < 300 and is_invite:
            kind = txn.Input.RECV_2XX
        else:
            kind = txn.Input.RECV_FINAL
        actions = self._step(tx, kind, now)
        dialog, method, _ = self.client_meta.get(key, ("", msg.cseq[1], ""))
        if txn.Act.SEND_ACK in actions:
            self.outbox.append((ack_for_non_2xx(tx.request, msg).to_bytes(), tx.peer))
        confirmed: Dialog | None = None
        if kind is txn.Input.RECV_2XX:
            current = self.find_dialog(dialog)
            if current is not None and not current.remote_tag:
                confirmed = self.dialogs[dialog] = confirmed_by(current, msg)  # §12.1.2
            self._ack_2xx(dialog, msg)  # every 2xx, retransmissions too (§13.2.2.4)
        if msg.status < 200 and key in self.cancel_on_1xx and tx.state is txn.State.PROCEEDING:
            self._send_cancel(tx, self.cancel_on_1xx.pop(key), now)  # asked for before this 1xx
        elif msg.status >= 200:
            self.cancel_on_1xx.pop(key, None)
        if msg.status < 200 and is_invite and msg.status > 100 and key in self.client_meta:
            return Outcome(event=self._response_event(dialog, method, msg), summary=f"{msg.status} {method}")
        if txn.Act.TO_TU not in actions or msg.status < 200 or key not in self.client_meta:
            return Outcome(summary=f"{msg.status} absorbed")  # a 100, or the answer to a Timer C CANCEL
        if is_invite:
            self.reinvite_out.discard(dialog)
        return Outcome(
            event=self._response_event(dialog, method, msg), new_dialog=confirmed, summary=f"{msg.status} {method}"
        )

    def _adopt_response(self, msg: SipMessage) -> Outcome:
        """A response to a request another node sent, whose transaction died with it (the
        balancer sends it to a survivor: us). The dialog is in the replica (the sender
        wrote it before sending), found from the Call-ID and our tag (the From's), so the
        answer is taken over here: a 2xx confirms the dialog and is ACKed (each copy: the
        callee re-sends it until then), a 300-699 to an INVITE is ACKed hop by hop, and
        the services hear of it once."""
        from_tag = parse_name_addr(msg.get("From") or "").tag
        dialog = self.find_dialog(dialog_id(msg.call_id, from_tag)) if from_tag else None
        if dialog is None or dialog.local_tag != from_tag:
            self.count("sip.response_unmatched")
            return Outcome(summary="stray response")
        method, heard = msg.cseq[1], (top_branch(msg), msg.status)
        if method == "INVITE" and 200 <= msg.status < 300:
            confirmed = None if dialog.remote_tag else confirmed_by(dialog, msg)
            if confirmed is not None:
                self.dialogs[dialog.id] = confirmed
            self._ack_2xx(dialog.id, msg)
            if confirmed is None:
                return Outcome(summary="2xx again: ACKed")
            self.count("takeover.adopted_response")
            event = self._response_event(dialog.id, method, msg)
            return Outcome(event=event, new_dialog=confirmed, summary=f"adopted {msg.status} {method}")
        if method == "INVITE" and msg.status >= 300:
            ack = SipMessage(method="ACK", uri=dialog.remote_target)  # §17.1.1.3, the INVITE's branch
            ack.headers = [("Via", msg.get_all("Via")[0]), ("Max-Forwards", "70"), ("From", msg.get("From") or "")]
            ack.headers += [("Call-ID", msg.call_id)] + [("Route", route) for route in dialog.route_set]
            ack.headers += [("To", msg.get("To") or ""), ("CSeq", f"{msg.cseq[0]} ACK")]
            self.outbox.append((ack.to_bytes(), self._next_hop(dialog)))
        if msg.status < 200 and method != "INVITE" or msg.status == 100 or heard in self.adopted:
            return Outcome(summary=f"{msg.status} absorbed (adopted)")
        if msg.status >= 200:
            self.adopted[heard] = None
            while len(self.adopted) > ADOPTED_MEMORY:
                del self.adopted[next(iter(self.adopted))]
        self.count("takeover.adopted_response")
        return Outcome(event=self._response_event(dialog.id, method, msg), summary=f"adopted {msg.status} {method}")

    def _made_up(self, dialog: str, method: str, status: int, call_id: str) -> bus.ResponseReceived:
        """A final response no peer sent (a timeout: 408; a transport failure: 503)."""
        ends = dialog in self.standalone
        self.standalone.discard(dialog)
        return bus.ResponseReceived(dialog, method, status, call_id, ends_activity=ends)

    def _response_event(self, dialog: str, method: str, msg: SipMessage) -> bus.ResponseReceived:
        ends = msg.status >= 200 and dialog in self.standalone
        if ends:
            self.standalone.discard(dialog)
        content_type = msg.get("Content-Type") or ""
        return bus.ResponseReceived(
            dialog, method, msg.status, msg.call_id, content_type, msg.body, self._head, msg.reason, ends
        )

    def _ack_2xx(self, ident: str, response: SipMessage) -> None:
        """The UAC core ACKs a 2xx end to end, on the dialog's route (§13.2.2.4)."""
        dialog = self.find_dialog(ident)
        if dialog is None:
            return
        ack = build_request(dialog, "ACK", response.cseq[0], self.sip_host, [], b"")
        self.outbox.append((ack.to_bytes(), self._next_hop(dialog)))

    def _next_hop(self, dialog: Dialog) -> Addr:
        return target_of(parse_name_addr(dialog.route_set[0]).uri if dialog.route_set else dialog.remote_target)

    # --- dialogs -------------------------------------------------------------------

    def find_dialog(self, ident: str) -> Dialog | None:
        """From the cache, else the replica. The replicated dialog's remote CSeq is the one
        of its creation or last refresh; the response recorded with each delivery
        (`keys.last_response`, replicated in the delivery's commit) carries the latest, so
        a request older than one any node answered is refused after an eviction or a
        takeover too (§12.2.2)."""
        found = self.dialogs.get(ident)
        if found is None:
            raw = self.read(keys.dialog(ident))
            if raw is not None:
                found = Dialog.decode(raw)
                last = self.read(keys.last_response(ident))
                if last is not None and (answered := ServerResponse.decode(last).cseq) > found.remote_cseq:
                    found = _with(found, remote_cseq=answered)
                self.dialogs[ident] = found
        return found

    def _recorded(self, dialog: Dialog, msg: SipMessage) -> ServerResponse | None:
        """The response already sent to this very request (by any node), if any."""
        raw = self.read(keys.last_response(dialog.id))
        record = ServerResponse.decode(raw) if raw is not None else None
        if record is not None and (record.cseq, record.method) == (msg.cseq[0], msg.method):
            return record
        return None

    def _remember(self, dialog: Dialog) -> Dialog:
        self.dialogs[dialog.id] = dialog
        return dialog

    def forget_dialog(self, ident: str) -> None:
        self.dialogs.pop(ident)
        self.unacked.pop(ident, None)
        self.reinvite_out.discard(ident)
        self.reinvite_in.pop(ident, None)

    # --- commands from the router -------------------------------------------------

    def respond(
        self,
        key: str,
        status: int,
        reason: str,
        now: float,
        headers: list[tuple[str, str]] | None = None,
        body: bytes = b"",
        content_type: str = "",
        to_tag: str = "",
    ) -> bool:
        pending = self.pending.get(key)
        if pending is None:
            self.count("sip.respond_unknown_tx")
            return False
        request, tx, dialog = pending.request, pending.tx, pending.dialog
        extra = list(headers or [])
        to_tag = to_tag or (dialog.local_tag if dialog else "")
        if not to_tag and status > 100 and not parse_name_addr(request.get("To") or "").tag:
            to_tag = new_tag()
        if request.method == "INVITE" and 100 < status < 300 and dialog is not None:
            # §12.1.1: a response that creates a dialog (a 2xx, or a 1xx with a To tag: an
            # early dialog) carries a Contact and copies the request's Record-Route.
            extra.append(("Contact", dialog.local_contact))
            if not parse_name_addr(request.get("To") or "").tag:
                extra += [("Record-Route", route) for route in request.get_all("Record-Route")]
        if 200 <= status < 300 and pending.session is not None:
            extra += response_headers(pending.session)
        if request.method == "INVITE" and 200 <= status < 300:
            extra.append(("Supported", "timer"))
        if (status == 405 or request.method == "OPTIONS") and not any(k == "Allow" for k, _ in extra):
            extra.append(("Allow", ALLOW))
        response = build_response(request, status, reason, to_tag, extra, body, content_type)
        tx.last_response = response.to_bytes()
        kind = txn.Input.SEND_1XX if status < 200 else (txn.Input.SEND_2XX if status < 300 else txn.Input.SEND_FINAL)
        self._step(tx, kind, now)
        if status >= 200:
            del self.pending[key]
        if request.method == "INVITE" and 200 <= status < 300 and dialog is not None:
            t1 = self.timers.t1
            self.unacked[dialog.id] = Unacked(tx.last_response, tx.peer, t1, now + t1, now + 64 * t1)
            heapq.heappush(self.wakeups, (now + t1, "ack:" + dialog.id))
            # Accepted (RFC 6026 §8.7): the transaction absorbs retransmitted INVITEs and the
            # 2xx is ours to retransmit (`unacked`, until the ACK), so the transaction need
            # not hold it for the 64*T1 it lives on: about 600 bytes a call in progress.
            tx.last_response = b""
        if request.method == "BYE" and status < 300 and dialog is not None:
            self.forget_dialog(dialog.id)
        return True

    def send_in_dialog(
        self,
        dialog: Dialog,
        method: str,
        body: bytes,
        content_type: str,
        now: float,
        extra: list[tuple[str, str]] | None = None,
        standalone: bool = False,
    ) -> SipMessage:
        """Send `method` on `dialog`, whose `local_cseq` the shell has already committed;
        `extra` headers a service added (not those we write); `standalone`: a request
        outside any dialog (its final answer ends its activity)."""
        headers = [("Content-Type", content_type)] if body else []
        headers += [(name, value) for name, value in extra or [] if canonical(name) not in RA_OWNED]
        if standalone:
            self.standalone.add(dialog.id)
        msg = build_request(dialog, method, dialog.local_cseq, self.sip_host, headers, body)
        peer = self._next_hop(dialog)
        data = msg.to_bytes()
        key = f"{top_branch(msg)}|{method}"
        self.transactions[key] = txn.client(key, data, self.timers, peer, now, is_invite=method == "INVITE")
        self._arm(self.transactions[key])
        self.client_meta[key] = (dialog.id, method, dialog.call_id)
        self.dialogs[dialog.id] = dialog
        if method == "INVITE":
            self.reinvite_out.add(dialog.id)
            heapq.heappush(self.wakeups, (now + self.timers.timer_c, "C:" + key))
        self.outbox.append((data, peer))
        return msg

    def cancel(self, dialog: str, now: float, extra: list[tuple[str, str]] | None = None) -> bool:
        """CANCEL our INVITE on `dialog` if it has had no final response (§9.1); the
        INVITE then gets its 487 (or its 2xx, if the callee answered first: the TU
        decides, by BYE). False if there is nothing to cancel."""
        for key, (ident, method, _) in self.client_meta.items():
            tx = self.transactions.get(key)
            if ident != dialog or method != "INVITE" or tx is None:
                continue
            if tx.state is txn.State.CALLING:  # §9.1: not before a provisional response
                self.cancel_on_1xx[key] = [(n, v) for n, v in extra or [] if canonical(n) not in RA_OWNED]
                return True
            if tx.state is txn.State.PROCEEDING:
                self._send_cancel(tx, extra or [], now)
                return True
        self.count("sip.cancel_nothing_pending")
        return False

    def _send_cancel(self, tx: txn.Transaction, extra: list[tuple[str, str]], now: float) -> None:
        cancel = cancel_for(tx.request)
        cancel.headers += [(name, value) for name, value in extra if canonical(name) not in RA_OWNED]
        cancel_key = f"{top_branch(cancel)}|CANCEL"
        self.transactions[cancel_key] = txn.client(cancel_key, cancel.to_bytes(), self.timers, tx.peer, now)
        self._arm(self.transactions[cancel_key])
        self.outbox.append((cancel.to_bytes(), tx.peer))
        self.count("sip.cancel_sent")

    def transport_error(self, peer: Addr, now: float) -> list[bus.ResponseReceived]:
        """Sending to `peer` failed (§17.1.4, §17.2.4): its transactions end; clients
        report a timeout to the TU."""
        failed: list[bus.ResponseReceived] = []
        for key, tx in list(self.transactions.items()):
            if tx.peer != peer:
                continue
            if txn.Act.TIMEOUT in self._step(tx, txn.Input.TRANSPORT_ERROR, now) and key in self.client_meta:
                dialog, method, call_id = self.client_meta.pop(key)
                failed.append(self._made_up(dialog, method, 503, call_id))
            if tx.is_terminated:
                del self.transactions[key]
                self.pending.pop(key, None)
        self.count("sip.transport_error")
        return failed

    # --- timers --------------------------------------------------------------------
    # One heap of (deadline, key) entries; an entry whose timer moved or fired is skipped
    # when it surfaces, so arming is O(log n) and no wakeup scans every transaction.

    def deadline(self) -> float | None:
        while self.wakeups and self._is_stale(*self.wakeups[0]):
            heapq.heappop(self.wakeups)
        return self.wakeups[0][0] if self.wakeups else None

    def _is_stale(self, at: float, key: str) -> bool:
        if key.startswith("100:"):
            return key[4:] not in self.pending
        if key.startswith("ack:"):
            unacked = self.unacked.get(key[4:])
            return unacked is None or unacked.next_at != at
        tx = self.transactions.get(key)
        due = tx.deadline() if tx is not None else None
        return due is None or due > at

    def _arm(self, tx: txn.Transaction) -> None:
        due = tx.deadline()
        if due is not None:
            heapq.heappush(self.wakeups, (due, tx.key))

    def on_timer(self, now: float) -> list[bus.ResponseReceived]:
        timeouts: list[bus.ResponseReceived] = []
        while self.wakeups and self.wakeups[0][0] <= now:
            _, key = heapq.heappop(self.wakeups)
            if key.startswith("ack:"):
                self._retransmit_2xx(key[4:], now)
                continue
            if key.startswith("100:"):
                pending = self.pending.get(key[4:])
                if pending is not None and not pending.tx.last_response:
                    self.respond(key[4:], 100, "", now)
                continue
            if key.startswith("C:"):
                timeouts += self._timer_c(key[2:], now)
                continue
            tx = self.transactions.get(key)
            if tx is None:
                continue
            for fired in tx.due(now):
                if txn.Act.TIMEOUT in self._step(tx, fired, now) and key in self.client_meta:
                    dialog, method, call_id = self.client_meta[key]
                    self.reinvite_out.discard(dialog)
                    timeouts.append(self._made_up(dialog, method, 408, call_id))
            if tx.is_terminated:
                del self.transactions[key]
                self.pending.pop(key, None)
                self.client_meta.pop(key, None)
        return timeouts

    def _timer_c(self, key: str, now: float) -> list[bus.ResponseReceived]:
        """Our INVITE has had only provisional answers for `timer_c`: CANCEL it (§9.1); if
        64*T1 later it still has no final response, it is over: the TU hears 408."""
        tx = self.transactions.get(key)
        if tx is None or tx.state is not txn.State.PROCEEDING:
            self.cancelled.discard(key)
            return []
        if key not in self.cancelled:
            self.cancelled.add(key)
            self.count("sip.timer_c")
            cancel = cancel_for(tx.request)
            cancel_key = f"{top_branch(cancel)}|CANCEL"
            self.transactions[cancel_key] = txn.client(cancel_key, cancel.to_bytes(), self.timers, tx.peer, now)
            self._arm(self.transactions[cancel_key])
            self.outbox.append((cancel.to_bytes(), tx.peer))
            heapq.heappush(self.wakeups, (now + 64 * self.timers.t1, "C:" + key))
            return []
        self.cancelled.discard(key)
        del self.transactions[key]
        dialog, method, call_id = self.client_meta.pop(key, ("", "INVITE", ""))
        self.reinvite_out.discard(dialog)
        return [self._made_up(dialog, method, 408, call_id)] if dialog else []

    def _retransmit_2xx(self, ident: str, now: float) -> None:
        unacked = self.unacked.get(ident)
        if unacked is None or unacked.next_at > now:
            return
        if now >= unacked.give_up_at:
            # §13.3.1.4: no ACK within 64*T1: confirm and then end the session with BYE.
            del self.unacked[ident]
            self.count("sip.ack_timeout")
            dialog = self.find_dialog(ident)
            if dialog is not None:
                self.send_in_dialog(_with(dialog, local_cseq=dialog.local_cseq + 1), "BYE", b"", "", now)
                self.forget_dialog(ident)
            self.abandoned.append((ident, stored_keys(dialog) if dialog is not None else [keys.dialog(ident)]))
            return
        self.outbox.append((unacked.data, unacked.peer))
        unacked.interval = min(2 * unacked.interval, self.timers.t2)
        unacked.next_at = now + unacked.interval
        heapq.heappush(self.wakeups, (unacked.next_at, "ack:" + ident))

    def _step(self, tx: txn.Transaction, event: txn.Input, now: float) -> tuple[txn.Act, ...]:
        actions = tx.step(event, now)
        self._arm(tx)
        if txn.Act.SEND_LAST in actions and tx.last_response:
            self.outbox.append((tx.last_response, tx.peer))
        if txn.Act.RESEND_REQUEST in actions:
            self.outbox.append((tx.request, tx.peer))
        return actions


def first_contact(msg: SipMessage) -> str:
    contacts = [c for c in msg.get_all("Contact") if c != "*"]
    return parse_name_addr(contacts[0]).uri if contacts else ""


def _with(dialog: Dialog, **changes: object) -> Dialog:
    return msgspec.structs.replace(dialog, **changes)
