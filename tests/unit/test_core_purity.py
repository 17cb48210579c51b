"""Cores do no I/O and read no clock (STYLE: pure core, thin shell)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
CORES = [
    "services/sip-ra/sip_ra/core.py",
    "services/sip-ra/sip_ra/transaction.py",
    "services/sip-ra/sip_ra/dialog.py",
    "services/balancer/balancer/core.py",
    "services/router/router/container.py",
    "services/router/router/lifecycle.py",
    "services/router/router/sbb.py",
    "services/statestore/statestore/membership.py",
    "shared/zeroslee/sipmsg.py",
    "shared/zeroslee/sipheaders.py",
    "shared/zeroslee/hashing.py",
    "shared/zeroslee/access.py",
]
FORBIDDEN = {"asyncio", "zmq", "lmdb", "logging", "structlog", "time", "socket"}


@pytest.mark.parametrize("path", CORES)
def test_core_imports_no_io_clock_or_logging(path: str) -> None:
    tree = ast.parse((REPO / path).read_text())
    imported = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imported |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            imported.add(node.module.split(".")[0])
    assert not imported & FORBIDDEN
