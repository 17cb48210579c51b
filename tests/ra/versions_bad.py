"""A broken "version" of tests.ra.versions' counter: it claims to evolve its State (the
same name) but changes a field's type and adds one without a default: refused."""

from __future__ import annotations

import msgspec

from router.sbb import Sbb, SbbContext, SipRequest, on


class Count(msgspec.Struct):
    owner: str
    n: str = ""


class CounterSbbBad(Sbb):
    State = Count
    state: Count

    @on(SipRequest, method="INVITE", initial_by=lambda event: event.activity)
    def on_invite(self, event: SipRequest, ctx: SbbContext) -> None:
        ctx.respond(event, 200)
