"""sipguard.policy.headers: what reaches the B-leg, and the identities sipguard builds."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sipguard.policy.headers import (
    AUTH,
    CHARGING,
    DEFAULT_ALLOWLIST,
    IDENTITY_HEADERS,
    LOCATION,
    LOCATION_AND_DEVICE,
    NEVER_COPIED,
    anonymise_diversion,
    anonymise_history_info,
    anonymous_from,
    carries_device_identity,
    copy_headers,
    presented_identity,
    reason_without_text,
    split_entries,
)

CALLER = "+31201234567"
IMEI = "urn:gsma:imei:35209900-176148-1"
CELL = "3GPP-E-UTRAN-FDD; utran-cell-id-3gpp=262011234567890"

# An A-leg INVITE as a phone behind a PBX might send it (names already canonical).
A_LEG = [
    ("via", "SIP/2.0/UDP 10.0.0.7:5060;branch=z9hG4bK776"),
    ("max-forwards", "70"),
    ("from", f'"Alice" <sip:{CALLER}@pbx.example;user=phone>;tag=1928'),
    ("to", "<sip:0201234568@sg.example;user=phone>"),
    ("call-id", "a84b4c76e66710@10.0.0.7"),
    ("cseq", "314159 INVITE"),
    ("contact", f'<sip:alice@10.0.0.7>;+sip.instance="<{IMEI}>"'),
    ("record-route", "<sip:10.0.0.1;lr>"),
    ("route", "<sip:sg.example;lr>"),
    ("privacy", "id"),
    ("p-asserted-identity", f"<sip:{CALLER}@pbx.example;user=phone>"),
    ("p-preferred-identity", f"<sip:{CALLER}@pbx.example>"),
    ("remote-party-id", f"<sip:{CALLER}@pbx.example>;privacy=full"),
    ("content-type", "application/sdp"),
    ("content-length", "142"),
    ("supported", "timer, 100rel"),
    ("allow", "INVITE, ACK, CANCEL, BYE, OPTIONS"),
    ("session-expires", "1800;refresher=uac"),
    ("min-se", "90"),
    ("user-agent", "Yealink SIP-T46S 66.86.0.15"),
    ("subject", "Call from Alice"),
    ("organization", "Example BV"),
    ("call-info", "<http://example.com/alice.png>;purpose=icon"),
    ("p-access-network-info", CELL),
    ("geolocation", "<cid:target123@10.0.0.7>"),
    ("p-charging-vector", "icid-value=1234bc9876e;icid-generated-at=10.0.0.7"),
    ("p-visited-network-id", "other.net"),
    ("history-info", f"<sip:{CALLER}@pbx.example>;index=1"),
    ("diversion", f"<sip:{CALLER}@pbx.example>;reason=unconditional;counter=1"),
    ("x-customer-id", "42"),
    ("x-original-caller", CALLER),
    ("p-early-media", "supported"),
    ("reason", "Q.850;cause=16"),
    ("proxy-authorization", 'Digest username="alice", realm="pbx", response="x"'),
]


def names(headers: list[tuple[str, str]]) -> list[str]:
    return [n for n, _ in headers]


def text(headers: list[tuple[str, str]]) -> str:
    return "\n".join(f"{n}: {v}" for n, v in headers)


# --- towards an untrusted trunk ------------------------------------------------------------


def test_untrusted_allowed_only_allowlist() -> None:
    out = copy_headers(A_LEG, towards_trusted=False, restricted=False)
    assert names(out) == [
        "content-type",
        "supported",
        "allow",
        "session-expires",
        "min-se",
        "reason",  # its cause only (test_reason_towards_an_untrusted_trunk_loses_its_text)
    ]


@pytest.mark.parametrize("restricted", [False, True])
def test_untrusted_never_sees_the_caller_or_the_device(restricted: bool) -> None:
    out = text(copy_headers(A_LEG, towards_trusted=False, restricted=restricted))
    for secret in (CALLER, "10.0.0.7", "262011234567890", "35209900", "Alice", "Yealink"):
        assert secret not in out


def test_untrusted_trunk_allowlist_adds_headers() -> None:
    out = copy_headers(
        A_LEG,
        towards_trusted=False,
        restricted=False,
        allowlist=frozenset({"x-customer-id", "reason", "diversion"}),
    )
    assert ("x-customer-id", "42") in out
    assert ("reason", "Q.850;cause=16") in out
    assert ("diversion", f"<sip:{CALLER}@pbx.example>;reason=unconditional;counter=1") in out


def test_trunk_allowlist_cannot_let_through_what_never_passes() -> None:
    dangerous = frozenset(
        {"p-asserted-identity", "via", "contact", "p-access-network-info", "p-charging-vector"}
    )
    out = copy_headers(A_LEG, towards_trusted=False, restricted=False, allowlist=dangerous)
    assert not set(names(out)) & dangerous


def test_allowlisted_diversion_anonymised_when_restricted() -> None:
    out = copy_headers(
        A_LEG, towards_trusted=False, restricted=True, allowlist=frozenset({"diversion"})
    )
    assert ("diversion", "<sip:anonymous@anonymous.invalid>;reason=unconditional;counter=1") in out


def test_allowlisted_user_agent_still_removed_when_restricted() -> None:
    allow = frozenset({"user-agent"})
    out = copy_headers(A_LEG, towards_trusted=False, restricted=False, allowlist=allow)
    assert "user-agent" in names(out)
    out = copy_headers(A_LEG, towards_trusted=False, restricted=True, allowlist=allow)
    assert "user-agent" not in names(out)


# --- towards a trusted trunk ---------------------------------------------------------------


def test_trusted_allowed_passes_end_to_end_headers() -> None:
    out = copy_headers(A_LEG, towards_trusted=True, restricted=False)
    assert names(out) == [
        "content-type",
        "supported",
        "allow",
        "session-expires",
        "min-se",
        "user-agent",
        "subject",
        "organization",
        "call-info",
        "history-info",
        "diversion",
        "x-customer-id",
        "x-original-caller",
        "p-early-media",
        "reason",
    ]
    assert ("history-info", f"<sip:{CALLER}@pbx.example>;index=1") in out


def test_trusted_restricted_removes_identity_headers() -> None:
    out = copy_headers(A_LEG, towards_trusted=True, restricted=True)
    assert not set(names(out)) & IDENTITY_HEADERS
    assert ("history-info", "<sip:anonymous@anonymous.invalid>;index=1") in out
    assert ("diversion", "<sip:anonymous@anonymous.invalid>;reason=unconditional;counter=1") in out
    # an X- header towards a trusted trunk is the operator's business (it passes)
    assert ("x-customer-id", "42") in out


def test_privacy_history_anonymises_history_info_only() -> None:
    out = copy_headers(A_LEG, towards_trusted=True, restricted=False, anonymise_history=True)
    assert ("history-info", "<sip:anonymous@anonymous.invalid>;index=1") in out
    assert ("diversion", f"<sip:{CALLER}@pbx.example>;reason=unconditional;counter=1") in out


@pytest.mark.parametrize("trusted", [False, True])
@pytest.mark.parametrize("restricted", [False, True])
def test_location_device_charging_never_pass(trusted: bool, restricted: bool) -> None:
    out = copy_headers(A_LEG, towards_trusted=trusted, restricted=restricted)
    assert not set(names(out)) & (LOCATION_AND_DEVICE | NEVER_COPIED)
    for secret in ("262011234567890", "35209900", "icid-value"):
        assert secret not in text(out)


# --- emergency ----------------------------------------------------------------------------


@pytest.mark.parametrize("trusted", [False, True])
def test_location_reaches_the_emergency_trunk(trusted: bool) -> None:
    out = copy_headers(
        A_LEG, towards_trusted=trusted, restricted=False, emergency_to_emergency_trunk=True
    )
    assert ("p-access-network-info", CELL) in out
    assert ("geolocation", "<cid:target123@10.0.0.7>") in out
    assert not set(names(out)) & (CHARGING | NEVER_COPIED)
    assert "35209900" not in text(out)  # the device identity still never


def test_device_identity_in_any_header_is_dropped() -> None:
    headers = [
        ("x-device", IMEI),
        ("p-early-media", f"supported;{IMEI}"),
        ("call-info", "<urn:imei:35209900>;purpose=info"),
        ("subject", "+sip.instance"),
        ("organization", "sip:234150999999999@ims.mnc015.mcc234.3gppnetwork.org"),
        ("content-type", "application/sdp"),
    ]
    out = copy_headers(headers, towards_trusted=True, restricted=False)
    assert out == [("content-type", "application/sdp")]
    out = copy_headers(
        headers, towards_trusted=True, restricted=False, emergency_to_emergency_trunk=True
    )
    assert out == [("content-type", "application/sdp")]


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (IMEI, True),
        ("URN:GSMA:IMEI:35209900-176148-1", True),
        ("urn:gsma:imeisv:3520990017614823", True),
        ("urn:imei:35209900", True),
        ('<sip:a@b>;+sip.instance="<urn:uuid:f81d4fae>"', True),
        ("sip:234150999999999@ims.mnc015.mcc234.3gppnetwork.org", True),
        ("urn:3gpp:imsi:234150999999999", True),
        ("application/sdp", False),
        ("timer, 100rel", False),
        ("", False),
    ],
)
def test_carries_device_identity(value: str, expected: bool) -> None:
    assert carries_device_identity(value) is expected


# --- shape of the filter ------------------------------------------------------------------


def test_names_are_case_insensitive_and_kept_as_given() -> None:
    out = copy_headers(
        [("Content-Type", "application/sdp"), ("VIA", "x"), ("User-Agent", "y")],
        towards_trusted=False,
        restricted=False,
    )
    assert out == [("Content-Type", "application/sdp")]


def test_repeated_headers_keep_their_order() -> None:
    headers = [("supported", "timer"), ("allow", "INVITE"), ("supported", "100rel")]
    assert copy_headers(headers, towards_trusted=False, restricted=False) == headers


@pytest.mark.parametrize("trusted", [False, True])
def test_auth_headers_only_when_named(trusted: bool) -> None:
    challenge = [("proxy-authenticate", 'Digest realm="pbx", nonce="abc"')]
    assert copy_headers(challenge, towards_trusted=trusted, restricted=False) == []
    assert (
        copy_headers(
            challenge,
            towards_trusted=trusted,
            restricted=True,
            allowlist=frozenset({"proxy-authenticate"}),
        )
        == challenge
    )


def test_sets_are_disjoint_and_lower_case() -> None:
    sets = [DEFAULT_ALLOWLIST, NEVER_COPIED, IDENTITY_HEADERS, LOCATION, CHARGING, AUTH]
    for i, a in enumerate(sets):
        assert all(n == n.lower() for n in a)
        for b in sets[i + 1 :]:
            assert not a & b


_NAMES = st.one_of(
    st.sampled_from(
        sorted(
            DEFAULT_ALLOWLIST
            | NEVER_COPIED
            | IDENTITY_HEADERS
            | LOCATION_AND_DEVICE
            | AUTH
            | {"history-info", "diversion", "reason", "priority"}
        )
    ),
    st.text(max_size=12),
)
_HEADERS = st.lists(st.tuples(_NAMES, st.text(max_size=40)), max_size=12)


@given(
    _HEADERS,
    st.booleans(),
    st.booleans(),
    st.booleans(),
    st.frozensets(st.text(max_size=12), max_size=3),
    st.booleans(),
)
def test_copy_headers_invariants(
    headers: list[tuple[str, str]],
    trusted: bool,
    restricted: bool,
    emergency: bool,
    allowlist: frozenset[str],
    from_trusted: bool,
) -> None:
    out = copy_headers(
        headers,
        towards_trusted=trusted,
        restricted=restricted,
        emergency_to_emergency_trunk=emergency,
        allowlist=allowlist,
        from_trusted=from_trusted,
    )
    got = {n.lower() for n, _ in out}
    assert not got & NEVER_COPIED
    assert not got & CHARGING
    if not emergency:
        assert not got & LOCATION
    if not trusted:
        location = LOCATION if emergency else frozenset()
        assert got <= DEFAULT_ALLOWLIST | allowlist | location | {"reason"}
        if "reason" not in allowlist:
            reasons = [v for n, v in out if n.lower() == "reason"]
            assert all('"' not in v and "text=" not in v.lower() for v in reasons)
    if not from_trusted:
        assert all(v.strip().lower() != "psap-callback" for n, v in out if n.lower() == "priority")
    assert not got & (AUTH - allowlist)
    if restricted:
        assert not got & IDENTITY_HEADERS
    assert not any(carries_device_identity(v) for _, v in out)


def test_psap_callback_priority_passes_only_from_a_trusted_trunk() -> None:
    headers = [("priority", "psap-callback"), ("priority", "urgent")]
    out = copy_headers(headers, towards_trusted=True, restricted=False, from_trusted=False)
    assert out == [("priority", "urgent")]
    out = copy_headers(headers, towards_trusted=True, restricted=False, from_trusted=True)
    assert out == headers
    out = copy_headers(
        [("Priority", " PSAP-Callback ")],
        towards_trusted=True,
        restricted=False,
        from_trusted=False,
    )
    assert out == []


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ('Q.850;cause=16;text="Alice +31201234567 hung up"', "Q.850;cause=16"),
        ('SIP ; cause=200 ; text="Call completed elsewhere"', "SIP;cause=200"),
        ('Q.850;text="x;cause=7;y";cause=17', "Q.850;cause=17"),
        ('SIP;cause=487, Q.850;cause=31;text="a, b"', "SIP;cause=487, Q.850;cause=31"),
        ('SIP;text="no cause"', ""),
        ("Q.850;cause=+31201234567", ""),
        ("<sip:+31201234567@x>;cause=1", ""),
    ],
)
def test_reason_without_text(value: str, expected: str) -> None:
    assert reason_without_text(value) == expected


def test_reason_towards_an_untrusted_trunk_loses_its_text() -> None:
    headers = [("reason", 'Q.850;cause=16;text="Alice +31201234567"')]
    out = copy_headers(headers, towards_trusted=False, restricted=False)
    assert out == [("reason", "Q.850;cause=16")]
    assert copy_headers(headers, towards_trusted=True, restricted=True) == headers
    out = copy_headers(
        headers, towards_trusted=False, restricted=False, allowlist=frozenset({"reason"})
    )
    assert out == headers  # the operator's choice
    assert copy_headers([("reason", 'SIP;text="x"')], towards_trusted=False, restricted=False) == []


# --- History-Info and Diversion ------------------------------------------------------------


@pytest.mark.parametrize(
    ("values", "expected"),
    [
        (
            [
                '"Bob" <sip:bob@example.com?Reason=SIP%3Bcause%3D302>;index=1.1;rc=1, '
                "<sip:+31201234568@example.com;user=phone>;index=1.1.1;mp=1.1"
            ],
            [
                "<sip:anonymous@anonymous.invalid>;index=1.1;rc=1",
                "<sip:anonymous@anonymous.invalid>;index=1.1.1;mp=1.1",
            ],
        ),
        (
            ["<sip:a@x>;index=1", "<sip:b@x>;index=1.1;np=1"],
            [
                "<sip:anonymous@anonymous.invalid>;index=1",
                "<sip:anonymous@anonymous.invalid>;index=1.1;np=1",
            ],
        ),
        (
            ['<sip:a@x>;index=1;foo="alice@x";privacy=history'],
            ["<sip:anonymous@anonymous.invalid>;index=1"],
        ),
        (["garbage"], ["<sip:anonymous@anonymous.invalid>"]),
        ([""], []),
        ([], []),
    ],
)
def test_anonymise_history_info(values: list[str], expected: list[str]) -> None:
    assert anonymise_history_info(values) == expected


@pytest.mark.parametrize(
    ("values", "expected"),
    [
        (
            ['"Alice" <sip:+31201234567@pbx;user=phone>;reason=unconditional;counter=1'],
            ["<sip:anonymous@anonymous.invalid>;reason=unconditional;counter=1"],
        ),
        (
            ["<tel:+31201234567>;reason=user-busy;privacy=full;screen=no;limit=5"],
            ["<sip:anonymous@anonymous.invalid>;reason=user-busy;privacy=full;screen=no;limit=5"],
        ),
        (
            ['<sip:a@x>;reason="unknown";extra=bob@x'],
            ["<sip:anonymous@anonymous.invalid>"],
        ),
        (
            ['"Doe, John" <sip:a@x>;counter=2, <sip:b@x>;counter'],
            [
                "<sip:anonymous@anonymous.invalid>;counter=2",
                "<sip:anonymous@anonymous.invalid>;counter",
            ],
        ),
    ],
)
def test_anonymise_diversion(values: list[str], expected: list[str]) -> None:
    assert anonymise_diversion(values) == expected


@given(st.lists(st.text(max_size=60), max_size=4))
def test_anonymised_entries_carry_no_address(values: list[str]) -> None:
    for entry in anonymise_history_info(values) + anonymise_diversion(values):
        assert entry.startswith("<sip:anonymous@anonymous.invalid>")
        assert "@" not in entry.removeprefix("<sip:anonymous@anonymous.invalid>")
        assert '"' not in entry


def test_split_entries() -> None:
    assert split_entries('"a, b" <sip:x@y>;p=1, <sip:z@y;q=1,2>, sip:w@y') == [
        '"a, b" <sip:x@y>;p=1',
        "<sip:z@y;q=1,2>",
        "sip:w@y",
    ]
    assert split_entries('"a\\", b" <sip:x@y>') == ['"a\\", b" <sip:x@y>']
    assert split_entries(" , ") == []


# --- identities sipguard builds --------------------------------------------------------------


def test_anonymous_from() -> None:
    assert anonymous_from("a1b2") == '"Anonymous" <sip:anonymous@anonymous.invalid>;tag=a1b2'


@pytest.mark.parametrize("tag", ["", "a b", "a;b", "a\r\nVia: x"])
def test_anonymous_from_rejects_bad_tags(tag: str) -> None:
    with pytest.raises(ValueError, match="tag"):
        anonymous_from(tag)


def test_presented_identity() -> None:
    assert (
        presented_identity(CALLER, "sip.example.net")
        == "sip:+31201234567@sip.example.net;user=phone"
    )
    assert (
        presented_identity(CALLER, "[2001:db8::1]") == "sip:+31201234567@[2001:db8::1];user=phone"
    )


@pytest.mark.parametrize(
    ("number", "domain"),
    [
        ("0201234567", "sip.example.net"),
        ("+31201234567;x", "sip.example.net"),
        ("+31201234567", ""),
        ("+31201234567", "a b"),
        ("+31201234567", "x>\r\n"),
    ],
)
def test_presented_identity_rejects_misuse(number: str, domain: str) -> None:
    with pytest.raises(ValueError, match=r"E\.164|domain"):
        presented_identity(number, domain)
