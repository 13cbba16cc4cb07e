"""Refusals and limits of the B2BUA: what is never routed, and what a full gateway answers.

SPEC §2 (an unknown source gets 403), the top of SPEC (REGISTER, SUBSCRIBE: 405), §1.4
(emergency calls pass every limit up to their own reserved capacity), §4 (drain), §8
(503 without Retry-After). The wiring and the fake clock are :mod:`testkit.callsim`'s.
"""

from __future__ import annotations

import dataclasses

import pytest

from sipguard.config.model import Config
from sipguard.metrics import Metrics
from sipguard.sip.message import Request, Response, parse_message
from sipguard.sip.transaction import stateless_tag
from testkit.callsim import (
    CALLER,
    CONFIG,
    PEER2,
    SDP_CALLEE,
    STRANGER,
    Wire,
    cancel_of,
    config_text,
    default_config,
    in_dialog,
    invite,
    requests,
    response_to,
    responses,
)
from testkit.metrics import sample


def out_of_dialog(method: str, n: int, extra: str = "", user: str = "0201234567") -> bytes:
    h, p = CALLER
    return (
        f"{method} sip:{user}@127.0.0.1:5060 SIP/2.0\r\n"
        f"Via: SIP/2.0/UDP {h}:{p};branch=z9hG4bK-{method}-{n}\r\n"
        f"From: <sip:+31201234567@{h}:{p}>;tag=f{n}\r\n"
        f"To: <sip:{user}@127.0.0.1:5060>\r\n"
        f"Call-ID: {method}-{n}@{h}\r\n"
        f"CSeq: 1 {method}\r\n"
        f"Contact: <sip:sipp@{h}:{p}>\r\n"
        f"Max-Forwards: 70\r\n{extra}Content-Length: 0\r\n\r\n"
    ).encode()


def finals(msgs: list[Request | Response]) -> list[Response]:
    return [m for m in responses(msgs) if m.status >= 200]


def answer(w: Wire, n: int) -> None:
    """Let the callee answer the INVITE it just received."""
    (b_inv,) = requests(w.take_callee(), "INVITE")
    w.from_callee(response_to(b_inv, 200, "OK", f"t{n}", SDP_CALLEE))
    w.take_callee()  # our ACK


# -- what is never routed ----------------------------------------------------------------


def test_an_unknown_source_gets_403_and_no_b_leg() -> None:
    w = Wire()
    w.from_peer(STRANGER, invite(1, addr=STRANGER))
    msgs = w.take(STRANGER)
    (final,) = finals(msgs)
    assert final.status == 403
    assert w.take_callee() == []
    assert w.core.calls == 0 and w.core.cdr_out == []


@pytest.mark.parametrize("method", ["REGISTER", "SUBSCRIBE"])
def test_register_and_subscribe_get_405_with_allow(method: str) -> None:
    w = Wire()
    w.from_caller(out_of_dialog(method, 1, "Expires: 3600\r\nEvent: presence\r\n"))
    (final,) = finals(w.take_caller())
    assert final.status == 405
    allow = {m.strip() for m in (final.get("allow") or "").split(",")}
    assert {"INVITE", "ACK", "BYE", "CANCEL"} <= allow
    assert method not in allow
    assert w.take_callee() == []


def test_refer_out_of_dialog_gets_403() -> None:
    w = Wire()
    w.from_caller(out_of_dialog("REFER", 1, "Refer-To: <sip:0900123456@198.51.100.7>\r\n"))
    (final,) = finals(w.take_caller())
    assert final.status == 403
    assert w.take_callee() == []


def test_max_forwards_zero_gets_483() -> None:
    w = Wire()
    w.from_caller(invite(1, max_forwards=0))
    (final,) = finals(w.take_caller())
    assert final.status == 483
    assert w.take_callee() == []
    assert w.core.calls == 0


def test_an_unsupported_require_gets_420_with_unsupported() -> None:
    w = Wire()
    w.from_caller(invite(1, headers="Require: 100rel, foo-bar\r\n"))
    (final,) = finals(w.take_caller())
    assert final.status == 420
    assert final.get("unsupported") == "foo-bar"
    assert w.take_callee() == []


def test_options_to_sipguard_is_answered_200_then_503_while_draining() -> None:
    w = Wire()
    w.from_caller(out_of_dialog("OPTIONS", 1, user="ping"))
    (ok,) = finals(w.take_caller())
    assert ok.status == 200
    assert "INVITE" in (ok.get("allow") or "")
    assert w.take_callee() == []  # answered here, never routed
    w.core.drain()
    w.from_caller(out_of_dialog("OPTIONS", 2, user="ping"))
    (busy,) = finals(w.take_caller())
    assert busy.status == 503
    assert not busy.has("retry-after")


# -- limits --------------------------------------------------------------------------------


def test_global_max_calls_503_without_retry_after() -> None:
    w = Wire(default_config("limits: {max_calls: 2, emergency_max_calls: 1}\n"))
    for n in (1, 2):
        w.from_caller(invite(n))
        answer(w, n)
    w.take_caller()
    w.from_caller(invite(3))
    (final,) = finals(w.take_caller())
    assert final.status == 503
    assert not final.has("retry-after")  # SPEC §8
    assert w.take_callee() == []
    assert w.core.calls == 2


def test_a_slot_is_free_again_when_a_call_ends() -> None:
    w = Wire(default_config("limits: {max_calls: 1, emergency_max_calls: 1}\n"))
    w.from_caller(invite(1))
    answer(w, 1)
    (ok,) = responses(w.take_caller(), 200)
    w.from_caller(invite(2))
    assert finals(w.take_caller())[0].status == 503
    w.from_caller(in_dialog("ACK", ok, 1, 1, "z9hG4bK-ack"))
    w.from_caller(in_dialog("BYE", ok, 2, 1, "z9hG4bK-bye"))
    w.take_caller()
    w.take_callee()
    w.from_caller(invite(3))
    assert len(requests(w.take_callee(), "INVITE")) == 1


def test_trunk_max_calls() -> None:
    w = _customers_with("    limits: {max_calls: 1}\n")
    w.from_caller(invite(1))
    answer(w, 1)
    w.take_caller()
    w.from_caller(invite(2))
    (final,) = finals(w.take_caller())
    assert final.status == 503 and not final.has("retry-after")
    assert w.take_callee() == []


def _customers_with(lines: str) -> Wire:
    """The default configuration with ``lines`` added to the ``customers`` trunk."""
    text = CONFIG.replace(
        '    numbering: {country_code: "31", national_prefix: "0", international_prefix: "00"}\n'
        "  pbx:",
        '    numbering: {country_code: "31", national_prefix: "0", international_prefix: "00"}\n'
        + lines
        + "  pbx:",
    )
    assert text != CONFIG
    return Wire(config_text(text))


def test_trunk_cps() -> None:
    w = _customers_with("    limits: {cps: 2}\n")
    for n in (1, 2):
        w.from_caller(invite(n))
    assert len(requests(w.take_callee(), "INVITE")) == 2
    w.take_caller()
    w.from_caller(invite(3))
    (final,) = finals(w.take_caller())
    assert final.status == 503 and not final.has("retry-after")
    w.advance(1.0)  # the next second
    w.take_callee()
    w.from_caller(invite(4))
    assert len(requests(w.take_callee(), "INVITE")) == 1
    assert w.core.calls == 3


def with_trunk_limits(config: Config, trunk: str, **limits: int) -> Config:
    t = config.trunks[trunk]
    changed = dataclasses.replace(t, limits=dataclasses.replace(t.limits, **limits))
    return dataclasses.replace(config, trunks={**config.trunks, trunk: changed})


def test_an_emergency_call_passes_max_calls_up_to_its_own_cap() -> None:
    config = default_config("limits: {max_calls: 1, emergency_max_calls: 2}\n")
    w = Wire(with_trunk_limits(config, "customers", emergency_max_calls=2))
    w.from_caller(invite(1))
    answer(w, 1)
    w.take_caller()
    w.from_caller(invite(2))
    assert finals(w.take_caller())[0].status == 503
    for n in (3, 4):
        w.from_caller(invite(n, user="112"))
        (b_inv,) = requests(w.take_callee(), "INVITE")
        assert b_inv.uri.startswith("sip:112@")
    w.take_caller()
    w.from_caller(invite(5, user="112"))  # the reserved capacity is full
    (final,) = finals(w.take_caller())
    assert final.status == 503 and not final.has("retry-after")
    assert w.take_callee() == []
    assert w.core.calls == 3


def test_drain_refuses_new_calls_but_not_112() -> None:
    w = Wire()
    w.from_caller(invite(1))
    answer(w, 1)
    (ok,) = responses(w.take_caller(), 200)
    w.core.drain()
    w.from_caller(invite(2))
    (final,) = finals(w.take_caller())
    assert final.status == 503 and not final.has("retry-after")
    assert w.take_callee() == []
    w.from_caller(invite(3, user="112"))
    assert len(requests(w.take_callee(), "INVITE")) == 1
    # the call in progress goes on
    w.from_caller(in_dialog("ACK", ok, 1, 1, "z9hG4bK-ack"))
    w.from_caller(in_dialog("BYE", ok, 2, 1, "z9hG4bK-bye"))
    assert len(requests(w.take_callee(), "BYE")) == 1


def test_a_refused_call_leaves_nothing_behind() -> None:
    w = Wire(default_config("limits: {max_calls: 1, emergency_max_calls: 1}\n"))
    w.from_caller(invite(0))
    answer(w, 0)
    (ok,) = responses(w.take_caller(), 200)
    for n in range(1, 6):
        w.from_caller(invite(n))
    assert [f.status for f in finals(w.take_caller())] == [503] * 5
    w.from_caller(in_dialog("ACK", ok, 1, 0, "z9hG4bK-ack"))
    w.from_caller(in_dialog("BYE", ok, 2, 0, "z9hG4bK-bye"))
    w.advance(40)
    assert w.core.layer.server == {} and w.core.dialogs == {} and w.core.calls == 0


def test_shutdown_ends_every_call_with_bye_or_a_final_response() -> None:
    w = Wire()
    w.from_caller(invite(1))
    answer(w, 1)
    (ok,) = responses(w.take_caller(), 200)
    w.from_caller(in_dialog("ACK", ok, 1, 1, "z9hG4bK-ack"))
    w.from_caller(invite(2))  # ringing, not answered
    (b2,) = requests(w.take_callee(), "INVITE")
    w.from_callee(response_to(b2, 180, "Ringing", "t2"))
    w.take_caller()
    w.core.drain()
    w.advance(10)
    assert w.core.calls == 2  # drain lets calls in progress go on
    w.core.shutdown(w.now)
    w.flush()
    to_caller = w.take_caller()
    to_callee = w.take_callee()
    assert len(requests(to_caller, "BYE")) == 1
    assert [r.status for r in finals(to_caller)] == [503]
    assert len(requests(to_callee, "BYE")) == 1
    assert len(requests(to_callee, "CANCEL")) == 1
    ends = [r for r in w.core.cdr_out if r.kind == "end"]
    assert sorted(r.end_reason or "" for r in ends) == ["shutdown", "shutdown"]
    assert w.core.calls == 0


def test_an_invite_without_contact_gets_400_and_no_b_leg() -> None:
    """§8.1.1.8: an INVITE MUST carry a Contact; without one no dialog can be made."""
    w = Wire()
    data = invite(1).replace(b"Contact: sip:sipp@127.0.0.3:5062\r\n", b"")
    assert b"Contact" not in data
    w.from_caller(data)
    (final,) = finals(w.take_caller())
    assert final.status == 400
    assert w.take_callee() == [] and w.core.calls == 0


# -- every call attempt has its end record (SPEC §6), refused ones included ---------------


def _end_records(w: Wire) -> list[dict[str, object]]:
    recs = [r.to_dict() for r in w.core.cdr_out if r.kind == "end"]
    w.core.cdr_out.clear()
    return recs


def test_a_call_refused_by_a_limit_has_an_end_record_with_reason_limit() -> None:
    w = Wire(default_config("limits: {max_calls: 1, emergency_max_calls: 1}\n"))
    w.from_caller(invite(1))
    answer(w, 1)
    w.take_caller()
    w.core.cdr_out.clear()
    w.from_caller(invite(2))
    assert finals(w.take_caller())[0].status == 503
    (rec,) = _end_records(w)
    assert rec["end_reason"] == "limit" and rec["status"] == 503
    assert rec["answer"] is None and rec["duration_ms"] == 0
    assert rec["trunk_in"] == "customers" and rec["trunk_out"] == "pbx"
    assert rec["caller"] == "+31201234567" and rec["callee"] == "+31201234567"


def test_a_cli_reject_refusal_has_an_end_record_with_the_claimed_number() -> None:
    w = _customers_with("    cli_policy: reject\n")
    w.from_caller(invite(1, from_user="+49301234567"))
    assert finals(w.take_caller())[0].status == 403
    (rec,) = _end_records(w)
    assert rec["end_reason"] == "rejected" and rec["status"] == 403
    assert rec["caller"] == "+49301234567"
    assert rec["presentation"] == "restricted"  # never shown in a callee's export


def test_an_unknown_source_writes_no_record() -> None:
    w = Wire()
    w.from_peer(STRANGER, invite(1, addr=STRANGER))
    assert w.core.cdr_out == []


def test_a_dialled_name_is_billed_as_an_empty_callee_not_a_crash() -> None:
    w = Wire()
    w.from_caller(invite(1, user="alice"))
    (b_inv,) = requests(w.take_callee(), "INVITE")
    w.from_callee(response_to(b_inv, 486, "Busy Here", "t1"))
    (rec,) = _end_records(w)
    assert rec["callee"] == "" and rec["status"] == 486


def test_a_merged_request_gets_482() -> None:
    """The same INVITE (Call-ID, From tag, CSeq) arriving by a second path is a merged
    request (RFC 3261 §8.2.2.2): 482, never a second call."""
    w = Wire()
    first = invite(1)
    w.from_caller(first)
    assert len(requests(w.take_callee(), "INVITE")) == 1
    w.take_caller()
    second = first.replace(b"branch=z9hG4bK-1-1-0", b"branch=z9hG4bK-other-path")
    w.from_caller(second)
    (final,) = finals(w.take_caller())
    assert final.status == 482
    assert w.take_callee() == []
    assert w.core.calls == 1


def test_a_method_token_never_becomes_a_metric_label() -> None:
    w = Wire()
    w.from_caller(out_of_dialog("X31201234567", 1))
    w.take_caller()
    assert "X31201234567" not in w.core.stats_in
    assert w.core.stats_in.get("other") == 1


def test_a_flood_from_one_source_is_refused_but_not_its_emergency_calls() -> None:
    """limits.source_rps (SPEC §8): past it, new calls from that address get 503 without
    Retry-After, counted; an emergency call is never throttled."""
    w = Wire(default_config("limits: {max_calls: 100, emergency_max_calls: 5, source_rps: 2}\n"))
    for n in (1, 2):
        w.from_caller(invite(n))
    assert len(requests(w.take_callee(), "INVITE")) == 2
    w.take_caller()
    w.from_caller(invite(3))
    (final,) = finals(w.take_caller())
    assert final.status == 503 and not final.has("retry-after")
    assert [r.end_reason for r in w.core.cdr_out if r.kind == "end"][-1] == "limit"
    w.from_caller(invite(4, user="112"))
    assert len(requests(w.take_callee(), "INVITE")) == 1
    w.advance(1.0)
    w.take_caller()
    w.take_callee()
    w.from_caller(invite(5))
    assert len(requests(w.take_callee(), "INVITE")) == 1


# -- emergency calls: served, never a weapon (SPEC §8) -----------------------------------

PEER_TRUNK = """
  other:
    sources: [127.0.0.4/32]
    route_to: pbx
    allowed_cli: ["+3140*"]
    default_cli: "+31401234000"
"""


def emergency_invite(n: int, addr: tuple[str, int] = CALLER) -> bytes:
    user = "+31401234567" if addr == PEER2 else "+31201234567"
    return invite(n, user="112", addr=addr, from_user=user)


def test_one_trunks_112_flood_is_cut_at_its_share_and_another_trunks_112_goes_through() -> None:
    """The reserve (6) is shared by the three trunks that can call: 2 each by default. A
    flood from one trunk is refused past its share, counted and logged as an attack;
    a real 112 from another trunk is still admitted."""
    metrics = Metrics()
    config = config_text(CONFIG + PEER_TRUNK)
    config = dataclasses.replace(
        config, limits=dataclasses.replace(config.limits, emergency_max_calls=6)
    )
    w = Wire(config, metrics=metrics)
    finals_seen = []
    for n in range(1, 6):
        w.from_caller(emergency_invite(n))
        finals_seen += [r.status for r in finals(w.take_caller())]
    assert len(requests(w.take_callee(), "INVITE")) == 2
    assert finals_seen == [503, 503, 503]
    value = metrics.registry.get_sample_value(
        "sipguard_emergency_refused_total", {"reason": "trunk_emergency_limit"}
    )
    assert value == 3
    w.from_peer(PEER2, emergency_invite(10, PEER2))
    (b_inv,) = requests(w.take_callee(), "INVITE")
    assert b_inv.uri.startswith("sip:112@")
    assert w.core.calls == 3


def test_a_trunks_emergency_calls_per_second_are_capped() -> None:
    config = with_trunk_limits(default_config(), "customers", emergency_cps=2)
    w = Wire(config)
    for n in range(1, 5):
        w.from_caller(emergency_invite(n))
    assert len(requests(w.take_callee(), "INVITE")) == 2
    assert [r.status for r in finals(w.take_caller())] == [503, 503]
    w.advance(1.0)  # a new second
    w.take_callee()  # the retransmissions of the first two
    w.from_caller(emergency_invite(9))
    assert len(requests(w.take_callee(), "INVITE")) == 1


def test_refused_attempts_past_the_rate_are_counted_not_recorded() -> None:
    """A flood of refused INVITEs writes no flood of CDRs (limits.refused_cdr_rps)."""
    metrics = Metrics()
    w = Wire(default_config("limits: {max_calls: 0, refused_cdr_rps: 3}\n"), metrics=metrics)
    w.core.drain()
    for n in range(1, 11):
        w.from_caller(invite(n))
    assert [r.status for r in finals(w.take_caller())] == [503] * 10
    assert len(w.core.cdr_out) == 3
    unrecorded = metrics.registry.get_sample_value(
        "sipguard_cdr_refusals_unrecorded_total", {"trunk_in": "customers"}
    )
    assert unrecorded == 7


# -- a limit's refusal past the records of the second: answered unread (Unread.limited) -

# (the element's limits, the trunk's, what the test does to the core, the limit's label):
# each refuses every new call of the trunk customers but an emergency one
FULL = {
    "draining": ("", "", "drain", "draining"),
    "cdr_spool_full": ("", "", "spool", "cdr_spool_full"),
    "max_calls": ("max_calls: 1, ", "", "call", "max_calls"),
    "trunk_max_calls": ("", "max_calls: 1", "call", "trunk_max_calls"),
    "trunk_cps": ("", "cps: 1", "call", "trunk_cps"),
}


def full_wire(kind: str, refused_cdr_rps: int = 2) -> Wire:
    """A core whose trunk customers is at the limit ``kind`` (one call up where the limit
    is of calls), with metrics."""
    element, trunk, act, _ = FULL[kind]
    text = CONFIG + f"limits: {{{element}refused_cdr_rps: {refused_cdr_rps}}}\n"
    if trunk:
        text = text.replace(
            "    route_to: pbx\n", f"    route_to: pbx\n    limits: {{{trunk}}}\n", 1
        )
    w = Wire(config_text(text), metrics=Metrics())
    if act == "drain":
        w.core.drain()
    elif act == "spool":
        w.core.accepting = False
    else:
        w.from_caller(invite(0))
        answer(w, 0)
        w.take_caller()
    return w


def decisions(w: Wire) -> float:
    """Privacy decisions made so far, of any kind."""
    assert w.metrics is not None
    return sum(
        s.value
        for metric in w.metrics.registry.collect()
        if metric.name == "sipguard_presentation"
        for s in metric.samples
        if s.name == "sipguard_presentation_total"
    )


@pytest.mark.parametrize("kind", list(FULL))
def test_past_the_records_of_the_second_a_limits_refusal_is_answered_unread(kind: str) -> None:
    """What the whole way answers, counts and writes, without reading the INVITE: the
    503 (no Retry-After) with its stateless tag, the limit's label, the records of the
    second and no more, the calls counted; but no privacy decision past the records."""
    w = full_wire(kind, refused_cdr_rps=2)
    m = w.metrics
    decided = decisions(w)
    w.core.cdr_out.clear()
    sent = [invite(n) for n in range(1, 11)]
    for data in sent:
        w.from_caller(data)
    finals_ = finals(w.take_caller())
    assert [r.status for r in finals_] == [503] * 10
    assert not any(r.has("retry-after") for r in finals_)
    for data, resp in zip(sent, finals_, strict=True):
        req = parse_message(data)
        assert isinstance(req, Request)
        assert resp.to.tag == stateless_tag(req)
    assert w.take_callee() == []
    label = FULL[kind][3]
    assert sample(m, "sipguard_rejected_total", reason=label) == 10
    assert len([r for r in w.core.cdr_out if r.kind == "end"]) == 2
    assert sample(m, "sipguard_cdr_refusals_unrecorded_total", trunk_in="customers") == 8
    limit = {"trunk_in": "customers", "trunk_out": "pbx", "result": "limit"}
    assert sample(m, "sipguard_calls_total", **limit) == 10
    # the two read in full made their decision; the eight answered unread none
    assert decisions(w) == decided + 2
    assert w.core.stats_in.get("INVITE") == 10 + (FULL[kind][2] == "call")
    assert w.core.calls == (FULL[kind][2] == "call")


@pytest.mark.parametrize("kind", list(FULL))
def test_at_a_limit_an_emergency_call_and_a_retransmission_are_not_answered_unread(
    kind: str,
) -> None:
    w = full_wire(kind, refused_cdr_rps=1)
    w.from_caller(invite(1))  # the record of the second
    (first,) = finals(w.take_caller())
    for _ in range(2):  # a retransmission of a refused INVITE: 503 again, the same tag
        w.from_caller(invite(1))
        (again,) = finals(w.take_caller())
        assert again.status == 503 and again.to.tag == first.to.tag
    w.from_caller(invite(2))
    (unread,) = finals(w.take_caller())
    w.from_caller(invite(2))
    (again,) = finals(w.take_caller())
    assert again.status == unread.status == 503 and again.to.tag == unread.to.tag
    # its ACK is absorbed unread, as a shed INVITE's is
    strays = w.core.layer.strays
    w.from_caller(in_dialog("ACK", unread, 1, 2, "z9hG4bK-2-1-0"))
    assert w.take_caller() == [] and w.core.layer.strays == strays
    w.from_caller(emergency_invite(3))  # no limit but its own reserve (SPEC §1.4)
    assert len(requests(w.take_callee(), "INVITE")) == 1


def test_a_retransmission_of_a_call_under_way_is_never_refused_by_a_limit() -> None:
    """§17.2.1: the INVITE that took the last slot, sent again, is its transaction's."""
    text = CONFIG.replace(
        "    route_to: pbx\n", "    route_to: pbx\n    limits: {max_calls: 1}\n", 1
    )
    w = Wire(config_text(text + "limits: {refused_cdr_rps: 1}\n"))
    w.from_caller(invite(1))
    assert len(requests(w.take_callee(), "INVITE")) == 1
    w.from_caller(invite(2))  # refused, its record written: the next ones are unread
    w.from_caller(invite(3))
    assert [r.status for r in finals(w.take_caller())] == [503, 503]
    w.from_caller(invite(1))  # the caller's retransmission: 100 again, never 503
    assert [r.status for r in responses(w.take_caller())] == [100]
    assert w.core.calls == 1


def test_a_tls_trunk_s_request_without_its_name_is_read_in_full_at_a_limit() -> None:
    """Its 403 (tls_name) is the whole way's answer, not the limit's 503."""
    config = default_config("limits: {refused_cdr_rps: 1}\n")
    customers = dataclasses.replace(config.trunks["customers"], tls_name="pbx.example.net")
    w = Wire(dataclasses.replace(config, trunks={**config.trunks, "customers": customers}))
    w.core.drain()
    for n in range(3):
        w.from_caller(invite(n))
    assert [r.status for r in finals(w.take_caller())] == [403] * 3


def test_a_shedders_yes_to_an_invite_refused_by_a_limit_unread_is_not_kept() -> None:
    """Under overload the shed look may admit an INVITE (the whole way then asks the
    shedder no more) that a limit refuses unread: that yes was for it alone."""
    w = full_wire("trunk_max_calls", refused_cdr_rps=1)
    w.from_caller(invite(1))  # the record of the second
    w.take_caller()
    shedder = w.core.shedder
    shedder.shedding = True
    shedder.admitted = 1.0  # every call the shed look sees is admitted: granted
    w.from_caller(invite(2))
    (final,) = finals(w.take_caller())
    assert final.status == 503 and not shedder.granted


def nated_invite(n: int) -> bytes:
    """The caller's INVITE ``n`` with a top Via of a private address asking for rport."""
    return invite(n).replace(
        b"Via: SIP/2.0/UDP 127.0.0.3:5062;branch=z9hG4bK-%d-1-0" % n,
        b"Via: SIP/2.0/UDP 10.0.0.7:5070;branch=z9hG4bK-%d-1-0;rport" % n,
    )


@pytest.mark.parametrize("kind", ["draining", "trunk_max_calls"])
def test_rev9_a_limits_refusal_unread_stamps_the_top_via_as_the_whole_way(kind: str) -> None:
    """RFC 3261 §18.2.1 (``received`` where the sent-by is not the source) and RFC 3581
    §4 (``rport`` filled in): the 503 answered unread carries the top Via the whole way
    stamps, and a retransmission of an INVITE the whole way refused gets the same bytes."""
    w = full_wire(kind, refused_cdr_rps=1)
    w.from_caller(nated_invite(1))  # the record of the second: the whole way
    (whole,) = w.to_caller
    w.to_caller.clear()
    w.from_caller(nated_invite(1))  # its retransmission: answered unread
    w.from_caller(nated_invite(2))  # a new INVITE past the records: answered unread
    again, unread = w.to_caller
    assert again == whole
    stamped = "SIP/2.0/UDP 10.0.0.7:5070;branch=z9hG4bK-%d-1-0;rport=5062;received=127.0.0.3"
    for n, data in ((1, whole), (2, unread)):
        resp = parse_message(data)
        assert isinstance(resp, Response) and resp.status == 503
        assert resp.get_lines("via") == [stamped % n]


def test_rev9_the_cancel_of_an_invite_refused_unread_gets_481() -> None:
    """§9.2: a refused INVITE keeps no transaction, whichever way it was refused: its
    CANCEL finds none and gets one 481, nothing reaches the callee."""
    w = full_wire("draining", refused_cdr_rps=1)
    w.from_caller(invite(1))  # the record of the second
    w.from_caller(invite(2))  # answered unread
    assert [r.status for r in finals(w.take_caller())] == [503, 503]
    w.from_caller(cancel_of(2))
    assert [r.status for r in responses(w.take_caller())] == [481]
    assert w.take_callee() == [] and w.core.layer.server == {}
