"""Retention: usage data is kept ``cdr.retention_days`` (92: three months), then deleted.

The cutoff is a UTC day: everything of the days before ``today - retention_days`` goes.
For the file sink that is whole day files (named after the day the records were written);
for PostgreSQL, rows whose call ``start`` is before that day's midnight, deleted in
batches. A record is therefore kept at least ``retention_days`` and at most one day more.
``now`` is always passed in.
"""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta

from sipguard.cdr.sink import PurgeSummary, Sink


def cutoff_date(now_wall: float, retention_days: int) -> date:
    """The first UTC day that is kept at wall-clock time ``now_wall``."""
    if retention_days < 0:
        raise ValueError("retention_days must not be negative")
    today = datetime.fromtimestamp(now_wall, UTC).date()
    return today - timedelta(days=retention_days)


def purge(sink: Sink, now_wall: float, retention_days: int, *, dry_run: bool) -> PurgeSummary:
    """Delete (dry run: count) what ``sink`` holds from before the retention cutoff."""
    return sink.purge(cutoff_date(now_wall, retention_days), dry_run)
