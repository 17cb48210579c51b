"""An independent SIP implementation (SIPp) drives the cluster."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from tests.conftest import REPO, call_id_on, need_sipp
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
    # The cancelled participants left: no room, no dialog, no timer is left behind.
    assert admin.rows_for(cluster.config, "activities") == []
    assert admin.query(cluster.config, "") == []


def test_make_cluster_takes_200_sipp_uac_calls_without_failure(tmp_path: Path) -> None:
    """`make cluster`'s launcher (honcho per node) on the default ports, SIPp's own uac."""
    env = {**os.environ, "ZEROSLEE_CONFIG": str(tmp_path / "cluster.toml")}
    config_text = (
        (REPO / "config" / "cluster.toml").read_text().replace('data_root = "var"', f'data_root = "{tmp_path}/var"')
    )
    (tmp_path / "cluster.toml").write_text(config_text)
    with (tmp_path / "cluster.log").open("wb") as log:
        launcher = subprocess.Popen(
            [sys.executable, str(REPO / "tools" / "cluster.py")],
            cwd=REPO,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        DevCluster.running(tmp_path / "cluster.toml", tmp_path).wait_ready(timeout=30)
        run = subprocess.run(
            [
                need_sipp(),
                "-sn",
                "uac",
                "127.0.0.1:5060",
                "-p",
                "6310",
                "-m",
                "200",
                "-r",
                "50",
                "-l",
                "100",
                "-timeout",
                "60",
                "-timeout_error",
                "-nostdin",
                "-trace_stat",
                "-trace_err",
            ],
            cwd=tmp_path,
            capture_output=True,
            timeout=120,
        )
        stats = next(tmp_path.glob("uac_*_.csv")).read_text().splitlines()
        row = dict(zip(stats[0].split(";"), stats[-1].split(";")))
        assert run.returncode == 0, run.stderr[-2000:]
        assert int(row["SuccessfulCall(C)"]) == 200
        assert int(row["FailedCall(C)"]) == 0
    finally:
        os.kill(launcher.pid, signal.SIGTERM)
        assert launcher.wait(timeout=30) == 0
