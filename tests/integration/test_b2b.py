"""The B2BUA service (router/b2b.py) between real peers: SIPp's uac and uas, SIPp
scenarios for a callee that rings and for one that hangs up, and our own UAs for INFO
and re-INVITE. Nothing is left behind once the calls are over."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import eventually, need_sipp, sipp_stats
from zeroslee.devcluster import DevCluster
from zeroslee.ua import UaError, UserAgent

SCENARIOS = Path(__file__).resolve().parents[1] / "sipp"


def leftovers(cluster: DevCluster) -> tuple[list[object], list[object]]:
    def listed(what: str) -> list[object]:
        argv = [sys.executable, "-m", "zeroslee.admin", "--config", str(cluster.config_path), "--json", what]
        return json.loads(subprocess.run(argv, capture_output=True, text=True, timeout=60, check=True).stdout)  # type: ignore[no-any-return]

    return listed("activities"), listed("entities")


def sipp(cwd: Path, *args: str) -> subprocess.Popen[bytes]:
    cwd.mkdir(parents=True, exist_ok=True)
    argv = [need_sipp(), *args, "-i", "127.0.0.1", "-nostdin", "-trace_stat", "-fd", "1", "-trace_err"]
    return subprocess.Popen(argv, cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def counts(cwd: Path) -> tuple[int, int]:
    stats = sipp_stats(cwd)
    return int(stats["SuccessfulCall(C)"]), int(stats["FailedCall(C)"])


def stopped(*procs: subprocess.Popen[bytes]) -> None:
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=10)


def bridged(cluster: DevCluster, tmp_path: Path, uas_args: list[str], uac_args: list[str], port: int) -> None:
    """SIPp uac -> the cluster (b2b-PORT) -> SIPp uas on PORT; both must count every call."""
    host, bport = cluster.balancer_addr
    uas = sipp(tmp_path / "uas", *uas_args, "-p", str(port), "-timeout", "60")
    uac = sipp(tmp_path / "uac", *uac_args, f"{host}:{bport}", "-s", f"b2b-{port}", "-p", str(port + 1))
    try:
        uac.wait(timeout=90)
    finally:
        stopped(uac)
    try:
        eventually(lambda: counts(tmp_path / "uas")[0] + counts(tmp_path / "uas")[1] >= counts(tmp_path / "uac")[0])
    finally:
        stopped(uas)


def test_sipp_calls_are_bridged_and_both_ends_count_every_call(cluster: DevCluster, tmp_path: Path) -> None:
    calls = ["-m", "60", "-r", "20", "-d", "500", "-timeout", "60"]
    bridged(cluster, tmp_path, ["-sn", "uas", "-m", "60"], ["-sn", "uac", *calls], 6811)
    assert counts(tmp_path / "uac") == (60, 0)
    assert counts(tmp_path / "uas") == (60, 0)
    eventually(lambda: leftovers(cluster) == ([], []), timeout=15, what="nothing left")


def test_the_callee_hangs_up_and_the_caller_gets_the_bye(cluster: DevCluster, tmp_path: Path) -> None:
    callee = ["-sf", str(SCENARIOS / "b2b_callee_hangs_up.xml"), "-m", "5"]
    # SIPp's uac waits (-d) longer than the callee does before hanging up: it gets the BYE.
    caller = ["-sf", str(SCENARIOS / "b2b_caller_gets_bye.xml"), "-m", "5", "-r", "5", "-timeout", "60"]
    bridged(cluster, tmp_path, callee, caller, 6813)
    assert counts(tmp_path / "uac") == (5, 0)
    assert counts(tmp_path / "uas") == (5, 0)
    eventually(lambda: leftovers(cluster) == ([], []), timeout=15, what="nothing left")


def test_cancel_while_ringing_cancels_the_callee(cluster: DevCluster, tmp_path: Path) -> None:
    callee = ["-sf", str(SCENARIOS / "b2b_ringing_uas.xml"), "-m", "5"]
    caller = ["-sf", str(SCENARIOS / "chat_cancel.xml"), "-m", "5", "-r", "5", "-timeout", "60"]
    bridged(cluster, tmp_path, callee, caller, 6815)
    assert counts(tmp_path / "uac") == (5, 0)
    assert counts(tmp_path / "uas") == (5, 0)  # each got its CANCEL, answered 487, got its ACK
    eventually(lambda: leftovers(cluster) == ([], []), timeout=15, what="nothing left")


class Callee:
    """Our UA as the B leg's callee, answering everything 200 from a thread of its own."""

    def __init__(self, port: int, cluster: DevCluster) -> None:
        self.ua = UserAgent("callee", port, cluster.balancer_addr)
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.run, daemon=True)
        self.thread.start()

    def run(self) -> None:
        while not self.stop.is_set():
            self.ua.pump(0.05)

    def close(self) -> None:
        self.stop.set()
        self.thread.join(timeout=10)
        self.ua.close()

    def methods(self) -> list[str]:
        return [m.method for m in list(self.ua.history)]


@pytest.fixture
def callee(cluster: DevCluster) -> Iterator[Callee]:
    c = Callee(6817, cluster)
    yield c
    c.close()


def test_info_and_reinvite_are_relayed_both_answers_come_back(
    cluster: DevCluster, callee: Callee, tmp_path: Path
) -> None:
    caller = UserAgent("caller", 6818, cluster.balancer_addr)
    offer = b"v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\nm=audio 4000 RTP/AVP 0\r\n"
    try:
        answer = caller.invite("b2b-6817", sdp=offer)
        assert answer.status == 200
        eventually(lambda: "INVITE" in callee.methods(), what="the callee called")
        (invite,) = [m for m in callee.ua.history if m.method == "INVITE"]
        assert invite.body == offer and invite.get("Content-Type") == "application/sdp"  # the offer went on
        assert caller.request("INFO", b"hello callee").status == 200
        infos = [m for m in callee.ua.history if m.method == "INFO"]
        assert [m.body for m in infos] == [b"hello callee"]
        assert caller.request("INVITE", offer, content_type="application/sdp").status == 200  # re-INVITE
        assert callee.methods().count("INVITE") == 2
        assert caller.request("BYE").status == 200
        eventually(lambda: "BYE" in callee.methods(), what="the BYE passed on")
    finally:
        caller.close()
    eventually(lambda: leftovers(cluster) == ([], []), timeout=15, what="nothing left")


def test_no_open_relay_a_target_outside_the_range_gets_404(cluster: DevCluster) -> None:
    caller = UserAgent("relay", 6819, cluster.balancer_addr)
    try:
        for user in ("b2b-5060", "b2b-7000", "b2b-x"):
            with pytest.raises(UaError) as refused:
                caller.invite(user)
            assert refused.value.status == 404
            assert refused.value.response is not None and "no b2b target" in (
                refused.value.response.get("Warning") or ""
            )
    finally:
        caller.close()
    eventually(lambda: leftovers(cluster) == ([], []), timeout=15, what="nothing left")
