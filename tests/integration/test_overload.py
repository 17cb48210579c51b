"""Overload control: a node with too many requests awaiting its router refuses new calls
(and, past a higher limit, new requests within calls) with 503 and Retry-After before
they cost anything, and stays healthy.

A limit of 0 puts every node permanently "at its limit": deterministic, where a real
burst's effect would depend on this machine's speed (the bench measures that)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from tests.conftest import call_id_on
from zeroslee import admin
from zeroslee.devcluster import DevCluster
from zeroslee.ua import UaError, UserAgent


@contextmanager
def limited(tmp_path: Path, port: int, **limits: int) -> Iterator[tuple[DevCluster, UserAgent]]:
    cluster = DevCluster(tmp_path, **limits)
    cluster.start_all()
    ua = UserAgent("caller", port, cluster.balancer_addr)
    try:
        cluster.wait_ready()
        yield cluster, ua
    finally:
        ua.close()
        cluster.stop()


def test_a_node_at_its_in_flight_limit_answers_new_calls_503_with_retry_after(tmp_path: Path) -> None:
    with limited(tmp_path, 6931, max_in_flight=0) as (cluster, ua):
        with pytest.raises(UaError) as refused:
            ua.invite("room-9", call_id_on("node-1", cluster.config.node_ids, "shed"))
        assert refused.value.status == 503
        assert refused.value.response is not None
        assert refused.value.response.get("Retry-After") == "1"
        assert admin.query(cluster.config, "") == []  # nothing was replicated for it
        assert cluster.stats("sip-ra", "node-1").get("overload.rejected") == 1
        cluster.wait_ready()  # both nodes still report ready: refusing is not failing


def test_a_node_at_its_in_dialog_limit_answers_info_503_but_still_ends_calls(tmp_path: Path) -> None:
    with limited(tmp_path, 6932, max_in_flight_in_dialog=0) as (cluster, ua):
        ua.invite("room-10", call_id_on("node-1", cluster.config.node_ids, "busy"))  # new calls: not limited
        refused = ua.request("INFO", b"hello")
        assert refused.status == 503 and refused.get("Retry-After") == "1"
        assert cluster.stats("sip-ra", "node-1").get("overload.rejected_in_dialog") == 1
        assert ua.request("BYE").status == 200  # ending a call is never refused for load
