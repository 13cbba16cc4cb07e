"""sipguard.policy.numbers: CLIR codes, emergency numbers, E.164, masking, CLI patterns."""

from __future__ import annotations

import re

import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from sipguard.config.model import ClirCodes, Numbering
from sipguard.policy.numbers import (
    clean_number,
    cli_matches,
    cli_pattern_can_match,
    is_e164,
    is_emergency,
    is_sos_urn,
    mask,
    split_clir_code,
    to_e164,
    unescape_user,
)

CODES = ClirCodes()  # withhold '#31#', present '*31#'
NL = Numbering(country_code="31", national_prefix="0", international_prefix="00")
EMERGENCY = ("112", "911")


# --- unescape_user ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("0201234567", "0201234567"),
        ("%2331%23112", "#31#112"),
        ("%2b31201234567", "+31201234567"),
        ("%2B31201234567", "+31201234567"),
        ("%zz1", "%zz1"),  # invalid escape left literal
        ("12%", "12%"),
        ("12%2", "12%2"),
        ("%2523", "%23"),  # once only
    ],
)
def test_unescape_user(raw: str, expected: str) -> None:
    assert unescape_user(raw) == expected


# --- split_clir_code -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("user", "rest", "code"),
    [
        ("#31#0201234567", "0201234567", "withhold"),
        ("%2331%230201234567", "0201234567", "withhold"),
        ("%2331%23112", "112", "withhold"),
        ("%2331%2B31201234567", None, None),  # '+' is not '#'
        ("%2331#112", "112", "withhold"),  # mixed raw and escaped
        ("#31%23112", "112", "withhold"),
        ("%2a31%23112", "112", "present"),  # '*' escaped, lower-case hex
        ("%2A31%23112", "112", "present"),
        ("*31#0201234567", "0201234567", "present"),
        ("*31%23+31201234567", "+31201234567", "present"),
        ("#31#", "", "withhold"),
        ("#31", None, None),  # incomplete code
        ("%23", None, None),
        ("%2", None, None),  # truncated escape
        ("%", None, None),
        ("", None, None),
        ("0201234567", None, None),
        ("31#0201234567", None, None),
        ("x#31#112", None, None),  # only a leading code counts
        ("#31#%2331%23112", "112", "withhold"),  # every leading code removed
        ("#31#0201234567;phone-context=+31", "0201234567;phone-context=+31", "withhold"),
        ("%2331%25230201234567", None, None),  # %25 is '%', not part of the code
    ],
)
def test_split_clir_code(user: str, rest: str | None, code: str | None) -> None:
    assert split_clir_code(user, CODES) == (user if rest is None else rest, code)


def test_split_clir_code_rest_keeps_its_escapes() -> None:
    assert split_clir_code("%2331%23%2B31201234567", CODES) == ("%2B31201234567", "withhold")


def test_split_clir_code_other_codes() -> None:
    codes = ClirCodes(withhold="*67", present="*82")  # NANP style
    assert split_clir_code("*672125551234", codes) == ("2125551234", "withhold")
    assert split_clir_code("%2A822125551234", codes) == ("2125551234", "present")


def test_split_clir_code_longest_first_and_empty_codes() -> None:
    codes = ClirCodes(withhold="#31#", present="#31")
    assert split_clir_code("#31#112", codes) == ("112", "withhold")
    assert split_clir_code("#31112", codes) == ("112", "present")
    codes = ClirCodes(withhold="#3", present="#31#")
    assert split_clir_code("#31#112", codes) == ("112", "present")
    assert split_clir_code("#3112", codes) == ("112", "withhold")
    empty = ClirCodes(withhold="", present="")
    assert split_clir_code("#31#112", empty) == ("#31#112", None)


_CODE_CHAR = st.sampled_from("#*0123456789")


@given(
    code=st.text(_CODE_CHAR, min_size=1, max_size=6),
    escape=st.lists(st.booleans(), min_size=6, max_size=6),
    upper=st.booleans(),
    rest=st.text("0123456789+", max_size=12),
)
def test_split_clir_code_any_escaping(
    code: str, escape: list[bool], upper: bool, rest: str
) -> None:
    spelled = "".join(
        (f"%{ord(c):02X}" if upper else f"%{ord(c):02x}") if esc else c
        for c, esc in zip(code, escape, strict=False)
    )
    codes = ClirCodes(withhold=code, present="")
    # a rest that itself starts with the code is a repeated code: removed too
    assume(split_clir_code(rest, codes)[1] is None)
    assert split_clir_code(spelled + rest, codes) == (rest, "withhold")


@given(st.text(max_size=20))
def test_split_clir_code_total(user: str) -> None:
    rest, code = split_clir_code(user, CODES)
    assert user.endswith(rest)
    assert (code is None) == (rest == user)


# --- emergency ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("dialled", "expected"),
    [
        ("112", True),
        ("911", True),
        ("1-1-2", True),  # visual separators
        ("112;phone-context=+31", True),  # tel: / user=phone parameters
        ("%31%312", True),  # escaped digits
        ("113", False),  # helpline: callers rely on withholding
        ("116111", False),
        ("116123", False),
        ("+112", False),
        ("0112", False),
        ("1120", False),
        ("+31112", False),
        ("11", False),
        ("", False),
        ("#31#112", False),  # the code must be removed first
    ],
)
def test_is_emergency(dialled: str, expected: bool) -> None:
    assert is_emergency(dialled, EMERGENCY) is expected


def test_helpline_emergency_only_when_configured() -> None:
    assert is_emergency("113", ("112", "113"))
    assert not is_emergency("113", ())


@pytest.mark.parametrize(
    ("user", "emergency"),
    [
        ("#31#112", True),
        ("%2331%23112", True),
        ("%2331%23911", True),
        ("*31#112", True),
        ("#31#113", False),
        ("%2331%230201234567", False),
    ],
)
def test_code_then_emergency(user: str, emergency: bool) -> None:
    rest, code = split_clir_code(user, CODES)
    assert code is not None
    assert is_emergency(rest, EMERGENCY) is emergency


@pytest.mark.parametrize(
    ("uri", "expected"),
    [
        ("urn:service:sos", True),
        ("urn:service:sos.fire", True),
        ("urn:service:sos.ambulance", True),
        ("urn:service:sos.animal-control", True),
        ("urn:service:sos.police.a1", True),
        ("URN:Service:SOS", True),
        ("urn:SERVICE:sos.Fire", True),
        ("<urn:service:sos>", True),
        ("  urn:service:sos.fire ", True),
        ("urn:service:sosx", False),
        ("urn:service:sos.", False),
        ("urn:service:sos.-fire", False),
        ("urn:service:sos.fire-", False),
        ("urn:service:sos..fire", False),
        ("urn:service:counseling", False),
        ("urn:service:counseling.children", False),
        ("urn:service:so", False),
        ("urn:nena:service:sos", False),
        ("sip:sos@example.net", False),
        ("sip:urn:service:sos@example.net", False),
        ("urn:service:sos;x=y", False),
        ("", False),
    ],
)
def test_is_sos_urn(uri: str, expected: bool) -> None:
    assert is_sos_urn(uri) is expected


# --- E.164 -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("number", "expected"),
    [
        ("+31201234567", "+31201234567"),
        ("0201234567", "+31201234567"),
        ("0031201234567", "+31201234567"),
        ("004930123456", "+4930123456"),
        ("020-123 45 67", "+31201234567"),  # visual separators and spaces
        ("(020) 123.45.67", "+31201234567"),
        ("+31 (0)20 ...", None),
        ("+31-20-1234567", "+31201234567"),
        ("%2B31201234567", "+31201234567"),  # escaped '+' (tel: from a SIP user part)
        ("+31201234567;phone-context=+31", "+31201234567"),
        ("0201234567;phone-context=+31", "+31201234567"),
        ("1234567", None),  # subscriber number without prefix: area unknown
        ("112", None),
        ("000112", None),  # '+0112' is no country code
        ("00", None),
        ("0", None),
        ("+", None),
        ("", None),
        ("+3120123", "+3120123"),  # 7 digits: a valid short national number length
        ("+31201", None),  # too short
        ("+1234567890123456", None),  # 16 digits
        ("+123456789012345", "+123456789012345"),  # 15 digits
        ("+0201234567", None),
        ("+31201234567x", None),
        ("+3120123456a", None),
        ("anonymous", None),
        ("+٣١٢٠١٢٣٤٥٦٧", None),  # non-ASCII digits
    ],
)
def test_to_e164(number: str, expected: str | None) -> None:
    assert to_e164(number, NL) == expected


def test_to_e164_other_plans() -> None:
    nanp = Numbering(country_code="1", national_prefix="1", international_prefix="011")
    assert to_e164("12125551234", nanp) == "+12125551234"
    assert to_e164("011441234567890", nanp) == "+441234567890"
    assert to_e164("2125551234", nanp) is None  # no prefix: not guessed
    no_national = Numbering(country_code="39", national_prefix="", international_prefix="00")
    assert to_e164("00390612345678", no_national) == "+390612345678"
    assert to_e164("0612345678", no_national) is None


def test_to_e164_unknown_plan_only_plus() -> None:
    unknown = Numbering()  # country_code ""
    assert to_e164("+31201234567", unknown) == "+31201234567"
    assert to_e164("0031201234567", unknown) is None
    assert to_e164("0201234567", unknown) is None


@given(st.text(max_size=24))
def test_to_e164_total_and_valid(number: str) -> None:
    result = to_e164(number, NL)
    assert result is None or is_e164(result)


@pytest.mark.parametrize(
    ("number", "expected"),
    [
        ("+31201234567", True),
        ("+123456", True),
        ("+12345", False),
        ("+123456789012345", True),
        ("+1234567890123456", False),
        ("+0201234567", False),
        ("31201234567", False),
        ("+31201234567\n", False),
        ("", False),
    ],
)
def test_is_e164(number: str, expected: bool) -> None:
    assert is_e164(number) is expected


def test_clean_number() -> None:
    assert clean_number("%2B31 (20) 123-4567;phone-context=x") == "+31201234567"
    assert clean_number("112") == "112"


# --- mask --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("number", "expected"),
    [
        ("+31201234567", "+3120123****"),  # SPEC §4
        ("+441234567890123", "+4412345********"),
        ("0201234567", "020123****"),
        ("+3112345", "+311****"),
        ("12345", "1****"),
        ("1234", "****"),
        ("113", "***"),
        ("", ""),
    ],
)
def test_mask(number: str, expected: str) -> None:
    assert mask(number) == expected


def test_mask_emergency_numbers_shown() -> None:
    assert mask("112", EMERGENCY) == "112"
    assert mask("113", EMERGENCY) == "***"


@given(st.text(max_size=30))
def test_mask_hides_at_least_four_and_keeps_at_most_eight(number: str) -> None:
    masked = mask(number)
    assert len(masked) == len(number)
    hidden = min(len(number), max(4, len(number) - 8))
    assert masked.endswith("*" * hidden)
    assert number.startswith(masked[: len(number) - hidden])


# --- allowed_cli -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("number", "patterns", "expected"),
    [
        ("+31201234567", ("+3120123*",), True),
        ("+3120123", ("+3120123*",), True),  # '*' may match nothing
        ("+31201244567", ("+3120123*",), False),
        ("+31201234567", ("+3130*", "+3120*"), True),
        ("+31201234567", ("+3120123456?",), True),
        ("+312012345678", ("+3120123456?",), False),
        ("+3120123456", ("+3120123456?",), False),  # '?' is exactly one
        ("+31201234567", ("*",), True),
        ("+31201234567", ("+31201234567",), True),
        ("+31201234567", ("+31.01234567",), False),  # '.' is literal
        ("+31201234567", ("3120123*",), False),
        ("+31201234567", (), False),
        ("31201234567", ("*",), False),  # not E.164
        ("+3120123456a", ("*",), False),
        ("+31201234567\n", ("*",), False),
        ("", ("*",), False),
    ],
)
def test_cli_matches(number: str, patterns: tuple[str, ...], expected: bool) -> None:
    assert cli_matches(number, patterns) is expected


def test_cli_matches_any_iterable() -> None:
    assert cli_matches("+31201234567", ["+3120123*"])
    assert cli_matches("+31201234567", (p for p in ["+3120123*"]))


@given(
    st.from_regex(re.compile(r"\+[1-9][0-9]{5,14}"), fullmatch=True),
    st.integers(min_value=0, max_value=16),
)
def test_cli_prefix_pattern_matches_its_numbers(number: str, cut: int) -> None:
    assert cli_matches(number, (number[:cut] + "*",))
    assert cli_matches(number, (number,))


@pytest.mark.parametrize(
    ("pattern", "expected"),
    [
        ("+3120123*", True),
        ("*", True),
        ("+*", True),
        ("?*", True),
        ("+31201234567", True),
        ("+123456", True),  # 6 digits
        ("+12345", False),  # 5 digits
        ("+123456789012345", True),
        ("+1234567890123456", False),
        ("+1234567890123456*", False),
        ("3120123*", False),
        ("+0*", False),
        ("+31a*", False),
        ("++31*", False),
        ("*+31*", True),
        ("*0*", True),
        ("??????", False),  # 6 characters: '+' and 5 digits
        ("???????", True),
        ("", False),
    ],
)
def test_cli_pattern_can_match(pattern: str, expected: bool) -> None:
    assert cli_pattern_can_match(pattern) is expected


@given(
    st.text(st.sampled_from("+0123456789*?"), max_size=18),
    st.from_regex(re.compile(r"\+[1-9][0-9]{5,14}"), fullmatch=True),
)
def test_cli_pattern_cannot_match_means_no_number_matches(pattern: str, number: str) -> None:
    if cli_matches(number, (pattern,)):
        assert cli_pattern_can_match(pattern)


@pytest.mark.parametrize(
    ("dialled", "rest", "code"),
    [
        ("#31##31#112", "112", "withhold"),
        ("%2331%23%2331%230201234567", "0201234567", "withhold"),
        ("*31##31#0201234567", "0201234567", "withhold"),
        ("#31#*31#0201234567", "0201234567", "withhold"),
        ("*31#*31#0201234567", "0201234567", "present"),
    ],
)
def test_repeated_and_mixed_codes_are_all_removed(dialled: str, rest: str, code: str) -> None:
    """The number behind the codes is what is checked for an emergency and billed."""
    assert split_clir_code(dialled, ClirCodes()) == (rest, code)
    if rest == "112":
        assert is_emergency(rest, ("112",))
