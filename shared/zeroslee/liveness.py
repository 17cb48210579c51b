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


@dataclass
class Liveness:
    """Up after `alive_after` consecutive ready heartbeats; down after `dead_after` of
    silence or one not-ready heartbeat."""

    dead_after: float
    alive_after: int
    nodes: dict[str, NodeState] = field(default_factory=dict)

    def heartbeat(self, node: str, ready: bool, addr: Addr, now: float) -> None:
        state = self.nodes.setdefault(node, NodeState(addr))
        state.addr = addr
        if now - state.last_seen > self.dead_after:
            state.streak = 0
        state.last_seen = now
        state.streak = state.streak + 1 if ready else 0
        state.ready = state.streak >= self.alive_after or (state.ready and ready)

    def live(self, now: float) -> list[str]:
        return sorted(n for n, s in self.nodes.items() if s.ready and now - s.last_seen <= self.dead_after)


def adoption_dead_after(config: Config) -> float:
    """How long a node must be silent before its work is taken over: longer than the
    balancer's detection (which only moves traffic), so a node slowed down by load, whose
    heartbeats arrive late, is not robbed of its activities and timers."""
    return max(1.0, 2 * config.balancer.dead_after)
