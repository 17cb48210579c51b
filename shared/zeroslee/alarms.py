"""Alarms a process raises about what it runs (pure: the caller passes `now`).

A service whose code keeps failing, or a journaled event dropped as poison, is an
operator's problem, not a reason to stop a node: the failure is contained (the delivery
rolls back), counted, and here turned into an alarm that `zeroslee-admin alarms` and the
process's stats show. An alarm is raised when `threshold` failures of one source fall
within `window` seconds (or at once, for `raise_now`), and clears itself after `clear_after`
seconds without a new one (JAIN SLEE's alarm facility, in the small).
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

# JAIN SLEE's AlarmLevel, most severe first (CLEARED is `clear`).
LEVELS = ("critical", "major", "minor", "warning", "indeterminate")


def parse_level(text: str) -> str:
    level = str(text).strip().lower()
    if level not in LEVELS:
        raise ValueError(f"unknown alarm level {text!r}: one of {', '.join(LEVELS)}")
    return level


@dataclass
class Alarm:
    source: str  # e.g. "service:chat", "journal"
    level: str  # "major" (service failing), "minor" (one poison event)
    message: str  # the latest failure
    raised_at: float
    last_at: float
    failures: int = 0
    held: bool = False  # a state alarm (`set`): cleared by `clear`, never by time


@dataclass
class Alarms:
    threshold: int = 3
    window: float = 60.0
    clear_after: float = 120.0
    recent: dict[str, deque[float]] = field(default_factory=dict)
    raised: dict[str, Alarm] = field(default_factory=dict)

    def failed(self, source: str, message: str, now: float) -> None:
        """One failure of `source`; raises (or refreshes) its alarm at `threshold`."""
        times = self.recent.setdefault(source, deque())
        times.append(now)
        while times and times[0] < now - self.window:
            times.popleft()
        alarm = self.raised.get(source)
        if alarm is not None:
            alarm.message, alarm.last_at, alarm.failures = message, now, alarm.failures + 1
        elif len(times) >= self.threshold:
            self.raised[source] = Alarm(source, "major", message, now, now, len(times))

    def raise_now(self, source: str, message: str, now: float, level: str = "minor") -> None:
        alarm = self.raised.get(source)
        if alarm is None:
            self.raised[source] = Alarm(source, level, message, now, now, 1)
        else:
            alarm.message, alarm.last_at, alarm.failures = message, now, alarm.failures + 1

    def set(self, source: str, level: str, message: str, now: float) -> None:
        """Raise (or update) a state alarm: it stays until `clear`, however quiet."""
        alarm = self.raised.get(source)
        if alarm is None:
            self.raised[source] = Alarm(source, level, message, now, now, 1, held=True)
        else:
            alarm.level, alarm.message, alarm.last_at, alarm.held = level, message, now, True

    def clear(self, source: str) -> bool:
        """Clear `source`'s alarm; whether one was raised."""
        self.recent.pop(source, None)
        return self.raised.pop(source, None) is not None

    def active(self, now: float) -> list[Alarm]:
        """The alarms still raised; those quiet for `clear_after` are cleared."""
        for source, alarm in list(self.raised.items()):
            if not alarm.held and now - alarm.last_at >= self.clear_after:
                del self.raised[source]
                self.recent.pop(source, None)
        return sorted(self.raised.values(), key=lambda a: a.raised_at)
