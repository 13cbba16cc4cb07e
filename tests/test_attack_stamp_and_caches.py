"""Attacks on this session's fast paths (review 8): the Via stamp, the header-name cache, the
raw read of an ACK's To tag."""

from __future__ import annotations

from sipguard.sip.message import DEFAULT_LIMITS
from testkit.callsim import Wire, invite


def test_via_stamp_does_not_amplify_a_response_beyond_its_request() -> None:
    """RFC 3581 §4 fills in *the* rport; a Via repeating ``;rport`` thousands of times
    must not have each one filled in: the 100 Trying (and the final, retransmitted by
    Timer G) would be nearly twice the INVITE's size (SPEC §8), with a Via line over
    the parser's own max_line (sipguard's own reader refuses what it sent)."""
    w = Wire()
    flag = b";rport" * 2000
    req = invite(1).replace(b";branch=z9hG4bK-1-1-0", b";branch=z9hG4bK-1-1-0" + flag, 1)
    w.from_caller(req)
    w.flush()
    out = list(w.to_caller)
    assert out, "no response at all"
    for data in out:
        assert len(data) <= len(req), (len(data), len(req))
        assert all(len(line) <= DEFAULT_LIMITS.max_line for line in data.split(b"\r\n"))


def test_the_header_name_cache_is_bounded_in_bytes_not_only_in_names() -> None:
    """_TOKEN_NAMES keeps up to 4096 names spelt as sent, each as long as max_line: one
    datagram per name from anyone who can reach the port (strangers are parsed too)
    pins ~64 MB for the life of the process, and crowds out the real names for good."""
    from sipguard.sip import message

    saved = set(message._TOKEN_NAMES)
    message._TOKEN_NAMES.clear()
    try:
        for i in range(256):
            name = f"X{i:04d}" + "a" * 16000
            data = (
                "OPTIONS sip:a@b SIP/2.0\r\nVia: SIP/2.0/UDP h;branch=z9hG4bK1\r\n"
                f"{name}: 1\r\nContent-Length: 0\r\n\r\n"
            ).encode()
            message.parse_message(data)
        cached = sum(len(n) for n in message._TOKEN_NAMES)
        assert cached <= 256 * 1024, cached
    finally:
        message._TOKEN_NAMES.clear()
        message._TOKEN_NAMES.update(saved)


def test_raw_to_tag_reads_the_to_tag_the_parser_reads() -> None:
    """raw_to_tag takes the first ``;tag=`` of the To line, also one inside the URI's
    <...> (a URI parameter the caller chose in its INVITE's To, echoed in every answer):
    an ACK whose real To tag is the call's is then absorbed as a shed 503's."""
    from sipguard.b2bua.shed import raw_to_tag
    from sipguard.sip.message import parse_message

    shed_tag = "0123456789abcdef0123"
    data = (
        "ACK sip:b@h SIP/2.0\r\nVia: SIP/2.0/UDP h;branch=z9hG4bK1\r\n"
        "From: <sip:a@h>;tag=1\r\n"
        f"To: <sip:b@h;tag={shed_tag};x>;tag=realdialogtag\r\n"
        "Call-ID: c\r\nCSeq: 1 ACK\r\nMax-Forwards: 70\r\nContent-Length: 0\r\n\r\n"
    ).encode()
    assert parse_message(data).to.tag == "realdialogtag"
    assert raw_to_tag(data) in (None, "realdialogtag")


def test_the_calls_of_a_response_with_an_unreadable_from_are_looked_up_without_raising() -> None:
    """After our own bug, the calls a message belongs to are ended: a response's From is
    no longer read on the way in, so a malformed one must not make that lookup raise
    (it would leave every call it names holding its slot). Its To still names a call
    where the To tag is ours (a request's answer to the caller)."""
    from sipguard.sip.message import parse_message
    from sipguard.sip.transaction import Flow
    from testkit.callsim import CALLEE, establish, response_to

    w = Wire()
    e = establish(w, 1)
    data = response_to(e.b_invite, 200, "OK", e.callee_tag)
    head, sep, rest = data.partition(b"\r\nFrom: ")
    bad = parse_message(head + sep + b"<<" + rest[rest.index(b"\r\n") :])
    bad.validate()  # a response's From is not read here
    assert w.core.table.of_message(bad, Flow("udp", 0, *CALLEE)) == set()


def test_the_stamp_fills_in_one_rport_and_drops_the_sender_s_received() -> None:
    w = Wire()
    req = invite(1).replace(
        b";branch=z9hG4bK-1-1-0", b";rport;branch=z9hG4bK-1-1-0;received=10.0.0.1;rport", 1
    )
    w.from_caller(req)
    (trying,) = w.take_caller()
    (via,) = trying.get_lines("via")
    assert via.count("rport") == 1 and via.count("received=") == 1, via
    assert via.endswith(";received=127.0.0.3") and ";rport=5062;" in via, via
