"""SIP header values (RFC 3261 §20, §25): name-addr, Via, SIP/SIPS URIs, parameters.

Pure and small: each parser raises `ParseError` carrying the status a UAS answers with.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass

TOKEN = re.compile(r"^[A-Za-z0-9\-.!%*_+`'~]+$")


class ParseError(Exception):
    """The peer sent something we cannot take; `status` is the response to answer with
    (0: no response can be formed, drop and count)."""

    def __init__(self, reason: str, status: int = 400) -> None:
        super().__init__(reason)
        self.reason = reason
        self.status = status


@dataclass(frozen=True)
class NameAddr:
    display: str
    uri: str
    params: dict[str, str]

    @property
    def tag(self) -> str:
        return self.params.get("tag", "")


def parse_params(text: str, strict: bool = True) -> dict[str, str]:
    """`;name=value;flag` parameters. RFC 3261 §25.1: a parameter has a token name, so an
    empty one (`;;`) is malformed; `strict=False` tolerates it where we only read."""
    params: dict[str, str] = {}
    parts = text.split(";")
    if parts and parts[0].strip() == "":
        parts = parts[1:]
    for part in parts:
        key, _, value = part.partition("=")
        key = key.strip()
        if not key or not TOKEN.match(key):
            if strict:
                raise ParseError("empty or malformed parameter")
            continue
        params[key.lower()] = value.strip()
    return params


def _quoted_end(value: str, start: int) -> int:
    """Index just past the quoted-string opening at `start` (§25.1: `\\` escapes one octet)."""
    i = start + 1
    while i < len(value):
        if value[i] == "\\":
            i += 2
            continue
        if value[i] == '"':
            return i + 1
        i += 1
    raise ParseError("unterminated quoted string")


def parse_name_addr(value: str) -> NameAddr:
    """From/To/Contact/Route values: `"Display" <uri>;params` or a bare `uri;params`.

    §20.10: an addr-spec holding a comma, question mark or semicolon must be in <>, so a
    bare URI is read up to its first `;` and may not carry `?headers`.
    """
    value = value.strip()
    display = ""
    rest = value
    if value.startswith('"'):
        end = _quoted_end(value, 0)
        display, rest = value[1 : end - 1], value[end:].lstrip()
        if not rest.startswith("<"):
            raise ParseError("a quoted display name must be followed by <uri>")
    if "<" in rest:
        lt = rest.index("<")
        gt = rest.find(">", lt)
        if gt < 0:
            raise ParseError("unterminated <uri>")
        words = rest[:lt].split()
        if words and not all(TOKEN.match(w) for w in words):
            raise ParseError("display name is neither tokens nor quoted")
        display = display or " ".join(words)
        uri = rest[lt + 1 : gt]
        if uri != uri.strip() or " " in uri:
            raise ParseError("whitespace inside <uri>")
        params = parse_params(rest[gt + 1 :])
    else:
        uri, _, tail = rest.partition(";")
        uri = uri.strip()
        if " " in uri or "?" in uri or "," in uri:
            raise ParseError("addr-spec with spaces, headers or commas must be in <>")
        params = parse_params(tail)
    if ":" not in uri:
        raise ParseError("address has no URI scheme")
    return NameAddr(display, uri, params)


@dataclass(frozen=True)
class Via:
    transport: str
    host: str
    port: int | None
    params: dict[str, str]

    @property
    def branch(self) -> str:
        return self.params.get("branch", "")


VIA = re.compile(r"^SIP\s*/\s*2\.0\s*/\s*([A-Za-z0-9\-.!%*_+`'~]+)\s+([^;\s]+)\s*(;.*)?$", re.S)


def parse_via(value: str) -> Via:
    """One Via value; LWS around the slashes is legal (§25.1, RFC 4475 §3.1.1.1)."""
    m = VIA.match(value.strip())
    if not m:
        raise ParseError("malformed Via")
    host, port = split_hostport(m.group(2))
    return Via(m.group(1).upper(), host, port, parse_params(m.group(3) or ""))


def is_ipv6_reference(text: str) -> bool:
    """An IPv6 address as SIP may write one: RFC 4291's text form, or (RFC 5118 §4.10) the
    `hexseq:::IPv4` that RFC 3261's first IPv6 ABNF wrongly allowed and peers still send."""
    head, triple, ipv4 = text.partition(":::")
    candidate = f"{head}::{ipv4}" if triple and "." in ipv4 else text
    try:
        ipaddress.IPv6Address(candidate)
    except ValueError:
        return False
    return True


def split_hostport(text: str) -> tuple[str, int | None]:
    """`host[:port]`; an IPv6 reference in brackets (RFC 5118 §4.5, RFC 3261 §25.1)."""
    if text.startswith("["):
        end = text.find("]")
        if end < 0:
            raise ParseError("unterminated IPv6 reference")
        host, rest = text[: end + 1], text[end + 1 :]
        if not is_ipv6_reference(host[1:-1]):
            raise ParseError("malformed IPv6 reference")
        if rest and not (rest.startswith(":") and rest[1:].isdigit()):
            raise ParseError("malformed port")
        return host, int(rest[1:]) if rest else None
    host, _, port = text.partition(":")
    if port and not port.isdigit():
        raise ParseError("malformed port")
    return host, int(port) if port else None


@dataclass(frozen=True)
class SipUri:
    scheme: str
    user: str
    host: str
    port: int | None
    params: dict[str, str]


def parse_uri(uri: str) -> SipUri:
    scheme, colon, rest = uri.partition(":")
    if not colon:
        raise ParseError("URI has no scheme")
    scheme = scheme.lower()
    if scheme not in ("sip", "sips"):
        raise ParseError(f"unsupported URI scheme {scheme}", 416)
    rest = rest.split("?", 1)[0]
    userinfo, at, hostpart = rest.rpartition("@")
    hostport, _, params = hostpart.partition(";")
    host, port = split_hostport(hostport)
    if not host:
        raise ParseError("URI has no host")
    user = userinfo.split(":", 1)[0] if at else ""
    return SipUri(scheme, user, host.lower(), port, parse_params(params))


def target_of(uri: str) -> tuple[str, int]:
    """Where to send a request for `uri` (no DNS: zeroslee runs on addresses)."""
    parsed = parse_uri(uri)
    return parsed.host.strip("[]"), parsed.port or 5060
