"""The CDR writer: the one object the B2BUA and ``net/`` use to write CDRs.

Interface (everything else is internal)::

    writer = CdrWriter(config.cdr, metrics)      # opens the sink, locks cdr.path
    writer.start()                               # worker thread; crash recovery runs first
    call_id = writer.new_call_id()               # sipguard's own id for a new call
    writer.submit(record)                        # on the event loop: never blocks or raises
    writer.accepting_calls()                     # False: refuse new non-emergency calls (503)
    writer.close(timeout)                        # at shutdown: write everything, stop
    await writer.aclose(timeout)                 # the same, from a coroutine

``submit`` appends to an in-memory queue that one worker thread drains into the sink in
batches, so a slow disk or database delays records, never calls. The first record
submitted wakes the worker, which takes the queue :data:`BATCH_SECONDS` later: at most one
wake per batch, not one per record. The worker also keeps
the heartbeat (``<cdr.path>/alive``, every :data:`HEARTBEAT_SECONDS`), lets the sink
fsync and deliver its spool (every second), runs retention when it starts and then once
a day, and, before anything else, closes the calls a crash left open (see
:mod:`sipguard.cdr.recovery`; with PostgreSQL down it tries again until it can).

When the sink cannot take records (disk error, or PostgreSQL down with a full spool and
``on_spool_full: refuse``) they stay in memory, in order, and are retried every second;
``accepting_calls()`` is False meanwhile (and whenever :data:`MAX_QUEUE` records wait), so
the calls that are already up can still end and be billed. With ``on_spool_full: drop``
the writer goes on taking calls and, past :data:`MAX_QUEUE` waiting records, drops and
counts them (``sipguard_cdr_records_total{result="dropped"}``).

Memory stays bounded under either policy: while calls are refused, every refused attempt
still makes an end record, so a flood of INVITEs during a long outage would grow the
queue without end. Past ``HARD_QUEUE_FACTOR * max_queue`` waiting records, ``submit``
drops (and counts) the end records of attempts that were never answered and are not
emergency calls (duration 0: nothing to bill); the records of answered calls and of
emergency calls are always kept.

Metrics: ``sipguard_cdr_records_total{sink, result}`` with result ``written`` (stored for
good: in the file, or in the database), ``spooled`` (waiting in the spool), ``dropped``,
and ``failed`` (records of a write attempt that failed; they are retried).

A change of the ``cdr`` section takes effect at the next restart, not on reload.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Final

from sipguard.cdr.record import CdrRecord, make_call_id
from sipguard.cdr.recovery import crash_records, last_alive
from sipguard.cdr.registry import open_sink
from sipguard.cdr.retention import purge
from sipguard.cdr.sink import (
    Clock,
    Sink,
    SinkError,
    SinkUnavailableError,
    SpoolFullError,
    Spooling,
    WriteResult,
)
from sipguard.cdr.state import DirLock, instance_tag, write_heartbeat
from sipguard.config.model import CdrConfig
from sipguard.metrics import Metrics

log = logging.getLogger("sipguard.cdr")

HEARTBEAT_SECONDS: Final = 2.0
MAINTAIN_SECONDS: Final = 1.0
RETRY_SECONDS: Final = 1.0
# woken by a record, the worker lets this long pass before it takes the queue, so that it
# takes records in batches: woken for every record, it made the event loop hand the GIL
# over twice per record. 50 ms rather than 5: at 150 calls/s, with 5 ms, the worker woke
# about 136 times a second for one to three records and took 2.9% of a core (57 ticks in
# 20 s); with 50 ms, 0.8% (16-17 ticks). It is also what a SIGKILL can lose of records not
# yet written (crash recovery then closes those calls).
BATCH_SECONDS: Final = 0.05
RECOVERY_RETRY_SECONDS: Final = 5.0
RETENTION_SECONDS: Final = 24 * 3600.0
RETENTION_RETRY_SECONDS: Final = 3600.0
MAX_BATCH: Final = 1000
MAX_QUEUE: Final = 100_000
HARD_QUEUE_FACTOR: Final = 2
RESULTS: Final = ("written", "spooled", "dropped", "failed")


class CdrWriter:
    """Writes CDR records off the event loop; see the module docstring."""

    def __init__(
        self,
        cfg: CdrConfig,
        metrics: Metrics | None = None,
        *,
        clock: Clock = time.time,
        sink: Sink | None = None,
        recover: bool = True,
        retention: bool = True,
        max_queue: int = MAX_QUEUE,
    ) -> None:
        self._cfg = cfg
        self._metrics = metrics
        self._clock = clock
        self._do_recover = recover
        self._do_retention = retention
        self._max_queue = max_queue
        self._hard_queue = HARD_QUEUE_FACTOR * max_queue
        self._shedding = False
        self._count_lock = threading.Lock()
        self._lock = DirLock(cfg.path)
        try:
            self.instance = instance_tag(cfg.path)
            self._sink: Sink = (
                sink if sink is not None else open_sink(cfg, clock=clock, writable=True)
            )
        except BaseException:
            self._lock.release()
            raise
        self.sink_name = self._sink.name
        self.counts: dict[str, int] = dict.fromkeys(RESULTS, 0)
        self._queue: deque[CdrRecord] = deque()
        self._backlog: list[CdrRecord] = []  # taken from the queue, not yet stored: in order
        self._wake = threading.Event()
        self._closing = threading.Event()
        self._closed = False
        self._thread: threading.Thread | None = None
        self._refusing = False
        self._recovery: tuple[float, float] | None = None
        self._recovery_at = 0.0

    # -- the event-loop side -------------------------------------------------------------

    def new_call_id(self) -> str:
        """sipguard's own id for a new call (this instance's tag and 96 random bits)."""
        return make_call_id(self.instance)

    def submit(self, record: CdrRecord) -> None:
        """Queue a record for writing. Never blocks, never raises."""
        try:
            if self._closed:
                self._count("failed", 1)
                log.error("cdr: record submitted after close; not written")
                return
            if (
                record.answer is None
                and not record.emergency
                and len(self._queue) + len(self._backlog) >= self._hard_queue
            ):
                self._shed()
                return
            self._queue.append(record)
            if not self._wake.is_set():  # set until the worker takes the queue: one wake
                self._wake.set()
        except Exception:
            log.exception("cdr: submit failed")

    def _shed(self) -> None:
        """Drop the record of an unanswered attempt: too many records wait (memory)."""
        self._count("dropped", 1)
        if not self._shedding:
            self._shedding = True
            log.error(
                "cdr: %d records wait to be stored; dropping the records of unanswered "
                "call attempts until they can be",
                self.pending(),
            )

    def accepting_calls(self) -> bool:
        """False while records cannot be stored, or too many wait (``on_spool_full:
        refuse``); with ``drop`` always True."""
        if self._cfg.on_spool_full == "drop":
            return True
        return not self._refusing and self.pending() < self._max_queue

    def pending(self) -> int:
        """Records submitted and not yet stored."""
        return len(self._queue) + len(self._backlog)

    def start(self) -> None:
        """Start the worker thread. Reads the last heartbeat first, for crash recovery."""
        if self._thread is not None:
            raise RuntimeError("CdrWriter already started")
        if self._do_recover:
            alive = last_alive(self._cfg, self._sink)
            if alive is not None:
                self._recovery = (alive, self._clock())
        self._thread = threading.Thread(target=self._main, name="sipguard-cdr", daemon=True)
        self._thread.start()

    def close(self, timeout: float = 10.0) -> bool:
        """Write everything submitted, close the sink, stop. Blocks up to ``timeout``
        seconds; returns False (and logs) if records were still waiting then."""
        self._closed = True
        self._closing.set()
        self._wake.set()
        if self._thread is None:
            self._finish()
            return True
        self._thread.join(timeout)
        if self._thread.is_alive():
            log.error("cdr: %d records not yet stored at shutdown", self.pending())
            return False
        return True

    async def aclose(self, timeout: float = 10.0) -> bool:
        """:meth:`close` from a coroutine, without blocking the event loop."""
        return await asyncio.to_thread(self.close, timeout)

    # -- the worker thread ---------------------------------------------------------------

    def _main(self) -> None:
        next_maint = next_hb = 0.0
        next_retention = 0.0 if self._do_retention else float("inf")
        retry_at = 0.0
        try:
            while True:
                now = time.monotonic()
                if self._recovery is not None and now >= self._recovery_at:
                    self._recover(now)
                if self.pending() and now >= retry_at and not self._write_some():
                    retry_at = now + RETRY_SECONDS
                if now >= next_maint:
                    self._step("maintain", self._maintain)
                    next_maint = now + MAINTAIN_SECONDS
                if now >= next_hb:
                    self._step("heartbeat", self._heartbeat)
                    next_hb = now + HEARTBEAT_SECONDS
                if now >= next_retention:
                    ok = self._step("retention", self._retention)
                    next_retention = now + (RETENTION_SECONDS if ok else RETENTION_RETRY_SECONDS)
                if self._closing.is_set() and not self.pending():
                    break
                if self._queue and now >= retry_at:
                    continue  # more to write now
                deadline = min(next_maint, next_hb, next_retention)
                if self.pending():
                    deadline = min(deadline, retry_at)
                if self._wake.wait(max(0.0, min(deadline - time.monotonic(), 1.0))):
                    self._closing.wait(BATCH_SECONDS)  # let a batch gather
                self._wake.clear()
        except BaseException:
            log.exception("cdr: writer thread failed")
            raise
        finally:
            self._finish()

    def _finish(self) -> None:
        self._step("maintain", self._maintain)
        self._step("heartbeat", self._heartbeat)
        try:
            self._sink.close()
        except Exception:
            log.exception("cdr: closing the sink failed")
        self._lock.release()

    def _step(self, what: str, fn: Callable[[], None]) -> bool:
        try:
            fn()
        except (SinkError, OSError) as exc:
            log.error("cdr: %s failed: %s", what, exc)
            return False
        except Exception:
            log.exception("cdr: %s failed", what)
            return False
        return True

    def _write_some(self) -> bool:
        """Store the oldest waiting records; False if the sink could not take them."""
        while len(self._backlog) < MAX_BATCH and self._queue:
            self._backlog.append(self._queue.popleft())
        batch = self._backlog[:MAX_BATCH]
        try:
            result = self._sink.write_batch(batch)
        except SpoolFullError as exc:
            self._account(exc.result)
            del self._backlog[: len(batch) - len(exc.remaining)]
            if not self._refusing:
                log.error("cdr: spool full; refusing new calls until records can be stored")
            self._refusing = True
            return False
        except Exception as exc:
            self._count("failed", len(batch))
            if not isinstance(exc, SinkError):
                log.exception("cdr: writing %d records failed", len(batch))
            else:
                log.error("cdr: writing %d records failed: %s", len(batch), exc)
            if self._cfg.on_spool_full == "refuse":
                self._refusing = True
            else:
                self._drop_excess()
            return False
        del self._backlog[: len(batch)]
        self._account(result)
        if self._shedding and self.pending() < self._max_queue:
            self._shedding = False
        if self._refusing:
            log.warning("cdr: records are stored again; taking new calls")
        self._refusing = False
        return True

    def _drop_excess(self) -> None:
        """Drop the newest records beyond ``max_queue`` (``on_spool_full: drop``)."""
        excess = self.pending() - self._max_queue
        dropped = 0
        while excess > 0 and self._queue:
            self._queue.pop()
            excess -= 1
            dropped += 1
        if excess > 0:
            n = min(excess, len(self._backlog))
            del self._backlog[len(self._backlog) - n :]
            dropped += n
        if dropped:
            self._count("dropped", dropped)
            log.error("cdr: %d records dropped (the sink fails and the queue is full)", dropped)

    def _maintain(self) -> None:
        if self._metrics is not None and isinstance(self._sink, Spooling):
            used, most = self._sink.spool_usage()  # first: maintain() fails while it is down
            self._metrics.cdr_spool_bytes.set(used)
            self._metrics.cdr_spool_max_bytes.set(most)
        self._account(self._sink.maintain())

    def _heartbeat(self) -> None:
        write_heartbeat(self._cfg.path, self._clock())

    def _retention(self) -> None:
        summary = purge(self._sink, self._clock(), self._cfg.retention_days, dry_run=False)
        if summary.items:
            log.info(
                "cdr: retention removed %d records from before %s",
                summary.records,
                summary.cutoff.isoformat(),
            )

    def _recover(self, now: float) -> None:
        assert self._recovery is not None
        alive, until = self._recovery
        try:
            records = crash_records(self._sink, alive, until, self.instance)
        except SinkUnavailableError as exc:
            log.warning("cdr: crash recovery waits for the sink: %s", exc)
            self._recovery_at = now + RECOVERY_RETRY_SECONDS
            return
        except Exception:
            log.exception("cdr: crash recovery failed")
            self._recovery = None
            return
        self._recovery = None
        if records:
            log.warning("cdr: closing %d calls left open by a crash", len(records))
            self._backlog[:0] = records

    def _account(self, result: WriteResult) -> None:
        self._count("written", result.written)
        self._count("spooled", result.spooled)
        self._count("dropped", result.dropped)

    def _count(self, result: str, n: int) -> None:
        if n <= 0:
            return
        with self._count_lock:  # the event loop (submit) and the worker both count
            self.counts[result] += n
        if self._metrics is not None:
            self._metrics.cdr_records.labels(sink=self.sink_name, result=result).inc(n)
