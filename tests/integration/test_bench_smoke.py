"""The bench harness in smoke mode (seconds per phase), so it cannot rot.

It asserts that every figure was produced, never how fast anything was (DESIGN §9)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from tests.conftest import REPO


def test_bench_smoke_produces_every_figure(tmp_path: Path) -> None:
    out = tmp_path / "results"
    run = subprocess.run(
        [sys.executable, "-m", "bench", "--smoke", "--out", str(out)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    results = json.loads((out / "results.json").read_text())
    assert results["machine"]["cores"] and results["machine"]["cpu"]
    assert all(v != "not found" for v in results["versions"].values()), results["versions"]
    assert results["commands"], "the exact commands are recorded"

    setup = results["setup_rate"]
    for peer in ("sipp", "kamailio", "zeroslee", "zeroslee_rooms"):  # rooms: one room per call
        assert setup[peer]["best"] > 0, (peer, setup[peer]["steps"])
    for ratio in ("zeroslee/sipp", "zeroslee/kamailio", "zeroslee_rooms/sipp", "zeroslee_rooms/kamailio"):
        assert setup["ratios"][ratio] is not None

    b2b = results["b2bua"]  # the same SIPp flow through sippy's B2BUA and through zeroslee's b2b
    assert b2b["zeroslee"]["best"] > 0, b2b["zeroslee"]["steps"]
    for peer in ("sippy", "zeroslee"):  # sippy is a peer we do not own: its calls ran, clean or not
        assert all(st["successful"] > 0 and "late_180" in st for st in b2b[peer]["steps"]), b2b[peer]["steps"]
        assert all(st["cpu_ms_per_call"]["all"] > 0 for st in b2b[peer]["steps"])
    assert "ratio" in b2b and set(b2b["cpu_ms_per_call"]) == {"sippy", "zeroslee"}

    overload = results["overload"]
    assert overload["r"] > 0 and overload["bursts"]
    for burst in overload["bursts"]:
        assert burst["offered"] == burst["factor"] * overload["r"] and burst["calls"] > 0
        assert burst["successful"] > 0 and burst["setup_p50_ms"] <= burst["setup_p99_ms"]
        assert burst["recovery"]["offered"] == overload["r"]
    assert set(overload["left_after_60s"]) == {"activities", "entities"}
    assert (out / "overload.png").exists()

    assert len(results["relay"]) >= 1
    for row in results["relay"]:
        assert row["relayed"] > 0 and row["relays_per_s"] > 0
        assert row["p50_ms"] <= row["p99_ms"] <= row["max_ms"]

    for mode in ("replicated", "single", "replicated_loaded"):
        commit = results["commit"][mode]
        assert commit["refused"] == 0 and 0 < commit["p50_ms"] <= commit["p99_ms"]
    loaded = results["commit"]["replicated_loaded"]
    assert loaded["commits"] > 0 and loaded["relayed"] > 0  # measured while the chat ran

    cost = results["cost"]  # idle CPU and bus traffic; per call: CPU, bus messages, wake-ups
    assert cost["idle_cpu_percent"]["all"] > 0 and cost["idle_bus_per_second"]["messages_sent"] > 0
    assert cost["calls"] > 0 and cost["bus_per_call"]["messages_sent"] > 0 and cost["bus_per_call"]["wakeups"] > 0
    assert cost["cpu_ms_per_call"]["all"] > 0

    failover = results["failover"]
    assert failover["kills"] and all(k["gap_ms"] is not None for k in failover["kills"])
    assert isinstance(failover["lost_total"], int)

    memory = results["memory"]
    assert memory["dialogs"] > 0 and memory["bytes_per_dialog"] is not None
    assert memory["rss_plus_lmdb_per_dialog"] is not None
    assert all(memory["per_node"][node]["bytes_per_dialog"] is not None for node in ("node-1", "node-2"))

    profiles = results["profile"]["processes"]
    assert profiles and all("samples" in p for p in profiles.values()), profiles
    assert all((out / "profile" / f"{name}.txt").exists() for name in profiles)

    table = (out / "results.md").read_text()
    for figure in ("call setups/s", "chat relay", "commit p50", "failover gap", "bytes per confirmed dialog"):
        assert figure in table
    for png in ("setup_rate.png", "relay_latency.png"):
        assert (out / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
