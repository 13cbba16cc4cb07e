"""URIs (sip, sips, tel, urn, others), name-addr and comma splitting: sipguard/sip/uri.py."""

from __future__ import annotations

import copy
import pickle
from dataclasses import FrozenInstanceError

import pytest

from sipguard.sip.errors import SipError
from sipguard.sip.uri import (
    NameAddr,
    Uri,
    format_params,
    param,
    parse_host_port,
    parse_name_addr,
    parse_params,
    parse_uri,
    split_commas,
    unescape,
)

# -- unescape ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "plain"),
    [
        ("%2331%23", "#31#"),
        ("value%2541", "value%41"),  # once only (RFC 4475 §3.1.1.3)
        ("%41%42c", "ABc"),
        ("a%00b", "a\x00b"),  # a NUL does not end the name (RFC 4475 §3.1.1.4)
        ("100%", "100%"),
        ("%4", "%4"),
        ("%zz", "%zz"),
        ("%%41", "%A"),
        ("plain", "plain"),
        ("%e4", "\xe4"),
    ],
)
def test_unescape_once(text: str, plain: str) -> None:
    assert unescape(text) == plain


def test_user_unescaped_keeps_the_user_as_written() -> None:
    uri = parse_uri("sip:%2331%2301711234567@pbx.example.com")
    assert uri.user == "%2331%2301711234567"
    assert uri.user_unescaped == "#31#01711234567"
    assert str(uri) == "sip:%2331%2301711234567@pbx.example.com"
    assert parse_uri("sip:host.example.com").user_unescaped is None


# -- sip / sips ----------------------------------------------------------------------------------


def test_full_sip_uri() -> None:
    uri = parse_uri("sips:alice:secret@Example.COM:5061;transport=tls;lr;user=phone?subject=hi&x=y")
    assert uri.scheme == "sips" and uri.is_sip
    assert uri.user == "alice"
    assert uri.password == "secret"
    assert uri.host == "example.com"  # hosts compare case-insensitively: kept lower-case
    assert uri.port == 5061
    assert uri.params == (("transport", "tls"), ("lr", None), ("user", "phone"))
    assert uri.param("transport") == "tls"
    assert uri.param("LR") == ""  # a flag parameter reads as ''
    assert uri.param("maddr") is None
    assert uri.headers == "subject=hi&x=y"
    assert uri.host_port() == ("example.com", 5061)
    assert (
        str(uri) == "sips:alice:secret@example.com:5061;transport=tls;lr;user=phone?subject=hi&x=y"
    )


def test_scheme_is_case_insensitive() -> None:
    assert parse_uri("SIP:bob@example.com").scheme == "sip"
    assert parse_uri("TEL:+1234").scheme == "tel"


def test_empty_password_and_user_with_semicolon() -> None:
    assert parse_uri("sip:alice:@example.com").password == ""
    # RFC 4475 §3.1.1.9: ';' belongs to the user part when it comes before '@'
    uri = parse_uri("sip:user;par=u%40example.net@example.com")
    assert uri.user == "user;par=u%40example.net"
    assert uri.user_unescaped == "user;par=u@example.net"
    assert uri.host == "example.com" and uri.params == ()


def test_ipv4_and_default_port() -> None:
    uri = parse_uri("sip:192.0.2.1")
    assert uri.user is None
    assert uri.host_port() == ("192.0.2.1", 5060)
    assert uri.host_port(5061) == ("192.0.2.1", 5061)


@pytest.mark.parametrize(
    ("text", "host", "port"),
    [
        ("sip:[2001:db8::10]", "[2001:db8::10]", None),
        ("sip:[2001:db8::10]:5070", "[2001:db8::10]", 5070),
        ("sip:[2001:db8::10:5070]", "[2001:db8::10:5070]", None),  # RFC 5118 §4.3
        ("sip:user@[2001:DB8::10];transport=tcp", "[2001:db8::10]", None),
        ("sip:[::ffff:192.0.2.1]", "[::ffff:192.0.2.1]", None),
        ("sip:[2001:db8:::192.0.2.1]", "[2001:db8:::192.0.2.1]", None),  # tolerated, §4.10
    ],
)
def test_ipv6_references(text: str, host: str, port: int | None) -> None:
    uri = parse_uri(text)
    assert (uri.host, uri.port) == (host, port)
    assert uri.host_port()[0] == host[1:-1]
    assert str(uri) == text.replace("DB8", "db8")


@pytest.mark.parametrize(
    "text",
    [
        "sip:2001:db8::10",  # RFC 5118 §4.2: IPv6 without brackets
        "sip:[2001:db8::10",
        "sip:[2001:db8::10]x",
        "sip:host:0",
        "sip:host:65536",
        "sip:host:123456",
        "sip:host:",
        "sip:host:port",
        "sip:host:\u00b2",  # a Unicode digit is not a port
        "sip:",
        "sip:@host",
        "sip:user@",
        'sip:us"er@host',
        "sip:-host-",
        "sip:ho_st",
        "sip:host;=x",
        "sip:host;a=",
        'sip:host;a="x',
        "sip:host;;a",
        "sip:bob@exa mple.com",
        "sip:<bob@example.com>",
        "nocolon",
        ":nothing",
        "1sip:x",
        "s ip:x",
    ],
)
def test_malformed_uris_are_refused(text: str) -> None:
    with pytest.raises(SipError) as info:
        parse_uri(text)
    assert info.value.status == 400


def test_huge_port_is_refused_not_crashing() -> None:
    with pytest.raises(SipError):
        parse_uri("sip:host:" + "9" * 5000)


def test_parse_host_port() -> None:
    assert parse_host_port("Example.com:5060") == ("example.com", 5060)
    assert parse_host_port("[::1]:5061") == ("[::1]", 5061)
    assert parse_host_port("10.0.0.1") == ("10.0.0.1", None)
    with pytest.raises(SipError):
        parse_host_port("[::1]5061")


# -- tel, urn, other schemes ----------------------------------------------------------------


def test_tel_uri() -> None:
    uri = parse_uri("tel:+44-1632-960001;phone-context=example.com;isub=12")
    assert uri.scheme == "tel" and not uri.is_sip
    assert uri.user == "+44-1632-960001"
    assert uri.param("phone-context") == "example.com"
    assert uri.host == ""
    assert str(uri) == "tel:+44-1632-960001;phone-context=example.com;isub=12"
    assert parse_uri("tel:%2331%23112").user_unescaped == "#31#112"
    with pytest.raises(SipError):
        parse_uri("tel:;a=b")


@pytest.mark.parametrize(
    "text", ["urn:service:sos", "urn:service:sos.ambulance", "URN:service:sos"]
)
def test_urn_service_sos(text: str) -> None:
    uri = parse_uri(text)
    assert uri.scheme == "urn"
    assert uri.opaque is not None and uri.opaque.lower().startswith("service:sos")
    assert uri.user is None and uri.host == ""
    assert str(uri) == "urn:" + text.split(":", 1)[1]


@pytest.mark.parametrize(
    "text", ["http://www.example.com/a?b=c", "isbn:2983792873", "soap.beep://192.0.2.103:3002"]
)
def test_other_schemes_are_opaque(text: str) -> None:
    uri = parse_uri(text)
    assert uri.opaque == text.split(":", 1)[1]
    assert str(uri) == text


def test_uri_is_a_frozen_value() -> None:
    a = parse_uri("sip:alice@example.com;lr")
    assert a == Uri("sip", "alice", None, "example.com", None, (("lr", None),))
    assert hash(a) == hash(parse_uri("sip:alice@example.com;lr"))
    with pytest.raises(AttributeError):
        a.user = "mallory"  # type: ignore[misc]


# -- params ------------------------------------------------------------------------------------


def test_params() -> None:
    p = parse_params('tag=abc; lr ;received = 192.0.2.1;x="a;b, c"', "header")
    assert p == (("tag", "abc"), ("lr", None), ("received", "192.0.2.1"), ("x", '"a;b, c"'))
    assert param(p, "TAG") == "abc"
    assert param(p, "lr") == ""
    assert param(p, "nope") is None
    assert format_params((("tag", "abc"), ("lr", None))) == ";tag=abc;lr"


@pytest.mark.parametrize(
    "text", ["", "a;", ";a", "a=", "a b=c", "a=b c", 'a="b', 'a="b"c', "a=<x>"]
)
def test_bad_params(text: str) -> None:
    with pytest.raises(SipError):
        parse_params(text, "test")


# -- name-addr ---------------------------------------------------------------------------------


def test_name_addr_quoted_display() -> None:
    na = parse_name_addr('"Alice \\"A\\" Liddell" <sip:alice@example.com;user=phone>;tag=9fx;x')
    assert na.display == '"Alice \\"A\\" Liddell"'
    assert na.display_text == 'Alice "A" Liddell'
    assert na.uri.user == "alice" and na.uri.param("user") == "phone"
    assert na.tag == "9fx"
    assert na.param("x") == ""
    assert str(na) == '"Alice \\"A\\" Liddell" <sip:alice@example.com;user=phone>;tag=9fx;x'


def test_name_addr_token_display_and_no_space() -> None:
    na = parse_name_addr("A. Bell<sip:a.g.bell@example.com>;tag=1")  # RFC 4475 §3.1.1.6
    assert na.display == "A. Bell" and na.display_text == "A. Bell"
    assert na.tag == "1"
    assert str(na) == "A. Bell <sip:a.g.bell@example.com>;tag=1"


def test_flag_tag() -> None:
    assert parse_name_addr("<sip:a@example.com>;tag").tag == ""


def test_name_addr_without_display() -> None:
    na = parse_name_addr("<sip:bob@example.com>")
    assert na.display is None and na.display_text is None and na.tag is None
    assert str(na) == "<sip:bob@example.com>"
    assert parse_name_addr(' "" <sip:bob@example.com>').display_text == ""


def test_addr_spec_params_are_header_params() -> None:
    """Without <>, URI parameters belong to the header (RFC 3261 §20.10)."""
    na = parse_name_addr("sip:bob@example.com;tag=xyz;user=phone")
    assert na.uri == parse_uri("sip:bob@example.com")
    assert na.params == (("tag", "xyz"), ("user", "phone"))
    assert na.tag == "xyz"
    assert str(na) == "<sip:bob@example.com>;tag=xyz;user=phone"


def test_name_addr_tel_and_urn() -> None:
    assert parse_name_addr("<tel:+441632960001>").uri.user == "+441632960001"
    assert parse_name_addr("<urn:service:sos>").uri.opaque == "service:sos"


def test_name_addr_display_with_nul_and_utf8() -> None:
    na = parse_name_addr('"J Rosenberg \\\\\\"\x00" <sip:jdrosen@example.com>;tag=1')
    assert na.display_text is not None and "\x00" in na.display_text
    assert parse_name_addr('"Zo\u00eb" <sip:z@example.com>').display_text == "Zo\u00eb"


def test_contact_instance_param() -> None:
    na = parse_name_addr(
        '<sip:alice@192.0.2.1:5060;transport=tcp>;+sip.instance="<urn:uuid:f81d4fae-7dec>";expires=60'
    )
    assert na.param("+sip.instance") == '"<urn:uuid:f81d4fae-7dec>"'
    assert na.param("expires") == "60"
    assert na.uri.param("transport") == "tcp"


@pytest.mark.parametrize(
    "text",
    [
        '"unterminated <sip:a@example.com>',  # RFC 4475 §3.1.2.6
        "Bell, Alexander <sip:a@example.com>",  # non-token display (§3.1.2.15)
        '"A" sip:a@example.com',
        "<sip:a@example.com",
        "<sip:a@example.com>x",
        "<sip:a@example.com>;",
        "sip:a@example.com?Route=x",  # addr-spec with headers needs <> (§3.1.2.13)
        "<>",
        "",
        "<sip:a@exa mple.com>",
    ],
)
def test_bad_name_addr(text: str) -> None:
    with pytest.raises(SipError):
        parse_name_addr(text)


def test_name_addr_is_a_value() -> None:
    a = parse_name_addr('"A" <sip:a@example.com>;tag=1')
    assert a == NameAddr(parse_uri("sip:a@example.com"), '"A"', (("tag", "1"),))
    assert hash(a) == hash(parse_name_addr('"A" <sip:a@example.com>;tag=1'))
    assert a != parse_name_addr('"A" <sip:a@example.com>;tag=2')
    assert a != "not a name-addr"
    assert a.uri.user == "a"
    assert NameAddr(uri=a.uri, display=None).params == ()
    with pytest.raises(FrozenInstanceError):
        a.display = "B"  # type: ignore[misc]
    with pytest.raises(FrozenInstanceError):
        del a.params  # type: ignore[misc]
    assert repr(a) == (
        "NameAddr(uri=Uri(scheme='sip', user='a', password=None, host='example.com', port=None,"
        " params=(), headers=None, opaque=None), display='\"A\"', params=(('tag', '1'),))"
    )
    match a:
        case NameAddr(uri, display, params):
            assert (uri.host, display, params) == ("example.com", '"A"', (("tag", "1"),))


def test_name_addr_copies_and_pickles() -> None:
    a = parse_name_addr('"A" <sip:a@example.com;lr>;tag=1')  # its Uri not built yet
    for b in (copy.copy(a), copy.deepcopy(a), pickle.loads(pickle.dumps(a))):
        assert b == a and b.uri.param("lr") == ""


def test_name_addr_uri_is_built_once_when_read() -> None:
    a = parse_name_addr("<sip:a@Example.com:5070;transport=tcp>;tag=1")
    assert a.tag == "1"
    first = a.uri
    assert first is a.uri
    assert first.host_port() == ("example.com", 5070)


def test_spaces_inside_angle_brackets_tolerated() -> None:
    """RFC 4475 §3.1.2.14 (badaspec) lets a liberal element ignore the spaces."""
    assert parse_name_addr("< sip:t.watson@example.org >").uri.host == "example.org"


# -- comma splitting ---------------------------------------------------------------------------


def test_split_commas() -> None:
    assert split_commas('"Doe, John" <sip:j@x>;a="b,c", <sip:k@y>') == [
        '"Doe, John" <sip:j@x>;a="b,c"',
        "<sip:k@y>",
    ]
    assert split_commas("<sip:a@x;p=1,2>, <sip:b@y>") == ["<sip:a@x;p=1,2>", "<sip:b@y>"]
    assert split_commas(r'"a\", b" <sip:a@x>') == [r'"a\", b" <sip:a@x>']
    assert split_commas("a ,b,, c") == ["a", "b", "", "c"]
    assert split_commas("  ") == []
    assert split_commas("single") == ["single"]
    with pytest.raises(SipError):
        split_commas('"unbalanced, <sip:a@x>')


# -- review fixes: LWS is SP and HTAB only; ports with leading zeros -------------------------------


def test_port_with_leading_zeros() -> None:
    """port = 1*DIGIT (RFC 3261 §25.1): ``05060`` and ``0005060`` are 5060."""
    assert parse_uri("sip:host:05060").port == 5060
    assert parse_uri("sip:host:0005060;lr").port == 5060
    assert parse_host_port("[::1]:0000005061") == ("[::1]", 5061)
    for bad in ("sip:host:000000", "sip:host:" + "0" * 5000 + "65536"):
        with pytest.raises(SipError):
            parse_uri(bad)


@pytest.mark.parametrize(
    "text",
    [
        "A\x0bB <sip:a@example.com>",  # a vertical tab is no LWS between display tokens
        "A\x1cB <sip:a@example.com>",
        "\x1c<sip:a@example.com>",
        "<sip:a@example.com>\x0b;tag=1",
        "A\xa0B <sip:a@example.com>",
    ],
)
def test_only_sp_and_htab_are_whitespace_in_a_name_addr(text: str) -> None:
    with pytest.raises(SipError):
        parse_name_addr(text)


def test_split_commas_strips_sp_and_htab_only() -> None:
    assert split_commas(" a ,\tb\t") == ["a", "b"]
    assert split_commas("a,\x0bb") == ["a", "\x0bb"]
    assert split_commas("\x0b") == ["\x0b"]


def test_parse_caches_are_bounded_and_give_equal_immutable_values() -> None:
    """Parsed name-addrs and URIs are kept by text (a dialog's From/To come again in
    its messages), within bounds whatever a peer sends."""
    from sipguard.sip import uri as uri_mod

    text = '"Alice" <sip:alice@example.com;transport=udp>;tag=cache-1'
    first = uri_mod.parse_name_addr(text)
    again = uri_mod.parse_name_addr(text)
    assert again is first and again.tag == "cache-1"
    with pytest.raises(AttributeError):
        again.display = "Mallory"  # type: ignore[misc]
    u = uri_mod.parse_uri("sip:bob@example.com")
    assert uri_mod.parse_uri("sip:bob@example.com") is u
    with pytest.raises(AttributeError):
        u.host = "evil.example"  # type: ignore[misc]
    # a bad value is an error every time, never kept
    for _ in range(2):
        with pytest.raises(SipError):
            uri_mod.parse_name_addr("<sip:bob@example.com")
    # never more entries than the bound, however many different values come; the oldest
    # go first
    n = uri_mod.NA_CACHE_ENTRIES
    for i in range(n + 100):
        uri_mod.parse_name_addr(f"<sip:u{i}@example.com>;tag={i}")
        uri_mod.parse_uri(f"sip:u{i}@example.com")
    assert len(uri_mod._NA_CACHE) == n
    assert len(uri_mod._URI_CACHE) == n
    assert "<sip:u0@example.com>;tag=0" not in uri_mod._NA_CACHE
    assert f"<sip:u{n + 99}@example.com>;tag={n + 99}" in uri_mod._NA_CACHE
    # each kept key has its one slot in the ring that evicts it, and no other
    for cache, ring in (
        (uri_mod._NA_CACHE, uri_mod._NA_RING),
        (uri_mod._URI_CACHE, uri_mod._URI_RING),
    ):
        assert sorted(k for k in ring.keys if k is not None) == sorted(cache)
    # were a cache ever emptied behind its ring's back, eviction would still never fail
    uri_mod._NA_CACHE.clear()
    for i in range(n + 10):
        assert uri_mod.parse_name_addr(f"<sip:v{i}@example.com>").uri.user == f"v{i}"
    assert len(uri_mod._NA_CACHE) == n
    # a long value, or one with many parameters (many objects), is parsed but not kept
    long_text = "<sip:" + "a" * uri_mod.NA_CACHE_TEXT + "@example.com>"
    assert uri_mod.parse_name_addr(long_text).uri.user == "a" * uri_mod.NA_CACHE_TEXT
    many = "<sip:x@h>" + "".join(f";p{i}" for i in range(uri_mod.NA_CACHE_PARAMS + 1))
    assert len(uri_mod.parse_name_addr(many).params) == uri_mod.NA_CACHE_PARAMS + 1
    assert long_text not in uri_mod._NA_CACHE and many not in uri_mod._NA_CACHE
