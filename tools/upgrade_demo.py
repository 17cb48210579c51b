"""`make upgrade-demo`: a rolling upgrade of a local cluster under load, with the counts.

Starts a balancer, a witness and two nodes (DevCluster, ports from 5700), makes a copy of
this checkout as the "new code" (a bumped version, one field added to a bus message and
one to a stored record), and while SIPp's uac places calls into the chat (20/s, each
held 1 s) and two participants relay INFOs to each other (20/s), upgrades node-1,
node-2, the witness and the balancer in turn (zeroslee.upgrade). Prints each step, then
the calls placed and failed and the INFOs sent, lost and duplicated; exits 1 if any call
failed or any INFO was lost or duplicated. Stops every process it started, by PID.
"""

from __future__ import annotations

import json
import sys
import tempfile
import time
from pathlib import Path

from zeroslee import admin, upgrade
from zeroslee.devcluster import DevCluster

REPO = Path(__file__).resolve().parents[1]
NEW = "0.1.1+demo"


def say(text: str) -> None:
    print(f"  {time.strftime('%H:%M:%S')}  {text}", flush=True)


def main() -> int:
    work = Path(tempfile.mkdtemp(prefix="zeroslee-upgrade-"))
    cluster = DevCluster(work / "cluster", base=5700)
    cluster.start_all()
    sipp = None
    try:
        cluster.wait_ready()
        say(f"cluster up (logs in {cluster.logdir}); new code in {work / 'new'}, version {NEW}")
        tree = upgrade.new_tree(REPO, work / "new", NEW)
        relay = upgrade.RelayLoad(cluster, (6281, 6282))
        relay.start()
        sipp = upgrade.sipp_uac(cluster, work / "sipp", calls=20 * 600, rate=20, port=6035)
        say("load: SIPp uac 20 calls/s into the chat, and 20 INFOs/s relayed between node-1 and node-2")
        measured = upgrade.rolling_upgrade(cluster, tree, NEW, say)
        for row in admin.node_rows(cluster.config):
            say(f"{row['node']}: live {row['live']}, drained {row['drained']}, version {row['version']}")
        calls = upgrade.sipp_finish(sipp, work / "sipp")
        infos = relay.stop()
        counts = {**calls, **infos, "procedure_s": round(measured["seconds"], 1)}
        counts["balancer_gap_ms"] = round(measured["balancer_gap_s"] * 1000)
        print(json.dumps(counts, indent=2))
        clean = calls["calls_failed"] == 0 and infos["infos_lost"] == infos["infos_duplicated"] == 0
        print("rolling upgrade: " + ("0 failed calls, 0 lost or duplicated INFOs" if clean else "NOT clean"))
        return 0 if clean else 1
    finally:
        if sipp is not None and sipp.poll() is None:
            sipp.kill()
            sipp.wait(timeout=10)
        cluster.stop()


if __name__ == "__main__":
    sys.exit(main())
