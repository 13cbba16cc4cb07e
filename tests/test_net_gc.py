"""sipguard runs with the cyclic garbage collector off (``net/server.tune_gc``).

That is only sound if no call, message or refusal leaves a reference cycle behind:
everything must be freed by reference counting alone. These tests run whole call flows
with the collector off and then ask it what it would have found; the answer must be 0.
They also check the guard that collects when objects pile up all the same.
"""

from __future__ import annotations

import gc
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import pytest

from sipguard.metrics import Metrics
from sipguard.net.server import GC_OBJECTS_PER_ITEM, GcGuard
from testkit.callsim import (
    CALLER,
    SDP_CALLEE,
    STRANGER,
    Wire,
    basic_call,
    default_config,
    establish,
    in_dialog,
    invite,
    requests,
    response_to,
    responses,
)
from testkit.metrics import sample

T1 = 0.5


@contextmanager
def collector_off() -> Iterator[None]:
    was = gc.isenabled()
    gc.collect()
    gc.disable()
    try:
        yield
    finally:
        if was:
            gc.enable()


def unreachable_after(flow: Callable[[Wire], None], calls: int = 20) -> int:
    """Run ``flow`` ``calls`` times with the collector off: what a collection then finds.

    The B2BUA itself (made once per process) may hold cycles; it stays alive throughout,
    and one flow runs before the count starts (first-use caches).
    """
    w = Wire(config=default_config("limits: {max_calls: 5}\n"))
    _run(flow, w, 0)
    w.advance(64 * T1 + 60)
    with collector_off():
        for n in range(1, calls + 1):
            w.now += 0.01
            _run(flow, w, n)
        w.advance(64 * T1 + 60)  # every transaction ends, every timer fires
        w.take_caller()
        w.take_callee()
        w.others.clear()
        found = gc.collect()
    assert w.core.layer.server == {}
    # what may still run: the OPTIONS probe of a target that stopped answering
    assert {tx.request.method for tx in w.core.layer.client.values()} <= {"OPTIONS"}
    return found


_counter = [0]


def _run(flow: Callable[[Wire], None], w: Wire, n: int) -> None:
    _counter[0] = n
    flow(w)


def _n() -> int:
    return 10_000 + _counter[0]


def whole_call(w: Wire) -> None:
    basic_call(w, _n())


def cancelled_call(w: Wire) -> None:
    n = _n()
    w.from_caller(invite(n))
    (b_inv,) = requests(w.take_callee(), "INVITE")
    w.from_callee(response_to(b_inv, 180, "Ringing", f"t{n}"))
    text = (
        f"CANCEL sip:0201234567@127.0.0.1:5060 SIP/2.0\r\n"
        f"Via: SIP/2.0/UDP {CALLER[0]}:{CALLER[1]};branch=z9hG4bK-{n}-1-0\r\n"
        f"From: sipp <sip:+31201234567@{CALLER[0]}:{CALLER[1]}>;tag={n}SIPpTag001\r\n"
        f"To: <sip:0201234567@127.0.0.1:5060>\r\n"
        f"Call-ID: {n}-sim@{CALLER[0]}\r\nCSeq: 1 CANCEL\r\nMax-Forwards: 70\r\n"
        "Content-Length: 0\r\n\r\n"
    )
    w.from_caller(text.encode())
    for m in requests(w.take_callee(), "CANCEL"):
        w.from_callee(response_to(m, 200, "OK", None))
    w.from_callee(response_to(b_inv, 487, "Request Terminated", f"t{n}"))
    (final,) = responses(w.take_caller(), 487)
    ack = in_dialog("ACK", final, 1, n, f"z9hG4bK-{n}-1-0")
    w.from_caller(ack)
    w.take_callee()


def refused_calls(w: Wire) -> None:
    n = _n()
    w.from_peer(STRANGER, invite(n, addr=STRANGER))  # no trunk: 403
    w.others.clear()
    w.from_caller(invite(n, user="0201234567", from_user="+4930999"))  # CLI not allowed
    w.from_caller(b"INVITE sip:x SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.3:5062\r\n\r\n")  # 400
    w.from_caller(b"\x00\xffgarbage\r\n\r\n")  # dropped
    w.take_caller()
    for m in requests(w.take_callee(), "INVITE"):
        w.from_callee(response_to(m, 503, "Service Unavailable", "x"))
    w.take_caller()


def call_with_reinvite_and_timeout(w: Wire) -> None:
    n = _n()
    e = establish(w, n, invite(n, headers="Session-Expires: 90\r\nSupported: timer\r\n"))
    w.from_caller(in_dialog("INVITE", e.a_ok, 2, n, f"z9hG4bK-re-{n}", SDP_CALLEE))
    (re,) = requests(w.take_callee(), "INVITE")
    w.from_callee(response_to(re, 200, "OK", None, SDP_CALLEE))
    (ok,) = responses(w.take_caller(), 200)
    w.from_caller(in_dialog("ACK", ok, 2, n, f"z9hG4bK-re-ack-{n}"))
    w.take_callee()
    # nobody refreshes: the session timer ends the call, and BYEs go unanswered
    w.advance(200)
    w.take_caller()
    w.take_callee()


def unanswered_call(w: Wire) -> None:
    """The callee never answers: Timer B/C, failover, 408 to the caller."""
    w.from_caller(invite(_n()))
    w.advance(400)
    w.take_caller()
    w.take_callee()


@pytest.mark.parametrize(
    "flow",
    [whole_call, cancelled_call, refused_calls, call_with_reinvite_and_timeout, unanswered_call],
)
def test_a_call_flow_leaves_no_reference_cycle(flow: Callable[[Wire], None]) -> None:
    assert unreachable_after(flow) == 0


def test_the_guard_collects_only_when_objects_pile_up() -> None:
    metrics = Metrics()
    guard = GcGuard(metrics, lambda: 0, limit=1000)
    with collector_off():
        assert guard.check() == 0.0  # nothing grew
        for _ in range(2000):
            a: list[object] = []
            a.append(a)  # a cycle: only the collector frees it
            del a
        assert gc.get_count()[0] > 1000
        assert guard.check() > 0.0
        assert gc.get_count()[0] < 1000
        assert guard.check() == 0.0
    assert sample(metrics, "sipguard_gc_collections_total") == 1
    assert sample(metrics, "sipguard_gc_unreachable_objects_total") >= 2000


def test_the_guard_allows_for_the_calls_and_transactions_alive() -> None:
    """Objects that live calls explain never start a collection (a pause) however many."""
    live = [0]
    metrics = Metrics()
    guard = GcGuard(metrics, lambda: live[0], limit=1000)
    with collector_off():
        guard.check()
        keep = [[i] for i in range(20_000)]  # what 20,000 / 64 items would hold
        live[0] = 20_000 // GC_OBJECTS_PER_ITEM + 1
        assert guard.check() == 0.0
        assert sample(metrics, "sipguard_gc_collections_total") == 0
        assert sample(metrics, "sipguard_gc_pending_objects") >= 20_000
        live[0] = 0  # the same objects, no calls to explain them
        assert guard.check() > 0.0
        assert sample(metrics, "sipguard_gc_collections_total") == 1
        del keep
