"""b2bua/unread.py: what the core answers from raw lines answers only what the whole way
would (most of its cases are in test_b2bua_shed.py and test_b2bua_limits.py, with the
refusals they stand for).

A message over ``sip.max_message_bytes`` is dropped unanswered and counted as a parse
error by the whole way; the raw-line path must not answer it either, shed or limited.
"""

from __future__ import annotations

from testkit.callsim import Wire, default_config, invite

PADDING = "X-Padding: " + "p" * 1200 + "\r\n"  # an INVITE over 1,500 bytes


def test_an_oversized_invite_gets_no_limits_503_unread() -> None:
    w = Wire(default_config("sip: {max_message_bytes: 1500}\nlimits: {refused_cdr_rps: 1}\n"))
    w.core.drain()
    w.from_caller(invite(1))  # the refusal record of this second: the whole way
    w.flush()
    assert [m[:12] for m in w.to_caller] == [b"SIP/2.0 503 "]
    w.to_caller.clear()
    w.from_caller(invite(2))  # past the records: answered unread
    w.flush()
    assert [m[:12] for m in w.to_caller] == [b"SIP/2.0 503 "]
    w.to_caller.clear()
    big = invite(3, headers=PADDING)
    assert len(big) > 1500
    errors = w.core.parse_errors
    w.from_caller(big)
    w.flush()
    assert w.to_caller == []  # dropped, as the parser drops it
    assert w.core.parse_errors == errors + 1


def test_an_oversized_invite_is_not_shed_unread() -> None:
    w = Wire(default_config("sip: {max_message_bytes: 1500}\nlimits: {refused_cdr_rps: 1}\n"))
    w.core.shedder.shedding = True
    w.core.shedder.admitted = 0.0  # admits none
    w.advance(0.25)
    w.from_caller(invite(1))  # the refusal record of this second: the whole way
    w.from_caller(invite(2))  # past the records: shed unread
    w.flush()
    assert [m[:12] for m in w.to_caller] == [b"SIP/2.0 503 "] * 2
    w.to_caller.clear()
    big = invite(3, headers=PADDING)
    errors = w.core.parse_errors
    for _ in range(3):
        w.from_caller(big)
        w.flush()
    assert w.to_caller == []
    assert w.core.parse_errors == errors + 3
