"""Fuzz target (hypothesis): the SIP parser and the TCP framer against hostile bytes.

Seeds: every valid message of RFC 4475 and RFC 5118 (``../shared/corpus``), the valid
PROTOS c07-sip INVITE (case 0) and the messages SIPp's ``uac``/``uas`` send
(:mod:`testkit.callsim`). Inputs: arbitrary bytes, and the seeds after a few structured
edits (:func:`testkit.fuzzing.mutated`). Invariants:

* only :class:`SipError` ever comes out of ``parse_message``, ``validate()`` or the typed
  views, over UDP and over a stream;
* a refused request's ready-made answer is one response that parses;
* a parsed message re-serialises, and the bytes parse again to the same message;
* the framer cuts the same messages however the stream is chunked, raises only
  :class:`SipError`, and never holds more than ``max_message`` bytes plus one chunk.

``HYPOTHESIS_PROFILE=long`` runs them for minutes (see :mod:`testkit.fuzzing`). The
regression cases at the end hold the bytes of what the long runs found.
"""

from __future__ import annotations

import itertools

from hypothesis import given
from hypothesis import strategies as st

from sipguard.sip.errors import SipError
from sipguard.sip.framer import StreamFramer
from sipguard.sip.message import Request, Response, SipMessage, parse_message
from testkit import callsim
from testkit.corpus import protos_cases, rfc4475_messages, rfc5118_messages
from testkit.fuzzing import fuzz_settings, mutated


def _seeds() -> list[bytes]:
    out = [m.data for m in rfc4475_messages() + rfc5118_messages() if m.valid]
    case0 = next(protos_cases())
    out.extend(case0.filled("127.0.0.5", 5060, "0201234567@127.0.0.1"))
    inv = callsim.invite(1)
    req = parse_message(inv)
    assert isinstance(req, Request)
    ok = callsim.response_to(req, 200, "OK", "t1", callsim.SDP_CALLEE)
    resp = parse_message(ok)
    assert isinstance(resp, Response)
    out += [
        inv,
        callsim.response_to(req, 180, "Ringing", "t1"),
        ok,
        callsim.in_dialog("ACK", resp, 1, 1, "z9hG4bK-a"),
        callsim.in_dialog("BYE", resp, 2, 1, "z9hG4bK-b"),
        callsim.cancel_of(1),
    ]
    return out


SEEDS = _seeds()
seed = st.sampled_from(SEEDS)
hostile = st.one_of(mutated(seed), st.binary(max_size=1500))


def fingerprint(msg: SipMessage) -> tuple[str, str, list[tuple[str, str]], bytes]:
    return type(msg).__name__, msg.start_line(), list(msg.headers), msg.body


def check_parse(data: bytes, *, datagram: bool) -> None:
    """Parse, validate and read every typed view; only SipError may come out. What
    parses must round-trip."""
    try:
        msg = parse_message(data, datagram=datagram)
    except SipError as exc:
        check_answer(exc)
        return
    again = parse_message(msg.to_bytes(), datagram=datagram)
    assert fingerprint(again) == fingerprint(msg)
    try:
        msg.validate()
        for name in ("supported", "require", "allow"):
            msg.tokens(name)
        msg.privacy  # noqa: B018
        msg.content_length  # noqa: B018
        msg.content_type  # noqa: B018
        for name in ("p-asserted-identity", "remote-party-id", "record-route", "route"):
            msg.name_addrs(name)
        if isinstance(msg, Request):
            msg.request_uri  # noqa: B018
    except SipError as exc:
        check_answer(exc)


def check_answer(exc: SipError) -> None:
    if exc.response is None:
        return
    answer = parse_message(exc.response)
    assert isinstance(answer, Response)
    assert answer.status == exc.status


@fuzz_settings(400)
@given(data=hostile)
def test_parse_datagram(data: bytes) -> None:
    check_parse(data, datagram=True)


@fuzz_settings(400)
@given(data=hostile)
def test_parse_stream_message(data: bytes) -> None:
    check_parse(data, datagram=False)


@st.composite
def chunked(draw: st.DrawFn) -> tuple[bytes, list[int]]:
    """A stream of a few (mostly mutated) messages and CRLF pings, and where to cut it."""
    parts = draw(st.lists(st.one_of(mutated(seed), seed, st.just(b"\r\n\r\n")), max_size=4))
    stream = b"".join(parts)
    cuts = sorted(set(draw(st.lists(st.integers(0, len(stream)), max_size=12))))
    return stream, cuts


def frame(stream: bytes, cuts: list[int], max_message: int) -> tuple[list[bytes], bool, int]:
    """(messages cut, whether the framer gave up, the most bytes it held at once)."""
    framer = StreamFramer(max_message=max_message)
    out: list[bytes] = []
    held = 0
    bounds = [0, *cuts, len(stream)]
    try:
        for a, b in itertools.pairwise(bounds):
            out.extend(framer.feed(stream[a:b]))
            held = max(held, framer.buffered)
        out.extend(framer.feed(b""))
    except SipError as exc:
        assert exc.status is None  # a broken stream is closed, never answered
        return out, True, held
    return out, False, held


@fuzz_settings(300)
@given(case=chunked(), max_message=st.sampled_from([65535, 2048, 300]))
def test_framer_is_cut_independent_and_bounded(
    case: tuple[bytes, list[int]], max_message: int
) -> None:
    stream, cuts = case
    whole = frame(stream, [], max_message)
    cut = frame(stream, cuts, max_message)
    assert cut[:2] == whole[:2]
    largest_chunk = max(b - a for a, b in itertools.pairwise([0, *cuts, len(stream)]))
    assert cut[2] <= max_message + largest_chunk
    for msg in whole[0]:
        assert len(msg) <= max_message
        check_parse(msg, datagram=False)


# -- regressions -----------------------------------------------------------------------------
# The long runs (about 5 minutes, 100,000 examples a target) found no crash so far; each one
# found becomes a test here with its bytes.
