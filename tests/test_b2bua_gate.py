"""The door (b2bua/gate.py, SPEC §8): a source that matches no trunk gets nothing (a
stateless 403 for every request, within limits.unknown_source_budget, and silence past
it); an untrusted trunk's source may send limits.stray_mps stray messages a second (of no
call), fewer while load is shed, then nothing but its calls' messages that second; a
trusted trunk is never metered."""

from __future__ import annotations

import pytest

from sipguard.b2bua.gate import METERED, MIN_STRAYS, OPEN, STRANGER_ANSWERS
from sipguard.b2bua.leg import Leg
from sipguard.metrics import Metrics
from sipguard.sip.message import Response
from sipguard.sip.transaction import Flow
from testkit.callsim import (
    CALLEE,
    CALLER,
    PEER2,
    STRANGER,
    Wire,
    basic_call,
    config_text,
    default_config,
    establish,
    in_dialog,
    invite,
    requests,
    response_to,
    responses,
    statuses,
)

METHODS = ("OPTIONS", "REGISTER", "INVITE", "BYE", "CANCEL", "INFO", "SUBSCRIBE", "FOO")


def request(method: str, n: int, to_tag: str = "", src: tuple[str, int] = STRANGER) -> bytes:
    h, p = src
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


def _flood(w: Wire, src: tuple[str, int], count: int, method: str = "OPTIONS") -> int:
    """``count`` requests from ``src`` within one second; the responses it got."""
    for n in range(count):
        w.from_peer(src, request(method, n, src=src))
    return len(w.take(src))


def test_an_untrusted_source_may_send_stray_mps_strays_a_second_then_nothing() -> None:
    metrics = Metrics()
    w = Wire(default_config("limits: {stray_mps: 100}\n"), metrics=metrics)
    w.advance(0.5)  # all within one second of the clock
    assert _flood(w, CALLER, 150) == 100
    assert sample(metrics, "source_messages") == 50
    w.from_caller(invite(1))  # the rest of the second, its calls too are dropped unread
    assert w.take_callee() == []
    assert sample(metrics, "source_messages") == 51
    assert w.core.layer.server == {}  # the probes were answered statelessly
    w.advance(1.0)  # the next second: a new budget, and calls go on
    w.from_caller(invite(2))
    assert w.take_callee()


@pytest.mark.parametrize(
    "stray",
    [
        request("BYE", 1, "no-such-dialog", src=CALLER),  # 481
        request("REGISTER", 1, src=CALLER),  # 405
        request("ACK", 1, "no-such-dialog", src=CALLER),  # nothing
        b"SIP/2.0 180 Ringing\r\nVia: SIP/2.0/UDP 127.0.0.1;branch=z9hG4bKnone\r\n"
        b"From: <sip:a@b>;tag=1\r\nTo: <sip:c@d>;tag=2\r\nCall-ID: x\r\n"
        b"CSeq: 1 INVITE\r\nContent-Length: 0\r\n\r\n",  # a response of nothing
        b"INVITE sip:x SIP/2.0\r\nVia: garbage\r\n\r\n",  # malformed
        b"SIP/2.0 200 OK\r\nVia: SIP/2.0/UDP 127.0.0.1;branch=z9hG4bKnone\r\n"
        b"From: <<\r\nTo: <sip:c@d>;tag=2\r\nCall-ID: x\r\n"
        b"CSeq: 1 INVITE\r\nContent-Length: 0\r\n\r\n",  # its From read only as a stray
    ],
    ids=[
        "bye-of-no-dialog",
        "register",
        "ack-of-nothing",
        "stray-response",
        "malformed",
        "stray-2xx-bad-from",
    ],
)
def test_every_kind_of_stray_counts(stray: bytes) -> None:
    w = Wire(default_config("limits: {stray_mps: 3}\n"))
    w.advance(0.5)
    for _ in range(3):
        w.from_caller(stray)
    w.take_caller()
    w.from_caller(invite(1))  # the budget is spent: dropped unread
    assert w.take_callee() == [] and w.take_caller() == []


def test_a_busy_trunks_calls_are_never_strays() -> None:
    """Thousands of messages of calls in one second: none counts."""
    w = Wire(default_config("limits: {stray_mps: 1}\n"))
    w.advance(0.5)
    for n in range(300):
        basic_call(w, n)
    ends = [r for r in w.core.cdr_out if r.kind == "end"]
    assert w.core.calls == 0 and len(ends) == 300
    assert {r.end_reason for r in ends} == {"caller_bye"}


def test_a_call_refused_by_a_limit_is_no_stray() -> None:
    """A 503 may be retried later: the caller's other calls must not pay for it."""
    w = Wire(default_config("limits: {stray_mps: 1}\n"))
    w.core.draining = True
    w.advance(0.5)
    for n in range(5):
        w.from_caller(invite(n))
    assert statuses(w.take_caller()) == [503] * 5


def test_a_trusted_trunk_is_never_metered() -> None:
    w = Wire(default_config("limits: {stray_mps: 10}\n"))
    w.advance(0.5)
    assert _flood(w, CALLEE, 50) == 50


def test_stray_mps_zero_meters_no_one() -> None:
    w = Wire(default_config("limits: {stray_mps: 0}\n"))
    w.advance(0.5)
    assert _flood(w, CALLER, 300) == 300


def test_while_load_is_shed_an_untrusted_source_gets_fewer_strays() -> None:
    w = Wire(default_config("limits: {stray_mps: 1000}\n"))
    w.core.shedder.shedding = True
    w.core.shedder.admitted = 0.001  # the deepest cut
    w.advance(0.5)
    assert _flood(w, CALLER, MIN_STRAYS + 20) == MIN_STRAYS
    assert _flood(w, CALLEE, 200) == 200
    w.core.shedder.admitted = 0.75  # an untrusted trunk's calls: 2 * 0.75 - 1 of them
    w.advance(1.0)
    assert _flood(w, CALLER, 600) == 500


def test_a_budget_under_the_minimum_is_never_raised_by_shedding() -> None:
    w = Wire(default_config("limits: {stray_mps: 3}\n"))
    w.core.shedder.shedding = True
    w.core.shedder.admitted = 0.001
    w.advance(0.5)
    assert _flood(w, CALLER, 10) == 3


def test_strangers_from_ever_new_addresses_get_a_bounded_number_of_answers() -> None:
    """A flood from forged addresses, each new: no more answers a second than a few."""
    metrics = Metrics()
    w = Wire(metrics=metrics)
    w.advance(0.5)
    sent = STRANGER_ANSWERS + 300
    for n in range(sent):
        src = (f"198.51.{n // 250}.{n % 250 + 1}", 5060)
        w.core.receive(request("OPTIONS", n, src=src), Flow("udp", 0, *src), w.now)
    answered = w.core.outbox
    assert len(answered) == STRANGER_ANSWERS
    assert all(flow.host.startswith("198.51.") for flow, _ in answered)
    assert sample(metrics, "unknown_source_silenced") == 300


def test_an_options_probe_from_a_trunk_keeps_no_transaction() -> None:
    """A trunk's OPTIONS gets 200 with what we allow, statelessly: a flood of them keeps
    nothing for Timer J's 32 s, and a retransmission gets the same answer."""
    w = Wire()
    w.from_peer(CALLER, request("OPTIONS", 1, src=CALLER))
    w.from_peer(CALLER, request("OPTIONS", 1, src=CALLER))
    first, again = w.take(CALLER)
    assert isinstance(first, Response) and first.status == 200 and first.has("allow")
    assert first.to_bytes() == again.to_bytes()
    assert w.core.layer.server == {}


# -- found by the review (the attacks that failed) ----------------------------------------

BALANCER = "127.0.0.9"
BEHIND_A_BALANCER = """
listen:
  - {transport: udp, address: 127.0.0.1, port: 5060, trunks: [customers]}
  - {transport: udp, address: 127.0.0.1, port: 5070, trunks: [pbx]}
metrics: null
identity_domain: sip.example.net
cdr: {sink: file, path: var/test-cdr}
limits: {stray_mps: 5}
trunks:
  customers:
    sources: [127.0.0.9/32]
    route_to: pbx
    allowed_cli: ["+3120123*"]
    default_cli: "+31201234000"
    numbering: {country_code: "31", national_prefix: "0", international_prefix: "00"}
  pbx:
    sources: [127.0.0.9/32]
    trusted: true
    targets: ["sip:127.0.0.2:5080"]
    route_to: customers
"""


def test_junk_on_an_untrusted_port_never_meters_a_trusted_trunk_behind_the_same_balancer() -> None:
    """SPEC §2: behind a balancer each trunk has its own port; strays are counted per
    listen entry and address, and a trusted trunk is never metered."""
    w = Wire(config_text(BEHIND_A_BALANCER))
    w.advance(0.1)
    src = (BALANCER, 5999)
    for n in range(10):  # anyone can forge these over UDP, from the balancer's address
        w.core.receive(request("OPTIONS", n, src=src), Flow("udp", 0, *src), w.now)
    w.core.outbox.clear()
    data = invite(1).replace(b"127.0.0.3:5062", b"127.0.0.9:5062")
    w.core.receive(data, Flow("udp", 1, BALANCER, 5062), w.now)  # the PBX's own port
    assert w.core.outbox  # read and answered (here: no target for it), not dropped unread


def test_a_metered_source_still_ends_and_answers_its_calls() -> None:
    """Forged junk with a customer's address silences its new traffic for the rest of the
    second, never the calls it has up: their messages still pass."""
    metrics = Metrics()
    w = Wire(default_config("limits: {stray_mps: 5}\n"), metrics=metrics)
    w.advance(0.1)
    est = establish(w, 99)
    assert _flood(w, CALLER, 20) == 5
    w.from_caller(invite(1))  # a new call: dropped unread
    assert w.take_callee() == []
    w.from_caller(in_dialog("BYE", est.a_ok, 2, 99, "z9hG4bK-99-bye"))
    (bye,) = requests(w.take_callee(), "BYE")  # the BYE of its call goes through
    w.from_callee(response_to(bye, 200, "OK", None))
    assert [r.end_reason for r in w.core.cdr_out if r.kind == "end"] == ["caller_bye"]


OTHER_TRUNK = """
  other:
    sources: [127.0.0.4/32]
    route_to: pbx
"""


def test_a_metered_source_passes_only_with_the_call_ids_of_legs_bound_to_it() -> None:
    """Past its budget, a source's message passes for a Call-ID of a call in progress only
    where it may be the peer of a leg with that Call-ID (the rule of ``Peers.from_peer``:
    the listen entry and address the leg was set up with, or moved to, or any source of
    the leg's trunk): not for another trunk's calls, so that what is read tells no one
    which calls exist. Two callers may choose the same Call-ID: each passes with it while
    its own call is up."""
    w = Wire(default_config(OTHER_TRUNK + "limits: {stray_mps: 1}\n"))
    gate = w.core.gate
    caller = Flow("udp", 0, *CALLER)
    other = Flow("udp", 0, *PEER2)  # another untrusted trunk
    on_tcp = Flow("tcp", 1, *CALLER, conn=1)

    def door(flow: Flow, call_id: str) -> int:
        data = request("BYE", 1, "t", src=(flow.host, flow.port)).replace(
            b"Call-ID: scan-1", f"Call-ID: {call_id}".encode()
        )
        return gate.enter(flow, w.now, w.core.config.limits, frozenset(), 1.0, data, gate.live)

    assert door(caller, "x") == OPEN  # the second starts, no strays yet
    for flow in (caller, other, on_tcp):
        gate.stray(flow)
    assert {door(f, "shared@h") for f in (caller, other, on_tcp)} == {METERED}
    trunks = w.core.config.trunks
    mine = Leg(w.core, True, "shared@h", caller)
    theirs = Leg(w.core, True, "shared@h", other)
    gate.opened(mine, trunks["customers"])
    gate.opened(theirs, trunks["other"])
    assert door(caller, "shared@h") == OPEN
    assert door(other, "shared@h") == OPEN
    # another listen entry serving the caller's trunk: its peer by from_peer's rule too
    assert door(on_tcp, "shared@h") == OPEN
    assert door(caller, "another@h") == METERED
    gate.closed(theirs)
    assert door(other, "shared@h") == METERED  # another trunk's call: hidden
    assert door(caller, "shared@h") == OPEN
    mine.flow = other  # a B-leg's failover: its new target's messages pass
    assert door(other, "shared@h") == OPEN
    assert door(caller, "shared@h") == OPEN  # and its trunk's sources still do
    gate.closed(mine)
    assert gate.live == {}


def test_the_acks_of_stateless_503s_are_no_strays() -> None:
    """A busy untrusted trunk refused by a limit ACKs every 503 (§17.1.1.3): its other
    calls must not pay for it."""
    w = Wire(default_config("limits: {stray_mps: 3, refused_cdr_rps: 0}\n"))
    w.core.draining = True  # every new call: 503
    w.advance(0.1)
    for n in range(10):
        w.from_caller(invite(n))
        (r,) = responses(w.take_caller(), 503)
        ack = (
            f"ACK sip:0201234567@127.0.0.1:5060 SIP/2.0\r\n"
            f"Via: SIP/2.0/UDP 127.0.0.3:5062;branch=z9hG4bK-{n}-1-0\r\n"
            f"From: {r.get('from')}\r\nTo: {r.get('to')}\r\nCall-ID: {r.call_id}\r\n"
            "CSeq: 1 ACK\r\nMax-Forwards: 70\r\nContent-Length: 0\r\n\r\n"
        ).encode()
        w.from_caller(ack)
    w.core.draining = False
    w.from_caller(invite(11))
    assert requests(w.take_callee(), "INVITE")
