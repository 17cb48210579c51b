"""Version 3 of tests.ra.versions' counter: a State of another name (a new schema), so
entities in progress finish on the code they started with, new calls run this."""

from __future__ import annotations

import msgspec

from router.sbb import Sbb, SbbContext, SipRequest, on


class Tally(msgspec.Struct):
    infos: list[int] = []


class CounterSbb3(Sbb):
    State = Tally
    state: Tally

    @on(SipRequest, method="INVITE", initial_by=lambda event: event.activity)
    def on_invite(self, event: SipRequest, ctx: SbbContext) -> None:
        ctx.respond(event, 200)

    @on(SipRequest, method="INFO")
    def on_info(self, event: SipRequest, ctx: SbbContext) -> None:
        self.state.infos.append(len(self.state.infos) + 1)
        ctx.respond(event, 200, body=f"v3 {len(self.state.infos)}".encode(), content_type="text/plain")

    @on(SipRequest, method="BYE")
    def on_bye(self, event: SipRequest, ctx: SbbContext) -> None:
        ctx.respond(event, 200)
