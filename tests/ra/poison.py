"""Test services whose code fails, deployed beside the chat by test_poison: one raises in
`created()`, one in its `initial_by` selector. A node must contain both."""

from __future__ import annotations

import msgspec

from router.sbb import Sbb, SbbContext, SipRequest, on


class Nothing(msgspec.Struct):
    pass


def broken_selector(event: SipRequest) -> str:
    raise LookupError(f"no convergence name for {event.user}")


class CreatedRaises(Sbb):
    State = Nothing
    state: Nothing

    @on(SipRequest, method="INVITE", initial_by=lambda event: event.activity)
    def on_invite(self, event: SipRequest, ctx: SbbContext) -> None:
        ctx.respond(event, 200)

    def created(self, ctx: SbbContext) -> None:
        raise RuntimeError("created() of a broken service")


class SelectorRaises(Sbb):
    State = Nothing
    state: Nothing

    @on(SipRequest, method="INVITE", initial_by=broken_selector)
    def on_invite(self, event: SipRequest, ctx: SbbContext) -> None:
        ctx.respond(event, 200)
