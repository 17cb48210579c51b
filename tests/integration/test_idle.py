"""Idle costs what it must and no more: wake-ups counted from every process's /metrics
on an idle cluster (counts, which travel between machines; never a time)."""

from __future__ import annotations

import time

from tests.integration.test_observability import Samples, scrape_all
from zeroslee.devcluster import DevCluster


def wakeups(samples: Samples) -> float:
    return sum(v for (name, _), v in samples.items() if name == "zeroslee_bus_wakeups_total")


def test_idle_routers_and_ras_read_the_heartbeats_in_batches(cluster: DevCluster) -> None:
    # Each node beats 10 times a second. A router or an RA judges liveness only for
    # adoption, over a second, so it reads the beats every third interval
    # (runtime.follow_heartbeats `every`) instead of waking for each beat of each node.
    # Idle, per process: routers 22 bus wake-ups/s before, 8.7 after; RAs 28 and 14.6
    # (the RA's own readiness pings and store reads are the rest). A count, not a time.
    before, start = scrape_all(cluster), time.monotonic()
    time.sleep(5.0)  # the measurement window: an idle cluster, nothing to wait for
    after, elapsed = scrape_all(cluster), time.monotonic() - start
    for node in cluster.config.node_ids:
        router = (wakeups(after[f"{node}/router"]) - wakeups(before[f"{node}/router"])) / elapsed
        ra = (wakeups(after[f"{node}/sip-ra"]) - wakeups(before[f"{node}/sip-ra"])) / elapsed
        assert router < 15, (node, router)
        assert ra < 21, (node, ra)
