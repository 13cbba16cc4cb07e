"""What a forked child computes: for tests of what must differ between a process and its
children (ids drawn from a batch read before the fork)."""

from __future__ import annotations

import os
from collections.abc import Callable


def in_child(fn: Callable[[], str]) -> str:
    """``fn()`` as a forked child of this process returns it (it exits at once after)."""
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: nothing of pytest runs here
        status = 1
        try:
            os.close(read)
            os.write(write, fn().encode())
            status = 0
        finally:
            os._exit(status)
    os.close(write)
    with os.fdopen(read, "rb") as pipe:
        out = pipe.read().decode()
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0, "the child failed"
    return out
