"""The statestore's LMDB layer: a full map grows instead of failing a commit."""

from __future__ import annotations

from pathlib import Path

import pytest

from statestore.storage import Storage


def test_a_full_map_doubles_and_the_commit_goes_through(tmp_path: Path) -> None:
    storage = Storage(tmp_path, map_size=64 * 1024, sync=False)
    value = b"x" * 2000
    for seq in range(1, 201):  # ~400 KB into a 64 KB map
        storage.apply(seq, [(f"k/{seq}", value)])
    assert storage.map_growths > 0
    assert storage.stats()["map_size"] > 64 * 1024
    assert len(storage.snapshot("k/")) == 200 and storage.seq == 200
    storage.close()
    again = Storage(tmp_path, map_size=64 * 1024, sync=False)  # reopened after a restart
    assert again.seq == 200 and len(again.snapshot("k/")) == 200
    again.close()


def test_a_store_of_another_key_format_is_refused_with_a_way_out(tmp_path: Path) -> None:
    """An older var/ (no format: key parts unescaped) would be read wrongly: refused at
    start, naming `make clean`; an empty store takes the current format."""
    import lmdb

    from statestore.storage import StoreFormatError
    from zeroslee import keys
    from zeroslee.replica import DATA_DB, env_path

    fresh = Storage(tmp_path / "fresh", 1 << 20, False)
    fresh.apply(1, [(keys.name("room"), b"n1")])
    fresh.close()
    Storage(tmp_path / "fresh", 1 << 20, False).close()  # ours: opens again

    path = env_path(tmp_path / "old")
    path.mkdir(parents=True)
    env = lmdb.open(str(path), max_dbs=4)
    with env.begin(write=True, db=env.open_db(DATA_DB)) as txn:
        txn.put(b"name/a/b", b"\x00" * 8 + b"n1")  # written by a zeroslee before the format
    env.close()
    with pytest.raises(StoreFormatError, match="make clean"):
        Storage(tmp_path / "old", 1 << 20, False)
