"""Retention: whole day files older than retention_days go; purge and its dry run."""

from __future__ import annotations

import io
from datetime import date, timedelta
from pathlib import Path

from sipguard.cdr import admin
from sipguard.cdr.file_sink import FileSink
from sipguard.cdr.record import end_record
from sipguard.cdr.retention import cutoff_date, purge
from sipguard.config.model import CdrConfig, Config

NOW = 1795827560.0  # 2026-11-28T00:59:20Z
TODAY = date(2026, 11, 28)


def fill(path: Path, days_back: range, per_day: int = 3) -> None:
    path.mkdir(parents=True, exist_ok=True)
    for back in days_back:
        day = TODAY - timedelta(days=back)
        t = NOW - back * 86400
        lines = []
        for i in range(per_day):
            r = end_record(
                call_id=f"0123abcd{back:012x}{i:012x}",
                trunk_in="customers",
                trunk_out="pbx",
                caller="+31201234567",
                callee="+31207654321",
                presentation="allowed",
                emergency=False,
                start=t,
                answer=t + 1,
                end=t + 2,
                status=200,
                end_reason="callee_bye",
            )
            lines.append(r.to_json() + "\n")
        (path / f"cdr-{day.isoformat()}.jsonl").write_text("".join(lines))


def test_cutoff_is_a_utc_day() -> None:
    assert cutoff_date(NOW, 92) == date(2026, 8, 28)
    assert cutoff_date(NOW, 0) == TODAY
    assert cutoff_date(1795823999.999, 1) == date(2026, 11, 26)  # 23:59:59.999 the day before


def test_purge_removes_whole_old_day_files(tmp_path: Path) -> None:
    fill(tmp_path, range(0, 100))
    (tmp_path / "alive").write_text("x")
    (tmp_path / "notes.txt").write_text("x")
    sink = FileSink(CdrConfig(path=str(tmp_path)))
    summary = purge(sink, NOW, 92, dry_run=False)
    assert summary.cutoff == date(2026, 8, 28)
    assert len(summary.items) == 100 - 93  # days 93..99 back
    assert summary.records == 7 * 3
    left = sorted(p.name for p in tmp_path.iterdir())
    assert left[0] == "alive"
    assert "cdr-2026-08-28.jsonl" in left  # 92 days back: kept
    assert "cdr-2026-08-27.jsonl" not in left
    assert len([n for n in left if n.startswith("cdr-")]) == 93
    assert "notes.txt" in left
    # again: nothing more
    assert purge(sink, NOW, 92, dry_run=False).items == []


def test_dry_run_removes_nothing(tmp_path: Path) -> None:
    fill(tmp_path, range(90, 95))
    before = sorted(p.name for p in tmp_path.iterdir())
    summary = purge(FileSink(CdrConfig(path=str(tmp_path))), NOW, 92, dry_run=True)
    names = [Path(p).name for p, _ in summary.items]
    assert names == ["cdr-2026-08-26.jsonl", "cdr-2026-08-27.jsonl"]
    assert summary.records == 6
    assert sorted(p.name for p in tmp_path.iterdir()) == before


def test_the_file_being_written_is_never_purged(tmp_path: Path) -> None:
    sink = FileSink(CdrConfig(path=str(tmp_path)), clock=lambda: NOW, writable=True)
    fill(tmp_path, range(0, 1))
    summary = purge(sink, NOW, 0, dry_run=False)  # retention 0: everything before today
    assert summary.items == []
    sink.close()


def config(path: Path, retention: int = 92) -> Config:
    return Config(
        source="<test>",
        listen=(),
        trunks={},
        cdr=CdrConfig(path=str(path), retention_days=retention),
    )


def test_cli_purge_says_what_it_removed(tmp_path: Path) -> None:
    fill(tmp_path, range(91, 95), per_day=2)
    out = io.StringIO()
    assert admin.purge(config(tmp_path), dry_run=True, now=NOW, out=out) == 0
    text = out.getvalue()
    assert "would remove records from before 2026-08-28" in text
    assert "would remove 2 files, 4 records in total" in text
    assert f"would remove {tmp_path}/cdr-2026-08-26.jsonl (2 records)" in text
    assert len(list(tmp_path.glob("cdr-*"))) == 4

    out = io.StringIO()
    assert admin.purge(config(tmp_path), dry_run=False, now=NOW, out=out) == 0
    assert "removed 2 files, 4 records in total" in out.getvalue()
    assert len(list(tmp_path.glob("cdr-*"))) == 2

    out = io.StringIO()
    assert admin.purge(config(tmp_path), now=NOW, out=out) == 0
    assert "nothing to remove" in out.getvalue()
