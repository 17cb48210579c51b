"""An independent SIP implementation (SIPp) drives the cluster."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

from tests.conftest import REPO, call_id_on, eventually, need_sipp
from zeroslee import admin
from zeroslee.devcluster import DevCluster

SCENARIOS = REPO / "tests" / "sipp"


def sipp(args: list[str], cwd: Path) -> subprocess.Popen[bytes]:
    """Start SIPp in `cwd`; its screen and error traces land there as files."""
    return subprocess.Popen(
        [need_sipp(), *args, "-nostdin", "-trace_stat", "-trace_err", "-trace_screen"],
        cwd=cwd,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def traces(cwd: Path) -> str:
    return "\n".join(p.read_text(errors="replace")[-1500:] for p in cwd.glob("*_errors.log"))


def wait_attached(
    cluster: DevCluster, room: str, count: int, proc: subprocess.Popen[bytes], timeout: float = 15
) -> None:
    """Until `room` has `count` participants (state read from the cluster, not a sleep)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, "SIPp ended before joining"
        names = {r["name"]: r["activity"] for r in admin.rows_for(cluster.config, "names")}
        if room in names:
            acts = {r["id"]: r for r in admin.rows_for(cluster.config, "activities")}
            if len(acts[names[room]]["attachments"]) >= count:
                return
        time.sleep(0.05)
    raise AssertionError(f"{room} never had {count} participants")


def test_seed_scenario_with_two_sipp_participants(cluster: DevCluster, tmp_path: Path) -> None:
    host, port = cluster.balancer_addr
    nodes = cluster.config.node_ids
    target = f"{host}:{port}"
    receiver = sipp(
        [
            "-sf",
            str(SCENARIOS / "chat_uac.xml"),
            "-s",
            "sipp-room",
            "-cid_str",
            call_id_on("node-1", nodes, "r"),
            "-p",
            "6301",
            "-m",
            "1",
            "-timeout",
            "40",
            "-timeout_error",
            target,
        ],
        tmp_path,
    )
    try:
        wait_attached(cluster, "sipp-room", 1, receiver)
        sender = sipp(
            [
                "-sf",
                str(SCENARIOS / "chat_sender.xml"),
                "-s",
                "sipp-room",
                "-cid_str",
                call_id_on("node-2", nodes, "s"),
                "-p",
                "6302",
                "-m",
                "1",
                "-timeout",
                "30",
                "-timeout_error",
                target,
            ],
            tmp_path,
        )
        assert sender.wait(timeout=40) == 0, traces(tmp_path)
        assert receiver.wait(timeout=40) == 0, traces(tmp_path)
    finally:
        for proc in (receiver,):
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    assert admin.rows_for(cluster.config, "names") == []


def test_cancel_of_a_ringing_call_with_sipp(cluster: DevCluster, tmp_path: Path) -> None:
    host, port = cluster.balancer_addr
    run = sipp(
        [
            "-sf",
            str(SCENARIOS / "chat_cancel.xml"),
            "-s",
            "ring-room",
            "-p",
            "6303",
            "-m",
            "3",
            "-r",
            "10",
            "-timeout",
            "30",
            "-timeout_error",
            f"{host}:{port}",
        ],
        tmp_path,
    )
    assert run.wait(timeout=40) == 0, traces(tmp_path)
    # The cancelled participants left: no room, no dialog, no timer is left behind (the
    # CANCEL reaches the services after the RA answered it, hence the wait).
    eventually(lambda: admin.query(cluster.config, "") == [], what="the store emptied")
