"""A node-local client of the statestore: consistent reads and versioned commits.

Reads come from the local replica (LMDB, read-only); commits go to the local statestore
over DEALER/ROUTER and are acknowledged only once replicated (DESIGN §4).
"""

from __future__ import annotations

from zeroslee import bus
from zeroslee.replica import Replica
from zeroslee.runtime import Process, Requester


class CommitFailed(Exception):
    """The store could not take the commit (no primary, timeout): not a conflict."""


class StoreClient:
    def __init__(self, proc: Process) -> None:
        assert proc.node is not None
        node = proc.config.node(proc.node)
        self.proc = proc
        self.link = Requester(proc, node.store)
        self.replica = Replica(proc.config.data_dir(proc.node))
        self.timeout = max(2.0, proc.config.store.replicate_timeout * 4)

    async def commit(
        self,
        reads: list[tuple[str, int]],
        writes: list[tuple[str, bytes | None]],
        prefix_reads: list[tuple[str, int, int]] | None = None,
    ) -> bus.CommitResult:
        """Commit; a result with ok=False and conflicts means: re-read and retry."""
        message = bus.Commit(self.link.next_id(), reads, writes, prefix_reads or [], self.proc.service)
        try:
            result = await self.link.request(message, self.timeout)
        except TimeoutError as exc:
            raise CommitFailed("statestore did not answer") from exc
        assert isinstance(result, bus.CommitResult)
        if not result.ok and not result.conflicts:
            raise CommitFailed(result.error or "commit refused")
        return result

    async def is_ready(self) -> bool:
        try:
            pong = await self.link.request(bus.Ping(self.link.next_id(), self.proc.service), 0.5)
        except TimeoutError:
            return False
        return isinstance(pong, bus.Pong) and pong.ready

    async def run(self) -> None:
        await self.link.read_forever()
