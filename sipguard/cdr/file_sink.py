"""The file sink (the embedded default): one JSON line per record, one file per UTC day.

Files are ``<cdr.path>/cdr-YYYY-MM-DD.jsonl``, named after the UTC day on which the
records were *written* (not the day of the call): the file being appended to is always
today's, a past day's file is never opened for writing again (not after a restart
either: a clock up to a day behind the newest file keeps writing to that file), and
retention can delete whole files. A call's start and end records may therefore sit in
two files (a call over midnight). Only the newest file may end in a torn line after a
crash; the writer cuts it off when it opens the sink.
"""

from __future__ import annotations

import logging
import os
import re
import time
from collections.abc import Callable, Iterator, Sequence
from datetime import UTC, date, datetime, timedelta
from typing import Final

from sipguard.cdr.jsonl import (
    AppendFile,
    count_lines,
    encode,
    ensure_dir,
    read_records,
    repair_tail,
)
from sipguard.cdr.record import CdrRecord, ts_day
from sipguard.cdr.sink import Clock, PurgeSummary, SinkError, WriteResult
from sipguard.config.model import CdrConfig

log = logging.getLogger("sipguard.cdr")

# At start-up, how far the clock may be behind the newest day file and records still go
# there (a restart soon after midnight on a clock that is a little behind).
MAX_CLOCK_LAG: Final = timedelta(days=1)
_DAY_FILE_RE: Final = re.compile(r"cdr-(\d{4}-\d{2}-\d{2})\.jsonl")


def day_file_name(day: date) -> str:
    return f"cdr-{day.isoformat()}.jsonl"


def day_files(path: str) -> list[tuple[date, str]]:
    """The day files under ``path``, oldest first, as (day, full path)."""
    try:
        names = os.listdir(path)
    except FileNotFoundError:
        return []
    out: list[tuple[date, str]] = []
    for name in names:
        m = _DAY_FILE_RE.fullmatch(name)
        if m is None:
            continue
        try:
            day = date.fromisoformat(m.group(1))
        except ValueError:
            continue
        out.append((day, os.path.join(path, name)))
    out.sort()
    return out


def _in_range(rec: CdrRecord, since: str | None, until: str | None) -> bool:
    return (since is None or rec.start >= since) and (until is None or rec.start < until)


class FileSink:
    """JSON-lines day files under ``cdr.path``; see the module docstring."""

    name = "file"

    def __init__(
        self,
        cfg: CdrConfig,
        *,
        clock: Clock = time.time,
        writable: bool = False,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self._dir = cfg.path
        self._policy = cfg.fsync
        self._clock = clock
        self._monotonic = monotonic
        self._writable = writable
        self._cur: AppendFile | None = None
        # the newest day written to: the file being appended to, or at start-up the newest
        # file there is (a clock behind it, after a restart, must not reopen an older one)
        self._cur_day: date | None = None
        if writable:
            ensure_dir(self._dir)
            files = day_files(self._dir)
            if files:
                repair_tail(files[-1][1])  # the file a crash may have torn
                newest = files[-1][0]
                today = datetime.fromtimestamp(clock(), UTC).date()
                if newest - today <= MAX_CLOCK_LAG:
                    self._cur_day = newest
                else:  # a file from a clock that was far ahead: it would hold records
                    # beyond the retention until that day; follow the clock instead
                    log.warning(
                        "cdr: the newest CDR file (%s) is %d days ahead of the clock",
                        os.path.basename(files[-1][1]),
                        (newest - today).days,
                    )

    # -- writing -------------------------------------------------------------------------

    def _today(self) -> date:
        day = datetime.fromtimestamp(self._clock(), UTC).date()
        if self._cur_day is not None and day < self._cur_day:
            return self._cur_day  # the clock stepped back: never reopen a past day's file
        return day

    def write_batch(self, records: Sequence[CdrRecord]) -> WriteResult:
        if not self._writable:
            raise ValueError("sink opened read-only")
        if not records:
            return WriteResult()
        data = encode(list(records))
        try:
            day = self._today()
            if self._cur is None or day != self._cur_day:
                self._open(day)
            assert self._cur is not None
            self._cur.write(data)
        except OSError as exc:
            raise SinkError(f"cannot write CDR file: {exc}") from exc
        return WriteResult(written=len(records))

    def _open(self, day: date) -> None:
        if self._cur is not None:
            old, self._cur = self._cur, None
            old.close()  # the past day's file: fsynced (policy permitting), never reopened
        self._cur = AppendFile(
            os.path.join(self._dir, day_file_name(day)), self._policy, monotonic=self._monotonic
        )
        self._cur_day = day

    def maintain(self) -> WriteResult:
        if self._cur is not None:
            try:
                self._cur.tick()
            except OSError as exc:
                log.error("cdr: fsync of %s failed: %s", self._cur.path, exc)
        return WriteResult()

    # -- reading -------------------------------------------------------------------------

    def open_calls(self, since: str, until: str, instance: str) -> list[CdrRecord]:
        # The files are local to this instance: every open call in them is ours.
        first = ts_day(since)
        starts: dict[str, CdrRecord] = {}
        for day, file in day_files(self._dir):
            if day < first:  # written before `since`: holds no start answered after it
                continue
            for rec in read_records(file):
                if rec.kind == "start":
                    if rec.answer is not None and since <= rec.answer <= until:
                        starts[rec.id] = rec
                else:
                    starts.pop(rec.id, None)
        return sorted(starts.values(), key=lambda r: (r.answer or "", r.id))

    def last_activity(self) -> float | None:
        files = day_files(self._dir)
        if not files:
            return None
        try:
            return os.stat(files[-1][1]).st_mtime
        except OSError:
            return None

    def iter_records(
        self, since: str | None, until: str | None, numbers: frozenset[str] | None = None
    ) -> Iterator[CdrRecord]:
        # A record is written after its call started: no file older than `since` holds one.
        first = ts_day(since) if since is not None else None
        for day, file in day_files(self._dir):
            if first is not None and day < first:
                continue
            for rec in read_records(file):
                if not _in_range(rec, since, until):
                    continue
                if numbers is not None and rec.caller not in numbers and rec.callee not in numbers:
                    continue
                yield rec

    # -- retention -----------------------------------------------------------------------

    def purge(self, before: date, dry_run: bool) -> PurgeSummary:
        summary = PurgeSummary(cutoff=before, dry_run=dry_run)
        current = self._cur.path if self._cur is not None else None
        for day, file in day_files(self._dir):
            if day >= before or file == current:
                continue
            try:
                n = count_lines(file)
                if not dry_run:
                    os.remove(file)
            except FileNotFoundError:
                continue
            except OSError as exc:
                raise SinkError(f"cannot purge {file}: {exc}") from exc
            summary.items.append((file, n))
        return summary

    def close(self) -> None:
        if self._cur is not None:
            cur, self._cur = self._cur, None
            cur.close()
