"""The witness process: `python -m statestore.witness_main` (no --node: it is no node's).

It keeps its vote in a small file written atomically (temp file, fsync, rename) before
any vote or in-sync change is acknowledged. Sockets: ROUTER `[witness] endpoint`:
`Vote` -> `VoteReply`, `Renew` -> `RenewReply`, `Ping` -> `Pong`.
"""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path

import msgspec
import zmq

from statestore.witness import Witness, WitnessState
from zeroslee import bus
from zeroslee.bussocket import BusSocket
from zeroslee.runtime import Process, run, watch_exits


def load_state(path: Path) -> WitnessState:
    if path.exists():
        return msgspec.json.decode(path.read_bytes(), type=WitnessState)
    return WitnessState()


def save_state(path: Path, state: WitnessState) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    with tmp.open("wb") as f:
        f.write(msgspec.json.encode(state))
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


async def main(proc: Process) -> None:
    cfg = proc.config.witness
    path = Path(cfg.data_dir or os.path.join(proc.config.data_root, "witness")) / "vote.json"
    witness = Witness(load_state(path), cfg.lease_wait)
    sock = proc.socket(zmq.ROUTER)
    sock.bind(cfg.endpoint)
    proc.log.info("witness", epoch=witness.state.epoch, primary=witness.state.primary)
    peers = {node.id: node.peer for node in proc.config.nodes}
    async with asyncio.TaskGroup() as group:
        group.create_task(watch_exits(proc, peers, witness.exited))
        group.create_task(serve(proc, sock, witness, path))


async def serve(proc: Process, sock: BusSocket, witness: Witness, path: Path) -> None:
    while True:
        (ident, data), member = await sock.recv_from()
        try:
            message = bus.decode(data)
        except bus.BadMessage as exc:
            proc.reject("bus", exc, socket="witness")
            continue
        if not proc.permits(sock, member, message):
            continue
        before = witness.state
        reply: bus.Message
        match message:
            case bus.Vote(req=req, candidate=candidate, epoch=epoch):
                granted = witness.vote(candidate, epoch, time.monotonic())
                reply = bus.VoteReply(req, granted, witness.state.epoch)
                if granted:
                    proc.log.info("voted", epoch=epoch, candidate=candidate)
            case bus.Renew(req=req, primary=primary, epoch=epoch, in_sync=in_sync):
                reply = bus.RenewReply(
                    req, witness.renew(primary, epoch, in_sync, time.monotonic()), witness.state.epoch
                )
            case bus.Ping(req=req):
                reply = bus.Pong(req, "witness", True)
            case _:
                proc.reject("unexpected", type(message).__name__, socket="witness")
                continue
        if witness.state is not before:
            save_state(path, witness.state)  # on disk before the answer leaves
        await sock.send_multipart([ident, bus.encode(reply)])


if __name__ == "__main__":
    run("witness", main, needs_node=False)
