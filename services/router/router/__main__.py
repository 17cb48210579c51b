"""router shell: the sip-ra link, per-activity FIFO queues, commit-and-retry, timers,
and taking over a dead node's activities and timers."""

from __future__ import annotations

import asyncio
import importlib
import json
import random
import time
from collections import deque
from collections.abc import Callable, Coroutine
from dataclasses import asdict
from typing import Any

import msgspec
import structlog
import zmq
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, SummaryMetricFamily

from router.adoption import adoptions, inherits
from router.container import Container, Outcome, Service
from router.lifecycle import ServiceError, evolution_errors
from router.profiles import ProfileError, load_tables, parse_row, write_row
from router.records import (
    ActivityRecord,
    AlarmRecord,
    Outgoing,
    PendingEvent,
    TimerRecord,
    Transaction,
    UnknownEventType,
    decode,
    encode,
)
from router.sbb import ActivityEndEvent, HandlerFailed, Sbb, SipRequest, SipResponse, SleeError
from router.tracer import parse_level
from zeroslee import bus, keys
from zeroslee.alarms import LEVELS as ALARM_LEVELS
from zeroslee.alarms import Alarms
from zeroslee.liveness import ADOPTION_READ_EVERY, Liveness, adoption_dead_after
from zeroslee.metrics import GROUP_BUCKETS, Metric, counter, counters, gauge, gauges
from zeroslee.replica import ReplicaUnavailable
from zeroslee.runtime import Process, follow_heartbeats, run
from zeroslee.storeclient import CommitFailed, StoreClient

MAX_ATTEMPTS = 12
MAX_BATCH = 32  # events of one activity delivered in one transaction at most
STORE_ATTEMPTS = 3
JOURNAL_RETRY = 0.5  # seconds (times the try) before a journaled event is tried again
JOURNAL_PATIENCE = 8  # tries (0.5 + 1 + ... + 3.5 s = 14 s) for one the store kept refusing
TIMER_SLACK = 0.002  # seconds added to a timer's delay (see `schedule`)
OUTGOING_SWEEP = 2.0  # seconds between looks for journaled requests our RA never sent
TIMER = object()  # queue marker: the pending key is a timer record's
UNREADABLE = object()  # queue marker: a journaled event of no declared type, to drop

Body = Callable[[Transaction], Outcome | None]


def load_services(proc: Process) -> list[Service]:
    return [Service(cfg.name, load_sbb(cfg.sbb), dict(cfg.options)) for cfg in proc.config.services]


def load_sbb(path: str) -> type[Sbb]:
    """The SBB class `path` ("module:Class") names, from the code installed on this node.
    Only the cluster file and an operator's `zeroslee-admin service upgrade` name one."""
    module, _, name = path.partition(":")
    try:
        root = getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError, ValueError) as exc:
        raise ServiceError(f"cannot load {path}: {exc}") from None
    if not (isinstance(root, type) and issubclass(root, Sbb)):
        raise ServiceError(f"{path} is not an Sbb class")
    return root


def batchable(event: object, pending_key: str | None) -> bool:
    """Events that may share a transaction with their neighbours in the queue: journaled
    events (a room's MessageEvents) and in-dialog INFO/MESSAGE requests. Nothing that
    creates or ends an activity (INVITE, BYE, CANCEL, responses, timers, management)."""
    if isinstance(event, SipRequest):
        return event.method in ("INFO", "MESSAGE") and event.activity_type == "sip-dialog" and not event.created_dialog
    if isinstance(event, ActivityEndEvent):
        return False
    return isinstance(event, msgspec.Struct) and pending_key is not None and pending_key.startswith("evt/")


class Router:
    def __init__(self, proc: Process) -> None:
        assert proc.node is not None
        self.proc = proc
        self.node = proc.config.node(proc.node)
        self.store = StoreClient(proc)
        self.container = Container(proc.node, load_services(proc), load_sbb)
        self.container.profile_tables = load_tables(proc.config.profiles)
        self.alarms = Alarms()  # services that keep failing, poison events dropped
        self.sock = proc.socket(zmq.ROUTER)
        self.sock.setsockopt(zmq.ROUTER_HANDOVER, 1)
        self.sock.bind(self.node.router)
        self.sip_ra = f"sip-ra:{proc.node}".encode()
        self.queues: dict[str, deque[tuple[object, str | None]]] = {}
        self.tasks: set[asyncio.Future[None]] = set()
        self.liveness = Liveness(adoption_dead_after(proc.config), proc.config.balancer.alive_after)
        self.live: list[str] = []
        # Work of a node lost (or already down when we start) that is not adopted yet;
        # acted on once we have listened long enough to have heard every live node.
        self.retries: dict[str, int] = {}  # journal key -> failed deliveries so far
        self.poisoned: dict[str, int] = {}  # journal key -> deliveries a service failed
        self.service_failed = False  # the last delivery failed in service code
        self.rollback_chosen = False  # the last delivery was rolled back by set_rollback_only
        self.orphans = True
        self.deployed_started = False  # ServiceStartedEvent for the cluster file's services
        self.outgoing_seen: set[str] = set()  # our journaled requests at the last sweep
        self.next_sweep = 0.0
        self.started = time.monotonic()
        self.grace = 2 * proc.config.balancer.dead_after + 3 * proc.config.heartbeat_interval
        self.delivered: dict[str, int] = {}  # service -> deliveries to its SBBs
        self.delivery_seconds = proc.metrics.histogram(
            "zeroslee_router_delivery_seconds", "An event's delivery: first read to replicated commit"
        )
        self.batch_size = proc.metrics.histogram(
            "zeroslee_router_batch_size", "Events of one activity delivered in one commit", buckets=GROUP_BUCKETS
        )
        proc.metrics.source(self.metric_families)
        self.trace_log = structlog.get_logger()
        self.alarm_queue: asyncio.Queue[tuple[str, str, AlarmRecord | None]] = asyncio.Queue()
        self.container.trace_sink = self.trace_line

    async def serve(self) -> None:
        while True:
            (ident, data), member = await self.sock.recv_from()
            try:
                message = bus.decode(data)
            except bus.BadMessage as exc:
                self.proc.reject("bus", exc, socket="router")
                continue
            if not self.proc.permits(self.sock, member, message):
                continue
            match message:
                case bus.RequestReceived():
                    event = SipRequest(**msgspec.structs.asdict(message))
                    self.enqueue(message.activity, event, None)
                case bus.Ping(req=req):
                    await self.sock.send_multipart([ident, bus.encode(bus.Pong(req, "router", True))])
                case bus.SetProfile():
                    self.spawn(self.set_profile(ident, message))
                case bus.SetTracer():
                    self.spawn(self.set_tracer(ident, message))
                case bus.ServiceChange():
                    self.spawn(self.change_service(ident, message))
                case bus.SetDrain():
                    self.spawn(self.set_drain(ident, message))
                case bus.TraceRequest():
                    await self.sock.send_multipart([ident, bus.encode(self.proc.traced(message))])
                case bus.StatsRequest(req=req):
                    stats: dict[str, int | str | float] = dict(self.proc.counters)
                    stats.update(self.proc.bus_counts())
                    stats.update(self.usage_stats())
                    stats["alarms"] = json.dumps([asdict(a) for a in self.alarms.active(time.monotonic())])
                    reply = bus.StatsReply(req, "router", self.node.id, stats)
                    await self.sock.send_multipart([ident, bus.encode(reply)])
                case bus.ResponseReceived():
                    self.proc.count(f"response.{message.method}.{message.status}")
                    if message.dialog and message.status > 100:  # finals, and an INVITE's 101-199
                        response = SipResponse(**msgspec.structs.asdict(message))
                        self.enqueue(message.dialog, response, None)
                case bus.EndActivity(req=req, activity=activity):
                    self.enqueue(activity, message, None)
                    await self.sock.send_multipart([ident, bus.encode(bus.Pong(req, "router", True))])
                case bus.StartActivity() | bus.FireEvent():
                    self.enqueue(message.activity, message, None)
                case bus.DialogEnded():
                    self.enqueue(message.dialog, message, None)  # after any delivery queued for it
                case _:
                    self.proc.reject("unexpected", type(message).__name__, socket="router")

    # --- queues ----------------------------------------------------------------------

    def enqueue(self, activity: str, event: object, pending_key: str | None) -> None:
        """One event at a time per activity, in arrival order; activities run in parallel."""
        queue = self.queues.get(activity)
        if queue is None:
            queue = self.queues[activity] = deque()
            task = asyncio.ensure_future(self.drain(activity, queue))
            self.tasks.add(task)
            task.add_done_callback(self.tasks.discard)
        queue.append((event, pending_key))

    async def drain(self, activity: str, queue: deque[tuple[object, str | None]]) -> None:
        try:
            while queue:
                batch = [queue.popleft()]
                while queue and len(batch) < MAX_BATCH and batchable(*batch[0]) and batchable(*queue[0]):
                    batch.append(queue.popleft())
                if len(batch) > 1 and await self.deliver_batch(activity, batch):
                    continue
                for event, pending_key in batch:  # alone, or the batch could not commit as one
                    await self.handle(activity, event, pending_key)
        except Exception:
            # A bug of ours, not bad input: crash, so the node fails over (STYLE: errors).
            self.proc.log.exception("delivery crashed", activity=activity)
            self.proc.crashed = True
            self.proc.stopping.set()
        finally:
            del self.queues[activity]

    async def deliver_batch(self, activity: str, batch: list[tuple[object, str | None]]) -> bool:
        """Deliver events queued together on one activity in one transaction and one
        commit, in their order (a busy room relays a burst of MessageEvents; a chatty
        dialog brings a burst of INFOs). Each is delivered exactly as it would be alone;
        the commit is shared. False if nothing was committed because one of them failed
        (its handler raised, the store refused): the caller then delivers them one by
        one, which answers or retries each on its own."""

        def body(tx: Transaction) -> Outcome:
            done = [o for event, key in batch if (o := self.deliver_one(tx, activity, event, key)) is not None]
            return Outcome(
                [sbb for o in done for sbb in o.delivered_to],
                [sbb for o in done for sbb in o.created],
                [sbb for o in done for sbb in o.loaded_remote],
                [name for o in done for name in o.stale_names],
                [service for o in done for service in o.services],
                [note for o in done for note in o.notes],
            )

        first = type(batch[0][0]).__name__
        log = structlog.get_logger().bind(activity=activity, event_type=first, batch=len(batch))
        if not await self.run(body, log, together=[event for event, _ in batch]):
            return False
        self.proc.count("delivery.batches")
        self.batch_size.observe(len(batch))
        self.proc.counters["delivery.batch_max"] = max(self.proc.counters.get("delivery.batch_max", 0), len(batch))
        for _, pending_key in batch:
            self.retries.pop(pending_key or "", None)
        return True

    def deliver_one(self, tx: Transaction, activity: str, event: object, pending_key: str | None) -> Outcome | None:
        """Deliver `event` in `tx`; None if it is a journaled event delivered already
        (at least once, dedup by its journal key, which the delivery deletes)."""
        assert isinstance(event, msgspec.Struct)
        if pending_key is not None:
            if tx.get(pending_key) is None:
                self.proc.count("event.duplicate")
                return None
            tx.delete(pending_key)
        return self.container.deliver(tx, event, activity, now=time.time())

    async def handle(self, activity: str, event: object, pending_key: str | None) -> None:
        log = structlog.get_logger().bind(activity=activity)
        if event is TIMER and pending_key is not None:
            self.proc.count("timer.fired")
            await self.run(
                lambda tx: self.container.fire_timer(tx, pending_key, time.time()), log.bind(event_type="TimerEvent")
            )
            return
        if event is UNREADABLE and pending_key is not None:
            await self.drop_journaled(pending_key, "its type is no deployed service's", log)
            return
        if isinstance(event, bus.EndActivity):
            await self.run(lambda tx: self.end(tx, activity), log.bind(event_type="EndActivity"))
            return
        if isinstance(event, bus.DialogEnded):
            ended = event
            await self.run(lambda tx: self.end_dialog(tx, ended), log.bind(event_type="DialogEnded"))
            return
        if isinstance(event, bus.StartActivity):
            started = event
            await self.run(lambda tx: self.start(tx, started), log.bind(event_type="StartActivity"))
            return
        if isinstance(event, bus.FireEvent):
            pending = PendingEvent(f"ra-{time.time_ns()}", event.activity, event.type, event.payload)
            try:
                event = self.decode_event(pending)
            except (UnknownEventType, ValueError, msgspec.DecodeError) as exc:
                self.proc.reject("event", exc, activity=activity, type=pending.type[:100])  # bad input: no crash
                return
        assert isinstance(event, msgspec.Struct)
        log = log.bind(event_type=type(event).__name__)
        if isinstance(event, SipRequest):
            log = log.bind(call_id=event.call_id, method=event.method, cseq=event.cseq)

        self.service_failed = self.rollback_chosen = False
        delivered = await self.run(lambda tx: self.deliver_one(tx, activity, event, pending_key), log, event)
        if not delivered and self.rollback_chosen and pending_key is not None and pending_key.startswith("evt/"):
            # The SBB rolled its delivery back on purpose: the event was delivered (JAIN
            # SLEE does not deliver it again); out of the journal, without an alarm.
            self.retries.pop(pending_key, None)
            self.poisoned.pop(pending_key, None)
            await self.forget_journaled(pending_key, log)
            return
        if delivered or pending_key is None or not pending_key.startswith("evt/"):
            self.retries.pop(pending_key or "", None)
            self.poisoned.pop(pending_key or "", None)
            return
        # A journaled event whose delivery could not commit stays in the journal: tried
        # again later, a bounded number of times. A service that raised on it
        # `[router] journal_tries` times makes it poison; a store that was unavailable (an
        # election) or conflicts get more patience, since the text is not at fault.
        tries = self.retries[pending_key] = self.retries.get(pending_key, 0) + 1
        failed = self.poisoned[pending_key] = self.poisoned.get(pending_key, 0) + int(self.service_failed)
        if failed < self.proc.config.router.journal_tries and tries < JOURNAL_PATIENCE:
            self.proc.count("event.retried")
            asyncio.get_running_loop().call_later(JOURNAL_RETRY * tries, self.enqueue, activity, event, pending_key)
            return
        log.error("poison event dropped", key=pending_key, tries=tries, service_failures=failed)
        del self.retries[pending_key], self.poisoned[pending_key]
        await self.drop_journaled(pending_key, f"dropped after {tries} failed deliveries", log)

    async def drop_journaled(self, key: str, why: str, log: structlog.typing.FilteringBoundLogger) -> None:
        """Take a journaled event out of the journal, so that its activity can end."""
        self.proc.count("event.dropped")
        self.alarms.raise_now("journal", f"{key}: {why}", time.monotonic())
        await self.forget_journaled(key, log)

    async def forget_journaled(self, key: str, log: structlog.typing.FilteringBoundLogger) -> None:
        """Delete a journaled event (its delivery is over, one way or another)."""

        def drop(tx: Transaction) -> Outcome:
            tx.delete(key)
            return Outcome([], [], [], [])

        await self.run(drop, log.bind(event_type="DroppedEvent"))

    def decode_event(self, pending: PendingEvent) -> msgspec.Struct:
        """A fired event, as one of the deployed services' event types; a type this
        router has not met yet may be a new version's (service upgrade on another node):
        the services' record is read again first."""
        try:
            return self.container.event_types.decode(pending)
        except UnknownEventType:
            try:
                with self.store.replica.read() as view:
                    self.container.services_in(Transaction(view, self.node.id))
            except (ReplicaUnavailable, SleeError):
                pass
            return self.container.event_types.decode(pending)

    def enqueue_journaled(self, pending: PendingEvent, pending_key: str) -> None:
        """A journaled event, decoded through the deployed services' event types only."""
        try:
            event = self.decode_event(pending)
        except (UnknownEventType, ValueError, msgspec.DecodeError) as exc:
            self.proc.reject("event", exc, activity=pending.activity, type=pending.type[:100])
            self.enqueue(pending.activity, UNREADABLE, pending_key)
            return
        self.enqueue(pending.activity, event, pending_key)

    def start(self, tx: Transaction, message: bus.StartActivity) -> Outcome | None:
        if tx.get(keys.activity(message.activity)) is not None:
            return None
        record = ActivityRecord(message.activity, message.kind, self.node.id)
        tx.put(keys.activity(message.activity), encode(record))
        return Outcome([], [], [], [])

    def end_dialog(self, tx: Transaction, ended: bus.DialogEnded) -> Outcome:
        for key in ended.keys:  # the RA's data, even if no activity was ever created
            tx.delete(key)
        return self.end(tx, ended.dialog)

    def end(self, tx: Transaction, activity: str) -> Outcome:
        return self.container.end(tx, activity, time.time())

    # --- transactions --------------------------------------------------------------

    async def run(
        self,
        body: Body,
        log: structlog.typing.FilteringBoundLogger,
        event: object = None,
        together: list[object] | None = None,
    ) -> bool:
        """Run `body` in a transaction on fresh data until its commit succeeds (bounded).
        False when it gave up (the failure was answered or logged). With `together` (the
        events a batch's `body` delivers), any failure returns False at once, answering
        nothing: the caller then delivers the events one by one."""
        started = time.monotonic()
        for attempt in range(1, MAX_ATTEMPTS + 1):
            try:
                with self.store.replica.read() as view:
                    tx = Transaction(view, self.node.id)
                    try:
                        outcome = body(tx)
                    finally:
                        self.take_alarm_ops()  # not transactional: raised even if rolled back
            except (ReplicaUnavailable, HandlerFailed, SleeError) as exc:
                if together is None:
                    await self.refused(exc, event, log)
                return False
            if outcome is None:
                return True
            if not tx.writes:  # read-only delivery: nothing to replicate
                await self.after_commit(tx)
                self.count_delivery(event, together, outcome)
                return True
            try:
                result = await self.commit(tx)
            except CommitFailed as exc:
                # The store refused or timed out (e.g. its primary just died): the commit's
                # fate is unknown, so re-run the delivery on fresh data, a bounded number of times.
                self.proc.count("delivery.store_unavailable")
                if together is not None:
                    return False
                if attempt >= STORE_ATTEMPTS:
                    await self.fail(event, 503, str(exc), log)
                    return False
                continue
            if not result.ok:
                self.proc.count("delivery.conflict")
                await asyncio.sleep(random.uniform(0, 0.002 * attempt))  # back off, then re-read
                continue
            self.count_delivery(event, together, outcome)
            self.delivery_seconds.observe(time.monotonic() - started)
            log.info(
                "delivered",
                seq=result.seq,
                attempts=attempt,
                to=outcome.delivered_to,
                created=outcome.created,
                loaded_remote=outcome.loaded_remote,
                fired=len(tx.fired),
                ms=round((time.monotonic() - started) * 1000, 2),
            )
            await self.after_commit(tx)
            return True
        if together is None:
            await self.fail(event, 500, "too many conflicts", log)
        return False

    async def refused(self, exc: Exception, event: object, log: structlog.typing.FilteringBoundLogger) -> None:
        """A delivery that could not run: answer it (a SIP request) and log it."""
        if isinstance(exc, ReplicaUnavailable):
            await self.fail(event, 503, "local replica not ready", log)
            return
        self.proc.count("delivery.rolled_back")
        if isinstance(exc, HandlerFailed) and exc.requested:  # set_rollback_only: the SBB's choice
            self.proc.count("delivery.rollback_requested")
            self.rollback_chosen = True
            await self.cleanup_after(exc, log)
            await self.fail(event, 500, "rolled back by the service", log)
        elif isinstance(exc, HandlerFailed):
            self.service_failed = True
            self.proc.count(f"service.failed.{exc.service or 'unknown'}")
            self.alarms.failed(exc.service, str(exc), time.monotonic())
            await self.cleanup_after(exc, log)
            await self.fail(event, 500, str(exc), log)
        else:
            await self.fail(event, 500, f"{type(exc).__name__}: {exc}", log)

    def count_delivery(self, event: object, together: list[object] | None, outcome: Outcome) -> None:
        """Routing statistics per event type (zeroslee-admin routing) and per service
        (metrics), and the trace records of what ran where."""
        for one in together if together is not None else [event]:
            self.proc.count("delivery.ok")
            self.proc.count(f"delivered.{type(one).__name__ if one is not None else 'Internal'}")
        for service in outcome.services:
            self.delivered[service] = self.delivered.get(service, 0) + 1
        here, now = f"{self.node.id}/router", time.time()
        for key, whom, what in outcome.notes:
            self.proc.trace.record(key, here, whom, what, now)

    def sbb_alarm_family(self) -> Metric:
        """The alarms SBBs raised, cluster-wide (this node's replica), by service and level."""
        family = GaugeMetricFamily(
            "zeroslee_sbb_alarms", "Alarms SBBs raised, cluster-wide", labels=["service", "level"]
        )
        held: dict[tuple[str, str], int] = {(s.name, lv): 0 for s in self.container.services for lv in ALARM_LEVELS}
        for _, raw in self.scan(keys.ALARMS):
            try:
                record = decode(raw, AlarmRecord)
            except msgspec.DecodeError:
                continue
            held[(record.service, record.level)] = held.get((record.service, record.level), 0) + 1
        for (service, level), n in sorted(held.items()):
            family.add_metric([service, level], n)
        return family

    def usage_families(self) -> list[Metric]:
        """The services' usage parameters (router/usage.py), as this router counted them."""
        counted = CounterMetricFamily(
            "zeroslee_usage_counter", "Usage counters SBBs updated, per service", labels=["service", "name"]
        )
        sampled = SummaryMetricFamily("zeroslee_usage_sample", "Usage samples SBBs took", labels=["service", "name"])
        low = GaugeMetricFamily("zeroslee_usage_sample_min", "Smallest usage sample", labels=["service", "name"])
        high = GaugeMetricFamily("zeroslee_usage_sample_max", "Largest usage sample", labels=["service", "name"])
        for service, params in sorted(self.container.usage.items()):
            for name, n in sorted(params.counters.items()):
                counted.add_metric([service, name], n)
            for name, s in sorted(params.samples.items()):
                sampled.add_metric([service, name], s.count, s.total)
                low.add_metric([service, name], s.low)
                high.add_metric([service, name], s.high)
        return [counted, sampled, low, high]

    def usage_stats(self) -> dict[str, int | str | float]:
        out: dict[str, int | str | float] = {}
        for service, params in self.container.usage.items():
            for name, n in params.counters.items():
                out[f"usage.{service}.{name}"] = n
            for name, s in params.samples.items():
                out.update({f"usage.{service}.{name}.{k}": v for k, v in (("count", s.count), ("sum", s.total))})
                out.update({f"usage.{service}.{name}.{k}": v for k, v in (("min", s.low), ("max", s.high))})
        return out

    def metric_families(self) -> list[Metric]:
        names = [s.name for s in self.container.services]
        failed = {name: self.proc.counters.get(f"service.failed.{name}", 0) for name in names}
        alarms = self.alarms.active(time.monotonic())
        raised = {name: sum(1 for a in alarms if a.source == name) for name in names}
        return [
            counters(
                "zeroslee_sbb_deliveries",
                "Events delivered to SBBs, by service",
                "service",
                {name: self.delivered.get(name, 0) for name in names},
            ),
            counters(
                "zeroslee_sbb_rollbacks",
                "Deliveries rolled back because the service's code raised, by service",
                "service",
                failed,
            ),
            gauges("zeroslee_service_alarms", "Alarms raised now, by service", "service", raised),
            gauge("zeroslee_alarms", "Alarms raised now in this router (services and poison events)", len(alarms)),
            self.sbb_alarm_family(),
            *self.usage_families(),
            gauge("zeroslee_router_queued_activities", "Activities with events waiting", len(self.queues)),
            counter(
                "zeroslee_router_commit_conflicts",
                "Deliveries re-run after a version conflict",
                self.proc.counters.get("delivery.conflict", 0),
            ),
        ]

    async def commit(self, tx: Transaction) -> bus.CommitResult:
        prefix_reads = [(p, c, v) for p, (c, v) in sorted(tx.prefix_reads.items())]
        return await self.store.commit(sorted(tx.reads.items()), sorted(tx.writes.items()), prefix_reads)

    async def cleanup_after(self, failure: HandlerFailed, log: structlog.typing.FilteringBoundLogger) -> None:
        """After a rollback: the SBB's rolled-back hook runs in a new transaction, and
        stale names found by the failed delivery are removed all the same (DESIGN §5)."""
        stale = list(self.container.stale_names)

        def body(tx: Transaction) -> Outcome:
            self.container.stale_names = stale
            self.container.remove_stale_names(tx)
            self.container.ending = set()
            self.container.roll_back(tx, failure, "")
            return Outcome([], [], [], stale)

        await self.run(body, log.bind(event_type="RolledBack"))
        for hook in self.container.hook_failures:  # a failing rolled_back: logged, counted, no further
            self.proc.count("service.rolled_back_failed")
            self.alarms.failed(hook.service, str(hook), time.monotonic())
            log.warning("rolled_back hook failed", sbb=hook.sbb_id, error=str(hook))
        self.container.hook_failures.clear()

    async def fail(self, event: object, status: int, reason: str, log: structlog.typing.FilteringBoundLogger) -> None:
        self.proc.count("delivery.failed")
        log.warning("delivery failed", status=status, reason=reason)
        if isinstance(event, SipRequest):
            message = bus.DeliveryFailed(event.tx, status, reason)
            await self.sock.send_multipart([self.sip_ra, bus.encode(message)])

    async def after_commit(self, tx: Transaction) -> None:
        """Effects leave only now that the commit is replicated (DESIGN §4)."""
        for message in tx.messages:
            await self.sock.send_multipart([self.sip_ra, bus.encode(message)])
        for pending in tx.fired:
            self.enqueue_journaled(pending, keys.pending_event(pending.activity, pending.id))
        for timer in tx.timers:
            self.schedule(timer)

    # --- timers and ownership -----------------------------------------------------

    def schedule(self, timer: TimerRecord) -> None:
        """Fire `timer` when due; the firing transaction re-reads it, so a timer cancelled
        or already fired (its record gone or moved on) does nothing."""
        # uvloop's timers have millisecond resolution and may wake a little early: an early
        # wake-up finds the timer not yet due and re-arms it (a wasted delivery), so aim late.
        delay = max(0.0, timer.fire_at - time.time()) + TIMER_SLACK
        key = keys.timer(timer.activity, timer.id)
        asyncio.get_running_loop().call_later(delay, self.enqueue, timer.activity, TIMER, key)

    def scan(self, prefix: str) -> list[tuple[str, bytes]]:
        try:
            with self.store.replica.read() as view:
                return [(k, raw) for k, _, raw in view.scan(prefix)]
        except ReplicaUnavailable:
            return []

    def take_alarm_ops(self) -> None:
        """The alarms SBBs raised or cleared (ctx.alarms), to the store in their order."""
        if self.container.alarm_ops:
            for op in self.container.alarm_ops:
                self.alarm_queue.put_nowait(op)
            self.container.alarm_ops.clear()

    async def write_alarms(self) -> None:
        """One writer, so a raise and the clear after it reach the store in that order;
        what waits together goes in one commit. Tried a few times if the store refuses."""
        while True:
            ops = [await self.alarm_queue.get()]
            while not self.alarm_queue.empty():
                ops.append(self.alarm_queue.get_nowait())
            writes = {keys.alarm(service, ident): (encode(rec) if rec else None) for service, ident, rec in ops}
            for attempt in range(STORE_ATTEMPTS):
                try:
                    result = await self.store.commit([], sorted(writes.items()))
                except CommitFailed:
                    result = None
                if result is not None and result.ok:
                    self.proc.count("alarms.written", len(ops))
                    break
                await asyncio.sleep(JOURNAL_RETRY * (attempt + 1))
            else:
                self.proc.count("alarms.lost", len(ops))
                self.proc.log.warning("alarms not stored", alarms=[f"{s}:{i}" for s, i, _ in ops])

    def spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.ensure_future(coro)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    def trace_line(self, service: str, sbb: str, level: str, message: str, fields: dict[str, object]) -> None:
        """A service's trace (router/tracer.py): one structured line, emitted at once."""
        self.trace_log.info("trace", service=service, sbb=sbb, trace_level=level, message=message, **fields)

    def load_trace_levels(self) -> None:
        """The services' trace levels as the cluster holds them (set by any router)."""
        for key, raw in self.scan(keys.TRACERS):
            service = keys.last(key)
            try:
                level = parse_level(raw.decode())
            except (ValueError, UnicodeDecodeError):
                continue
            if service in self.container.by_service:
                self.container.trace_levels[service] = level

    async def answer_admin(self, ident: bytes, req: int, error: str) -> None:
        """A management command's answer: `Pong`, or a `StatsReply` carrying `error`."""
        reply: bus.Message = (
            bus.StatsReply(req, "router", self.node.id, {"error": error}) if error else bus.Pong(req, "router", True)
        )
        await self.sock.send_multipart([ident, bus.encode(reply)])

    async def set_profile(self, ident: bytes, message: bus.SetProfile) -> None:
        """Management: one profile row written or removed, checked against its schema, its
        change fired on the table's activity in the same commit."""
        error = ""
        try:
            tables = self.container.profile_tables
            if message.table not in tables:
                raise ProfileError(f"no profile table {message.table!r} (tables: {', '.join(tables) or 'none'})")
            row = None if message.remove else parse_row(tables, message.table, message.value)
        except ProfileError as exc:
            error = str(exc)
        else:

            def body(tx: Transaction) -> Outcome:
                write_row(tx, message.table, message.key, row, self.node.id, self.container.next_event_id())
                return Outcome([], [], [], [])

            log = structlog.get_logger().bind(event_type="SetProfile", table=message.table, key=message.key)
            try:
                if not await self.run(body, log):
                    error = "the store did not take it (see the router's log)"
            except ProfileError as exc:
                error = str(exc)
        await self.answer_admin(ident, message.req, error)

    async def change_service(self, ident: bytes, message: bus.ServiceChange) -> None:
        """Management: a service's lifecycle (router/lifecycle.py), or with `check`, whether
        this router has the new code and its State may take over the old one's entities."""
        said: dict[str, int | str | float] = {}
        log = structlog.get_logger().bind(event_type="ServiceChange", service=message.service, action=message.action)
        try:
            if message.check:
                said["result"] = self.check_upgrade(message.service, message.sbb)
            else:
                result: list[str] = []

                def body(tx: Transaction) -> Outcome:
                    result[:] = [self.container.change_service(tx, message.service, message.action, message.sbb)]
                    return Outcome([], [], [], [])

                if not await self.run_management(body, log):
                    raise ServiceError("the store did not take it (see the router's log)")
                said["result"] = result[0]
                log.info("service changed", sbb=message.sbb, result=result[0])
        except ServiceError as exc:
            said["error"] = str(exc)
            log.warning("service change refused", sbb=message.sbb, error=str(exc))
        reply = bus.StatsReply(message.req, "router", self.node.id, said)
        await self.sock.send_multipart([ident, bus.encode(reply)])

    def check_upgrade(self, service: str, sbb: str) -> str:
        try:
            with self.store.replica.read() as view:
                current = self.container.services_in(Transaction(view, self.node.id)).get(service)
        except ReplicaUnavailable as exc:
            raise ServiceError(f"{self.node.id}: {exc}") from None
        if current is None:
            raise ServiceError(f"no service {service!r} (deployed: {', '.join(self.container.by_service)})")
        new = load_sbb(sbb)
        errors = evolution_errors(current.root, new)
        if errors:
            raise ServiceError(f"{service}: {sbb} cannot take over its entities: " + "; ".join(errors))
        return "new schema" if errors is None else "evolution"

    async def run_management(self, body: Callable[[Transaction], Outcome], log: Any) -> bool:
        """`run` for a management body that may raise ServiceError: raised again here,
        not taken for a failed delivery."""
        refused: list[ServiceError] = []

        def guarded(tx: Transaction) -> Outcome | None:
            try:
                return body(tx)
            except ServiceError as exc:
                refused.append(exc)
                return None

        done = await self.run(guarded, log)
        if refused:
            raise refused[-1]
        return done

    async def start_deployed(self) -> bool:
        """A ServiceStartedEvent for each deployed service that takes one, at the
        cluster's first start (whichever router commits first; the other finds it done)."""
        started: list[str] = []

        def body(tx: Transaction) -> Outcome | None:
            started[:] = self.container.start_deployed(tx)
            return Outcome([], [], [], []) if started else None

        done = await self.run(body, structlog.get_logger().bind(event_type="ServiceStarted"))
        if done and started:
            self.proc.log.info("services started", services=started)
        return done

    async def settle_services(self) -> None:
        """Stopping services whose last root entity went are inactive; old generations
        without entities are forgotten (router/lifecycle.py)."""
        changes: list[str] = []

        def body(tx: Transaction) -> Outcome | None:
            changes[:] = self.container.settle_services(tx)
            return Outcome([], [], [], []) if changes else None

        if await self.run(body, structlog.get_logger().bind(event_type="SettleServices")) and changes:
            self.proc.log.info("services settled", changes=changes)

    async def set_drain(self, ident: bytes, message: bus.SetDrain) -> None:
        """Management: `drain/<node>` written (drained) or removed; the node's sip-ra reads
        it and says so in its heartbeats, from which every process learns it."""
        error = ""
        if message.node not in self.proc.config.node_ids:
            error = f"no node {message.node!r} (nodes: {', '.join(self.proc.config.node_ids)})"
        else:
            write = (keys.drain(message.node), b"1" if message.draining else None)
            try:
                result = await self.store.commit([], [write])
                if not result.ok:
                    error = f"store refused: {result.error or result.conflicts}"
            except CommitFailed as exc:
                error = f"store unavailable: {exc}"
            self.proc.log.info("drain", node=message.node, draining=message.draining, error=error)
        await self.answer_admin(ident, message.req, error)

    async def set_tracer(self, ident: bytes, message: bus.SetTracer) -> None:
        """Management: a service's trace level, here at once (and in the store if asked)."""
        error = ""
        try:
            level = parse_level(message.level)
            if message.service not in self.container.by_service:
                raise ValueError(f"no service {message.service!r} (deployed: {', '.join(self.container.by_service)})")
        except ValueError as exc:
            error = str(exc)
        else:
            self.container.trace_levels[message.service] = level
            self.proc.log.info("trace level", service=message.service, level=level)
            if message.store:
                try:
                    result = await self.store.commit([], [(keys.tracer(message.service), level.encode())])
                    if not result.ok:
                        error = f"store refused: {result.error or result.conflicts}"
                except CommitFailed as exc:
                    error = f"store unavailable: {exc}"
        await self.answer_admin(ident, message.req, error)

    def schedule_own_timers(self) -> None:
        """After a restart: this node's timers are in the store; arm them again."""
        for _, raw in self.scan("tmr/"):
            timer = decode(raw, TimerRecord)
            if timer.owner == self.node.id:
                self.schedule(timer)

    async def watch(self) -> None:
        """Follow the nodes' heartbeats; when one dies, take over our share of its work."""
        # Adoption judges silence over a second: the beats are read in batches (runtime).
        every = ADOPTION_READ_EVERY * self.proc.config.heartbeat_interval
        await follow_heartbeats(self.proc, self.liveness, self.check_losses, every=every)

    async def check_losses(self) -> None:
        live = self.liveness.eligible(time.monotonic())  # a drained node's work goes too
        if live != self.live:
            lost = sorted(set(self.live) - set(live))
            self.live = live
            if lost:
                self.proc.log.info("nodes lost", lost=lost, live=live)
                self.orphans = True
        settled = time.monotonic() - self.started > self.grace
        if self.orphans and settled and self.node.id in self.live:
            self.orphans = not await self.adopt()  # retried until one pass fully succeeds
        if not self.deployed_started and settled and self.node.id in self.live:
            self.deployed_started = await self.start_deployed()
        if time.monotonic() >= self.next_sweep:
            self.next_sweep = time.monotonic() + OUTGOING_SWEEP
            if self.liveness.draining(time.monotonic()):
                self.orphans = True  # a drained node may still create work: look again
            self.load_trace_levels()  # a level set while we were down, or a message we missed
            await self.sweep_outgoing()
            await self.settle_services()

    async def sweep_outgoing(self) -> None:
        """Our own journaled requests, and those of dead nodes we adopted, still there a
        whole sweep later: the RA never got them (it restarted: our ROUTER socket drops
        what is addressed to a peer that is not connected) or could not commit them (the
        store was electing). Hand them over again; the RA's version
        check on the journal entry keeps a slow first copy and this one from both going."""
        present: set[str] = set()
        for key, raw in self.scan("out/"):
            outgoing = decode(raw, Outgoing)
            mine = outgoing.node == self.node.id
            if not mine and not inherits(self.node.id, self.live, outgoing.node, keys.dialog_of_outgoing(key)):
                continue
            present.add(key)
            if key in self.outgoing_seen:
                self.proc.count("outgoing.resent")
                await self.sock.send_multipart([self.sip_ra, outgoing.request])
        self.outgoing_seen = present

    async def adopt(self) -> bool:
        """Take over our share of dead nodes' activities and timers; True if all went."""
        found = adoptions(
            self.node.id, self.live, self.scan("aci/"), self.scan("tmr/"), self.scan("evt/"), self.scan("out/")
        )
        for _, outgoing in found.outgoing:
            self.proc.count("adopted.outgoing")  # journaled by a dead node, maybe never sent
            await self.sock.send_multipart([self.sip_ra, outgoing.request])
        complete = True
        for key, activity in found.activities:
            moved = msgspec.structs.replace(activity, owner=self.node.id)
            if await self.take(key, encode(moved)):
                self.proc.count("adopted.activities")
                for pending_key, raw in self.scan(keys.pending_events_of(activity.id)):
                    self.proc.count("adopted.events")  # in flight when their node died
                    self.enqueue_journaled(decode(raw, PendingEvent), pending_key)
            else:
                complete = False
        for pending_key, event in found.events:
            self.proc.count("adopted.events")  # fired by a dead node on a live node's activity
            self.enqueue_journaled(event, pending_key)
        for key, timer in found.timers:
            moved_timer = msgspec.structs.replace(timer, owner=self.node.id)
            if await self.take(key, encode(moved_timer)):
                self.proc.count("adopted.timers")
                self.schedule(moved_timer)
            else:
                complete = False
        return complete

    async def take(self, key: str, value: bytes) -> bool:
        """Record this node as owner, unless the record changed since we read it."""
        try:
            with self.store.replica.read() as view:
                version, raw = view.get(key)
            if raw is None:
                return True  # gone meanwhile: nothing left to adopt
            return (await self.store.commit([(key, version)], [(key, value)])).ok
        except (CommitFailed, ReplicaUnavailable) as exc:
            self.proc.log.warning("adoption failed", key=key, error=str(exc))
            return False


async def main(proc: Process) -> None:
    router = Router(proc)
    router.schedule_own_timers()
    async with asyncio.TaskGroup() as group:
        group.create_task(router.store.run())
        group.create_task(router.serve())
        group.create_task(router.watch())
        group.create_task(router.write_alarms())


if __name__ == "__main__":
    run("router", main)
