"""The bus vocabulary: every message any two zeroslee processes exchange over ZeroMQ.

One tagged union of frozen msgspec Structs, one encoder and one decoder built once.
Commands are imperative (`SendRequest`, `Commit`), facts past tense (`RequestReceived`).
New fields get defaults so old peers keep decoding; tests/unit/test_bus.py freezes the
wire format with golden bytes. Nothing here is pickled.
"""

from __future__ import annotations

import msgspec


class Message(msgspec.Struct, frozen=True, tag=True, tag_field="t"):
    """Base of every bus message; the class name is the wire tag."""


# --- liveness -------------------------------------------------------------------------


class Ping(Message, frozen=True, tag=True):
    req: int
    sender: str


class Pong(Message, frozen=True, tag=True):
    req: int
    sender: str
    ready: bool


class NodeHeartbeat(Message, frozen=True, tag=True):
    """Published by each node's sip-ra while the node can take calls."""

    node: str
    ready: bool
    incarnation: int
    sip: str  # host:port the balancer forwards SIP to
    draining: bool = False  # `zeroslee-admin drain`: no new calls; its work goes to the others
    version: str = ""  # the node's code (zeroslee.__version__): "" from a version before it


# --- the state store (clients: router, sip-ra, admin) --------------------------------


class Commit(Message, frozen=True, tag=True):
    """Apply `writes` if every key in `reads` still has the version read (0: absent).

    `prefix_reads` guards decisions made on a range (e.g. "no one else is attached"):
    (prefix, count, max_version) as read; any change there is a conflict.
    """

    req: int
    reads: list[tuple[str, int]] = []
    writes: list[tuple[str, bytes | None]] = []
    prefix_reads: list[tuple[str, int, int]] = []
    origin: str = ""


class CommitResult(Message, frozen=True, tag=True):
    req: int
    ok: bool
    seq: int = 0
    conflicts: list[str] = []
    error: str = ""


class Query(Message, frozen=True, tag=True):
    """Read every key under `prefix` from the store's replica (management)."""

    req: int
    prefix: str
    limit: int = 10000


class QueryResult(Message, frozen=True, tag=True):
    req: int
    items: list[tuple[str, int, bytes]] = []


class StatsRequest(Message, frozen=True, tag=True):
    req: int


class StatsReply(Message, frozen=True, tag=True):
    req: int
    service: str
    node: str
    stats: dict[str, int | str | float] = {}


class SetTracer(Message, frozen=True, tag=True):
    """Management: set a service's trace level (router/tracer.py) on this router; with
    `store`, also commit it to the clustered store (`tracer/<service>`). -> `Pong`, or a
    `StatsReply` whose stats carry `error` when refused."""

    req: int
    service: str
    level: str
    store: bool = False


class ServiceChange(Message, frozen=True, tag=True):
    """Management (router/lifecycle.py): `action` "activate", "deactivate" or "upgrade"
    (to `sbb`, "module:Class") service `service`, cluster-wide; with `check`, only see
    whether this router could: it loads `sbb` and checks its State against the running
    version's, changing nothing. -> `StatsReply` whose stats carry `result` (what was or
    would be done) or `error`."""

    req: int
    service: str
    action: str
    sbb: str = ""
    check: bool = False


class SetDrain(Message, frozen=True, tag=True):
    """Management: drain `node` (or undrain it), cluster-wide, through any router, which
    commits `drain/<node>`; the node's sip-ra says so in its heartbeats. -> `Pong`, or a
    `StatsReply` with `error`."""

    req: int
    node: str
    draining: bool = True


class SetProfile(Message, frozen=True, tag=True):
    """Management: write (`value`: JSON of the table's schema) or `remove` one row of a
    profile table, through a router, which validates it against the schema and fires the
    change on the table's activity. -> `Pong`, or a `StatsReply` with `error`."""

    req: int
    table: str
    key: str
    value: str = ""
    remove: bool = False


class TraceRequest(Message, frozen=True, tag=True):
    """Management: this process's trace records of `keys` (Call-IDs, SBB ids)."""

    req: int
    keys: list[str] = []


class TraceReply(Message, frozen=True, tag=True):
    req: int
    service: str
    node: str
    records: list[tuple[str, float, str, str, str]] = []  # (key, time, source, destination, what)


# --- between stores --------------------------------------------------------------------


class Hello(Message, frozen=True, tag=True):
    req: int
    node: str
    incarnation: int


class StoreStatus(Message, frozen=True, tag=True):
    req: int
    node: str
    role: str  # "starting" | "syncing" | "primary" | "backup"
    epoch: int
    seq: int
    incarnation: int
    backups: list[str] = []  # a primary's current backups


class Join(Message, frozen=True, tag=True):
    """A backup asks the primary to stream it commits, starting with a snapshot."""

    req: int
    node: str
    epoch: int


class Snapshot(Message, frozen=True, tag=True):
    req: int
    epoch: int
    seq: int
    items: list[tuple[str, int, bytes]]
    ok: bool = True


class Replicate(Message, frozen=True, tag=True):
    """A group of commits: `batch[i]` is the writes of commit `seq + i`."""

    req: int
    epoch: int
    seq: int
    batch: list[list[tuple[str, bytes | None]]]


class Replicated(Message, frozen=True, tag=True):
    req: int
    node: str
    epoch: int
    seq: int
    ok: bool = True


class Vote(Message, frozen=True, tag=True):
    """A store asks a voter (another store, or the witness) to make it primary of `epoch`."""

    req: int
    candidate: str
    epoch: int
    seq: int = 0


class VoteReply(Message, frozen=True, tag=True):
    req: int
    granted: bool
    epoch: int  # the voter's highest epoch


class Renew(Message, frozen=True, tag=True):
    """The primary extends its lease with the witness, reporting its in-sync backups."""

    req: int
    primary: str
    epoch: int
    in_sync: list[str] = []


class RenewReply(Message, frozen=True, tag=True):
    req: int
    ok: bool
    epoch: int


# --- sip-ra <-> router -----------------------------------------------------------------


class RequestReceived(Message, frozen=True, tag=True):
    """A SIP request that opens or continues an activity, as an event for the router.

    `activity` is the dialog id for dialog activities, else the server transaction's id.
    """

    event_id: str
    tx: str
    activity: str
    activity_type: str  # "sip-dialog" | "sip-transaction"
    method: str
    request_uri: str
    call_id: str
    from_uri: str
    to_uri: str
    cseq: int
    content_type: str = ""
    body: bytes = b""
    has_sdp_offer: bool = False
    created_dialog: bool = False
    ra_keys: list[str] = []  # the RA's keys to delete when this activity ends
    contact: str = ""  # the first Contact URI, where the sender can be reached
    headers: bytes = b""  # the start line and header lines as received (parsed only if read)


class ResponseReceived(Message, frozen=True, tag=True):
    """A response to a request an SBB sent: a final one, or a provisional (101-199) one to
    an INVITE; a timeout or a transport failure comes as 408 or 503."""

    dialog: str
    method: str
    status: int
    call_id: str
    content_type: str = ""
    body: bytes = b""
    headers: bytes = b""  # the status line and header lines as received ("" if made up here)
    reason: str = ""
    ends_activity: bool = False  # the final answer to a request sent outside any dialog


class SendResponse(Message, frozen=True, tag=True):
    tx: str
    status: int
    reason: str = ""
    content_type: str = ""
    body: bytes = b""
    headers: list[tuple[str, str]] = []


class SendRequest(Message, frozen=True, tag=True):
    """Send `method` on `dialog`. With `to_uri` set it is a request outside any dialog
    (UAC side): an INVITE creates the dialog, which the RA replicates under the id given;
    any other method (MESSAGE, OPTIONS...) gets its final response, and the activity ends.
    CANCEL cancels the dialog's INVITE while it has had no final response."""

    dialog: str
    method: str
    content_type: str = ""
    body: bytes = b""
    origin: str = ""  # who asked (for the log line), e.g. the SBB id
    from_uri: str = ""
    to_uri: str = ""
    outgoing: str = ""  # its journal key (`keys.outgoing`): the RA deletes it as it sends
    headers: list[tuple[str, str]] = []  # extra headers (not those the RA writes: sipmsg.RA_OWNED)
    call_id: str = ""  # with to_uri: the Call-ID and our tag the dialog's id was derived from
    local_tag: str = ""


class EndActivity(Message, frozen=True, tag=True):
    """Management: end `activity` now (its SBBs get an ActivityEndEvent)."""

    req: int
    activity: str


class StartActivity(Message, frozen=True, tag=True):
    """A resource adaptor's new activity (`kind` names the RA's activity type)."""

    req: int
    activity: str
    kind: str


class FireEvent(Message, frozen=True, tag=True):
    """A resource adaptor fires an event on an activity, whichever node created it."""

    req: int
    activity: str
    type: str  # "module:QualName" of a msgspec Struct
    payload: bytes


class DialogEnded(Message, frozen=True, tag=True):
    """The SIP RA gave up on a dialog it had reported (e.g. it answered the INVITE with an
    error itself): the router ends the activity and removes the RA's `keys` with it."""

    dialog: str
    keys: list[str] = []


class DeliveryFailed(Message, frozen=True, tag=True):
    """The router could not deliver the event for `tx`; sip-ra answers with `status`."""

    tx: str
    status: int
    reason: str


Any = (
    Ping
    | Pong
    | NodeHeartbeat
    | Commit
    | CommitResult
    | Query
    | QueryResult
    | StatsRequest
    | StatsReply
    | TraceRequest
    | TraceReply
    | SetTracer
    | SetProfile
    | ServiceChange
    | SetDrain
    | Hello
    | StoreStatus
    | Join
    | Snapshot
    | Replicate
    | Replicated
    | RequestReceived
    | ResponseReceived
    | SendResponse
    | SendRequest
    | DeliveryFailed
    | EndActivity
    | StartActivity
    | FireEvent
    | DialogEnded
    | Vote
    | VoteReply
    | Renew
    | RenewReply
)

_encoder = msgspec.msgpack.Encoder()
_decoder = msgspec.msgpack.Decoder(Any)


class BadMessage(Exception):
    """A peer put bytes on the bus that are not one of our messages."""


def encode(message: Message) -> bytes:
    return _encoder.encode(message)


def decode(data: bytes) -> Message:
    try:
        # Typed through a variable: msgspec 0.23 types decode() as the union, older ones as Any.
        message: Message = _decoder.decode(data)
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        raise BadMessage(str(exc)) from exc
    return message
