"""zeroslee-admin against a running cluster, as an operator uses it."""

from __future__ import annotations

import json
import subprocess
import sys

from tests.conftest import eventually
from zeroslee.devcluster import DevCluster
from zeroslee.ua import UserAgent


def admin(cluster: DevCluster, *args: str) -> list[dict[str, object]]:
    argv = [sys.executable, "-m", "zeroslee.admin", "--config", str(cluster.config_path), "--json", *args]
    run = subprocess.run(argv, capture_output=True, text=True, timeout=30, check=True)
    return json.loads(run.stdout)  # type: ignore[no-any-return]


def test_admin_lists_ends_activities_and_shows_routing_statistics(cluster: DevCluster) -> None:
    ua = UserAgent("op", 6721, cluster.balancer_addr)
    try:
        assert ua.invite("ops-room").status == 200
        assert [s["name"] for s in admin(cluster, "services")] == ["chat", "wakeup", "b2b"]
        [room] = [a for a in admin(cluster, "activities") if a["names"] == ["ops-room"]]
        assert room["type"] == "null" and len(room["attachments"]) == 1  # type: ignore[arg-type]
        assert [n["name"] for n in admin(cluster, "names")] == ["ops-room"]
        assert len(admin(cluster, "entities")) == 1
        routing = admin(cluster, "routing")
        assert {"SipRequest"} <= {str(r["event_type"]) for r in routing}

        admin(cluster, "end-activity", str(room["id"]))
        eventually(lambda: admin(cluster, "names") == [], what="the room's name went with it")
        table = subprocess.run(
            [sys.executable, "-m", "zeroslee.admin", "--config", str(cluster.config_path), "activities"],
            capture_output=True,
            text=True,
            timeout=30,
            check=True,
        ).stdout
        assert table.splitlines()[0].split()[:3] == ["id", "type", "owner"]
    finally:
        ua.close()
