"""The balancer and the nodes on IPv6 loopback ([::1], RFC 5118) when the cluster file
says so: a chat call from an IPv6 UA goes through, the relay reaches the other UA at
its IPv6 Contact, the SDP answer keeps the offer's address family, and nothing needs
IPv4 on the SIP side."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import call_id_on, running
from zeroslee.devcluster import DevCluster
from zeroslee.ua import UserAgent

SDP6 = b"v=0\r\no=ua 1 1 IN IP6 ::1\r\ns=-\r\nc=IN IP6 ::1\r\nt=0 0\r\nm=audio 40000 RTP/AVP 0\r\n"


@pytest.fixture
def v6_cluster(tmp_path: Path) -> Iterator[DevCluster]:
    try:
        socket.socket(socket.AF_INET6, socket.SOCK_DGRAM).close()
    except OSError:
        pytest.fail("this machine has no IPv6 loopback")
    yield from running(DevCluster(tmp_path, base=5700, sip_host="[::1]"))


def test_a_chat_over_ipv6_loopback(v6_cluster: DevCluster) -> None:
    cluster = v6_cluster
    assert cluster.balancer_addr == ("::1", 5700)
    nodes = cluster.config.node_ids
    ua1 = UserAgent("v6a", 6971, cluster.balancer_addr, host="::1")
    ua2 = UserAgent("v6b", 6972, cluster.balancer_addr, host="::1")
    try:
        assert ua1.invite("v6-room", call_id_on("node-1", nodes, "v6a")).status == 200
        ok = ua2.invite("v6-room", call_id_on("node-2", nodes, "v6b"), sdp=SDP6)
        assert ok.status == 200
        assert b"c=IN IP6 " in ok.body and b"m=audio 0 " in ok.body
        assert "[::1]:5700" in (ok.get("Contact") or "") and "[::1]:5700" in ok.get_all("Record-Route")[0]
        assert ua2.request("INFO", b"over v6").status == 200
        assert ua1.wait_request("INFO").body == b"over v6"
        assert ua1.request("BYE").status == 200
        assert ua2.request("BYE").status == 200
    finally:
        ua1.close()
        ua2.close()
