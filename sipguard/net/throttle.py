"""How often the driver may say the same thing: log lines at most once per interval.

Sans-IO: every method takes ``now`` (seconds on any monotonic clock) and returns what
to log, or nothing; the driver logs it. A flood must never become a flood of log lines.
"""

from __future__ import annotations

OVERLOAD_LOG_S = 10.0  # at most one overload log line this often


class Throttle:
    """Events reported at most once per ``interval``: the first at once, then the count
    of those since the last report once the interval has passed."""

    __slots__ = ("interval", "last", "pending")

    def __init__(self, interval: float) -> None:
        self.interval = interval
        self.last = float("-inf")  # when the last report was made
        self.pending = 0  # events not reported yet

    def event(self, now: float) -> int:
        """One more event at ``now``: the number to report now (this one and those held
        back since the last report), or 0 while a report was made within the interval."""
        self.pending += 1
        if now - self.last < self.interval:
            return 0
        n, self.pending, self.last = self.pending, 0, now
        return n


class OverloadLog:
    """The overload log lines: one at the first call shed, then at most one per
    :data:`OVERLOAD_LOG_S` while calls are shed, and one when none has been for that
    long."""

    __slots__ = ("_queue_peak", "_shed_logged", "interval", "last", "overloaded")

    def __init__(self, interval: float = OVERLOAD_LOG_S) -> None:
        self.interval = interval
        self.last = float("-inf")  # when the last line was said
        self.overloaded = False  # an overload was said, and its end not yet
        self._shed_logged = 0  # calls shed in total when the last line was said
        self._queue_peak = 0  # the largest reading since the last line

    def reading(
        self, now: float, queued: int, shed: int, shedding: bool, admitted: float
    ) -> str | None:
        """One reading of the receive queues (``queued`` bytes) and the shedder (``shed``
        calls in total, ``shedding`` now, ``admitted`` the fraction let in): the line to
        log, or None."""
        self._queue_peak = max(self._queue_peak, queued)
        if now - self.last < self.interval:
            return None
        if shed != self._shed_logged:
            line = (
                f"overload: {shed - self._shed_logged} new calls shed ({shed} since start); "
                f"up to {self._queue_peak // 1024} KiB waited in the receive queues, "
                f"{admitted * 100:.0f}% of new calls admitted now"
            )
            self._shed_logged = shed
            self.last = now
            self._queue_peak = queued
            self.overloaded = True
            return line
        if self.overloaded and not shedding:
            self.last = now
            self.overloaded = False
            return "overload over: every new call admitted again"
        return None
