"""The ng control sockets for rtpengine, and the resolution of relays named by host name.

The sans-IO client (:mod:`sipguard.media.ng`) puts ``(address, bytes)`` into the core's
``media_outbox``; the driver sends them through :class:`NgSockets`: one UDP socket per
address family the control addresses use, bound to an ephemeral port on the family's
wildcard address (rtpengine answers to where a request came from). What arrives is
handed to the driver's ``feed(data, (host, port))``, which gives it to the core.

A control address given as a host name is resolved here, off the sans-IO core, once when
the driver starts and at each reload (:func:`resolve_names`); until then that relay is
not used.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from collections.abc import Callable, Sequence
from typing import Any

from sipguard.media.ng import Address, is_ip

log = logging.getLogger("sipguard.net.media")

NG_BUFFER = 1 << 20  # an offer's reply holds SDP: room for bursts of them


def family_of(host: str) -> int:
    return socket.AF_INET6 if ":" in host else socket.AF_INET


class _NgProtocol(asyncio.DatagramProtocol):
    def __init__(self, feed: Callable[[bytes, Address], None]) -> None:
        self.feed = feed
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def datagram_received(self, data: bytes, addr: tuple[str | Any, int]) -> None:
        self.feed(data, (str(addr[0]), int(addr[1])))

    def error_received(self, exc: Exception) -> None:
        # an ICMP error for a relay that is down: its requests time out as if lost
        log.debug("ng socket error: %s", exc)


class NgSockets:
    """The ng control sockets, one per address family, made on demand."""

    def __init__(self, feed: Callable[[bytes, Address], None]) -> None:
        self.feed = feed
        self.endpoints: dict[int, _NgProtocol] = {}
        self.unsent = 0  # datagrams for a family without a socket (should stay 0)

    def _protocol(self) -> _NgProtocol:
        return _NgProtocol(self.feed)

    async def ensure(self, hosts: Sequence[str]) -> None:
        """A socket for the family of each IP address in ``hosts`` (names are skipped)."""
        for host in hosts:
            family = family_of(host)
            if not is_ip(host) or family in self.endpoints:
                continue
            sock = socket.socket(family, socket.SOCK_DGRAM)
            for opt in (socket.SO_RCVBUF, socket.SO_SNDBUF):
                with contextlib.suppress(OSError):
                    sock.setsockopt(socket.SOL_SOCKET, opt, NG_BUFFER)
            sock.bind(("::" if family == socket.AF_INET6 else "0.0.0.0", 0))
            sock.setblocking(False)
            loop = asyncio.get_running_loop()
            _, proto = await loop.create_datagram_endpoint(self._protocol, sock=sock)
            self.endpoints[family] = proto
            log.debug("ng control socket on %s", sock.getsockname())

    def send(self, addr: Address, data: bytes) -> None:
        ep = self.endpoints.get(family_of(addr[0]))
        if ep is None or ep.transport is None:
            self.unsent += 1
            return
        ep.transport.sendto(data, addr)

    def close(self) -> None:
        for ep in self.endpoints.values():
            if ep.transport is not None:
                ep.transport.close()
        self.endpoints.clear()


async def resolve_names(
    controls: Sequence[Address], resolved: Callable[[str, str], None]
) -> list[str]:
    """Resolve the control hosts that are names; ``resolved(name, ip)`` for each found.

    Returns the addresses found (for :meth:`NgSockets.ensure`). A name that does not
    resolve is logged and its relay stays unused.
    """
    loop = asyncio.get_running_loop()
    found: list[str] = []
    for host, port in controls:
        if is_ip(host):
            continue
        try:
            infos = await loop.getaddrinfo(host, port, type=socket.SOCK_DGRAM)
        except OSError as exc:
            log.error("rtpengine.control: cannot resolve %s: %s", host, exc)
            continue
        if infos:
            ip = str(infos[0][4][0])
            found.append(ip)
            resolved(host, ip)
    return found
