"""The alarm facility: alarms SBBs raise and clear, cluster-wide, and the system's own
(a store replicating to nobody), listed by `zeroslee-admin alarms` and in /metrics."""

from __future__ import annotations

import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import call_id_on, eventually, running
from tests.integration.test_poison import admin_json
from zeroslee.devcluster import DevCluster
from zeroslee.ua import UaError, UserAgent

ALARMING = """
[[services]]
name = "alarming"
sbb = "tests.ra.alarming:AlarmingSbb"
options = { users = "^alarm-" }
"""


@pytest.fixture
def alarming(tmp_path: Path) -> Iterator[DevCluster]:
    yield from running(DevCluster(tmp_path, extra=ALARMING), check_exits=False)  # the test kills a store


def call(cluster: DevCluster, user: str, node: str, port: int) -> int:
    ua = UserAgent(f"al{port}", port, cluster.balancer_addr)
    try:
        try:
            status = ua.invite(user, call_id_on(node, cluster.config.node_ids, f"{user}-{port}")).status
        except UaError as exc:  # a final error response
            return exc.status
        if status == 200:
            assert ua.request("BYE").status == 200
        return status
    finally:
        ua.close()


def sbb_alarms(cluster: DevCluster) -> list[dict[str, Any]]:
    return [a for a in admin_json(cluster, "alarms") if a["source"] == "alarming:disk"]


def scraped(cluster: DevCluster, node: str, needle: str) -> bool:
    hostport = cluster.config.node(node).metrics["router"]
    with urllib.request.urlopen(f"http://{hostport}/metrics", timeout=5) as response:
        return needle in response.read().decode()


def test_an_sbb_alarm_raised_on_one_node_is_seen_everywhere_and_cleared_from_another(alarming: DevCluster) -> None:
    cluster = alarming
    assert sbb_alarms(cluster) == []
    assert call(cluster, "alarm-raise-major", "node-1", 6231) == 200
    eventually(lambda: len(sbb_alarms(cluster)) == 1, what="the alarm in the store")
    [alarm] = sbb_alarms(cluster)
    assert alarm["level"] == "major" and alarm["node"] == "node-1" and "raised by" in alarm["message"]
    needle = 'zeroslee_sbb_alarms{level="major",service="alarming"} 1.0'
    eventually(lambda: scraped(cluster, "node-1", needle) and scraped(cluster, "node-2", needle), what="metrics")

    assert call(cluster, "alarm-raise-critical", "node-2", 6232) == 200  # the same alarm, updated
    eventually(lambda: [a["level"] for a in sbb_alarms(cluster)] == ["critical"], what="the update")
    assert call(cluster, "alarm-clear", "node-2", 6233) == 200  # cleared by the other node
    eventually(lambda: sbb_alarms(cluster) == [], what="the clear")
    assert call(cluster, "alarm-raise-loud", "node-1", 6234) == 500  # a bad level: the service's failure


def test_a_primary_store_left_without_a_backup_raises_a_replication_alarm(alarming: DevCluster) -> None:
    cluster = alarming
    stats = {n: cluster.stats("statestore", n) for n in cluster.config.node_ids}
    [primary] = [n for n, s in stats.items() if s.get("role") == "primary"]
    [backup] = [n for n in stats if n != primary]

    def replication() -> list[dict[str, Any]]:
        return [a for a in admin_json(cluster, "alarms") if a["source"] == "replication"]

    assert replication() == []
    cluster.kill("statestore", backup)
    eventually(lambda: [a["node"] for a in replication()] == [primary], what="the replication alarm")
    assert replication()[0]["level"] == "major" and replication()[0]["process"] == "statestore"
    cluster.start("statestore", backup)
    eventually(lambda: replication() == [], timeout=20, what="the alarm cleared by the backup's return")
