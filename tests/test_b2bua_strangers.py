"""A source that matches no trunk gets nothing (SPEC §8): a stateless 403 for every
request, within limits.unknown_source_budget, and silence past it."""

from __future__ import annotations

import pytest

from sipguard.metrics import Metrics
from sipguard.sip.message import Response
from testkit.callsim import STRANGER, Wire, default_config, invite

METHODS = ("OPTIONS", "REGISTER", "INVITE", "BYE", "CANCEL", "INFO", "SUBSCRIBE", "FOO")


def request(method: str, n: int, to_tag: str = "") -> bytes:
    h, p = STRANGER
    to = "<sip:100@127.0.0.1>" + (f";tag={to_tag}" if to_tag else "")
    return (
        f"{method} sip:100@127.0.0.1 SIP/2.0\r\n"
        f"Via: SIP/2.0/UDP {h}:{p};branch=z9hG4bK-scan-{n}\r\n"
        f"From: <sip:scanner@{h}>;tag=s{n}\r\nTo: {to}\r\n"
        f"Call-ID: scan-{n}\r\nCSeq: 1 {method}\r\nContact: <sip:scanner@{h}:{p}>\r\n"
        "Max-Forwards: 70\r\nUser-Agent: friendly-scanner\r\nContent-Length: 0\r\n\r\n"
    ).encode()


def sample(metrics: Metrics, reason: str) -> float:
    return metrics.registry.get_sample_value("sipguard_rejected_total", {"reason": reason}) or 0


@pytest.mark.parametrize("to_tag", ["", "some-tag"], ids=["out-of-dialog", "in-dialog"])
def test_every_method_gets_one_stateless_403_with_nothing_about_us(to_tag: str) -> None:
    metrics = Metrics()
    w = Wire(metrics=metrics)
    for n, method in enumerate(METHODS):
        w.from_peer(STRANGER, request(method, n, to_tag))
    w.from_peer(STRANGER, request("ACK", 99, to_tag))  # an ACK: nothing
    w.advance(40.0)  # no retransmission, no transaction kept
    got = w.take(STRANGER)
    assert [m.status for m in got if isinstance(m, Response)] == [403] * len(METHODS)
    for resp in got:
        assert not resp.has("allow") and not resp.has("server") and not resp.has("supported")
        assert resp.to.tag  # §8.2.6.2
    assert w.core.layer.server == {} and w.core.cdr_out == [] and w.core.calls == 0
    assert w.take_callee() == []
    assert sample(metrics, "unknown_source") == len(METHODS)


def test_a_retransmission_gets_the_same_answer() -> None:
    w = Wire()
    w.from_peer(STRANGER, request("OPTIONS", 1))
    w.from_peer(STRANGER, request("OPTIONS", 1))
    first, again = w.others.pop(STRANGER)
    assert first == again


def test_past_its_budget_a_source_gets_silence_until_it_has_been_quiet() -> None:
    metrics = Metrics()
    w = Wire(default_config("limits: {unknown_source_budget: 3}\n"), metrics=metrics)
    for n in range(10):
        w.from_peer(STRANGER, request("OPTIONS", n))
        w.advance(1.0)  # a steady scan: never quiet for 10 s
    assert len(w.take(STRANGER)) == 3
    assert sample(metrics, "unknown_source_silenced") == 7
    w.advance(10.0)  # quiet for a whole window
    w.from_peer(STRANGER, request("OPTIONS", 20))
    assert len(w.take(STRANGER)) == 1


def test_a_malformed_message_from_a_stranger_gets_nothing() -> None:
    w = Wire()
    w.from_peer(STRANGER, b"INVITE sip:x SIP/2.0\r\nVia: garbage\r\n\r\n")
    assert w.take(STRANGER) == []


def test_a_trunk_still_gets_its_answers() -> None:
    w = Wire()
    w.from_caller(invite(1))
    assert w.take_callee()
