"""Usage parameters (JAIN SLEE 1.1 §11), per service: counters and samples an SBB updates
through `ctx.usage`, declared on its root class:

    class ChatSbb(Sbb):
        usage_counters = ("relayed",)
        usage_samples = ("relay_bytes",)
        ... ctx.usage.increment("relayed"); ctx.usage.sample("relay_bytes", len(text))

Not transactional (as in JAIN SLEE): an update counts at once, even if the delivery rolls
back or runs again after a conflict. Kept per router in memory, so a cluster's figure is
the sum over its routers (what a Prometheus `sum by (service, name)` does); exported as
`zeroslee_usage_counter_total{service,name}` and `zeroslee_usage_sample_{count,sum}`
(with `_min`/`_max` gauges), and as `usage.<service>.<name>` in `zeroslee-admin stats`.
Only declared names are accepted: the labels stay a bounded set. Pure.
"""

from __future__ import annotations

from dataclasses import dataclass, field


class UsageError(Exception):
    """An undeclared usage parameter, or a bad value."""


@dataclass
class Sample:
    count: int = 0
    total: float = 0.0
    low: float = 0.0
    high: float = 0.0

    def add(self, value: float) -> None:
        self.low = value if not self.count else min(self.low, value)
        self.high = value if not self.count else max(self.high, value)
        self.count += 1
        self.total += value


@dataclass
class UsageSet:
    """One service's parameters, as declared."""

    counters: dict[str, int] = field(default_factory=dict)
    samples: dict[str, Sample] = field(default_factory=dict)

    @classmethod
    def declared(cls, counters: tuple[str, ...], samples: tuple[str, ...]) -> UsageSet:
        return cls(dict.fromkeys(counters, 0), {name: Sample() for name in samples})

    def declare(self, counters: tuple[str, ...], samples: tuple[str, ...]) -> None:
        """A new version's names too (service upgrade); those there keep their values."""
        for name in counters:
            self.counters.setdefault(name, 0)
        for name in samples:
            self.samples.setdefault(name, Sample())


class Usage:
    """What `ctx.usage` is: the updates of one service's parameters."""

    def __init__(self, service: str, params: UsageSet) -> None:
        self.service, self.params = service, params

    def increment(self, name: str, n: int = 1) -> None:
        if name not in self.params.counters:
            raise UsageError(f"{self.service} declares no usage counter {name!r} (usage_counters)")
        if not isinstance(n, int) or n < 0:
            raise UsageError(f"a usage counter only grows: {n!r}")
        self.params.counters[name] += n

    def sample(self, name: str, value: float) -> None:
        sample = self.params.samples.get(name)
        if sample is None:
            raise UsageError(f"{self.service} declares no usage sample {name!r} (usage_samples)")
        if not isinstance(value, int | float) or value != value:  # NaN
            raise UsageError(f"a usage sample is a number: {value!r}")
        sample.add(float(value))
