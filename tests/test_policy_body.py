"""sipguard.policy.body: the caller's identity in the SDP, location by value in bodies."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sipguard.policy.body import anonymise_sdp, filter_body

CALLER = "+31201234567"

SDP = (
    f"v=0\r\no={CALLER} 53655765 2353687637 IN IP4 192.0.2.7\r\n"
    f"s=Call from Alice {CALLER}\r\ni=Alice's phone\r\nu=http://alice.example/\r\n"
    "e=alice@example.com\r\np=+31 20 123 4567\r\nc=IN IP4 192.0.2.7\r\nt=0 0\r\n"
    "a=tool:Yealink SIP-T46S 66.86\r\n"
    "m=audio 6000 RTP/AVP 0\r\ni=main audio\r\na=rtpmap:0 PCMU/8000\r\n"
).encode()

CLEAN = (
    b"v=0\r\no=- 53655765 2353687637 IN IP4 192.0.2.7\r\ns=-\r\nc=IN IP4 192.0.2.7\r\n"
    b"t=0 0\r\nm=audio 6000 RTP/AVP 0\r\na=rtpmap:0 PCMU/8000\r\n"
)

PIDF = (
    b'<?xml version="1.0"?>\r\n<presence xmlns="urn:ietf:params:xml:ns:pidf" '
    b'entity="pres:+31201234567@example.net"><tuple id="t"><status><geopriv>'
    b"<location-info><Point><pos>52.37 4.89</pos></Point></location-info>"
    b"</geopriv></status></tuple></presence>\r\n"
)


def multipart(*parts: tuple[str, bytes], boundary: str = "unique-boundary-1") -> bytes:
    out = b""
    for ctype, content in parts:
        out += f"--{boundary}\r\nContent-Type: {ctype}\r\n\r\n".encode() + content + b"\r\n"
    return out + f"--{boundary}--\r\n".encode()


def test_anonymise_sdp_keeps_the_session_and_its_addresses() -> None:
    assert anonymise_sdp(SDP) == CLEAN
    assert anonymise_sdp(CLEAN) is CLEAN  # nothing to do: the same object
    # the o= line stays stable through the session (RFC 3264 §8): the same result
    assert anonymise_sdp(anonymise_sdp(SDP)) == CLEAN
    # bare LF line ends are kept as they are
    assert anonymise_sdp(b"v=0\no=alice 1 1 IN IP4 192.0.2.7\ns=Alice\n") == (
        b"v=0\no=- 1 1 IN IP4 192.0.2.7\ns=-\n"
    )


def test_sdp_is_anonymised_only_on_a_restricted_call() -> None:
    ct = "application/sdp"
    assert filter_body(ct, SDP, restricted=True, keep_location=False) == CLEAN
    assert filter_body(ct, SDP, restricted=False, keep_location=False) is SDP
    assert (
        filter_body("Application/SDP; charset=utf-8", SDP, restricted=True, keep_location=False)
        == CLEAN
    )


def test_location_parts_leave_a_multipart_body_except_towards_the_emergency_trunk() -> None:
    body = multipart(("application/sdp", SDP), ("application/pidf+xml", PIDF))
    out = filter_body(
        "multipart/mixed;boundary=unique-boundary-1", body, restricted=False, keep_location=False
    )
    assert out == multipart(("application/sdp", SDP))
    assert b"52.37" not in out and CALLER.encode() in out  # presented: the SDP is as it was
    out = filter_body(
        'multipart/mixed; boundary="unique-boundary-1"', body, restricted=True, keep_location=False
    )
    assert out == multipart(("application/sdp", CLEAN))
    # the emergency service gets the location
    ctype = "multipart/mixed;boundary=unique-boundary-1"
    assert filter_body(ctype, body, restricted=False, keep_location=True) is body


def test_emergency_call_data_and_a_bare_location_body() -> None:
    device = b"<EmergencyCallData.DeviceInfo><DeviceSpecificId>35209900</DeviceSpecificId>"
    body = multipart(
        ("application/sdp", CLEAN),
        ("application/EmergencyCallData.DeviceInfo+xml", device),
        ("application/cpim-pidf+xml", PIDF),
    )
    ctype = "multipart/mixed;boundary=unique-boundary-1"
    out = filter_body(ctype, body, restricted=False, keep_location=False)
    assert out == multipart(("application/sdp", CLEAN))
    assert filter_body("application/pidf+xml", PIDF, restricted=False, keep_location=False) == b""
    assert filter_body("application/pidf+xml", PIDF, restricted=False, keep_location=True) is PIDF


def test_nested_multipart_and_preamble() -> None:
    inner = multipart(("application/sdp", SDP), ("application/pidf+xml", PIDF), boundary="in")
    outer = b"preamble\r\n" + multipart(("multipart/alternative;boundary=in", inner))
    out = filter_body(
        "multipart/mixed;boundary=unique-boundary-1", outer, restricted=True, keep_location=False
    )
    expected_inner = multipart(("application/sdp", CLEAN), boundary="in")
    assert out == b"preamble\r\n" + multipart(("multipart/alternative;boundary=in", expected_inner))


@pytest.mark.parametrize(
    ("ctype", "body"),
    [
        ("multipart/mixed", multipart(("application/pidf+xml", PIDF))),  # no boundary
        ("multipart/mixed;boundary=other", multipart(("application/pidf+xml", PIDF))),
        ("application/isup", b"\x01\x02"),
        (None, b"anything"),
    ],
)
def test_what_is_not_understood_is_left_as_it_is(ctype: str | None, body: bytes) -> None:
    assert filter_body(ctype, body, restricted=True, keep_location=False) is body


@given(st.binary(max_size=300), st.booleans(), st.booleans())
def test_filter_body_never_raises(body: bytes, restricted: bool, keep: bool) -> None:
    for ctype in ("application/sdp", "multipart/mixed;boundary=b", "application/pidf+xml"):
        out = filter_body(ctype, body, restricted=restricted, keep_location=keep)
        assert len(out) <= len(body) + 8 * body.count(b"\n") + 8
