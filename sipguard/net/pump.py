"""The per-message path between the sockets and the core, compiled with the core (mypyc).

Every datagram goes socket → :meth:`UdpReceiver.datagram_received` → :meth:`Pump.feed` →
``B2BUA.receive``; what the core made goes :meth:`Pump.flush` → :meth:`Pump.send` → the
socket, and the one ``call_at`` of the core's next deadline is re-armed there. In the
driver (pure Python) this glue ran as interpreted bytecode around every message: about a
tenth of sipguard's CPU per call at 1,000 calls/s (issue 19). Here it is compiled; the
driver (:mod:`sipguard.net.server`) keeps everything that is not per message.

The receiver is handed to the event loop as the datagram protocol: an event loop calls
its six methods (the four of a datagram protocol, and the flow control of every
protocol, ``pause_writing`` and ``resume_writing``, when its send buffer fills and
drains) and needs nothing else of it (no base class).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol

from sipguard.b2bua.records import KNOWN_METHODS
from sipguard.sip.transaction import Flow

if TYPE_CHECKING:
    from sipguard.b2bua.core import B2BUA
    from sipguard.cdr.record import CdrRecord

log = logging.getLogger("sipguard")
net_log = logging.getLogger("sipguard.net")

# the ``kind`` label of sipguard_sip_messages_total: a method we know or a status class;
# anything else (a peer may send any token as a method) is "other", so that a label never
# carries what a peer wrote (SPEC §6: no number, no address) and the series stay few
_OUT_KIND: dict[bytes, str] = {m.encode() + b" ": m for m in KNOWN_METHODS}
_OUT_STATUS: dict[int, str] = {ord(str(c)): f"{c}xx" for c in range(1, 7)}

# a source address table larger than this is dropped whole (a spoofed flood of sources)
MAX_FLOWS = 100_000


def message_kind(data: bytes) -> str:
    """The ``kind`` of an outgoing message from its first bytes: method or status class."""
    if data.startswith(b"SIP/2.0 "):
        return _OUT_STATUS.get(data[8], "other") if len(data) > 8 else "other"
    sp = data.find(b" ", 0, 16)
    return _OUT_KIND.get(data[: sp + 1], "other") if sp > 0 else "other"


class DatagramOut(Protocol):
    """A UDP endpoint as the pump sends through it (``transport`` None until made)."""

    transport: asyncio.DatagramTransport | None


class CdrSink(Protocol):
    def submit(self, record: CdrRecord) -> None: ...

    def accepting_calls(self) -> bool: ...


class MediaOut(Protocol):
    def send(self, addr: tuple[str, int], data: bytes) -> None: ...


class Pump:
    """Feeds the core, flushes its output, arms its timer (one per process)."""

    def __init__(
        self,
        core: B2BUA,
        loop: asyncio.AbstractEventLoop,
        udp: dict[int, Any],
        send_stream: Callable[[Flow, bytes], None],
        media: MediaOut,
        writer: CdrSink | None,
        batching: bool,
    ) -> None:
        self.core = core
        self.loop = loop
        # listen index -> its UDP endpoint (a DatagramOut: the driver's own table)
        self.udp = udp
        self.send_stream = send_stream  # TCP/TLS: the driver finds or opens the connection
        self.media = media
        self.writer = writer
        # send per loop iteration, not per message (set by the lag probe from the rate)
        self.batching = batching
        self.fed = 0  # messages received (read by the lag probe for the rate)
        self._flush_soon = False  # a flush is queued for the end of this loop iteration
        self._timer: asyncio.TimerHandle | None = None
        self._armed: float | None = None

    # -- input -----------------------------------------------------------------------------

    def feed(self, data: bytes, flow: Flow) -> None:
        try:
            self.core.receive(data, flow, self.loop.time())
        except Exception:  # a bug must not take the proxy down with it
            log.exception("internal error handling a message")
        self.fed += 1
        if not self.batching:
            try:
                self.flush()
            except Exception:  # never out into the transport (a TCP read would stop)
                log.exception("internal error sending")
        elif not self._flush_soon:
            # under load, what this message made is sent once every datagram the loop
            # read in this iteration is handled: the peers' processes are woken once per
            # burst rather than once per message, and the loop timer re-armed once
            self._flush_soon = True
            self.loop.call_soon(self._flush_deferred)

    def _flush_deferred(self) -> None:
        self._flush_soon = False
        self.flush()

    def fire(self) -> None:
        """The core's deadline came: its timers, then what they made."""
        self._timer = None
        self._armed = None
        now = self.loop.time()
        self.core.wall_offset = time.time() - now
        try:
            self.core.handle_timer(now)
        except Exception:
            log.exception("internal error in a timer")
        self.flush()

    # -- output ----------------------------------------------------------------------------

    def flush(self) -> None:
        core = self.core
        out = core.outbox
        if out:
            try:
                for flow, data in out:
                    try:
                        self.send(flow, data)
                    except Exception:  # one bad send must not hold back the others
                        log.exception("internal error sending a message")
            finally:
                out.clear()
        media = core.media_outbox
        if media:
            try:
                for addr, payload in media:
                    self.media.send(addr, payload)
            finally:
                media.clear()
        records = core.cdr_out
        if records:
            writer = self.writer
            if writer is not None:
                for rec in records:
                    writer.submit(rec)
                core.accepting = writer.accepting_calls()
            records.clear()
        deadline = core.next_deadline()
        if deadline != self._armed:
            if self._timer is not None:
                self._timer.cancel()
            self._timer = None if deadline is None else self.loop.call_at(deadline, self.fire)
            self._armed = deadline

    def send(self, flow: Flow, data: bytes) -> None:
        kind = message_kind(data)
        out = self.core.stats_out
        out[kind] = out.get(kind, 0) + 1
        if flow.transport == "udp":
            ep = self.udp.get(flow.local)
            if ep is not None:
                transport = ep.transport
                if transport is not None:
                    transport.sendto(data, (flow.host, flow.port))
            return
        self.send_stream(flow, data)

    def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
            self._armed = None


class UdpReceiver:
    """The datagram protocol of one UDP listen entry: each datagram to ``feed`` with its
    flow (one :class:`Flow` per source address, kept rather than built per datagram)."""

    def __init__(
        self,
        feed: Callable[[bytes, Flow], None],
        index: int,
        made: Callable[[asyncio.DatagramTransport], None],
    ) -> None:
        self.feed = feed
        self.index = index
        self.made = made
        self._flows: dict[tuple[str, int], Flow] = {}

    def connection_made(self, transport: Any) -> None:
        self.made(transport)

    def datagram_received(self, data: bytes, addr: tuple[Any, ...]) -> None:
        key = (str(addr[0]), int(addr[1]))
        flows = self._flows
        flow = flows.get(key)
        if flow is None:
            if len(flows) > MAX_FLOWS:
                flows.clear()
            flow = flows[key] = Flow("udp", self.index, key[0], key[1])
        self.feed(data, flow)

    def error_received(self, exc: Exception) -> None:
        net_log.debug("udp error: %s", exc)

    def connection_lost(self, exc: Exception | None) -> None:
        return None

    def pause_writing(self) -> None:
        """The send buffer is past its high-water mark (a burst of responses faster than
        the socket drains): nothing to stop, a datagram is sent or dropped, never held
        for the sender; but the loop calls this, and a missing method is an error it
        reports every time (as ``asyncio.BaseProtocol``'s, a no-op)."""
        return None

    def resume_writing(self) -> None:
        """The send buffer drained below its low-water mark (see :meth:`pause_writing`)."""
        return None
