"""The balancer's scheduling priority (runtime.set_nice): every thread of the process
gets it, those already running included (Linux keeps a nice value per thread)."""

from __future__ import annotations

import subprocess
import sys
import textwrap

from tests.conftest import REPO

CHILD = textwrap.dedent(
    """
    import os, threading, structlog
    from zeroslee.runtime import set_nice
    started, stop = threading.Event(), threading.Event()
    def idle():
        started.set()
        stop.wait()
    worker = threading.Thread(target=idle)
    worker.start()
    started.wait()
    got = set_nice(structlog.get_logger(), os.getpriority(os.PRIO_PROCESS, 0) + 5)
    stat = lambda tid: open(f"/proc/self/task/{tid}/stat").read().rsplit(")", 1)[1].split()
    print(got, *sorted({int(stat(t)[16]) for t in os.listdir("/proc/self/task")}))
    stop.set()
    """
)


def test_every_thread_gets_the_nice_value() -> None:
    before = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpriority(os.PRIO_PROCESS, 0))"],
        capture_output=True,
        text=True,
        check=True,
    )
    run = subprocess.run([sys.executable, "-c", CHILD], cwd=REPO, capture_output=True, text=True, timeout=30)
    assert run.returncode == 0, run.stderr
    want = int(before.stdout) + 5
    got, *threads = (int(x) for x in run.stdout.splitlines()[-1].split())  # after the log lines
    assert got == want
    assert threads == [want]  # the main thread and the one started before the change alike
