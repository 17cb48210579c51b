"""The echo service of the README's "Writing a service" (kept identical to it by a test)."""

import msgspec

from router.sbb import Sbb, SbbContext, SipRequest, on


class EchoState(msgspec.Struct):
    dialog: str = ""
    echoed: int = 0


class EchoSbb(Sbb):
    State = EchoState  # persisted in the cluster after every delivery
    state: EchoState  # the typed instance a handler works on
    priority = 0  # order among SBBs attached to the same activity

    # Initial event: a new INVITE creates a root entity, one per dialog (the convergence name).
    @on(SipRequest, method="INVITE", initial_by=lambda event: event.activity)
    def on_invite(self, event: SipRequest, ctx: SbbContext) -> None:
        self.state.dialog = event.activity
        ctx.respond(event, 200)

    @on(SipRequest, method="INFO")
    def on_info(self, event: SipRequest, ctx: SbbContext) -> None:
        ctx.respond(event, 200)
        if event.body:
            self.state.echoed += 1
            ctx.send_request(self.state.dialog, "INFO", event.body, event.content_type)

    @on(SipRequest, method="BYE")
    def on_bye(self, event: SipRequest, ctx: SbbContext) -> None:
        ctx.respond(event, 200)  # the dialog ends; the entity goes with its last attachment
