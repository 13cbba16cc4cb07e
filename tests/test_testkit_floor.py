"""The floor relay of the load runner (``testkit/floor.py``, ``loadtests/run.py --floor``).

Its CPU per call is quoted as the floor under every Python element at a rate, so it must
really carry the calls: a relay that dropped them would cost nothing and prove nothing.
Its figures are measurements and are never asserted.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from testkit.floor_relay import relay, via_prefix
from testkit.sipp import sipp_available

TARGET = ("127.0.0.2", 5090)
PREFIX = via_prefix("127.0.0.1", 5070)

INVITE = (
    b"INVITE sip:0201234567@127.0.0.1:5070 SIP/2.0\r\n"
    b"Via: SIP/2.0/UDP 127.0.0.3:40001;branch=z9hG4bK-77-1-0\r\n"
    b"From: sipp <sip:sipp@127.0.0.3:40001>;tag=1\r\n"
    b"To: <sip:0201234567@127.0.0.1:5070>\r\n"
    b"Call-ID: 1-77@127.0.0.3\r\n"
    b"CSeq: 1 INVITE\r\n"
    b"Content-Length: 0\r\n\r\n"
)


def response(vias: bytes) -> bytes:
    return (
        b"SIP/2.0 200 OK\r\n" + vias + b"From: sipp <sip:sipp@127.0.0.3:40001>;tag=1\r\n"
        b"To: <sip:0201234567@127.0.0.1:5070>;tag=2\r\n"
        b"Call-ID: 1-77@127.0.0.3\r\n"
        b"CSeq: 1 INVITE\r\n"
        b"Content-Length: 0\r\n\r\n"
    )


def test_a_request_gets_its_own_via_on_top_and_goes_to_the_target() -> None:
    sent = relay(INVITE, PREFIX, TARGET)
    assert sent is not None
    out, dest = sent
    assert dest == TARGET
    lines = out.split(b"\r\n")
    assert lines[1] == b"Via: SIP/2.0/UDP 127.0.0.1:5070;branch=z9hG4bKfl-77-1-0"
    assert lines[2] == b"Via: SIP/2.0/UDP 127.0.0.3:40001;branch=z9hG4bK-77-1-0"
    assert out.replace(lines[1] + b"\r\n", b"", 1) == INVITE  # nothing else changed
    again = relay(INVITE, PREFIX, TARGET)  # a retransmission: the same branch
    assert again is not None and again[0] == out


def test_a_response_loses_the_top_via_line_and_goes_to_the_next_sent_by() -> None:
    theirs = b"Via: SIP/2.0/UDP 127.0.0.3:40001;branch=z9hG4bK-77-1-0\r\n"
    msg = response(b"Via: SIP/2.0/UDP 127.0.0.1:5070;branch=z9hG4bKfl-77-1-0\r\n" + theirs)
    sent = relay(msg, PREFIX, TARGET)
    assert sent is not None
    assert sent == (response(theirs), ("127.0.0.3", 40001))


def test_a_response_with_folded_vias_keeps_the_others_on_the_line() -> None:
    """SIPp's ``[last_Via:]`` writes every Via value on one line, comma-separated."""
    msg = response(
        b"Via: SIP/2.0/UDP 127.0.0.1:5070;branch=z9hG4bKfl-77-1-0,  "
        b"SIP/2.0/UDP 127.0.0.3:40001;branch=z9hG4bK-77-1-0\r\n"
    )
    sent = relay(msg, PREFIX, TARGET)
    assert sent is not None
    out, dest = sent
    assert dest == ("127.0.0.3", 40001)
    assert out == response(b"Via: SIP/2.0/UDP 127.0.0.3:40001;branch=z9hG4bK-77-1-0\r\n")


def test_the_branch_copied_ends_at_its_parameter() -> None:
    """Only the branch value: not the parameters after it, nor the next Via of a list."""
    folded = INVITE.replace(
        b";branch=z9hG4bK-77-1-0\r\n", b";branch=z9hG4bK-77-1-0;rport, SIP/2.0/UDP 192.0.2.1\r\n"
    )
    sent = relay(folded, PREFIX, TARGET)
    assert sent is not None
    assert sent[0].split(b"\r\n")[1] == PREFIX + b"-77-1-0"


def test_a_sent_by_without_a_port_means_5060() -> None:
    msg = response(
        b"Via: SIP/2.0/UDP 127.0.0.1:5070;branch=z9hG4bKfl-1\r\n"
        b"Via: SIP/2.0/UDP 127.0.0.3;branch=z9hG4bK-1\r\n"
    )
    sent = relay(msg, PREFIX, TARGET)
    assert sent is not None and sent[1] == ("127.0.0.3", 5060)


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"\x00\xff garbage",
        b"OPTIONS sip:x SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.3:1\r\n\r\n",  # no branch
        response(b"Via: SIP/2.0/UDP 127.0.0.1:5070;branch=z9hG4bKfl-1\r\n"),  # no next Via
        response(
            b"Via: SIP/2.0/UDP 127.0.0.1:5070;branch=z9hG4bKfl-1\r\n"
            b"Via: SIP/2.0/TCP 127.0.0.3:40001;branch=z9hG4bK-1\r\n"  # not UDP
        ),
        response(
            b"Via: SIP/2.0/UDP 127.0.0.1:5070;branch=z9hG4bKfl-1\r\n"
            b"Via: SIP/2.0/UDP 127.0.0.3:port;branch=z9hG4bK-1\r\n"
        ),
        response(
            b"Via: SIP/2.0/UDP 127.0.0.1:5070;branch=z9hG4bKfl-1\r\n"
            b"Via: SIP/2.0/UDP 127.0.0.3:70000;branch=z9hG4bK-1\r\n"  # no such port
        ),
        response(
            b"Via: SIP/2.0/UDP 127.0.0.1:5070;branch=z9hG4bKfl-1\r\n"
            b"Via: SIP/2.0/UDP caller.example.com:5060;branch=z9hG4bK-1\r\n"  # a name
        ),
        # the next Via is the last line, cut before its CRLF
        b"SIP/2.0 200 OK\r\nVia: SIP/2.0/UDP 127.0.0.1:5070;branch=z9hG4bKfl-1\r\n"
        b"Via: SIP/2.0/UDP 127.0.0.3:5060",
    ],
)
def test_what_it_cannot_relay_is_dropped(data: bytes) -> None:
    assert relay(data, PREFIX, TARGET) is None


@pytest.mark.sipp
@pytest.mark.skipif(not sipp_available(), reason="SIPp (sip-tester) is not installed")
@pytest.mark.timeout(90)
def test_the_floor_relay_carries_every_call_of_a_sipp_run(tmp_path: Path) -> None:
    """Through the runner's own code path (``run_element``): 200 calls at 100/s."""
    from testkit.floor import run_floor_load
    from testkit.load import row

    result = run_floor_load(100, 2, 200, workdir=tmp_path, quiet=True, pin=False)
    assert result.attempted == 200, result
    assert result.succeeded == 200, result
    assert result.failed == 0, result
    assert result.cpu_s > 0 and result.peak_rss_kb > 0, result
    assert result.element == "floor relay"
    line = row(result)
    assert "CDR" not in line and "floor relay" in line  # it writes none; its row says what ran
