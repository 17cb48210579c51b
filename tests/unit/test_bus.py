"""The bus wire format is frozen: golden bytes, and junk is refused with one error type."""

from __future__ import annotations

import pytest

from zeroslee import bus


def test_golden_bytes_of_a_commit() -> None:
    message = bus.Commit(req=7, reads=[("a", 1)], writes=[("b", b"x"), ("c", None)])
    assert bus.encode(message).hex() == GOLDEN_COMMIT
    assert bus.decode(bytes.fromhex(GOLDEN_COMMIT)) == message


def test_golden_bytes_of_a_heartbeat() -> None:
    message = bus.NodeHeartbeat("node-1", True, 5, "127.0.0.1:5071")
    assert bus.encode(message).hex() == GOLDEN_HEARTBEAT


def test_a_heartbeat_of_the_version_before_draining_decodes_with_the_defaults() -> None:
    """Mixed versions during a rolling upgrade: fields added since have defaults."""
    assert bus.decode(bytes.fromhex(HEARTBEAT_BEFORE_DRAIN)) == bus.NodeHeartbeat("node-1", True, 5, "127.0.0.1:5071")


def test_a_message_with_a_field_this_version_does_not_know_decodes_without_it() -> None:
    """...and the other way: a newer peer's added field is ignored here."""
    newer = bytes.fromhex(GOLDEN_HEARTBEAT.replace("87a174", "88a174", 1)) + b"\xa5extra\xc3"
    assert bus.decode(newer) == bus.NodeHeartbeat("node-1", True, 5, "127.0.0.1:5071")


@pytest.mark.parametrize("junk", [b"", b"\xc1", b"\x93\x01\x02", b"\x81\xa1t\xa4Nope", b"\x81\xa1t\xa6Commit"])
def test_junk_raises_bad_message_only(junk: bytes) -> None:
    with pytest.raises(bus.BadMessage):
        bus.decode(junk)


GOLDEN_COMMIT = (
    "86a174a6436f6d6d6974a372657107a572656164739192a16101a67772697465739292a162c4017892a163c0"
    "ac7072656669785f726561647390a66f726967696ea0"
)
GOLDEN_HEARTBEAT = (
    "87a174ad4e6f6465486561727462656174a46e6f6465a66e6f64652d31a57265616479c3ab696e6361726e61"
    "74696f6e05a3736970ae3132372e302e302e313a35303731a8647261696e696e67c2a776657273696f6ea0"
)
HEARTBEAT_BEFORE_DRAIN = (
    "85a174ad4e6f6465486561727462656174a46e6f6465a66e6f64652d31a57265616479c3ab696e6361726e61"
    "74696f6e05a3736970ae3132372e302e302e313a35303731"
)
