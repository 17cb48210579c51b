"""The B2BUA survives node loss, mid-setup included: SIPp's uac calls b2b-PORT, a SIPp
callee on PORT answers at once, after ringing, or after a silence; a kill -9 of a whole
node comes after the answer, while ringing, or between our INVITE and its 200. Both
SIPps must count every call successful: the calls on the dead node go on from the
survivor (the caller's INVITE re-sent by the balancer, the callee's 200 adopted from the
replicated dialog), and both ends hang up cleanly. Nothing is left behind."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import eventually, running
from tests.integration.test_b2b import SCENARIOS, counts, leftovers, sipp, stopped
from zeroslee.devcluster import DevCluster

CALLS = 10
PHASES = {
    # phase: (the callee's SIPp arguments, how long the caller holds each call, ms)
    "after-answer": (["-sn", "uas"], 5000),
    "ringing": (["-sf", str(SCENARIOS / "b2b_slow_callee.xml"), "-d", "3000"], 1000),
    "before-200": (["-sf", str(SCENARIOS / "b2b_silent_callee.xml"), "-d", "3000"], 1000),
}


def answered(cluster: DevCluster) -> int:
    """The callers' INVITEs answered 200 so far (each RA logs its transactions)."""
    return sum(
        1
        for node in cluster.config.node_ids
        for r in cluster.log_records("sip-ra", node)
        if r.get("event") == "transaction" and r.get("method") == "INVITE" and r.get("status") == 200
    )


def entities(cluster: DevCluster) -> int:
    return len(leftovers(cluster)[1])


@pytest.fixture
def killable(tmp_path: Path) -> Iterator[DevCluster]:
    yield from running(DevCluster(tmp_path / "cluster"), check_exits=False)  # a node is killed


@pytest.mark.parametrize("node", ["node-1", "node-2"])
@pytest.mark.parametrize("phase", list(PHASES))
def test_a_b2b_call_survives_a_kill_of_either_node_at_each_phase(
    killable: DevCluster, phase: str, node: str, tmp_path: Path
) -> None:
    cluster, (callee, hold), port = killable, PHASES[phase], 6831
    host, bport = cluster.balancer_addr
    uas = sipp(tmp_path / "uas", *callee, "-m", str(CALLS), "-p", str(port), "-timeout", "90")
    uac_args = ["-sn", "uac", f"{host}:{bport}", "-s", f"b2b-{port}", "-p", str(port + 1)]
    uac = sipp(tmp_path / "uac", *uac_args, "-m", str(CALLS), "-r", "10", "-d", str(hold), "-timeout", "90")
    try:
        if phase == "after-answer":
            eventually(lambda: answered(cluster) >= CALLS, timeout=30, what="every call answered")
        else:  # every call placed, none answered yet (the callee waits 3 s)
            eventually(lambda: entities(cluster) >= CALLS, timeout=30, what="every call placed")
            assert answered(cluster) == 0
        cluster.kill_node(node)
        uac.wait(timeout=120)
        uas.wait(timeout=120)
    finally:
        stopped(uac, uas)
    assert counts(tmp_path / "uac") == (CALLS, 0), phase
    assert counts(tmp_path / "uas") == (CALLS, 0), phase
    eventually(lambda: leftovers(cluster) == ([], []), timeout=30, what="nothing left")
