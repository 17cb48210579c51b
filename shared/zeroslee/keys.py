"""The clustered key space, shared by every process that reads or writes the store.

One key per fact, so that unrelated writers never touch the same key: an attachment is
its own key rather than an entry in a growing list, which keeps joins and leaves to one
busy room from conflicting with each other.

Every part of a key is escaped (`part`): a room name, a convergence name, a Call-ID or
an RA's key comes from outside, and a `/` in one (a Request-URI user `a%2Fb`) must not
make a key that addresses another record or that a prefix scan of another record finds.
`%`, `/`, controls, non-ASCII and non-UTF-8 octets are %HH; the ids we make (hex) and
ordinary names pass unchanged. `parts` undoes it. FORMAT names this layout: a store
written with another is refused at start (statestore README).
"""

from __future__ import annotations

import hashlib
from urllib.parse import quote, unquote

SEP = "/"
FORMAT = 2  # 1: parts unescaped (before); 2: every part escaped with `part`
SAFE = "-._~:@!$&'()*+,;=[]"  # printable ASCII that cannot split or prefix a key
# How many parts a key of each kind has: a format-1 store whose keys all fit, with no part
# that needs escaping, reads the same in format 2 (the statestore migrates it).
ARITY = {
    "sbb": 2, "aci": 2, "name": 2, "last": 2, "uas": 2,
    "conv": 3, "att": 3, "satt": 3, "aname": 3, "evt": 3, "out": 3, "ra": 3, "tmr": 3,
}  # fmt: skip


def part(text: str) -> str:
    """One key part, escaped so that it holds no `/` and maps back one to one."""
    return quote(text, safe=SAFE, errors="surrogatepass")


def parts(key: str) -> list[str]:
    """A key's parts, unescaped: `parts(name("a/b")) == ["name", "a/b"]`."""
    return [unquote(p, errors="surrogatepass") for p in key.split(SEP)]


def sbb(sbb_id: str) -> str:
    return f"sbb/{part(sbb_id)}"


def convergence(service: str, name: str) -> str:
    return f"conv/{part(service)}/{part(name)}"


def convergences_of(service: str) -> str:
    return f"conv/{part(service)}/"


def activity(activity_id: str) -> str:
    return f"aci/{part(activity_id)}"


def attachment(activity_id: str, sbb_id: str) -> str:
    return f"att/{part(activity_id)}/{part(sbb_id)}"


def attachments_of(activity_id: str) -> str:
    return f"att/{part(activity_id)}/"


def sbb_attachment(sbb_id: str, activity_id: str) -> str:
    """Reverse index: which activities an SBB entity is attached to."""
    return f"satt/{part(sbb_id)}/{part(activity_id)}"


def sbb_attachments_of(sbb_id: str) -> str:
    return f"satt/{part(sbb_id)}/"


def child(parent_id: str, child_id: str) -> str:
    """A child relation's entry: `parent_id` created `child_id` (router/context.py)."""
    return f"child/{part(parent_id)}/{part(child_id)}"


def children_of(parent_id: str) -> str:
    return f"child/{part(parent_id)}/"


def name(room: str) -> str:
    return f"name/{part(room)}"


def activity_name(activity_id: str, room: str) -> str:
    return f"aname/{part(activity_id)}/{part(room)}"


def activity_names_of(activity_id: str) -> str:
    return f"aname/{part(activity_id)}/"


def pending_event(activity_id: str, event_id: str) -> str:
    return f"evt/{part(activity_id)}/{part(event_id)}"


def pending_events_of(activity_id: str) -> str:
    return f"evt/{part(activity_id)}/"


def outgoing(dialog_id: str, request_id: str) -> str:
    """A request an SBB sent on a dialog, journaled until the SIP RA sends it (`Outgoing`)."""
    return f"out/{part(dialog_id)}/{part(request_id)}"


def dialog_of_outgoing(key: str) -> str:
    """The dialog an `outgoing` key belongs to."""
    return parts(key)[1]


def ra_data(ra: str, key: str) -> str:
    """A resource adaptor's replicated data entry (`ftra.ReplicatedData`)."""
    return f"ra/{part(ra)}/{part(key)}"


def ra_data_of(ra: str) -> str:
    return f"ra/{part(ra)}/"


def dialog(dialog_id: str) -> str:
    """A SIP dialog: the SIP RA's replicated data entry (`ftra.ReplicatedData("sip")`)."""
    return ra_data("sip", dialog_id)


def last(key: str) -> str:
    """The final part of a key (the id or name it names), unescaped."""
    return parts(key)[-1]


def last_response(dialog_id: str) -> str:
    """The final response last sent on a dialog (`records.ServerResponse`)."""
    return f"last/{part(dialog_id)}"


def sip_dialog_id(call_id: str, local_tag: str) -> str:
    """A SIP dialog's id (its activity's): cluster-unique and derivable from any
    in-dialog request (Call-ID + our tag), for dialogs we answered and those we began."""
    digest = hashlib.blake2b(f"{call_id}\x00{local_tag}".encode(), digest_size=12)
    return "d" + digest.hexdigest()


def invite_index(digest: str) -> str:
    """Finds the dialog an initial INVITE created, from its Call-ID and From tag."""
    return f"uas/{part(digest)}"


PROFILES = "profile/"


def profile(table: str, key: str) -> str:
    """One row of a profile table (router/profiles.py)."""
    return f"{PROFILES}{part(table)}/{part(key)}"


def profile_activity(table: str) -> str:
    """The activity a profile table's change events are fired on."""
    return f"profile-{table}"


ALARMS = "alarm/"


def alarm(service: str, alarm_id: str) -> str:
    """An alarm an SBB of `service` raised (router/context.py, AlarmFacility)."""
    return f"{ALARMS}{part(service)}/{part(alarm_id)}"


DRAINS = "drain/"


def drain(node: str) -> str:
    """Present while `node` is drained (`zeroslee-admin drain`)."""
    return f"{DRAINS}{part(node)}"


SERVICES = "svc/all"  # the services' lifecycle (router/lifecycle.py), one key for all


def service_activity(service: str) -> str:
    """The activity a service's ServiceStartedEvent is fired on."""
    return f"service-{service}"


TRACERS = "tracer/"


def tracer(service: str) -> str:
    """A service's trace level (router/tracer.py), cluster-wide."""
    return f"{TRACERS}{part(service)}"


def timer(activity_id: str, timer_id: str) -> str:
    return f"tmr/{part(activity_id)}/{part(timer_id)}"


def timers_of(activity_id: str) -> str:
    return f"tmr/{part(activity_id)}/"
