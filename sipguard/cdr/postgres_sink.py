"""The PostgreSQL sink (``cdr.sink: postgres``, ``cdr.dsn``), on asyncpg.

The sink owns a private asyncio event loop and runs asyncpg on it with
``run_until_complete``: its methods block, like the file sink's, and are called from the
writer's worker thread (or the command line), never from the SIP event loop. One
connection, opened on first use and again after a failure; the table is created if it is
missing (:data:`SCHEMA`).

Records are inserted in batches with ``INSERT … ON CONFLICT (id, kind) DO NOTHING``, so
delivering a record twice stores it once. While the database cannot be reached, records
go to the on-disk :class:`~sipguard.cdr.spool.Spool`; once the spool holds anything, new
records queue behind it, so the database receives them in order. After a failure the
database is tried again after ``retry_seconds`` (from :meth:`maintain`, about once a
second). A full spool either refuses (:class:`SpoolFullError`: the writer keeps the records
and stops taking new calls) or drops and counts, as ``cdr.on_spool_full`` says.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Iterator, Sequence
from datetime import UTC, date, datetime
from typing import Any, Final, TypeVar

import asyncpg

from sipguard.cdr.record import FIELDS, INSTANCE_LEN, CdrRecord, datetime_to_ts, ts_to_datetime
from sipguard.cdr.sink import (
    Clock,
    PurgeSummary,
    SinkError,
    SinkUnavailableError,
    SpoolFullError,
    WriteResult,
)
from sipguard.cdr.spool import Spool
from sipguard.config.model import CdrConfig

log = logging.getLogger("sipguard.cdr")

T = TypeVar("T")

TABLE: Final = "sipguard_cdr"
INSERT_BATCH: Final = 1000
DELETE_BATCH: Final = 5000
READ_BATCH: Final = 5000

SCHEMA: Final = f"""\
CREATE TABLE IF NOT EXISTS {TABLE} (
    id           text        NOT NULL,
    kind         text        NOT NULL CHECK (kind IN ('start', 'end')),
    v            smallint    NOT NULL,
    trunk_in     text        NOT NULL,
    trunk_out    text,
    caller       text        NOT NULL,
    callee       text        NOT NULL,
    presentation text        NOT NULL CHECK (presentation IN ('allowed', 'restricted')),
    emergency    boolean     NOT NULL,
    "start"      timestamptz NOT NULL,
    answer       timestamptz,
    "end"        timestamptz,
    duration_ms  bigint,
    status       smallint,
    end_reason   text,
    PRIMARY KEY (id, kind)
);
CREATE INDEX IF NOT EXISTS {TABLE}_start_idx ON {TABLE} ("start");
CREATE INDEX IF NOT EXISTS {TABLE}_caller_idx ON {TABLE} (caller);
CREATE INDEX IF NOT EXISTS {TABLE}_callee_idx ON {TABLE} (callee);
"""

_COLUMNS: Final = ", ".join(f'"{f}"' for f in FIELDS)
_TYPES: Final = {
    "v": "smallint",
    "emergency": "boolean",
    "start": "timestamptz",
    "answer": "timestamptz",
    "end": "timestamptz",
    "duration_ms": "bigint",
    "status": "smallint",
}
_INSERT: Final = (
    f"INSERT INTO {TABLE} ({_COLUMNS}) SELECT * FROM unnest("
    + ", ".join(f"${i}::{_TYPES.get(f, 'text')}[]" for i, f in enumerate(FIELDS, 1))
    + ") ON CONFLICT (id, kind) DO NOTHING"
)
_TIME_FIELDS: Final = frozenset({"start", "answer", "end"})

# Everything that means "the database is not there (now)".
DB_ERRORS: Final = (OSError, asyncpg.PostgresError, asyncpg.InterfaceError, ConnectionError)


def _row_values(records: Sequence[CdrRecord]) -> list[list[Any]]:
    columns: list[list[Any]] = [[] for _ in FIELDS]
    for rec in records:
        for col, name in zip(columns, FIELDS, strict=True):
            value = getattr(rec, name)
            if name in _TIME_FIELDS and value is not None:
                value = ts_to_datetime(value)
            col.append(value)
    return columns


def _record_from_row(row: Any) -> CdrRecord:
    data: dict[str, Any] = {}
    for name in FIELDS:
        value = row[name]
        if isinstance(value, datetime):
            value = datetime_to_ts(value)
        data[name] = value
    return CdrRecord.from_dict(data)


def _midnight(day: date) -> datetime:
    return datetime(day.year, day.month, day.day, tzinfo=UTC)


class PostgresSink:
    name = "postgres"

    def __init__(
        self,
        cfg: CdrConfig,
        *,
        clock: Clock = time.time,
        writable: bool = False,
        monotonic: Callable[[], float] = time.monotonic,
        retry_seconds: float = 1.0,
        connect_timeout: float = 5.0,
        command_timeout: float = 30.0,
    ) -> None:
        if not cfg.dsn:
            raise ValueError("cdr.dsn is required for cdr.sink: postgres")
        self._dsn = cfg.dsn
        self._clock = clock
        self._monotonic = monotonic
        self._writable = writable
        self._drop = cfg.on_spool_full == "drop"
        self._retry = retry_seconds
        self._connect_timeout = connect_timeout
        self._command_timeout = command_timeout
        self._spool = Spool(
            cfg.spool_path, cfg.spool_max_bytes, cfg.fsync, writable=writable, monotonic=monotonic
        )
        self._loop = asyncio.new_event_loop()
        self._conn: Any = None
        self._table_ready = False
        self._down_until = 0.0
        self._down_logged = False

    # -- the database --------------------------------------------------------------------

    def _run(self, make: Callable[[Any], Awaitable[T]]) -> T:
        """Run ``make(connection)`` on the private loop; SinkUnavailableError on any failure."""

        async def go() -> T:
            if self._conn is None or self._conn.is_closed():
                self._conn = await asyncpg.connect(
                    self._dsn, timeout=self._connect_timeout, command_timeout=self._command_timeout
                )
                if self._writable and not self._table_ready:
                    async with self._conn.transaction():
                        await self._conn.execute(
                            f"SELECT pg_advisory_xact_lock(hashtext('{TABLE}'))"
                        )
                        await self._conn.execute(SCHEMA)
                    self._table_ready = True
            return await make(self._conn)

        try:
            result = self._loop.run_until_complete(go())
        except DB_ERRORS as exc:
            self._mark_down(exc)
            raise SinkUnavailableError(f"PostgreSQL: {type(exc).__name__}: {exc}") from exc
        if self._down_logged:
            log.warning("cdr: PostgreSQL is reachable again")
            self._down_logged = False
        return result

    def _mark_down(self, exc: BaseException) -> None:
        self._down_until = self._monotonic() + self._retry
        if not self._down_logged:
            log.error("cdr: PostgreSQL unavailable (%s: %s); spooling", type(exc).__name__, exc)
            self._down_logged = True
        conn, self._conn = self._conn, None
        if conn is not None:
            try:
                conn.terminate()
            except Exception:
                log.debug("cdr: terminating a broken connection failed", exc_info=True)

    def _available(self) -> bool:
        return self._monotonic() >= self._down_until

    def _insert(self, records: Sequence[CdrRecord]) -> None:
        for i in range(0, len(records), INSERT_BATCH):
            columns = _row_values(records[i : i + INSERT_BATCH])

            async def ins(conn: Any, columns: list[list[Any]] = columns) -> None:
                await conn.execute(_INSERT, *columns)

            self._run(ins)

    # -- writing -------------------------------------------------------------------------

    def write_batch(self, records: Sequence[CdrRecord]) -> WriteResult:
        if not self._writable:
            raise ValueError("sink opened read-only")
        result = WriteResult()
        if not records:
            return result
        if not self._spool.empty() and self._available():
            result.add(self._drain())
        if self._spool.empty() and self._available():
            try:
                self._insert(records)
            except SinkUnavailableError:
                pass
            else:
                result.written += len(records)
                return result
        return self._to_spool(records, result)

    def _to_spool(self, records: Sequence[CdrRecord], result: WriteResult) -> WriteResult:
        try:
            taken = self._spool.append(records)
        except OSError as exc:
            raise SinkError(f"cannot write the CDR spool: {exc}") from exc
        result.spooled += taken
        if taken < len(records):
            rest = records[taken:]
            if not self._drop:
                raise SpoolFullError(rest, result)
            result.dropped += len(rest)
            log.error(
                "cdr: spool full (%d bytes): %d records dropped", self._spool.bytes, len(rest)
            )
        return result

    def _drain(self) -> WriteResult:
        """Deliver the spool; what it delivered before a failure still counts."""
        delivered = 0

        def deliver(batch: list[CdrRecord]) -> None:
            nonlocal delivered
            self._insert(batch)
            delivered += len(batch)

        try:
            self._spool.drain(deliver)
        except SinkUnavailableError:
            pass
        except OSError as exc:
            log.error("cdr: spool: %s", exc)
        if delivered:
            log.info("cdr: delivered %d spooled records", delivered)
        return WriteResult(written=delivered)

    def spool_usage(self) -> tuple[int, int]:
        return self._spool.bytes, self._spool.max_bytes

    def maintain(self) -> WriteResult:
        try:
            self._spool.tick()
        except OSError as exc:
            log.error("cdr: spool fsync failed: %s", exc)
        if self._writable and not self._spool.empty() and self._available():
            return self._drain()
        return WriteResult()

    # -- reading -------------------------------------------------------------------------

    def open_calls(self, since: str, until: str, instance: str) -> list[CdrRecord]:
        if self._writable and not self._spool.empty():
            self._drain()
            if not self._spool.empty():
                raise SinkUnavailableError("spooled records wait for PostgreSQL")
        if len(instance) != INSTANCE_LEN:
            raise ValueError("bad instance tag")

        async def q(conn: Any) -> list[Any]:
            rows: list[Any] = await conn.fetch(
                f"SELECT {_COLUMNS} FROM {TABLE} s WHERE s.kind = 'start'"
                " AND s.\"start\" >= $1::timestamptz - interval '1 day'"
                " AND s.answer >= $1 AND s.answer <= $2"
                f" AND left(s.id, {INSTANCE_LEN}) = $3"
                f" AND NOT EXISTS (SELECT 1 FROM {TABLE} e WHERE e.id = s.id AND e.kind = 'end')"
                " ORDER BY s.answer, s.id",
                ts_to_datetime(since),
                ts_to_datetime(until),
                instance,
            )
            return rows

        return [_record_from_row(r) for r in self._run(q)]

    def last_activity(self) -> float | None:
        return None  # the heartbeat file tells; the database's times are the records'

    def iter_records(
        self, since: str | None, until: str | None, numbers: frozenset[str] | None = None
    ) -> Iterator[CdrRecord]:
        conds = ["TRUE"]
        args: list[Any] = []
        if since is not None:
            args.append(ts_to_datetime(since))
            conds.append(f'"start" >= ${len(args)}')
        if until is not None:
            args.append(ts_to_datetime(until))
            conds.append(f'"start" < ${len(args)}')
        if numbers is not None:
            args.append(sorted(numbers))
            conds.append(
                f"(caller = ANY(${len(args)}::text[]) OR callee = ANY(${len(args)}::text[]))"
            )
        where = " AND ".join(conds)
        seen: set[tuple[str, str]] = set()
        after: tuple[datetime, str, str] | None = None
        while True:
            page_args = list(args)
            page_where = where
            if after is not None:
                page_args.extend(after)
                n = len(page_args)
                page_where += f' AND ("start", id, kind) > (${n - 2}, ${n - 1}, ${n})'
            sql = (
                f"SELECT {_COLUMNS} FROM {TABLE} WHERE {page_where}"
                f' ORDER BY "start", id, kind LIMIT {READ_BATCH}'
            )

            async def page(
                conn: Any, sql: str = sql, page_args: list[Any] = page_args
            ) -> list[Any]:
                try:
                    rows: list[Any] = await conn.fetch(sql, *page_args)
                except asyncpg.UndefinedTableError:
                    return []
                return rows

            rows = self._run(page)
            for row in rows:
                rec = _record_from_row(row)
                seen.add(rec.key)
                yield rec
            if len(rows) < READ_BATCH:
                break
            last = rows[-1]
            after = (last["start"], last["id"], last["kind"])
        # Records still waiting in the spool are usage data too.
        for rec in self._spool.iter_records():
            if rec.key in seen:
                continue
            if since is not None and rec.start < since:
                continue
            if until is not None and rec.start >= until:
                continue
            if numbers is not None and rec.caller not in numbers and rec.callee not in numbers:
                continue
            seen.add(rec.key)
            yield rec

    # -- retention -----------------------------------------------------------------------

    def purge(self, before: date, dry_run: bool) -> PurgeSummary:
        summary = PurgeSummary(cutoff=before, dry_run=dry_run)
        cutoff = _midnight(before)

        async def count(conn: Any) -> int:
            try:
                n: int = await conn.fetchval(
                    f'SELECT count(*) FROM {TABLE} WHERE "start" < $1', cutoff
                )
            except asyncpg.UndefinedTableError:
                return 0
            return n

        async def delete(conn: Any) -> int:
            try:
                status: str = await conn.execute(
                    f"DELETE FROM {TABLE} WHERE ctid IN (SELECT ctid FROM {TABLE}"
                    f' WHERE "start" < $1 LIMIT {DELETE_BATCH})',
                    cutoff,
                )
            except asyncpg.UndefinedTableError:
                return 0
            return int(status.rsplit(maxsplit=1)[-1])

        if dry_run:
            total = self._run(count)
        else:
            total = 0
            while True:
                n = self._run(delete)
                total += n
                if n < DELETE_BATCH:
                    break
        if total:
            summary.items.append((f"table {TABLE}", total))
        return summary

    def close(self) -> None:
        try:
            self._spool.close()
        finally:
            conn, self._conn = self._conn, None
            if conn is not None and not self._loop.is_closed():
                try:
                    self._loop.run_until_complete(asyncio.wait_for(conn.close(), 5.0))
                except Exception:
                    conn.terminate()
            if not self._loop.is_closed():
                self._loop.close()
