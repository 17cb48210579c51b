"""statestore shell: sockets, the serial commit worker, replication I/O.

Decisions about roles live in membership.py; record layout in storage.py.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from collections.abc import Coroutine
from dataclasses import asdict, dataclass
from typing import Any

import zmq

from statestore.membership import Action, Input, Membership, Role
from statestore.storage import Storage, StoreFormatError
from zeroslee import bus
from zeroslee.alarms import Alarms
from zeroslee.metrics import GROUP_BUCKETS, Metric, counter, counters, gauge, gauges
from zeroslee.runtime import Process, Requester, run, watch_exits

MAX_GROUP = 256  # commits acknowledged together at most
# Requests of one connection answered at a time at most. A router or RA under load has
# a few hundred commits in flight (its RA's max_in_flight bounds them).
MAX_PENDING = 4096
FAILOVER_WAIT = 2.0  # how long a store that lost its primary still calls itself ready
ELECTION_POLL = 0.005  # s between looks at the role while a commit waits for an election


@dataclass
class Pending:
    """A commit or join waiting for the primary's serial worker."""

    message: bus.Commit | bus.Join
    reply: asyncio.Future[bus.Message]


class Statestore:
    def __init__(self, proc: Process) -> None:
        assert proc.node is not None
        self.proc = proc
        cfg = proc.config
        self.node = cfg.node(proc.node)
        self.storage = Storage(cfg.data_dir(proc.node), cfg.store.map_size, cfg.store.sync)
        self.members = Membership(
            me=proc.node,
            order=cfg.node_ids,
            started_at=time.monotonic(),
            dead_after=cfg.store.peer_dead_after,
            epoch=self.storage.epoch,
            voters=len(cfg.nodes) + (1 if cfg.witness.endpoint else 0),
            lease=cfg.store.lease,
            voted=self.storage.voted,
        )
        self.witness = Requester(proc, cfg.witness.endpoint) if cfg.witness.endpoint else None
        self.clients = proc.socket(zmq.ROUTER)
        self.clients.bind(self.node.store)
        # Between stores, a message is as large as a whole mirror at most (a Snapshot).
        mirror = cfg.store.map_size + 1024 * 1024
        self.peer_in = proc.socket(zmq.ROUTER, mirror)
        self.peer_in.bind(self.node.peer)
        self.peers = {
            n.id: Requester(proc, n.peer, identity=proc.node.encode(), max_message=mirror)
            for n in cfg.nodes
            if n.id != proc.node
        }
        self.backups: set[str] = set()
        self.queue: asyncio.Queue[Pending] = asyncio.Queue()
        self.tasks: set[asyncio.Task[None]] = set()
        self.pending: dict[bytes, int] = {}  # requests being answered, per connection
        self.stepping = asyncio.Lock()
        self.synced = asyncio.Event()
        self.settled = asyncio.Event()  # set while PRIMARY or BACKUP
        self.was_member = False  # has held a full mirror in this incarnation
        self.left_at = 0.0  # when it last stopped being primary or backup
        self.confirmed_epoch = 0  # the epoch whose lease the witness last renewed for us
        self.unreported_drop = False  # a backup was dropped outside a commit group
        self.renewed_at = 0.0  # when the primary last asked the witness to renew its lease
        self.reported_backups: set[str] = set()  # the in-sync set the witness last accepted
        self.alarms = Alarms()  # replication degraded, out of the cluster (judge_alarms)
        self.out_since = 0.0  # when it last left PRIMARY/BACKUP
        self.election_wait = 0.5 * cfg.sip.t1  # how long a commit waits for a primary
        self.commit_seconds = proc.metrics.histogram(
            "zeroslee_store_commit_seconds", "A client's commit: received to answered (replication included)"
        )
        self.group_size = proc.metrics.histogram(
            "zeroslee_store_commit_group_size",
            "Commits applied and replicated together (primary)",
            buckets=GROUP_BUCKETS,
        )
        proc.metrics.source(self.metric_families)

    # --- serving -------------------------------------------------------------------

    @property
    def is_ready(self) -> bool:
        """Serving, or holding a full mirror while the cluster elects a new primary (a
        failover takes about a second; commits wait for it, see `commit`). A store out of
        a cluster for longer (fenced on the minority side) is not ready: its node stops
        taking traffic."""
        if self.members.role in (Role.PRIMARY, Role.BACKUP):
            return True
        # `settled` still set: the role changed inside this very step (an election is
        # running), before `left_at` could be noted. The store is as ready as it was.
        return self.was_member and (self.settled.is_set() or time.monotonic() - self.left_at < FAILOVER_WAIT)

    async def serve_clients(self) -> None:
        while True:
            (ident, data), member = await self.clients.recv_from()
            try:
                message = bus.decode(data)
            except bus.BadMessage as exc:
                self.proc.reject("bus", exc, socket="store")
                continue
            if self.proc.permits(self.clients, member, message) and self.admits(ident, "store"):
                self.spawn(self.answer_client(ident, message), ident)

    def admits(self, ident: bytes, socket: str) -> bool:
        """At most MAX_PENDING requests of one connection are answered at a time: past
        that, a client that does not wait for its answers gets none (counted, logged),
        rather than an unbounded pile of tasks."""
        if self.pending.get(ident, 0) < MAX_PENDING:
            return True
        self.proc.reject("too_many_pending", f"{MAX_PENDING} requests already pending", socket=socket)
        return False

    def spawn(self, coro: Coroutine[Any, Any, Any], ident: bytes = b"") -> None:
        task = asyncio.ensure_future(coro)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)
        if ident:
            self.pending[ident] = self.pending.get(ident, 0) + 1
            task.add_done_callback(lambda _: self.settled_one(ident))

    def settled_one(self, ident: bytes) -> None:
        left = self.pending[ident] - 1
        if left:
            self.pending[ident] = left
        else:
            del self.pending[ident]

    async def answer_client(self, ident: bytes, message: bus.Message) -> None:
        reply: bus.Message
        match message:
            case bus.Commit():
                started = time.monotonic()
                reply = await self.commit(message)
                self.commit_seconds.observe(time.monotonic() - started)
            case bus.Query(req=req, prefix=prefix, limit=limit):
                reply = bus.QueryResult(req, self.storage.snapshot(prefix, limit))
            case bus.Ping(req=req):
                reply = bus.Pong(req, self.proc.service, self.is_ready)
            case bus.StatsRequest(req=req):
                reply = bus.StatsReply(req, "statestore", self.proc.node or "", self.stats())
            case _:
                self.proc.reject("unexpected", type(message).__name__, socket="store")
                return
        await self.clients.send_multipart([ident, bus.encode(reply)])

    def serving_role(self, now: float) -> Role | None:
        """PRIMARY, or BACKUP of a primary that is alive; None while there is no primary
        to take a commit (an election, or a dead primary not yet replaced)."""
        m = self.members
        if m.role is Role.PRIMARY:
            return m.role
        if m.role is Role.BACKUP and m.primary is not None and m.is_alive(m.primary, now):
            return m.role
        return None

    async def wait_for_primary(self) -> Role | None:
        """An election is not an outage: a commit that arrives while there is no primary
        waits for one, at most `election_wait` (well under T1, so the UA does not
        retransmit meanwhile). The role is looked at every 5 ms rather than signalled:
        it changes inside Membership, in several places, and the wait is only ever taken
        during an election (about 20 ms after a kill -9)."""
        deadline = time.monotonic() + self.election_wait
        while (role := self.serving_role(time.monotonic())) is None and time.monotonic() < deadline:
            await asyncio.sleep(ELECTION_POLL)
        return role

    async def commit(self, message: bus.Commit) -> bus.CommitResult:
        for attempt in range(2):
            role = self.serving_role(time.monotonic()) or await self.wait_for_primary()
            if role is None and self.members.role is Role.BACKUP and self.members.primary is not None:
                # No election came of it (the primary's hellos were merely late: load):
                # forward to it as before; the forward has its own timeout.
                role = Role.BACKUP
            if role is Role.PRIMARY:
                return await self.enqueue(message)  # type: ignore[return-value]
            primary = self.members.primary
            if role is not Role.BACKUP or primary is None:
                self.proc.count("commit.unavailable")
                return bus.CommitResult(message.req, ok=False, error=f"store {self.members.role}: no primary")
            link = self.peers[primary]
            forwarded = bus.Commit(link.next_id(), message.reads, message.writes, message.prefix_reads)
            try:
                result = await link.request(forwarded, self.proc.config.store.replicate_timeout * 2)
            except TimeoutError:
                # The primary died with it (its fate is unknown: a version check on retry
                # tells) or is slow. Once, if a new primary is being elected: wait for it.
                self.proc.count("commit.forward_timeout")
                if attempt == 0 and self.serving_role(time.monotonic()) is None:
                    self.proc.count("commit.retry")
                    continue
                return bus.CommitResult(message.req, ok=False, error="primary did not answer")
            assert isinstance(result, bus.CommitResult)
            return bus.CommitResult(message.req, result.ok, result.seq, result.conflicts, result.error)
        return bus.CommitResult(message.req, ok=False, error="primary did not answer")

    async def enqueue(self, message: bus.Commit | bus.Join) -> bus.Message:
        fut: asyncio.Future[bus.Message] = asyncio.get_running_loop().create_future()
        await self.queue.put(Pending(message, fut))
        return await fut

    async def primary_worker(self) -> None:
        """Commits and joins in arrival order. Commits waiting together form one group:
        checked in order (each against the state the earlier ones leave), written in one
        LMDB transaction, replicated in one message and acknowledged together. Sequence
        numbers stay one per commit, so backups and resync see the same history."""
        while True:
            group = [await self.queue.get()]
            while not self.queue.empty() and len(group) < MAX_GROUP:
                if isinstance(group[-1].message, bus.Join):
                    break
                group.append(self.queue.get_nowait())
            if self.members.role is not Role.PRIMARY:
                for pending in group:
                    self.settle(pending, bus.CommitResult(pending.message.req, ok=False, error="no longer primary"))
                continue
            commits = [p for p in group if isinstance(p.message, bus.Commit)]
            if commits:
                await self.apply_group(commits)
            for pending in group:
                if isinstance(pending.message, bus.Join):
                    self.join_backup(pending)

    def join_backup(self, pending: Pending) -> None:
        msg = pending.message
        self.backups.add(msg.node)  # type: ignore[union-attr]
        seq = self.storage.seq
        self.settle(pending, bus.Snapshot(msg.req, self.members.epoch, seq, self.storage.snapshot()))
        self.proc.log.info("backup joined", backup=msg.node, seq=seq)  # type: ignore[union-attr]

    @staticmethod
    def settle(pending: Pending, result: bus.Message) -> None:
        if not pending.reply.done():
            pending.reply.set_result(result)

    async def apply_group(self, commits: list[Pending]) -> None:
        written: dict[str, int] = {}  # key -> version, for keys written earlier in the group
        accepted: list[tuple[Pending, int, list[tuple[str, bytes | None]]]] = []
        rejected: list[tuple[Pending, list[str]]] = []
        seq = self.storage.seq
        for pending in commits:
            msg = pending.message
            assert isinstance(msg, bus.Commit)
            conflicts = self.storage.conflicts(msg.reads, msg.prefix_reads, written)
            if conflicts:
                rejected.append((pending, conflicts))
                continue
            seq += 1
            accepted.append((pending, seq, msg.writes))
            written.update((key, seq) for key, _ in msg.writes)
        if accepted:
            first = accepted[0][1]
            batch = [writes for _, _, writes in accepted]
            self.storage.apply_batch(first, batch)
            in_sync = set(self.backups)
            await self.replicate(first, batch)
            unconfirmed = self.witness is not None and self.confirmed_epoch != self.members.epoch
            dropped = self.backups != in_sync or self.unreported_drop
            if (dropped or unconfirmed) and not await self.renew():
                # We dropped a backup but could not tell the witness, or the witness has not
                # confirmed our election (it may have voted for another store since):
                # acknowledging now could lose these commits if we die. Their fate is
                # unknown to the clients; step down.
                self.members.fire(Input.LEASE_LOST)
                for pending, _, _ in accepted:
                    self.settle(pending, bus.CommitResult(pending.message.req, ok=False, error="primary fenced"))
                accepted = []
        for pending, conflicts in rejected:
            self.proc.count("commit.conflict")
            self.settle(pending, bus.CommitResult(pending.message.req, ok=False, conflicts=conflicts))
        for pending, seq_of, _ in accepted:
            self.proc.count("commit.ok")
            self.settle(pending, bus.CommitResult(pending.message.req, ok=True, seq=seq_of))
        self.proc.count("commit.groups")
        self.group_size.observe(len(commits))
        self.proc.counters["commit.group_max"] = max(self.proc.counters.get("commit.group_max", 0), len(commits))

    async def replicate(self, first: int, batch: list[list[tuple[str, bytes | None]]]) -> None:
        """Synchronous: every live backup applies the group before any of it is acknowledged."""
        epoch, timeout = self.members.epoch, self.proc.config.store.replicate_timeout

        async def one(node: str) -> None:
            link = self.peers[node]
            try:
                ack = await link.request(bus.Replicate(link.next_id(), epoch, first, batch), timeout)
                ok = isinstance(ack, bus.Replicated) and ack.ok
            except TimeoutError:
                ok = False
            if not ok:
                self.backups.discard(node)
                self.proc.log.warning("backup dropped", backup=node, seq=first)

        await asyncio.gather(*(one(n) for n in sorted(self.backups)))

    # --- peers ---------------------------------------------------------------------

    async def serve_peers(self) -> None:
        while True:
            (ident, data), member = await self.peer_in.recv_from()
            try:
                message = bus.decode(data)
            except bus.BadMessage as exc:
                self.proc.reject("bus", exc, socket="peer")
                continue
            if self.proc.permits(self.peer_in, member, message) and self.admits(ident, "peer"):
                self.spawn(self.answer_peer(ident, message), ident)

    async def answer_peer(self, ident: bytes, message: bus.Message) -> None:
        reply: bus.Message
        match message:
            case bus.Hello(req=req):
                reply = self.status(req)
            case bus.Vote(req=req, candidate=candidate, epoch=epoch, seq=seq):
                granted = self.members.grant(candidate, epoch, seq, self.storage.seq, time.monotonic())
                if granted:
                    self.storage.set_voted(epoch)  # on disk before the vote leaves
                reply = bus.VoteReply(req, granted, max(self.members.voted, self.members.epoch))
            case bus.Replicate():
                reply = await self.apply_as_backup(message)
            case bus.Join(req=req) if self.members.role is not Role.PRIMARY:
                reply = bus.Snapshot(req, self.members.epoch, 0, [], ok=False)
            case bus.Join() | bus.Commit():
                reply = await self.enqueue(message)
            case _:
                self.proc.reject("unexpected", type(message).__name__, socket="peer")
                return
        await self.peer_in.send_multipart([ident, bus.encode(reply)])

    def status(self, req: int) -> bus.StoreStatus:
        m = self.members
        backups = sorted(self.backups) if m.role is Role.PRIMARY else []
        return bus.StoreStatus(req, m.me, m.role.value, m.epoch, self.storage.seq, self.proc.incarnation, backups)

    async def apply_as_backup(self, msg: bus.Replicate) -> bus.Replicated:
        m = self.members
        if m.role is Role.SYNCING:
            # The primary may stream the next commit before its snapshot reaches us (two
            # connections): hold it until the snapshot is installed, then check the fit.
            try:
                await asyncio.wait_for(self.synced.wait(), self.proc.config.store.replicate_timeout)
            except TimeoutError:
                pass
        node = m.me
        fits = m.role is Role.BACKUP and msg.epoch == m.epoch and msg.seq == self.storage.seq + 1
        if not fits:
            self.proc.count("replicate.rejected")
            if m.role is Role.BACKUP:
                m.fire(Input.RESYNC_NEEDED)  # a gap or another epoch: take a new snapshot
            return bus.Replicated(msg.req, node, m.epoch, self.storage.seq, ok=False)
        self.storage.apply_batch(msg.seq, msg.batch)
        return bus.Replicated(msg.req, node, m.epoch, self.storage.seq)

    def peer_exited(self, node: str) -> None:
        """A peer store's process exited: decide now rather than at the next poll (whose
        Hello to the dead peer would first have to time out)."""
        self.members.exited(node)
        if self.members.role is Role.PRIMARY and node in self.backups:
            # Its replication acks can never come: go on without it now rather than stall
            # the next commit for `replicate_timeout`. The witness hears of it before any
            # further commit is acknowledged (apply_group), as for a drop on a missed ack.
            self.backups.discard(node)
            self.unreported_drop = self.witness is not None
            self.proc.log.warning("backup dropped", backup=node, reason="process exited")
        self.peers[node].fail_waiting()  # commits forwarded to it: their fate is the router's to resolve
        self.spawn(self.decide_now())

    async def decide_now(self) -> None:
        """Ask the live peers first: every candidate must judge from fresh sequence numbers,
        or two could each think itself the most up to date and split the vote."""
        live = self.members.live_peers(time.monotonic())
        await asyncio.gather(*(self.hello(node) for node in live))
        await self.step()

    async def poll_peers(self) -> None:
        interval = self.proc.config.heartbeat_interval
        while True:
            await asyncio.gather(*(self.hello(node) for node in self.peers))
            await self.step()
            await asyncio.sleep(interval)

    async def hello(self, node: str) -> None:
        link = self.peers[node]
        hello = bus.Hello(link.next_id(), self.members.me, self.proc.incarnation)
        try:
            reply = await link.request(hello, self.proc.config.heartbeat_interval * 2)
        except TimeoutError:
            return
        if isinstance(reply, bus.StoreStatus):
            now = time.monotonic()
            self.members.observe(node, reply.role, reply.epoch, reply.seq, now, tuple(reply.backups))
            self.members.touched(node, now)

    def renewal_due(self, now: float) -> bool:
        """A primary renews its lease with the witness every quarter lease (4 chances before
        its majority contact lapses; the witness waits `lease_wait`, longer still), and at
        once when it has something to report: a backup dropped or joined since, an
        unconfirmed epoch."""
        pending = (
            self.unreported_drop or self.confirmed_epoch != self.members.epoch or self.backups != self.reported_backups
        )
        return pending or now - self.renewed_at >= self.proc.config.store.lease / 4

    async def renew(self) -> bool:
        """As primary: extend the lease with the witness, reporting the in-sync backups.
        False if the witness said no (a newer epoch exists) or did not answer."""
        if self.witness is None:
            return True
        m = self.members
        message = bus.Renew(self.witness.next_id(), m.me, m.epoch, sorted(self.backups))
        reported = set(self.backups)
        self.renewed_at = time.monotonic()
        try:
            reply = await self.witness.request(message, self.proc.config.heartbeat_interval * 2)
        except TimeoutError:
            return False
        if isinstance(reply, bus.RenewReply) and reply.ok:
            m.touched("witness", time.monotonic())
            self.confirmed_epoch = message.epoch
            self.reported_backups = reported
            if reported == self.backups:
                self.unreported_drop = False
            return True
        if isinstance(reply, bus.RenewReply) and reply.epoch > m.epoch:
            m.fire(Input.LEASE_LOST)  # deposed: a newer primary was elected meanwhile
        return False

    async def campaign(self) -> None:
        """Ask every voter for `candidate_epoch`; primary only with a majority."""
        m = self.members
        epoch, seq = m.candidate_epoch, self.storage.seq
        if not m.grant(m.me, epoch, seq, seq, time.monotonic()):
            return
        self.storage.set_voted(epoch)
        links = [self.peers[n] for n in m.live_peers(time.monotonic())]
        if self.witness is not None:
            links.append(self.witness)

        async def ask(link: Requester) -> bool:
            try:
                vote = bus.Vote(link.next_id(), m.me, epoch, seq)
                reply = await link.request(vote, self.proc.config.heartbeat_interval * 3)
            except TimeoutError:
                return False
            if not isinstance(reply, bus.VoteReply):
                return False
            if not reply.granted:
                m.refused(reply.epoch)
            return reply.granted

        votes = 1 + sum(await asyncio.gather(*(ask(link) for link in links)))
        if votes < m.majority:
            self.proc.count("election.lost")
            self.proc.log.debug("election lost", epoch=epoch, votes=votes, of=m.voters)
        if votes >= m.majority and m.role is Role.STARTING:
            m.won(epoch)
            now = time.monotonic()
            for node in m.live_peers(now):
                m.touched(node, now)
            m.touched("witness", now)
            self.proc.log.info("elected", epoch=epoch, votes=votes, of=m.voters)

    async def step(self) -> None:
        async with self.stepping:  # the poll loop and an exit notice never decide at once
            await self._step()

    async def _step(self) -> None:
        before = self.members.role
        if self.members.role is Role.PRIMARY and self.renewal_due(time.monotonic()):
            await self.renew()
        action, target = self.members.decide(self.storage.seq, time.monotonic())
        if action is Action.CAMPAIGN:
            await self.campaign()
            if self.members.role is Role.PRIMARY:
                self.storage.set_epoch(self.members.epoch)
                self.backups.clear()
                await self.renew()  # the witness's confirmation, before any commit is acknowledged
        elif action is Action.JOIN and target is not None:
            self.synced.clear()
            await self.join(target)
        self.judge_alarms(time.monotonic())
        if self.members.role in (Role.PRIMARY, Role.BACKUP):
            self.settled.set()
            self.was_member = True
        elif self.settled.is_set():
            self.settled.clear()
            self.left_at = time.monotonic()
        if self.members.role is not before:
            self.proc.log.info(
                "role",
                role=self.members.role.value,
                epoch=self.members.epoch,
                seq=self.storage.seq,
                primary=self.members.primary,
            )

    async def join(self, primary: str) -> None:
        link = self.peers[primary]
        try:
            snap = await link.request(bus.Join(link.next_id(), self.members.me, self.members.epoch), 5.0)
        except TimeoutError:
            snap = None
        if not isinstance(snap, bus.Snapshot) or not snap.ok:
            self.members.fire(Input.RESYNC_NEEDED)
            return
        self.storage.replace(snap.epoch, snap.seq, snap.items)
        self.members.epoch = snap.epoch
        self.members.fire(Input.SNAPSHOT_INSTALLED)
        self.synced.set()

    def stats(self) -> dict[str, int | str | float]:
        out: dict[str, int | str | float] = dict(self.proc.counters)
        out.update(self.proc.bus_counts())
        out.update(self.storage.stats())
        out.update(role=self.members.role.value, epoch=self.members.epoch, seq=self.storage.seq)
        out["alarms"] = json.dumps([asdict(a) for a in self.alarms.active(time.monotonic())])
        return out

    def judge_alarms(self, now: float) -> None:
        """The store's own alarms: a primary with no in-sync backup (a loss of this node
        now would lose what it acknowledged since), and a store out of the cluster
        (starting or syncing) for more than 5 s."""
        m = self.members
        if m.role is Role.PRIMARY and len(self.proc.config.nodes) > 1 and not self.backups:
            self.alarms.set(
                "replication", "major", "primary without an in-sync backup: commits are not replicated", now
            )
        else:
            self.alarms.clear("replication")
        if m.role in (Role.STARTING, Role.SYNCING):
            self.out_since = self.out_since or now
            if now - self.out_since > 5.0:
                self.alarms.set("sync", "minor", f"store {m.role.value} for {now - self.out_since:.0f} s", now)
        else:
            self.out_since = 0.0
            self.alarms.clear("sync")

    def replication_lag(self) -> int:
        """Sequence numbers this store is behind its primary's last report (every
        heartbeat interval). Replication is synchronous: a primary's in-sync backups hold
        every commit it acknowledged, so a primary shows 0 and a backup at most the group
        in flight; a store catching up (syncing, starting) shows its distance."""
        seq = self.storage.seq
        if self.members.role is Role.PRIMARY:
            return 0
        primary = self.members.primary
        view = self.members.peers.get(primary) if primary else None
        return max(0, view.seq - seq) if view is not None else 0

    def metric_families(self) -> list[Metric]:
        c = self.proc.counters
        outcomes = {
            "ok": c.get("commit.ok", 0),
            "conflict": c.get("commit.conflict", 0),
            "retry": c.get("commit.retry", 0),
            "unavailable": c.get("commit.unavailable", 0) + c.get("commit.forward_timeout", 0),
        }
        roles = {role.value: float(self.members.role is role) for role in Role}
        return [
            counters("zeroslee_store_commits", "Commits by outcome", "outcome", outcomes),
            counter(
                "zeroslee_store_commit_groups",
                "Groups of commits applied together (primary)",
                c.get("commit.groups", 0),
            ),
            gauges("zeroslee_store_role", "This store's role (1 for the current one)", "role", roles),
            gauge("zeroslee_store_epoch", "The store's epoch (one per primary elected)", self.members.epoch),
            gauge("zeroslee_store_seq", "The last applied commit's sequence number", self.storage.seq),
            gauge(
                "zeroslee_store_replication_lag",
                "Sequence numbers behind (see statestore README)",
                self.replication_lag(),
            ),
            gauge("zeroslee_store_backups", "In-sync backups (primary)", len(self.backups)),
            gauge("zeroslee_store_ready", "1 while the store serves its node", float(self.is_ready)),
            gauge("zeroslee_alarms", "Alarms raised now by this store", len(self.alarms.active(time.monotonic()))),
        ]

    async def main(self) -> None:
        async with asyncio.TaskGroup() as group:
            for link in self.peers.values():
                group.create_task(link.read_forever())
            if self.witness is not None:
                group.create_task(self.witness.read_forever())
            group.create_task(self.serve_clients())
            group.create_task(self.serve_peers())
            group.create_task(self.primary_worker())
            group.create_task(self.poll_peers())
            others = {n.id: n.peer for n in self.proc.config.nodes if n.id != self.members.me}
            group.create_task(watch_exits(self.proc, others, self.peer_exited))


async def main(proc: Process) -> None:
    try:
        store = Statestore(proc)
    except StoreFormatError as exc:  # an older var/: refuse to read it, say what to do
        proc.log.error("store refused", error=str(exc))
        print(f"statestore: {exc}", file=sys.stderr, flush=True)
        raise SystemExit(78) from None  # EX_CONFIG
    try:
        await store.main()
    finally:
        store.storage.close()


if __name__ == "__main__":
    run("statestore", main)
