"""Attacks on the ninth session's changes: the compiled UDP receive path (net/pump.py).

A peer that makes sipguard answer faster than the socket drains (a flood of requests,
each drawing a response, while the kernel's send queue is full) fills the UDP
transport's write buffer; the event loop then asks the datagram protocol to pause and
later to resume writing (``asyncio.BaseProtocol.pause_writing``/``resume_writing``, the
flow control every protocol has). :class:`~sipguard.net.pump.UdpReceiver` is handed to
the loop as that protocol and must answer both, as the ``asyncio.DatagramProtocol`` it
replaced did: otherwise every such turn is an ``AttributeError`` the loop reports as an
error with its traceback (a log flood of the attacker's making).
"""

from __future__ import annotations

import asyncio
import socket
from typing import Any, cast

import pytest

from sipguard.net.pump import UdpReceiver
from sipguard.sip.transaction import Flow


def test_the_udp_receiver_answers_the_loops_flow_control() -> None:
    receiver = UdpReceiver(lambda data, flow: None, 0, lambda transport: None)
    receiver.pause_writing()
    receiver.resume_writing()


def test_a_full_udp_send_buffer_makes_no_error_in_the_loop() -> None:
    """uvloop (production): a datagram socket whose peer does not read fills the
    transport's buffer past its high-water mark, then drains: no error reported."""
    uvloop = pytest.importorskip("uvloop")
    errors: list[dict[str, Any]] = []
    fed: list[tuple[bytes, Flow]] = []

    async def main() -> None:
        loop = asyncio.get_running_loop()
        loop.set_exception_handler(lambda _loop, ctx: errors.append(ctx))
        ours, peer = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
        ours.setblocking(False)
        peer.setblocking(False)
        receiver = UdpReceiver(lambda data, flow: fed.append((data, flow)), 0, lambda t: None)
        protocol = cast(asyncio.DatagramProtocol, receiver)  # as transport.py hands it
        made, _ = await loop.create_datagram_endpoint(lambda: protocol, sock=ours)
        transport: Any = made  # uvloop's: with the write buffer of every transport
        try:
            transport.set_write_buffer_limits(high=4096)
            sent = 0
            while transport.get_write_buffer_size() <= 4096 and sent < 100_000:
                transport.sendto(b"x" * 512)  # the peer reads nothing: the queue fills
                sent += 1
            assert transport.get_write_buffer_size() > 4096  # past the high-water mark
            for _ in range(200):  # the peer reads: the buffer drains, writing resumes
                try:
                    while True:
                        peer.recv(2048)
                except BlockingIOError:
                    pass
                if transport.get_write_buffer_size() == 0:
                    break
                await asyncio.sleep(0.005)
            assert transport.get_write_buffer_size() == 0
        finally:
            transport.close()
            await asyncio.sleep(0)
            peer.close()

    uvloop.run(main())
    assert [ctx.get("message") for ctx in errors] == []
