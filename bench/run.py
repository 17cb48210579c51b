"""`make bench`: every figure of the benchmark in one invocation (or a seconds-long smoke).

Phases, each on a fresh cluster (balancer, witness, two replicating nodes, real
processes) or fresh baseline peers, all on loopback:
  setup     SIPp uac ramp: SIPp uas directly, Kamailio dispatcher (stateless, stateful), zeroslee
  front     CPU per call of the front alone at one rate: Kamailio stateless and stateful, the balancer
  b2bua     SIPp uac ramp through a B2BUA to a SIPp callee: sippy's B2BUA, zeroslee's b2b
  overload  R, then 2R/4R/8R bursts each followed by R: goodput, latency, liveness changes
  relay     chat relays at fixed offered rates: throughput and latency percentiles
  commit    statestore commit latency, replicated (2 stores) and single store
  failover  kill -9 node-1 mid-chat: gap to the first relayed INFO, INFOs lost
  memory    bytes per confirmed dialog at N concurrent dialogs (RSS and LMDB)
  profile   py-spy on the hot processes at the best zero-failure setup rate
Every load is bounded in count and in time. Results: results.json, results.md, PNGs.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import functools
import json
import platform
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections import Counter
from collections.abc import Callable, Coroutine
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, TypeVar

import lmdb
import zmq
from prometheus_client.parser import text_string_to_metric_families

from bench import chatload, report, tools
from zeroslee import admin, bus, curve, hashing
from zeroslee.devcluster import DevCluster
from zeroslee.replica import DATA_DB, env_path
from zeroslee.runtime import loop_factory

T = TypeVar("T")
BASE = 5900  # the bench cluster's ports: 5900-5939 (tests use 5500-5899, make cluster 5060-5128)
SECURITY_BASE = 5940  # a second cluster beside it, for side-by-side figures: 5940-5979
UAC_PORT, UAS_PORTS, KAMAILIO_PORT = 6010, [6101, 6102], 6100
CALLEE_PORT, SIPPY_PORT = 6103, 6105  # the b2bua phase: its SIPp callee (in b2b's 6000-6999), sippy's B2BUA
# s scenarios/b2b_uac.xml waits after its ACK for a 180 that comes after the 200. A step's rate
# is counted over SIPp's time less this and one T1 (500 ms): sippy answers some BYEs only when
# they are re-sent, so the last call of a step may end that much later.
B2B_HOLD = 0.2
HOT = [("", "balancer"), ("node-1", "sip-ra"), ("node-1", "router"), ("node-1", "statestore")]


@dataclass
class Plan:
    smoke: bool
    step: float  # seconds per ramp step (the "sustained for at least 20 s")
    zeroslee_rates: list[int]
    baseline_rates: list[int]
    relay_rates: list[int]
    relay_seconds: float
    commits: int
    loaded_commit_rate: int  # chat relays/s offered while commit latency is measured under load
    kills: int
    dialogs: int
    dialog_rate: int
    profile_seconds: float
    overload_rates: list[int]  # the overload phase's own ramp (finds R on its cluster)
    overload_factors: list[int]  # R times these, offered for `overload_seconds` each
    overload_seconds: float
    overload_pause: float  # s between a burst's end and the recovery step at R
    b2b_rates: list[int]  # the b2bua phase's ramp, for sippy's B2BUA and zeroslee's b2b alike


FULL = Plan(
    smoke=False,
    step=20.0,
    zeroslee_rates=[100, 200, 300, 400, 500, 600, 800, 1000, 1250, 1500, 2000],
    baseline_rates=[1000, 2000, 4000, 8000, 12000, 16000, 24000],
    relay_rates=[100, 250, 500, 750, 1000],
    relay_seconds=10.0,
    commits=5000,
    loaded_commit_rate=500,
    kills=3,
    dialogs=10_000,
    dialog_rate=200,
    profile_seconds=10.0,
    overload_rates=[100, 150, 200, 250, 300, 350, 400, 500, 600, 700, 800],
    overload_factors=[2, 4, 8],
    overload_seconds=30.0,
    overload_pause=10.0,
    b2b_rates=[25, 50, 75, 100, 125, 150, 200, 300, 400, 600, 800],
)
SMOKE = Plan(
    smoke=True,
    step=2.0,
    zeroslee_rates=[20, 40],
    baseline_rates=[100],
    relay_rates=[20, 50],
    relay_seconds=1.5,
    commits=200,
    loaded_commit_rate=50,
    kills=1,
    dialogs=50,
    dialog_rate=50,
    profile_seconds=2.0,
    overload_rates=[20, 40],
    overload_factors=[2],
    overload_seconds=2.0,
    overload_pause=1.0,
    b2b_rates=[10, 20],
)


class Bench:
    def __init__(self, plan: Plan, out: Path, work: Path) -> None:
        self.plan, self.out, self.work = plan, out, work
        self.commands: list[str] = []
        self.results: dict[str, Any] = {}
        self.profile_rate: int | None = None
        self.only_zeroslee = False

    def log(self, text: str) -> None:
        print(f"bench: {text}", flush=True)

    def cluster(self, name: str, nodes: int = 2, insecure: bool = False, base: int = BASE) -> DevCluster:
        c = DevCluster(self.work / name, base=base, nodes=nodes, insecure=insecure)
        c.start_all()
        try:
            c.wait_ready(timeout=30, nodes=nodes)
        except TimeoutError:
            c.stop()
            raise
        return c

    # --- 1. call setup rate ---------------------------------------------------------
    def ramp(
        self,
        label: str,
        target: str,
        rates: list[int],
        scenario: Path | None = None,
        c: DevCluster | None = None,
        extra: tuple[str, ...] = (),
        cpu: Callable[[], dict[str, float]] | None = None,
        hold: float = 0.0,
    ) -> dict[str, Any]:
        """Raise the rate until a step fails; then try once halfway to the failing rate.
        With the cluster `c` (or a `cpu` reading of other processes), each step also records
        the CPU time each process spent per successful call. With -trace_counts in `extra`,
        each step records the 180s that came after their 200 (scenarios/b2b_uac.xml)."""
        if cpu is None and c is not None:
            cpu = functools.partial(cluster_cpu, c)
        steps: list[dict[str, Any]] = []
        best, failed_at = 0, 0

        def step(rate: int) -> bool:
            cpu_before = cpu() if cpu is not None else {}
            cuts_before = admission_cuts(c) if c is not None else {}
            run, argv = tools.sipp_uac(
                target, rate, self.plan.step, self.work / f"{label}-{rate}", UAC_PORT, extra=extra, scenario=scenario
            )
            self.note(argv)
            clean = run.clean(self.plan.step, hold)
            steps.append({**asdict(run), "achieved": round(run.achieved, 1), "clean": clean})
            if cpu is not None:
                steps[-1]["cpu_ms_per_call"] = cpu_per(cpu_before, cpu(), run.successful)
            if not clean and c is not None:
                cut = {n: why for n, (k, why) in admission_cuts(c).items() if k > cuts_before[n][0]}
                if cut:
                    steps[-1]["cuts"] = cut  # what made the balancer refuse, if it did
            if "-trace_counts" in extra:
                counts = tools.sipp_counts(self.work / f"{label}-{rate}")
                steps[-1]["late_180"] = counts.get("5_180_Recv", 0) + counts.get("7_180_Recv", 0)
                steps[-1]["bye_retransmissions"] = counts.get("6_BYE_Retrans", 0)
            self.log(f"setup {label} {rate}/s: {run.successful}/{run.calls} ok, {run.failed} failed")
            return clean

        for rate in rates:
            if not step(rate):
                failed_at = rate
                break
            best = rate
        if failed_at and best and failed_at - best > max(50, best // 10):
            mid = (best + failed_at) // 2
            if step(mid):
                best = mid
        return {"best": best, "first_failure": failed_at or None, "steps": steps}

    def setup_rate(self) -> None:
        out: dict[str, Any] = {"sipp": {"best": 0}, "kamailio": {"best": 0}}
        if self.only_zeroslee:
            self.setup_zeroslee(out)
            self.results["setup_rate"] = out
            return
        uas = [tools.sipp_uas(port, self.work / f"uas-{port}") for port in UAS_PORTS]
        for _, argv in uas:
            self.note(argv)
        try:
            out["sipp"] = self.ramp("sipp", f"127.0.0.1:{UAS_PORTS[0]}", self.plan.baseline_rates)
            for label, stateless in (("kamailio_stateless", True), ("kamailio", False)):
                kam, argv = tools.kamailio(KAMAILIO_PORT, UAS_PORTS, self.work / label, stateless)
                self.note(argv)
                try:
                    out[label] = self.ramp(label, f"127.0.0.1:{KAMAILIO_PORT}", self.plan.baseline_rates)
                finally:
                    tools.stop_group(kam)
        finally:
            for proc, _ in uas:
                tools.stop(proc)
        self.setup_zeroslee(out)
        z, zr = out["zeroslee"]["best"], out["zeroslee_rooms"]["best"]
        s, k = out["sipp"]["best"], out["kamailio"]["best"]
        out["ratios"] = {
            "zeroslee/sipp": round(z / s, 4) if s else None,
            "zeroslee/kamailio": round(z / k, 4) if k else None,
            "zeroslee_rooms/sipp": round(zr / s, 4) if s else None,
            "zeroslee_rooms/kamailio": round(zr / k, 4) if k else None,
            "kamailio/sipp": round(k / s, 4) if s else None,
        }
        self.results["setup_rate"] = out

    def setup_zeroslee(self, out: dict[str, Any]) -> None:
        """Twice (DESIGN §9), each on a fresh cluster: SIPp's built-in uac, whose calls all
        join one room (its "service" user); then one room per call (scenarios/rooms.xml)."""
        for label, scenario in (("zeroslee", None), ("zeroslee_rooms", tools.BENCH / "scenarios" / "rooms.xml")):
            c = self.cluster(f"setup-{label}")
            try:
                host, port = c.balancer_addr
                out[label] = self.ramp(label, f"{host}:{port}", self.plan.zeroslee_rates, scenario, c)
            finally:
                c.stop()

    # --- 1c. what the front costs per call: zeroslee's balancer against Kamailio's -------
    def front(self) -> None:
        """CPU per call of the SIP front alone, at one rate every front carries cleanly
        (SIPp uac for one step): Kamailio's stateless dispatcher and its stateful one
        (every process of each, in front of two SIPp uas), then zeroslee's balancer in a
        fresh cluster (its process alone; the whole cluster's beside it). Each front's
        idle CPU, over a window before its calls, is taken off its figure (net), so that
        heartbeats and timers are not counted as call work. Issue 21's target: the
        balancer within 3x of stateless Kamailio, both from this run."""
        rate = 20 if self.plan.smoke else 300
        out: dict[str, Any] = {"rate": rate}
        uas = [tools.sipp_uas(port, self.work / f"front-uas-{port}") for port in UAS_PORTS]
        try:
            for label, stateless in (("kamailio_stateless", True), ("kamailio", False)):
                kam, argv = tools.kamailio(KAMAILIO_PORT, UAS_PORTS, self.work / f"front-{label}", stateless)
                self.note(argv)
                try:
                    sid = kam.pid  # its own session: every Kamailio process

                    def kamailio_cpu(sid: int = sid) -> float:
                        return tools.session_cpu(sid)

                    out[label] = self.front_cost(label, f"127.0.0.1:{KAMAILIO_PORT}", rate, kamailio_cpu)
                finally:
                    tools.stop_group(kam)
        finally:
            for proc, _ in uas:
                tools.stop(proc)
        c = self.cluster("front")
        try:
            wait_balancer_idle(c, 20.0)
            pid = c.pid("balancer")
            host, port = c.balancer_addr
            out["zeroslee_balancer"] = self.front_cost(
                "zeroslee_balancer",
                f"{host}:{port}",
                rate,
                lambda: tools.process_cpu(pid),
                whole=lambda: sum(cluster_cpu(c).values()),
            )
        finally:
            c.stop()
        stateless = out["kamailio_stateless"]["net_ms_per_call"]
        balancer = out["zeroslee_balancer"]["net_ms_per_call"]
        out["balancer_over_kamailio_stateless"] = round(balancer / stateless, 2) if stateless else None
        self.log(f"front: {out}")
        self.results["front"] = out

    def front_cost(
        self, label: str, target: str, rate: int, cpu: Callable[[], float], whole: Callable[[], float] | None = None
    ) -> dict[str, Any]:
        """One front's CPU per call at `rate`, and net of its idle rate (and, with
        `whole`, the CPU of everything it fronts, per call)."""
        window = 2.0 if self.plan.smoke else 10.0
        cpu0, t0 = cpu(), time.monotonic()
        time.sleep(window)  # the idle window itself
        idle = (cpu() - cpu0) / (time.monotonic() - t0)  # CPU s per s
        cpu1, t1, all1 = cpu(), time.monotonic(), whole() if whole else 0.0
        run, argv = tools.sipp_uac(target, rate, self.plan.step, self.work / f"front-sipp-{label}", UAC_PORT)
        self.note(argv)
        used, elapsed = cpu() - cpu1, time.monotonic() - t1
        calls = max(run.successful, 1)
        extra = {"whole_ms_per_call": round((whole() - all1) * 1000 / calls, 3)} if whole else {}
        return {
            **extra,
            "calls": run.successful,
            "failed": run.failed,
            "ms_per_call": round(used * 1000 / calls, 3),
            "net_ms_per_call": round((used - idle * elapsed) * 1000 / calls, 3),
            "idle_percent": round(idle * 100, 2),
        }

    # --- 1a. B2BUA against B2BUA --------------------------------------------------------
    def b2bua(self) -> None:
        """Issues 16 and 21: the same SIPp flow, uac (scenarios/b2b_uac.xml) → B2BUA → SIPp
        callee (scenarios/b2b_uas.xml), ramped to its highest zero-failure rate, through
        sippy's B2BUA (pure Python, one process, nothing replicated) and through zeroslee's
        b2b service (balancer + 2 replicating nodes, both legs' dialogs replicated before
        the 200 is relayed). CPU per call: sippy's process; every cluster process."""
        out: dict[str, Any] = {}
        flow = functools.partial(
            self.ramp,
            rates=self.plan.b2b_rates,
            scenario=tools.BENCH / "scenarios" / "b2b_uac.xml",
            extra=("-s", f"b2b-{CALLEE_PORT}", "-trace_counts"),
            hold=B2B_HOLD + 0.5,
        )
        callee, argv = tools.sipp_callee(CALLEE_PORT, self.work / "b2b-callee")
        self.note(argv)
        try:
            sippy, argv = tools.sippy_b2bua(SIPPY_PORT, f"127.0.0.1:{CALLEE_PORT}", self.work / "sippy")
            self.note(argv)
            try:
                out["sippy"] = flow(
                    "sippy", f"127.0.0.1:{SIPPY_PORT}", cpu=lambda: {"sippy": tools.process_cpu(sippy.pid)}
                )
            finally:
                tools.stop(sippy)
            c = self.cluster("b2bua")
            try:
                host, port = c.balancer_addr
                out["zeroslee"] = flow("zeroslee-b2b", f"{host}:{port}", c=c)
            finally:
                c.stop()
        finally:
            tools.stop(callee)
        s, z = out["sippy"]["best"], out["zeroslee"]["best"]
        out["ratio"] = round(z / s, 4) if s else None
        out["cpu_ms_per_call"] = {name: best_cpu(out[name]) for name in ("sippy", "zeroslee")}
        self.results["b2bua"] = out

    # --- 1b. goodput under overload ---------------------------------------------------
    def overload(self) -> None:
        """DESIGN §9, issue 22: on one fresh cluster, a ramp of `step`-second steps finds R
        (the highest rate with zero failures); then R times 2, 4 and 8 for
        `overload_seconds` each, every one followed after `overload_pause` by R again
        (recovery: must be clean); finally the store must empty within 60 s. Per burst:
        goodput (successful calls/s) and its ratio to R, p50/p99 setup latency of the
        accepted calls, how the rest were refused, and the balancer's liveness changes."""
        c = self.cluster("overload")
        try:
            host, port = c.balancer_addr
            target = f"{host}:{port}"
            ramp = self.ramp("overload-ramp", target, self.plan.overload_rates, c=c)
            r = ramp["best"] or self.plan.overload_rates[0]
            bursts = []

            def refused() -> tuple[int, int]:
                """Calls refused so far: by the balancer's admission, by the nodes' limits."""
                nodes = sum(int(c.stats("sip-ra", n).get("overload.rejected", 0)) for n in c.config.node_ids)
                return int(c.stats("balancer").get("overload.refused", 0)), nodes

            for factor in self.plan.overload_factors:
                before = c.stats("balancer")
                _, nodes_before = refused()
                cpu0, sipp0, t0 = cluster_cpu(c), children_cpu(), time.monotonic()
                front0 = front_setup_buckets(c)
                run, argv = tools.sipp_uac(
                    target, r * factor, self.plan.overload_seconds, self.work / f"burst-{factor}", UAC_PORT, rtt=True
                )
                dt = time.monotonic() - t0
                # Cores each process used during the burst (SIPp's too: everything shares this host).
                cores = {k: round((v - cpu0.get(k, 0.0)) / dt, 2) for k, v in cluster_cpu(c).items()}
                cores["sipp"] = round((children_cpu() - sipp0) / dt, 2)
                front1 = front_setup_buckets(c)
                self.note(argv)
                after = c.stats("balancer")
                _, nodes_after = refused()
                wait_balancer_idle(c, 40.0)
                time.sleep(self.plan.overload_pause)  # the schedule: R comes this long after the burst
                rec_before, cuts_before = refused(), admission_cuts(c)
                rec, argv = tools.sipp_uac(target, r, self.plan.step, self.work / f"recovery-{factor}", UAC_PORT)
                rec_refused = [b - a for a, b in zip(rec_before, refused())]
                rec_cuts = {
                    n: {"count": k - cuts_before[n][0], "last": why}
                    for n, (k, why) in admission_cuts(c).items()
                    if k > cuts_before[n][0]
                }
                self.note(argv)
                goodput = run.achieved
                bursts.append(
                    {
                        "factor": factor,
                        "offered": r * factor,
                        "calls": run.calls,
                        "successful": run.successful,
                        "failed": run.failed,
                        "refused_by_balancer": int(after.get("overload.refused", 0))
                        - int(before.get("overload.refused", 0)),
                        "refused_by_nodes": nodes_after - nodes_before,
                        "retransmissions": run.retransmissions,
                        "goodput": round(goodput, 1),
                        "goodput_over_r": round(goodput / r, 3),
                        "setup_p50_ms": round(percentile(run.setup_ms, 50), 1),
                        "setup_p99_ms": round(percentile(run.setup_ms, 99), 1),
                        "setup_max_ms": round(max(run.setup_ms), 1) if run.setup_ms else None,
                        "live_changes": int(after.get("live_changes", 0)) - int(before.get("live_changes", 0)),
                        "cores": cores,
                        # As the front saw them (INVITE in to its node's first answer other than 100):
                        # the share of the accepted calls that took over 250 and 500 ms.
                        "front_setup_over_250ms": share_over(front0, front1, 0.25),
                        "front_setup_over_500ms": share_over(front0, front1, 0.5),
                        "recovery": {
                            "offered": r,
                            "successful": rec.successful,
                            "failed": rec.failed,
                            "refused_by_balancer": rec_refused[0],
                            "refused_by_nodes": rec_refused[1],
                            "clean": rec.clean(self.plan.step),
                            # the balancer's cuts of a node's rate during the step, and the last one's figures
                            "cuts": rec_cuts,
                        },  # fmt: skip
                    }
                )
                self.log(f"overload {factor}R = {r * factor}/s: {bursts[-1]}")
            left = wait_store_empty(c, 60.0)
            self.results["overload"] = {"r": r, "ramp": ramp, "bursts": bursts, "left_after_60s": left}
        finally:
            c.stop()

    # --- 2. chat relay --------------------------------------------------------------
    def relay(self) -> None:
        c = self.cluster("relay")
        try:
            self.results["relay"] = run_load(self._relay(c))
        finally:
            c.stop()

    async def _relay(self, c: DevCluster) -> list[dict[str, Any]]:
        nodes = c.config.node_ids
        receiver = await chatload.open_ua("bob", c.balancer_addr, 6202)
        sender = await chatload.open_ua("alice", c.balancer_addr, 6201)
        await receiver.join("bench-room", call_id_on("node-2", nodes, "bob"))
        await sender.join("bench-room", call_id_on("node-1", nodes, "alice"))
        rows, first = [], 0
        for rate in self.plan.relay_rates:
            count = int(rate * self.plan.relay_seconds)
            stream = chatload.Stream()
            cpu_before = cluster_cpu(c)
            await chatload.send_stream(sender, rate, count, first, stream)
            await chatload.drain(stream, receiver, 40.0)
            cpu = cpu_per(cpu_before, cluster_cpu(c), len([s for s in stream.sent if s in receiver.relayed]))
            lat = [(receiver.relayed[s] - t) * 1000 for s, t in stream.sent.items() if s in receiver.relayed]
            arrivals = [receiver.relayed[s] for s in stream.sent if s in receiver.relayed]
            span = (max(arrivals) - min(stream.sent.values())) if arrivals else 0.0
            rows.append(
                {
                    "offered": rate,
                    "sent": count,
                    "relayed": len(lat),
                    "lost": count - len(lat),
                    "failed": sum(1 for st in stream.status.values() if st != 200),
                    "relays_per_s": round(len(lat) / span, 1) if span else 0.0,
                    "p50_ms": round(chatload.percentile(lat, 50), 2),
                    "p99_ms": round(chatload.percentile(lat, 99), 2),
                    "max_ms": round(max(lat), 2) if lat else None,
                    "cpu_ms_per_relay": cpu,
                }
            )
            self.log(f"relay {rate}/s: {rows[-1]}")
            first += count
            if len(lat) < count // 2:
                self.log(f"relay saturated at {rate}/s: higher offered rates not run")
                break
        rows[-1]["duplicates"] = receiver.duplicates
        for ua in (sender, receiver):
            await ua.leave()
            assert ua.transport is not None
            ua.transport.close()
        return rows

    # --- 3. commit latency ----------------------------------------------------------
    def commit(self) -> None:
        """Idle, replicated and single store; then replicated again while the chat relays
        500 INFOs/s through the same cluster (DESIGN §9: commit latency at that load)."""
        out: dict[str, Any] = {}
        for label, nodes in (("replicated", 2), ("single", 1)):
            c = self.cluster(f"commit-{nodes}", nodes=nodes)
            try:
                out[label] = commit_latency(c, self.plan.commits)
                if nodes == 2:
                    out["replicated_loaded"] = run_load(self._commit_under_chat(c))
                    self.log(f"commit replicated_loaded: {out['replicated_loaded']}")
            finally:
                c.stop()
            self.log(f"commit {label}: {out[label]}")
        self.results["commit"] = out

    async def _commit_under_chat(self, c: DevCluster) -> dict[str, Any]:
        nodes = c.config.node_ids
        receiver = await chatload.open_ua("bob", c.balancer_addr, 6242)
        sender = await chatload.open_ua("alice", c.balancer_addr, 6241)
        await receiver.join("commit-room", call_id_on("node-2", nodes, "bob-c"))
        await sender.join("commit-room", call_id_on("node-1", nodes, "alice-c"))
        rate = self.plan.loaded_commit_rate
        stream, done = chatload.Stream(), threading.Event()
        count = int(rate * self.plan.relay_seconds)
        sending = asyncio.create_task(chatload.send_stream(sender, rate, count, 0, stream))
        await asyncio.sleep(0.5)  # the chat reaches its rate before the first measured commit
        sending.add_done_callback(lambda _: done.set())
        measured = asyncio.create_task(asyncio.to_thread(commit_latency, c, self.plan.commits, done))
        result = await measured
        await sending
        await chatload.drain(stream, receiver, 40.0)
        relayed = sum(1 for s in stream.sent if s in receiver.relayed)
        for ua in (sender, receiver):
            await ua.leave()
            assert ua.transport is not None
            ua.transport.close()
        return {**result, "offered_relays_per_s": rate, "relayed": relayed, "sent": len(stream.sent)}

    # --- 3a. what an idle second and a call cost: CPU, bus messages, wake-ups ------------
    def cost(self) -> None:
        """The figures that travel between machines. First an idle cluster: CPU of every
        process (% of one core) and bus messages and bus wake-ups per second, over a
        window after it is ready. Then calls at a fixed rate well below capacity (SIPp
        uac, one room per call): the same per call. Bus figures are every process's
        `zeroslee_bus_messages_total` and `zeroslee_bus_wakeups_total`, scraped from its
        /metrics (heartbeats included: the beacons' sends count as sent)."""
        window = 3.0 if self.plan.smoke else 30.0
        rate = 20 if self.plan.smoke else 100
        c = self.cluster("cost")
        try:
            wait_balancer_idle(c, 20.0)
            cpu0, bus0, t0 = cluster_cpu(c), bus_figures(c), time.monotonic()
            time.sleep(window)  # the measurement window itself
            cpu1, bus1, dt = cluster_cpu(c), bus_figures(c), time.monotonic() - t0
            idle_cpu = {k: round((cpu1[k] - cpu0[k]) * 100 / dt, 2) for k in cpu1}
            idle_cpu["all"] = round(sum(v for k, v in idle_cpu.items()), 2)
            idle_bus = {k: round((bus1[k] - bus0[k]) / dt, 1) for k in bus1}
            self.log(f"cost idle: {idle_cpu['all']}% of one core, {idle_bus} per s")
            host, port = c.balancer_addr
            rooms = tools.BENCH / "scenarios" / "rooms.xml"
            bus2, cpu2 = bus_figures(c), cluster_cpu(c)
            run, argv = tools.sipp_uac(
                f"{host}:{port}", rate, self.plan.step, self.work / "cost-sipp", UAC_PORT, scenario=rooms
            )
            self.note(argv)
            wait_balancer_idle(c, 40.0)
            bus3, cpu3 = bus_figures(c), cluster_cpu(c)
            calls = max(run.successful, 1)
            seconds = self.plan.step  # the idle share of the calls' window, taken off below
            per_call = {k: round((bus3[k] - bus2[k] - idle_bus[k] * seconds) / calls, 1) for k in bus3}
            cpu = cpu_per(cpu2, cpu3, run.successful)
            # What the calls themselves cost: the idle cluster's share of the window taken off.
            net = (cpu.get("all") or 0.0) - idle_cpu["all"] * 10 * (self.plan.step) / calls
            self.log(f"cost {rate}/s: {run.successful} calls, {cpu.get('all')} ms CPU/call, {per_call} per call")
        finally:
            c.stop()
        self.results["cost"] = {
            "idle_seconds": round(dt, 1),
            "idle_cpu_percent": idle_cpu,
            "idle_bus_per_second": idle_bus,
            "rate": rate,
            "calls": run.successful,
            "failed": run.failed,
            "cpu_ms_per_call": cpu,
            "cpu_ms_per_call_net_of_idle": round(net, 3),
            "bus_per_call": per_call,
        }

    # --- 3b. what CURVE costs ----------------------------------------------------------
    def security(self) -> None:
        """What CURVE costs: a cluster with a plaintext bus and one with CURVE, both up at
        once. Commit latency (idle, replicated) side by side, one commit to each in turn,
        so the machine's noise falls on both alike; then CPU per call at a fixed rate well
        below capacity (SIPp uac, one room per call), each cluster in turn while the
        other idles. `rounds` times; the figures compared are the medians."""
        rate = 20 if self.plan.smoke else 150
        rounds = 1 if self.plan.smoke else 3
        runs: dict[str, list[dict[str, Any]]] = {"plaintext": [], "curve": []}
        rooms = tools.BENCH / "scenarios" / "rooms.xml"
        clusters: dict[str, DevCluster] = {}
        try:
            clusters["plaintext"] = self.cluster("security-plaintext", insecure=True)
            clusters["curve"] = self.cluster("security-curve", base=SECURITY_BASE)
            for i in range(rounds):
                commits = commit_latency_side_by_side(clusters, self.plan.commits)
                for label, c in clusters.items():
                    host, port = c.balancer_addr
                    before = cluster_cpu(c)
                    sipp_dir = self.work / f"security-{label}-{i}-sipp"
                    run, argv = tools.sipp_uac(
                        f"{host}:{port}", rate, self.plan.step, sipp_dir, UAC_PORT, scenario=rooms
                    )
                    self.note(argv)
                    cpu = cpu_per(before, cluster_cpu(c), run.successful)
                    runs[label].append(
                        {
                            "commit": commits[label],
                            "calls": run.successful,
                            "failed": run.failed,
                            "cpu_ms_per_call": cpu,
                        }
                    )
                    self.log(
                        f"security {label} round {i}: commit p50/p99 {commits[label]['p50_ms']}/"
                        f"{commits[label]['p99_ms']} ms, {cpu.get('all')} ms CPU/call"
                    )
        finally:
            for c in clusters.values():
                c.stop()

        def median(label: str, pick: Callable[[dict[str, Any]], float]) -> float:
            values = sorted(pick(r) for r in runs[label])
            return values[len(values) // 2]

        summary: dict[str, Any] = {"rate": rate, "rounds": rounds, "runs": runs}
        for label in runs:
            summary[label] = {
                "commit_p50_ms": median(label, lambda r: float(r["commit"]["p50_ms"])),
                "commit_p99_ms": median(label, lambda r: float(r["commit"]["p99_ms"])),
                "cpu_ms_per_call": median(label, lambda r: float(r["cpu_ms_per_call"].get("all", 0.0))),
                "failed": sum(int(r["failed"]) for r in runs[label]),
            }
        plain, secure = summary["plaintext"], summary["curve"]
        summary["ratios"] = {
            k: round(secure[k] / plain[k], 3) if plain[k] else None
            for k in ("commit_p50_ms", "commit_p99_ms", "cpu_ms_per_call")
        }
        self.results["security"] = summary

    # --- 4. failover gap ------------------------------------------------------------
    def failover(self) -> None:
        c = self.cluster("failover")
        try:
            kills = []
            for k in range(self.plan.kills):
                kills.append(run_load(self._one_kill(c, k)))
                self.log(f"failover kill {k + 1}: {kills[-1]}")
                c.start_node("node-1")
                c.wait_ready(timeout=30, nodes=2)
                wait_in_sync(c, timeout=30)
        finally:
            c.stop()
        gaps = [k["gap_ms"] for k in kills if k["gap_ms"] is not None]
        self.results["failover"] = {
            "kills": kills,
            "gap_ms_max": max(gaps) if gaps else None,
            "gap_ms_mean": round(sum(gaps) / len(gaps), 1) if gaps else None,
            "lost_total": sum(k["lost"] for k in kills),
        }

    async def _one_kill(self, c: DevCluster, k: int) -> dict[str, Any]:
        nodes = c.config.node_ids
        primary = store_primary(c)
        receiver = await chatload.open_ua("bob", c.balancer_addr, 6222 + 2 * k)
        sender = await chatload.open_ua("alice", c.balancer_addr, 6221 + 2 * k)
        room = f"failover-{k}"
        await receiver.join(room, call_id_on("node-2", nodes, f"bob{k}"))
        await sender.join(room, call_id_on("node-1", nodes, f"alice{k}"))
        rate, before, after = 100, 1.0 if self.plan.smoke else 2.0, 3.0 if self.plan.smoke else 6.0
        stream = chatload.Stream()
        sending = asyncio.create_task(chatload.send_stream(sender, rate, int(rate * (before + after)), 0, stream))
        await asyncio.sleep(before)  # the chat runs this long before the kill (offered load)
        killed_at = time.monotonic()
        await asyncio.to_thread(c.kill_node, "node-1")
        await sending
        await chatload.drain(stream, receiver, 40.0)
        after_kill = [receiver.relayed[s] for s, t in stream.sent.items() if t >= killed_at and s in receiver.relayed]
        lost = [s for s in stream.sent if s not in receiver.relayed]
        for ua in (sender, receiver):
            try:
                await ua.leave()
            except (TimeoutError, RuntimeError):
                pass
            assert ua.transport is not None
            ua.transport.close()
        return {
            "primary_before": primary,
            "gap_ms": round((min(after_kill) - killed_at) * 1000, 1) if after_kill else None,
            "sent": len(stream.sent),
            "lost": len(lost),
            "lost_seqs": {seq: stream.status.get(seq, 0) for seq in lost[:20]},  # seq -> its final status
            "duplicates": receiver.duplicates,
            "not_200": {str(st): n for st, n in Counter(stream.status.values()).items() if st != 200},
        }

    # --- 5. memory per dialog -------------------------------------------------------
    def memory(self) -> None:
        c = self.cluster("memory")
        try:
            before_rss, before_anon = cluster_rss(c), cluster_rss(c, "RssAnon")
            before_db, before_used = lmdb_bytes(c), lmdb_in_use(c)
            n = self.plan.dialogs
            argv = [
                tools.need("sipp"),
                "-sf",
                str(tools.BENCH / "scenarios" / "hold.xml"),
                "-i",
                "127.0.0.1",
                "-p",
                str(UAC_PORT),
                "-r",
                str(self.plan.dialog_rate),
                "-m",
                str(n),
                "-l",
                str(n),
                "-buff_size",
                str(tools.BUFF),
                "-max_socket",
                "100",
                "-nostdin",
                "-trace_stat",
                "-timeout",
                str(int(n / self.plan.dialog_rate + 120)),
                "{}:{}".format(*c.balancer_addr),
            ]
            self.note(argv)
            (self.work / "memory-sipp").mkdir(exist_ok=True)
            sipp = subprocess.Popen(
                argv, cwd=self.work / "memory-sipp", stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
            )
            try:
                confirmed = wait_count(c, "sbb/", n, timeout=n / self.plan.dialog_rate + 60, proc=sipp)
                held = wait_transactions_ended(c, timeout=64 * c.config.sip.t1 + 30)
                after_rss, after_anon, after_db = cluster_rss(c), cluster_rss(c, "RssAnon"), lmdb_bytes(c)
                after_used = lmdb_in_use(c)
            finally:
                tools.stop(sipp)
        finally:
            c.stop()
        self.results["memory"] = memory_figures(
            confirmed, (before_rss, after_rss), (before_anon, after_anon), (before_db, after_db)
        )
        self.results["memory"]["transactions_held"] = held
        self.results["memory"]["lmdb_in_use_bytes_per_dialog"] = {
            node: round((after_used[node] - before_used[node]) / confirmed) if confirmed else None
            for node in after_used
        }
        self.log(f"memory: {confirmed} dialogs, {self.results['memory']['bytes_per_dialog']} B/dialog")

    # --- 6. profile -----------------------------------------------------------------
    def profile(self) -> None:
        best = self.results.get("setup_rate", {}).get("zeroslee", {}).get("best")
        rate = int(self.profile_rate or best or self.plan.zeroslee_rates[0])
        c = self.cluster("profile")
        pdir = self.out / "profile"
        pdir.mkdir(parents=True, exist_ok=True)
        summaries: dict[str, Any] = {"rate": rate, "processes": {}}
        try:
            seconds = self.plan.profile_seconds
            host, port = c.balancer_addr
            load = subprocess.Popen(
                [
                    tools.need("sipp"),
                    "-sn",
                    "uac",
                    f"{host}:{port}",
                    "-i",
                    "127.0.0.1",
                    "-p",
                    str(UAC_PORT),
                    "-r",
                    str(rate),
                    "-m",
                    str(int(rate * (seconds + 4))),
                    "-buff_size",
                    str(tools.BUFF),
                    "-nostdin",
                    "-timeout",
                    str(int(seconds + 40)),
                ],
                cwd=self.work,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            try:
                spies = {}
                for node, service in HOT:
                    name = f"{node or 'front'}-{service}"
                    spies[name] = (tools.py_spy(c.pid(service, node or None), seconds, self.work / f"{name}.raw"), name)
                for proc, name in spies.values():
                    _, err = proc.communicate(timeout=seconds + 30)
                    raw = self.work / f"{name}.raw"
                    if proc.returncode != 0 or not raw.exists():
                        summaries["processes"][name] = {"error": err.decode(errors="replace")[-500:]}
                        continue
                    summary = tools.profile_summary(raw)
                    summaries["processes"][name] = summary
                    (pdir / f"{name}.txt").write_text(report.profile_text(name, rate, summary))
            finally:
                tools.stop(load)
        finally:
            c.stop()
        self.results["profile"] = summaries

    # --- bookkeeping ----------------------------------------------------------------
    def note(self, argv: list[str]) -> None:
        """Record a peer's command line, with this checkout as `.` and the run's scratch
        directory as `<work>`: the results are committed, and name no machine's paths."""
        line = " ".join(str(a) for a in argv)
        line = line.replace(f"{self.work}/", "<work>/").replace(f"{tools.BENCH.parent}/", "")
        if line not in self.commands:
            self.commands.append(line)


PHASE_KEYS = {"setup": "setup_rate"}  # a phase's key in results.json, where it is not its name


def best_cpu(ramp: dict[str, Any]) -> float | None:
    """CPU ms per call, all processes, at a ramp's fastest clean step."""
    clean = [st for st in ramp["steps"] if st["clean"] and st.get("cpu_ms_per_call")]
    return max(clean, key=lambda st: st["offered"])["cpu_ms_per_call"]["all"] if clean else None


def run_load(load: Coroutine[Any, Any, T]) -> T:
    """Our own load generators run on the services' event loop (uvloop where installed):
    on stock asyncio the generator's own overhead was part of every latency measured."""
    with asyncio.Runner(loop_factory=loop_factory()) as runner:
        return runner.run(load)


def call_id_on(node: str, nodes: list[str], prefix: str) -> str:
    """A Call-ID the balancer hashes onto `node` (with the balancer's own function)."""
    for i in range(10_000):
        candidate = f"{prefix}-{i}@bench"
        if hashing.choose(candidate, nodes) == node:
            return candidate
    raise RuntimeError("no Call-ID hashes there")


def percentile(values: list[float], q: float) -> float:
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * q / 100))]


def wait_balancer_idle(c: DevCluster, timeout: float) -> None:
    """Until the balancer has no transaction awaiting a node's final response."""
    deadline = time.monotonic() + timeout
    while int(c.stats("balancer").get("pending", 0)) and time.monotonic() < deadline:
        time.sleep(0.1)


def wait_store_empty(c: DevCluster, timeout: float) -> dict[str, int]:
    """Until no activity and no SBB entity is left (or `timeout`): what is left then."""
    deadline = time.monotonic() + timeout
    while True:
        left = {what: len(admin.rows_for(c.config, what)) for what in ("activities", "entities")}
        if not any(left.values()) or time.monotonic() > deadline:
            return left
        time.sleep(0.5)


def store_primary(c: DevCluster) -> str:
    for node in c.config.node_ids:
        if c.stats("statestore", node).get("role") == "primary":
            return node
    return ""


def wait_in_sync(c: DevCluster, timeout: float) -> None:
    """Until one store is primary and every other is a backup at the same sequence."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        stats = [c.stats("statestore", n) for n in c.config.node_ids]
        roles = sorted(str(s.get("role")) for s in stats)
        if roles == ["backup"] * (len(stats) - 1) + ["primary"] and len({s.get("seq") for s in stats}) == 1:
            return
        time.sleep(0.05)  # polling the stores' state, bounded by `timeout`
    raise TimeoutError("the stores did not come back in sync")


def wait_count(c: DevCluster, prefix: str, n: int, timeout: float, proc: subprocess.Popen[bytes]) -> int:
    """Until node-1's replica holds `n` keys under `prefix` (SBB entities: confirmed
    dialogs). Counted in the LMDB file itself, read-only, so that the count costs the
    measured processes nothing (asking the store for the records did: its reply of
    10,000 records grew its heap by ~1 KB per dialog)."""
    deadline = time.monotonic() + timeout
    count = 0
    while time.monotonic() < deadline and proc.poll() is None:
        count = count_keys(c.config.data_dir(c.config.node_ids[0]), prefix)
        if count >= n:
            return count
        time.sleep(0.5)  # polling the replica, bounded by `timeout`
    return count


def count_keys(data_dir: Path, prefix: str) -> int:
    if not (env_path(data_dir) / "data.mdb").exists():
        return 0
    env = lmdb.open(str(env_path(data_dir)), readonly=True, lock=True, max_dbs=4, create=False)
    try:
        db = env.open_db(DATA_DB, create=False)
        start, count = prefix.encode(), 0
        with env.begin(db=db) as txn:
            cursor = txn.cursor()
            if cursor.set_range(start):
                for key in cursor.iternext(keys=True, values=False):
                    if not bytes(key).startswith(start):
                        break
                    count += 1
        return count
    finally:
        env.close()


def wait_transactions_ended(c: DevCluster, timeout: float) -> dict[str, int]:
    """Until no RA holds a SIP transaction (the INVITEs' end after 64*T1): what remains
    is the dialogs' own memory. Gives the transactions still held when it stopped."""
    deadline = time.monotonic() + timeout
    held: dict[str, int] = {}
    while time.monotonic() < deadline:
        stats = {node: c.stats("sip-ra", node) for node in c.config.node_ids}
        held = {node: int(stats[node].get("transactions", 0)) for node in c.config.node_ids}
        if not any(held.values()):
            break
        time.sleep(1.0)  # polling the RAs' stats, bounded by `timeout`
    return held


class Committer:
    """One-at-a-time commits of one 200-byte write to a cluster's primary, as a client of
    that node (holding its key), timed from send to reply."""

    def __init__(self, c: DevCluster) -> None:
        self.primary = store_primary(c)
        self.sock: zmq.Socket[bytes] = zmq.Context.instance().socket(zmq.DEALER)
        self.sock.setsockopt(zmq.LINGER, 0)
        curve.connect(self.sock, c.config, self.primary, c.config.node(self.primary).store)
        self.lat: list[float] = []
        self.refused = 0
        self.req = 0

    def commit(self, key: str, value: bytes | None, timed: bool) -> None:
        self.req += 1
        t0 = time.perf_counter()
        self.sock.send(bus.encode(bus.Commit(self.req, [], [(key, value)], [], "bench")))
        if not self.sock.poll(5000):
            raise TimeoutError("statestore did not answer a commit within 5 s")
        result = bus.decode(self.sock.recv())
        if timed:
            self.lat.append((time.perf_counter() - t0) * 1000)
            if not (isinstance(result, bus.CommitResult) and result.ok):
                self.refused += 1

    def close(self) -> dict[str, Any]:
        """Delete what the commits wrote; the figures."""
        try:
            for i in range(100):  # leave nothing behind
                self.commit(f"bench/commit/{i}", None, timed=False)
        finally:
            self.sock.close()
        lat = self.lat
        return {
            "commits": len(lat),
            "refused": self.refused,
            "primary": self.primary,
            "p50_ms": round(chatload.percentile(lat, 50), 3),
            "p99_ms": round(chatload.percentile(lat, 99), 3),
            "max_ms": round(max(lat), 3) if lat else 0.0,
            "commits_per_s": round(len(lat) / (sum(lat) / 1000), 1) if lat else 0.0,
        }


def commit_latency(c: DevCluster, n: int, until: threading.Event | None = None) -> dict[str, Any]:
    """`n` commits one at a time (fewer if `until` is set first); p50/p99 in ms."""
    committer = Committer(c)
    payload = b"x" * 200
    try:
        for i in range(n):
            if until is not None and until.is_set():
                break  # the load ended: the rest would not be measured under it
            committer.commit(f"bench/commit/{i % 100}", payload, timed=True)
    finally:
        figures = committer.close()
    return figures


def commit_latency_side_by_side(clusters: dict[str, DevCluster], n: int) -> dict[str, dict[str, Any]]:
    """`n` commits to each cluster, alternating between them one by one, so that what
    else the machine does at any moment weighs on every cluster alike: the fair A/B."""
    committers = {label: Committer(c) for label, c in clusters.items()}
    payload = b"x" * 200
    try:
        for i in range(n):
            for committer in committers.values():
                committer.commit(f"bench/commit/{i % 100}", payload, timed=True)
    finally:
        figures = {label: committer.close() for label, committer in committers.items()}
    return figures


def bus_figures(c: DevCluster) -> dict[str, float]:
    """Bus messages sent and received and bus wake-ups so far, all processes together,
    from their /metrics."""
    out = {"messages_sent": 0.0, "messages_received": 0.0, "wakeups": 0.0}
    for _, _, hostport in c.config.metrics_endpoints():
        with urllib.request.urlopen(f"http://{hostport}/metrics", timeout=5) as response:
            text = response.read().decode()
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                if sample.name == "zeroslee_bus_messages_total":
                    out[f"messages_{sample.labels['direction']}"] += sample.value
                elif sample.name == "zeroslee_bus_wakeups_total":
                    out["wakeups"] += sample.value
    return out


def admission_cuts(c: DevCluster) -> dict[str, tuple[int, str]]:
    """Per node, the balancer's cuts of its admission rate so far, and what the last saw."""
    s = c.stats("balancer")
    return {
        n: (int(s.get(f"admission.{n}.cuts", 0)), str(s.get(f"admission.{n}.last_cut", ""))) for n in c.config.node_ids
    }


def front_setup_buckets(c: DevCluster) -> dict[float, float]:
    """The balancer's `zeroslee_setup_seconds` so far: new INVITEs answered (other than 100)
    by their node within each bucket's bound, as the front saw it (cumulative)."""
    out: dict[float, float] = {}
    for svc, _, hostport in c.config.metrics_endpoints():
        if svc != "balancer":
            continue
        with urllib.request.urlopen(f"http://{hostport}/metrics", timeout=5) as response:
            text = response.read().decode()
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                if sample.name == "zeroslee_setup_seconds_bucket":
                    out[float(sample.labels["le"])] = sample.value
    return out


def share_over(before: dict[float, float], after: dict[float, float], bound: float) -> float | None:
    """Of the INVITEs counted between two readings, the share that took longer than `bound`."""
    total = after.get(float("inf"), 0.0) - before.get(float("inf"), 0.0)
    within = after.get(bound, 0.0) - before.get(bound, 0.0)
    return round((total - within) / total, 4) if total > 0 else None


def cluster_cpu(c: DevCluster) -> dict[str, float]:
    """CPU seconds (user + system, all threads) each cluster process has used so far."""
    return {
        f"{node or 'front'}/{svc}": tools.process_cpu(p.pid) for (node, svc), p in c.procs.items() if p.poll() is None
    }


def children_cpu() -> float:
    """CPU seconds (user + system) used by the child processes waited for so far (SIPp)."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def cpu_per(before: dict[str, float], after: dict[str, float], n: int) -> dict[str, float]:
    """Milliseconds of CPU per unit of work, per process and in total (`all`)."""
    if n <= 0:
        return {}
    spent = {k: (v - before.get(k, 0.0)) * 1000 / n for k, v in after.items()}
    return {**{k: round(v, 3) for k, v in spent.items()}, "all": round(sum(spent.values()), 3)}


def cluster_rss(c: DevCluster, field: str = "VmRSS") -> dict[str, int]:
    return {
        f"{node or 'front'}/{svc}": tools.rss_bytes(p.pid, field)
        for (node, svc), p in c.procs.items()
        if p.poll() is None
    }


Sample = dict[str, int]  # "node-1/router" or "node-1" -> bytes


def memory_figures(
    dialogs: int, rss: tuple[Sample, Sample], anon: tuple[Sample, Sample], db: tuple[Sample, Sample]
) -> dict[str, Any]:
    """Bytes per dialog, whole cluster and per node (DESIGN §9), counted two ways:
    - `rss`: the growth of every process's VmRSS plus the LMDB pages in use. The store,
      the router and the RA each map their node's LMDB file, so each resident page of it
      is counted once per process that touched it, and once more as an LMDB page;
    - `private`: the growth of every process's private memory (RssAnon) plus the LMDB
      pages in use: each byte once. This is the figure the target is judged on."""

    def grow(pair: tuple[Sample, Sample], node: str | None = None) -> int:
        before, after = pair
        return sum(v - before.get(k, 0) for k, v in after.items() if node is None or k.split("/")[0] == node)

    def per(n: int) -> int | None:
        return round(n / dialogs) if dialogs else None

    nodes = sorted(db[1])
    out: dict[str, Any] = {
        "dialogs": dialogs,
        "rss_before": rss[0],
        "rss_after": rss[1],
        "anon_before": anon[0],
        "anon_after": anon[1],
        "lmdb_before": db[0],
        "lmdb_after": db[1],
        "rss_bytes_per_dialog": per(grow(rss)),
        "private_bytes_per_dialog": per(grow(anon)),
        "lmdb_bytes_per_dialog": per(grow(db)),
        "rss_plus_lmdb_per_dialog": per(grow(rss) + grow(db)),
        "bytes_per_dialog": per(grow(anon) + grow(db)),
        "per_node": {
            node: {
                "private_bytes_per_dialog": per(grow(anon, node)),
                "lmdb_bytes_per_dialog": per(grow(db, node)),
                "bytes_per_dialog": per(grow(anon, node) + grow(db, node)),
            }
            for node in [*nodes, "front"]
        },
    }
    return out


def lmdb_in_use(c: DevCluster) -> dict[str, int]:
    """Bytes of LMDB pages that hold data now, per node's store: the B-tree pages of every
    database, not the free pages below the high-water mark that LMDB will reuse."""
    out = {}
    for node in c.config.node_ids:
        env = lmdb.open(str(env_path(c.config.data_dir(node))), readonly=True, lock=False, max_dbs=16)
        try:
            with env.begin() as txn:
                names = [bytes(k) for k, _ in txn.cursor()]
                dbs = [env.open_db(name, txn=txn, create=False) for name in names]
                stats = [env.stat()] + [txn.stat(db) for db in dbs]
            pages = sum(s["branch_pages"] + s["leaf_pages"] + s["overflow_pages"] for s in stats)
            out[node] = (pages + 2) * env.stat()["psize"]  # and the two meta pages
        finally:
            env.close()
    return out


def lmdb_bytes(c: DevCluster) -> dict[str, int]:
    """Bytes of LMDB pages in use (high-water mark) per node's store."""
    out = {}
    for node in c.config.node_ids:
        env = lmdb.open(str(env_path(c.config.data_dir(node))), readonly=True, lock=False, max_dbs=16)
        try:
            out[node] = (env.info()["last_pgno"] + 1) * env.stat()["psize"]
        finally:
            env.close()
    return out


def versions() -> dict[str, str]:
    import msgspec
    import structlog

    return {
        "python": platform.python_version(),
        "pyzmq": zmq.pyzmq_version(),
        "libzmq": zmq.zmq_version(),
        "msgspec": msgspec.__version__,
        "lmdb": lmdb.__version__,
        "structlog": structlog.__version__,
        "sipp": tools.version(["sipp", "-v"]) if shutil.which("sipp") else "not found",
        "kamailio": tools.version(["kamailio", "-v"]) if shutil.which("kamailio") else "not found",
        "py-spy": tools.version([tools.need("py-spy"), "--version"]),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.split("\n")[0])
    parser.add_argument("--smoke", action="store_true", help="a few seconds per phase: proves the harness runs")
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results")
    parser.add_argument(
        "--phases", default="setup,front,b2bua,overload,relay,commit,cost,security,failover,memory,profile"
    )
    parser.add_argument("--readme", action="store_true", help="quote the table in README.md")
    parser.add_argument("--profile-rate", type=int, help="the profile phase's call rate (default: the best setup rate)")
    parser.add_argument("--only-zeroslee", action="store_true", help="setup phase: skip the baselines (no ratios)")
    parser.add_argument("--rates", help="zeroslee's setup ramp, e.g. 400,500 (default: the plan's)")
    parser.add_argument("--overload-rates", help="the overload phase's ramp to find R, e.g. 600 (default: the plan's)")
    parser.add_argument("--overload-factors", help="the overload phase's bursts as multiples of R, e.g. 8")
    parser.add_argument("--keep", type=Path, help="keep the clusters' logs and data in this directory")
    parser.add_argument(
        "--merge",
        action="store_true",
        help="keep the other phases' figures of OUT/results.json (each phase's run is noted)",
    )
    args = parser.parse_args(argv)
    plan = SMOKE if args.smoke else FULL
    if args.rates:
        plan = dataclasses.replace(plan, zeroslee_rates=[int(r) for r in args.rates.split(",")])
    if args.overload_rates:
        plan = dataclasses.replace(plan, overload_rates=[int(r) for r in args.overload_rates.split(",")])
    if args.overload_factors:
        plan = dataclasses.replace(plan, overload_factors=[int(f) for f in args.overload_factors.split(",")])
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # unwind: every cluster is stopped by PID
    args.out.mkdir(parents=True, exist_ok=True)
    phases: dict[str, Callable[[Bench], None]] = {
        "setup": Bench.setup_rate,
        "b2bua": Bench.b2bua,
        "front": Bench.front,
        "overload": Bench.overload,
        "relay": Bench.relay,
        "commit": Bench.commit,
        "security": Bench.security,
        "cost": Bench.cost,
        "failover": Bench.failover,
        "memory": Bench.memory,
        "profile": Bench.profile,
    }
    with tempfile.TemporaryDirectory(prefix="zeroslee-bench-") as tmp:
        work = args.keep or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        bench = Bench(plan, args.out, work)
        bench.profile_rate = args.profile_rate
        bench.only_zeroslee = args.only_zeroslee
        previous = args.out / "results.json"
        if args.merge and previous.exists():
            before = json.loads(previous.read_text())
            bench.results.update(before)
            old = {"started": before.get("started"), "mode": before.get("mode"), "cpu": before["machine"]["cpu"]}
            bench.results.setdefault(
                "phase_runs", {name: old for name in phases if PHASE_KEYS.get(name, name) in before}
            )
        started = time.time()
        bench.results.update(
            mode="smoke" if plan.smoke else "full",
            started=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(started)),
            machine=tools.machine(),
            versions=versions(),
            invocation=" ".join([Path(sys.executable).name, "-m", "bench", *(argv or sys.argv[1:])]),
        )
        runs = bench.results.setdefault("phase_runs", {})
        for name in args.phases.split(","):
            bench.log(f"phase {name}")
            phases[name](bench)
            runs[name] = {
                "started": bench.results["started"],
                "mode": bench.results["mode"],
                "cpu": bench.results["machine"]["cpu"],
            }
        bench.results["seconds"] = round(time.time() - started, 1)
        bench.results["commands"] = (
            [*bench.results.get("commands", []), *bench.commands] if args.merge else bench.commands
        )
    (args.out / "results.json").write_text(json.dumps(bench.results, indent=2) + "\n")
    table = report.markdown(bench.results)
    (args.out / "results.md").write_text(table)
    report.plots(bench.results, args.out)
    if args.readme:
        report.quote_in_readme(table, Path(__file__).resolve().parent.parent / "README.md")
    print(table)
    return 0
