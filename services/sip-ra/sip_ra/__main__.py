"""sip-ra shell: UDP SIP socket, the router link, dialog replication, heartbeats."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Coroutine
from typing import Any

import msgspec
import zmq

from sip_ra.core import Outcome, RaCore
from sip_ra.dialog import Dialog, uac_dialog
from zeroslee import bus, keys
from zeroslee.ftra import FaultTolerance, ReplicatedData
from zeroslee.replica import ReplicaUnavailable
from zeroslee.runtime import Process, run, serve_control
from zeroslee.storeclient import CommitFailed, StoreClient

ROUTER_ANSWER_TIMEOUT = 8.0  # a request the router never answers gets 500 after this
COMMIT_ATTEMPTS = 8


class SipRa(asyncio.DatagramProtocol):
    def __init__(self, proc: Process) -> None:
        assert proc.node is not None
        self.proc = proc
        self.node = proc.config.node(proc.node)
        self.store = StoreClient(proc)
        self.dialogs = ReplicatedData("sip", proc.node, self.store)  # keys.dialog(id) entries
        self.tolerance = FaultTolerance(proc, self.dialogs, self, poll_every=1.0)
        self.core = RaCore(proc.node, self.node.sip, proc.config.sip, self.read)
        self.router = proc.socket(zmq.DEALER)
        self.router.setsockopt(zmq.ROUTING_ID, f"sip-ra:{proc.node}".encode())
        self.router.connect(self.node.router)
        self.heartbeat = proc.socket(zmq.PUB)
        self.heartbeat.bind(self.node.heartbeat)
        self.transport: asyncio.DatagramTransport | None = None
        self.wake = asyncio.Event()
        self.router_seen = 0.0
        self.ping_id = 0
        self.tasks: set[asyncio.Future[None]] = set()
        self.answer_timers: dict[str, asyncio.TimerHandle] = {}

    # --- UDP -----------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        outcome = self.core.receive_datagram(data, addr, time.monotonic())
        self.flush()
        if outcome.event is not None:
            self.spawn(self.forward(outcome))
        elif outcome.summary.startswith("rejected"):
            self.proc.reject("sip", outcome.summary, peer=f"{addr[0]}:{addr[1]}")

    def error_received(self, exc: Exception) -> None:
        self.proc.count("sip.transport_error")

    def flush(self) -> None:
        assert self.transport is not None
        for data, peer in self.core.datagrams_to_send():
            try:
                self.transport.sendto(data, peer)
            except OSError as exc:  # e.g. no route: the transactions to that peer fail
                self.proc.log.warning("transport error", peer=f"{peer[0]}:{peer[1]}", error=str(exc))
                self.core.transport_error(peer, time.monotonic())
        self.wake.set()

    def spawn(self, coro: Coroutine[Any, Any, Any]) -> None:
        task = asyncio.ensure_future(coro)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    def read(self, key: str) -> bytes | None:
        """A key of the clustered store for the core; dialogs come out of their entries."""
        if key.startswith(self.dialogs.prefix):
            return self.dialogs.get(key[len(self.dialogs.prefix) :])
        try:
            with self.store.replica.read() as view:
                return view.get(key)[1]
        except ReplicaUnavailable:
            return None

    # --- the fault-tolerant RA interface, for dialogs ------------------------------

    def fail_over(self, key: str) -> None:
        """We own a dead node's dialog now; drop any cached copy, the store's is current."""
        self.core.forget_dialog(key)
        self.proc.count("dialogs.adopted")

    def data_removed(self, key: str) -> None:
        """Another node ended this dialog: do not serve it from the cache any more."""
        self.core.forget_dialog(key)

    def timer_fired(self, key: str) -> None:
        pass  # the SIP RA keeps no fault-tolerant timers of its own yet

    async def forward(self, outcome: Outcome) -> None:
        """Replicate a new dialog, then hand the event to the router (DESIGN §3.1)."""
        event = outcome.event
        if isinstance(event, bus.RequestReceived) and outcome.new_dialog is not None:
            d = outcome.new_dialog
            index = [(k, d.id.encode()) for k in event.ra_keys]
            try:
                await self.store.commit([(keys.dialog(d.id), 0)], [self.dialogs.write_of(d.id, d.encode()), *index])
            except CommitFailed as exc:
                self.answer(event.tx, 503, "Service Unavailable", str(exc) or "store unavailable")
                return
        elif outcome.new_dialog is not None:  # a UAC dialog confirmed by its 2xx
            if not await self.replace_dialog(outcome.new_dialog):
                return
        if isinstance(event, bus.RequestReceived):
            loop = asyncio.get_running_loop()
            self.answer_timers[event.tx] = loop.call_later(
                ROUTER_ANSWER_TIMEOUT, self.answer, event.tx, 500, "Server Internal Error", "router timeout"
            )
        await self.router.send(bus.encode(event))  # type: ignore[arg-type]

    def answer(self, tx: str, status: int, reason: str, why: str = "", **kw: object) -> None:
        timer = self.answer_timers.pop(tx, None) if status >= 200 else None
        if timer is not None:
            timer.cancel()
        pending = self.core.pending.get(tx)
        if pending is None:
            return
        request = pending.request
        if why and status >= 300 and request.method == "INVITE" and pending.dialog is not None:
            # We answer the INVITE ourselves (the router failed or was too slow): the dialog
            # never was. Let the router end it, even if its delivery commits after all.
            ended = bus.DialogEnded(pending.dialog.id, [keys.dialog(pending.dialog.id)])
            self.spawn(self.tell_router(ended))
            self.core.forget_dialog(pending.dialog.id)
        self.core.respond(tx, status, reason, time.monotonic(), **kw)  # type: ignore[arg-type]
        self.flush()
        if status >= 200:
            self.proc.log.info(
                "transaction",
                method=request.method,
                status=status,
                call_id=request.call_id,
                **({"why": why} if why else {}),
            )

    # --- router link ---------------------------------------------------------------

    async def tell_router(self, message: bus.Message) -> None:
        await self.router.send(bus.encode(message))

    async def serve_router(self) -> None:
        while True:
            data = await self.router.recv()
            try:
                message = bus.decode(data)
            except bus.BadMessage as exc:
                self.proc.reject("bus", exc, socket="router")
                continue
            self.router_seen = time.monotonic()
            match message:
                case bus.SendResponse(tx=tx, status=status, reason=reason):
                    self.answer(
                        tx,
                        status,
                        reason,
                        headers=list(message.headers),
                        body=message.body,
                        content_type=message.content_type,
                    )
                case bus.DeliveryFailed(tx=tx, status=status, reason=reason):
                    self.answer(tx, status, "", why=reason)
                case bus.SendRequest():
                    self.spawn(self.send_in_dialog(message))
                case bus.Pong():
                    pass
                case _:
                    self.proc.reject("unexpected", type(message).__name__, socket="router")

    async def replace_dialog(self, dialog: Dialog) -> bool:
        """Write `dialog` over the stored one, keeping the larger local CSeq and the owner."""
        for _ in range(COMMIT_ATTEMPTS):
            version, entry = self.dialogs.read_entry(dialog.id)
            owner = entry.owner if entry is not None else None
            if entry is not None:
                stored_cseq = Dialog.decode(entry.value).local_cseq
                dialog = msgspec.structs.replace(dialog, local_cseq=max(dialog.local_cseq, stored_cseq))
            try:
                write = self.dialogs.write_of(dialog.id, dialog.encode(), owner)
                if (await self.store.commit([(keys.dialog(dialog.id), version)], [write])).ok:
                    return True
            except CommitFailed as exc:
                self.proc.log.warning("dialog not replicated", dialog=dialog.id, error=str(exc))
                return False
        return False

    async def send_initial_invite(self, cmd: bus.SendRequest) -> None:
        """The INVITE that creates a UAC dialog: replicate the dialog, then send it via the
        balancer, which record-routes it so the callee's requests come back through it."""
        host = self.proc.config.balancer.sip
        dialog = uac_dialog(
            cmd.dialog, cmd.from_uri, cmd.to_uri, self.node.id, f"<sip:{self.node.sip}>", host, self.node.sip
        )
        try:
            result = await self.store.commit(
                [(keys.dialog(dialog.id), 0)], [self.dialogs.write_of(dialog.id, dialog.encode())]
            )
        except CommitFailed as exc:
            self.proc.log.warning("INVITE not sent", dialog=dialog.id, error=str(exc))
            return
        if result.ok:
            self.core.send_in_dialog(dialog, "INVITE", cmd.body, cmd.content_type, time.monotonic())
            self.flush()
            self.proc.count("sent.INVITE")

    async def send_in_dialog(self, cmd: bus.SendRequest) -> None:
        """Load the dialog from the replica, take the next local CSeq, then send (§12.2.1.1)."""
        if cmd.to_uri:
            return await self.send_initial_invite(cmd)
        key = keys.dialog(cmd.dialog)
        for _ in range(COMMIT_ATTEMPTS):
            version, entry = self.dialogs.read_entry(cmd.dialog)
            if entry is None:
                self.proc.count("send.no_dialog")
                self.proc.log.warning("send on unknown dialog", dialog=cmd.dialog, method=cmd.method)
                return
            stored = Dialog.decode(entry.value)
            dialog = msgspec.structs.replace(stored, local_cseq=stored.local_cseq + 1)
            try:
                # Sending on another node's dialog is an ordinary transaction: the owner stays.
                result = await self.store.commit(
                    [(key, version)], [self.dialogs.write_of(dialog.id, dialog.encode(), entry.owner)]
                )
            except CommitFailed as exc:
                self.proc.count("send.commit_failed")
                self.proc.log.warning("send failed", dialog=cmd.dialog, error=str(exc))
                return
            if result.ok:
                self.core.send_in_dialog(dialog, cmd.method, cmd.body, cmd.content_type, time.monotonic())
                self.flush()
                self.proc.count(f"sent.{cmd.method}")
                return
        self.proc.count("send.conflict_exhausted")

    # --- timers and liveness -------------------------------------------------------

    async def run_timers(self) -> None:
        while True:
            deadline = self.core.deadline()
            self.wake.clear()
            timeout = None if deadline is None else max(0.0, deadline - time.monotonic())
            try:
                await asyncio.wait_for(self.wake.wait(), timeout)
            except TimeoutError:
                pass
            for expired in self.core.on_timer(time.monotonic()):
                self.proc.log.info(
                    "transaction", method=expired.method, status=expired.status, call_id=expired.call_id, why="timeout"
                )
                await self.router.send(bus.encode(expired))  # the services hear of it (408)
            for ident in self.core.abandoned:  # never ACKed: we sent BYE; the services let go
                await self.tell_router(bus.DialogEnded(ident, [keys.dialog(ident)]))
            self.core.abandoned.clear()
            self.flush()

    async def beat(self) -> None:
        """Publish readiness: ready while the local router and store both answer."""
        interval = self.proc.config.heartbeat_interval
        while True:
            self.ping_id += 1
            await self.router.send(bus.encode(bus.Ping(self.ping_id, f"sip-ra:{self.node.id}")))
            store_ready = await self.store.is_ready()
            router_ready = time.monotonic() - self.router_seen < max(3 * interval, 0.5)
            beat = bus.NodeHeartbeat(self.node.id, store_ready and router_ready, self.proc.incarnation, self.node.sip)
            await self.heartbeat.send(bus.encode(beat))
            await asyncio.sleep(interval)

    async def control(self) -> None:
        if self.node.control:
            await serve_control(self.proc, self.node.control, self.stats, lambda: True)

    def stats(self) -> dict[str, int | str | float]:
        out: dict[str, int | str | float] = dict(self.proc.counters)
        out.update(self.core.counters)
        out.update(transactions=len(self.core.transactions), dialogs_cached=len(self.core.dialogs))
        return out


async def main(proc: Process) -> None:
    ra = SipRa(proc)
    loop = asyncio.get_running_loop()
    host, port = ra.node.sip_addr
    transport, _ = await loop.create_datagram_endpoint(lambda: ra, local_addr=(host, port))
    try:
        async with asyncio.TaskGroup() as group:
            group.create_task(ra.store.run())
            group.create_task(ra.serve_router())
            group.create_task(ra.run_timers())
            group.create_task(ra.beat())
            group.create_task(ra.control())
            group.create_task(ra.tolerance.run())
    finally:
        transport.close()


if __name__ == "__main__":
    run("sip-ra", main)
