"""balancer shell: the SIP front on 5060 (UDP, and TCP through streams.py), heartbeat
subscriptions, a stats socket."""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import asdict

from balancer.core import TCP, Balancer
from balancer.streams import Connection, Streams
from zeroslee.alarms import Alarms
from zeroslee.liveness import Liveness, NodeState
from zeroslee.metrics import Metric, counter, counters, gauge, gauges, method_label
from zeroslee.runtime import (
    Process,
    follow_heartbeats,
    is_address,
    resolve_udp,
    run,
    serve_control,
    set_nice,
    udp_socket,
)
from zeroslee.tap import Tap


class Front(asyncio.DatagramProtocol):
    def __init__(self, proc: Process) -> None:
        cfg = proc.config.balancer
        self.proc = proc
        self.core = Balancer(
            cfg.sip_addr,
            Liveness(cfg.dead_after, cfg.alive_after),
            cfg.spread,
            target_delay=cfg.target_delay,
            max_rate=cfg.max_rate,
            retry_after=cfg.retry_after,
        )
        for node in proc.config.nodes:  # known addresses, not yet alive
            self.core.liveness.nodes.setdefault(node.id, NodeState(node.sip_addr))
        # The nodes' first heartbeats come within a heartbeat interval or two of our start;
        # until then a request is left to its UA's retransmission (balancer README: restart).
        self.core.quiet_until = time.monotonic() + cfg.dead_after
        self.transport: asyncio.DatagramTransport | None = None
        self.live: list[str] = []
        self.lookups: set[asyncio.Future[None]] = set()
        self.streams = Streams(proc, self.stream_received, self.fell_back, self.stream_failed)
        self.nodes = {node.sip_addr: node.id for node in proc.config.nodes}
        self.tap = Tap(proc, cfg.sip_addr, {a: f"{n}/sip-ra" for a, n in self.nodes.items()}, "balancer")
        self.setup_seconds = proc.metrics.histogram(
            "zeroslee_setup_seconds", "A new INVITE: received to its node's first response other than 100"
        )
        self.relay_seconds = proc.metrics.histogram(
            "zeroslee_relay_seconds",
            "Any other request (INFO, BYE...): forwarded to its node's response (a chat INFO's relay)",
            ["method"],
        )
        proc.metrics.source(self.metric_families)
        self.alarms = Alarms(clear_after=10.0)  # overload (refusing), no node up
        self.refused_seen = 0
        self.started = time.monotonic()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        addr = addr[:2]  # an IPv6 socket gives (host, port, flowinfo, scope_id)
        edge = addr not in self.nodes
        summary = self.core.receive_datagram(data, addr, time.monotonic())
        self.tap.received(data, addr, edge=edge, note=f"to {summary}" if summary in self.core.liveness.nodes else "")
        if summary.startswith("rejected"):
            self.proc.reject("sip", summary, peer=f"{addr[0]}:{addr[1]}")
        self.flush()

    def stream_received(self, data: bytes, addr: tuple[str, int]) -> None:
        summary = self.core.receive_datagram(data, addr, time.monotonic(), TCP)
        self.tap.received(data, addr, tcp=True, note=f"to {summary}" if summary in self.core.liveness.nodes else "")
        if summary.startswith("rejected"):
            self.proc.reject("sip", summary, peer=f"{addr[0]}:{addr[1]}", transport="tcp")
        self.flush()

    def fell_back(self, data: bytes, addr: tuple[str, int]) -> None:
        self.core.over_udp(data, addr)
        self.flush()

    def stream_failed(self, data: bytes) -> None:
        self.core.send_failed(data)
        self.flush()

    def flush(self) -> None:
        for contact, peer in self.core.connection_aliases():
            self.streams.alias(contact, peer)
        for out, peer, may_fall_back in self.core.stream_messages_to_send():
            self.tap.sent(out, peer, tcp=True)
            self.streams.send(out, peer, may_fall_back)
        for out, peer in self.core.datagrams_to_send():
            if is_address(peer[0]):
                self.send(out, peer)
            else:  # an FQDN next hop: looked up off the loop; the rest of the flush goes on
                task = asyncio.ensure_future(self.send_resolved(out, peer))
                self.lookups.add(task)
                task.add_done_callback(self.lookups.discard)
        if self.core.delays:
            for method, new_call, seconds in self.core.delays:
                if new_call and method == "INVITE":
                    self.setup_seconds.observe(seconds)
                else:
                    self.relay_seconds.labels(method_label(method)).observe(seconds)
            self.core.delays.clear()

    def send(self, out: bytes, peer: tuple[str, int]) -> None:
        assert self.transport is not None
        when = time.time()
        try:
            self.transport.sendto(out, peer)
        except (OSError, ValueError) as exc:  # one bad destination costs no other message its send
            self.unsendable(out, peer, str(exc))
            return
        self.tap.sent(out, peer, edge=peer not in self.nodes, when=when)

    async def send_resolved(self, out: bytes, peer: tuple[str, int]) -> None:
        assert self.transport is not None
        sock = self.transport.get_extra_info("socket")
        address = await resolve_udp(peer[0], peer[1], sock.family)
        if address is None:
            self.unsendable(out, peer, "no address for the next hop")
            return
        self.send(out, address)

    def unsendable(self, out: bytes, peer: tuple[str, int], error: str) -> None:
        self.proc.count("sip.unsendable")
        self.proc.log.warning("next hop unreachable", peer=f"{peer[0]}:{peer[1]}", error=error)
        self.core.send_failed(out)
        self.flush()

    def error_received(self, exc: Exception) -> None:
        self.proc.count("sip.transport_error")

    async def watch(self) -> None:
        async def tick() -> None:
            self.report_changes()

        def disconnected(node: str) -> None:
            self.core.liveness.gone(node)
            self.report_changes()

        await follow_heartbeats(self.proc, self.core.liveness, tick, on_disconnect=disconnected)

    def report_changes(self) -> None:
        now = time.monotonic()
        was = self.live
        self.live = self.core.notice(now)
        if self.live != was:
            self.proc.count("live_changes")
            self.proc.log.info("live nodes", live=self.live, was=was)
        self.core.expire(now)
        self.judge_alarms(now)
        for call_id, node, forwards in self.core.timed_out:
            self.proc.log.warning("invite unanswered: 408", call_id=call_id, node=node, forwards=forwards)
        self.core.timed_out.clear()
        self.flush()  # an INVITE no node answered gets its 408 now

    def judge_alarms(self, now: float) -> None:
        """The front's own alarms: refusing calls for overload (cleared 10 s after the
        last refusal), and no node up (after the first seconds, when none can be yet)."""
        refused = self.core.counters.get("overload.refused", 0)
        if refused > self.refused_seen:
            share = round(self.core.refused_share() * 100)
            self.alarms.raise_now(
                "overload", f"refusing new calls with 503 ({share}% of the last period)", now, "major"
            )
            self.refused_seen = refused
        if not self.live and now - self.started > 2.0:
            self.alarms.set("no-node", "critical", "no node is up: every call gets 503", now)
        elif self.live:
            self.alarms.clear("no-node")

    def metric_families(self) -> list[Metric]:
        now, c = time.monotonic(), self.core.counters
        live = set(self.live)
        throttles = self.core.throttles
        refused = c.get("overload.refused", 0) + c.get("overload.refused_again", 0)
        return [
            *self._sip_families(),
            gauges(
                "zeroslee_node_live",
                "1 while the balancer routes new calls to the node",
                "node",
                {node: float(node in live) for node in self.core.liveness.nodes},
            ),
            gauges(
                "zeroslee_node_draining",
                "1 while the node is drained (zeroslee-admin drain): it takes no new calls",
                "node",
                {node: float(node in self.core.draining()) for node in self.core.liveness.nodes},
            ),
            counter(
                "zeroslee_live_changes",
                "Changes of the balancer's live-node set",
                self.proc.counters.get("live_changes", 0),
            ),
            counter("zeroslee_overload_refusals", "New requests refused 503 at the edge (admission control)", refused),
            counter("zeroslee_no_node_refusals", "Requests refused 503 because no node was up", c.get("no_node", 0)),
            gauges(
                "zeroslee_admission_rate",
                "New requests/s admitted to each node",
                "node",
                {n: t.rate for n, t in throttles.items()},
            ),
            gauges(
                "zeroslee_admission_delay_seconds",
                "Each node's smoothed response time",
                "node",
                {n: t.smoothed for n, t in throttles.items()},
            ),
            gauges(
                "zeroslee_admission_oldest_wait_seconds",
                "The oldest admitted request waiting",
                "node",
                {n: t.oldest_wait(now) for n, t in throttles.items()},
            ),
            gauge(
                "zeroslee_transactions",
                "Transactions the balancer forwarded that await a final response",
                len(self.core.pending),
            ),
            gauge("zeroslee_balancer_soft_state", "Transaction routes the balancer remembers", len(self.core.soft)),
            gauge("zeroslee_tcp_connections", "Open SIP TCP connections", len(self.streams.connections)),
            gauge(
                "zeroslee_alarms", "Alarms raised now by the balancer (overload, no node)", len(self.alarms.active(now))
            ),
            counter(
                "zeroslee_hep_copies", "SIP messages mirrored as HEP", self.tap.mirror.sent if self.tap.mirror else 0
            ),
            counter(
                "zeroslee_hep_lost", "HEP copies that could not be sent", self.tap.mirror.lost if self.tap.mirror else 0
            ),
        ]

    def _sip_families(self) -> list[Metric]:
        """What the UAs sent us (requests, retransmissions included) and what we sent them."""
        counts = self.tap.counts
        return [
            counters("zeroslee_sip_requests", "SIP requests received from UAs", "method", counts.received()),
            counters("zeroslee_sip_responses", "SIP responses sent to UAs", "status_class", counts.answered()),
        ]

    def stats(self) -> dict[str, int | str | float]:
        out: dict[str, int | str | float] = dict(self.proc.counters)
        out.update(self.proc.bus_counts())
        out.update(self.core.counters)
        out["live"] = json.dumps(self.live)
        out["draining"] = json.dumps(self.core.draining())
        out["versions"] = json.dumps({n: s.version for n, s in sorted(self.core.liveness.nodes.items())})
        out["alarms"] = json.dumps([asdict(a) for a in self.alarms.active(time.monotonic())])
        out["soft_state"] = len(self.core.soft)
        out["pending"] = len(self.core.pending)
        out.update(self.streams.stats())
        for node, throttle in self.core.throttles.items():  # admission control, per node
            out[f"admission.{node}.rate"] = round(throttle.rate, 1)
            out[f"admission.{node}.delay_ms"] = round(throttle.smoothed * 1000, 1)
            out[f"admission.{node}.refused_share"] = round(throttle.refused_share, 3)
            out[f"admission.{node}.waiting"] = len(throttle.waiting)
            out[f"admission.{node}.oldest_wait_ms"] = round(throttle.oldest_wait(time.monotonic()) * 1000, 1)
            out[f"admission.{node}.cuts"] = throttle.cuts
            out[f"admission.{node}.last_cut"] = throttle.last_cut
        return out

    async def control(self) -> None:
        await serve_control(self.proc, self.proc.config.balancer.control, self.stats, lambda: bool(self.live))


async def main(proc: Process) -> None:
    set_nice(proc.log, proc.config.balancer.nice)
    front = Front(proc)
    loop = asyncio.get_running_loop()
    sock = udp_socket(proc, proc.config.balancer.sip_addr)
    transport, _ = await loop.create_datagram_endpoint(lambda: front, sock=sock)
    host, port = proc.config.balancer.sip_addr
    server = await loop.create_server(lambda: Connection(front.streams), host, port, reuse_address=True)
    try:
        async with asyncio.TaskGroup() as group:
            group.create_task(front.watch())
            group.create_task(front.control())
            group.create_task(front.streams.reap())
    finally:
        server.close()
        for conn in list(front.streams.connections.values()):
            conn.close()
        transport.close()


if __name__ == "__main__":
    run("balancer", main, needs_node=False, takes_over=lambda config: config.balancer.sip_addr)
