"""kill -9 at each phase of the seed scenario, for each process type and a whole node.

What must hold (DESIGN §8): the chat goes on, or a request ends with a SIP error; never a
hang, never a silent loss. The history check: every INFO the cluster acknowledged with
200 is relayed to the other participant, whatever was killed while it was in flight.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import call_id_on, eventually, running
from zeroslee import admin
from zeroslee.devcluster import DevCluster
from zeroslee.sipmsg import SipMessage
from zeroslee.ua import UaError, UserAgent

TARGETS = [("node", "node-1"), ("statestore", "node-1"), ("router", "node-1"), ("sip-ra", "node-1"), ("balancer", None)]


def kill(cluster: DevCluster, what: str, node: str | None) -> None:
    if what == "node":
        cluster.kill_node(str(node))
    else:
        cluster.kill(what, node)


def revive(cluster: DevCluster, what: str, node: str | None) -> None:
    if what == "node":
        cluster.start_node(str(node))
    else:
        cluster.start(what, node)
    cluster.wait_live(cluster.config.node_ids, timeout=30)


@pytest.fixture
def fast_cluster(tmp_path: Path) -> Iterator[DevCluster]:
    """T1 = 0.1 s: a 2xx nobody ACKs (its call was given up for another) ends in 6.4 s."""
    yield from running(DevCluster(tmp_path, t1=0.1), check_exits=False)  # the test kills processes


@pytest.mark.parametrize("phase", ["mid-invite", "after-ack", "mid-info"])
@pytest.mark.parametrize(("what", "node"), TARGETS, ids=[f"{w}-{n}" for w, n in TARGETS])
def test_chat_survives_a_kill(fast_cluster: DevCluster, what: str, node: str | None, phase: str) -> None:
    cluster = fast_cluster
    nodes = cluster.config.node_ids
    ua1 = UserAgent("ua1", 6901, cluster.balancer_addr)
    ua2 = UserAgent("ua2", 6902, cluster.balancer_addr)
    acknowledged: list[bytes] = []  # INFO bodies the cluster answered 200
    try:
        assert ua2.invite("k-room", call_id_on("node-2", nodes, "k2")).status == 200
        if phase == "mid-invite":
            joined: list[SipMessage | Exception] = []

            def join() -> None:
                try:
                    joined.append(ua1.invite("k-room", call_id_on("node-1", nodes, "k1")))
                except UaError as exc:  # no final response: a hang, recorded and failed on
                    joined.append(exc)

            inviter = threading.Thread(target=join)
            inviter.start()
            kill(cluster, what, node)
            if what == "balancer":
                cluster.start("balancer")
            inviter.join(timeout=40)
            [answer] = joined
            status = answer.status if isinstance(answer, SipMessage | UaError) else 0
            assert status, f"no final response: {answer}"
            if status != 200:  # a clear error: the caller simply calls again
                assert status >= 400
                cluster.wait_ready(nodes=1, timeout=30)
                assert ua1.invite("k-room", call_id_on("node-1", nodes, "k1b")).status == 200
        else:
            assert ua1.invite("k-room", call_id_on("node-1", nodes, "k1")).status == 200
        if phase == "mid-info":
            outcome: list[SipMessage | Exception] = []

            def send() -> None:
                try:
                    outcome.append(ua1.request("INFO", b"in-flight"))
                except UaError as exc:  # no final response: a hang, recorded and failed on
                    outcome.append(exc)

            sender = threading.Thread(target=send)
            sender.start()
            kill(cluster, what, node)
            if what == "balancer":  # restarted at once: the UA's retransmissions reach it
                cluster.start("balancer")
            sender.join(timeout=40)
            assert not sender.is_alive()
            [result] = outcome
            assert isinstance(result, SipMessage), f"no final response: {result}"
            if result.status == 200:
                acknowledged.append(b"in-flight")
            else:
                assert result.status >= 400  # a clear SIP error, then the chat goes on
        elif phase == "after-ack":
            kill(cluster, what, node)
            if what == "balancer":
                cluster.start("balancer")
        cluster.wait_ready(nodes=1, timeout=30)

        for body, (sender_ua, receiver) in ((b"one", (ua1, ua2)), (b"two", (ua2, ua1))):
            assert sender_ua.request("INFO", body).status == 200
            acknowledged.append(body)
            assert receiver.wait_request("INFO", timeout=15).body in (body, b"in-flight")
        if b"in-flight" in acknowledged:  # the history check: acknowledged means relayed

            def relayed() -> bool:
                ua2.pump(0.05)
                return b"in-flight" in {m.body for m in ua2.history}

            eventually(relayed, timeout=15, what="the acknowledged in-flight INFO relayed")

        if what != "balancer":
            revive(cluster, what, node)

        def mirrors_agree() -> bool:
            """The history check on the stores: every commit acknowledged so far is on both
            (same keys, same versions, same bytes), whichever process was killed."""
            one, two = (admin.query_node(cluster.config, n, "") for n in nodes)
            return one is not None and one == two and bool(one)

        eventually(mirrors_agree, timeout=15, what="both stores hold the same history")
        assert ua1.request("BYE").status == 200
        assert ua2.request("BYE").status == 200
        try:
            # 30 s: a journaled event whose delivery met the store's election is retried
            # with a growing back-off (0.5 s, 1 s, 1.5 s...) before its room can end.
            # No journaled request outlives its dialog either (a relay that crossed a BYE).
            def all_ended() -> bool:
                return admin.query(cluster.config, "aci/") == [] == admin.query(cluster.config, "out/")

            eventually(all_ended, timeout=30, what="all activities and journaled requests ended")
        except AssertionError as exc:
            left = [(k, v) for k, v, _ in admin.query(cluster.config, "")]
            raise AssertionError(f"{exc}; left in the store: {left}") from exc
    finally:
        ua1.close()
        ua2.close()
