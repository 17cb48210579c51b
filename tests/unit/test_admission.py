"""Admission control at the edge: the latency-driven bucket, the stateless 503 and what
it absorbs, RFC 7339's `oc`, on a core with `now` set by hand (a simulated node whose
capacity and delay are known, so nothing depends on this machine's speed)."""

from __future__ import annotations

from balancer.admission import Loss, Throttle
from balancer.core import Balancer
from tests.unit.test_balancer import FRONT, NODES, UA, balancer, request, sent
from zeroslee import hashing
from zeroslee.sipmsg import SipMessage


def completed_rate(
    offered: float,
    capacity: float,
    seconds: float = 20.0,
    delays: list[float] | None = None,
    stall: tuple[float, float] = (0.0, 0.0),
    refusals: list[float] | None = None,
    throttle: Throttle | None = None,
    begin: float = 0.0,
    whole: bool = False,
) -> tuple[float, Throttle]:
    """A node serving `capacity` new requests/s FIFO, offered `offered`/s for `seconds`
    from `begin` through a throttle; the rate at which admitted requests completed over
    the last half (and their delays, into `delays`: of the last half, or of the whole run
    if `whole`, the burst's onset included). The node serves nothing during
    `stall` (start, length); the times of refused requests go into `refusals`. What is
    still in service at the end stays unanswered."""
    throttle = throttle or Throttle(target=0.1, max_rate=5000.0)
    step = 1.0 / offered
    free_at, now, sent = begin, begin, 0
    done: list[tuple[float, float, str]] = []  # (completion time, delay, key)
    completions = 0
    half = begin + seconds / 2
    while now < begin + seconds:
        while done and done[0][0] <= now:
            finished, delay, key = done.pop(0)
            throttle.observe(delay, finished, True, key)
            completions += finished >= half
            if delays is not None and (whole or finished >= half):
                delays.append(delay)
        if throttle.admit(now):
            sent += 1
            key = f"{begin}/{sent}"
            throttle.sent(key, now)
            start = max(now, free_at)
            if stall[0] <= start < stall[0] + stall[1]:
                start = stall[0] + stall[1]
            free_at = start + 1.0 / capacity
            done.append((free_at, free_at - now, key))
        elif refusals is not None:
            refusals.append(now)
        now += step
    return completions / (seconds / 2), throttle


def test_goodput_holds_near_capacity_at_two_four_and_eight_times_it() -> None:
    for factor in (2, 4, 8):
        goodput, throttle = completed_rate(offered=125.0 * factor, capacity=125.0)
        assert goodput >= 0.9 * 125.0, (factor, goodput)
        assert throttle.smoothed < 0.5  # accepted requests keep a bounded delay, not a growing queue


def test_accepted_requests_keep_a_bounded_delay_however_far_over_capacity() -> None:
    # The tail, not the mean: each cut goes to 90% of what the node completes, so the
    # queue that formed drains (p99 0.24-0.26 s here). Taking a tenth off the rate
    # instead left a queue of about 4 targets (0.37-0.41 s) at every factor (at 8R on a
    # real cluster: p99 0.84 s).
    for factor in (2, 4, 8):
        delays: list[float] = []
        completed_rate(offered=125.0 * factor, capacity=125.0, delays=delays)
        delays.sort()
        assert delays[int(len(delays) * 0.99)] <= 3 * 0.1, factor


def share_over(delays: list[float], bound: float) -> float:
    return sum(d > bound for d in delays) / len(delays)


def test_a_bursts_onset_leaves_no_queue_behind_its_first_judgement() -> None:
    # The whole burst, its first second included. From the ceiling, the first judgement
    # used to come once the oldest request had waited two targets: by then 8x capacity
    # had admitted 1.6 s of work, and that queue drained at a tenth of the node's rate
    # (p99 1.8-2.3 s over the burst, 10-20% of the accepted over 500 ms). Now a flood
    # is seen at once (Little's law) and a cut lets the queue it found drain first.
    for factor in (2, 4, 8):
        delays: list[float] = []
        completed_rate(offered=125.0 * factor, capacity=125.0, seconds=30.0, delays=delays, whole=True)
        delays.sort()
        assert delays[int(len(delays) * 0.99)] <= 0.5, factor
        assert share_over(delays, 0.5) <= 0.01, factor


def test_after_a_rest_a_burst_starts_from_the_capacity_it_found_before() -> None:
    # A burst, a rest, a second burst at 8x: it starts at 1.5x the capacity the first
    # one measured, not at the ceiling, so no call of it waits a second queue's drain.
    _, throttle = completed_rate(offered=250.0, capacity=125.0, seconds=5.0)
    delays: list[float] = []
    refusals: list[float] = []
    goodput, _ = completed_rate(1000.0, 125.0, seconds=30.0, delays=delays, throttle=throttle, begin=15.0, whole=True)
    delays.sort()
    assert goodput >= 0.95 * 125.0
    assert delays[int(len(delays) * 0.99)] <= 0.3
    # And a rate just under capacity after it is served whole, from the first call.
    goodput, _ = completed_rate(118.0, 125.0, seconds=10.0, refusals=refusals, throttle=throttle, begin=60.0)
    assert refusals == []


def test_below_capacity_nothing_is_refused() -> None:
    goodput, throttle = completed_rate(offered=100.0, capacity=125.0)
    assert goodput >= 99.0
    assert throttle.refused_share == 0.0


def test_a_stall_below_capacity_is_no_overload() -> None:
    # A pause (a GC, a burst of joins in one room) makes a queue that drains on its own
    # once the node serves again: no call is refused for it. Cutting then (on the delay
    # alone) refused 2 calls at half capacity after 250 ms, 35 at 80% (issue 22: a
    # recovery step at a clean rate failed 1 of 150 calls in the suite, 5 of 5,000 in the
    # bench).
    for offered, capacity, stall in ((12.5, 25.0, 0.4), (62.5, 125.0, 0.4), (100.0, 125.0, 0.25)):
        refusals: list[float] = []
        goodput, _ = completed_rate(offered, capacity, seconds=10.0, stall=(3.0, stall), refusals=refusals)
        assert refusals == [], (offered, stall, refusals[:5])
        assert goodput >= 0.99 * offered


def test_a_queue_a_little_over_target_that_drains_is_no_overload() -> None:
    # At 96% of capacity a 110 ms pause leaves a queue a little over target that takes
    # 2.5 s to drain. That is no overload either: cut after 0.3 s over target, 14 calls
    # were refused (after an 8R burst, a recovery step at R had 42 refused by cuts at a
    # delay of 104 ms). A little over target, the cut waits a second; further over, 0.3 s.
    for offered, capacity, stall in ((240.0, 250.0, 0.11), (120.0, 125.0, 0.12)):
        refusals: list[float] = []
        goodput, throttle = completed_rate(offered, capacity, seconds=10.0, stall=(3.0, stall), refusals=refusals)
        assert refusals == [], (offered, len(refusals))
        assert throttle.cuts == 0


def test_a_cut_rate_grows_back_before_it_refuses_what_the_node_serves() -> None:
    # A rate left below what is offered (by a cut in a stall, say) grows back while the
    # node is comfortable and the bucket nearly binds, not only once a call was refused.
    throttle = Throttle(target=0.1, max_rate=5000.0, rate=7.5, last_admitted=0.0)  # no rest: busy
    refusals: list[float] = []
    completed_rate(12.5, 25.0, seconds=10.0, refusals=refusals, throttle=throttle)
    assert refusals == []
    assert throttle.rate > 12.5


def test_after_a_rest_the_throughput_is_counted_from_the_rest() -> None:
    _, throttle = completed_rate(offered=1000.0, capacity=125.0, seconds=4.0)
    now = throttle.last_admitted
    for key, at in list(throttle.waiting.items()):
        throttle.observe(now - at, now, True, key)
    rest = now + 5.0
    for i in range(5):  # 25 new requests/s answered in the 0.2 s after the rest
        at = rest + i * 0.04
        assert throttle.admit(at)
        throttle.sent(f"r{i}", at)
        throttle.observe(0.01, at + 0.01, True, f"r{i}")
    # Not 5 in a second (the rest counted as time the node worked): 5 in 0.2 s.
    assert throttle.throughput(rest + 0.2) >= 20.0


def test_an_answer_lost_before_a_rest_cuts_nothing_after_it() -> None:
    # Below capacity, then the node's answer to the last request goes astray (or a
    # service holds it: a B2BUA whose callee never answers). After a rest of 10 s that
    # request is no queue: the same rate again is served whole. It was not a rest (the
    # node "owed" an answer), and the first judgement took the 10 s wait for a stall of a
    # node that answered nothing: cut to the floor, 216 of 1,000 refused as it grew back
    # (the bench's recovery step after 2R: 233 of 7,000 refused by the balancer).
    _, throttle = completed_rate(offered=100.0, capacity=125.0, seconds=4.0)
    now = throttle.last_admitted
    owed = list(throttle.waiting.items())
    for key, at in owed[:-1]:
        throttle.observe(now - at, now, True, key)
    assert len(throttle.waiting) == 1
    refusals: list[float] = []
    goodput, _ = completed_rate(100.0, 125.0, seconds=10.0, refusals=refusals, throttle=throttle, begin=now + 10.0)
    assert refusals == [], (len(refusals), refusals[:3])
    assert goodput >= 99.0


def test_an_idle_bucket_climbs_back_to_its_ceiling() -> None:
    _, throttle = completed_rate(offered=1000.0, capacity=125.0)
    assert throttle.rate < 200
    now = throttle.last_admitted
    for key, at in list(throttle.waiting.items()):  # the node answers all it owes
        throttle.observe(now - at, now, True, key)
    throttle.admit(now + 0.9)  # busy: still sent something within the last second
    throttle.sent("late", now + 0.9)
    assert throttle.rate < 200
    assert throttle.admit(now + 2.5)  # a second and more with nothing new sent: a rest
    # Half as much again as the node's throughput when it was overloaded (125/s).
    assert throttle.rate == throttle.ceiling
    assert 1.4 * 125 <= throttle.ceiling <= 1.6 * 125
    assert throttle.oldest_wait(now + 2.5) < 0.1  # what it owed from before no longer waits


def test_a_request_that_is_never_answered_stops_counting_when_it_is_forgotten() -> None:
    throttle = Throttle(target=0.1, max_rate=5000.0)
    assert throttle.admit(0.0)
    throttle.sent("lost", 0.0)  # its node died with it; the balancer re-sends it elsewhere
    assert throttle.oldest_wait(5.0) == 5.0
    throttle.forget("lost")
    assert throttle.oldest_wait(5.0) == 0.0
    # One whose answer went astray, or that a service holds (a B2BUA waiting for its
    # callee), stops counting once the node answers requests sent well after it.
    throttle.sent("held", 5.0)
    assert throttle.oldest_wait(5.5) == 0.5
    throttle.observe(0.01, 5.6, False)  # an answer to something sent at 5.59
    assert throttle.oldest_wait(5.6) == 0.0


def starve(throttle: Throttle, now: float) -> None:
    """A node's bucket that admits nothing for now (as after a cut to zero)."""
    throttle.rate = throttle.tokens = throttle.min_rate = 0.0
    throttle.judged_at = throttle.last_admitted = now


def test_a_refused_call_gets_a_stateless_503_and_its_ack_and_cancel_stay_here() -> None:
    b = balancer()
    call = "refused-1"
    node = hashing.choose(call, ["node-1", "node-2"])
    starve(b.throttle(node), 0.0)
    assert b.receive_datagram(request(call_id=call), UA, 0.1) == "refused"
    [(answer, addr)] = sent(b)
    assert (answer.status, answer.get("Retry-After"), addr) == (503, "1", UA)
    tag = answer.get("To") or ""
    assert ";tag=zsbusy" in tag
    # Its retransmission gets the same answer; no node saw either.
    assert b.receive_datagram(request(call_id=call), UA, 0.2) == "refused"
    [(again, _)] = sent(b)
    assert again.status == 503 and again.get("To") == tag
    ack = request("ACK", call_id=call, to_tag=tag.split("tag=")[1])
    assert b.receive_datagram(ack, UA, 0.3) == "absorbed"
    assert sent(b) == []
    assert b.receive_datagram(request("CANCEL", call_id=call), UA, 0.3) == "absorbed"
    [(cancelled, _)] = sent(b)
    assert cancelled.status == 200 and cancelled.cseq[1] == "CANCEL"
    assert b.counters["overload.refused"] == 1 and b.counters["overload.ack_absorbed"] == 1
    assert "to.node-1" not in b.counters and "to.node-2" not in b.counters


def test_requests_within_calls_and_byes_are_never_refused_for_load() -> None:
    b = balancer()
    for node in NODES:
        starve(b.throttle(node), 0.0)
    for method in ("BYE", "INFO", "OPTIONS"):
        route = "<sip:127.0.0.1:5060;lr;zsnode=node-1>"
        to_tag = "" if method == "OPTIONS" else "n1"
        assert b.receive_datagram(request(method, to_tag=to_tag, route=route, branch=f"z9hG4bK{method}"), UA, 0.2) in (
            "node-1",
            "node-2",
        )
    assert "overload.refused" not in b.counters


def beat(b: Balancer, now: float) -> None:
    for node, addr in NODES.items():
        b.liveness.heartbeat(node, True, addr, now)


def node_answer(b: Balancer, forwarded: SipMessage, status: int, node: str, at: float) -> list[SipMessage]:
    response = SipMessage(status=status, reason="X")
    response.headers = [(k, v) for k, v in forwarded.headers if k in ("Via", "From", "Call-ID", "CSeq")]
    response.headers.append(("To", (forwarded.get("To") or "") + ";tag=n1"))
    b.receive_datagram(response.to_bytes(), NODES[node], at)
    return [m for m, _ in sent(b)]


def test_the_nodes_response_time_drives_the_rate_down_and_rfc7339_oc_tells_the_client() -> None:
    b = balancer()
    node = "node-1"
    calls = [c for c in (f"slow-{i}" for i in range(1000)) if hashing.choose(c, list(NODES)) == node][:150]
    due: list[tuple[float, SipMessage]] = []  # the node answers each request 300 ms late: 3x the target
    now = 0.0
    for i, call in enumerate(calls):
        now = 0.01 * i
        beat(b, now)
        while due and due[0][0] <= now:
            at, forwarded = due.pop(0)
            node_answer(b, forwarded, 200, node, at)
        b.receive_datagram(request(call_id=call, branch=f"z9hG4bKs{i}"), UA, now)
        due += [(now + 0.3, m) for m, _ in sent(b) if m.is_request]
    throttle = b.throttle(node)
    assert throttle.rate < 200  # from 5,000/s: cut to what the node completes
    assert b.counters.get("overload.refused", 0) > 0
    # A client that offers `oc` learns the share it should shed.
    offer = request(call_id=calls[-1] + "x", branch="z9hG4bKoc1").replace(b";rport", b';rport;oc;oc-algo="loss,A"')
    beat(b, now + 0.001)
    b.receive_datagram(offer, UA, now + 0.001)
    via = sent(b)[0][0].get_all("Via")[0]
    assert 'oc-algo="loss"' in via and "oc-validity=500" in via and "oc-seq=" in via
    share = int(via.split(";oc=")[1].split(";")[0])
    assert 0 < share <= 100


def test_a_downstream_servers_oc_sheds_that_share_of_our_new_requests_to_it() -> None:
    loss = Loss()
    server = ("192.0.2.1", 5060)
    loss.heard(server, "50", "1000", "10.5", 0.0)
    dropped = sum(loss.drop(server, 0.5) for _ in range(1000))
    assert 400 < dropped < 600
    loss.heard(server, "90", "1000", "9.0", 0.6)  # older sequence: ignored
    assert loss.shares[server][0] == 50
    assert not loss.drop(server, 1.5)  # expired
    loss.heard(server, "50", "0", "11", 2.0)  # validity 0: out of overload
    assert server not in loss.shares


def test_a_node_calling_out_offers_oc_to_the_next_hop() -> None:
    b = Balancer(FRONT, balancer().liveness)
    invite = request(branch="z9hG4bKout").replace(b"10.0.0.9:6000", b"127.0.0.1:5071")
    b.receive_datagram(invite, NODES["node-1"], 0.0)
    [(out, _)] = sent(b)
    assert out.get_all("Via")[0].endswith(";oc")


def test_the_quick_path_reads_only_plain_new_requests() -> None:
    from balancer.core import quick_look

    plain = request(call_id="q1")
    method, via, call_id, copied = quick_look(plain) or ("", "", "", [])
    assert (method, call_id) == ("INVITE", "q1") and via.startswith("SIP/2.0/UDP 10.0.0.9:6000")
    assert [name for name, _ in copied] == [b"Via", b"From", b"To", b"Call-ID", b"CSeq"]
    assert quick_look(request(call_id="q2", to_tag="x")) is None  # within a dialog
    assert quick_look(request("BYE", call_id="q3")) is None
    assert quick_look(request(call_id="q4", route="<sip:127.0.0.1:5060;lr>")) is None
    folded = plain.replace(b"Max-Forwards: 70", b"Max-Forwards:\r\n 70")
    assert quick_look(folded) is None  # folding: the full parser's job
    two_vias = plain.replace(b";rport", b";rport, SIP/2.0/UDP 10.0.0.8;branch=z9hG4bKx")
    assert quick_look(two_vias) is None
