"""Drain (`zeroslee-admin drain NODE`): the rules on the pure parts. A drained node is
live but takes nothing new: the balancer sends it no new transaction, the routers and
RAs hand its work over by the failover rule; what it has in progress still reaches it."""

from __future__ import annotations

from tests.unit.test_balancer import NODES, UA, answer, balancer, request, sent
from zeroslee import hashing
from zeroslee.liveness import Liveness

OTHER = {"node-1": "node-2", "node-2": "node-1"}


def drained(b_live: Liveness, node: str, now: float = 0.0, draining: bool = True) -> None:
    for _ in range(2):
        b_live.heartbeat(node, True, NODES[node], now, draining)


def test_liveness_a_drained_node_is_live_but_neither_serving_nor_eligible() -> None:
    live = Liveness(dead_after=0.4, alive_after=2)
    drained(live, "node-1")
    drained(live, "node-2", draining=False)
    assert live.live(0.1) == ["node-1", "node-2"]
    assert live.serving(0.1) == live.eligible(0.1) == ["node-2"]
    assert live.draining(0.1) == ["node-1"]
    drained(live, "node-1", 0.2, draining=False)  # undrained
    assert live.serving(0.2) == ["node-1", "node-2"] and live.draining(0.2) == []


def test_liveness_with_every_node_drained_work_still_goes_somewhere() -> None:
    live = Liveness(dead_after=0.4, alive_after=2)
    drained(live, "node-1")
    drained(live, "node-2")
    assert live.serving(0.1) == live.eligible(0.1) == ["node-1", "node-2"]


def test_balancer_a_new_call_that_hashes_to_a_drained_node_goes_to_the_other() -> None:
    b = balancer()
    node = hashing.choose("abc", ["node-1", "node-2"])
    drained(b.liveness, node)
    assert b.receive_datagram(request(call_id="abc"), UA, 0.0) == OTHER[node]


def test_balancer_an_in_dialog_request_to_a_drained_node_goes_to_the_other() -> None:
    b = balancer()
    drained(b.liveness, "node-1")
    b.receive_datagram(request("BYE", "abc", "t1", "<sip:127.0.0.1:5060;lr;zsnode=node-1>"), UA, 0.0)
    [(_, addr)] = sent(b)
    assert addr == NODES["node-2"]


def test_balancer_a_retransmission_and_a_cancel_still_reach_the_drained_node_holding_the_invite() -> None:
    b = balancer()
    node = hashing.choose("abc", ["node-1", "node-2"])
    b.receive_datagram(request(call_id="abc"), UA, 0.0)
    sent(b)
    drained(b.liveness, node, 0.1)
    b.receive_datagram(request(call_id="abc"), UA, 0.2)
    assert [addr for m, addr in sent(b) if m.is_request] == [NODES[node]]
    b.receive_datagram(request("CANCEL", "abc"), UA, 0.3)
    assert [addr for m, addr in sent(b) if m.is_request] == [NODES[node]]


def test_balancer_the_ack_of_a_2xx_goes_to_the_node_that_sent_the_2xx() -> None:
    """A drained node re-sends its 2xx until the ACK comes: the ACK must reach it, not the
    node the dialog's route now hashes to (and the same after a re-INVITE another node took)."""
    b = balancer()
    node = hashing.choose("abc", ["node-1", "node-2"])
    b.receive_datagram(request(call_id="abc"), UA, 0.0)
    (forwarded,) = [m for m, _ in sent(b) if m.is_request]
    ok = answer(forwarded).replace(b"To: <sip:room@example.com>", b"To: <sip:room@example.com>;tag=n1")
    b.receive_datagram(ok, NODES[node], 0.1)
    sent(b)
    drained(b.liveness, node, 0.2)
    route = f"<sip:127.0.0.1:5060;lr;zsnode={node}>"
    b.receive_datagram(request("ACK", "abc", "n1", route, branch="z9hG4bKack1"), UA, 0.3)
    assert [addr for m, addr in sent(b) if m.is_request] == [NODES[node]]
    # A later request of the call is new work: the other node takes it.
    b.receive_datagram(request("BYE", "abc", "n1", route, branch="z9hG4bKbye1"), UA, 0.4)
    assert [addr for m, addr in sent(b) if m.is_request] == [NODES[OTHER[node]]]


def test_balancer_forgets_the_answering_node_after_64_t1() -> None:
    b = balancer()
    b.receive_datagram(request(call_id="abc"), UA, 0.0)
    (forwarded,) = [m for m, _ in sent(b) if m.is_request]
    b.receive_datagram(answer(forwarded), NODES[hashing.choose("abc", ["node-1", "node-2"])], 0.1)
    assert len(b.answered) == 1
    b.expire(40.0)
    assert len(b.answered) == 0


def test_balancer_a_response_to_a_dead_node_s_request_goes_to_a_survivor() -> None:
    """The callee's 200 (sent again and again) to the INVITE node-1 sent before it died:
    node-2 adopts the transaction from the replicated dialog."""
    b = balancer()
    invite = (
        b"INVITE sip:uas@127.0.0.1:6800 SIP/2.0\r\n"
        b"Via: SIP/2.0/UDP 127.0.0.1:5071;branch=z9hG4bKnode1;rport\r\n"
        b"Route: <sip:127.0.0.1:5060;lr>\r\nMax-Forwards: 70\r\nFrom: <sip:a@z>;tag=ours\r\n"
        b"To: <sip:uas@127.0.0.1:6800>\r\nCall-ID: b1@zeroslee\r\nCSeq: 1 INVITE\r\nContent-Length: 0\r\n\r\n"
    )
    b.receive_datagram(invite, NODES["node-1"], 0.0)
    [(forwarded, _)] = sent(b)
    ok = answer(forwarded).replace(b"To: <sip:uas@127.0.0.1:6800>", b"To: <sip:uas@127.0.0.1:6800>;tag=callee")
    b.receive_datagram(ok, ("127.0.0.1", 6800), 0.1)
    assert [addr for _, addr in sent(b)] == [NODES["node-1"]]  # alive: to its sender
    b.liveness.gone("node-1")
    b.receive_datagram(ok, ("127.0.0.1", 6800), 0.2)
    [(relayed, addr)] = sent(b)
    assert addr == NODES["node-2"] and relayed.get_all("Via")[0].endswith("branch=z9hG4bKnode1;rport")
    assert b.counters["response.to_survivor"] == 1


def test_balancer_a_rerouted_request_s_late_answer_does_not_throttle_the_survivor() -> None:
    """A request re-sent to a survivor when its node died is answered late (its delay
    counts from the first copy): that is the failover, not a queue at the survivor."""
    b = balancer()
    node = b.receive_datagram(request("INVITE", call_id="ring"), UA, 0.0)
    sent(b)
    survivor = OTHER[node]
    b.liveness.gone(node)
    b.reroute(0.1)
    [(again, _)] = [(m, a) for m, a in sent(b) if m.is_request]
    ringing = answer(again, 180, "Ringing").replace(b"To: <sip:room@example.com>", b"To: <sip:room@example.com>;tag=x")
    b.receive_datagram(ringing, NODES[survivor], 5.0)  # 5 s after the first copy
    throttle = b.throttle(survivor)
    assert throttle.answered == 0 and throttle.rate == throttle.max_rate
