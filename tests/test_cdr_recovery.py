"""Crash recovery: answered calls without an end record are closed as crash_recovered."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from sipguard.cdr.record import CdrRecord, end_record, format_ts, parse_ms, start_record
from sipguard.cdr.recovery import LOOKBACK_DAYS, recover
from sipguard.cdr.state import DirLock, StateError, read_heartbeat, write_heartbeat
from sipguard.config.model import CdrConfig

DAY = 1795824000.0  # 2026-11-28T00:00:00Z
NOW = DAY + 86400 + 600  # the restart: 2026-11-29T00:10:00Z


def call(n: int, start: float, *, talk: float | None = 60.0) -> tuple[CdrRecord, CdrRecord]:
    common = {
        "call_id": f"0123abcd{n:024x}",
        "trunk_in": "customers",
        "trunk_out": "pbx",
        "caller": "+31201234567",
        "callee": "+31207654321",
        "presentation": "restricted",
        "emergency": False,
        "start": start,
    }
    s = start_record(answer=start + 2, **common)  # type: ignore[arg-type]
    e = end_record(
        answer=None if talk is None else start + 2,
        end=start + 2 + (talk or 0),
        status=200 if talk is not None else 487,
        end_reason="caller_bye" if talk is not None else "cancel",
        **common,  # type: ignore[arg-type]
    )
    return s, e


def write_day(path: Path, day: str, records: list[CdrRecord], tail: str = "") -> Path:
    f = path / f"cdr-{day}.jsonl"
    with f.open("a") as out:
        out.write("".join(r.to_json() + "\n" for r in records) + tail)
    os.utime(f, (DAY - 86400, DAY - 86400))  # the heartbeat is later: it counts
    return f


def all_records(path: Path) -> list[dict[str, object]]:
    out = []
    for f in sorted(path.glob("cdr-*.jsonl")):
        out += [json.loads(x) for x in f.read_text().splitlines()]
    return out


def test_open_call_is_closed_at_the_heartbeat(tmp_path: Path) -> None:
    cfg = CdrConfig(path=str(tmp_path))
    s1, e1 = call(1, DAY + 86400 - 3600)  # ended normally
    s2, _ = call(2, DAY + 86400 - 1800)  # answered over midnight, open at the crash
    s3, _ = call(3, DAY + 86400 + 60)  # answered after midnight, open
    _, e4 = call(4, DAY + 86400 + 100, talk=None)  # never answered: end record only
    write_day(tmp_path, "2026-11-28", [s1, e1, s2])
    write_day(tmp_path, "2026-11-29", [s3, e4])
    alive = DAY + 86400 + 300
    write_heartbeat(str(tmp_path), alive)

    assert recover(cfg, NOW) == 2
    ends = {r["id"]: r for r in all_records(tmp_path) if r["kind"] == "end"}
    for s in (s2, s3):
        e = ends[s.id]
        assert e["end_reason"] == "crash_recovered"
        assert e["status"] == 200
        assert e["end"] == format_ts(alive)
        assert e["duration_ms"] == parse_ms(format_ts(alive)) - parse_ms(s.answer or "")
        assert (e["caller"], e["presentation"], e["start"]) == (s.caller, "restricted", s.start)
    assert ends[e1.id]["end_reason"] == "caller_bye"
    # recovery records go to the day they are written: today's file
    assert len((tmp_path / "cdr-2026-11-29.jsonl").read_text().splitlines()) == 4
    # idempotent: the next start finds nothing open
    assert recover(cfg, NOW + 5) == 0


def test_without_heartbeat_the_last_file_write_counts(tmp_path: Path) -> None:
    s, _ = call(1, DAY + 100)
    f = write_day(tmp_path, "2026-11-28", [s])
    os.utime(f, (DAY + 500.25, DAY + 500.25))
    assert read_heartbeat(str(tmp_path)) is None
    assert recover(CdrConfig(path=str(tmp_path)), NOW) == 1
    (e,) = [r for r in all_records(tmp_path) if r["kind"] == "end"]
    assert e["end"] == "2026-11-28T00:08:20.250Z"


def test_heartbeat_older_than_the_answer(tmp_path: Path) -> None:
    s, _ = call(1, DAY + 1000)
    f = write_day(tmp_path, "2026-11-28", [s])
    os.utime(f, (DAY + 900, DAY + 900))
    write_heartbeat(str(tmp_path), DAY + 999)  # answered between heartbeats
    assert recover(CdrConfig(path=str(tmp_path)), NOW) == 1
    (e,) = [r for r in all_records(tmp_path) if r["kind"] == "end"]
    assert e["duration_ms"] == 0 and e["end"] == e["answer"]


def test_torn_line_never_fails_start_up(tmp_path: Path) -> None:
    s1, e1 = call(1, DAY + 100)
    f = write_day(tmp_path, "2026-11-28", [s1], tail=e1.to_json()[:37])  # end record torn
    write_heartbeat(str(tmp_path), DAY + 200)
    assert recover(CdrConfig(path=str(tmp_path)), NOW) == 1
    assert f.read_text() == s1.to_json() + "\n"  # cut off
    (e,) = [r for r in all_records(tmp_path) if r["kind"] == "end"]
    assert e["id"] == s1.id and e["end_reason"] == "crash_recovered"
    assert e["end"] == format_ts(DAY + 200)  # the repair is no sign of life


def test_nothing_to_recover_on_a_first_start(tmp_path: Path) -> None:
    assert recover(CdrConfig(path=str(tmp_path / "new")), NOW) == 0


def test_work_is_bounded_to_the_last_days(tmp_path: Path) -> None:
    old_day = DAY - (LOOKBACK_DAYS + 1) * 86400
    s_old, _ = call(1, old_day + 100)
    s_new, _ = call(2, DAY + 100)
    write_day(tmp_path, "2026-11-25", [s_old])
    write_day(tmp_path, "2026-11-28", [s_new])
    write_heartbeat(str(tmp_path), DAY + 300)
    assert recover(CdrConfig(path=str(tmp_path)), NOW) == 1
    assert [r["id"] for r in all_records(tmp_path) if r["kind"] == "end"] == [s_new.id]


def test_calls_of_the_running_process_are_not_touched(tmp_path: Path) -> None:
    s, _ = call(1, NOW + 10)  # answered after this process started
    write_day(tmp_path, "2026-11-29", [s])
    write_heartbeat(str(tmp_path), NOW + 20)
    assert recover(CdrConfig(path=str(tmp_path)), NOW) == 0


def test_recovery_needs_the_lock(tmp_path: Path) -> None:
    lock = DirLock(str(tmp_path))
    try:
        with pytest.raises(StateError):
            recover(CdrConfig(path=str(tmp_path)), NOW)
    finally:
        lock.release()
