"""The bounds on TCP/TLS connections (``sipguard.net.limits``), without sockets: the
connection counts, the message-head deadlines on a fake clock, the descriptor plan.
The same bounds against a running sipguard: ``test_net_tcp_limits.py``."""

from __future__ import annotations

import pytest

from sipguard.config.loader import ConfigError
from sipguard.net.limits import (
    HEADER_TIMEOUT,
    RESERVED_DESCRIPTORS,
    SOURCE_LIMIT,
    TOTAL_LIMIT,
    ConnectionLimits,
    HeadDeadlines,
    descriptor_plan,
    unknown_source_cap,
)
from testkit.callsim import default_config

# -- connection counts --------------------------------------------------------------------


def test_per_source_then_total_limit() -> None:
    lim = ConnectionLimits(cap=5, per_source=2)
    assert [lim.admit("a", True) for _ in range(3)] == [None, None, SOURCE_LIMIT]
    assert [lim.admit("b", True) for _ in range(2)] == [None, None]
    assert lim.admit("c", True) is None
    assert lim.admit("d", True) == TOTAL_LIMIT  # 5 open
    assert lim.open == 5 and lim.by_source == {"a": 2, "b": 2, "c": 1}
    lim.closed("a")
    assert lim.admit("a", True) is None  # a slot of its own again
    lim.closed("c")
    assert lim.by_source == {"a": 2, "b": 2}  # no entry left for a source with none


def test_connections_we_open_count_but_are_never_refused() -> None:
    lim = ConnectionLimits(cap=2, per_source=10)
    for _ in range(3):
        lim.opened()  # beyond the cap: a call's target is reached all the same
    assert lim.open == 3
    assert lim.admit("a", True) == TOTAL_LIMIT  # but accepted ones wait for room
    lim.closed(None)
    lim.closed(None)
    assert lim.admit("a", True) is None
    assert lim.by_source == {"a": 1}


def test_sources_matching_no_trunk_leave_a_quarter_to_the_trunks() -> None:
    assert [unknown_source_cap(n) for n in (1, 2, 4, 10, 896, 10000)] == [1, 2, 3, 8, 672, 7500]
    lim = ConnectionLimits(cap=8, per_source=100)
    assert [lim.admit("x", False) for _ in range(7)] == [None] * 6 + [TOTAL_LIMIT]
    assert [lim.admit("t", True) for _ in range(3)] == [None, None, TOTAL_LIMIT]


def test_a_reload_changes_the_bounds_of_new_connections_only() -> None:
    lim = ConnectionLimits(cap=4, per_source=4)
    for _ in range(4):
        assert lim.admit("a", True) is None
    lim.configure(cap=10, per_source=2)
    assert lim.open == 4  # those open stay
    assert lim.admit("a", True) == SOURCE_LIMIT
    assert lim.admit("b", True) is None


# -- message-head deadlines -----------------------------------------------------------------


def test_heads_expire_in_the_order_they_began() -> None:
    heads = HeadDeadlines()
    heads.start(1, 10.0)
    heads.start(2, 11.0)
    heads.start(3, 12.0)
    assert heads.expired(14.9, 5.0) == []
    assert heads.expired(15.0, 5.0) == [1]  # exactly the timeout: late
    heads.stop(2)  # its head came whole
    assert 3 in heads and 2 not in heads
    assert heads.expired(100.0, 5.0) == [3]
    assert len(heads) == 0


def test_a_head_started_again_moves_to_its_new_time() -> None:
    heads = HeadDeadlines()
    heads.start(1, 10.0)
    heads.start(2, 11.0)
    heads.start(1, 13.0)  # a message came whole, the next one began
    assert heads.expired(16.0, 5.0) == [2]
    assert heads.expired(18.0, 5.0) == [1]


def test_a_shorter_timeout_after_a_reload_applies_at_once() -> None:
    heads = HeadDeadlines()
    heads.start(1, 10.0)
    heads.start(2, 20.0)
    assert heads.expired(21.0, 1.0) == [1, 2]


# -- descriptors ----------------------------------------------------------------------------


def test_the_soft_limit_is_raised_as_far_as_the_hard_limit_allows() -> None:
    reserve = RESERVED_DESCRIPTORS
    # enough already: nothing to change
    plan = descriptor_plan(20000, 20000, 10000)
    assert (plan.soft, plan.cap, plan.short) == (20000, 10000, False)
    # raised to what is needed, no further
    plan = descriptor_plan(1024, 1_048_576, 10000)
    assert (plan.soft, plan.cap, plan.short) == (10000 + reserve, 10000, False)
    # the hard limit stops it: fewer connections, and said
    plan = descriptor_plan(1024, 4096, 10000)
    assert (plan.soft, plan.cap, plan.short) == (4096, 4096 - reserve, True)
    plan = descriptor_plan(1024, 1024, 10000)
    assert (plan.soft, plan.cap, plan.short) == (1024, 1024 - reserve, True)
    # unlimited hard limit (RLIM_INFINITY is negative), or no limit at all
    assert descriptor_plan(1024, -1, 10000).soft == 10000 + reserve
    assert descriptor_plan(-1, -1, 10000).cap == 10000
    # a limit below the reserve leaves no connection
    assert descriptor_plan(100, 100, 10).cap == 0


# -- configuration --------------------------------------------------------------------------


def test_the_fields_and_their_defaults() -> None:
    config = default_config()
    assert config.limits.tcp_max_connections == 10000
    assert config.limits.tcp_max_per_source == 64
    assert config.sip.tcp_header_timeout == 5.0
    config = default_config(
        "limits: {tcp_max_connections: 500, tcp_max_per_source: 8}\n"
        "sip: {tcp_header_timeout: 1.5}\n"
    )
    assert (config.limits.tcp_max_connections, config.limits.tcp_max_per_source) == (500, 8)
    assert config.sip.tcp_header_timeout == 1.5


@pytest.mark.parametrize(
    ("text", "field", "message"),
    [
        ("limits: {tcp_max_connections: 0}\n", "limits.tcp_max_connections", "at least 1"),
        ("limits: {tcp_max_per_source: -1}\n", "limits.tcp_max_per_source", "at least 1"),
        ("limits: {tcp_max_per_source: 1.5}\n", "limits.tcp_max_per_source", "an integer"),
        ("sip: {tcp_header_timeout: 0}\n", "sip.tcp_header_timeout", "more than 0"),
        ("sip: {tcp_header_timeout: soon}\n", "sip.tcp_header_timeout", "a number"),
    ],
)
def test_invalid_values_are_refused_with_their_line(text: str, field: str, message: str) -> None:
    with pytest.raises(ConfigError) as err:
        default_config(text)
    assert err.value.field == field
    assert message in err.value.message
    assert str(err.value).split(":")[1].isdigit()  # FILE:LINE: field: message


def test_reasons_are_label_values() -> None:
    assert {SOURCE_LIMIT, TOTAL_LIMIT, HEADER_TIMEOUT} == {
        "tcp_source_limit",
        "tcp_limit",
        "tcp_header_timeout",
    }
