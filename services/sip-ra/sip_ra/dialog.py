"""SIP dialogs (RFC 3261 §12): the state the RA replicates so any node can use a dialog.

A `Dialog` is the SIP activity's replicated data: everything another node's sip-ra needs
to send a request on it (route set, remote target, tags, CSeq) or to recognise requests
on it after the node that created it is gone.
"""

from __future__ import annotations

import hashlib
import secrets

import msgspec

from zeroslee import keys
from zeroslee.sipmsg import SipMessage, parse, parse_name_addr, parse_via

_encoder = msgspec.msgpack.Encoder()
_decoder = msgspec.msgpack.Decoder()


class Dialog(msgspec.Struct, frozen=True):
    id: str
    call_id: str
    local_tag: str
    remote_tag: str
    local_uri: str  # our From in requests we send (the INVITE's To, without tag)
    remote_uri: str
    remote_target: str  # the peer's Contact URI
    route_set: list[str]  # UAS: the INVITE's Record-Route, in order (§12.1.1)
    local_cseq: int
    remote_cseq: int
    owner: str  # node that created it, or adopted it
    created_by: str = ""
    local_contact: str = ""
    session_interval: int = 0  # RFC 4028: the negotiated Session-Expires (0: none)
    refresher: str = ""  # "uac" or "uas"

    def encode(self) -> bytes:
        return _encoder.encode(self)

    @staticmethod
    def decode(data: bytes) -> Dialog:
        return msgspec.msgpack.decode(data, type=Dialog)


class DialogCache:
    """The dialogs used lately, at most `capacity`, least recently used first out.

    A copy, never the only one: every dialog is in the replicated store, which the core
    reads on a miss (`RaCore.find_dialog`). Bounded so that an RA's memory does not grow
    with the number of calls in progress (10,000 held calls cost ~2 KB each unbounded)."""

    def __init__(self, capacity: int) -> None:
        self.capacity = max(1, capacity)
        self._dialogs: dict[str, Dialog] = {}  # insertion order = recency

    def get(self, ident: str) -> Dialog | None:
        dialog = self._dialogs.pop(ident, None)
        if dialog is not None:
            self._dialogs[ident] = dialog
        return dialog

    def __setitem__(self, ident: str, dialog: Dialog) -> None:
        self._dialogs.pop(ident, None)
        self._dialogs[ident] = dialog
        if len(self._dialogs) > self.capacity:
            del self._dialogs[next(iter(self._dialogs))]

    def pop(self, ident: str) -> Dialog | None:
        return self._dialogs.pop(ident, None)

    def __contains__(self, ident: object) -> bool:
        return ident in self._dialogs

    def __len__(self) -> int:
        return len(self._dialogs)


dialog_id = keys.sip_dialog_id  # (Call-ID, our tag) -> the dialog's id, in either direction


def stored_keys(dialog: Dialog) -> list[str]:
    """Every store key the RA writes for `dialog`: its entry, and (for a dialog we answered)
    the index of the INVITE behind it. Whoever ends a dialog removes them all: an index
    left behind (its dialog ended before any activity recorded it) stays for good."""
    return [keys.dialog(dialog.id), keys.invite_index(invite_digest(dialog.call_id, dialog.remote_tag))]


def invite_digest(call_id: str, from_tag: str) -> str:
    """Identifies the initial INVITE behind a dialog, so a retransmission of it reaching
    another node finds the dialog instead of creating a second one."""
    return hashlib.blake2b(f"{call_id}\x00{from_tag}".encode(), digest_size=12).hexdigest()


def new_tag() -> str:
    return secrets.token_hex(6)


def new_branch() -> str:
    return "z9hG4bK" + secrets.token_hex(8)


def uas_dialog(invite: SipMessage, node: str, local_contact: str) -> Dialog:
    """The dialog a 2xx to `invite` will establish (§12.1.1)."""
    if parse_name_addr(invite.get("To") or "").tag:
        raise ValueError("an INVITE with a To tag does not create a dialog")
    sender = parse_name_addr(invite.get("From") or "")
    contacts = invite.get_all("Contact")
    target = parse_name_addr(contacts[0]).uri if contacts else sender.uri
    tag = new_tag()
    return Dialog(
        id=dialog_id(invite.call_id, tag),
        call_id=invite.call_id,
        local_tag=tag,
        remote_tag=sender.tag,
        local_uri=strip_tag(invite.get("To") or ""),
        remote_uri=strip_tag(invite.get("From") or ""),
        remote_target=target,
        route_set=invite.get_all("Record-Route"),
        local_cseq=0,
        remote_cseq=invite.cseq[0],
        owner=node,
        created_by=node,
        local_contact=local_contact,
    )


def uac_dialog(
    ident: str,
    from_uri: str,
    to_uri: str,
    node: str,
    local_contact: str,
    outbound: str,
    call_host: str,
    call_id: str = "",
    local_tag: str = "",
) -> Dialog:
    """The dialog our INVITE will create (§12.1.2), before any answer: no remote tag yet,
    the callee's URI as remote target, our outbound proxy (the balancer) as route. The
    router gives the Call-ID and our tag it derived `ident` from (`keys.sip_dialog_id`),
    so the callee's requests find the dialog as a caller's do."""
    return Dialog(
        id=ident,
        call_id=call_id or f"{secrets.token_hex(10)}@{call_host}",
        local_tag=local_tag or new_tag(),
        remote_tag="",
        local_uri=f"<{from_uri}>",
        remote_uri=f"<{to_uri}>",
        remote_target=to_uri,
        route_set=[f"<sip:{outbound};lr>"],
        local_cseq=1,
        remote_cseq=0,
        owner=node,
        created_by=node,
        local_contact=local_contact,
    )


def confirmed_by(dialog: Dialog, response: SipMessage) -> Dialog:
    """A UAC dialog once a 2xx arrived (§12.1.2): the route set is the Record-Route
    reversed, the remote target the Contact, the remote tag the To tag. A callee that
    did not copy the balancer's Record-Route (§12.1.1 says it must; SIPp's built-in uas
    does not) keeps the outbound proxy as the route: a node never sends a request of
    its own straight to a UA (its Via names the cluster, so the answer would be lost)."""
    contacts = response.get_all("Contact")
    recorded = response.get_all("Record-Route")
    return msgspec.structs.replace(
        dialog,
        remote_tag=parse_name_addr(response.get("To") or "").tag,
        remote_target=parse_name_addr(contacts[0]).uri if contacts else dialog.remote_target,
        route_set=list(reversed(recorded)) if recorded else dialog.route_set,
    )


def strip_tag(value: str) -> str:
    addr = parse_name_addr(value)
    params = "".join(f";{k}={v}" if v else f";{k}" for k, v in addr.params.items() if k != "tag")
    display = f'"{addr.display}" ' if addr.display else ""
    return f"{display}<{addr.uri}>{params}"


def build_response(
    request: SipMessage,
    status: int,
    reason: str,
    to_tag: str = "",
    headers: list[tuple[str, str]] | None = None,
    body: bytes = b"",
    content_type: str = "",
) -> SipMessage:
    """A response copying Via, From, To, Call-ID and CSeq (§8.2.6.2)."""
    response = SipMessage(status=status, reason=reason or REASONS.get(status, "Unknown"))
    for name in ("Via", "From", "To", "Call-ID", "CSeq"):
        for key, value in request.headers:
            if key == name:
                if name == "To" and to_tag and "tag" not in parse_name_addr(value).params:
                    value = f"{value};tag={to_tag}"
                response.headers.append((key, value))
    response.headers.extend(headers or [])
    if body:
        response.headers.append(("Content-Type", content_type or "application/octet-stream"))
        response.body = body
    return response


def build_request(
    dialog: Dialog, method: str, cseq: int, via_host: str, headers: list[tuple[str, str]], body: bytes
) -> SipMessage:
    """An in-dialog request (§12.2.1.1): R-URI is the remote target, Route the route set."""
    msg = SipMessage(method=method, uri=dialog.remote_target)
    msg.headers.append(("Via", f"SIP/2.0/UDP {via_host};branch={new_branch()};rport"))
    msg.headers.append(("Max-Forwards", "70"))
    msg.headers.append(("From", f"{dialog.local_uri};tag={dialog.local_tag}"))
    tag = f";tag={dialog.remote_tag}" if dialog.remote_tag else ""  # none before the dialog exists
    msg.headers.append(("To", f"{dialog.remote_uri}{tag}"))
    msg.headers.append(("Call-ID", dialog.call_id))
    msg.headers.append(("CSeq", f"{cseq} {method}"))
    for route in dialog.route_set:
        msg.headers.append(("Route", route))
    if dialog.local_contact:
        msg.headers.append(("Contact", dialog.local_contact))
    msg.headers.extend(headers)
    msg.body = body
    return msg


def top_branch(msg: SipMessage) -> str:
    vias = msg.get_all("Via")
    return parse_via(vias[0]).branch if vias else ""


REASONS = {
    100: "Trying",
    180: "Ringing",
    200: "OK",
    400: "Bad Request",
    403: "Forbidden",
    404: "Not Found",
    405: "Method Not Allowed",
    408: "Request Timeout",
    415: "Unsupported Media Type",
    416: "Unsupported URI Scheme",
    420: "Bad Extension",
    481: "Call/Transaction Does Not Exist",
    483: "Too Many Hops",
    487: "Request Terminated",
    491: "Request Pending",
    500: "Server Internal Error",
    501: "Not Implemented",
    503: "Service Unavailable",
    505: "Version Not Supported",
    513: "Message Too Large",
}


def ack_for_non_2xx(invite: bytes, response: SipMessage) -> SipMessage:
    """The client transaction's ACK for a 300-699 (§17.1.1.3): same branch, R-URI and
    Route as the INVITE, the response's To (with its tag)."""
    request = parse(invite)
    ack = SipMessage(method="ACK", uri=request.uri)
    ack.headers = [("Via", request.get_all("Via")[0]), ("Max-Forwards", "70")]
    ack.headers += [(k, v) for k, v in request.headers if k in ("From", "Call-ID", "Route")]
    ack.headers.append(("To", response.get("To") or ""))
    ack.headers.append(("CSeq", f"{request.cseq[0]} ACK"))
    return ack


def cancel_for(invite: bytes) -> SipMessage:
    """The CANCEL of a request we sent (§9.1): its Request-URI, Call-ID, From, To, Route
    and top Via (so the same branch), and its CSeq number with the method CANCEL."""
    request = parse(invite)
    cancel = SipMessage(method="CANCEL", uri=request.uri)
    cancel.headers = [("Via", request.get_all("Via")[0]), ("Max-Forwards", "70")]
    cancel.headers += [(k, v) for k, v in request.headers if k in ("From", "To", "Call-ID", "Route")]
    cancel.headers.append(("CSeq", f"{request.cseq[0]} CANCEL"))
    return cancel
