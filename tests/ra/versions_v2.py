"""Version 2 of tests.ra.versions' counter: its State evolves (a field added, with a
default), so running entities move to this code with their counts."""

from __future__ import annotations

import msgspec

from router.sbb import SbbContext, SipRequest, on
from tests.ra.versions import CounterSbb


class Count(msgspec.Struct):
    n: int = 0
    infos_seen_by_v2: int = 0


class CounterSbb2(CounterSbb):
    State = Count  # type: ignore[assignment]
    state: Count  # type: ignore[assignment]
    version = "v2"

    @on(SipRequest, method="INFO")
    def on_info(self, event: SipRequest, ctx: SbbContext) -> None:
        self.state.infos_seen_by_v2 += 1
        super().on_info(event, ctx)
