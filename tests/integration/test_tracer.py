"""A service's trace level changed live, cluster-wide, with `zeroslee-admin tracer`."""

from __future__ import annotations

import subprocess
import sys

from tests.conftest import call_id_on
from zeroslee.devcluster import DevCluster
from zeroslee.ua import UserAgent


def admin(cluster: DevCluster, *args: str) -> subprocess.CompletedProcess[str]:
    argv = [sys.executable, "-m", "zeroslee.admin", "--config", str(cluster.config_path), *args]
    return subprocess.run(argv, capture_output=True, text=True, timeout=60)


def traces(cluster: DevCluster, node: str) -> list[dict[str, object]]:
    return [r for r in cluster.log_records("router", node) if r.get("event") == "trace"]


def test_a_tracer_level_changed_live_reaches_every_router(cluster: DevCluster) -> None:
    nodes = cluster.config.node_ids
    ua1 = UserAgent("tr1", 6221, cluster.balancer_addr)
    ua2 = UserAgent("tr2", 6222, cluster.balancer_addr)
    try:
        assert ua1.invite("room-tr", call_id_on("node-1", nodes, "tr1")).status == 200
        assert ua2.invite("room-tr", call_id_on("node-2", nodes, "tr2")).status == 200
        # At the default level (info) the chat's `fine` relay trace says nothing.
        assert ua2.request("INFO", b"one").status == 200
        assert ua1.wait_request("INFO").body == b"one"
        assert traces(cluster, "node-1") == traces(cluster, "node-2") == []

        listed = admin(cluster, "tracer")
        assert listed.returncode == 0 and "chat" in listed.stdout and "info" in listed.stdout
        done = admin(cluster, "--json", "tracer", "chat", "FINE")
        assert done.returncode == 0, done.stderr
        assert '"result": "set"' in done.stdout and done.stdout.count('"node-') == 2

        # Now both routers trace: UA-2's text relayed to UA-1 by node-2, and back by node-1.
        assert ua2.request("INFO", b"two").status == 200
        assert ua1.wait_request("INFO").body == b"two"
        assert ua1.request("INFO", b"three").status == 200
        assert ua2.wait_request("INFO").body == b"three"
        seen = {}
        for node in nodes:
            lines = traces(cluster, node)  # one per relay; a delivery run again traces again
            assert lines and all(line["message"] == "relayed" and line["room"] == "room-tr" for line in lines)
            assert all(line["service"] == "chat" and line["trace_level"] == "fine" for line in lines)
            seen[node] = len(lines)
        assert "fine" in admin(cluster, "tracer").stdout  # held by the cluster, for routers to come

        # Bad input gets a clear error and changes nothing.
        unknown = admin(cluster, "tracer", "nosuch", "fine")
        assert unknown.returncode != 0 and "no service 'nosuch'" in unknown.stderr
        loud = admin(cluster, "tracer", "chat", "loud")
        assert loud.returncode != 0 and "unknown trace level" in loud.stderr

        assert admin(cluster, "tracer", "chat", "off").returncode == 0
        assert ua2.request("INFO", b"four").status == 200
        assert ua1.wait_request("INFO").body == b"four"
        assert {node: len(traces(cluster, node)) for node in nodes} == seen  # nothing more
        assert ua1.request("BYE").status == 200
        assert ua2.request("BYE").status == 200
    finally:
        ua1.close()
        ua2.close()
