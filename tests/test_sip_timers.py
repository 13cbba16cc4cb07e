"""The timer heap: one deadline for the whole stack, fired with an explicit ``now``."""

from __future__ import annotations

import gc
import math
import tracemalloc
import weakref

import pytest

from sipguard.sip.timers import HORIZON, TimerHeap


class Recorder:
    def __init__(self) -> None:
        self.calls: list[tuple[str, float]] = []

    def cb(self, name: str):  # type: ignore[no-untyped-def]
        def fire(now: float) -> None:
            self.calls.append((name, now))

        return fire


def test_empty_heap_has_no_deadline_and_fires_nothing() -> None:
    heap = TimerHeap()
    assert heap.next_deadline() is None
    assert heap.fire(1e9) == 0
    assert len(heap) == 0


def test_timers_fire_earliest_first_with_the_now_given() -> None:
    heap, rec = TimerHeap(), Recorder()
    heap.schedule(3.0, rec.cb("c"))
    heap.schedule(1.0, rec.cb("a"))
    heap.schedule(2.0, rec.cb("b"))
    assert heap.next_deadline() == 1.0
    assert len(heap) == 3
    assert heap.fire(10.0) == 3
    assert rec.calls == [("a", 10.0), ("b", 10.0), ("c", 10.0)]
    assert heap.next_deadline() is None
    assert len(heap) == 0


def test_equal_deadlines_fire_in_scheduling_order() -> None:
    heap, rec = TimerHeap(), Recorder()
    for name in "xyzw":
        heap.schedule(5.0, rec.cb(name))
    heap.fire(5.0)
    assert [n for n, _ in rec.calls] == list("xyzw")


def test_a_timer_fires_at_exactly_its_deadline_not_before() -> None:
    heap, rec = TimerHeap(), Recorder()
    heap.schedule(1.5, rec.cb("t"))
    assert heap.fire(1.4999999) == 0
    assert rec.calls == []
    now = heap.next_deadline()
    assert now == 1.5
    assert heap.fire(now) == 1
    assert rec.calls == [("t", 1.5)]


def test_fire_runs_only_what_is_due() -> None:
    heap, rec = TimerHeap(), Recorder()
    heap.schedule(1.0, rec.cb("a"))
    heap.schedule(2.0, rec.cb("b"))
    assert heap.fire(1.0) == 1
    assert rec.calls == [("a", 1.0)]
    assert heap.next_deadline() == 2.0


def test_a_cancelled_timer_never_fires_and_is_not_the_deadline() -> None:
    heap, rec = TimerHeap(), Recorder()
    first = heap.schedule(1.0, rec.cb("a"))
    heap.schedule(2.0, rec.cb("b"))
    first.cancel()
    assert not first.active
    assert len(heap) == 1
    assert heap.next_deadline() == 2.0
    assert heap.fire(5.0) == 1
    assert rec.calls == [("b", 5.0)]


def test_cancel_is_idempotent_and_a_no_op_after_firing() -> None:
    heap, rec = TimerHeap(), Recorder()
    t = heap.schedule(1.0, rec.cb("a"))
    heap.fire(1.0)
    t.cancel()
    t.cancel()
    assert len(heap) == 0
    u = heap.schedule(2.0, rec.cb("b"))
    u.cancel()
    u.cancel()
    assert len(heap) == 0
    assert heap.next_deadline() is None
    assert rec.calls == [("a", 1.0)]


def test_cancelling_every_timer_leaves_no_deadline() -> None:
    heap, rec = TimerHeap(), Recorder()
    timers = [heap.schedule(float(i), rec.cb(str(i))) for i in range(5)]
    for t in timers:
        t.cancel()
    assert heap.next_deadline() is None
    assert heap.fire(100.0) == 0
    assert rec.calls == []


def test_a_callback_may_schedule_timers_due_now_and_later() -> None:
    heap, rec = TimerHeap(), Recorder()

    def first(now: float) -> None:
        rec.calls.append(("first", now))
        heap.schedule(now, rec.cb("same-now"))  # due at once: runs in this fire()
        heap.schedule(now + 1.0, rec.cb("later"))

    heap.schedule(1.0, first)
    assert heap.fire(1.0) == 2
    assert rec.calls == [("first", 1.0), ("same-now", 1.0)]
    assert heap.next_deadline() == 2.0
    heap.fire(2.0)
    assert rec.calls[-1] == ("later", 2.0)


def test_a_callback_may_cancel_another_due_timer() -> None:
    heap, rec = TimerHeap(), Recorder()
    victim = None

    def killer(now: float) -> None:
        rec.calls.append(("killer", now))
        assert victim is not None
        victim.cancel()

    heap.schedule(1.0, killer)
    victim = heap.schedule(1.0, rec.cb("victim"))
    assert heap.fire(1.0) == 1
    assert rec.calls == [("killer", 1.0)]


def test_a_callback_may_cancel_itself_while_running() -> None:
    heap, rec = TimerHeap(), Recorder()
    box = []

    def self_cancel(now: float) -> None:
        rec.calls.append(("self", now))
        box[0].cancel()  # already fired: nothing happens

    box.append(heap.schedule(1.0, self_cancel))
    heap.fire(1.0)
    assert rec.calls == [("self", 1.0)]
    assert len(heap) == 0


def test_cancel_drops_the_callback_at_once() -> None:
    heap = TimerHeap()

    class Owner:
        def cb(self, now: float) -> None:
            return None

    owner = Owner()
    ref = weakref.ref(owner)
    t = heap.schedule(100.0, owner.cb)
    t.cancel()
    del owner
    gc.collect()
    assert ref() is None  # the heap entry no longer keeps the owner alive


def test_cancelled_far_timers_leave_at_once() -> None:
    """Long timers cancelled early (a call's maximum duration) do not wait for their time."""
    heap, rec = TimerHeap(), Recorder()
    heap.fire(0.0)
    keep = [heap.schedule(10_000.0 + i, rec.cb(f"k{i}")) for i in range(100)]
    for i in range(10_000):
        heap.schedule(3600.0 + i, rec.cb("x")).cancel()
    assert len(heap) == 100
    assert heap._far_count == 100
    assert sum(len(b) for b in heap._far.values()) == 100
    assert len(heap._heap) == 0
    assert heap.next_deadline() == 10_000.0
    assert heap.fire(20_000.0) == 100
    assert [n for n, _ in rec.calls] == [f"k{i}" for i in range(100)]
    assert len(keep) == 100


def test_cancelled_near_timers_leave_the_heap_within_the_horizon() -> None:
    """Near timers are only marked when cancelled; no rebuild, yet they do not pile up."""
    heap, rec = TimerHeap(), Recorder()
    now = 0.0
    for step in range(200):
        now = step * 1.0
        heap.fire(now)
        for _ in range(50):
            heap.schedule(now + 32.0, rec.cb("x")).cancel()
        heap.schedule(now + 0.5, rec.cb("tick"))
        heap.next_deadline()
    # only the last HORIZON seconds of cancelled entries can still be there
    assert len(heap._heap) <= (HORIZON + 1) * 51
    assert len(heap) == 1


def test_near_and_far_timers_fire_in_time_then_scheduling_order() -> None:
    heap, rec = TimerHeap(), Recorder()
    heap.fire(0.0)
    heap.schedule(100.0, rec.cb("far-1"))  # far: beyond the horizon
    heap.fire(50.0)
    heap.schedule(100.0, rec.cb("near-2"))  # near now, same time, scheduled later
    heap.schedule(99.5, rec.cb("near-0"))
    assert heap.next_deadline() == 99.5
    assert heap.fire(100.0) == 3
    assert [n for n, _ in rec.calls] == ["near-0", "far-1", "near-2"]


def test_next_deadline_is_exact_for_far_timers_and_follows_cancels() -> None:
    heap, rec = TimerHeap(), Recorder()
    heap.fire(0.0)
    a = heap.schedule(500.25, rec.cb("a"))
    b = heap.schedule(500.75, rec.cb("b"))
    heap.schedule(900.0, rec.cb("c"))
    assert heap.next_deadline() == 500.25
    a.cancel()
    assert heap.next_deadline() == 500.75
    b.cancel()
    assert heap.next_deadline() == 900.0
    assert heap.fire(899.0) == 0
    assert heap.fire(900.0) == 1
    assert heap.next_deadline() is None
    assert len(heap) == 0


def test_compaction_while_firing_keeps_order_and_due_timers() -> None:
    """A callback that cancels many timers (compacting the heap) during fire()."""
    heap, rec = TimerHeap(), Recorder()
    doomed = [heap.schedule(50.0 + i, rec.cb("doomed")) for i in range(200)]

    def purge(now: float) -> None:
        rec.calls.append(("purge", now))
        for t in doomed:
            t.cancel()

    heap.schedule(1.0, purge)
    heap.schedule(2.0, rec.cb("after-1"))
    heap.schedule(2.0, rec.cb("after-2"))
    heap.schedule(300.0, rec.cb("late"))
    assert heap.fire(400.0) == 4
    assert rec.calls == [("purge", 400.0), ("after-1", 400.0), ("after-2", 400.0), ("late", 400.0)]
    assert len(heap) == 0
    assert heap.next_deadline() is None


def test_len_counts_pending_timers_through_mixed_operations() -> None:
    heap, rec = TimerHeap(), Recorder()
    timers = [heap.schedule(float(i), rec.cb(str(i))) for i in range(10)]
    for t in timers[::2]:
        t.cancel()
    assert len(heap) == 5
    assert heap.next_deadline() == 1.0
    heap.fire(4.0)  # 1 and 3 run
    assert len(heap) == 3
    assert [n for n, _ in rec.calls] == ["1", "3"]


def test_buckets_emptied_by_cancels_free_their_memory() -> None:
    """A second's worth of long timers cancelled (calls that ended) leaves nothing behind."""
    heap, rec = TimerHeap(), Recorder()
    heap.fire(0.0)
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for second in range(200):
            timers = [heap.schedule(14_400.0 + second + i / 1000, rec.cb("x")) for i in range(500)]
            for t in timers:
                t.cancel()
            del timers
        after = tracemalloc.get_traced_memory()[0]
    finally:
        tracemalloc.stop()
    assert len(heap) == 0
    assert heap._far == {}
    # 100,000 timers came and went: what stays is their 200 bucket keys, not 200 tables
    assert after - before < 64 * 1024
    assert heap.next_deadline() is None


def test_a_timer_needs_a_finite_time() -> None:
    heap, rec = TimerHeap(), Recorder()
    for when in (math.inf, -math.inf, math.nan):
        with pytest.raises(ValueError):
            heap.schedule(when, rec.cb("x"))
    assert len(heap) == 0


def test_timers_scheduled_before_any_fire_are_exact_and_in_order() -> None:
    """With no fire() yet every timer waits in the far buckets; nothing changes outside."""
    heap, rec = TimerHeap(), Recorder()
    for i, when in enumerate((1000.5, 1000.25, 1032.0, 1000.25, 5000.0)):
        heap.schedule(when, rec.cb(str(i)))
    assert heap.next_deadline() == 1000.25
    assert heap.fire(1000.25) == 2
    assert heap.next_deadline() == 1000.5
    assert heap.fire(6000.0) == 3
    assert [n for n, _ in rec.calls] == ["1", "3", "0", "2", "4"]


# -- lanes: timers scheduled as a delay from now (every transaction timer) -----------------


def test_lane_timers_merge_with_heap_and_far_timers_by_time_then_scheduling() -> None:
    heap, rec = TimerHeap(), Recorder()
    heap.fire(0.0)
    heap.after(0.0, 32.0, rec.cb("lane32-a"))  # due 32
    heap.schedule(32.0, rec.cb("heap-32"))  # same time, scheduled later
    heap.after(0.0, 0.5, rec.cb("lane0.5"))  # due 0.5
    heap.after(1.0, 31.0, rec.cb("lane31"))  # due 32, scheduled last
    heap.schedule(100.0, rec.cb("far"))
    heap.after(10.0, 90.0, rec.cb("after-far"))  # beyond the horizon: a far timer, due 100
    assert len(heap) == 6
    assert heap.next_deadline() == 0.5
    assert heap.fire(200.0) == 6
    assert [n for n, _ in rec.calls] == [
        "lane0.5",
        "lane32-a",
        "heap-32",
        "lane31",
        "far",
        "after-far",
    ]
    assert len(heap) == 0 and heap.next_deadline() is None


def test_cancelled_lane_timers_never_fire_and_leave_when_due() -> None:
    heap, rec = TimerHeap(), Recorder()
    first = heap.after(0.0, 32.0, rec.cb("first"))
    heap.after(1.0, 32.0, rec.cb("second"))
    first.cancel()
    first.cancel()
    assert len(heap) == 1
    assert heap.next_deadline() == 33.0  # the cancelled head is skipped
    assert heap.fire(32.5) == 0
    assert heap.fire(33.0) == 1
    assert rec.calls == [("second", 33.0)]
    assert len(heap) == 0
    assert not any(heap._lanes)  # the cancelled entry left its lane


def test_a_clock_going_back_keeps_lanes_sorted() -> None:
    """A `now` earlier than the lane's last one cannot go at the lane's end: the heap takes it."""
    heap, rec = TimerHeap(), Recorder()
    heap.after(10.0, 5.0, rec.cb("15"))
    heap.after(9.0, 5.0, rec.cb("14"))
    heap.fire(20.0)
    assert [n for n, _ in rec.calls] == ["14", "15"]


def test_delays_past_the_lane_limit_still_fire_in_order() -> None:
    heap, rec = TimerHeap(), Recorder()
    delays = [0.001 * (i + 1) for i in range(40)]  # more distinct delays than lanes
    for d in reversed(delays):
        heap.after(0.0, d, rec.cb(f"{d:.3f}"))
    heap.fire(1.0)
    assert [n for n, _ in rec.calls] == [f"{d:.3f}" for d in delays]


def test_lanes_match_a_sorted_reference_through_random_operations() -> None:
    """Random schedule/after/cancel/fire against a reference sorted by (time, scheduling)."""
    import random

    rnd = random.Random(20261128)
    for _ in range(30):
        heap = TimerHeap()
        fired: list[int] = []
        pending: dict[int, tuple[float, int]] = {}  # id -> (when, order)
        handles = {}
        order = 0
        now = 0.0
        expected: list[int] = []
        for _ in range(400):
            op = rnd.random()
            if op < 0.45:
                delay = rnd.choice([0.5, 1.0, 2.0, 4.0, 5.0, 32.0, 0.25 * rnd.randint(0, 400)])
                ident = order
                order += 1

                def cb(t: float, ident: int = ident, fired: list[int] = fired) -> None:
                    fired.append(ident)

                if rnd.random() < 0.7:
                    handles[ident] = heap.after(now, delay, cb)
                else:
                    handles[ident] = heap.schedule(now + delay, cb)
                pending[ident] = (now + delay, ident)
            elif op < 0.6 and pending:
                ident = rnd.choice(sorted(pending))
                handles[ident].cancel()
                del pending[ident]
            else:
                now += rnd.choice([0.0, 0.1, 0.5, 1.0, 3.0, 20.0])
                due = sorted((w, i) for i, (w, _) in pending.items() if w <= now)
                expected.extend(i for _, i in due)
                for _, i in due:
                    del pending[i]
                heap.fire(now)
                assert fired == expected
                assert len(heap) == len(pending)
                nd = heap.next_deadline()
                assert nd == (min(w for w, _ in pending.values()) if pending else None)


def test_lanes_of_delays_no_longer_used_make_room_for_new_ones() -> None:
    """After a reload changes T1/T2/T4, the new delays get lanes again (not the heap)."""
    from sipguard.sip.timers import MAX_LANES

    heap, rec = TimerHeap(), Recorder()
    for i in range(MAX_LANES):
        heap.after(0.0, 1.0 + i, rec.cb(f"old-{i}"))
    heap.fire(100.0)
    assert len(rec.calls) == MAX_LANES
    heap.after(100.0, 0.3, rec.cb("new"))
    assert not heap._heap  # in a lane of its own
    assert len(heap._lanes) == 1
    assert heap.fire(100.3) == 1


def test_a_callback_that_makes_a_new_lane_while_firing_still_fires_its_due_timer() -> None:
    from sipguard.sip.timers import MAX_LANES

    heap, rec = TimerHeap(), Recorder()
    for i in range(MAX_LANES):  # every lane taken, all empty once these fire
        heap.after(0.0, 1.0 + i, rec.cb(f"old-{i}"))

    def spawn(now: float) -> None:
        rec.calls.append(("spawn", now))
        heap.after(now, 0.0, rec.cb("due-now"))  # a new lane (the list is rebuilt)

    heap.after(0.0, 50.0, spawn)
    heap.fire(60.0)
    assert [n for n, _ in rec.calls][-2:] == ["spawn", "due-now"]
