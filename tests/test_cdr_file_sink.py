"""The file sink: a JSON line per record, a file per UTC day, fsync policy, torn lines."""

from __future__ import annotations

import errno
import json
import os
import stat
from datetime import date
from pathlib import Path

import pytest

from sipguard.cdr.file_sink import FileSink, day_files
from sipguard.cdr.jsonl import read_records, repair_tail
from sipguard.cdr.record import CdrRecord, end_record, start_record
from sipguard.cdr.sink import SinkError
from sipguard.config.model import CdrConfig

DAY = 1795824000.0  # 2026-11-28T00:00:00Z


def rec(
    n: int, t: float = DAY + 3600, *, kind: str = "end", caller: str = "+31201234567"
) -> CdrRecord:
    call_id = f"0123abcd{n:024x}"
    common = {
        "call_id": call_id,
        "trunk_in": "customers",
        "trunk_out": "pbx",
        "caller": caller,
        "callee": "+31207654321",
        "presentation": "allowed",
        "emergency": False,
        "start": t,
    }
    if kind == "start":
        return start_record(answer=t + 1, **common)  # type: ignore[arg-type]
    return end_record(answer=t + 1, end=t + 61, status=200, end_reason="caller_bye", **common)  # type: ignore[arg-type]


class Clock:
    def __init__(self, t: float) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


def lines(path: Path) -> list[dict[str, object]]:
    return [json.loads(x) for x in path.read_text().splitlines()]


def test_one_json_line_per_record_in_todays_file(tmp_path: Path) -> None:
    sink = FileSink(CdrConfig(path=str(tmp_path)), clock=Clock(DAY + 10), writable=True)
    sink.write_batch([rec(1), rec(2)])
    sink.write_batch([rec(3)])
    sink.close()
    f = tmp_path / "cdr-2026-11-28.jsonl"
    assert [x["id"] for x in lines(f)] == [rec(i).id for i in (1, 2, 3)]
    assert f.read_bytes().endswith(b"\n")
    assert stat.S_IMODE(f.stat().st_mode) & 0o007 == 0  # not world-readable


def test_day_rotation_follows_the_write_time(tmp_path: Path) -> None:
    clock = Clock(DAY + 86400 - 1)  # 2026-11-28T23:59:59Z
    sink = FileSink(CdrConfig(path=str(tmp_path)), clock=clock, writable=True)
    sink.write_batch([rec(1, DAY + 80000, kind="start")])
    clock.t = DAY + 86400 + 1  # 2026-11-29T00:00:01Z
    sink.write_batch([rec(1, DAY + 80000)])  # the same call's end: in the new day's file
    sink.close()
    assert [d for d, _ in day_files(str(tmp_path))] == [date(2026, 11, 28), date(2026, 11, 29)]
    assert [x["kind"] for x in lines(tmp_path / "cdr-2026-11-28.jsonl")] == ["start"]
    assert [x["kind"] for x in lines(tmp_path / "cdr-2026-11-29.jsonl")] == ["end"]


def test_past_day_files_are_never_touched(tmp_path: Path) -> None:
    old = tmp_path / "cdr-2026-11-20.jsonl"
    old.write_text(rec(9, DAY - 8 * 86400).to_json() + "\n")
    os.utime(old, (DAY - 7 * 86400, DAY - 7 * 86400))
    before = (old.read_bytes(), old.stat().st_mtime)
    clock = Clock(DAY + 100)
    sink = FileSink(CdrConfig(path=str(tmp_path)), clock=clock, writable=True)
    sink.write_batch([rec(1)])
    clock.t = DAY - 86400 * 3  # the wall clock steps back by days
    sink.write_batch([rec(2)])  # still today's file: a past day is never reopened
    sink.close()
    assert (old.read_bytes(), old.stat().st_mtime) == before
    assert len(lines(tmp_path / "cdr-2026-11-28.jsonl")) == 2
    assert not (tmp_path / "cdr-2026-11-25.jsonl").exists()


def test_read_only_sink_writes_nothing(tmp_path: Path) -> None:
    sink = FileSink(CdrConfig(path=str(tmp_path / "none")), clock=Clock(DAY))
    with pytest.raises(ValueError):
        sink.write_batch([rec(1)])
    assert list(sink.iter_records(None, None)) == []
    assert not (tmp_path / "none").exists()


class FsyncCounter:
    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.files = 0
        real = os.fsync

        def fake(fd: int) -> None:
            if stat.S_ISREG(os.fstat(fd).st_mode):
                self.files += 1
            real(fd)

        monkeypatch.setattr(os, "fsync", fake)


def test_fsync_always(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    counter = FsyncCounter(monkeypatch)
    sink = FileSink(CdrConfig(path=str(tmp_path), fsync="always"), clock=Clock(DAY), writable=True)
    for i in range(5):
        sink.write_batch([rec(i), rec(i + 100)])
    assert counter.files == 5
    sink.close()
    assert counter.files == 5  # nothing left unsynced


def test_fsync_batch_at_most_once_a_second(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    counter = FsyncCounter(monkeypatch)
    mono = Clock(1000.0)
    sink = FileSink(
        CdrConfig(path=str(tmp_path), fsync="batch"),
        clock=Clock(DAY),
        writable=True,
        monotonic=mono,
    )
    for i in range(10):
        sink.write_batch([rec(i)])
        mono.t += 0.05
    assert counter.files == 0  # 0.5 s of writes: none yet
    mono.t += 0.6
    sink.maintain()  # the writer's once-a-second tick
    assert counter.files == 1
    sink.maintain()
    assert counter.files == 1  # nothing new written
    sink.write_batch([rec(50)])
    mono.t += 1.0
    sink.write_batch([rec(51)])  # due: synced with the write
    assert counter.files == 2
    sink.write_batch([rec(52)])
    sink.close()
    assert counter.files == 3  # close syncs what is pending


def test_fsync_never(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    counter = FsyncCounter(monkeypatch)
    mono = Clock(0.0)
    sink = FileSink(
        CdrConfig(path=str(tmp_path), fsync="never"),
        clock=Clock(DAY),
        writable=True,
        monotonic=mono,
    )
    for i in range(5):
        sink.write_batch([rec(i)])
        mono.t += 10
        sink.maintain()
    sink.close()
    assert counter.files == 0
    assert len(lines(tmp_path / "cdr-2026-11-28.jsonl")) == 5  # written all the same


def test_torn_last_line_is_cut_off_on_open(tmp_path: Path) -> None:
    f = tmp_path / "cdr-2026-11-28.jsonl"
    good = rec(1).to_json() + "\n" + rec(2).to_json() + "\n"
    f.write_text(good + rec(3).to_json()[:40])
    # a reader while the proxy runs (or before repair) skips the torn line
    assert [r.id for r in read_records(str(f))] == [rec(1).id, rec(2).id]
    sink = FileSink(CdrConfig(path=str(tmp_path)), clock=Clock(DAY + 10), writable=True)
    assert f.read_text() == good
    sink.write_batch([rec(4)])
    sink.close()
    assert [x["id"] for x in lines(f)] == [rec(i).id for i in (1, 2, 4)]


def test_torn_line_in_a_past_days_file_is_repaired(tmp_path: Path) -> None:
    f = tmp_path / "cdr-2026-11-27.jsonl"
    f.write_bytes(rec(1).to_json().encode() + b"\n" + b"\x00" * 4096)  # zero-filled tail
    FileSink(CdrConfig(path=str(tmp_path)), clock=Clock(DAY + 10), writable=True).close()
    assert f.read_text() == rec(1).to_json() + "\n"


def test_repair_tail_cases(tmp_path: Path) -> None:
    f = tmp_path / "x.jsonl"
    assert repair_tail(str(f)) == 0  # missing: fine
    f.write_bytes(b"")
    assert repair_tail(str(f)) == 0
    f.write_bytes(b"no newline at all " * 10000)  # longer than one read chunk
    assert repair_tail(str(f)) == 180000
    assert f.read_bytes() == b""
    f.write_bytes(b"a\nb\n")
    assert repair_tail(str(f)) == 0


def test_garbage_lines_are_skipped(tmp_path: Path) -> None:
    f = tmp_path / "cdr-2026-11-28.jsonl"
    extra = rec(2).to_dict() | {"display_name": "Alice"}
    f.write_text(
        rec(1).to_json()
        + "\nnot json\n[1]\n"
        + json.dumps(extra)
        + "\n\n"
        + rec(3).to_json()
        + "\n"
    )
    assert [r.id for r in read_records(str(f))] == [rec(1).id, rec(3).id]


def test_failed_write_leaves_no_partial_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    sink = FileSink(CdrConfig(path=str(tmp_path)), clock=Clock(DAY), writable=True)
    sink.write_batch([rec(1)])
    real_write = os.write

    def half_then_full(fd: int, data: bytes | memoryview) -> int:
        if len(data) > 10:
            real_write(fd, bytes(data[: len(data) // 2]))
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_write(fd, data)

    monkeypatch.setattr(os, "write", half_then_full)
    with pytest.raises(SinkError):
        sink.write_batch([rec(2), rec(3)])
    monkeypatch.setattr(os, "write", real_write)
    sink.write_batch([rec(2), rec(3)])  # the writer's retry: no doubles, no torn line
    sink.close()
    assert [x["id"] for x in lines(tmp_path / "cdr-2026-11-28.jsonl")] == [
        rec(i).id for i in (1, 2, 3)
    ]


def test_iter_records_by_start_and_number(tmp_path: Path) -> None:
    clock = Clock(DAY - 86400)
    sink = FileSink(CdrConfig(path=str(tmp_path)), clock=clock, writable=True)
    sink.write_batch([rec(1, DAY - 80000), rec(2, DAY - 3600, caller="+31209999999")])
    clock.t = DAY + 7200
    sink.write_batch([rec(3, DAY + 60), rec(4, DAY + 3600)])
    assert [r.id for r in sink.iter_records(None, None)] == [rec(i).id for i in (1, 2, 3, 4)]
    since = "2026-11-28T00:00:00.000Z"
    assert [r.id for r in sink.iter_records(since, None)] == [rec(3).id, rec(4).id]
    until = "2026-11-28T01:00:00.000Z"  # exclusive: rec 4 starts exactly then
    assert [r.id for r in sink.iter_records(None, until)] == [rec(i).id for i in (1, 2, 3)]
    only = frozenset({"+31209999999"})
    assert [r.id for r in sink.iter_records(None, None, only)] == [rec(2).id]
    sink.close()


def test_restart_on_a_clock_behind_never_reopens_a_past_day(tmp_path: Path) -> None:
    """A restart soon after midnight on a clock a little behind (NTP not yet synced):
    yesterday's file, which a newer one has closed, is never written again."""
    cfg = CdrConfig(path=str(tmp_path))
    sink = FileSink(cfg, clock=Clock(DAY - 86400 + 10), writable=True)
    sink.write_batch([rec(1)])
    sink.close()
    sink = FileSink(cfg, clock=Clock(DAY + 10), writable=True)
    sink.write_batch([rec(2)])
    sink.close()
    closed = tmp_path / "cdr-2026-11-27.jsonl"
    before = closed.read_bytes()
    sink = FileSink(cfg, clock=Clock(DAY - 5), writable=True)  # 5 s behind midnight
    sink.write_batch([rec(3)])
    sink.close()
    assert closed.read_bytes() == before
    assert [x["id"] for x in lines(tmp_path / "cdr-2026-11-28.jsonl")] == [rec(2).id, rec(3).id]


def test_restart_ignores_a_day_file_far_in_the_future(tmp_path: Path) -> None:
    """A file a wrong clock dated years ahead is not written to after a restart: records
    there would escape the retention until that day."""
    (tmp_path / "cdr-2030-01-01.jsonl").write_text(rec(9).to_json() + "\n")
    sink = FileSink(CdrConfig(path=str(tmp_path)), clock=Clock(DAY + 10), writable=True)
    sink.write_batch([rec(1)])
    sink.close()
    assert len(lines(tmp_path / "cdr-2030-01-01.jsonl")) == 1
    assert [x["id"] for x in lines(tmp_path / "cdr-2026-11-28.jsonl")] == [rec(1).id]


def test_failed_fsync_always_is_retried_without_doubles(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """fsync: always. A failed fsync fails the batch (the writer keeps and retries it);
    the batch is cut back off, so the retry does not store it twice."""
    sink = FileSink(CdrConfig(path=str(tmp_path), fsync="always"), clock=Clock(DAY), writable=True)
    sink.write_batch([rec(1)])
    real = os.fsync

    def failing(fd: int) -> None:
        if stat.S_ISREG(os.fstat(fd).st_mode):
            raise OSError(errno.EIO, "Input/output error")
        real(fd)

    monkeypatch.setattr(os, "fsync", failing)
    with pytest.raises(SinkError):
        sink.write_batch([rec(2), rec(3)])
    monkeypatch.setattr(os, "fsync", real)
    sink.write_batch([rec(2), rec(3)])
    sink.close()
    assert [x["id"] for x in lines(tmp_path / "cdr-2026-11-28.jsonl")] == [
        rec(i).id for i in (1, 2, 3)
    ]


def test_failed_fsync_batch_does_not_fail_the_written_batch(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """fsync: batch. The records are written; a failed periodic fsync is logged and
    tried again, never reported as a failed write (whose retry would double them)."""
    mono = Clock(0.0)
    sink = FileSink(
        CdrConfig(path=str(tmp_path), fsync="batch"), clock=Clock(DAY), writable=True,
        monotonic=mono,
    )  # fmt: skip
    sink.write_batch([rec(1)])
    real = os.fsync

    def failing(fd: int) -> None:
        if stat.S_ISREG(os.fstat(fd).st_mode):
            raise OSError(errno.EIO, "Input/output error")
        real(fd)

    monkeypatch.setattr(os, "fsync", failing)
    mono.t = 5.0  # a fsync is due
    assert sink.write_batch([rec(2)]).written == 1
    monkeypatch.setattr(os, "fsync", real)
    sink.close()
    assert [x["id"] for x in lines(tmp_path / "cdr-2026-11-28.jsonl")] == [rec(1).id, rec(2).id]


def test_cdr_files_are_not_world_readable(tmp_path: Path) -> None:
    """Usage data is personal data: day files 0640, the directory 0750 (umask 022)."""
    old = os.umask(0o022)
    try:
        d = tmp_path / "cdr"
        sink = FileSink(CdrConfig(path=str(d)), clock=Clock(DAY), writable=True)
        sink.write_batch([rec(1)])
        sink.close()
    finally:
        os.umask(old)
    assert stat.S_IMODE(d.stat().st_mode) == 0o750
    assert stat.S_IMODE((d / "cdr-2026-11-28.jsonl").stat().st_mode) == 0o640
