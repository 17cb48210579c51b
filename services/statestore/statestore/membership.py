"""Who is primary: the role machine of one statestore (pure: no I/O, no clock).

Theory of operation. Every store polls its peers with `Hello` and learns each one's role,
epoch and sequence. The cluster has one primary per epoch; every other live store is a
synchronous backup holding a full mirror (DESIGN §4).

- A store starts in STARTING. If a live peer is PRIMARY it joins it (SYNCING: the primary
  adds it to its backups and sends a snapshot; Clone pattern) and becomes BACKUP once the
  snapshot is installed. It never takes the primary role from a running primary, so a
  restarted store cannot flip the cluster under in-flight commits.
- If no live peer is primary once every peer has answered or stayed silent for
  `dead_after`, the candidate (itself, and every live peer in STARTING or BACKUP) with the
  highest sequence, then the earliest in the configured node order, campaigns for an
  epoch above every epoch it has seen: it becomes primary only with a majority of the
  voters (the stores and the witness), each voting once per epoch; the others join it.
- A primary that has not heard from a majority for `lease` steps down (fenced): on the
  minority side of a partition it stops serving rather than diverge.
- A BACKUP whose primary falls silent goes back to STARTING and the election runs again.
- A PRIMARY that sees another primary of a higher epoch (or the same epoch and an earlier
  node) steps down and rejoins: at most one primary survives a meeting of two.

This core only decides: the shell sends the messages, collects votes, applies snapshots.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field


class Role(enum.StrEnum):
    STARTING = "starting"
    SYNCING = "syncing"
    PRIMARY = "primary"
    BACKUP = "backup"


class Input(enum.StrEnum):
    PRIMARY_SEEN = "primary_seen"  # a live peer is primary (and outranks us, if we are)
    ELECTED = "elected"  # we won a majority of the votes (stores and witness)
    LEASE_LOST = "lease_lost"  # as primary, no majority in touch for a lease: fence
    PRIMARY_LOST = "primary_lost"  # the primary we follow fell silent
    SNAPSHOT_INSTALLED = "snapshot_installed"
    RESYNC_NEEDED = "resync_needed"  # a sequence gap, a stale epoch, or dropped as backup


class Action(enum.StrEnum):
    JOIN = "join"
    CAMPAIGN = "campaign"  # ask the voters for `candidate_epoch`; then `won()` or not
    PROMOTE = "promote"
    NONE = "none"


# (role, input) -> (next role, action). Anything not listed is ignored: it cannot change
# this store's role (e.g. PRIMARY_SEEN while SYNCING towards that primary).
TRANSITIONS: dict[tuple[Role, Input], tuple[Role, Action]] = {
    (Role.STARTING, Input.PRIMARY_SEEN): (Role.SYNCING, Action.JOIN),
    (Role.STARTING, Input.ELECTED): (Role.PRIMARY, Action.PROMOTE),
    (Role.SYNCING, Input.SNAPSHOT_INSTALLED): (Role.BACKUP, Action.NONE),
    (Role.SYNCING, Input.PRIMARY_LOST): (Role.STARTING, Action.NONE),
    (Role.SYNCING, Input.RESYNC_NEEDED): (Role.STARTING, Action.NONE),
    (Role.BACKUP, Input.PRIMARY_LOST): (Role.STARTING, Action.NONE),
    (Role.BACKUP, Input.RESYNC_NEEDED): (Role.STARTING, Action.NONE),
    (Role.PRIMARY, Input.PRIMARY_SEEN): (Role.STARTING, Action.NONE),
    (Role.PRIMARY, Input.LEASE_LOST): (Role.STARTING, Action.NONE),
}


@dataclass
class PeerView:
    role: Role
    epoch: int
    seq: int
    last_seen: float
    backups: tuple[str, ...] = ()


@dataclass
class Membership:
    me: str
    order: list[str]
    started_at: float
    dead_after: float
    role: Role = Role.STARTING
    epoch: int = 0
    primary: str | None = None
    peers: dict[str, PeerView] = field(default_factory=dict)
    voters: int = 0  # stores plus the witness, if any (0: the stores alone)
    lease: float = 0.8
    voted: int = 0  # the highest epoch this store voted in (the shell persists it)
    contact: dict[str, float] = field(default_factory=dict)  # voter -> last answer
    candidate_epoch: int = 0
    refused_at: int = 0  # the highest epoch a voter told us it already voted in

    @property
    def majority(self) -> int:
        return (self.voters or len(self.order)) // 2 + 1

    def touched(self, voter: str, now: float) -> None:
        """A voter (a peer store, or "witness") answered us."""
        self.contact[voter] = now

    def has_majority(self, now: float) -> bool:
        in_touch = 1 + sum(1 for at in self.contact.values() if now - at <= self.lease)
        return in_touch >= self.majority

    def grant(self, candidate: str, epoch: int, seq: int, my_seq: int, now: float) -> bool:
        """Our vote for `candidate` as primary of `epoch` (one vote per epoch, on disk)."""
        if epoch <= max(self.voted, self.epoch) or seq < my_seq or self.role is Role.PRIMARY:
            return False
        if self.role is Role.BACKUP and self.primary in self.live_peers(now):
            return False  # our primary is alive: no one takes over from it
        self.voted = epoch
        return True

    def won(self, epoch: int) -> Action:
        """The shell collected a majority for `epoch`."""
        self.epoch = self.voted = epoch
        self.primary = self.me
        return self.fire(Input.ELECTED)

    def refused(self, epoch: int) -> None:
        """A voter refused us, having voted in `epoch` already: our next campaign goes above
        it (a store's status shows its role's epoch, not the epochs it voted in)."""
        self.refused_at = max(self.refused_at, epoch)

    def observe(self, node: str, role: str, epoch: int, seq: int, now: float, backups: tuple[str, ...] = ()) -> None:
        self.peers[node] = PeerView(Role(role), epoch, seq, now, backups)

    def exited(self, node: str) -> None:
        """`node`'s store process is known to have exited (its port refuses): it is not
        alive from now on, without waiting `dead_after`; its next answer revives it."""
        view = self.peers.get(node)
        if view is not None:
            view.last_seen = -1e9

    def is_alive(self, node: str, now: float) -> bool:
        view = self.peers.get(node)
        return view is not None and now - view.last_seen <= self.dead_after

    def live_peers(self, now: float) -> list[str]:
        return [n for n in self.order if n != self.me and self.is_alive(n, now)]

    def fire(self, event: Input) -> Action:
        step = TRANSITIONS.get((self.role, event))
        if step is None:
            return Action.NONE
        self.role, action = step
        if self.role is Role.STARTING:
            self.primary = None
        return action

    def decide(self, my_seq: int, now: float) -> tuple[Action, str | None]:
        """Look at the peers and move the role machine; returns what the shell must do."""
        live = self.live_peers(now)
        primaries = [n for n in live if self.peers[n].role is Role.PRIMARY]
        best = max(primaries, key=lambda n: (self.peers[n].epoch, -self.order.index(n)), default=None)
        if self.role is Role.PRIMARY:
            if best is not None and self._outranks(best):
                return self.fire(Input.PRIMARY_SEEN), None
            if not self.has_majority(now):
                return self.fire(Input.LEASE_LOST), None  # fenced: serve nothing
            return Action.NONE, None
        if self.role in (Role.BACKUP, Role.SYNCING):
            if self.primary not in live:
                self.fire(Input.PRIMARY_LOST)
            elif self.role is Role.BACKUP and self.me not in self.peers[self.primary].backups:
                # The primary dropped us (a missed ack): our mirror may lag; resync.
                self.fire(Input.RESYNC_NEEDED)
            else:
                return Action.NONE, None
        if best is not None:
            self.primary = best
            self.epoch = max(self.epoch, self.peers[best].epoch)
            return self.fire(Input.PRIMARY_SEEN), best
        if not self._everyone_heard(now):
            return Action.NONE, None
        # Every live store holding a full mirror is a candidate, including backups that have
        # not noticed the loss yet: all candidates then agree on one winner (no split brain
        # between two backups of a dead primary).
        electable = [self.me] + [n for n in live if self.peers[n].role in (Role.STARTING, Role.BACKUP)]
        chosen = max(electable, key=lambda n: (self._seq_of(n, my_seq), -self.order.index(n)))
        if chosen != self.me:
            return Action.NONE, None
        seen = [self.epoch, self.voted, self.refused_at] + [v.epoch for v in self.peers.values()]
        self.candidate_epoch = max(seen) + 1
        return Action.CAMPAIGN, None

    def _outranks(self, other: str) -> bool:
        theirs = self.peers[other].epoch
        return theirs > self.epoch or (theirs == self.epoch and self.order.index(other) < self.order.index(self.me))

    def _seq_of(self, node: str, my_seq: int) -> int:
        return my_seq if node == self.me else self.peers[node].seq

    def _everyone_heard(self, now: float) -> bool:
        """Each peer has answered, or we have waited `dead_after` for it."""
        waited = now - self.started_at >= self.dead_after
        return waited or all(n in self.peers for n in self.order if n != self.me)
