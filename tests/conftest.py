"""Shared fixtures. Integration tests start real processes; every one is stopped by PID."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from zeroslee import hashing
from zeroslee.devcluster import DevCluster

REPO = Path(__file__).resolve().parent.parent


def running(c: DevCluster, check_exits: bool = True) -> Iterator[DevCluster]:
    """Start `c`, wait until it takes calls, yield it, stop it by PID; with `check_exits`,
    a process that exited badly (a crash, not our SIGTERM) fails the test."""
    c.start_all()
    try:
        try:
            c.wait_ready()
        except TimeoutError as exc:
            raise AssertionError(f"{exc}\n{log_tails(c.logdir)}") from exc
        yield c
    finally:
        codes = c.stop()
        crashed = {k: v for k, v in codes.items() if v not in (0, -15)}
        assert not check_exits or not crashed, f"processes exited badly: {crashed}\n{log_tails(c.logdir)}"


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[DevCluster]:
    """A balancer and two nodes as separate processes, ready to take calls."""
    yield from running(DevCluster(tmp_path))


def log_tails(logdir: Path, lines: int = 15) -> str:
    """The end of every process log, so a failure in CI explains itself."""
    out = []
    for path in sorted(logdir.glob("*.log")):
        tail = path.read_text(errors="replace").splitlines()[-lines:]
        out.append(f"--- {path.name}\n" + "\n".join(line[:400] for line in tail))
    return "\n".join(out)


def call_id_on(node: str, nodes: list[str], prefix: str = "call") -> str:
    """A Call-ID the balancer hashes onto `node`, with the balancer's own function."""
    for i in range(10_000):
        candidate = f"{prefix}-{i}@zeroslee.test"
        if hashing.choose(candidate, nodes) == node:
            return candidate
    raise AssertionError("no Call-ID hashes there")


def need_sipp() -> str:
    path = shutil.which("sipp")
    if path is None:
        pytest.fail("sipp is not installed: run `make setup`")
    return path


@pytest.fixture(scope="module")
def make_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DevCluster]:
    """`make cluster`'s own launcher (one honcho per node) on the default ports, with its
    data in a temp dir; stopped by the launcher's PID (it stops its honchos)."""
    tmp = tmp_path_factory.mktemp("make-cluster")
    text = (REPO / "config" / "cluster.toml").read_text().replace('"var', f'"{tmp}/var')
    (tmp / "cluster.toml").write_text(text)
    env = {**os.environ, "ZEROSLEE_CONFIG": str(tmp / "cluster.toml")}
    with (tmp / "cluster.log").open("wb") as log:
        launcher = subprocess.Popen(
            [sys.executable, str(REPO / "tools" / "cluster.py")],
            cwd=REPO,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        handle = DevCluster.running(tmp / "cluster.toml", tmp)
        handle.wait_ready(timeout=30)
        yield handle
    finally:
        os.kill(launcher.pid, signal.SIGTERM)
        assert launcher.wait(timeout=30) == 0


def sipp_stats(cwd: Path) -> dict[str, str]:
    """The last row of SIPp's -trace_stat file, by column name."""
    rows = next(cwd.glob("*_.csv")).read_text().splitlines()
    return dict(zip(rows[0].split(";"), rows[-1].split(";"), strict=False))


def eventually(condition: Callable[[], bool], timeout: float = 10.0, what: str = "condition") -> None:
    """Wait until `condition()` holds, polling state (bounded), for effects that follow a
    SIP exchange asynchronously, such as the commit after a response."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} did not hold within {timeout}s")
        time.sleep(0.05)
