"""Records the SIP RA keeps in the clustered store besides the dialog itself.

`ServerResponse`: the final response last sent on a dialog (written by the router's SIP
facility in the same commit as the delivery that produced it). A node that takes over a
dialog answers a retransmission of that request from this record instead of handling
the request a second time.
"""

from __future__ import annotations

import msgspec


class ServerResponse(msgspec.Struct, frozen=True):
    cseq: int
    method: str
    status: int
    reason: str = ""
    content_type: str = ""
    body: bytes = b""
    headers: list[tuple[str, str]] = []  # a service's extra headers, replayed with it

    def encode(self) -> bytes:
        return msgspec.msgpack.encode(self)

    @staticmethod
    def decode(data: bytes) -> ServerResponse:
        return msgspec.msgpack.decode(data, type=ServerResponse)
