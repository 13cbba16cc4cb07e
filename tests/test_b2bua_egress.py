"""The egress check in the call core (sipguard.b2bua.egress): fail closed on a leak.

A test build leaks on purpose: the crossing (or the B-leg's Request-URI) is wrapped so
that the caller's number or address goes out towards the untrusted callee. The message
must never leave, the call must end with 500, the metric count and the log name the
header, never the number. A compiled core (mypyc, ``tests/test_tools_native.py``) cannot be
patched from Python: there the leak comes through a header the callee's trunk allows
(``header_allowlist``) and the caller fills with its own number, which the crossing
passes on as configured and the egress check still holds back. Clean withheld calls,
presented calls, calls to a trusted trunk and emergency calls are never touched. The last
test runs sipguard as a process.
"""

from __future__ import annotations

import json
import logging
import random
from collections.abc import Callable
from pathlib import Path

import pytest

import sipguard.b2bua.bleg as bleg
import sipguard.b2bua.crossing as crossing
from sipguard.b2bua.crossing import Crossing
from sipguard.metrics import Metrics
from sipguard.policy.egress import find_hit
from sipguard.sip.message import Request, SipMessage
from sipguard.sip.transaction import IDS, Flow, new_branch, new_tag
from testkit.callsim import (
    CALLEE,
    CALLER,
    PEER2,
    PSAP,
    SDP_CALLEE,
    T1,
    Wire,
    callee_request,
    config_text,
    establish,
    in_dialog,
    invite,
    requests,
    response_to,
    responses,
    statuses,
)
from testkit.metrics import sample

CONFIG = """
listen:
  - {transport: udp, address: 127.0.0.1, port: 5060}
metrics: null
identity_domain: sip.example.net
cdr: {sink: file, path: var/test-cdr}
trunks:
  customers:
    sources: [127.0.0.3/32]
    route_to: pbx
    emergency_route_to: psap
    presentation: PRESENTATION
    allowed_cli: ["+3120123*"]
    default_cli: "+31201234000"
    numbering: {country_code: "31", national_prefix: "0", international_prefix: "00"}
  pbx:
    sources: [127.0.0.2/32]
    trusted: PBX_TRUSTED
    targets: ["sip:127.0.0.2:5080"]
    route_to: customers
  psap:
    sources: [127.0.0.5/32]
    trusted: false
    targets: ["sip:127.0.0.5:5080"]
    route_to: customers
"""
CALLEE_NUMBER = "0307654321"  # not the caller's own (callsim's default dials the caller)
NUMBER_FORMS = ["+31201234567", "31201234567", "0201234567", "0031201234567"]
METRIC = "sipguard_privacy_egress_blocked_total"


# a compiled Crossing cannot be wrapped: these tests then leak through header_allowlist
patchable = pytest.mark.skipif(
    crossing.__file__ is None or not crossing.__file__.endswith(".py"),
    reason="compiled (mypyc): the crossing cannot be patched; the allowlist tests leak there",
)
LEAKY = "X-Account"  # allowed towards pbx by the leaky configuration; the caller fills it


def wire(presentation: str = "restricted", pbx_trusted: bool = False, leaky: bool = False) -> Wire:
    text = CONFIG.replace("PRESENTATION", presentation)
    text = text.replace("PBX_TRUSTED", "true" if pbx_trusted else "false")
    if leaky:
        text = text.replace(
            "    route_to: customers\n  psap:",
            f"    route_to: customers\n    header_allowlist: [{LEAKY.lower()}]\n  psap:",
        )
    return Wire(config=config_text(text), metrics=Metrics())


def call_invite(n: int, user: str = CALLEE_NUMBER, headers: str = "") -> bytes:
    return invite(n, user=user, headers=headers)


Pred = Callable[[SipMessage, bool, bool], bool]


def towards_callee(msg: SipMessage, towards_a: bool, response: bool) -> bool:
    return not towards_a


def leak_header(monkeypatch: pytest.MonkeyPatch, name: str, value: str, when: Pred) -> None:
    """A test build whose crossing adds ``name: value`` where ``when`` says (a bug)."""
    original = Crossing.headers

    def headers(
        self: Crossing,
        msg: SipMessage,
        *,
        towards_a: bool,
        response: bool = False,
        credentials: bool = False,
    ) -> list[tuple[str, str]]:
        out = original(self, msg, towards_a=towards_a, response=response, credentials=credentials)
        if when(msg, towards_a, response):
            out.append((name, value))
        return out

    monkeypatch.setattr(Crossing, "headers", headers)


def blocked(w: Wire, where: str) -> float:
    return sample(w.metrics, METRIC, where=where)


def assert_logged_without_the_number(caplog: pytest.LogCaptureFixture, header: str) -> None:
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1, [r.getMessage() for r in errors]
    line = errors[0].getMessage()
    assert f" in {header}:" in line
    for secret in [*NUMBER_FORMS, "201234567", "127.0.0.3"]:
        assert secret not in line


def assert_nothing_to_callee_ever(w: Wire) -> None:
    """Nothing reached the callee, nor does anything later (retransmissions)."""
    w.advance(64 * T1 + 10)
    assert w.take_callee() == []


# -- a leak before the answer: 500 to the caller ---------------------------------------------


@patchable
@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("Subject", "call +31201234567"),  # E.164
        ("Subject", "call 0201234567"),  # national
        ("Call-Info", "<tel:31201234567>"),  # digits only
        ("Call-Info", "<tel:+31-20-123-4567>"),  # with visual separators
        ("Warning", '399 pbx "from sipp@127.0.0.3:5062"'),  # the caller's address
    ],
)
def test_a_leaking_header_in_the_b_leg_invite_is_not_sent_and_the_call_ends_500(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture, name: str, value: str
) -> None:
    leak_header(monkeypatch, name, value, towards_callee)
    w = wire()
    with caplog.at_level(logging.ERROR, logger="sipguard.b2bua"):
        w.from_caller(call_invite(1))
    assert w.take_callee() == []
    assert statuses(w.take_caller()) == [100, 500]
    assert blocked(w, "header") == 1
    assert_logged_without_the_number(caplog, name.lower())
    (end,) = w.core.cdr_out
    assert (end.kind, end.status, end.end_reason) == ("end", 500, "rejected")
    assert end.caller == "+31201234567"  # billed as ever
    assert w.core.calls == 0
    assert_nothing_to_callee_ever(w)  # Timer A/B retransmissions held back too
    assert blocked(w, "header") == 1  # a retransmission is no new message
    w.advance(1)
    assert len(w.core.egress.quarantine) == 1  # its Call-ID still watched
    monkeypatch.undo()  # the leak fixed: the next call is clean; its end lets the
    w.from_caller(call_invite(2))  # quarantine of the first go (64*T1 + T4 are over)
    (b_inv,) = requests(w.take_callee(), "INVITE")
    w.from_callee(response_to(b_inv, 486, "Busy Here", "busy"))
    assert not w.core.egress.watching and not w.core.egress.quarantine


@pytest.mark.parametrize("value", ["+31201234567", "0201234567", "<sip:x@127.0.0.3>"])
def test_an_allowed_header_the_caller_fills_with_its_number_is_held_back(
    caplog: pytest.LogCaptureFixture, value: str
) -> None:
    w = wire(leaky=True)
    with caplog.at_level(logging.ERROR, logger="sipguard.b2bua"):
        w.from_caller(call_invite(1, headers=f"{LEAKY}: {value}\r\n"))
    assert w.take_callee() == []
    assert statuses(w.take_caller()) == [100, 500]
    assert blocked(w, "header") == 1
    assert_logged_without_the_number(caplog, LEAKY.lower())
    (end,) = w.core.cdr_out
    assert (end.kind, end.status, end.end_reason) == ("end", 500, "rejected")
    assert_nothing_to_callee_ever(w)
    # the same header with anything else in it goes through
    w.from_caller(call_invite(2, headers=f"{LEAKY}: 4711\r\n"))
    (b_inv,) = requests(w.take_callee(), "INVITE")
    assert b_inv.get(LEAKY.lower()) == "4711"


@patchable
def test_the_caller_number_in_the_body_is_held_back(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    original = Crossing.body

    def body(self: Crossing, msg: SipMessage, headers: list[tuple[str, str]], *, towards_a: bool):  # type: ignore[no-untyped-def]
        out = original(self, msg, headers, towards_a=towards_a)
        return out + b"p=+31 20 1234567\r\n" if out and not towards_a else out

    monkeypatch.setattr(Crossing, "body", body)
    w = wire()
    with caplog.at_level(logging.ERROR, logger="sipguard.b2bua"):
        w.from_caller(call_invite(1))
    assert w.take_callee() == []
    assert statuses(w.take_caller()) == [100, 500]
    assert blocked(w, "body") == 1
    assert_logged_without_the_number(caplog, "body")


@patchable
@pytest.mark.parametrize("form", NUMBER_FORMS[1:])
def test_the_caller_number_in_the_request_uri_is_held_back(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture, form: str
) -> None:
    monkeypatch.setattr(bleg, "target_uri", lambda *a: f"sip:{form}@127.0.0.2:5080")
    w = wire()
    with caplog.at_level(logging.ERROR, logger="sipguard.b2bua"):
        w.from_caller(call_invite(1))
    assert w.take_callee() == []
    assert statuses(w.take_caller()) == [100, 500]
    assert blocked(w, "request-uri") == 1
    assert_logged_without_the_number(caplog, "request-uri")


@patchable
def test_a_leak_on_the_failover_attempt_is_held_back_too(monkeypatch: pytest.MonkeyPatch) -> None:
    attempts: list[int] = []

    def second_only(msg: SipMessage, towards_a: bool, response: bool) -> bool:
        if towards_a or not isinstance(msg, Request) or msg.method != "INVITE":
            return False
        attempts.append(1)
        return len(attempts) == 2

    leak_header(monkeypatch, "Subject", "+31201234567", second_only)
    text = CONFIG.replace("PRESENTATION", "restricted").replace("PBX_TRUSTED", "false")
    text = text.replace(
        'targets: ["sip:127.0.0.2:5080"]', 'targets: ["sip:127.0.0.2:5080", "sip:127.0.0.4:5080"]'
    ).replace("sources: [127.0.0.2/32]", "sources: [127.0.0.2/32, 127.0.0.4/32]")
    w = Wire(config=config_text(text), metrics=Metrics())
    w.from_caller(call_invite(1))
    (b_inv,) = requests(w.take_callee(), "INVITE")
    w.from_callee(response_to(b_inv, 503, "Service Unavailable", "x"))
    assert w.others.get(("127.0.0.4", 5080), []) == []  # the second attempt never left
    assert statuses(w.take_caller())[-1] == 500
    assert blocked(w, "header") == 1


# -- a leak after the answer: BYE on both legs -----------------------------------------------


def test_a_leaking_relayed_request_ends_the_answered_call_with_bye_both_ways(
    caplog: pytest.LogCaptureFixture,
) -> None:
    w = wire(leaky=True)
    est = establish(w, 1, call_invite(1))
    w.take_caller()
    w.core.cdr_out.clear()
    leak = f"{LEAKY}: 0201234567\r\n"
    with caplog.at_level(logging.ERROR, logger="sipguard.b2bua"):
        w.from_caller(in_dialog("INFO", est.a_ok, 2, 1, "z9hG4bK-1-info", extra=leak))
    to_callee = w.take_callee()
    assert [m.method for m in requests(to_callee)] == ["BYE"]  # never the INFO
    to_caller = w.take_caller()
    assert "BYE" in statuses(to_caller)
    assert blocked(w, "header") == 1
    assert_logged_without_the_number(caplog, LEAKY.lower())
    (end,) = w.core.cdr_out
    assert (end.kind, end.status, end.end_reason) == ("end", 500, "shutdown")
    assert end.answer is not None
    assert w.core.calls == 0


def test_a_leaking_response_to_the_callees_request_is_held_back() -> None:
    w = wire(leaky=True)
    est = establish(w, 1, call_invite(1))
    w.take_caller()
    w.from_callee(callee_request("INFO", est.b_invite, est.callee_tag, 1, 1))
    (relayed,) = requests(w.take_caller(), "INFO")
    leak = f"{LEAKY}: sip:pbx@127.0.0.3\r\n"  # the caller's address
    w.from_caller(response_to(relayed, 200, "OK", None, extra=leak, contact=CALLER))
    to_callee = w.take_callee()
    assert responses(to_callee) == []  # our 200 to its INFO never left
    assert [m.method for m in requests(to_callee)] == ["BYE"]
    assert blocked(w, "header") == 1


# -- never a false positive ------------------------------------------------------------------


def full_call(w: Wire, n: int, data: bytes, callee: tuple[str, int] = CALLEE) -> None:
    """INVITE, 180, 200, ACK, re-INVITE from the callee, BYE: every kind of message."""
    w.from_caller(data)
    (b_inv,) = requests(w.take(callee), "INVITE")
    tag = f"callee{n}"
    w.from_peer(callee, response_to(b_inv, 180, "Ringing", tag, contact=callee))
    w.from_peer(callee, response_to(b_inv, 200, "OK", tag, SDP_CALLEE, contact=callee))
    (ok,) = responses(w.take_caller(), 200)
    w.from_caller(in_dialog("ACK", ok, 1, n, f"z9hG4bK-{n}-ack"))
    w.from_peer(callee, callee_request("INFO", b_inv, tag, 1, n, addr=callee))
    (info,) = requests(w.take_caller(), "INFO")
    w.from_caller(response_to(info, 200, "OK", None, contact=CALLER))
    w.from_caller(in_dialog("BYE", ok, 2, n, f"z9hG4bK-{n}-bye"))
    (bye,) = requests(w.take(callee), "BYE")
    w.from_peer(callee, response_to(bye, 200, "OK", None, contact=callee))
    (end,) = [r for r in w.core.cdr_out if r.kind == "end"]
    assert (end.status, end.end_reason) == (200, "caller_bye"), end


def never_blocked(w: Wire) -> None:
    assert w.metrics is not None
    assert w.metrics.registry.get_sample_value(METRIC, {"where": "header"}) == 0
    assert not w.core.egress.watching


def test_a_clean_withheld_call_is_watched_and_never_blocked() -> None:
    w = wire()
    w.from_caller(call_invite(1))
    assert len(w.core.egress.watching) == 1  # watched: withheld, untrusted callee
    w2 = wire()
    full_call(w2, 2, call_invite(2, headers="Privacy: id\r\n"))
    never_blocked(w2)


def test_a_presented_call_to_an_untrusted_trunk_is_not_watched() -> None:
    w = wire(presentation="allowed")
    w.from_caller(call_invite(1))
    (b_inv,) = requests(w.take_callee(), "INVITE")
    assert "+31201234567" in (b_inv.get("from") or "")  # presented, by design
    assert not w.core.egress.watching
    w2 = wire(presentation="allowed")
    full_call(w2, 2, call_invite(2))
    never_blocked(w2)


def test_a_withheld_call_to_a_trusted_trunk_is_not_watched() -> None:
    w = wire(pbx_trusted=True)
    w.from_caller(call_invite(1))
    (b_inv,) = requests(w.take_callee(), "INVITE")
    assert "+31201234567" in (b_inv.get("p-asserted-identity") or "")  # with Privacy: id
    assert not w.core.egress.watching
    w2 = wire(pbx_trusted=True)
    full_call(w2, 2, call_invite(2))
    never_blocked(w2)


def test_an_emergency_call_presents_the_number_and_is_never_watched() -> None:
    # withheld by the trunk and by Privacy: id, to an untrusted emergency trunk: step 1 of
    # SPEC §3 presents the number, so the call is not watched at all
    w = wire()
    w.from_caller(call_invite(1, user="112", headers="Privacy: id\r\n"))
    (b_inv,) = requests(w.take(PSAP), "INVITE")
    assert "+31201234567" in (b_inv.get("from") or "")
    assert not w.core.egress.watching
    w2 = wire()
    full_call(w2, 2, call_invite(2, user="112", headers="Privacy: id\r\n"), callee=PSAP)
    never_blocked(w2)


def test_a_caller_calling_its_own_number_is_not_blocked() -> None:
    w = wire()
    full_call(w, 1, invite(1))  # callsim's caller dials 0201234567, its own number
    never_blocked(w)


def test_a_private_address_both_sides_use_is_no_leak() -> None:
    # the caller's Contact and the callee's are the same private address (two sites
    # behind NAT): the callee's own Contact in our ACK and BYE is no leak of the caller's
    w = wire()
    data = invite(1, CALLEE_NUMBER, contact="sip:sipp@192.168.1.10:5062")
    w.from_caller(data)
    (b_inv,) = requests(w.take_callee(), "INVITE")
    private = ("192.168.1.10", 5080)
    w.from_callee(response_to(b_inv, 200, "OK", "t", SDP_CALLEE, contact=private))
    (ok,) = responses(w.take_caller(), 200)
    (guard,) = w.core.egress.watching.values()
    w.from_caller(in_dialog("ACK", ok, 1, 1, "z9hG4bK-1-ack"))
    (ack,) = w.to_callee
    # the ACK carries the caller's private address as the callee's: a hit, but excused
    assert find_hit(ack, guard.needles, ("127.0.0.2",)) == ("request-uri", "address")
    w.from_caller(in_dialog("BYE", ok, 2, 1, "z9hG4bK-1-bye"))
    sent = w.take_callee()
    assert [m.method for m in requests(sent)] == ["ACK", "BYE"]
    assert all(m.uri.startswith("sip:192.168.1.10:5080") for m in requests(sent))
    never_blocked(w)


def test_the_callers_media_address_counts_only_once_the_media_is_anchored() -> None:
    w = wire()
    w.from_caller(call_invite(1))
    (b_inv,) = requests(w.take_callee(), "INVITE")
    assert b"c=IN IP4 127.0.0.3" in b_inv.body  # media: pass, by the operator's choice
    egress = w.core.egress
    (call,) = set(w.core.dialogs.values())
    flow = Flow("udp", 0, *CALLEE)
    reinvite = (
        f"INVITE sip:127.0.0.2:5080 SIP/2.0\r\nCall-ID: {b_inv.call_id}\r\n"
        f"Content-Type: application/sdp\r\nContent-Length: {len(b_inv.body)}\r\n\r\n"
    ).encode() + b_inv.body
    assert egress.allows(flow, reinvite)
    egress.media_anchored(call)  # from now on the SDP must carry the relay's address
    assert not egress.allows(flow, reinvite)
    assert blocked(w, "body") == 1


def test_no_false_positive_on_100000_random_ids() -> None:
    w = wire()
    w.from_caller(call_invite(1))
    (b_inv,) = requests(w.take_callee(), "INVITE")
    egress = w.core.egress
    (guard,) = egress.watching.values()
    assert guard.needles.numbers and guard.needles.addresses
    flow = Flow("udp", 0, *CALLEE)
    rng = random.Random(15)
    for i in range(100_000):
        ids = new_branch(), new_tag(), IDS.next(), f"{rng.getrandbits(64):x}"
        data = (
            f"BYE sip:127.0.0.2:5080 SIP/2.0\r\n"
            f"Via: SIP/2.0/UDP 127.0.0.1:5060;branch={ids[0]};rport\r\n"
            f"From: <sip:anonymous@anonymous.invalid>;tag={ids[1]}\r\n"
            f"To: <sip:{CALLEE_NUMBER}@127.0.0.2:5080>;tag={ids[3]}\r\n"
            f"Call-ID: {b_inv.call_id}\r\nCSeq: {i} BYE\r\nX-Id: {ids[2]}\r\n"
            "Content-Length: 0\r\n\r\n"
        ).encode()
        assert egress.allows(flow, data), data
    assert w.metrics is not None
    assert w.metrics.registry.get_sample_value(METRIC, {"where": "header"}) == 0


# -- against a running sipguard --------------------------------------------------------------

# The leak is injected by a sitecustomize that only this test writes, into its own
# temporary directory, on the PYTHONPATH of the child it starts: sipguard itself has no
# switch, setting or variable that makes it leak, so nothing in production can turn the
# leak on by accident; and the compiled build that production runs (mypyc) cannot be
# patched from Python at all.
SITECUSTOMIZE = """
from sipguard.b2bua.crossing import Crossing

_original = Crossing.headers

def _leaking(self, msg, *, towards_a, response=False, credentials=False):
    out = _original(self, msg, towards_a=towards_a, response=response, credentials=credentials)
    if not towards_a:
        out.append(("Subject", "call back 0201234567"))  # the caller's number: a bug
    return out

Crossing.headers = _leaking
"""


@patchable
def test_a_running_sipguard_holds_back_a_leak_and_ends_the_call_with_500(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from testkit.rawsip import UdpPeer, ack_for, sip_request, sipguard_addr, status_of, wait_for
    from testkit.sipp import CALLEE_IP, REPO, Sipguard, metric_sum, read_cdrs, write_config

    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(SITECUSTOMIZE)
    # this checkout's sipguard (not whatever the venv has installed), patched by the above
    monkeypatch.setenv("PYTHONPATH", f"{site}:{REPO}")
    setup = write_config(
        tmp_path / "run",
        overrides={
            "trunks": {"customers": {"presentation": "restricted"}, "pbx": {"trusted": False}}
        },
    )
    callee = UdpPeer(CALLEE_IP, setup.callee_port)
    caller = UdpPeer()
    sg = Sipguard(setup)
    try:
        sg.start()
        dest = sipguard_addr(setup)
        inv = sip_request("INVITE", local=caller.local, user=CALLEE_NUMBER)
        caller.send(inv, dest)
        got: list[bytes] = []

        def final() -> bool:
            got.extend(caller.recv_all(0.1))
            return 500 in map(status_of, got)

        assert wait_for(final, 5), sg.log_tail()
        assert [status_of(d) for d in got][:2] == [100, 500], got
        caller.send(ack_for(inv, got[1]), dest)
        assert callee.recv_all(1.5) == []  # nothing, not even a retransmission
        metrics = sg.metrics()
        assert metric_sum(metrics, METRIC, where="header") == 1
    finally:
        sg.stop()
        caller.close()
        callee.close()
    log = sg.log_path.read_text()
    errors = [line for line in log.splitlines() if " ERROR " in line]
    assert len(errors) == 1 and " in subject:" in errors[0], log
    assert "0201234567" not in log and "201234567" not in errors[0]
    (end,) = [r for r in read_cdrs(setup.cdr_dir) if r["kind"] == "end"]
    assert (end["status"], end["end_reason"]) == (500, "rejected"), json.dumps(end)


# -- no oracle: what the callee chose is never searched ---------------------------------------

GUESSES = ["+31201234567", "0201234567", "31201234567", "201234567", "127.0.0.3"]


def all_blocked(w: Wire) -> float:
    return sum(blocked(w, where) for where in ("request-uri", "reason-phrase", "header", "body"))


@pytest.mark.parametrize("guess", GUESSES)
def test_the_callees_guess_in_its_own_fields_never_fails_the_call(guess: str) -> None:
    """A callee that guesses the withheld number puts its guess in every field it chooses
    and we send back to it: the call goes on (a block would confirm the guess), while a
    leak in a header of ours is still held back."""
    digits = "201234567"
    w = wire(leaky=True)
    w.from_caller(call_invite(1))
    (b_inv,) = requests(w.take_callee(), "INVITE")
    tag = f"g{guess}"
    contact = b"Contact: <sip:127.0.0.2:5080;transport=UDP>"
    own = f"Contact: <sip:{guess}@127.0.0.2:5080>".encode()
    rr = f"Record-Route: <sip:{guess}@127.0.0.2:5080;lr>\r\n"
    rel = f"Require: 100rel\r\nRSeq: {digits}\r\n{rr}"
    w.from_callee(
        response_to(b_inv, 183, "Progress", tag, SDP_CALLEE, extra=rel).replace(contact, own)
    )
    assert [m.method for m in requests(w.take_callee())] == ["PRACK"]
    w.from_callee(response_to(b_inv, 200, "OK", tag, SDP_CALLEE, extra=rr).replace(contact, own))
    (ok,) = responses(w.take_caller(), 200)
    w.from_caller(in_dialog("ACK", ok, 1, 1, "z9hG4bK-1-ack"))
    (ack,) = requests(w.take_callee(), "ACK")
    assert ack.uri == f"sip:{guess}@127.0.0.2:5080" and f"tag={tag}" in (ack.get("to") or "")
    # the callee's request: its Via, From, To and CSeq come back in our response
    info = callee_request("INFO", b_inv, tag, int(digits), 1).replace(
        b"branch=z9hG4bK-", f"branch=z9hG4bK{guess}-".encode()
    )
    w.from_callee(info)
    (relayed,) = requests(w.take_caller(), "INFO")
    w.from_caller(response_to(relayed, 200, "OK", None, contact=CALLER))
    assert statuses(w.take_callee()) == [200]
    assert all_blocked(w) == 0
    # a real leak, in a header of ours, is still held back (and ends the call)
    leak = f"{LEAKY}: {guess}\r\n"
    w.from_caller(in_dialog("INFO", ok, 2, 1, "z9hG4bK-1-info", extra=leak))
    assert [m.method for m in requests(w.take_callee())] == ["BYE"]
    assert blocked(w, "header") == 1


@pytest.mark.parametrize("guess", GUESSES[:4])
def test_a_redirect_to_the_callees_guess_is_followed(guess: str) -> None:
    text = CONFIG.replace("PRESENTATION", "restricted").replace("PBX_TRUSTED", "false")
    text = text.replace("sources: [127.0.0.2/32]", "sources: [127.0.0.2/32, 127.0.0.4/32]")
    w = Wire(config=config_text(text), metrics=Metrics())
    w.from_caller(call_invite(1))
    (b1,) = requests(w.take_callee(), "INVITE")
    w.from_callee(
        response_to(b1, 302, "Moved Temporarily", f"r{guess}").replace(
            b"Contact: <sip:127.0.0.2:5080;transport=UDP>",
            f"Contact: <sip:{guess}@127.0.0.4:5080>".encode(),
        )
    )
    assert len(requests(w.take_callee(), "ACK")) == 1
    (b2,) = requests(w.take(PEER2), "INVITE")
    assert b2.uri == f"sip:{guess}@127.0.0.4:5080"
    assert all_blocked(w) == 0


# -- the hairpin, the claimed number without a prefix, a held-back transaction ---------------


@patchable
def test_a_call_routed_back_to_the_caller_side_is_checked(monkeypatch: pytest.MonkeyPatch) -> None:
    leak_header(monkeypatch, "Subject", "call +31201234567", towards_callee)
    text = CONFIG.replace("PRESENTATION", "restricted").replace("PBX_TRUSTED", "false")
    # the callee's trunk is reached at the caller's own address and port (a hairpin)
    text = text.replace('targets: ["sip:127.0.0.2:5080"]', 'targets: ["sip:127.0.0.3:5062"]')
    w = Wire(config=config_text(text), metrics=Metrics())
    w.from_caller(call_invite(1))
    assert requests(w.take_caller(), "INVITE") == []  # nothing went out to the hairpin
    assert blocked(w, "header") == 1


@patchable
@pytest.mark.parametrize("user", ["31209999999", "209999999"])
def test_a_claimed_number_without_a_prefix_is_searched(
    monkeypatch: pytest.MonkeyPatch, user: str
) -> None:
    # the claim is not allowed (the call gets the default CLI): it is the caller's
    # number all the same, and to_e164 knows no E.164 for it (no prefix)
    leak_header(monkeypatch, "Subject", f"call {user}", towards_callee)
    w = wire()
    data = call_invite(1).replace(b"<sip:+31201234567@", f"<sip:{user}@".encode())
    assert f"<sip:{user}@".encode() in data
    w.from_caller(data)
    assert w.take_callee() == []
    assert blocked(w, "header") == 1


@patchable
def test_a_held_back_invite_never_leaves_even_once_its_call_id_is_let_go(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    leak_header(monkeypatch, "Subject", "call +31201234567", towards_callee)
    w = wire()
    w.from_caller(call_invite(1))
    assert w.take_callee() == []
    egress = w.core.egress
    egress.watching.clear()  # as if a flood of leaks had pushed it out of the quarantine
    egress.quarantine.clear()
    w.advance(64 * T1 + 10)
    assert w.take_callee() == []  # no retransmission: its transaction is held
    assert blocked(w, "header") == 1


def test_our_listen_address_never_reads_as_the_callers_number() -> None:
    # 20.123.45.67 in our Via and Contact, without its dots, is 201234567: the national
    # significant number of the caller's +31201234567
    text = CONFIG.replace("PRESENTATION", "restricted").replace("PBX_TRUSTED", "false")
    text = text.replace("address: 127.0.0.1", "address: 20.123.45.67")
    w = Wire(config=config_text(text), metrics=Metrics())
    w.from_caller(call_invite(1))
    (b_inv,) = requests(w.take_callee(), "INVITE")
    assert "20.123.45.67" in (b_inv.get("via") or "")
    assert len(w.core.egress.watching) == 1
    w.from_callee(response_to(b_inv, 200, "OK", "t", SDP_CALLEE))
    (ok,) = responses(w.take_caller(), 200)
    w.from_caller(in_dialog("ACK", ok, 1, 1, "z9hG4bK-1-ack"))
    w.from_caller(in_dialog("BYE", ok, 2, 1, "z9hG4bK-1-bye"))
    assert [m.method for m in requests(w.take_callee())] == ["ACK", "BYE"]
    assert all_blocked(w) == 0


@pytest.mark.parametrize("guess", GUESSES)
def test_the_callees_guess_in_its_challenge_never_fails_the_call(guess: str) -> None:
    w = wire()
    w.from_caller(call_invite(1))
    (b1,) = requests(w.take_callee(), "INVITE")
    chal = f'Proxy-Authenticate: Digest realm="{guess}", nonce="{guess}", opaque="{guess}"\r\n'
    w.from_callee(response_to(b1, 407, "Proxy Authentication Required", "t", extra=chal))
    assert len(requests(w.take_callee(), "ACK")) == 1
    (rel,) = [r for r in responses(w.take_caller()) if r.status >= 200]
    w.from_caller(in_dialog("ACK", rel, 1, 1, "z9hG4bK-1-1-0"))
    cred = (
        f'Proxy-Authorization: Digest username="alice", realm="{guess}", nonce="{guess}", '
        f'uri="sip:{CALLEE_NUMBER}@127.0.0.1:5060", response="0123456789abcdef", '
        f'opaque="{guess}"\r\n'
    )
    w.from_caller(invite(1, CALLEE_NUMBER, headers=cred, cseq=2))
    (b2,) = requests(w.take_callee(), "INVITE")
    assert guess in (b2.get("proxy-authorization") or "")
    assert all_blocked(w) == 0


@pytest.mark.parametrize("guess", GUESSES)
def test_the_callees_guess_in_the_to_of_its_non_2xx_never_fails_the_call(guess: str) -> None:
    # the ACK of a non-2xx copies the response's To whole (RFC 3261 §17.1.1.3)
    w = wire()
    w.from_caller(call_invite(1))
    (b_inv,) = requests(w.take_callee(), "INVITE")
    busy = response_to(b_inv, 486, "Busy Here", f"g{guess}")
    busy = busy.replace(b"\r\nTo: <", f'\r\nTo: "{guess}" <'.encode())
    w.from_callee(busy)
    (ack,) = requests(w.take_callee(), "ACK")
    assert guess in (ack.get("to") or "")
    assert statuses(w.take_caller())[-1] == 486  # relayed as it is: not a 500 of ours
    assert all_blocked(w) == 0
