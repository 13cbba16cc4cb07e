"""Unguessable ids: 80 bits of the OS's CSPRNG each, read in batches. Standard library only.

RFC 3261 §19.3 asks for cryptographically random tags and Call-IDs, and the dialog keys
(Call-ID and tags) are what an in-dialog request is matched by: a counter that shows in
one reply would let anyone predict the next call's ids. The rtpengine ng client's cookies
are the same kind of secret: a predictable cookie would let anyone who can send to its
control socket answer in rtpengine's place. So is the CDR id, which is also each call's
rtpengine session. ``os.urandom`` is read in batches (one system call per ``batch`` ids),
so the cost per id is a slice.

Every source forgets its batch in a forked child (``os.register_at_fork``), which must
never repeat its parent's ids: a source is made once per process (at module level), as
each keeps its fork hook for the life of the process.
"""

from __future__ import annotations

import os

WIDTH = 20  # hex digits: 80 bits


class IdSource:
    """Ids of ``width`` hex digits from the OS's CSPRNG, ``batch`` per system call."""

    __slots__ = ("_batch", "_buf", "_pos", "_width")

    def __init__(self, batch: int = 256, width: int = WIDTH) -> None:
        if batch < 1 or width < 2 or width % 2:
            raise ValueError("batch must be positive, width an even number of hex digits")
        self._batch = batch
        self._width = width
        self._buf = ""
        self._pos = 0
        os.register_at_fork(after_in_child=self.reset)

    def reset(self) -> None:
        """Forget the batch (a forked child must never repeat its parent's ids)."""
        self._buf = ""
        self._pos = 0

    def next(self) -> str:
        pos = self._pos
        width = self._width
        end = pos + width
        if end > len(self._buf):
            self._buf = os.urandom(width // 2 * self._batch).hex()
            pos = 0
            end = width
        self._pos = end
        return self._buf[pos:end]
