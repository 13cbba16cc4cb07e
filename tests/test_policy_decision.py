"""sipguard.policy.decision: the SPEC §3 table, row by row, and what trips real systems."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import get_args

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sipguard.config.model import ClirCodes, Presentation, Trunk
from sipguard.policy.decision import (
    REASONS,
    CallFacts,
    Decision,
    Reason,
    Refusal,
    decide,
    facts_from,
    is_psap_callback,
    privacy_tokens,
    refusal,
    rpid_privacy,
)

CALLER = "+31201234567"
DEFAULT_RESTRICTED = "+31201234999"
PERMANENT = "+31201234888"
EMERGENCY = ("112", "911")
CODES = ClirCodes()


def trunk(
    presentation: Presentation = "allowed",
    *,
    trusted: bool = False,
    reject_anonymous: bool = False,
    name: str = "customers",
) -> Trunk:
    return Trunk(
        name=name,
        trusted=trusted,
        presentation=presentation,
        restricted_numbers=frozenset({DEFAULT_RESTRICTED}),
        permanent_numbers=frozenset({PERMANENT}),
        reject_anonymous=reject_anonymous,
    )


def facts(
    *,
    presentation: Presentation = "allowed",
    trusted: bool = False,
    caller: str = CALLER,
    emergency: bool = False,
    code: str | None = None,
    privacy: str = "",
    rpid: str | None = None,
    psap: bool = False,
) -> CallFacts:
    return CallFacts(
        trunk_in=trunk(presentation, trusted=trusted),
        caller=caller,
        emergency=emergency,
        clir_code=code,  # type: ignore[arg-type]
        privacy=privacy_tokens([privacy] if privacy else []),
        rpid_privacy=rpid,
        psap_callback=psap,
    )


# --- SPEC §3, row by row ---------------------------------------------------------------


STEP: dict[str, int] = {
    "emergency": 1,
    "withhold_code": 2,
    "present_code": 3,
    "privacy_none": 3,
    "privacy_header": 4,
    "rpid_privacy": 4,
    "permanent": 5,
    "restricted_default": 5,
    "default": 6,
}


@dataclass(frozen=True)
class Row:
    step: int
    facts: CallFacts
    presentation: str
    reason: Reason
    note: str = field(default="")


SPEC_TABLE = [
    # step 1: emergency, allowed forced, whatever else says otherwise
    Row(1, facts(emergency=True), "allowed", "emergency"),
    Row(1, facts(emergency=True, code="withhold"), "allowed", "emergency", "#31#112"),
    Row(1, facts(emergency=True, privacy="id"), "allowed", "emergency"),
    Row(1, facts(emergency=True, presentation="permanent"), "allowed", "emergency"),
    Row(
        1, facts(emergency=True, caller=PERMANENT, privacy="id;user;header"), "allowed", "emergency"
    ),
    Row(1, facts(emergency=True, trusted=True, rpid="full"), "allowed", "emergency"),
    # step 2: per-call withhold code
    Row(2, facts(code="withhold"), "restricted", "withhold_code"),
    Row(2, facts(code="withhold", privacy="none"), "restricted", "withhold_code"),
    Row(2, facts(code="withhold", presentation="permanent"), "restricted", "withhold_code"),
    # step 3: per-call present code or Privacy: none, not in permanent mode
    Row(3, facts(code="present"), "allowed", "present_code"),
    Row(3, facts(code="present", presentation="restricted"), "allowed", "present_code"),
    Row(3, facts(code="present", caller=DEFAULT_RESTRICTED), "allowed", "present_code"),
    Row(3, facts(privacy="none"), "allowed", "privacy_none"),
    Row(3, facts(privacy="none", presentation="restricted"), "allowed", "privacy_none"),
    Row(
        3,
        facts(privacy="none", caller=DEFAULT_RESTRICTED),
        "allowed",
        "privacy_none",
        "Privacy: none with a default-restricted caller",
    ),
    Row(3, facts(privacy="None"), "allowed", "privacy_none", "case-insensitive"),
    Row(
        3,
        facts(code="present", privacy="id"),
        "allowed",
        "present_code",
        "the dialled code beats the header (step 3 before step 4)",
    ),
    Row(3, facts(code="present", privacy="none"), "allowed", "present_code"),
    Row(3, facts(privacy="none", trusted=True, rpid="full"), "allowed", "privacy_none"),
    # step 4: Privacy id/user/header, or trusted RPID privacy= other than off (and the
    # cases that reach step 4 and fall through it)
    Row(4, facts(privacy="id"), "restricted", "privacy_header"),
    Row(4, facts(privacy="user"), "restricted", "privacy_header"),
    Row(4, facts(privacy="header"), "restricted", "privacy_header"),
    Row(4, facts(privacy="id;user"), "restricted", "privacy_header"),
    Row(4, facts(privacy="ID ; User"), "restricted", "privacy_header"),
    Row(4, facts(privacy="id, user"), "restricted", "privacy_header"),
    Row(4, facts(privacy="id;critical"), "restricted", "privacy_header"),
    Row(
        4,
        facts(privacy="none;id"),
        "restricted",
        "privacy_header",
        "a self-contradicting header is resolved towards privacy",
    ),
    Row(
        5,
        facts(privacy="none", presentation="permanent"),
        "restricted",
        "permanent",
        "Privacy: none in permanent mode falls to step 5",
    ),
    Row(4, facts(privacy="id", presentation="permanent"), "restricted", "privacy_header"),
    Row(
        4,
        facts(code="present", privacy="id", presentation="permanent"),
        "restricted",
        "privacy_header",
    ),
    Row(4, facts(trusted=True, rpid="full"), "restricted", "rpid_privacy"),
    Row(4, facts(trusted=True, rpid="name"), "restricted", "rpid_privacy"),
    Row(4, facts(trusted=True, rpid="uri"), "restricted", "rpid_privacy"),
    Row(4, facts(trusted=True, rpid=""), "restricted", "rpid_privacy"),
    Row(6, facts(trusted=True, rpid="off"), "allowed", "default"),
    Row(6, facts(trusted=True, rpid="OFF"), "allowed", "default"),
    Row(
        6,
        facts(trusted=False, rpid="full"),
        "allowed",
        "default",
        "RPID from an untrusted trunk is never believed",
    ),
    # step 5: restricted by default or permanently
    Row(5, facts(presentation="restricted"), "restricted", "restricted_default"),
    Row(5, facts(caller=DEFAULT_RESTRICTED), "restricted", "restricted_default"),
    Row(5, facts(presentation="permanent"), "restricted", "permanent"),
    Row(5, facts(caller=PERMANENT), "restricted", "permanent"),
    Row(
        5,
        facts(code="present", presentation="permanent"),
        "restricted",
        "permanent",
        "*31# in permanent mode",
    ),
    Row(5, facts(code="present", caller=PERMANENT), "restricted", "permanent"),
    Row(
        5,
        facts(privacy="none", caller=PERMANENT),
        "restricted",
        "permanent",
        "Privacy: none with a permanently restricted caller",
    ),
    Row(5, facts(caller=PERMANENT, presentation="restricted"), "restricted", "permanent"),
    Row(6, facts(privacy="session"), "allowed", "default", "session is not identity"),
    # step 6
    Row(6, facts(), "allowed", "default"),
    Row(6, facts(trusted=True), "allowed", "default"),
    Row(6, facts(privacy="critical"), "allowed", "default"),
    Row(6, facts(privacy="history"), "allowed", "default"),
    Row(6, facts(privacy="frobnicate"), "allowed", "default"),
]


@pytest.mark.parametrize(
    "row", SPEC_TABLE, ids=[f"step{r.step}-{i}-{r.reason}" for i, r in enumerate(SPEC_TABLE)]
)
def test_spec_table(row: Row) -> None:
    assert row.step == STEP[row.reason]  # the row is filed under the step that decides it
    decision = decide(row.facts)
    assert (decision.presentation, decision.reason) == (row.presentation, row.reason), row.note
    assert decision.emergency is row.facts.emergency
    assert decision.restricted is (row.presentation == "restricted")


def test_every_reason_is_reachable_and_declared() -> None:
    assert set(REASONS) == set(get_args(Reason))
    assert {r.reason for r in SPEC_TABLE} == set(REASONS)


def test_session_and_critical_flags() -> None:
    d = decide(facts(privacy="session;critical"))
    assert d.session_privacy and d.critical
    d = decide(facts(privacy="id"))
    assert not d.session_privacy and not d.critical
    d = decide(facts(emergency=True, privacy="session;critical;id"))
    assert d.session_privacy and d.critical and d.presentation == "allowed"


# --- from the strings of an INVITE (facts_from) -----------------------------------------


def build(
    request_uri: str,
    user: str | None,
    *,
    presentation: Presentation = "allowed",
    trusted: bool = False,
    caller: str = CALLER,
    privacy: tuple[str, ...] = (),
    rpid: tuple[str, ...] = (),
    priority: tuple[str, ...] = (),
) -> tuple[Decision, CallFacts, str | None]:
    f, rest = facts_from(
        trunk_in=trunk(presentation, trusted=trusted),
        caller=caller,
        request_uri=request_uri,
        dialled_user=user,
        codes=CODES,
        emergency_numbers=EMERGENCY,
        privacy=privacy,
        remote_party_id=rpid,
        priority=priority,
    )
    return decide(f), f, rest


@pytest.mark.parametrize(
    ("uri", "user", "presentation", "reason", "rest"),
    [
        ("sip:#31#112@sg", "#31#112", "allowed", "emergency", "112"),
        ("sip:%2331%23112@sg", "%2331%23112", "allowed", "emergency", "112"),
        ("sip:*31#112@sg", "*31#112", "allowed", "emergency", "112"),
        ("sip:112@sg;user=phone", "112", "allowed", "emergency", "112"),
        (
            "tel:112;phone-context=+31",
            "112;phone-context=+31",
            "allowed",
            "emergency",
            "112;phone-context=+31",
        ),
        ("urn:service:sos", None, "allowed", "emergency", None),
        ("urn:service:sos.fire", None, "allowed", "emergency", None),
        ("urn:service:counseling", None, "allowed", "default", None),
        ("sip:113@sg", "113", "allowed", "default", "113"),
        ("sip:%2331%23113@sg", "%2331%23113", "restricted", "withhold_code", "113"),
        ("sip:116111@sg", "116111", "allowed", "default", "116111"),
        (
            "sip:%2331%230201234567@sg",
            "%2331%230201234567",
            "restricted",
            "withhold_code",
            "0201234567",
        ),
        (
            "tel:%2331%230201234567",
            "%2331%230201234567",
            "restricted",
            "withhold_code",
            "0201234567",
        ),
        ("tel:+31201234568", "+31201234568", "allowed", "default", "+31201234568"),
        (
            "tel:0201234568;phone-context=+31",
            "0201234568;phone-context=+31",
            "allowed",
            "default",
            "0201234568;phone-context=+31",
        ),
        ("sip:*31#0201234567@sg", "*31#0201234567", "allowed", "present_code", "0201234567"),
    ],
)
def test_dialled_strings(
    uri: str, user: str | None, presentation: str, reason: str, rest: str | None
) -> None:
    decision, _, got_rest = build(uri, user)
    assert (decision.presentation, decision.reason) == (presentation, reason)
    assert got_rest == rest
    # the same dialled string from a caller withheld by default
    decision, _, _ = build(uri, user, presentation="restricted")
    if reason == "emergency":
        assert (decision.presentation, decision.reason) == ("allowed", "emergency")
    elif reason == "default":
        assert (decision.presentation, decision.reason) == ("restricted", "restricted_default")
    else:
        assert decision.reason == reason


@pytest.mark.parametrize(
    ("ruri_user", "to_user", "reason"),
    [
        # the code in To only (a PBX retargeted, or stripped the Request-URI only): the
        # subscriber dialled it, so it withholds
        ("0201234567", "#31#0201234567", "withhold_code"),
        ("0201234567", "%2331%230201234567", "withhold_code"),
        ("0201234567", "%2331%23%30201234567", "withhold_code"),
        # a present code in To only never presents (in doubt, withhold)
        ("0201234567", "*31#0201234567", "restricted_default"),
        # the Request-URI's own code wins
        ("*31#0201234567", "#31#0201234567", "present_code"),
        # the emergency override is decided on the Request-URI and comes first
        ("112", "#31#112", "emergency"),
    ],
)
def test_a_withhold_code_in_to_alone_withholds(ruri_user: str, to_user: str, reason: str) -> None:
    f, _ = facts_from(
        trunk_in=trunk("restricted"),
        caller=CALLER,
        request_uri=f"sip:{ruri_user}@sg",
        dialled_user=ruri_user,
        codes=CODES,
        emergency_numbers=EMERGENCY,
        to_user=to_user,
    )
    assert decide(f).reason == reason


def test_star31_in_permanent_mode() -> None:
    d, f, rest = build("sip:*31#0201234567@sg", "*31#0201234567", presentation="permanent")
    assert f.clir_code == "present"
    assert (d.presentation, d.reason) == ("restricted", "permanent")
    assert rest == "0201234567"


def test_emergency_with_permanent_caller_and_privacy() -> None:
    d, _, _ = build(
        "sip:%2331%23112@sg", "%2331%23112", caller=PERMANENT, privacy=("id;user;critical",)
    )
    assert (d.presentation, d.reason, d.emergency) == ("allowed", "emergency", True)


RPID_FULL = '"Alice" <sip:+31201234567@pbx;user=phone>;party=calling;privacy=full;screen=yes'


def test_rpid_privacy_full_from_trusted_trunk() -> None:
    d, f, _ = build("sip:0201234568@sg", "0201234568", trusted=True, rpid=(RPID_FULL,))
    assert f.rpid_privacy == "full"
    assert (d.presentation, d.reason) == ("restricted", "rpid_privacy")


def test_rpid_privacy_full_from_untrusted_trunk_is_ignored() -> None:
    d, f, _ = build("sip:0201234568@sg", "0201234568", trusted=False, rpid=(RPID_FULL,))
    assert f.rpid_privacy is None
    assert (d.presentation, d.reason) == ("allowed", "default")
    # and decide() itself ignores it even if a caller passes it from an untrusted trunk
    assert decide(facts(trusted=False, rpid="full")).presentation == "allowed"


def test_psap_callback_believed_only_from_trusted() -> None:
    _, f, _ = build("sip:x@sg", "x", trusted=True, priority=("psap-callback",))
    assert f.psap_callback
    _, f, _ = build("sip:x@sg", "x", trusted=False, priority=("psap-callback",))
    assert not f.psap_callback


# --- refusal ----------------------------------------------------------------------------

OUT = trunk(name="out")
OUT_ACR = trunk(name="out", reject_anonymous=True)


def refuse(f: CallFacts, out: Trunk = OUT, anchored: bool = False) -> Refusal | None:
    return refusal(decide(f), f, out, anchored)


def test_433_for_restricted_call_towards_reject_anonymous_trunk() -> None:
    r = refuse(facts(code="withhold"), OUT_ACR)
    assert r == (433, "Anonymity Disallowed")
    assert r is not None and r.label == "anonymity_disallowed"
    status, phrase = r  # a Refusal unpacks like (status, phrase)
    assert (status, phrase) == (433, "Anonymity Disallowed")


def test_no_433_for_allowed_call_or_other_trunk() -> None:
    assert refuse(facts(), OUT_ACR) is None
    assert refuse(facts(code="withhold"), OUT) is None


def test_no_433_for_emergency_call() -> None:
    assert refuse(facts(emergency=True, code="withhold"), OUT_ACR) is None


def test_no_433_for_psap_callback_from_trusted_trunk_only() -> None:
    assert refuse(facts(trusted=True, privacy="id", psap=True), OUT_ACR) is None
    assert refuse(facts(trusted=False, privacy="id", psap=True), OUT_ACR) == (
        433,
        "Anonymity Disallowed",
    )


def test_session_critical_without_anchoring_is_500() -> None:
    r = refuse(facts(privacy="session;critical"))
    assert r == (500, "Privacy Unavailable: session")
    assert r is not None and r.label == "privacy_unavailable"


def test_session_critical_with_anchoring_goes_on() -> None:
    assert refuse(facts(privacy="session;critical"), anchored=True) is None


def test_session_without_critical_goes_on() -> None:
    assert refuse(facts(privacy="session")) is None
    assert refuse(facts(privacy="session;id")) is None


def test_critical_on_emergency_call_never_refused() -> None:
    assert refuse(facts(emergency=True, privacy="session;critical"), OUT_ACR) is None


def test_critical_with_privacy_it_can_give() -> None:
    assert refuse(facts(privacy="id;user;header;critical")) is None
    assert refuse(facts(privacy="history;critical")) is None
    assert refuse(facts(privacy="none;critical")) is None


def test_critical_with_unknown_priv_value() -> None:
    assert refuse(facts(privacy="frob;session;critical")) == (
        500,
        "Privacy Unavailable: frob;session",
    )
    # values that are no tokens are not echoed into the reason phrase
    assert refuse(facts(privacy="a@b;critical")) == (500, "Privacy Unavailable")


def test_500_before_433() -> None:
    assert refuse(facts(privacy="id;session;critical"), OUT_ACR) == (
        500,
        "Privacy Unavailable: session",
    )
    assert refuse(facts(privacy="id;session;critical"), OUT_ACR, anchored=True) == (
        433,
        "Anonymity Disallowed",
    )


# --- header value helpers -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("values", "expected"),
    [
        ([], frozenset()),
        (["id"], {"id"}),
        (["id;user"], {"id", "user"}),
        (["Id ; USER "], {"id", "user"}),
        (["id, user"], {"id", "user"}),
        (["id", "critical"], {"id", "critical"}),
        ([";;"], frozenset()),
    ],
)
def test_privacy_tokens(values: list[str], expected: set[str]) -> None:
    assert privacy_tokens(values) == expected


@pytest.mark.parametrize(
    ("values", "expected"),
    [
        ([], None),
        ([RPID_FULL], "full"),
        (["<sip:+31201234567@pbx>;privacy=off"], "off"),
        (["<sip:+31201234567@pbx>;party=calling"], None),
        (["<sip:+31201234567@pbx>;party=called;privacy=full"], None),
        (["<sip:a@pbx>;privacy=off", "<sip:b@pbx>;privacy=name"], "name"),
        (["<sip:a@pbx>;privacy=off, <sip:b@pbx>;privacy=uri"], "uri"),
        (['"Doe, John" <sip:a@pbx>;privacy=Full'], "full"),
        (['"a>b" <sip:a@pbx;privacy=off>;privacy=full'], "full"),  # URI params don't count
        (["sip:a@pbx;privacy=full"], "full"),  # addr-spec form
        (["sip:a@pbx"], None),
        (['<sip:a@pbx>;privacy="full"'], "full"),
    ],
)
def test_rpid_privacy(values: list[str], expected: str | None) -> None:
    assert rpid_privacy(values) == expected


def test_is_psap_callback() -> None:
    assert is_psap_callback(["PSAP-Callback "])
    assert not is_psap_callback(["emergency"])
    assert not is_psap_callback([])


# --- properties --------------------------------------------------------------------------

_TOKENS = st.frozensets(
    st.one_of(
        st.sampled_from(["id", "user", "header", "session", "none", "critical", "history"]),
        st.text(max_size=6),
    ),
    max_size=5,
)
_TRUNKS = st.builds(
    Trunk,
    name=st.just("t"),
    trusted=st.booleans(),
    presentation=st.sampled_from(["allowed", "restricted", "permanent"]),
    restricted_numbers=st.frozensets(st.sampled_from([CALLER, DEFAULT_RESTRICTED])),
    permanent_numbers=st.frozensets(st.sampled_from([CALLER, PERMANENT])),
    reject_anonymous=st.booleans(),
)
_FACTS = st.builds(
    CallFacts,
    trunk_in=_TRUNKS,
    caller=st.sampled_from([CALLER, DEFAULT_RESTRICTED, PERMANENT, "", "anonymous"]),
    emergency=st.booleans(),
    clir_code=st.sampled_from([None, "withhold", "present"]),
    privacy=_TOKENS,
    rpid_privacy=st.one_of(st.none(), st.sampled_from(["off", "full", "name", ""]), st.text()),
    psap_callback=st.booleans(),
)


@given(_FACTS)
def test_decide_is_total_and_deterministic(f: CallFacts) -> None:
    d = decide(f)
    assert d == decide(f)
    assert d.reason in REASONS
    assert d.presentation in ("allowed", "restricted")
    assert d.emergency is f.emergency
    assert d.session_privacy is ("session" in f.privacy)
    assert d.critical is ("critical" in f.privacy)


@given(_FACTS)
def test_emergency_is_always_presented(f: CallFacts) -> None:
    d = decide(f)
    assert (d.presentation == "allowed" and d.reason == "emergency") is f.emergency


@given(_FACTS)
def test_permanent_mode_never_presents_unless_emergency(f: CallFacts) -> None:
    t = f.trunk_in
    if not f.emergency and (t.presentation == "permanent" or f.caller in t.permanent_numbers):
        assert decide(f).presentation == "restricted"


@given(_FACTS)
def test_withhold_code_always_withholds_unless_emergency(f: CallFacts) -> None:
    if not f.emergency and f.clir_code == "withhold":
        assert decide(f).presentation == "restricted"


@given(_FACTS)
def test_identity_privacy_always_withholds_unless_code(f: CallFacts) -> None:
    if not f.emergency and f.clir_code is None and f.privacy & {"id", "user", "header"}:
        assert decide(f).presentation == "restricted"


@given(_FACTS)
def test_untrusted_rpid_never_matters(f: CallFacts) -> None:
    if not f.trunk_in.trusted:
        other = CallFacts(
            f.trunk_in, f.caller, f.emergency, f.clir_code, f.privacy, None, f.psap_callback
        )
        assert decide(f) == decide(other)


@given(_FACTS, _TRUNKS, st.booleans())
def test_refusal_is_total_and_spares_emergency(f: CallFacts, out: Trunk, anchored: bool) -> None:
    d = decide(f)
    r = refusal(d, f, out, anchored)
    if f.emergency:
        assert r is None
    if r is not None:
        assert r.status in (433, 500)
        assert r.phrase.isprintable() and len(r.phrase) < 200
        if r.status == 433:
            assert d.presentation == "restricted" and out.reject_anonymous
        else:
            assert d.critical
