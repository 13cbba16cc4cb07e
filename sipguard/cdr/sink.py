"""The CDR sink interface (a small Protocol) and the registry of sinks by name.

A sink stores records. Its methods block (file or database I/O) and are called from the
writer's worker thread or from the command line, never on the SIP event loop. A sink is
opened either *writable* (by the one process that writes: it may repair, create, append)
or read-only (``cdr export``/``cdr purge`` while the proxy runs: it changes nothing but
what purge deletes).

The registry (:data:`sipguard.cdr.registry.SINKS`, :func:`~sipguard.cdr.registry.open_sink`)
maps ``cdr.sink`` to an implementation.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import date
from typing import Protocol, runtime_checkable

from sipguard.cdr.record import CdrRecord

Clock = Callable[[], float]


class SinkError(Exception):
    """A sink could not take or give records now; the caller keeps them and retries."""


class SinkUnavailableError(SinkError):
    """The storage behind a sink (the database) cannot be reached."""


class SpoolFullError(SinkError):
    """The postgres sink's spool is full and ``on_spool_full: refuse``: ``remaining`` are the
    records of the batch that were neither written nor spooled (keep them, retry later);
    ``result`` counts what happened to the others."""

    def __init__(self, remaining: Sequence[CdrRecord], result: WriteResult) -> None:
        super().__init__(f"CDR spool full: {len(remaining)} records waiting")
        self.remaining = list(remaining)
        self.result = result


@dataclass(slots=True)
class WriteResult:
    """What a sink did with records: stored for good, put in the spool, or dropped."""

    written: int = 0
    spooled: int = 0
    dropped: int = 0

    def add(self, other: WriteResult) -> None:
        self.written += other.written
        self.spooled += other.spooled
        self.dropped += other.dropped


@dataclass(slots=True)
class PurgeSummary:
    """What a purge removed (or, dry run, would remove): ``items`` are (what, records)."""

    cutoff: date
    dry_run: bool
    items: list[tuple[str, int]] = field(default_factory=list)

    @property
    def records(self) -> int:
        return sum(n for _, n in self.items)


class Sink(Protocol):
    """Where records go. All methods block; none is called on the event loop."""

    name: str

    def write_batch(self, records: Sequence[CdrRecord]) -> WriteResult:
        """Store records in order, durable as ``cdr.fsync`` says. Raises SinkError (the
        caller keeps the records and retries; a retried record is never doubled)."""

    def maintain(self) -> WriteResult:
        """About once a second while idle: a due fsync, delivering spooled records."""

    def open_calls(self, since: str, until: str, instance: str) -> list[CdrRecord]:
        """Start records with no end record, answered in ``[since, until]`` (record
        timestamps), oldest first: the calls a crash left open. A shared store (postgres)
        only returns ids that begin with ``instance``. SinkUnavailableError if it cannot tell."""

    def last_activity(self) -> float | None:
        """Epoch seconds of the last write this sink can see evidence of (file mtimes)."""

    def iter_records(
        self, since: str | None, until: str | None, numbers: frozenset[str] | None = None
    ) -> Iterator[CdrRecord]:
        """Records whose call ``start`` is in ``[since, until)`` (None: open), where
        ``numbers`` (if given) holds the caller or the callee."""

    def purge(self, before: date, dry_run: bool) -> PurgeSummary:
        """Delete the records of the UTC days before ``before`` (dry run: count them)."""

    def close(self) -> None:
        """Flush, fsync (unless ``fsync: never``) and release everything."""


@runtime_checkable
class Spooling(Protocol):
    """A sink that keeps records in an on-disk spool while its store is down."""

    def spool_usage(self) -> tuple[int, int]:
        """Bytes in the spool now, and the most it may hold."""
