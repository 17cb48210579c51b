"""A back-to-back user agent (B2BUA): the call-control service, and the README's
walk-through (Writing a service, a B2BUA).

A caller's INVITE to `sip:b2b-PORT@...` (the A leg) makes one root SBB entity, which
places a call of its own (the B leg) to `sip:uas@127.0.0.1:PORT` and attaches to both
dialogs: both legs are one entity, on every node (its state is replicated like any
SBB's). It relays between the legs:
- provisional and final responses to the INVITE (the SDP offer and answer with them);
- BYE from either side, then the other side's final response;
- re-INVITE and INFO from either side, answered with the other side's final response;
- CANCEL while ringing: the B leg's INVITE is cancelled (its 487 ends it).
The RA ACKs the B leg's 2xx and absorbs the caller's ACK, so the offer must come in the
INVITE (no delayed offer). PORT must be in `[b2b]`'s range (option `ports`, default
6000-6999, the test clients' range): anything else gets 404, so the cluster is no open
relay. A real deployment maps callees through a profile table instead (`targets`).
"""

from __future__ import annotations

import msgspec

from router.sbb import Sbb, SbbContext, SipRequest, SipResponse, on


class Relayed(msgspec.Struct):
    """A request from one leg waiting for the other leg's final response to it."""

    request: SipRequest
    method: str


class B2bState(msgspec.Struct):
    a: str = ""  # the caller's dialog (we are its UAS)
    b: str = ""  # the callee's dialog (we are its UAC)
    invite: SipRequest | None = None  # the caller's INVITE, until it has its final response
    cancelled: bool = False  # the caller gave up while the callee rang
    answered: bool = False  # the callee's 2xx came
    answer: bytes = b""  # its body (SDP), for a copy of the caller's INVITE a survivor gets
    answer_type: str = ""
    waiting: list[Relayed] = []  # requests relayed, awaiting the other leg's answer, oldest first


class B2bTarget(msgspec.Struct, frozen=True):
    """A row of the `targets` profile table: where a called user is bridged to."""

    uri: str


def per_caller_dialog(event: SipRequest) -> str:
    return event.activity


def target_of(user: str, ports: str, table_row: B2bTarget | None) -> str | None:
    """The B leg's Request-URI for `user`: the profile row's, else `b2b-PORT` with PORT
    in `ports` ("6000-6999"); None: no route (404)."""
    if table_row is not None:
        return table_row.uri
    prefix, _, port = user.partition("-")
    low, _, high = ports.partition("-")
    if prefix != "b2b" or not port.isdigit() or not low.isdigit() or not high.isdigit():
        return None
    if not int(low) <= int(port) <= int(high):
        return None
    return f"sip:uas@127.0.0.1:{int(port)}"


class B2bSbb(Sbb):
    State = B2bState
    state: B2bState
    usage_counters = ("calls", "answered", "failed", "cancelled")

    @on(SipRequest, method="INVITE", initial_by=per_caller_dialog)
    def on_invite(self, event: SipRequest, ctx: SbbContext) -> None:
        if self.state.a and event.created_dialog:
            # The caller's INVITE again (its first node died before answering it and the
            # balancer sent it on): the callee's answer goes to this copy now, or has come.
            if self.state.invite is not None:
                self.state.invite = event
                ctx.respond(event, 100)
            elif self.state.answered:
                ctx.respond(event, 200, body=self.state.answer, content_type=self.state.answer_type)
            else:
                ctx.respond(event, 487 if self.state.cancelled else 480)
            return
        if self.state.a:  # a re-INVITE, from either side
            self.relay(event, ctx)
            return
        row = ctx.profiles.get("targets", event.user) if ctx.profiles.has("targets") else None
        target = target_of(event.user, ctx.options.get("ports", "6000-6999"), row)
        if target is None:
            ctx.respond(event, 404, "No Route", headers=[("Warning", '399 zeroslee "no b2b target for this user"')])
            return
        ctx.usage.increment("calls")
        self.state.a, self.state.invite = event.activity, event
        self.state.b = ctx.create_dialog()
        ctx.attach(self.state.b)
        ctx.invite(self.state.b, event.from_uri, target, event.body, event.content_type)
        ctx.respond(event, 100)  # taken: the final answer will be the callee's

    @on(SipResponse)
    def on_response(self, event: SipResponse, ctx: SbbContext) -> None:
        if event.dialog == self.state.b and event.method == "INVITE" and self.state.invite is not None:
            self.callee_answered(event, ctx)
            return
        if event.status < 200:
            return
        for i, waiting in enumerate(self.state.waiting):  # the answer to a request we relayed
            if waiting.method == event.method and waiting.request.activity != event.dialog:
                del self.state.waiting[i]
                ctx.respond(waiting.request, event.status, event.reason, event.body, event.content_type)
                return

    def callee_answered(self, event: SipResponse, ctx: SbbContext) -> None:
        invite = self.state.invite
        assert invite is not None
        if event.status < 200:
            if not self.state.cancelled:
                ctx.respond(invite, event.status, event.reason, event.body, event.content_type)
            return
        self.state.invite = None
        if self.state.cancelled:
            if event.status < 300:  # the callee answered as the caller gave up: end its call
                ctx.send_request(self.state.b, "BYE", headers=[CANCELLED])
            return
        if event.status < 300:
            self.state.answered, self.state.answer, self.state.answer_type = True, event.body, event.content_type
            ctx.usage.increment("answered")
        else:
            ctx.usage.increment("failed")
        ctx.respond(invite, event.status, event.reason, event.body, event.content_type)

    @on(SipRequest, method="CANCEL")
    def on_cancel(self, event: SipRequest, ctx: SbbContext) -> None:
        """The caller gave up while ringing (the RA answered its CANCEL 200 and its INVITE
        487). The callee's INVITE is cancelled; if it was answered meanwhile, BYE."""
        if self.state.cancelled:
            return
        self.state.cancelled = True
        ctx.usage.increment("cancelled")
        if self.state.invite is not None:
            ctx.cancel(self.state.b, headers=[CANCELLED])
        elif self.state.answered:
            ctx.send_request(self.state.b, "BYE", headers=[CANCELLED])

    @on(SipRequest, method="BYE")
    def on_bye(self, event: SipRequest, ctx: SbbContext) -> None:
        """A hang-up is answered at once (a B2BUA ends its side of the call whatever the
        other side says) and passed on to the other leg."""
        other = self.other(event)
        ctx.respond(event, 200)
        if other and self.state.answered:
            self.state.answered = False
            ctx.send_request(other, "BYE")

    @on(SipRequest, method="INFO")
    def on_info(self, event: SipRequest, ctx: SbbContext) -> None:
        if not self.state.answered:
            ctx.respond(event, 481, headers=[("Warning", '399 zeroslee "no call to relay to"')])
            return
        self.relay(event, ctx)

    def other(self, event: SipRequest) -> str:
        return self.state.b if event.activity == self.state.a else self.state.a

    def relay(self, event: SipRequest, ctx: SbbContext) -> None:
        """Send `event` on the other leg; that leg's final response answers this one."""
        if any(w.method == event.method for w in self.state.waiting):
            # One at a time per method (a re-INVITE meanwhile is glare: §14.1, 491).
            ctx.respond(event, 491 if event.method == "INVITE" else 500, headers=[("Retry-After", "1")])
            return
        self.state.waiting.append(Relayed(event, event.method))
        ctx.send_request(self.other(event), event.method, event.body, event.content_type)
        ctx.defer(event)  # answered when the other leg answers


CANCELLED = ("Reason", 'SIP;cause=487;text="caller cancelled"')
