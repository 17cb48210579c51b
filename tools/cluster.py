"""`make cluster`: one honcho per node and one for the balancer, each its own process group.

honcho has no restart policy and stops all its processes when one exits, so one honcho
per node makes a node the unit of failure, as a machine would be (DESIGN §2). This
launcher keeps running while any honcho runs, and stops them all on SIGINT or SIGTERM.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "shared"))

from zeroslee.config import load  # noqa: E402
from zeroslee.curve import create_missing_keys  # noqa: E402


def main() -> int:
    os.chdir(ROOT)  # the cluster file's paths (var/) are relative to the checkout
    config = load(os.environ.get("ZEROSLEE_CONFIG") or ROOT / "config" / "cluster.toml")
    made = create_missing_keys(config)
    if made:
        print(f"cluster: made bus keys for {', '.join(made)} in {config.security.keys}", flush=True)
    env = dict(os.environ)
    # honcho and the services run from the venv this launcher runs in (make's VENV).
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env.setdefault("ZEROSLEE_CONFIG", str(ROOT / "config" / "cluster.toml"))
    env["PYTHONUNBUFFERED"] = "1"
    honchos: dict[str, subprocess.Popen[bytes]] = {}
    for node in config.node_ids:
        honchos[node] = subprocess.Popen(
            ["honcho", "start", "-f", str(ROOT / "Procfile"), "statestore", "router", "sip-ra"],
            cwd=ROOT,
            env={**env, "ZEROSLEE_NODE": node},
            start_new_session=True,
        )
    honchos["balancer"] = subprocess.Popen(
        ["honcho", "start", "-f", str(ROOT / "Procfile"), "balancer", "witness"],
        cwd=ROOT,
        env=env,
        start_new_session=True,
    )
    stopping = False

    def stop(signum: int, frame: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGTERM, stop)
    print(f"cluster: {', '.join(f'{k} pid {p.pid}' for k, p in honchos.items())}", flush=True)
    while not stopping and any(p.poll() is None for p in honchos.values()):
        time.sleep(0.2)
    for proc in honchos.values():
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
    deadline = time.monotonic() + 10
    for proc in honchos.values():
        try:
            proc.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    return 0


if __name__ == "__main__":
    sys.exit(main())
