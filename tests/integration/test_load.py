"""SIPp's built-in uac against `make cluster`: every call joins the room "service".

Counts are asserted, never times or rates: the load here stays far below a 2-core
machine's capacity (about 300 calls/s), so a red run means broken behaviour, not a slow
machine. The bench measures speed and capacity (DESIGN §9)."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from tests.conftest import need_sipp, sipp_stats
from zeroslee.devcluster import DevCluster


def uac(cwd: Path, calls: int, rate: int, *extra: str) -> dict[str, str]:
    argv = [
        need_sipp(),
        "-sn",
        "uac",
        "127.0.0.1:5060",
        "-p",
        "6010",
        "-m",
        str(calls),
        "-r",
        str(rate),
        "-l",
        str(rate * 5),
        "-timeout",
        str(calls // rate + 120),
        "-timeout_error",
        "-nostdin",
        "-trace_stat",
        "-fd",
        "5",
        "-trace_err",
        *extra,
    ]
    run = subprocess.run(argv, cwd=cwd, capture_output=True, timeout=calls // rate + 180)
    stats = sipp_stats(cwd)
    assert run.returncode == 0, (stats, run.stderr[-2000:])
    return stats


def test_uac_200_calls_with_zero_failures(make_cluster: DevCluster, tmp_path: Path) -> None:
    stats = uac(tmp_path, 200, 50)
    assert (int(stats["SuccessfulCall(C)"]), int(stats["FailedCall(C)"])) == (200, 0)


def test_uac_1500_calls_at_50_per_second_all_complete(make_cluster: DevCluster, tmp_path: Path) -> None:
    stats = uac(tmp_path, 1_500, 50)
    assert int(stats["SuccessfulCall(C)"]) == 1_500
    assert int(stats["FailedCall(C)"]) == 0
    assert int(stats["FailedUnexpectedMessage(C)"]) == 0


@pytest.mark.parametrize("calls", [1000])
def test_uac_with_10_percent_loss_completes_every_call_by_retransmission(
    make_cluster: DevCluster, tmp_path: Path, calls: int
) -> None:
    stats = uac(tmp_path, calls, 50, "-lost", "10")
    assert int(stats["SuccessfulCall(C)"]) == calls
    assert int(stats["FailedCall(C)"]) == 0
    assert int(stats["FailedUnexpectedMessage(C)"]) == 0
    assert int(stats["Retransmissions(C)"]) > 0  # the loss really happened and was repaired
