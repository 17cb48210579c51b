"""The counter RA's event types: in a module of their own, so every router can import them
by name (an RA run as `__main__` could not name its types)."""

from __future__ import annotations

import msgspec


class Tick(msgspec.Struct, frozen=True):
    n: int
