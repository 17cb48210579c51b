"""The clustered key space, shared by every process that reads or writes the store.

One key per fact, so that unrelated writers never touch the same key: an attachment is
its own key rather than an entry in a growing list, which keeps joins and leaves to one
busy room from conflicting with each other.
"""

from __future__ import annotations

SEP = "/"


def sbb(sbb_id: str) -> str:
    return f"sbb/{sbb_id}"


def convergence(service: str, name: str) -> str:
    return f"conv/{service}/{name}"


def activity(activity_id: str) -> str:
    return f"aci/{activity_id}"


def attachment(activity_id: str, sbb_id: str) -> str:
    return f"att/{activity_id}/{sbb_id}"


def attachments_of(activity_id: str) -> str:
    return f"att/{activity_id}/"


def sbb_attachment(sbb_id: str, activity_id: str) -> str:
    """Reverse index: which activities an SBB entity is attached to."""
    return f"satt/{sbb_id}/{activity_id}"


def sbb_attachments_of(sbb_id: str) -> str:
    return f"satt/{sbb_id}/"


def name(room: str) -> str:
    return f"name/{room}"


def activity_name(activity_id: str, room: str) -> str:
    return f"aname/{activity_id}/{room}"


def activity_names_of(activity_id: str) -> str:
    return f"aname/{activity_id}/"


def pending_event(activity_id: str, event_id: str) -> str:
    return f"evt/{activity_id}/{event_id}"


def outgoing(dialog_id: str, request_id: str) -> str:
    """A request an SBB sent on a dialog, journaled until the SIP RA sends it (`Outgoing`)."""
    return f"out/{dialog_id}/{request_id}"


def dialog_of_outgoing(key: str) -> str:
    """The dialog an `outgoing` key belongs to."""
    return key.split(SEP)[1]


def dialog(dialog_id: str) -> str:
    """A SIP dialog: the SIP RA's replicated data entry (`ftra.ReplicatedData("sip")`)."""
    return f"ra/sip/{dialog_id}"


def last(key: str) -> str:
    """The final path segment of a key (the id it names)."""
    return key.rsplit(SEP, 1)[-1]


def last_response(dialog_id: str) -> str:
    """The final response last sent on a dialog (`records.ServerResponse`)."""
    return f"last/{dialog_id}"


def invite_index(digest: str) -> str:
    """Finds the dialog an initial INVITE created, from its Call-ID and From tag."""
    return f"uas/{digest}"


def timer(activity_id: str, timer_id: str) -> str:
    return f"tmr/{activity_id}/{timer_id}"


def timers_of(activity_id: str) -> str:
    return f"tmr/{activity_id}/"
