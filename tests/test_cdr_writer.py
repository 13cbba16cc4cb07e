"""The CDR writer: never blocks the event loop, loses nothing, refuses or drops as told."""

from __future__ import annotations

import asyncio
import json
import os
import threading
import time
from collections.abc import Iterator, Sequence
from datetime import date
from pathlib import Path

import pytest

from sipguard.cdr import writer as writer_mod
from sipguard.cdr.record import CdrRecord, end_record, start_record
from sipguard.cdr.sink import PurgeSummary, SinkError, SpoolFullError, WriteResult
from sipguard.cdr.state import StateError, read_heartbeat, write_heartbeat
from sipguard.cdr.writer import CdrWriter
from sipguard.config.model import CdrConfig
from sipguard.metrics import Metrics


@pytest.fixture(autouse=True)
def fast_retries(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(writer_mod, "RETRY_SECONDS", 0.02)
    monkeypatch.setattr(writer_mod, "MAINTAIN_SECONDS", 0.02)


def rec(n: int, t: float | None = None) -> CdrRecord:
    t = time.time() if t is None else t
    return end_record(
        call_id=f"0123abcd{n:024x}",
        trunk_in="customers",
        trunk_out="pbx",
        caller="+31201234567",
        callee="+31207654321",
        presentation="allowed",
        emergency=False,
        start=t,
        answer=None,
        end=t + 1,
        status=486,
        end_reason="rejected",
    )


class FakeSink:
    """An in-memory sink whose writes can be slowed down or made to fail."""

    name = "fake"

    def __init__(self) -> None:
        self.records: list[CdrRecord] = []
        self.delay = 0.0
        self.fail: type[Exception] | None = None
        self.spool_room: int | None = None  # refuse beyond this many (SpoolFullError)
        self.purges: list[date] = []
        self.closed = False
        self.threads: set[str] = set()

    def write_batch(self, records: Sequence[CdrRecord]) -> WriteResult:
        self.threads.add(threading.current_thread().name)
        time.sleep(self.delay)
        if self.fail is not None:
            raise self.fail("disk on fire")
        if self.spool_room is not None:
            take = max(0, min(len(records), self.spool_room))
            self.spool_room -= take
            self.records += records[:take]
            if take < len(records):
                raise SpoolFullError(records[take:], WriteResult(spooled=take))
            return WriteResult(spooled=take)
        self.records += records
        return WriteResult(written=len(records))

    def maintain(self) -> WriteResult:
        return WriteResult()

    def open_calls(self, since: str, until: str, instance: str) -> list[CdrRecord]:
        return []

    def last_activity(self) -> float | None:
        return None

    def iter_records(
        self, since: str | None, until: str | None, numbers: frozenset[str] | None = None
    ) -> Iterator[CdrRecord]:
        return iter(self.records)

    def purge(self, before: date, dry_run: bool) -> PurgeSummary:
        self.purges.append(before)
        return PurgeSummary(cutoff=before, dry_run=dry_run)

    def close(self) -> None:
        self.closed = True


def wait_for(cond: object, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():  # type: ignore[operator]
        if time.monotonic() > deadline:
            raise AssertionError("timed out")
        time.sleep(0.005)


def counter(metrics: Metrics, sink: str, result: str) -> float:
    value = metrics.registry.get_sample_value(
        "sipguard_cdr_records_total", {"sink": sink, "result": result}
    )
    return value or 0.0


async def test_many_submits_from_asyncio_never_block(tmp_path: Path) -> None:
    sink = FakeSink()
    sink.delay = 0.02  # a slow disk: 20 ms per batch
    metrics = Metrics()
    w = CdrWriter(CdrConfig(path=str(tmp_path)), metrics, sink=sink)
    w.start()
    worst = 0.0
    lag = 0.0

    async def ticker() -> None:
        nonlocal lag
        for _ in range(20):
            t = time.perf_counter()
            await asyncio.sleep(0.005)
            lag = max(lag, time.perf_counter() - t - 0.005)

    records = [rec(i) for i in range(20000)]

    async def caller(base: int) -> None:
        nonlocal worst
        for i in range(1000):
            r = records[base + i]
            t = time.perf_counter()
            w.submit(r)
            worst = max(worst, time.perf_counter() - t)
            if i % 100 == 0:
                await asyncio.sleep(0)

    await asyncio.gather(ticker(), *(caller(k * 1000) for k in range(20)))
    assert worst < 0.02  # a submit is an append, never a write
    assert lag < 0.04  # the loop kept turning while the sink slept
    assert await w.aclose(10.0)
    assert len(sink.records) == 20000
    assert len({r.id for r in sink.records}) == 20000
    assert sink.threads == {"sipguard-cdr"}
    assert sink.closed
    assert counter(metrics, "fake", "written") == 20000


async def test_file_sink_end_to_end(tmp_path: Path) -> None:
    metrics = Metrics()
    w = CdrWriter(CdrConfig(path=str(tmp_path)), metrics)
    w.start()
    for i in range(500):
        w.submit(rec(i))
        if i % 50 == 0:
            await asyncio.sleep(0)
    assert await w.aclose()
    lines = []
    for f in sorted(tmp_path.glob("cdr-*.jsonl")):
        lines += [json.loads(x) for x in f.read_text().splitlines()]
    assert [x["id"] for x in lines] == [rec(i).id for i in range(500)]  # in order
    assert counter(metrics, "file", "written") == 500
    assert read_heartbeat(str(tmp_path)) is not None


def test_call_ids_carry_the_instance_tag(tmp_path: Path) -> None:
    w = CdrWriter(CdrConfig(path=str(tmp_path)), sink=FakeSink())
    tag = w.instance
    a, b = w.new_call_id(), w.new_call_id()
    assert a != b and a.startswith(tag) and b.startswith(tag) and len(a) == 32
    w.close()
    w2 = CdrWriter(CdrConfig(path=str(tmp_path)), sink=FakeSink())
    assert w2.instance == tag  # kept across restarts
    w2.close()


def test_one_writer_per_directory(tmp_path: Path) -> None:
    w = CdrWriter(CdrConfig(path=str(tmp_path)), sink=FakeSink())
    with pytest.raises(StateError):
        CdrWriter(CdrConfig(path=str(tmp_path)), sink=FakeSink())
    w.close()


def test_failing_sink_refuses_calls_and_loses_nothing(tmp_path: Path) -> None:
    sink = FakeSink()
    sink.fail = SinkError
    metrics = Metrics()
    w = CdrWriter(CdrConfig(path=str(tmp_path)), metrics, sink=sink)
    w.start()
    assert w.accepting_calls()
    for i in range(50):
        w.submit(rec(i))
    wait_for(lambda: not w.accepting_calls())
    assert counter(metrics, "fake", "failed") > 0
    for i in range(50, 60):
        w.submit(rec(i))  # the calls in progress still end and are billed
    sink.fail = None
    wait_for(w.accepting_calls)
    assert w.close(5.0)
    assert [r.id for r in sink.records] == [rec(i).id for i in range(60)]
    assert counter(metrics, "fake", "dropped") == 0


def test_spool_full_refuses_until_records_are_stored(tmp_path: Path) -> None:
    sink = FakeSink()
    sink.spool_room = 10
    metrics = Metrics()
    w = CdrWriter(CdrConfig(path=str(tmp_path), sink="postgres"), metrics, sink=sink)
    w.start()
    for i in range(25):
        w.submit(rec(i))
    wait_for(lambda: not w.accepting_calls())
    wait_for(lambda: w.pending() == 15)
    assert counter(metrics, "fake", "spooled") == 10
    sink.spool_room = None  # the database is back, the spool drained
    wait_for(w.accepting_calls)
    assert w.close(5.0)
    assert [r.id for r in sink.records] == [rec(i).id for i in range(25)]


def test_drop_policy_goes_on_and_counts(tmp_path: Path) -> None:
    sink = FakeSink()
    sink.fail = OSError
    metrics = Metrics()
    cfg = CdrConfig(path=str(tmp_path), on_spool_full="drop")
    w = CdrWriter(cfg, metrics, sink=sink, max_queue=20)
    w.start()
    for i in range(100):
        w.submit(rec(i))
    wait_for(lambda: counter(metrics, "fake", "dropped") >= 1)
    wait_for(lambda: w.pending() <= 20)
    assert w.accepting_calls()
    sink.fail = None
    assert w.close(5.0)
    assert len(sink.records) + counter(metrics, "fake", "dropped") == 100


def test_submit_after_close_never_raises(tmp_path: Path) -> None:
    metrics = Metrics()
    w = CdrWriter(CdrConfig(path=str(tmp_path)), metrics, sink=FakeSink())
    w.start()
    assert w.close()
    w.submit(rec(1))
    assert counter(metrics, "fake", "failed") == 1


def test_start_runs_retention_and_heartbeat(tmp_path: Path) -> None:
    sink = FakeSink()
    now = 1795827560.0  # 2026-11-28
    w = CdrWriter(CdrConfig(path=str(tmp_path), retention_days=92), sink=sink, clock=lambda: now)
    w.start()
    wait_for(lambda: sink.purges)
    assert sink.purges == [date(2026, 8, 28)]
    wait_for(lambda: read_heartbeat(str(tmp_path)) == now)
    w.close()


def test_start_recovers_open_calls(tmp_path: Path) -> None:
    t = time.time() - 600
    s = start_record(
        call_id="0123abcd" + "f" * 24,
        trunk_in="customers",
        trunk_out="pbx",
        caller="+31201234567",
        callee="+31207654321",
        presentation="allowed",
        emergency=False,
        start=t,
        answer=t + 1,
    )
    cfg = CdrConfig(path=str(tmp_path))
    day = time.strftime("%Y-%m-%d", time.gmtime())
    f = tmp_path / f"cdr-{day}.jsonl"
    f.write_text(s.to_json() + "\n")
    os.utime(f, (t + 2, t + 2))  # the heartbeat is later: it counts
    write_heartbeat(str(tmp_path), t + 31)
    metrics = Metrics()
    w = CdrWriter(cfg, metrics)
    w.start()
    w.submit(rec(1))
    assert w.close()
    lines = [json.loads(x) for x in (tmp_path / f"cdr-{day}.jsonl").read_text().splitlines()]
    ends = [x for x in lines if x["kind"] == "end" and x["id"] == s.id]
    assert len(ends) == 1
    assert ends[0]["end_reason"] == "crash_recovered"
    assert ends[0]["duration_ms"] == 30000
    assert counter(metrics, "file", "written") == 2


def test_memory_is_bounded_while_refusing(tmp_path: Path) -> None:
    """on_spool_full: refuse, the sink down: every refused attempt still makes an end
    record. Past twice max_queue, the records of unanswered, non-emergency attempts are
    dropped and counted; answered calls and emergency calls are always kept."""
    sink = FakeSink()
    sink.fail = SinkError
    metrics = Metrics()
    w = CdrWriter(CdrConfig(path=str(tmp_path)), metrics, sink=sink, max_queue=10)
    w.start()
    for i in range(100):
        w.submit(rec(i))  # a flood of refused attempts
    t = time.time()
    answered = start_record(
        call_id=f"0123abcd{999:024x}",
        trunk_in="customers",
        trunk_out="pbx",
        caller="+31201234567",
        callee="+31207654321",
        presentation="allowed",
        emergency=False,
        start=t,
        answer=t + 1,
    )
    emergency = end_record(
        call_id=f"0123abcd{998:024x}",
        trunk_in="customers",
        trunk_out="pbx",
        caller="+31201234567",
        callee="112",
        presentation="allowed",
        emergency=True,
        start=t,
        answer=None,
        end=t + 1,
        status=487,
        end_reason="cancel",
    )
    w.submit(answered)
    w.submit(emergency)
    assert w.pending() == 22  # 20 (2 x max_queue) + the two that are always kept
    assert w.counts["dropped"] == 80
    assert counter(metrics, "fake", "dropped") == 80
    assert not w.accepting_calls()
    sink.fail = None
    assert w.close(5.0)
    ids = [r.id for r in sink.records]
    assert ids == [rec(i).id for i in range(20)] + [answered.id, emergency.id]


def test_run_with_the_cdr_directory_held_says_cannot_start(tmp_path: Path) -> None:
    """A second ``sipguard run`` on the same cdr.path: one line and exit 1, no traceback
    (StateError is an OSError, which ``run`` reports as "cannot start")."""
    import subprocess
    import sys

    from sipguard.cdr.state import DirLock

    root = Path(__file__).resolve().parent.parent
    text = (root / "config" / "sipguard.yaml").read_text()
    cdr = tmp_path / "cdr"
    assert "  path: var/cdr " in text
    cfg = tmp_path / "sipguard.yaml"
    cfg.write_text(text.replace("  path: var/cdr ", f"  path: {cdr} ", 1))
    lock = DirLock(str(cdr))
    try:
        done = subprocess.run(
            [sys.executable, "-m", "sipguard", "run", "-c", str(cfg)],
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
    finally:
        lock.release()
    assert done.returncode == 1, done.stderr
    assert "cannot start" in done.stderr and "another process is writing CDRs" in done.stderr
    assert "Traceback" not in done.stderr
