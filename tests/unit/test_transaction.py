"""Transaction machines with `now` set by hand: no sleeps, deterministic timers."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sip_ra import transaction as t
from zeroslee.config import SipTimers

TIMERS = SipTimers(t1=0.5, t2=4.0, t4=5.0)
PEER = ("127.0.0.1", 6000)


def fire_all(tx: t.Transaction, until: float) -> list[tuple[float, t.Input]]:
    fired = []
    while (due := tx.deadline()) is not None and due <= until:
        for name in tx.due(due):
            tx.step(name, due)
            fired.append((due, name))
    return fired


def test_timer_e_retransmits_at_half_then_doubling_capped_at_t2() -> None:
    tx = t.client("k", b"INFO", TIMERS, PEER, now=0.0)
    fired = fire_all(tx, until=12.0)
    assert [at for at, name in fired if name is t.Input.TIMER_E] == [0.5, 1.5, 3.5, 7.5, 11.5]


def test_timer_f_times_out_a_client_transaction_at_64_t1() -> None:
    tx = t.client("k", b"INFO", TIMERS, PEER, now=0.0)
    fired = fire_all(tx, until=100.0)
    assert fired[-1] == (32.0, t.Input.TIMER_F)
    assert tx.is_terminated


def test_final_response_stops_retransmission_and_timer_k_ends_it_after_t4() -> None:
    tx = t.client("k", b"INFO", TIMERS, PEER, now=0.0)
    assert tx.step(t.Input.RECV_FINAL, 0.2) == (t.Act.TO_TU, t.Act.START)
    assert tx.timers == {t.Input.TIMER_K: 5.2}
    assert tx.step(t.Input.RECV_FINAL, 1.0) == ()  # a retransmitted response is absorbed
    fire_all(tx, until=10.0)
    assert tx.is_terminated


def test_non_invite_server_resends_last_response_on_retransmission_until_timer_j() -> None:
    tx = t.server("k", False, TIMERS, PEER)
    assert tx.step(t.Input.REQUEST, 0.0) == ()  # nothing to resend yet
    tx.step(t.Input.SEND_2XX, 0.1)
    assert tx.step(t.Input.REQUEST, 1.0) == (t.Act.SEND_LAST,)
    assert tx.timers == {t.Input.TIMER_J: 0.1 + 32.0}
    fire_all(tx, until=40.0)
    assert tx.is_terminated


def test_invite_server_accepted_state_absorbs_retransmissions_until_timer_l() -> None:
    tx = t.server("k", True, TIMERS, PEER)
    tx.step(t.Input.SEND_2XX, 0.0)
    assert tx.state is t.State.ACCEPTED
    assert tx.step(t.Input.REQUEST, 0.3) == ()  # RFC 6026: not passed up again
    fire_all(tx, until=40.0)
    assert tx.is_terminated


def test_invite_server_non_2xx_timer_g_doubles_until_ack_then_timer_i() -> None:
    tx = t.server("k", True, TIMERS, PEER)
    tx.step(t.Input.SEND_FINAL, 0.0)
    fired = []
    while (due := tx.deadline()) is not None and due <= 3.6:
        for name in tx.due(due):
            tx.step(name, due)
            fired.append((due, name))
    assert [at for at, n in fired if n is t.Input.TIMER_G] == [0.5, 1.5, 3.5]
    tx.step(t.Input.ACK, 4.0)
    assert tx.state is t.State.CONFIRMED and tx.timers == {t.Input.TIMER_I: 9.0}


def test_invite_server_without_ack_ends_on_timer_h() -> None:
    tx = t.server("k", True, TIMERS, PEER)
    tx.step(t.Input.SEND_FINAL, 0.0)
    fired = fire_all(tx, until=100.0)
    assert fired[-1] == (32.0, t.Input.TIMER_H) and tx.is_terminated


TABLES = [t.INVITE_CLIENT, t.INVITE_SERVER, t.NON_INVITE_SERVER, t.NON_INVITE_CLIENT]


@given(st.sampled_from(TABLES), st.lists(st.sampled_from(list(t.Input)), max_size=30))
def test_any_input_sequence_only_follows_the_table(table: dict, inputs: list[t.Input]) -> None:
    start = {id(t.INVITE_CLIENT): t.State.CALLING, id(t.INVITE_SERVER): t.State.PROCEEDING}.get(
        id(table), t.State.TRYING
    )
    tx = t.Transaction("k", table, start, TIMERS, PEER)
    now = 0.0
    for event in inputs:
        before = tx.state
        tx.step(event, now)
        if (before, event) not in table:
            assert tx.state is before  # anything not in the table changes nothing
        else:
            assert tx.state is table[(before, event)][0]
        now += 0.1
    if tx.is_terminated:
        assert tx.deadline() is None


def test_timer_a_doubles_without_cap_until_timer_b_at_64_t1() -> None:
    tx = t.client("k", b"INVITE", TIMERS, PEER, now=0.0, is_invite=True)
    fired = fire_all(tx, until=100.0)
    assert [at for at, n in fired if n is t.Input.TIMER_A] == [0.5, 1.5, 3.5, 7.5, 15.5, 31.5]
    assert fired[-1] == (32.0, t.Input.TIMER_B) and tx.is_terminated


def test_invite_client_provisional_stops_retransmission_and_non_2xx_is_acked_until_timer_d() -> None:
    tx = t.client("k", b"INVITE", TIMERS, PEER, now=0.0, is_invite=True)
    assert tx.step(t.Input.RECV_1XX, 0.1) == (t.Act.TO_TU,)
    assert tx.deadline() is None
    assert tx.step(t.Input.RECV_FINAL, 5.0) == (t.Act.TO_TU, t.Act.SEND_ACK, t.Act.START)
    assert tx.step(t.Input.RECV_FINAL, 6.0) == (t.Act.SEND_ACK,)  # retransmitted final: ACK again
    assert fire_all(tx, until=100.0) == [(37.0, t.Input.TIMER_D)]


def test_invite_client_2xx_goes_to_accepted_and_retransmissions_reach_the_tu_until_timer_m() -> None:
    tx = t.client("k", b"INVITE", TIMERS, PEER, now=0.0, is_invite=True)
    tx.step(t.Input.RECV_2XX, 0.2)
    assert tx.state is t.State.ACCEPTED
    assert tx.step(t.Input.RECV_2XX, 0.7) == (t.Act.TO_TU,)
    assert fire_all(tx, until=100.0) == [(32.2, t.Input.TIMER_M)]


def test_transport_error_ends_a_client_transaction_with_a_timeout_to_the_tu() -> None:
    tx = t.client("k", b"INFO", TIMERS, PEER, now=0.0)
    assert tx.step(t.Input.TRANSPORT_ERROR, 0.1) == (t.Act.TIMEOUT,)
    assert tx.is_terminated


@pytest.mark.parametrize(
    "table", TABLES, ids=["invite_client", "invite_server", "non_invite_server", "non_invite_client"]
)
def test_every_state_and_input_pair_follows_the_table_or_changes_nothing(table: dict) -> None:
    for state in t.State:
        for event in t.Input:
            tx = t.Transaction("k", table, state, TIMERS, PEER)
            actions = tx.step(event, 1.0)
            if (state, event) in table:
                assert (tx.state, actions) == table[(state, event)]
            else:
                assert (tx.state, actions) == (state, ())
