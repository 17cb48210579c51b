"""The process runtime shared by every service shell.

Parses the common command line (`--node`, `--config`), configures logging, builds the
ZeroMQ context with linger 0, and runs the service's main coroutine until SIGINT or
SIGTERM, then closes every socket. A DEALER/ROUTER request helper gives req/rep with
timeouts without the stuck-forever failure mode of REQ sockets.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import gc
import ipaddress
import itertools
import os
import signal
import socket
import sys
import threading
import time
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

import zmq
from zmq.utils.monitor import parse_monitor_message

from zeroslee import __version__, access, bus, curve, log
from zeroslee.bussocket import MAX_MESSAGE, BusSocket
from zeroslee.config import Config, load, parse_hostport
from zeroslee.liveness import Liveness
from zeroslee.metrics import Metrics, process_families
from zeroslee.tracing import Trace

HANDSHAKE_FAILED = (
    zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL | zmq.EVENT_HANDSHAKE_FAILED_AUTH
)


class Process:
    """What a service shell gets: its config, node, logger, zmq context, counters."""

    def __init__(self, service: str, config: Config, node: str | None) -> None:
        self.service = service
        self.config = config
        self.node = node
        self.log = log.configure(service, node, config.log_level)
        self.ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
        self.ctx.setsockopt(zmq.LINGER, 0)
        self.sockets: list[BusSocket] = []
        self.incarnation = time.time_ns()
        self.counters: dict[str, int] = {}
        self.stopping = asyncio.Event()
        self.crashed = False
        self.beacons: list[Beacon] = []
        self.keyring: curve.Keyring | None = None
        self.gatekeeper: curve.Gatekeeper | None = None
        self.guards: list[asyncio.Task[None]] = []  # count failed handshakes (`guard`)
        self.member = node or service  # whose key this process holds (access.py)
        self.metrics = Metrics(service, node or "")
        self.metrics.source(lambda: process_families(self.counters, self.bus_counts()))
        self.trace = Trace(config.trace)
        if config.security.insecure:
            self.log.warning("bus insecure", detail="insecure = true: every bus socket accepts anyone, in plaintext")
        else:
            self.secure()

    def secure(self) -> None:
        """Load our keys and start the ZAP handler before any socket binds: a CURVE
        server whose context has no handler would accept every client key."""
        self.keyring = curve.Keyring(self.config, self.member)
        if self.keyring.loose_mode:
            self.log.warning("secret key readable by others", detail=self.keyring.loose_mode)
        loop = asyncio.get_running_loop()

        def refused(domain: str, who: str, times: int) -> None:  # the handler's thread
            loop.call_soon_threadsafe(
                lambda: self.log.warning("bus connection refused", domain=domain, member=who, times=times)
            )

        self.gatekeeper = curve.Gatekeeper(self.ctx, self.keyring, refused)
        self.gatekeeper.start()

    def bus_counts(self) -> dict[str, int]:
        """Bus messages sent and received by every socket of this process (heartbeats
        included), and the loop's wake-ups for them: `bus.sent`, `bus.received`, `bus.wakeups`."""
        socks = self.sockets
        return {
            "bus.sent": sum(s.sent for s in socks) + sum(b.sent for b in self.beacons),
            "bus.received": sum(s.received for s in socks),
            "bus.wakeups": sum(s.pumps for s in socks),
        }

    def count(self, name: str, n: int = 1) -> None:
        self.counters[name] = self.counters.get(name, 0) + n

    def reject(self, what: str, error: object, **where: Any) -> None:
        """Count and log one piece of bad input, then carry on."""
        self.count(f"rejected.{what}")
        self.log.warning("rejected", what=what, error=str(error)[:200], **where)

    def decode(self, data: bytes, socket: str) -> bus.Message | None:
        """A bus message, or None for junk (counted and logged as `rejected.bus`)."""
        try:
            return bus.decode(data)
        except bus.BadMessage as exc:
            self.reject("bus", exc, socket=socket)
            return None

    def socket(self, kind: int, max_message: int = MAX_MESSAGE) -> BusSocket:
        sock = BusSocket(self.ctx, kind, self.keyring, max_message)
        if self.keyring is not None:
            sock.on_bind = lambda bound: self.guard(bound, bound.domain)
        self.sockets.append(sock)
        return sock

    def guard(self, sock: BusSocket | zmq.Socket[bytes], domain: str) -> None:
        """Count every failed handshake on a bound socket (`rejected.handshake`): a client
        without keys (the mechanism does not match), with a key the ZAP handler refused,
        or speaking no ZMTP at all. Logged at the first and every 100th, per socket:
        a refused client retries every 100 ms."""
        if isinstance(sock, BusSocket):
            monitor = sock.get_monitor_socket(HANDSHAKE_FAILED)
        else:  # a beacon's socket, owned by its thread: its monitor is read here
            endpoint = f"inproc://zeroslee-guard-{id(sock)}"
            sock.monitor(endpoint, HANDSHAKE_FAILED)
            monitor = BusSocket(self.ctx, zmq.PAIR)
            monitor.connect(endpoint)
            self.sockets.append(monitor)
        self.guards.append(asyncio.ensure_future(self._count_failures(monitor, domain)))

    async def _count_failures(self, monitor: BusSocket, domain: str) -> None:
        failures = 0
        while True:
            event = parse_monitor_message(await monitor.recv_multipart())
            failures += 1
            self.count("rejected.handshake")
            if failures == 1 or failures % 100 == 0:
                self.log.warning("bus handshake failed", domain=domain, code=event["value"], failures=failures)

    def permits(self, sock: BusSocket, member: str, message: bus.Message) -> bool:
        """Whether `member` may send `message` on `sock` (access.py's second layer):
        counted and logged as `rejected.forbidden` when not. Everyone may, insecure."""
        if self.keyring is None:
            return True
        kind = type(message).__name__
        if access.may_send(sock.domain, self.keyring.role(member), kind):
            return True
        self.reject("forbidden", f"{member or 'unknown'} may not send {kind} on {sock.domain}", member=member)
        return False

    def beacon(self, endpoint: str, interval: float, message: Callable[[], bytes]) -> Beacon:
        """A PUB socket at `endpoint` sending `message()` every `interval` from a thread."""
        beacon = Beacon(self.ctx, endpoint, interval, message, self.keyring)
        if self.keyring is not None:
            self.guard(beacon.sock, access.HEARTBEAT)
        self.beacons.append(beacon)
        return beacon

    def serve_metrics(self) -> None:
        """Serve /metrics where the cluster file says; a port that cannot be had costs
        the process its metrics (logged), never its service."""
        endpoint = self.config.metrics_endpoint(self.service, self.node)
        if not endpoint:
            return
        try:
            self.metrics.serve(endpoint, asyncio.get_running_loop())
        except OSError as exc:
            self.count("metrics.unavailable")
            self.log.error("metrics not served", endpoint=endpoint, error=str(exc))

    def traced(self, message: bus.TraceRequest) -> bus.TraceReply:
        return bus.TraceReply(message.req, self.service, self.node or "", self.trace.records(message.keys))

    def close(self) -> None:
        self.metrics.close()
        for task in self.guards:
            task.cancel()
        for beacon in self.beacons:
            beacon.stop()
        for sock in self.sockets:
            sock.close()
        if self.gatekeeper is not None:
            self.gatekeeper.stop()
        self.ctx.destroy(linger=0)


class Beacon:
    """Heartbeats that never queue behind work (DESIGN §7: a busy node is not a dead node).

    A thread of its own owns a PUB socket and sends `message()` every `interval`. The
    event loop only sets the state the message reports; a loop busy for hundreds of ms
    with a burst delays no beat. Python's GIL hands the thread its turn within the switch
    interval (5 ms), whatever the loop is doing. So silence means the process is gone or
    unreachable (a partition), never that it is busy. A process whose loop is wedged for
    good is caught by the state itself: the loop stamps `alive` and the shell reports
    not ready when that stamp is old (see sip-ra's `beat`)."""

    def __init__(
        self,
        ctx: zmq.Context[zmq.Socket[bytes]],
        endpoint: str,
        interval: float,
        message: Callable[[], bytes],
        keyring: curve.Keyring | None = None,
    ):
        self.interval = interval
        self.message = message
        self.stopped = threading.Event()
        self.sock = ctx.socket(zmq.PUB)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.setsockopt(zmq.MAXMSGSIZE, 1024)  # subscribers send subscriptions only
        if keyring is not None:
            keyring.serve(self.sock, endpoint)
        self.sock.bind(endpoint)  # here, so that a port in use fails the start, not the thread
        self.thread = threading.Thread(target=self._run, name=f"beacon {endpoint}", daemon=True)
        self.sent = 0

    def start(self) -> None:
        self.thread.start()

    def _run(self) -> None:
        try:
            while not self.stopped.wait(self.interval):
                try:
                    self.sock.send(self.message(), zmq.NOBLOCK)
                    self.sent += 1
                except zmq.Again:
                    pass  # no subscriber's pipe has room: a beat is worth nothing late
        finally:
            self.sock.close(0)

    def stop(self) -> None:
        self.stopped.set()
        if self.thread.is_alive():
            self.thread.join(timeout=1.0)
        else:
            self.sock.close(0)


async def watch_connection(sock: BusSocket, on_change: Callable[[bool], None]) -> None:
    """Call `on_change(False)` when `sock`'s connection to its peer drops (the peer's
    process exited: its kernel closed the TCP connection) and `on_change(True)` when it
    is made again. Evidence, where silence would only be suspicion."""
    monitor = sock.get_monitor_socket(zmq.EVENT_DISCONNECTED | zmq.EVENT_HANDSHAKE_SUCCEEDED)
    while True:
        event = parse_monitor_message(await monitor.recv_multipart())["event"]
        on_change(event == zmq.EVENT_HANDSHAKE_SUCCEEDED)


def set_nice(log: Any, nice: int) -> int:
    """Give every thread of this process the nice value `nice` (Linux keeps one per
    thread; threads started later inherit the caller's). Returns the main thread's value
    afterwards: unchanged, with a warning, where the process may not lower it."""
    try:
        tids = [int(t) for t in os.listdir("/proc/self/task")]
    except OSError:
        tids = [0]
    for tid in tids:
        try:
            os.setpriority(os.PRIO_PROCESS, tid, nice)
        except PermissionError:
            log.warning("priority not changed: needs root or CAP_SYS_NICE", nice=nice)
            break
        except ProcessLookupError:  # a thread that has just ended
            continue
    got = os.getpriority(os.PRIO_PROCESS, 0)
    log.info("priority", nice=got)
    return got


UDP_BUFFER = 4 * 1024 * 1024  # bytes; the kernel caps it at net.core.rmem_max / wmem_max


def udp_socket(proc: Process, addr: tuple[str, int]) -> socket.socket:
    """A bound, non-blocking UDP socket with 4 MiB kernel buffers, for SIP.

    The default (212,992 bytes here) overflowed at 1,000 chat relays/s: datagrams were
    dropped in bursts, and the senders' retransmissions of lower CSeqs then arrived
    after higher ones and were rightly refused 500 (RFC 3261 §12.2.2). The effective
    sizes are logged: a host whose rmem_max is lower gets less, and says so."""
    family, kind, proto, _, sockaddr = socket.getaddrinfo(addr[0], addr[1], type=socket.SOCK_DGRAM)[0]
    sock = socket.socket(family, kind, proto)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, UDP_BUFFER)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, UDP_BUFFER)
    sock.bind(sockaddr)
    sock.setblocking(False)
    proc.log.info(
        "udp buffers",
        rcvbuf=sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF),
        sndbuf=sock.getsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF),
    )
    return sock


@functools.lru_cache(maxsize=1024)
def is_address(host: str) -> bool:
    """Whether `host` is an IP literal, which needs no DNS lookup before a send (asked
    for every datagram the balancer sends: remembered, not parsed each time)."""
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


RESOLVE_TIMEOUT = 2.0  # a SIP transaction's next hop that takes longer fails (503 / 408)


async def resolve_udp(host: str, port: int, family: int) -> tuple[str, int] | None:
    """An FQDN next hop's address (RFC 3263 §4.2, A/AAAA records for a given port), looked
    up off the event loop (the resolver blocks); None if it has none within the timeout."""
    loop = asyncio.get_running_loop()
    try:
        infos = await asyncio.wait_for(
            loop.getaddrinfo(host, port, family=family, type=socket.SOCK_DGRAM), RESOLVE_TIMEOUT
        )
    except (OSError, TimeoutError, UnicodeError):
        return None
    if not infos:
        return None
    host_found, port_found = infos[0][4][:2]
    return str(host_found), int(port_found)


def parse_args(service: str, needs_node: bool) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog=service)
    if needs_node:
        parser.add_argument("--node", required=True, help="node id from the cluster config")
    parser.add_argument("--config", default=None, help="cluster TOML (default $ZEROSLEE_CONFIG)")
    parser.add_argument(
        "--take-over",
        action="store_true",
        help="start, then wait for the running process of this role to exit, and serve in its place",
    )
    return parser.parse_args()


TAKEOVER_PATIENCE = 60.0  # seconds a --take-over waits for its predecessor
TAKEOVER_POLL = 0.002  # seconds between looks at its port


def wait_to_take_over(addr: tuple[str, int], service: str) -> float:
    """Until nothing holds UDP `addr` (the predecessor exited); the seconds waited. Our
    code is loaded by then, so what is left between the two processes is our sockets'
    setup and the first heartbeats: well inside a UA's first retransmission (T1)."""
    print(f"{service}: waiting to take over {addr[0]}:{addr[1]}", file=sys.stderr, flush=True)
    family = socket.AF_INET6 if ":" in addr[0] else socket.AF_INET
    started = time.monotonic()
    while time.monotonic() - started < TAKEOVER_PATIENCE:
        with socket.socket(family, socket.SOCK_DGRAM) as probe:
            try:
                probe.bind(addr)
                return time.monotonic() - started
            except OSError:
                time.sleep(TAKEOVER_POLL)  # the predecessor still runs
    raise SystemExit(f"{service}: {addr[0]}:{addr[1]} still held after {TAKEOVER_PATIENCE:g} s")


def run(
    service: str,
    main: Callable[[Process], Coroutine[Any, Any, None]],
    needs_node: bool = True,
    takes_over: Callable[[Config], tuple[str, int]] | None = None,
) -> None:
    """Entry point of a service process: `python -m <service> --node node-1`. With
    `takes_over` (the address a single instance serves: the balancer's SIP port),
    `--take-over` starts it beside the running one, to replace it when it exits."""
    args = parse_args(service, needs_node)
    config = load(args.config)
    node = getattr(args, "node", None)
    if node is not None:
        config.node(node)  # fail fast on an unknown node id
    waited = wait_to_take_over(takes_over(config), service) if args.take_over and takes_over is not None else None

    async def runner() -> bool:
        try:
            proc = Process(service, config, node)
        except curve.SecurityError as exc:  # the operator's keys, not a bug: one line
            log.configure(service, node, config.log_level).error("keys refused", error=str(exc))
            print(f"{service}: {exc}", file=sys.stderr, flush=True)
            raise SystemExit(78) from None  # EX_CONFIG
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, proc.stopping.set)
        proc.log.info("started", pid=os.getpid(), version=__version__, took_over_after=waited)
        proc.serve_metrics()
        tune_gc()
        lag = asyncio.create_task(watch_loop_lag(proc))
        task = asyncio.create_task(main(proc))
        stop = asyncio.create_task(proc.stopping.wait())
        await asyncio.wait({task, stop}, return_when=asyncio.FIRST_COMPLETED)
        arm_shutdown_watchdog(service)
        task.cancel()
        try:
            await task
        except asyncio.CancelledError:
            pass
        except Exception:
            proc.log.exception("crashed")
            proc.crashed = True
        finally:
            stop.cancel()
            lag.cancel()
            proc.close()
            proc.log.info("stopped", counters=proc.counters)
        return proc.crashed

    with asyncio.Runner(loop_factory=loop_factory()) as loop_runner:
        crashed = loop_runner.run(runner())
    if crashed:
        raise SystemExit(70)  # EX_SOFTWARE: a bug; the cluster fails this node over


LAG_PERIOD = 0.1  # s between the loop-lag probe's wake-ups while the process works
IDLE_LAG_PERIOD = 1.0  # s between them while it idles: a stall then delays next to nothing
BUSY_SHARE = 0.05  # of a core, used over the last probe's period: the process works
LAG_WARN = 0.02  # s late: worth a log line


async def watch_loop_lag(proc: Process) -> None:
    """Measure how late the event loop runs a timer: every SIP retransmission timer,
    lease and heartbeat in this process is that late too. Counted (`loop.stalls`, and
    `loop.lag_max_ms`) and logged when over 20 ms, so an operator can tell a stalled
    process from a slow network."""
    loop = asyncio.get_running_loop()
    period = LAG_PERIOD
    while True:
        used = time.process_time()
        due = loop.time() + period
        await asyncio.sleep(period)
        late = loop.time() - due
        # Every 0.1 s while the process works, every second while it idles: an idle
        # cluster (8 processes) spent 6.13% of a core with the probe at 10 Hz, 5.67% so.
        busy = time.process_time() - used >= BUSY_SHARE * (period + max(late, 0.0))
        period = LAG_PERIOD if busy else IDLE_LAG_PERIOD
        proc.metrics.loop_lag.observe(max(late, 0.0))
        if late > LAG_WARN:
            ms = round(late * 1000, 1)
            proc.count("loop.stalls")
            proc.counters["loop.lag_max_ms"] = max(proc.counters.get("loop.lag_max_ms", 0), int(ms))
            proc.log.warning("event loop stalled", ms=ms)


GC_YOUNG = 20_000  # allocations between young collections (CPython's default: 700)


def tune_gc() -> None:
    """Fewer, not longer, cyclic-GC pauses on the hot paths: the objects made while
    starting (modules, config, sockets) are frozen out of every later collection, and the
    young generation is collected every 20,000 allocations rather than every 700. Our
    per-message objects are acyclic (freed by reference counting), so this costs little
    memory. Disabled with ZEROSLEE_GC=default."""
    if os.environ.get("ZEROSLEE_GC") == "default":
        return
    gc.collect()
    gc.freeze()
    _, older, oldest = gc.get_threshold()
    gc.set_threshold(GC_YOUNG, older, oldest)


def loop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    """uvloop's event loop where installed (it halves the loop's own overhead on the SIP
    and bus paths); asyncio's own otherwise, or when ZEROSLEE_LOOP=asyncio."""
    if os.environ.get("ZEROSLEE_LOOP") == "asyncio":
        return None
    try:
        import uvloop
    except ImportError:
        return None
    return uvloop.new_event_loop


SHUTDOWN_GRACE = 5  # seconds a stopping process may take before it exits anyway


def arm_shutdown_watchdog(service: str) -> None:
    """A stop must not hang (a stuck shutdown once held a process past its supervisor's
    patience). SIGALRM fires even if the event loop is blocked; everything a service
    owns is in the replicated store, so exiting is safe. Said on stderr, then exit 0."""

    def expire(signum: int, frame: object) -> None:
        os.write(2, f'{{"event": "shutdown stalled", "service": "{service}", "level": "warning"}}\n'.encode())
        os._exit(0)

    signal.signal(signal.SIGALRM, expire)
    signal.alarm(SHUTDOWN_GRACE)


class Requester:
    """Request/reply over a DEALER socket: match replies by `req`, time out, never stick.

    One reader task dispatches replies to waiting futures; replies to requests that
    already timed out are dropped (and counted by the caller's `on_unmatched`).
    """

    def __init__(
        self, proc: Process, endpoint: str, identity: bytes | None = None, max_message: int = MAX_MESSAGE
    ) -> None:
        self.proc = proc
        self.endpoint = endpoint
        self.sock = proc.socket(zmq.DEALER, max_message)
        if identity is not None:
            self.sock.setsockopt(zmq.ROUTING_ID, identity)
        self.sock.connect(endpoint)
        self._ids = itertools.count(1)
        self._waiting: dict[int, asyncio.Future[bus.Message]] = {}

    def next_id(self) -> int:
        return next(self._ids)

    async def request(self, message: bus.Message, timeout: float) -> bus.Message:
        req: int = getattr(message, "req")  # noqa: B009 (every request type has one)
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[bus.Message] = loop.create_future()
        self._waiting[req] = fut
        # One timer handle per request rather than asyncio.wait_for's task and callbacks:
        # every commit, replication and vote comes through here.
        timer = loop.call_later(timeout, _time_out, fut)
        try:
            await self.sock.send(bus.encode(message))
            return await fut
        finally:
            timer.cancel()
            self._waiting.pop(req, None)

    def fail_waiting(self) -> None:
        """The peer is known to be gone: every request waiting on it times out now."""
        for fut in self._waiting.values():
            if not fut.done():
                fut.set_exception(TimeoutError("peer exited"))

    async def read_forever(self) -> None:
        while True:
            data = await self.sock.recv()
            try:
                message = bus.decode(data)
            except bus.BadMessage as exc:
                self.proc.reject("bus", exc, endpoint=self.endpoint)
                continue
            req = getattr(message, "req", None)
            fut = self._waiting.get(req) if isinstance(req, int) else None
            if fut is not None and not fut.done():
                fut.set_result(message)
            else:
                self.proc.count("bus.unmatched_reply")  # its request timed out already


def _time_out(fut: asyncio.Future[bus.Message]) -> None:
    if not fut.done():
        fut.set_exception(TimeoutError("no reply in time"))


async def follow_heartbeats(
    proc: Process,
    liveness: Liveness,
    tick: Callable[[], Awaitable[None]],
    on_disconnect: Callable[[str], None] | None = None,
    every: float = 0.0,
) -> None:
    """Feed every node's heartbeats into `liveness`; call `tick` after each beat and at
    least once per heartbeat interval (so silence is noticed too).

    With `every`, the beats are read in batches instead, every `every` seconds, and
    `tick` runs once per batch: for a process whose judgement of liveness is slow
    anyway (a router's or RA's adoption, after `adoption_dead_after`), a wake-up per
    beat of every node (20 a second with two nodes) is idle work for nothing. A beat
    read late is stamped late: that can delay seeing a silence by `every`, never
    make one up.

    With `on_disconnect`, the connection to each node's heartbeat publisher is watched
    too: when the publisher's process exits, its kernel closes the TCP connection and
    `on_disconnect(node)` runs at once, long before the heartbeats' silence would tell.
    A network partition closes nothing, so silence remains the rule that always holds."""
    sub = proc.socket(zmq.SUB)
    sub.setsockopt(zmq.SUBSCRIBE, b"")
    watcher: asyncio.Task[None] | None = None
    if on_disconnect is not None:
        by_endpoint = {node.heartbeat: node.id for node in proc.config.nodes}
        watcher = asyncio.ensure_future(_disconnects(proc, sub, by_endpoint, on_disconnect))
    for node in proc.config.nodes:
        sub.connect(node.heartbeat)
    try:
        while True:
            if every:
                await asyncio.sleep(every)
                beats = _queued(sub)
                _take_beats(proc, liveness, beats)
                await tick()
                continue
            try:
                beats = [await asyncio.wait_for(sub.recv(), proc.config.heartbeat_interval)]
                # Take every beat already queued before judging: after our own loop stalled
                # (load), the first beat read is one node's, and the others' would still
                # wait in the socket while their silence looked like a death.
                while len(beats) < 1000:
                    try:
                        beats.append(await sub.recv(zmq.NOBLOCK))
                    except zmq.Again:
                        break
            except TimeoutError:
                beats = []
            _take_beats(proc, liveness, beats)
            await tick()
    finally:
        if watcher is not None:
            watcher.cancel()


def _queued(sub: BusSocket, limit: int = 10_000) -> list[bytes]:
    """Every message waiting on `sub` now (at most `limit`)."""
    out: list[bytes] = []
    while len(out) < limit:
        try:
            out.append(sub.zmq.recv(zmq.NOBLOCK))
        except zmq.Again:
            break
    sub.received += len(out)
    return out


def _take_beats(proc: Process, liveness: Liveness, beats: list[bytes]) -> None:
    now = time.monotonic()
    for data in beats:
        beat = proc.decode(data, "heartbeat")
        if isinstance(beat, bus.NodeHeartbeat):
            addr = parse_hostport(beat.sip)
            liveness.heartbeat(beat.node, beat.ready, addr, now, beat.draining, beat.version)


async def _disconnects(
    proc: Process, sock: BusSocket, names: dict[str, str], on_disconnect: Callable[[str], None]
) -> None:
    monitor = sock.get_monitor_socket(zmq.EVENT_DISCONNECTED)
    while True:
        event = parse_monitor_message(await monitor.recv_multipart())
        name = names.get(event["endpoint"].decode(errors="replace"))
        if name is not None:
            proc.count("heartbeat.disconnected")
            on_disconnect(name)


async def watch_exits(proc: Process, endpoints: dict[str, str], on_exit: Callable[[str], None]) -> None:
    """Call `on_exit(name)` when the process bound at `endpoints[name]` has exited.

    Evidence, not suspicion: the TCP connection to it closed AND the next connection
    attempt was refused, i.e. nothing listens on its port any more. A process that is
    alive but unreachable (a partition) closes nothing and refuses nothing, so this never
    fires for it; leases and silence remain the rules for that case. A connection reset
    by the network while the process lives is followed by a successful reconnect, not a
    refusal, so it does not fire either. The sockets only connect; they never send."""

    async def watch(name: str, endpoint: str) -> None:
        sock = proc.socket(zmq.DEALER)
        sock.setsockopt(zmq.RECONNECT_IVL, 20)  # ms: how soon a refusal can be seen
        monitor = sock.get_monitor_socket(zmq.EVENT_DISCONNECTED | zmq.EVENT_CONNECT_RETRIED | zmq.EVENT_CONNECTED)
        sock.connect(endpoint)
        dropped = False  # disconnected, and no refusal seen yet
        while True:
            event = parse_monitor_message(await monitor.recv_multipart())["event"]
            if event == zmq.EVENT_DISCONNECTED:
                dropped = True
            elif event == zmq.EVENT_CONNECTED:
                dropped = False
            elif event == zmq.EVENT_CONNECT_RETRIED and dropped:
                dropped = False
                proc.count("peer.exited")
                proc.log.info("peer process exited", peer=name)
                on_exit(name)

    await asyncio.gather(*(watch(name, endpoint) for name, endpoint in endpoints.items()))


async def serve_control(
    proc: Process, endpoint: str, stats: Callable[[], dict[str, int | str | float]], ready: Callable[[], bool]
) -> None:
    """A management ROUTER socket: `StatsRequest` -> `StatsReply`, `Ping` -> `Pong`."""
    sock = proc.socket(zmq.ROUTER)
    sock.bind(endpoint)
    while True:
        ident, data = await sock.recv_multipart()
        message = proc.decode(data, "control")
        if message is None:
            continue
        if isinstance(message, bus.StatsRequest):
            reply: bus.Message = bus.StatsReply(message.req, proc.service, proc.node or "", stats())
        elif isinstance(message, bus.Ping):
            reply = bus.Pong(message.req, proc.service, ready())
        elif isinstance(message, bus.TraceRequest):
            reply = proc.traced(message)
        else:
            proc.reject("unexpected", type(message).__name__, socket="control")
            continue
        await sock.send_multipart([ident, bus.encode(reply)])
