"""SIP over a stream (TCP): where one message ends and the next begins (pure).

RFC 3261 §18.3: on a stream, Content-Length gives the body's length and MUST be present;
the message ends that many octets after the blank line. Between messages, RFC 5626
§4.4.1's keepalive: a client's double CRLF ("ping") is answered with a single CRLF
("pong"); a lone CRLF (a pong of ours echoed, or slack) is skipped, as §7.5 lets a
receiver ignore CRLFs before a message.

A peer that breaks framing cannot be resynchronised (where would the next message
start?): the framer reports the fault once, with what to answer if anything, and the
shell closes the connection after sending it.
"""

from __future__ import annotations

from dataclasses import dataclass, field

MAX_HEAD = 16 * 1024  # octets of start line + headers we wait for before giving up
MAX_BODY = 64 * 1024  # a SIP body larger than this is not ours to carry (513)
PING, PONG = b"\r\n\r\n", b"\r\n"


class FramingError(Exception):
    """The stream cannot be read further. `status`: a response to send first, or 0."""

    def __init__(self, reason: str, status: int = 0) -> None:
        super().__init__(reason)
        self.reason = reason
        self.status = status


def content_length(head: bytes) -> int | None:
    """The Content-Length (or compact `l`) of a message head; None if it has none."""
    for line in head.split(b"\r\n")[1:]:
        name, colon, value = line.partition(b":")
        if colon and name.strip().lower() in (b"content-length", b"l"):
            text = value.strip()
            if not text.isdigit():
                raise FramingError("Content-Length is not a number", 400)
            return int(text)
    return None


@dataclass
class StreamFramer:
    """Feed it what the connection receives; it returns the whole messages found, and
    counts the keepalive pings it must answer (`pings`, taken by the shell)."""

    buffer: bytearray = field(default_factory=bytearray)
    pings: int = 0
    failed: FramingError | None = None

    def feed(self, data: bytes) -> list[bytes]:
        if self.failed is not None:
            return []
        self.buffer += data
        out: list[bytes] = []
        buf = self.buffer
        while buf:
            if buf.startswith(PING):
                self.pings += 1
                del buf[:4]
                continue
            if buf.startswith(PONG):
                if len(buf) < 4 and PING.startswith(bytes(buf)):
                    break  # maybe the first half of a ping: wait for the rest
                del buf[:2]
                continue
            end = buf.find(b"\r\n\r\n")
            if end < 0:
                if len(buf) > MAX_HEAD:
                    self.failed = FramingError("message head too long", 513)
                break
            try:
                length = content_length(bytes(buf[:end]))
            except FramingError as exc:
                self.failed = exc
                break
            if length is None:
                self.failed = FramingError("no Content-Length on a stream (RFC 3261 §18.3)", 400)
                break
            if length > MAX_BODY:
                self.failed = FramingError("body too large", 513)
                break
            total = end + 4 + length
            if len(buf) < total:
                break
            out.append(bytes(buf[:total]))
            del buf[:total]
        return out

    def take_pings(self) -> int:
        pings, self.pings = self.pings, 0
        return pings
