"""router shell: the sip-ra link, per-activity FIFO queues, commit-and-retry."""

from __future__ import annotations

import asyncio
import importlib
import random
import time

import msgspec
import structlog
import zmq

from router.container import Container, Service, TimerRecord, Transaction, decode_event
from router.sbb import Sbb, SipRequest, SipResponse, SleeError, TimerEvent
from zeroslee import bus, keys
from zeroslee.replica import ReplicaUnavailable
from zeroslee.runtime import Process, run
from zeroslee.storeclient import CommitFailed, StoreClient

MAX_ATTEMPTS = 12
STORE_ATTEMPTS = 3


def load_services(proc: Process) -> list[Service]:
    services = []
    for cfg in proc.config.services:
        module, _, name = cfg.sbb.partition(":")
        root = getattr(importlib.import_module(module), name)
        if not (isinstance(root, type) and issubclass(root, Sbb)):
            raise TypeError(f"{cfg.sbb} is not an Sbb class")
        services.append(Service(cfg.name, root, dict(cfg.options)))
    return services


class Router:
    def __init__(self, proc: Process) -> None:
        assert proc.node is not None
        self.proc = proc
        self.node = proc.config.node(proc.node)
        self.store = StoreClient(proc)
        self.container = Container(proc.node, load_services(proc))
        self.sock = proc.socket(zmq.ROUTER)
        self.sock.setsockopt(zmq.ROUTER_HANDOVER, 1)
        self.sock.bind(self.node.router)
        self.sip_ra = f"sip-ra:{proc.node}".encode()
        self.queues: dict[str, asyncio.Queue[tuple[msgspec.Struct, str | None]]] = {}
        self.tasks: set[asyncio.Future[None]] = set()

    async def serve(self) -> None:
        while True:
            ident, data = await self.sock.recv_multipart()
            try:
                message = bus.decode(data)
            except bus.BadMessage as exc:
                self.proc.reject("bus", exc, socket="router")
                continue
            match message:
                case bus.RequestReceived():
                    event = SipRequest(**msgspec.structs.asdict(message))
                    self.enqueue(message.activity, event, None)
                case bus.Ping(req=req):
                    await self.sock.send_multipart([ident, bus.encode(bus.Pong(req, "router", True))])
                case bus.StatsRequest(req=req):
                    reply = bus.StatsReply(req, "router", self.node.id, dict(self.proc.counters))
                    await self.sock.send_multipart([ident, bus.encode(reply)])
                case bus.ResponseReceived():
                    self.proc.count(f"response.{message.method}.{message.status}")
                    if message.dialog and message.status >= 200:
                        response = SipResponse(**msgspec.structs.asdict(message))
                        self.enqueue(message.dialog, response, None)
                case _:
                    self.proc.reject("unexpected", type(message).__name__, socket="router")

    def enqueue(self, activity: str, event: msgspec.Struct, pending_key: str | None) -> None:
        """One event at a time per activity, in arrival order; activities run in parallel."""
        queue = self.queues.get(activity)
        if queue is None:
            queue = self.queues[activity] = asyncio.Queue()
            task = asyncio.ensure_future(self.drain(activity, queue))
            self.tasks.add(task)
            task.add_done_callback(self.tasks.discard)
        queue.put_nowait((event, pending_key))

    async def drain(self, activity: str, queue: asyncio.Queue[tuple[msgspec.Struct, str | None]]) -> None:
        try:
            while not queue.empty():
                event, pending_key = queue.get_nowait()
                await self.deliver(activity, event, pending_key)
        except Exception:
            # A bug of ours, not bad input: crash, so the node fails over (STYLE: errors).
            self.proc.log.exception("delivery crashed", activity=activity)
            self.proc.crashed = True
            self.proc.stopping.set()
        finally:
            del self.queues[activity]

    async def deliver(self, activity: str, event: msgspec.Struct, pending_key: str | None) -> None:
        log = structlog.get_logger().bind(activity=activity, event_type=type(event).__name__)
        if isinstance(event, SipRequest):
            log = log.bind(call_id=event.call_id, method=event.method)
        started = time.monotonic()
        for attempt in range(1, MAX_ATTEMPTS + 1):
            try:
                with self.store.replica.read() as view:
                    tx = Transaction(view, self.node.id)
                    if pending_key is not None and tx.get(pending_key) is None:
                        self.proc.count("event.duplicate")
                        return  # delivered already, or a timer cancelled (journal, dedup by key)
                    if pending_key is not None:
                        tx.delete(pending_key)
                    outcome = self.container.deliver(tx, event, activity, now=time.time())
            except ReplicaUnavailable:
                return await self.fail(event, 503, "local replica not ready", log)
            except SleeError as exc:
                self.proc.count("delivery.rolled_back")
                return await self.fail(event, 500, f"{type(exc).__name__}: {exc}", log)
            if not tx.writes:  # read-only delivery: nothing to replicate
                await self.after_commit(tx)
                self.proc.count("delivery.ok")
                return
            try:
                result = await self.store.commit(
                    sorted(tx.reads.items()),
                    sorted(tx.writes.items()),
                    [(p, c, v) for p, (c, v) in sorted(tx.prefix_reads.items())],
                )
            except CommitFailed as exc:
                # The store refused or timed out (e.g. its primary just died): the commit's
                # fate is unknown, so re-run the delivery on fresh data, a bounded number of times.
                self.proc.count("delivery.store_unavailable")
                if attempt >= STORE_ATTEMPTS:
                    return await self.fail(event, 503, str(exc), log)
                continue
            if not result.ok:
                self.proc.count("delivery.conflict")
                await asyncio.sleep(random.uniform(0, 0.002 * attempt))  # back off, then re-read
                continue
            self.proc.count("delivery.ok")
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
            return
        await self.fail(event, 500, "too many conflicts", log)

    async def after_commit(self, tx: Transaction) -> None:
        """Effects leave only now that the commit is replicated (DESIGN §4)."""
        for message in tx.messages:
            await self.sock.send_multipart([self.sip_ra, bus.encode(message)])
        for pending in tx.fired:
            self.enqueue(pending.activity, decode_event(pending), keys.pending_event(pending.activity, pending.id))
        for timer in tx.timers:
            self.schedule(timer)

    def schedule(self, timer: TimerRecord) -> None:
        """Fire `timer` at its time as a TimerEvent, delivered only if its key still exists
        (a cancel or an earlier firing deleted it)."""
        delay = max(0.0, timer.fire_at - time.time())
        event = TimerEvent(timer.id, timer.activity, timer.fire_at)
        key = keys.timer(timer.activity, timer.id)
        asyncio.get_running_loop().call_later(delay, self.enqueue, timer.activity, event, key)

    def schedule_own_timers(self) -> None:
        """After a restart: this node's timers are in the store; arm them again."""
        try:
            with self.store.replica.read() as view:
                found = view.scan("tmr/")
        except ReplicaUnavailable:
            return
        for _, _, raw in found:
            timer = msgspec.msgpack.decode(raw, type=TimerRecord)
            if timer.owner == self.node.id:
                self.schedule(timer)

    async def fail(
        self, event: msgspec.Struct, status: int, reason: str, log: structlog.typing.FilteringBoundLogger
    ) -> None:
        self.proc.count("delivery.failed")
        log.warning("delivery failed", status=status, reason=reason)
        if isinstance(event, SipRequest):
            message = bus.DeliveryFailed(event.tx, status, reason)
            await self.sock.send_multipart([self.sip_ra, bus.encode(message)])


async def main(proc: Process) -> None:
    router = Router(proc)
    router.schedule_own_timers()
    async with asyncio.TaskGroup() as group:
        group.create_task(router.store.run())
        group.create_task(router.serve())


if __name__ == "__main__":
    run("router", main)
