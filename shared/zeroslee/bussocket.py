"""An asyncio face for a plain pyzmq socket: the bus's one socket type.

Why not `zmq.asyncio`: it makes a future for every send and receive, and recomputes
`IntFlag` enums and poller state on each; in the router's profile at 100 relays/s that
machinery was a third of the process's CPU. This wrapper waits only when it must. A send
or receive is first tried with NOBLOCK and returns at once when ZeroMQ can take or give
the message (the common case on a loaded node); only a reader with nothing to read, or a
sender facing a full pipe, parks a future. Measured on this machine with uvloop, DEALER
-> ROUTER echo over TCP loopback: one request at a time 7-8k -> 10-12k round trips/s,
100 in flight 11-15k -> 52-78k (see the commit that introduced this module).

ZeroMQ's `FD` is edge-like: it signals that the socket's state may have changed, and a
send or receive may consume that signal. So whenever an operation succeeds while the
other direction has parked futures, the socket is re-examined on the next loop turn
(`pump`), which is what libzmq's documentation asks of `ZMQ_FD` users.

With a keyring (curve.py), `bind` makes the socket a CURVE server of its endpoint's
domain and `connect` a CURVE client of its endpoint's member; `recv_from` also returns
the member the handshake authenticated, for sockets that check each message's sender.
Every socket refuses messages over `max_message` bytes (ZMQ_MAXMSGSIZE): libzmq drops
the connection that sent one, before any of it reaches us.
"""

from __future__ import annotations

import asyncio
import itertools
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import zmq

if TYPE_CHECKING:
    from zeroslee.curve import Keyring

_POLLIN, _POLLOUT = int(zmq.POLLIN), int(zmq.POLLOUT)
_NOBLOCK, _EVENTS = int(zmq.NOBLOCK), int(zmq.EVENTS)
_monitor_ids = itertools.count(1)
_SINGLE, _MULTIPART, _WITH_USER = 0, 1, 2  # what a parked reader waits for
MAX_MESSAGE = 16 * 1024 * 1024  # bytes: far above any commit, event or reply we send


class BusSocket:
    """One ZeroMQ socket driven by the running event loop (create it inside the loop)."""

    def __init__(
        self, ctx: zmq.Context[Any], kind: int, keyring: Keyring | None = None, max_message: int = MAX_MESSAGE
    ) -> None:
        self.zmq: zmq.Socket[bytes] = ctx.socket(kind)
        self.zmq.setsockopt(zmq.LINGER, 0)
        self.zmq.setsockopt(zmq.MAXMSGSIZE, max_message)
        self.keyring = keyring
        self.domain = ""  # what it serves, once bound with a keyring (access.py)
        self.on_bind: Callable[[BusSocket], None] | None = None  # told after each bind
        self._ctx = ctx
        self._loop = asyncio.get_running_loop()
        self._readers: deque[tuple[asyncio.Future[Any], int]] = deque()  # (future, what)
        self._senders: deque[tuple[asyncio.Future[None], list[bytes]]] = deque()
        self._fd: int = self.zmq.getsockopt(zmq.FD)
        self._pump_scheduled = False
        self._monitors: list[BusSocket] = []
        # What it moved, for the per-call figures (messages and wake-ups per call: bench).
        self.sent = 0
        self.received = 0
        self.pumps = 0  # times the loop woke for this socket (its FD signalled, or a re-check)
        self._loop.add_reader(self._fd, self.pump)

    # --- configuration ------------------------------------------------------------
    def setsockopt(self, option: int, value: int | bytes) -> None:
        self.zmq.setsockopt(option, value)

    def bind(self, endpoint: str) -> None:
        if self.keyring is not None:
            self.domain = self.keyring.serve(self.zmq, endpoint)
        self.zmq.bind(endpoint)
        if self.on_bind is not None:
            self.on_bind(self)

    def connect(self, endpoint: str) -> None:
        if self.keyring is not None:
            self.keyring.dial(self.zmq, endpoint)
        self.zmq.connect(endpoint)

    def get_monitor_socket(self, events: int) -> BusSocket:
        """A PAIR socket receiving this socket's monitor events (zmq_socket_monitor)."""
        endpoint = f"inproc://zeroslee-monitor-{next(_monitor_ids)}"
        self.zmq.monitor(endpoint, events)
        monitor = BusSocket(self._ctx, zmq.PAIR)
        monitor.connect(endpoint)
        self._monitors.append(monitor)
        return monitor

    def close(self) -> None:
        if self.zmq.closed:
            return
        self._loop.remove_reader(self._fd)
        for reader, _ in self._readers:
            reader.cancel()
        for sender, _ in self._senders:
            sender.cancel()
        for monitor in self._monitors:
            monitor.close()
        self.zmq.close(linger=0)

    # --- receiving ----------------------------------------------------------------
    async def recv(self, flags: int = 0) -> bytes:
        """One single-frame message. With `zmq.NOBLOCK`, raises `zmq.Again` if none waits."""
        if flags & _NOBLOCK:
            now = self.zmq.recv(_NOBLOCK)
            self.received += 1
            return now
        data: bytes = await self._receive(_SINGLE)
        return data

    async def recv_multipart(self) -> list[bytes]:
        frames: list[bytes] = await self._receive(_MULTIPART)
        return frames

    async def recv_from(self) -> tuple[list[bytes], str]:
        """A multipart message and the member who sent it (its connection's User-Id; ""
        without a keyring, where no one is authenticated)."""
        got: tuple[list[bytes], str] = await self._receive(_WITH_USER)
        return got

    def _take(self, what: int) -> Any:
        """One message off the socket now (raises zmq.Again if none waits)."""
        sock = self.zmq
        if what == _SINGLE:
            data = sock.recv(_NOBLOCK)
            self.received += 1
            return data
        if what == _MULTIPART or self.keyring is None:
            frames = sock.recv_multipart(_NOBLOCK)
            self.received += 1
            return frames if what == _MULTIPART else (frames, "")
        parts = sock.recv_multipart(_NOBLOCK, copy=False)
        self.received += 1
        return [part.bytes for part in parts], str(parts[-1].get("User-Id"))

    async def _receive(self, what: int) -> Any:
        self._drop_abandoned()
        if not self._readers:
            try:
                got = self._take(what)
            except zmq.Again:
                pass
            else:
                self._recheck_senders()
                return got
        fut: asyncio.Future[Any] = self._loop.create_future()
        self._readers.append((fut, what))
        return await fut

    # --- sending ------------------------------------------------------------------
    async def send(self, data: bytes) -> None:
        await self.send_multipart([data])

    async def send_multipart(self, frames: list[bytes]) -> None:
        """Queued behind earlier parked sends, so one socket's messages keep their order."""
        if not self._senders:
            try:
                self.zmq.send_multipart(frames, _NOBLOCK)
            except zmq.Again:
                pass
            else:
                self.sent += 1
                if self._readers:
                    self._schedule_pump()
                return
        fut: asyncio.Future[None] = self._loop.create_future()
        self._senders.append((fut, frames))
        await fut

    # --- the loop's side ----------------------------------------------------------
    def _drop_abandoned(self) -> None:
        """Forget readers whose wait was cancelled (a timeout): one left at the head would
        send the next receive to the slow path, to wait for an edge that may not come."""
        while self._readers and self._readers[0][0].done():
            self._readers.popleft()

    def _recheck_senders(self) -> None:
        if self._senders:
            self._schedule_pump()

    def _schedule_pump(self) -> None:
        if not self._pump_scheduled:
            self._pump_scheduled = True
            self._loop.call_soon(self.pump)

    def pump(self) -> None:
        """Move messages between ZeroMQ and the parked futures until neither can move."""
        self._pump_scheduled = False
        self.pumps += 1
        sock = self.zmq
        if sock.closed:
            return
        while True:
            events: int = sock.getsockopt(_EVENTS)  # type: ignore[assignment]
            moved = False
            if events & _POLLIN:
                self._drop_abandoned()
                if self._readers:
                    fut, what = self._readers.popleft()
                    fut.set_result(self._take(what))
                    moved = True
            if events & _POLLOUT:
                while self._senders and self._senders[0][0].done():
                    self._senders.popleft()
                if self._senders:
                    sent, frames = self._senders.popleft()
                    sock.send_multipart(frames, _NOBLOCK)
                    self.sent += 1
                    sent.set_result(None)
                    moved = True
            if not moved:
                return
