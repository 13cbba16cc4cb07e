"""In-dialog requests relayed between the legs: re-INVITE, UPDATE, INFO, OPTIONS and their
offer/answer (late offers included), requests that cross, the early dialog, and what is
refused. In memory, with a fake clock (:mod:`testkit.callsim`).
"""

from __future__ import annotations

import pytest

from sipguard.sip.message import Response
from testkit.callsim import (
    CALLER,
    SDP,
    SDP_CALLEE,
    Wire,
    callee_request,
    establish,
    in_dialog,
    invite,
    requests,
    response_to,
    responses,
    start_call,
    statuses,
)

# -- re-INVITE -----------------------------------------------------------------------------


def test_reinvite_from_the_caller_is_relayed_and_its_200_relayed_back() -> None:
    w = Wire()
    e = establish(w, 1)
    new_sdp = SDP.replace(b"6000", b"6002")
    w.from_caller(in_dialog("INVITE", e.a_ok, 2, 1, "z9hG4bK-re", new_sdp))
    (re,) = requests(w.take_callee(), "INVITE")
    assert re.call_id == e.b_invite.call_id
    assert re.from_.tag == e.b_invite.from_.tag and re.to.tag == e.callee_tag
    assert re.cseq.number == e.b_invite.cseq.number + 1
    assert re.uri == "sip:127.0.0.2:5080;transport=UDP"  # the callee's Contact
    assert re.body == new_sdp
    new_answer = SDP_CALLEE.replace(b"7000", b"7002")
    w.from_callee(response_to(re, 200, "OK", None, new_answer))
    (ack,) = requests(w.take_callee(), "ACK")
    assert ack.cseq.number == re.cseq.number
    (ok,) = responses(w.take_caller(), 200)
    assert ok.cseq.number == 2 and ok.body == new_answer
    assert ok.to.tag == e.a_ok.to.tag
    w.from_caller(in_dialog("ACK", ok, 2, 1, "z9hG4bK-re-ack"))
    assert w.take_callee() == []  # ACKed already on the B-leg
    w.advance(10)
    assert w.take_caller() == []  # the caller's ACK stopped our 200's retransmissions
    assert w.core.calls == 1


def test_reinvite_from_the_callee_towards_the_caller() -> None:
    w = Wire()
    e = establish(w, 1)
    w.from_callee(callee_request("INVITE", e.b_invite, e.callee_tag, 1, 1, SDP_CALLEE))
    (re,) = requests(w.take_caller(), "INVITE")
    assert re.uri == "sip:sipp@127.0.0.3:5062"
    assert re.call_id == "1-sim@127.0.0.3"
    assert re.from_.tag == e.a_ok.to.tag and re.to.tag == "1SIPpTag001"
    assert re.body == SDP_CALLEE
    w.from_caller(response_to(re, 200, "OK", None, SDP, contact=CALLER))
    (ack,) = requests(w.take_caller(), "ACK")
    assert ack.cseq.number == re.cseq.number
    (ok,) = responses(w.take_callee(), 200)
    assert ok.body == SDP and ok.cseq.number == 1
    w.from_callee(callee_request("ACK", e.b_invite, e.callee_tag, 1, 1))
    assert w.take_caller() == []
    w.advance(10)
    assert w.take_callee() == []  # the callee's ACK stopped our 200's retransmissions


def test_a_rejected_reinvite_is_relayed_and_the_call_goes_on() -> None:
    w = Wire()
    e = establish(w, 1)
    w.from_caller(in_dialog("INVITE", e.a_ok, 2, 1, "z9hG4bK-re1", SDP))
    (re,) = requests(w.take_callee(), "INVITE")
    w.from_callee(response_to(re, 488, "Not Acceptable Here", None))
    assert len(requests(w.take_callee(), "ACK")) == 1  # the non-2xx ACK, hop by hop
    (r488,) = responses(w.take_caller(), 488)
    w.from_caller(in_dialog("ACK", r488, 2, 1, "z9hG4bK-re1"))
    assert w.take_callee() == []
    # no offer is pending any more: the next re-INVITE goes through
    w.from_caller(in_dialog("INVITE", e.a_ok, 3, 1, "z9hG4bK-re2", SDP))
    (re2,) = requests(w.take_callee(), "INVITE")
    assert re2.cseq.number == re.cseq.number + 1
    assert w.core.calls == 1


def test_a_reinvite_gets_100_trying_at_once() -> None:
    w = Wire()
    e = establish(w, 1)
    w.from_caller(in_dialog("INVITE", e.a_ok, 2, 1, "z9hG4bK-re", SDP))
    assert statuses(w.take_caller()) == [100]
    assert len(requests(w.take_callee(), "INVITE")) == 1
    w.from_callee(callee_request("INVITE", e.b_invite, e.callee_tag, 1, 1, SDP_CALLEE))
    assert statuses(w.take_callee()) == [491]  # ours is pending: glare, at once


def test_a_reinvite_2xx_moves_the_remote_target_of_each_leg() -> None:
    """§12.2.1.2/§12.2.2: a re-INVITE's Contact (caller) and its 2xx's (callee) are the
    legs' new remote targets: our ACK and later requests go there."""
    w = Wire()
    e = establish(w, 1)
    moved = b"Contact: <sip:moved@127.0.0.3:5062>"
    reinv = in_dialog("INVITE", e.a_ok, 2, 1, "z9hG4bK-re1", SDP)
    w.from_caller(reinv.replace(b"Contact: sip:sipp@127.0.0.3:5062", moved))
    (re,) = requests(w.take_callee(), "INVITE")
    w.from_callee(response_to(re, 200, "OK", None, SDP_CALLEE, contact=("127.0.0.2", 5090)))
    (ack,) = requests(w.take_callee(), "ACK")
    assert ack.uri == "sip:127.0.0.2:5090;transport=UDP"
    (ok,) = responses(w.take_caller(), 200)
    w.from_caller(in_dialog("ACK", ok, 2, 1, "z9hG4bK-re1-ack"))
    w.from_callee(callee_request("BYE", e.b_invite, e.callee_tag, 1, 1))
    (bye,) = requests(w.take_caller(), "BYE")
    assert bye.uri == "sip:moved@127.0.0.3:5062"


def test_an_in_dialog_request_carries_max_forwards_decremented() -> None:
    """Loop detection across the B2BUA (RFC 7332): in-dialog requests too."""
    w = Wire()
    est = establish(w, 1)
    w.from_caller(
        in_dialog("INFO", est.a_ok, 2, 1, "z9hG4bK-info-mf").replace(
            b"Max-Forwards: 70", b"Max-Forwards: 9"
        )
    )
    (b_info,) = requests(w.take_callee(), "INFO")
    assert b_info.max_forwards == 8
    w.from_caller(
        in_dialog("INFO", est.a_ok, 3, 1, "z9hG4bK-info-mf0").replace(
            b"Max-Forwards: 70", b"Max-Forwards: 0"
        )
    )
    assert [r.status for r in responses(w.take_caller()) if r.status >= 200][-1] == 483
    assert requests(w.take_callee(), "INFO") == []


# -- offer and answer: late offers ---------------------------------------------------------


def test_late_offer_reinvite_the_answer_comes_in_the_ack() -> None:
    w = Wire()
    e = establish(w, 1)
    w.from_caller(in_dialog("INVITE", e.a_ok, 2, 1, "z9hG4bK-re"))
    (re,) = requests(w.take_callee(), "INVITE")
    assert re.body == b""
    w.from_callee(response_to(re, 200, "OK", None, SDP_CALLEE))
    assert requests(w.take_callee(), "ACK") == []  # the answer is the caller's to give
    (ok,) = responses(w.take_caller(), 200)
    assert ok.body == SDP_CALLEE
    w.from_caller(in_dialog("ACK", ok, 2, 1, "z9hG4bK-re-ack", SDP))
    (ack,) = requests(w.take_callee(), "ACK")
    assert ack.body == SDP and ack.cseq.number == re.cseq.number
    assert ack.get("content-type") == "application/sdp"
    w.advance(10)
    assert w.take_caller() == []


def test_late_offer_initial_invite_the_answer_goes_into_the_b_leg_ack() -> None:
    w = Wire()
    b_inv = start_call(w, 1, invite(1, body=b""))
    assert b_inv.body == b""
    w.from_callee(response_to(b_inv, 200, "OK", "t", SDP_CALLEE))
    assert requests(w.take_callee(), "ACK") == []
    (ok,) = responses(w.take_caller(), 200)
    w.from_caller(in_dialog("ACK", ok, 1, 1, "z9hG4bK-ack", SDP))
    (ack,) = requests(w.take_callee(), "ACK")
    assert ack.body == SDP


def test_the_ack_of_a_late_offer_reinvite_carries_its_cseq_after_an_info() -> None:
    """§13.2.2.4: the ACK's CSeq is the re-INVITE's, even when an INFO went out on that
    leg between the 2xx and the caller's ACK."""
    w = Wire()
    e = establish(w, 1)
    w.from_caller(in_dialog("INVITE", e.a_ok, 2, 1, "z9hG4bK-lo"))  # no offer
    (re,) = requests(w.take_callee(), "INVITE")
    w.from_callee(response_to(re, 200, "OK", None, SDP_CALLEE))
    (ok,) = responses(w.take_caller(), 200)
    w.from_caller(in_dialog("INFO", e.a_ok, 3, 1, "z9hG4bK-info"))
    (info,) = requests(w.take_callee(), "INFO")
    assert info.cseq.number == re.cseq.number + 1
    w.from_caller(in_dialog("ACK", ok, 2, 1, "z9hG4bK-lo-ack", SDP))
    (ack,) = requests(w.take_callee(), "ACK")
    assert ack.cseq.number == re.cseq.number
    assert ack.body


def test_a_late_offer_2xx_is_acked_with_rejected_streams_when_the_call_ends_first() -> None:
    """§13.2.2.4: the callee's 2xx is ACKed even when the caller hangs up before its ACK
    (which would have carried the answer): every offered stream rejected (RFC 3264 §6)."""
    w = Wire()
    w.from_caller(invite(1, body=b""))  # late offer
    (b_inv,) = requests(w.take_callee(), "INVITE")
    w.from_callee(response_to(b_inv, 200, "OK", "t1", SDP_CALLEE))
    (ok,) = responses(w.take_caller(), 200)
    assert requests(w.take_callee(), "ACK") == []  # waiting for the caller's answer
    w.from_caller(in_dialog("BYE", ok, 2, 1, "z9hG4bK-bye-lo"))
    msgs = w.take_callee()
    ack, bye = requests(msgs, "ACK"), requests(msgs, "BYE")
    assert len(ack) == 1 and len(bye) == 1
    assert msgs.index(ack[0]) < msgs.index(bye[0])
    assert b"m=audio 0 " in ack[0].body


# -- crossing requests ---------------------------------------------------------------------


def test_glare_a_reinvite_while_ours_is_pending_gets_491() -> None:
    w = Wire()
    e = establish(w, 1)
    w.from_caller(in_dialog("INVITE", e.a_ok, 2, 1, "z9hG4bK-re", SDP))
    (re,) = requests(w.take_callee(), "INVITE")
    w.from_callee(callee_request("INVITE", e.b_invite, e.callee_tag, 1, 1, SDP_CALLEE))
    (r491,) = responses(w.take_callee(), 491)
    assert r491.cseq.method == "INVITE"
    assert requests(w.take_caller(), "INVITE") == []
    # the first offer completes as usual
    w.from_callee(response_to(re, 200, "OK", None, SDP_CALLEE))
    assert len(responses(w.take_caller(), 200)) == 1


def test_a_reinvite_from_the_callee_before_the_callers_ack_waits_for_that_ack() -> None:
    """§14.1: no INVITE on the A-leg while the first INVITE there awaits its ACK."""
    w = Wire()
    b_inv = start_call(w, 1)
    w.from_callee(response_to(b_inv, 200, "OK", "t", SDP_CALLEE))
    (ok,) = responses(w.take_caller(), 200)
    w.take_callee()
    w.from_callee(callee_request("INVITE", b_inv, "t", 1, 1, SDP_CALLEE))
    assert statuses(w.take_callee()) == [100]
    assert requests(w.take_caller(), "INVITE") == []
    w.from_caller(in_dialog("ACK", ok, 1, 1, "z9hG4bK-ack"))
    (re,) = requests(w.take_caller(), "INVITE")
    w.from_caller(response_to(re, 200, "OK", None, SDP, contact=CALLER))
    assert len(requests(w.take_caller(), "ACK")) == 1
    assert statuses(w.take_callee()) == [200]


def test_a_held_reinvite_gets_487_when_the_call_ends_first() -> None:
    """RFC 3261 §15.1.2: a re-INVITE held for the caller's ACK is pending in the dialog
    that the BYE ends, so it is answered 487 like one already relayed."""
    w = Wire()
    b_inv = start_call(w, 1)
    w.from_callee(response_to(b_inv, 200, "OK", "t", SDP_CALLEE))
    (ok,) = responses(w.take_caller(), 200)
    w.take_callee()
    w.from_callee(callee_request("INVITE", b_inv, "t", 1, 1, SDP_CALLEE))
    w.take_callee()
    w.from_caller(in_dialog("BYE", ok, 2, 1, "z9hG4bK-bye"))
    to_callee = w.take_callee()
    assert [r.status for r in responses(to_callee)] == [487]
    assert len(requests(to_callee, "BYE")) == 1
    assert requests(w.take_caller(), "INVITE") == []  # never relayed


def test_a_bye_crossing_a_relayed_reinvite_answers_it_487_and_drops_the_late_200() -> None:
    """RFC 3261 §15.1.2: requests pending in a dialog that a BYE ends get 487; the other
    leg's late 200 is ACKed (so that it stops) and never relayed."""
    w = Wire()
    est = establish(w, 1)
    w.from_caller(in_dialog("INVITE", est.a_ok, 2, 1, "z9hG4bK-reinv", SDP))
    (re_inv,) = requests(w.take_callee(), "INVITE")
    w.take_caller()  # 100 Trying
    w.from_caller(in_dialog("BYE", est.a_ok, 3, 1, "z9hG4bK-bye-x"))
    to_caller = responses(w.take_caller())
    assert sorted(r.status for r in to_caller) == [200, 487]
    (bye,) = requests(w.take_callee(), "BYE")
    w.from_callee(response_to(bye, 200, "OK", None))
    w.from_callee(response_to(re_inv, 200, "OK", None, SDP_CALLEE))
    assert requests(w.take_callee(), "ACK")  # the late 200 is ACKed
    assert responses(w.take_caller()) == []  # and not relayed


# -- the early dialog ----------------------------------------------------------------------


def test_update_in_the_early_dialog_is_relayed() -> None:
    w = Wire()
    b_inv = start_call(w, 1)
    w.from_callee(response_to(b_inv, 183, "Session Progress", "t", SDP_CALLEE))
    (p183,) = responses(w.take_caller(), 183)
    assert p183.to.tag
    w.from_caller(in_dialog("UPDATE", p183, 2, 1, "z9hG4bK-upd", SDP))
    (upd,) = requests(w.take_callee(), "UPDATE")
    assert upd.to.tag == "t" and upd.call_id == b_inv.call_id
    assert upd.body == SDP
    w.from_callee(response_to(upd, 200, "OK", None, SDP_CALLEE))
    (ok,) = responses(w.take_caller(), 200)
    assert ok.cseq.method == "UPDATE" and ok.body == SDP_CALLEE


def test_update_from_the_callee_in_the_early_dialog_reaches_the_caller() -> None:
    w = Wire()
    b_inv = start_call(w, 1)
    w.from_callee(response_to(b_inv, 183, "Session Progress", "t", SDP_CALLEE))
    (p183,) = responses(w.take_caller(), 183)
    w.from_callee(callee_request("UPDATE", b_inv, "t", 1, 1, SDP_CALLEE))
    (upd,) = requests(w.take_caller(), "UPDATE")
    assert upd.call_id == "1-sim@127.0.0.3"
    assert upd.from_.tag == p183.to.tag and upd.to.tag == "1SIPpTag001"
    assert upd.body == SDP_CALLEE
    w.from_caller(response_to(upd, 200, "OK", None, SDP, contact=CALLER))
    (ok,) = responses(w.take_callee(), 200)
    assert ok.cseq.method == "UPDATE" and ok.body == SDP


def test_an_invite_in_the_early_dialog_gets_500_or_491() -> None:
    """§14.2: the caller's second INVITE before our final response gets 500 with
    Retry-After; the callee's INVITE while ours is in progress gets 491; neither crosses."""
    w = Wire()
    w.from_caller(invite(1))
    (b_inv,) = requests(w.take_callee(), "INVITE")
    w.from_callee(response_to(b_inv, 180, "Ringing", "t1"))
    (ringing,) = responses(w.take_caller(), 180)
    w.from_caller(in_dialog("INVITE", ringing, 2, 1, "z9hG4bK-early-re", SDP))
    (r500,) = responses(w.take_caller(), 500)
    assert r500.get("retry-after") is not None
    w.from_callee(callee_request("INVITE", b_inv, "t1", 1, 1, SDP_CALLEE))
    assert [r.status for r in responses(w.take_callee())] == [491]
    assert requests(w.take_caller()) == []
    assert w.core.calls == 1


# -- other methods, unknown dialogs --------------------------------------------------------


@pytest.mark.parametrize("method", ["INFO", "OPTIONS"])
def test_info_and_in_dialog_options_are_relayed(method: str) -> None:
    w = Wire()
    e = establish(w, 1)
    body = b"Signal=5\r\nDuration=160\r\n"
    data = in_dialog(method, e.a_ok, 2, 1, "z9hG4bK-x").replace(
        b"Content-Length: 0\r\n\r\n",
        b"Content-Type: application/dtmf-relay\r\nContent-Length: %d\r\n\r\n" % len(body),
    )
    data += body
    w.from_caller(data)
    (req,) = requests(w.take_callee(), method)
    assert req.to.tag == e.callee_tag
    assert req.body == body
    w.from_callee(response_to(req, 200, "OK", None))
    (ok,) = responses(w.take_caller(), 200)
    assert ok.cseq.method == method
    # and from the callee towards the caller
    w.from_callee(callee_request(method, e.b_invite, e.callee_tag, 1, 1))
    (req,) = requests(w.take_caller(), method)
    w.from_caller(response_to(req, 200, "OK", None, contact=CALLER))
    assert len(responses(w.take_callee(), 200)) == 1


def test_refer_within_a_dialog_is_refused_not_relayed() -> None:
    w = Wire()
    e = establish(w, 1)
    refer = in_dialog(
        "REFER",
        e.a_ok,
        2,
        1,
        "z9hG4bK-refer",
        extra=("Refer-To: <sip:0900123456@198.51.100.7>\r\n"),
    )
    w.from_caller(refer)
    (r,) = w.take_caller()
    assert isinstance(r, Response) and r.status == 403
    assert w.take_callee() == []


def test_a_request_in_an_unknown_dialog_gets_481() -> None:
    w = Wire()
    e = establish(w, 1)
    w.from_caller(in_dialog("BYE", e.a_ok, 2, 1, "z9hG4bK-bye"))
    w.take_caller()
    w.take_callee()
    w.from_caller(in_dialog("INFO", e.a_ok, 3, 1, "z9hG4bK-late"))
    assert statuses(w.take_caller()) == [481]
