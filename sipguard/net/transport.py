"""UDP, TCP and TLS transports on the running loop (uvloop in production).

Each received datagram or framed stream message goes to :meth:`Host.feed` with the
:class:`Flow` it came on (a datagram through the compiled
:class:`~sipguard.net.pump.UdpReceiver`); the host (the driver) sends through
:class:`~sipguard.net.pump.Pump` and :meth:`StreamConnection.send`. A stream that breaks
framing is closed (RFC 3261 §18.3). A listener accepts connections itself, so that the
host can refuse one at once, before a TLS handshake (:meth:`Host.admit_connection`); a
connection that owes a message head is tracked in :attr:`Host.heads` for the host to
close when it is late.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import socket
import ssl
import sys
from typing import Any, Protocol, cast

from sipguard.config.model import Config, Listen
from sipguard.net.limits import HeadDeadlines
from sipguard.net.pump import UdpReceiver
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
LISTEN_BACKLOG = 1024
# accept() failing for want of descriptors or memory: wait this long before the next try
ACCEPT_RETRY_S = 0.1
_ACCEPT_STARVED = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})


class Host(Protocol):
    """What the transports need of the driver that owns them."""

    @property
    def config(self) -> Config: ...

    @property
    def heads(self) -> HeadDeadlines: ...

    def feed(self, data: bytes, flow: Flow) -> None:
        """A datagram or one framed stream message arrived on ``flow``."""

    def flush(self) -> None:
        """Send what the messages fed so far made (before a connection closes)."""

    def framing_error(self) -> None:
        """A stream broke framing and is closed: count it."""

    def new_conn_id(self) -> int: ...

    def admit_connection(self, index: int, host: str) -> bool:
        """Whether to take a connection accepted on listen entry ``index`` from ``host``
        (False: it is closed at once); a connection taken is counted until
        :meth:`unregister`."""

    def connection_up(self, conn: StreamConnection) -> None:
        """``conn`` is open (a TLS one with its certificate checked)."""

    def tls_name_failed(self) -> None:
        """A TLS peer we connected to failed verification or did not prove its name."""

    def unregister(self, conn: StreamConnection) -> None:
        """``conn`` is closed, or never opened: forget it (called once or more)."""

    def connection_failed(self, conn: StreamConnection) -> None:
        """A connection we opened could not be made, or is not the peer it must be."""

    def tls_name_for(self, index: int, host: str, port: int) -> str | None:
        """The name a TLS server at ``host:port`` must prove, or None."""

    def client_context(self, index: int, by_name: bool) -> ssl.SSLContext:
        """The TLS context of connections opened from listen entry ``index``."""


class UdpEndpoint:
    """One UDP listen entry: its socket and transport. The datagram protocol the loop
    calls is a compiled :class:`~sipguard.net.pump.UdpReceiver` feeding the host."""

    def __init__(self, driver: Host, index: int) -> None:
        self.driver = driver
        self.index = index
        self.transport: asyncio.DatagramTransport | None = None
        self.sock: socket.socket | None = None

    def _made(self, transport: asyncio.DatagramTransport) -> None:
        self.transport = transport

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
        endpoint = cls(driver, index)
        receiver = UdpReceiver(driver.feed, index, endpoint._made)
        # an event loop needs only the protocol's methods; typeshed asks for the base class
        await loop.create_datagram_endpoint(
            lambda: cast(asyncio.DatagramProtocol, receiver), sock=sock
        )
        endpoint.sock = sock
        return endpoint

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
        # counted by the host's connection limits: accepted from this source address
        # (counted at accept), or opened by us (counted with None); False once let go
        self.counted = False
        self.source: str | None = None
        self.owes_head = False  # tracked in host.heads: a message head is due

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
            if isinstance(exc, ssl.SSLCertVerificationError):
                self.driver.tls_name_failed()
            self.closed = True
            self.driver.unregister(self)
            self.driver.connection_failed(self)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.stream = transport  # type: ignore[assignment]
        if self.transport == "tls":
            self.names = certificate_names(transport.get_extra_info("peercert"))
            if not proves(self.expect_name, self.names):
                self.driver.tls_name_failed()
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
        self.last_active = now = self.loop.time()
        try:
            messages = self.framer.feed(data)
        except SipError as exc:
            self._framing_error(exc)
            return
        # a message head is due from the first byte of a message left incomplete (or,
        # since the accept, until the first message): see sip.tcp_header_timeout
        if self.framer.buffered:
            if messages or not self.owes_head:
                self.owes_head = True
                self.driver.heads.start(self.id, now)
        elif messages and self.owes_head:
            self.owes_head = False
            self.driver.heads.stop(self.id)
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
    """A listening TCP socket that accepts connections itself: each is counted against
    the host's limits (or closed at once) before its TLS handshake, which has a deadline
    (``sip.tcp_header_timeout``)."""

    def __init__(
        self, driver: Host, index: int, sock: socket.socket, ctx: ssl.SSLContext | None
    ) -> None:
        self.driver = driver
        self.index = index
        self.sock = sock
        self.ctx = ctx
        self.task: asyncio.Task[None] | None = None

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
        listener = cls(driver, index, listening_socket(listen.address, listen.port), ctx)
        listener.task = asyncio.get_running_loop().create_task(listener._accept_loop())
        return listener

    async def _accept_loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            try:
                sock, addr = await loop.sock_accept(self.sock)
            except OSError as exc:
                if self.sock.fileno() < 0:
                    return  # closed
                if exc.errno in _ACCEPT_STARVED:
                    log.debug("cannot accept a connection now: %s", exc)
                else:
                    log.warning("cannot accept a connection: %s", exc)
                await asyncio.sleep(ACCEPT_RETRY_S)
                continue
            try:
                self._accepted(loop, sock, addr)
            except Exception:  # the listener must go on accepting
                log.exception("internal error accepting a connection")
                sock.close()

    def _accepted(
        self, loop: asyncio.AbstractEventLoop, sock: socket.socket, addr: tuple[Any, ...]
    ) -> None:
        host, port = str(addr[0]), int(addr[1])
        if not self.driver.admit_connection(self.index, host):
            sock.close()
            return
        conn = _Accepted(
            self.driver, "tls" if self.ctx is not None else "tcp", self.index, host, port
        )
        conn.counted, conn.source = True, host
        conn.connecting = loop.create_task(conn.set_up(sock, self.ctx))

    def close(self) -> None:
        if self.task is not None:
            self.task.cancel()
        self.sock.close()


def listening_socket(address: str, port: int) -> socket.socket:
    """A non-blocking TCP socket listening on ``address:port`` (an IP address), as
    ``loop.create_server`` makes one: address reuse, IPv6 only on an IPv6 address."""
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        sock.bind((address, port))
        sock.listen(LISTEN_BACKLOG)
        sock.setblocking(False)
    except OSError:
        sock.close()
        raise
    return sock


class _Accepted(StreamConnection):
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.flow = Flow(self.transport, self.index, self.host, self.port, self.id)
        # a head is due from now on, until its first message comes whole
        self.owes_head = True
        self.driver.heads.start(self.id, self.loop.time())
        super().connection_made(transport)

    async def set_up(self, sock: socket.socket, ctx: ssl.SSLContext | None) -> None:
        """Make the accepted ``sock`` this connection: over TLS after a handshake within
        ``sip.tcp_header_timeout``. One that fails or runs out of time is let go."""
        loop = self.loop
        made = False
        try:
            if ctx is None:
                await loop.connect_accepted_socket(lambda: self, sock)
            else:
                timeout = self.driver.config.sip.tcp_header_timeout
                await loop.connect_accepted_socket(
                    lambda: self, sock, ssl=ctx, ssl_handshake_timeout=timeout
                )
            made = True
        except OSError as exc:  # SSL errors, timeouts and resets among them
            log.debug("%s connection from %s not set up: %r", self.transport, self.host, exc)
        finally:
            if not made:  # whatever stopped it (cancelled too): its slot is let go
                sock.close()
                self.closed = True
                self.driver.unregister(self)
