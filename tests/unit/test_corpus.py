"""RFC 4475 torture messages: every file gets its MANIFEST verdict, from the layer the RFC
names. Each datagram goes through the SIP RA core as a UAS would take it; what reaches the
service layer goes through the router core (the chat service) and back, so the final
answer is the one a UA would see. Nothing may raise but our own parse errors."""

from __future__ import annotations

import csv
import hashlib
from pathlib import Path

import pytest

from router.chat import ChatSbb
from router.container import Container, Service, Transaction
from router.sbb import SipRequest
from sip_ra.core import RaCore
from tests.unit.test_container import DictView
from zeroslee import bus
from zeroslee.config import SipTimers
from zeroslee.sipmsg import ParseError, parse

CORPUS = Path(__file__).resolve().parents[1] / "corpus" / "rfc4475"
MANIFEST = {
    row["file"]: row for row in csv.DictReader((CORPUS / "MANIFEST.tsv").read_text().splitlines(), delimiter="\t")
}
PEER = ("192.0.2.9", 5060)

# What a zeroslee node (a UAS; not a proxy, not a registrar) answers. None: no response
# (a response arriving at a UAS with no transaction is discarded; an unanswerable
# request is dropped and counted). DESIGN §3: REGISTER gets 405.
EXPECTED: dict[str, int | None] = {
    # valid: parse, then the UAS's ordinary answer
    # wsinv is well-formed, but its To tag names no dialog of ours (§12.2.2): 481.
    "wsinv.dat": 481,
    "intmeth.dat": 501,
    "esc01.dat": 200,
    "escnull.dat": 405,
    "esc02.dat": 501,
    "lwsdisp.dat": 200,
    "longreq.dat": 200,
    "dblreq.dat": 405,
    "semiuri.dat": 200,
    "transports.dat": 200,
    "mpart01.dat": 405,
    "unreason.dat": None,
    "noreason.dat": None,
    # invalid
    "badinv01.dat": 400,
    "clerr.dat": 400,
    "ncl.dat": 400,
    "scalar02.dat": 400,
    "scalarlg.dat": None,
    "quotbal.dat": 400,
    "ltgtruri.dat": 400,
    "lwsruri.dat": 400,
    "lwsstart.dat": 400,
    "trws.dat": 400,
    "escruri.dat": 400,
    "baddate.dat": 400,
    "regbadct.dat": 400,
    "badaspec.dat": 400,
    "baddn.dat": None,
    "badvers.dat": 505,
    "mismatch01.dat": 400,
    "mismatch02.dat": 400,
    "bigcode.dat": None,
    # transaction, application, backward
    "badbranch.dat": 200,
    "insuf.dat": 400,  # no Call-ID, From or To: answered with what it has (RFC 4475 §3.3.1)
    "unkscm.dat": 416,
    "novelsc.dat": 416,
    "unksm2.dat": 405,
    "bext01.dat": 420,
    "invut.dat": 415,
    "regaut01.dat": 405,
    "multi01.dat": 400,
    "mcl01.dat": 400,
    "bcast.dat": None,
    "zeromf.dat": 200,
    "cparam01.dat": 405,
    "cparam02.dat": 405,
    "regescrt.dat": 405,
    "sdp01.dat": 406,
    "inv2543.dat": 200,
}


def answer(data: bytes) -> list[int]:
    """Statuses a UA would receive for this datagram from one node."""
    ra = RaCore("node-1", "127.0.0.1:5071", SipTimers(), lambda _: None)
    outcome = ra.receive_datagram(data, PEER, 0.0)
    if isinstance(outcome.event, bus.RequestReceived):
        container = Container("node-1", [Service("chat", ChatSbb)])
        tx = Transaction(DictView(), "node-1")
        event = SipRequest(**{f: getattr(outcome.event, f) for f in outcome.event.__struct_fields__})
        container.deliver(tx, event, event.activity)
        for message in tx.messages:
            if isinstance(message, bus.SendResponse):
                ra.respond(message.tx, message.status, message.reason, 0.01, list(message.headers), message.body)
    # Read the status line only: a 400 echoes the request's own (bad) CSeq, as it must.
    statuses = [int(d.split(b" ", 2)[1]) for d, _ in ra.datagrams_to_send()]
    return [s for s in statuses if s != 100]


def test_the_corpus_bytes_are_the_rfcs() -> None:
    for line in (CORPUS / "SHA256SUMS").read_text().splitlines():
        digest, name = line.split()
        assert hashlib.sha256((CORPUS / name.lstrip("*")).read_bytes()).hexdigest() == digest, name


def test_the_manifest_and_the_expectations_name_the_same_49_files() -> None:
    assert sorted(EXPECTED) == sorted(MANIFEST) and len(MANIFEST) == 49


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_corpus_message_gets_its_verdict(name: str) -> None:
    data = (CORPUS / name).read_bytes()
    verdict = MANIFEST[name]["verdict"]
    broken_on_purpose = ("insuf.dat", "multi01.dat", "mcl01.dat")  # application cases a parser rejects
    if verdict in ("valid", "transaction", "application", "backward") and name not in broken_on_purpose:
        parse(data)  # must parse
    elif verdict == "invalid":
        with pytest.raises(ParseError):
            parse(data)
    expected = EXPECTED[name]
    assert answer(data) == ([] if expected is None else [expected])
