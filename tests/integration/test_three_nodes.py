"""Three nodes from configuration alone: one dies, its calls spread over the other two."""

from __future__ import annotations

from pathlib import Path

from tests.conftest import call_id_on, eventually, log_tails
from zeroslee import admin
from zeroslee.devcluster import DevCluster
from zeroslee.ua import UserAgent


def test_a_dead_nodes_calls_spread_over_the_two_survivors(tmp_path: Path) -> None:
    cluster = DevCluster(tmp_path, base=5700, nodes=3)
    cluster.start_all()
    nodes = cluster.config.node_ids
    uas = [UserAgent(f"ua{i}", 6801 + i, cluster.balancer_addr) for i in range(14)]
    try:
        try:
            cluster.wait_ready()
        except TimeoutError as exc:
            raise AssertionError(log_tails(cluster.logdir)) from exc
        # Twelve participants land on node-1, one each on node-2 and node-3, in one room:
        # thirteen orphans (twelve dialogs and the room) all hashing to one survivor would
        # happen once in 4,096 runs.
        homes = ["node-1"] * 12 + ["node-2", "node-3"]
        for i, (ua, home) in enumerate(zip(uas, homes, strict=True)):
            assert ua.invite("trio", call_id_on(home, nodes, f"trio-{i}")).status == 200
        cluster.kill_node("node-1")
        cluster.wait_live(["node-2", "node-3"])

        def owners() -> set[str]:
            return {str(a["owner"]) for a in admin.rows_for(cluster.config, "activities")}

        eventually(lambda: "node-1" not in owners(), timeout=30, what="node-1's activities adopted")
        assert owners() == {"node-2", "node-3"}  # spread, not dumped on one survivor
        # The chat goes on for node-1's callers, from both survivors.
        assert uas[0].request("INFO", b"still here").status == 200
        for ua in uas[1:]:
            assert ua.wait_request("INFO").body == b"still here"
        for ua in uas:
            assert ua.request("BYE").status == 200
        eventually(lambda: admin.query(cluster.config, "") == [], what="the store emptied")
    finally:
        for ua in uas:
            ua.close()
        cluster.stop()
