"""Parser and serialiser throughput of the SIP message core, in messages per second.

Run: ``.venv/bin/python benchmarks/parse.py`` (``--quick`` for a shorter run).

For each of a typical INVITE (with SDP), 180, 200 (with SDP), ACK and BYE it measures

- ``parse only``: :func:`parse_message` alone;
- ``parse+access``: :func:`parse_message` plus what a B2BUA reads on every message
  (``top_via.branch``, ``cseq``, ``call_id``, ``from_.tag``, ``to.tag``);
- ``validate``: :func:`parse_message` plus :meth:`SipMessage.validate`;
- ``serialise``: :meth:`SipMessage.to_bytes` of a message built from its headers.

Each figure is the median of 5 runs of about 0.3 s each, on one core.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

# appended, not first: PYTHONPATH=build/native (tools/build_native.py) then measures the
# compiled modules, and without it these sources are measured
sys.path.append(str(Path(__file__).resolve().parents[1]))

from sipguard.net.server import core_build
from sipguard.sip.message import Request, Response, SipMessage, parse_message

SDP_OFFER = (
    "v=0\r\n"
    "o=- 3724394400 3724394400 IN IP4 198.51.100.10\r\n"
    "s=-\r\n"
    "c=IN IP4 198.51.100.10\r\n"
    "t=0 0\r\n"
    "m=audio 49170 RTP/AVP 8 0 101\r\n"
    "a=rtpmap:8 PCMA/8000\r\n"
    "a=rtpmap:0 PCMU/8000\r\n"
    "a=rtpmap:101 telephone-event/8000\r\n"
    "a=fmtp:101 0-15\r\n"
    "a=ptime:20\r\n"
    "a=sendrecv\r\n"
)
SDP_ANSWER = SDP_OFFER.replace("198.51.100.10", "203.0.113.20").replace("49170", "30000")


def _msg(start: str, headers: list[str], body: str = "") -> bytes:
    hdrs = [*headers, f"Content-Length: {len(body.encode())}"]
    return ("\r\n".join([start, *hdrs]) + "\r\n\r\n" + body).encode()


_DIALOG = [
    'From: "Alice Liddell" <sip:+441632960001@trunk.example.net;user=phone>;tag=9fxced76sl',
    "Call-ID: 3848276298220188511@198.51.100.10",
]

INVITE = _msg(
    "INVITE sip:+441632960002@gw.example.com;user=phone SIP/2.0",
    [
        "Via: SIP/2.0/UDP 198.51.100.10:5060;branch=z9hG4bK74bf9;rport",
        "Max-Forwards: 70",
        _DIALOG[0],
        "To: <sip:+441632960002@gw.example.com;user=phone>",
        _DIALOG[1],
        "CSeq: 1 INVITE",
        "Contact: <sip:alice@198.51.100.10:5060;transport=udp>",
        'P-Asserted-Identity: "Alice Liddell" <sip:+441632960001@trunk.example.net;user=phone>',
        "Privacy: none",
        "Allow: INVITE, ACK, CANCEL, BYE, OPTIONS, UPDATE, PRACK, REFER, NOTIFY",
        "Supported: timer, 100rel, replaces",
        "Session-Expires: 1800;refresher=uac",
        "Min-SE: 90",
        "User-Agent: ExampleSBC/4.2",
        "Content-Type: application/sdp",
    ],
    SDP_OFFER,
)
RINGING = _msg(
    "SIP/2.0 180 Ringing",
    [
        "Via: SIP/2.0/UDP 198.51.100.10:5060;branch=z9hG4bK74bf9;rport=5060;received=198.51.100.10",
        _DIALOG[0],
        "To: <sip:+441632960002@gw.example.com;user=phone>;tag=314159",
        _DIALOG[1],
        "CSeq: 1 INVITE",
        "Contact: <sip:callee@203.0.113.20:5060>",
    ],
)
OK = _msg(
    "SIP/2.0 200 OK",
    [
        "Via: SIP/2.0/UDP 198.51.100.10:5060;branch=z9hG4bK74bf9;rport=5060;received=198.51.100.10",
        _DIALOG[0],
        "To: <sip:+441632960002@gw.example.com;user=phone>;tag=314159",
        _DIALOG[1],
        "CSeq: 1 INVITE",
        "Contact: <sip:callee@203.0.113.20:5060>",
        "Allow: INVITE, ACK, CANCEL, BYE, OPTIONS, UPDATE",
        "Supported: timer",
        "Session-Expires: 1800;refresher=uac",
        "Require: timer",
        "Content-Type: application/sdp",
    ],
    SDP_ANSWER,
)
ACK = _msg(
    "ACK sip:callee@203.0.113.20:5060 SIP/2.0",
    [
        "Via: SIP/2.0/UDP 198.51.100.10:5060;branch=z9hG4bK74bfa;rport",
        "Max-Forwards: 70",
        _DIALOG[0],
        "To: <sip:+441632960002@gw.example.com;user=phone>;tag=314159",
        _DIALOG[1],
        "CSeq: 1 ACK",
    ],
)
BYE = _msg(
    "BYE sip:callee@203.0.113.20:5060 SIP/2.0",
    [
        "Via: SIP/2.0/UDP 198.51.100.10:5060;branch=z9hG4bK74bfb;rport",
        "Max-Forwards: 70",
        _DIALOG[0],
        "To: <sip:+441632960002@gw.example.com;user=phone>;tag=314159",
        _DIALOG[1],
        "CSeq: 2 BYE",
    ],
)

MESSAGES: dict[str, bytes] = {
    "INVITE": INVITE,
    "180": RINGING,
    "200": OK,
    "ACK": ACK,
    "BYE": BYE,
}


def parse_only(data: bytes) -> None:
    parse_message(data)


def parse_access(data: bytes) -> None:
    m = parse_message(data)
    m.top_via.branch  # noqa: B018
    m.cseq  # noqa: B018
    m.call_id  # noqa: B018
    m.from_.tag  # noqa: B018
    m.to.tag  # noqa: B018


def parse_validate(data: bytes) -> None:
    parse_message(data).validate()


def rebuild(data: bytes) -> SipMessage:
    """A fresh message built from headers (nothing cached), as a B2BUA builds one."""
    m = parse_message(data)
    if isinstance(m, Request):
        return Request(m.method, m.uri, m.headers, m.body)
    assert isinstance(m, Response)
    return Response(m.status, m.reason, m.headers, m.body)


def rate(fn: Callable[[], object], run_time: float, runs: int) -> float:
    """Median calls per second over ``runs`` runs of about ``run_time`` seconds each."""
    n = 1
    while True:  # calibrate
        t0 = time.perf_counter()
        for _ in range(n):
            fn()
        dt = time.perf_counter() - t0
        if dt >= 0.05:
            break
        n *= 2
    n = max(1, int(n * run_time / dt))
    rates = []
    for _ in range(runs):
        t0 = time.perf_counter()
        for _ in range(n):
            fn()
        rates.append(n / (time.perf_counter() - t0))
    return statistics.median(rates)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="1 run of 0.1 s per figure")
    args = ap.parse_args()
    print(f"core: {core_build()}")
    run_time, runs = (0.1, 1) if args.quick else (0.3, 5)

    cols = ("parse only", "parse+access", "validate", "serialise")
    print(f"sipguard SIP message core, Python {sys.version.split()[0]}, messages per second")
    print(f"(median of {runs} runs of ~{run_time} s)")
    print(f"{'message':<8} {'bytes':>5} " + " ".join(f"{c:>13}" for c in cols))
    for name, data in MESSAGES.items():
        built = rebuild(data)
        assert built.to_bytes() == data, name
        figures = [
            rate(lambda d=data: parse_only(d), run_time, runs),
            rate(lambda d=data: parse_access(d), run_time, runs),
            rate(lambda d=data: parse_validate(d), run_time, runs),
            rate(built.to_bytes, run_time, runs),
        ]
        print(f"{name:<8} {len(data):>5} " + " ".join(f"{f:>13,.0f}" for f in figures))


if __name__ == "__main__":
    main()
