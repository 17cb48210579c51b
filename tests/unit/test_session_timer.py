"""RFC 4028 negotiation as the UAS (pure)."""

from __future__ import annotations

from sip_ra.session_timer import Session, ends_in, negotiate, response_headers
from zeroslee.sipmsg import SipMessage


def invite(*headers: tuple[str, str]) -> SipMessage:
    return SipMessage(method="INVITE", uri="sip:room@example.com", headers=list(headers))


def test_no_support_means_no_session_timer_and_the_idle_limit() -> None:
    assert negotiate(invite(), 90, 1800) == (None, None)
    assert ends_in(None, 7200.0) == 7200.0


def test_supported_timer_without_session_expires_gets_ours_with_the_uac_refreshing() -> None:
    session, refusal = negotiate(invite(("Supported", "100rel, timer")), 90, 1800)
    assert refusal is None and session == Session(1800, "uac")
    assert response_headers(session) == [("Session-Expires", "1800;refresher=uac"), ("Require", "timer")]
    assert ends_in(session, 7200.0) == 1800 - 32  # §10: BYE min(32, interval/3) early


def test_below_min_se_is_422_and_a_long_interval_is_shortened_not_below_the_requests_min_se() -> None:
    assert negotiate(invite(("Session-Expires", "60")), 90, 1800) == (
        None,
        (422, "Session Interval Too Small", [("Min-SE", "90")]),
    )
    session, _ = negotiate(invite(("Supported", "timer"), ("Session-Expires", "7200")), 90, 1800)
    assert session == Session(1800, "uac")
    session, _ = negotiate(invite(("Supported", "timer"), ("Session-Expires", "7200"), ("Min-SE", "3600")), 90, 1800)
    assert session == Session(3600, "uac")


def test_the_requests_refresher_is_kept_and_a_uac_without_support_cannot_be_the_refresher() -> None:
    session, _ = negotiate(invite(("Supported", "timer"), ("Session-Expires", "600;refresher=uas")), 90, 1800)
    assert session == Session(600, "uas")
    assert response_headers(session) == [("Session-Expires", "600;refresher=uas")]
    assert ends_in(session, 7200.0) == 7200.0  # we send no refreshes: the idle limit ends it
    # A proxy inserted Session-Expires for a UAC that supports none (§8): uas refreshes.
    session, _ = negotiate(invite(("Session-Expires", "600")), 90, 1800)
    assert session == Session(600, "uas")


def test_malformed_session_expires_is_400() -> None:
    assert negotiate(invite(("Session-Expires", "soon")), 90, 1800)[1] == (400, "Bad Session-Expires", [])
    assert negotiate(invite(("Session-Expires", "600;refresher=me")), 90, 1800)[1] == (400, "Bad Session-Expires", [])
