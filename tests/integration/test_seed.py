"""The seed scenario (../shared/seed, DESIGN §3) across a balancer and two nodes."""

from __future__ import annotations

from typing import Any

from tests.conftest import call_id_on
from zeroslee import admin
from zeroslee.devcluster import DevCluster
from zeroslee.sipmsg import parse_name_addr
from zeroslee.ua import UserAgent, via_hosts


def deliveries(cluster: DevCluster, node: str) -> list[dict[str, Any]]:
    return [r for r in cluster.log_records("router", node) if r.get("event") == "delivered"]


def test_seed_chat_relay_crosses_nodes_through_clustered_state(cluster: DevCluster) -> None:
    nodes = cluster.config.node_ids
    ua1 = UserAgent("ua1", 6201, cluster.balancer_addr)
    ua2 = UserAgent("ua2", 6202, cluster.balancer_addr)
    try:
        # 1. UA-1's INVITE lands on node-1: Sbb-1 creates ACI-1 and names it.
        ok1 = ua1.invite("room-7", call_id_on("node-1", nodes, "ua1"))
        assert ok1.status == 200
        [aci1] = [row["activity"] for row in admin.rows_for(cluster.config, "names") if row["name"] == "room-7"]
        activities = {row["id"]: row for row in admin.rows_for(cluster.config, "activities")}
        assert activities[aci1]["type"] == "null" and activities[aci1]["owner"] == "node-1"
        [sbb1] = activities[aci1]["attachments"]
        entities = {row["id"]: row for row in admin.rows_for(cluster.config, "entities")}
        assert entities[sbb1]["created_on"] == "node-1"

        # 2. UA-2's INVITE lands on node-2: Sbb-2.
        assert ua2.invite("room-7", call_id_on("node-2", nodes, "ua2")).status == 200
        entities = {row["id"]: row for row in admin.rows_for(cluster.config, "entities")}
        [sbb2] = [e for e in entities if e != sbb1]
        assert entities[sbb2]["created_on"] == "node-2"

        # 3. UA-2's INFO on node-2: Sbb-2 looks ACI-1 up and fires the MessageEvent.
        assert ua2.request("INFO", b"hello").status == 200

        # 5. UA-1 gets the text, sent by node-2's sip-ra on UA-1's dialog via the balancer.
        relayed = ua1.wait_request("INFO")
        assert relayed.body == b"hello"
        assert relayed.get("Content-Type") == "text/plain"
        assert via_hosts(relayed)[:2] == [cluster.balancer_addr, cluster.node_addr("node-2")]
        assert relayed.call_id == ua1.call.call_id  # type: ignore[union-attr]
        assert parse_name_addr(relayed.get("To") or "").tag == ua1.call.local_tag  # type: ignore[union-attr]
        assert parse_name_addr(relayed.get("From") or "").tag == ua1.call.remote_tag  # type: ignore[union-attr]
        assert ua2.received == []  # the sender does not get its own message back

        # 4. The event was routed on node-2 only, reaching Sbb-1 loaded from the cluster.
        on_aci1 = [d for d in deliveries(cluster, "node-2") if d["activity"] == aci1]
        assert len(on_aci1) == 1
        assert on_aci1[0]["event_type"] == "MessageEvent"
        assert on_aci1[0]["loaded_remote"] == [sbb1]
        assert sorted(on_aci1[0]["to"]) == sorted([sbb1, sbb2])
        assert not [d for d in deliveries(cluster, "node-1") if d["activity"] == aci1]

        # Leaving: both BYEs end the dialogs; the room ends with its last participant.
        assert ua1.request("BYE").status == 200
        assert ua2.request("BYE").status == 200
        assert admin.rows_for(cluster.config, "names") == []
        assert admin.rows_for(cluster.config, "activities") == []
        assert admin.rows_for(cluster.config, "entities") == []
        assert admin.query(cluster.config, "ra/sip/") == []
    finally:
        ua1.close()
        ua2.close()


def test_info_on_unknown_dialog_is_481(cluster: DevCluster) -> None:
    ua = UserAgent("lost", 6203, cluster.balancer_addr)
    try:
        assert ua.invite("room-x").status == 200
        assert ua.request("BYE").status == 200
        assert ua.request("INFO", b"anyone?").status == 481
    finally:
        ua.close()


def test_ringing_room_answers_180_then_200_from_a_replicated_timer(cluster: DevCluster) -> None:
    ua = UserAgent("ringer", 6204, cluster.balancer_addr)
    try:
        ok = ua.invite("ring-hall")
        assert ok.status == 200
        assert [r.status for r in ua.responses if r.cseq[1] == "INVITE" and r.status > 100][:2] == [180, 200]
        assert admin.query(cluster.config, "tmr/") == []  # the one-shot timer is gone once fired
        assert ua.request("BYE").status == 200
    finally:
        ua.close()
