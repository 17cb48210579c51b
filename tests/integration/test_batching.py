"""A burst of chat lines: delivered in shared transactions, every line relayed once."""

from __future__ import annotations

import time

from tests.conftest import call_id_on
from zeroslee.devcluster import DevCluster
from zeroslee.ua import UserAgent

LINES = 60


def test_a_burst_of_infos_is_delivered_in_batches_and_every_line_is_relayed_once(cluster: DevCluster) -> None:
    nodes = cluster.config.node_ids
    alice = UserAgent("alice", 6901, cluster.balancer_addr)
    bob = UserAgent("bob", 6902, cluster.balancer_addr)
    try:
        assert bob.invite("burst", call_id_on("node-2", nodes, "bob")).status == 200
        assert alice.invite("burst", call_id_on("node-1", nodes, "alice")).status == 200
        bodies = [f"line {i}".encode() for i in range(LINES)]
        finals = alice.burst("INFO", bodies)
        assert [r.status for r in finals] == [200] * LINES
        deadline = time.monotonic() + 15
        while len([m for m in bob.received if m.method == "INFO"]) < LINES and time.monotonic() < deadline:
            bob.pump(0.2)
        relayed = [m.body for m in bob.received if m.method == "INFO"]
        assert sorted(relayed) == sorted(bodies)  # every line, once
        # The INFOs queued on alice's dialog, and the MessageEvents on the room, shared
        # transactions; the RA took bob's CSeqs a batch at a time.
        stats = {node: cluster.stats("router", node) for node in nodes}
        assert sum(s.get("delivery.batches", 0) for s in stats.values()) > 0
        assert sum(s.get("delivered.MessageEvent", 0) for s in stats.values()) == LINES  # each delivered once
        cseqs = [int(m.get("CSeq").split()[0]) for m in bob.received if m.method == "INFO"]  # type: ignore[union-attr]
        assert len(set(cseqs)) == LINES  # one CSeq each, none reused
        assert alice.request("BYE").status == 200 and bob.request("BYE").status == 200
    finally:
        alice.close()
        bob.close()
