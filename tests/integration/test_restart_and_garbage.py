"""Restarting one service, and bad input on every socket, leave the cluster working."""

from __future__ import annotations

import socket

import pytest
import zmq

from tests.conftest import call_id_on, eventually
from zeroslee import admin, bus, curve
from zeroslee.devcluster import DevCluster
from zeroslee.sipmsg import parse
from zeroslee.ua import UserAgent


def chat(cluster: DevCluster, room: str, base_port: int) -> None:
    """The seed flow: UA-1 on node-1, UA-2 on node-2, INFO relayed, both leave."""
    nodes = cluster.config.node_ids
    ua1 = UserAgent("ua1", base_port, cluster.balancer_addr)
    ua2 = UserAgent("ua2", base_port + 1, cluster.balancer_addr)
    try:
        assert ua1.invite(room, call_id_on("node-1", nodes, f"{room}-1")).status == 200
        assert ua2.invite(room, call_id_on("node-2", nodes, f"{room}-2")).status == 200
        assert ua2.request("INFO", f"hello {room}".encode()).status == 200
        assert ua1.wait_request("INFO").body == f"hello {room}".encode()
        assert ua1.request("BYE").status == 200
        assert ua2.request("BYE").status == 200
    finally:
        ua1.close()
        ua2.close()


@pytest.mark.parametrize("node", ["node-1", "node-2"])
@pytest.mark.parametrize("service", ["router", "sip-ra", "statestore"])
def test_scenario_completes_after_one_service_is_restarted(cluster: DevCluster, service: str, node: str) -> None:
    """node-1's store starts as primary: restarting it moves the primary to node-2."""
    chat(cluster, "before", 6401)
    other = "node-2" if node == "node-1" else "node-1"
    old = cluster.pid(service, node)
    cluster.kill(service, node)
    cluster.wait_live([other])  # the balancer takes the node out (no or not-ready heartbeat)
    cluster.start(service, node)
    assert cluster.pid(service, node) != old
    cluster.wait_live(["node-1", "node-2"])
    chat(cluster, "after", 6403)
    assert admin.rows_for(cluster.config, "names") == []


GARBAGE_SIP = [
    b"",
    b"\x00\xff\xfe garbage",
    b"INVITE sip:x@y SIP/2.0\r\n\r\n",  # no required headers: dropped and counted
    b"INVITE sip:x@y SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:6499;branch=z9hG4bKbad\r\n"
    b"From: <sip:a@b>;tag=1\r\nTo: <sip:x@y>\r\nCall-ID: bad-1\r\nCSeq: 1 BYE\r\n"
    b"Content-Length: 0\r\n\r\n",  # CSeq method mismatch: 400
    b"OPTIONS sip:x@y SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:6499;branch=z9hG4bKbad2\r\n"
    b"From: <sip:a@b>;tag=1\r\nTo: <sip:x@y>\r\nCall-ID: bad-2\r\nCSeq: 1 OPTIONS\r\n"
    b"Content-Length: 9999\r\n\r\nshort",  # Content-Length larger than the datagram: 400
    b"SIP/2.0 200 OK\r\nVia: SIP/2.0/UDP 127.0.0.1:1;branch=z9hG4bKnothing\r\n\r\n",
    b"INVITE sip:x@y SIP/2.0\r\nVia: nonsense\r\nFrom: <sip:a@b>;tag=1\r\nTo: <sip:x@y>\r\n"
    b"Call-ID: bad-3\r\nCSeq: 1 INVITE\r\nContent-Length: 0\r\n\r\n",  # malformed Via
]


def test_malformed_datagrams_are_answered_or_counted_and_nothing_crashes(cluster: DevCluster) -> None:
    targets = [cluster.balancer_addr, cluster.node_addr("node-1"), cluster.node_addr("node-2")]
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 6499))
        sock.settimeout(2.0)
        for target in targets:
            for data in GARBAGE_SIP:
                sock.sendto(data, target)
            # The CSeq mismatch and the oversized Content-Length each get a 400.
            statuses = sorted(parse(sock.recvfrom(65535)[0]).status for _ in range(2))
            assert statuses == [400, 400]
    assert int(cluster.stats("balancer").get("rejected.sip", 0)) >= 5
    for node in ("node-1", "node-2"):
        assert int(cluster.stats("sip-ra", node).get("sip.rejected", 0)) >= 5
    chat(cluster, "after-garbage", 6405)


def test_garbage_on_every_bus_socket_is_counted_and_ignored(cluster: DevCluster) -> None:
    """From members that may connect there (garbage from an authenticated peer)."""
    nodes = cluster.config.node_ids
    endpoints = {"balancer": (cluster.config.balancer.control, "admin")}
    for n in cluster.config.nodes:
        other = next(o for o in nodes if o != n.id)
        endpoints[f"{n.id}/router"] = (n.router, n.id)
        endpoints[f"{n.id}/store"] = (n.store, n.id)
        endpoints[f"{n.id}/peer"] = (n.peer, other)
        endpoints[f"{n.id}/control"] = (n.control, "admin")
    ctx = zmq.Context()
    try:
        for endpoint, member in endpoints.values():
            sock = ctx.socket(zmq.DEALER)
            sock.setsockopt(zmq.LINGER, 1000)
            curve.connect(sock, cluster.config, member, endpoint)
            for junk in (b"", b"\x93\x01\x02", b"\xc1not msgpack", b'{"t":"Commit"}'):
                sock.send(junk)
            sock.close()
    finally:
        ctx.term()
    # A well-formed message naming an event type no process can load: refused, not a crash.
    ctx = zmq.Context()
    try:
        for n in cluster.config.nodes:
            sock = ctx.socket(zmq.DEALER)
            sock.setsockopt(zmq.LINGER, 1000)
            curve.connect(sock, cluster.config, n.id, n.router)
            sock.send(bus.encode(bus.FireEvent(0, "no-such-activity", "nowhere:Nothing", b"\x80")))
            sock.close()
    finally:
        ctx.term()
    for n in cluster.config.node_ids:
        eventually(lambda n=n: int(cluster.stats("router", n).get("rejected.event", 0)) == 1, what="refused")
    # Each process answers a well-formed request afterwards, and counted the junk.
    assert int(cluster.stats("balancer").get("rejected.bus", 0)) == 4
    for n in cluster.config.node_ids:
        assert int(cluster.stats("router", n).get("rejected.bus", 0)) == 4
        assert int(cluster.stats("statestore", n).get("rejected.bus", 0)) == 8
        assert int(cluster.stats("sip-ra", n).get("rejected.bus", 0)) == 4
    chat(cluster, "after-junk", 6407)
    assert admin.rows_for(cluster.config, "names") == []
