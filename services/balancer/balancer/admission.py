"""Admission control at the edge (DESIGN §7: overload is refused at the edge), pure.

Theory of operation. Each node gets a token bucket for new requests (out-of-dialog
INVITE, MESSAGE, SUBSCRIBE...; never a request within a dialog, an ACK, a CANCEL or a
BYE, which finish work the cluster already took on). The bucket's rate follows the
node's measured response time, as in Welsh and Culler's adaptive overload control
(SEDA) and Project Clearwater's load monitor, which applies it to SIP:

- every request forwarded to the node is timed to its first response other than 100
  (the node's own 100 Trying says only that its socket was read); and the oldest new
  request still unanswered counts with its age so far, so that a queue (or a node that
  stalls) is seen before its responses come back (unless the node has since answered
  requests sent well after it: then it is no queue but a lost answer, or a request a
  service holds on purpose, and it stops counting); while far more is admitted than the
  node answers (`FLOOD`), the wait Little's law gives (what it holds over its
  throughput) counts too, which shows a flood at once;
- about every `ADJUST_EVERY` responses (and at most every `ADJUST_PERIOD`), the rate is
  judged on the period's mean delay: over the target for `QUICK_SUSTAIN` (for `SUSTAIN`
  when only a little over, up to `MILD`; at once when far over),
  and the node is overloaded (more was admitted than it answered, or its queue would take
  over `DRAIN_TIME` to drain; a node that answered nothing is in a pause, not measured,
  until `STALL_LIMIT`), it is cut to `DECREASE` of the rate at which the node answered
  new requests over the last second (its capacity now, for this mix of work), or of itself
  if lower, so that a queue that formed drains, and not cut again before that cut can
  show (one delay later); what the node holds beyond one target's worth of its work
  drains before anything new is admitted (at most `MAX_DRAIN`); comfortably below the
  target while refusing or nearly, it grows by a share of itself scaled by the margin;
- a node that was sent nothing new for `IDLE_PERIOD` gets its ceiling back (`max_rate`,
  or `AFTER_REST` times the highest throughput a cut measured on it), so a cluster that
  came through a burst takes its full rate again (issue 22: "recovery") and the next
  burst's first judgement finds no second of work already admitted; what it still owes
  from before the rest no longer counts as waiting.

The delay is what the user sees (setup latency), not a count: a fixed in-flight limit
admits too much when requests are expensive and too little when they are cheap. The
node keeps its own in-flight limits as a backstop (sip-ra `max_in_flight`).

RFC 7339 (loss-based overload control) comes out of the same numbers: the share of new
requests refused over the last period is the `oc` value we put in responses to a client
whose Via offered `oc`; and `Loss` applies what a downstream server tells us in its
responses (our Via's `oc`) to the requests we send it.
"""

from __future__ import annotations

import random
from collections import OrderedDict, deque
from dataclasses import dataclass, field

ADJUST_EVERY = 20  # responses between two judgements of the rate
ADJUST_PERIOD = 0.1  # s: at most this often (a burst of fast responses is one sample)
IDLE_PERIOD = 1.0  # s without a new request admitted: the node has had a rest
DECREASE = 0.9  # the rate after an over-target period, as a share of the node's throughput
INCREASE = 0.2  # growth per comfortable period, at zero delay (scaled by the margin)
BINDING = 0.5  # admitted over a period, as a share of the rate, at which the rate may grow unrefused
COMFORT = -0.25  # delay error (relative to target) below which the rate may grow
SUSTAIN = 1.0  # s over target before a cut, when only a little over (up to `MILD`)
QUICK_SUSTAIN = 0.3  # s over target before a cut, when more than a little over (up to twice it)
MILD = 0.25  # delay error (relative to target) that is only a little over
STALL_LIMIT = 0.5  # s: a node that answers nothing for this long is cut, stalled or not
DRAIN_TIME = 2.0  # s: a queue that drains on its own within this needs no cut
SMOOTHING = 1 / 8
MAX_BURST = 20.0  # tokens: new requests let through back to back at most
THROUGHPUT_WINDOW = 1.0  # s over which the node's completions are counted
FORGET_AFTER = 32.0  # s: an admitted request never answered (lost) stops counting as waiting
AFTER_REST = 1.5  # the rate after a rest, as a share of the node's highest throughput measured at a cut
FLOOD = 2.0  # admitted over answered, new requests/s, that is no stall but a flood
MAX_DRAIN = 1.0  # s: the longest a cut refuses everything new while the queue it found drains


@dataclass
class Throttle:
    """One node's latency-driven token bucket."""

    target: float  # s: the response time to hold
    max_rate: float  # new requests/s: the ceiling (and the start)
    min_rate: float = 2.0
    rate: float = 0.0
    tokens: float = 0.0
    stamp: float = 0.0  # when the bucket was last refilled
    smoothed: float = 0.0  # s, EWMA of every response's delay (for the stats)
    delay_sum: float = 0.0  # s, over the responses since the last judgement
    answered: int = 0  # responses since the last judgement
    admitted: int = 0  # new requests let through since the last judgement
    refused: int = 0  # and refused
    completed: int = 0  # new requests the node answered since the last judgement
    done: deque[float] = field(default_factory=deque)  # when each new request was answered, last second
    started: float = -1.0  # when the first one was answered
    waiting: OrderedDict[str, float] = field(default_factory=OrderedDict)  # admitted, unanswered -> sent at
    judged_at: float = 0.0
    last_admitted: float = -1e9
    newest_answered: float = -1e9  # when the newest request the node has answered was sent
    hold_until: float = 0.0  # no second cut before the first one's effect can be seen
    drain_until: float = 0.0  # until then nothing new is admitted: a queue found by a cut drains
    capacity: float = 0.0  # new requests/s: the highest throughput the node had when a cut found it overloaded
    refused_share: float = 0.0  # of the last judged period, for RFC 7339's `oc`
    judgements: int = 0
    over_since: float = -1.0  # since when every judgement found the delay over target (-1: it is not)
    cuts: int = 0  # of the rate, since the start (for the stats)
    last_cut: str = ""  # what the last cut saw: delay, throughput, queue, rate before and after

    def __post_init__(self) -> None:
        self.rate = self.rate or self.max_rate
        self.tokens = self.burst

    @property
    def burst(self) -> float:
        """Bucket depth: a tenth of a second of the rate, between 5 and `MAX_BURST`."""
        return min(MAX_BURST, max(5.0, self.rate * 0.1))

    @property
    def ceiling(self) -> float:
        """The rate after a rest: `max_rate`, or half as much again as the most the node
        was seen to serve when overloaded. From `max_rate`, the first judgement of a
        burst at 8x capacity came after 0.2 s of it: 1.6 s of the node's work admitted,
        and every call in that queue over 500 ms (in a model of 8R, 10% of the accepted
        ones). From 1.5x capacity, the queue grows a third as fast as it is admitted and
        is cut at a quarter of a second. A node that can do more than it once showed
        (a busier mix then, a stall) grows past it while comfortable."""
        return min(self.max_rate, AFTER_REST * self.capacity) if self.capacity else self.max_rate

    def oldest_wait(self, now: float) -> float:
        """How long the oldest admitted request still unanswered has waited: a queue
        shows here before any response does."""
        while self.waiting:
            sent_at = next(iter(self.waiting.values()))
            # Overtaken (the node has answered a request sent well after it) or very old:
            # not a queue, but a request whose answer went astray, or one a service holds
            # on purpose (a B2BUA waiting for its callee). It no longer counts.
            if now - sent_at <= FORGET_AFTER and sent_at >= self.newest_answered - self.target:
                return now - sent_at
            self.waiting.popitem(last=False)
        return 0.0

    def queue_wait(self, now: float) -> float:
        """While far more is admitted than the node answers (`FLOOD` times as much), how
        long a request sent now would wait, by Little's law: what the node has in hand
        over the rate at which it answers. It shows a queue at once, where the oldest
        request's wait shows it only a target later: from `max_rate` at 8x capacity, a
        tenth of a second admitted most of a second of work (in a model of it, p99 1.8 s,
        against 0.44 s with this). Not otherwise: after a stall, the node's throughput
        over the last second is low, but it serves its queue at its usual rate, and
        taking the stall for a flood refused calls at half capacity. The node's rate is
        at least the capacity it showed before: just after a rest, its answers lag its
        work by one delay, and the throughput counted since then is too low (taken for a
        flood, it cut a node's rate in a recovery step at R = 600/s from 534 to 90 new
        requests/s, and the step failed calls)."""
        if self.started < 0 or now - self.started < ADJUST_PERIOD:
            return 0.0
        throughput = max(self.throughput(now), self.capacity)
        admitting = self.admitted / max(now - self.judged_at, ADJUST_PERIOD / 10)
        if throughput <= 0 or admitting < FLOOD * throughput:
            return 0.0
        return len(self.waiting) / throughput

    def admit(self, now: float) -> bool:
        if now - self.last_admitted >= IDLE_PERIOD:
            # The node was sent nothing new for a while: it has had a rest, and the
            # delays measured before are stale. Its full rate again. What it still owes
            # was sent before the rest, so it is no queue in front of what comes now: an
            # answer that went astray, or a request a service holds (a B2BUA whose callee
            # does not answer). Kept, it made the first judgement after the rest see a
            # node silent for the whole rest, a stall: cut to the floor, a third of the
            # next 1,000 calls at 80% of capacity refused while the rate grew back (the
            # bench's recovery step after 2R: 233 of 7,000). A node that stopped serving
            # is shown by the requests sent from now on, within `STALL_LIMIT`.
            self.waiting.clear()
            self.rate, self.refused_share, self.hold_until = self.ceiling, 0.0, now
            self.tokens = self.burst
            # Its throughput is counted from now: the rest is no measure of what it can do
            # (counted over a window that holds the rest, a cut just after it would go far
            # below the rate the node had just served cleanly).
            self.done.clear()
            self.started = now
            self.restart_period(now)
        elif (
            now - self.judged_at >= IDLE_PERIOD
            or (now - self.judged_at >= ADJUST_PERIOD and self.oldest_wait(now) > self.target)
            or (now - self.judged_at >= ADJUST_PERIOD / 4 and self.queue_wait(now) > 2 * self.target)
        ):
            self.judge(now)
        self.tokens = min(self.burst, self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now
        if self.tokens >= 1.0 and now >= self.drain_until:
            self.tokens -= 1.0
            self.admitted += 1
            self.last_admitted = now
            return True
        self.refused += 1
        return False

    def sent(self, key: str, now: float) -> None:
        """An admitted request went to the node as `key`: it waits for its answer."""
        self.waiting[key] = now

    def forget(self, key: str) -> None:
        """`key` will not be answered by this node (it went elsewhere, or expired)."""
        self.waiting.pop(key, None)

    def observe(self, delay: float, now: float, initial: bool, key: str = "") -> None:
        """A response from the node, `delay` s after the request was forwarded; `initial`
        if it answers a new request (one the bucket admitted), sent as `key`."""
        first = self.judgements == 0 and self.answered == 0
        self.smoothed = delay if first else self.smoothed + (delay - self.smoothed) * SMOOTHING
        self.delay_sum += delay
        self.answered += 1
        self.newest_answered = max(self.newest_answered, now - delay)
        if initial:
            self.completed += 1
            self.done.append(now)
            if self.started < 0:
                self.started = now
            self.waiting.pop(key, None)
        since = now - self.judged_at
        if since >= ADJUST_PERIOD and (self.answered >= ADJUST_EVERY or since >= 2.5 * ADJUST_PERIOD):
            self.judge(now)

    def throughput(self, now: float) -> float:
        """New requests/s the node answered over the last second (what it can do now,
        with this mix of work); a short first window counts as it is."""
        while self.done and now - self.done[0] > THROUGHPUT_WINDOW:
            self.done.popleft()
        window = min(THROUGHPUT_WINDOW, now - self.started) if self.started >= 0 else THROUGHPUT_WINDOW
        return len(self.done) / max(window, ADJUST_PERIOD)

    def judge(self, now: float) -> None:
        offered = self.admitted + self.refused
        self.refused_share = self.refused / offered if offered else 0.0
        delay = max(
            self.delay_sum / self.answered if self.answered else 0.0, self.oldest_wait(now), self.queue_wait(now)
        )
        error = (delay - self.target) / self.target
        if error <= 0:
            self.over_since = -1.0
        elif self.over_since < 0:
            self.over_since = self.judged_at  # over since the period began
        # A moment over target (a GC pause, a map resize, a burst of joins in one room,
        # a node slowed for a few seconds by what a burst left it) is no overload: near
        # capacity it refused calls of a rate that is otherwise clean. Cut when over
        # target for `QUICK_SUSTAIN` (0.3 s; two judgements let a 200 ms stall at 250/s,
        # a rate clean for 15 s just before, refuse 9 calls); for `SUSTAIN` when only a
        # little over (after an 8R burst, a recovery step at R, clean in the ramp, had 42
        # calls refused by cuts at a delay of 104 ms); at once when far over (a burst).
        over_for = now - self.over_since if self.over_since >= 0 else 0.0
        sustained = over_for >= SUSTAIN or (over_for >= QUICK_SUSTAIN and error > MILD)
        if (sustained or error > 1) and now >= self.hold_until and self.overloaded(now, delay):
            # Over target: a queue has formed, so the node completes less than it is sent.
            # A tenth below what it completed over the last second (or below the rate, if
            # that is lower), so that the queue drains; not a tenth off the rate, which
            # at 8x capacity took several cuts to come down and let the queue (and the
            # accepted calls' setup p99) grow to 0.7-0.8 s. Then no second cut before one
            # delay has passed, so that the requests answered are ones admitted at the
            # new rate.
            throughput = self.throughput(now)
            self.capacity = max(self.capacity, throughput)
            base = min(throughput, self.rate)
            before, self.rate = self.rate, max(self.min_rate, base * DECREASE)
            # What waits beyond one target's worth of the node's work is refused nothing
            # but time: nothing new goes in until the node has served it, at the rate it
            # serves. Cut to 90% alone, a queue found late (the first judgement of a burst
            # at 8x, a rate that grew past capacity) drained at a tenth of the throughput,
            # and every call admitted meanwhile waited behind it: in a model of 8R, 18% of
            # the accepted calls over 500 ms.
            # A queue of a few requests more (a stall's) is left to the cut rate and the
            # bucket's depth, which refuse nothing for it.
            excess = len(self.waiting) - throughput * self.target
            if excess > self.burst and throughput > 0:
                self.drain_until = now + min(MAX_DRAIN, excess / throughput)
            self.hold_until = max(now + delay, self.drain_until)
            self.cuts += 1
            self.last_cut = (
                f"delay {delay * 1000:.0f} ms, {self.completed}/{self.admitted} answered/admitted, "
                f"{len(self.waiting)} waiting, throughput {throughput:.0f}/s: rate {before:.0f} -> {self.rate:.0f}"
            )
        elif error < COMFORT and (self.refused or self.admitted >= BINDING * self.rate * (now - self.judged_at)):
            # Comfortable, and refusing or about to: more, by a share scaled by the margin.
            # Not only once it refuses: a cut in a stall (a GC pause, a burst of joins in
            # one room, 250 ms of it at half capacity) leaves a rate below the one offered,
            # and waiting for a refusal to grow it back refuses calls of a rate the node
            # serves cleanly (issue 22's recovery: 1 of 150, 5 of 5,000).
            self.rate = min(self.max_rate, self.rate * (1 + INCREASE * -error) + 1.0)
        self.restart_period(now)
        self.judgements += 1

    def overloaded(self, now: float, delay: float) -> bool:
        """Whether a delay over target comes from more being admitted than the node can
        do, rather than from a stall: a node that answered nothing this period (a pause)
        is not measured yet, unless it has been silent for `STALL_LIMIT`; and a queue that
        drains on its own within `DRAIN_TIME` at the rate admitted needs no cut. A stall
        of 250 ms at 80% of capacity is no overload: cut, it refused 35 calls in the
        second after it; uncut, its queue was gone within a second and a half."""
        if self.completed == 0:
            return delay >= STALL_LIMIT
        period = max(now - self.judged_at, ADJUST_PERIOD / 10)
        drain = (self.completed - self.admitted) / period  # requests/s the queue shrinks by
        return drain < 0 or (drain > 0 and len(self.waiting) / drain > DRAIN_TIME)

    def restart_period(self, now: float) -> None:
        self.delay_sum, self.answered, self.admitted, self.refused, self.completed = 0.0, 0, 0, 0, 0
        self.judged_at = now


@dataclass
class Loss:
    """RFC 7339 §5.10, a client's side: what each downstream server asked us to shed."""

    shares: dict[tuple[str, int], tuple[float, float, float]] = field(default_factory=dict)  # -> (loss, until, seq)
    rng: random.Random = field(default_factory=lambda: random.Random(7339))

    def heard(self, server: tuple[str, int], oc: str, validity: str | None, seq: str | None, now: float) -> None:
        """A response from `server` with `oc` in our Via (its loss percentage)."""
        try:
            loss = min(100.0, max(0.0, float(oc)))
            seqno = float(seq) if seq else 0.0
            valid = float(validity) / 1000 if validity is not None else 0.5  # §5.2: 500 ms if absent
        except ValueError:
            return
        known = self.shares.get(server)
        if known is not None and seqno < known[2]:
            return  # an older report overtaken by a newer one (§5.10)
        if valid <= 0 or loss == 0:
            self.shares.pop(server, None)  # the server is out of overload
            return
        self.shares[server] = (loss, now + valid, seqno)

    def drop(self, server: tuple[str, int], now: float) -> bool:
        """Whether to shed this new request towards `server` (its loss share, at random)."""
        known = self.shares.get(server)
        if known is None:
            return False
        if now > known[1]:
            del self.shares[server]
            return False
        return self.rng.random() * 100 < known[0]
