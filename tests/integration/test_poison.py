"""A service whose code raises (in `created()`, in its `initial_by` selector) fails its own
calls with 500 and raises an alarm; both nodes stay up and every other call completes."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import call_id_on, running
from zeroslee.devcluster import DevCluster
from zeroslee.ua import UaError, UserAgent

POISON = """
[[services]]
name = "created-raises"
sbb = "tests.ra.poison:CreatedRaises"
options = { users = "^poison-created$" }
[[services]]
name = "selector-raises"
sbb = "tests.ra.poison:SelectorRaises"
options = { users = "^poison-select$" }
"""


@pytest.fixture
def poisoned(tmp_path: Path) -> Iterator[DevCluster]:
    yield from running(DevCluster(tmp_path, extra=POISON))  # and no router may have crashed


def admin_json(cluster: DevCluster, *args: str) -> list[dict[str, object]]:
    argv = [sys.executable, "-m", "zeroslee.admin", "--config", str(cluster.config_path), "--json", *args]
    run = subprocess.run(argv, capture_output=True, text=True, timeout=30)
    assert run.returncode == 0, run.stderr
    rows: list[dict[str, object]] = json.loads(run.stdout)
    return rows


def test_failing_service_code_gets_500_raises_an_alarm_and_stops_no_node(poisoned: DevCluster) -> None:
    cluster = poisoned
    nodes = cluster.config.node_ids
    ua = UserAgent("victim", 6931, cluster.balancer_addr)
    try:
        for room in ("poison-created", "poison-select"):
            for node in nodes:
                for i in range(3):  # three failures on one node raise the service's alarm
                    with pytest.raises(UaError) as refused:
                        ua.invite(room, call_id_on(node, nodes, f"{room}-{i}"))
                    assert refused.value.status == 500
        assert all(cluster.procs[(node, "router")].poll() is None for node in nodes)
        assert cluster.live_nodes() == sorted(nodes)
        # Everyone else's calls go on, on both nodes.
        for node in nodes:
            assert ua.invite("healthy-room", call_id_on(node, nodes, "fine")).status == 200
            assert ua.request("BYE").status == 200
    finally:
        ua.close()
    alarms = admin_json(cluster, "alarms")
    raised = {(a["node"], a["source"]) for a in alarms}
    for node in nodes:
        assert {(node, "created-raises"), (node, "selector-raises")} <= raised, alarms
    # The failed calls left nothing behind: no entity of the broken services.
    assert [e for e in admin_json(cluster, "entities") if e["service"] != "chat"] == []
