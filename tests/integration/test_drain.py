"""Drain and undrain (`zeroslee-admin drain|undrain NODE`) under SIPp load: a drained
node takes no new call, hands over what it owns to the other node, and the calls in
progress on it go on; undrained, it takes new calls again. 0 failed calls, 0 lost INFOs."""

from __future__ import annotations

import json
import subprocess
import sys
import urllib.request
from pathlib import Path

from tests.conftest import call_id_on, need_sipp, sipp_stats
from zeroslee.devcluster import DevCluster
from zeroslee.sipmsg import SipMessage
from zeroslee.ua import UserAgent


def admin(cluster: DevCluster, *args: str) -> subprocess.CompletedProcess[str]:
    argv = [sys.executable, "-m", "zeroslee.admin", "--config", str(cluster.config_path), "--json", *args]
    return subprocess.run(argv, capture_output=True, text=True, timeout=60)


def node_of(response: SipMessage) -> str:
    """The node the balancer sent the dialog to: its Record-Route names it."""
    (route,) = [r for r in response.get_all("Record-Route") if "zsnode=" in r][:1]
    return route.split("zsnode=")[1].split(">")[0].split(";")[0]


def relay(sender: UserAgent, receivers: list[UserAgent], text: bytes) -> None:
    """`sender`'s text reaches every other member of the room, once each."""
    assert sender.request("INFO", text).status == 200
    for receiver in receivers:
        assert receiver.wait_request("INFO").body == text


def test_drain_hands_over_and_undrain_takes_calls_again_under_load(cluster: DevCluster, tmp_path: Path) -> None:
    nodes = cluster.config.node_ids
    host, port = cluster.balancer_addr
    argv = [need_sipp(), "-sn", "uac", f"{host}:{port}", "-s", "service", "-i", "127.0.0.1", "-p", "6033"]
    argv += ["-r", "30", "-m", "300", "-d", "2000", "-l", "150", "-timeout", "90", "-recv_timeout", "10000"]
    argv += ["-nostdin", "-trace_stat", "-fd", "1"]
    load = subprocess.Popen(argv, cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    one = UserAgent("dr1", 6261, cluster.balancer_addr)
    two = UserAgent("dr2", 6262, cluster.balancer_addr)
    late = UserAgent("dr3", 6263, cluster.balancer_addr)
    try:
        assert node_of(one.invite("room-dr", call_id_on("node-1", nodes, "dr1"))) == "node-1"
        assert node_of(two.invite("room-dr", call_id_on("node-2", nodes, "dr2"))) == "node-2"
        relay(one, [two], b"before")

        done = admin(cluster, "drain", "node-1", "--wait", "20")
        assert done.returncode == 0, done.stderr
        (row,) = json.loads(done.stdout)
        assert row["drained"] and row["balancer_sees_drained"] and row["owns_nothing"], row
        assert load.poll() is None  # under load all along
        # A new call whose Call-ID hashes to node-1 goes to node-2 now.
        assert node_of(late.invite("room-dr", call_id_on("node-1", nodes, "dr3"))) == "node-2"
        # The calls in progress go on, node-1's included, in both directions.
        relay(one, [two, late], b"during-1")
        relay(two, [one, late], b"during-2")
        relay(late, [one, two], b"during-3")
        assert late.request("BYE").status == 200
        listed = json.loads(admin(cluster, "nodes").stdout)
        assert [(r["node"], r["drained"]) for r in listed] == [("node-1", True), ("node-2", False)]
        assert json.loads(str(cluster.stats("balancer")["draining"])) == ["node-1"]
        with urllib.request.urlopen(f"http://{cluster.config.balancer.metrics}/metrics", timeout=10) as page:
            scraped = page.read().decode()
        assert 'zeroslee_node_draining{node="node-1"} 1.0' in scraped
        assert 'zeroslee_node_draining{node="node-2"} 0.0' in scraped

        done = admin(cluster, "undrain", "node-1", "--wait", "20")
        assert done.returncode == 0, done.stderr
        assert not json.loads(done.stdout)[0]["balancer_sees_drained"]
        again = UserAgent("dr4", 6264, cluster.balancer_addr)
        try:
            assert node_of(again.invite("room-dr", call_id_on("node-1", nodes, "dr4"))) == "node-1"
            relay(again, [one, two], b"after")
            assert again.request("BYE").status == 200
        finally:
            again.close()
        relay(one, [two], b"last")
        assert not one.received and not two.received  # nothing relayed twice
        assert one.request("BYE").status == 200
        assert two.request("BYE").status == 200
        unknown = admin(cluster, "drain", "node-9")
        assert unknown.returncode != 0 and "no node 'node-9'" in unknown.stderr
        load.wait(timeout=120)
        stats = sipp_stats(tmp_path)
        assert (int(stats["SuccessfulCall(C)"]), int(stats["FailedCall(C)"])) == (300, 0)
    finally:
        for ua in (one, two, late):
            ua.close()
        if load.poll() is None:
            load.kill()
            load.wait(timeout=10)
