"""Records a call keeps for its whole life omit their default fields, and every version
reads every other's: what an older node wrote (every field) and what a newer one writes
(defaults left out) decode to the same record, during a rolling upgrade as after it."""

from __future__ import annotations

import msgspec

from router.records import ActivityRecord, Attachment, SbbRecord
from sip_ra.dialog import Dialog
from zeroslee.ftra import Entry, EntryHead
from zeroslee.records import ServerResponse

RECORDS = [
    ActivityRecord("a1", "sip-dialog", "node-1"),
    ActivityRecord("a2", "null", "node-2", ending=True, ra_keys=["uas/x"], call_id="c", local_tag="t"),
    Attachment(),
    Attachment(3, ["Chat"]),
    SbbRecord("s1", "chat", "a1", b"state", "node-1"),
    ServerResponse(1, "INVITE", 200),
    Entry("node-1", b"dialog"),
    Entry("node-1", b"dialog", 12.5),
    Dialog("d1", "c1", "l", "r", "<sip:a@x>", "<sip:b@y>", "sip:b@y", [], 1, 1, "node-1"),
]


def every_field(record: msgspec.Struct) -> bytes:
    """The record as a version without omit_defaults wrote it: every field, by name."""
    return msgspec.msgpack.encode(msgspec.structs.asdict(record))


def test_default_fields_are_left_out_and_either_form_decodes_to_the_same_record() -> None:
    for record in RECORDS:
        kind = type(record)
        compact, full = msgspec.msgpack.encode(record), every_field(record)
        # omit_defaults changes only the encoding: an older node's decoder of the same
        # struct reads ours (missing fields take their defaults), and we read its records.
        assert msgspec.msgpack.decode(compact, type=kind) == record
        assert msgspec.msgpack.decode(full, type=kind) == record
        written = set(msgspec.msgpack.decode(compact))
        required = {f.name for f in msgspec.structs.fields(kind) if f.required}
        at_default = {
            f.name
            for f in msgspec.structs.fields(kind)
            if not f.required
            and getattr(record, f.name) == (f.default if f.default is not msgspec.NODEFAULT else f.default_factory())
        }
        assert written == set(msgspec.structs.asdict(record)) - at_default and required <= written
    assert len(msgspec.msgpack.encode(Attachment())) == 1  # {}: an attachment with no mask nor priority
    assert len(msgspec.msgpack.encode(RECORDS[0])) < len(every_field(RECORDS[0])) - 25
    assert msgspec.msgpack.decode(msgspec.msgpack.encode(Entry("node-1", b"v")), type=EntryHead) == EntryHead("node-1")
