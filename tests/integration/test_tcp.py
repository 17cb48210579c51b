"""SIP over TCP through the balancer (RFC 3261 §18): SIPp's uac with one connection
(`-t t1`) and one per call (`-t tn`); a UA on TCP in the seed flow, whose requests from
the cluster come on its own connection, through a node's death; keepalives and framing."""

from __future__ import annotations

import secrets
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from balancer.stream import StreamFramer
from tests.conftest import call_id_on, need_sipp, running, sipp_stats
from zeroslee.devcluster import DevCluster
from zeroslee.sipmsg import SipMessage, parse, parse_name_addr
from zeroslee.ua import UserAgent


@pytest.mark.parametrize("mode", ["t1", "tn"])
def test_sipp_over_tcp_completes_every_call_and_udp_still_answers(
    cluster: DevCluster, tmp_path: Path, mode: str
) -> None:
    host, port = cluster.balancer_addr
    argv = [need_sipp(), "-sn", "uac", "-t", mode, f"{host}:{port}", "-i", "127.0.0.1", "-p", "6210"]
    argv += ["-m", "200", "-r", "50", "-timeout", "60", "-timeout_error", "-max_socket", "1000"]
    argv += ["-nostdin", "-trace_stat", "-fd", "1"]
    run = subprocess.run(argv, cwd=tmp_path, capture_output=True, timeout=90)
    stats = sipp_stats(tmp_path)
    assert (stats["SuccessfulCall(C)"], stats["FailedCall(C)"]) == ("200", "0"), run.stderr[-800:]
    balancer = cluster.stats("balancer")
    assert int(balancer["tcp.opened"]) == (1 if mode == "t1" else 200)
    assert cluster.options() == 200  # UDP


class TcpUa:
    """A UA on one TCP connection to the balancer, whose Contact names a port where
    nothing listens: whatever the cluster sends it must come on this connection."""

    def __init__(self, name: str, proxy: tuple[str, int]) -> None:
        self.name = name
        self.sock = socket.create_connection(proxy, timeout=10)
        self.local = "{}:{}".format(*self.sock.getsockname()[:2])
        self.framer = StreamFramer()
        self.inbox: list[SipMessage] = []
        self.tag = secrets.token_hex(4)
        self.cseq = 1
        self.remote_tag = self.target = ""
        self.routes: list[str] = []

    def close(self) -> None:
        self.sock.close()

    def send(self, msg: SipMessage) -> None:
        self.sock.sendall(msg.to_bytes())

    def next_message(self) -> SipMessage:
        while not self.inbox:
            data = self.sock.recv(65536)
            assert data, "the balancer closed our connection"
            self.inbox += [parse(m) for m in self.framer.feed(data)]
        return self.inbox.pop(0)

    def request(self, method: str, uri: str, call_id: str, body: bytes = b"") -> SipMessage:
        msg = SipMessage(method=method, uri=uri, body=body)
        msg.headers = [
            ("Via", f"SIP/2.0/TCP {self.local};branch=z9hG4bK{secrets.token_hex(8)}"),
            ("Max-Forwards", "70"),
            ("From", f"<sip:{self.name}@zeroslee.test>;tag={self.tag}"),
            ("To", f"<{uri.split(';')[0]}>" + (f";tag={self.remote_tag}" if self.remote_tag else "")),
            ("Call-ID", call_id),
            ("CSeq", f"{self.cseq} {method}"),
            ("Contact", f"<sip:{self.name}@127.0.0.1:6399;transport=tcp>"),
            *(("Route", r) for r in self.routes),
        ]
        if body:
            msg.headers.append(("Content-Type", "text/plain"))
        return msg

    def transact(self, msg: SipMessage) -> SipMessage:
        self.send(msg)
        while True:
            got = self.next_message()
            if got.is_request:
                self.inbox.append(got)  # answered by whoever waits for it
                continue
            if got.cseq == (int(msg.cseq[0]), msg.method) and got.status >= 200:
                return got

    def invite(self, room: str, call_id: str) -> SipMessage:
        ok = self.transact(self.request("INVITE", f"sip:{room}@127.0.0.1", call_id))
        assert ok.status == 200
        self.remote_tag = parse_name_addr(ok.get("To") or "").tag
        self.target = parse_name_addr(ok.get("Contact") or "").uri
        self.routes = list(reversed(ok.get_all("Record-Route")))  # §12.1.2
        ack = self.request("ACK", self.target, call_id)
        ack.headers = [(k, v if k != "CSeq" else f"{self.cseq} ACK") for k, v in ack.headers]
        self.send(ack)
        return ok

    def in_dialog(self, method: str, call_id: str, body: bytes = b"") -> SipMessage:
        self.cseq += 1
        return self.transact(self.request(method, self.target, call_id, body))

    def answer_next_request(self) -> SipMessage:
        while True:
            got = self.next_message()
            if got.is_request:
                break
        response = SipMessage(status=200, reason="OK")
        response.headers = [(k, v) for k, v in got.headers if k in ("Via", "From", "To", "Call-ID", "CSeq")]
        self.send(response)
        return got


def test_a_tcp_ua_chats_through_the_cluster_on_its_connection_through_a_node_death(cluster: DevCluster) -> None:
    nodes = cluster.config.node_ids
    alice = TcpUa("alice", cluster.balancer_addr)
    bob = UserAgent("bob", 6411, cluster.balancer_addr)
    try:
        alice_call = call_id_on("node-1", nodes, "tcp-alice")
        ok = alice.invite("tcp-room", alice_call)
        # RFC 5658: the balancer record-routed twice, the entry the UA uses naming TCP.
        assert alice.routes[0].endswith(";transport=tcp;lr;zsnode=node-1>"), ok.get_all("Record-Route")
        assert bob.invite("tcp-room", call_id_on("node-2", nodes, "tcp-bob")).status == 200
        assert bob.request("INFO", b"over tcp").status == 200
        relayed = alice.answer_next_request()  # on our connection: nothing listens on 6399
        assert relayed.method == "INFO" and relayed.body == b"over tcp"
        assert relayed.get_all("Via")[0].startswith("SIP/2.0/TCP ")  # the hop it really took
        # node-1, which holds Alice's dialog, dies; her next request reaches node-2.
        cluster.kill_node("node-1")
        cluster.wait_live(["node-2"])
        assert alice.in_dialog("INFO", alice_call, b"after the kill").status == 200
        assert bob.wait_request("INFO").body == b"after the kill"
        assert alice.in_dialog("BYE", alice_call).status == 200
        assert bob.request("BYE").status == 200
    finally:
        alice.close()
        bob.close()


def test_keepalive_pings_get_pongs_and_a_stream_without_framing_is_refused(cluster: DevCluster) -> None:
    with socket.create_connection(cluster.balancer_addr, timeout=5) as sock:
        sock.sendall(b"\r\n\r\n")  # RFC 5626 §4.4.1
        assert sock.recv(16) == b"\r\n"
        options = (
            "OPTIONS sip:ping@127.0.0.1 SIP/2.0\r\nVia: SIP/2.0/TCP 127.0.0.1:1;branch=z9hG4bKk1\r\n"
            "Max-Forwards: 70\r\nFrom: <sip:p@x>;tag=p\r\nTo: <sip:ping@x>\r\nCall-ID: ka-1\r\n"
            "CSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n"
        )
        sock.sendall(options.encode())
        framer = StreamFramer()
        got: list[bytes] = []
        while not got:
            got = framer.feed(sock.recv(65536))
        assert parse(got[0]).status == 200
    with socket.create_connection(cluster.balancer_addr, timeout=5) as sock:
        sock.sendall(options.replace("Content-Length: 0\r\n", "").encode())  # §18.3: MUST be there
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
        assert parse(data).status == 400  # then the connection is closed
    assert int(cluster.stats("balancer").get("rejected.tcp_framing", 0)) == 1


@pytest.fixture
def tight(tmp_path: Path) -> Iterator[DevCluster]:
    """Connections reaped after 1 s idle, and at most 2 of them."""
    yield from running(DevCluster(tmp_path, balancer_options={"tcp_idle": 1.0, "tcp_max_connections": 2}))


def closed_by_peer(sock: socket.socket, within: float = 10.0) -> bool:
    """Whether the balancer closes `sock` within `within` seconds (reads until EOF)."""
    sock.settimeout(within)
    try:
        while sock.recv(65536):
            pass
    except TimeoutError:
        return False
    return True


def test_idle_connections_are_reaped_and_the_longest_idle_is_evicted_first(tight: DevCluster) -> None:
    idle = socket.create_connection(tight.balancer_addr, timeout=5)
    assert closed_by_peer(idle)  # idle for tcp_idle: reaped
    assert int(tight.stats("balancer")["tcp.reaped"]) == 1
    first = socket.create_connection(tight.balancer_addr, timeout=5)
    second = socket.create_connection(tight.balancer_addr, timeout=5)
    second.sendall(b"\r\n\r\n")  # a keepalive: `second` is the more recently active
    assert second.recv(16) == b"\r\n"
    third = socket.create_connection(tight.balancer_addr, timeout=5)
    try:
        assert closed_by_peer(first, within=0.9)  # evicted at once for the third, not reaped
        third.sendall(b"\r\n\r\n")
        assert third.recv(16) == b"\r\n"
        assert int(tight.stats("balancer")["tcp.evicted"]) == 1
    finally:
        for sock in (idle, first, second, third):
            sock.close()
