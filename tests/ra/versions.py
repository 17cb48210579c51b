"""A test service in versions (test_lifecycle): each answers with its version, so a test
sees which code ran an entity. Version 1 here; `versions_v2` evolves its State (a field
added with a default: the entities move to it); `versions_v3` has a State of another
name (a new schema: the entities in progress finish on the old code); `versions_bad`
claims to evolve it and changes a field's type (refused)."""

from __future__ import annotations

import msgspec

from router.sbb import Sbb, SbbContext, ServiceStartedEvent, SipRequest, on


class Count(msgspec.Struct):
    n: int = 0


def per_dialog(event: SipRequest) -> str:
    return event.activity


class CounterSbb(Sbb):
    """INVITE answers 200; each INFO counts and answers `v1 <count>`; BYE ends."""

    State = Count
    state: Count
    version = "v1"

    @on(SipRequest, method="INVITE", initial_by=per_dialog)
    def on_invite(self, event: SipRequest, ctx: SbbContext) -> None:
        ctx.respond(event, 200)

    @on(SipRequest, method="INFO")
    def on_info(self, event: SipRequest, ctx: SbbContext) -> None:
        self.state.n += 1
        ctx.respond(event, 200, body=f"{self.version} {self.state.n}".encode(), content_type="text/plain")

    @on(SipRequest, method="BYE")
    def on_bye(self, event: SipRequest, ctx: SbbContext) -> None:
        ctx.respond(event, 200)


class StarterSbb(Sbb):
    """A child-free root made by the service's start (one per activation), traced."""

    State = Count
    state: Count

    @on(ServiceStartedEvent, initial_by=lambda event: "starter")
    def on_started(self, event: ServiceStartedEvent, ctx: SbbContext) -> None:
        self.state.n += 1
        ctx.tracer.info("service started", service=event.service, generation=event.generation, times=self.state.n)


class StartedCounterSbb(CounterSbb):
    """The counter, which also hears of its service's start."""

    @on(ServiceStartedEvent, initial_by=lambda event: "starter")
    def on_started(self, event: ServiceStartedEvent, ctx: SbbContext) -> None:
        ctx.tracer.info("service started", service=event.service, generation=event.generation)
