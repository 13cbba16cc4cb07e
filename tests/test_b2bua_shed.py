"""A new call shed before it is parsed (``sipguard/b2bua/shed.py``): while the core sheds
load and the trunk's refused attempts of the second have had their records, a refused
INVITE is answered 503 from its own lines; never an emergency call or a re-INVITE."""

from __future__ import annotations

import pytest

from sipguard.b2bua.shed import early_refusal
from sipguard.metrics import Metrics
from sipguard.sip.message import Request, Response, parse_message
from sipguard.sip.transaction import stateless_tag
from testkit.callsim import (
    CALLEE,
    Wire,
    default_config,
    establish,
    in_dialog,
    invite,
    requests,
    responses,
)
from testkit.metrics import sample

CONFIG = default_config()


def shedding_wire(refused_cdr_rps: int = 5) -> Wire:
    w = Wire(default_config(f"limits: {{refused_cdr_rps: {refused_cdr_rps}}}\n"), metrics=Metrics())
    w.core.shedder.shedding = True
    w.core.shedder.admitted = 0.0  # admits none
    w.advance(0.25)
    return w


def test_past_the_records_of_the_second_a_shed_call_is_answered_unread() -> None:
    w = shedding_wire(refused_cdr_rps=5)
    for n in range(50):
        w.from_caller(invite(n))
    finals = responses(w.take_caller())
    assert [r.status for r in finals] == [503] * 50
    assert not any(r.has("retry-after") for r in finals)
    assert all(r.to.tag for r in finals)
    assert requests(w.take_callee()) == []
    assert len([r for r in w.core.cdr_out if r.kind == "end"]) == 5  # the records of the second
    m = w.metrics
    assert m is not None
    assert sample(m, "sipguard_rejected_total", reason="overload") == 50
    assert sample(m, "sipguard_cdr_refusals_unrecorded_total", trunk_in="customers") == 45
    limit = {"trunk_in": "customers", "trunk_out": "pbx", "result": "limit"}
    assert sample(m, "sipguard_calls_total", **limit) == 50
    assert w.core.layer.server == {} and w.core.calls == 0


def test_the_early_503_answers_the_request_as_the_parser_would_read_it() -> None:
    data = invite(7)
    req = parse_message(data)
    assert isinstance(req, Request)
    early = early_refusal(data, CONFIG)
    assert early is not None and len(early.response) <= len(data)
    got = parse_message(early.response)
    assert isinstance(got, Response) and got.status == 503
    assert got.call_id == req.call_id and got.cseq == req.cseq
    assert got.top_via.branch == req.top_via.branch
    assert got.from_.tag == req.from_.tag and got.to.tag
    again = early_refusal(data, CONFIG)
    assert again is not None and again.response == early.response  # a retransmission
    assert got.to.tag == stateless_tag(req)  # the tag the whole way would give it


def test_compact_header_names_and_several_vias_are_copied() -> None:
    data = (
        b"INVITE sip:0201234567@127.0.0.1 SIP/2.0\r\n"
        b"v: SIP/2.0/UDP 127.0.0.3:5062;branch=z9hG4bK-1\r\n"
        b"Via: SIP/2.0/UDP 10.0.0.1;branch=z9hG4bK-0\r\n"
        b"f: <sip:+31201234567@127.0.0.3>;tag=a\r\nt: <sip:0201234567@127.0.0.1>\r\n"
        b"i: compact-1\r\nCSeq: 3 INVITE\r\nMax-Forwards: 70\r\n"
        b"Subject: a long enough request to answer\r\nl: 0\r\n\r\n"
    )
    early = early_refusal(data, CONFIG)
    assert early is not None
    got = parse_message(early.response)
    assert isinstance(got, Response)
    assert [v.branch for v in got.vias] == ["z9hG4bK-1", "z9hG4bK-0"]
    assert got.call_id == "compact-1" and got.cseq.number == 3


@pytest.mark.parametrize(
    "user",
    ["112", "%2331%23112", "#31#112", "*31#911", "1-1-2"],
)
def test_an_emergency_call_is_never_shed_unread(user: str) -> None:
    assert early_refusal(invite(1, user=user), CONFIG) is None


def test_an_sos_urn_or_a_tel_emergency_is_never_shed_unread() -> None:
    for ruri in (b"urn:service:sos", b"urn:service:sos.fire", b"tel:112"):
        data = invite(1).replace(b"sip:0201234567@127.0.0.1:5060 SIP", ruri + b" SIP", 1)
        assert early_refusal(data, CONFIG) is None, ruri


@pytest.mark.parametrize(
    "change",
    [
        (b"To: <sip:0201234567@127.0.0.1:5060>", b"To: <sip:0201234567@127.0.0.1:5060>;tag=x"),
        (b"To: <sip:0201234567@127.0.0.1:5060>", b"To: <sip:0201234567@127.0.0.1:5060;TAG=x>"),
        (b"CSeq: 1 INVITE", b"CSeq: 1 OPTIONS"),
        (b"CSeq: 1 INVITE", b"CSeq: one INVITE"),
        (b"Subject: Performance Test", b"Subject: Performance\r\n Test"),  # folded
        (b"Subject: Performance Test", b"Call-ID: again"),  # a second Call-ID
        (b"Subject: Performance Test", b"no colon here"),
        (b"SIP/2.0\r\nVia", b"SIP/2.1\r\nVia"),
        (b"\r\n\r\n", b"\r\n"),  # no end of the header
    ],
    ids=[
        "to-tag",
        "tag-anywhere-in-to",
        "cseq-method",
        "cseq-number",
        "folded",
        "repeated",
        "no-colon",
        "version",
        "no-end",
    ],
)
def test_anything_unusual_is_left_to_the_parser(change: tuple[bytes, bytes]) -> None:
    data = invite(1, body=b"").replace(change[0], change[1], 1)
    assert data != invite(1, body=b"")
    assert early_refusal(data, CONFIG) is None


def test_the_answer_is_never_larger_than_the_request() -> None:
    tiny = (
        b"INVITE sip:1@h SIP/2.0\r\nv: SIP/2.0/UDP h;branch=z9hG4bK1\r\nf: <sip:a@h>;tag=1\r\n"
        b"t: <sip:b@h>\r\ni: 1\r\nCSeq: 1 INVITE\r\n\r\n"
    )
    assert early_refusal(tiny, CONFIG) is None


def test_while_shedding_an_emergency_call_and_a_re_invite_go_through() -> None:
    w = Wire(default_config("limits: {refused_cdr_rps: 1}\n"))
    est = establish(w, 1)
    w.core.shedder.shedding = True
    w.core.shedder.admitted = 0.0
    for n in range(2, 5):
        w.from_caller(invite(n))  # spends the records of the second
    w.take_caller()
    w.from_caller(invite(9, user="112"))
    assert len(requests(w.take_callee(), "INVITE")) == 1
    w.from_caller(in_dialog("INVITE", est.a_ok, 2, 1, "z9hG4bK-re"))
    assert len(requests(w.take_callee(), "INVITE")) == 1


def test_a_call_the_shedder_admits_is_not_asked_twice() -> None:
    """One look before reading draws on the shedder's credit; the whole way does not."""
    w = shedding_wire(refused_cdr_rps=1)
    w.core.shedder.admitted = 0.75  # every second call of an untrusted trunk
    for n in range(10):
        w.from_caller(invite(n))
    assert len(requests(w.take_callee(), "INVITE")) == 5


# -- found by the review -----------------------------------------------------------------


def _spend_records(w: Wire) -> None:
    for n in range(100, 103):  # the trunk's refusal records of the second
        w.from_caller(invite(n))
    w.take_caller()
    w.take_callee()


def test_a_retransmission_of_a_call_under_way_is_never_shed() -> None:
    """§17.2.1: one final response per INVITE. The retransmission of an admitted INVITE
    is its transaction's, absorbed, whatever the shedder says now."""
    w = shedding_wire(refused_cdr_rps=1)
    w.core.shedder.admitted = 0.75  # every second untrusted call
    _spend_records(w)
    n = next(n for n in range(1, 10) if _admitted(w, n))
    w.advance(0.5)
    w.from_caller(invite(n))  # the caller's T1 retransmission
    assert [r.status for r in responses(w.take_caller())] == [100]


def _admitted(w: Wire, n: int) -> bool:
    w.from_caller(invite(n))
    w.take_caller()
    return bool(requests(w.take_callee(), "INVITE"))


@pytest.mark.parametrize("early", [True, False], ids=["shed-unread", "shed-read"])
def test_a_retransmission_of_a_shed_invite_is_shed_again(early: bool) -> None:
    """§8.2.7: a request answered 503 is answered 503 again, with the same tag, never made
    a call because the shedder's credit came round."""
    w = shedding_wire(refused_cdr_rps=1 if early else 1000)
    w.core.shedder.admitted = 0.75
    _spend_records(w)
    n = next(n for n in range(1, 10) if not _admitted(w, n))
    w.from_caller(invite(n))
    (first,) = responses(w.take_caller(), 503)
    for _ in range(4):
        w.from_caller(invite(n))
        (again,) = responses(w.take_caller(), 503)
        assert again.to.tag == first.to.tag
    assert requests(w.take_callee(), "INVITE") == []


def test_a_trusted_trunks_calls_are_shed_only_after_the_untrusted_ones() -> None:
    """SPEC §8: an INVITE flood from a customer trunk grows the queue; the PBX's calls
    still go through while the customers' are cut."""
    w = shedding_wire(refused_cdr_rps=1)
    w.core.shedder.admitted = 0.5  # untrusted: the minimum; trusted: all
    for n in range(100, 120):
        w.from_caller(invite(n))
    w.take_caller()
    finals = []
    for n in range(20):
        data = invite(n, user="+31201234567", addr=CALLEE).replace(
            b"127.0.0.1:5060", b"127.0.0.3:5062"
        )
        w.from_callee(data)
        finals += [r.status for r in responses(w.take_callee()) if r.status >= 200]
    assert 503 not in finals
    assert len(requests(w.take_caller(), "INVITE")) == 20


def test_a_bare_line_break_is_never_copied_back() -> None:
    """What the parser refuses as header injection is left to it: no Retry-After smuggled
    into a limit's 503 (SPEC §8)."""
    data = invite(1, body=b"").replace(b";tag=1SIPpTag001", b";tag=1\nRetry-After: 3600", 1)
    assert early_refusal(data, CONFIG) is None
    assert early_refusal(data.replace(b"\n", b"\r", 1), CONFIG) is None
    assert early_refusal(invite(1, body=b"").replace(b"sipp", b"si\x00p", 1), CONFIG) is None


def test_a_shed_invite_is_counted_as_received() -> None:
    w = shedding_wire(refused_cdr_rps=1)
    for n in range(10):
        w.from_caller(invite(n))
    assert w.core.stats_in.get("INVITE") == 10


def test_the_ack_of_a_shed_invite_s_503_is_absorbed_unread() -> None:
    """§17.2.1: the caller ACKs each 503. Read in full it would cost a parse per refused
    call again; its To tag names a 503 of ours to that address, so it is absorbed from its
    raw lines (a broken Via behind it is not even seen). An ACK with any other tag is
    read as ever."""
    w = shedding_wire(refused_cdr_rps=1)
    w.from_caller(invite(100))  # the record of the second: read in full
    w.take_caller()
    strays = w.core.layer.strays
    for n in range(10):
        w.from_caller(invite(n))
        (refused,) = responses(w.take_caller(), 503)
        ack = in_dialog("ACK", refused, 1, n, f"z9hG4bK-{n}-1-0")
        w.from_caller(ack.replace(b"Via: SIP/2.0/UDP", b"Via: broken", 1))
    assert w.take_caller() == [] and w.take_callee() == []
    assert sample(w.metrics, "sipguard_parse_errors_total") == 0
    assert w.core.stats_in.get("ACK") == 10 and w.core.layer.strays == strays
    # a tag of no 503 of ours: the parser's, a stray
    other = in_dialog("ACK", refused, 1, 0, "z9hG4bK-x").replace(
        refused.to.tag.encode(), b"0123456789abcdef0123"
    )
    w.from_caller(other)
    assert w.core.layer.strays == strays + 1


def test_rev9_a_shed_invite_s_503_stamps_the_top_via_received_and_rport() -> None:
    """RFC 3261 §18.2.1 and RFC 3581 §4: a caller behind a NAT (its sent-by a private
    address, ``rport`` asked for) learns where its request came from in the 503 shed
    unread, as in every response the whole way makes."""
    w = shedding_wire(refused_cdr_rps=1)
    w.from_caller(invite(100))  # the record of the second: read in full
    w.take_caller()
    via = b"Via: SIP/2.0/UDP 127.0.0.3:5062;branch=z9hG4bK-1-1-0"
    w.from_caller(invite(1).replace(via, b"Via: SIP/2.0/UDP 10.0.0.7;branch=z9hG4bK-1-1-0;rport"))
    (resp,) = responses(w.take_caller(), 503)
    assert resp.get_lines("via") == [
        "SIP/2.0/UDP 10.0.0.7;branch=z9hG4bK-1-1-0;rport=5062;received=127.0.0.3"
    ]
