"""A second, non-SIP resource adaptor on the fault-tolerant RA interface."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import REPO, eventually, running
from tests.ra.events import SERVICE
from zeroslee import admin
from zeroslee.devcluster import DevCluster


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[DevCluster]:
    """The default cluster, and a service that declares the counter RA's Tick."""
    yield from running(DevCluster(tmp_path, extra=SERVICE))


def ra_events(cluster: DevCluster, node: str) -> list[tuple[str, str]]:
    return [
        (str(r["callback"]), str(r.get("key", "")))
        for r in cluster.log_records("counter-ra", node)
        if r.get("event") == "ra"
    ]


def test_counter_ra_gets_data_removed_fail_over_and_its_timer_on_the_survivor(cluster: DevCluster) -> None:
    procs = {}
    for node in ("node-1", "node-2"):
        log = (cluster.logdir / f"{node}-counter-ra.log").open("ab")
        procs[node] = subprocess.Popen(
            [sys.executable, "-m", "tests.ra.counter_ra", "--node", node, "--config", str(cluster.config_path)],
            cwd=REPO,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        log.close()
    try:
        eventually(lambda: ("data_removed", "doomed") in ra_events(cluster, "node-1"), what="node-1 saw the removal")
        eventually(lambda: admin.query(cluster.config, "aci/ra-act") == [], what="node-2 ended node-1's activity")
        assert cluster.stats("router", "node-2").get("delivered.Tick") == 1  # fired on it first
        procs["node-1"].kill()
        procs["node-1"].wait()
        cluster.kill_node("node-1")
        cluster.wait_live(["node-2"])
        eventually(lambda: ("timer_fired", "alarm") in ra_events(cluster, "node-2"), timeout=15, what="alarm fired")
        events = ra_events(cluster, "node-2")
        assert ("fail_over", "job-1") in events and ("fail_over", "alarm") in events
        assert ("fail_over", "job-1") not in ra_events(cluster, "node-1")
        assert events.count(("timer_fired", "alarm")) == 1
        assert ("timer_fired", "alarm") not in ra_events(cluster, "node-1")  # it was not due there
        assert [k for k, _, _ in admin.query(cluster.config, "ra/counter/")] == ["ra/counter/go", "ra/counter/job-1"]
    finally:
        for proc in procs.values():
            if proc.poll() is None:
                proc.terminate()
                proc.wait(timeout=10)
