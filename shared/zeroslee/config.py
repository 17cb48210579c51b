"""Cluster configuration: one frozen Struct, loaded once from TOML, passed down explicitly.

Every process of the cluster reads the same file, so every balancer computes the same
node order and every store knows its peers.
"""

from __future__ import annotations

import os
import tomllib
from pathlib import Path
from typing import Annotated

import msgspec

DEFAULT_CONFIG = "config/cluster.toml"
NODE_SERVICES = ("statestore", "router", "sip-ra")  # the processes of every node


class SipTimers(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """RFC 3261 §17.1.1.1 timer values, in seconds; tests shorten them."""

    t1: float = 0.5
    t2: float = 4.0
    t4: float = 5.0
    # Our INVITE answered only 1xx this long is CANCELled (Timer C, §16.6 step 11: more
    # than 3 minutes), and given up 64*T1 after that (§9.1), so a callee that rings for
    # ever cannot hold its dialog's re-INVITEs (491) for good.
    timer_c: float = 181.0
    # RFC 4028 session timers (sip_ra/session_timer.py): the interval we grant (at most),
    # the smallest we accept (below it: 422), and, for a dialog without session timers,
    # how long it may go without any request before its owner ends it with BYE.
    session_expires: int = 1800
    min_se: int = 90
    idle_limit: float = 7200.0
    # Overload control, not a timer: a node with this many requests awaiting its router
    # answers new INVITEs 503 with Retry-After at once (sip-ra README, "Overload").
    max_in_flight: int = 100
    # The same for requests within a dialog (INFO, MESSAGE, re-INVITE...; never BYE or
    # CANCEL, which end work): past it they get 503 rather than a place in a queue that
    # would outlast the UA's retransmission timer.
    max_in_flight_in_dialog: int = 400
    # Memory, not a timer: how many dialogs an RA keeps decoded in memory (the most
    # recently used); the others are read from the local replica when needed.
    dialog_cache: int = 1024


class NodeConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    id: str
    sip: str  # host:port of the node's sip-ra (UDP)
    router: str  # ROUTER: events from sip-ra, commands back
    store: str  # ROUTER: commits and queries from local clients
    peer: str  # ROUTER: replication between stores
    heartbeat: str  # PUB: node liveness, read by balancers
    control: str = ""  # ROUTER: sip-ra statistics (management)
    data_dir: str = ""
    # Prometheus: host:port of each of the node's processes' /metrics, by service
    # ("statestore", "router", "sip-ra"); a service not listed serves none.
    metrics: dict[str, str] = {}

    @property
    def sip_addr(self) -> tuple[str, int]:
        return parse_hostport(self.sip)


class BalancerConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    sip: str = "127.0.0.1:5060"
    control: str = "tcp://127.0.0.1:5090"  # ROUTER: stats and admin
    dead_after: float = 0.4  # silence after which a node counts as down
    alive_after: int = 2  # consecutive ready heartbeats to count as up (hysteresis)
    spread: bool = False  # test mode: every new transaction to another node
    # Admission control (balancer/admission.py): new calls to a node are let through at a
    # rate that keeps the node's response time near `target_delay`; the rest get 503. It
    # must stay well above what a call of the slowest service takes on an idle node, or
    # its calls would be refused at no load.
    target_delay: float = 0.1  # s
    # The nice value the balancer asks for at start (-20..19; lower runs first). The edge
    # must keep the CPU to refuse what the nodes cannot take: on a host shared with nodes
    # that are saturated by design under overload, an equal share left its socket queue
    # to grow. Lowering it needs root or CAP_SYS_NICE; without, a warning and the same value.
    nice: Annotated[int, msgspec.Meta(ge=-20, le=19)] = -10
    max_rate: float = 5000.0  # new requests/s per node at most (and at start)
    retry_after: int = 1  # s, in the 503s the balancer sends when it refuses a call
    # SIP over TCP on the same address (balancer/streams.py): idle connections are closed
    # after `tcp_idle` s; past `tcp_max_connections`, the longest idle is closed first.
    tcp_idle: float = 300.0
    tcp_max_connections: int = 4096
    metrics: str = ""  # host:port of the balancer's /metrics (Prometheus); empty: none

    @property
    def sip_addr(self) -> tuple[str, int]:
        return parse_hostport(self.sip)


class StoreTuning(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    map_size: int = 256 * 1024 * 1024
    sync: bool = False  # replication makes a commit safe; see statestore README
    replicate_timeout: float = 0.5
    peer_dead_after: float = 0.6
    lease: float = 0.8  # a primary without a majority's contact this long stops serving


class WitnessConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """The third vote (statestore/witness.py). Empty endpoint: no witness; then a primary
    needs a majority of the stores alone, so two nodes cannot fail over."""

    endpoint: str = ""
    lease_wait: float = 1.2  # > store.lease: a silent primary has fenced itself by then
    data_dir: str = ""
    metrics: str = ""  # host:port of the witness's /metrics


class CaptureConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """HEP (zeroslee/hep.py): the balancer and every sip-ra mirror each SIP message they
    send or receive, as HEPv3 over UDP, to `hep` (host:port of a Homer collector,
    heplify-server or `sngrep -L`). Empty: off, and nothing is built or sent.
    `agent_id` is the HEP capture agent id every copy carries (beside the process's own
    name: `balancer`, or the node id)."""

    hep: str = ""
    agent_id: int = 2001


class TraceConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """`zeroslee-admin trace CALL-ID` (zeroslee/tracing.py): each process keeps the
    records of the `calls` most recent Call-IDs (and SBBs), `per_call` records each.
    `calls = 0` turns it off."""

    calls: int = 4096
    per_call: int = 64


class ServiceConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    name: str
    sbb: str  # "module:Class"
    options: dict[str, str] = {}


class ProfileTableConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """A profile table (router/profiles.py): replicated rows of one typed schema, a
    msgspec Struct named "module:Class", read by SBBs, edited with `zeroslee-admin profile`."""

    name: str
    schema: str


class RouterConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    # A journaled event whose delivery fails this many times (a handler that always
    # raises) is dropped as poison: counted, logged and alarmed, so its activity can end.
    journal_tries: int = 3


class SecurityConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """CURVE on the bus (zeroslee/curve.py, access.py). `public` lists every member's
    public key, by member name (node ids, `balancer`, `witness`, `admin`...): Z85 text,
    or the path of the certificate file holding it. `keys` is where this host keeps its
    members' secret keys (`<name>.key_secret`, mode 0600). `insecure = true` turns
    CURVE off: every socket then accepts anyone, and each process says so at start."""

    insecure: bool = False
    keys: str = "var/keys"
    public: dict[str, str] = {}


class Config(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    nodes: list[NodeConfig]
    services: list[ServiceConfig]
    profiles: list[ProfileTableConfig] = []
    balancer: BalancerConfig = BalancerConfig()
    sip: SipTimers = SipTimers()
    store: StoreTuning = StoreTuning()
    witness: WitnessConfig = WitnessConfig()
    router: RouterConfig = RouterConfig()
    security: SecurityConfig = SecurityConfig()
    capture: CaptureConfig = CaptureConfig()
    trace: TraceConfig = TraceConfig()
    heartbeat_interval: float = 0.1
    data_root: str = "var"
    log_level: str = "info"

    def node(self, node_id: str) -> NodeConfig:
        for node in self.nodes:
            if node.id == node_id:
                return node
        raise KeyError(f"node {node_id!r} is not in the configuration")

    @property
    def node_ids(self) -> list[str]:
        return [n.id for n in self.nodes]

    def metrics_endpoints(self) -> list[tuple[str, str, str]]:
        """(service, node id or "", host:port) of every process that serves /metrics."""
        out = [("balancer", "", self.balancer.metrics), ("witness", "", self.witness.metrics)]
        for node in self.nodes:
            out += [(service, node.id, node.metrics.get(service, "")) for service in NODE_SERVICES]
        return [row for row in out if row[2]]

    def metrics_endpoint(self, service: str, node: str | None) -> str:
        """This process's /metrics address, empty if it serves none."""
        if node is None:
            return {"balancer": self.balancer.metrics, "witness": self.witness.metrics}.get(service, "")
        return self.node(node).metrics.get(service, "")

    def data_dir(self, node_id: str) -> Path:
        node = self.node(node_id)
        return Path(node.data_dir or os.path.join(self.data_root, node_id))


def parse_hostport(text: str) -> tuple[str, int]:
    """`host:port` or `[v6]:port` (RFC 5118 §4.5) -> the socket address, no brackets."""
    host, _, port = text.rpartition(":")
    return host.strip("[]"), int(port)


def format_hostport(host: str, port: int) -> str:
    """The socket address as SIP writes it: an IPv6 address in brackets (RFC 3261 §25.1)."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def load(path: str | os.PathLike[str] | None = None) -> Config:
    """Load the cluster file named by `path`, $ZEROSLEE_CONFIG, or the default."""
    chosen = Path(path or os.environ.get("ZEROSLEE_CONFIG") or DEFAULT_CONFIG)
    with chosen.open("rb") as f:
        raw = tomllib.load(f)
    config = msgspec.convert(raw, Config)
    if len(set(config.node_ids)) != len(config.nodes):
        raise ValueError("node ids must be unique")
    return config
