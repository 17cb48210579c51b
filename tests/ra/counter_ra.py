"""A tiny resource adaptor that is not SIP, proving the fault-tolerant RA interface is
general. Run one per node: `python -m tests.ra.counter_ra --node node-1 --config ...`.

node-1 puts "job-1", "doomed" and "go", sets a fault-tolerant timer "alarm" and starts the
activity "ra-act"; node-2 removes "doomed" (node-1 hears data_removed) and ends "ra-act"
(an activity another node created), after firing a Tick on it. Every callback is logged as a JSON line ("ra" event),
which the integration test reads.
"""

from __future__ import annotations

import asyncio

from tests.ra.events import Tick
from zeroslee.ftra import FaultTolerance, FaultTolerantTimer, ReplicatedData, SleeEndpoint
from zeroslee.runtime import Process, run
from zeroslee.storeclient import StoreClient


class CounterRA:
    def __init__(self, proc: Process) -> None:
        self.proc = proc

    def fail_over(self, key: str) -> None:
        self.proc.log.info("ra", callback="fail_over", key=key)

    def data_removed(self, key: str) -> None:
        self.proc.log.info("ra", callback="data_removed", key=key)

    def timer_fired(self, key: str) -> None:
        self.proc.log.info("ra", callback="timer_fired", key=key)


async def main(proc: Process) -> None:
    assert proc.node is not None
    store = StoreClient(proc)
    data = ReplicatedData("counter", proc.node, store)
    ra = CounterRA(proc)
    slee = SleeEndpoint(proc, proc.config.node(proc.node).router, "counter")
    tolerance = FaultTolerance(proc, data, ra)
    async with asyncio.TaskGroup() as group:
        group.create_task(store.run())
        group.create_task(tolerance.run())
        while not await store.is_ready():
            await asyncio.sleep(0.1)
        if proc.node == "node-1":
            await data.put("job-1", b"42")
            await data.put("doomed", b"x")
            await FaultTolerantTimer(data).set("alarm", 2.0)
            await slee.start_activity("ra-act", "counter")
            while "doomed" not in tolerance.known:  # our watcher has seen it: removals count
                await asyncio.sleep(0.05)
            await data.put("go", b"")
            proc.log.info("ra", callback="ready", local_keys=data.local_keys())
        else:
            while data.get("go") is None:
                await asyncio.sleep(0.05)
            await data.remove("doomed")
            await slee.fire("ra-act", Tick(1))  # on an activity node-1 created
            await slee.end_activity("ra-act")
            proc.log.info("ra", callback="ready", keys=data.keys())


if __name__ == "__main__":
    run("counter-ra", main)
