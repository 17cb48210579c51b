"""The chat relay: the seed scenario's service, and the reference example of an SBB.

Each participant's INVITE creates a root SBB entity (one per dialog). The first one in a
room creates a null activity for the room, names it with the room's name, and attaches;
later ones look the name up and attach. An INFO with a body is fired as a MessageEvent
on the room; every other participant's SBB relays it as an INFO on its own dialog.
"""

from __future__ import annotations

import msgspec

from router.sbb import ActivityEndEvent, Sbb, SbbContext, SipRequest, TimerEvent, on


class MessageEvent(msgspec.Struct, frozen=True):
    text: bytes
    content_type: str
    sender: str  # SBB id of the participant who wrote it


class ChatState(msgspec.Struct):
    room: str = ""
    dialog: str = ""
    ringing: SipRequest | None = None  # an INVITE answered 180, awaiting its timer
    ring_timer: str = ""


def per_dialog(event: SipRequest) -> str:
    return event.activity


def sdp_answer(offer: bytes) -> bytes:
    """An SDP answer refusing every offered stream (RFC 3264 §6: port 0). A chat has no media."""
    lines = offer.decode("utf-8", "replace").replace("\r\n", "\n").split("\n")
    media = [line for line in lines if line.startswith("m=")]
    # The offer's address family (RFC 5118 §4.7 mixes them): an IPv6-only peer gets IP6.
    ip6 = any(line.startswith("c=IN IP6") for line in lines)
    address = "IN IP6 ::1" if ip6 else "IN IP4 127.0.0.1"
    out = ["v=0", f"o=zeroslee 0 0 {address}", "s=-", f"c={address}", "t=0 0"]
    for line in media:
        kind, _port, rest = (line[2:].split(" ", 2) + ["", ""])[:3]
        out.append(f"m={kind} 0 {rest}".rstrip())
    return ("\r\n".join(out) + "\r\n").encode()


class RoomProfile(msgspec.Struct, frozen=True):
    """A row of the `rooms` profile table (config/cluster.toml), keyed by room name."""

    max_members: int = 0  # 0: no limit
    title: str = ""


class ChatSbb(Sbb):
    State = ChatState
    state: ChatState
    usage_counters = ("relayed",)  # texts sent on to a member (ctx.usage; zeroslee_usage_*)
    usage_samples = ("relay_bytes",)

    @on(SipRequest, method="INVITE", initial_by=per_dialog)
    def on_invite(self, event: SipRequest, ctx: SbbContext) -> None:
        room = self.state.room or event.user or "lobby"  # a re-INVITE keeps its room
        activity = ctx.lookup(room)
        if activity is None:
            # Two first joins on two nodes: both bind, one commit loses the version check
            # on the name, and the router re-runs that delivery, which then finds the room.
            activity = ctx.create_null_activity()
            ctx.bind(room, activity)
        if ctx.profiles.has("rooms") and event.created_dialog:  # a room's size, if the cluster sets one
            limit = ctx.profiles.get("rooms", room)
            if limit is not None and limit.max_members and ctx.attachment_count(activity) >= limit.max_members:
                ctx.respond(event, 486, "Room Full")
                return
        ctx.attach(activity)
        self.state.room, self.state.dialog = room, event.activity
        if room.startswith("ring-") and event.created_dialog:
            # Ringing rooms answer 180 first and 200 later, so CANCEL and early-dialog
            # cases can be exercised (DESIGN §3).
            ctx.respond(event, 180)
            self.state.ringing = event
            self.state.ring_timer = ctx.set_timer(event.activity, float(ctx.options.get("ring_delay", "2.0")))
            return
        self.answer(event, ctx)

    def answer(self, event: SipRequest, ctx: SbbContext) -> None:
        if event.has_sdp_offer:
            ctx.respond(event, 200, body=sdp_answer(event.body), content_type="application/sdp")
        else:
            ctx.respond(event, 200)

    @on(TimerEvent)
    def on_timer(self, event: TimerEvent, ctx: SbbContext) -> None:
        if self.state.ringing is not None and event.timer_id == self.state.ring_timer:
            self.answer(self.state.ringing, ctx)
            self.state.ringing, self.state.ring_timer = None, ""

    @on(ActivityEndEvent)
    def on_end(self, event: ActivityEndEvent, ctx: SbbContext) -> None:
        """Our dialog ended without a BYE (the RA gave up on it): leave the room too."""
        if event.activity == self.state.dialog:
            self.leave(ctx)

    @on(SipRequest, method="CANCEL")
    def on_cancel(self, event: SipRequest, ctx: SbbContext) -> None:
        """The caller gave up while ringing (the RA already answered 200 and 487)."""
        self.leave(ctx)

    @on(SipRequest, method="INFO")
    def on_info(self, event: SipRequest, ctx: SbbContext) -> None:
        if event.body:
            room = ctx.lookup(self.state.room)
            if room is not None:
                ctx.fire(room, MessageEvent(event.body, event.content_type or "text/plain", ctx.sbb_id))
        ctx.respond(event, 200)

    @on(MessageEvent)
    def on_message(self, event: MessageEvent, ctx: SbbContext) -> None:
        if event.sender != ctx.sbb_id:
            ctx.send_request(self.state.dialog, "INFO", event.text, event.content_type)
            ctx.tracer.fine("relayed", room=self.state.room, sender=event.sender, size=len(event.text))
            ctx.usage.increment("relayed")
            ctx.usage.sample("relay_bytes", len(event.text))

    @on(SipRequest, method="BYE")
    def on_bye(self, event: SipRequest, ctx: SbbContext) -> None:
        self.leave(ctx)
        ctx.respond(event, 200)

    def leave(self, ctx: SbbContext) -> None:
        """Detach from the room; the last one out unbinds its name, so the room ends."""
        room = ctx.lookup(self.state.room)
        if room is not None:
            ctx.detach(room)
            if not ctx.has_attachments(room):
                ctx.unbind(self.state.room)
