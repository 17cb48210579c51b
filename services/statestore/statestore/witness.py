"""The witness: the cluster's third vote, so two nodes can elect a primary without ever
electing two (DESIGN §4, zguide's Binary Star "client vote"). Pure core; the process is
in witness_main.py.

Rules:
- It votes at most once per epoch, and never for an epoch at or below one it voted in;
  the vote is on disk before it is granted, so a restarted witness cannot vote twice.
- While the primary of the current epoch renews its lease, it refuses every candidate: a
  store that merely lost touch with the primary cannot take over from a live primary.
- It votes only for the last primary or a store the primary last reported in sync: a
  backup the primary dropped (and went on without) may lack acknowledged commits.
- A vote does not make its candidate primary: the candidate may still lose (another store
  refused it). So the stores eligible before the vote stay eligible until the new primary's
  first renewal; a primary acknowledges no commit before that renewal (statestore
  `apply_group`), so none of them can lack an acknowledged commit. Without this, a lost
  vote would leave the loser the only store the witness accepts, and an election that the
  loser cannot win would stall the cluster for good.
- When the primary's process is known to have exited (its port refuses connections:
  `runtime.watch_exits`), its lease ends at once: a dead process serves nothing, so an
  in-sync backup need not wait out the lease. A partitioned primary refuses nothing, so
  it keeps its lease until it expires, as before.
"""

from __future__ import annotations

import msgspec


class WitnessState(msgspec.Struct):
    epoch: int = 0  # the highest epoch voted in
    primary: str = ""  # who got that vote
    in_sync: list[str] = []  # the primary's backups at its last renewal
    open: bool = False  # no primary has renewed yet: every store is eligible


class Witness:
    def __init__(self, state: WitnessState, lease_wait: float) -> None:
        self.state = state
        self.lease_wait = lease_wait  # longer than a primary's lease: it has fenced itself
        self.renewed_at = -1e9

    def vote(self, candidate: str, epoch: int, now: float) -> bool:
        """Grant `candidate` the vote for `epoch`? On True the caller persists `state`."""
        s = self.state
        if epoch <= s.epoch:
            return False
        if now - self.renewed_at < self.lease_wait and candidate != s.primary:
            return False  # the current primary is alive
        if not self.eligible(candidate):
            return False  # it may lack commits the primary acknowledged without it
        carried = sorted({s.primary, *s.in_sync} - {"", candidate})
        self.state = WitnessState(epoch, candidate, carried, open=s.open or not s.primary)
        # No lease yet: the candidate may have lost. If it won, it renews before it
        # acknowledges anything, and a renewal for this epoch fails once we voted higher.
        self.renewed_at = -1e9
        return True

    def eligible(self, candidate: str) -> bool:
        s = self.state
        return s.open or not s.primary or candidate == s.primary or candidate in s.in_sync

    def exited(self, store: str) -> None:
        """`store`'s process exited: if it held the lease, the lease is over."""
        if store == self.state.primary:
            self.renewed_at = -1e9

    def renew(self, primary: str, epoch: int, in_sync: list[str], now: float) -> bool:
        """The primary of the current epoch extends its lease; anyone else is told no
        (a deposed primary learns it must step down)."""
        s = self.state
        if epoch != s.epoch or primary != s.primary:
            return False
        self.renewed_at = now
        if s.open or sorted(in_sync) != sorted(s.in_sync):
            self.state = WitnessState(s.epoch, s.primary, sorted(in_sync))
        return True
