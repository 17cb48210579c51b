"""Profile tables edited live (`zeroslee-admin profile`), seen by every node: the chat's
room size, and a watching SBB told of each change."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import call_id_on, eventually, running
from zeroslee import admin, keys
from zeroslee.devcluster import DevCluster
from zeroslee.ua import UaError, UserAgent

WATCHER = """
[[services]]
name = "watcher"
sbb = "tests.ra.watcher:WatcherSbb"
options = { users = "^watch-" }
"""


@pytest.fixture
def watched(tmp_path: Path) -> Iterator[DevCluster]:
    yield from running(DevCluster(tmp_path, extra=WATCHER))


def profile(cluster: DevCluster, *args: str) -> subprocess.CompletedProcess[str]:
    argv = [sys.executable, "-m", "zeroslee.admin", "--config", str(cluster.config_path), "--json", "profile", *args]
    return subprocess.run(argv, capture_output=True, text=True, timeout=60)


def changes(cluster: DevCluster) -> list[tuple[object, object]]:
    return [
        (r["key"], r["removed"])
        for node in cluster.config.node_ids
        for r in cluster.log_records("router", node)
        if r.get("event") == "trace" and r.get("message") == "profile changed"
    ]


def test_a_profile_edit_is_seen_by_both_nodes_and_told_to_its_watcher(watched: DevCluster) -> None:
    cluster = watched
    nodes = cluster.config.node_ids
    watcher = UserAgent("pw", 6241, cluster.balancer_addr)
    try:
        assert watcher.invite("watch-rooms", call_id_on("node-1", nodes, "pw")).status == 200
        assert watcher.request("BYE").status == 200  # the watcher stays, attached to the table
    finally:
        watcher.close()
    assert json.loads(profile(cluster, "tables").stdout) == [
        {"table": "rooms", "schema": "router.chat:RoomProfile", "rows": 0}
    ]
    done = profile(cluster, "set", "rooms", "small", '{"max_members": 1, "title": "one only"}')
    assert done.returncode == 0, done.stderr
    for node in nodes:  # in both replicas
        eventually(lambda n=node: bool(admin.query_node(cluster.config, n, keys.profile("rooms", "small"))))
    [row] = json.loads(profile(cluster, "get", "rooms", "small").stdout)
    assert row["max_members"] == 1 and row["title"] == "one only"
    eventually(lambda: changes(cluster) == [("small", False)], what="the watcher told of the change")

    # The chat reads it on either node: the second member of "small" is refused.
    ua1 = UserAgent("pm1", 6242, cluster.balancer_addr)
    ua2 = UserAgent("pm2", 6243, cluster.balancer_addr)
    try:
        assert ua1.invite("small", call_id_on("node-1", nodes, "pm1")).status == 200
        with pytest.raises(UaError) as refused:
            ua2.invite("small", call_id_on("node-2", nodes, "pm2"))
        assert refused.value.status == 486
        assert ua1.request("BYE").status == 200
    finally:
        ua1.close()
        ua2.close()

    # Bad input: a clear error, nothing written.
    for args, error in (
        (("set", "rooms", "x", '{"max_members": "many"}'), "Expected `int`"),
        (("set", "rooms", "x", "not json"), "rooms:"),
        (("set", "halls", "x", "{}"), "no profile table 'halls'"),
        (("get", "rooms", "absent"), "no row 'absent'"),
    ):
        bad = profile(cluster, *args)
        assert bad.returncode != 0 and error in bad.stderr, (args, bad.stderr)
    assert json.loads(profile(cluster, "tables").stdout)[0]["rows"] == 1

    assert profile(cluster, "remove", "rooms", "small").returncode == 0
    assert profile(cluster, "get", "rooms", "small").returncode != 0
    eventually(lambda: changes(cluster) == [("small", False), ("small", True)], what="the removal told")
    # The table's activity is the system's: listed only when asked for.
    listed = subprocess.run(
        [sys.executable, "-m", "zeroslee.admin", "--config", str(cluster.config_path), "--json", "activities"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert all(a["type"] != "profile" for a in json.loads(listed.stdout))
    every = subprocess.run(
        [sys.executable, "-m", "zeroslee.admin", "--config", str(cluster.config_path), "--json", "--all", "activities"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert [a["type"] for a in json.loads(every.stdout)].count("profile") == 1
