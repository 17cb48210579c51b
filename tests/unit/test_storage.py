"""The statestore's LMDB layer: a full map grows instead of failing a commit."""

from __future__ import annotations

from pathlib import Path

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
