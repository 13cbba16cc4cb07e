"""Crash recovery: close the answered calls that a crash left without an end record.

A ``start`` record is written when a call is answered. After a crash, every start record
with no end record (answered within the last few days before the proxy was last known
alive) gets an ``end`` record with ``end_reason: crash_recovered``, ``status: 200`` and
``end`` = the last moment the proxy was known alive: the heartbeat the writer keeps in
``<cdr.path>/alive`` (rewritten every two seconds), or, if later, the last modification
of a CDR file. The duration runs from the answer to that moment (0 if the call was
answered after it). The work is bounded: only the day files (or rows) of the last
:data:`LOOKBACK_DAYS` days before that moment are read.

:class:`~sipguard.cdr.writer.CdrWriter` runs this by itself when it starts (and, with
PostgreSQL down, again until the database answers); :func:`recover` is the same thing as
one blocking call, for tools and tests.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime, timedelta

from sipguard.cdr.record import CdrRecord, end_of, epoch_ms, format_ts
from sipguard.cdr.registry import open_sink
from sipguard.cdr.sink import Clock, Sink
from sipguard.cdr.state import DirLock, instance_tag, read_heartbeat
from sipguard.config.model import CdrConfig

log = logging.getLogger("sipguard.cdr")

LOOKBACK_DAYS = 2


def last_alive(cfg: CdrConfig, sink: Sink) -> float | None:
    """The last moment (epoch seconds) the proxy is known to have been alive, or None."""
    seen = [t for t in (read_heartbeat(cfg.path), sink.last_activity()) if t is not None]
    return max(seen) if seen else None


def crash_records(sink: Sink, alive: float, until: float, instance: str) -> list[CdrRecord]:
    """The ``crash_recovered`` end records for the calls open in ``sink`` that were
    answered before ``until`` (this process's start), ended at ``alive``. Raises
    SinkUnavailableError if the sink cannot tell now."""
    alive = min(alive, until)
    first_day = datetime.fromtimestamp(alive, UTC).date() - timedelta(days=LOOKBACK_DAYS)
    since = first_day.isoformat() + "T00:00:00.000Z"
    alive_ms = epoch_ms(alive)
    return [
        end_of(rec, alive_ms, status=200, end_reason="crash_recovered")
        for rec in sink.open_calls(since, format_ts(until), instance)
    ]


def recover(cfg: CdrConfig, now_wall: float, *, clock: Clock | None = None) -> int:
    """Close the calls a crash left open, now, and return how many end records were
    written. Takes the CDR directory's lock (StateError if a writer holds it); raises
    SinkError if the sink cannot take the records (PostgreSQL down and the spool full).
    Call it before :meth:`CdrWriter.start`, or leave it to the writer."""
    lock = DirLock(cfg.path)
    try:
        sink = open_sink(cfg, clock=clock or (lambda: now_wall), writable=True)
        try:
            alive = last_alive(cfg, sink)
            if alive is None:
                return 0
            records = crash_records(sink, alive, now_wall, instance_tag(cfg.path))
            if records:
                sink.write_batch(records)
                log.warning("cdr: closed %d calls left open by a crash", len(records))
            return len(records)
        finally:
            sink.close()
    finally:
        lock.release()
