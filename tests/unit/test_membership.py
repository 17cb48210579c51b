"""The statestore role machine: who is primary, decided from peer reports only."""

from __future__ import annotations

from statestore.membership import Action, Input, Membership, Role

ORDER = ["node-1", "node-2"]


def store(me: str, started_at: float = 0.0) -> Membership:
    return Membership(me=me, order=ORDER, started_at=started_at, dead_after=0.6)


def test_simultaneous_start_elects_the_first_node_and_the_other_joins_it() -> None:
    one, two = store("node-1"), store("node-2")
    one.observe("node-2", "starting", 0, 0, now=0.1)
    two.observe("node-1", "starting", 0, 0, now=0.1)
    assert one.decide(my_seq=0, now=0.1) == (Action.CAMPAIGN, None)
    assert two.grant("node-1", one.candidate_epoch, 0, 0, now=0.1)  # node-2's vote
    one.won(one.candidate_epoch)
    assert one.role is Role.PRIMARY and one.epoch == 1
    assert two.decide(my_seq=0, now=0.1) == (Action.NONE, None)
    two.observe("node-1", "primary", 1, 0, now=0.2)
    assert two.decide(my_seq=0, now=0.2) == (Action.JOIN, "node-1")
    assert two.role is Role.SYNCING


def test_a_store_with_more_history_wins_the_election() -> None:
    one = store("node-1")
    one.observe("node-2", "starting", 3, 42, now=0.1)
    assert one.decide(my_seq=7, now=0.1) == (Action.NONE, None)


def test_a_lone_store_waits_for_silent_peers_before_promoting() -> None:
    one = store("node-1")
    assert one.decide(my_seq=0, now=0.3) == (Action.NONE, None)
    assert one.decide(my_seq=0, now=0.7) == (Action.CAMPAIGN, None)


def test_a_restarted_store_joins_the_running_primary_rather_than_taking_over() -> None:
    one = store("node-1", started_at=100.0)
    one.observe("node-2", "primary", 5, 900, now=100.1)
    assert one.decide(my_seq=0, now=100.1) == (Action.JOIN, "node-2")


def test_a_backup_whose_primary_falls_silent_promotes_itself_with_a_new_epoch() -> None:
    two = store("node-2")
    two.observe("node-1", "primary", 1, 10, now=0.1, backups=("node-2",))
    two.decide(my_seq=10, now=0.1)
    two.fire(Input.SNAPSHOT_INSTALLED)
    assert two.role is Role.BACKUP
    assert two.decide(my_seq=10, now=0.5) == (Action.NONE, None)
    assert two.decide(my_seq=10, now=0.8) == (Action.CAMPAIGN, None)
    two.won(two.candidate_epoch)
    assert two.epoch == 2 and two.role is Role.PRIMARY


def test_a_backup_whose_primary_exited_campaigns_without_waiting_for_silence() -> None:
    two = store("node-2")
    two.observe("node-1", "primary", 1, 10, now=0.1, backups=("node-2",))
    two.decide(my_seq=10, now=0.1)
    two.fire(Input.SNAPSHOT_INSTALLED)
    two.exited("node-1")  # its port refused: 0.5 s before silence would have told
    assert two.decide(my_seq=10, now=0.15) == (Action.CAMPAIGN, None)
    two.observe("node-1", "starting", 1, 10, now=0.5)  # a restarted process answers: alive again
    assert two.is_alive("node-1", now=0.5)


def test_a_backup_dropped_by_its_primary_resyncs() -> None:
    two = store("node-2")
    two.observe("node-1", "primary", 1, 10, now=0.1, backups=("node-2",))
    two.decide(my_seq=10, now=0.1)
    two.fire(Input.SNAPSHOT_INSTALLED)
    two.observe("node-1", "primary", 1, 11, now=0.2, backups=())
    assert two.decide(my_seq=10, now=0.2) == (Action.JOIN, "node-1")


def test_of_two_primaries_the_older_epoch_steps_down() -> None:
    one = store("node-1")
    one.role, one.epoch, one.primary = Role.PRIMARY, 1, "node-1"
    one.observe("node-2", "primary", 2, 50, now=1.0)
    one.decide(my_seq=40, now=1.0)
    assert one.role is Role.STARTING
    assert one.decide(my_seq=40, now=1.0) == (Action.JOIN, "node-2")


def test_two_backups_of_a_dead_primary_elect_one_of_them_not_both() -> None:
    order = ["node-1", "node-2", "node-3"]
    two = Membership(me="node-2", order=order, started_at=0.0, dead_after=0.6)
    three = Membership(me="node-3", order=order, started_at=0.0, dead_after=0.6)
    for store, other in ((two, "node-3"), (three, "node-2")):
        store.observe("node-1", "primary", 1, 16, now=1.0, backups=("node-2", "node-3"))
        store.decide(my_seq=16, now=1.0)
        store.fire(Input.SNAPSHOT_INSTALLED)
        store.observe(other, "backup", 1, 16, now=2.0)  # each still sees the other as backup
    decisions = {s.me: s.decide(my_seq=16, now=2.0) for s in (three, two)}
    assert decisions == {"node-2": (Action.CAMPAIGN, None), "node-3": (Action.NONE, None)}
    two.won(two.candidate_epoch)
    three.observe("node-2", "primary", 2, 16, now=2.1)
    assert three.decide(my_seq=16, now=2.1) == (Action.JOIN, "node-2")


def test_a_store_votes_once_per_epoch_and_never_against_a_live_primary() -> None:
    two = store("node-2")
    assert two.grant("node-1", 3, 10, 10, now=0.1)
    assert not two.grant("node-3", 3, 10, 10, now=0.1)  # epoch 3 is taken
    assert not two.grant("node-3", 4, 9, 10, now=0.1)  # behind us: may lack commits
    two.observe("node-1", "primary", 3, 10, now=0.2, backups=("node-2",))
    two.decide(my_seq=10, now=0.2)
    two.fire(Input.SNAPSHOT_INSTALLED)
    assert not two.grant("node-3", 5, 10, 10, now=0.3)  # our primary is alive


def test_a_primary_out_of_touch_with_a_majority_fences_itself() -> None:
    one = Membership(me="node-1", order=ORDER, started_at=0.0, dead_after=0.6, voters=3, lease=0.8)
    one.role, one.epoch, one.primary = Role.PRIMARY, 1, "node-1"
    one.touched("witness", 1.0)
    assert one.decide(my_seq=5, now=1.5) == (Action.NONE, None)  # witness in touch: 2 of 3
    assert one.decide(my_seq=5, now=2.0) == (Action.NONE, None)
    one.decide(my_seq=5, now=2.1)
    assert one.role is Role.STARTING  # no one for 1.1 s > lease: stepped down


def test_a_refused_candidate_campaigns_above_the_epoch_it_was_refused_in() -> None:
    # Peers report their role's epoch, not the epochs they voted in: a candidate refused
    # because the voter already voted in epoch 2 must not ask for epoch 2 again forever.
    two = store("node-2")
    two.observe("node-1", "primary", 1, 5, now=0.0)
    two.decide(my_seq=5, now=0.0)
    two.exited("node-1")
    assert two.decide(my_seq=5, now=0.1) == (Action.CAMPAIGN, None)
    assert two.candidate_epoch == 2
    two.refused(2)
    assert two.decide(my_seq=5, now=0.2) == (Action.CAMPAIGN, None)
    assert two.candidate_epoch == 3
