"""Shared fixtures. Integration tests start real processes; every one is stopped by PID."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from zeroslee import hashing
from zeroslee.devcluster import DevCluster

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[DevCluster]:
    """A balancer and two nodes as separate processes, ready to take calls."""
    c = DevCluster(tmp_path)
    c.start_all()
    try:
        c.wait_ready()
        yield c
    finally:
        codes = c.stop()
        crashed = {k: v for k, v in codes.items() if v not in (0, -15)}
        assert not crashed, f"processes exited badly: {crashed}; logs in {c.logdir}"


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
