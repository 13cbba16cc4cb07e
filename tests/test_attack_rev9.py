"""Attacks on the ninth session's changes: a limit's 503 answered unread (b2bua/unread.py),
the compiled UDP receive path (net/pump.py).

A limit's 503 is answered from the INVITE's raw lines only where it is no larger than
the INVITE ("never an amplifier", b2bua/shed.py); otherwise the INVITE is read in full,
and the whole way answered the same 503, stamped (``received``), with long header names
and a Content-Length: larger than a small request, towards a possibly forged UDP source.
The same held for the stateless 403 to a source of no trunk. Fixed: over UDP, a
stateless refusal larger than its request is not sent, only counted
(``TransactionLayer.withheld``; sipguard.sip.transaction.fits).

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

from sipguard.metrics import Metrics
from sipguard.net import server
from sipguard.net.pump import UdpReceiver
from sipguard.net.transport import UdpEndpoint
from sipguard.sip.transaction import Flow
from testkit.callsim import STRANGER, Wire, default_config, invite
from testkit.metrics import sample


def small(n: int, method: str = "INVITE") -> bytes:
    """A small request, every field it needs, compact names (RFC 3261 §7.3.3)."""
    return (
        f"{method} sip:1@h SIP/2.0\r\nv:SIP/2.0/UDP h;branch=z9hG4bK{n}\r\n"
        f"f:<sip:a@h>;tag={n}\r\nt:<sip:1@h>\r\ni:{n}\r\nCSeq:1 {method}\r\n"
        "m:<sip:h>\r\n\r\n"
    ).encode()


def test_a_limits_503_is_no_larger_than_a_small_invite() -> None:
    """The trunk draining, its refusal record of the second written: every further
    INVITE gets at most one 503, never larger than itself (no amplification): a small one
    gets none, and the refusal is still counted."""
    w = Wire(default_config("limits: {refused_cdr_rps: 1}\n"))
    w.core.drain()
    for n in range(1, 5):
        req = small(n)
        withheld = w.core.layer.withheld
        w.from_caller(req)
        w.flush()
        out = list(w.to_caller)
        w.to_caller.clear()
        assert len(out) <= 1 and all(len(o) <= len(req) for o in out), (n, out)
        assert out or w.core.layer.withheld == withheld + 1
    # the same INVITE as a phone writes it (long names, an offer) gets its 503
    w.from_caller(invite(9))
    w.flush()
    (resp,) = w.to_caller
    assert resp.startswith(b"SIP/2.0 503 ") and len(resp) <= len(invite(9))


def test_a_strangers_403_is_no_larger_than_its_request() -> None:
    """A source of no trunk (a spoofed victim's address) gets at most one 403 per
    request, no larger than the request: a small one gets none."""
    w = Wire()
    for n, method in enumerate(("OPTIONS", "INVITE", "BYE")):
        req = small(n, method)
        withheld = w.core.layer.withheld
        w.from_peer(STRANGER, req)
        w.flush()
        out = w.others.pop(STRANGER, [])
        assert len(out) <= 1 and all(len(o) <= len(req) for o in out), (method, out)
        assert out or w.core.layer.withheld == withheld + 1
    big = invite(7, addr=STRANGER)  # an INVITE with its offer: its 403 is smaller
    w.from_peer(STRANGER, big)
    w.flush()
    (resp,) = w.others.pop(STRANGER)
    assert resp.startswith(b"SIP/2.0 403 ") and len(resp) <= len(big)


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


def test_a_draining_probe_hears_its_503_whatever_its_size() -> None:
    """A balancer's OPTIONS probe (Kamailio's dispatcher writes a short one) must hear
    the draining element's 503 to take it out at once: sent even when larger."""
    w = Wire()
    w.core.drain()
    probe = small(1, "OPTIONS")
    w.from_caller(probe)
    w.flush()
    (resp,) = w.to_caller
    assert resp.startswith(b"SIP/2.0 503 ") and len(resp) > len(probe)
    assert b"Allow" not in resp  # capabilities are a 200's (RFC 3261 §11.2)


async def test_a_withheld_refusal_is_counted_at_the_scrape() -> None:
    """Through the driver on a real socket: a small request from a source of no trunk
    gets no 403 (larger than itself), and the scrape shows why: the refusal in
    sipguard_rejected_total{reason="unknown_source"} and in
    sipguard_refusals_withheld_total. A request as phones write it still gets its 403."""
    metrics = Metrics()
    driver = server.Driver(default_config(), metrics, None)
    driver.udp[0] = await UdpEndpoint.create(driver, 0, "127.0.0.1", 0)
    sock = driver.udp[0].sock
    assert sock is not None
    addr = sock.getsockname()
    client = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    client.bind(("127.0.0.250", 0))  # no trunk's source in this configuration
    client.setblocking(False)
    loop = asyncio.get_running_loop()
    try:
        client.sendto(small(1, "OPTIONS"), addr)
        for _ in range(200):
            await asyncio.sleep(0.005)
            if driver.core.layer.withheld:
                break
        await asyncio.sleep(0.05)
        with pytest.raises(BlockingIOError):
            client.recv(65535)  # nothing came back
        driver.export_stats()
        assert sample(metrics, "sipguard_refusals_withheld_total") == 1
        assert sample(metrics, "sipguard_rejected_total", reason="unknown_source") == 1

        big = invite(2)  # long names, an offer: its 403 is smaller
        client.sendto(big, addr)
        resp = await asyncio.wait_for(loop.sock_recv(client, 65535), 2.0)
        assert resp.startswith(b"SIP/2.0 403 ") and len(resp) <= len(big)
        driver.export_stats()
        assert sample(metrics, "sipguard_refusals_withheld_total") == 1
        assert sample(metrics, "sipguard_rejected_total", reason="unknown_source") == 2
    finally:
        client.close()
        driver.close()
