"""The trace facility (JAIN SLEE 1.1 §13.5), per service: `ctx.tracer.fine("...")`.

Each service has one trace level, cluster-wide, changed live with `zeroslee-admin tracer
SERVICE LEVEL`: the admin tells every router (`SetTracer`), and the router that answers
first also commits the level to the clustered store (`tracer/<service>`), where a router
that starts later finds it. A trace line is emitted at once, not at commit (JAIN SLEE's
tracers are not transactional), as one structured log line (`event: "trace"`) naming
the service, the SBB and the level. Pure: the shell gives the levels and the sink.
"""

from __future__ import annotations

from collections.abc import Callable

# JAIN SLEE's TraceLevel, most severe first; a tracer at a level emits it and every
# more severe one. OFF emits nothing.
LEVELS = ("off", "severe", "warning", "info", "config", "fine", "finer", "finest")
DEFAULT = "info"
RANK = {name: i for i, name in enumerate(LEVELS)}
RESERVED = frozenset({"event", "level", "timestamp", "node", "service", "sbb", "trace_level", "message"})

Sink = Callable[[str, str, str, str, dict[str, object]], None]  # (service, sbb, level, message, fields)


def parse_level(text: str) -> str:
    level = text.strip().lower()
    if level not in RANK:
        raise ValueError(f"unknown trace level {text!r}: one of {', '.join(LEVELS)}")
    return level


class Tracer:
    """What one SBB entity's `ctx.tracer` is during one delivery."""

    def __init__(self, service: str, sbb_id: str, levels: dict[str, str], sink: Sink) -> None:
        self.service, self.sbb_id, self.levels, self.sink = service, sbb_id, levels, sink
        self.lost = 0

    @property
    def level(self) -> str:
        return self.levels.get(self.service, DEFAULT)

    def enabled(self, level: str) -> bool:
        return level != "off" and RANK[level] <= RANK[self.level]

    def trace(self, level: str, message: str, /, **fields: object) -> None:
        """Emit at `level` if enabled. A field named like one of the line's own keys is
        renamed `field_<name>`; a sink that fails (a value it cannot write) costs the
        line, never the handler."""
        if not self.enabled(level):
            return
        safe = {(f"field_{k}" if k in RESERVED else k): v for k, v in fields.items()}
        try:
            self.sink(self.service, self.sbb_id, level, str(message), safe)
        except Exception:
            self.lost += 1

    def severe(self, message: str, /, **fields: object) -> None:
        self.trace("severe", message, **fields)

    def warning(self, message: str, /, **fields: object) -> None:
        self.trace("warning", message, **fields)

    def info(self, message: str, /, **fields: object) -> None:
        self.trace("info", message, **fields)

    def config(self, message: str, /, **fields: object) -> None:
        self.trace("config", message, **fields)

    def fine(self, message: str, /, **fields: object) -> None:
        self.trace("fine", message, **fields)

    def finer(self, message: str, /, **fields: object) -> None:
        self.trace("finer", message, **fields)

    def finest(self, message: str, /, **fields: object) -> None:
        self.trace("finest", message, **fields)
