"""The bus's access policy (access.py), the key files (curve.py) and the router's event
type registry: no process of the cluster is needed for these."""

from __future__ import annotations

import secrets
import shutil
import stat
import tempfile
from pathlib import Path

import msgspec
import pytest
import zmq
from zmq.utils import z85

from router.chat import ChatSbb, MessageEvent
from router.records import EventTypes, PendingEvent, UnknownEventType
from zeroslee import access, curve
from zeroslee.config import Config, load
from zeroslee.devcluster import cluster_toml

NODES = ["node-1", "node-2"]


@pytest.mark.parametrize(
    ("domain", "owner", "member", "allowed"),
    [
        (access.STORE, "node-1", "node-1", True),
        (access.STORE, "node-1", "node-2", False),  # another node never uses our store
        (access.STORE, "node-1", "admin", True),
        (access.STORE, "node-1", "witness", False),
        (access.STORE, "node-1", "balancer", False),
        (access.PEER, "node-1", "node-2", True),
        (access.PEER, "node-1", "node-1", False),
        (access.PEER, "node-1", "witness", True),  # it watches the store's process
        (access.PEER, "node-1", "admin", False),
        (access.ROUTER, "node-1", "node-1", True),
        (access.ROUTER, "node-1", "node-2", False),
        (access.ROUTER, "node-1", "balancer", False),
        (access.HEARTBEAT, "node-1", "balancer", True),
        (access.HEARTBEAT, "node-1", "node-2", True),
        (access.CONTROL, "node-1", "admin-alice", True),
        (access.CONTROL, "node-1", "node-1", False),
        (access.FRONT_CONTROL, "balancer", "admin", True),
        (access.FRONT_CONTROL, "balancer", "witness", False),
        (access.WITNESS_VOTE, "witness", "node-2", True),
        (access.WITNESS_VOTE, "witness", "balancer", False),
        (access.STORE, "node-1", "mallory", False),  # no member of that name
    ],
)
def test_who_may_connect_where(domain: str, owner: str, member: str, allowed: bool) -> None:
    assert access.may_connect(domain, owner, member, access.role_of(member, NODES)) is allowed


@pytest.mark.parametrize(
    ("domain", "role", "kind", "allowed"),
    [
        (access.STORE, access.NODE, "Commit", True),
        (access.STORE, access.ADMIN, "Query", True),
        (access.STORE, access.ADMIN, "Commit", False),
        (access.PEER, access.NODE, "Replicate", True),
        (access.PEER, access.WITNESS, "Vote", False),
        (access.PEER, access.WITNESS, "Replicate", False),
        (access.ROUTER, access.ADMIN, "EndActivity", True),
        (access.ROUTER, access.ADMIN, "FireEvent", False),
        (access.WITNESS_VOTE, access.ADMIN, "Vote", False),
        (access.WITNESS_VOTE, access.NODE, "Vote", True),
        (access.STORE, None, "Query", False),
    ],
)
def test_what_each_role_may_send(domain: str, role: str | None, kind: str, allowed: bool) -> None:
    assert access.may_send(domain, role, kind) is allowed


def secure_config(tmp_path: Path) -> Config:
    path = tmp_path / "cluster.toml"
    path.write_text(cluster_toml(tmp_path / "data", 5500, 2))
    config = load(path)
    assert sorted(curve.create_missing_keys(config)) == ["admin", "balancer", "node-1", "node-2", "witness"]
    return config


def test_keys_are_made_once_with_mode_0600(tmp_path: Path) -> None:
    config = secure_config(tmp_path)
    keydir = Path(config.security.keys)
    assert stat.S_IMODE(keydir.stat().st_mode) == 0o700
    for path in keydir.iterdir():
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path
    assert curve.create_missing_keys(config) == []  # a second run keeps them
    with pytest.raises(curve.SecurityError, match="has keys"):
        curve.create_keys(keydir, "node-1")


def test_a_key_path_of_forty_characters_is_a_path_not_a_key() -> None:
    # Certificate paths 40 characters long, as a Z85 key is, and made of its alphabet
    # (a temp dir of mkdtemp's length): each was taken for a key, and its member got no
    # key pair. Every member gets its pair.
    base = Path(tempfile.gettempdir())
    room = 40 - len(str(base)) - len("/") - len("/keys/balancer.key")  # the directory name's length
    if room < 8:
        pytest.skip(f"the temp dir {base} leaves no room for a 40-character key path")
    root = base / ("k" * (room - 8) + secrets.token_hex(4))
    root.mkdir()
    try:
        path = root / "cluster.toml"
        path.write_text(cluster_toml(root / "data", 5500, 2))
        config = load(path)
        entry = config.security.public["balancer"]
        assert len(entry) == 40
        z85.decode(entry)  # it reads as a key, too: the case this test is about
        assert sorted(curve.create_missing_keys(config)) == ["admin", "balancer", "node-1", "node-2", "witness"]
        assert not curve.is_z85_key(entry)
    finally:
        shutil.rmtree(root)


def test_a_keyring_names_what_is_wrong(tmp_path: Path) -> None:
    config = secure_config(tmp_path)
    ring = curve.Keyring(config, "node-1")
    assert ring.members[ring.mine] == "node-1" and ring.loose_mode == ""
    assert ring.endpoints.of(config.node("node-2").peer) == ("node-2", access.PEER)
    curve.secret_path(config, "admin").unlink()
    with pytest.raises(curve.SecurityError, match="no secret key for admin"):
        curve.Keyring(config, "admin")
    with pytest.raises(curve.SecurityError, match="lists no key for admin-bob"):
        curve.Keyring(config, "admin-bob")
    # The listed public key and the secret file must be one pair.
    other = msgspec.structs.replace(
        config.security, public={**config.security.public, "node-1": zmq.curve_keypair()[0].decode()}
    )
    with pytest.raises(curve.SecurityError, match="not the secret half"):
        curve.Keyring(msgspec.structs.replace(config, security=other), "node-1")
    unlisted = msgspec.structs.replace(
        config.security, public={k: v for k, v in config.security.public.items() if k != "node-2"}
    )
    with pytest.raises(curve.SecurityError, match="lists no key for node-2"):
        curve.Keyring(msgspec.structs.replace(config, security=unlisted), "node-1")


def test_a_socket_serves_only_its_own_endpoints(tmp_path: Path) -> None:
    config = secure_config(tmp_path)
    ring = curve.Keyring(config, "node-1")
    ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    try:
        sock = ctx.socket(zmq.ROUTER)
        assert ring.serve(sock, config.node("node-1").store) == access.STORE
        assert sock.getsockopt(zmq.CURVE_SERVER) == 1
        with pytest.raises(curve.SecurityError):
            ring.serve(sock, config.node("node-2").store)
        with pytest.raises(curve.SecurityError):
            ring.dial(sock, "tcp://127.0.0.1:1")
        sock.close(0)
    finally:
        ctx.term()


def test_events_decode_only_as_declared_types() -> None:
    types = EventTypes(ChatSbb.declared_event_types())
    event = MessageEvent(b"hello", "text/plain", "s1")
    name = types.name_of(event)
    assert name == "router.chat:MessageEvent"
    assert types.decode(PendingEvent("e1", "a1", name, msgspec.msgpack.encode(event))) == event
    # A name that would import something is never imported: it is unknown.
    for wire in ("os:system", "subprocess:Popen", "router.records:PendingEvent", "nowhere:Nothing"):
        with pytest.raises(UnknownEventType):
            types.decode(PendingEvent("e2", "a1", wire, b"\x80"))

    class Undeclared(msgspec.Struct):
        x: int = 0

    with pytest.raises(UnknownEventType):
        types.name_of(Undeclared())
