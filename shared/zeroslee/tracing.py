"""One call across the cluster (`zeroslee-admin trace CALL-ID`): each process keeps a
bounded ring of short records per Call-ID (and, in the router, per SBB entity), and
answers `TraceRequest` on its control socket with the records of the keys asked for.

Bounded twice: `[trace] calls` keys per process, the oldest forgotten first, and
`per_call` records per key, the oldest dropped first. A record is a tuple (wall-clock
time, who sent, to whom, what): the admin merges every process's records by time into
a text ladder. Cheap on the hot path: the Call-ID is found in the raw bytes by one
regular expression, and a record is one tuple appended to a deque.
"""

from __future__ import annotations

import re
import time
from collections import OrderedDict, deque

from zeroslee.config import TraceConfig

Record = tuple[float, str, str, str]  # (time, source, destination, what)

_CALL_ID = re.compile(rb"\n(?:call-id|i)[ \t]*:[ \t]*([^\r\n]*)", re.IGNORECASE)


def call_id_of(data: bytes) -> str:
    """The Call-ID of a raw SIP message (compact form included), "" if it has none."""
    found = _CALL_ID.search(data)
    return found.group(1).strip().decode("utf-8", "replace") if found else ""


def first_line(data: bytes) -> str:
    """A message's start line, shortened: what the ladder shows of it."""
    end = data.find(b"\r\n", 0, 200)
    line = data[: end if end >= 0 else 120].decode("utf-8", "replace")
    if line.startswith("SIP/2.0 "):
        return line[8:]
    return line.rsplit(" SIP/2.0", 1)[0]


class Trace:
    def __init__(self, config: TraceConfig) -> None:
        self.calls = config.calls
        self.per_call = config.per_call
        self.rings: OrderedDict[str, deque[Record]] = OrderedDict()

    def record(self, key: str, source: str, destination: str, what: str, when: float = 0.0) -> None:
        """One record under `key`; `when` (default now) lets one happening recorded
        under several keys be one record to the reader, who merges them."""
        if not self.calls or not key:
            return
        ring = self.rings.get(key)
        if ring is None:
            ring = self.rings[key] = deque(maxlen=self.per_call)
            if len(self.rings) > self.calls:
                self.rings.popitem(last=False)
        ring.append((when or time.time(), source, destination, what))

    def sip(self, data: bytes, source: str, destination: str, call_id: str = "") -> None:
        """One SIP message seen: keyed by its Call-ID."""
        if self.calls:
            self.record(call_id or call_id_of(data), source, destination, first_line(data))

    def records(self, keys: list[str]) -> list[tuple[str, float, str, str, str]]:
        out = []
        for key in keys:
            for when, source, destination, what in self.rings.get(key, ()):
                out.append((key, when, source, destination, what))
        return out
