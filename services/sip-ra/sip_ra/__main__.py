"""sip-ra shell: UDP SIP socket, the router link, dialog replication, heartbeats."""

from __future__ import annotations

import asyncio
import sys
import time
from collections.abc import Coroutine
from typing import Any

import msgspec
import zmq

import zeroslee
from sip_ra.core import Outcome, RaCore
from sip_ra.dialog import Dialog, stored_keys, uac_dialog
from sip_ra.session_timer import Session, ends_in
from zeroslee import bus, keys
from zeroslee.ftra import FaultTolerance, ReplicatedData
from zeroslee.metrics import GROUP_BUCKETS, Metric, counter, gauge
from zeroslee.replica import ReplicaUnavailable
from zeroslee.runtime import Process, is_address, resolve_udp, run, serve_control, udp_socket, watch_connection
from zeroslee.sipmsg import parse_name_addr
from zeroslee.storeclient import CommitFailed, StoreClient
from zeroslee.tap import Tap

ROUTER_ANSWER_TIMEOUT = 8.0  # a request the router never answers gets 500 after this
COMMIT_ATTEMPTS = 8
MAX_BATCH = 64  # requests of one dialog that take their CSeqs in one commit
SILENT_AFTER = 2.0  # s without any answer from our router or store (connected) before we say not ready
# While ready, our router and store are asked how they are this often (4 chances within
# SILENT_AFTER): they are processes of this very host, whose exit the connection shows at
# once (`router_link`, `store_link`), so only a wedged or fenced one waits for a ping.
# While not ready, every heartbeat interval, so that a node comes up without delay.
PING_WHEN_READY = SILENT_AFTER / 4


class SipRa(asyncio.DatagramProtocol):
    def __init__(self, proc: Process) -> None:
        assert proc.node is not None
        self.proc = proc
        self.node = proc.config.node(proc.node)
        self.store = StoreClient(proc)
        self.dialogs = ReplicatedData("sip", proc.node, self.store)  # keys.dialog(id) entries
        self.tolerance = FaultTolerance(proc, self.dialogs, self, poll_every=1.0)
        contact = f"<sip:{proc.config.balancer.sip};zsnode={proc.node}>"
        self.core = RaCore(proc.node, self.node.sip, proc.config.sip, self.read, contact=contact)
        self.router = proc.socket(zmq.DEALER)
        self.router.setsockopt(zmq.ROUTING_ID, f"sip-ra:{proc.node}".encode())
        self.router.connect(self.node.router)
        self.ready = False  # what our heartbeats say; set by `beat`, sent by the beacon's thread
        self.draining = False  # drained by an operator (`drain/<node>`): said in our heartbeats
        self.beacon = proc.beacon(self.node.heartbeat, proc.config.heartbeat_interval, self.heartbeat)
        self.transport: asyncio.DatagramTransport | None = None
        self.wake = asyncio.Event()
        self.router_seen = 0.0
        # Up until a drop is seen (the first handshake may precede the watch); a fresh
        # answer is needed as well before the node is ready.
        self.router_connected = True
        self.store_connected = True
        self.store_ready = False  # what the store's last answer to a ping said
        self.store_seen = 0.0  # when it last answered one
        self.loop_seen = 0.0  # when `beat` last ran: a wedged loop makes the node not ready
        self.ping_id = 0
        self.tasks: set[asyncio.Future[None]] = set()
        self.sending: dict[str, list[bus.SendRequest]] = {}  # dialog -> requests waiting to send
        self.answer_timers: dict[str, asyncio.TimerHandle] = {}
        names = {n.sip_addr: f"{n.id}/sip-ra" for n in proc.config.nodes}
        names[proc.config.balancer.sip_addr] = "balancer"
        self.tap = Tap(proc, self.node.sip_addr, names, f"{proc.node}/sip-ra")
        self.send_group = proc.metrics.histogram(
            "zeroslee_ra_send_group_size",
            "Requests of one dialog that took their CSeqs in one commit",
            buckets=GROUP_BUCKETS,
        )
        proc.metrics.source(self.metric_families)

    # --- UDP -----------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        addr = addr[:2]  # an IPv6 socket gives (host, port, flowinfo, scope_id)
        self.tap.received(data, addr)
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
            if not is_address(peer[0]):  # an FQDN next hop: looked up off the loop
                self.spawn(self.send_resolved(data, peer))
                continue
            when = time.time()
            try:
                self.transport.sendto(data, peer)
            except (OSError, ValueError) as exc:  # e.g. no route: the transactions to that peer fail
                self.unsendable(peer, str(exc))
                continue
            self.tap.sent(data, peer, when=when)
        self.wake.set()

    async def send_resolved(self, data: bytes, peer: tuple[str, int]) -> None:
        assert self.transport is not None
        address = await resolve_udp(peer[0], peer[1], self.transport.get_extra_info("socket").family)
        if address is None:
            self.unsendable(peer, "no address for the next hop")
            return
        when = time.time()
        try:
            self.transport.sendto(data, address)
        except (OSError, ValueError) as exc:
            self.unsendable(peer, str(exc))
            return
        self.tap.sent(data, address, when=when)

    def unsendable(self, peer: tuple[str, int], error: str) -> None:
        """§17.1.4, §17.2.4: the transactions to that peer fail (the TU hears a timeout)."""
        self.proc.log.warning("transport error", peer=f"{peer[0]}:{peer[1]}", error=error)
        self.core.transport_error(peer, time.monotonic())

    def spawn(self, coro: Coroutine[Any, Any, Any]) -> None:
        task = asyncio.ensure_future(coro)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    def read(self, key: str) -> bytes | None:
        """A key of the clustered store for the core; dialogs come out of their entries."""
        if key.startswith(self.dialogs.prefix):
            return self.dialogs.get(keys.last(key))
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
        """Dialog `key` went unrefreshed (RFC 4028 §10) or idle for `idle_limit`: as its
        owner, end it with BYE, and let the services see it end. (The fault-tolerance
        loop removes the entry next; the router's DialogEnded removes it as well.)"""
        raw = self.dialogs.get(key)
        if raw is None:
            return
        dialog = Dialog.decode(raw)
        why = "session expired" if dialog.refresher == "uac" else "idle limit"
        self.proc.count("dialogs.expired")
        self.proc.log.info("dialog ended", dialog=key, call_id=dialog.call_id, why=why)
        bye = msgspec.structs.replace(dialog, local_cseq=dialog.local_cseq + 1)
        self.core.send_in_dialog(bye, "BYE", b"", "", time.monotonic())
        self.core.forget_dialog(key)
        self.flush()
        self.spawn(self.tell_router(bus.DialogEnded(key, stored_keys(dialog))))

    def expiry(self, dialog: Dialog) -> float:
        """When `dialog` ends unless refreshed (epoch s: the timer is replicated, and any
        node may become its owner): RFC 4028's early BYE, or the idle limit."""
        session = Session(dialog.session_interval, dialog.refresher) if dialog.session_interval else None
        return time.time() + ends_in(session, self.proc.config.sip.idle_limit)

    def note_activity(self, dialog_id: str) -> None:
        """A request on a dialog without session timers: push its idle end back, lazily
        (a commit only once half the idle limit has gone, not one per request)."""
        _, entry = self.dialogs.read_entry(dialog_id)
        if entry is None or not entry.fire_at or entry.fire_at - time.time() >= self.proc.config.sip.idle_limit / 2:
            return  # the common case, decided without decoding the dialog
        if Dialog.decode(entry.value).refresher != "uac":  # a session's end moves only on a refresh
            self.spawn(self.move_expiry(dialog_id, None))

    async def move_expiry(self, dialog_id: str, session: Session | None) -> None:
        """Set a new end for `dialog_id`, from now: after a successful session refresh
        (with what it negotiated), or on activity (the idle limit). Versioned, retried."""
        for _ in range(COMMIT_ATTEMPTS):
            version, entry = self.dialogs.read_entry(dialog_id)
            if entry is None:
                return
            dialog = Dialog.decode(entry.value)
            if session is not None:
                dialog = msgspec.structs.replace(dialog, session_interval=session.interval, refresher=session.refresher)
            write = self.dialogs.write_of(dialog_id, dialog.encode(), entry.owner, self.expiry(dialog))
            try:
                if (await self.store.commit([(keys.dialog(dialog_id), version)], [write])).ok:
                    cached = self.core.dialogs.get(dialog_id)
                    if cached is not None and session is not None:
                        self.core.dialogs[dialog_id] = msgspec.structs.replace(
                            cached, session_interval=session.interval, refresher=session.refresher
                        )
                    return
            except CommitFailed:
                return  # the next request or refresh tries again

    async def forward(self, outcome: Outcome) -> None:
        """Replicate a new dialog, then hand the event to the router (DESIGN §3.1)."""
        event = outcome.event
        if isinstance(event, bus.RequestReceived) and outcome.new_dialog is not None:
            d = outcome.new_dialog
            if len(self.answer_timers) >= self.proc.config.sip.max_in_flight:
                self.shed(event, d.id)
                return
            index = [(k, d.id.encode()) for k in event.ra_keys]
            write = self.dialogs.write_of(d.id, d.encode(), fire_at=self.expiry(d))
            try:
                await self.store.commit([(keys.dialog(d.id), 0)], [write, *index])
            except CommitFailed as exc:
                self.answer(event.tx, 503, "Service Unavailable", str(exc) or "store unavailable")
                return
        elif outcome.new_dialog is not None:  # a UAC dialog confirmed by its 2xx
            if not await self.replace_dialog(outcome.new_dialog):
                return
        elif isinstance(event, bus.RequestReceived) and outcome.refreshed is not None:
            # A target refresh: every node sends to the UA's new Contact from now on.
            if not await self.replace_dialog(outcome.refreshed):
                self.answer(event.tx, 500, "Server Internal Error", "target refresh not replicated")
                return
        elif (
            isinstance(event, bus.RequestReceived)
            and event.activity_type == "sip-dialog"
            and event.method not in ("BYE", "CANCEL")
            and len(self.answer_timers) >= self.proc.config.sip.max_in_flight_in_dialog
        ):
            self.shed_in_dialog(event)
            return
        if isinstance(event, bus.RequestReceived):
            if event.activity_type == "sip-dialog" and event.method not in ("BYE", "ACK", "CANCEL"):
                self.note_activity(event.activity)
            loop = asyncio.get_running_loop()
            self.answer_timers[event.tx] = loop.call_later(
                ROUTER_ANSWER_TIMEOUT, self.answer, event.tx, 500, "Server Internal Error", "router timeout"
            )
        await self.router.send(bus.encode(event))  # type: ignore[arg-type]

    def shed(self, event: bus.RequestReceived, dialog: str) -> None:
        """Overload: the router has `max_in_flight` requests to answer already. A new call
        gets 503 with Retry-After now, before it costs a commit, so the calls we have keep
        their latency and the node keeps answering its heartbeat pings. Without this, a
        burst above capacity queued thousands of INVITEs (14 s per delivery), the UAs'
        retransmissions added to it, and the node went on failing after the burst."""
        self.proc.count("overload.rejected")
        self.core.forget_dialog(dialog)  # never replicated: nothing to end elsewhere
        self.core.respond(event.tx, 503, "Service Unavailable", time.monotonic(), headers=[("Retry-After", "1")])
        self.flush()

    def shed_in_dialog(self, event: bus.RequestReceived) -> None:
        """Overload within calls: `max_in_flight_in_dialog` requests already wait for the
        router (a slow store, a stalled router). Past that, a queued request would wait
        longer than the UA's T1 and be sent again, and the copies would add to the queue:
        a 503 with Retry-After now bounds the backlog. It does not cover an RA that is
        itself the bottleneck: then its UDP queue grows instead (at 1,500 chat INFOs/s
        offered here: datagrams dropped, lower CSeqs re-sent after higher ones, 500s)."""
        self.proc.count("overload.rejected_in_dialog")
        self.core.respond(event.tx, 503, "Service Unavailable", time.monotonic(), headers=[("Retry-After", "1")])
        self.flush()

    def answer(self, tx: str, status: int, reason: str, why: str = "", **kw: object) -> None:
        # Any answer shows the router took the request: a provisional one (an SBB whose
        # callee rings) leaves the final to it, however long the ringing lasts.
        timer = self.answer_timers.pop(tx, None)
        if timer is not None:
            timer.cancel()
        pending = self.core.pending.get(tx)
        if pending is None:
            return
        request = pending.request
        if why and status >= 300 and request.method == "INVITE" and pending.dialog is not None:
            # We answer the INVITE ourselves (the router failed or was too slow): the dialog
            # never was. Let the router end it, even if its delivery commits after all.
            ended = bus.DialogEnded(pending.dialog.id, stored_keys(pending.dialog))
            self.spawn(self.tell_router(ended))
            self.core.forget_dialog(pending.dialog.id)

        self.core.respond(tx, status, reason, time.monotonic(), **kw)  # type: ignore[arg-type]
        self.flush()
        within = bool(parse_name_addr(request.get("To") or "").tag)
        if 200 <= status < 300 and request.method in ("INVITE", "UPDATE") and within and pending.dialog is not None:
            # RFC 4028 §9: a refresh (whatever it negotiated, if anything) moves the end.
            self.spawn(self.move_expiry(pending.dialog.id, pending.session))
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
            if not self.ready and self.router_connected:
                self.ready = self.judge(self.router_seen)
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
                    self.send_in_dialog(message)
                case bus.Pong():
                    pass
                case _:
                    self.proc.reject("unexpected", type(message).__name__, socket="router")

    async def replace_dialog(self, dialog: Dialog) -> bool:
        """Write `dialog` over the stored one, keeping the larger local CSeq and the owner."""
        for _ in range(COMMIT_ATTEMPTS):
            version, entry = self.dialogs.read_entry(dialog.id)
            owner = entry.owner if entry is not None else None
            fire_at = entry.fire_at if entry is not None else self.expiry(dialog)
            if entry is not None:
                stored_cseq = Dialog.decode(entry.value).local_cseq
                dialog = msgspec.structs.replace(dialog, local_cseq=max(dialog.local_cseq, stored_cseq))
            try:
                write = self.dialogs.write_of(dialog.id, dialog.encode(), owner, fire_at)
                if (await self.store.commit([(keys.dialog(dialog.id), version)], [write])).ok:
                    return True
            except CommitFailed as exc:
                self.proc.log.warning("dialog not replicated", dialog=dialog.id, error=str(exc))
                return False
        return False

    def journal_versions(self, cmds: list[bus.SendRequest]) -> dict[str, int]:
        """The version of each journaled request's entry in our replica (one read), 0 if
        the replica has none (or is not readable)."""
        wanted = [cmd.outgoing for cmd in cmds if cmd.outgoing]
        if not wanted:
            return {}
        try:
            with self.store.replica.read() as view:
                return {key: view.get(key)[0] for key in wanted}
        except ReplicaUnavailable:
            return dict.fromkeys(wanted, 0)

    async def sent_already(self, key: str) -> bool | None:
        """Our replica lacks journal entry `key`: sent already, or does our replica lag the
        commit that journaled it? The primary decides, by a version check that writes
        nothing. True: gone; False: the primary has it (our replica lags: re-read);
        None: the store did not answer (the router's sweep asks again later)."""
        try:
            return (await self.store.commit([(key, 0)], [])).ok
        except CommitFailed:
            return None

    async def forget_unsendable(self, key: str, version: int, dialog_key: str) -> None:
        """Journal entry `key` (at `version`) is for a dialog our replica does not have:
        delete it if the primary agrees the dialog is gone (it ended, e.g. a BYE crossed
        the request), so the router's sweep stops handing it over. If the dialog is there
        after all (our replica lags), the check fails and the sweep hands it over again."""
        try:
            await self.store.commit([(key, version), (dialog_key, 0)], [(key, None)])
        except CommitFailed:
            pass  # the store did not answer: the sweep hands the request over again

    async def send_initial(self, cmd: bus.SendRequest) -> None:
        """A request outside any dialog: the INVITE that creates a UAC dialog, or a
        MESSAGE, OPTIONS... whose final answer ends its activity. Replicate the dialog
        (its Call-ID, tags and CSeq), then send it via the balancer, which record-routes
        an INVITE so the callee's requests come back through it."""
        host = self.proc.config.balancer.sip
        # The cluster's Contact and a Call-ID that names no node (topology hiding).
        dialog = uac_dialog(
            cmd.dialog,
            cmd.from_uri,
            cmd.to_uri,
            self.node.id,
            self.core.contact,
            host,
            host,
            cmd.call_id,
            cmd.local_tag,
        )
        for _ in range(COMMIT_ATTEMPTS):
            reads = [(keys.dialog(dialog.id), 0)]
            writes: list[tuple[str, bytes | None]] = [
                self.dialogs.write_of(dialog.id, dialog.encode(), fire_at=self.expiry(dialog))
            ]
            if cmd.outgoing:
                version = self.journal_versions([cmd])[cmd.outgoing]
                if version == 0:
                    self.spawn(self.send_unjournaled(cmd))  # sent already, or our replica lags
                    return
                reads.append((cmd.outgoing, version))
                writes.append((cmd.outgoing, None))
            try:
                result = await self.store.commit(reads, writes)
            except CommitFailed as exc:
                self.proc.log.warning("INVITE not sent", dialog=dialog.id, error=str(exc))
                return
            if result.ok:
                standalone = cmd.method != "INVITE"
                now = time.monotonic()
                self.core.send_in_dialog(dialog, cmd.method, cmd.body, cmd.content_type, now, cmd.headers, standalone)
                self.flush()
                self.proc.count(f"sent.{cmd.method}")
                return
            if keys.dialog(dialog.id) in result.conflicts:
                return  # sent already: the dialog exists

    def send_in_dialog(self, cmd: bus.SendRequest) -> None:
        """Queue `cmd` behind the requests its dialog is already sending: one dialog's
        requests take their CSeqs here one batch at a time, so a burst (a busy chat room
        relaying to one member) costs one commit, not one conflict after another."""
        if cmd.to_uri:
            self.spawn(self.send_initial(cmd))
            return
        if cmd.method == "CANCEL":
            self.spawn(self.cancel(cmd))
            return
        queued = self.sending.get(cmd.dialog)
        if queued is not None:
            queued.append(cmd)
            return
        self.sending[cmd.dialog] = [cmd]
        self.spawn(self.drain_sends(cmd.dialog))

    async def drain_sends(self, dialog: str) -> None:
        try:
            while self.sending[dialog]:
                batch, self.sending[dialog] = self.sending[dialog][:MAX_BATCH], self.sending[dialog][MAX_BATCH:]
                self.send_group.observe(len(batch))
                await self.send_batch(dialog, batch)
        finally:
            del self.sending[dialog]

    async def send_batch(self, dialog_id: str, cmds: list[bus.SendRequest]) -> None:
        """Load the dialog from the replica, take the next local CSeqs, then send (§12.2.1.1).
        The commit that takes the CSeqs deletes the requests' journal entries: a copy of a
        request handed to us again (a survivor's sweep) finds it gone and is not sent twice."""
        key = keys.dialog(dialog_id)
        for _ in range(COMMIT_ATTEMPTS):
            ready: list[bus.SendRequest] = []
            reads: list[tuple[str, int]] = []
            writes: list[tuple[str, bytes | None]] = []
            versions = self.journal_versions(cmds)
            for cmd in cmds:
                if cmd.outgoing and versions[cmd.outgoing] == 0:
                    self.spawn(self.send_unjournaled(cmd))  # sent already, or our replica lags
                    continue
                ready.append(cmd)
                if cmd.outgoing:
                    reads.append((cmd.outgoing, versions[cmd.outgoing]))
                    writes.append((cmd.outgoing, None))
            cmds = ready
            if not cmds:
                return
            version, entry = self.dialogs.read_entry(dialog_id)
            if entry is None:
                self.proc.count("send.no_dialog", len(cmds))
                self.proc.log.warning("send on unknown dialog", dialog=dialog_id, methods=[c.method for c in cmds])
                for cmd in cmds:  # forget them, if the dialog really is gone
                    if cmd.outgoing:
                        await self.forget_unsendable(cmd.outgoing, versions[cmd.outgoing], key)
                return
            stored = Dialog.decode(entry.value)
            dialog = msgspec.structs.replace(stored, local_cseq=stored.local_cseq + len(cmds))
            # Sending on another node's dialog is an ordinary transaction: the owner stays.
            reads.append((key, version))
            writes.append(self.dialogs.write_of(dialog.id, dialog.encode(), entry.owner, entry.fire_at))
            try:
                result = await self.store.commit(reads, writes)
            except CommitFailed as exc:
                self.proc.count("send.commit_failed", len(cmds))
                self.proc.log.warning("send failed", dialog=dialog_id, error=str(exc))
                return  # journaled: the router's sweep hands them to us again
            if result.ok:
                now = time.monotonic()
                for i, cmd in enumerate(cmds, start=1):
                    numbered = msgspec.structs.replace(stored, local_cseq=stored.local_cseq + i)
                    self.core.send_in_dialog(numbered, cmd.method, cmd.body, cmd.content_type, now, cmd.headers)
                    self.proc.count(f"sent.{cmd.method}")
                self.core.dialogs[dialog.id] = dialog
                self.flush()
                return
        self.proc.count("send.conflict_exhausted", len(cmds))

    async def cancel(self, cmd: bus.SendRequest) -> None:
        """CANCEL our INVITE on `cmd.dialog` (it takes no CSeq: §9.1, the INVITE's own).
        Its journal entry goes first, so a survivor's sweep does not cancel twice."""
        if cmd.outgoing:
            version = self.journal_versions([cmd])[cmd.outgoing]
            if version == 0:
                self.proc.count("send.sent_already")
                return
            try:
                result = await self.store.commit([(cmd.outgoing, version)], [(cmd.outgoing, None)])
            except CommitFailed:
                return  # journaled still: the router's sweep hands it to us again
            if not result.ok:
                return
        if self.core.cancel(cmd.dialog, time.monotonic(), list(cmd.headers)):
            self.proc.count("sent.CANCEL")
        self.flush()

    async def send_unjournaled(self, cmd: bus.SendRequest) -> None:
        """`cmd`'s journal entry is not in our replica: if the primary has it, our replica
        lags the commit that wrote it; send it once the replica has caught up."""
        for tries in range(1, COMMIT_ATTEMPTS + 1):
            gone = await self.sent_already(cmd.outgoing)
            if gone is None or gone:
                self.proc.count("send.sent_already" if gone else "send.commit_failed")
                return
            await asyncio.sleep(0.005 * tries)  # back off while the replica applies the commit
            if self.journal_versions([cmd])[cmd.outgoing] != 0:
                self.send_in_dialog(cmd)
                return
        self.proc.count("send.replica_lagging")  # the router's sweep hands it to us again

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
            for ident, stored in self.core.abandoned:  # never ACKed: we sent BYE; the services let go
                await self.tell_router(bus.DialogEnded(ident, stored))
            self.core.abandoned.clear()
            self.flush()

    def heartbeat(self) -> bytes:
        """The beat the beacon's thread sends (DESIGN §7: heartbeats never queue behind
        work). Ready = our router and store processes are up and our store serves (or
        waits for an election) and this loop still turns; never "answered fast"."""
        ready = self.ready and time.monotonic() - self.loop_seen < SILENT_AFTER
        beat = bus.NodeHeartbeat(
            self.node.id, ready, self.proc.incarnation, self.node.sip, self.draining, zeroslee.__version__
        )
        return bus.encode(beat)

    def read_drain(self) -> None:
        """Whether an operator drained this node (`drain/<node>` in the replica)."""
        try:
            with self.store.replica.read() as view:
                draining = view.get(keys.drain(self.node.id))[1] is not None
        except ReplicaUnavailable:
            return
        if draining != self.draining:
            self.draining = draining
            self.proc.log.info("drained" if draining else "undrained")

    def judge(self, now: float) -> bool:
        """Whether this node takes calls, from evidence rather than latency: a router or
        store whose connection dropped (its process exited) makes us not ready at once;
        one that is merely slow to answer our pings stays up for `SILENT_AFTER` (load
        delays answers; at 4x capacity a ping waited 300-900 ms behind commits, and a
        0.5 s patience flapped the node in and out of the balancer's live set)."""
        router = self.router_connected and now - self.router_seen < SILENT_AFTER
        store = self.store_connected and self.store_ready and now - self.store_seen < SILENT_AFTER
        return router and store

    async def ping_store(self) -> None:
        try:
            pong = await self.store.link.request(bus.Ping(self.store.link.next_id(), self.proc.service), SILENT_AFTER)
        except TimeoutError:
            return  # `judge` notices the silence
        if isinstance(pong, bus.Pong):
            self.store_ready, self.store_seen = pong.ready, time.monotonic()
            self.ready = self.judge(self.store_seen)

    def store_link(self, up: bool) -> None:
        self.store_connected = up
        if not up:
            self.store_ready = False
        self.ready = self.judge(time.monotonic())

    def router_link(self, up: bool) -> None:
        self.router_connected = up
        self.ready = self.judge(time.monotonic())

    async def beat(self) -> None:
        """Ask the router and the store how they are, without waiting for the answers:
        every heartbeat interval while not ready, every PING_WHEN_READY once ready (an
        idle node's pings were a fifth of the idle cluster's CPU)."""
        interval = self.proc.config.heartbeat_interval
        self.beacon.start()
        while True:
            self.loop_seen = time.monotonic()
            self.read_drain()
            self.ping_id += 1
            await self.router.send(bus.encode(bus.Ping(self.ping_id, f"sip-ra:{self.node.id}")))
            self.spawn(self.ping_store())
            self.ready = self.judge(self.loop_seen)
            await asyncio.sleep(max(interval, PING_WHEN_READY) if self.ready else interval)

    async def control(self) -> None:
        if self.node.control:
            await serve_control(self.proc, self.node.control, self.stats, lambda: True)

    def metric_families(self) -> list[Metric]:
        c, core = self.proc.counters, self.core.counters
        try:
            with self.store.replica.read() as view:
                dialogs = view.count(keys.ra_data_of("sip"))
        except ReplicaUnavailable:
            dialogs = 0
        refused = c.get("overload.rejected", 0) + c.get("overload.rejected_in_dialog", 0)
        return [
            *self.tap.counts.families("zeroslee_ra_sip"),
            gauge("zeroslee_ra_transactions", "SIP transactions this RA holds now", len(self.core.transactions)),
            gauge("zeroslee_ra_dialogs", "SIP dialogs in the cluster (this node's replica)", dialogs),
            gauge("zeroslee_ra_dialogs_cached", "Dialogs this RA keeps decoded in memory", len(self.core.dialogs)),
            counter(
                "zeroslee_ra_overload_refusals",
                "Requests this RA answered 503 for overload",
                refused + core.get("overload.rejected", 0),
            ),
            gauge("zeroslee_ra_requests_in_flight", "Requests awaiting this node's router", len(self.answer_timers)),
            counter(
                "zeroslee_hep_copies", "SIP messages mirrored as HEP", self.tap.mirror.sent if self.tap.mirror else 0
            ),
            counter(
                "zeroslee_hep_lost", "HEP copies that could not be sent", self.tap.mirror.lost if self.tap.mirror else 0
            ),
        ]

    def stats(self) -> dict[str, int | str | float]:
        out: dict[str, int | str | float] = dict(self.proc.counters)
        out.update(self.proc.bus_counts())
        out.update(self.core.counters)
        out.update(transactions=len(self.core.transactions), dialogs_cached=len(self.core.dialogs))
        out.update(python_blocks=sys.getallocatedblocks())  # live objects, against RSS: fragmentation
        return out


async def main(proc: Process) -> None:
    ra = SipRa(proc)
    loop = asyncio.get_running_loop()
    host, port = ra.node.sip_addr
    transport, _ = await loop.create_datagram_endpoint(lambda: ra, sock=udp_socket(proc, (host, port)))
    try:
        async with asyncio.TaskGroup() as group:
            group.create_task(ra.store.run())
            group.create_task(ra.serve_router())
            group.create_task(ra.run_timers())
            group.create_task(ra.beat())
            group.create_task(watch_connection(ra.router, ra.router_link))
            group.create_task(watch_connection(ra.store.link.sock, ra.store_link))
            group.create_task(ra.control())
            group.create_task(ra.tolerance.run())
    finally:
        transport.close()


if __name__ == "__main__":
    run("sip-ra", main)
