"""CURVE on every bus socket: this process's key pair, the cluster's public keys, and a
ZAP handler that applies access.py's policy at each handshake.

The cryptography is libsodium's, inside libzmq (CurveZMQ, ZeroMQ RFC 26): every
connection is authenticated both ways and encrypted. The ZAP handler (ZeroMQ RFC 27) is
pyzmq's own `zmq.auth` authenticator, run in a thread of its own and told our policy
through its credentials callback; we write no cryptography and no ZAP protocol.

How a socket is set up is decided by its endpoint alone (`Keyring.serve`, `.dial`):
the cluster file says which member binds each endpoint and what it serves there, so a
client expects that member's server key, and a server names that domain in its ZAP
requests. A client whose key is not listed, or whose member has no business on that
socket, fails the handshake and never gets a message through.

Keys live in `[security] keys` (default var/keys) as ZeroMQ certificate files, made by
`zeroslee-admin keygen` with mode 0600 (the secret in `<name>.key_secret`).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import zmq
import zmq.auth
from zmq.auth.thread import ThreadAuthenticator
from zmq.utils import z85

from zeroslee import access
from zeroslee.config import Config

Z85_KEY_LENGTH = 40  # a 32-byte key in Z85 text
DOMAINS = (
    access.STORE,
    access.PEER,
    access.ROUTER,
    access.HEARTBEAT,
    access.CONTROL,
    access.FRONT_CONTROL,
    access.WITNESS_VOTE,
)


class SecurityError(Exception):
    """The keys the cluster file names are missing, unreadable or do not match: the
    process cannot take part in the cluster (said in one line, not a traceback)."""


def endpoints_of(config: Config) -> access.Endpoints:
    nodes = [
        (
            n.id,
            {
                access.STORE: n.store,
                access.PEER: n.peer,
                access.ROUTER: n.router,
                access.HEARTBEAT: n.heartbeat,
                access.CONTROL: n.control,
            },
        )
        for n in config.nodes
    ]
    return access.Endpoints(nodes, config.balancer.control, config.witness.endpoint)


def secret_path(config: Config, member: str) -> Path:
    return Path(config.security.keys) / f"{member}.key_secret"


def is_z85_key(entry: str) -> bool:
    """A `[security.public]` value of 40 characters is the key itself; anything else is
    the path of the certificate file that holds it. A path can be 40 characters long
    and made of Z85's alphabet too (a cluster in a temp dir named by mkdtemp had its
    balancer's `keys/balancer.key` path taken for a key, and that member got no key
    pair): one that names a file, or that is a directory's `.key` file, is a path."""
    if len(entry) != Z85_KEY_LENGTH or Path(entry).exists() or ("/" in entry and entry.endswith(".key")):
        return False
    try:
        z85.decode(entry)
    except (ValueError, KeyError):
        return False
    return True


def public_key(member: str, entry: str) -> bytes:
    """The Z85 public key a `[security.public]` entry names."""
    if is_z85_key(entry):
        return entry.encode()
    try:
        public, _ = zmq.auth.load_certificate(entry)
    except (OSError, ValueError) as exc:
        raise SecurityError(f"[security.public] {member}: cannot read {entry}: {exc}") from None
    return public


def required_members(config: Config) -> list[str]:
    """The members without whose public keys a cluster cannot run."""
    return [*config.node_ids, access.BALANCER] + ([access.WITNESS] if config.witness.endpoint else [])


class Keyring:
    """What one member needs to take part: its own key pair and everyone's public keys."""

    def __init__(self, config: Config, me: str) -> None:
        self.me = me
        self.node_ids = list(config.node_ids)
        self.endpoints = endpoints_of(config)
        self.public: dict[str, bytes] = {}
        for member, entry in config.security.public.items():
            if access.role_of(member, self.node_ids) is None:
                raise SecurityError(
                    f"[security.public] {member}: not a member name (a node id, balancer, witness, admin or admin-NAME)"
                )
            self.public[member] = public_key(member, entry)
        missing = [m for m in required_members(config) if m not in self.public]
        if missing:
            raise SecurityError(f"[security.public] lists no key for {', '.join(missing)}")
        self.members: dict[bytes, str] = {key: member for member, key in self.public.items()}
        if me not in self.public:
            raise SecurityError(f"[security.public] lists no key for {me}, the member this process runs as")
        path = secret_path(config, me)
        if not path.exists():
            raise SecurityError(
                f"no secret key for {me}: {path} does not exist (`make setup` creates the default "
                f"cluster's keys; `zeroslee-admin keygen {me}` makes one)"
            )
        try:
            mine, secret = zmq.auth.load_certificate(path)
        except (OSError, ValueError) as exc:
            raise SecurityError(f"cannot read {path}: {exc}") from None
        if secret is None:
            raise SecurityError(f"{path} holds no secret key")
        if mine != self.public[me]:
            raise SecurityError(f"{path} is not the secret half of the public key listed for {me}")
        self.mine, self.secret = mine, secret
        mode = path.stat().st_mode & 0o777
        self.loose_mode = f"{path} has mode {mode:04o}; it should be 0600" if mode & 0o077 else ""

    def role(self, member: str) -> str | None:
        return access.role_of(member, self.node_ids)

    def serve(self, sock: zmq.Socket[Any], endpoint: str) -> str:
        """Make `sock` a CURVE server for `endpoint` (before it binds); its domain."""
        known = self.endpoints.of(endpoint)
        if known is None or known[0] != self.me:
            raise SecurityError(f"{endpoint} is not an endpoint of {self.me} in the cluster file")
        domain = known[1]
        sock.setsockopt(zmq.CURVE_SECRETKEY, self.secret)
        sock.setsockopt(zmq.CURVE_PUBLICKEY, self.mine)
        sock.setsockopt(zmq.CURVE_SERVER, 1)
        sock.setsockopt(zmq.ZAP_DOMAIN, domain.encode())
        return domain

    def dial(self, sock: zmq.Socket[Any], endpoint: str) -> None:
        """Make `sock`'s next connect a CURVE client of `endpoint`'s member (options are
        taken per connect, so one SUB can dial several nodes' beacons)."""
        known = self.endpoints.of(endpoint)
        if known is None:
            raise SecurityError(f"{endpoint} is no member's endpoint in the cluster file")
        sock.setsockopt(zmq.CURVE_SECRETKEY, self.secret)
        sock.setsockopt(zmq.CURVE_PUBLICKEY, self.mine)
        sock.setsockopt(zmq.CURVE_SERVERKEY, self.public[known[0]])


class Gatekeeper(ThreadAuthenticator):
    """One process's ZAP handler: a handshake on a socket of domain D succeeds when the
    client's key is a member's that `access.may_connect` to D. The member's name becomes
    the connection's User-Id, which the per-message check reads. `refused(domain, who,
    times)` is called from the handler's thread at a client's first refusal and every
    100th after it (a refused client retries every 100 ms)."""

    def __init__(self, ctx: zmq.Context[Any], keyring: Keyring, refused: Callable[[str, str, int], None]) -> None:
        super().__init__(ctx)
        self.keyring = keyring
        self.refused = refused
        self.refusals: dict[tuple[str, str], int] = {}  # touched by the handler's thread only

    def start(self) -> None:
        super().start()
        for domain in DOMAINS:
            self.configure_curve_callback(domain, credentials_provider=self)

    def callback(self, domain: str, key: bytes) -> bool:
        member = self.keyring.members.get(key)
        role = self.keyring.role(member) if member is not None else None
        if member is not None and access.may_connect(domain, self.keyring.me, member, role):
            return True
        who = member or f"unlisted key {key[:8].decode(errors='replace')}..."
        if len(self.refusals) > 1000:  # many keys knocking: forget the old ones
            self.refusals.clear()
        times = self.refusals[(domain, who)] = self.refusals.get((domain, who), 0) + 1
        if times == 1 or times % 100 == 0:
            self.refused(domain, who, times)
        return False

    def curve_user_id(self, client_public_key: bytes) -> str:
        return self.keyring.members.get(z85.encode(client_public_key), "")


def create_keys(directory: Path, member: str) -> tuple[Path, Path]:
    """A new key pair for `member` in `directory`: (public, secret) certificate files,
    both mode 0600 in a 0700 directory. Refuses to replace an existing one."""
    public, secret = directory / f"{member}.key", directory / f"{member}.key_secret"
    if public.exists() or secret.exists():
        raise SecurityError(f"{member} has keys in {directory} already; remove them first to replace them")
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    old = os.umask(0o077)
    try:
        made_public, made_secret = zmq.auth.create_certificates(str(directory), member)
    finally:
        os.umask(old)
    for path in (made_public, made_secret):
        os.chmod(path, 0o600)
    return Path(made_public), Path(made_secret)


def create_missing_keys(config: Config) -> list[str]:
    """Every key pair the cluster file expects on this host and that is not there yet:
    members whose public entry is the certificate `<keys>/<name>.key`. What a fresh
    checkout of the default loopback cluster needs (make setup, make cluster)."""
    if config.security.insecure:
        return []
    directory = Path(config.security.keys)
    made = []
    for member, entry in config.security.public.items():
        if is_z85_key(entry) or Path(entry) != directory / f"{member}.key":
            continue
        if not Path(entry).exists() and not secret_path(config, member).exists():
            create_keys(directory, member)
            made.append(member)
    return made


def connect(sock: zmq.Socket[Any], config: Config, member: str, endpoint: str) -> None:
    """Connect a plain pyzmq socket to `endpoint` holding `member`'s key (a tool's way
    onto the bus: the bench, a test's client), or without keys on an insecure cluster."""
    if not config.security.insecure:
        Keyring(config, member).dial(sock, endpoint)
    sock.connect(endpoint)
