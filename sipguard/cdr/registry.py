"""The registry of CDR sinks: ``cdr.sink`` names one of :data:`SINKS`."""

from __future__ import annotations

import time
from collections.abc import Callable

from sipguard.cdr.file_sink import FileSink
from sipguard.cdr.postgres_sink import PostgresSink
from sipguard.cdr.sink import Clock, Sink
from sipguard.config.model import CdrConfig

SinkFactory = Callable[[CdrConfig, Clock, bool], Sink]


def _file_sink(cfg: CdrConfig, clock: Clock, writable: bool) -> Sink:
    return FileSink(cfg, clock=clock, writable=writable)


def _postgres_sink(cfg: CdrConfig, clock: Clock, writable: bool) -> Sink:
    return PostgresSink(cfg, clock=clock, writable=writable)


SINKS: dict[str, SinkFactory] = {"file": _file_sink, "postgres": _postgres_sink}


def open_sink(cfg: CdrConfig, *, clock: Clock = time.time, writable: bool = False) -> Sink:
    """Open the sink ``cfg.sink`` names, writable only for the one process that writes.
    ValueError for an unknown name or a missing DSN; OSError if a writable sink cannot
    use its directory."""
    try:
        factory = SINKS[cfg.sink]
    except KeyError:
        raise ValueError(f"unknown CDR sink {cfg.sink!r} (known: {sorted(SINKS)})") from None
    return factory(cfg, clock, writable)
