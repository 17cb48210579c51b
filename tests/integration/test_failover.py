"""A whole node dies (kill -9 of its three processes): its calls go on from the survivor."""

from __future__ import annotations

import pytest

from tests.conftest import call_id_on
from zeroslee import admin
from zeroslee.devcluster import DevCluster
from zeroslee.ua import UserAgent, via_hosts


@pytest.mark.parametrize("dead", ["node-1", "node-2"])
def test_chat_goes_on_from_the_survivor_after_a_node_is_killed(cluster: DevCluster, dead: str) -> None:
    """node-1's store starts as primary, so killing node-1 also fails the primary over."""
    nodes = cluster.config.node_ids
    survivor = "node-2" if dead == "node-1" else "node-1"
    ua1 = UserAgent("ua1", 6501, cluster.balancer_addr)
    ua2 = UserAgent("ua2", 6502, cluster.balancer_addr)
    try:
        assert ua1.invite("lobby", call_id_on("node-1", nodes, "f1")).status == 200
        assert ua2.invite("lobby", call_id_on("node-2", nodes, "f2")).status == 200
        assert ua2.request("INFO", b"before").status == 200
        first = ua1.wait_request("INFO")
        assert first.body == b"before"

        cluster.kill_node(dead)
        cluster.wait_live([survivor])

        # Both directions still relay, now entirely on the survivor.
        assert ua1.request("INFO", b"after-1").status == 200
        got = ua2.wait_request("INFO")
        assert got.body == b"after-1" and via_hosts(got)[1] == cluster.node_addr(survivor)
        assert ua2.request("INFO", b"after-2").status == 200
        again = ua1.wait_request("INFO")
        assert again.body == b"after-2" and via_hosts(again)[1] == cluster.node_addr(survivor)
        # The survivor continues UA-1's dialog CSeq above what the dead node used.
        assert again.cseq[0] > first.cseq[0]

        assert ua1.request("BYE").status == 200
        assert ua2.request("BYE").status == 200
        assert admin.rows_for(cluster.config, "activities") == []
    finally:
        ua1.close()
        ua2.close()
