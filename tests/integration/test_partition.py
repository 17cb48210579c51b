"""A network partition, made with network namespaces this test creates and removes.

node-1 and node-2 each live in a namespace of their own, joined to the root namespace
(balancer, witness, the UAs) by a veth pair. Cutting node-1's link isolates it: node-1's
store, primary at the start, must fence itself before node-2's store is elected with the
witness's vote (no moment with two primaries), the chat must go on through node-2, and
after the heal node-1 must rejoin as a backup.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import call_id_on, eventually, log_tails
from zeroslee.devcluster import DevCluster
from zeroslee.ua import UserAgent

NET = "10.231"


def ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True)


@pytest.fixture
def namespaces() -> Iterator[dict[str, str]]:
    if os.geteuid() != 0 or shutil.which("ip") is None:
        pytest.fail("the partition test needs root and iproute2 (ip netns)")
    tag = f"{os.getpid() % 10000}"
    made: list[str] = []
    try:
        with open("/proc/sys/net/ipv4/ip_forward", "w") as f:
            f.write("1")
        for i in (1, 2):
            ns, outer, inner = f"zs{tag}n{i}", f"zs{tag}a{i}", f"zs{tag}b{i}"
            ip("netns", "add", ns)
            made.append(ns)
            ip("link", "add", outer, "type", "veth", "peer", "name", inner)
            ip("link", "set", inner, "netns", ns)
            ip("addr", "add", f"{NET}.{i}.1/24", "dev", outer)
            ip("link", "set", outer, "up")
            ip("-n", ns, "addr", "add", f"{NET}.{i}.2/24", "dev", inner)
            ip("-n", ns, "link", "set", inner, "up")
            ip("-n", ns, "link", "set", "lo", "up")
            ip("-n", ns, "route", "add", "default", "via", f"{NET}.{i}.1")
        yield {"ns1": made[0], "ns2": made[1], "link1": f"zs{tag}a1"}
    finally:
        for ns in made:
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)  # takes its veth along


def roles(cluster: DevCluster, node: str) -> list[tuple[str, str, int]]:
    """(timestamp, role, epoch) of every role change of a node's store."""
    return [
        (str(r["timestamp"]), str(r["role"]), int(r["epoch"]))  # type: ignore[call-overload]
        for r in cluster.log_records("statestore", node)
        if r.get("event") == "role"
    ]


def test_partition_isolating_the_primary_fences_it_and_the_other_side_goes_on(
    tmp_path: Path, namespaces: dict[str, str]
) -> None:
    hosts = {"front": f"{NET}.1.1", "node-1": f"{NET}.1.2", "node-2": f"{NET}.2.2"}
    wrap = {"node-1": ["ip", "netns", "exec", namespaces["ns1"]], "node-2": ["ip", "netns", "exec", namespaces["ns2"]]}
    cluster = DevCluster(tmp_path, base=5800, hosts=hosts, wrap=wrap)
    cluster.start_all()
    nodes = cluster.config.node_ids
    ua1 = UserAgent("ua1", 6951, cluster.balancer_addr, host=f"{NET}.1.1")
    ua2 = UserAgent("ua2", 6952, cluster.balancer_addr, host=f"{NET}.1.1")
    try:
        try:
            cluster.wait_ready(timeout=30)
        except TimeoutError as exc:
            raise AssertionError(log_tails(cluster.logdir)) from exc
        assert roles(cluster, "node-1")[-1][1] == "primary"
        assert ua1.invite("split", call_id_on("node-1", nodes, "p1")).status == 200
        assert ua2.invite("split", call_id_on("node-2", nodes, "p2")).status == 200

        ip("link", "set", namespaces["link1"], "down")  # node-1 is cut off from everyone
        cluster.wait_live(["node-2"], timeout=30)
        eventually(lambda: roles(cluster, "node-2")[-1][1] == "primary", timeout=15, what="node-2 elected")
        eventually(lambda: roles(cluster, "node-1")[-1][1] != "primary", timeout=15, what="node-1 fenced")
        fenced_at = next(t for t, role, _ in reversed(roles(cluster, "node-1")) if role != "primary")
        elected_at, _, epoch = roles(cluster, "node-2")[-1]
        assert fenced_at < elected_at  # never two primaries at once
        assert epoch > 1  # a new epoch: writes of the old one are refused from now on

        # The chat goes on, on node-2, for both participants.
        assert ua1.request("INFO", b"over the split").status == 200
        assert ua2.wait_request("INFO", timeout=15).body == b"over the split"

        ip("link", "set", namespaces["link1"], "up")  # heal: node-1 rejoins by resync
        cluster.wait_live(["node-1", "node-2"], timeout=30)
        eventually(lambda: roles(cluster, "node-1")[-1][1] == "backup", timeout=15, what="node-1 rejoined")
        assert ua2.request("INFO", b"healed").status == 200
        assert ua1.wait_request("INFO", timeout=15).body == b"healed"
        assert ua1.request("BYE").status == 200
        assert ua2.request("BYE").status == 200
    finally:
        ua1.close()
        ua2.close()
        cluster.stop()
