"""One timer heap for the whole sans-IO stack (STYLE: one deadline per stack).

Timers are cancelled lazily: a cancelled entry stays in the heap until it reaches the
top, where it is skipped. So that long timers cancelled early (a call's maximum duration,
Timer L after the ACK) cannot pile up, the heap is rebuilt without its cancelled entries
whenever they outnumber the live ones. The driver asks :meth:`TimerHeap.next_deadline`
and arms a single ``call_at``; when it fires it calls :meth:`TimerHeap.fire` with the
current time.
"""

from __future__ import annotations

import heapq
from collections.abc import Callable

# below this many entries a heap is never compacted: not worth the rebuild
_COMPACT_MIN = 64


class Timer:
    __slots__ = ("_heap", "active", "callback", "when")

    def __init__(
        self, when: float, callback: Callable[[float], None], heap: TimerHeap | None = None
    ) -> None:
        self.when = when
        self.callback = callback
        self.active = True
        self._heap = heap

    def cancel(self) -> None:
        """Stop the timer; a no-op when it has fired or was cancelled already."""
        if not self.active:
            return
        self.active = False
        # drop the reference now, so that what the callback holds can be freed at once
        self.callback = _noop
        heap, self._heap = self._heap, None
        if heap is not None:
            heap._cancelled_one()


def _noop(now: float) -> None:
    return None


class TimerHeap:
    __slots__ = ("_cancelled", "_heap", "_seq")

    def __init__(self) -> None:
        self._heap: list[tuple[float, int, Timer]] = []
        self._seq = 0
        self._cancelled = 0  # cancelled entries still in the heap

    def __len__(self) -> int:
        """How many timers are pending (cancelled ones not counted)."""
        return len(self._heap) - self._cancelled

    def schedule(self, when: float, callback: Callable[[float], None]) -> Timer:
        t = Timer(when, callback, self)
        self._seq += 1
        heapq.heappush(self._heap, (when, self._seq, t))
        return t

    def _cancelled_one(self) -> None:
        self._cancelled += 1
        heap = self._heap
        if self._cancelled * 2 > len(heap) and len(heap) >= _COMPACT_MIN:
            # in place: fire() may be iterating over this very list
            heap[:] = [e for e in heap if e[2].active]
            heapq.heapify(heap)
            self._cancelled = 0

    def next_deadline(self) -> float | None:
        heap = self._heap
        while heap and not heap[0][2].active:
            heapq.heappop(heap)
            self._cancelled -= 1
        return heap[0][0] if heap else None

    def fire(self, now: float) -> int:
        """Run every active timer due at ``now``, earliest first; return how many ran.

        A timer that a callback schedules at or before ``now`` runs in the same call.
        """
        heap = self._heap
        ran = 0
        while heap and heap[0][0] <= now:
            _, _, t = heapq.heappop(heap)
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
