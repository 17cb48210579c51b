"""The outside programs the bench drives: SIPp, Kamailio, py-spy, and /proc readings.

Every process started here is stopped by its PID (`stop`), never by name.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

BENCH = Path(__file__).resolve().parent
BUFF = 4 * 1024 * 1024  # SIPp's 64 KiB default drops packets from about 4,000 calls/s


def need(program: str) -> str:
    """A program's path: the project's venv first (py-spy), then $PATH (sipp, kamailio)."""
    beside = Path(sys.executable).parent / program
    path = str(beside) if beside.exists() else shutil.which(program)
    if path is None:
        raise SystemExit(f"bench: {program} is not installed (run `make bench`, which installs it)")
    return path


def stop(proc: subprocess.Popen[bytes], timeout: float = 10.0) -> int:
    """SIGTERM by PID, SIGKILL if it outlives `timeout`; its exit code."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
    try:
        return proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        return proc.wait()


def wait_udp(port: int, proc: subprocess.Popen[bytes], timeout: float = 10.0) -> None:
    """Until something is bound to 127.0.0.1:`port` (UDP), or `proc` has exited."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{proc.args!r} exited with {proc.returncode} before binding UDP {port}")
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
            try:
                probe.bind(("127.0.0.1", port))
            except OSError:
                return  # taken: the server is up
        time.sleep(0.02)  # polling a condition, bounded by `timeout`
    raise TimeoutError(f"nothing bound UDP port {port} within {timeout}s")


@dataclass
class SippRun:
    offered: int  # calls per second asked of SIPp
    calls: int
    successful: int
    failed: int
    unexpected: int
    retransmissions: int
    elapsed: float  # seconds, SIPp's own clock
    response_ms: float  # average of SIPp's response-time measure (INVITE to 200)
    setup_ms: list[float] = field(default_factory=list)  # each successful call's, with rtt=True

    @property
    def achieved(self) -> float:
        return self.successful / self.elapsed if self.elapsed > 0 else 0.0

    def clean(self, duration: float, hold: float = 0.0) -> bool:
        """Zero failures, zero unexpected messages, every call placed, at the offered rate
        (over SIPp's elapsed time less `hold`, the seconds the scenario holds each call, so
        that the last call's hold does not count against a short step's rate)."""
        elapsed = self.elapsed - hold
        return (
            self.successful == self.calls
            and self.failed == 0
            and self.unexpected == 0
            and self.elapsed >= duration * 0.95
            and elapsed > 0
            and self.successful / elapsed >= self.offered * 0.9
        )


def _seconds(text: str) -> float:
    """SIPp's 'HH:MM:SS' or 'HH:MM:SS:uuuuuu' in seconds."""
    parts = text.split(":")
    h, m, s = (int(x) for x in parts[:3])
    return h * 3600 + m * 60 + s + (int(parts[3]) / 1e6 if len(parts) > 3 else 0.0)


def _epoch(text: str) -> float:
    """SIPp's 'date<TAB>time<TAB>epoch' timestamp field: the epoch seconds."""
    return float(text.split("\t")[-1]) if text else 0.0


def sipp_stats(cwd: Path) -> dict[str, str]:
    """The last row of SIPp's -trace_stat file, by column name."""
    files = sorted(cwd.glob("*_.csv"))
    if not files:
        return {}
    rows = files[-1].read_text().splitlines()
    return dict(zip(rows[0].split(";"), rows[-1].split(";"), strict=False))


def sipp_uac(
    target: str,
    rate: int,
    duration: float,
    cwd: Path,
    port: int = 6010,
    extra: tuple[str, ...] = (),
    scenario: Path | None = None,
    rtt: bool = False,
) -> tuple[SippRun, list[str]]:
    """SIPp's built-in uac (INVITE, 200, ACK, BYE), or the uac-like `scenario` file, at
    `rate` calls/s for `duration` s; with `rtt`, every call's setup time (INVITE to 200,
    SIPp's own response-time measure) is kept too."""
    cwd.mkdir(parents=True, exist_ok=True)
    calls = max(1, int(rate * duration))
    argv = [
        need("sipp"),
        *(["-sn", "uac"] if scenario is None else ["-sf", str(scenario)]),
        target,
        "-i",
        "127.0.0.1",
        "-p",
        str(port),
        "-r",
        str(rate),
        "-m",
        str(calls),
        "-l",
        str(max(rate * 10, 100)),
        "-buff_size",
        str(BUFF),
        "-recv_timeout",
        "10000",
        "-timeout",
        str(int(duration + 40)),
        "-nostdin",
        "-trace_stat",
        "-fd",
        "1",
        *(["-trace_rtt", "-rtt_freq", "1"] if rtt else []),
        *extra,
    ]
    subprocess.run(argv, cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=duration + 60)
    stats = sipp_stats(cwd)
    run = SippRun(
        offered=rate,
        calls=calls,
        successful=int(stats.get("SuccessfulCall(C)", 0)),
        failed=int(stats.get("FailedCall(C)", 0)),
        unexpected=int(stats.get("FailedUnexpectedMessage(C)", 0)),
        retransmissions=int(stats.get("Retransmissions(C)", 0)),
        elapsed=_epoch(stats.get("CurrentTime", "")) - _epoch(stats.get("StartTime", "")),
        response_ms=_seconds(stats.get("ResponseTime1(C)", "0:0:0")) * 1000,
        setup_ms=sipp_rtts(cwd) if rtt else [],
    )
    return run, argv


def sipp_rtts(cwd: Path) -> list[float]:
    """Every response time SIPp's -trace_rtt recorded (ms), from its newest file."""
    files = sorted(cwd.glob("*_rtt.csv"))
    if not files:
        return []
    rows = files[-1].read_text().splitlines()[1:]
    return [float(row.split(";")[1]) for row in rows if row.count(";") >= 2]


def sipp_uas(port: int, cwd: Path) -> tuple[subprocess.Popen[bytes], list[str]]:
    cwd.mkdir(parents=True, exist_ok=True)
    argv = [need("sipp"), "-sn", "uas", "-i", "127.0.0.1", "-p", str(port), "-buff_size", str(BUFF), "-nostdin"]
    proc = subprocess.Popen(argv, cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_udp(port, proc)
    return proc, argv


def kamailio_modules() -> Path:
    """Where Debian's kamailio package keeps its modules."""
    modules = next(
        (
            p
            for p in (Path("/usr/lib/x86_64-linux-gnu/kamailio/modules"), Path("/usr/lib/kamailio/modules"))
            if p.is_dir()
        ),
        None,
    )
    if modules is None:
        found = list(Path("/usr/lib").glob("*/kamailio/modules"))
        if not found:
            raise SystemExit("bench: kamailio's modules directory not found")
        modules = found[0]
    return modules


def start_kamailio(cfg: str, port: int, cwd: Path, shm_mb: int = 256) -> tuple[subprocess.Popen[bytes], list[str]]:
    """Kamailio in the foreground of its own session (stop it with `stop_group`), with
    `cfg` (its @PORT@ and @MODULES@ filled in), once it has bound UDP `port`."""
    cwd.mkdir(parents=True, exist_ok=True)
    cfg = cfg.replace("@PORT@", str(port)).replace("@MODULES@", str(kamailio_modules()))
    (cwd / "kamailio.cfg").write_text(cfg)
    argv = [need("kamailio"), "-f", str(cwd / "kamailio.cfg"), "-DD", "-E", "-m", str(shm_mb), "-M", "16"]
    argv += ["-P", str(cwd / "pid")]
    wait_free(port)
    with (cwd / "kamailio.log").open("wb") as log:
        proc = subprocess.Popen(argv, cwd=cwd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    wait_udp(port, proc)
    return proc, argv


def wait_free(port: int, timeout: float = 10.0) -> None:
    """Until 127.0.0.1:`port` can be bound, UDP and TCP (a process that held it, a Kamailio
    stopped just before, may take a moment to let it go); then go on regardless, and the
    start fails with the cause in its log."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            for kind in (socket.SOCK_DGRAM, socket.SOCK_STREAM):
                with socket.socket(socket.AF_INET, kind) as probe:
                    if kind == socket.SOCK_STREAM:  # as a server binds it (TIME_WAIT is no owner)
                        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                    probe.bind(("127.0.0.1", port))
            return
        except OSError:
            time.sleep(0.05)  # polling the port, bounded


# Shared memory for the transaction-stateful Kamailio: tm keeps a transaction about 5 s
# after its final reply, at about 15 KB each; at -m 256 it ran out just above 1,500
# calls/s ("could not allocate shared memory", then 503s), a memory ceiling and not a
# throughput limit. 1,024 MB holds 5 s of 10,000 calls/s, so that CPU is its limit.
STATEFUL_SHM_MB = 1024


def kamailio(
    port: int, uas_ports: list[int], cwd: Path, stateless: bool = False
) -> tuple[subprocess.Popen[bytes], list[str]]:
    """Kamailio's dispatcher on loopback: Call-ID hash over `uas_ports`, record-routing;
    transaction-stateful (`kamailio.cfg.in`), or stateless (`kamailio_stateless.cfg.in`)."""
    cwd.mkdir(parents=True, exist_ok=True)
    (cwd / "dispatcher.list").write_text("".join(f"1 sip:127.0.0.1:{p}\n" for p in uas_ports))
    cfg = (BENCH / ("kamailio_stateless.cfg.in" if stateless else "kamailio.cfg.in")).read_text()
    cfg = cfg.replace("@LIST@", str(cwd / "dispatcher.list")).replace("@BUFF@", str(BUFF))
    return start_kamailio(cfg, port, cwd, shm_mb=256 if stateless else STATEFUL_SHM_MB)


def session_cpu(sid: int) -> float:
    """CPU seconds (user + system) the processes of session `sid` have used so far:
    Kamailio's workers, timers and attendant alike (it runs in a session of its own)."""
    total = 0.0
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue  # exited meanwhile
        if int(fields[3]) == sid:
            total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return total


def stop_group(proc: subprocess.Popen[bytes], timeout: float = 10.0) -> None:
    """Kamailio forks workers into its own session: signal that group, led by our PID."""
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    # Its workers may outlive it a moment, holding its sockets: until the group is gone.
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            os.killpg(proc.pid, 0)
        except (ProcessLookupError, PermissionError):
            return
        time.sleep(0.02)  # polling the group, bounded
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)


def rss_bytes(pid: int, field: str = "VmRSS") -> int:
    """A process's resident memory from /proc/PID/status: `VmRSS` (everything resident,
    including the pages of the LMDB file it maps) or `RssAnon` (its private memory)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1]) * 1024
    return 0


def py_spy(pid: int, seconds: float, out: Path) -> subprocess.Popen[bytes]:
    """Sample `pid` for `seconds` into a collapsed-stack file (py-spy's raw format)."""
    argv = [need("py-spy"), "record", "--pid", str(pid), "--duration", str(int(seconds)), "--rate", "200"]
    argv += ["--format", "raw", "--output", str(out), "--nonblocking"]
    return subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def profile_summary(raw: Path, top: int = 20) -> dict[str, object]:
    """Self and inclusive samples per function from a collapsed-stack file."""
    own: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    total = 0
    for line in raw.read_text(errors="replace").splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = [
            f.split(" (")[0] + " (" + f.split(" (")[1].split(":")[0] + ")" if " (" in f else f for f in stack.split(";")
        ]
        frames = [f for f in frames if not f.startswith("process ") and not f.startswith("thread ")]
        if not frames:
            continue
        total += count
        own[frames[-1]] += count
        for frame in set(frames):
            inclusive[frame] += count
    return {
        "samples": total,
        "self": [(f, round(100 * n / total, 1)) for f, n in own.most_common(top)] if total else [],
        "inclusive": [(f, round(100 * n / total, 1)) for f, n in inclusive.most_common(top)] if total else [],
    }


def short_frame(frame: str) -> str:
    """py-spy's 'func (path/file.py:line)' as 'func (dir/file.py)': lines merged."""
    name, sep, where = frame.partition(" (")
    if not sep:
        return frame
    path = where.rstrip(")").rsplit(":", 1)[0]
    return f"{name} ({'/'.join(path.split('/')[-2:])})"


def machine() -> dict[str, object]:
    model = ""
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            model = line.split(":", 1)[1].strip()
            break
    return {"cores": os.cpu_count(), "cpu": model, "kernel": os.uname().release}


def version(argv: list[str]) -> str:
    try:
        out = subprocess.run(argv, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return "not found"
    text = (out.stdout + out.stderr).strip().splitlines()
    return text[0].strip() if text else "unknown"


def sipp_callee(port: int, cwd: Path) -> tuple[subprocess.Popen[bytes], list[str]]:
    """The b2bua phase's callee (scenarios/b2b_uas.xml: the built-in uas's flow, lower-case
    transport parameter) on 127.0.0.1:`port`."""
    cwd.mkdir(parents=True, exist_ok=True)
    argv = [need("sipp"), "-sf", str(BENCH / "scenarios" / "b2b_uas.xml"), "-i", "127.0.0.1", "-p", str(port)]
    argv += ["-buff_size", str(BUFF), "-nostdin"]
    proc = subprocess.Popen(argv, cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_udp(port, proc)
    return proc, argv


def sippy_b2bua(port: int, target: str, cwd: Path) -> tuple[subprocess.Popen[bytes], list[str]]:
    """sippy's B2BUA (the `b2bua` script of the `sippy` package) in the foreground on
    127.0.0.1:`port`, every call routed to `target` (host:port): no authentication, no
    accounting, no RTP proxy, and its per-message log off (SIPLOG_BEND=none), as a user
    would run it to bridge calls. Its pid file, control socket and log stay in `cwd`."""
    cwd.mkdir(parents=True, exist_ok=True)
    argv = [need("b2bua"), "-f", "-u", "-A", "0", "-l", "127.0.0.1", "-p", str(port), "-s", target]
    argv += ["-P", str(cwd / "b2bua.pid"), "-c", str(cwd / "b2bua.sock"), "-L", str(cwd / "b2bua.log")]
    env = {**os.environ, "SIPLOG_BEND": "none"}
    with (cwd / "b2bua.out").open("wb") as log:
        proc = subprocess.Popen(argv, cwd=cwd, env=env, stdout=log, stderr=subprocess.STDOUT)
    wait_udp(port, proc)
    return proc, ["SIPLOG_BEND=none", *argv]


def process_cpu(pid: int) -> float:
    """CPU seconds (user + system, all threads) process `pid` has used so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def sipp_counts(cwd: Path) -> dict[str, int]:
    """The last row of SIPp's -trace_counts file (per scenario message: sent, received,
    retransmitted, timed out, unexpected), by column name."""
    files = sorted(cwd.glob("*_counts.csv"))
    if not files:
        return {}
    rows = files[-1].read_text().splitlines()
    return {k: int(v) for k, v in zip(rows[0].split(";"), rows[-1].split(";"), strict=False) if v.isdigit()}
