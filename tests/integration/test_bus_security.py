"""CURVE on every bus socket, checked from outside with real sockets against a running
cluster: no key, an unlisted key or the wrong member's key gets no answer and writes
nothing; the admin needs its key; insecure mode is explicit and says so."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import zmq
import zmq.auth

from tests.conftest import eventually, running
from zeroslee import admin, bus, curve
from zeroslee.devcluster import DevCluster

SILENCE_MS = 1500  # how long a refused client waits for an answer that must not come


def every_endpoint(cluster: DevCluster) -> dict[str, str]:
    out = {"balancer/control": cluster.config.balancer.control, "witness": cluster.config.witness.endpoint}
    for n in cluster.config.nodes:
        out |= {f"{n.id}/store": n.store, f"{n.id}/peer": n.peer, f"{n.id}/router": n.router}
        out[f"{n.id}/control"] = n.control
    return out


def intruder_commit(req: int) -> bus.Commit:
    return bus.Commit(req, [], [("intruder/x", b"owned")], [], "intruder")


def answers(ctx: zmq.Context[Any], endpoints: dict[str, str], dial: Any) -> dict[str, list[bus.Message]]:
    """Send a Ping, a Query and a Commit to each endpoint from sockets set up by `dial`;
    every reply that came back within SILENCE_MS, by endpoint name."""
    socks = {}
    for name, endpoint in endpoints.items():
        sock = ctx.socket(zmq.DEALER)
        sock.setsockopt(zmq.LINGER, 0)
        dial(sock, endpoint)
        for message in (bus.Ping(1, "intruder"), bus.Query(2, ""), intruder_commit(3)):
            sock.send(bus.encode(message))
        socks[name] = sock
    got: dict[str, list[bus.Message]] = {name: [] for name in socks}
    poller = zmq.Poller()
    for sock in socks.values():
        poller.register(sock, zmq.POLLIN)
    by_sock = {sock: name for name, sock in socks.items()}
    deadline = time.monotonic() + SILENCE_MS / 1000
    while (left := deadline - time.monotonic()) > 0:  # every reply that comes in the window
        for sock, _ in poller.poll(left * 1000):
            while sock.poll(0):
                got[by_sock[sock]].append(bus.decode(sock.recv()))
    for sock in socks.values():
        sock.close()
    return got


def nothing_written(cluster: DevCluster) -> None:
    for node in cluster.config.node_ids:
        assert admin.query_node(cluster.config, node, "intruder/") == []


def test_a_client_without_keys_gets_no_answer_from_any_socket(cluster: DevCluster) -> None:
    ctx: zmq.Context[Any] = zmq.Context()
    try:
        got = answers(ctx, every_endpoint(cluster), lambda sock, endpoint: sock.connect(endpoint))
        heartbeat = ctx.socket(zmq.SUB)
        heartbeat.setsockopt(zmq.SUBSCRIBE, b"")
        for n in cluster.config.nodes:
            heartbeat.connect(n.heartbeat)
        beats = heartbeat.poll(SILENCE_MS)
        heartbeat.close(0)
    finally:
        ctx.term()
    assert got == {name: [] for name in got}
    assert beats == 0
    nothing_written(cluster)
    for node in cluster.config.node_ids:  # counted where they knocked
        assert int(cluster.stats("statestore", node).get("rejected.handshake", 0)) >= 1
        assert int(cluster.stats("router", node).get("rejected.handshake", 0)) >= 1
        assert int(cluster.stats("sip-ra", node).get("rejected.handshake", 0)) >= 1
    assert cluster.options() == 200


def test_a_key_the_cluster_file_does_not_list_gets_no_answer(cluster: DevCluster, tmp_path: Path) -> None:
    public, secret = zmq.curve_keypair()
    config = cluster.config
    ring = curve.Keyring(config, "admin")

    def dial(sock: zmq.Socket[Any], endpoint: str) -> None:
        ring.dial(sock, endpoint)  # the right server key, then our own unlisted pair
        sock.setsockopt(zmq.CURVE_PUBLICKEY, public)
        sock.setsockopt(zmq.CURVE_SECRETKEY, secret)
        sock.connect(endpoint)

    ctx: zmq.Context[Any] = zmq.Context()
    try:
        got = answers(ctx, every_endpoint(cluster), dial)
    finally:
        ctx.term()
    assert got == {name: [] for name in got}
    nothing_written(cluster)
    refused = [r for r in cluster.log_records("statestore", "node-1") if r.get("event") == "bus connection refused"]
    assert refused and str(refused[0]["member"]).startswith("unlisted key")


def test_the_witness_key_cannot_commit(cluster: DevCluster) -> None:
    """Refused at the handshake on a store's client socket; on the peer socket, where
    the witness may connect (it watches the store's process), refused per message."""
    config = cluster.config
    ctx: zmq.Context[Any] = zmq.Context()
    try:
        stores = {f"{n.id}/store": n.store for n in config.nodes} | {f"{n.id}/peer": n.peer for n in config.nodes}
        got = answers(ctx, stores, lambda sock, endpoint: curve.connect(sock, config, "witness", endpoint))
    finally:
        ctx.term()
    assert got == {name: [] for name in got}
    nothing_written(cluster)
    for node in config.node_ids:
        eventually(
            lambda n=node: int(cluster.stats("statestore", n).get("rejected.forbidden", 0)) == 3,
            what="the witness's Ping, Query and Commit on the peer socket refused",
        )


def test_the_admin_key_reads_but_does_not_commit(cluster: DevCluster) -> None:
    config = cluster.config
    ctx: zmq.Context[Any] = zmq.Context()
    try:
        stores = {n.id: n.store for n in config.nodes}
        got = answers(ctx, stores, lambda sock, endpoint: curve.connect(sock, config, "admin", endpoint))
    finally:
        ctx.term()
    for node in config.node_ids:
        assert [type(m).__name__ for m in got[node]] == ["Pong", "QueryResult"]
        assert int(cluster.stats("statestore", node).get("rejected.forbidden", 0)) == 1
    nothing_written(cluster)


def run_admin(cluster: DevCluster, *args: str) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "zeroslee.admin", "--config", str(cluster.config_path), *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=30)


def test_the_admin_cli_needs_its_key_and_says_so(cluster: DevCluster) -> None:
    ok = run_admin(cluster, "--json", "activities")
    assert ok.returncode == 0 and ok.stdout.strip() == "[]"
    secret = curve.secret_path(cluster.config, "admin")
    secret.rename(secret.with_suffix(".moved"))
    try:
        missing = run_admin(cluster, "--json", "activities")
    finally:
        secret.with_suffix(".moved").rename(secret)
    assert missing.returncode != 0
    assert "no secret key for admin" in missing.stderr and "Traceback" not in missing.stderr
    # A key of its own that the cluster does not list: the server's refusal, said at once.
    keydir = cluster.workdir / "other-keys"
    made = run_admin(cluster, "--json", "keygen", "admin-mallory", "--dir", str(keydir))
    assert made.returncode == 0, made.stderr
    for path in keydir.iterdir():
        assert path.stat().st_mode & 0o777 == 0o600
    text = cluster.config_path.read_text()
    mallory = cluster.workdir / "mallory.toml"
    listed_here_only = text.replace(
        "[security.public]", f'[security.public]\nadmin-mallory = "{keydir}/admin-mallory.key"'
    ).replace(f'keys = "{cluster.config.security.keys}"', f'keys = "{keydir}"')
    mallory.write_text(listed_here_only)
    refused = subprocess.run(
        [sys.executable, "-m", "zeroslee.admin", "--config", str(mallory), "--as", "admin-mallory", "names"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert refused.returncode != 0
    assert "refused admin-mallory's key" in refused.stderr and "Traceback" not in refused.stderr


@pytest.fixture
def insecure_cluster(tmp_path: Path) -> Iterator[DevCluster]:
    yield from running(DevCluster(tmp_path, insecure=True))


def test_insecure_is_explicit_and_every_process_warns(insecure_cluster: DevCluster) -> None:
    c = insecure_cluster
    assert c.options() == 200
    assert not (c.workdir / "keys").exists()
    # What the secure cluster refuses, this one answers: anyone may talk to its store.
    ctx: zmq.Context[Any] = zmq.Context()
    try:
        got = answers(ctx, {"store": c.config.node("node-1").store}, lambda sock, ep: sock.connect(ep))
    finally:
        ctx.term()
    assert [type(m).__name__ for m in got["store"]] == ["Pong", "QueryResult", "CommitResult"]
    for node in c.config.node_ids:
        for service in ("statestore", "router", "sip-ra"):
            assert any(r.get("event") == "bus insecure" for r in c.log_records(service, node)), (service, node)
    for service in ("balancer", "witness"):
        assert any(r.get("event") == "bus insecure" for r in c.log_records(service))
