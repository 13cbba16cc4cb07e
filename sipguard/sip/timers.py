"""One timer heap for the whole sans-IO stack (STYLE: one deadline per stack).

Timers are cancelled lazily: a cancelled entry stays in the heap until it reaches the
top, where it is skipped. The driver asks :meth:`TimerHeap.next_deadline` and arms a
single ``call_at``; when it fires it calls :meth:`TimerHeap.fire` with the current time.
"""

from __future__ import annotations

import heapq
from collections.abc import Callable


class Timer:
    __slots__ = ("active", "callback", "when")

    def __init__(self, when: float, callback: Callable[[float], None]) -> None:
        self.when = when
        self.callback = callback
        self.active = True

    def cancel(self) -> None:
        self.active = False
        # drop the reference now, so that what the callback holds can be freed at once
        self.callback = _noop


def _noop(now: float) -> None:
    return None


class TimerHeap:
    __slots__ = ("_heap", "_seq")

    def __init__(self) -> None:
        self._heap: list[tuple[float, int, Timer]] = []
        self._seq = 0

    def __len__(self) -> int:
        return len(self._heap)

    def schedule(self, when: float, callback: Callable[[float], None]) -> Timer:
        t = Timer(when, callback)
        self._seq += 1
        heapq.heappush(self._heap, (when, self._seq, t))
        return t

    def next_deadline(self) -> float | None:
        heap = self._heap
        while heap and not heap[0][2].active:
            heapq.heappop(heap)
        return heap[0][0] if heap else None

    def fire(self, now: float) -> int:
        """Run every active timer due at ``now``, earliest first; return how many ran."""
        heap = self._heap
        ran = 0
        while heap and heap[0][0] <= now:
            _, _, t = heapq.heappop(heap)
            if t.active:
                t.active = False
                cb = t.callback
                t.callback = _noop
                cb(now)
                ran += 1
        return ran
