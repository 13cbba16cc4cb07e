"""Ending a call through the sans-IO B2BUA: BYE from either side (or lost), the maximum call
duration, what is left afterwards, and the CDRs and metrics a call leaves. In memory,
with a fake clock (:mod:`testkit.callsim`).
"""

from __future__ import annotations

import gc
import sys

import pytest
from prometheus_client import generate_latest

from sipguard.b2bua.call import Call
from sipguard.metrics import Metrics
from sipguard.sip.message import Response
from testkit.callsim import (
    CALLEE,
    CALLER,
    SDP,
    SDP_CALLEE,
    SE_CALLER,
    T1,
    Recorder,
    Wire,
    basic_call,
    callee_request,
    cancel_of,
    default_config,
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

# -- BYE from either side ------------------------------------------------------------------


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


# -- a lost BYE ----------------------------------------------------------------------------


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


# -- maximum call duration -----------------------------------------------------------------


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


# -- memory hygiene ------------------------------------------------------------------------


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


# -- the metrics of calls ------------------------------------------------------------------


def test_the_metrics_count_calls_in_progress_setups_and_results() -> None:
    """SPEC §7 through the core itself: sipguard_active_calls is read at scrape time."""
    metrics = Metrics()
    w = Wire(metrics=metrics)
    assert sample(metrics, "sipguard_active_calls") == 0
    establish(w, 1)
    establish(w, 2)
    assert sample(metrics, "sipguard_active_calls") == 2
    assert sample(metrics, "sipguard_call_setup_seconds_count") == 2
    basic_call(w, 3)
    assert sample(metrics, "sipguard_active_calls") == 2
    w.core.shutdown(w.now)
    w.flush()
    assert sample(metrics, "sipguard_active_calls") == 0
    answered = sample(
        metrics, "sipguard_calls_total", trunk_in="customers", trunk_out="pbx", result="answered"
    )
    assert answered == 3


def test_the_per_call_counters_are_exact_at_every_read() -> None:
    """The core counts calls and decisions in plain integers: every read of the registry
    (a scrape's text, a sample) holds all of them, and reading again adds nothing."""
    metrics = Metrics()
    w = Wire(metrics=metrics)
    labels = {"trunk_in": "customers", "trunk_out": "pbx", "result": "answered"}
    for n in range(1, 4):
        basic_call(w, n)
        for _ in range(2):
            assert sample(metrics, "sipguard_calls_total", **labels) == n
        made = sum(  # every decision, whatever its labels
            s.value
            for family in metrics.registry.collect()
            if family.name == "sipguard_presentation"
            for s in family.samples
            if s.name == "sipguard_presentation_total"
        )
        assert made == n
    text = generate_latest(metrics.registry).decode()
    assert (
        'sipguard_calls_total{result="answered",trunk_in="customers",trunk_out="pbx"} 3.0' in text
    )
