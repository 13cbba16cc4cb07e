"""Numbers a peer writes (Session-Expires, Min-SE, RSeq) can never stop a call half way.

``"²".isdigit()`` is true and ``int()`` of it raises; 4,300 digits raise too; an interval
of 10**400 seconds overflows a float timer. Each of these reached ``int()`` or the timer
heap once, after the call had been answered on the B-leg: the caller never got its 200,
the call never ended and held its slot. Now every such value is read as delta-seconds
(ASCII digits, capped) or ignored, and the call goes on.
"""

from __future__ import annotations

import pytest

from sipguard.b2bua.session_timer import delta_seconds
from sipguard.config.model import MAX_SESSION_INTERVAL
from testkit.callsim import (
    SDP_CALLEE,
    Wire,
    in_dialog,
    invite,
    requests,
    response_to,
    responses,
)

HOSTILE = ["\u00b2", "9" * 5000, "1" + "0" * 400, "", " ", "-5", "1e9", "12a"]


@pytest.mark.parametrize("value", HOSTILE)
def test_a_hostile_session_expires_in_the_answer_leaves_a_working_call(value: str) -> None:
    w = Wire()
    w.from_caller(invite(1, headers="Supported: timer\r\n"))
    (b_inv,) = requests(w.take_callee(), "INVITE")
    extra = f"Require: timer\r\nSession-Expires: {value};refresher=uas\r\n"
    w.from_callee(response_to(b_inv, 200, "OK", "t1", SDP_CALLEE, extra=extra))
    (ok,) = responses(w.take_caller(), 200)
    w.from_caller(in_dialog("ACK", ok, 1, 1, "z9hG4bK-ack"))
    w.from_caller(in_dialog("BYE", ok, 2, 1, "z9hG4bK-bye"))
    (bye,) = requests(w.take_callee(), "BYE")
    w.from_callee(response_to(bye, 200, "OK", None))
    assert responses(w.take_caller(), 200)
    assert w.core.calls == 0
    assert [r.end_reason for r in w.core.cdr_out if r.kind == "end"] == ["caller_bye"]


@pytest.mark.parametrize("value", HOSTILE)
def test_a_hostile_min_se_in_a_422_ends_the_attempt_cleanly(value: str) -> None:
    w = Wire()
    w.from_caller(invite(1))
    (b_inv,) = requests(w.take_callee(), "INVITE")
    w.from_callee(
        response_to(
            b_inv, 422, "Session Interval Too Small", "t1", b"", extra=f"Min-SE: {value}\r\n"
        )
    )
    for m in requests(w.take_callee(), "INVITE"):  # a retry with a readable Min-SE
        w.from_callee(response_to(m, 486, "Busy Here", "t2", b""))
    finals = [r for r in responses(w.take_caller()) if r.status >= 300]
    assert finals, "the caller got no final response"
    assert w.core.calls == 0


@pytest.mark.parametrize("value", HOSTILE)
def test_a_hostile_rseq_is_ignored(value: str) -> None:
    w = Wire()
    w.from_caller(invite(1))  # 100rel on the B-leg only: the caller gets the 200 at once
    (b_inv,) = requests(w.take_callee(), "INVITE")
    extra = f"Require: 100rel\r\nRSeq: {value}\r\n"
    w.from_callee(response_to(b_inv, 183, "Session Progress", "t1", SDP_CALLEE, extra=extra))
    w.from_callee(response_to(b_inv, 200, "OK", "t1", SDP_CALLEE))
    assert responses(w.take_caller(), 200)
    assert w.core.calls == 1


def test_delta_seconds_reads_only_ascii_digits_and_caps() -> None:
    assert delta_seconds(" 90 ") == 90
    assert delta_seconds("0") == 0
    assert delta_seconds("9" * 11) == MAX_SESSION_INTERVAL
    assert delta_seconds(str(MAX_SESSION_INTERVAL + 1)) == MAX_SESSION_INTERVAL
    for bad in ("\u00b2", "", "-1", "1.5", "0x10", "\u0663"):
        assert delta_seconds(bad) is None


def test_a_session_interval_of_zero_does_not_make_us_refresh_without_end() -> None:
    """RFC 4028 §4: no interval under 90 s; a 0 from the callee is taken as 90."""
    w = Wire()
    w.from_caller(invite(1))
    (b_inv,) = requests(w.take_callee(), "INVITE")
    extra = "Require: timer\r\nSession-Expires: 0;refresher=uac\r\n"
    w.from_callee(response_to(b_inv, 200, "OK", "t1", SDP_CALLEE, extra=extra))
    (ok,) = responses(w.take_caller(), 200)
    w.from_caller(in_dialog("ACK", ok, 1, 1, "z9hG4bK-ack"))
    w.take_callee()
    w.advance(40.0)
    assert requests(w.take_callee()) == []  # no refresh before 45 s (half of 90)
