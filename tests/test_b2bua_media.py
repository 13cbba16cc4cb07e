"""Media anchoring in the call flows (issue 16, :mod:`sipguard.b2bua.media`): every SDP
through the relay before it crosses, the session deleted at every end, the relay down
(``when_down``), ``Privacy: session`` and the media timeout. In memory, with a fake clock
and the in-memory rtpengine of :mod:`testkit.fake_rtpengine` behind sipguard's real ng
client (its datagrams, cookies and retransmissions).
"""

from __future__ import annotations

import gc
import logging

import pytest

from sipguard.b2bua import outgoing as outgoing_module
from sipguard.metrics import Metrics
from sipguard.sip.message import Request, Response
from testkit.callsim import (
    CALLER,
    PSAP,
    SDP,
    SDP_CALLEE,
    Wire,
    callee_request,
    cancel_of,
    config_text,
    establish,
    in_dialog,
    invite,
    requests,
    response_to,
    responses,
)
from testkit.fake_rtpengine import CONTROL_CONFIG, RELAY_IP, FakeRtpengine
from testkit.metrics import sample

CALLER_IP = "127.0.0.3"
CALLEE_IP = "127.0.0.2"
ICE_SDP = SDP + b"a=ice-ufrag:F7gI\r\na=candidate:1 1 UDP 2130706431 127.0.0.3 6000 typ host\r\n"


def policy(
    customers_media: str = "anchor",
    pbx_media: str = "pass",
    when_down: str | None = "refuse",
    media_timeout: str = "",
) -> str:
    relay = ""
    if when_down is not None:
        relay = CONTROL_CONFIG % when_down
    return f"""
listen:
  - {{transport: udp, address: 127.0.0.1, port: 5060}}
metrics: null
identity_domain: sip.example.net
cdr: {{sink: file, path: var/test-cdr}}
{relay}{media_timeout}
trunks:
  customers:
    sources: [127.0.0.3/32]
    route_to: pbx
    emergency_route_to: psap
    media: {customers_media}
    allowed_cli: ["+3120123*"]
    default_cli: "+31201234000"
    numbering: {{country_code: "31", national_prefix: "0", international_prefix: "00"}}
  pbx:
    sources: [127.0.0.2/32]
    trusted: true
    media: {pbx_media}
    targets: ["sip:127.0.0.2:5080"]
    route_to: customers
  psap:
    sources: [127.0.0.5/32]
    trusted: true
    targets: ["sip:127.0.0.5:5080"]
    route_to: customers
"""


def wire(relay: FakeRtpengine | None = None, **kwargs: str | None) -> Wire:
    return Wire(
        config_text(policy(**kwargs)),  # type: ignore[arg-type]
        relay=relay if relay is not None else FakeRtpengine(),
        metrics=Metrics(),
    )


def fake(w: Wire) -> FakeRtpengine:
    assert w.relay is not None
    return w.relay


def commands(w: Wire) -> list[str]:
    return [str(c["command"]) for c in fake(w).commands if c["command"] != "ping"]


def assert_hidden(msgs: list[Request | Response], ip: str) -> None:
    """No byte of these messages names ``ip``, and their SDP names the relay."""
    assert msgs
    for msg in msgs:
        data = msg.to_bytes()
        assert ip.encode() not in data, data.decode(errors="replace")
        if msg.body:
            assert f"c=IN IP4 {RELAY_IP}".encode() in msg.body
            assert b"candidate" not in msg.body and b"ice-" not in msg.body


def ended(w: Wire) -> str:
    return w.core.cdr_out[-1].end_reason


# -- the offer and the answer -----------------------------------------------------------


def test_an_anchored_call_hides_each_side_s_media_address_from_the_other() -> None:
    w = wire()
    w.from_caller(invite(1, body=ICE_SDP))
    to_callee = w.take_callee()
    (b_inv,) = requests(to_callee, "INVITE")
    assert_hidden(to_callee, CALLER_IP)
    (offer,) = fake(w).named("offer")
    session = offer["call-id"]
    # sipguard's own names: neither leg's Call-ID; the caller's side is "a"
    assert session not in (b_inv.call_id, "1-sim@127.0.0.3") and offer["from-tag"] == "a"
    assert offer["replace"] == ["origin", "session-connection"] and offer["ICE"] == "remove"
    w.from_callee(response_to(b_inv, 180, "Ringing", "callee1"))
    w.from_callee(response_to(b_inv, 200, "OK", "callee1", SDP_CALLEE))
    to_caller = w.take_caller()
    assert [m.status for m in responses(to_caller)] == [100, 180, 200]
    assert_hidden(to_caller, CALLEE_IP)
    (answer,) = fake(w).named("answer")
    assert (answer["from-tag"], answer["to-tag"], answer["call-id"]) == ("a", "b", session)
    ok = responses(to_caller, 200)[0]
    w.from_caller(in_dialog("ACK", ok, 1, 1, "z9hG4bK-1-ack"))
    w.from_caller(in_dialog("BYE", ok, 2, 1, "z9hG4bK-1-bye"))
    assert commands(w) == ["offer", "answer", "delete"]
    assert fake(w).calls == {}
    assert ended(w) == "caller_bye"


def test_two_media_pass_trunks_never_touch_the_relay() -> None:
    w = wire(customers_media="pass")
    e = establish(w, 1)
    assert SDP in e.b_invite.body
    w.from_caller(in_dialog("BYE", e.a_ok, 2, 1, "z9hG4bK-bye"))
    assert commands(w) == []


def test_the_callee_s_trunk_asking_for_anchoring_is_enough() -> None:
    w = wire(customers_media="pass", pbx_media="anchor")
    e = establish(w, 1)
    assert CALLER_IP.encode() not in e.b_invite.to_bytes()
    assert commands(w) == ["offer", "answer"]


def test_steps_keep_their_order_while_the_relay_answers_late() -> None:
    relay = FakeRtpengine(hold=True)
    w = wire(relay)
    w.from_caller(invite(1))
    assert requests(w.take_callee(), "INVITE") == []  # the INVITE waits for the relay
    w.relay_replies()
    (b_inv,) = requests(w.take_callee(), "INVITE")
    w.from_callee(response_to(b_inv, 183, "Session Progress", "c1", SDP_CALLEE))
    w.from_callee(response_to(b_inv, 180, "Ringing", "c1"))  # no SDP, yet behind the 183
    assert [m.status for m in responses(w.take_caller())] == [100]
    w.relay_replies()
    got = responses(w.take_caller())
    assert [m.status for m in got] == [183, 180]
    assert_hidden(got, CALLEE_IP)


def test_an_early_offer_in_a_reliable_183_is_anchored() -> None:
    w = wire()
    w.from_caller(invite(1, headers="Supported: 100rel\r\n"))
    (b_inv,) = requests(w.take_callee(), "INVITE")
    w.from_callee(response_to(b_inv, 183, "Session Progress", "c1", SDP_CALLEE))
    (p183,) = responses(w.take_caller(), 183)
    assert "100rel" in p183.tokens("require")
    assert_hidden([p183], CALLEE_IP)


def test_a_late_offer_in_the_2xx_and_its_answer_in_the_ack_are_anchored() -> None:
    w = wire()
    w.from_caller(invite(1, body=b""))
    (b_inv,) = requests(w.take_callee(), "INVITE")
    assert not b_inv.body and commands(w) == []
    w.from_callee(response_to(b_inv, 200, "OK", "c1", SDP_CALLEE))
    (ok,) = responses(w.take_caller(), 200)
    assert_hidden([ok], CALLEE_IP)
    (offer,) = fake(w).named("offer")
    assert offer["from-tag"] == "b"
    w.from_caller(in_dialog("ACK", ok, 1, 1, "z9hG4bK-ack", SDP))
    (ack,) = requests(w.take_callee(), "ACK")
    assert_hidden([ack], CALLER_IP)
    (answer,) = fake(w).named("answer")
    assert (answer["from-tag"], answer["to-tag"]) == ("b", "a")


def test_an_offer_in_a_reliable_183_and_its_answer_in_the_prack_are_anchored() -> None:
    """Late offer with 100rel (RFC 3262 §5): the callee offers in its reliable 183, the
    caller answers in its PRACK, which reaches the callee as our PRACK, anchored."""
    w = wire()
    w.from_caller(invite(1, body=b"", headers="Supported: 100rel\r\n"))
    (b_inv,) = requests(w.take_callee(), "INVITE")
    rel = "Require: 100rel\r\nRSeq: 7\r\n"
    w.from_callee(response_to(b_inv, 183, "Session Progress", "c1", SDP_CALLEE, extra=rel))
    (p183,) = responses(w.take_caller(), 183)
    assert_hidden([p183], CALLEE_IP)
    assert requests(w.take_callee(), "PRACK") == []  # waits for the caller's answer
    w.from_callee(response_to(b_inv, 183, "Session Progress", "c1", SDP_CALLEE, extra=rel))
    assert requests(w.take_callee(), "PRACK") == []  # a retransmission: still waiting
    rack = f"RAck: {p183.get('rseq')} 1 INVITE\r\n"
    w.from_caller(in_dialog("PRACK", p183, 2, 1, "z9hG4bK-prack", SDP, extra=rack))
    (prack,) = requests(w.take_callee(), "PRACK")
    assert prack.get("rack") == "7 1 INVITE"
    assert_hidden([prack], CALLER_IP)
    offer, answer = fake(w).named("offer")[0], fake(w).named("answer")[0]
    assert offer["from-tag"] == "b" and (answer["from-tag"], answer["to-tag"]) == ("b", "a")
    w.from_callee(response_to(b_inv, 200, "OK", "c1", SDP_CALLEE))
    (ok,) = [r for r in responses(w.take_caller(), 200) if r.cseq.method == "INVITE"]
    assert_hidden([ok], CALLEE_IP)
    w.from_caller(in_dialog("ACK", ok, 1, 1, "z9hG4bK-ack"))
    (ack,) = requests(w.take_callee(), "ACK")
    assert not ack.body


# -- re-INVITE and UPDATE -----------------------------------------------------------------


def test_a_reinvite_of_the_caller_is_anchored_both_ways() -> None:
    w = wire()
    e = establish(w, 1)
    w.from_caller(in_dialog("INVITE", e.a_ok, 2, 1, "z9hG4bK-re", SDP.replace(b"6000", b"6002")))
    (re,) = requests(w.take_callee(), "INVITE")
    assert_hidden([re], CALLER_IP)
    w.from_callee(response_to(re, 200, "OK", None, SDP_CALLEE))
    (ok,) = responses(w.take_caller(), 200)
    assert_hidden([ok], CALLEE_IP)
    offer = fake(w).named("offer")[-1]
    assert (offer["from-tag"], offer["to-tag"]) == ("a", "b")


def test_a_reinvite_of_the_callee_is_anchored_both_ways() -> None:
    w = wire()
    e = establish(w, 1)
    w.from_callee(callee_request("INVITE", e.b_invite, e.callee_tag, 1, 1, SDP_CALLEE))
    (re,) = requests(w.take_caller(), "INVITE")
    assert_hidden([re], CALLEE_IP)
    w.from_caller(response_to(re, 200, "OK", None, SDP, contact=CALLER))
    (ok,) = responses(w.take_callee(), 200)
    assert_hidden([ok], CALLER_IP)
    offer = fake(w).named("offer")[-1]
    answer = fake(w).named("answer")[-1]
    assert (offer["from-tag"], offer["to-tag"]) == ("b", "a")
    assert (answer["from-tag"], answer["to-tag"]) == ("b", "a")


def test_an_offerless_reinvite_gets_its_offer_in_the_2xx_and_answer_in_the_ack() -> None:
    w = wire()
    e = establish(w, 1)
    w.from_callee(callee_request("INVITE", e.b_invite, e.callee_tag, 1, 1))
    (re,) = requests(w.take_caller(), "INVITE")
    assert not re.body
    w.from_caller(response_to(re, 200, "OK", None, SDP, contact=CALLER))
    (ok,) = responses(w.take_callee(), 200)
    assert_hidden([ok], CALLER_IP)
    w.from_callee(callee_request("ACK", e.b_invite, e.callee_tag, 1, 1, SDP_CALLEE))
    (ack,) = requests(w.take_caller(), "ACK")
    assert_hidden([ack], CALLEE_IP)
    assert fake(w).named("answer")[-1]["from-tag"] == "a"


def test_an_answer_in_an_ack_without_content_type_is_anchored_too() -> None:
    """SIPp's ACK to an offerless re-INVITE carries its SDP with no Content-Type."""
    w = wire()
    e = establish(w, 1)
    w.from_caller(in_dialog("INVITE", e.a_ok, 2, 1, "z9hG4bK-re"))
    (re,) = requests(w.take_callee(), "INVITE")
    w.from_callee(response_to(re, 200, "OK", None, SDP_CALLEE))
    (ok,) = responses(w.take_caller(), 200)
    assert_hidden([ok], CALLEE_IP)
    ack = in_dialog("ACK", ok, 2, 1, "z9hG4bK-re-ack", SDP)
    w.from_caller(ack.replace(b"Content-Type: application/sdp\r\n", b""))
    (b_ack,) = requests(w.take_callee(), "ACK")
    assert_hidden([b_ack], CALLER_IP)


def test_an_update_with_an_offer_is_anchored_both_ways() -> None:
    w = wire()
    e = establish(w, 1)
    w.from_caller(in_dialog("UPDATE", e.a_ok, 2, 1, "z9hG4bK-up", SDP))
    (up,) = requests(w.take_callee(), "UPDATE")
    assert_hidden([up], CALLER_IP)
    w.from_callee(response_to(up, 200, "OK", None, SDP_CALLEE))
    (ok,) = responses(w.take_caller(), 200)
    assert_hidden([ok], CALLEE_IP)


def test_an_offer_at_the_relay_makes_a_crossing_offer_glare() -> None:
    relay = FakeRtpengine()
    w = wire(relay)
    e = establish(w, 1)
    relay.hold = True
    w.from_caller(in_dialog("INVITE", e.a_ok, 2, 1, "z9hG4bK-re", SDP))
    w.from_callee(callee_request("INVITE", e.b_invite, e.callee_tag, 1, 1, SDP_CALLEE))
    assert [m.status for m in responses(w.take_callee())] == [491]
    relay.hold = False
    w.relay_replies()
    (re,) = requests(w.take_callee(), "INVITE")
    assert_hidden([re], CALLER_IP)


def test_a_call_ended_while_its_reinvite_offer_is_at_the_relay_answers_it_487() -> None:
    relay = FakeRtpengine()
    w = wire(relay)
    e = establish(w, 1)
    relay.hold = True
    w.from_caller(in_dialog("INVITE", e.a_ok, 2, 1, "z9hG4bK-re", SDP))
    w.from_callee(callee_request("BYE", e.b_invite, e.callee_tag, 1, 1))
    statuses = [m.status for m in responses(w.take_caller())]
    assert 487 in statuses
    relay.hold = False
    w.relay_replies()  # the late answer to the offer: not resumed, only a delete
    assert requests(w.take_callee(), "INVITE") == []
    assert commands(w)[-1] == "delete" and relay.calls == {}


def test_a_call_ended_while_a_reinvite_answer_is_at_the_relay_answers_it_487() -> None:
    relay = FakeRtpengine()
    w = wire(relay)
    e = establish(w, 1)
    w.from_caller(in_dialog("INVITE", e.a_ok, 2, 1, "z9hG4bK-re", SDP))
    (re,) = requests(w.take_callee(), "INVITE")
    relay.hold = True
    w.from_callee(response_to(re, 200, "OK", None, SDP_CALLEE))
    w.from_callee(callee_request("BYE", e.b_invite, e.callee_tag, 2, 1))
    finals = [m for m in responses(w.take_caller()) if m.cseq.method == "INVITE"]
    assert [m.status for m in finals] == [100, 487]  # never left without a final response
    relay.hold = False
    w.relay_replies()
    assert responses(w.take_caller(), 200) == []


# -- the end of a call deletes its session ------------------------------------------------


def test_the_callee_s_bye_deletes_the_session() -> None:
    w = wire()
    e = establish(w, 1)
    w.from_callee(callee_request("BYE", e.b_invite, e.callee_tag, 1, 1))
    assert commands(w)[-1] == "delete" and fake(w).calls == {}


def test_a_failed_call_deletes_the_session() -> None:
    w = wire()
    w.from_caller(invite(1))
    (b_inv,) = requests(w.take_callee(), "INVITE")
    w.from_callee(response_to(b_inv, 486, "Busy Here", "c1"))
    assert responses(w.take_caller(), 486)
    assert commands(w) == ["offer", "delete"]


def test_a_cancel_while_the_offer_is_at_the_relay_sends_no_invite_and_deletes_late() -> None:
    relay = FakeRtpengine(hold=True)
    w = wire(relay)
    w.from_caller(invite(1))
    w.from_caller(cancel_of(1))
    assert 487 in [m.status for m in responses(w.take_caller())]
    assert ended(w) == "cancel"
    relay.hold = False
    w.relay_replies()  # the offer's late reply: never resumed, the session deleted
    assert requests(w.take_callee(), "INVITE") == []
    assert commands(w) == ["offer", "delete"] and relay.calls == {}


def test_a_cancelled_call_deletes_the_session() -> None:
    w = wire()
    w.from_caller(invite(1))
    (b_inv,) = requests(w.take_callee(), "INVITE")
    w.from_callee(response_to(b_inv, 180, "Ringing", "c1"))
    w.from_caller(cancel_of(1))
    assert commands(w) == ["offer", "delete"]


def test_shutdown_deletes_every_session() -> None:
    w = wire()
    establish(w, 1)
    establish(w, 2)
    w.core.shutdown(w.now)
    w.flush()
    assert commands(w).count("delete") == 2 and fake(w).calls == {}


# -- the relay down (when_down) -----------------------------------------------------------


def test_when_down_refuse_answers_503_without_retry_after() -> None:
    w = wire(FakeRtpengine(down=True))
    w.from_caller(invite(1))
    w.advance(2)  # the ng client gives up on the relay: the call fails
    refused = responses(w.take_caller(), 503)[0]
    assert refused.get("retry-after") is None
    assert requests(w.take_callee(), "INVITE") == []
    assert ended(w) == "rejected"
    # the relay is known down now: the next call is refused at once, statelessly
    w.from_caller(invite(2))
    (refused,) = responses(w.take_caller(), 503)
    assert refused.get("retry-after") is None
    assert sample(w.metrics, "sipguard_rejected_total", reason="media_down") == 1


def test_when_down_pass_carries_the_call_unanchored_counted_and_logged(
    caplog: pytest.LogCaptureFixture,
) -> None:
    w = wire(FakeRtpengine(down=True), when_down="pass")
    withheld = invite(1, user="%2331%230201234567")
    with caplog.at_level(logging.INFO, logger="sipguard.b2bua"):
        w.from_caller(withheld)
        w.advance(5)
    b_inv = requests(w.take_callee(), "INVITE")[0]
    assert b"c=IN IP4 127.0.0.3" in b_inv.body  # unanchored
    assert sample(w.metrics, "sipguard_media_unanchored_total") == 1
    assert "media address was not hidden" in caplog.text
    # known down: the next call goes unanchored at once
    w.from_caller(invite(2))
    assert requests(w.take_callee(), "INVITE")
    assert sample(w.metrics, "sipguard_media_unanchored_total") == 2


def test_an_emergency_call_goes_through_unanchored_with_the_relay_down() -> None:
    w = wire(FakeRtpengine(down=True))
    w.from_caller(invite(1, user="112"))
    w.advance(5)
    b_inv = requests(w.take(PSAP), "INVITE")[0]
    assert SDP in b_inv.body
    # and anchored when the relay is up
    w2 = wire()
    w2.from_caller(invite(1, user="112"))
    (b_inv,) = requests(w2.take(PSAP), "INVITE")
    assert_hidden([b_inv], CALLER_IP)


def test_a_relay_error_on_the_answer_ends_a_call_that_must_be_anchored() -> None:
    relay = FakeRtpengine()
    w = wire(relay)
    w.from_caller(invite(1))
    (b_inv,) = requests(w.take_callee(), "INVITE")
    relay.fail = True
    w.from_callee(response_to(b_inv, 200, "OK", "c1", SDP_CALLEE))
    to_caller = w.take_caller()
    # SPEC §5 when_down: refuse is 503, whether the relay fails the offer or the answer
    assert [m.status for m in responses(to_caller)][-1] == 503
    assert all(CALLEE_IP.encode() not in m.to_bytes() for m in to_caller)
    assert requests(w.take_callee(), "BYE")


# -- Privacy: session ---------------------------------------------------------------------


def test_privacy_session_critical_is_granted_by_anchoring_on_demand() -> None:
    w = wire(customers_media="pass")
    w.from_caller(invite(1, headers="Privacy: session;critical\r\n"))
    (b_inv,) = requests(w.take_callee(), "INVITE")
    assert_hidden([b_inv], CALLER_IP)


def test_privacy_session_critical_is_refused_500_without_a_relay() -> None:
    w = wire(customers_media="pass", when_down=None)
    w.from_caller(invite(1, headers="Privacy: session;critical\r\n"))
    (refused,) = responses(w.take_caller(), 500)
    assert refused.reason == "Privacy Unavailable: session"


def test_privacy_session_critical_is_refused_500_with_the_relay_down() -> None:
    w = wire(FakeRtpengine(down=True), customers_media="pass")
    w.from_caller(invite(1, headers="Privacy: session;critical\r\n"))
    w.advance(5)  # the offer fails: 500, never unanchored
    assert [m.status for m in responses(w.take_caller())][-1] == 500
    assert requests(w.take_callee(), "INVITE") == []
    w.from_caller(invite(2, headers="Privacy: session;critical\r\n"))
    (refused,) = responses(w.take_caller(), 500)
    assert refused.reason == "Privacy Unavailable: session"


def test_privacy_session_without_critical_goes_on_unanchored_with_the_relay_down() -> None:
    w = wire(FakeRtpengine(down=True), customers_media="pass")
    w.from_caller(invite(1, headers="Privacy: session\r\n"))
    w.advance(5)
    b_inv = requests(w.take_callee(), "INVITE")[0]
    assert SDP in b_inv.body


# -- media timeout ------------------------------------------------------------------------


def test_a_call_whose_media_stopped_is_ended_with_bye_on_both_legs() -> None:
    relay = FakeRtpengine()
    w = wire(relay)
    e = establish(w, 1)
    (session,) = relay.calls
    for _ in range(4):  # RTP flows: the count moves at every query
        relay.packets[session] = relay.packets.get(session, 0) + 1500
        w.advance(30)
    assert w.core.calls == 1
    assert w.take_caller() == [] and w.take_callee() == []
    w.advance(60)  # nothing relayed for a whole timeout
    assert requests(w.take_caller(), "BYE") and requests(w.take_callee(), "BYE")
    assert ended(w) == "media_timeout" and w.core.calls == 0
    assert relay.calls == {}
    assert e.n == 1


def test_a_session_rtpengine_no_longer_knows_ends_the_call() -> None:
    relay = FakeRtpengine()
    w = wire(relay)
    establish(w, 1)
    relay.calls.clear()  # rtpengine's own timeout, or a restart
    w.advance(30)
    assert ended(w) == "media_timeout"


def test_a_query_without_reply_ends_nothing() -> None:
    relay = FakeRtpengine()
    w = wire(relay)
    establish(w, 1)
    (session,) = relay.calls
    relay.packets[session] = 10
    relay.down = True
    w.advance(200)
    assert w.core.calls == 1


# -- no reference cycles (the collector is off in production: net/server.tune_gc) --------


def test_anchored_calls_leave_no_reference_cycle() -> None:
    relay = FakeRtpengine()
    w = wire(relay)

    def flows(n: int) -> None:
        e = establish(w, n)  # answered, re-INVITE anchored, BYE
        w.from_caller(in_dialog("INVITE", e.a_ok, 2, n, f"z9hG4bK-re{n}", SDP))
        (re,) = requests(w.take_callee(), "INVITE")
        w.from_callee(response_to(re, 200, "OK", None, SDP_CALLEE))
        (ok,) = responses(w.take_caller(), 200)
        w.from_caller(in_dialog("ACK", ok, 2, n, f"z9hG4bK-re-ack{n}"))
        w.from_caller(in_dialog("BYE", e.a_ok, 3, n, f"z9hG4bK-bye{n}"))
        relay.hold = True  # cancelled while its offer is at the relay
        w.from_caller(invite(n + 1000))
        w.from_caller(cancel_of(n + 1000))
        relay.hold = False
        w.relay_replies()
        w.take_caller()
        w.take_callee()
        establish(w, n + 2000)  # ended by the media timeout
        w.advance(61)

    flows(1)
    w.advance(64 * 0.5 + 60)
    gc.collect()
    gc.disable()
    try:
        for n in range(2, 12):
            flows(n)
        w.advance(64 * 0.5 + 60)
        w.take_caller()
        w.take_callee()
        found = gc.collect()
    finally:
        gc.enable()
    assert w.core.calls == 0 and relay.calls == {}
    assert found == 0


# -- review findings --------------------------------------------------------------------


def test_an_sdp_in_a_failure_response_never_crosses_an_anchored_call() -> None:
    w = wire()
    w.from_caller(invite(1))
    (b_inv,) = requests(w.take_callee(), "INVITE")
    w.from_callee(response_to(b_inv, 488, "Not Acceptable Here", "t1", SDP_CALLEE))
    (r,) = responses(w.take_caller(), 488)
    assert r.body == b"" and r.get("content-type") is None
    assert CALLEE_IP.encode() not in r.to_bytes()


def test_the_caller_s_failure_sdp_to_a_re_invite_never_crosses_an_anchored_call() -> None:
    w = wire()
    e = establish(w, 1)
    w.from_callee(callee_request("INVITE", e.b_invite, e.callee_tag, 2, 1, SDP_CALLEE))
    (a_reinv,) = requests(w.take_caller(), "INVITE")
    w.from_caller(response_to(a_reinv, 488, "Not Acceptable Here", None, SDP))
    (r,) = responses(w.take_callee(), 488)
    assert r.body == b"" and r.get("content-type") is None
    assert CALLER_IP.encode() not in r.to_bytes()


def many_streams(n: int) -> bytes:
    return SDP + b"".join(b"m=audio %d RTP/AVP 0\r\n" % (7000 + 2 * i) for i in range(n))


def test_an_anchored_offer_with_too_many_streams_is_refused_488() -> None:
    w = wire()
    w.from_caller(invite(1, body=many_streams(8)))
    assert [m.status for m in responses(w.take_caller())] == [100, 488]
    assert requests(w.take_callee(), "INVITE") == []
    assert commands(w) == []
    assert ended(w) == "rejected"


def test_a_re_invite_with_too_many_streams_is_refused_488() -> None:
    w = wire()
    e = establish(w, 1)
    w.from_callee(callee_request("INVITE", e.b_invite, e.callee_tag, 2, 1, many_streams(8)))
    assert [m.status for m in responses(w.take_callee())][-1] == 488
    assert requests(w.take_caller(), "INVITE") == []
    assert commands(w) == ["offer", "answer"]
    # the call goes on: the next offer is relayed
    w.from_callee(callee_request("INVITE", e.b_invite, e.callee_tag, 3, 1, SDP_CALLEE))
    assert len(requests(w.take_caller(), "INVITE")) == 1


@pytest.mark.skipif(
    not (outgoing_module.__file__ or "").endswith(".py"),
    reason="compiled (mypyc): a compiled class's methods cannot be replaced",
)
def test_a_bug_in_a_step_resumed_by_the_relay_s_reply_ends_the_call(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    from sipguard.b2bua.outgoing import Outgoing

    relay = FakeRtpengine(hold=True)
    w = wire(relay)
    w.from_caller(invite(1))

    def broken(self: Outgoing, call: object, now: float) -> None:
        raise RuntimeError("bug")

    monkeypatch.setattr(Outgoing, "send", broken)
    with caplog.at_level(logging.ERROR, "sipguard.b2bua"):
        w.relay_replies()
    assert "internal error" in caplog.text
    assert [m.status for m in responses(w.take_caller())] == [100, 500]
    assert ended(w) == "rejected"
    relay.hold = False
    w.relay_replies()
    w.flush()
    assert commands(w) == ["offer", "delete"]


def untrusted_pbx(relay: FakeRtpengine, when_down: str = "pass") -> Wire:
    text = policy(when_down=when_down).replace(
        "    sources: [127.0.0.2/32]\n    trusted: true\n",
        "    sources: [127.0.0.2/32]\n    trusted: false\n",
    )
    assert "trusted: false" in text
    return Wire(config_text(text), relay=relay, metrics=Metrics())  # type: ignore[arg-type]


def test_when_down_pass_carries_a_withheld_call_on_unanchored_when_the_relay_fails() -> None:
    relay = FakeRtpengine()
    w = untrusted_pbx(relay)
    w.advance(1)
    relay.down = True  # after admission: the first offer gets no reply
    w.from_caller(invite(1, headers="Privacy: id\r\n"))
    w.advance(3)
    b_inv = requests(w.take_callee(), "INVITE")[0]  # and its retransmissions
    assert CALLER_IP.encode() in b_inv.body  # when_down: pass, by the operator's choice
    assert not any(r.end_reason for r in w.core.cdr_out)  # not ended as a leak
    w.from_callee(response_to(b_inv, 200, "OK", "c1", SDP_CALLEE))
    assert [m.status for m in responses(w.take_caller())][-1] == 200


def test_when_down_pass_goes_on_unanchored_when_the_relay_fails_mid_call() -> None:
    relay = FakeRtpengine()
    w = untrusted_pbx(relay)
    e = establish(w, 1, data=invite(1, headers="Privacy: id\r\n"))
    relay.down = True
    w.from_caller(in_dialog("INVITE", e.a_ok, 2, 1, "z9hG4bK-re", SDP))
    w.advance(3)
    re_inv = requests(w.take_callee(), "INVITE")[0]  # and its retransmissions
    assert CALLER_IP.encode() in re_inv.body
    assert not any(r.end_reason for r in w.core.cdr_out)  # not ended as a leak


PIDF = b'<?xml version="1.0"?><presence xmlns="urn:ietf:params:xml:ns:pidf" entity="pres:x@y"/>'


def multipart(sdp: bytes = SDP, boundary: bytes = b"b1") -> bytes:
    d = b"--" + boundary
    return (
        d + b"\r\nContent-Type: application/sdp\r\n\r\n" + sdp + b"\r\n" + d
        + b"\r\nContent-Type: application/pidf+xml\r\nContent-ID: <loc@x>\r\n\r\n" + PIDF
        + b"\r\n" + d + b"--\r\n"
    )  # fmt: skip


def mp_invite(
    n: int,
    user: str = "0201234567",
    ctype: bytes = b"multipart/mixed;boundary=b1",
    body: bytes = b"",
) -> bytes:
    data = invite(n, user, body=body or multipart())
    return data.replace(
        b"Content-Type: application/sdp\r\n", b"Content-Type: " + ctype + b"\r\n", 1
    )


def test_the_sdp_part_of_a_multipart_offer_is_anchored_in_place() -> None:
    w = wire()
    w.from_caller(mp_invite(1, "112"))
    (b_inv,) = requests(w.take(PSAP), "INVITE")
    assert CALLER_IP.encode() not in b_inv.body
    assert f"c=IN IP4 {RELAY_IP}".encode() in b_inv.body
    assert PIDF in b_inv.body  # the location part kept, towards the emergency trunk
    assert b_inv.body.startswith(b"--b1\r\nContent-Type: application/sdp\r\n\r\nv=0")
    assert b_inv.body.endswith(b"\r\n--b1--\r\n")
    assert "multipart/mixed" in (b_inv.get("content-type") or "")
    (offer,) = fake(w).named("offer")
    sent = offer["sdp"]
    assert isinstance(sent, bytes | str) and "b1" not in str(sent) and "pidf" not in str(sent)


def test_a_nested_multipart_offer_is_anchored() -> None:
    inner = multipart(boundary=b"in")
    body = (
        b"--out\r\nContent-Type: multipart/alternative; boundary=\"in\"\r\n\r\n" + inner
        + b"\r\n--out--\r\n"
    )  # fmt: skip
    w = wire()
    w.from_caller(mp_invite(1, ctype=b"multipart/mixed; boundary=out", body=body))
    (b_inv,) = requests(w.take_callee(), "INVITE")
    assert CALLER_IP.encode() not in b_inv.body
    assert f"c=IN IP4 {RELAY_IP}".encode() in b_inv.body
    assert commands(w) == ["offer"]


def test_a_multipart_offer_not_understood_is_refused_488() -> None:
    w = wire()
    w.from_caller(mp_invite(1, ctype=b"multipart/mixed"))  # no boundary
    assert [m.status for m in responses(w.take_caller())] == [100, 488]
    assert requests(w.take_callee(), "INVITE") == []


def test_a_multipart_re_invite_not_understood_never_crosses_as_it_is() -> None:
    w = wire()
    e = establish(w, 1)
    reinv = in_dialog("INVITE", e.a_ok, 2, 1, "z9hG4bK-re", multipart())
    reinv = reinv.replace(
        b"Content-Type: application/sdp\r\n", b"Content-Type: multipart/mixed\r\n", 1
    )
    w.from_caller(reinv)
    (b_re,) = requests(w.take_callee(), "INVITE")
    assert CALLER_IP.encode() not in b_re.to_bytes()
    assert b_re.body == b"" and b_re.get("content-type") is None


def test_queries_without_reply_do_not_count_towards_the_media_timeout() -> None:
    relay = FakeRtpengine()
    w = wire(relay)
    establish(w, 1)
    (session,) = relay.calls
    for _ in range(2):  # RTP flows
        relay.packets[session] = relay.packets.get(session, 0) + 1500
        w.advance(30)
    # the relay is slow for the next two queries (90 s, 121.5 s); RTP still flows
    relay.packets[session] += 1500
    w.advance(25)
    relay.down = True
    w.advance(5 + 1.5)
    relay.down = False  # the pings find it again
    w.advance(25)
    relay.down = True
    w.advance(5 + 1.5)
    relay.down = False
    assert w.core.calls == 1
    w.advance(30)
    assert w.core.calls == 1
    assert commands(w)[-1] == "query"


def test_ack_retransmissions_send_one_answer() -> None:
    relay = FakeRtpengine()
    w = wire(relay)
    w.from_caller(invite(1, body=b""))
    (b_inv,) = requests(w.take_callee(), "INVITE")
    w.from_callee(response_to(b_inv, 200, "OK", "c1", SDP_CALLEE))
    (ok,) = responses(w.take_caller(), 200)
    relay.hold = True
    for i in range(5):
        w.from_caller(in_dialog("ACK", ok, 1, 1, f"z9hG4bK-ack{i}", SDP))
    relay.hold = False
    w.relay_replies()
    assert len(relay.named("answer")) == 1
    assert len(requests(w.take_callee(), "ACK")) == 1


def test_a_flood_of_steps_waiting_for_the_relay_ends_the_call() -> None:
    relay = FakeRtpengine()
    w = wire(relay)
    w.from_caller(invite(1))
    (b_inv,) = requests(w.take_callee(), "INVITE")
    relay.hold = True
    for _ in range(40):  # unreliable 183s, each with its SDP
        w.from_callee(response_to(b_inv, 183, "Session Progress", "c1", SDP_CALLEE))
    assert len(relay.named("answer")) == 1  # one at the relay, the rest queued
    assert ended(w) == "rejected"
    assert responses(w.take_caller())[-1].status == 500
    relay.hold = False
    w.relay_replies()
    assert commands(w) == ["offer", "answer", "delete"]


def test_retransmitted_2xx_to_an_offerless_re_invite_send_one_offer() -> None:
    relay = FakeRtpengine()
    w = wire(relay)
    e = establish(w, 1)
    w.from_caller(in_dialog("INVITE", e.a_ok, 2, 1, "z9hG4bK-re"))
    (b_re,) = requests(w.take_callee(), "INVITE")
    for _ in range(5):
        w.from_callee(response_to(b_re, 200, "OK", e.callee_tag, SDP_CALLEE))
    assert len(relay.named("offer")) == 2  # the call's, and this re-INVITE's once
    oks = responses(w.take_caller(), 200)
    assert oks and len({ok.body for ok in oks}) == 1  # one offer, retransmitted as it is
    w.from_caller(in_dialog("ACK", oks[0], 2, 1, "z9hG4bK-re-ack", SDP))
    assert len(requests(w.take_callee(), "ACK")) == 1
    assert commands(w)[-1] == "answer"


def test_a_late_offer_with_too_many_streams_ends_the_call_before_the_relay() -> None:
    """The callee's offer (a late offer in its 2xx) takes ports per stream like the
    caller's: past MAX_STREAMS it never reaches the relay; the callee's 2xx is ACKed with
    every stream rejected and BYEd, the caller gets 488, and no answered call is billed."""
    w = wire()
    w.from_caller(invite(1, body=b""))
    (b_inv,) = requests(w.take_callee(), "INVITE")
    w.from_callee(response_to(b_inv, 200, "OK", "c1", many_streams(8)))
    assert [m.status for m in responses(w.take_caller())] == [100, 488]
    to_callee = w.take_callee()
    (ack,) = requests(to_callee, "ACK")
    assert ack.body.count(b"m=audio 0 ") == 9  # every offered stream rejected (port 0)
    assert len(requests(to_callee, "BYE")) == 1
    assert commands(w) == []
    records = w.core.cdr_out
    assert [(r.kind, r.end_reason, r.status) for r in records] == [("end", "rejected", 488)]
    assert records[0].answer is None and records[0].duration_ms == 0


def test_an_answer_with_more_streams_than_any_offer_may_have_ends_the_call() -> None:
    """RFC 3264 §6: an answer has exactly the offer's m= lines. A callee answering a
    one-stream offer with 40 streams must not reach rtpengine (ports per stream): the
    MAX_STREAMS cap covers offers only."""
    w = wire()
    w.from_caller(invite(1))
    (b_inv,) = requests(w.take_callee(), "INVITE")
    before = len(commands(w))
    w.from_callee(response_to(b_inv, 200, "OK", "c1", many_streams(40)))
    relayed = [c for c in commands(w)[before:] if c == "answer"]
    assert relayed == [], commands(w)
    assert [m.status for m in responses(w.take_caller())][-1] == 488
    assert len(requests(w.take_callee(), "BYE")) == 1
    assert [(r.kind, r.end_reason) for r in w.core.cdr_out] == [("end", "rejected")]
