"""The cluster is one SIP element to the outside (DESIGN §6, RFC 3261 §12.1.1): its
dialog-creating responses echo the balancer's Record-Route and carry a Contact naming
the balancer, and nothing that leaves the cluster names a node's own address, so a UA
that follows its route set and remote target (as `zeroslee.ua` now does, like a phone)
sends every in-dialog request to the balancer and reaches a survivor after its node dies."""

from __future__ import annotations

from tests.conftest import call_id_on
from zeroslee.devcluster import DevCluster
from zeroslee.sipmsg import SipMessage, parse_name_addr, parse_uri
from zeroslee.ua import UserAgent, uri_addr


def node_addresses(cluster: DevCluster) -> list[bytes]:
    return [f"{host}:{port}".encode() for host, port in map(cluster.node_addr, cluster.config.node_ids)]


def assert_names_only_the_balancer(cluster: DevCluster, msg: SipMessage, node: str) -> None:
    host, port = cluster.balancer_addr
    contact = parse_uri(parse_name_addr(msg.get("Contact") or "").uri)
    assert (contact.host, contact.port, contact.params.get("zsnode")) == (host, port, node)
    for address in node_addresses(cluster):
        assert address not in msg.to_bytes(), f"{address!r} leaks in:\n{msg.to_bytes().decode()}"


def test_180_and_200_carry_the_record_route_and_a_contact_naming_the_balancer(cluster: DevCluster) -> None:
    nodes = cluster.config.node_ids
    ua = UserAgent("phone", 6951, cluster.balancer_addr)
    try:
        ok = ua.invite("ring-rr", call_id_on("node-1", nodes, "rr"))
        [ringing] = [m for m in ua.responses if m.status == 180]
        host, port = cluster.balancer_addr
        for response in (ringing, ok):
            assert parse_name_addr(response.get("To") or "").tag  # an (early) dialog
            assert response.get_all("Record-Route") == [f"<sip:{host}:{port};lr;zsnode=node-1>"]
            assert_names_only_the_balancer(cluster, response, "node-1")
        # A phone's next hop is the top of its route set: the balancer, not node-1.
        assert ua._next_hop(ua.call) == cluster.balancer_addr
        assert ua.request("BYE").status == 200
    finally:
        ua.close()


def test_a_relayed_request_names_no_node_and_its_dialog_survives_the_node(cluster: DevCluster) -> None:
    nodes = cluster.config.node_ids
    ua1 = UserAgent("ua1", 6952, cluster.balancer_addr)
    ua2 = UserAgent("ua2", 6953, cluster.balancer_addr)
    try:
        assert ua1.invite("rr-room", call_id_on("node-1", nodes, "r1")).status == 200
        assert ua2.invite("rr-room", call_id_on("node-2", nodes, "r2")).status == 200
        assert ua2.request("INFO", b"hidden").status == 200
        relayed = ua1.wait_request("INFO")
        assert relayed.body == b"hidden"
        for address in node_addresses(cluster):
            assert address not in relayed.to_bytes()
        # Its Contact is the cluster's: a phone's remote target for the reverse direction.
        assert uri_addr(parse_name_addr(relayed.get("Contact") or "").uri) == cluster.balancer_addr

        cluster.kill_node("node-1")
        cluster.wait_live(["node-2"])
        assert ua1.request("INFO", b"after").status == 200  # through its route set: the balancer
        assert ua2.wait_request("INFO").body == b"after"
        assert ua1.request("BYE").status == 200
        assert ua2.request("BYE").status == 200
    finally:
        ua1.close()
        ua2.close()
