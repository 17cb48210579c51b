"""A rolling upgrade under load (README, Rolling upgrade): node-1, node-2, the witness
and the balancer restarted in turn on new code (a bumped version, a field added to a bus
message and one to a stored record), while SIPp calls and the chat relays INFOs:
0 failed calls, 0 lost or duplicated INFOs, mixed versions working together throughout."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import need_sipp, running
from zeroslee import admin, upgrade
from zeroslee.devcluster import DevCluster

REPO = Path(__file__).resolve().parents[2]
NEW = "0.1.1+upgrade-test"


@pytest.fixture
def upgradable(tmp_path: Path) -> Iterator[DevCluster]:
    yield from running(DevCluster(tmp_path / "cluster"))


def test_rolling_upgrade_under_load_fails_no_call_and_loses_no_info(upgradable: DevCluster, tmp_path: Path) -> None:
    cluster = upgradable
    need_sipp()
    tree = upgrade.new_tree(REPO, tmp_path / "new", NEW)
    relay = upgrade.RelayLoad(cluster, (6271, 6272))
    relay.start()
    sipp = upgrade.sipp_uac(cluster, tmp_path / "sipp", calls=6_000, rate=20, port=6034)
    steps: list[str] = []
    try:
        measured = upgrade.rolling_upgrade(cluster, tree, NEW, steps.append)
        assert sipp.poll() is None  # the load ran across the whole procedure
        assert [r["version"] for r in admin.node_rows(cluster.config)] == [NEW, NEW]
        calls = upgrade.sipp_finish(sipp, tmp_path / "sipp")
        infos = relay.stop()
    finally:
        if sipp.poll() is None:
            sipp.kill()
            sipp.wait(timeout=10)
    assert calls["calls_failed"] == 0 and calls["calls_ok"] > 100, (calls, steps, measured)
    assert infos["infos_lost"] == infos["infos_duplicated"] == infos["errors"] == 0, (infos, relay.errors, steps)
    assert infos["infos_sent"] > 50
    # Every process runs the new code.
    for node in cluster.config.node_ids:
        for service in ("statestore", "router", "sip-ra"):
            versions = [r.get("version") for r in cluster.log_records(service, node) if r.get("event") == "started"]
            assert versions[-1] == NEW, (node, service, versions)
    for service in ("balancer", "witness"):
        versions = [r.get("version") for r in cluster.log_records(service) if r.get("event") == "started"]
        assert versions[-1] == NEW, (service, versions)
