"""A whole cluster on this machine, one OS process per service, for tests and the demo.

Each process is started directly (no honcho) so a test can kill -9 and restart any one
of them by its PID, as DESIGN §2 allows fixtures to do. Ports come from one base port so
a test cluster never collides with `make cluster` on 5060.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

from zeroslee import config as cfg
from zeroslee import curve
from zeroslee.sipmsg import SipMessage, parse

SERVICES = ("statestore", "router", "sip-ra")
# Where a checkout keeps its packages (what `pip install -e .` puts on the path).
PACKAGE_DIRS = ("shared", "services/router", "services/statestore", "services/sip-ra", "services/balancer")
MODULES = {
    "statestore": "statestore",
    "router": "router",
    "sip-ra": "sip_ra",
    "balancer": "balancer",
    "witness": "statestore.witness_main",
}


def cluster_toml(
    data_root: Path,
    base: int,
    nodes: int,
    t1: float = 0.5,
    spread: bool = False,
    extra: str = "",
    hosts: dict[str, str] | None = None,
    max_in_flight: int = 100,
    max_in_flight_in_dialog: int = 400,
    sip_host: str = "",
    sip_options: dict[str, float] | None = None,
    insecure: bool = False,
    balancer_options: dict[str, float] | None = None,
) -> str:
    """A cluster file: balancer at `base`, node i's ports at base+10*i+1..6. `hosts` gives
    the address of "front" (balancer, witness) and of each node (default 127.0.0.1);
    `sip_host` (e.g. "[::1]") puts every SIP socket there instead, the bus staying put.
    The bus is CURVE-secured, every member's keys in `keys` beside `data_root` (made by
    `DevCluster`), unless `insecure`."""
    where = hosts or {}
    front = where.get("front", "127.0.0.1")
    keydir = data_root.parent / "keys"
    members = [*(f"node-{i}" for i in range(1, nodes + 1)), "balancer", "witness", "admin"]
    lines = [
        f'data_root = "{data_root}"',
        "heartbeat_interval = 0.1",
        "[sip]",
        f"t1 = {t1}",
        f"t2 = {max(4 * t1, t1)}",
        f"t4 = {10 * t1}",
        f"max_in_flight = {max_in_flight}",
        f"max_in_flight_in_dialog = {max_in_flight_in_dialog}",
        *(f"{name} = {value}" for name, value in (sip_options or {}).items()),
        "[balancer]",
        f'sip = "{sip_host or front}:{base}"',
        f'control = "tcp://{front}:{base + 9}"',
        f'metrics = "{front}:{base + 1}"',
        f"spread = {'true' if spread else 'false'}",
        *(f"{name} = {value}" for name, value in (balancer_options or {}).items()),
        "[store]",
        "peer_dead_after = 0.6",
        "[witness]",
        f'endpoint = "tcp://{front}:{base + 8}"',
        f'metrics = "{front}:{base + 2}"',
        "[security]",
        f"insecure = {'true' if insecure else 'false'}",
        f'keys = "{keydir}"',
        "[security.public]",
        *(f'{m} = "{keydir / m}.key"' for m in members),
    ]
    for i in range(1, nodes + 1):
        p, h = base + 10 * i, where.get(f"node-{i}", "127.0.0.1")
        lines += [
            "[[nodes]]",
            f'id = "node-{i}"',
            f'sip = "{sip_host or h}:{p + 1}"',
            f'router = "tcp://{h}:{p + 2}"',
            f'store = "tcp://{h}:{p + 3}"',
            f'peer = "tcp://{h}:{p + 4}"',
            f'heartbeat = "tcp://{h}:{p + 5}"',
            f'control = "tcp://{h}:{p + 6}"',
            f'metrics = {{ statestore = "{h}:{p + 7}", router = "{h}:{p + 8}", sip-ra = "{h}:{p + 9}" }}',
        ]
    lines += ["[[profiles]]", 'name = "rooms"', 'schema = "router.chat:RoomProfile"']
    lines += ["[[services]]", 'name = "chat"', 'sbb = "router.chat:ChatSbb"']
    lines += ['options = { users = "^(?!wakeup-|echo$|hold-|count-|b2b-)", ring_delay = "2.0" }']
    lines += ["[[services]]", 'name = "wakeup"', 'sbb = "router.wakeup:WakeupSbb"', 'options = { users = "^wakeup-" }']
    lines += ["[[services]]", 'name = "b2b"', 'sbb = "router.b2b:B2bSbb"', 'options = { users = "^b2b-" }']
    return "\n".join(lines) + "\n" + extra


class DevCluster:
    def __init__(
        self,
        workdir: Path,
        base: int = 5500,
        nodes: int = 2,
        t1: float = 0.5,
        spread: bool = False,
        extra: str = "",
        hosts: dict[str, str] | None = None,
        wrap: dict[str, list[str]] | None = None,
        max_in_flight: int = 100,
        max_in_flight_in_dialog: int = 400,
        sip_host: str = "",
        sip_options: dict[str, float] | None = None,
        insecure: bool = False,
        balancer_options: dict[str, float] | None = None,
    ) -> None:
        """`wrap[node]` prefixes that node's commands (e.g. `ip netns exec NS`)."""
        self.wrap = wrap or {}
        self.workdir = workdir
        self.logdir = workdir / "logs"
        self.logdir.mkdir(parents=True, exist_ok=True)
        self.config_path = workdir / "cluster.toml"
        text = cluster_toml(
            workdir / "data",
            base,
            nodes,
            t1,
            spread,
            extra,
            hosts,
            max_in_flight,
            max_in_flight_in_dialog,
            sip_host,
            sip_options,
            insecure,
            balancer_options,
        )
        self.config_path.write_text(text)
        self.config = cfg.load(self.config_path)
        curve.create_missing_keys(self.config)
        self.procs: dict[tuple[str, str], subprocess.Popen[bytes]] = {}

    @classmethod
    def running(cls, config_path: Path, logdir: Path) -> DevCluster:
        """A handle on a cluster someone else started (e.g. `make cluster`): probes only."""
        handle = cls.__new__(cls)
        handle.workdir, handle.logdir, handle.config_path = config_path.parent, logdir, config_path
        handle.config = cfg.load(config_path)
        handle.procs = {}
        handle.wrap = {}
        return handle

    @property
    def balancer_addr(self) -> tuple[str, int]:
        return self.config.balancer.sip_addr

    def node_addr(self, node: str) -> tuple[str, int]:
        return self.config.node(node).sip_addr

    def start(
        self, service: str, node: str | None = None, tree: Path | None = None, take_over: bool = False
    ) -> subprocess.Popen[bytes]:
        """Start one process, by default from the installed code; from `tree` (a checkout
        of another version) if given: its packages come first on the path. `take_over`
        starts it beside the running one, to replace it when that one exits."""
        argv = [sys.executable, "-m", MODULES[service], "--config", str(self.config_path)]
        if node is not None:
            argv = self.wrap.get(node, []) + argv + ["--node", node]
        if take_over:
            argv.append("--take-over")
        log = (self.logdir / f"{node or 'front'}-{service}.log").open("ab")
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        if tree is not None:
            env["PYTHONPATH"] = os.pathsep.join(str(tree / sub) for sub in PACKAGE_DIRS)
        proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, env=env)
        log.close()
        if not take_over:
            self.procs[(node or "", service)] = proc
        return proc

    def start_node(self, node: str) -> None:
        for service in SERVICES:
            self.start(service, node)

    def start_all(self) -> None:
        self.start("witness")
        for node in self.config.node_ids:
            self.start_node(node)
        self.start("balancer")

    def pid(self, service: str, node: str | None = None) -> int:
        return self.procs[(node or "", service)].pid

    def kill(self, service: str, node: str | None = None, sig: int = signal.SIGKILL) -> None:
        proc = self.procs.pop((node or "", service))
        proc.send_signal(sig)
        proc.wait(timeout=10)

    def kill_node(self, node: str) -> None:
        for service in SERVICES:
            self.kill(service, node)

    def stop(self) -> dict[str, int | None]:
        """SIGTERM every process we started, by PID; SIGKILL stragglers. Exit codes."""
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        codes: dict[str, int | None] = {}
        for (node, service), proc in self.procs.items():
            try:
                codes[f"{node}/{service}"] = proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                codes[f"{node}/{service}"] = proc.wait()
        self.procs.clear()
        return codes

    def options(self, timeout: float = 0.5, port: int = 0) -> int:
        """Send OPTIONS to the balancer; the status code (0: no answer)."""
        v6 = ":" in self.balancer_addr[0]
        with socket.socket(socket.AF_INET6 if v6 else socket.AF_INET, socket.SOCK_DGRAM) as sock:
            sock.bind(("::1" if v6 else "127.0.0.1", port))
            local = cfg.format_hostport(*sock.getsockname()[:2])
            req = SipMessage(method="OPTIONS", uri=f"sip:ping@{self.config.balancer.sip}")
            branch = f"z9hG4bKprobe{time.monotonic_ns()}"
            req.headers = [
                ("Via", f"SIP/2.0/UDP {local};branch={branch};rport"),
                ("Max-Forwards", "70"),
                ("From", "<sip:probe@localhost>;tag=probe"),
                ("To", "<sip:ping@localhost>"),
                ("Call-ID", f"probe-{branch}"),
                ("CSeq", "1 OPTIONS"),
            ]
            sock.sendto(req.to_bytes(), self.balancer_addr)
            sock.settimeout(timeout)
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline:
                try:
                    data, _ = sock.recvfrom(65535)
                except TimeoutError:
                    return 0
                msg = parse(data)
                if msg.status >= 200:
                    return msg.status
        return 0

    def wait_ready(self, timeout: float = 20.0, nodes: int | None = None) -> None:
        """Until the balancer answers OPTIONS with 200 (and, if asked, `nodes` are live)."""
        deadline = time.monotonic() + timeout
        want = nodes if nodes is not None else len(self.config.nodes)
        while time.monotonic() < deadline:
            if self.options() == 200 and len(self.live_nodes()) >= want:
                return
            time.sleep(0.05)  # polling a condition, bounded by `timeout`
        raise TimeoutError(f"cluster not ready within {timeout}s; logs in {self.logdir}")

    def wait_live(self, expected: list[str], timeout: float = 20.0) -> None:
        """Until the balancer's live set is exactly `expected` (it saw a death or a return)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.live_nodes() == sorted(expected):
                return
            time.sleep(0.05)  # polling a condition, bounded by `timeout`
        raise TimeoutError(f"live nodes never became {expected}: {self.live_nodes()}")

    def live_nodes(self) -> list[str]:
        stats = self.stats("balancer")
        return [str(n) for n in json.loads(str(stats.get("live", "[]")))]

    def stats(self, service: str, node: str | None = None) -> dict[str, int | str | float]:
        from zeroslee.admin import request_stats

        return request_stats(self.config, service, node)

    def log_records(self, service: str, node: str | None = None) -> Iterator[dict[str, object]]:
        path = self.logdir / f"{node or 'front'}-{service}.log"
        for line in path.read_text(errors="replace").splitlines():
            if line.startswith("{"):
                try:
                    yield json.loads(line)
                except json.JSONDecodeError:
                    continue
