"""Every SIP message a process sends or receives, seen once: counted for /metrics
(metrics.SipCounts), recorded for `zeroslee-admin trace` (tracing.py) and, when
`[capture] hep` is set, mirrored to a HEP collector (hep.py). The balancer and the
sip-ras call it from their send and receive paths.

When capture is off and tracing is off, a message costs one dictionary update (its
counter); the Call-ID is looked for only when a record or a copy needs it.
"""

from __future__ import annotations

import time

from zeroslee import hep
from zeroslee.metrics import SipCounts
from zeroslee.runtime import Process
from zeroslee.tracing import call_id_of, first_line

Addr = tuple[str, int]


class Tap:
    def __init__(self, proc: Process, local: Addr, names: dict[Addr, str], own_name: str) -> None:
        self.counts = SipCounts()
        self.trace = proc.trace
        self.tracing = proc.trace.calls > 0
        capture = proc.config.capture
        self.mirror = hep.Mirror(capture.hep, capture.agent_id, proc.node or proc.service) if capture.hep else None
        self.local = local
        self.names = {**names, local: own_name}

    def name(self, addr: Addr) -> str:
        return self.names.get(addr) or f"{addr[0]}:{addr[1]}"

    def received(self, data: bytes, source: Addr, tcp: bool = False, edge: bool = True, note: str = "") -> None:
        """`edge`: from outside the cluster (counted, traced); else only mirrored."""
        self._seen(data, source, self.local, "in", tcp, edge, note)

    def sent(self, data: bytes, destination: Addr, tcp: bool = False, edge: bool = True, when: float = 0.0) -> None:
        """After the send succeeded; `when` is the time taken just before it (so the
        receiver's record of it, in another process, never seems to come first)."""
        self._seen(data, self.local, destination, "out", tcp, edge, "", when)

    def _seen(
        self,
        data: bytes,
        source: Addr,
        destination: Addr,
        direction: str,
        tcp: bool,
        edge: bool,
        note: str,
        when: float = 0.0,
    ) -> None:
        if edge:
            self.counts.count(data, direction)
        traced = edge and self.tracing
        if self.mirror is None and not traced:
            return
        call_id = call_id_of(data)
        if not call_id:  # a keepalive, junk: nothing to correlate
            return
        when = when or time.time()
        if traced:
            what = first_line(data) + (f"  [{note}]" if note else "")
            self.trace.record(call_id, self.name(source), self.name(destination), what, when)
        if self.mirror is not None:
            protocol = hep.TCP if tcp else hep.UDP
            self.mirror.copy(data, source, destination, int(when * 1_000_000), call_id, protocol)

    def close(self) -> None:
        if self.mirror is not None:
            self.mirror.close()
