"""Read access to a node's local replica: the statestore's LMDB environment.

"Reads come from the local replica" (DESIGN §4): the router and sip-ra of a node open
the store's environment read-only, as LMDB intends for several processes on one host,
and never write to it. Every write goes to the statestore as a `Commit` over ZeroMQ,
which checks the versions read here; so a read that raced a commit is caught there
and the delivery retried, never silently applied.

Record layout: value = 8-byte big-endian version (the commit sequence that wrote it)
followed by the payload bytes.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from pathlib import Path
from typing import Any, cast

import lmdb

VERSION = struct.Struct(">Q")
DATA_DB = b"data"
META_DB = b"meta"


def pack(version: int, payload: bytes) -> bytes:
    return VERSION.pack(version) + payload


def unpack(raw: bytes) -> tuple[int, bytes]:
    return VERSION.unpack_from(raw)[0], raw[VERSION.size :]


def env_path(data_dir: Path) -> Path:
    return data_dir / "store.lmdb"


class ReplicaUnavailable(Exception):
    """The local store has not created its environment yet."""


class Replica:
    """Read-only view; `read()` gives a consistent snapshot for one delivery."""

    def __init__(self, data_dir: Path) -> None:
        self.path = env_path(data_dir)
        self._env: lmdb.Environment | None = None
        self._db: Any = None

    def _open(self) -> lmdb.Environment:
        if self._env is None:
            if not (self.path / "data.mdb").exists():
                raise ReplicaUnavailable(str(self.path))
            env = lmdb.open(str(self.path), readonly=True, lock=True, max_dbs=4, create=False, max_readers=1024)
            try:
                self._db = env.open_db(DATA_DB, create=False)
            except lmdb.NotFoundError as exc:
                # The store has created its file but not yet committed its database (it is
                # starting beside us): not there yet, like a missing file. It crashed a
                # router that started a moment before its store.
                env.close()
                raise ReplicaUnavailable(f"{self.path}: no database yet") from exc
            self._env = env
        return self._env

    def read(self, buffers: bool = False) -> ReadView:
        """A snapshot; with `buffers`, its values are views into the map, valid until the
        next operation on the view (for `ReadView.each`)."""
        env = self._open()
        try:
            txn = self._begin(env, buffers)
        except lmdb.MapResizedError:
            env.set_mapsize(0)  # the writer grew the map; adopt the new size
            txn = self._begin(env, buffers)
        except lmdb.ReadersFullError:
            env.reader_check()  # slots of processes killed mid-read; then one more try
            try:
                txn = self._begin(env, buffers)
            except lmdb.ReadersFullError as exc:
                raise ReplicaUnavailable("every LMDB reader slot is taken") from exc
        return ReadView(txn)

    def _begin(self, env: lmdb.Environment, buffers: bool) -> Any:
        return env.begin(db=self._db, buffers=True) if buffers else env.begin(db=self._db)

    def close(self) -> None:
        if self._env is not None:
            self._env.close()
            self._env = None


class ReadView:
    """One LMDB read transaction; use as a context manager and keep it short."""

    def __init__(self, txn: lmdb.Transaction) -> None:
        self.txn = txn

    def __enter__(self) -> ReadView:
        return self

    def __exit__(self, *exc: object) -> None:
        # A read-only LMDB transaction keeps its reader slot until the Python object is
        # freed, not just aborted; a view caught in a reference cycle (a delivery's
        # records) would hold it until the cyclic GC ran, and under load the slots ran
        # out (MDB_READERS_FULL). Dropping our reference frees the slot now.
        self.txn.abort()
        del self.txn

    def get(self, key: str) -> tuple[int, bytes | None]:
        raw = self.txn.get(key.encode())
        if raw is None:
            return 0, None
        return unpack(bytes(raw))

    def count(self, prefix: str) -> int:
        """How many keys lie under `prefix` (keys only: no value is copied)."""
        start = prefix.encode()
        cursor = self.txn.cursor()
        if not cursor.set_range(start):
            return 0
        n = 0
        for key in cursor.iternext(keys=True, values=False):
            if not bytes(key).startswith(start):
                break
            n += 1
        return n

    def each(self, prefix: str) -> Iterator[tuple[str, memoryview]]:
        """Every record under `prefix`: its key and its payload as it lies in the map (in a
        view read with `buffers`), valid only until the next item is asked for: decode it
        first. No value is copied out. A fault-tolerant RA scans all its entries every
        second; copied out (twice), 10,000 dialogs made about 10 MB of garbage a second in
        each sip-ra, and its private memory stood about 0.8 KB per dialog higher."""
        start = prefix.encode()
        cursor = self.txn.cursor()
        if not cursor.set_range(start):
            return
        entries = cast(Iterator[tuple[memoryview, memoryview]], iter(cursor))
        for key, raw in entries:
            whole = bytes(key)
            if not whole.startswith(start):
                return
            yield whole.decode(), memoryview(raw)[VERSION.size :]

    def scan(self, prefix: str, limit: int = 1_000_000) -> list[tuple[str, int, bytes]]:
        found: list[tuple[str, int, bytes]] = []
        start = prefix.encode()
        cursor = self.txn.cursor()
        if not cursor.set_range(start):
            return found
        version_of = VERSION.unpack_from
        entries = cast(Iterator[tuple[bytes, bytes]], iter(cursor))  # bytes: the txn uses no buffers
        for key, raw in entries:
            if not key.startswith(start) or len(found) >= limit:
                break
            found.append((key.decode(), version_of(raw)[0], raw[8:]))
        return found
