"""The LMDB environment a statestore writes: versioned records plus replication metadata.

LMDB allows one writer per environment, so every commit is one write transaction holding
all of a delivery's writes and the new sequence number. The map grows by doubling when
full; `reader_check` clears stale reader slots left by crashed readers on start.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import lmdb

from zeroslee import keys
from zeroslee.replica import DATA_DB, META_DB, env_path, pack, unpack

Writes = list[tuple[str, bytes | None]]
Items = list[tuple[str, int, bytes]]


class StoreFormatError(Exception):
    """The store on disk was written with another key layout."""


class Storage:
    def __init__(self, data_dir: Path, map_size: int, sync: bool) -> None:
        path = env_path(data_dir)
        path.mkdir(parents=True, exist_ok=True)
        self.env = lmdb.open(
            str(path), map_size=map_size, max_dbs=4, sync=sync, metasync=sync, readahead=False, max_readers=1024
        )
        self.env.reader_check()
        self.data = self.env.open_db(DATA_DB)
        self.meta = self.env.open_db(META_DB)
        self._check_format(path)
        self.seq = self._meta_int(b"seq")
        self.epoch = self._meta_int(b"epoch")
        self.voted = self._meta_int(b"voted")
        self.map_growths = 0

    def _check_format(self, path: Path) -> None:
        """The key layout (`keys.FORMAT`) this store was written with must be ours. An
        empty store takes it. One written by an older zeroslee (no format: 1) is migrated
        when every key already reads the same in format 2 (each part needs no escaping and
        the key has its kind's number of parts: what any store of ordinary names holds);
        one holding a key that would read differently (a name with `/` or `%`) is refused,
        since it would be read wrongly."""
        found = self._meta_int(b"format")
        if found == keys.FORMAT:
            return
        if found == 0 and self._reads_the_same():
            self._write(lambda txn: txn.put(b"format", str(keys.FORMAT).encode(), db=self.meta))
            return
        self.env.close()
        raise StoreFormatError(
            f"{path} holds clustered state in key format {found or 1}; this zeroslee reads format "
            f"{keys.FORMAT}. Run `make clean` (it deletes var/ and every call's state), or run the "
            "zeroslee that wrote it."
        )

    def _reads_the_same(self) -> bool:
        with self.env.begin(db=self.data) as txn:
            for raw_key in txn.cursor().iternext(values=False):
                parts = bytes(raw_key).decode("utf-8", "surrogateescape").split(keys.SEP)
                if keys.ARITY.get(parts[0]) != len(parts) or any(keys.part(p) != p for p in parts):
                    return False
        return True

    def _meta_int(self, name: bytes) -> int:
        with self.env.begin(db=self.meta) as txn:
            raw = txn.get(name)
        return int(raw) if raw else 0

    def _write(self, body: object) -> None:
        """Run `body(txn)` in one write transaction, doubling the map if it fills."""
        while True:
            try:
                with self.env.begin(write=True) as txn:
                    body(txn)  # type: ignore[operator]
                return
            except lmdb.MapFullError:
                self.env.set_mapsize(self.env.info()["map_size"] * 2)
                self.map_growths += 1

    def version(self, key: str) -> int:
        with self.env.begin(db=self.data) as txn:
            raw = txn.get(key.encode())
        return 0 if raw is None else unpack(raw)[0]

    def conflicts(
        self,
        reads: list[tuple[str, int]],
        prefix_reads: list[tuple[str, int, int]],
        written: dict[str, int] | None = None,
    ) -> list[str]:
        """Keys whose version moved since the client read them (optimistic concurrency).

        `written` holds keys an earlier commit of the same group wrote (not yet in LMDB):
        a read of one is stale, and so is a range read touching one (conservatively).
        """
        pending = written or {}
        stale: list[str] = []
        with self.env.begin(db=self.data) as txn:
            for key, seen in reads:
                raw = None if key in pending else txn.get(key.encode())
                if key in pending or (0 if raw is None else unpack(bytes(raw))[0]) != seen:
                    stale.append(key)
            for prefix, count, max_version in prefix_reads:
                touched = any(k.startswith(prefix) for k in pending)
                if touched or summarize(txn, self.data, prefix) != (count, max_version):
                    stale.append(prefix)
        return stale

    def apply(self, seq: int, writes: Writes) -> None:
        self.apply_batch(seq, [writes])

    def apply_batch(self, first: int, batch: list[Writes]) -> None:
        """Commits `first`, `first + 1`, ... in one LMDB write transaction."""

        def body(txn: lmdb.Transaction) -> None:
            for seq, writes in enumerate(batch, start=first):
                for key, value in writes:
                    if value is None:
                        txn.delete(key.encode(), db=self.data)
                    else:
                        txn.put(key.encode(), pack(seq, value), db=self.data)
            txn.put(b"seq", str(first + len(batch) - 1).encode(), db=self.meta)

        self._write(body)
        self.seq = first + len(batch) - 1

    def set_voted(self, epoch: int) -> None:
        """The highest epoch this store voted in: kept across restarts (one vote per epoch)."""
        self._write(lambda txn: txn.put(b"voted", str(epoch).encode(), db=self.meta))
        self.env.sync(True)  # a vote is durable whatever `sync` says
        self.voted = epoch

    def set_epoch(self, epoch: int) -> None:
        self._write(lambda txn: txn.put(b"epoch", str(epoch).encode(), db=self.meta))
        self.epoch = epoch

    def snapshot(self, prefix: str = "", limit: int = 10_000_000) -> Items:
        items: Items = []
        with self.env.begin(db=self.data) as txn:
            cursor = txn.cursor()
            if cursor.set_range(prefix.encode()):
                for raw_key, raw in cursor:
                    if not raw_key.startswith(prefix.encode()) or len(items) >= limit:
                        break
                    version, payload = unpack(raw)
                    items.append((raw_key.decode(), version, payload))
        return items

    def replace(self, epoch: int, seq: int, items: Items) -> None:
        """Install a primary's snapshot in place of everything held (Clone pattern)."""

        def body(txn: lmdb.Transaction) -> None:
            txn.drop(self.data, delete=False)
            for key, version, payload in items:
                txn.put(key.encode(), pack(version, payload), db=self.data)
            txn.put(b"seq", str(seq).encode(), db=self.meta)
            txn.put(b"epoch", str(epoch).encode(), db=self.meta)

        self._write(body)
        self.seq, self.epoch = seq, epoch

    def stats(self) -> dict[str, int]:
        info, stat = self.env.info(), self.env.stat()
        pages = stat["branch_pages"] + stat["leaf_pages"] + stat["overflow_pages"]
        with self.env.begin(db=self.data) as txn:
            entries = txn.stat(self.data)["entries"]
        return {
            "map_size": info["map_size"],
            "pages_in_use": pages,
            "page_size": stat["psize"],
            "entries": entries,
            "map_growths": self.map_growths,
        }

    def close(self) -> None:
        self.env.close()


def summarize(txn: lmdb.Transaction, db: Any, prefix: str) -> tuple[int, int]:
    """(count, max version) of the records under `prefix`: a range's fingerprint."""
    count = max_version = 0
    start = prefix.encode()
    cursor = txn.cursor(db=db)
    if cursor.set_range(start):
        for raw_key, raw in cursor:
            if not bytes(raw_key).startswith(start):
                break
            count += 1
            max_version = max(max_version, unpack(bytes(raw))[0])
    return count, max_version
