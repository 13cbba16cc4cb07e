"""UDP, TCP and TLS transports on the running loop (uvloop in production).

Each received datagram or framed stream message goes to :meth:`Host.feed` with the
:class:`Flow` it came on; the host (the driver) sends through :meth:`UdpEndpoint.send`
and :meth:`StreamConnection.send`. A stream that breaks framing is closed (RFC 3261
§18.3).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import ssl
import sys
from typing import Any, Protocol, cast

from sipguard.config.model import Config, Listen
from sipguard.net.tlspeer import proves, server_name
from sipguard.sip.errors import SipError
from sipguard.sip.framer import StreamFramer
from sipguard.sip.tlsnames import certificate_names
from sipguard.sip.transaction import Flow

log = logging.getLogger("sipguard.net")

UDP_BUFFER = 8 * 1024 * 1024
# getsockopt(SOL_SOCKET, SO_MEMINFO): the socket's memory as u32 counters, the first two
# the receive queue and the receive buffer's size (SK_MEMINFO_RMEM_ALLOC, _RCVBUF);
# Linux ≥ 3.17 (55 on x86, arm and most others), not in Python's socket module
SO_MEMINFO = 55
_MEMINFO_SIZE = 9 * 4
MAX_STREAM_BACKLOG = 4 * 1024 * 1024


class Host(Protocol):
    """What the transports need of the driver that owns them."""

    @property
    def config(self) -> Config: ...

    def feed(self, data: bytes, flow: Flow) -> None:
        """A datagram or one framed stream message arrived on ``flow``."""

    def flush(self) -> None:
        """Send what the messages fed so far made (before a connection closes)."""

    def framing_error(self) -> None:
        """A stream broke framing and is closed: count it."""

    def new_conn_id(self) -> int: ...

    def connection_up(self, conn: StreamConnection) -> None:
        """``conn`` is open (a TLS one with its certificate checked)."""

    def unregister(self, conn: StreamConnection) -> None:
        """``conn`` is closed, or could not be opened: forget it (called once or more)."""

    def connection_failed(self, conn: StreamConnection) -> None:
        """A connection we opened could not be made, or is not the peer it must be."""

    def tls_name_for(self, index: int, host: str, port: int) -> str | None:
        """The name a TLS server at ``host:port`` must prove, or None."""

    def client_context(self, index: int, by_name: bool) -> ssl.SSLContext:
        """The TLS context of connections opened from listen entry ``index``."""


class UdpEndpoint(asyncio.DatagramProtocol):
    def __init__(self, driver: Host, index: int) -> None:
        self.driver = driver
        self.index = index
        self.transport: asyncio.DatagramTransport | None = None
        self.sock: socket.socket | None = None
        self._flows: dict[tuple[str, int], Flow] = {}

    @classmethod
    async def create(cls, driver: Host, index: int, address: str, port: int) -> UdpEndpoint:
        family = socket.AF_INET6 if ":" in address else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_DGRAM)
        for opt in (socket.SO_RCVBUF, socket.SO_SNDBUF):
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, opt, UDP_BUFFER)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((address, port))
        sock.setblocking(False)
        loop = asyncio.get_running_loop()
        _, proto = await loop.create_datagram_endpoint(lambda: cls(driver, index), sock=sock)
        proto.sock = sock
        return proto

    def receive_memory(self) -> tuple[int, int] | None:
        """(memory the receive queue holds, the receive buffer's size), in bytes, as the
        kernel counts them (Linux ``SO_MEMINFO``); None where it cannot tell (then no
        load is shed on this socket's account)."""
        if self.sock is None or self.sock.fileno() < 0:
            return None
        try:
            info = self.sock.getsockopt(socket.SOL_SOCKET, SO_MEMINFO, _MEMINFO_SIZE)
        except OSError:
            return None
        if len(info) < 8:
            return None
        return (
            int.from_bytes(info[0:4], sys.byteorder),
            int.from_bytes(info[4:8], sys.byteorder),
        )

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def datagram_received(self, data: bytes, addr: tuple[str | Any, int]) -> None:
        key = (addr[0], addr[1])
        flow = self._flows.get(key)
        if flow is None:
            if len(self._flows) > 100_000:
                self._flows.clear()
            flow = self._flows[key] = Flow("udp", self.index, addr[0], addr[1])
        self.driver.feed(data, flow)

    def error_received(self, exc: Exception) -> None:
        log.debug("udp error: %s", exc)

    def send(self, data: bytes, addr: tuple[str, int]) -> None:
        if self.transport is not None:
            self.transport.sendto(data, addr)

    def close(self) -> None:
        self.sock = None  # the transport closes its descriptor
        if self.transport is not None:
            self.transport.close()


class StreamConnection(asyncio.Protocol):
    """One TCP or TLS connection, accepted or opened by us."""

    def __init__(self, driver: Host, transport_name: str, index: int, host: str, port: int) -> None:
        self.driver = driver
        self.transport = transport_name
        self.index = index
        self.host = host
        self.port = port
        self.id = driver.new_conn_id()
        self.loop = asyncio.get_running_loop()
        self.framer = StreamFramer(driver.config.sip.max_message_bytes)
        self.stream: asyncio.Transport | None = None
        self.pending: list[bytes] = []
        self.closed = False
        self.flow = Flow(transport_name, index, host, port, self.id)
        self.connecting: asyncio.Task[None] | None = None
        self.last_active = self.loop.time()
        self.names: frozenset[str] = frozenset()  # TLS: what the peer's certificate proves
        self.expect_name: str | None = None  # TLS, opened by us: the trunk's tls_name

    def start_connect(self) -> None:
        ctx: ssl.SSLContext | None = None
        sni: str | None = None
        if self.transport == "tls":
            self.expect_name = self.driver.tls_name_for(self.index, self.host, self.port)
            # with a name expected, the certificate must hold it, checked once connected
            # (a "*." name is no host name for the TLS library to check)
            ctx = self.driver.client_context(self.index, self.expect_name is not None)
            sni = server_name(self.expect_name)
        self.connecting = self.loop.create_task(self._connect(ctx, sni))

    async def _connect(self, ctx: ssl.SSLContext | None, sni: str | None) -> None:
        try:
            await asyncio.wait_for(
                self.loop.create_connection(
                    lambda: self,
                    self.host,
                    self.port,
                    ssl=ctx,
                    server_hostname=sni if ctx is not None else None,
                ),
                5.0,
            )
        except (TimeoutError, OSError) as exc:
            log.info("cannot connect to %s %s:%d: %s", self.transport, self.host, self.port, exc)
            self.closed = True
            self.driver.unregister(self)
            self.driver.connection_failed(self)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.stream = transport  # type: ignore[assignment]
        if self.transport == "tls":
            self.names = certificate_names(transport.get_extra_info("peercert"))
            if not proves(self.expect_name, self.names):
                log.warning(
                    "TLS peer %s:%d is not %s: its certificate holds %s; closing",
                    self.host,
                    self.port,
                    self.expect_name,
                    ", ".join(sorted(self.names)) or "no name",
                )
                self.pending.clear()  # never sent to a peer that is not who it must be
                self.closed = True
                cast(asyncio.Transport, transport).abort()  # nothing more read from it either
                self.driver.unregister(self)
                try:
                    self.driver.connection_failed(self)
                except Exception:  # never out into the TLS layer
                    log.exception("internal error failing the transactions of a connection")
                return
        sock = transport.get_extra_info("socket")
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.driver.connection_up(self)
        for data in self.pending:
            self.stream.write(data)  # type: ignore[union-attr]
        self.pending.clear()

    def data_received(self, data: bytes) -> None:
        if self.closed:  # closed by us (a certificate without the name): read nothing
            return
        self.last_active = self.loop.time()
        try:
            messages = self.framer.feed(data)
        except SipError as exc:
            self._framing_error(exc)
            return
        if self.framer.pings:
            self.framer.pings = 0
            self.send(b"\r\n")  # RFC 5626 §4.4.1 pong
        for msg in messages:
            self.driver.feed(msg, self.flow)
        if messages:
            # a framing error after good messages is raised on the next feed: look now
            try:
                self.framer.feed(b"")
            except SipError as exc:
                self._framing_error(exc)

    def _framing_error(self, exc: SipError) -> None:
        """A stream that cannot be framed is closed (RFC 3261 §18.3); counted."""
        # the answers to the good messages before the error go out on this connection
        # first (the driver sends once per loop iteration; closed, it would connect anew)
        self.driver.flush()
        log.info("closing %s connection from %s: %s", self.transport, self.host, exc.reason)
        self.driver.framing_error()
        self.close()

    def send(self, data: bytes) -> None:
        if self.closed:
            return
        if self.stream is None:
            self.pending.append(data)
            return
        self.last_active = self.loop.time()
        if self.stream.get_write_buffer_size() > MAX_STREAM_BACKLOG:
            log.warning("peer %s is not reading; closing the connection", self.host)
            self.close()
            return
        self.stream.write(data)

    def connection_lost(self, exc: Exception | None) -> None:
        # what is queued for this connection is let go with it, never sent by a new one
        self.driver.flush()
        self.closed = True
        self.driver.unregister(self)

    def close(self) -> None:
        self.closed = True
        if self.stream is not None:
            self.stream.close()
        self.driver.unregister(self)


class TcpListener:
    def __init__(self, server: asyncio.AbstractServer) -> None:
        self.server = server

    @classmethod
    async def create(
        cls, driver: Host, index: int, listen: Listen, tls: bool = False
    ) -> TcpListener:
        ctx: ssl.SSLContext | None = None
        if tls:
            ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            assert listen.cert is not None and listen.key is not None
            ctx.load_cert_chain(listen.cert, listen.key)
            if listen.ca is not None:
                # a client certificate is asked for and, if given, verified: a trunk with a
                # tls_name matches only connections whose certificate holds that name
                ctx.load_verify_locations(cafile=listen.ca)
                ctx.verify_mode = ssl.CERT_OPTIONAL

        def factory() -> StreamConnection:
            conn = _Accepted(driver, "tls" if tls else "tcp", index, "", 0)
            return conn

        server = await asyncio.get_running_loop().create_server(
            factory, listen.address, listen.port, ssl=ctx, reuse_address=True, backlog=1024
        )
        return cls(server)

    def close(self) -> None:
        self.server.close()


class _Accepted(StreamConnection):
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        peer = transport.get_extra_info("peername")
        if peer:
            self.host, self.port = peer[0], peer[1]
        self.flow = Flow(self.transport, self.index, self.host, self.port, self.id)
        super().connection_made(transport)
