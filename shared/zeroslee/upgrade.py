"""A rolling upgrade of a running cluster under load, with no failed call (README, Rolling
upgrade): node by node (drain, wait until it owns nothing, restart its processes on the
new code, undrain), then the witness, then the balancer (the new one started beside the
old, taking over its port when the old exits). `make upgrade-demo` and
tests/integration/test_upgrade.py run it on a DevCluster; `RelayLoad` is the chat
traffic whose every INFO must arrive exactly once.
"""

from __future__ import annotations

import json
import re
import shutil
import signal
import subprocess
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

from zeroslee import admin, bus, hashing
from zeroslee.devcluster import PACKAGE_DIRS, SERVICES, DevCluster
from zeroslee.ua import UaError, UserAgent

Say = Callable[[str], None]


def new_tree(source: Path, dest: Path, version: str) -> Path:
    """A copy of `source`'s packages as the "new code" of the demo and its test: the
    version bumped, one field (with a default) added to a bus message every node and
    the balancer read (`NodeHeartbeat.upgraded`), one to a stored record every router
    reads (`ActivityRecord.note`). Mixed versions must then work together: README, schema
    evolution."""
    for sub in PACKAGE_DIRS:
        shutil.copytree(source / sub, dest / sub, ignore=shutil.ignore_patterns("__pycache__"), dirs_exist_ok=True)
    _patch(dest / "shared/zeroslee/__init__.py", r'__version__ = "[^"]*"', f'__version__ = "{version}"')
    _patch(
        dest / "shared/zeroslee/bus.py",
        r'(    version: str = ""  # the node\'s code[^\n]*\n)',
        r"\1    upgraded: bool = True  # added by the new version (an upgrade test's field)\n",
    )
    _patch(
        dest / "services/router/router/records.py",
        r"(    ra_keys: list\[str\] = \[\][^\n]*\n)",
        r'\1    note: str = "written by the new version"  # added by the new version (an upgrade test\'s field)\n',
    )
    return dest


def _patch(path: Path, pattern: str, replacement: str) -> None:
    text, n = re.subn(pattern, replacement, path.read_text(), count=1)
    if n != 1:
        raise RuntimeError(f"{path}: {pattern!r} not found (has the code moved?)")
    path.write_text(text)


def wait_for(condition: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what}: not within {timeout:g} s")
        time.sleep(0.05)  # polling the cluster's state, bounded


def node_row(cluster: DevCluster, node: str) -> dict[str, object]:
    (row,) = [r for r in admin.node_rows(cluster.config) if r["node"] == node]
    return row


def upgrade_node(cluster: DevCluster, node: str, tree: Path, version: str, say: Say) -> None:
    """Drain `node`, wait until it owns nothing, restart its processes from `tree`, wait
    until the balancer has it live on `version`, undrain it."""
    started = time.monotonic()
    admin.drain(cluster.config, node, True, wait=30.0)
    say(f"{node}: drained, owns nothing after {time.monotonic() - started:.1f} s")
    for service in reversed(SERVICES):  # the sip-ra first: the balancer sees the node go at once
        cluster.kill(service, node, signal.SIGTERM)
    for service in SERVICES:
        cluster.start(service, node, tree=tree)
    wait_for(
        lambda: bool(node_row(cluster, node)["live"]) and node_row(cluster, node)["version"] == version,
        60,
        f"{node} live on {version}",
    )
    admin.drain(cluster.config, node, False, wait=30.0)
    say(f"{node}: restarted on {version} and undrained, {time.monotonic() - started:.1f} s in all")


def upgrade_witness(cluster: DevCluster, tree: Path, say: Say) -> None:
    cluster.kill("witness", None, signal.SIGTERM)
    cluster.start("witness", tree=tree)
    endpoint = cluster.config.witness.endpoint
    wait_for(lambda: isinstance(admin.ask(cluster.config, endpoint, bus.Ping(1, "admin")), bus.Pong), 30, "witness")
    say("witness: restarted on the new code")


def upgrade_balancer(cluster: DevCluster, tree: Path, say: Say) -> float:
    """The new balancer is started beside the old and waits for its port; the old one is
    stopped; the new one binds at once. The seconds without a balancer bound to the port."""
    log = cluster.logdir / "front-balancer.log"
    waiting_before = log.read_text(errors="replace").count("waiting to take over")
    new = cluster.start("balancer", tree=tree, take_over=True)
    wait_for(
        lambda: log.read_text(errors="replace").count("waiting to take over") > waiting_before,
        60,
        "the new balancer loaded",
    )
    old = cluster.procs[("", "balancer")]
    known_before = len(_events(log, "live nodes"))
    stopped = time.time()
    old.send_signal(signal.SIGTERM)
    old.wait(timeout=15)
    cluster.procs[("", "balancer")] = new
    wait_for(lambda: new.poll() is not None or cluster.options() == 200, 30, "the new balancer answering")
    if new.poll() is not None:
        raise RuntimeError(f"the new balancer exited ({new.returncode}); see {log}")
    # From the old one's SIGTERM to the new one's first node: the time without a balancer
    # that can route (its log's timestamps, not our probe's round trips).
    first = _events(log, "live nodes")[known_before]
    gap = datetime.fromisoformat(str(first["timestamp"]).replace("Z", "+00:00")).timestamp() - stopped
    say(f"balancer: replaced; {gap * 1000:.0f} ms from the old one's SIGTERM to the new one routing to a node")
    return gap


def _events(log: Path, event: str) -> list[dict[str, object]]:
    out = []
    for line in log.read_text(errors="replace").splitlines():
        if line.startswith("{") and f'"event": "{event}"' in line:
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError:
                continue
    return out


def rolling_upgrade(cluster: DevCluster, tree: Path, version: str, say: Say) -> dict[str, float]:
    """The whole procedure; what it measured."""
    started = time.monotonic()
    for node in cluster.config.node_ids:
        upgrade_node(cluster, node, tree, version, say)
    upgrade_witness(cluster, tree, say)
    gap = upgrade_balancer(cluster, tree, say)
    return {"seconds": time.monotonic() - started, "balancer_gap_s": gap}


@dataclass
class RelayLoad:
    """Chat traffic across the upgrade: two participants of one room, one per node,
    sending each other INFOs in turn (bounded in count and time); every text must arrive
    once. A retransmission (the same CSeq again) is not a duplicate; the same text under
    two CSeqs is."""

    cluster: DevCluster
    ports: tuple[int, int]
    every: float = 0.05
    limit: int = 5_000
    sent: list[bytes] = field(default_factory=list)
    received: dict[bytes, set[int]] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def start(self) -> None:
        nodes = self.cluster.config.node_ids
        self.uas = [UserAgent(f"relay{i}", port, self.cluster.balancer_addr) for i, port in enumerate(self.ports)]
        for i, ua in enumerate(self.uas):
            call_id = next(
                f"relay{i}-{n}@zeroslee.upgrade"
                for n in range(10_000)
                if hashing.choose(f"relay{i}-{n}@zeroslee.upgrade", nodes) == nodes[i % len(nodes)]
            )
            ua.invite("upgrade-room", call_id)
        self._thread = threading.Thread(target=self._run, name="relay-load", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        deadline = time.monotonic() + 600
        n = 0
        while not self._stop.is_set() and n < self.limit and time.monotonic() < deadline:
            sender, receiver = self.uas[n % 2], self.uas[(n + 1) % 2]
            text = f"text-{n}".encode()
            try:
                if sender.request("INFO", text, timeout=40).status != 200:
                    self.errors.append(f"{text!r}: not 200")
                self.sent.append(text)
                self._take(receiver.wait_request("INFO", timeout=40))
            except UaError as exc:
                self.errors.append(f"{text!r}: {exc}")
            n += 1
            self._stop.wait(self.every)

    def _take(self, msg: object) -> None:
        body, cseq = getattr(msg, "body", b""), getattr(msg, "cseq", (0, ""))[0]
        self.received.setdefault(body, set()).add(cseq)

    def stop(self) -> dict[str, int]:
        """Stop sending, let what is in flight arrive, hang up; the counts."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=60)
        for ua in self.uas:
            for msg in ua.received:  # anything that came in after its wait (a second copy)
                if msg.method == "INFO":
                    self._take(msg)
            ua.received.clear()
        for ua in self.uas:
            try:
                ua.request("BYE")
            except UaError as exc:
                self.errors.append(f"BYE: {exc}")
            ua.close()
        lost = [t for t in self.sent if t not in self.received]
        duplicated = [t for t, cseqs in self.received.items() if len(cseqs) > 1]
        return {
            "infos_sent": len(self.sent),
            "infos_lost": len(lost),
            "infos_duplicated": len(duplicated),
            "errors": len(self.errors),
        }


def sipp_uac(cluster: DevCluster, cwd: Path, calls: int, rate: int, port: int) -> subprocess.Popen[bytes]:
    """SIPp's built-in uac into the chat (room "service"), each call held 1 s, bounded."""
    cwd.mkdir(parents=True, exist_ok=True)
    host, bport = cluster.balancer_addr
    sipp = shutil.which("sipp")
    if sipp is None:
        raise RuntimeError("sipp is not installed: run `make setup`")
    argv = [sipp, "-sn", "uac", f"{host}:{bport}", "-s", "service", "-i", "127.0.0.1", "-p", str(port)]
    argv += ["-r", str(rate), "-m", str(calls), "-d", "1000", "-l", str(rate * 5), "-timeout", "300"]
    argv += ["-recv_timeout", "40000", "-nostdin", "-trace_stat", "-fd", "1"]
    return subprocess.Popen(argv, cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def sipp_finish(proc: subprocess.Popen[bytes], cwd: Path) -> dict[str, int]:
    """Stop placing calls (SIGUSR1: SIPp's soft quit, calls in progress end first); the counts."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGUSR1)
    proc.wait(timeout=120)
    return sipp_counts(cwd)


def sipp_counts(cwd: Path) -> dict[str, int]:
    rows = next(cwd.glob("*_.csv")).read_text().splitlines()
    stats = dict(zip(rows[0].split(";"), rows[-1].split(";"), strict=False))
    return {"calls_ok": int(stats["SuccessfulCall(C)"]), "calls_failed": int(stats["FailedCall(C)"])}
