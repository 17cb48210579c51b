"""The timer-driven example: call, hang up, get called back by the service (UAC side)."""

from __future__ import annotations

from tests.conftest import eventually
from zeroslee import admin
from zeroslee.devcluster import DevCluster
from zeroslee.ua import UserAgent, via_hosts


def test_wakeup_calls_back_after_the_timer_and_hangs_up(cluster: DevCluster) -> None:
    ua = UserAgent("sleeper", 6701, cluster.balancer_addr)
    try:
        assert ua.invite("wakeup-1").status == 200
        assert ua.request("BYE").status == 200
        invite = ua.wait_request("INVITE", timeout=15)  # the call back, answered 200 by the UA
        assert invite.uri == f"sip:sleeper@{ua.addr[0]}:{ua.addr[1]}"
        assert invite.get_all("Record-Route")  # the balancer stays on the path
        bye = ua.wait_request("BYE", timeout=15)
        assert bye.call_id == invite.call_id
        assert "tag=sleeper-uas" in (bye.get("To") or "")  # on the dialog our 200 created
        # Through the balancer, which shows only itself: one Via, ours, the node's folded in.
        assert bye.get("Route") is None and via_hosts(bye)[0] == cluster.balancer_addr
        assert len(bye.get_all("Via")) == 1 and len(via_hosts(bye)) == 2
        # Once our 200 to its BYE is in, the service lets go of everything.
        eventually(lambda: admin.query(cluster.config, "") == [], what="the store emptied")
    finally:
        ua.close()
