"""One timer structure for the whole sans-IO stack (STYLE: one deadline per stack).

Two parts, so that no operation ever costs time in proportion to the number of timers
(an event-loop pause under load):

* the *near* heap holds timers due within :data:`HORIZON` seconds of the last
  :meth:`TimerHeap.fire`: every SIP transaction timer (64*T1 = 32 s at most). A cancelled
  near timer is only marked; it leaves the heap when it reaches the top, at most
  ``HORIZON`` seconds later. The heap is never rebuilt.
* *far* timers (a call's maximum duration, Timer C, session timers) wait in one-second
  buckets, from which a cancel removes them at once (a dict deletion). A bucket moves into
  the near heap when it comes within the horizon.
* *lanes*: a timer scheduled with :meth:`TimerHeap.after` (a delay from now, as every
  transaction timer is) joins the first-in-first-out lane of its delay. On a monotonic
  clock the lane stays sorted, so adding and taking the first are O(1) with no
  comparisons at all. Under load nearly every timer is one of a handful of delays
  (T1·2^n, T4, 64·T1), and the heap of hundreds of thousands of lingering transactions'
  timers (whose ``heappop`` took 15% of the event loop at 1,650 calls/s) is left almost
  empty. A cancelled lane timer is only marked, like a near one.

The driver asks :meth:`TimerHeap.next_deadline` and arms a single ``call_at``; when it
fires it calls :meth:`TimerHeap.fire` with the current time. Timers run in order of their
time, and of their scheduling when the times are equal, whichever part held them.
"""

from __future__ import annotations

import heapq
import math
from collections import deque
from collections.abc import Callable

# timers further ahead than this wait in the far buckets (a power of two: exact floats)
HORIZON = 64.0
_NEVER = float("inf")
# at most this many distinct delays get a lane; others go to the heap
MAX_LANES = 16


class Timer:
    __slots__ = ("_bucket", "_heap", "active", "callback", "seq", "when")

    def __init__(
        self,
        when: float,
        callback: Callable[[float], None],
        heap: TimerHeap | None = None,
        seq: int = 0,
    ) -> None:
        self.when = when
        self.callback = callback
        self.active = True
        self.seq = seq
        self._heap = heap
        # the far bucket holding this timer, or None once it is in the near heap
        self._bucket: dict[Timer, None] | None = None

    def cancel(self) -> None:
        """Stop the timer; a no-op when it has fired or was cancelled already."""
        if not self.active:
            return
        self.active = False
        # drop the reference now, so that what the callback holds can be freed at once
        self.callback = _noop
        heap, self._heap = self._heap, None
        bucket, self._bucket = self._bucket, None
        if heap is not None:
            heap._cancelled_one(self, bucket)


def _noop(now: float) -> None:
    return None


class TimerHeap:
    __slots__ = (
        "_cancelled",
        "_far",
        "_far_count",
        "_far_keys",
        "_far_min",
        "_heap",
        "_lane_of",
        "_lanes",
        "_now",
        "_seq",
    )

    def __init__(self) -> None:
        self._heap: list[tuple[float, int, Timer]] = []
        self._seq = 0
        self._cancelled = 0  # cancelled entries still in the near heap
        self._now = -_NEVER  # the time of the last fire()
        # far timers: bucket (whole seconds) -> its timers, and a heap of the bucket keys
        self._far: dict[int, dict[Timer, None]] = {}
        self._far_keys: list[int] = []
        self._far_count = 0
        self._far_min: tuple[int, float] | None = None  # (first bucket, its earliest time)
        # lanes: delay -> its timers in order of time (and of scheduling)
        self._lane_of: dict[float, deque[Timer]] = {}
        self._lanes: list[deque[Timer]] = []

    def __len__(self) -> int:
        """How many timers are pending (cancelled ones not counted)."""
        lanes = 0
        for lane in self._lanes:
            lanes += len(lane)
        return len(self._heap) + lanes - self._cancelled + self._far_count

    def after(self, now: float, delay: float, callback: Callable[[float], None]) -> Timer:
        """Schedule ``callback`` ``delay`` seconds after ``now`` (a monotonic clock's time)."""
        when = now + delay
        if not (0.0 <= delay <= HORIZON) or not math.isfinite(when):
            return self.schedule(when, callback)
        lane = self._lane_of.get(delay)
        if lane is None:
            if len(self._lanes) >= MAX_LANES:
                self._drop_empty_lanes()  # delays no longer used (a reload changed T1...)
                if len(self._lanes) >= MAX_LANES:
                    return self.schedule(when, callback)
            lane = self._lane_of[delay] = deque()
            self._lanes.append(lane)
        elif lane and lane[-1].when > when:
            return self.schedule(when, callback)  # the clock went back: keep the lane sorted
        self._seq += 1
        t = Timer(when, callback, self, self._seq)
        lane.append(t)
        return t

    def schedule(self, when: float, callback: Callable[[float], None]) -> Timer:
        if not math.isfinite(when):
            raise ValueError(f"a timer needs a finite time, not {when}")
        self._seq += 1
        t = Timer(when, callback, self, self._seq)
        if when - self._now <= HORIZON:
            heapq.heappush(self._heap, (when, t.seq, t))
            return t
        key = int(when)
        bucket = self._far.get(key)
        if bucket is None:
            bucket = self._far[key] = {}
            heapq.heappush(self._far_keys, key)
        bucket[t] = None
        t._bucket = bucket
        self._far_count += 1
        far_min = self._far_min
        if far_min is not None and far_min[0] == key and when < far_min[1]:
            self._far_min = (key, when)
        return t

    def _drop_empty_lanes(self) -> None:
        self._lane_of = {d: lane for d, lane in self._lane_of.items() if lane}
        self._lanes = list(self._lane_of.values())

    def _cancelled_one(self, t: Timer, bucket: dict[Timer, None] | None) -> None:
        if bucket is None:
            self._cancelled += 1  # stays in the near heap until it reaches the top
            return
        del bucket[t]
        self._far_count -= 1
        if not bucket:
            # a dict never shrinks as keys go: an emptied bucket is dropped at once, or a
            # second's worth of calls that ended would keep its table until that second
            # (hours ahead, for a maximum call duration). Its key stays in _far_keys.
            key = int(t.when)
            if self._far.get(key) is bucket:
                del self._far[key]
        far_min = self._far_min
        if far_min is not None and far_min[1] == t.when:
            self._far_min = None
        # an emptied bucket keeps its key in _far_keys until it comes first (few keys)

    def _first_far(self, before: float) -> float:
        """The earliest time among the far timers if it is before ``before``, else ``before``.

        A bucket's earliest time is only worked out (over the bucket) when the bucket could
        come first: under load the near heap is never empty and that is never.
        """
        keys, far = self._far_keys, self._far
        while keys:
            key = keys[0]
            bucket = far.get(key)
            if bucket:
                if key >= before:
                    return before
                cached = self._far_min
                if cached is None or cached[0] != key:
                    cached = self._far_min = (key, min(t.when for t in bucket))
                return min(cached[1], before)
            heapq.heappop(keys)
            far.pop(key, None)
        return before

    def next_deadline(self) -> float | None:
        heap = self._heap
        while heap and not heap[0][2].active:
            heapq.heappop(heap)
            self._cancelled -= 1
        first = heap[0][0] if heap else _NEVER
        for lane in self._lanes:
            while lane:
                t = lane[0]
                if t.active:
                    first = min(first, t.when)
                    break
                lane.popleft()
                self._cancelled -= 1
        if self._far_count:
            first = self._first_far(first)
        return None if first == _NEVER else first

    def _bring_near(self, now: float) -> None:
        """Move every far bucket within the horizon of ``now`` into the near heap."""
        keys, far, heap = self._far_keys, self._far, self._heap
        limit = now + HORIZON
        while keys and keys[0] <= limit:
            bucket = far.pop(heapq.heappop(keys), None)
            if not bucket:
                continue
            self._far_count -= len(bucket)
            for t in bucket:
                t._bucket = None
                heapq.heappush(heap, (t.when, t.seq, t))
        self._far_min = None

    def fire(self, now: float) -> int:
        """Run every active timer due at ``now``, earliest first; return how many ran.

        A timer that a callback schedules at or before ``now`` runs in the same call.
        """
        self._now = max(self._now, now)
        if self._far_count and self._far_keys and self._far_keys[0] <= now + HORIZON:
            self._bring_near(now)
        heap = self._heap
        ran = 0
        while True:
            # the earliest due timer among the heap's top and the lanes' heads
            best: Timer | None = None
            best_lane: deque[Timer] | None = None
            if heap and heap[0][0] <= now:
                best = heap[0][2]
            for lane in self._lanes:  # read anew: a callback may have replaced the list
                if lane:
                    t = lane[0]
                    if t.when <= now and (
                        best is None
                        or t.when < best.when
                        or (t.when == best.when and t.seq < best.seq)
                    ):
                        best, best_lane = t, lane
            if best is None:
                break
            if best_lane is None:
                heapq.heappop(heap)
            else:
                best_lane.popleft()
            t = best
            if not t.active:
                self._cancelled -= 1
                continue
            t.active = False
            t._heap = None
            cb = t.callback
            t.callback = _noop
            cb(now)
            ran += 1
        return ran
