"""The writer's local state under ``cdr.path`` (for either sink):

``alive``     the heartbeat: the wall-clock time the writer last knew the proxy alive,
              rewritten every few seconds; crash recovery ends open calls there.
``instance``  this installation's instance tag, the first 8 hex digits of its call ids.
``lock``      held (``flock``) by the one process that writes, so two never do.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import re
from typing import Final

from sipguard.cdr.jsonl import FILE_MODE, ensure_dir
from sipguard.cdr.record import format_ts, new_instance_tag, parse_ms

ALIVE_FILE: Final = "alive"
INSTANCE_FILE: Final = "instance"
LOCK_FILE: Final = "lock"
_INSTANCE_RE: Final = re.compile(r"[0-9a-f]{8}")


class StateError(OSError):
    """The CDR directory cannot be used (another writer holds it, or it is not writable).
    An OSError, so that ``sipguard run`` says "cannot start: …" and exits 1 like for any
    other resource it cannot have, instead of a traceback."""


def write_heartbeat(path: str, wall: float) -> None:
    """Record ``wall`` (epoch seconds) as the last moment known alive (atomic replace)."""
    final = os.path.join(path, ALIVE_FILE)
    tmp = final + ".tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, FILE_MODE)
    try:
        os.write(fd, (format_ts(wall) + "\n").encode("ascii"))
    finally:
        os.close(fd)
    os.replace(tmp, final)


def read_heartbeat(path: str) -> float | None:
    """The last heartbeat (epoch seconds), or None if there is none that can be read."""
    try:
        with open(os.path.join(path, ALIVE_FILE), encoding="ascii") as f:
            text = f.read().strip()
        return parse_ms(text) / 1000.0
    except (OSError, ValueError):
        return None


def instance_tag(path: str) -> str:
    """This installation's instance tag, made and kept in ``path/instance`` on first use."""
    ensure_dir(path)
    file = os.path.join(path, INSTANCE_FILE)
    try:
        with open(file, encoding="ascii") as f:
            tag = f.read().strip()
        if _INSTANCE_RE.fullmatch(tag):
            return tag
    except (OSError, UnicodeDecodeError):
        pass
    tag = new_instance_tag()
    tmp = file + ".tmp"
    with open(tmp, "w", encoding="ascii") as f:
        f.write(tag + "\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, file)
    return tag


class DirLock:
    """An exclusive ``flock`` on ``path/lock`` for as long as it is open."""

    def __init__(self, path: str) -> None:
        ensure_dir(path)
        self._fd = os.open(
            os.path.join(path, LOCK_FILE), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, FILE_MODE
        )
        try:
            fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(self._fd)
            self._fd = -1
            raise StateError(f"{path}: another process is writing CDRs here") from None

    def release(self) -> None:
        if self._fd >= 0:
            with contextlib.suppress(OSError):
                fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = -1
