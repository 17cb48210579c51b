"""A test service that watches the `rooms` profile table (test_profiles): an INVITE to
`watch-rooms` attaches it; each change it hears of is traced (`profile changed`)."""

from __future__ import annotations

import msgspec

from router.sbb import ProfileUpdatedEvent, Sbb, SbbContext, SipRequest, on


class Nothing(msgspec.Struct):
    pass


class WatcherSbb(Sbb):
    State = Nothing
    state: Nothing

    @on(SipRequest, method="INVITE", initial_by=lambda event: "the-watcher")
    def on_invite(self, event: SipRequest, ctx: SbbContext) -> None:
        ctx.profiles.watch("rooms")
        ctx.respond(event, 200)

    @on(ProfileUpdatedEvent)
    def on_change(self, event: ProfileUpdatedEvent, ctx: SbbContext) -> None:
        ctx.tracer.info("profile changed", table=event.table, key=event.key, removed=event.removed)
