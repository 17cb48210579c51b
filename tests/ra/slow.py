"""A test service of known capacity, for overload tests that must not depend on this
machine's speed (issue 22): every INVITE and BYE delivery holds its router `hold_ms`
(option, default 20) before answering, so a router serves at most 1000 / (2 * hold_ms)
calls per second, whatever the CPU. The sleep blocks the router's event loop on
purpose: that is what a slow delivery does to a node."""

from __future__ import annotations

import time

import msgspec

from router.sbb import Sbb, SbbContext, SipRequest, on


class Call(msgspec.Struct):
    pass


def per_dialog(event: SipRequest) -> str:
    return event.activity


class HoldingSbb(Sbb):
    State = Call
    state: Call

    def hold(self, ctx: SbbContext) -> None:
        time.sleep(float(ctx.options.get("hold_ms", "20")) / 1000)

    @on(SipRequest, method="INVITE", initial_by=per_dialog)
    def on_invite(self, event: SipRequest, ctx: SbbContext) -> None:
        self.hold(ctx)
        ctx.respond(event, 200)

    @on(SipRequest, method="BYE")
    def on_bye(self, event: SipRequest, ctx: SbbContext) -> None:
        self.hold(ctx)
        ctx.respond(event, 200)
