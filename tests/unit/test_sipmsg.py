"""SIP framing and header rules (RFC 3261 §7, §18.3, §20)."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from zeroslee.sipmsg import (
    ParseError,
    SipMessage,
    canonical,
    keepalive_kind,
    parse,
    parse_name_addr,
    parse_uri,
    parse_via,
)

BASE = (
    "OPTIONS sip:room@example.com SIP/2.0\r\n"
    "v: SIP/2.0/UDP 10.0.0.1:5060;branch=z9hG4bKabc\r\n"
    "f: <sip:a@example.com>;tag=1\r\n"
    "t: <sip:room@example.com>\r\n"
    "i: abc@host\r\n"
    "CSeq: 1 OPTIONS\r\n"
)


def test_compact_forms_map_to_full_names() -> None:
    msg = parse((BASE + "l: 0\r\n\r\n").encode())
    assert msg.call_id == "abc@host"
    assert parse_via(msg.get_all("Via")[0]).branch == "z9hG4bKabc"
    assert parse_name_addr(msg.get("From") or "").tag == "1"


def test_folded_header_is_unfolded() -> None:
    msg = parse((BASE + "Subject: one\r\n  two\r\nContent-Length: 0\r\n\r\n").encode())
    assert msg.get("Subject") == "one two"


def test_comma_separated_values_split_outside_quotes_and_brackets() -> None:
    msg = parse((BASE + 'Contact: "a, b" <sip:x@y;p=1,2>, <sip:z@w>\r\nContent-Length: 0\r\n\r\n').encode())
    assert msg.get_all("Contact") == ['"a, b" <sip:x@y;p=1,2>', "<sip:z@w>"]


def test_missing_content_length_on_udp_takes_the_rest_of_the_datagram() -> None:
    assert parse((BASE + "\r\nbody bytes").encode()).body == b"body bytes"


def test_trailing_octets_after_content_length_are_ignored() -> None:
    assert parse((BASE + "Content-Length: 4\r\n\r\nbodyEXTRA").encode()).body == b"body"


@pytest.mark.parametrize("value", ["-1", "9999", "abc"])
def test_bad_content_length_is_400(value: str) -> None:
    with pytest.raises(ParseError) as err:
        parse((BASE + f"Content-Length: {value}\r\n\r\nbody").encode())
    assert err.value.status == 400


def test_unknown_version_is_505() -> None:
    with pytest.raises(ParseError) as err:
        parse((BASE.replace("SIP/2.0\r\n", "SIP/7.0\r\n", 1) + "\r\n").encode())
    assert err.value.status == 505


def test_non_utf8_octets_survive_a_round_trip() -> None:
    raw = (BASE + "Subject: caf").encode() + b"\xe9\xff\r\nContent-Length: 0\r\n\r\n"
    again = parse(parse(raw).to_bytes())
    assert again.to_bytes() == parse(raw).to_bytes()
    assert b"\xe9\xff" in again.to_bytes()


def test_sip_uri_parts() -> None:
    uri = parse_uri("sip:room-7@Example.COM:5070;transport=udp;lr")
    assert (uri.user, uri.host, uri.port, uri.params) == ("room-7", "example.com", 5070, {"transport": "udp", "lr": ""})
    with pytest.raises(ParseError) as err:
        parse_uri("tel:+123")
    assert err.value.status == 416


TOKEN = st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789-.", min_size=1, max_size=12)


@given(TOKEN, TOKEN, st.binary(max_size=200), st.lists(st.tuples(TOKEN, TOKEN), max_size=5))
def test_serialize_then_parse_is_identity(user: str, call_id: str, body: bytes, extra: list[tuple[str, str]]) -> None:
    msg = SipMessage(method="INFO", uri=f"sip:{user}@example.com")
    msg.headers = [
        ("Via", "SIP/2.0/UDP 10.0.0.1:5060;branch=z9hG4bKx"),
        ("From", "<sip:a@b>;tag=1"),
        ("To", f"<sip:{user}@b>"),
        ("Call-ID", call_id),
        ("CSeq", "2 INFO"),
    ] + [(canonical(f"X-{k}"), v) for k, v in extra]
    msg.body = body
    again = parse(msg.to_bytes())
    assert (again.method, again.uri, again.body) == (msg.method, msg.uri, msg.body)
    assert again.headers[: len(msg.headers)] == msg.headers


@given(st.binary(max_size=600))
def test_random_bytes_raise_only_parse_error(data: bytes) -> None:
    try:
        parse(data)
    except ParseError:
        pass


CORPUS_FILES = sorted((Path(__file__).resolve().parents[1] / "corpus" / "rfc4475").glob("*.dat"))


@given(
    st.sampled_from(CORPUS_FILES),
    st.lists(st.tuples(st.integers(0, 4000), st.sampled_from(["flip", "drop", "dup", "crlf"])), max_size=6),
)
def test_mutated_corpus_messages_raise_only_parse_error(path: Path, edits: list[tuple[int, str]]) -> None:
    data = bytearray(path.read_bytes())
    for at, how in edits:
        i = at % max(len(data), 1)
        if how == "flip" and data:
            data[i] ^= 0x5A
        elif how == "drop" and data:
            del data[i]
        elif how == "dup":
            data[i:i] = data[i : i + 7]
        else:
            data[i:i] = b"\r\n"
    try:
        parse(bytes(data))
    except ParseError:
        pass


@pytest.mark.parametrize(
    "value", ["SIP/2.0/UDP [::1;branch=z9hG4bKx", "SIP/2.0/UDP [::1]:abc;branch=z9hG4bKx", "SIP/2.0/UDP [::1]x"]
)
def test_a_broken_ipv6_reference_in_a_via_is_a_parse_error_not_a_crash(value: str) -> None:
    with pytest.raises(ParseError):
        parse_via(value)


@pytest.mark.parametrize("uri", ["sip:alice@[::1", "sip:alice@[::1]:abc", "sip:[2001:db8::1"])
def test_a_broken_ipv6_reference_in_a_uri_is_a_parse_error_not_a_crash(uri: str) -> None:
    with pytest.raises(ParseError):
        parse_uri(uri)


def test_ipv6_references_parse_with_and_without_a_port() -> None:
    assert (parse_via("SIP/2.0/UDP [2001:db8::9]:5070;branch=z9hG4bKa").port, parse_uri("sip:[::1]").port) == (
        5070,
        None,
    )
    assert parse_uri("sip:bob@[2001:DB8::9]:5061").host == "[2001:db8::9]"


@pytest.mark.parametrize(
    ("data", "kind"),
    [
        (b"\r\n\r\n", "crlf"),
        (b"\r\n", "crlf"),
        (b"\x00\x01\x00\x00\x21\x12\xa4\x42" + bytes(12), "stun"),  # a STUN binding request
        (b"OPTIONS sip:a@b SIP/2.0\r\n\r\n", ""),
        (b"", ""),
    ],
)
def test_keepalives_are_told_apart_from_sip(data: bytes, kind: str) -> None:
    assert keepalive_kind(data) == kind


@pytest.mark.parametrize(
    ("uri", "host", "port"),
    [
        ("sip:[2001:db8::10]", "[2001:db8::10]", None),
        ("sip:[2001:db8::10:5070]", "[2001:db8::10:5070]", None),  # RFC 5118 §4.3: no port
        ("sip:[2001:db8::10]:5070", "[2001:db8::10]", 5070),  # §4.4
        ("sip:[2001:db8::192.0.2.1]", "[2001:db8::192.0.2.1]", None),  # §4.10: two colons
        ("sip:[2001:db8:::192.0.2.1]", "[2001:db8:::192.0.2.1]", None),  # §4.10: the old ABNF's three
        ("sip:u@[::ffff:192.0.2.2]", "[::ffff:192.0.2.2]", None),  # §4.9: IPv4-mapped
    ],
)
def test_rfc5118_references_parse(uri: str, host: str, port: int | None) -> None:
    parsed = parse_uri(uri)
    assert (parsed.host, parsed.port) == (host, port)


@pytest.mark.parametrize("uri", ["sip:2001:db8::10", "sip:[2001:db8:::10]", "sip:[fe80::zz]", "sip:[1::2::3]"])
def test_rfc5118_malformed_references_are_parse_errors(uri: str) -> None:
    """§4.2: an IPv6 address without brackets; no address at all inside the brackets."""
    with pytest.raises(ParseError):
        parse_uri(uri)
