"""What the hypothesis fuzz targets share: their profiles and the byte mutations.

Profiles, chosen by the environment variable ``HYPOTHESIS_PROFILE``:

* ``ci`` (the default): each fuzz target runs a fixed, small number of examples — a few
  seconds each, in every test run;
* ``long``: 100 times as many examples, for a hand run of about five minutes for the
  two modules together (the suite's 300 s pytest timeout must be lifted)::

      HYPOTHESIS_PROFILE=long python -m pytest -p no:randomly --timeout 0 \\
          tests/test_attack_fuzz_parser.py tests/test_attack_fuzz_b2bua.py

A crash found there becomes a regression test with its bytes in the target's module.
The profiles are applied only by :func:`fuzz_settings`, so the other property tests of
the suite keep their own settings.

:func:`mutated` turns a valid message into a hostile one by a few structured edits
(a byte flipped, a span cut or doubled, a token from :data:`NASTY` inserted, a header
line repeated, dropped or given a hostile value, the message cut short), the way the
PROTOS and RFC 4475 cases are built, but anywhere in the message.
"""

from __future__ import annotations

import os
from typing import Any

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st

PROFILE = os.environ.get("HYPOTHESIS_PROFILE", "ci")
if PROFILE not in ("ci", "long"):
    raise RuntimeError(f"HYPOTHESIS_PROFILE must be ci or long, not {PROFILE!r}")

_COMMON: dict[str, Any] = {
    "deadline": None,
    "suppress_health_check": [HealthCheck.too_slow, HealthCheck.data_too_large],
    "print_blob": True,
}
LONG_FACTOR = 100


def fuzz_settings(ci_examples: int) -> Any:
    """The settings of a fuzz target: ``ci_examples`` under ``ci``, a hundred times as
    many under ``long``."""
    examples = ci_examples * LONG_FACTOR if PROFILE == "long" else ci_examples
    return settings(max_examples=examples, **_COMMON)


# what breaks parsers: separators, escapes, quotes, huge and negative numbers, NUL, UTF-8
NASTY: tuple[bytes, ...] = (
    b"\r\n",
    b"\r",
    b"\n",
    b"\r\n\r\n",
    b"\x00",
    b"\xff\xfe",
    b"\xc3\xa9",
    b"\xed\xa0\x80",  # a UTF-16 surrogate in UTF-8
    b" ",
    b"\t",
    b"\r\n ",  # a fold
    b":",
    b";",
    b",",
    b"=",
    b'"',
    b"\\",
    b"<",
    b">",
    b"@",
    b"%",
    b"%00",
    b"%zz",
    b"[",
    b"]",
    b"[::1]",
    b"sip:",
    b"tel:+",
    b";tag=",
    b";branch=",
    b";received=",
    b";rport",
    b";lr",
    b"SIP/2.0",
    b"SIP/2.0 ",
    b"sips:",
    b"0",
    b"-1",
    b"4294967296",
    b"99999999999999999999",
    b"115792089237316195423570985008687907853269984665640564039457584007913129639936",
    b"%s%n%x",
    b"A" * 300,
    b"Content-Length: 0\r\n",
    b"Content-Length: 99999\r\n",
    b"l: 5\r\n",
    b"Via: SIP/2.0/UDP 127.0.0.9:5060;branch=z9hG4bKx\r\n",
    b"Route: <sip:127.0.0.1;lr>\r\n",
    b"Max-Forwards: 0\r\n",
    b"Require: foo\r\n",
    b"Session-Expires: 1\r\n",
    b"Session-Expires: 99999999999\r\n",
    b"Min-SE: 4294967296\r\n",
    b"Privacy: id\r\n",
    b"P-Asserted-Identity: <sip:+31201234567@x>\r\n",
    b"Supported: 100rel, timer\r\n",
    b"Require: 100rel\r\n",
    b"RSeq: 1\r\n",
    b"Content-Type: multipart/mixed;boundary=x\r\n",
    b"Contact: *\r\n",
)

HOSTILE_VALUES: tuple[bytes, ...] = (
    b"",
    b" ",
    b"<",
    b"<sip:",
    b"<>",
    b'"unterminated',
    b"sip:@",
    b"<sip:a@b>;tag",
    b"<sip:a@b>;tag=",
    b"<sip:a@[::1>",
    b"1 INVITE extra",
    b"x INVITE",
    b"4294967296 INVITE",
    b"SIP/2.0/UDP",
    b"SIP/2.0/UDP ;branch=",
    b"SIP/2.0/UDP [::1]:99999",
    b"SIP/2.0/TCP host:0;received=x;rport=abc",
    b"-5",
    b"9999999999999",
    b",,,",
    b"a" * 2000,
)


def _lines(data: bytes) -> list[bytes]:
    return data.split(b"\r\n")


@st.composite
def mutated(draw: st.DrawFn, seeds: st.SearchStrategy[bytes], max_ops: int = 4) -> bytes:
    """A message from ``seeds`` with one to ``max_ops`` edits."""
    data = bytearray(draw(seeds))
    for _ in range(draw(st.integers(1, max_ops))):
        op = draw(st.integers(0, 8))
        n = len(data)
        at = draw(st.integers(0, n))
        if op == 0 and n:  # flip a byte
            i = min(at, n - 1)
            data[i] ^= draw(st.integers(1, 255))
        elif op == 1:  # insert a nasty token
            data[at:at] = draw(st.sampled_from(NASTY))
        elif op == 2:  # cut a span
            data[at : at + draw(st.integers(1, 64))] = b""
        elif op == 3:  # double a span
            span = bytes(data[at : at + draw(st.integers(1, 64))])
            data[at:at] = span * draw(st.integers(1, 3))
        elif op == 4:  # cut the message short
            del data[at:]
        else:  # edit a line of the header section
            head, sep, body = bytes(data).partition(b"\r\n\r\n")
            lines = _lines(head)
            i = draw(st.integers(0, len(lines) - 1))
            if op == 5:  # repeat it
                lines.insert(i, lines[i])
            elif op == 6 and len(lines) > 1:  # drop it
                del lines[i]
            elif op == 7:  # give it a hostile value
                name = lines[i].partition(b":")[0]
                lines[i] = name + b": " + draw(st.sampled_from(HOSTILE_VALUES))
            else:  # random bytes in place of its value
                name = lines[i].partition(b":")[0]
                lines[i] = name + b": " + draw(st.binary(max_size=40))
            data = bytearray(b"\r\n".join(lines) + sep + body)
    return bytes(data)
