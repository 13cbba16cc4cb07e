"""Setting a call up through the sans-IO B2BUA: the INVITE and its B-leg, the 2xx and its
ACK, CANCEL, forking — what a SIP engineer checks on each leg's wire. In memory, with a
fake clock (:mod:`testkit.callsim`).
"""

from __future__ import annotations

import pytest

from sipguard.b2bua.outgoing import MAX_FORK_TAGS, MAX_FORKS
from sipguard.metrics import Metrics
from sipguard.sip.message import Request, Response
from testkit.callsim import (
    CALLER,
    SDP,
    SDP_CALLEE,
    T1,
    Recorder,
    Wire,
    callee_request,
    cancel_of,
    establish,
    in_dialog,
    invite,
    requests,
    response_to,
    responses,
    start_call,
    statuses,
)
from testkit.metrics import sample


def head(msg: Request | Response) -> str:
    """The start line and header section of a message (its body left out)."""
    return msg.to_bytes().split(b"\r\n\r\n", 1)[0].decode()


# -- a basic call --------------------------------------------------------------------------


def test_100_trying_goes_to_the_caller_at_once() -> None:
    w = Wire()
    w.from_caller(invite(1))
    (trying,) = w.take_caller()
    assert isinstance(trying, Response) and trying.status == 100
    assert trying.call_id == "1-sim@127.0.0.3"


def test_b_leg_is_a_dialog_of_its_own_and_hides_the_a_leg_topology() -> None:
    w = Wire()
    extra = (
        "Via: SIP/2.0/UDP 10.9.8.7:5060;branch=z9hG4bK-inner-hop\r\n"
        "Record-Route: <sip:rr1.customer.example;lr>\r\n"
        "Route: <sip:edge.customer.example;lr>\r\n"
    )
    a_inv = invite(1, headers=extra, cseq=314159, contact="<sip:alice@10.11.12.13:5999>")
    b_inv = start_call(w, 1, a_inv)
    assert b_inv.call_id != "1-sim@127.0.0.3"
    assert b_inv.from_.tag and b_inv.from_.tag != "1SIPpTag001"
    assert b_inv.to.tag is None
    assert b_inv.cseq.number != 314159 and b_inv.cseq.method == "INVITE"
    (via,) = b_inv.vias
    assert (via.host, via.port) == ("127.0.0.1", 5060)
    assert via.branch and via.branch.startswith("z9hG4bK")
    (contact,) = b_inv.contacts
    assert contact.uri.host_port() == ("127.0.0.1", 5060)
    assert not b_inv.has("record-route") and not b_inv.has("route")
    assert b_inv.max_forwards == 69
    assert b_inv.body == SDP  # media is passed (not anchored): the SDP goes on as it is
    # and then the whole call, every message the callee receives searched
    tag = "callee1"
    w.from_callee(response_to(b_inv, 180, "Ringing", tag))
    w.from_callee(response_to(b_inv, 200, "OK", tag, SDP_CALLEE))
    (ok,) = responses(w.take_caller(), 200)
    assert ok.cseq.number == 314159
    w.from_caller(in_dialog("ACK", ok, 314159, 1, "z9hG4bK-1-ack"))
    w.from_caller(in_dialog("BYE", ok, 314160, 1, "z9hG4bK-1-bye"))
    rest = w.take_callee()
    ack, bye = requests(rest)
    assert (ack.method, bye.method) == ("ACK", "BYE")
    assert bye.cseq.number == b_inv.cseq.number + 1
    assert bye.call_id == b_inv.call_id and bye.from_.tag == b_inv.from_.tag
    for msg in [b_inv, *rest]:
        text = head(msg)
        for secret in (
            "127.0.0.3",
            "10.9.8.7",
            "10.11.12.13",
            "alice@",
            "rr1.customer.example",
            "edge.customer.example",
            "1-sim",
            "1SIPpTag001",
            "314159",
            "inner-hop",
        ):
            assert secret not in text, (secret, text)


def test_max_forwards_is_carried_over_decremented() -> None:
    w = Wire()
    b_inv = start_call(w, 1, invite(1, max_forwards=5))
    assert b_inv.max_forwards == 4
    b_inv = start_call(w, 2, invite(2, max_forwards=1))
    assert b_inv.max_forwards == 0


def test_the_callers_record_route_comes_back_in_the_responses_and_routes_our_bye() -> None:
    """§12.1.1: the UAS copies Record-Route into a dialog-making response; its route set
    is that list, in order (and nothing of it reaches the callee: see the topology test)."""
    w = Wire()
    rr = (
        "Record-Route: <sip:rr1.customer.example;lr>\r\n"
        "Record-Route: <sip:rr2.customer.example;lr>\r\n"
    )
    b_inv = start_call(w, 1, invite(1, headers=rr))
    w.from_callee(response_to(b_inv, 180, "Ringing", "t"))
    w.from_callee(response_to(b_inv, 200, "OK", "t", SDP_CALLEE))
    to_caller = w.take_caller()
    want = ["<sip:rr1.customer.example;lr>", "<sip:rr2.customer.example;lr>"]
    for resp in responses(to_caller):
        if resp.status == 100:
            assert not resp.has("record-route")
        else:
            assert resp.get_lines("record-route") == want, resp.status
    (ok,) = responses(to_caller, 200)
    w.from_caller(in_dialog("ACK", ok, 1, 1, "z9hG4bK-ack"))
    w.from_callee(callee_request("BYE", b_inv, "t", 1, 1))
    (bye,) = requests(w.take_caller(), "BYE")
    assert bye.get_lines("route") == want


def test_a_caller_over_tcp_gets_no_retransmissions() -> None:
    w = Wire(caller_transport="tcp")
    b_inv = start_call(w, 1)
    w.from_callee(response_to(b_inv, 200, "OK", "t", SDP_CALLEE))
    (ok,) = responses(w.take_caller(), 200)
    assert ok.contacts[0].uri.param("transport") == "tcp"
    w.advance(20)
    assert w.take_caller() == []  # a reliable transport: the 200 is not repeated
    w.from_caller(in_dialog("ACK", ok, 1, 1, "z9hG4bK-ack"))
    w.from_caller(in_dialog("BYE", ok, 2, 1, "z9hG4bK-bye"))
    (bye,) = requests(w.take_callee(), "BYE")
    w.from_callee(response_to(bye, 200, "OK", None))
    assert [r.status for r in responses(w.take_caller())] == [200]
    assert w.core.cdr_out[-1].end_reason == "caller_bye"


def test_a_200_with_a_malformed_option_tag_list_leaves_no_call_hanging() -> None:
    """A peer's response is parsed whole before any state moves: a 200 with an empty
    entry in ``Supported`` is dropped (never half processed), and Timer C ends the call."""
    w = Wire()
    w.from_caller(invite(1))
    (b_inv,) = requests(w.take_callee(), "INVITE")
    w.from_callee(response_to(b_inv, 180, "Ringing", "t1"))
    w.take_caller()
    bad = response_to(b_inv, 200, "OK", "t1", SDP_CALLEE, extra="Supported: timer,,100rel\r\n")
    w.from_callee(bad)
    assert responses(w.take_caller(), 200) == []
    w.advance(4000)
    assert w.core.calls == 0
    assert not w.core.dialogs
    assert len(w.core.cdr_out) == 1


def test_a_request_that_fails_late_is_answered_through_its_transaction() -> None:
    """A malformed option-tag list is answered 400 and leaves no server transaction."""
    w = Wire()
    w.from_caller(invite(1, headers="Supported: a,,b\r\n"))
    assert [m.status for m in responses(w.take_caller())] == [400]
    w.advance(100)
    assert not w.core.layer.server
    assert w.core.calls == 0


# -- the 2xx and its ACK: a lost 200, a lost ACK -------------------------------------------


def test_a_lost_200_is_retransmitted_t1_2t1_until_the_ack() -> None:
    w = Wire()
    rec = Recorder(w, "SIP/2.0 200", CALLER, lose=1)
    w.drop = rec
    b_inv = start_call(w, 1)
    w.from_callee(response_to(b_inv, 200, "OK", "t", SDP_CALLEE))
    t0 = w.now
    assert responses(w.take_caller(), 200) == []  # lost
    w.advance(7.6)
    assert [round(t - t0, 3) for t in rec.times] == [0, 0.5, 1.5, 3.5, 7.5]
    oks = responses(w.take_caller(), 200)
    assert len(oks) == 4
    w.from_caller(in_dialog("ACK", oks[0], 1, 1, "z9hG4bK-ack"))
    w.advance(20)
    assert len(rec.times) == 5  # the ACK stopped them
    assert responses(w.take_caller()) == []
    # the callee's own 200 was ACKed once, and the call goes on
    assert len(requests(w.take_callee(), "ACK")) == 1
    assert w.core.calls == 1


def test_retransmissions_of_the_2xx_cap_at_t2() -> None:
    w = Wire()
    rec = Recorder(w, "SIP/2.0 200", CALLER)
    w.drop = rec
    b_inv = start_call(w, 1)
    w.from_callee(response_to(b_inv, 200, "OK", "t", SDP_CALLEE))
    t0 = w.now
    w.advance(20)
    gaps = [round(b - a, 3) for a, b in zip(rec.times, rec.times[1:], strict=False)]
    assert gaps[:6] == [0.5, 1.0, 2.0, 4.0, 4.0, 4.0]
    assert rec.times[0] == t0


def test_an_invite_retransmitted_after_the_2xx_is_absorbed() -> None:
    w = Wire()
    b_inv = start_call(w, 1)
    w.from_callee(response_to(b_inv, 200, "OK", "t", SDP_CALLEE))
    w.take_caller()
    w.take_callee()
    w.from_caller(invite(1))  # the same INVITE again (same branch)
    w.advance(0.1)
    assert requests(w.take_callee(), "INVITE") == []
    assert w.core.calls == 1
    # even one that took long (its 200 was lost for a while)
    w.advance(5)
    w.from_caller(invite(1))
    assert requests(w.take_callee(), "INVITE") == []
    assert w.core.calls == 1


def test_no_ack_for_the_200_ends_the_call_after_64_t1_with_bye_on_both_legs() -> None:
    w = Wire()
    b_inv = start_call(w, 1)
    w.from_callee(response_to(b_inv, 200, "OK", "t", SDP_CALLEE))
    w.take_caller()
    w.take_callee()
    w.advance(64 * T1 - 0.01)
    assert requests(w.take_callee(), "BYE") == []
    assert w.core.calls == 1
    w.advance(0.02)
    (bye_b,) = requests(w.take_callee(), "BYE")
    assert bye_b.to.tag == "t"
    bye_a = requests(w.take_caller(), "BYE")
    assert len(bye_a) == 1
    end = w.core.cdr_out[-1]
    assert end.kind == "end" and end.end_reason == "timeout"
    assert w.core.calls == 0


def test_our_lost_ack_is_repeated_for_a_retransmitted_200_even_after_timer_m() -> None:
    w = Wire()
    e = establish(w, 1)
    again = response_to(e.b_invite, 200, "OK", e.callee_tag, SDP_CALLEE)
    w.from_callee(again)
    (ack1,) = requests(w.take_callee(), "ACK")
    w.advance(64 * T1 + 1)  # the INVITE client transaction is gone (Timer M)
    assert w.core.layer.client == {}
    w.from_callee(again)
    (ack2,) = requests(w.take_callee(), "ACK")
    assert ack2.to_bytes() == ack1.to_bytes()
    assert w.take_caller() == []  # not relayed: the caller has its 200


def test_a_malformed_ack_is_never_answered() -> None:
    metrics = Metrics()
    w = Wire(metrics=metrics)
    e = establish(w, 1)
    bad = callee_request("ACK", e.b_invite, e.callee_tag, 2, 1).replace(
        b"CSeq: 2 ACK", b"CSeq: 2 INVITE"
    )
    w.from_callee(bad.replace(b"ACK sip:", b"ACK sip:sip:", 1))
    w.from_callee(bad)
    assert w.take_callee() == [] and w.take_caller() == []
    assert sample(metrics, "sipguard_parse_errors_total") == 2


# -- CANCEL --------------------------------------------------------------------------------


def test_cancel_before_answer() -> None:
    w = Wire()
    b_inv = start_call(w, 1)
    w.from_callee(response_to(b_inv, 180, "Ringing", "t"))
    w.take_caller()
    w.from_caller(cancel_of(1))
    to_caller = w.take_caller()
    assert statuses(to_caller) == [200, 487]
    assert to_caller[0].cseq.method == "CANCEL"
    assert to_caller[1].cseq.method == "INVITE"
    (b_cancel,) = requests(w.take_callee(), "CANCEL")
    # §9.1: the CANCEL repeats the INVITE's Request-URI, Call-ID, From, To, CSeq number
    # and top Via
    assert b_cancel.uri == b_inv.uri and b_cancel.call_id == b_inv.call_id
    assert b_cancel.get("from") == b_inv.get("from") and b_cancel.get("to") == b_inv.get("to")
    assert b_cancel.cseq.number == b_inv.cseq.number
    assert b_cancel.top_via.branch == b_inv.top_via.branch
    w.from_callee(response_to(b_cancel, 200, "OK", "t"))
    w.from_callee(response_to(b_inv, 487, "Request Terminated", "t"))
    (ack,) = requests(w.take_callee(), "ACK")
    assert ack.top_via.branch == b_inv.top_via.branch  # non-2xx ACK: same transaction
    (end,) = w.core.cdr_out
    assert (end.kind, end.end_reason, end.status, end.answer) == ("end", "cancel", 487, None)
    # the caller's ACK for the 487 is absorbed
    w.from_caller(in_dialog("ACK", to_caller[1], 1, 1, "z9hG4bK-1-1-0"))
    assert w.take_callee() == []
    assert w.core.calls == 0


def test_cancel_goes_to_the_b_leg_only_after_a_provisional_came_from_it() -> None:
    w = Wire()
    b_inv = start_call(w, 1)
    w.take_caller()
    w.from_caller(cancel_of(1))
    assert statuses(w.take_caller()) == [200, 487]
    assert requests(w.take_callee(), "CANCEL") == []  # §9.1: not before a provisional
    w.from_callee(response_to(b_inv, 100, "Trying", None))
    (b_cancel,) = requests(w.take_callee(), "CANCEL")
    assert b_cancel.top_via.branch == b_inv.top_via.branch
    w.from_callee(response_to(b_cancel, 200, "OK", None))
    w.from_callee(response_to(b_inv, 487, "Request Terminated", "t"))
    assert len(requests(w.take_callee(), "ACK")) == 1
    assert w.core.cdr_out[-1].end_reason == "cancel"


def test_cancel_crossing_a_200_acks_and_byes_the_200_and_the_caller_gets_487() -> None:
    w = Wire()
    b_inv = start_call(w, 1)
    w.from_callee(response_to(b_inv, 180, "Ringing", "t"))
    w.take_caller()
    w.from_caller(cancel_of(1))
    (b_cancel,) = requests(w.take_callee(), "CANCEL")
    # the callee answered before our CANCEL reached it
    w.from_callee(response_to(b_inv, 200, "OK", "t", SDP_CALLEE))
    w.from_callee(response_to(b_cancel, 200, "OK", "t"))
    to_callee = w.take_callee()
    (ack,) = requests(to_callee, "ACK")
    (bye,) = requests(to_callee, "BYE")
    assert ack.to.tag == "t" and bye.to.tag == "t"
    assert ack.call_id == b_inv.call_id and ack.cseq.number == b_inv.cseq.number
    assert bye.cseq.number > b_inv.cseq.number
    assert ack.top_via.branch != b_inv.top_via.branch  # a 2xx ACK is its own transaction
    w.from_callee(response_to(bye, 200, "OK", None))
    to_caller = w.take_caller()
    assert statuses(to_caller) == [200, 487]  # the CANCEL's 200, then 487: never the 200
    assert to_caller[0].cseq.method == "CANCEL"
    end = w.core.cdr_out[-1]
    assert (end.end_reason, end.status, end.answer) == ("cancel", 487, None)
    assert [r.kind for r in w.core.cdr_out] == ["end"]
    # the 200 again (our ACK lost): ACKed again, no second BYE
    w.from_callee(response_to(b_inv, 200, "OK", "t", SDP_CALLEE))
    assert statuses(w.take_callee()) == ["ACK"]


@pytest.mark.parametrize("answered", [False, True])
def test_the_200_to_a_cancel_carries_the_dialogs_to_tag(answered: bool) -> None:
    """§9.2: the To tag of the CANCEL's response and of the INVITE's SHOULD be the same
    (SIPp, for one, takes the last tag it saw for its BYE)."""
    w = Wire()
    b_inv = start_call(w, 1)
    w.from_callee(response_to(b_inv, 180, "Ringing", "t"))
    if answered:
        w.from_callee(response_to(b_inv, 200, "OK", "t", SDP_CALLEE))
    tags = {r.to.tag for r in responses(w.take_caller()) if r.status > 100}
    w.from_caller(cancel_of(1))
    to_caller = responses(w.take_caller())
    assert {r.to.tag for r in to_caller} == tags
    assert len(tags) == 1


def test_a_bye_from_the_caller_before_the_answer_cancels_the_b_leg() -> None:
    w = Wire()
    b_inv = start_call(w, 1)
    w.from_callee(response_to(b_inv, 180, "Ringing", "t"))
    (ring,) = responses(w.take_caller(), 180)
    w.from_caller(in_dialog("BYE", ring, 2, 1, "z9hG4bK-early-bye"))
    to_caller = w.take_caller()
    assert sorted((r.cseq.method, r.status) for r in responses(to_caller)) == [
        ("BYE", 200),
        ("INVITE", 487),
    ]
    assert len(requests(w.take_callee(), "CANCEL")) == 1
    assert w.core.calls == 0


# -- forking -------------------------------------------------------------------------------


def test_forking_first_200_wins_the_other_is_acked_and_byed() -> None:
    w = Wire()
    b_inv = start_call(w, 1)
    w.from_callee(response_to(b_inv, 180, "Ringing", "fork1"))
    w.from_callee(response_to(b_inv, 180, "Ringing", "fork2"))
    rings = responses(w.take_caller(), 180)
    assert len(rings) == 2
    assert rings[0].to.tag == rings[1].to.tag  # one dialog towards the caller
    w.from_callee(response_to(b_inv, 200, "OK", "fork1", SDP_CALLEE))
    (ok,) = responses(w.take_caller(), 200)
    (ack1,) = requests(w.take_callee(), "ACK")
    assert ack1.to.tag == "fork1"
    w.from_callee(response_to(b_inv, 200, "OK", "fork2", SDP_CALLEE))
    to_callee = w.take_callee()
    (ack2,) = requests(to_callee, "ACK")
    (bye2,) = requests(to_callee, "BYE")
    assert ack2.to.tag == "fork2" and bye2.to.tag == "fork2"
    assert responses(w.take_caller()) == []  # the caller sees one answer
    w.from_callee(response_to(bye2, 200, "OK", None))
    # the winning dialog goes on
    w.from_caller(in_dialog("ACK", ok, 1, 1, "z9hG4bK-ack"))
    w.from_caller(in_dialog("BYE", ok, 2, 1, "z9hG4bK-bye"))
    (bye1,) = requests(w.take_callee(), "BYE")
    assert bye1.to.tag == "fork1"


def test_a_fork_that_answers_after_timer_m_is_acked_and_byed() -> None:
    w = Wire()
    e = establish(w, 1)
    w.advance(64 * T1 + 1)  # our INVITE client transaction is gone
    w.from_callee(response_to(e.b_invite, 200, "OK", "fork2", SDP_CALLEE))
    to_callee = w.take_callee()
    (ack,) = requests(to_callee, "ACK")
    (bye,) = requests(to_callee, "BYE")
    assert ack.to.tag == "fork2" and bye.to.tag == "fork2"
    assert w.take_caller() == [] and w.core.calls == 1


def test_a_call_keeps_the_acks_of_a_few_forks_and_still_acks_and_byes_the_rest() -> None:
    """Each other fork's 2xx from the next hop is ACKed and BYEd once (§13.2.2.4); the
    ACKs of MAX_FORKS of them are kept, to repeat one for its retransmitted 2xx (with no
    second BYE), and the To tags of MAX_FORK_TAGS: a known fork's 2xx again gets no second
    BYE. Past that a new fork's 2xx is ignored and counted (``fork_limit``): a call's
    state is bounded whatever its peer sends."""
    w = Wire(metrics=Metrics())
    e = establish(w, 1)
    w.advance(64 * T1 + 1)  # our INVITE client transaction is gone (Timer M)
    tags = [f"fork{i}" for i in range(MAX_FORKS + 4)]
    for tag in tags:
        w.from_callee(response_to(e.b_invite, 200, "OK", tag, SDP_CALLEE))
        to_callee = w.take_callee()
        assert [(m.method, m.to.tag) for m in requests(to_callee)] == [("ACK", tag), ("BYE", tag)]
    (call,) = w.core.table.calls()
    assert call.out.forks is not None
    assert list(call.out.forks) == tags[:MAX_FORKS]
    w.from_callee(response_to(e.b_invite, 200, "OK", tags[0], SDP_CALLEE))  # again
    assert [m.method for m in requests(w.take_callee())] == ["ACK"]
    w.from_callee(response_to(e.b_invite, 200, "OK", tags[-1], SDP_CALLEE))  # ACK not kept
    assert requests(w.take_callee()) == []  # and never a second BYE
    assert len(call.out.forks) == MAX_FORKS
    for i in range(len(tags), MAX_FORK_TAGS):
        w.from_callee(response_to(e.b_invite, 200, "OK", f"fork{i}", SDP_CALLEE))
    assert len(requests(w.take_callee(), "BYE")) == MAX_FORK_TAGS - len(tags)
    for _ in range(2):  # beyond the bound: ignored, counted, nothing kept
        w.from_callee(response_to(e.b_invite, 200, "OK", "one-too-many", SDP_CALLEE))
    assert requests(w.take_callee()) == []
    assert call.out.fork_tags is not None and len(call.out.fork_tags) == MAX_FORK_TAGS
    assert call.out.forks_ignored == 2
    assert sample(w.metrics, "sipguard_rejected_total", reason="fork_limit") == 2
    assert w.take_caller() == [] and w.core.calls == 1


# -- what the peers' free text may carry ---------------------------------------------------


def test_a_reason_phrase_reaches_an_untrusted_caller_only_as_the_standard_one() -> None:
    """A reason phrase is free text (it can name a person or an address): towards the
    untrusted caller the standard phrase replaces it."""
    w = Wire()
    w.from_caller(invite(1))
    (b_inv,) = requests(w.take_callee(), "INVITE")
    w.from_callee(response_to(b_inv, 486, "Busy: Bob Smith at 192.0.2.55", "t1"))
    (final,) = [r for r in responses(w.take_caller()) if r.status >= 200]
    assert final.status == 486 and final.reason == "Busy Here"


# -- the server transport's stamp on the top Via (RFC 3261 §18.2.1, RFC 3581 §4) ----------


def test_a_caller_behind_nat_learns_its_address_and_port_from_the_top_via() -> None:
    """A PBX behind NAT writes its private address and asks for ``rport``: every response
    to it names where its request came from (``received``, ``rport`` filled in), and only
    the top Via changes."""
    w = Wire()
    nat = invite(1).replace(
        b"Via: SIP/2.0/UDP 127.0.0.3:5062;branch=z9hG4bK-1-1-0\r\n",
        b"Via: SIP/2.0/UDP 192.168.1.20:5062;rport;branch=z9hG4bK-1-1-0, "
        b"SIP/2.0/UDP 10.0.0.1;branch=z9hG4bK-inner\r\n",
    )
    assert nat != invite(1)
    b_inv = start_call(w, 1, nat)
    w.from_callee(response_to(b_inv, 180, "Ringing", "c1"))
    to_caller = responses(w.take_caller())
    assert [m.status for m in to_caller] == [100, 180]
    for resp in to_caller:
        assert resp.get_all("via") == [
            f"SIP/2.0/UDP 192.168.1.20:5062;rport={CALLER[1]};branch=z9hG4bK-1-1-0"
            f";received={CALLER[0]}",
            "SIP/2.0/UDP 10.0.0.1;branch=z9hG4bK-inner",
        ]
    # nothing of it crosses: the callee sees sipguard's own Via only
    assert "192.168.1.20" not in b_inv.to_bytes().decode()


def test_a_sent_by_that_names_the_source_is_copied_as_written() -> None:
    w = Wire()
    w.from_caller(invite(1))
    (trying,) = w.take_caller()
    assert trying.get_lines("via") == [f"SIP/2.0/UDP {CALLER[0]}:{CALLER[1]};branch=z9hG4bK-1-1-0"]


def test_a_sent_by_host_that_is_not_the_source_gets_received_without_rport() -> None:
    w = Wire()
    w.from_caller(
        invite(1).replace(
            b"UDP 127.0.0.3:5062;", b"UDP pbx.customer.example:5062;received=1.2.3.4;"
        )
    )
    (trying,) = w.take_caller()
    assert trying.get_lines("via") == [
        f"SIP/2.0/UDP pbx.customer.example:5062;branch=z9hG4bK-1-1-0;received={CALLER[0]}"
    ]


def test_the_from_of_a_callee_s_response_is_never_read_unless_it_is_a_stray() -> None:
    """A response a transaction takes is matched by its branch: a From the callee mangled
    changes nothing. A stray 2xx (found by its dialog's From tag) with a From that cannot
    be read is dropped, a parse error, and the call goes on."""
    w = Wire(metrics=Metrics())
    b_inv = start_call(w, 1)

    def mangled(data: bytes) -> bytes:
        head, sep, rest = data.partition(b"\r\nFrom: ")
        return head + sep + b"<<" + rest[rest.index(b"\r\n") :]

    w.from_callee(mangled(response_to(b_inv, 180, "Ringing", "c1")))
    w.from_callee(mangled(response_to(b_inv, 200, "OK", "c1", SDP_CALLEE)))
    to_caller = responses(w.take_caller())
    assert [m.status for m in to_caller] == [100, 180, 200]
    assert len(requests(w.take_callee(), "ACK")) == 1
    w.from_caller(in_dialog("ACK", to_caller[-1], 1, 1, "z9hG4bK-ack"))
    w.advance(64 * T1 + 1)  # our INVITE client transaction is gone: a 2xx is a stray
    errors = sample(w.metrics, "sipguard_parse_errors_total")
    w.from_callee(mangled(response_to(b_inv, 200, "OK", "fork2", SDP_CALLEE)))
    assert w.take_callee() == [] and w.take_caller() == []
    assert sample(w.metrics, "sipguard_parse_errors_total") == errors + 1
    assert w.core.calls == 1
