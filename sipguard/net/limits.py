"""The bounds on TCP and TLS connections (SPEC §8 "bounded everything", issue 15).

Sans-IO: the driver asks and tells these; they never touch a socket or read the clock.

- :class:`ConnectionLimits`: how many connections are open, in total and accepted per
  source address; whether to take one more (``limits.tcp_max_connections``,
  ``limits.tcp_max_per_source``). The connections sipguard opens itself count towards
  the total but are never refused: a call to a configured target must not fail because
  others crowd the port. A source that matches no trunk may fill only part of the total,
  so that a flood from it leaves room for the trunks.
- :class:`HeadDeadlines`: the connections that owe a complete message head, and since
  when (``sip.tcp_header_timeout``).
- :func:`descriptor_plan`: what the process's descriptor limit (``RLIMIT_NOFILE``)
  allows, with :data:`RESERVED_DESCRIPTORS` kept back for everything that is not an
  accepted connection, so that CDR writing and the metrics endpoint never starve.
"""

from __future__ import annotations

from dataclasses import dataclass

# descriptors never given to accepted connections: the listening sockets, the event loop,
# the log, the CDR files and the writer's heartbeat, the metrics endpoint and its
# clients, DNS lookups, rtpengine, and the connections sipguard opens towards targets
RESERVED_DESCRIPTORS = 128

# the reasons a connection is refused or closed (sipguard_rejected_total{reason})
SOURCE_LIMIT = "tcp_source_limit"
TOTAL_LIMIT = "tcp_limit"
HEADER_TIMEOUT = "tcp_header_timeout"


def unknown_source_cap(total: int) -> int:
    """The connections that sources matching no trunk may hold together: three quarters
    of ``total`` (at least one), so that a flood from them leaves a quarter to trunks."""
    return max(1, total - total // 4)


class ConnectionLimits:
    """The open TCP/TLS connections, in total and accepted per source address."""

    __slots__ = ("by_source", "cap", "open", "per_source")

    def __init__(self, cap: int, per_source: int) -> None:
        self.cap = cap  # connections in total (the configured total or what descriptors allow)
        self.per_source = per_source
        self.open = 0  # every connection counted: accepted, and opened by us
        self.by_source: dict[str, int] = {}  # accepted connections by source address

    def configure(self, cap: int, per_source: int) -> None:
        """New bounds (a reload): connections open beyond them stay, new ones wait."""
        self.cap = cap
        self.per_source = per_source

    def admit(self, source: str, known: bool) -> str | None:
        """One connection accepted from ``source`` (``known``: it matches a trunk): None
        once it is counted, or the reason to close it at once."""
        held = self.by_source.get(source, 0)
        if held >= self.per_source:
            return SOURCE_LIMIT
        if self.open >= (self.cap if known else unknown_source_cap(self.cap)):
            return TOTAL_LIMIT
        self.open += 1
        self.by_source[source] = held + 1
        return None

    def opened(self) -> None:
        """A connection sipguard opens itself: counted, never refused."""
        self.open += 1

    def closed(self, source: str | None) -> None:
        """A counted connection is gone: one accepted from ``source``, or (None) one
        sipguard opened."""
        self.open -= 1
        if source is None:
            return
        held = self.by_source.get(source, 0) - 1
        if held > 0:
            self.by_source[source] = held
        else:
            self.by_source.pop(source, None)


class HeadDeadlines:
    """The connections that owe a complete message head, by the time they began to owe
    it: a message's first byte, or the accept of a connection that has sent none yet.

    All share one timeout, so the order they began in is the order they expire in: an
    insertion-ordered dict, where :meth:`expired` looks only at the front.
    """

    __slots__ = ("_since",)

    def __init__(self) -> None:
        self._since: dict[int, float] = {}

    def __len__(self) -> int:
        return len(self._since)

    def __contains__(self, conn: int) -> bool:
        return conn in self._since

    def start(self, conn: int, now: float) -> None:
        """``conn`` owes a head from ``now`` on (again: the previous one came whole)."""
        self._since.pop(conn, None)
        self._since[conn] = now

    def stop(self, conn: int) -> None:
        """``conn`` owes nothing: its head came whole, or it is closed."""
        self._since.pop(conn, None)

    def expired(self, now: float, timeout: float) -> list[int]:
        """The connections that have owed a head for ``timeout`` seconds or more at
        ``now``, no longer tracked."""
        out: list[int] = []
        since = self._since
        for conn, began in since.items():
            if now - began < timeout:
                break
            out.append(conn)
        for conn in out:
            del since[conn]
        return out


@dataclass(frozen=True, slots=True)
class DescriptorPlan:
    """What the descriptor limit allows, given the connections the configuration wants."""

    soft: int  # the soft limit to run with (raised where the hard limit allows)
    wanted: int  # what the limits need: tcp_max_connections and the reserve
    cap: int  # the connections that may be open at once: the configured total or fewer

    @property
    def short(self) -> bool:
        """Whether the descriptors allow fewer connections than configured."""
        return 0 <= self.soft < self.wanted


def descriptor_plan(
    soft: int, hard: int, max_connections: int, reserve: int = RESERVED_DESCRIPTORS
) -> DescriptorPlan:
    """The soft limit to ask for and the connections it leaves room for.

    ``soft`` and ``hard`` are ``RLIMIT_NOFILE`` (negative: unlimited). The limits need
    ``max_connections`` plus ``reserve`` descriptors; a soft limit below that is raised
    as far as the hard limit allows, and the connections are capped at the soft limit
    less the reserve (the reserve is never lent to accepted connections).
    """
    wanted = max_connections + reserve
    if soft < 0:  # no limit
        return DescriptorPlan(soft=soft, wanted=wanted, cap=max_connections)
    new_soft = soft
    if soft < wanted:
        new_soft = wanted if hard < 0 else max(soft, min(wanted, hard))
    cap = max(0, min(max_connections, new_soft - reserve))
    return DescriptorPlan(soft=new_soft, wanted=wanted, cap=cap)
