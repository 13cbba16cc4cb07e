"""The compiled per-message path between the sockets and the core (sipguard.net.pump)."""

from __future__ import annotations

import asyncio
import socket
from typing import Any, cast

from sipguard.net.pump import Pump, UdpReceiver, message_kind
from sipguard.sip.transaction import Flow


def test_outgoing_messages_are_counted_by_method_or_status_class() -> None:
    assert message_kind(b"INVITE sip:1@h SIP/2.0\r\n") == "INVITE"
    assert message_kind(b"BYE sip:1@h SIP/2.0\r\n") == "BYE"
    assert message_kind(b"SIP/2.0 183 Session Progress\r\n") == "1xx"
    assert message_kind(b"SIP/2.0 503 Service Unavailable\r\n") == "5xx"
    # never a label a peer wrote: an unknown method, or no start line at all
    assert message_kind(b"SECRET-0301234567 sip:x SIP/2.0\r\n") == "other"
    assert message_kind(b"FOO sip:x SIP/2.0\r\n") == "other"
    assert message_kind(b"SIP/2.0 ") == "other"
    assert message_kind(b"") == "other"


def test_each_source_address_keeps_one_flow() -> None:
    fed: list[tuple[bytes, Flow]] = []
    made: list[Any] = []
    receiver = UdpReceiver(lambda data, flow: fed.append((data, flow)), 3, made.append)
    receiver.connection_made("transport")
    assert made == ["transport"]
    receiver.datagram_received(b"a", ("127.0.0.2", 5060))
    receiver.datagram_received(b"b", ("127.0.0.2", 5060))
    receiver.datagram_received(b"c", ("::1", 5062, 0, 0))  # IPv6: four fields, two kept
    (_, f1), (_, f2), (_, f3) = fed
    assert f1 is f2 and f1 == Flow("udp", 3, "127.0.0.2", 5060)
    assert f3 == Flow("udp", 3, "::1", 5062)
    receiver.error_received(OSError("ICMP port unreachable"))  # logged at debug, no raise
    receiver.connection_lost(None)


class _Transport:
    def __init__(self) -> None:
        self.sent: list[tuple[bytes, tuple[str, int]]] = []

    def sendto(self, data: bytes, addr: tuple[str, int]) -> None:
        self.sent.append((data, addr))


class _Endpoint:
    def __init__(self) -> None:
        self.transport: _Transport | None = _Transport()


class _Core:
    """What of the core the pump reads and calls."""

    def __init__(self) -> None:
        self.outbox: list[tuple[Flow, bytes]] = []
        self.media_outbox: list[tuple[tuple[str, int], bytes]] = []
        self.cdr_out: list[object] = []
        self.stats_out: dict[str, int] = {}
        self.accepting = True
        self.wall_offset = 0.0
        self.deadline: float | None = None
        self.received: list[bytes] = []
        self.fired: list[float] = []

    def receive(self, data: bytes, flow: Flow, now: float) -> None:
        self.received.append(data)
        if data == b"boom":
            raise RuntimeError("a bug in the core")
        self.outbox.append((flow, b"SIP/2.0 200 OK\r\n\r\n"))
        self.outbox.append((Flow("tcp", 1, "127.0.0.3", 5060, 7), b"BYE sip:x SIP/2.0\r\n"))
        self.media_outbox.append((("127.0.0.9", 2223), b"d1:xe"))
        self.cdr_out.append("record")

    def next_deadline(self) -> float | None:
        return self.deadline

    def handle_timer(self, now: float) -> None:
        self.fired.append(now)


class _Writer:
    def __init__(self) -> None:
        self.records: list[object] = []

    def submit(self, record: object) -> None:
        self.records.append(record)

    def accepting_calls(self) -> bool:
        return False


class _Media:
    def __init__(self) -> None:
        self.sent: list[tuple[tuple[str, int], bytes]] = []

    def send(self, addr: tuple[str, int], data: bytes) -> None:
        self.sent.append((addr, data))


async def test_what_a_message_made_goes_out_and_the_timer_follows_the_core() -> None:
    loop = asyncio.get_running_loop()
    core, writer, media, ep = _Core(), _Writer(), _Media(), _Endpoint()
    streamed: list[tuple[Flow, bytes]] = []
    pump = Pump(
        core,  # type: ignore[arg-type]
        loop,
        {0: ep},
        lambda flow, data: streamed.append((flow, data)),
        media,
        writer,  # type: ignore[arg-type]
        batching=False,
    )
    core.deadline = loop.time() + 0.01
    pump.feed(b"INVITE", Flow("udp", 0, "127.0.0.2", 5060))
    assert ep.transport is not None
    assert ep.transport.sent == [(b"SIP/2.0 200 OK\r\n\r\n", ("127.0.0.2", 5060))]
    assert [d for _, d in streamed] == [b"BYE sip:x SIP/2.0\r\n"]  # TCP: the driver's
    assert media.sent == [(("127.0.0.9", 2223), b"d1:xe")]
    assert writer.records == ["record"] and core.accepting is False
    assert core.stats_out == {"2xx": 1, "BYE": 1}
    assert not core.outbox and not core.media_outbox and not core.cdr_out
    assert pump.fed == 1
    core.deadline = None  # the timer fires once, then nothing is armed
    for _ in range(50):
        await asyncio.sleep(0.01)
        if core.fired:
            break
    assert len(core.fired) == 1
    # a bug in the core is logged, never raised into the transport; the next one goes on
    pump.feed(b"boom", Flow("udp", 0, "127.0.0.2", 5060))
    assert pump.fed == 2 and ep.transport.sent[-1][0] == b"SIP/2.0 200 OK\r\n\r\n"
    # a listen entry without its transport (closed) sends nothing, and does not raise
    ep.transport = None
    pump.feed(b"INVITE", Flow("udp", 0, "127.0.0.2", 5060))
    pump.close()


async def test_batched_sends_go_out_once_per_loop_iteration() -> None:
    loop = asyncio.get_running_loop()
    core, ep = _Core(), _Endpoint()
    pump = Pump(core, loop, {0: ep}, lambda f, d: None, _Media(), None, batching=True)  # type: ignore[arg-type]
    flow = Flow("udp", 0, "127.0.0.2", 5060)
    pump.feed(b"1", flow)
    pump.feed(b"2", flow)
    assert ep.transport is not None and ep.transport.sent == []  # held to the iteration's end
    await asyncio.sleep(0)
    assert len(ep.transport.sent) == 2 and core.cdr_out == []  # no writer: records dropped
    pump.close()


class _SendBufferFull(socket.socket):
    """A UDP socket whose kernel send buffer is full until told otherwise (EAGAIN)."""

    full = True

    def sendto(self, data: Any, *args: Any) -> int:
        if self.full:
            raise BlockingIOError
        return int(super().sendto(data, *args))


async def test_rev9_a_full_send_buffer_pauses_the_receiver_without_an_error() -> None:
    """Under load a UDP send can find the socket's buffer full: the loop queues the
    datagram and, past its high-water mark, calls the protocol's ``pause_writing`` (then
    ``resume_writing`` once drained): asyncio's ``_FlowControlMixin`` and uvloop's
    ``UVBaseTransport._maybe_pause_protocol`` alike. The receiver must have both (the
    ``asyncio.DatagramProtocol`` the driver's endpoint was had them), or each pause and
    resume is reported to the loop's exception handler as a failure."""
    loop = asyncio.get_running_loop()
    errors: list[dict[str, Any]] = []
    old_handler = loop.get_exception_handler()
    loop.set_exception_handler(lambda _loop, context: errors.append(context))
    peer = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    peer.bind(("127.0.0.1", 0))
    sock = _SendBufferFull(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    sock.setblocking(False)
    made: list[Any] = []  # the loop's transport: flow control too (WriteTransport)
    receiver = UdpReceiver(lambda data, flow: None, 0, made.append)
    try:
        await loop.create_datagram_endpoint(
            lambda: cast(asyncio.DatagramProtocol, receiver), sock=sock
        )
        (transport,) = made
        transport.set_write_buffer_limits(high=1)
        transport.sendto(b"SIP/2.0 503 Service Unavailable\r\n\r\n", peer.getsockname())
        sock.full = False  # the kernel drained it: the loop sends what it queued
        for _ in range(50):
            await asyncio.sleep(0.01)
            if not transport.get_write_buffer_size():
                break
        assert peer.recv(100).startswith(b"SIP/2.0 503")
        assert errors == []
        transport.close()
    finally:
        loop.set_exception_handler(old_handler)
        peer.close()
