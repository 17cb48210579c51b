"""Which nodes are up, from their heartbeats: one pure rule shared by the balancers and
the routers (no clock read here: `now` comes in)."""

from __future__ import annotations

from dataclasses import dataclass, field

from zeroslee.config import Config

Addr = tuple[str, int]


@dataclass
class NodeState:
    addr: Addr
    ready: bool = False
    last_seen: float = -1e9
    streak: int = 0  # consecutive ready heartbeats, for hysteresis
    exited: bool = False  # its process is known to have exited (until its next heartbeat)
    unready_since: float = -1e9  # when its heartbeats stopped saying ready
    beat_ready: bool = False  # what its last heartbeat said
    draining: bool = False  # its last heartbeat said it is drained (no new work)
    version: str = ""  # the code its last heartbeat said it runs


@dataclass
class Liveness:
    """Up after `alive_after` consecutive ready heartbeats; down after `dead_after` of
    silence or one not-ready heartbeat."""

    dead_after: float
    alive_after: int
    nodes: dict[str, NodeState] = field(default_factory=dict)
    # live(): the answer, and the span of `now` over which it holds (asked for every
    # message the balancer routes; it changes only with a heartbeat, an exit, or a
    # node's silence passing `dead_after`).
    _live: list[str] = field(default_factory=list)
    _live_span: tuple[float, float] = (1.0, 0.0)

    def heartbeat(
        self, node: str, ready: bool, addr: Addr, now: float, draining: bool = False, version: str = ""
    ) -> None:
        state = self.nodes.setdefault(node, NodeState(addr))
        self._live_span = (1.0, 0.0)
        state.addr = addr
        state.draining, state.version = draining, version
        fresh = now - state.last_seen > self.dead_after  # the first beat after a silence
        if fresh:
            state.streak = 0
        if not ready and (fresh or state.beat_ready):
            state.unready_since = now
        state.beat_ready = ready
        state.last_seen = now
        state.exited = False
        state.streak = state.streak + 1 if ready else 0
        state.ready = state.streak >= self.alive_after or (state.ready and ready)

    def gone(self, node: str) -> None:
        """The node's process is known to have exited: down now, and up again only after
        `alive_after` fresh heartbeats."""
        state = self.nodes.get(node)
        if state is not None:
            self._live_span = (1.0, 0.0)
            state.ready, state.streak, state.exited = False, 0, True

    def live(self, now: float) -> list[str]:
        start, end = self._live_span
        if start <= now < end:
            return list(self._live)
        live = sorted(n for n, s in self.nodes.items() if s.ready and now - s.last_seen <= self.dead_after)
        # It holds until the first live node's silence passes `dead_after` (a node that
        # is not live stays so until its next heartbeat, which clears this).
        ends = [self.nodes[n].last_seen + self.dead_after for n in live]
        self._live, self._live_span = (
            live,
            (
                max((s.last_seen for s in self.nodes.values()), default=now),
                min(ends, default=now),
            ),
        )
        return list(live)

    def steady(self, now: float) -> list[str]:
        """Nodes that keep their work (activities, timers, dialogs): live, or heartbeating
        but not ready for less than `dead_after`. A node slowed down by load, whose router
        answers its RA's ping late for a moment, must not be robbed of its work: the
        adoption it would trigger loads the survivors and spreads the overload (seen at
        200 calls/s: routers and RAs adopting each other's dialogs in turn, for good)."""
        return sorted(
            n
            for n, s in self.nodes.items()
            if not s.exited
            and now - s.last_seen <= self.dead_after
            and (s.ready or now - s.unready_since <= self.dead_after)
        )

    def serving(self, now: float) -> list[str]:
        """Live nodes that take new work: not drained (all live ones if every one is)."""
        live = self.live(now)
        return [n for n in live if not self.nodes[n].draining] or live

    def eligible(self, now: float) -> list[str]:
        """Steady nodes that may own work: a drained node's goes to the others, by the
        same rule as a dead node's (all steady ones if every one is drained)."""
        steady = self.steady(now)
        return [n for n in steady if not self.nodes[n].draining] or steady

    def draining(self, now: float) -> list[str]:
        """Steady nodes whose heartbeats say they are drained."""
        return [n for n in self.steady(now) if self.nodes[n].draining]

    def reachable(self, now: float) -> list[str]:
        """Nodes still heartbeating, ready or not (a fallback when none is live)."""
        return sorted(n for n, s in self.nodes.items() if not s.exited and now - s.last_seen <= self.dead_after)


# Processes that judge liveness for adoption (routers, RAs) read the heartbeats every
# this many heartbeat intervals rather than at each beat (runtime.follow_heartbeats).
ADOPTION_READ_EVERY = 3


def adoption_dead_after(config: Config) -> float:
    """How long a node must be silent before its work is taken over: longer than the
    balancer's detection (which only moves traffic), so a node slowed down by load, whose
    heartbeats arrive late, is not robbed of its activities and timers."""
    return max(1.0, 2 * config.balancer.dead_after)
