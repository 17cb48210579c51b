"""BusSocket over real ZeroMQ sockets (inproc and TCP loopback) in a real event loop."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
import zmq
from zmq.utils.monitor import parse_monitor_message

from zeroslee.bussocket import BusSocket


def in_loop(body: Callable[[zmq.Context[Any]], Awaitable[None]]) -> None:
    ctx: zmq.Context[Any] = zmq.Context()

    async def main() -> None:
        await asyncio.wait_for(body(ctx), 10)

    try:
        asyncio.run(main())
    finally:
        ctx.destroy(linger=0)


def pair(ctx: zmq.Context[Any], endpoint: str) -> tuple[BusSocket, BusSocket]:
    server, client = BusSocket(ctx, zmq.ROUTER), BusSocket(ctx, zmq.DEALER)
    server.bind(endpoint)
    client.connect(endpoint)
    return server, client


@pytest.mark.parametrize("endpoint", ["inproc://echo", "tcp://127.0.0.1:5791"])
def test_requests_in_flight_come_back_in_order(endpoint: str) -> None:
    async def body(ctx: zmq.Context[Any]) -> None:
        server, client = pair(ctx, endpoint)

        async def echo() -> None:
            while True:
                ident, data = await server.recv_multipart()
                await server.send_multipart([ident, data])

        task = asyncio.create_task(echo())
        for i in range(500):  # many in flight: most sends and receives take the fast path
            await client.send(b"%d" % i)
        got = [await client.recv() for _ in range(500)]
        assert got == [b"%d" % i for i in range(500)]
        task.cancel()
        server.close()
        client.close()

    in_loop(body)


def test_a_parked_reader_wakes_when_a_message_arrives_later() -> None:
    async def body(ctx: zmq.Context[Any]) -> None:
        server, client = pair(ctx, "tcp://127.0.0.1:5792")
        reader = asyncio.create_task(server.recv_multipart())
        await asyncio.sleep(0.05)  # the reader parks: nothing has been sent yet
        assert not reader.done()
        await client.send(b"late")
        ident, data = await reader
        assert data == b"late"
        await server.send_multipart([ident, b"reply"])
        assert await client.recv() == b"reply"
        server.close()
        client.close()

    in_loop(body)


def test_a_timed_out_reader_does_not_swallow_the_next_message() -> None:
    async def body(ctx: zmq.Context[Any]) -> None:
        server, client = pair(ctx, "inproc://timeout")
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(server.recv_multipart(), 0.05)
        await client.send(b"after")
        _, data = await server.recv_multipart()
        assert data == b"after"
        server.close()
        client.close()

    in_loop(body)


def test_noblock_receive_raises_again_when_empty() -> None:
    async def body(ctx: zmq.Context[Any]) -> None:
        sub, pub = BusSocket(ctx, zmq.SUB), BusSocket(ctx, zmq.PUB)
        sub.setsockopt(zmq.SUBSCRIBE, b"")
        pub.bind("inproc://beats")
        sub.connect("inproc://beats")
        with pytest.raises(zmq.Again):
            await sub.recv(zmq.NOBLOCK)
        sub.close()
        pub.close()

    in_loop(body)


def test_sends_to_an_absent_peer_wait_and_keep_their_order() -> None:
    """A DEALER with no connected peer (IMMEDIATE: no pipe before the connection) cannot
    send (EAGAIN): its sends park, and leave in order once the peer is there."""

    async def body(ctx: zmq.Context[Any]) -> None:
        client = BusSocket(ctx, zmq.DEALER)
        client.setsockopt(zmq.IMMEDIATE, 1)
        client.connect("tcp://127.0.0.1:5793")
        sends = [asyncio.create_task(client.send(b"%d" % i)) for i in range(3)]
        await asyncio.sleep(0.05)
        assert not any(s.done() for s in sends)
        server = BusSocket(ctx, zmq.ROUTER)
        server.bind("tcp://127.0.0.1:5793")
        await asyncio.gather(*sends)
        got = [(await server.recv_multipart())[1] for _ in range(3)]
        assert got == [b"0", b"1", b"2"]
        server.close()
        client.close()

    in_loop(body)


def test_monitor_reports_a_disconnect() -> None:
    async def body(ctx: zmq.Context[Any]) -> None:
        server, client = BusSocket(ctx, zmq.ROUTER), BusSocket(ctx, zmq.DEALER)
        server.bind("tcp://127.0.0.1:5794")
        # Watch before connecting: a connection made first would never report CONNECTED.
        monitor = client.get_monitor_socket(zmq.EVENT_CONNECTED | zmq.EVENT_DISCONNECTED)
        client.connect("tcp://127.0.0.1:5794")
        event = parse_monitor_message(await monitor.recv_multipart())
        assert event["event"] == zmq.EVENT_CONNECTED
        server.close()
        event = parse_monitor_message(await monitor.recv_multipart())
        assert event["event"] == zmq.EVENT_DISCONNECTED
        client.close()
        assert monitor.zmq.closed  # closed with the socket it watches

    in_loop(body)


def test_a_message_queued_behind_a_timed_out_reader_is_received_at_once() -> None:
    """The message arrives while the only parked reader is one that already timed out, and
    no event follows it: the next receive must still take it."""

    async def body(ctx: zmq.Context[Any]) -> None:
        server, client = pair(ctx, "inproc://abandoned")
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(server.recv_multipart(), 0.05)
        client.zmq.send(b"queued")  # straight into ZeroMQ: the loop has not looked yet
        assert server.zmq.getsockopt(zmq.EVENTS) & zmq.POLLIN  # ...and this takes the FD's edge
        _, data = await asyncio.wait_for(server.recv_multipart(), 1.0)
        assert data == b"queued"
        server.close()
        client.close()

    in_loop(body)
