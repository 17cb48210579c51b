"""The timer example across two nodes: the owner dies, the timer fires on the survivor,
exactly once."""

from __future__ import annotations

from tests.conftest import call_id_on, eventually
from zeroslee import admin
from zeroslee.devcluster import DevCluster
from zeroslee.ua import UserAgent, via_hosts


def test_wakeup_timer_fires_once_on_the_survivor_when_its_owner_is_killed(cluster: DevCluster) -> None:
    nodes = cluster.config.node_ids
    ua = UserAgent("sleeper", 6711, cluster.balancer_addr)
    try:
        assert ua.invite("wakeup-3", call_id_on("node-1", nodes, "alarm")).status == 200
        assert ua.request("BYE").status == 200
        [timer] = admin.query(cluster.config, "tmr/")
        assert b"node-1" in timer[2]  # armed by the node that took the call

        cluster.kill_node("node-1")
        cluster.wait_live(["node-2"])

        invite = ua.wait_request("INVITE", timeout=20)  # node-2 fired it and called back
        assert via_hosts(invite)[1] == cluster.node_addr("node-2")
        ua.wait_request("BYE", timeout=15)
        eventually(lambda: admin.query(cluster.config, "") == [], what="the store emptied")
        stats = cluster.stats("router", "node-2")
        assert stats.get("adopted.timers") == 1
        assert stats.get("timer.fired") == 1  # exactly once
        assert [m for m in ua.received if m.method == "INVITE"] == []  # no second call back
    finally:
        ua.close()
