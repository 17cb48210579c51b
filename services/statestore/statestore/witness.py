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
"""

from __future__ import annotations

import msgspec


class WitnessState(msgspec.Struct):
    epoch: int = 0  # the highest epoch voted in
    primary: str = ""  # who got that vote
    in_sync: list[str] = []  # the primary's backups at its last renewal


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
        if s.primary and candidate != s.primary and candidate not in s.in_sync:
            return False  # it may lack commits the primary acknowledged without it
        self.state = WitnessState(epoch, candidate, [])
        self.renewed_at = now  # the new primary holds the lease from now
        return True

    def renew(self, primary: str, epoch: int, in_sync: list[str], now: float) -> bool:
        """The primary of the current epoch extends its lease; anyone else is told no
        (a deposed primary learns it must step down)."""
        s = self.state
        if epoch != s.epoch or primary != s.primary:
            return False
        self.renewed_at = now
        if sorted(in_sync) != sorted(s.in_sync):
            self.state = WitnessState(s.epoch, s.primary, sorted(in_sync))
        return True
