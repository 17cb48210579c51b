"""RFC 4475's torture messages through a running cluster (balancer + two nodes), in file
order, each from a fresh UDP socket whose address replaces the top Via's sent-by, as the
outside check sends them (DESIGN §6): a well-formed request gets a final response (400
only where the manifest allows one), a malformed one a 4xx-6xx or silence, a response
silence; and the cluster still serves calls afterwards."""

from __future__ import annotations

import csv
import re
import socket
import time
from pathlib import Path

from zeroslee.devcluster import DevCluster
from zeroslee.ua import UserAgent

CORPUS = Path(__file__).resolve().parents[1] / "corpus" / "rfc4475"
MANIFEST = list(csv.DictReader((CORPUS / "MANIFEST.tsv").read_text().splitlines(), delimiter="\t"))
LWS = rb"(?:[ \t]|\r\n[ \t])*"  # §25.1 linear white space, folding included
TOP_VIA = re.compile(
    rb"^((?:via|v)" + LWS + rb":" + LWS + rb"SIP" + LWS + rb"/" + LWS + rb"2\.0" + LWS + rb"/" + LWS + rb"\w+"
    rb"(?:[ \t]|\r\n[ \t])+)([^;\r\n \t,]+)",
    re.I | re.M,
)
WAIT = 1.5  # seconds for a final response


def status_line(data: bytes) -> int | None:
    """A datagram's status code if it is a response (the status line only: a 400 may echo
    the request's own broken headers)."""
    first = data.split(b"\r\n", 1)[0].split(b" ", 2)
    return int(first[1]) if first[0] == b"SIP/2.0" and len(first) > 1 and first[1].isdigit() else None


def final_status(data: bytes, balancer: tuple[str, int]) -> int | None:
    """Send one corpus message from a fresh socket; the first final status back, if any."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
        data = TOP_VIA.sub(lambda m: m.group(1) + f"127.0.0.1:{port}".encode(), data, count=1)
        sock.sendto(data, balancer)
        deadline = time.monotonic() + WAIT
        while (left := deadline - time.monotonic()) > 0:
            sock.settimeout(left)
            try:
                reply = sock.recv(65535)
            except TimeoutError:
                return None
            status = status_line(reply)
            if status is not None and status >= 200:
                return status
    return None


def is_response(data: bytes) -> bool:
    return data.startswith(b"SIP/2.0 ")


def verdict_met(row: dict[str, str], data: bytes, status: int | None) -> bool:
    if is_response(data):
        return status is None
    if row["verdict"] == "invalid":
        return status is None or 400 <= status <= 699
    return status is not None and (status != 400 or "400" in row["expected_response"])


def test_every_rfc4475_message_gets_its_verdict_through_the_cluster(cluster: DevCluster) -> None:
    results = []
    for row in MANIFEST:
        data = (CORPUS / row["file"]).read_bytes()
        status = final_status(data, cluster.balancer_addr)
        results.append((row["file"], row["verdict"], status, verdict_met(row, data, status)))
    missed = [r for r in results if not r[3]]
    assert not missed, f"{len(results) - len(missed)}/{len(results)} verdicts held; missed: {missed}"
    # Nothing crashed or wedged: no traceback in any log, and a call still goes through.
    for log in cluster.logdir.glob("*.log"):
        assert "Traceback" not in log.read_text(errors="replace"), log.name
    ua = UserAgent("after-corpus", 6961, cluster.balancer_addr)
    try:
        assert ua.invite("after-corpus").status == 200
        assert ua.request("BYE").status == 200
    finally:
        ua.close()
