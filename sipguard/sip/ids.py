"""Unguessable ids: 80 bits of the OS's CSPRNG each, read in batches. Standard library only.

RFC 3261 §19.3 asks for cryptographically random tags and Call-IDs, and the dialog keys
(Call-ID and tags) are what an in-dialog request is matched by: a counter that shows in
one reply would let anyone predict the next call's ids. The rtpengine ng client's cookies
are the same kind of secret: a predictable cookie would let anyone who can send to its
control socket answer in rtpengine's place. ``os.urandom`` is read in batches (one system
call per ``batch`` ids), so the cost per id is a slice.
"""

from __future__ import annotations

import os

WIDTH = 20  # hex digits: 80 bits


class IdSource:
    """Ids of :data:`WIDTH` hex digits from the OS's CSPRNG, ``batch`` per system call."""

    __slots__ = ("_batch", "_buf", "_pos")

    def __init__(self, batch: int = 256) -> None:
        self._batch = batch
        self._buf = ""
        self._pos = 0

    def reset(self) -> None:
        """Forget the batch (a forked child must never repeat its parent's ids)."""
        self._buf = ""
        self._pos = 0

    def next(self) -> str:
        pos = self._pos
        end = pos + WIDTH
        if end > len(self._buf):
            self._buf = os.urandom(WIDTH // 2 * self._batch).hex()
            pos = 0
            end = WIDTH
        self._pos = end
        return self._buf[pos:end]
