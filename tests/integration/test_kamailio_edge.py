"""Kamailio as an edge proxy in front of the cluster (record_route, loose_route,
stateful t_relay): a UA behind it chats through the balancer, over UDP and over TCP to
Kamailio, and its call survives a kill -9 of the node that answered it."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from bench import tools
from tests.conftest import REPO, call_id_on
from tests.integration.test_tcp import TcpUa
from zeroslee.devcluster import DevCluster
from zeroslee.ua import UserAgent

EDGE_PORT = 6450


@pytest.fixture
def edge(cluster: DevCluster, tmp_path: Path) -> Iterator[tuple[str, int]]:
    cfg = (REPO / "tests" / "kamailio" / "edge.cfg.in").read_text()
    cfg = cfg.replace("@BALANCER@", "{}:{}".format(*cluster.balancer_addr))
    proc, _ = tools.start_kamailio(cfg, EDGE_PORT, tmp_path / "kamailio", shm_mb=64)
    try:
        yield ("127.0.0.1", EDGE_PORT)
    finally:
        tools.stop_group(proc)


@pytest.mark.parametrize("kill", [False, True])
def test_a_ua_behind_kamailio_chats_through_the_cluster(
    cluster: DevCluster, edge: tuple[str, int], tmp_path: Path, kill: bool
) -> None:
    nodes = cluster.config.node_ids
    alice = UserAgent("alice", 6451, edge)  # behind the edge proxy
    bob = UserAgent("bob", 6452, cluster.balancer_addr)
    try:
        alice_call = call_id_on("node-1", nodes, "edge-alice")
        ok = alice.invite("edge-room", alice_call)
        assert ok.status == 200
        # Both proxies stay on the path: Kamailio's entry, then the balancer's.
        routes = ok.get_all("Record-Route")
        assert any(f":{EDGE_PORT}" in r for r in routes) and any("zsnode=node-1" in r for r in routes), routes
        assert alice.call is not None and f":{EDGE_PORT}" in alice.call.route_set[0]
        assert bob.invite("edge-room", call_id_on("node-2", nodes, "edge-bob")).status == 200
        assert alice.request("INFO", b"from behind the edge").status == 200
        assert bob.wait_request("INFO").body == b"from behind the edge"
        assert bob.request("INFO", b"to behind the edge").status == 200
        relayed = alice.wait_request("INFO")  # node -> balancer -> Kamailio -> alice
        assert relayed.body == b"to behind the edge"
        assert any(f":{EDGE_PORT}" in via for via in relayed.get_all("Via"))
        if kill:
            cluster.kill_node("node-1")  # the node that answered alice's INVITE
            cluster.wait_live(["node-2"])
        assert alice.request("BYE").status == 200
        assert bob.request("BYE").status == 200
    finally:
        alice.close()
        bob.close()


def test_a_tcp_ua_behind_kamailio_reaches_the_cluster(cluster: DevCluster, edge: tuple[str, int]) -> None:
    """TCP to Kamailio, UDP from it to the balancer: Kamailio record-routes twice."""
    nodes = cluster.config.node_ids
    carol = TcpUa("carol", edge)
    dave = UserAgent("dave", 6453, cluster.balancer_addr)
    try:
        carol_call = call_id_on("node-2", nodes, "edge-carol")
        carol.invite("edge-tcp-room", carol_call)
        assert dave.invite("edge-tcp-room", call_id_on("node-1", nodes, "edge-dave")).status == 200
        assert dave.request("INFO", b"over tcp at the edge").status == 200
        assert carol.answer_next_request().body == b"over tcp at the edge"
        assert carol.in_dialog("BYE", carol_call).status == 200
        assert dave.request("BYE").status == 200
    finally:
        carol.close()
        dave.close()
