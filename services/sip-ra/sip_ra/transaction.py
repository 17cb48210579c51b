"""SIP transaction machines (RFC 3261 §17, RFC 6026 Accepted state): pure, table-driven.

Each machine is a table `(state, input) -> (next state, actions)` under a comment citing
the RFC figure. Anything not in a table is ignored and counted by the caller: a stray
retransmission can never move a transaction backwards. Timers are absolute deadlines
computed from `now` passed in; the RA shell asks `deadline()` and calls `on_timer(now)`.

The four machines: INVITE client (Figure 5 + RFC 6026 Figure 4), non-INVITE client
(Figure 6), INVITE server (Figure 7 + RFC 6026 Figure 5), non-INVITE server (Figure 8).
Unreliable transport (UDP) values throughout: Timer D = 32 s, I = T4, J = K = 64*T1 / T4.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

from zeroslee.config import SipTimers


class State(enum.StrEnum):
    CALLING = "CALLING"
    TRYING = "TRYING"
    PROCEEDING = "PROCEEDING"
    COMPLETED = "COMPLETED"
    CONFIRMED = "CONFIRMED"
    ACCEPTED = "ACCEPTED"
    TERMINATED = "TERMINATED"


class Input(enum.StrEnum):
    REQUEST = "request"  # a retransmission of the request that made the transaction
    ACK = "ack"
    SEND_1XX = "send_1xx"
    SEND_2XX = "send_2xx"
    SEND_FINAL = "send_final"  # 300-699
    RECV_1XX = "recv_1xx"
    RECV_FINAL = "recv_final"
    TIMER_E = "timer_e"
    TIMER_F = "timer_f"
    TIMER_G = "timer_g"
    TIMER_H = "timer_h"
    TIMER_I = "timer_i"
    TIMER_J = "timer_j"
    TIMER_K = "timer_k"
    TIMER_L = "timer_l"
    TIMER_A = "timer_a"
    TIMER_B = "timer_b"
    TIMER_D = "timer_d"
    TIMER_M = "timer_m"
    RECV_2XX = "recv_2xx"
    TRANSPORT_ERROR = "transport_error"


class Act(enum.StrEnum):
    SEND_LAST = "send_last"  # (re)send the last response
    RESEND_REQUEST = "resend_request"
    TO_TU = "to_tu"  # hand the response (client) up
    SEND_ACK = "send_ack"  # ACK a non-2xx final response (§17.1.1.3), from the transaction
    TIMEOUT = "timeout"  # tell the TU: no final response came
    START = "start"  # start the timers named by the state's entry


T = State
I = Input
A = Act

# RFC 3261 Figure 5 with RFC 6026 Figure 4: INVITE client transaction. A 2xx moves it to
# Accepted, where 2xx retransmissions still reach the TU (which ACKs each) until Timer M.
INVITE_CLIENT: dict[tuple[State, Input], tuple[State, tuple[Act, ...]]] = {
    (T.CALLING, I.TIMER_A): (T.CALLING, (A.RESEND_REQUEST,)),
    (T.CALLING, I.TIMER_B): (T.TERMINATED, (A.TIMEOUT,)),
    (T.CALLING, I.TRANSPORT_ERROR): (T.TERMINATED, (A.TIMEOUT,)),
    (T.CALLING, I.RECV_1XX): (T.PROCEEDING, (A.TO_TU,)),
    (T.CALLING, I.RECV_2XX): (T.ACCEPTED, (A.TO_TU, A.START)),
    (T.CALLING, I.RECV_FINAL): (T.COMPLETED, (A.TO_TU, A.SEND_ACK, A.START)),
    (T.PROCEEDING, I.RECV_1XX): (T.PROCEEDING, (A.TO_TU,)),
    (T.PROCEEDING, I.RECV_2XX): (T.ACCEPTED, (A.TO_TU, A.START)),
    (T.PROCEEDING, I.RECV_FINAL): (T.COMPLETED, (A.TO_TU, A.SEND_ACK, A.START)),
    (T.ACCEPTED, I.RECV_2XX): (T.ACCEPTED, (A.TO_TU,)),
    (T.ACCEPTED, I.TIMER_M): (T.TERMINATED, ()),
    (T.COMPLETED, I.RECV_FINAL): (T.COMPLETED, (A.SEND_ACK,)),
    (T.COMPLETED, I.TRANSPORT_ERROR): (T.TERMINATED, (A.TIMEOUT,)),
    (T.COMPLETED, I.TIMER_D): (T.TERMINATED, ()),
}

# RFC 3261 Figure 7 with RFC 6026 Figure 5: INVITE server transaction.
INVITE_SERVER: dict[tuple[State, Input], tuple[State, tuple[Act, ...]]] = {
    (T.PROCEEDING, I.REQUEST): (T.PROCEEDING, (A.SEND_LAST,)),
    (T.PROCEEDING, I.SEND_1XX): (T.PROCEEDING, (A.SEND_LAST,)),
    (T.PROCEEDING, I.SEND_2XX): (T.ACCEPTED, (A.SEND_LAST, A.START)),
    (T.PROCEEDING, I.SEND_FINAL): (T.COMPLETED, (A.SEND_LAST, A.START)),
    (T.ACCEPTED, I.REQUEST): (T.ACCEPTED, ()),  # absorbed; the TU retransmits the 2xx
    (T.ACCEPTED, I.SEND_2XX): (T.ACCEPTED, (A.SEND_LAST,)),
    (T.ACCEPTED, I.TIMER_L): (T.TERMINATED, ()),
    (T.COMPLETED, I.REQUEST): (T.COMPLETED, (A.SEND_LAST,)),
    (T.COMPLETED, I.TIMER_G): (T.COMPLETED, (A.SEND_LAST,)),
    (T.COMPLETED, I.ACK): (T.CONFIRMED, (A.START,)),
    (T.COMPLETED, I.TIMER_H): (T.TERMINATED, (A.TIMEOUT,)),
    (T.COMPLETED, I.TRANSPORT_ERROR): (T.TERMINATED, (A.TIMEOUT,)),
    (T.PROCEEDING, I.TRANSPORT_ERROR): (T.TERMINATED, (A.TIMEOUT,)),
    (T.ACCEPTED, I.TRANSPORT_ERROR): (T.TERMINATED, (A.TIMEOUT,)),
    (T.CONFIRMED, I.REQUEST): (T.CONFIRMED, ()),
    (T.CONFIRMED, I.ACK): (T.CONFIRMED, ()),
    (T.CONFIRMED, I.TIMER_I): (T.TERMINATED, ()),
}

# RFC 3261 Figure 8: non-INVITE server transaction.
NON_INVITE_SERVER: dict[tuple[State, Input], tuple[State, tuple[Act, ...]]] = {
    (T.TRYING, I.REQUEST): (T.TRYING, ()),
    (T.TRYING, I.SEND_1XX): (T.PROCEEDING, (A.SEND_LAST,)),
    (T.TRYING, I.SEND_2XX): (T.COMPLETED, (A.SEND_LAST, A.START)),
    (T.TRYING, I.SEND_FINAL): (T.COMPLETED, (A.SEND_LAST, A.START)),
    (T.PROCEEDING, I.REQUEST): (T.PROCEEDING, (A.SEND_LAST,)),
    (T.PROCEEDING, I.SEND_1XX): (T.PROCEEDING, (A.SEND_LAST,)),
    (T.PROCEEDING, I.SEND_2XX): (T.COMPLETED, (A.SEND_LAST, A.START)),
    (T.PROCEEDING, I.SEND_FINAL): (T.COMPLETED, (A.SEND_LAST, A.START)),
    (T.COMPLETED, I.REQUEST): (T.COMPLETED, (A.SEND_LAST,)),
    (T.COMPLETED, I.TIMER_J): (T.TERMINATED, ()),
    (T.TRYING, I.TRANSPORT_ERROR): (T.TERMINATED, (A.TIMEOUT,)),
    (T.PROCEEDING, I.TRANSPORT_ERROR): (T.TERMINATED, (A.TIMEOUT,)),
    (T.COMPLETED, I.TRANSPORT_ERROR): (T.TERMINATED, ()),
}

# RFC 3261 Figure 6: non-INVITE client transaction.
NON_INVITE_CLIENT: dict[tuple[State, Input], tuple[State, tuple[Act, ...]]] = {
    (T.TRYING, I.TIMER_E): (T.TRYING, (A.RESEND_REQUEST,)),
    (T.TRYING, I.TIMER_F): (T.TERMINATED, (A.TIMEOUT,)),
    (T.TRYING, I.RECV_1XX): (T.PROCEEDING, (A.TO_TU,)),
    (T.TRYING, I.RECV_FINAL): (T.COMPLETED, (A.TO_TU, A.START)),
    (T.PROCEEDING, I.TIMER_E): (T.PROCEEDING, (A.RESEND_REQUEST,)),
    (T.PROCEEDING, I.TIMER_F): (T.TERMINATED, (A.TIMEOUT,)),
    (T.PROCEEDING, I.RECV_1XX): (T.PROCEEDING, (A.TO_TU,)),
    (T.PROCEEDING, I.RECV_FINAL): (T.COMPLETED, (A.TO_TU, A.START)),
    (T.COMPLETED, I.RECV_1XX): (T.COMPLETED, ()),
    (T.COMPLETED, I.RECV_FINAL): (T.COMPLETED, ()),
    (T.COMPLETED, I.TIMER_K): (T.TERMINATED, ()),
    (T.TRYING, I.TRANSPORT_ERROR): (T.TERMINATED, (A.TIMEOUT,)),
    (T.PROCEEDING, I.TRANSPORT_ERROR): (T.TERMINATED, (A.TIMEOUT,)),
}


@dataclass(slots=True)
class Transaction:
    """One transaction; `timers` maps a timer input to its absolute deadline."""

    key: str
    table: dict[tuple[State, Input], tuple[State, tuple[Act, ...]]]
    state: State
    timers_cfg: SipTimers
    peer: tuple[str, int]
    request: bytes = b""
    last_response: bytes = b""
    timers: dict[Input, float] = field(default_factory=dict)
    interval: float = 0.0  # current Timer E/G interval

    @property
    def is_terminated(self) -> bool:
        return self.state is State.TERMINATED

    def step(self, event: Input, now: float) -> tuple[Act, ...]:
        entry = self.table.get((self.state, event))
        if entry is None:
            return ()
        self.state, actions = entry
        if A.START in actions:
            self._enter(now)
        elif self.table is INVITE_CLIENT and self.state is State.PROCEEDING:
            self.timers.clear()  # Figure 5: no retransmission and no Timer B once a 1xx came
        if event in (I.TIMER_A, I.TIMER_E, I.TIMER_G) and self.state is not State.TERMINATED:
            self._backoff(event, now)
        if self.state is State.TERMINATED:
            self.timers.clear()
        return actions

    def _enter(self, now: float) -> None:
        """Arm the timers a state starts with (RFC 3261 §17.1.2.2, §17.2.1, §17.2.2)."""
        t = self.timers_cfg
        self.timers.clear()
        if self.table is INVITE_CLIENT:
            if self.state is State.ACCEPTED:
                self.timers[I.TIMER_M] = now + 64 * t.t1
            elif self.state is State.COMPLETED:
                self.timers[I.TIMER_D] = now + max(32.0, 64 * t.t1)
        elif self.table is INVITE_SERVER:
            if self.state is State.ACCEPTED:
                self.timers[I.TIMER_L] = now + 64 * t.t1
            elif self.state is State.COMPLETED:
                self.interval = t.t1
                self.timers[I.TIMER_G] = now + t.t1
                self.timers[I.TIMER_H] = now + 64 * t.t1
            elif self.state is State.CONFIRMED:
                self.timers[I.TIMER_I] = now + t.t4  # T4 for UDP
        elif self.table is NON_INVITE_SERVER:
            self.timers[I.TIMER_J] = now + 64 * t.t1
        elif self.table is NON_INVITE_CLIENT:
            self.timers[I.TIMER_K] = now + t.t4

    def _backoff(self, event: Input, now: float) -> None:
        t = self.timers_cfg
        if event is I.TIMER_E and self.state is State.PROCEEDING:
            self.interval = t.t2
        elif event is I.TIMER_A:
            self.interval = 2 * self.interval  # Timer A doubles without the T2 cap (§17.1.1.2)
        else:
            self.interval = min(2 * self.interval, t.t2)
        self.timers[event] = now + self.interval

    def deadline(self) -> float | None:
        return min(self.timers.values(), default=None)

    def due(self, now: float) -> list[Input]:
        fired = sorted((at, name) for name, at in self.timers.items() if at <= now)
        for _, name in fired:
            del self.timers[name]
        return [name for _, name in fired]


def server(key: str, is_invite: bool, timers: SipTimers, peer: tuple[str, int]) -> Transaction:
    if is_invite:
        return Transaction(key, INVITE_SERVER, State.PROCEEDING, timers, peer)
    return Transaction(key, NON_INVITE_SERVER, State.TRYING, timers, peer)


def client(
    key: str, request: bytes, timers: SipTimers, peer: tuple[str, int], now: float, is_invite: bool = False
) -> Transaction:
    """A client transaction whose request has just been sent (Timers A/B or E/F start)."""
    if is_invite:
        tx = Transaction(key, INVITE_CLIENT, State.CALLING, timers, peer, request=request)
        tx.timers[I.TIMER_A] = now + timers.t1
        tx.timers[I.TIMER_B] = now + 64 * timers.t1
    else:
        tx = Transaction(key, NON_INVITE_CLIENT, State.TRYING, timers, peer, request=request)
        tx.timers[I.TIMER_E] = now + timers.t1
        tx.timers[I.TIMER_F] = now + 64 * timers.t1
    tx.interval = timers.t1
    return tx
