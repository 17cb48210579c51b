"""Service lifecycle live, cluster-wide (`zeroslee-admin service`), under SIPp load:
upgrades (a State that evolves, then a new schema) and a deactivation and activation,
with 0 failed calls; an upgrade that breaks the State evolution rules is refused."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

import pytest

from tests.conftest import call_id_on, eventually, need_sipp, running, sipp_stats
from zeroslee import admin, keys
from zeroslee.devcluster import DevCluster
from zeroslee.ua import UaError, UserAgent

COUNTER = """
[[services]]
name = "counter"
sbb = "tests.ra.versions:StartedCounterSbb"
options = { users = "^count-" }
"""


@pytest.fixture
def counting(tmp_path: Path) -> Iterator[DevCluster]:
    yield from running(DevCluster(tmp_path / "cluster", extra=COUNTER))


def run_admin(cluster: DevCluster, *args: str) -> subprocess.CompletedProcess[str]:
    argv = [sys.executable, "-m", "zeroslee.admin", "--config", str(cluster.config_path), "--json", *args]
    return subprocess.run(argv, capture_output=True, text=True, timeout=60)


def service_row(cluster: DevCluster, name: str) -> dict[str, object]:
    done = run_admin(cluster, "services")
    assert done.returncode == 0, done.stderr
    (row,) = [r for r in json.loads(done.stdout) if r["name"] == name]
    return row  # type: ignore[no-any-return]


def stored_state(cluster: DevCluster, name: str) -> str:
    found = [raw for key, _, raw in admin.query(cluster.config, keys.SERVICES) if key == keys.SERVICES]
    return str(admin.decode_record(found[0])["services"][name]["state"]) if found else "active"


@contextmanager
def sipp(
    cluster: DevCluster, cwd: Path, user: str, calls: int, rate: int, port: int
) -> Iterator[subprocess.Popen[bytes]]:
    """SIPp's built-in uac calling sip:USER@balancer, each call held 2 s, bounded; stopped
    by its PID if the test ends before it does."""
    cwd.mkdir(parents=True, exist_ok=True)
    host, bport = cluster.balancer_addr
    argv = [need_sipp(), "-sn", "uac", f"{host}:{bport}", "-s", user, "-i", "127.0.0.1", "-p", str(port)]
    argv += ["-r", str(rate), "-m", str(calls), "-d", "2000", "-l", str(rate * 5), "-timeout", "90"]
    argv += ["-recv_timeout", "10000", "-nostdin", "-trace_stat", "-fd", "1"]
    with open(cwd / "sipp.err", "wb") as err:
        proc = subprocess.Popen(argv, cwd=cwd, stdout=subprocess.DEVNULL, stderr=err)
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)


def finished(proc: subprocess.Popen[bytes], cwd: Path) -> dict[str, int]:
    proc.wait(timeout=120)
    stats = sipp_stats(cwd)
    return {k: int(stats[k]) for k in ("SuccessfulCall(C)", "FailedCall(C)")}


def info(ua: UserAgent) -> str:
    response = ua.request("INFO", b"tick")
    assert response.status == 200
    return response.body.decode()


def test_upgrades_under_load_fail_no_call(counting: DevCluster, tmp_path: Path) -> None:
    cluster = counting
    nodes = cluster.config.node_ids
    stack = ExitStack()
    load = stack.enter_context(sipp(cluster, tmp_path / "sipp", "count-load", calls=300, rate=30, port=6031))
    early = UserAgent("early", 6251, cluster.balancer_addr)
    late = UserAgent("late", 6252, cluster.balancer_addr)
    newest = UserAgent("newest", 6253, cluster.balancer_addr)
    try:
        assert early.invite("count-a", call_id_on("node-1", nodes, "early")).status == 200
        assert info(early) == "v1 1"

        # A State that evolves: the running entities move to the new code, counts kept.
        done = run_admin(cluster, "service", "upgrade", "counter", "--sbb", "tests.ra.versions_v2:CounterSbb2")
        assert done.returncode == 0, done.stderr
        (said,) = json.loads(done.stdout)
        assert "moved to the new code" in said["result"] and said["checked_on"] == "node-1, node-2"
        assert load.poll() is None  # the load was running throughout
        assert info(early) == "v2 2"
        assert late.invite("count-b", call_id_on("node-2", nodes, "late")).status == 200
        assert info(late) == "v2 1"

        # One that breaks the rules is refused, naming them; nothing changes.
        bad = run_admin(cluster, "service", "upgrade", "counter", "--sbb", "tests.ra.versions_bad:CounterSbbBad")
        assert bad.returncode != 0
        assert "Count.owner: a field added needs a default" in bad.stderr and "Count.n: its type changed" in bad.stderr
        missing = run_admin(cluster, "service", "upgrade", "counter", "--sbb", "tests.ra.nowhere:Sbb")
        assert missing.returncode != 0 and "cannot load tests.ra.nowhere:Sbb" in missing.stderr
        assert info(early) == "v2 3"

        # A new schema: calls in progress finish on the code they run, new calls get the new.
        done = run_admin(cluster, "service", "upgrade", "counter", "--sbb", "tests.ra.versions_v3:CounterSbb3")
        assert done.returncode == 0, done.stderr
        assert "generation 1" in json.loads(done.stdout)[0]["result"]
        assert load.poll() is None
        assert info(early) == "v2 4" and info(late) == "v2 2"
        assert newest.invite("count-c", call_id_on("node-1", nodes, "newest")).status == 200
        assert info(newest) == "v3 1"
        row = service_row(cluster, "counter")
        assert (row["sbb"], row["release"], row["generation"]) == ("tests.ra.versions_v3:CounterSbb3", 2, 1)
        for ua in (early, late, newest):
            assert ua.request("BYE").status == 200
        stats = finished(load, tmp_path / "sipp")
    finally:
        for ua in (early, late, newest):
            ua.close()
        stack.close()
    assert stats == {"SuccessfulCall(C)": 300, "FailedCall(C)": 0}
    # Once the old generation's last call is over, only the new code is left running.
    eventually(
        lambda: service_row(cluster, "counter")["running"] == "1: tests.ra.versions_v3:CounterSbb3 (0)",
        timeout=15,
        what="generation 0 forgotten",
    )


def test_deactivate_and_activate_live_fail_no_call(counting: DevCluster, tmp_path: Path) -> None:
    cluster = counting
    nodes = cluster.config.node_ids
    stack = ExitStack()
    chat_load = stack.enter_context(sipp(cluster, tmp_path / "chat", "service", calls=200, rate=25, port=6032))
    talking = UserAgent("talking", 6254, cluster.balancer_addr)
    refused = UserAgent("refused", 6255, cluster.balancer_addr)
    try:
        assert talking.invite("count-x", call_id_on("node-2", nodes, "talking")).status == 200
        done = run_admin(cluster, "service", "deactivate", "counter")
        assert done.returncode == 0, done.stderr
        assert chat_load.poll() is None  # under load
        # The call in progress goes on; a new one is not the service's to take any more.
        assert info(talking) == "v1 1"
        with pytest.raises(UaError) as no:
            refused.invite("count-y", call_id_on("node-1", nodes, "refused"))
        assert no.value.status == 480
        row = service_row(cluster, "counter")
        assert (row["state"], row["root_entities"]) == ("stopping", 1)
        assert talking.request("BYE").status == 200
        # Its last call over, the service is inactive: a router's sweep records it.
        eventually(lambda: stored_state(cluster, "counter") == "inactive", timeout=15, what="inactive")
        assert service_row(cluster, "counter")["state"] == "inactive"

        def started() -> list[dict[str, object]]:
            return [
                r
                for node in nodes
                for r in cluster.log_records("router", node)
                if r.get("event") == "trace" and r.get("message") == "service started"
            ]

        before = len(started())  # 1 if the cluster's first start came before our deactivation
        done = run_admin(cluster, "service", "activate", "counter")
        assert done.returncode == 0, done.stderr
        assert json.loads(done.stdout)[0]["result"] == "activated"
        again = run_admin(cluster, "service", "activate", "counter")
        assert json.loads(again.stdout)[0]["result"] == "already active"

        eventually(lambda: len(started()) == before + 1, what="ServiceStartedEvent delivered")
        assert started()[-1]["service"] == "counter"
        assert refused.invite("count-y", call_id_on("node-1", nodes, "refused2")).status == 200
        assert info(refused) == "v1 1"
        assert refused.request("BYE").status == 200
        assert chat_load.poll() is None
        unknown = run_admin(cluster, "service", "deactivate", "nosuch")
        assert unknown.returncode != 0 and "no service 'nosuch'" in unknown.stderr
        assert finished(chat_load, tmp_path / "chat") == {"SuccessfulCall(C)": 200, "FailedCall(C)": 0}
    finally:
        talking.close()
        refused.close()
        stack.close()
    # The service's activity is the system's: not listed unless asked for.
    listed = run_admin(cluster, "activities")
    assert all(r["type"] != "service" for r in json.loads(listed.stdout))
    every = run_admin(cluster, "activities", "--all")
    assert any(r["id"] == keys.service_activity("counter") for r in json.loads(every.stdout))
