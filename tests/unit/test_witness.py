"""The witness's vote: once per epoch, never against a live primary, never for a
store the primary went on without."""

from __future__ import annotations

from statestore.witness import Witness, WitnessState


def test_one_vote_per_epoch() -> None:
    w = Witness(WitnessState(), lease_wait=1.2)
    assert w.vote("node-1", 1, now=0.0)
    assert not w.vote("node-2", 1, now=5.0)


def test_no_vote_while_the_primary_renews() -> None:
    w = Witness(WitnessState(), lease_wait=1.2)
    w.vote("node-1", 1, now=0.0)
    assert w.renew("node-1", 1, ["node-2"], now=1.0)
    assert not w.vote("node-2", 2, now=2.0)  # renewed 1.0 s ago
    assert w.vote("node-2", 2, now=2.3)  # silent for longer than its lease: it fenced itself


def test_no_vote_for_a_backup_the_primary_dropped() -> None:
    w = Witness(WitnessState(), lease_wait=1.2)
    w.vote("node-1", 1, now=0.0)
    w.renew("node-1", 1, [], now=1.0)  # node-2 fell out of sync; node-1 went on alone
    assert not w.vote("node-2", 2, now=10.0)
    assert w.vote("node-1", 2, now=10.0)


def test_a_deposed_primary_cannot_renew() -> None:
    w = Witness(WitnessState(epoch=4, primary="node-2", in_sync=["node-1"]), lease_wait=1.2)
    assert not w.renew("node-1", 3, [], now=0.0)
