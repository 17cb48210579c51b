"""The balancer's TCP side (RFC 3261 §18): connections to and from UAs and proxies.

Every message read from a connection goes to the core as if it were a datagram from the
connection's remote address, marked TCP; what the core wants sent over TCP comes back
with an address, which names a connection:
- a response goes back on the connection its request came on (§18.2.2; the core finds
  it from our Via), and a request toward a UA reuses the connection that UA uses, also
  under the address its Contact names (an alias, kept while the connection lives);
- with no such connection, a new one is opened; if that fails, a request sent over TCP
  only for its size goes by UDP after all (§18.1.1), and any other request fails as if
  the next hop had answered 503 (§16.9).

Bounds: a connection idle for `tcp_idle` seconds is closed (RFC 5626 keepalives, a
double CRLF answered with one CRLF, count as activity). At most `tcp_max_connections`
are open; a new one beyond that closes the connection that has been idle longest first.
"""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict
from collections.abc import Callable

from balancer.stream import PONG, StreamFramer
from zeroslee.runtime import RESOLVE_TIMEOUT, Process
from zeroslee.sipmsg import ParseError, error_response

Addr = tuple[str, int]


class Connection(asyncio.Protocol):
    def __init__(self, streams: Streams) -> None:
        self.streams = streams
        self.framer = StreamFramer()
        self.transport: asyncio.Transport | None = None
        self.peer: Addr = ("", 0)
        self.last = time.monotonic()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        peer = transport.get_extra_info("peername")
        self.peer = (str(peer[0]), int(peer[1]))
        self.streams.opened(self)

    def data_received(self, data: bytes) -> None:
        self.last = time.monotonic()
        self.streams.touch(self)
        for message in self.framer.feed(data):
            self.streams.received(message, self.peer)
        if pings := self.framer.take_pings():
            self.streams.proc.count("tcp.keepalive_pings", pings)
            self.write(PONG * pings)
        failed = self.framer.failed
        if failed is not None:
            self.streams.proc.reject("tcp_framing", failed.reason, peer=f"{self.peer[0]}:{self.peer[1]}")
            response = error_response(bytes(self.framer.buffer), ParseError(failed.reason, failed.status))
            if response is not None:
                self.write(response.to_bytes())
            self.close()

    def write(self, data: bytes) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.last = time.monotonic()
            self.transport.write(data)

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self.streams.closed(self)


class Streams:
    def __init__(
        self,
        proc: Process,
        received: Callable[[bytes, Addr], None],
        fell_back: Callable[[bytes, Addr], None],
        failed: Callable[[bytes], None],
    ) -> None:
        cfg = proc.config.balancer
        self.proc = proc
        self.received = received  # a message read from a connection
        self.fell_back = fell_back  # §18.1.1: send this by UDP instead
        self.failed = failed  # could not be sent at all
        self.idle = cfg.tcp_idle
        self.limit = cfg.tcp_max_connections
        self.connections: OrderedDict[Addr, Connection] = OrderedDict()  # least recently active first
        self.aliases: dict[Addr, Addr] = {}  # a Contact's address -> a connection's
        self.connecting: dict[Addr, list[tuple[bytes, bool]]] = {}
        self.tasks: set[asyncio.Future[None]] = set()

    # --- the connection table ---------------------------------------------------------
    def opened(self, conn: Connection) -> None:
        while len(self.connections) >= self.limit:
            _, oldest = self.connections.popitem(last=False)
            self.proc.count("tcp.evicted")
            oldest.close()
        self.connections[conn.peer] = conn
        self.proc.count("tcp.opened")

    def touch(self, conn: Connection) -> None:
        if self.connections.get(conn.peer) is conn:
            self.connections.move_to_end(conn.peer)

    def closed(self, conn: Connection) -> None:
        if self.connections.get(conn.peer) is conn:
            del self.connections[conn.peer]
            self.proc.count("tcp.closed")
        for alias in [a for a, real in self.aliases.items() if real == conn.peer]:
            del self.aliases[alias]

    def alias(self, contact: Addr, peer: Addr) -> None:
        if peer in self.connections and contact not in self.connections:
            self.aliases[contact] = peer

    def find(self, addr: Addr) -> Connection | None:
        conn = self.connections.get(addr)
        if conn is None and (real := self.aliases.get(addr)) is not None:
            conn = self.connections.get(real)
        return conn

    # --- sending ----------------------------------------------------------------------
    def send(self, data: bytes, addr: Addr, may_fall_back: bool) -> None:
        conn = self.find(addr)
        if conn is not None:
            conn.write(data)
            return
        queued = self.connecting.get(addr)
        if queued is not None:
            queued.append((data, may_fall_back))
            return
        self.connecting[addr] = [(data, may_fall_back)]
        task = asyncio.ensure_future(self.connect(addr))
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def connect(self, addr: Addr) -> None:
        loop = asyncio.get_running_loop()
        conn: Connection | None = None
        try:
            _, protocol = await asyncio.wait_for(
                loop.create_connection(lambda: Connection(self), addr[0], addr[1]), RESOLVE_TIMEOUT
            )
            conn = protocol
            if conn.peer != addr:  # a name, or an address written another way
                self.aliases[addr] = conn.peer
        except (OSError, TimeoutError) as exc:
            self.proc.count("tcp.connect_failed")
            self.proc.log.warning("tcp connect failed", peer=f"{addr[0]}:{addr[1]}", error=str(exc)[:200])
        queued = self.connecting.pop(addr, [])
        for data, may_fall_back in queued:
            if conn is not None:
                conn.write(data)
            elif may_fall_back:
                self.fell_back(data, addr)
            else:
                self.failed(data)

    async def reap(self) -> None:
        """Close connections idle for longer than `tcp_idle` (checked every tenth of it)."""
        while True:
            await asyncio.sleep(max(0.05, self.idle / 10))
            now = time.monotonic()
            for conn in [c for c in self.connections.values() if now - c.last > self.idle]:
                self.proc.count("tcp.reaped")
                conn.close()

    def stats(self) -> dict[str, int | str | float]:
        return {"tcp.connections": len(self.connections), "tcp.aliases": len(self.aliases)}
