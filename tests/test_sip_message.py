"""SIP messages: parse, typed access, validate, serialise (sipguard/sip/message.py)."""

from __future__ import annotations

import pytest

from sipguard.sip.errors import MessageTooLarge, SipError
from sipguard.sip.message import (
    COMPACT_FORMS,
    CSeq,
    Limits,
    Request,
    Response,
    Via,
    attach_response,
    parse_cseq,
    parse_message,
    parse_via,
)


def msg_bytes(start: str, *headers: str, body: bytes = b"", clen: bool = True) -> bytes:
    lines = [start, *headers]
    if clen:
        lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


BASE = (
    "Via: SIP/2.0/UDP pc33.example.com:5060;branch=z9hG4bK776asdhds;rport",
    "Max-Forwards: 70",
    'From: "Alice" <sip:alice@example.com>;tag=1928301774',
    "To: <sip:bob@example.org>",
    "Call-ID: a84b4c76e66710@pc33.example.com",
    "CSeq: 314159 INVITE",
    "Contact: <sip:alice@pc33.example.com>",
)


def invite(*extra: str, body: bytes = b"", base: tuple[str, ...] = BASE) -> bytes:
    return msg_bytes("INVITE sip:bob@example.org SIP/2.0", *base, *extra, body=body)


def parse_req(data: bytes) -> Request:
    msg = parse_message(data)
    assert isinstance(msg, Request)
    msg.validate()
    return msg


def refused(data: bytes, **kw: object) -> SipError:
    with pytest.raises(SipError) as info:
        parse_message(data, **kw).validate()  # type: ignore[arg-type]
    return info.value


# -- start lines -------------------------------------------------------------------------------


def test_request_basics() -> None:
    req = parse_req(invite())
    assert req.method == "INVITE"
    assert req.uri == "sip:bob@example.org"
    assert req.request_uri.user == "bob"
    assert req.start_line() == "INVITE sip:bob@example.org SIP/2.0"
    assert req.body == b""
    assert repr(req) == "<Request INVITE sip:bob@example.org>"


def test_response_basics() -> None:
    resp = parse_message(msg_bytes("SIP/2.0 183 Session Progress", *BASE))
    assert isinstance(resp, Response)
    resp.validate()
    assert (resp.status, resp.reason) == (183, "Session Progress")
    assert resp.start_line() == "SIP/2.0 183 Session Progress"
    assert repr(resp) == "<Response 183 Session Progress>"


UTF8_REASON = "\u0412\u0441\u0451 \u0445\u043e\u0440\u043e\u0448\u043e"  # Cyrillic: "all good"


def test_empty_and_utf8_reason_phrase() -> None:
    resp = parse_message(msg_bytes("SIP/2.0 200 ", *BASE))
    assert isinstance(resp, Response) and resp.reason == ""
    resp = parse_message(msg_bytes("SIP/2.0 200 " + UTF8_REASON, *BASE))
    assert isinstance(resp, Response) and resp.reason == UTF8_REASON
    assert resp.to_bytes().startswith(f"SIP/2.0 200 {UTF8_REASON}\r\n".encode())


@pytest.mark.parametrize(
    ("start", "status"),
    [
        ("INVITE sip:bob@example.org SIP/3.0", 505),
        ("INVITE sip:bob@example.org SIP/2.0 extra", 400),
        ("INVITE  sip:bob@example.org SIP/2.0", 400),
        ("INVITE sip:bob@example.org HTTP/1.1", 400),
        ("INVITE sip:bob@example.org", 400),
        ("INV ITE sip:bob@example.org SIP/2.0", 400),
        ("INVITE <sip:bob@example.org> SIP/2.0", 400),
        ("INVITE sip:bob@example.org?Route=x SIP/2.0", 400),  # headers in a Request-URI
        ("INVITE sip:bob@example.org SIP/\u00b2.0", 400),
    ],
)
def test_bad_request_lines_are_answered(start: str, status: int) -> None:
    err = refused(msg_bytes(start, *BASE))
    assert err.status == status
    assert err.response is not None
    resp = parse_message(err.response)
    assert isinstance(resp, Response) and resp.status == status


@pytest.mark.parametrize(
    "start",
    [
        "SIP/2.0 1000 Too Big",
        "SIP/2.0 099 Low",
        "SIP/2.0 20 OK",
        "SIP/3.0 200 OK",
        "SIP/2.0 2x0 OK",
    ],
)
def test_bad_status_lines_are_dropped(start: str) -> None:
    err = refused(msg_bytes(start, *BASE))
    assert err.status is None and err.response is None and not err.answerable


def test_a_malformed_response_is_dropped_not_answered() -> None:
    err = refused(msg_bytes("SIP/2.0 200 OK", *BASE[:-2], "CSeq: x INVITE"))
    assert err.status is None and err.response is None


def test_method_case_and_extension_methods() -> None:
    req = parse_req(
        msg_bytes(
            "!interesting-Method0123456789_*+`.%indeed'~ sip:b@example.org SIP/2.0",
            *BASE[:-2],
            "CSeq: 1 !interesting-Method0123456789_*+`.%indeed'~",
        )
    )
    assert req.method == "!interesting-Method0123456789_*+`.%indeed'~"
    # methods are case-sensitive: 'invite' is not INVITE, and CSeq must match exactly
    assert refused(msg_bytes("invite sip:b@example.org SIP/2.0", *BASE)).status == 400


# -- headers: order, compact forms, folding --------------------------------------------------


def test_header_order_and_raw_values_kept() -> None:
    req = parse_req(invite("X-B: 2", "x-a:1", "X-B:   3  "))
    names = [n for n, _ in req.headers]
    assert names[-4:] == ["X-B", "x-a", "X-B", "Content-Length"]
    assert req.get_lines("x-b") == ["2", "3"]
    assert req.get("x-a") == "1"
    assert req.get("x-missing") is None
    assert req.get_lines("x-missing") == []
    assert req.has("x-b") and not req.has("X-B")  # lookups take lower-case names
    items = req.keyed_headers()
    assert items[0] == ("via", BASE[0][5:])
    assert [k for k, _ in items[-4:]] == ["x-b", "x-a", "x-b", "content-length"]


COMPACT_SAMPLES = {
    "i": "abc@host",
    "m": "<sip:alice@example.com>",
    "e": "gzip",
    "l": "0",
    "c": "application/sdp",
    "f": "<sip:alice@example.com>;tag=1",
    "s": "Hello, world",
    "k": "timer, 100rel",
    "t": "<sip:bob@example.org>",
    "v": "SIP/2.0/UDP host.example.com;branch=z9hG4bK1",
    "x": "1800;refresher=uac",
    "o": "refer",
    "u": "presence, dialog",
    "r": "<sip:carol@example.net>",
    "b": "<sip:alice@example.com>",
    "a": "*;audio",
    "j": "*;video",
    "d": "proxy, recurse",
    "y": "eyJhbGciOiJFUzI1NiJ9.e30.c2ln;info=<https://cert.example.org/a.cer>",
    "n": "<https://cert.example.org/cert.pem>;alg=rsa-sha1",
}


def test_every_compact_form_is_known() -> None:
    assert set(COMPACT_SAMPLES) == set(COMPACT_FORMS) == set("imelcfsktvxourbajdyn")


@pytest.mark.parametrize("letter", sorted(COMPACT_SAMPLES))
def test_compact_form(letter: str) -> None:
    long_name = COMPACT_FORMS[letter]
    base = tuple(h for h in BASE if h.split(":", 1)[0].lower() != long_name)
    header = f"{letter}: {COMPACT_SAMPLES[letter]}"
    data = msg_bytes("INVITE sip:bob@example.org SIP/2.0", *base, header, clen=letter != "l")
    req = parse_req(data)
    assert req.get(long_name) == COMPACT_SAMPLES[letter]
    assert req.get(letter) is None
    assert (letter, COMPACT_SAMPLES[letter]) in req.headers  # written as it came
    # upper-case compact forms too
    upper = parse_req(data.replace(f"\r\n{letter}:".encode(), f"\r\n{letter.upper()}:".encode()))
    assert upper.get(long_name) == COMPACT_SAMPLES[letter]


def test_compact_and_long_forms_mix() -> None:
    req = parse_req(invite("v: SIP/2.0/TCP second.example.com;branch=z9hG4bK2"))
    assert [v.host for v in req.vias] == ["pc33.example.com", "second.example.com"]


def test_folding_is_undone() -> None:
    data = invite("Subject: first\r\n  second\r\n\tthird", "X-Empty:\r\n folded")
    req = parse_req(data)
    assert req.get("subject") == "first second third"
    assert req.get("x-empty") == "folded"
    assert parse_req(req.to_bytes()).headers == req.headers


def test_folded_via_and_lws_around_colon() -> None:
    data = msg_bytes(
        "INVITE sip:bob@example.org SIP/2.0",
        "Via  :  SIP / 2.0\r\n /UDP\r\n    pc33.example.com;branch=z9hG4bK776",
        *BASE[1:],
    )
    req = parse_req(data)
    assert req.top_via.branch == "z9hG4bK776"
    assert req.top_via.transport == "UDP"


def test_continuation_before_first_header_is_refused() -> None:
    rest = invite().split(b"\r\n", 1)[1]
    data = b"INVITE sip:bob@example.org SIP/2.0\r\n Via: x\r\n" + rest
    err = refused(data)
    assert err.status == 400 and err.response is not None  # the real Via can be read
    assert refused(data.replace(b"\r\nVia:", b"\r\nX-Via:")).status is None  # no Via: drop


@pytest.mark.parametrize(
    "line",
    [
        "No colon here",
        "Bad Name: x",
        "Bad\x00Name: x",
        ": empty name",
        "X-Inject: a\nP-Asserted-Identity: <sip:evil@example.com>",
        "X-Inject: a\rb",
    ],
)
def test_malformed_header_lines_are_answered_400(line: str) -> None:
    err = refused(invite(line))
    assert err.status == 400
    assert err.response is not None
    resp = parse_message(err.response)
    assert isinstance(resp, Response) and resp.status == 400
    assert resp.get("call-id") == "a84b4c76e66710@pc33.example.com"
    assert b"evil" not in err.response


# -- list headers: split only where the grammar allows -----------------------------------------


def test_list_headers_split_at_commas() -> None:
    req = parse_req(
        invite(
            "Supported: timer, 100rel",
            "Supported: replaces",
            "Allow: INVITE,ACK , BYE",
            'Route: <sip:p1.example.com;lr>, "Proxy, Two" <sip:p2.example.com;lr>',
            "Route: <sip:p3.example.com;lr>",
            "Record-Route: <sip:rr1.example.com;lr>,<sip:rr2.example.com;lr>",
        )
    )
    assert req.get_all("supported") == ["timer", "100rel", "replaces"]
    assert req.tokens("supported") == {"timer", "100rel", "replaces"}
    assert req.tokens("allow") == {"invite", "ack", "bye"}
    assert req.tokens("require") == frozenset()
    routes = req.name_addrs("route")
    assert [r.uri.host for r in routes] == ["p1.example.com", "p2.example.com", "p3.example.com"]
    assert routes[1].display_text == "Proxy, Two"
    assert all(r.uri.param("lr") == "" for r in routes)
    assert [r.uri.host for r in req.name_addrs("record-route")] == [
        "rr1.example.com",
        "rr2.example.com",
    ]
    assert req.get_lines("route")[0].count(",") == 2  # raw lines are kept as written


@pytest.mark.parametrize(
    ("header", "value"),
    [
        ("WWW-Authenticate", 'Digest realm="atlanta.com", nonce="84a4cc6f", qop="auth,auth-int"'),
        ("Authorization", 'Digest username="bob", realm="biloxi.com", uri="sip:b@x", response="x"'),
        ("Proxy-Authenticate", 'Digest realm="a", nonce="b", algorithm=MD5'),
        ("Proxy-Authorization", 'Digest username="a", response="b"'),
        ("Date", "Sat, 13 Nov 2010 23:29:00 GMT"),
        ("Subject", "Lunch, tomorrow?"),
        ("User-Agent", "Softphone/1.0 (Linux, x86)"),
        ("Retry-After", "18000;duration=3600, or so"),
    ],
)
def test_headers_whose_grammar_has_commas_are_never_split(header: str, value: str) -> None:
    req = parse_req(invite(f"{header}: {value}"))
    assert req.get_all(header.lower()) == [value]


def test_empty_list_entry_is_refused() -> None:
    req = parse_message(invite("Supported: timer,,100rel"))
    with pytest.raises(SipError):
        req.get_all("supported")


# -- typed views: Via, CSeq, Call-ID, Max-Forwards ---------------------------------------------


def test_via() -> None:
    req = parse_req(
        invite(
            "Via: SIP/2.0/TLS [2001:db8::1]:5061;branch=z9hG4bK2;received=192.0.2.9;rport=5070",
            base=BASE,
        )
    )
    top, second = req.vias
    assert req.top_via is top
    assert (top.transport, top.host, top.port) == ("UDP", "pc33.example.com", 5060)
    assert top.branch == "z9hG4bK776asdhds"
    assert top.rport == "" and top.received is None
    assert top.protocol == "SIP/2.0"
    assert (second.transport, second.host, second.port) == ("TLS", "[2001:db8::1]", 5061)
    assert second.received == "192.0.2.9" and second.rport == "5070"
    assert second.sent_by() == "[2001:db8::1]:5061"
    assert str(second) == (
        "SIP/2.0/TLS [2001:db8::1]:5061;branch=z9hG4bK2;received=192.0.2.9;rport=5070"
    )


def test_parse_via_variants() -> None:
    v = parse_via("SIP / 2.0 / udp  Host.Example.com : 5060 ;branch=z9hG4bK1")
    assert v == Via("UDP", "host.example.com", 5060, (("branch", "z9hG4bK1"),))
    assert parse_via("SIP/2.0/UDP host").port is None
    assert parse_via("SIP/2.0/UDP host").branch is None
    for bad in (
        "SIP/2.0/UDP",
        "SIP/2.0 host",
        "SIP/2.0/UDP host:0",
        "SIP/2.0/UDP host:99999",
        "SIP/2.0/UDP host:" + "9" * 5000,
        "SIP/2.0/UDP host;;",
        "SIP/2.0/UDP ho st",
        "SIP/2.0/UDP host:\u0665\u0660\u0666\u0660",
    ):
        with pytest.raises(SipError):
            parse_via(bad)


def test_missing_via_is_dropped() -> None:
    data = msg_bytes("INVITE sip:bob@example.org SIP/2.0", *BASE[1:])
    msg = parse_message(data)
    with pytest.raises(SipError) as info:
        msg.top_via  # noqa: B018
    assert info.value.status is None
    assert refused(data).status is None


def test_cseq() -> None:
    assert parse_cseq("0009 INVITE") == CSeq(9, "INVITE")
    assert parse_cseq(" 4294967295  ACK ") == CSeq(2**32 - 1, "ACK")
    for bad in ("4294967296 INVITE", "INVITE", "1", "-1 INVITE", "1 INV ITE", "9" * 5000 + " X"):
        with pytest.raises(SipError):
            parse_cseq(bad)
    with pytest.raises(SipError):
        parse_cseq("\u0663 INVITE")  # Arabic-Indic 3 is not a SIP digit


def test_cseq_method_must_match() -> None:
    err = refused(invite(base=(*BASE[:5], "CSeq: 1 OPTIONS", BASE[6])))
    assert err.status == 400 and err.response is not None


def test_call_id() -> None:
    assert parse_req(invite()).call_id == "a84b4c76e66710@pc33.example.com"
    msg = parse_message(invite(base=(*BASE[:4], "Call-ID: has space", *BASE[5:])))
    with pytest.raises(SipError):
        msg.call_id  # noqa: B018


@pytest.mark.parametrize(
    ("value", "expected"),
    [("70", 70), ("0068", 68), ("0", 0), ("300", 255), ("9" * 50, 255), ("9" * 5000, 255)],
)
def test_max_forwards(value: str, expected: int) -> None:
    req = parse_req(invite(base=(BASE[0], f"Max-Forwards: {value}", *BASE[2:])))
    assert req.max_forwards == expected


@pytest.mark.parametrize("value", ["-1", "x", "1 2", "\u00b2", "\u0663", ""])
def test_bad_max_forwards(value: str) -> None:
    assert refused(invite(base=(BASE[0], f"Max-Forwards: {value}", *BASE[2:]))).status == 400


def test_no_max_forwards_is_none() -> None:
    assert parse_req(invite(base=(BASE[0], *BASE[2:]))).max_forwards is None


@pytest.mark.parametrize("name", ["Call-ID", "CSeq", "From", "To", "Max-Forwards"])
def test_single_headers_twice_are_refused(name: str) -> None:
    dup = next(h for h in BASE if h.startswith(name + ":"))
    assert refused(invite(dup)).status == 400


# -- typed views: name-addrs -------------------------------------------------------------------


def test_from_to() -> None:
    req = parse_req(invite())
    assert req.from_.tag == "1928301774"
    assert req.from_.display_text == "Alice"
    assert req.from_.uri.user == "alice"
    assert req.to.tag is None
    assert req.to.uri.host == "example.org"
    assert req.from_ is req.from_  # parsed once, cached


@pytest.mark.parametrize("name", ["From", "To"])
def test_missing_from_or_to(name: str) -> None:
    data = invite(base=tuple(h for h in BASE if not h.startswith(name + ":")))
    msg = parse_message(data)
    with pytest.raises(SipError):
        msg.from_ if name == "From" else msg.to  # noqa: B018
    err = refused(data)
    assert err.status == 400 and err.response is not None


def test_contact_star_and_instance() -> None:
    reg = msg_bytes(
        "REGISTER sip:registrar.example.com SIP/2.0",
        *BASE[:5],
        "CSeq: 2 REGISTER",
        "Contact: *",
        "Expires: 0",
    )
    req = parse_req(reg)
    assert req.contact_star
    assert req.contacts == []
    req = parse_req(
        invite(
            base=(
                *BASE[:6],
                '<sip:alice@192.0.2.1;transport=tcp>;+sip.instance="<urn:gsma:imei:35-2099-'
                '99-999999-0>";expires=3600, "Al" <sip:al@192.0.2.2>;q=0.5',
            )
        ).replace(b"\r\n<sip:alice@192.0.2.1", b"\r\nContact: <sip:alice@192.0.2.1")
    )
    assert not req.contact_star
    first, second = req.contacts
    assert first.param("+sip.instance") == '"<urn:gsma:imei:35-2099-99-999999-0>"'
    assert first.param("expires") == "3600"
    assert first.uri.param("transport") == "tcp"
    assert second.display_text == "Al" and second.param("q") == "0.5"


def test_contact_star_among_others_is_refused() -> None:
    assert refused(invite("Contact: *, <sip:b@example.com>", base=BASE[:6])).status == 400


def test_privacy_tokens() -> None:
    req = parse_req(invite("Privacy: id;user", "Privacy: Header, critical"))
    assert req.privacy == {"id", "user", "header", "critical"}
    assert parse_req(invite()).privacy == frozenset()


def test_asserted_identities() -> None:
    req = parse_req(
        invite(
            'P-Asserted-Identity: "Alice" <sip:+441632960001@example.com;user=phone>, '
            "<tel:+441632960001>",
            "P-Preferred-Identity: <sip:alice@example.com>",
            'Remote-Party-ID: "Alice" <sip:+441632960001@example.com>;party=calling;'
            "privacy=full;screen=yes",
        )
    )
    sip_id, tel_id = req.name_addrs("p-asserted-identity")
    assert sip_id.display_text == "Alice" and sip_id.uri.param("user") == "phone"
    assert tel_id.uri.scheme == "tel" and tel_id.uri.user == "+441632960001"
    assert req.name_addrs("p-preferred-identity")[0].uri.user == "alice"
    (rpid,) = req.name_addrs("remote-party-id")
    assert rpid.param("privacy") == "full"
    assert rpid.param("party") == "calling"
    assert req.name_addrs("p-asserted-identity") is req.name_addrs("p-asserted-identity")
    assert req.name_addrs("route") == []


# -- bodies and framing ------------------------------------------------------------------------


def test_body_by_content_length_and_trailing_bytes_ignored() -> None:
    body = b"v=0\r\no=- 1 1 IN IP4 192.0.2.1\r\n"
    data = invite("Content-Type: application/sdp", body=body)
    req = parse_req(data + b"garbage after the datagram")
    assert req.body == body
    assert req.content_length == len(body)
    assert req.content_type == "application/sdp"
    assert req.to_bytes() == data


def test_content_type_with_params() -> None:
    req = parse_req(invite("Content-Type: Multipart/Mixed ; boundary=x", body=b"x"))
    assert req.content_type == "multipart/mixed"
    assert parse_req(invite()).content_type is None


def test_binary_body_with_nuls_and_crlfcrlf() -> None:
    body = b"\x00\x01\r\n\r\n\xff" * 20
    req = parse_req(invite("Content-Type: application/octet-stream", body=body))
    assert req.body == body


def test_datagram_without_content_length_takes_the_rest() -> None:
    data = msg_bytes("INVITE sip:bob@example.org SIP/2.0", *BASE, clen=False) + b"v=0\r\n"
    req = parse_req(data)
    assert req.content_length is None
    assert req.body == b"v=0\r\n"


def test_stream_without_content_length() -> None:
    head = msg_bytes("INVITE sip:bob@example.org SIP/2.0", *BASE, clen=False)
    assert parse_message(head, datagram=False).body == b""
    assert refused(head + b"v=0\r\n", datagram=False).status == 400


@pytest.mark.parametrize(
    "values",
    [["5"], ["-1"], ["x"], ["1", "2"], ["99999999999"], ["\u00b2"], ["9" * 5000]],
)
def test_bad_content_length(values: list[str]) -> None:
    data = msg_bytes(
        "INVITE sip:bob@example.org SIP/2.0",
        *BASE,
        *(f"Content-Length: {v}" for v in values),
        clen=False,
    )
    err = refused(data)
    assert err.status == 400 and err.response is not None


def test_repeated_equal_content_length_is_fine() -> None:
    data = msg_bytes(
        "INVITE sip:bob@example.org SIP/2.0", *BASE, "Content-Length: 2", "l: 2", clen=False
    )
    assert parse_req(data + b"hi").body == b"hi"


def test_leading_crlfs_are_skipped() -> None:
    assert parse_req(b"\r\n\r\n\r\n" + invite()).method == "INVITE"


def test_bare_lf_message_is_read() -> None:
    data = invite().replace(b"\r\n", b"\n")
    req = parse_req(data)
    assert req.call_id == "a84b4c76e66710@pc33.example.com"
    assert req.to_bytes() == invite()


def test_datagram_cut_after_the_last_header() -> None:
    data = invite()[:-2]  # no empty line
    assert parse_req(data).method == "INVITE"
    assert refused(data, datagram=False).status is None
    assert refused(data.rstrip(b"\r\n")).status is None


@pytest.mark.parametrize(
    "data",
    [b"", b"\r\n", b"\r\n\r\n", b"INVITE", b"\x00\xff\r\n\r\n", b"SIP/2.0 200 OK\r\n\r\n"],
)
def test_garbage_is_dropped(data: bytes) -> None:
    err = refused(data)
    assert err.status is None and err.response is None


# -- limits ------------------------------------------------------------------------------------


def test_limits() -> None:
    small = Limits(max_message=2000, max_headers=10, max_line=200)
    with pytest.raises(MessageTooLarge) as info:
        parse_message(invite(body=b"x" * 2000), limits=small)
    assert info.value.status is None  # a datagram over the limit is dropped
    err = refused(invite(*(f"X-{i}: {i}" for i in range(10))), limits=small)
    assert isinstance(err, MessageTooLarge) and err.status == 513
    assert err.response is not None and err.response.startswith(b"SIP/2.0 513 ")
    err = refused(invite("X-Long: " + "a" * 300), limits=small)
    assert isinstance(err, MessageTooLarge) and err.status == 513
    err = refused(
        msg_bytes("INVITE sip:" + "a" * 300 + "@example.org SIP/2.0", *BASE), limits=small
    )
    assert isinstance(err, MessageTooLarge)
    assert parse_req(invite()).method == "INVITE"


def test_too_long_line_in_a_folded_header() -> None:
    small = Limits(max_line=100)
    assert isinstance(refused(invite("X-F: a\r\n " + "b" * 200), limits=small), MessageTooLarge)


# -- errors and their stateless responses -------------------------------------------------------


def test_error_response_mirrors_the_request() -> None:
    data = invite(
        "v: SIP/2.0/UDP second.example.com;branch=z9hG4bK2",
        base=(*BASE[:5], "CSeq: 1 BYE", BASE[6]),
    )
    err = refused(data)
    assert err.status == 400 and err.response is not None
    resp = parse_message(err.response)
    assert isinstance(resp, Response)
    assert resp.status == 400 and resp.reason == "Bad Request"
    assert resp.get_lines("via") == [BASE[0][5:], "SIP/2.0/UDP second.example.com;branch=z9hG4bK2"]
    assert resp.get("from") == BASE[2][6:]
    assert resp.get("call-id") == "a84b4c76e66710@pc33.example.com"
    assert resp.get("cseq") == "1 BYE"
    assert resp.to.tag  # a tag is added to a To without one ...
    again = refused(data)
    assert again.response == err.response  # ... stable across retransmissions
    warning = resp.get("warning")
    assert warning is not None and warning.startswith('399 sipguard "CSeq')
    assert resp.content_length == 0


def test_error_response_keeps_an_existing_to_tag() -> None:
    data = invite(
        base=(*BASE[:3], "To: <sip:bob@example.org>;tag=abc", *BASE[4:5], "CSeq: x", BASE[6])
    )
    err = refused(data)
    assert err.response is not None
    resp = parse_message(err.response)
    assert resp.get("to") == "<sip:bob@example.org>;tag=abc"


def test_warning_text_is_quoted_safely() -> None:
    exc = SipError('bad "quote" \\ here')
    attach_response(exc, [("Via", BASE[0][5:])])
    assert exc.response is not None
    resp = parse_message(exc.response)
    warning = resp.get("warning")
    assert warning is not None and warning.count('"') == 2


def test_unreadable_via_means_drop() -> None:
    exc = attach_response(SipError("x"), [("Via", "garbage")])
    assert exc.status is None and exc.response is None
    exc = attach_response(SipError("x"), [])
    assert exc.status is None
    exc = attach_response(SipError("x", status=None), [("Via", BASE[0][5:])])
    assert exc.response is None


def test_505_is_answered_even_with_a_newer_via_version() -> None:
    """RFC 4475 §3.1.2.16: the Via says SIP/7.0 too; the 505 must still reach the sender."""
    data = msg_bytes(
        "OPTIONS sip:t.watson@example.org SIP/7.0",
        "Via: SIP/7.0/UDP c.example.com;branch=z9hG4bKkdjuw",
        *BASE[1:5],
        "CSeq: 1 OPTIONS",
    )
    err = refused(data)
    assert err.status == 505 and err.response is not None
    assert err.response.startswith(b"SIP/2.0 505 Version Not Supported\r\n")


def test_validate_on_a_built_request_attaches_a_response() -> None:
    req = Request("INVITE", "sip:bob@example.org", [("Via", BASE[0][5:]), ("CSeq", "1 INVITE")])
    with pytest.raises(SipError) as info:
        req.validate()
    assert info.value.status == 400 and info.value.response is not None


def test_sip_error_repr_and_flags() -> None:
    e = SipError("x", status=420)
    assert e.answerable and repr(e) == "SipError('x', status=420)"
    assert MessageTooLarge("y").status == 513


# -- building and serialising ----------------------------------------------------------------


def test_build_and_serialise() -> None:
    req = Request(
        "BYE",
        "sip:bob@192.0.2.4",
        [("Via", "SIP/2.0/UDP 192.0.2.1;branch=z9hG4bK1"), ("Content-Length", "0")],
    )
    assert req.to_bytes() == (
        b"BYE sip:bob@192.0.2.4 SIP/2.0\r\nVia: SIP/2.0/UDP 192.0.2.1;branch=z9hG4bK1\r\n"
        b"Content-Length: 0\r\n\r\n"
    )
    assert bytes(req) == req.to_bytes()
    resp = Response(200, "OK", [("Content-Length", "3")], b"abc")
    assert resp.to_bytes() == b"SIP/2.0 200 OK\r\nContent-Length: 3\r\n\r\nabc"


def test_round_trip_is_a_fixed_point() -> None:
    data = invite(
        "Subject:   ",
        "X-Weird: ;;,,\x7f",
        'P-Asserted-Identity: "A, B" <sip:a@b>',
        body=b"\x00body",
    )
    req = parse_req(data)
    assert req.to_bytes() == data.replace(b"Subject:   ", b"Subject: ")
    assert parse_req(req.to_bytes()).headers == req.headers


# -- review fixes: hostile numbers, ACK, version case, injection ---------------------------------


@pytest.mark.parametrize("zeros", [10, 5000])
def test_leading_zeros_never_overflow_int(zeros: int) -> None:
    """CSeq and Max-Forwards are 1*DIGIT: leading zeros are allowed, and past 4300 digits
    int() raises ValueError, which must never escape the SipError family."""
    req = parse_req(
        invite(
            base=(
                BASE[0],
                "Max-Forwards: " + "0" * zeros + "70",
                *BASE[2:5],
                "CSeq: " + "0" * zeros + "9 INVITE",
                BASE[6],
            )
        )
    )
    assert (req.max_forwards, req.cseq.number) == (70, 9)
    assert parse_cseq("0" * zeros + " ACK") == CSeq(0, "ACK")
    err = refused(invite(base=(*BASE[:5], "CSeq: " + "0" * zeros + "4294967296 INVITE", BASE[6])))
    assert err.status == 400


def test_leading_zeros_in_ports() -> None:
    assert parse_via("SIP/2.0/UDP host:0005060").port == 5060
    with pytest.raises(SipError):
        parse_via("SIP/2.0/UDP host:" + "0" * 5000)


ACK = (
    "Via: SIP/2.0/UDP pc33.example.com;branch=z9hG4bK776asdhds",
    "Max-Forwards: 70",
    "From: <sip:alice@example.com>;tag=1928301774",
    "To: <sip:bob@example.org>;tag=a6c85cf",
    "Call-ID: a84b4c76e66710@pc33.example.com",
)


@pytest.mark.parametrize(
    "data",
    [
        msg_bytes("ACK sip:bob@example.org SIP/2.0", *ACK, "CSeq: x ACK"),  # refused in validate
        msg_bytes("ACK sip:bob@example.org SIP/2.0", *ACK, "CSeq: 1 ACK", "Bad Name: x"),
        msg_bytes("ACK sip:bob@example.org SIP/2.0", *ACK, "CSeq: 1 INVITE"),
    ],
)
def test_a_malformed_ack_is_never_answered(data: bytes) -> None:
    """RFC 3261 §17.1.1.3, §17.2.1: no response to an ACK, not even a 400."""
    err = refused(data)
    assert err.status is None and err.response is None


def test_sip_version_is_case_insensitive() -> None:
    """RFC 3261 §7.1: the SIP-Version string is case-insensitive (sent upper-case)."""
    req = parse_req(msg_bytes("INVITE sip:bob@example.org sip/2.0", *BASE))
    assert req.start_line() == "INVITE sip:bob@example.org SIP/2.0"
    assert refused(msg_bytes("INVITE sip:bob@example.org sip/3.0", *BASE)).status == 505
    resp = parse_message(msg_bytes("Sip/2.0 200 OK", *BASE))
    assert isinstance(resp, Response) and resp.status == 200
    # a lower-case status line is a response, so a malformed one is dropped, not answered
    err = refused(msg_bytes("sip/2.0 2x0 OK", *BASE))
    assert err.status is None and err.response is None


def test_datagram_cut_after_the_last_header_has_no_body() -> None:
    data = msg_bytes("INVITE sip:bob@example.org SIP/2.0", *BASE, clen=False)[:-2]
    assert parse_req(data).body == b""


def test_contact_star_only_in_register() -> None:
    """``*`` removes bindings in a REGISTER (RFC 3261 §10.2.2); elsewhere it is no
    Contact at all: an INVITE with it has no remote target."""
    err = refused(invite("Contact: *", base=BASE[:6]))
    assert err.status == 400 and err.response is not None
    assert refused(invite("m: *", base=BASE[:6])).status == 400


@pytest.mark.parametrize("name", ["Via", "Contact", "Route", "Record-Route"])
def test_empty_list_header_is_refused(name: str) -> None:
    """Via, Contact, Route and Record-Route hold at least one entry (RFC 3261 §25.1): an
    empty line is an error, not silently nothing (Allow or Supported may be empty)."""
    err = refused(invite(f"{name}:"))
    assert err.status == 400
    req = parse_req(invite("Supported:", "Allow:"))
    assert req.tokens("supported") == req.tokens("allow") == frozenset()


@pytest.mark.parametrize("value", ["0\x0b", "\xa00", "0\x1c"])
def test_content_length_allows_only_sp_and_htab_around_it(value: str) -> None:
    data = msg_bytes(
        "INVITE sip:bob@example.org SIP/2.0", *BASE, f"Content-Length: {value}", clen=False
    )
    assert refused(data).status == 400


def test_singular_headers_copied_only_when_the_request_has_exactly_one() -> None:
    """A second From that cannot be mirrored must not make the first look single."""
    exc = attach_response(
        SipError("x"),
        [("Via", BASE[0][5:]), ("From", "<sip:a@example.com>;tag=1"), ("From", "a\rb")],
    )
    assert exc.response is not None
    assert not parse_message(exc.response).has("from")


def test_warning_text_has_no_control_characters() -> None:
    exc = attach_response(SipError("bad\r\nX-Evil: 1\x00\x7f"), [("Via", BASE[0][5:])])
    assert exc.response is not None
    assert b"\r\nX-Evil" not in exc.response and b"\x00" not in exc.response
    warning = parse_message(exc.response).get("warning")
    assert warning == '399 sipguard "badX-Evil: 1"'


@pytest.mark.parametrize(
    "build",
    [
        lambda: Request("BYE", "sip:b@x", [("X-A", "a\r\nP-Asserted-Identity: <sip:evil@x>")]),
        lambda: Request("BYE", "sip:b@x", [("X-A", "a\nb")]),
        lambda: Request("BYE", "sip:b@x", [("X-A\r\nX-B", "a")]),
        lambda: Request("BYE", "sip:b@x\r\nX-B: 1", []),
        lambda: Response(200, "OK\r\nX-B: 1", []),
    ],
)
def test_serialising_a_cr_or_lf_is_our_own_error(build: object) -> None:
    """Header injection through a value we were given: a ValueError (local misuse), never
    bytes on the wire."""
    msg = build()  # type: ignore[operator]
    with pytest.raises(ValueError, match="CR or LF"):
        msg.to_bytes()


def test_grammar_single_valued_headers_are_not_split() -> None:
    value = '"Doe, J" <sip:+1@example.com>, x'  # P-Called-Party-ID is one name-addr
    req = parse_req(invite(f"P-Called-Party-ID: {value}"))
    assert req.get_all("p-called-party-id") == [value]


@pytest.mark.parametrize(
    ("parse", "text"),
    [
        (parse_via, "SIP/2.0/UDP\x0bhost;branch=z9hG4bK1"),
        (parse_via, "SIP/2.0\x0c/UDP host"),
        (parse_via, "\x0bSIP/2.0/UDP host"),
        (parse_cseq, "1\x0bINVITE"),
        (parse_cseq, "1 INVITE\x1c"),
    ],
)
def test_lws_is_sp_and_htab_only(parse: object, text: str) -> None:
    """After unfolding, LWS is SP and HTAB (RFC 3261 §25.1): a vertical tab or a Unicode
    space is not a separator."""
    with pytest.raises(SipError):
        parse(text)  # type: ignore[operator]


@pytest.mark.parametrize("value", ["70\x0b", "\x1c70"])
def test_max_forwards_allows_only_sp_and_htab(value: str) -> None:
    assert refused(invite(base=(BASE[0], f"Max-Forwards: {value}", *BASE[2:]))).status == 400
