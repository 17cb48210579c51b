"""RFC 4028 session timers, the UAS side (pure): what an INVITE or UPDATE we answer asks
for, what our 2xx says, and when a dialog whose refreshes stopped is ended.

A dialog whose UA vanished (a phone unplugged, a crashed softphone) would otherwise hold
its SBB entity, activity and room for ever. Where the UA supports session timers (it
says `timer` in Supported or Require, or the request carries Session-Expires), the
session lasts `Session-Expires` seconds from each successful refresh (a re-INVITE or
UPDATE answered 2xx); the refresher is the UAC unless it asked otherwise (§9: we choose
`uac`, the UA being the one whose liveness is in question). If no refresh arrives, the
dialog's owner sends BYE a little before expiry (§10: min(32 s, interval / 3) early)
and the services see the dialog end. A request below our Min-SE gets 422 with our
Min-SE (§5, §9). Where the UA supports none, or asked us to be the refresher (which we
do not do: we send no refreshing re-INVITEs or UPDATEs), the dialog ends after the
cluster's idle limit without any request on it instead (`[sip] idle_limit`).
"""

from __future__ import annotations

from dataclasses import dataclass

from zeroslee.sipmsg import SipMessage


@dataclass(frozen=True)
class Session:
    interval: int  # s
    refresher: str  # "uac" (the UA refreshes; we end the dialog if it stops) or "uas"


Refusal = tuple[int, str, list[tuple[str, str]]]


def option_tags(msg: SipMessage, *names: str) -> set[str]:
    return {tag.strip().lower() for name in names for value in msg.get_all(name) for tag in value.split(",")} - {""}


def negotiate(msg: SipMessage, min_se: int, preferred: int) -> tuple[Session | None, Refusal | None]:
    """For an INVITE or UPDATE we answer as UAS: the session timer our 2xx will set (None:
    no session timer), or the refusal to send instead (422, or 400 for a malformed one)."""
    supported = option_tags(msg, "Supported", "Require")
    header = msg.get("Session-Expires")
    if header is None:
        if "timer" not in supported:
            return None, None  # §9: the UA does not support them; the idle limit applies
        floor = max(min_se, requested_min_se(msg))
        return Session(max(preferred, floor), "uac"), None
    value, _, params = header.partition(";")
    try:
        asked = int(value.strip())
    except ValueError:
        return None, (400, "Bad Session-Expires", [])
    if asked < min_se:
        return None, (422, "Session Interval Too Small", [("Min-SE", str(min_se))])
    refresher = ""
    for param in params.split(";"):
        name, _, val = param.partition("=")
        if name.strip().lower() == "refresher":
            refresher = val.strip().lower()
    if refresher not in ("", "uac", "uas"):
        return None, (400, "Bad Session-Expires", [])
    # §9: we may shorten what was asked, never below the request's Min-SE (nor ours).
    interval = max(min(asked, preferred), max(min_se, requested_min_se(msg)))
    if not refresher:
        refresher = "uac" if "timer" in supported else "uas"  # §9: uac only if it supports it
    return Session(interval, refresher), None


def requested_min_se(msg: SipMessage) -> int:
    """The request's Min-SE; 0 without one (our own `min_se`, 90 by default as §4 says a
    missing Min-SE means, is the floor then)."""
    value = (msg.get("Min-SE") or "").partition(";")[0].strip()
    return int(value) if value.isdigit() else 0


def response_headers(session: Session) -> list[tuple[str, str]]:
    """The 2xx's Session-Expires; with `refresher=uac`, Require: timer (§9: MUST)."""
    headers = [("Session-Expires", f"{session.interval};refresher={session.refresher}")]
    if session.refresher == "uac":
        headers.append(("Require", "timer"))
    return headers


def ends_in(session: Session | None, idle_limit: float) -> float:
    """Seconds from a successful refresh (or from the dialog's start) to its end if no
    refresh comes: §10's early BYE for a UA that refreshes; the idle limit otherwise."""
    if session is None or session.refresher != "uac":
        return idle_limit
    return session.interval - min(32.0, session.interval / 3)
