"""A test service that raises and clears an alarm on request, deployed by test_alarms:
an INVITE to `alarm-raise-LEVEL` raises alarm `disk` at LEVEL; to `alarm-clear`, clears it."""

from __future__ import annotations

import msgspec

from router.sbb import Sbb, SbbContext, SipRequest, on


class Nothing(msgspec.Struct):
    pass


class AlarmingSbb(Sbb):
    State = Nothing
    state: Nothing

    @on(SipRequest, method="INVITE", initial_by=lambda event: event.activity)
    def on_invite(self, event: SipRequest, ctx: SbbContext) -> None:
        if event.user.startswith("alarm-raise-"):
            ctx.alarms.raise_alarm("disk", event.user.removeprefix("alarm-raise-"), f"raised by {event.call_id}")
        elif event.user == "alarm-clear":
            ctx.alarms.clear("disk")
        ctx.respond(event, 200)
