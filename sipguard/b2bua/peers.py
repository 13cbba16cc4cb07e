"""Who a request comes from: the trunk of a source, and the peer a dialog is bound to.

A new request belongs to the trunk whose ``sources`` hold its address on the listen
entry it arrived on (SPEC §2). A request within a dialog is believed only from the peer
its leg was set up with (SPEC §8): the call-ids are unguessable, and this makes even a
known one useless from anywhere else.
"""

from __future__ import annotations

import ipaddress

from sipguard.config.model import Config, Trunk
from sipguard.sip.tlsnames import name_matches
from sipguard.sip.transaction import Flow

MAX_SOURCES = 4096  # the trunk-of-source cache: cleared when a scan fills it
_NO_NAMES: frozenset[str] = frozenset()


class Peers:
    """The trunks by source (cached) and the open connections with the names they proved."""

    __slots__ = ("_by_source", "config", "conns")

    def __init__(self, config: Config) -> None:
        self.config = config
        # the open TCP/TLS connections, by the driver's id, with the names a TLS
        # connection's verified certificate holds (the core's inputs connection_up/_down);
        # as many as the driver keeps open
        self.conns: dict[int, frozenset[str]] = {}
        self._by_source: dict[tuple[int, str], Trunk | None] = {}

    def reload(self, config: Config) -> None:
        self.config = config
        self._by_source.clear()

    def trunk_of(self, local: int, host: str) -> Trunk | None:
        """The trunk whose sources hold ``host`` on listen entry ``local`` (kept); raise
        ``ValueError`` if ``host`` is no IP address."""
        key = (local, host)
        cache = self._by_source
        if key in cache:
            return cache[key]
        if len(cache) >= MAX_SOURCES:
            cache.clear()  # many sources (a scan): kept small, worked out again
        trunk = cache[key] = self.config.match_trunk(local, ipaddress.ip_address(host))
        return trunk

    def names(self, flow: Flow) -> frozenset[str]:
        """The names the TLS connection of ``flow`` proved (none over other transports)."""
        return self.conns.get(flow.conn, _NO_NAMES) if flow.transport == "tls" else _NO_NAMES

    def from_peer(self, trunk: Trunk, set_up: Flow, flow: Flow) -> bool:
        """Is a request on ``flow`` from the peer a leg of ``trunk`` was set up with on
        ``set_up``? Its source lies in the trunk's sources on a listen entry that serves
        it, or is the very address the leg was set up with; a trunk with a ``tls_name``
        speaks only over TLS connections that proved it; and from the address of a leg set
        up on a connection, only that connection speaks while it is open (another port
        there is another program). Once it has closed, the peer may open another (RFC
        3261 §18), from another port; another node of the trunk may always speak."""
        if (flow.local, flow.host) != (set_up.local, set_up.host):
            found = self.trunk_of(flow.local, flow.host)
            if found is None or found.name != trunk.name:
                return False
        if trunk.tls_name is not None and not name_matches(trunk.tls_name, self.names(flow)):
            return False
        if set_up.conn and flow.host == set_up.host and set_up.conn in self.conns:
            return flow.conn == set_up.conn
        return True


class EveryFew:
    """At most one event per key every ``interval`` seconds (a log line not to repeat),
    for a bounded set of keys (trunk names)."""

    __slots__ = ("interval", "last")

    def __init__(self, interval: float) -> None:
        self.interval = interval
        self.last: dict[str, float] = {}

    def event(self, key: str, now: float) -> bool:
        last = self.last.get(key)
        if last is not None and now - last < self.interval:
            return False
        self.last[key] = now
        return True
