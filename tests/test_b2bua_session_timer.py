"""Session timers (RFC 4028) on each leg: refreshes by either side, a timer that expires,
the intervals and Min-SE we accept or raise, and 422 in both directions. In memory, with
a fake clock (:mod:`testkit.callsim`).
"""

from __future__ import annotations

import pytest

from testkit.callsim import (
    SDP,
    SDP_CALLEE,
    SE_CALLER,
    T1,
    Wire,
    default_config,
    establish,
    in_dialog,
    invite,
    requests,
    response_to,
    responses,
    start_call,
)

# -- the caller's session timer ------------------------------------------------------------


def test_caller_session_timer_expires_bye_on_both_legs_with_reason() -> None:
    w = Wire()
    e = establish(w, 1, invite(1, headers=SE_CALLER))
    assert e.a_ok.get("session-expires") == "90;refresher=uac"
    assert "timer" in e.a_ok.tokens("require")
    w.advance(59.9)
    assert w.take_caller() == [] and w.take_callee() == []
    w.advance(0.2)  # 90 - min(32, 90/3) = 60 s
    (bye_a,) = requests(w.take_caller(), "BYE")
    (bye_b,) = requests(w.take_callee(), "BYE")
    for bye in (bye_a, bye_b):
        assert bye.get("reason") == 'SIP;cause=408;text="Session timer expired"'
    end = w.core.cdr_out[-1]
    assert end.end_reason == "session_timeout"
    assert end.duration_ms == 60000
    assert w.core.calls == 0


def test_a_caller_refresh_by_update_keeps_the_call() -> None:
    w = Wire()
    e = establish(w, 1, invite(1, headers=SE_CALLER))
    w.advance(40)
    upd = in_dialog("UPDATE", e.a_ok, 2, 1, "z9hG4bK-upd", extra=SE_CALLER)
    w.from_caller(upd)
    (ok,) = responses(w.take_caller(), 200)
    assert ok.get("session-expires") is not None
    assert requests(w.take_callee(), "UPDATE") == []  # a refresh is per leg
    w.advance(59.9)
    assert requests(w.take_caller(), "BYE") == [] and w.core.calls == 1
    w.advance(0.2)  # 60 s after the refresh
    assert len(requests(w.take_caller(), "BYE")) == 1
    assert w.core.cdr_out[-1].end_reason == "session_timeout"


def test_a_caller_refresh_by_reinvite_keeps_the_call() -> None:
    w = Wire()
    e = establish(w, 1, invite(1, headers=SE_CALLER))
    w.advance(40)
    w.from_caller(in_dialog("INVITE", e.a_ok, 2, 1, "z9hG4bK-re", SDP, extra=SE_CALLER))
    (re,) = requests(w.take_callee(), "INVITE")
    w.from_callee(response_to(re, 200, "OK", None, SDP_CALLEE))
    (ok,) = responses(w.take_caller(), 200)
    w.from_caller(in_dialog("ACK", ok, 2, 1, "z9hG4bK-re-ack"))
    w.advance(59.9)
    assert requests(w.take_caller(), "BYE") == [] and w.core.calls == 1
    w.advance(0.2)
    assert len(requests(w.take_caller(), "BYE")) == 1


def test_we_refresh_the_a_leg_when_the_caller_makes_us_the_refresher() -> None:
    w = Wire()
    se = "Supported: timer\r\nAllow: INVITE, ACK, BYE, CANCEL, UPDATE\r\n"
    e = establish(w, 1, invite(1, headers=se + "Session-Expires: 120;refresher=uas\r\n"))
    assert e.a_ok.get("session-expires") == "120;refresher=uas"
    w.advance(59.9)
    assert w.take_caller() == []
    w.advance(0.2)
    (upd,) = requests(w.take_caller(), "UPDATE")
    assert upd.call_id == "1-sim@127.0.0.3" and upd.to.tag == "1SIPpTag001"
    assert upd.body == b""
    assert requests(w.take_callee()) == []
    w.from_caller(response_to(upd, 200, "OK", None, extra="Session-Expires: 120;refresher=uas\r\n"))
    w.advance(60)
    assert len(requests(w.take_caller(), "UPDATE")) == 1
    assert w.core.calls == 1


def test_a_refresh_by_reinvite_offers_the_session_unchanged() -> None:
    """A refresh re-INVITE carries the SDP last sent on that leg, unchanged (RFC 3264 §8):
    sent without one, the peer's 2xx would hold an offer our ACK cannot answer."""
    w = Wire()
    e = establish(w, 1, ok_extra="Session-Expires: 1800;refresher=uac\r\n")
    w.advance(900.1)
    (refresh,) = requests(w.take_callee(), "INVITE")
    assert refresh.body == e.b_invite.body
    assert refresh.get("content-type") == "application/sdp"
    w.from_callee(response_to(refresh, 200, "OK", None, SDP_CALLEE))
    (ack,) = requests(w.take_callee(), "ACK")
    assert ack.body == b""
    # the A-leg likewise, with what the caller got last: the callee's answer
    se = "Supported: timer\r\nSession-Expires: 120;refresher=uas\r\n"
    e = establish(w, 2, invite(2, headers=se))
    w.advance(60.1)
    (refresh,) = requests(w.take_caller(), "INVITE")
    assert refresh.body == SDP_CALLEE


# -- the callee's session timer ------------------------------------------------------------


@pytest.mark.parametrize(
    ("allow", "method"), [("INVITE, ACK, BYE, UPDATE", "UPDATE"), ("", "INVITE")]
)
def test_we_refresh_the_b_leg_at_half_the_interval_when_the_callee_asks_us_to(
    allow: str, method: str
) -> None:
    w = Wire()
    extra = "Require: timer\r\nSession-Expires: 1800;refresher=uac\r\n"
    if allow:
        extra += f"Allow: {allow}\r\n"
    e = establish(w, 1, ok_extra=extra)
    w.advance(899.9)
    assert w.take_callee() == []
    w.advance(0.2)
    (refresh,) = requests(w.take_callee(), method)
    assert refresh.to.tag == e.callee_tag
    assert (refresh.get("session-expires") or "").startswith("1800;refresher=uac")
    assert w.take_caller() == []  # the caller is not bothered
    w.from_callee(
        response_to(refresh, 200, "OK", None, extra="Session-Expires: 1800;refresher=uac\r\n")
    )
    if method == "INVITE":
        assert len(requests(w.take_callee(), "ACK")) == 1
    w.advance(900.1)
    assert len(requests(w.take_callee(), method)) == 1  # and again, half an interval later
    assert w.core.calls == 1


def test_an_unanswered_refresh_ends_the_call() -> None:
    w = Wire()
    extra = "Allow: UPDATE\r\nSession-Expires: 1800;refresher=uac\r\n"
    establish(w, 1, ok_extra=extra)
    w.advance(900 + 64 * T1 + 1)
    assert w.core.calls == 0
    assert w.core.cdr_out[-1].end_reason == "session_timeout"
    byes = requests(w.take_caller(), "BYE")  # the caller does not answer: retransmitted
    assert len({b.top_via.branch for b in byes}) == 1


# -- intervals, Min-SE and 422 -------------------------------------------------------------


def test_a_caller_with_timers_asking_for_too_small_an_interval_gets_422_with_our_min_se() -> None:
    """RFC 4028 §9: below our Min-SE (90 s here) from a caller that supports timers: 422
    with Min-SE, no B-leg, and the refused attempt's CDR."""
    w = Wire()
    w.from_caller(invite(1, headers="Supported: timer\r\nSession-Expires: 60\r\n"))
    got = responses(w.take_caller())
    assert [r.status for r in got] == [422]  # one response to a refused INVITE, no 100
    assert got[-1].get("min-se") == "90"
    assert requests(w.take_callee()) == []
    end = w.core.cdr_out[-1]
    assert (end.kind, end.status, end.end_reason) == ("end", 422, "rejected")
    assert w.core.calls == 0


@pytest.mark.parametrize(
    "headers, expected",
    [
        # without a Session-Expires we ask for ours (1,800 s), never below its Min-SE
        ("Supported: timer\r\nMin-SE: 3600\r\n", "3600;refresher=uac"),
        # its own Session-Expires, raised to its Min-SE (erratum 1687)
        ("Supported: timer\r\nSession-Expires: 1000\r\nMin-SE: 2000\r\n", "2000;refresher=uac"),
        ("Session-Expires: 60\r\nMin-SE: 120\r\n", "120;refresher=uas"),
    ],
)
def test_our_interval_for_the_caller_is_never_below_its_min_se(headers: str, expected: str) -> None:
    """RFC 4028 §9: the UAS never sets an interval below the request's Min-SE."""
    w = Wire()
    e = establish(w, 1, invite(1, headers=headers))
    assert e.a_ok.get("session-expires") == expected


def test_require_timer_only_to_a_caller_that_supports_it() -> None:
    """RFC 3261 §8.2.2.3: no extension is required of a caller that did not list it; RFC
    4028 §9: such a caller gets refresher=uas, and we refresh."""
    w = Wire()
    e = establish(w, 1, invite(1, headers="Session-Expires: 600\r\n"))
    assert e.a_ok.get("session-expires") == "600;refresher=uas"
    assert "timer" not in e.a_ok.tokens("require")
    e = establish(w, 2, invite(2, headers="Supported: timer\r\nSession-Expires: 600\r\n"))
    assert "timer" in e.a_ok.tokens("require")


def test_timers_off_never_refuse_a_small_interval() -> None:
    """With session_expires 0 (we ask for no timer) a small interval is raised, not 422."""
    w = Wire(default_config("sip: {session_expires: 0}\n"))
    e = establish(w, 1, invite(1, headers="Supported: timer\r\nSession-Expires: 60\r\n"))
    assert (e.a_ok.get("session-expires") or "").split(";")[0] == "90"


def test_a_flood_of_small_intervals_meets_the_limits_first() -> None:
    """The 422 comes after the limits (SPEC §8): a draining element answers 503."""
    w = Wire()
    w.core.drain()
    w.from_caller(invite(1, headers="Supported: timer\r\nSession-Expires: 60\r\n"))
    assert [r.status for r in responses(w.take_caller())] == [503]


@pytest.mark.parametrize(
    "user, headers",
    [
        ("0201234567", "Session-Expires: 60\r\n"),  # no timer support: raised, not refused
        ("112", "Supported: timer\r\nSession-Expires: 60\r\n"),  # emergency: never refused
    ],
    ids=["no-timer-support", "emergency"],
)
def test_too_small_an_interval_is_raised_where_422_would_fail_the_call(
    user: str, headers: str
) -> None:
    w = Wire()
    e = establish(w, 1, invite(1, user=user, headers=headers))
    assert (e.a_ok.get("session-expires") or "").split(";")[0] == "90"
    assert w.core.calls == 1


def test_a_422_from_the_callee_is_retried_with_its_min_se_not_relayed() -> None:
    w = Wire()
    b1 = start_call(w, 1)
    assert b1.get("session-expires") == "1800"
    w.from_callee(response_to(b1, 422, "Session Interval Too Small", "t", extra="Min-SE: 3600\r\n"))
    to_callee = w.take_callee()
    assert len(requests(to_callee, "ACK")) == 1
    (b2,) = requests(to_callee, "INVITE")
    assert b2.call_id == b1.call_id and b2.cseq.number == b1.cseq.number + 1
    assert (b2.get("session-expires") or "").split(";")[0] == "3600"
    # RFC 4028 §7.4: the retry's Min-SE is the 422's, not ours
    assert b2.get("min-se") == "3600"
    assert [r.status for r in responses(w.take_caller())] == [100]
    # a second 422 asking for more: the retry asks for the largest Min-SE given
    w.from_callee(response_to(b2, 422, "Session Interval Too Small", "t", extra="Min-SE: 7200\r\n"))
    (b3,) = requests(w.take_callee(), "INVITE")
    assert b3.get("min-se") == "7200"
    assert (b3.get("session-expires") or "").split(";")[0] == "7200"


@pytest.mark.parametrize(
    "min_se_lines",
    [
        [""],  # no Min-SE: nothing to retry with
        ["Min-SE: 30\r\n"],  # below what we asked for: a retry would only ask for less
        ["Min-SE: abc\r\n"],
        ["Min-SE: 3600\r\n", "Min-SE: 1200\r\n"],  # the second asks for no more
        [f"Min-SE: {1800 + 600 * i}\r\n" for i in range(1, 5)],  # more than 3 retries
    ],
    ids=["none", "smaller", "malformed", "not-larger", "too-many"],
)
def test_a_422_we_cannot_satisfy_fails_the_call_with_500_never_a_relayed_422(
    min_se_lines: list[str],
) -> None:
    """A 422 relayed to the caller would lack our Min-SE (RFC 4028 §9) and fail callers
    without timers or emergency calls: the negotiation with the next hop failed."""
    w = Wire()
    b_inv = start_call(w, 1)
    w.take_caller()
    for extra in min_se_lines:
        w.from_callee(response_to(b_inv, 422, "Session Interval Too Small", "t", extra=extra))
        retries = requests(w.take_callee(), "INVITE")
        if retries:
            (b_inv,) = retries
    finals = responses(w.take_caller())
    assert [(r.status, r.reason) for r in finals] == [(500, "Session Interval Not Agreed")]
    assert finals[0].get("min-se") is None and w.core.calls == 0
    end = w.core.cdr_out[-1]
    assert (end.status, end.end_reason) == (500, "rejected")
