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


def test_the_lease_of_a_primary_whose_process_exited_ends_at_once() -> None:
    w = Witness(WitnessState(), lease_wait=1.2)
    w.vote("node-1", 1, now=0.0)
    assert w.renew("node-1", 1, ["node-2"], now=1.0)
    w.exited("node-2")  # not the primary: changes nothing
    assert not w.vote("node-2", 2, now=1.1)
    w.exited("node-1")  # its port refuses connections: it serves nothing any more
    assert w.vote("node-2", 3, now=1.1)


def test_an_exited_primary_does_not_let_an_out_of_sync_backup_in() -> None:
    w = Witness(WitnessState(), lease_wait=1.2)
    w.vote("node-1", 1, now=0.0)
    w.renew("node-1", 1, [], now=1.0)
    w.exited("node-1")
    assert not w.vote("node-2", 2, now=1.1)


def test_a_vote_for_a_store_that_then_loses_does_not_lock_the_others_out() -> None:
    # node-1 (primary, node-2 and node-3 in sync) dies. node-3 gets the witness's vote for
    # epoch 2 but loses its election (node-2 refused it). node-2 must still be electable:
    # before the fix the vote left node-3 the only store the witness would accept, and the
    # three-node cluster never elected a primary again.
    w = Witness(WitnessState(), lease_wait=1.2)
    w.vote("node-1", 1, now=0.0)
    assert w.renew("node-1", 1, ["node-2", "node-3"], now=1.0)
    w.exited("node-1")
    assert w.vote("node-3", 2, now=1.1)
    assert w.vote("node-2", 3, now=1.2)  # no lease is held by a candidate that never renewed
    assert not w.renew("node-3", 2, [], now=1.3)  # node-3 cannot serve epoch 2 any more
    assert w.renew("node-2", 3, [], now=1.3)
    assert not w.vote("node-3", 4, now=9.0)  # node-2 went on alone: node-3 may lack commits


def test_before_any_primary_renews_every_store_is_eligible() -> None:
    w = Witness(WitnessState(), lease_wait=1.2)
    assert w.vote("node-1", 1, now=0.0)
    assert w.vote("node-2", 2, now=0.1)  # node-1 lost; nothing was ever acknowledged
    assert w.renew("node-2", 2, [], now=0.2)
    assert not w.vote("node-1", 3, now=9.0)
