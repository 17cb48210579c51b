"""Wake-up calls: the second example service, timer-driven and calling out.

Call `sip:wakeup-30@...` and hang up: thirty seconds later the service calls you back at
the Contact you called from, and hangs up once you answer. It shows the patterns the chat
does not: a timer that outlives the call that set it (on a null activity the SBB stays
attached to), and a dialog the service creates itself (UAC side).
"""

from __future__ import annotations

import msgspec

from router.sbb import Sbb, SbbContext, SipRequest, SipResponse, TimerEvent, on


class WakeupState(msgspec.Struct):
    callback: str = ""  # where to call back (the caller's Contact)
    caller: str = ""  # the caller's From URI, called back as the To
    alarm: str = ""  # the null activity holding the timer
    outbound: str = ""  # the dialog of the wake-up call


def per_dialog(event: SipRequest) -> str:
    return event.activity


def delay_of(user: str) -> float:
    """`wakeup-30` -> 30 seconds; a bad or missing number -> 10 s; at most a day."""
    tail = user.rpartition("-")[2]
    try:
        return min(max(float(tail), 0.0), 86_400.0)
    except ValueError:
        return 10.0


class WakeupSbb(Sbb):
    State = WakeupState
    state: WakeupState

    @on(SipRequest, method="INVITE", initial_by=per_dialog)
    def on_invite(self, event: SipRequest, ctx: SbbContext) -> None:
        if not self.state.alarm:
            self.state.alarm = ctx.create_null_activity()
            ctx.attach(self.state.alarm)  # keeps this entity alive after the call ends
            ctx.set_timer(self.state.alarm, delay_of(event.user))
            self.state.callback, self.state.caller = event.contact or event.from_uri, event.from_uri
        ctx.respond(event, 200)

    @on(SipRequest, method="BYE")
    def on_bye(self, event: SipRequest, ctx: SbbContext) -> None:
        ctx.respond(event, 200)

    @on(TimerEvent)
    def on_alarm(self, event: TimerEvent, ctx: SbbContext) -> None:
        self.state.outbound = ctx.create_dialog()
        ctx.attach(self.state.outbound)
        ctx.invite(self.state.outbound, "sip:wakeup@zeroslee.invalid", self.state.callback)

    @on(SipResponse)
    def on_response(self, event: SipResponse, ctx: SbbContext) -> None:
        if event.method == "INVITE" and 200 <= event.status < 300:
            ctx.send_request(self.state.outbound, "BYE")  # the wake-up was the ring itself
        elif event.method == "BYE" or event.status >= 300:
            ctx.detach(self.state.alarm)  # done: the alarm activity ends, and so do we
