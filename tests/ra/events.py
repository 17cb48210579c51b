"""The counter RA's event types, in a module of their own so that a service can declare
them (an RA run as `__main__` could not name its types), and the service that does."""

from __future__ import annotations

import msgspec

from router.sbb import Sbb


class Tick(msgspec.Struct, frozen=True):
    n: int


class TickSbb(Sbb):
    """Takes no call: it declares the counter RA's Tick, so the router may decode one
    (an event of a type no deployed service declares is refused)."""

    event_types = (Tick,)


SERVICE = """
[[services]]
name = "ticks"
sbb = "tests.ra.events:TickSbb"
options = { users = "^$" }
"""
