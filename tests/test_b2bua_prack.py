"""Reliable provisional responses (RFC 3262) on each leg: 100rel towards the caller or not,
RSeq per leg, PRACK, and the final response held for the PRACK of a 183 with SDP. In
memory, with a fake clock (:mod:`testkit.callsim`).
"""

from __future__ import annotations

import pytest

from testkit.callsim import (
    CALLER,
    SDP_CALLEE,
    T1,
    Recorder,
    Wire,
    callee_request,
    cancel_of,
    in_dialog,
    invite,
    requests,
    response_to,
    responses,
    start_call,
    statuses,
)

# -- reliable provisional responses (RFC 3262) ---------------------------------------------


def test_a_caller_with_100rel_gets_reliable_183s_retransmitted_until_its_prack() -> None:
    w = Wire()
    rec = Recorder(w, "SIP/2.0 183", CALLER)
    w.drop = rec
    b_inv = start_call(w, 1, invite(1, headers="Supported: 100rel\r\n"))
    w.take_caller()
    w.from_callee(response_to(b_inv, 183, "Session Progress", "t", SDP_CALLEE))
    t0 = w.now
    (p183,) = responses(w.take_caller(), 183)
    assert "100rel" in p183.tokens("require")
    assert p183.get("rseq") == "1"
    w.advance(1.6)
    assert [round(t - t0, 3) for t in rec.times] == [0, 0.5, 1.5]
    w.take_caller()
    prack = in_dialog("PRACK", p183, 2, 1, "z9hG4bK-prack", extra="RAck: 1 1 INVITE\r\n")
    w.from_caller(prack)
    (ok,) = responses(w.take_caller(), 200)
    assert ok.cseq.method == "PRACK"
    assert requests(w.take_callee(), "PRACK") == []  # answered here: the callee's was not reliable
    w.advance(10)
    assert len(rec.times) == 3
    # the next reliable 1xx has the next RSeq
    w.from_callee(response_to(b_inv, 180, "Ringing", "t"))
    (p180,) = responses(w.take_caller(), 180)
    assert p180.get("rseq") == "2"


def test_a_caller_without_100rel_gets_unreliable_provisionals() -> None:
    w = Wire()
    b_inv = start_call(w, 1)
    w.take_caller()
    w.from_callee(
        response_to(
            b_inv, 183, "Session Progress", "t", SDP_CALLEE, extra="Require: 100rel\r\nRSeq: 77\r\n"
        )
    )
    (p183,) = responses(w.take_caller(), 183)
    assert not p183.has("rseq") and "100rel" not in p183.tokens("require")
    # we PRACK the callee's reliable 183 ourselves
    (prack,) = requests(w.take_callee(), "PRACK")
    assert prack.get("rack") == f"77 {b_inv.cseq.number} INVITE"
    assert prack.to.tag == "t" and prack.call_id == b_inv.call_id
    w.from_callee(response_to(prack, 200, "OK", None))
    w.from_callee(response_to(b_inv, 200, "OK", "t", SDP_CALLEE))
    assert len(responses(w.take_caller(), 200)) == 1


def test_rseq_numbering_is_independent_per_leg() -> None:
    w = Wire()
    b_inv = start_call(w, 1, invite(1, headers="Supported: 100rel\r\n"))
    w.take_caller()
    rel = "Require: 100rel\r\nRSeq: {}\r\n"
    w.from_callee(
        response_to(b_inv, 183, "Session Progress", "t", SDP_CALLEE, extra=rel.format(4711))
    )
    (p183,) = responses(w.take_caller(), 183)
    assert p183.get("rseq") == "1"
    (prack_b,) = requests(w.take_callee(), "PRACK")
    assert prack_b.get("rack") == f"4711 {b_inv.cseq.number} INVITE"
    w.from_callee(response_to(prack_b, 200, "OK", None))
    w.from_caller(in_dialog("PRACK", p183, 2, 1, "z9hG4bK-pr1", extra="RAck: 1 1 INVITE\r\n"))
    assert len(responses(w.take_caller(), 200)) == 1
    assert requests(w.take_callee(), "PRACK") == []
    w.from_callee(response_to(b_inv, 180, "Ringing", "t", extra=rel.format(4712)))
    (p180,) = responses(w.take_caller(), 180)
    assert p180.get("rseq") == "2"
    (prack_b2,) = requests(w.take_callee(), "PRACK")
    assert prack_b2.get("rack") == f"4712 {b_inv.cseq.number} INVITE"
    assert prack_b2.cseq.number > prack_b.cseq.number


def test_a_prack_with_the_wrong_rseq_gets_481() -> None:
    w = Wire()
    b_inv = start_call(w, 1, invite(1, headers="Supported: 100rel\r\n"))
    w.from_callee(response_to(b_inv, 183, "Session Progress", "t", SDP_CALLEE))
    (p183,) = responses(w.take_caller(), 183)
    w.from_caller(in_dialog("PRACK", p183, 2, 1, "z9hG4bK-pr", extra="RAck: 9 1 INVITE\r\n"))
    assert statuses(w.take_caller()) == [481]


def test_a_retransmitted_reliable_1xx_is_prack_ed_again_but_not_relayed_again() -> None:
    """RFC 3262 §4: a reliable 1xx with an RSeq already seen is a retransmission."""
    w = Wire()
    w.from_caller(invite(1))
    (b_inv,) = requests(w.take_callee(), "INVITE")
    rel = response_to(
        b_inv, 183, "Session Progress", "t1", SDP_CALLEE, extra="Require: 100rel\r\nRSeq: 7\r\n"
    )
    w.from_callee(rel)
    assert len(requests(w.take_callee(), "PRACK")) == 1
    assert [r.status for r in responses(w.take_caller())] == [100, 183]
    w.from_callee(rel)  # our PRACK was lost: the callee retransmits
    assert len(requests(w.take_callee(), "PRACK")) == 1
    assert responses(w.take_caller()) == []


# -- the final response and the PRACK ------------------------------------------------------


def test_the_final_response_waits_for_the_prack_of_a_183_with_sdp() -> None:
    w = Wire()
    b_inv = start_call(w, 1, invite(1, headers="Supported: 100rel\r\n"))
    w.from_callee(response_to(b_inv, 183, "Session Progress", "t", SDP_CALLEE))
    (p183,) = responses(w.take_caller(), 183)
    w.from_callee(response_to(b_inv, 200, "OK", "t", SDP_CALLEE))
    assert responses(w.take_caller(), 200) == []  # RFC 3262 §3: held until the PRACK
    w.from_caller(in_dialog("PRACK", p183, 2, 1, "z9hG4bK-pr", extra="RAck: 1 1 INVITE\r\n"))
    assert statuses(w.take_caller()) == [200, 200]  # the PRACK's, then the INVITE's


def test_a_failure_is_not_held_for_the_prack_of_a_183_with_sdp() -> None:
    """RFC 3262 §3 holds back only a 2xx until the PRACK of a 1xx with an offer."""
    w = Wire()
    b_inv = start_call(w, 1, invite(1, headers="Supported: 100rel\r\n"))
    w.from_callee(response_to(b_inv, 183, "Session Progress", "t", SDP_CALLEE))
    w.take_caller()
    w.from_callee(response_to(b_inv, 486, "Busy Here", "t"))
    assert [r.status for r in responses(w.take_caller())] == [486]
    assert w.core.cdr_out[-1].status == 486


@pytest.mark.parametrize("how", ["callee_bye", "no_prack"])
def test_a_call_ending_while_its_2xx_waits_for_a_prack_answers_the_callers_invite(
    how: str,
) -> None:
    """The 2xx held for the PRACK of a 183 with SDP (RFC 3262 §3): if the call ends first
    (the callee's BYE, or no PRACK for 64*T1), the caller's INVITE gets a final response
    (§15.1.2; RFC 3262 §3: 5xx), never a BYE on its early dialog; the B-leg gets a BYE."""
    w = Wire()
    b_inv = start_call(w, 1, invite(1, headers="Supported: 100rel\r\n"))
    w.from_callee(response_to(b_inv, 183, "Session Progress", "t", SDP_CALLEE))
    w.from_callee(response_to(b_inv, 200, "OK", "t", SDP_CALLEE))
    assert responses(w.take_caller(), 200) == []  # held for the PRACK
    w.take_callee()
    if how == "callee_bye":
        w.from_callee(callee_request("BYE", b_inv, "t", 1, 1))
    else:
        w.advance(64 * T1 + 1)
        byes = requests(w.take_callee(), "BYE")  # and its retransmissions (Timer E)
        assert byes and len({b.top_via.branch for b in byes}) == 1
    to_caller = w.take_caller()
    assert requests(to_caller, "BYE") == []
    finals = [r.status for r in responses(to_caller) if r.cseq.method == "INVITE"]
    assert [s for s in finals if s >= 200] and all(s >= 300 for s in finals if s >= 200)
    assert w.core.calls == 0
    w.advance(100)
    assert not w.core.layer.server


def test_a_cancel_while_a_reliable_183_awaits_its_prack_gets_487() -> None:
    w = Wire()
    b_inv = start_call(w, 1, invite(1, headers="Supported: 100rel\r\n"))
    w.from_callee(response_to(b_inv, 183, "Session Progress", "t", SDP_CALLEE))
    w.take_caller()
    w.from_caller(cancel_of(1))
    to_caller = w.take_caller()
    assert sorted((r.cseq.method, r.status) for r in responses(to_caller)) == [
        ("CANCEL", 200),
        ("INVITE", 487),
    ]
    assert len(requests(w.take_callee(), "CANCEL")) == 1
    w.advance(40)
    assert responses(w.take_caller(), 183) == []  # no more 183 retransmissions
