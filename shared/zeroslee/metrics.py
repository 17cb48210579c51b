"""Prometheus metrics: every process serves `/metrics` over HTTP (the official
prometheus-client), at the address the cluster file gives it (`zeroslee-admin metrics`
lists them).

Two kinds of series, so that the hot paths pay nearly nothing:
- Histograms (setup, relay and commit latency, event-loop lag) are prometheus-client
  `Histogram`s, observed where the latency is known: one lock and a bucket search.
- Everything else is read at scrape time from what the process keeps anyway: its
  counters, its live-node list, its dialog table. A scrape runs in prometheus-client's
  HTTP thread; it asks the event loop for that snapshot (`call_soon_threadsafe`) and waits
  at most `SNAPSHOT_WAIT`, so nothing the loop owns is ever read from another thread. A
  loop that does not answer in time (wedged) still gets its histograms and process
  figures scraped, with `zeroslee_metrics_snapshot_ok 0`.

Names follow Prometheus' conventions: `zeroslee_` prefix, `_total` on counters, seconds,
and no Call-ID or other unbounded label. Labels are bounded sets: a SIP method outside
`METHODS` is counted as `other`.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

from prometheus_client import CollectorRegistry, Histogram, ProcessCollector, disable_created_metrics, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.metrics_core import Metric

__all__ = ["GROUP_BUCKETS", "Metric", "Metrics", "SipCounts", "counter", "counters", "gauge", "gauges", "method_label"]

from zeroslee import __version__
from zeroslee.config import parse_hostport

SNAPSHOT_WAIT = 2.0  # s a scrape waits for the event loop's figures
# Latency buckets (s): a SIP hop on loopback takes ~1 ms, T1 is 0.5 s, 64*T1 32 s.
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 32.0)
GROUP_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)  # items handled together (batching)
LAG_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0)
METHODS = frozenset(
    "INVITE ACK BYE CANCEL OPTIONS INFO MESSAGE UPDATE PRACK REGISTER SUBSCRIBE NOTIFY REFER PUBLISH".split()
)

# Every series is exported from the start, at 0: a rate or an increase needs no first sample.
CLASSES = ("1xx", "2xx", "3xx", "4xx", "5xx", "6xx")
Source = Callable[[], Iterable[Metric]]
disable_created_metrics()  # type: ignore[no-untyped-call]  # no `_created` series: a restart shows in process_start_time_seconds


def method_label(method: str) -> str:
    return method if method in METHODS else "other"


def status_class(status: int) -> str:
    return f"{status // 100}xx" if 100 <= status <= 699 else "other"


def sip_first_line(data: bytes) -> tuple[str, int]:
    """(method, 0) of a request, ("", status) of a response, from its first bytes only;
    ("", 0) for what is neither (a keepalive, junk)."""
    if data.startswith(b"SIP/2.0 "):
        code = data[8:11]
        return "", int(code) if code.isdigit() else 0
    space = data.find(b" ", 0, 20)
    if space <= 0:
        return "", 0
    return method_label(data[:space].decode("ascii", "replace")), 0


class SipCounts:
    """Requests by method and responses by status class, per direction: plain dicts
    updated on the loop, turned into counter families at scrape time."""

    def __init__(self) -> None:
        self.requests: dict[tuple[str, str], int] = {}
        self.responses: dict[tuple[str, str], int] = {}

    def count(self, data: bytes, direction: str) -> None:
        method, status = sip_first_line(data)
        if method:
            key = (method, direction)
            self.requests[key] = self.requests.get(key, 0) + 1
        elif status:
            key = (status_class(status), direction)
            self.responses[key] = self.responses.get(key, 0) + 1

    def families(self, prefix: str) -> list[Metric]:
        """`<prefix>_requests_total{method,direction}` and `<prefix>_responses_total
        {status_class,direction}`, direction "in" or "out"."""
        requests = CounterMetricFamily(f"{prefix}_requests", "SIP requests", labels=["method", "direction"])
        responses = CounterMetricFamily(f"{prefix}_responses", "SIP responses", labels=["status_class", "direction"])
        for table, family, labels in ((self.requests, requests, METHODS), (self.responses, responses, CLASSES)):
            for key in sorted({*table, *((label, d) for label in labels for d in ("in", "out"))}):
                family.add_metric(list(key), table.get(key, 0))
        return [requests, responses]

    def received(self) -> dict[str, int]:
        """Requests received, by method, every known method present (0 if none yet)."""
        return {**dict.fromkeys(METHODS, 0), **{m: n for (m, d), n in self.requests.items() if d == "in"}}

    def answered(self) -> dict[str, int]:
        """Responses sent, by status class, every class present."""
        return {**dict.fromkeys(CLASSES, 0), **{c: n for (c, d), n in self.responses.items() if d == "out"}}


def gauge(name: str, doc: str, value: float, labels: dict[str, str] | None = None) -> GaugeMetricFamily:
    family = GaugeMetricFamily(name, doc, labels=list(labels or {}))
    family.add_metric(list((labels or {}).values()), value)
    return family


def counter(name: str, doc: str, value: float, labels: dict[str, str] | None = None) -> CounterMetricFamily:
    family = CounterMetricFamily(name, doc, labels=list(labels or {}))
    family.add_metric(list((labels or {}).values()), value)
    return family


def counters(name: str, doc: str, label: str, values: Mapping[str, float]) -> CounterMetricFamily:
    """A counter family with one label, one series per key of `values`."""
    family = CounterMetricFamily(name, doc, labels=[label])
    for key, value in sorted(values.items()):
        family.add_metric([key], value)
    return family


def gauges(name: str, doc: str, label: str, values: Mapping[str, float]) -> GaugeMetricFamily:
    family = GaugeMetricFamily(name, doc, labels=[label])
    for key, value in sorted(values.items()):
        family.add_metric([key], value)
    return family


class Metrics:
    """One process's registry: histograms it observes, and sources read at scrape time."""

    def __init__(self, service: str, node: str) -> None:
        self.service, self.node = service, node
        self.registry = CollectorRegistry()
        ProcessCollector(registry=self.registry)  # process_cpu_seconds_total, memory...
        self.sources: list[Source] = []
        self.loop: asyncio.AbstractEventLoop | None = None
        self.server: Any = None
        self.failed_sources = 0
        self.registry.register(_Snapshot(self))
        self.loop_lag = self.histogram(
            "zeroslee_loop_lag_seconds", "How late the event loop ran a 0.1 s timer", buckets=LAG_BUCKETS
        )

    def histogram(
        self, name: str, doc: str, labels: Sequence[str] = (), buckets: Sequence[float] = LATENCY_BUCKETS
    ) -> Histogram:
        return Histogram(name, doc, labels, registry=self.registry, buckets=buckets)

    def source(self, source: Source) -> None:
        self.sources.append(source)

    def serve(self, endpoint: str, loop: asyncio.AbstractEventLoop) -> None:
        """Start the HTTP thread on `endpoint` (host:port); OSError if it cannot bind."""
        host, port = parse_hostport(endpoint)
        self.loop = loop
        self.server, _ = start_http_server(port, host, registry=self.registry)

    def close(self) -> None:
        if self.server is not None:
            threading.Thread(target=self.server.shutdown, daemon=True).start()
            self.server.server_close()
            self.server = None

    def snapshot(self) -> list[Metric]:
        """Every source's families (on the loop's thread); a failing source costs only its own."""
        out: list[Metric] = []
        for source in self.sources:
            try:
                out.extend(source())
            except Exception:
                self.failed_sources += 1
        out.append(counter("zeroslee_metrics_source_failures", "Scrape-time sources that raised", self.failed_sources))
        return out


class _Snapshot:
    """The scrape-time collector: asks the loop for `Metrics.snapshot()`."""

    def __init__(self, metrics: Metrics) -> None:
        self.metrics = metrics

    def describe(self) -> list[Metric]:
        return []  # not collected at registration (that would ask a loop not yet running)

    def collect(self) -> Iterable[Metric]:
        metrics, loop = self.metrics, self.metrics.loop
        families: list[Metric] = []
        ok = 0
        if loop is not None and not loop.is_closed():
            result: concurrent.futures.Future[list[Metric]] = concurrent.futures.Future()

            def run() -> None:
                if result.set_running_or_notify_cancel():
                    result.set_result(metrics.snapshot())

            try:
                loop.call_soon_threadsafe(run)
                families, ok = result.result(timeout=SNAPSHOT_WAIT), 1
            except (concurrent.futures.TimeoutError, RuntimeError):
                result.cancel()
        yield gauge(
            "zeroslee_process_info",
            "This process: its service and node (value 1)",
            1,
            {"service": metrics.service, "node": metrics.node, "version": __version__},
        )
        yield gauge("zeroslee_metrics_snapshot_ok", "1 if the event loop answered this scrape", ok)
        yield from families


def process_families(counted: dict[str, int], bus: dict[str, int] | None = None) -> list[Metric]:
    """Every process's own counters (`zeroslee-admin stats` shows the same), as
    `zeroslee_events_total{event=...}`: bounded names such as `rejected.sip`."""
    events = CounterMetricFamily("zeroslee_events", "Counted happenings of this process", labels=["event"])
    for name, value in sorted(counted.items()):
        if not name.endswith("_ms"):  # a maximum, not a count
            events.add_metric([name], value)
    stalls = counter("zeroslee_loop_stalls", "Event-loop stalls over 20 ms", counted.get("loop.stalls", 0))
    out: list[Metric] = [events, stalls]
    if bus is not None:
        out.append(
            counters(
                "zeroslee_bus_messages",
                "Bus messages (ZeroMQ) this process sent and received",
                "direction",
                {"sent": bus["bus.sent"], "received": bus["bus.received"]},
            )
        )
        out.append(counter("zeroslee_bus_wakeups", "Event-loop wake-ups for bus sockets", bus["bus.wakeups"]))
    return out
