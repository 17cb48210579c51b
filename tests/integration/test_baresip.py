"""baresip, a SIP phone from Debian that follows RFC 3261 to the letter, calls a room
through the balancer (UDP, unregistered, no audio device: a sine source, a null sink),
re-INVITEs, and hangs up after the answering node was killed with kill -9. Every
request it sends must go to the balancer (its route set and remote target name only
the balancer), and its BYE must be answered 200 by the survivor (DESIGN §6)."""

from __future__ import annotations

import json
import re
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from zeroslee.devcluster import DevCluster

SIP_PORT, CTRL_PORT = 6980, 6990  # baresip also binds SIP_PORT/TCP and SIP_PORT + 1 (TLS)
CONFIG = """\
poll_method\tepoll
sip_listen\t127.0.0.1:{sip}
net_interface\t127.0.0.1
audio_player\taufile,/dev/null
audio_source\tausine,440
audio_alert\taufile,/dev/null
module_path\t/usr/lib/baresip/modules
module\tg711.so
module\tausine.so
module\taufile.so
module\tmenu.so
module_app\taccount.so
module_app\tctrl_tcp.so
ctrl_tcp_listen\t127.0.0.1:{ctrl}
"""
# baresip's SIP trace (-s): a direction line, then the message.
TRACED = re.compile(r"^UDP (\S+) -> (\S+)\r?\n(.*?)(?=\n\S*#\r?\n|\Z)", re.M | re.S)


@dataclass
class Traced:
    source: str
    destination: str
    text: str

    @property
    def first_line(self) -> str:
        return self.text.split("\n", 1)[0].strip()

    def header(self, name: str) -> str:
        found = re.search(rf"^{name}:\s*(.*?)\r?$", self.text, re.M | re.I)
        return found.group(1) if found else ""


class Baresip:
    def __init__(self, workdir: Path) -> None:
        program = shutil.which("baresip")
        if program is None:
            pytest.fail("baresip is not installed: run `make setup`")
        self.dir = workdir / "baresip"
        self.dir.mkdir()
        (self.dir / "config").write_text(CONFIG.format(sip=SIP_PORT, ctrl=CTRL_PORT))
        (self.dir / "accounts").write_text("<sip:phone@127.0.0.1>;regint=0\n")
        self.log = self.dir / "trace.log"
        with self.log.open("wb") as out:
            self.proc = subprocess.Popen([program, "-f", str(self.dir), "-s"], stdout=out, stderr=subprocess.STDOUT)
        self.wait_for(lambda: "baresip is ready." in self.output(), "baresip to start")

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def command(self, name: str, params: str = "") -> None:
        """One ctrl_tcp command (a JSON netstring); its answer says it was accepted."""
        body = json.dumps({"command": name, "params": params, "token": name}).encode()
        with socket.create_connection(("127.0.0.1", CTRL_PORT), timeout=5) as conn:
            conn.sendall(str(len(body)).encode() + b":" + body + b",")
            answer = b""
            while b'"response":true' not in answer:
                chunk = conn.recv(4096)
                assert chunk, f"baresip closed the control connection on {name}"
                answer += chunk
        assert b'"ok":true' in answer, answer

    def messages(self) -> list[Traced]:
        return [Traced(*m.groups()) for m in TRACED.finditer(self.output())]

    def wait_for(self, condition: object, what: str, timeout: float = 10.0) -> None:
        deadline = time.monotonic() + timeout
        while not condition():  # type: ignore[operator]
            assert self.proc.poll() is None, f"baresip exited:\n{self.output()[-3000:]}"
            assert time.monotonic() < deadline, f"no {what} within {timeout}s:\n{self.output()[-3000:]}"
            time.sleep(0.05)

    def final_response(self, method: str, cseq: int) -> Traced | None:
        for msg in self.messages():
            if msg.first_line.startswith("SIP/2.0 ") and msg.header("CSeq") == f"{cseq} {method}":
                status = int(msg.first_line.split()[1])
                if status >= 200:
                    return msg
        return None

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


@pytest.fixture
def phone(tmp_path: Path) -> Iterator[Baresip]:
    ua = Baresip(tmp_path)
    try:
        yield ua
    finally:
        ua.stop()


def test_baresip_call_reinvite_and_bye_after_a_kill_all_go_through_the_balancer(
    cluster: DevCluster, phone: Baresip
) -> None:
    host, port = cluster.balancer_addr
    phone.command("dial", f"sip:room-baresip@{host}:{port}")

    def invites() -> list[Traced]:
        return [m for m in phone.messages() if m.first_line.startswith("INVITE ")]

    def first_cseq() -> int:
        return int(invites()[0].header("CSeq").split()[0])

    phone.wait_for(lambda: invites() and phone.final_response("INVITE", first_cseq()), "200 to the INVITE")
    first = first_cseq()
    answered = phone.final_response("INVITE", first)
    assert answered is not None and answered.first_line == "SIP/2.0 200 OK"
    # The route set and the remote target both name the balancer, with the node as hint.
    route = re.fullmatch(rf"<sip:{host}:{port};lr;zsnode=([\w-]+)>", answered.header("Record-Route"))
    contact = re.fullmatch(rf"<sip:{host}:{port};zsnode=([\w-]+)>", answered.header("Contact"))
    assert route and contact and route.group(1) == contact.group(1), answered.text
    answering = contact.group(1)

    phone.command("reinvite")
    phone.wait_for(lambda: phone.final_response("INVITE", first + 1) is not None, "200 to the re-INVITE")
    reinvited = phone.final_response("INVITE", first + 1)
    assert reinvited is not None and reinvited.first_line == "SIP/2.0 200 OK"
    assert "m=audio 0 " in reinvited.text  # the re-offer answered too, every stream refused

    cluster.kill_node(answering)
    cluster.wait_live([n for n in cluster.config.node_ids if n != answering])
    phone.command("hangup")
    phone.wait_for(lambda: phone.final_response("BYE", first + 2) is not None, "answer to the BYE", timeout=5)
    bye_answer = phone.final_response("BYE", first + 2)
    assert bye_answer is not None and bye_answer.first_line == "SIP/2.0 200 OK"

    sent = [m for m in phone.messages() if m.source == f"127.0.0.1:{SIP_PORT}"]
    assert {m.first_line.split()[0] for m in sent} >= {"INVITE", "ACK", "BYE"}
    assert {m.destination for m in sent} == {f"{host}:{port}"}  # every request crossed the balancer
