"""The privacy promise (SPEC §1 to §3) checked on the wire, through the whole B2BUA.

Each test sends the caller's INVITE into sipguard and reads the B-leg INVITE (and
whatever else the callee receives) as the callee sees it: the identity headers built
from the decision, and a search of every start line and header line for what must not
leave the trust domain — the caller's number when withheld, its IP address, its cell id,
its IMEI. The SDP body is left out of the search: with ``media: pass`` it carries the
caller's media address (SPEC §1.5).

Trunks: the caller is on ``customers`` (127.0.0.3, untrusted); the callee on ``pbx``
(127.0.0.2, trusted, or untrusted where a test says so); the emergency service on
``psap`` (127.0.0.5, trusted).
"""

from __future__ import annotations

import pytest

from sipguard.sip.message import Request, Response
from testkit.callsim import (
    CALLEE,
    PSAP,
    SDP,
    SDP_CALLEE,
    Wire,
    callee_request,
    config_text,
    establish,
    in_dialog,
    invite,
    requests,
    response_to,
    responses,
)

CALLER_NUMBER = "+31201234567"
CALLER_DIGITS = "201234567"  # in any form: +31201234567, 0201234567, 0031201234567
DIALLED = "0698765432"  # shares no run of digits with the caller's number
CELL_ID = "2620100001A2B3C4D"
IMEI = "35209900-176148-1"
PANI = f"P-Access-Network-Info: 3GPP-E-UTRAN-FDD; utran-cell-id-3gpp={CELL_ID}\r\n"
INSTANCE = f'<sip:sipp@127.0.0.3:5062>;+sip.instance="<urn:gsma:imei:{IMEI}>"'
ANONYMOUS_FROM = '"Anonymous" <sip:anonymous@anonymous.invalid>;tag='


def policy(
    customers: str = "",
    pbx: str = "",
    pbx_trusted: bool = True,
    emergency_route_to: str = "psap",
) -> str:
    """The YAML of a test: ``customers`` and ``pbx`` with extra lines, and a PSAP."""
    return f"""
listen:
  - {{transport: udp, address: 127.0.0.1, port: 5060}}
metrics: null
identity_domain: sip.example.net
cdr: {{sink: file, path: var/test-cdr}}
trunks:
  customers:
    sources: [127.0.0.3/32]
    route_to: pbx
    emergency_route_to: {emergency_route_to}
    allowed_cli: ["+3120123*"]
    default_cli: "+31201234000"
    restricted_numbers: ["+31201234999"]
    numbering: {{country_code: "31", national_prefix: "0", international_prefix: "00"}}
{customers}
  pbx:
    sources: [127.0.0.2/32]
    trusted: {"true" if pbx_trusted else "false"}
    targets: ["sip:127.0.0.2:5080"]
    route_to: customers
    numbering: {{country_code: "31", national_prefix: "0", international_prefix: "00"}}
{pbx}
  psap:
    sources: [127.0.0.5/32]
    trusted: true
    targets: ["sip:127.0.0.5:5080"]
    route_to: customers
"""


def wire(**kwargs: str | bool) -> Wire:
    return Wire(config_text(policy(**kwargs)))  # type: ignore[arg-type]


def head(msg: Request | Response) -> str:
    """Start line and header section, without the body (the SDP carries media addresses)."""
    return msg.to_bytes().split(b"\r\n\r\n", 1)[0].decode()


def assert_absent(msgs: list[Request | Response], *secrets: str) -> None:
    assert msgs, "nothing to search"
    for msg in msgs:
        text = head(msg).lower()
        for secret in secrets:
            assert secret.lower() not in text, f"{secret!r} leaked in:\n{head(msg)}"


def b_leg(w: Wire, data: bytes, peer: tuple[str, int] = CALLEE) -> Request:
    """Send the caller's INVITE; the INVITE that ``peer`` received."""
    w.from_caller(data)
    (b_inv,) = requests(w.take(peer), "INVITE")
    return b_inv


def whole_call(
    w: Wire, data: bytes, peer: tuple[str, int] = CALLEE
) -> tuple[Request, list[Request | Response]]:
    """A whole call (INVITE to BYE, and a re-INVITE and INFO from the caller): the B-leg
    INVITE and everything ``peer`` received."""
    b_inv = b_leg(w, data, peer)
    seen: list[Request | Response] = [b_inv]
    w.from_peer(peer, response_to(b_inv, 180, "Ringing", "t", contact=peer))
    w.from_peer(peer, response_to(b_inv, 200, "OK", "t", SDP_CALLEE, contact=peer))
    (ok,) = responses(w.take_caller(), 200)
    w.from_caller(in_dialog("ACK", ok, 1, 1, "z9hG4bK-ack"))
    w.from_caller(in_dialog("INVITE", ok, 2, 1, "z9hG4bK-re", SDP, extra=PANI))
    got = w.take(peer)
    seen += got
    (re,) = requests(got, "INVITE")
    w.from_peer(peer, response_to(re, 200, "OK", None, SDP_CALLEE, contact=peer))
    (ok2,) = responses(w.take_caller(), 200)
    w.from_caller(in_dialog("ACK", ok2, 2, 1, "z9hG4bK-re-ack"))
    w.from_caller(in_dialog("INFO", ok, 3, 1, "z9hG4bK-info", extra=PANI))
    w.from_caller(in_dialog("BYE", ok, 4, 1, "z9hG4bK-bye", extra=PANI))
    seen += w.take(peer)
    return b_inv, seen


# -- per-call withholding ----------------------------------------------------------------


@pytest.mark.parametrize("code", ["#31#", "%2331%23"])
def test_withhold_code_gives_an_anonymous_b_leg(code: str) -> None:
    w = wire()
    b_inv, seen = whole_call(w, invite(1, user=code + DIALLED, headers=PANI))
    assert (b_inv.get("from") or "").startswith(ANONYMOUS_FROM)
    assert b_inv.from_.tag
    assert b_inv.get("privacy") == "id"
    # towards a trusted trunk the identity goes in PAI (RFC 3325, SPEC §2)
    assert b_inv.get("p-asserted-identity") == f"<sip:{CALLER_NUMBER}@sip.example.net;user=phone>"
    # the code is gone from the Request-URI and To
    assert b_inv.uri == f"sip:{DIALLED}@127.0.0.2:5080"
    assert b_inv.to.uri.user == DIALLED
    assert not b_inv.has("subject")  # RFC 3323 §4.1: a user-filled header, removed
    # nothing else carries the caller: only PAI does (trusted trunk)
    for msg in seen:
        text = head(msg).replace(b_inv.get("p-asserted-identity") or "", "")
        assert CALLER_DIGITS not in text, text
    assert_absent(seen, "127.0.0.3", CELL_ID, "sipp", "#31#", "%2331%23")
    (end,) = [r for r in w.core.cdr_out if r.kind == "end"]
    assert end.presentation == "restricted" and end.caller == CALLER_NUMBER
    assert end.callee == "+31698765432"


@pytest.mark.parametrize("code", ["#31#", "%2331%23"])
def test_withhold_code_towards_an_untrusted_trunk_sends_no_pai(code: str) -> None:
    w = wire(pbx_trusted=False)
    b_inv, seen = whole_call(w, invite(1, user=code + DIALLED, headers=PANI))
    assert (b_inv.get("from") or "").startswith(ANONYMOUS_FROM)
    assert b_inv.get("privacy") == "id"
    assert not b_inv.has("p-asserted-identity")
    assert_absent(seen, CALLER_DIGITS, "127.0.0.3", CELL_ID, "sipp", "Performance Test")


def test_privacy_id_from_the_caller_withholds() -> None:
    w = wire(pbx_trusted=False)
    b_inv, seen = whole_call(w, invite(1, user=DIALLED, headers="Privacy: id\r\n"))
    assert (b_inv.get("from") or "").startswith(ANONYMOUS_FROM)
    assert b_inv.get("privacy") == "id"
    assert not b_inv.has("p-asserted-identity")
    assert_absent(seen, CALLER_DIGITS, "127.0.0.3")


def test_privacy_none_presents_and_no_code_presents_by_default() -> None:
    w = wire()
    b_inv = b_leg(w, invite(1, user=DIALLED))
    presented = f"<sip:{CALLER_NUMBER}@sip.example.net;user=phone>"
    assert (b_inv.get("from") or "").startswith(presented + ";tag=")
    assert b_inv.get("p-asserted-identity") == presented
    assert b_inv.get("privacy") in (None, "none")


def test_present_code_with_a_default_restricted_caller_presents() -> None:
    w = wire()
    withheld = b_leg(w, invite(1, user=DIALLED, from_user="+31201234999"))
    assert (withheld.get("from") or "").startswith(ANONYMOUS_FROM)
    b_inv = b_leg(w, invite(2, user="*31#" + DIALLED, from_user="+31201234999"))
    assert (b_inv.get("from") or "").startswith("<sip:+31201234999@sip.example.net;user=phone>")
    assert b_inv.get("privacy") in (None, "none")
    assert b_inv.uri == f"sip:{DIALLED}@127.0.0.2:5080"
    assert b_inv.to.uri.user == DIALLED


@pytest.mark.parametrize(
    ("user", "headers"),
    [("*31#" + DIALLED, ""), ("%2A31%23" + DIALLED, ""), (DIALLED, "Privacy: none\r\n")],
)
def test_permanent_mode_ignores_the_present_code_and_privacy_none(user: str, headers: str) -> None:
    w = wire(customers="    presentation: permanent\n", pbx_trusted=False)
    b_inv, seen = whole_call(w, invite(1, user=user, headers=headers))
    assert (b_inv.get("from") or "").startswith(ANONYMOUS_FROM)
    assert b_inv.get("privacy") == "id"
    assert_absent(seen, CALLER_DIGITS, "*31#", "%2A31")


# -- emergency calls -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("user", "headers"),
    [
        ("#31#112", ""),
        ("%2331%23112", ""),
        ("112", "Privacy: id\r\n"),
        ("112", "Privacy: id;critical\r\n"),
    ],
)
def test_112_from_a_withholding_caller_is_presented_and_goes_to_the_psap(
    user: str, headers: str
) -> None:
    w = wire(customers="    presentation: permanent\n")
    b_inv = b_leg(w, invite(1, user=user, headers=headers + PANI), peer=PSAP)
    assert w.take_callee() == []  # not to the ordinary route
    presented = f"<sip:{CALLER_NUMBER}@sip.example.net;user=phone>"
    assert (b_inv.get("from") or "").startswith(presented + ";tag=")
    assert b_inv.get("p-asserted-identity") == presented
    assert "id" not in (b_inv.get("privacy") or "")
    assert b_inv.uri == "sip:112@127.0.0.5:5080"
    # the location reaches the emergency service
    assert CELL_ID in (b_inv.get("p-access-network-info") or "")
    w.from_peer(PSAP, response_to(b_inv, 200, "OK", "psap", SDP_CALLEE, contact=PSAP))
    (start,) = w.core.cdr_out
    assert start.emergency and start.presentation == "allowed" and start.callee == "112"


def test_location_is_removed_on_an_ordinary_call_even_towards_a_trusted_trunk() -> None:
    w = wire()
    b_inv, seen = whole_call(w, invite(1, user=DIALLED, headers=PANI))
    assert not b_inv.has("p-access-network-info")
    assert_absent(seen, CELL_ID, "P-Access-Network-Info")


def test_112_with_a_cli_outside_allowed_cli_goes_on_with_default_cli_under_reject() -> None:
    w = wire(customers="    cli_policy: reject\n")
    w.from_caller(invite(1, user=DIALLED, from_user="+4930123456"))
    finals = [r for r in responses(w.take_caller()) if r.status >= 200]
    assert [r.status for r in finals] == [403]
    assert w.take_callee() == []
    b_inv = b_leg(w, invite(2, user="112", from_user="+4930123456"), peer=PSAP)
    assert b_inv.get("p-asserted-identity") == "<sip:+31201234000@sip.example.net;user=phone>"
    assert_absent([b_inv], "4930123456")


# -- anti-spoofing -------------------------------------------------------------------------


def test_a_spoofed_pai_from_an_untrusted_trunk_is_ignored() -> None:
    w = wire()
    spoof = (
        "P-Asserted-Identity: <sip:+31209999999@pbx.example.net;user=phone>\r\n"
        'Remote-Party-ID: "Boss" <sip:+31209999999@pbx.example.net>;privacy=off\r\n'
    )
    b_inv, seen = whole_call(w, invite(1, user=DIALLED, headers=spoof))
    assert b_inv.get("p-asserted-identity") == f"<sip:{CALLER_NUMBER}@sip.example.net;user=phone>"
    assert_absent(seen, "209999999", "Boss", "Remote-Party-ID")


def test_a_caller_outside_allowed_cli_is_replaced_by_default_cli() -> None:
    w = wire()
    spoof = "P-Asserted-Identity: <sip:+31209999999@pbx.example.net;user=phone>\r\n"
    b_inv, seen = whole_call(w, invite(1, user=DIALLED, headers=spoof, from_user="+4930123456"))
    presented = "<sip:+31201234000@sip.example.net;user=phone>"
    assert (b_inv.get("from") or "").startswith(presented + ";tag=")
    assert b_inv.get("p-asserted-identity") == presented
    assert_absent(seen, "4930123456", "209999999")
    assert w.core.cdr_out[-1].caller == "+31201234000"


def test_cli_policy_reject_refuses_a_caller_outside_allowed_cli() -> None:
    w = wire(customers="    cli_policy: reject\n")
    w.from_caller(invite(1, user=DIALLED, from_user="+4930123456"))
    finals = [r for r in responses(w.take_caller()) if r.status >= 200]
    assert [r.status for r in finals] == [403]
    assert w.take_callee() == [] and w.core.calls == 0


def test_pai_from_a_trusted_trunk_is_the_caller() -> None:
    """The pbx (trusted) calls a customer: its PAI is believed, From is not."""
    w = wire()
    data = invite(
        1,
        user="0201234555",
        headers="P-Asserted-Identity: <sip:+31205550000@pbx.example.net;user=phone>\r\n",
        from_user="+31209999999",
        addr=CALLEE,
    ).replace(b"@127.0.0.1:5060", b"@127.0.0.3:5062")
    w.from_callee(data)
    (b_inv,) = requests(w.take_caller(), "INVITE")
    assert b_inv.get("p-asserted-identity") == "<sip:+31205550000@sip.example.net;user=phone>"
    assert_absent([b_inv], "209999999", "127.0.0.2")


# -- device identity -----------------------------------------------------------------------


def test_the_imei_in_the_callers_contact_never_reaches_the_callee() -> None:
    w = wire()
    extra = f'Accept-Contact: *;+sip.instance="<urn:gsma:imei:{IMEI}>"\r\n'
    _, seen = whole_call(w, invite(1, user=DIALLED, contact=INSTANCE, headers=extra))
    assert_absent(seen, IMEI, "imei", "sip.instance", "127.0.0.3")


def test_towards_an_untrusted_trunk_only_allowlisted_headers_pass() -> None:
    w = wire(pbx_trusted=False)
    extra = (
        "X-Customer-Account: 4711\r\n"
        "User-Agent: Yealink T46U 108.86.0.20\r\n"
        "P-Charging-Vector: icid-value=abc123;orig-ioi=customer.example\r\n"
        "P-Visited-Network-ID: visited.example\r\n"
        "Supported: 100rel, timer\r\n"
    )
    b_inv = b_leg(w, invite(1, user=DIALLED, headers=extra))
    assert_absent([b_inv], "X-Customer", "4711", "Yealink", "icid", "visited.example", "Subject")
    assert b_inv.get("content-type") == "application/sdp"


def test_history_info_and_diversion_are_anonymised_on_a_withheld_call() -> None:
    w = wire()
    extra = (
        f"History-Info: <sip:{CALLER_NUMBER}@customer.example>;index=1\r\n"
        f"Diversion: <sip:{CALLER_NUMBER}@customer.example>;reason=unconditional;counter=1\r\n"
    )
    b_inv = b_leg(w, invite(1, user="#31#" + DIALLED, headers=extra))
    assert (b_inv.get("history-info") or "").startswith("<sip:anonymous@anonymous.invalid>")
    assert "reason=unconditional" in (b_inv.get("diversion") or "")
    for name in ("history-info", "diversion"):
        assert CALLER_DIGITS not in (b_inv.get(name) or "")


# -- anonymous call rejection (RFC 5079) -------------------------------------------------


def test_reject_anonymous_trunk_433_for_a_withheld_call() -> None:
    w = wire(pbx="    reject_anonymous: true\n")
    w.from_caller(invite(1, user="#31#" + DIALLED))
    finals = [r for r in responses(w.take_caller()) if r.status >= 200]
    assert [r.status for r in finals] == [433]
    assert w.take_callee() == []
    # a presented call passes
    b_leg(w, invite(2, user=DIALLED))


def test_reject_anonymous_does_not_refuse_112() -> None:
    w = wire(emergency_route_to="pbx", pbx="    reject_anonymous: true\n")
    b_inv = b_leg(w, invite(1, user="#31#112", headers="Privacy: id\r\n"))
    assert b_inv.uri == "sip:112@127.0.0.2:5080"
    assert (b_inv.get("from") or "").startswith(f"<sip:{CALLER_NUMBER}@")


def psap_callback(n: int, untrusted_source: bool = False) -> bytes:
    """The PSAP (trusted) calls a customer back, its number withheld."""
    return (
        invite(
            n,
            user="0201234555",
            headers="Privacy: id\r\nPriority: psap-callback\r\n"
            "P-Asserted-Identity: <sip:+31205551120@psap.example.net;user=phone>\r\n",
            from_user="anonymous",
            addr=PSAP,
        )
        .replace(b"@127.0.0.1:5060", b"@127.0.0.3:5062")
        .replace(b"sipp <sip:anonymous@127.0.0.5:5080>", b"<sip:anonymous@anonymous.invalid>")
    )


def test_reject_anonymous_does_not_refuse_a_psap_callback_from_a_trusted_trunk() -> None:
    w = wire(customers="    reject_anonymous: true\n")
    w.from_peer(PSAP, psap_callback(1))
    (b_inv,) = requests(w.take_caller(), "INVITE")
    assert (b_inv.get("from") or "").startswith(ANONYMOUS_FROM)
    assert not b_inv.has("p-asserted-identity")  # customers is untrusted


def test_a_psap_callback_claim_from_an_untrusted_trunk_is_not_believed() -> None:
    w = wire(pbx="    reject_anonymous: true\n")
    w.from_caller(invite(1, user="#31#" + DIALLED, headers="Priority: psap-callback\r\n"))
    finals = [r for r in responses(w.take_caller()) if r.status >= 200]
    assert [r.status for r in finals] == [433]


# -- Privacy: session ----------------------------------------------------------------------


def test_privacy_session_critical_is_refused_500_where_media_is_not_anchored() -> None:
    w = wire()
    w.from_caller(invite(1, user=DIALLED, headers="Privacy: session;critical\r\n"))
    finals = [r for r in responses(w.take_caller()) if r.status >= 200]
    assert [r.status for r in finals] == [500]
    assert w.take_callee() == []


def test_privacy_session_without_critical_goes_on_with_what_can_be_given() -> None:
    w = wire()
    b_inv = b_leg(w, invite(1, user=DIALLED, headers="Privacy: id;session\r\n"))
    assert (b_inv.get("from") or "").startswith(ANONYMOUS_FROM)


# -- responses towards the caller ----------------------------------------------------------


def test_responses_to_an_untrusted_caller_carry_no_callee_identity_nor_location() -> None:
    w = wire()
    b_inv = b_leg(w, invite(1, user=DIALLED))
    callee_id = (
        "P-Asserted-Identity: <sip:+31698765432@pbx.example.net;user=phone>\r\n"
        "Privacy: id\r\n"
        "P-Access-Network-Info: 3GPP-E-UTRAN-FDD; utran-cell-id-3gpp=CALLEECELL99\r\n"
        "Server: PBX-Secret/1.0\r\n"
        "P-Charging-Vector: icid-value=callee-icid\r\n"
    )
    w.from_callee(response_to(b_inv, 180, "Ringing", "t", extra=callee_id))
    w.from_callee(response_to(b_inv, 200, "OK", "t", SDP_CALLEE, extra=callee_id))
    to_caller = w.take_caller()
    (ok,) = responses(to_caller, 200)
    assert not ok.has("p-asserted-identity")
    assert_absent(
        to_caller,
        "CALLEECELL99",
        "P-Access-Network-Info",
        "+31698765432",
        "PBX-Secret",
        "callee-icid",
        "127.0.0.2",
    )
    # nor in its requests
    w.from_caller(in_dialog("ACK", ok, 1, 1, "z9hG4bK-ack"))
    w.from_callee(callee_request("BYE", b_inv, "t", 1, 1, extra=callee_id))
    assert_absent(w.take_caller(), "CALLEECELL99", "+31698765432", "127.0.0.2")


def test_the_caller_sees_none_of_the_callees_topology() -> None:
    w = wire()
    b_inv = b_leg(w, invite(1, user=DIALLED))
    rr = "Record-Route: <sip:sbc.pbx.example;lr>\r\n"
    w.from_callee(response_to(b_inv, 200, "OK", "t", SDP_CALLEE, extra=rr))
    to_caller = w.take_caller()
    (ok,) = responses(to_caller, 200)
    assert ok.to.tag != "t"
    assert ok.call_id == "1-sim@127.0.0.3"
    assert_absent(to_caller, "sbc.pbx.example", "127.0.0.2", b_inv.call_id)
    assert (ok.contacts[0].uri.host, ok.contacts[0].uri.port) == ("127.0.0.1", 5060)


# -- more of the decision table, end to end ------------------------------------------------


@pytest.mark.parametrize("urn", ["urn:service:sos", "urn:service:sos.fire"])
def test_an_sos_urn_is_an_emergency_call(urn: str) -> None:
    w = wire(customers="    presentation: permanent\n")
    data = invite(1, user="112", headers="Privacy: id\r\n" + PANI).replace(
        b"INVITE sip:112@127.0.0.1:5060 SIP/2.0", f"INVITE {urn} SIP/2.0".encode()
    )
    b_inv = b_leg(w, data, peer=PSAP)
    assert b_inv.uri == urn
    assert (b_inv.get("from") or "").startswith(f"<sip:{CALLER_NUMBER}@")
    assert CELL_ID in (b_inv.get("p-access-network-info") or "")


@pytest.mark.parametrize("helpline", ["113", "116111"])
def test_a_helpline_is_no_emergency_call_its_caller_stays_withheld(helpline: str) -> None:
    w = wire()
    b_inv = b_leg(w, invite(1, user="#31#" + helpline, headers=PANI))  # to pbx, not the PSAP
    assert (b_inv.get("from") or "").startswith(ANONYMOUS_FROM)
    assert_absent([b_inv], CELL_ID)


def test_p_preferred_identity_is_a_hint_within_allowed_cli() -> None:
    w = wire(pbx_trusted=False)
    ppi = "P-Preferred-Identity: <sip:+31201234568@customer.example>\r\n"
    b_inv = b_leg(w, invite(1, user=DIALLED, headers=ppi))
    assert (b_inv.get("from") or "").startswith("<sip:+31201234568@sip.example.net;user=phone>")
    assert not b_inv.has("p-preferred-identity")
    # outside allowed_cli, the hint is not taken: From is
    ppi = "P-Preferred-Identity: <sip:+4930123456@customer.example>\r\n"
    b_inv = b_leg(w, invite(2, user=DIALLED, headers=ppi))
    assert (b_inv.get("from") or "").startswith(f"<sip:{CALLER_NUMBER}@sip.example.net")
    assert_absent([b_inv], "4930123456")


def test_rpid_privacy_from_a_trusted_trunk_withholds_towards_an_untrusted_one() -> None:
    w = wire()
    data = invite(
        1,
        user="0201234555",
        headers='Remote-Party-ID: "Reception" <sip:+31205550000@pbx.example.net>;privacy=full\r\n',
        from_user="+31205550000",
        addr=CALLEE,
    ).replace(b"@127.0.0.1:5060", b"@127.0.0.3:5062")
    w.from_callee(data)
    (b_inv,) = requests(w.take_caller(), "INVITE")
    assert (b_inv.get("from") or "").startswith(ANONYMOUS_FROM)
    assert b_inv.get("privacy") == "id"
    assert_absent([b_inv], "205550000", "Reception", "Remote-Party-ID")


def test_an_allowed_call_towards_an_untrusted_trunk_presents_the_number_only() -> None:
    w = wire(pbx_trusted=False)
    b_inv, seen = whole_call(w, invite(1, user=DIALLED, headers=PANI, contact=INSTANCE))
    presented = f"<sip:{CALLER_NUMBER}@sip.example.net;user=phone>"
    assert (b_inv.get("from") or "").startswith(presented + ";tag=")
    assert_absent(seen, "127.0.0.3", CELL_ID, IMEI, "sipp", "Performance Test")


def test_a_reload_applies_to_new_calls_only() -> None:
    w = wire()
    first = b_leg(w, invite(1, user=DIALLED))
    assert (first.get("from") or "").startswith(f"<sip:{CALLER_NUMBER}@")
    w.from_callee(response_to(first, 200, "OK", "t", SDP_CALLEE))
    (ok,) = responses(w.take_caller(), 200)
    w.core.reload(config_text(policy(customers="    presentation: permanent\n")))
    second = b_leg(w, invite(2, user=DIALLED))
    assert (second.get("from") or "").startswith(ANONYMOUS_FROM)
    # the call in progress keeps what it started with, also in its in-dialog requests
    w.from_caller(in_dialog("ACK", ok, 1, 1, "z9hG4bK-ack"))
    w.from_caller(in_dialog("BYE", ok, 2, 1, "z9hG4bK-bye"))
    (bye,) = requests(w.take_callee(), "BYE")
    assert (bye.get("from") or "").startswith(f"<sip:{CALLER_NUMBER}@")
    end = [r for r in w.core.cdr_out if r.kind == "end"][-1]
    assert end.presentation == "allowed"


# -- review regressions: what a withheld caller's phone puts elsewhere --------------------

SDP_WITH_IDENTITY = SDP.replace(b"o=user1 ", f"o={CALLER_NUMBER} ".encode()).replace(
    b"s=-\r\n",
    f"s=Call from {CALLER_NUMBER}\r\np=+31 20 123 4567\r\ne=alice@example.com\r\n".encode(),
)


def sdp_lines(msg: Request | Response) -> list[bytes]:
    return msg.body.split(b"\r\n")


def test_the_sdp_of_a_withheld_call_carries_no_identity_also_in_a_session_refresh() -> None:
    """o= username, s=, p=, e= are the SDP's From and Subject (RFC 4566 §5.2-§5.6)."""
    w = wire(pbx_trusted=False)
    b_inv = b_leg(w, invite(1, user="#31#" + DIALLED, body=SDP_WITH_IDENTITY))
    assert b"o=- 53655765 2353687637 IN IP4 127.0.0.3" in sdp_lines(b_inv)
    assert b"s=-" in sdp_lines(b_inv)
    assert b"c=IN IP4 127.0.0.3" in sdp_lines(b_inv)  # the media address: media: pass
    assert int(b_inv.get("content-length") or "") == len(b_inv.body)
    for secret in (b"201234567", b"20 123", b"alice"):
        assert secret not in b_inv.body
    # the callee refreshes nothing: we do, by re-INVITE (no UPDATE allowed), with the
    # SDP we sent, i.e. the anonymised one, its o= line unchanged (RFC 3264 §8)
    ok_extra = "Session-Expires: 120;refresher=uac\r\nRequire: timer\r\n"
    w.from_callee(response_to(b_inv, 200, "OK", "t", SDP_CALLEE, extra=ok_extra))
    (ok,) = responses(w.take_caller(), 200)
    w.from_caller(in_dialog("ACK", ok, 1, 1, "z9hG4bK-ack"))
    w.take_callee()
    w.advance(60.2)  # half the interval: our refresh (RFC 4028 §10)
    (refresh,) = requests(w.take_callee(), "INVITE")
    assert refresh.body == b_inv.body
    w.from_callee(response_to(refresh, 200, "OK", None, SDP_CALLEE, extra=ok_extra))
    w.take_callee()  # our ACK
    # a re-INVITE of the caller's own is anonymised the same way
    w.from_caller(in_dialog("INVITE", ok, 2, 1, "z9hG4bK-re", SDP_WITH_IDENTITY))
    (re,) = requests(w.take_callee(), "INVITE")
    assert re.body == b_inv.body


def test_the_sdp_of_a_presented_call_is_relayed_as_it_is() -> None:
    w = wire()
    b_inv = b_leg(w, invite(1, user=DIALLED, body=SDP_WITH_IDENTITY))
    assert b_inv.body == SDP_WITH_IDENTITY


def test_a_late_offer_answer_in_the_ack_is_anonymised_too() -> None:
    w = wire()
    b_inv = b_leg(w, invite(1, user="#31#" + DIALLED, body=b""))
    w.from_callee(response_to(b_inv, 200, "OK", "t", SDP_CALLEE))
    (ok,) = responses(w.take_caller(), 200)
    ack = in_dialog("ACK", ok, 1, 1, "z9hG4bK-ack", SDP_WITH_IDENTITY)
    w.from_caller(ack)
    (b_ack,) = requests(w.take_callee(), "ACK")
    assert b"o=- 53655765" in b_ack.body and CALLER_DIGITS.encode() not in b_ack.body


PIDF = (
    b'<?xml version="1.0"?>\r\n<presence xmlns="urn:ietf:params:xml:ns:pidf" '
    b'entity="pres:+31201234567@customer.example"><tuple id="t"><status><geopriv>'
    b"<location-info><pos>52.37 4.89</pos></location-info></geopriv></status></tuple>"
    b"</presence>"
)


def with_location(data: bytes, sdp: bytes = SDP) -> bytes:
    """The caller's INVITE with its SDP and a PIDF-LO (RFC 6442 location by value)."""
    body = (
        b"--b1\r\nContent-Type: application/sdp\r\n\r\n" + sdp + b"\r\n"
        b"--b1\r\nContent-Type: application/pidf+xml\r\nContent-ID: <loc@customer.example>"
        b"\r\n\r\n" + PIDF + b"\r\n--b1--\r\n"
    )
    head = data.split(b"\r\n\r\n", 1)[0]
    head = head.replace(
        b"Content-Type: application/sdp", b"Content-Type: multipart/mixed;boundary=b1"
    ).replace(f"Content-Length: {len(sdp)}".encode(), f"Content-Length: {len(body)}".encode())
    return head + b"\r\nGeolocation: <cid:loc@customer.example>\r\n\r\n" + body


def test_location_by_value_reaches_only_the_emergency_service() -> None:
    w = wire()
    b_inv = b_leg(w, with_location(invite(1, user=DIALLED)))
    assert b"52.37" not in b_inv.body and b"pidf" not in b_inv.body
    assert SDP in b_inv.body  # the session goes on
    assert int(b_inv.get("content-length") or "") == len(b_inv.body)
    assert_absent([b_inv], "Geolocation")
    # a withheld call: no location, and no number in the SDP part either
    b_inv = b_leg(w, with_location(invite(2, user="#31#" + DIALLED), SDP_WITH_IDENTITY))
    assert b"52.37" not in b_inv.body and CALLER_DIGITS.encode() not in b_inv.body
    # the emergency service gets it all
    b_inv = b_leg(w, with_location(invite(3, user="#31#112")), peer=PSAP)
    assert PIDF in b_inv.body
    assert b_inv.get("geolocation") == "<cid:loc@customer.example>"


def test_the_callees_location_body_does_not_reach_the_caller() -> None:
    w = wire()
    b_inv = b_leg(w, invite(1, user=DIALLED))
    body = (
        b"--b2\r\nContent-Type: application/sdp\r\n\r\n" + SDP_CALLEE + b"\r\n"
        b"--b2\r\nContent-Type: application/pidf+xml\r\n\r\n" + PIDF + b"\r\n--b2--\r\n"
    )
    resp = response_to(b_inv, 200, "OK", "t", body).replace(
        b"Content-Type: application/sdp", b"Content-Type: multipart/mixed;boundary=b2"
    )
    w.from_callee(resp)
    (ok,) = responses(w.take_caller(), 200)
    assert b"52.37" not in ok.body and SDP_CALLEE in ok.body
    assert int(ok.get("content-length") or "") == len(ok.body)


def test_a_bye_reason_loses_its_free_text_towards_an_untrusted_trunk() -> None:
    """RFC 3326 Reason: the cause goes on, the text (free text) passes no allowlist."""
    w = wire(pbx_trusted=False)
    e = establish(w, 1, invite(1, user="#31#" + DIALLED))
    reason = f'Reason: Q.850;cause=16;text="Alice {CALLER_NUMBER} hung up"\r\n'
    w.from_caller(in_dialog("BYE", e.a_ok, 2, 1, "z9hG4bK-bye", extra=reason))
    (bye,) = requests(w.take_callee(), "BYE")
    assert bye.get_lines("reason") == ["Q.850;cause=16"]
    assert_absent([bye], CALLER_DIGITS, "Alice")


def test_a_psap_callback_claim_from_an_untrusted_trunk_is_not_passed_on() -> None:
    """Never believed (SPEC §2), so never handed to a trusted trunk that would believe it."""
    w = wire()
    e = establish(w, 1, invite(1, user=DIALLED, headers="Priority: psap-callback\r\n"))
    assert not e.b_invite.has("priority")
    w.from_caller(in_dialog("INFO", e.a_ok, 2, 1, "z9hG4bK-i", extra="Priority: psap-callback\r\n"))
    (info,) = requests(w.take_callee(), "INFO")
    assert not info.has("priority")


def test_privacy_history_anonymises_history_info_on_a_presented_call() -> None:
    """RFC 7044 §10.1: ``Privacy: history``. sipguard sends no Privacy header that would
    ask the next hop for it, so it anonymises itself."""
    w = wire()
    extra = "Privacy: history\r\nHistory-Info: <sip:+31205550123@pbx.example>;index=1\r\n"
    b_inv = b_leg(w, invite(1, user=DIALLED, headers=extra))
    assert (b_inv.get("from") or "").startswith(f"<sip:{CALLER_NUMBER}@")  # presented
    assert b_inv.get("history-info") == "<sip:anonymous@anonymous.invalid>;index=1"


@pytest.mark.parametrize("code", ["#31#", "%2331%23"])
def test_a_withhold_code_in_to_only_withholds(code: str) -> None:
    """The PBX stripped the code from the Request-URI (or retargeted): To still shows
    what the subscriber dialled, and a code there withholds; it is gone from To too."""
    w = wire(pbx_trusted=False)
    data = invite(1, user=DIALLED).replace(
        f"To: <sip:{DIALLED}@".encode(), f"To: <sip:{code}{DIALLED}@".encode()
    )
    b_inv, seen = whole_call(w, data)
    assert (b_inv.get("from") or "").startswith(ANONYMOUS_FROM)
    assert b_inv.to.uri.user == DIALLED
    assert_absent(seen, CALLER_DIGITS, "#31#", "%2331%23")


def test_an_emergency_call_of_an_unknown_caller_asks_for_no_privacy() -> None:
    """No number to present (untrusted trunk, no default_cli), but id is still dropped."""
    text = policy().replace('    default_cli: "+31201234000"\n', "", 1)
    w = Wire(config_text(text))
    b_inv = b_leg(w, invite(1, user="#31#112", from_user="+4930123456"), peer=PSAP)
    assert (b_inv.get("from") or "").startswith(ANONYMOUS_FROM)
    assert b_inv.get("privacy") == "none"
    assert_absent([b_inv], "4930123456")


def from_pbx(n: int, user: str, pai: str) -> bytes:
    """A call from the pbx (trusted) towards a customer, with these PAI header lines."""
    return invite(n, user=user, headers=pai, from_user="+31205550000", addr=CALLEE).replace(
        b"@127.0.0.1:5060", b"@127.0.0.3:5062"
    )


def test_an_emergency_call_with_a_malformed_pai_is_not_refused() -> None:
    """RFC 3325 §9.1 allows one SIP (or SIPS) and one tel URI: more is a 400, but never
    for an emergency call, which then goes on with From."""
    pai = (
        "P-Asserted-Identity: <sip:+31205550001@pbx.example>\r\n"
        "P-Asserted-Identity: <sips:+31205550002@pbx.example>\r\n"
    )
    w = wire()
    w.from_callee(from_pbx(1, "0201234555", pai))
    assert [r.status for r in responses(w.take_callee()) if r.status >= 200] == [400]
    w.from_callee(from_pbx(2, "112", pai))
    assert [r.status for r in responses(w.take_callee()) if r.status >= 200] == []
    (b_inv,) = requests(w.take_caller(), "INVITE")
    assert b_inv.get("p-asserted-identity") == "<sip:+31205550000@sip.example.net;user=phone>"
