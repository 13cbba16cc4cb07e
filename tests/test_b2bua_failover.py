"""The B-leg's targets (routing): a target that never answers, failover between targets,
targets given up on and probed, failures relayed, redirects followed, and digest
challenges relayed on the same B-leg. In memory, with a fake clock
(:mod:`testkit.callsim`).
"""

from __future__ import annotations

import pytest

from testkit.callsim import (
    CONFIG,
    PEER2,
    SDP_CALLEE,
    T1,
    Wire,
    config_text,
    default_config,
    in_dialog,
    invite,
    requests,
    response_to,
    responses,
    start_call,
)

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


# -- a B-leg that never answers ------------------------------------------------------------


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


def test_a_ringing_target_is_not_abandoned_by_the_target_timeout() -> None:
    w = Wire(config_text(TWO_TARGETS))
    b1 = start_call(w, 1)
    w.from_callee(response_to(b1, 180, "Ringing", "t"))
    w.advance(60)
    assert w.take(PEER2) == []
    assert w.core.calls == 1
    w.from_callee(response_to(b1, 200, "OK", "t", SDP_CALLEE))
    assert len(responses(w.take_caller(), 200)) == 1


# -- failover between targets --------------------------------------------------------------


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


# -- a target given up on ------------------------------------------------------------------


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


# -- digest challenges ---------------------------------------------------------------------


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
