"""How often the driver says the same thing (``sipguard.net.throttle``), on a fake clock."""

from __future__ import annotations

from sipguard.net.throttle import OVERLOAD_LOG_S, OverloadLog, Throttle


def test_the_first_event_is_said_at_once_then_the_count_once_per_interval() -> None:
    t = Throttle(10.0)
    assert t.event(100.0) == 1
    assert [t.event(100.0 + i) for i in range(1, 10)] == [0] * 9  # held back
    assert t.event(110.0) == 10  # this one and the nine held back
    assert t.event(115.0) == 0
    assert t.event(130.0) == 2  # no event between: said at the next one


def test_overload_lines_at_the_first_shed_then_once_per_interval_then_its_end() -> None:
    log = OverloadLog()
    t = 1000.0
    assert log.reading(t, 4096, 0, True, 0.75) is None  # shedding, but nothing shed yet
    line = log.reading(t + 0.05, 8192, 2, True, 0.75)
    assert line == (
        "overload: 2 new calls shed (2 since start); up to 8 KiB waited in the receive "
        "queues, 75% of new calls admitted now"
    )
    assert log.reading(t + 1, 20480, 5, True, 0.5) is None  # within the interval: quiet
    t += OVERLOAD_LOG_S + 0.05
    assert log.reading(t, 0, 7, False, 1.0) == (
        "overload: 5 new calls shed (7 since start); up to 20 KiB waited in the receive "
        "queues, 100% of new calls admitted now"
    )
    assert log.reading(t + 1, 0, 7, False, 1.0) is None
    t += OVERLOAD_LOG_S
    assert log.reading(t, 0, 7, False, 1.0) == "overload over: every new call admitted again"
    assert log.reading(t + OVERLOAD_LOG_S, 0, 7, False, 1.0) is None  # said once


def test_no_end_of_overload_while_still_shedding() -> None:
    log = OverloadLog(interval=1.0)
    assert log.reading(0.0, 0, 1, True, 0.5) is not None
    assert log.reading(2.0, 0, 1, True, 0.5) is None  # nothing new shed, but not over
    assert log.reading(3.0, 0, 1, False, 1.0) == "overload over: every new call admitted again"
