"""Seeing the cluster like a carrier: /metrics scraped during the seed's chat relay, HEP
copies read by sngrep (its HEP listener) and the capture it writes read by tshark, and
`zeroslee-admin trace` of the relayed call showing both nodes."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import REPO, call_id_on, running
from zeroslee import admin
from zeroslee.devcluster import DevCluster
from zeroslee.ua import UserAgent

HEP_PORT = 6950  # the test clients' range: sngrep listens here
Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def scrape(url: str) -> Samples:
    with urllib.request.urlopen(url, timeout=5) as response:
        text = response.read().decode()
    out: Samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return out


def value(samples: Samples, name: str, /, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


def scrape_all(cluster: DevCluster) -> dict[str, Samples]:
    """Every process's samples, by `service` or `node/service`."""
    out = {}
    for service, node, hostport in cluster.config.metrics_endpoints():
        out[f"{node}/{service}" if node else service] = scrape(f"http://{hostport}/metrics")
    return out


def udp_listening(port: int) -> bool:
    """Whether a UDP socket is bound to `port` (the kernel's table: no probe sent)."""
    for table in ("/proc/net/udp", "/proc/net/udp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            if line.split()[1].endswith(f":{port:04X}"):
                return True
    return False


def wait_for(condition: object, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if callable(condition) and condition():
            return
        time.sleep(0.05)  # polling a condition, bounded by `timeout`
    raise AssertionError(f"timed out waiting for {what}")


def tshark_rows(pcap: Path) -> list[list[str]]:
    fields = ["ip.src", "udp.srcport", "ip.dst", "udp.dstport", "sip.Call-ID", "sip.CSeq.method", "sip.Status-Code"]
    argv = ["tshark", "-r", str(pcap), "-T", "fields", *(a for f in fields for a in ("-e", f))]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=30)
    return [line.split("\t") for line in done.stdout.splitlines() if line.strip()]


@dataclass
class Relay:
    cluster: DevCluster
    before: dict[str, Samples]
    after: dict[str, Samples]
    call1: str  # UA-1's Call-ID: its dialog is on node-1, its relayed INFO leaves node-2
    call2: str
    pcap: Path
    copies: int  # HEP copies the cluster says it sent


@pytest.fixture(scope="module")
def relay(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Relay]:
    tmp = tmp_path_factory.mktemp("observability")
    pcap = tmp / "hep.pcap"
    with (tmp / "sngrep.log").open("wb") as log:
        sngrep = subprocess.Popen(
            ["sngrep", "-N", "-q", "-L", f"udp:127.0.0.1:{HEP_PORT}", "-O", str(pcap)],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    try:
        wait_for(lambda: udp_listening(HEP_PORT), 10, "sngrep's HEP listener")
        cluster = DevCluster(tmp, extra=f'[capture]\nhep = "127.0.0.1:{HEP_PORT}"\nagent_id = 2001\n')
        for c in running(cluster):
            before = scrape_all(c)
            nodes = c.config.node_ids
            ua1 = UserAgent("ua1", 6211, c.balancer_addr)
            ua2 = UserAgent("ua2", 6212, c.balancer_addr)
            try:
                assert ua1.invite("room-obs", call_id_on("node-1", nodes, "obs1")).status == 200
                assert ua2.invite("room-obs", call_id_on("node-2", nodes, "obs2")).status == 200
                assert ua2.request("INFO", b"hello").status == 200
                assert ua1.wait_request("INFO").body == b"hello"
                assert ua1.request("BYE").status == 200
                assert ua2.request("BYE").status == 200
                call1, call2 = ua1.call.call_id, ua2.call.call_id  # type: ignore[union-attr]
            finally:
                ua1.close()
                ua2.close()
            after = scrape_all(c)
            copies = int(sum(value(s, "zeroslee_hep_copies_total") for s in after.values()))
            # Everything the cluster mirrored has reached sngrep's capture file.
            wait_for(lambda n=copies: len(tshark_rows(pcap)) >= n, 20, f"{copies} HEP copies in sngrep's capture")
            yield Relay(c, before, after, call1, call2, pcap, copies)
    finally:
        sngrep.send_signal(signal.SIGTERM)
        try:
            sngrep.wait(timeout=10)
        except subprocess.TimeoutExpired:
            sngrep.kill()
            sngrep.wait()


def grew(relay: Relay, process: str, name: str, /, **labels: str) -> float:
    return value(relay.after[process], name, **labels) - value(relay.before[process], name, **labels)


def test_every_process_serves_metrics_and_admin_lists_them(relay: Relay) -> None:
    urls = admin.metrics_urls(relay.cluster.config)
    assert len(urls) == 8 == len(relay.after)
    for process, samples in relay.after.items():
        assert value(samples, "zeroslee_metrics_snapshot_ok") == 1, process
        assert value(samples, "process_cpu_seconds_total") > 0, process
        assert value(samples, "zeroslee_loop_lag_seconds_count") > 0, process
    printed = subprocess.run(
        [sys.executable, "-m", "zeroslee.admin", "--config", str(relay.cluster.config_path), "metrics"],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    ).stdout
    assert printed.splitlines() == urls
    assert all(re.fullmatch(r"http://127\.0\.0\.1:\d+/metrics", url) for url in urls)


def test_the_counters_move_during_a_chat_relay(relay: Relay) -> None:
    # The balancer counts what the UAs sent (loopback: no retransmission expected here,
    # but a slow CI machine may retransmit, so the bound allows a few).
    for method, calls in (("INVITE", 2), ("ACK", 2), ("INFO", 1), ("BYE", 2)):
        assert calls <= grew(relay, "balancer", "zeroslee_sip_requests_total", method=method) <= calls + 3, method
    # ... and what it sent them: 100 Trying for each INVITE; 200s for INVITE, INFO, BYE.
    assert grew(relay, "balancer", "zeroslee_sip_responses_total", status_class="1xx") >= 2
    assert grew(relay, "balancer", "zeroslee_sip_responses_total", status_class="2xx") >= 5
    assert grew(relay, "balancer", "zeroslee_setup_seconds_count") == 2
    assert grew(relay, "balancer", "zeroslee_relay_seconds_count", method="INFO") >= 1
    for node in ("node-1", "node-2"):
        assert value(relay.after["balancer"], "zeroslee_node_live", node=node) == 1
    # The RAs count in their own names: node-2's sent the relayed INFO.
    assert grew(relay, "node-2/sip-ra", "zeroslee_ra_sip_requests_total", method="INFO", direction="out") == 1
    assert grew(relay, "node-1/sip-ra", "zeroslee_ra_sip_requests_total", method="INVITE", direction="in") >= 1
    assert not [k for k in relay.after["balancer"] if k[0].startswith("zeroslee_ra_")]
    assert not [k for k in relay.after["node-1/sip-ra"] if k[0] == "zeroslee_sip_requests_total"]
    # Both routers ran chat SBBs: node-2 delivered the MessageEvent to both.
    assert grew(relay, "node-2/router", "zeroslee_sbb_deliveries_total", service="chat") >= 3
    assert grew(relay, "node-1/router", "zeroslee_sbb_deliveries_total", service="chat") >= 1
    # The chat's usage parameters: one text relayed, by node-2 (Sbb-1 ran there), 5 bytes.
    relayed = {"service": "chat", "name": "relayed"}
    assert grew(relay, "node-2/router", "zeroslee_usage_counter_total", **relayed) == 1
    assert grew(relay, "node-2/router", "zeroslee_usage_sample_count", service="chat", name="relay_bytes") == 1
    assert grew(relay, "node-2/router", "zeroslee_usage_sample_sum", service="chat", name="relay_bytes") == 5
    assert grew(relay, "node-2/router", "zeroslee_router_delivery_seconds_count") >= 1
    # One primary, one epoch; commits acknowledged, timed, and no lag once all is done.
    stores = [relay.after[f"{n}/statestore"] for n in ("node-1", "node-2")]
    assert sorted(value(s, "zeroslee_store_role", role="primary") for s in stores) == [0, 1]
    assert len({value(s, "zeroslee_store_epoch") for s in stores}) == 1
    assert (
        sum(grew(relay, f"{n}/statestore", "zeroslee_store_commits_total", outcome="ok") for n in ("node-1", "node-2"))
        >= 6
    )
    assert sum(grew(relay, f"{n}/statestore", "zeroslee_store_commit_seconds_count") for n in ("node-1", "node-2")) >= 6
    assert all(value(s, "zeroslee_store_replication_lag") == 0 for s in stores)
    groups = sum(grew(relay, f"{n}/statestore", "zeroslee_store_commit_group_size_count") for n in ("node-1", "node-2"))
    assert (
        1
        <= groups
        <= sum(
            grew(relay, f"{n}/statestore", "zeroslee_store_commits_total", outcome="ok") for n in ("node-1", "node-2")
        )
    )
    assert grew(relay, "node-2/sip-ra", "zeroslee_ra_send_group_size_count") >= 1  # the relayed INFO's CSeq
    # Every bus message counted: the relay moved some across every node process.
    for process in ("node-1/router", "node-2/router", "node-1/sip-ra", "node-2/sip-ra"):
        assert grew(relay, process, "zeroslee_bus_messages_total", direction="sent") > 0, process


def test_no_label_carries_a_call_id(relay: Relay) -> None:
    for process, samples in relay.after.items():
        for _, labels in samples:
            for _, label_value in labels:
                assert "zeroslee.test" not in label_value and relay.call1 not in label_value, (process, labels)


def test_the_grafana_dashboard_uses_only_exported_names(relay: Relay) -> None:
    dashboard = json.loads((REPO / "config" / "grafana" / "zeroslee.json").read_text())
    exprs = [t["expr"] for panel in dashboard["panels"] for t in panel["targets"]]
    used = {name for expr in exprs for name in re.findall(r"\b((?:zeroslee|process)_[a-z0-9_]+)\b", expr)}
    exported = {name for samples in relay.after.values() for name, _ in samples}
    assert len(used) > 20
    assert sorted(used - exported) == []


def test_hep_copies_reach_sngrep_and_read_as_one_ladder_across_both_nodes(relay: Relay) -> None:
    cfg = relay.cluster.config
    balancer = cfg.balancer.sip_addr[1]
    ra = {node.id: node.sip_addr[1] for node in cfg.nodes}
    rows = tshark_rows(relay.pcap)
    assert len(rows) >= relay.copies > 0
    ladder = [
        (int(sport), int(dport), method, status)
        for src, sport, dst, dport, call_id, method, status in (r + [""] * (7 - len(r)) for r in rows)
        if call_id == relay.call1
    ]
    # UA-1's call as sngrep decapsulated it, real addresses and ports in each copy:
    assert (6211, balancer, "INVITE", "") in ladder  # the caller to the balancer
    assert (balancer, ra["node-1"], "INVITE", "") in ladder  # to node-1, where its SBB began
    assert (ra["node-1"], balancer, "INVITE", "200") in ladder
    assert (ra["node-2"], balancer, "INFO", "") in ladder  # node-2 relays on node-1's dialog
    assert (balancer, 6211, "INFO", "") in ladder  # through the balancer to the caller
    assert (6211, balancer, "BYE", "") in ladder
    order = [ladder.index(step) for step in ((6211, balancer, "INVITE", ""), (ra["node-2"], balancer, "INFO", ""))]
    assert order == sorted(order)  # in the order it happened


def test_trace_of_the_relayed_call_shows_both_nodes(relay: Relay) -> None:
    rows = admin.trace(relay.cluster.config, relay.call1)
    recorded_by = {r["at"] for r in rows}
    assert {"balancer", "node-1/sip-ra", "node-1/router", "node-2/sip-ra", "node-2/router"} <= recorded_by
    sbb = next(r["to"] for r in rows if r["at"] == "node-1/router" and r["what"] == "SipRequest INVITE (new)")
    # Node-2 ran Sbb-1 (created on node-1) for UA-2's message, then sent its INFO.
    ran = [r for r in rows if r["at"] == "node-2/router" and r["to"] == sbb]
    assert [r["what"] for r in ran] == ["MessageEvent (created on node-1)"]
    sent = [r for r in rows if r["from"] == "node-2/sip-ra" and r["what"].startswith("INFO ")]
    assert len(sent) == 1 and sent[0]["to"] == "balancer" and sent[0]["time"] >= ran[0]["time"]
    assert [r["time"] for r in rows] == sorted(r["time"] for r in rows)
    # The command prints it as a text ladder.
    printed = subprocess.run(
        [sys.executable, "-m", "zeroslee.admin", "--config", str(relay.cluster.config_path), "trace", relay.call1],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout
    assert f"call {relay.call1}:" in printed
    assert re.search(r"node-2/sip-ra -> balancer +INFO sip:ua1@", printed)
    assert "MessageEvent (created on node-1)" in printed and "@node-2/router" in printed
    # A Call-ID nobody saw says so.
    assert admin.trace(relay.cluster.config, "nobody@nowhere") == []
