"""The statestore's LMDB layer: a full map grows instead of failing a commit."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import lmdb
import msgspec
import pytest

from statestore.storage import Storage
from zeroslee import keys
from zeroslee.ftra import Entry, EntryHead, ReplicatedData
from zeroslee.replica import Replica, ReplicaUnavailable, env_path


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

    def old_store(name: str, *keys_written: bytes) -> Path:
        path = env_path(tmp_path / name)
        path.mkdir(parents=True)
        env = lmdb.open(str(path), max_dbs=4)
        with env.begin(write=True, db=env.open_db(DATA_DB)) as txn:
            for key in keys_written:  # written by a zeroslee before the format existed
                txn.put(key, b"\x00" * 8 + b"n1")
        env.close()
        return tmp_path / name

    # Ordinary names read the same: migrated in place, and opened again as ours.
    plain = old_store("plain", b"name/room-7", b"att/n1/s1", b"ra/sip/d1")
    Storage(plain, 1 << 20, False).close()
    Storage(plain, 1 << 20, False).close()
    # A room "a/b" of format 1 would read as another key: refused, naming the way out.
    with pytest.raises(StoreFormatError, match="make clean"):
        Storage(old_store("slash", b"name/room-7", b"name/a/b"), 1 << 20, False)
    with pytest.raises(StoreFormatError, match="make clean"):
        Storage(old_store("percent", b"name/50%"), 1 << 20, False)


def test_a_replica_whose_store_has_not_created_its_database_yet_is_unavailable_not_a_crash(tmp_path: Path) -> None:
    """A router or RA that starts a moment before its store finds the LMDB file without
    the store's database in it: ReplicaUnavailable (retried), never lmdb.NotFoundError."""
    path = env_path(tmp_path)
    path.mkdir(parents=True)
    lmdb.open(str(path), max_dbs=4).close()  # the file exists; the named database does not
    with pytest.raises(ReplicaUnavailable):
        Replica(tmp_path).read()


def test_a_scan_of_heads_decodes_in_place_what_a_full_scan_copies(tmp_path: Path) -> None:
    """The scan a fault-tolerant RA makes every second reads each entry's owner and timer
    where it lies in the map; it must see what the copying scan sees, escaped keys and a
    key just past the prefix included."""
    storage = Storage(tmp_path, map_size=1 << 20, sync=False)
    writes = [
        (keys.ra_data("sip", f"d{i}/x"), msgspec.msgpack.encode(Entry(f"node-{i % 2}", b"v" * 300, float(i))))
        for i in range(50)
    ]
    storage.apply(1, [*writes, ("ra/sip0", b"not ours"), (keys.ra_data("other", "d1"), b"nor this")])
    storage.close()  # one environment per process: the store's and the RA's are two processes
    replica = Replica(tmp_path)
    decode = msgspec.msgpack.Decoder(EntryHead).decode
    with replica.read(buffers=True) as view:
        heads = {keys.last(k): decode(raw) for k, raw in view.each(keys.ra_data_of("sip"))}
    with replica.read() as view:
        copied = {
            keys.last(k): msgspec.msgpack.decode(raw, type=Entry) for k, _, raw in view.scan(keys.ra_data_of("sip"))
        }
    assert len(heads) == 50 and heads.keys() == copied.keys()
    assert all((h.owner, h.fire_at) == (copied[k].owner, copied[k].fire_at) for k, h in heads.items())
    assert heads["d7/x"] == EntryHead("node-1", 7.0)
    replica.close()


def test_an_ras_survey_finds_every_key_its_due_timers_and_the_entries_of_nodes_not_live(tmp_path: Path) -> None:
    """One pass over the replica: what the fault-tolerance loop compares (removals),
    fires (this node's timers that are due) and adopts (entries of nodes gone)."""
    storage = Storage(tmp_path, map_size=1 << 20, sync=False)
    rows = {
        "a": ("node-1", 5.0),
        "b": ("node-1", 50.0),
        "c": ("node-2", 5.0),
        "d": ("node-3", 0.0),
        "e": ("node-1", 0.0),
    }
    storage.apply(
        1, [(keys.ra_data("sip", k), msgspec.msgpack.encode(Entry(o, b"v" * 100, t))) for k, (o, t) in rows.items()]
    )
    storage.close()
    replica = Replica(tmp_path)
    data = ReplicatedData("sip", "node-1", SimpleNamespace(replica=replica))  # type: ignore[arg-type]
    survey = data.survey(["node-1", "node-2"], now=10.0)
    assert survey is not None
    assert survey.keys == set(rows)
    assert survey.due == ["a"]  # ours and due; "b" is ours but later, "c" is node-2's, "e" has no timer
    assert survey.orphaned == {"d": EntryHead("node-3", 0.0)}
    replica.close()
    missing = ReplicatedData("sip", "node-1", SimpleNamespace(replica=Replica(tmp_path / "none")))  # type: ignore[arg-type]
    assert missing.survey(["node-1"], now=10.0) is None  # no replica yet: nothing to compare
