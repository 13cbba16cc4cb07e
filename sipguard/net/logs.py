"""Log lines on stderr: ``log_format: text`` (as always) or ``json`` (SPEC §5).

``json`` writes one object per line for a log collector::

    {"ts": "2026-12-03T23:45:01.123Z", "level": "info", "logger": "sipguard.b2bua",
     "event": "call", "msg": "call 0a1b2c3d… customers -> pbx caller=+3120123**** …",
     "call_id": "0a1b2c3d…", "trunk": "customers", "trunk_out": "pbx",
     "caller": "+3120123****", "presentation": "allowed", "reason": "default",
     "emergency": false}

``event`` is a short name for what happened: the ``event`` a log call passes in
``extra=``, else the first words of its message template ("cannot connect to %s" ->
``cannot_connect_to``; "cdr: spool full; …" -> ``cdr.spool_full``; "call %s %s -> …" ->
``call``). ``call_id`` (sipguard's
own id, as in the CDR), ``trunk``, ``trunk_out`` and ``caller`` come from ``extra=`` where
a log call passes them, and are read from the arguments of the one line logged per call
(``CALL_LINE``). Numbers are masked at INFO and above by the log calls themselves
(:func:`sipguard.policy.numbers.mask`), in both formats: a formatter never sees more.
"""

from __future__ import annotations

import json
import logging
import re
import sys
import time
from typing import Any, Final

TEXT_FORMAT: Final = "%(asctime)s %(levelname)s %(name)s %(message)s"

# the line sipguard.b2bua.core logs for each new call, and what its arguments are
CALL_LINE: Final = "call %s %s -> %s caller=%s presentation=%s reason=%s%s"
_CALL_ARGS: Final = ("call_id", "trunk", "trunk_out", "caller", "presentation", "reason")

# keys a log call may pass with extra= (anything else it passes is not written)
EXTRA_KEYS: Final = ("call_id", "trunk", "trunk_out", "caller", "callee")

_WORD = re.compile(r"[A-Za-z][A-Za-z0-9_]*")
_PLACEHOLDER = re.compile(r"%[-#0 +]*\d*(?:\.\d+)?[a-zA-Z%]")
_STOP = re.compile(r"[:;,(=>-]")


def event_name(template: str) -> str:
    """A short name from a message template: its first words, up to four, placeholders
    left out, before a punctuation mark; a leading ``cdr:``/``dns:`` becomes a prefix."""
    prefix = ""
    head, sep, rest = template.partition(": ")
    if sep and head in ("cdr", "dns"):
        prefix, template = head + ".", rest
    template = _PLACEHOLDER.sub(" ", template)
    stop = _STOP.search(template)
    words = _WORD.findall(template[: stop.start()] if stop else template)[:4]
    return prefix + ("_".join(w.lower() for w in words) or "log")


class JsonFormatter(logging.Formatter):
    """One JSON object per record, on one line (see the module docstring)."""

    def format(self, record: logging.LogRecord) -> str:
        msg = record.getMessage()
        out: dict[str, Any] = {
            "ts": _utc_ms(record.created),
            "level": record.levelname.lower(),
            "logger": record.name,
            "event": getattr(record, "event", None) or event_name(str(record.msg)),
            "msg": msg,
        }
        args = record.args
        if record.msg == CALL_LINE and isinstance(args, tuple) and len(args) == 7:
            out.update(zip(_CALL_ARGS, (str(a) for a in args[:6]), strict=True))
            out["emergency"] = bool(args[6])
        for key in EXTRA_KEYS:
            value = getattr(record, key, None)
            if value is not None:
                out[key] = str(value)
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return json.dumps(out, ensure_ascii=False, separators=(",", ":"))


def _utc_ms(t: float) -> str:
    """``2026-12-03T23:45:01.123Z``, as CDR timestamps are written."""
    ms = int(t * 1000) % 1000
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(t)) + f".{ms:03d}Z"


def setup_logging(level: str, fmt: str = "text") -> None:
    """The root logger: a stderr handler in the format asked for, at ``level``."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else logging.Formatter(TEXT_FORMAT))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(getattr(logging, level.upper(), logging.INFO))
