"""Property tests of the SIP message core (hypothesis).

- serialise-then-parse is the identity on generated valid messages;
- arbitrary bytes, and valid messages mutated (bit flips, truncation, insertion of
  CR, LF, NUL, quotes, '<' …), never raise anything but SipError from parse_message and
  validate();
- URIs and name-addrs survive str() then parse.
"""

from __future__ import annotations

import contextlib
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sipguard.sip.errors import SipError
from sipguard.sip.message import COMPACT_FORMS, Request, Response, SipMessage, parse_message
from sipguard.sip.uri import NameAddr, Uri, parse_name_addr, parse_uri

SETTINGS: Any = settings(
    max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
# whole generated messages are slower to build: fewer of them
MESSAGE_SETTINGS: Any = settings(SETTINGS, max_examples=150)

ALPHA = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
DIGITS = "0123456789"
TOKEN_CHARS = ALPHA + DIGITS + "-.!%*_+`'~"
UNRESERVED = ALPHA + DIGITS + "-_.!~*'()"
HEX = "0123456789ABCDEFabcdef"

token = st.text(TOKEN_CHARS, min_size=1, max_size=12)
method = st.one_of(
    st.sampled_from(["INVITE", "ACK", "BYE", "CANCEL", "OPTIONS", "UPDATE", "PRACK", "NOTIFY"]),
    token,
)


@st.composite
def escaped_text(draw: st.DrawFn, chars: str, max_size: int = 10) -> str:
    """RFC 3261 user/password characters with %XX escapes sprinkled in."""
    parts = draw(
        st.lists(
            st.one_of(
                st.text(chars, min_size=1, max_size=4),
                st.tuples(st.sampled_from(HEX), st.sampled_from(HEX)).map(
                    lambda t: "%" + "".join(t)
                ),
            ),
            min_size=1,
            max_size=max_size,
        )
    )
    return "".join(parts)


label = st.text(ALPHA + DIGITS, min_size=1, max_size=8)
hostname = st.lists(label, min_size=1, max_size=4).map(".".join)
ipv4 = st.tuples(*[st.integers(0, 255)] * 4).map(lambda t: ".".join(map(str, t)))
ipv6 = st.lists(st.integers(0, 0xFFFF), min_size=8, max_size=8).map(
    lambda g: "[" + ":".join(f"{x:x}" for x in g) + "]"
)
ipv6_short = st.sampled_from(["[::1]", "[2001:db8::10]", "[::ffff:192.0.2.1]", "[fe80::1]"])
host = st.one_of(hostname, ipv4, ipv6, ipv6_short)
port = st.one_of(st.none(), st.integers(1, 65535))

param_value = st.one_of(
    st.text(TOKEN_CHARS, min_size=1, max_size=10),
    ipv6,
    st.text(ALPHA + DIGITS + " ;,<>:@=", max_size=10).map(lambda s: f'"{s}"'),
)
params = st.lists(st.tuples(token, st.one_of(st.none(), param_value)), max_size=4).map(tuple)
uri_params = st.lists(
    st.tuples(token, st.one_of(st.none(), st.text(TOKEN_CHARS, min_size=1, max_size=10))),
    max_size=4,
).map(tuple)


@st.composite
def sip_uri(draw: st.DrawFn) -> Uri:
    user = draw(st.one_of(st.none(), escaped_text(UNRESERVED + "&=+$,;?/")))
    password = draw(st.one_of(st.none(), escaped_text(UNRESERVED + "&=+$,"))) if user else None
    headers = draw(st.one_of(st.none(), st.text(ALPHA + DIGITS + "=&%", min_size=1, max_size=10)))
    return Uri(
        draw(st.sampled_from(["sip", "sips"])),
        user,
        password,
        draw(host).lower(),
        draw(port),
        draw(uri_params),
        headers,
    )


@st.composite
def tel_uri(draw: st.DrawFn) -> Uri:
    number = draw(st.text(DIGITS + "-.()", min_size=1, max_size=12))
    return Uri("tel", "+" + number, params=draw(uri_params))


@st.composite
def other_uri(draw: st.DrawFn) -> Uri:
    scheme = draw(st.sampled_from(["urn", "http", "isbn", "mailto"]))
    opaque = draw(st.text(ALPHA + DIGITS + ":/.-_@;=?", min_size=1, max_size=20))
    return Uri(scheme, opaque=opaque)


uri = st.one_of(sip_uri(), tel_uri(), other_uri())

quoted_display = st.text(
    st.characters(blacklist_categories=("Cs",), blacklist_characters="\r\n", min_codepoint=0x20),
    max_size=12,
).map(lambda s: '"' + s.replace("\\", "\\\\").replace('"', '\\"') + '"')
token_display = st.lists(token, min_size=1, max_size=3).map(" ".join)
display = st.one_of(st.none(), quoted_display, token_display)


@st.composite
def name_addr(draw: st.DrawFn) -> NameAddr:
    return NameAddr(draw(uri), draw(display), draw(params))


@st.composite
def via_value(draw: st.DrawFn) -> str:
    transport = draw(st.sampled_from(["UDP", "TCP", "TLS", "SCTP", "WS", "WSS"]))
    p = draw(port)
    vparams = [("branch", "z9hG4bK" + draw(token))]
    vparams += draw(
        st.lists(
            st.one_of(
                st.just(("rport", None)),
                st.tuples(st.just("received"), st.one_of(ipv4, ipv6)),
                st.tuples(token, st.one_of(st.none(), st.text(TOKEN_CHARS, min_size=1))),
            ),
            max_size=3,
        )
    )
    text = "".join(f";{k}" if v is None else f";{k}={v}" for k, v in vparams)
    return f"SIP/2.0/{transport} {draw(host)}{'' if p is None else f':{p}'}{text}"


# header values: no CR/LF, no leading/trailing whitespace (those are not kept)
header_text = st.text(
    st.characters(blacklist_categories=("Cs",), blacklist_characters="\r\n\x00"), max_size=30
).map(lambda s: s.strip(" \t"))
unknown_header = st.tuples(
    token.filter(lambda t: t.lower() not in COMPACT_FORMS and t.lower() not in _SPECIAL),
    header_text,
)
_SPECIAL = {
    "via",
    "from",
    "to",
    "call-id",
    "cseq",
    "max-forwards",
    "contact",
    "route",
    "record-route",
    "content-length",
}


@st.composite
def message(draw: st.DrawFn) -> tuple[bytes, str, list[tuple[str, str]], bytes]:
    """A valid request or response: (wire bytes, start line, headers, body)."""
    is_request = draw(st.booleans())
    meth = draw(method)
    if is_request:
        ruri = draw(st.one_of(sip_uri(), tel_uri(), other_uri()))
        ruri = Uri(
            ruri.scheme,
            ruri.user,
            ruri.password,
            ruri.host,
            ruri.port,
            ruri.params,
            None,
            ruri.opaque,
        )
        start = f"{meth} {ruri} SIP/2.0"
    else:
        reason = draw(header_text)
        start = f"SIP/2.0 {draw(st.integers(100, 699))} {reason}"
    cseq_method = meth if is_request else draw(method)
    from_na = draw(name_addr())
    headers: list[tuple[str, str]] = [
        (draw(st.sampled_from(["Via", "v", "VIA"])), v)
        for v in draw(st.lists(via_value(), min_size=1, max_size=3))
    ]
    headers += [
        ("Max-Forwards", str(draw(st.integers(0, 255)))),
        (
            draw(st.sampled_from(["From", "f"])),
            f"{from_na};tag={draw(token)}" if from_na.tag is None else str(from_na),
        ),
        (draw(st.sampled_from(["To", "t"])), str(draw(name_addr()))),
        (draw(st.sampled_from(["Call-ID", "i"])), draw(token) + "@" + draw(hostname)),
        ("CSeq", f"{draw(st.integers(0, 2**32 - 1))} {cseq_method}"),
    ]
    contacts = draw(st.lists(name_addr(), max_size=2))
    if contacts:
        headers.append(("Contact", ", ".join(map(str, contacts))))
    routes = draw(st.lists(sip_uri(), max_size=2))
    if routes:
        headers.append(("Record-Route", ", ".join(f"<{r}>" for r in routes)))
    headers += draw(st.lists(unknown_header, max_size=4))
    headers = draw(st.permutations(headers))
    body = draw(st.binary(max_size=200))
    headers.append((draw(st.sampled_from(["Content-Length", "l"])), str(len(body))))
    wire = "\r\n".join([start, *(f"{n}: {v}" for n, v in headers)]) + "\r\n\r\n"
    return wire.encode("utf-8", "surrogateescape") + body, start, headers, body


def fingerprint(m: SipMessage) -> tuple[str, str, list[tuple[str, str]], bytes]:
    return type(m).__name__, m.start_line(), list(m.headers), m.body


# -- serialise-then-parse is the identity -----------------------------------------------------


@MESSAGE_SETTINGS
@given(message())
def test_generated_messages_parse_to_what_was_built(
    generated: tuple[bytes, str, list[tuple[str, str]], bytes],
) -> None:
    wire, start, headers, body = generated
    msg = parse_message(wire)
    msg.validate()
    assert msg.start_line() == start
    assert list(msg.headers) == headers
    assert msg.body == body
    assert msg.to_bytes() == wire
    again = parse_message(msg.to_bytes())
    assert fingerprint(again) == fingerprint(msg)
    # the typed views read the same things back
    assert msg.top_via.branch is not None and msg.top_via.branch.startswith("z9hG4bK")
    assert msg.from_.tag is not None
    assert msg.cseq.number >= 0
    if isinstance(msg, Request):
        assert msg.cseq.method == msg.method
    # through the stream framer too
    again = parse_message(wire, datagram=False)
    assert fingerprint(again) == fingerprint(msg)


@MESSAGE_SETTINGS
@given(message())
def test_rebuilt_messages_serialise_identically(
    generated: tuple[bytes, str, list[tuple[str, str]], bytes],
) -> None:
    wire, _, headers, body = generated
    msg = parse_message(wire)
    if isinstance(msg, Request):
        built: SipMessage = Request(msg.method, msg.uri, headers, body)
    else:
        assert isinstance(msg, Response)
        built = Response(msg.status, msg.reason, headers, body)
    assert built.to_bytes() == wire


# -- nothing but SipError escapes ---------------------------------------------------------------


def only_sip_errors(data: bytes, datagram: bool = True) -> None:
    """parse_message + validate() raise SipError at most; a refusal with a status carries a
    response that parses, one without is a drop. The other accessors raise SipError at most."""
    try:
        msg = parse_message(data, datagram=datagram)
        msg.validate()
    except SipError as exc:
        if exc.status is None:
            assert exc.response is None
        else:
            assert exc.response is not None
            resp = parse_message(exc.response)
            assert isinstance(resp, Response) and resp.status == exc.status
            # an ACK is never answered (RFC 3261 §17.1.1.3), a response never either
            assert not data.lstrip(b"\r\n").startswith((b"ACK ", b"SIP/", b"sip/"))
        return
    try:
        msg.privacy  # noqa: B018
        msg.contacts  # noqa: B018
        msg.name_addrs("p-asserted-identity")
        msg.content_type  # noqa: B018
        msg.tokens("supported")
        if isinstance(msg, Request):
            msg.request_uri.user_unescaped  # noqa: B018
    except SipError:
        pass
    assert fingerprint(parse_message(msg.to_bytes(), datagram=datagram)) == fingerprint(msg)


@SETTINGS
@given(st.binary(max_size=500), st.booleans())
def test_arbitrary_bytes(data: bytes, datagram: bool) -> None:
    only_sip_errors(data, datagram)


SPECIALS = [
    b"\r",
    b"\n",
    b"\r\n",
    b"\x00",
    b'"',
    b"<",
    b">",
    b";",
    b",",
    b":",
    b"%",
    b"\\",
    b" ",
    b"\t",
    b"\r\n ",
    b"\xff",
    b"\xc3\xa9",
    b"=",
    b"@",
    b"[",
    b"]",
    b"9" * 30,
]


@st.composite
def mutated(draw: st.DrawFn) -> bytes:
    data = bytearray(draw(message())[0])
    for _ in range(draw(st.integers(1, 4))):
        kind = draw(st.sampled_from(["flip", "truncate", "insert", "delete", "replace"]))
        if not data:
            break
        i = draw(st.integers(0, len(data) - 1))
        if kind == "flip":
            data[i] ^= 1 << draw(st.integers(0, 7))
        elif kind == "truncate":
            del data[i:]
        elif kind == "insert":
            data[i:i] = draw(st.sampled_from(SPECIALS))
        elif kind == "delete":
            del data[i : i + draw(st.integers(1, 5))]
        else:
            data[i : i + 1] = draw(st.sampled_from(SPECIALS))
    return bytes(data)


@MESSAGE_SETTINGS
@given(mutated(), st.booleans())
def test_mutated_messages(data: bytes, datagram: bool) -> None:
    only_sip_errors(data, datagram)


# -- URIs and name-addrs -----------------------------------------------------------------------


@SETTINGS
@given(uri)
def test_uri_round_trip(u: Uri) -> None:
    text = str(u)
    parsed = parse_uri(text)
    assert parsed == u
    assert str(parsed) == text


@SETTINGS
@given(name_addr())
def test_name_addr_round_trip(na: NameAddr) -> None:
    text = str(na)
    parsed = parse_name_addr(text)
    assert parsed.uri == na.uri
    assert parsed.params == na.params
    assert parsed.display == (na.display or None)
    assert str(parsed) == text


@SETTINGS
@given(st.text(max_size=60))
def test_uri_and_name_addr_on_arbitrary_text(text: str) -> None:
    for fn in (parse_uri, parse_name_addr):
        with contextlib.suppress(SipError):
            fn(text)


# -- the fast paths agree with the general code ---------------------------------------------------
#
# The parser reads the common shapes with single regular expressions and leaves everything
# else to the general code, which alone decides what is an error. On any text, both must
# give the same value or both refuse it.

FRAGMENTS = [
    "sip:",
    "sips:",
    "SIP:",
    "tel:",
    "urn:service:sos",
    "<",
    ">",
    '"',
    "\\",
    ";",
    ",",
    ":",
    "@",
    "=",
    "?",
    "[",
    "]",
    ".",
    " ",
    "\t",
    "%",
    "%41",
    "tag=",
    ";tag=",
    "branch=",
    "user=phone",
    "lr",
    "[2001:db8::1]",
    "host.example.com",
    "192.0.2.1",
    ":5060",
    ":0",
    ":99999",
    "SIP/2.0/UDP ",
    "SIP / 2.0 / tcp ",
    "INVITE",
    "1 ",
    "0009 ",
    "4294967296 ",
    "Alice",
    '"Alice \\"A\\""',
    "\x00",
    "\x0b",
    "\r",
    "\n",
    "\r\n",
    "\xa0",
    "\u2028",
    "\u00b2",
    "\u0663",
    "\xe9",
    "a",
    "Z",
    "9",
    "-",
    "!",
    "~",
    "*",
    "'",
    "+",
    "_",
]
fuzz_text = st.lists(
    st.one_of(st.sampled_from(FRAGMENTS), st.text('abAB09;=<>"@:. \t', max_size=3)),
    max_size=14,
).map("".join)


@st.composite
def perturbed(draw: st.DrawFn, base: st.SearchStrategy[str]) -> str:
    """A valid text with a few random edits: a letter's case flipped, a fragment
    inserted, a character deleted."""
    text = draw(base)
    for _ in range(draw(st.integers(0, 3))):
        if not text:
            break
        i = draw(st.integers(0, len(text) - 1))
        edit = draw(st.sampled_from(["case", "insert", "delete"]))
        if edit == "case":
            text = text[:i] + text[i].swapcase() + text[i + 1 :]
        elif edit == "insert":
            text = text[:i] + draw(st.sampled_from(FRAGMENTS)) + text[i:]
        else:
            text = text[:i] + text[i + 1 :]
    return text


def outcome(fn: Any, text: str) -> object:
    try:
        return fn(text)
    except SipError:
        return "refused"


@SETTINGS
@given(
    st.one_of(
        fuzz_text,
        perturbed(uri.map(str)),
        st.tuples(uri.map(str), st.sampled_from([str.upper, str.title, str.swapcase])).map(
            lambda t: t[1](t[0])
        ),
    )
)
def test_uri_fast_path_agrees(text: str) -> None:
    from sipguard.sip.uri import _parse_uri_general

    assert outcome(parse_uri, text) == outcome(_parse_uri_general, text)


@SETTINGS
@given(
    st.one_of(
        fuzz_text,
        perturbed(name_addr().map(str)),
        st.tuples(name_addr().map(str), fuzz_text).map("".join),
        st.tuples(fuzz_text, name_addr().map(str)).map("".join),
    )
)
def test_name_addr_fast_path_agrees(text: str) -> None:
    """Equality compares the URIs too: a URI whose Uri is built lazily must parse."""
    from sipguard.sip.uri import _parse_name_addr_general

    assert outcome(parse_name_addr, text) == outcome(_parse_name_addr_general, text)


@SETTINGS
@given(
    st.one_of(
        fuzz_text,
        params.map(lambda p: "".join(f";{k}" + ("" if v is None else f"={v}") for k, v in p)[1:]),
    )
)
def test_params_fast_path_agrees(text: str) -> None:
    from sipguard.sip.uri import _parse_params_general, _semi_params, parse_params

    general = outcome(lambda t: _parse_params_general(t, "x"), text)
    assert outcome(lambda t: parse_params(t, "x"), text) == general
    assert outcome(lambda t: _semi_params(";" + t, "x"), text) == general


@SETTINGS
@given(st.one_of(fuzz_text, perturbed(via_value()), st.tuples(via_value(), fuzz_text).map("".join)))
def test_via_fast_path_agrees(text: str) -> None:
    from sipguard.sip.message import _parse_via_general, parse_via

    assert outcome(parse_via, text) == outcome(_parse_via_general, text)


@SETTINGS
@given(
    st.one_of(fuzz_text, st.tuples(st.integers(0, 2**33), method).map(lambda t: f"{t[0]} {t[1]}"))
)
def test_cseq_fast_path_agrees(text: str) -> None:
    from sipguard.sip.message import _parse_cseq_general, parse_cseq

    assert outcome(parse_cseq, text) == outcome(_parse_cseq_general, text)


lws = st.sampled_from(["", "", " ", "\t", "  ", " \t "])
header_line = st.one_of(
    st.tuples(token, lws, st.just(":"), lws, header_text, lws).map("".join),
    perturbed(st.tuples(token, st.just(": "), header_text).map("".join)),
    fuzz_text,
)


@SETTINGS
@given(st.lists(header_line, max_size=8))
def test_header_section_fast_path_agrees(lines: list[str]) -> None:
    from sipguard.sip.message import DEFAULT_LIMITS, _head_lines, _split_headers

    data = ("OPTIONS sip:a@b SIP/2.0\r\n" + "".join(f"{x}\r\n" for x in lines) + "\r\n").encode(
        "utf-8", "surrogateescape"
    )
    if b"\r\n\r\n" in data[:-4] or any(
        line.split(":", 1)[0].strip(" \t").lower() in ("l", "content-length", "L") for line in lines
    ):
        return  # an empty line inside, or a Content-Length: not what this test is about
    try:
        general: object = tuple(_split_headers(_head_lines(data, True)[0], DEFAULT_LIMITS))
    except SipError:
        general = "refused"
    assert (
        outcome(
            lambda d: parse_message(d.encode("utf-8", "surrogateescape")).headers,
            data.decode("utf-8", "surrogateescape"),
        )
        == general
    )
