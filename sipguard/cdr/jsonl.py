"""JSON-lines files shared by the file sink and the postgres spool: appending with an fsync
policy, reading back while tolerating a torn last line, and repairing one.

Appends go through the raw file descriptor (``os.write``), so a batch is in the kernel's
page cache when the call returns: a crash of the process (even ``SIGKILL``) loses nothing
that was written; only a crash of the machine can lose what was not yet fsynced.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from collections.abc import Callable, Iterator
from typing import Final, Literal

from sipguard.cdr.record import CdrRecord

log = logging.getLogger("sipguard.cdr")

FsyncPolicy = Literal["always", "batch", "never"]
BATCH_FSYNC_SECONDS: Final = 1.0
FILE_MODE: Final = 0o640
DIR_MODE: Final = 0o750
_CHUNK: Final = 64 * 1024


def ensure_dir(path: str) -> None:
    os.makedirs(path, mode=DIR_MODE, exist_ok=True)


def fsync_dir(path: str) -> None:
    """Make a new directory entry durable (best effort: not every filesystem allows it)."""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


class AppendFile:
    """One file opened for appending, with the ``cdr.fsync`` policy:

    ``always``: fsync after every batch; ``batch``: fsync at most once a second (a due
    fsync also happens from :meth:`tick` and on close); ``never``: leave it to the kernel.
    """

    def __init__(
        self,
        path: str,
        policy: FsyncPolicy,
        *,
        monotonic: Callable[[], float] = time.monotonic,
        mode: int = FILE_MODE,
    ) -> None:
        self.path = path
        self.policy = policy
        self._monotonic = monotonic
        created = not os.path.exists(path)
        repair_tail(path)
        self._fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, mode)
        self._dirty = False
        self._last_sync = monotonic()
        if created and policy != "never":
            fsync_dir(os.path.dirname(path) or ".")

    def write(self, data: bytes) -> None:
        """Append ``data`` whole, or (OSError) not at all: a failed write is cut back off,
        so that a retry neither doubles records nor leaves a torn line. With ``always``
        the fsync is part of the write (a failed fsync cuts the batch off too: the caller
        keeps and retries it); with ``batch`` a failed fsync is logged and tried again at
        the next :meth:`tick`, the records being written (a retry would double them)."""
        before = os.fstat(self._fd).st_size
        view = memoryview(data)
        try:
            while view:
                n = os.write(self._fd, view)
                view = view[n:]
            if self.policy == "always":
                os.fsync(self._fd)
        except OSError:
            with contextlib.suppress(OSError):
                os.ftruncate(self._fd, before)
            raise
        if self.policy == "always":
            self._dirty = False
            self._last_sync = self._monotonic()
            return
        self._dirty = True
        if self.policy == "batch":
            try:
                self.tick()
            except OSError as exc:
                log.error("cdr: fsync of %s failed: %s", os.path.basename(self.path), exc)

    def tick(self) -> None:
        """A due ``batch`` fsync."""
        if (
            self.policy == "batch"
            and self._dirty
            and self._monotonic() - self._last_sync >= BATCH_FSYNC_SECONDS
        ):
            self.sync()

    def sync(self) -> None:
        os.fsync(self._fd)
        self._dirty = False
        self._last_sync = self._monotonic()

    def size(self) -> int:
        return os.fstat(self._fd).st_size

    def close(self) -> None:
        if self._fd < 0:
            return
        try:
            if self._dirty and self.policy != "never":
                self.sync()
        finally:
            os.close(self._fd)
            self._fd = -1


def repair_tail(path: str) -> int:
    """Cut a torn last line (bytes after the last newline, left by a crash mid-write) off
    ``path``. Returns the number of bytes removed; never raises for a missing file. The
    file keeps its modification time: crash recovery reads it as the last sign of life."""
    try:
        fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
    except FileNotFoundError:
        return 0
    try:
        st = os.fstat(fd)
        size = st.st_size
        pos = size
        keep = 0
        while pos > 0:
            start = max(0, pos - _CHUNK)
            chunk = os.pread(fd, pos - start, start)
            i = chunk.rfind(b"\n")
            if i >= 0:
                keep = start + i + 1
                break
            pos = start
        if keep == size:
            return 0
        os.ftruncate(fd, keep)
        os.fsync(fd)
        with contextlib.suppress(OSError):
            os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
        log.warning(
            "cdr: removed a torn last line (%d bytes) from %s", size - keep, os.path.basename(path)
        )
        return size - keep
    finally:
        os.close(fd)


def read_records(path: str) -> Iterator[CdrRecord]:
    """The records of one JSON-lines file, in order. A line that is not a record is
    skipped and logged; an unterminated last line (being written, or torn) is ignored."""
    try:
        f = open(path, "rb")  # noqa: SIM115 - closed in finally; a generator
    except FileNotFoundError:
        return
    bad = 0
    try:
        for lineno, line in enumerate(f, 1):
            if not line.endswith(b"\n"):
                break
            if not line.strip():
                continue
            try:
                yield CdrRecord.from_json(line)
            except (ValueError, TypeError):
                bad += 1
                if bad <= 3:
                    log.warning("cdr: %s:%d: not a CDR record, skipped", path, lineno)
    finally:
        f.close()
    if bad > 3:
        log.warning("cdr: %s: %d lines that are not CDR records skipped", path, bad)


def count_lines(path: str) -> int:
    """Complete lines in a file (for purge summaries)."""
    n = 0
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            n += chunk.count(b"\n")
    return n


def encode(records: list[CdrRecord]) -> bytes:
    return "".join(r.to_json() + "\n" for r in records).encode("utf-8")
