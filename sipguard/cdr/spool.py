"""The postgres sink's on-disk spool: records waiting for the database, in order.

Segments ``<cdr.spool_path>/spool-NNNNNNNNNNNNNNNN.jsonl`` (JSON lines, like the file
sink) are appended to while the database is away and delivered oldest first when it is
back; a segment is deleted only once every record in it has been delivered. A crash in
the middle of a delivery sends part of a segment twice: the database's ``(id, kind)`` key
makes that harmless. The total size is bounded by ``cdr.spool_max_bytes``.
"""

from __future__ import annotations

import contextlib
import os
import re
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Final

from sipguard.cdr.jsonl import AppendFile, FsyncPolicy, ensure_dir, read_records, repair_tail
from sipguard.cdr.record import CdrRecord

SEGMENT_BYTES: Final = 4 * 1024 * 1024
DELIVERY_BATCH: Final = 1000
_SEGMENT_RE: Final = re.compile(r"spool-(\d{16})\.jsonl")


class Spool:
    def __init__(
        self,
        path: str,
        max_bytes: int,
        policy: FsyncPolicy,
        *,
        writable: bool,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.path = path
        self.max_bytes = max_bytes
        self._policy = policy
        self._monotonic = monotonic
        self._writable = writable
        self._append: AppendFile | None = None
        if writable:
            ensure_dir(path)
        segments = self._segments()
        if writable and segments:
            repair_tail(segments[-1][1])
        self._next_seq = segments[-1][0] + 1 if segments else 1
        self._bytes = sum(_size(p) for _, p in segments)

    def _segments(self) -> list[tuple[int, str]]:
        try:
            names = os.listdir(self.path)
        except FileNotFoundError:
            return []
        out = []
        for name in names:
            m = _SEGMENT_RE.fullmatch(name)
            if m is not None:
                out.append((int(m.group(1)), os.path.join(self.path, name)))
        out.sort()
        return out

    @property
    def bytes(self) -> int:
        return self._bytes

    def empty(self) -> bool:
        return self._bytes == 0 and not self._segments()

    def append(self, records: Sequence[CdrRecord]) -> int:
        """Append as many of ``records`` (in order) as fit; returns how many. OSError if the
        disk refuses (then none was appended)."""
        lines = [(r.to_json() + "\n").encode("utf-8") for r in records]
        room = self.max_bytes - self._bytes
        taken = 0
        for line in lines:
            if len(line) > room:
                break
            room -= len(line)
            taken += 1
        if taken == 0:
            return 0
        data = b"".join(lines[:taken])
        if self._append is None or self._append.size() >= SEGMENT_BYTES:
            self._seal()
            name = f"spool-{self._next_seq:016d}.jsonl"
            self._next_seq += 1
            self._append = AppendFile(
                os.path.join(self.path, name), self._policy, monotonic=self._monotonic, mode=0o600
            )
        self._append.write(data)
        self._bytes += len(data)
        return taken

    def _seal(self) -> None:
        if self._append is not None:
            seg, self._append = self._append, None
            seg.close()

    def drain(self, deliver: Callable[[list[CdrRecord]], None]) -> None:
        """Deliver every spooled record, oldest first, in batches, deleting each segment
        once all of it is delivered. Whatever ``deliver`` raises stops the drain (the
        undelivered segments stay) and is raised."""
        self._seal()  # the segment being appended to is delivered too: start a new one
        for _, seg in self._segments():
            records = list(read_records(seg))
            for i in range(0, len(records), DELIVERY_BATCH):
                deliver(records[i : i + DELIVERY_BATCH])
            size = _size(seg)
            os.remove(seg)
            self._bytes = max(0, self._bytes - size)
        self._bytes = sum(_size(p) for _, p in self._segments())

    def iter_records(self) -> Iterator[CdrRecord]:
        for _, seg in self._segments():
            yield from read_records(seg)

    def tick(self) -> None:
        if self._append is not None:
            self._append.tick()

    def close(self) -> None:
        self._seal()


def _size(path: str) -> int:
    with contextlib.suppress(OSError):
        return os.stat(path).st_size
    return 0
