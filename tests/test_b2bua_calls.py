"""Call flows through the sans-IO B2BUA: what a SIP engineer checks on each leg's wire.

The caller (127.0.0.3, trunk ``customers``), sipguard and the callee (127.0.0.2, trunk
``pbx``) are wired in memory by :mod:`testkit.callsim`, with a fake clock: a lost datagram
is one not delivered, and ``advance()`` fires the timers in order. T1 is 0.5 s, so
64*T1 is 32 s.
"""

from __future__ import annotations

import gc
import sys

import pytest

from sipguard.b2bua.call import Call
from sipguard.metrics import Metrics
from sipguard.sip.message import Request, Response
from sipguard.sip.transaction import Flow
from testkit.callsim import (
    CALLEE,
    CALLER,
    CONFIG,
    PEER2,
    SDP,
    SDP_CALLEE,
    Wire,
    basic_call,
    callee_request,
    config_text,
    default_config,
    establish,
    in_dialog,
    invite,
    requests,
    response_to,
    responses,
)

T1 = 0.5


def head(msg: Request | Response) -> str:
    """The start line and header section of a message (its body left out)."""
    return msg.to_bytes().split(b"\r\n\r\n", 1)[0].decode()


def statuses(msgs: list[Request | Response]) -> list[int | str]:
    return [m.status if isinstance(m, Response) else m.method for m in msgs]


class Recorder:
    """A drop hook that loses nothing, or the first ``lose`` matches, and notes when."""

    def __init__(self, wire: Wire, match: str, to: tuple[str, int], lose: int = 0) -> None:
        self.wire = wire
        self.match = match.encode()
        self.to = to
        self.lose = lose
        self.times: list[float] = []

    def __call__(self, flow: Flow, data: bytes) -> bool:
        if (flow.host, flow.port) != self.to or not data.startswith(self.match):
            return False
        self.times.append(self.wire.now)
        if self.lose > 0:
            self.lose -= 1
            return True
        return False


TWO_TARGETS = CONFIG.replace(
    """    sources: [127.0.0.2/32]
    trusted: true
    targets: ["sip:127.0.0.2:5080"]""",
    """    sources: [127.0.0.2/32, 127.0.0.4/32]
    trusted: true
    targets: ["sip:127.0.0.2:5080", "sip:127.0.0.4:5080"]""",
)
REDIRECTABLE = CONFIG.replace(
    "    sources: [127.0.0.2/32]\n", "    sources: [127.0.0.2/32, 127.0.0.4/32]\n"
)


def start_call(wire: Wire, n: int, data: bytes | None = None) -> Request:
    """The caller's INVITE sent; the B-leg INVITE the callee received."""
    wire.from_caller(data if data is not None else invite(n))
    (b_inv,) = requests(wire.take_callee(), "INVITE")
    return b_inv


# -- a basic call ----------------------------------------------------------------------


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


def test_cdr_start_at_answer_and_end_at_caller_bye_with_the_fake_clock_duration() -> None:
    w = Wire()
    w.from_caller(invite(1))
    (b_inv,) = requests(w.take_callee())
    w.advance(2.0)
    w.from_callee(response_to(b_inv, 180, "Ringing", "t"))
    assert w.core.cdr_out == []
    w.advance(3.0)
    w.from_callee(response_to(b_inv, 200, "OK", "t", SDP_CALLEE))
    (start,) = w.core.cdr_out
    assert start.kind == "start" and start.answer is not None and start.end is None
    (ok,) = responses(w.take_caller(), 200)
    w.from_caller(in_dialog("ACK", ok, 1, 1, "z9hG4bK-ack"))
    w.advance(61.25)
    w.from_caller(in_dialog("BYE", ok, 2, 1, "z9hG4bK-bye"))
    (bye,) = requests(w.take_callee(), "BYE")
    w.from_callee(response_to(bye, 200, "OK", None))
    (bye_ok,) = w.take_caller()
    assert isinstance(bye_ok, Response) and bye_ok.status == 200
    start, end = w.core.cdr_out
    assert end.kind == "end" and end.id == start.id
    assert end.end_reason == "caller_bye" and end.status == 200
    assert end.duration_ms == 61250
    assert (end.trunk_in, end.trunk_out) == ("customers", "pbx")
    assert (end.caller, end.callee) == ("+31201234567", "+31201234567")
    assert w.core.calls == 0


def test_callee_bye_ends_the_call_with_callee_bye_and_its_reason_carried_over() -> None:
    w = Wire()
    e = establish(w, 1)
    reason = 'Reason: Q.850;cause=16;text="Normal call clearing"\r\n'
    w.from_callee(callee_request("BYE", e.b_invite, e.callee_tag, 1, 1, extra=reason))
    (bye_ok,) = w.take_callee()
    assert isinstance(bye_ok, Response) and bye_ok.status == 200
    (bye,) = requests(w.take_caller(), "BYE")
    assert bye.to.tag == "1SIPpTag001" and bye.call_id == "1-sim@127.0.0.3"
    assert bye.uri == "sip:sipp@127.0.0.3:5062"  # the caller's Contact (§12.2.1.1)
    # the caller's trunk is untrusted: the cause goes on, the free text does not
    assert bye.get("reason") == "Q.850;cause=16"
    w.from_caller(response_to(bye, 200, "OK", None, contact=CALLER))
    assert w.core.cdr_out[-1].end_reason == "callee_bye"


# -- a lost 200, a lost ACK --------------------------------------------------------------


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


# -- a lost BYE --------------------------------------------------------------------------


def test_our_bye_to_the_callee_is_retransmitted_when_lost() -> None:
    w = Wire()
    e = establish(w, 1)
    rec = Recorder(w, "BYE ", CALLEE, lose=2)
    w.drop = rec
    w.from_caller(in_dialog("BYE", e.a_ok, 2, 1, "z9hG4bK-bye"))
    assert len(responses(w.take_caller(), 200)) == 1  # the caller's BYE: answered at once
    t0 = w.now
    w.advance(1.6)
    assert [round(t - t0, 3) for t in rec.times] == [0, 0.5, 1.5]
    (bye,) = requests(w.take_callee(), "BYE")
    w.from_callee(response_to(bye, 200, "OK", None))
    w.advance(30)
    assert len(rec.times) == 3


def test_our_bye_to_the_caller_is_retransmitted_when_lost() -> None:
    w = Wire()
    e = establish(w, 1)
    rec = Recorder(w, "BYE ", CALLER, lose=1)
    w.drop = rec
    w.from_callee(callee_request("BYE", e.b_invite, e.callee_tag, 1, 1))
    assert len(responses(w.take_callee(), 200)) == 1
    w.advance(0.6)
    (bye,) = requests(w.take_caller(), "BYE")
    assert len(rec.times) == 2
    w.from_caller(response_to(bye, 200, "OK", None, contact=CALLER))
    # the callee's BYE again (our 200 lost): the same 200, and no second BYE onwards
    w.from_callee(callee_request("BYE", e.b_invite, e.callee_tag, 1, 1))
    assert statuses(w.take_callee()) == [200]
    w.advance(40)
    assert requests(w.take_caller()) == []
    assert w.core.cdr_out[-1].end_reason == "callee_bye"


def test_a_bye_that_is_never_answered_does_not_keep_the_call() -> None:
    w = Wire()
    e = establish(w, 1)
    w.from_caller(in_dialog("BYE", e.a_ok, 2, 1, "z9hG4bK-bye"))
    assert w.core.calls == 0
    w.advance(64 * T1 + 6)  # Timer F, then K
    assert w.core.layer.client == {}
    assert w.core.dialogs == {}


# -- CANCEL ------------------------------------------------------------------------------


def cancel_of(n: int) -> bytes:
    """The caller's CANCEL of its INVITE ``n`` (§9.1: the same Request-URI, top Via,
    From, To, Call-ID and CSeq number)."""
    return (
        f"CANCEL sip:0201234567@127.0.0.1:5060 SIP/2.0\r\n"
        f"Via: SIP/2.0/UDP 127.0.0.3:5062;branch=z9hG4bK-{n}-1-0\r\n"
        f"From: sipp <sip:+31201234567@127.0.0.3:5062>;tag={n}SIPpTag001\r\n"
        f"To: <sip:0201234567@127.0.0.1:5060>\r\n"
        f"Call-ID: {n}-sim@127.0.0.3\r\n"
        "CSeq: 1 CANCEL\r\nMax-Forwards: 70\r\nContent-Length: 0\r\n\r\n"
    ).encode()


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


# -- a B-leg that never answers; failover ------------------------------------------------


def test_no_provisional_in_target_timeout_fails_the_call_well_before_timer_b() -> None:
    w = Wire(default_config("sip: {target_timeout: 2.5}\n"))
    start_call(w, 1)
    w.take_caller()
    w.advance(2.4)
    assert responses(w.take_caller()) == []
    retrans = requests(w.take_callee(), "INVITE")
    assert len(retrans) == 2  # Timer A at 0.5 and 1.5
    w.advance(0.2)
    (final,) = responses(w.take_caller())
    assert final.status in (408, 503)
    end = w.core.cdr_out[-1]
    assert end.status == final.status and end.end_reason in ("timeout", "rejected")
    assert w.core.calls == 0
    # the INVITE itself is left to its transaction: Timer B ends its retransmissions
    w.advance(64 * T1)
    w.take_callee()
    w.advance(60)
    # from then on the silent target only gets OPTIONS probes (sip.probe_interval)
    probes = w.take_callee()
    assert probes and {m.method for m in requests(probes)} == {"OPTIONS"}
    assert all(tx.request.method == "OPTIONS" for tx in w.core.layer.client.values())


def test_a_failed_target_is_skipped_until_it_answers_a_probe() -> None:
    """Issue 3: a dead target is not tried again until it answers OPTIONS."""
    cfg = config_text(
        CONFIG.replace(
            'targets: ["sip:127.0.0.2:5080"]',
            'targets: ["sip:127.0.0.2:5080", "sip:127.0.0.4:5080"]',
        ).replace("sources: [127.0.0.2/32]", "sources: [127.0.0.2/32, 127.0.0.4/32]")
    )
    w = Wire(cfg)
    b_inv = start_call(w, 1)
    w.from_callee(response_to(b_inv, 503, "Service Unavailable", "t1"))
    (second,) = requests(w.take(PEER2), "INVITE")  # failover to the second target
    w.from_peer(PEER2, response_to(second, 486, "Busy Here", "t2"))
    w.take_caller()
    w.take(PEER2)
    # the next call goes straight to the second target: the first is down
    w.from_caller(invite(2))
    assert requests(w.take_callee(), "INVITE") == []
    (nxt,) = requests(w.take(PEER2), "INVITE")
    w.from_peer(PEER2, response_to(nxt, 486, "Busy Here", "t3"))
    w.take_caller()
    # a probe after sip.probe_interval; its answer brings the first target back
    w.advance(5.0)
    (probe,) = requests(w.take_callee(), "OPTIONS")
    assert probe.uri == "sip:127.0.0.2:5080"
    w.from_callee(response_to(probe, 200, "OK", "p"))
    assert w.core.down == {}
    w.from_caller(invite(3))
    assert len(requests(w.take_callee(), "INVITE")) == 1


@pytest.mark.parametrize("late", [180, 200])
def test_a_target_given_up_that_answers_late_is_cancelled_or_acked_and_byed(late: int) -> None:
    """The caller has its 408; the callee must not keep a ringing or answered call."""
    w = Wire()
    b_inv = start_call(w, 1)
    w.advance(3.1)  # past sip.target_timeout (3 s)
    assert [r.status for r in responses(w.take_caller())] == [100, 408]
    w.take_callee()
    w.from_callee(response_to(b_inv, late, "Late", "late", SDP_CALLEE))
    to_callee = w.take_callee()
    if late == 180:
        (cancel,) = requests(to_callee, "CANCEL")
        assert cancel.top_via.branch == b_inv.top_via.branch
        w.from_callee(response_to(cancel, 200, "OK", "late"))
        w.from_callee(response_to(b_inv, 487, "Request Terminated", "late"))
        assert len(requests(w.take_callee(), "ACK")) == 1
    else:
        (ack,) = requests(to_callee, "ACK")
        (bye,) = requests(to_callee, "BYE")
        assert ack.to.tag == "late" and bye.to.tag == "late"
    assert w.take_caller() == []  # the caller heard the end already
    assert [r.end_reason for r in w.core.cdr_out] == ["timeout"]


def test_failover_to_the_second_target_when_the_first_is_silent() -> None:
    w = Wire(config_text(TWO_TARGETS))
    b1 = start_call(w, 1)
    w.advance(3.0)  # sip.target_timeout
    (b2,) = requests(w.take(PEER2), "INVITE")
    assert b2.uri == "sip:0201234567@127.0.0.4:5080"
    assert b2.call_id == b1.call_id and b2.from_.tag == b1.from_.tag
    assert b2.cseq.number > b1.cseq.number
    assert b2.top_via.branch != b1.top_via.branch
    w.take_callee()
    w.from_peer(PEER2, response_to(b2, 180, "Ringing", "p2", contact=PEER2))
    w.from_peer(PEER2, response_to(b2, 200, "OK", "p2", SDP_CALLEE, contact=PEER2))
    (ok,) = responses(w.take_caller(), 200)
    assert len(requests(w.take(PEER2), "ACK")) == 1
    w.from_caller(in_dialog("ACK", ok, 1, 1, "z9hG4bK-ack"))
    w.from_caller(in_dialog("BYE", ok, 2, 1, "z9hG4bK-bye"))
    (bye,) = requests(w.take(PEER2), "BYE")
    w.from_peer(PEER2, response_to(bye, 200, "OK", None))
    assert w.take_callee() == []  # the first target hears nothing more
    assert w.core.cdr_out[-1].end_reason == "caller_bye"


def test_503_from_the_first_target_tries_the_second() -> None:
    w = Wire(config_text(TWO_TARGETS))
    b1 = start_call(w, 1)
    w.from_callee(response_to(b1, 503, "Service Unavailable", "x"))
    assert len(requests(w.take_callee(), "ACK")) == 1
    (b2,) = requests(w.take(PEER2), "INVITE")
    assert b2.call_id == b1.call_id
    assert responses(w.take_caller(), 503) == []  # not relayed
    w.from_peer(PEER2, response_to(b2, 200, "OK", "p2", SDP_CALLEE, contact=PEER2))
    assert len(responses(w.take_caller(), 200)) == 1


def test_all_targets_fail_503_to_the_caller() -> None:
    w = Wire(config_text(TWO_TARGETS))
    b1 = start_call(w, 1)
    w.from_callee(response_to(b1, 503, "Service Unavailable", "x"))
    (b2,) = requests(w.take(PEER2), "INVITE")
    w.advance(1.0)
    w.from_peer(PEER2, response_to(b2, 503, "Service Unavailable", "y", contact=PEER2))
    (final,) = [r for r in responses(w.take_caller()) if r.status >= 200]
    assert final.status == 503
    assert not final.has("retry-after")
    assert w.core.cdr_out[-1].status == 503


def test_all_targets_silent_the_caller_gets_a_final_answer_before_timer_b() -> None:
    w = Wire(config_text(TWO_TARGETS))
    start_call(w, 1)
    w.take_caller()
    w.advance(6.1)  # two target timeouts
    (final,) = responses(w.take_caller())
    assert final.status in (408, 503)
    assert w.core.calls == 0


def test_a_ringing_target_is_not_abandoned_by_the_target_timeout() -> None:
    w = Wire(config_text(TWO_TARGETS))
    b1 = start_call(w, 1)
    w.from_callee(response_to(b1, 180, "Ringing", "t"))
    w.advance(60)
    assert w.take(PEER2) == []
    assert w.core.calls == 1
    w.from_callee(response_to(b1, 200, "OK", "t", SDP_CALLEE))
    assert len(responses(w.take_caller(), 200)) == 1


# -- failures and redirects ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "reason"),
    [(486, "Busy Here"), (404, "Not Found"), (480, "Temporarily Unavailable"), (603, "Decline")],
)
def test_a_failure_is_relayed_with_the_same_status(status: int, reason: str) -> None:
    w = Wire()
    b_inv = start_call(w, 1)
    w.from_callee(response_to(b_inv, status, reason, "t"))
    assert len(requests(w.take_callee(), "ACK")) == 1
    (final,) = [r for r in responses(w.take_caller()) if r.status >= 200]
    assert final.status == status
    assert final.to.tag  # §8.2.6.2
    end = w.core.cdr_out[-1]
    assert (end.status, end.end_reason) == (status, "rejected")
    # the caller ACKs it: absorbed, nothing goes on
    w.from_caller(in_dialog("ACK", final, 1, 1, "z9hG4bK-1-1-0"))
    assert w.take_callee() == []


def test_a_3xx_inside_the_trunk_sources_is_followed() -> None:
    w = Wire(config_text(REDIRECTABLE))
    b1 = start_call(w, 1)
    w.from_callee(
        response_to(b1, 302, "Moved Temporarily", "r", extra="").replace(
            b"Contact: <sip:127.0.0.2:5080;transport=UDP>",
            b"Contact: <sip:0201234999@127.0.0.4:5080>",
        )
    )
    assert len(requests(w.take_callee(), "ACK")) == 1
    (b2,) = requests(w.take(PEER2), "INVITE")
    assert b2.uri == "sip:0201234999@127.0.0.4:5080"  # the Contact of the 3xx (§8.1.3.4)
    assert b2.call_id == b1.call_id and b2.cseq.number > b1.cseq.number
    assert all(r.status < 300 for r in responses(w.take_caller()))  # never relayed
    w.from_peer(PEER2, response_to(b2, 200, "OK", "p2", SDP_CALLEE, contact=PEER2))
    assert len(responses(w.take_caller(), 200)) == 1


def test_a_3xx_pointing_outside_the_trunk_is_never_relayed_nor_followed() -> None:
    w = Wire()
    b1 = start_call(w, 1)
    w.from_callee(
        response_to(b1, 302, "Moved Temporarily", "r").replace(
            b"Contact: <sip:127.0.0.2:5080;transport=UDP>",
            b"Contact: <sip:0900123456@198.51.100.7:5060>",
        )
    )
    # (an INVITE to 198.51.100.7 would have failed the Wire: unexpected address)
    to_caller = w.take_caller()
    assert not any(300 <= r.status < 400 for r in responses(to_caller))
    (final,) = [r for r in responses(to_caller) if r.status >= 200]
    assert final.status >= 400
    assert b"198.51.100.7" not in final.to_bytes()
    assert w.core.cdr_out[-1].end_reason == "rejected"


# -- digest challenges -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "challenge", "credentials"),
    [
        (401, "WWW-Authenticate", "Authorization"),
        (407, "Proxy-Authenticate", "Proxy-Authorization"),
    ],
)
def test_a_challenge_is_relayed_and_the_retry_goes_on_the_same_b_leg(
    status: int, challenge: str, credentials: str
) -> None:
    w = Wire()
    b1 = start_call(w, 1)
    chal = f'{challenge}: Digest realm="pbx.example", nonce="abc123", algorithm=MD5\r\n'
    w.from_callee(response_to(b1, status, "Unauthorized", "t", extra=chal))
    assert len(requests(w.take_callee(), "ACK")) == 1
    (rel,) = [r for r in responses(w.take_caller()) if r.status >= 200]
    assert rel.status == status
    assert rel.get(challenge.lower()) == 'Digest realm="pbx.example", nonce="abc123", algorithm=MD5'
    w.from_caller(in_dialog("ACK", rel, 1, 1, "z9hG4bK-1-1-0"))
    w.advance(1.0)
    cred = (
        f'{credentials}: Digest username="alice", realm="pbx.example", nonce="abc123", '
        'uri="sip:0201234567@127.0.0.1:5060", response="0123456789abcdef"\r\n'
    )
    w.from_caller(invite(1, headers=cred, cseq=2))
    (b2,) = requests(w.take_callee(), "INVITE")
    assert b2.call_id == b1.call_id
    assert b2.from_.tag == b1.from_.tag
    assert b2.cseq.number > b1.cseq.number
    assert b2.get(credentials.lower()) is not None
    assert "0123456789abcdef" in (b2.get(credentials.lower()) or "")
    w.from_callee(response_to(b2, 200, "OK", "t2", SDP_CALLEE))
    (ok,) = responses(w.take_caller(), 200)
    assert ok.cseq.number == 2


def test_credentials_are_never_sent_on_a_first_invite() -> None:
    w = Wire()
    cred = 'Authorization: Digest username="alice", response="feedface"\r\n'
    b_inv = start_call(w, 1, invite(1, headers=cred))
    assert not b_inv.has("authorization")


# -- forking -----------------------------------------------------------------------------


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


# -- in-dialog requests ------------------------------------------------------------------


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


def test_the_final_response_waits_for_the_prack_of_a_183_with_sdp() -> None:
    w = Wire()
    b_inv = start_call(w, 1, invite(1, headers="Supported: 100rel\r\n"))
    w.from_callee(response_to(b_inv, 183, "Session Progress", "t", SDP_CALLEE))
    (p183,) = responses(w.take_caller(), 183)
    w.from_callee(response_to(b_inv, 200, "OK", "t", SDP_CALLEE))
    assert responses(w.take_caller(), 200) == []  # RFC 3262 §3: held until the PRACK
    w.from_caller(in_dialog("PRACK", p183, 2, 1, "z9hG4bK-pr", extra="RAck: 1 1 INVITE\r\n"))
    assert statuses(w.take_caller()) == [200, 200]  # the PRACK's, then the INVITE's


# -- session timers (RFC 4028) -------------------------------------------------------------


SE_CALLER = "Supported: timer\r\nSession-Expires: 90;refresher=uac\r\n"


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


# -- maximum call duration ---------------------------------------------------------------


def test_max_call_duration_ends_a_call_whose_bye_was_lost() -> None:
    w = Wire(default_config("sip: {max_call_duration: 600, session_expires: 0}\n"))
    establish(w, 1)
    w.advance(599.9)
    assert w.core.calls == 1
    w.advance(0.2)
    assert len(requests(w.take_caller(), "BYE")) == 1
    assert len(requests(w.take_callee(), "BYE")) == 1
    end = w.core.cdr_out[-1]
    assert end.end_reason == "max_duration" and end.duration_ms == 600000
    assert w.core.calls == 0


# -- memory hygiene ----------------------------------------------------------------------


def test_nothing_is_left_after_many_calls_and_their_timers() -> None:
    w = Wire()
    for n in range(50):
        basic_call(w, n, hold=0.5)
    # a cancelled one, a rejected one, a timed-out one
    b_inv = start_call(w, 100)
    w.from_callee(response_to(b_inv, 180, "Ringing", "t"))
    w.from_caller(cancel_of(100))
    (b_cancel,) = requests(w.take_callee(), "CANCEL")
    w.from_callee(response_to(b_cancel, 200, "OK", "t"))
    w.from_callee(response_to(b_inv, 487, "Request Terminated", "t"))
    b_inv = start_call(w, 101)
    w.from_callee(response_to(b_inv, 486, "Busy Here", "t"))
    start_call(w, 102)
    w.advance(64 * T1 + 40)
    # the target that timed out is probed until it answers: answer, and all is gone
    for probe in requests(w.take_callee(), "OPTIONS")[-1:]:
        w.from_callee(response_to(probe, 200, "OK", "p"))
    w.advance(64 * T1)
    assert w.core.calls == 0
    assert w.core.dialogs == {}
    assert w.core.layer.client == {}
    assert w.core.layer.server == {}
    assert w.core.next_deadline() is None


def test_a_finished_call_is_freed_by_reference_counting_alone() -> None:
    """No reference cycle keeps a call: it goes the moment its last transaction ends.

    ``Call`` has ``__slots__`` without ``__weakref__``, so the test holds the only other
    reference and checks with ``sys.getrefcount`` that nothing else (no cycle, no timer,
    no transaction) refers to the call, with the cyclic collector off all along.
    """
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        w = Wire()
        e = establish(w, 1, invite(1, headers=SE_CALLER + "Supported: 100rel\r\n"))
        w.from_caller(in_dialog("INFO", e.a_ok, 2, 1, "z9hG4bK-info"))
        (info,) = requests(w.take_callee(), "INFO")
        w.from_callee(response_to(info, 200, "OK", None))
        w.take_caller()
        w.from_caller(in_dialog("INVITE", e.a_ok, 3, 1, "z9hG4bK-re", SDP))
        (re,) = requests(w.take_callee(), "INVITE")
        w.from_callee(response_to(re, 200, "OK", None, SDP_CALLEE))
        (ok,) = responses(w.take_caller(), 200)
        w.from_caller(in_dialog("ACK", ok, 3, 1, "z9hG4bK-re-ack"))
        w.from_callee(response_to(e.b_invite, 200, "OK", "fork2", SDP_CALLEE))  # a late fork
        (fork_bye,) = requests(w.take_callee(), "BYE")
        w.from_callee(response_to(fork_bye, 200, "OK", None))
        (call,) = set(w.core.dialogs.values())
        assert isinstance(call, Call)
        w.from_caller(in_dialog("BYE", e.a_ok, 4, 1, "z9hG4bK-bye"))
        (bye,) = requests(w.take_callee(), "BYE")
        w.from_callee(response_to(bye, 200, "OK", None))
        w.advance(64 * T1 + 10)
        w.take_caller()
        refs = sys.getrefcount(call) - 1  # less getrefcount's own argument
        if refs != 1:
            held = [type(r).__name__ for r in gc.get_referrers(call)]
            pytest.fail(f"the call is still referred to {refs} times: {held}")
    finally:
        if was_enabled:
            gc.enable()


# -- more that a real network does -----------------------------------------------------------


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


def test_a_late_200_from_the_target_we_gave_up_on_is_acked_and_byed() -> None:
    w = Wire(config_text(TWO_TARGETS))
    b1 = start_call(w, 1)
    w.advance(3.0)  # target timeout: on to the second target
    (b2,) = requests(w.take(PEER2), "INVITE")
    w.take_callee()
    # the first target answers after all (its responses were slow, not lost)
    w.from_callee(response_to(b1, 200, "OK", "late", SDP_CALLEE))
    to_first = w.take_callee()
    (ack,) = requests(to_first, "ACK")
    (bye,) = requests(to_first, "BYE")
    assert ack.to.tag == "late" and bye.to.tag == "late"
    assert w.take(PEER2) == []
    assert responses(w.take_caller(), 200) == []
    # the call goes on with the second target
    w.from_peer(PEER2, response_to(b2, 200, "OK", "p2", SDP_CALLEE, contact=PEER2))
    assert len(responses(w.take_caller(), 200)) == 1
    assert len(requests(w.take(PEER2), "ACK")) == 1


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


@pytest.mark.parametrize("provisional", [100, 180])
def test_a_target_that_goes_quiet_after_a_provisional_is_given_up_timer_c(
    provisional: int,
) -> None:
    """RFC 3261 §16.6 step 11: Timer C (over 3 minutes), reset by each provisional."""
    w = Wire()
    b_inv = start_call(w, 1)
    w.take_caller()
    tag = None if provisional == 100 else "t"
    w.from_callee(response_to(b_inv, provisional, "Ringing", tag))
    w.advance(120)
    w.from_callee(response_to(b_inv, provisional, "Ringing", tag))  # still alive
    w.advance(180)
    assert w.core.calls == 1
    w.take_caller()
    w.advance(200)
    finals = [r.status for r in responses(w.take_caller()) if r.status >= 200]
    assert finals and set(finals) == {408}  # not ACKed by this caller: Timer G repeats it
    cancels = requests(w.take_callee(), "CANCEL")  # unanswered: retransmitted (Timer E)
    assert cancels and {c.top_via.branch for c in cancels} == {b_inv.top_via.branch}
    end = w.core.cdr_out[-1]
    assert (end.end_reason, end.status) == ("timeout", 408)
    assert w.core.calls == 0


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


def test_a_caller_with_timers_asking_for_too_small_an_interval_gets_422_with_our_min_se() -> None:
    """RFC 4028 §9: below our Min-SE (90 s here) from a caller that supports timers: 422
    with Min-SE, no B-leg, and the refused attempt's CDR."""
    w = Wire()
    w.from_caller(invite(1, headers="Supported: timer\r\nSession-Expires: 60\r\n"))
    got = responses(w.take_caller())
    assert [r.status for r in got] == [100, 422]
    assert got[-1].get("min-se") == "90"
    assert requests(w.take_callee()) == []
    end = w.core.cdr_out[-1]
    assert (end.kind, end.status, end.end_reason) == ("end", 422, "rejected")
    assert w.core.calls == 0


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
    assert [r.status for r in responses(w.take_caller())] == [100, 503]


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


def test_a_failure_is_not_held_for_the_prack_of_a_183_with_sdp() -> None:
    """RFC 3262 §3 holds back only a 2xx until the PRACK of a 1xx with an offer."""
    w = Wire()
    b_inv = start_call(w, 1, invite(1, headers="Supported: 100rel\r\n"))
    w.from_callee(response_to(b_inv, 183, "Session Progress", "t", SDP_CALLEE))
    w.take_caller()
    w.from_callee(response_to(b_inv, 486, "Busy Here", "t"))
    assert [r.status for r in responses(w.take_caller())] == [486]
    assert w.core.cdr_out[-1].status == 486


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


def test_a_target_that_failed_is_skipped_by_the_next_calls_for_a_while() -> None:
    w = Wire(config_text(TWO_TARGETS))
    start_call(w, 1)
    w.advance(3.0)  # the first target is silent: on to the second
    assert len(requests(w.take(PEER2), "INVITE")) == 1
    w.take_callee()
    w.from_caller(invite(2))
    assert requests(w.take_callee(), "INVITE") == []
    (b2,) = requests(w.take(PEER2), "INVITE")  # straight to the second target
    assert b2.uri == "sip:0201234567@127.0.0.4:5080"


def test_racing_byes_from_both_sides_end_the_call_once() -> None:
    w = Wire()
    e = establish(w, 1)
    w.from_caller(in_dialog("BYE", e.a_ok, 2, 1, "z9hG4bK-bye"))
    w.from_callee(callee_request("BYE", e.b_invite, e.callee_tag, 1, 1))  # crossed ours
    to_callee = w.take_callee()
    (our_bye,) = requests(to_callee, "BYE")
    (answer,) = responses(to_callee)
    assert answer.cseq.method == "BYE" and answer.status in (200, 481)
    w.from_callee(response_to(our_bye, 200, "OK", None))
    assert [r.status for r in responses(w.take_caller())] == [200]
    ends = [r for r in w.core.cdr_out if r.kind == "end"]
    assert len(ends) == 1 and ends[0].end_reason == "caller_bye"
    assert w.core.calls == 0


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


def test_a_bye_from_the_callee_in_the_early_dialog_gets_481_and_the_call_rings_on() -> None:
    """§15: the callee MUST NOT send BYE on an early dialog."""
    w = Wire()
    b_inv = start_call(w, 1)
    w.from_callee(response_to(b_inv, 180, "Ringing", "t"))
    w.take_caller()
    w.from_callee(callee_request("BYE", b_inv, "t", 1, 1))
    assert statuses(w.take_callee()) == [481]
    assert w.take_caller() == []
    assert w.core.calls == 1
    w.from_callee(response_to(b_inv, 200, "OK", "t", SDP_CALLEE))
    assert len(responses(w.take_caller(), 200)) == 1


def test_a_reinvite_gets_100_trying_at_once() -> None:
    w = Wire()
    e = establish(w, 1)
    w.from_caller(in_dialog("INVITE", e.a_ok, 2, 1, "z9hG4bK-re", SDP))
    assert statuses(w.take_caller()) == [100]
    assert len(requests(w.take_callee(), "INVITE")) == 1
    w.from_callee(callee_request("INVITE", e.b_invite, e.callee_tag, 1, 1, SDP_CALLEE))
    assert statuses(w.take_callee()) == [491]  # ours is pending: glare, at once


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


def test_a_held_reinvite_gets_481_when_the_call_ends_first() -> None:
    w = Wire()
    b_inv = start_call(w, 1)
    w.from_callee(response_to(b_inv, 200, "OK", "t", SDP_CALLEE))
    (ok,) = responses(w.take_caller(), 200)
    w.take_callee()
    w.from_callee(callee_request("INVITE", b_inv, "t", 1, 1, SDP_CALLEE))
    w.take_callee()
    w.from_caller(in_dialog("BYE", ok, 2, 1, "z9hG4bK-bye"))
    to_callee = w.take_callee()
    assert [r.status for r in responses(to_callee)] == [481]
    assert len(requests(to_callee, "BYE")) == 1


def test_a_malformed_ack_is_never_answered() -> None:
    w = Wire()
    e = establish(w, 1)
    bad = callee_request("ACK", e.b_invite, e.callee_tag, 2, 1).replace(
        b"CSeq: 2 ACK", b"CSeq: 2 INVITE"
    )
    w.from_callee(bad.replace(b"ACK sip:", b"ACK sip:sip:", 1))
    w.from_callee(bad)
    assert w.take_callee() == [] and w.take_caller() == []
    assert w.core.parse_errors == 2


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


# -- what the peers' free text may carry ----------------------------------------------------


def test_a_reason_phrase_reaches_an_untrusted_caller_only_as_the_standard_one() -> None:
    """A reason phrase is free text (it can name a person or an address): towards the
    untrusted caller the standard phrase replaces it."""
    w = Wire()
    w.from_caller(invite(1))
    (b_inv,) = requests(w.take_callee(), "INVITE")
    w.from_callee(response_to(b_inv, 486, "Busy: Bob Smith at 192.0.2.55", "t1"))
    (final,) = [r for r in responses(w.take_caller()) if r.status >= 200]
    assert final.status == 486 and final.reason == "Busy Here"


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


def test_the_metrics_count_calls_in_progress_setups_and_results() -> None:
    """SPEC §7 through the core itself: sipguard_active_calls is read at scrape time."""
    metrics = Metrics()
    w = Wire(metrics=metrics)

    def sample(name: str, **labels: str) -> float | None:
        return metrics.registry.get_sample_value(name, labels or None)

    assert sample("sipguard_active_calls") == 0
    establish(w, 1)
    establish(w, 2)
    assert sample("sipguard_active_calls") == 2
    assert sample("sipguard_call_setup_seconds_count") == 2
    basic_call(w, 3)
    assert sample("sipguard_active_calls") == 2
    w.core.shutdown(w.now)
    w.flush()
    assert sample("sipguard_active_calls") == 0
    answered = sample(
        "sipguard_calls_total", trunk_in="customers", trunk_out="pbx", result="answered"
    )
    assert answered == 3
