"""The egress check's search (sipguard.policy.egress): forms, anchoring, where."""

from __future__ import annotations

import pytest

from sipguard.config.model import Numbering
from sipguard.policy.egress import (
    MIN_DIGITS,
    Needles,
    build_needles,
    check,
    find_hit,
    mask_receivers_own,
    number_forms,
)

NL = Numbering(country_code="31", national_prefix="0", international_prefix="00")
US = Numbering(country_code="1", national_prefix="1", international_prefix="011")
CALLER = "+31201234567"


def needles(
    numbers: tuple[str, ...] = (CALLER,),
    addresses: tuple[str, ...] = ("127.0.0.3",),
    not_numbers: tuple[str, ...] = (),
    in_body: bool = False,
) -> Needles:
    return build_needles(numbers, (NL,), addresses, not_numbers=not_numbers, in_body=in_body)


def msg(header: str = "", body: bytes = b"", ruri: str = "sip:0307654321@127.0.0.2:5080") -> bytes:
    head = (
        f"INVITE {ruri} SIP/2.0\r\n"
        "Via: SIP/2.0/UDP 127.0.0.1:5060;branch=z9hG4bK1a2b3c4d5e6f708192a3;rport\r\n"
        'From: "Anonymous" <sip:anonymous@anonymous.invalid>;tag=0f1e2d3c4b5a69788796\r\n'
        "To: <sip:0307654321@127.0.0.2:5080>\r\n"
        "Call-ID: 9a8b7c6d5e4f30211203\r\n"
        "CSeq: 1 INVITE\r\n"
        "Contact: <sip:127.0.0.1:5060>\r\n"
        "Privacy: id\r\n"
        f"{header}"
        f"Content-Length: {len(body)}\r\n\r\n"
    )
    return head.encode() + body


SDP = b"v=0\r\no=- 1 1 IN IP4 127.0.0.3\r\ns=-\r\nc=IN IP4 127.0.0.3\r\nt=0 0\r\n"


def test_every_form_of_the_number_is_one_needle_with_one_tail() -> None:
    nn = number_forms(CALLER, (NL,))
    assert nn is not None
    assert nn.tail == b"201234567"
    assert nn.forms == {
        b"31201234567",
        b"0031201234567",
        b"0201234567",
        b"201234567",
        b"310201234567",  # +31 (0)20 ...
        b"00310201234567",
    }
    assert number_forms("0201234567", (NL,)) is None  # not E.164
    assert number_forms("+31x", (NL,)) is None


@pytest.mark.parametrize(
    "text",
    [
        "+31201234567",
        "31201234567",
        "0031201234567",
        "0201234567",
        "201234567",
        "%2B31201234567",
        "tel:+31-20-123-4567",
        "+31 (20) 123 4567",
        "020.123.4567",
        "sip:+31201234567@127.0.0.9;user=phone",
    ],
)
def test_the_number_in_any_form_in_a_header_is_found_and_the_header_named(text: str) -> None:
    assert check(msg(f"Subject: call back {text}\r\n"), needles()) == "subject"


def test_where_names_the_request_uri_the_reason_phrase_and_the_body() -> None:
    n = needles()
    assert check(msg(ruri="sip:0201234567@127.0.0.2"), n) == "request-uri"
    resp = b"SIP/2.0 200 +31201234567 says OK\r\nCall-ID: x\r\nContent-Length: 0\r\n\r\n"
    assert check(resp, n) == "reason-phrase"
    assert check(msg(body=b"v=0\r\np=+31201234567\r\n"), n) == "body"
    assert find_hit(msg(body=b"v=0\r\np=+31201234567\r\n"), n) == ("body", "number")


def test_a_header_name_that_would_carry_digits_is_just_header() -> None:
    assert check(msg("X-31201234567: 1\r\n"), needles()) == "header"
    assert check(msg("P-Asserted-Identity: <tel:+31201234567>\r\n"), needles()) == (
        "p-asserted-identity"
    )


def test_the_first_hit_by_line_is_named() -> None:
    data = msg("Subject: 127.0.0.3\r\nP-Asserted-Identity: <tel:+31201234567>\r\n")
    assert check(data, needles()) == "subject"


@pytest.mark.parametrize(
    "text",
    [
        "312012345678",  # a longer number
        "1201234567",  # ends with the national significant number, but longer
        "2012345",  # part of it
        "ab3120123456789f",  # inside hex, a longer run
    ],
)
def test_a_digit_run_that_is_not_a_form_of_the_number_is_no_hit(text: str) -> None:
    assert check(msg(f"Subject: {text}\r\n"), needles()) is None


def test_inside_hex_a_digit_run_that_is_a_form_exactly_is_a_hit() -> None:
    # the anchoring is at digit boundaries: in 80 random bits of hex, a run equal to a
    # given form of 9 or more digits comes about once in 10^9 runs
    assert check(msg("Subject: a201234567b\r\n"), needles()) == "subject"


def test_a_clean_withheld_message_is_no_hit_even_with_the_callers_media_address() -> None:
    assert check(msg(body=SDP), needles()) is None


def test_addresses_are_searched_in_the_body_only_where_the_media_is_anchored() -> None:
    assert check(msg(body=SDP), needles(in_body=True)) == "body"


@pytest.mark.parametrize(
    ("text", "hit"),
    [
        ("127.0.0.3", True),
        ("sip:x@127.0.0.3:5062", True),
        ("[::ffff:127.0.0.3]", True),
        ("127.0.0.30", False),
        ("127.0.0.3.5", False),
        ("1127.0.0.3", False),
        ("10.127.0.0.3", False),
    ],
)
def test_an_ipv4_address_is_anchored_at_digits_and_dots(text: str, hit: bool) -> None:
    assert (check(msg(f"Warning: 399 {text}\r\n"), needles(numbers=())) == "warning") is hit


def test_ipv6_addresses_and_host_names_are_found_whatever_their_case() -> None:
    n = build_needles((), (NL,), ("2001:DB8::1", "PBX.Customer.example"))
    assert check(msg("Warning: 399 [2001:db8::1]:5060\r\n"), n) == "warning"
    assert check(msg("Warning: 399 2001:0db8:0000:0000:0000:0000:0000:0001\r\n"), n) == "warning"
    assert check(msg("Warning: 399 2001:db8::10\r\n"), n) is None
    assert check(msg("Call-Info: <sip:pbx.customer.EXAMPLE>\r\n"), n) == "call-info"
    assert check(msg("Call-Info: <sip:xpbx.customer.example.org>\r\n"), n) is None


def test_our_addresses_the_next_hops_and_the_destination_are_never_needles() -> None:
    n = build_needles((), (NL,), ("127.0.0.1", "127.0.0.2", "0.0.0.0"), not_addresses=["127.0.0.1"])
    assert check(msg(), n, skip=("127.0.0.2",)) is None  # the callee's own address
    assert check(msg(), n) == "request-uri"  # 127.0.0.2 sent elsewhere


def test_a_short_number_is_searched_only_with_its_plus() -> None:
    short = "+311234"  # E.164, 6 digits: its national "01234" and "1234" are no needles
    n = needles(numbers=(short,), addresses=())
    (nn,) = n.numbers
    assert nn.forms == {b"00311234"}  # the others are shorter than MIN_DIGITS
    assert nn.plus_forms == {b"311234"} and len(b"311234") < MIN_DIGITS
    assert check(msg("Subject: +311234\r\n"), n) == "subject"
    assert check(msg("Subject: %2b311234\r\n"), n) == "subject"
    assert check(msg("Subject: 00311234\r\n"), n) == "subject"
    for text in ("311234", "01234", "1234", "CSeq 1234"):
        assert check(msg(f"Subject: {text}\r\n"), n) is None


def test_a_caller_calling_its_own_number_has_no_number_needle() -> None:
    assert not needles(addresses=(), not_numbers=("+31201234567",))
    assert not needles(addresses=(), not_numbers=("0201234567",))
    assert needles(addresses=(), not_numbers=("+31307654321",))


def test_each_numbering_plan_adds_its_forms() -> None:
    n = build_needles(("+12025550123",), (NL, US), ())
    for text in ("0012025550123", "01112025550123", "12025550123", "2025550123"):
        assert check(msg(f"Subject: {text}\r\n"), n) == "subject"


def test_no_false_positive_on_random_hex_ids_and_messages_of_ours() -> None:
    from sipguard.sip.transaction import IDS, new_branch, new_tag

    n = needles(numbers=(CALLER, "+3120123"), addresses=("127.0.0.3", "2001:db8::3"))
    for _ in range(20_000):
        data = (
            f"BYE sip:127.0.0.2:5080 SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:5060;branch="
            f"{new_branch()};rport\r\nFrom: <sip:anonymous@anonymous.invalid>;tag={new_tag()}"
            f"\r\nCall-ID: {IDS.next()}\r\nCSeq: 2 BYE\r\nContent-Length: 0\r\n\r\n"
        ).encode()
        assert check(data, n) is None, data


# -- what the receiver chose itself is masked (no oracle) ------------------------------------

GUESSES = ["+31201234567", "0201234567", "31201234567", "201234567", "127.0.0.3"]


def masked_hit(data: bytes, targets: tuple[str, ...] = ()) -> str | None:
    return check(mask_receivers_own(data, targets), needles())


@pytest.mark.parametrize("guess", GUESSES)
def test_what_the_callee_chose_in_a_request_of_ours_is_masked(guess: str) -> None:
    digits = "201234567"
    data = (
        f"BYE sip:{guess}@127.0.0.2:5080 SIP/2.0\r\n"
        "Via: SIP/2.0/UDP 127.0.0.1:5060;branch=z9hG4bK1a2b3c4d5e6f708192a3\r\n"
        "From: <sip:anonymous@anonymous.invalid>;tag=0f1e2d3c4b5a69788796\r\n"
        f"To: <sip:0307654321@127.0.0.2:5080>;tag=g{guess}\r\n"
        "Call-ID: 9a8b7c6d5e4f30211203\r\nCSeq: 2 BYE\r\n"
        f"Route: <sip:{guess}@127.0.0.2:5080;lr>\r\n"
        f"RAck: {digits} 1 INVITE\r\nSession-Expires: {digits};refresher=uac\r\n"
        f"Min-SE: {digits}\r\n"
        f'Proxy-Authorization: Digest username="u", realm="{guess}", nonce="{guess}", '
        f'uri="sip:{guess}@127.0.0.2", response="0a1b", opaque="{guess}"\r\n'
        "Content-Length: 0\r\n\r\n"
    ).encode()
    assert check(data, needles()) is not None  # there, unmasked
    assert masked_hit(data) is None
    # ... and a leak in a header of ours is still found
    leak = data.replace(b"Content-Length", f"Subject: {guess}\r\nContent-Length".encode())
    assert masked_hit(leak) == "subject"
    assert masked_hit(data.replace(b'username="u"', f'username="{guess}"'.encode())) == (
        "proxy-authorization"
    )


@pytest.mark.parametrize("guess", GUESSES)
def test_a_redirect_target_as_the_request_uri_is_masked_and_nothing_else(guess: str) -> None:
    uri = f"sip:{guess}@127.0.0.4:5080"
    data = msg(ruri=uri)
    assert masked_hit(data) == "request-uri"  # no To tag: the Request-URI is ours
    assert masked_hit(data, (uri,)) is None
    assert masked_hit(msg(f"Subject: {guess}\r\n", ruri=uri), (uri,)) == "subject"


@pytest.mark.parametrize("guess", GUESSES)
def test_the_headers_our_response_copies_from_the_callees_request_are_masked(guess: str) -> None:
    data = (
        "SIP/2.0 200 OK\r\n"
        f"Via: SIP/2.0/UDP 127.0.0.2:5080;branch=z9hG4bK{guess}\r\n"
        f'From: "{guess}" <sip:{guess}@127.0.0.2>;tag={guess}\r\n'
        f"To: <sip:anonymous@anonymous.invalid>;tag=0f1e2d3c4b5a69788796;x={guess}\r\n"
        f"Call-ID: 9a8b7c6d5e4f30211203\r\nCSeq: {guess.strip('+').split('.')[0]} INFO\r\n"
        "Content-Length: 0\r\n\r\n"
    ).encode()
    assert check(data, needles()) is not None
    assert masked_hit(data) is None
    leak = data.replace(b"Content-Length", f"Warning: 399 x {guess}\r\nContent-Length".encode())
    assert masked_hit(leak) == "warning"
    assert masked_hit(data.replace(b"200 OK", f"200 OK {guess}".encode())) == "reason-phrase"


def test_masking_keeps_the_length_and_the_lines() -> None:
    data = msg("To2: x\r\n", body=b"v=0\r\np=+31201234567\r\n").replace(
        b"To: <sip:0307654321@127.0.0.2:5080>", b"To: <sip:0307654321@127.0.0.2:5080>;tag=9"
    )
    out = mask_receivers_own(data)
    assert len(out) == len(data) and out.count(b"\n") == data.count(b"\n")
    assert check(out, needles()) == "body"  # the body is never masked


# -- forms -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text",
    [
        "%2B31201234567",
        "%2b%33%31%32%30%31%32%33%34%35%36%37",
        "%30%32%30%31%32%33%34%35%36%37",
        "+31 (0)20 123 4567",
        "+31(0)201234567",
        "0031 (0) 20 1234567",
        "020/123 45 67",
        "020\t123\t4567",
        "+31,20,123,4567",
        "020_123_4567",
        "+31\u00a020\u00a0123\u00a04567",
    ],
)
def test_escaped_and_separated_forms_are_found(text: str) -> None:
    data = msg(f"Subject: call back {text}\r\n").decode().encode("utf-8")
    assert check(data, needles()) == "subject"


def test_a_percent_escaped_line_break_is_not_decoded() -> None:
    data = msg("Subject: a%0D%0A+31201234567\r\n")
    assert check(data, needles()) == "subject"  # still named by its line


def test_our_own_ipv4_address_never_reads_as_the_number() -> None:
    # 20.123.45.67 without its dots is 201234567, the national significant number
    n = build_needles((CALLER,), (NL,), ("127.0.0.3",), not_addresses=("20.123.45.67",))
    data = msg().replace(b"127.0.0.1:5060", b"20.123.45.67:5060")
    assert b"20.123.45.67" in data
    assert check(data, n) is None
    assert check(msg("Subject: 020.123.4567\r\n"), n) == "subject"  # a number is still found


def test_a_number_after_an_ipv4_address_and_a_separator_is_found() -> None:
    assert check(msg("Subject: 1.2.3.4 20 123 4567\r\n"), needles()) == "subject"
