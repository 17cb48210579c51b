"""Dialogs whose UA vanished end (issue 22, "nothing left behind"): by RFC 4028 session
timers where the UA supports them (Session-Expires, Min-SE and 422, the refresher, the
owner's BYE when refreshes stop), otherwise by the cluster's idle limit. The intervals are
shortened here (seconds, not the half hour of the defaults) so that expiry happens
within a test; what is waited for is the BYE the cluster sends, never a fixed time."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import msgspec
import pytest

from tests.conftest import call_id_on, eventually, running
from zeroslee import admin, keys
from zeroslee.devcluster import DevCluster
from zeroslee.ftra import Entry
from zeroslee.ua import UaError, UserAgent

TIMER = [("Supported", "timer"), ("Session-Expires", "4")]


@pytest.fixture
def short(tmp_path: Path) -> Iterator[DevCluster]:
    options = {"min_se": 3, "session_expires": 4, "idle_limit": 3.0}
    yield from running(DevCluster(tmp_path, base=5300, sip_options=options))


def stored_end(cluster: DevCluster, dialog: str) -> float:
    rows = admin.query(cluster.config, keys.ra_data("sip", dialog))
    assert rows, f"dialog {dialog} is not in the store"
    return msgspec.msgpack.decode(rows[0][2], type=Entry).fire_at


def test_session_timer_is_negotiated_refreshed_and_ends_a_vanished_call(short: DevCluster) -> None:
    cluster = short
    ua = UserAgent("st", 6941, cluster.balancer_addr)
    try:
        ok = ua.invite("st-room", call_id_on("node-1", cluster.config.node_ids, "st"), headers=TIMER)
        # §9: the UAC supports timers and named no refresher: it refreshes; Require: timer.
        assert ok.get("Session-Expires") == "4;refresher=uac"
        assert "timer" in (ok.get("Require") or "")
        assert ua.call is not None
        dialog = next(r["id"] for r in admin.rows_for(cluster.config, "activities") if r["type"] == "sip-dialog")
        first_end = stored_end(cluster, dialog)
        # A refresh (re-INVITE answered 2xx) moves the end.
        refreshed = ua.request("INVITE", headers=[("Supported", "timer"), ("Session-Expires", "4;refresher=uac")])
        assert refreshed.status == 200 and refreshed.get("Session-Expires") == "4;refresher=uac"
        eventually(lambda: stored_end(cluster, dialog) > first_end, what="the refresh moved the session's end")
        # Then the UA goes silent: its owner ends the dialog with BYE, and the room goes.
        bye = ua.wait_request("BYE", timeout=15)
        assert bye.call_id == ua.call.call_id
        eventually(
            lambda: (
                admin.rows_for(cluster.config, "activities") == [] and admin.rows_for(cluster.config, "entities") == []
            ),
            what="the expired call's state is gone",
        )
        assert int(cluster.stats("sip-ra", "node-1").get("dialogs.expired", 0)) == 1
    finally:
        ua.close()


def test_too_short_an_interval_gets_422_with_our_min_se(short: DevCluster) -> None:
    ua = UserAgent("brief", 6942, short.balancer_addr)
    try:
        with pytest.raises(UaError) as refused:
            ua.invite("st-room", headers=[("Supported", "timer"), ("Session-Expires", "2")])
        assert refused.value.status == 422
        assert refused.value.response is not None and refused.value.response.get("Min-SE") == "3"
        assert admin.rows_for(short.config, "entities") == []  # refused before any service saw it
    finally:
        ua.close()


def test_a_call_without_session_timers_ends_at_the_idle_limit(short: DevCluster) -> None:
    ua = UserAgent("idle", 6943, short.balancer_addr)
    try:
        ok = ua.invite("idle-room")
        assert ok.get("Session-Expires") is None  # the UA supports none: none imposed
        bye = ua.wait_request("BYE", timeout=15)
        assert ua.call is not None and bye.call_id == ua.call.call_id
        eventually(lambda: admin.rows_for(short.config, "entities") == [], what="the idle call's entity is gone")
    finally:
        ua.close()
