"""The fault-tolerant resource adaptor interface: Restcomm's FaultTolerantResourceAdaptor
in Python form, for RAs other than SIP (and used by the SIP RA for its dialogs).

An RA process on each node gets:
- `ReplicatedData`: put/get/remove/keys/local_keys of byte values replicated through the
  node's statestore (synchronously, like every commit), each entry owned by a node;
- `fail_over(key)`: when a node dies, each of its entries goes to the survivor that wins
  the rendezvous hash of the key over the live nodes; that RA becomes the owner and is
  told, so it can resume whatever the entry stands for;
- `data_removed(key)`: an entry this RA knew was removed by another node;
- `FaultTolerantTimer`: a timer kept as an entry, firing on its owner (after fail-over,
  on the new owner);
- `SleeEndpoint`: start activities, fire events on them and end them, whichever node
  created them, through the local router.

The RA implements the `FaultTolerantRA` protocol and runs `FaultTolerance.run()`.
"""

from __future__ import annotations

import time
from collections.abc import Collection
from dataclasses import dataclass, field
from typing import Protocol

import msgspec
import zmq

from zeroslee import bus, hashing, keys
from zeroslee.liveness import ADOPTION_READ_EVERY, Liveness, adoption_dead_after
from zeroslee.replica import ReplicaUnavailable
from zeroslee.runtime import Process, follow_heartbeats
from zeroslee.storeclient import CommitFailed, StoreClient


class Entry(msgspec.Struct, frozen=True):
    owner: str
    value: bytes
    fire_at: float = 0.0  # > 0: a fault-tolerant timer, due at this epoch time


class EntryHead(msgspec.Struct, frozen=True):
    """An entry without its value: what the periodic scan needs (decoding skips the value)."""

    owner: str
    fire_at: float = 0.0


_decode_head = msgspec.msgpack.Decoder(EntryHead).decode


@dataclass
class Survey:
    """One scan of an RA's entries (`ReplicatedData.survey`)."""

    keys: set[str] = field(default_factory=set)
    due: list[str] = field(default_factory=list)  # this node's timers that are due
    orphaned: dict[str, EntryHead] = field(default_factory=dict)  # owned by a node not live


class FaultTolerantRA(Protocol):
    def fail_over(self, key: str) -> None: ...
    def data_removed(self, key: str) -> None: ...
    def timer_fired(self, key: str) -> None: ...


class ReplicatedData:
    """Entries under `ra/<name>/`, read from the local replica, written by commits."""

    def __init__(self, name: str, node: str, store: StoreClient) -> None:
        self.name = name
        self.prefix = keys.ra_data_of(name)
        self.node = node
        self.store = store
        self.removed_here: set[str] = set()

    def write_of(self, key: str, value: bytes, owner: str | None = None, fire_at: float = 0.0) -> tuple[str, bytes]:
        """The (store key, record) pair that puts `value` under `key` in a larger commit
        (`fire_at` > 0: the entry is also a fault-tolerant timer, due then)."""
        return keys.ra_data(self.name, key), msgspec.msgpack.encode(Entry(owner or self.node, value, fire_at))

    def read_entry(self, key: str) -> tuple[int, Entry | None]:
        """The entry and its version, for a versioned read-modify-write."""
        try:
            with self.store.replica.read() as view:
                version, raw = view.get(keys.ra_data(self.name, key))
        except ReplicaUnavailable:
            return 0, None
        return version, (msgspec.msgpack.decode(raw, type=Entry) if raw is not None else None)

    def entries(self) -> dict[str, Entry]:
        try:
            with self.store.replica.read() as view:
                found = view.scan(self.prefix)
        except ReplicaUnavailable:
            return {}
        return {keys.last(k): msgspec.msgpack.decode(raw, type=Entry) for k, _, raw in found}

    def survey(self, live: Collection[str], now: float) -> Survey | None:
        """The scan an RA makes every `poll_every`, in one pass that keeps only what it
        needs: every key; this node's timers due by `now` (epoch seconds); the entries
        whose owner is not `live` (to adopt). None while the replica is not there. Not a
        dict of every entry's head: at 10,000 dialogs that was another ~2 MB each second
        in every RA."""
        me, found = self.node, Survey()
        try:
            with self.store.replica.read(buffers=True) as view:
                for k, raw in view.each(self.prefix):
                    key, head = keys.last(k), _decode_head(raw)
                    found.keys.add(key)
                    if head.owner == me:
                        if 0 < head.fire_at <= now:
                            found.due.append(key)
                    elif head.owner not in live:
                        found.orphaned[key] = head
        except ReplicaUnavailable:
            return None
        return found

    def get(self, key: str) -> bytes | None:
        return entry.value if (entry := self.read_entry(key)[1]) is not None else None

    def keys(self) -> list[str]:
        return sorted(self.entries())

    def local_keys(self) -> list[str]:
        return sorted(k for k, e in self.entries().items() if e.owner == self.node)

    async def put(self, key: str, value: bytes, fire_at: float = 0.0) -> None:
        """Replicated before it returns; this node becomes the entry's owner."""
        await self._write(key, msgspec.msgpack.encode(Entry(self.node, value, fire_at)))

    async def remove(self, key: str) -> None:
        self.removed_here.add(key)
        await self._write(key, None)

    async def take(self, key: str, entry: Entry) -> bool:
        """Become the owner of `key` unless it changed since read (one adopter wins)."""
        version, current = self.read_entry(key)
        if current != entry:
            return False
        moved = msgspec.msgpack.encode(msgspec.structs.replace(entry, owner=self.node))
        try:
            return (
                await self.store.commit(
                    [(keys.ra_data(self.name, key), version)], [(keys.ra_data(self.name, key), moved)]
                )
            ).ok
        except CommitFailed:
            return False

    async def _write(self, key: str, value: bytes | None) -> None:
        for _ in range(8):
            version, _ = self.read_entry(key)
            result = await self.store.commit(
                [(keys.ra_data(self.name, key), version)], [(keys.ra_data(self.name, key), value)]
            )
            if result.ok:
                return
        raise CommitFailed(f"{key}: too many concurrent writers")


class FaultTolerantTimer:
    """A timer kept as a replicated entry: fires on the entry's owner, once."""

    def __init__(self, data: ReplicatedData) -> None:
        self.data = data

    async def set(self, key: str, delay: float) -> None:
        await self.data.put(key, b"", fire_at=time.time() + delay)

    async def cancel(self, key: str) -> None:
        await self.data.remove(key)


class SleeEndpoint:
    """An RA's way into the SLEE: activities and events, through the local router."""

    def __init__(self, proc: Process, router_endpoint: str, name: str) -> None:
        self.sock = proc.socket(zmq.DEALER)
        self.sock.setsockopt(zmq.ROUTING_ID, f"ra:{name}:{proc.node}".encode())
        self.sock.connect(router_endpoint)

    async def start_activity(self, activity: str, kind: str) -> None:
        await self.sock.send(bus.encode(bus.StartActivity(0, activity, kind)))

    async def fire(self, activity: str, event: msgspec.Struct) -> None:
        """Fire `event` (a msgspec Struct the services know) on `activity`."""
        cls = type(event)
        message = bus.FireEvent(0, activity, f"{cls.__module__}:{cls.__qualname__}", msgspec.msgpack.encode(event))
        await self.sock.send(bus.encode(message))

    async def end_activity(self, activity: str) -> None:
        await self.sock.send(bus.encode(bus.EndActivity(0, activity)))


class FaultTolerance:
    """Runs an RA's fault tolerance: watches the nodes, hands over a dead node's entries
    (fail_over), notices removals by other nodes (data_removed), fires due timers."""

    def __init__(self, proc: Process, data: ReplicatedData, ra: FaultTolerantRA, poll_every: float = 0.5) -> None:
        self.proc = proc
        self.poll_every = poll_every  # how often entries are scanned (removals, timers)
        self.polled = 0.0
        self.data = data
        self.ra = ra
        self.liveness = Liveness(adoption_dead_after(proc.config), proc.config.balancer.alive_after)
        self.live: list[str] = []
        # Keys only: this process holds no copy of the entries' values (at 10,000 dialogs
        # a dict of whole entries cost 3 KB of private memory per dialog on every node).
        self.known: set[str] = set()
        self.fired: set[str] = set()
        # Entries of nodes that are down when we start are orphans too, once we have
        # listened long enough to have heard every live node.
        self.orphans = True
        self.started = time.monotonic()
        self.grace = 2 * proc.config.balancer.dead_after + 3 * proc.config.heartbeat_interval

    async def run(self) -> None:
        # Adoption judges silence over a second: the beats are read in batches (runtime).
        every = ADOPTION_READ_EVERY * self.proc.config.heartbeat_interval
        await follow_heartbeats(self.proc, self.liveness, self.step, every=every)

    async def step(self) -> None:
        if time.monotonic() - self.polled < self.poll_every:
            return
        self.polled = time.monotonic()
        live = self.liveness.eligible(time.monotonic())
        survey = self.data.survey(live, time.time())
        if survey is None:
            return  # no replica yet: nothing to compare, adopt or fire
        for key in sorted(self.known - survey.keys):
            if key not in self.data.removed_here:
                self.ra.data_removed(key)  # removed by another node
        self.data.removed_here &= survey.keys
        self.fired &= survey.keys
        self.known = survey.keys
        if set(self.live) - set(live) or self.liveness.draining(time.monotonic()):
            # A node we saw alive is gone, or drained: its entries need owners (a drained
            # node may still create some, so we look again at each poll while it is).
            self.orphans = True
        self.live = live
        settled = time.monotonic() - self.started > self.grace  # every live node seen by now
        if self.orphans and settled and self.data.node in live:
            self.orphans = not await self.adopt(survey.orphaned)  # retried until all are adopted
        for key in survey.due:
            if key not in self.fired:
                self.fired.add(key)
                self.ra.timer_fired(key)
                await self.data.remove(key)

    async def adopt(self, heads: dict[str, EntryHead]) -> bool:
        complete = True
        for key, head in sorted(heads.items()):
            if head.owner not in self.live and hashing.choose(key, self.live) == self.data.node:
                entry = self.data.read_entry(key)[1]
                if entry is None:
                    continue  # removed meanwhile: nothing to adopt
                if await self.data.take(key, entry):
                    self.known.add(key)
                    self.ra.fail_over(key)
                else:
                    complete = False
        return complete
