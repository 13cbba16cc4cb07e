"""Fuzz target (hypothesis): the whole in-memory request path of the B2BUA core.

A :class:`~sipguard.b2bua.core.B2BUA` with the configuration of :mod:`testkit.callsim`
(an untrusted trunk ``customers`` at 127.0.0.3, a trusted ``pbx`` at 127.0.0.2) and a
fake clock is fed a drawn sequence of steps: the caller's INVITEs (ordinary, emergency,
mutated), the callee's answers to the B-leg INVITEs it received (any status, mutated or
not), in-dialog requests of either side, requests and responses from a stranger
(192.0.2.9: no trunk's source) — among them copies of the dialog ids of real calls —,
and the clock moving on. Every message goes through parse → admission → policy → B-leg
build, and out through the core's outbox.

Invariants:

* nothing escapes ``receive``/``handle_timer``, and the core logs no internal error
  (its ``except Exception`` nets log at ERROR: that is a bug too);
* the stranger gets only responses, never more than the requests it sent;
* the tables stay bounded while it runs (at most a few entries per step);
* after five hours of fake time (the longest call is 4 h), every call slot is free and
  every table empty: transactions, dialogs, merged-INVITE keys (challenged B-legs,
  pruned lazily, stay under their bound).

``HYPOTHESIS_PROFILE=long`` runs it for minutes (see :mod:`testkit.fuzzing`).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sipguard.b2bua.core import B2BUA
from sipguard.b2bua.outgoing import MAX_CHALLENGES
from sipguard.b2bua.shed import MAX_SHED
from sipguard.metrics import Metrics
from sipguard.sip.errors import SipError
from sipguard.sip.message import Request, Response, parse_message
from sipguard.sip.transaction import Flow
from testkit import callsim
from testkit.callsim import CALLEE, CALLER, STRANGER, Addr
from testkit.fuzzing import fuzz_settings, mutated

LIMITS = "limits: {unknown_source_budget: 5, emergency_max_calls: 3, max_calls: 20}\n"
HOURS_5 = 5 * 3600.0


class Errors(logging.Handler):
    """Every record at ERROR or above that the core logs."""

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@contextmanager
def internal_errors() -> Iterator[Errors]:
    handler = Errors()
    log = logging.getLogger("sipguard")
    log.addHandler(handler)
    try:
        yield handler
    finally:
        log.removeHandler(handler)


def _parse(data: bytes) -> Request | Response | None:
    """What sipguard sent, parsed and validated; None for a stateless answer that
    mirrors a malformed request."""
    try:
        msg = parse_message(data)
        msg.validate()
        return msg
    except SipError:
        return None


@dataclass
class Harness:
    core: B2BUA
    now: float = 1000.0
    sent: dict[str, list[bytes]] = field(default_factory=dict)  # by host
    b_invites: list[Request] = field(default_factory=list)  # as the callee got them
    a_answers: list[Response] = field(default_factory=list)  # 1xx/2xx with a To tag
    from_stranger: int = 0  # requests the stranger sent, ACKs included
    steps: int = 0

    def deliver(self, data: bytes, addr: Addr) -> None:
        self.core.receive(data, Flow("udp", 0, *addr), self.now)
        if addr == STRANGER and not data.lstrip(b"\r\n").startswith(b"SIP/"):
            self.from_stranger += 1
        self.flush()

    def flush(self) -> None:
        probes: list[Request] = []
        for flow, data in self.core.outbox:
            self.sent.setdefault(flow.host, []).append(data)
            msg = _parse(data)
            if flow.host == CALLEE[0] and isinstance(msg, Request) and msg.method == "OPTIONS":
                probes.append(msg)  # the callee is up and answers sipguard's probes
            if flow.host == CALLEE[0] and isinstance(msg, Request) and msg.method == "INVITE":
                if not msg.to.tag and len(self.b_invites) < 64:
                    self.b_invites.append(msg)
            elif (
                flow.host == CALLER[0]
                and isinstance(msg, Response)
                and msg.to.tag
                and msg.cseq.method == "INVITE"
                and len(self.a_answers) < 64
            ):
                self.a_answers.append(msg)
        self.core.outbox.clear()
        for probe in probes:
            ok = callsim.response_to(probe, 200, "OK", "probe")
            self.core.receive(ok, Flow("udp", 0, *CALLEE), self.now)
            self.flush()

    def advance(self, seconds: float) -> None:
        end = self.now + seconds
        while True:
            deadline = self.core.next_deadline()
            if deadline is None or deadline > end:
                break
            self.now = max(self.now, deadline)
            self.core.handle_timer(self.now)
            self.flush()
        self.now = end

    def table_sizes(self) -> dict[str, int]:
        c = self.core
        return {
            "server": len(c.layer.server),
            "client": len(c.layer.client),
            "dialogs": len(c.dialogs),
            "invites": len(c.table.by_invite),
            "live": len(c.gate.live),
            "shed": len(c.early.memory),
            "challenges": len(c.challenges.waiting),
            "calls": c.calls,
        }


# -- steps ----------------------------------------------------------------------------------

maybe_mutated = st.booleans()


@st.composite
def _bytes(draw: st.DrawFn, data: bytes) -> bytes:
    """``data`` as it is, or mutated (half the time)."""
    return draw(mutated(st.just(data))) if draw(maybe_mutated) else data


def caller_invite(h: Harness, draw: st.DrawFn) -> None:
    n = h.steps
    user = draw(st.sampled_from(["0201234567", "112", "+31201234567", "00441234"]))
    extra = draw(
        st.sampled_from(
            [
                "",
                "Privacy: id\r\n",
                "Supported: 100rel, timer\r\nSession-Expires: 90\r\n",
                "P-Asserted-Identity: <sip:+31201234999@127.0.0.3>\r\n",
                "Require: 100rel\r\n",
            ]
        )
    )
    h.deliver(draw(_bytes(callsim.invite(n, user, extra))), CALLER)


STATUSES = [100, 180, 183, 200, 200, 200, 302, 401, 407, 422, 480, 486, 500, 503, 603, 699]


def callee_answer(h: Harness, draw: st.DrawFn) -> None:
    if not h.b_invites:
        return
    inv = draw(st.sampled_from(h.b_invites))
    status = draw(st.sampled_from(STATUSES))
    extra = ""
    if status == 302:
        extra = "Contact: <sip:127.0.0.4:5080>\r\n"
    elif status in (401, 407):
        name = "WWW-Authenticate" if status == 401 else "Proxy-Authenticate"
        extra = f'{name}: Digest realm="x", nonce="n{h.steps}"\r\n'
    elif status == 422:
        extra = "Min-SE: 120\r\n"
    elif status == 183:
        extra = "Require: 100rel\r\nRSeq: 1\r\n"
    tag = None if status == 100 else f"callee{h.steps % 3}"
    body = callsim.SDP_CALLEE if status in (183, 200) else b""
    try:
        data = callsim.response_to(inv, status, "X", tag, body, extra=extra)
    except UnicodeEncodeError:
        return
    h.deliver(draw(_bytes(data)), CALLEE)


def caller_in_dialog(h: Harness, draw: st.DrawFn) -> None:
    if not h.a_answers:
        return
    resp = draw(st.sampled_from(h.a_answers))
    method = draw(st.sampled_from(["ACK", "BYE", "CANCEL", "INVITE", "UPDATE", "INFO", "PRACK"]))
    body = callsim.SDP if method in ("INVITE", "UPDATE") else b""
    extra = "RAck: 1 1 INVITE\r\n" if method == "PRACK" else ""
    cseq = 1 if method in ("ACK", "CANCEL") else draw(st.integers(1, 5))
    try:
        data = callsim.in_dialog(method, resp, cseq, 0, f"z9hG4bK-{h.steps}", body, extra)
    except UnicodeEncodeError:  # the answer mirrors a header that is not UTF-8
        return
    # the stranger sends the same (a hijack attempt) now and then
    addr = STRANGER if draw(st.integers(0, 4)) == 0 else CALLER
    h.deliver(draw(_bytes(data)), addr)


def callee_in_dialog(h: Harness, draw: st.DrawFn) -> None:
    if not h.b_invites:
        return
    inv = draw(st.sampled_from(h.b_invites))
    method = draw(st.sampled_from(["BYE", "INVITE", "UPDATE", "INFO", "NOTIFY"]))
    body = callsim.SDP_CALLEE if method in ("INVITE", "UPDATE") else b""
    try:
        data = callsim.callee_request(
            method, inv, f"callee{h.steps % 3}", draw(st.integers(1, 5)), h.steps, body
        )
    except UnicodeEncodeError:  # sipguard's INVITE carries a header that is not UTF-8
        return
    addr = STRANGER if draw(st.integers(0, 4)) == 0 else CALLEE
    h.deliver(draw(_bytes(data)), addr)


def stranger(h: Harness, draw: st.DrawFn) -> None:
    h_, p = STRANGER
    method = draw(st.sampled_from(["INVITE", "OPTIONS", "BYE", "REGISTER", "CANCEL", "ACK"]))
    n = h.steps
    text = (
        f"{method} sip:100@127.0.0.1 SIP/2.0\r\n"
        f"Via: SIP/2.0/UDP {h_}:{p};branch=z9hG4bK-s{n}\r\n"
        f"From: <sip:x@{h_}>;tag=s{n}\r\nTo: <sip:100@127.0.0.1>\r\n"
        f"Call-ID: s{n}\r\nCSeq: 1 {method}\r\nContact: <sip:x@{h_}:{p}>\r\n"
        "Max-Forwards: 70\r\nContent-Length: 0\r\n\r\n"
    ).encode()
    if draw(st.integers(0, 3)) == 0:
        text = callsim.invite(n, addr=STRANGER)
    if draw(st.integers(0, 5)) == 0 and h.b_invites:  # a response, as if it were the callee
        with contextlib.suppress(UnicodeEncodeError):
            text = callsim.response_to(draw(st.sampled_from(h.b_invites)), 200, "OK", "evil")
    h.deliver(draw(_bytes(text)), STRANGER)


def advance(h: Harness, draw: st.DrawFn) -> None:
    h.advance(draw(st.sampled_from([0.0, 0.1, 0.5, 1.0, 4.0, 10.0, 33.0])))


STEPS = [caller_invite, callee_answer, caller_in_dialog, callee_in_dialog, stranger, advance]


def check_stranger(h: Harness) -> None:
    got = h.sent.get(STRANGER[0], [])
    for data in got:
        assert data.startswith(b"SIP/2.0 "), data[:80]
    assert len(got) <= h.from_stranger, (len(got), h.from_stranger)


def run(draw: st.DrawFn, budget: int) -> Harness:
    h = Harness(B2BUA(callsim.default_config(LIMITS), Metrics()))
    for _ in range(draw(st.integers(1, budget))):
        h.steps += 1
        draw(st.sampled_from(STEPS))(h, draw)
        sizes = h.table_sizes()
        assert all(v <= 8 * h.steps for v in sizes.values()), sizes
        check_stranger(h)
    return h


@fuzz_settings(120)
@given(data=st.data())
def test_call_paths_under_hostile_input(data: st.DataObject) -> None:
    with internal_errors() as errors:
        h = run(data.draw, 30)
        h.advance(HOURS_5)
        h.advance(HOURS_5)  # what the first hours' timers started (a last BYE) ends too
    assert not errors.records, [r.getMessage() for r in errors.records]
    check_stranger(h)
    sizes = h.table_sizes()
    # challenged B-legs are dropped lazily, when the table is next pruned: bounded, and
    # each one past its window is refused a retry (outgoing.Challenges)
    assert sizes.pop("challenges") <= MAX_CHALLENGES
    # so are the INVITEs refused 503 lately, kept for their retransmissions (b2bua/shed.py)
    assert sizes.pop("shed") <= 2 * MAX_SHED
    assert sizes == dict.fromkeys(sizes, 0)


@pytest.mark.parametrize("method", ["BYE", "OPTIONS", "INVITE"])
def test_a_stranger_flood_draws_at_most_one_answer_each_and_then_silence(method: str) -> None:
    """The harness's own check, on a plain flood: 1,000 requests, 5 answers (the
    budget), no transaction kept. The requests are as a phone writes them (Max-Forwards,
    a User-Agent): a request smaller than its 403 gets none (tests/test_attack_rev9.py)."""
    h = Harness(B2BUA(callsim.default_config(LIMITS), Metrics()))
    for n in range(1000):
        data = callsim.invite(n, addr=STRANGER) if method == "INVITE" else None
        if data is None:
            data = (
                f"{method} sip:1@127.0.0.1 SIP/2.0\r\nVia: SIP/2.0/UDP 192.0.2.9:5060;"
                f"branch=z9hG4bK{n}\r\nFrom: <sip:a@b>;tag={n}\r\nTo: <sip:1@127.0.0.1>\r\n"
                f"Call-ID: f{n}\r\nCSeq: 1 {method}\r\nMax-Forwards: 70\r\n"
                "User-Agent: a-phone/1.0\r\nContent-Length: 0\r\n\r\n"
            ).encode()
        h.deliver(data, STRANGER)
        h.advance(0.001)
    assert len(h.sent.get(STRANGER[0], [])) == 5
    assert h.table_sizes() == dict.fromkeys(h.table_sizes(), 0)


# -- regressions: what the long runs found --------------------------------------------------

# A Call-ID that is not UTF-8 (here the byte 0x80; read with surrogateescape) made the
# stateless To tag's hash raise UnicodeEncodeError (sip/transaction.py, stateless_tag):
# from a stranger it escaped receive() (the driver then logged a traceback for every such
# datagram), and a trunk's refused INVITE got 500 and an internal error in the log.
NON_UTF8_CALL_ID = (
    b"INVITE sip:0201234567@127.0.0.1:5060 SIP/2.0\r\n"
    b"Via: SIP/2.0/UDP 127.0.0.3:5062;branch=z9hG4bK-1-1-0\r\n"
    b"From: sipp <sip:+31201234567@127.0.0.3:5062>;tag=1SIPpTag001\r\n"
    b"To: <sip:0201234567@127.0.0.1:5060>\r\n"
    b"Call-ID: \x80\r\n"
    b"CSeq: 1 INVITE\r\n"
    b"Contact: sip:sipp@127.0.0.3:5062\r\n"
    b"Max-Forwards: 70\r\n"
    b"Content-Length: 0\r\n\r\n"
)


def test_regression_non_utf8_call_id_from_a_stranger() -> None:
    h = Harness(B2BUA(callsim.default_config(LIMITS), Metrics()))
    with internal_errors() as errors:
        h.deliver(NON_UTF8_CALL_ID.replace(b"127.0.0.3:5062", b"192.0.2.9:5060"), STRANGER)
    assert not errors.records
    (answer,) = h.sent[STRANGER[0]]
    assert answer.startswith(b"SIP/2.0 403 ")


def test_regression_non_utf8_call_id_refused_from_a_trunk() -> None:
    h = Harness(B2BUA(callsim.default_config("limits: {max_calls: 1}\n"), Metrics()))
    h.deliver(callsim.invite(1), CALLER)  # the one call allowed
    with internal_errors() as errors:
        h.deliver(NON_UTF8_CALL_ID.replace(b"branch=z9hG4bK-1-1-0", b"branch=z9hG4bK-2"), CALLER)
    assert not errors.records, [r.getMessage() for r in errors.records]
    finals = [d[:12] for d in h.sent[CALLER[0]] if d[8:9] in b"3456"]
    assert finals == [b"SIP/2.0 503 "]
