"""The floor relay's process: a bare stateless SIP relay on uvloop (``testkit/floor.py``).

    python testkit/floor_relay.py LISTEN_IP:PORT TARGET_IP:PORT

It imports nothing of the runner or of sipguard, so that its memory and start-up are
its own. Requests (from the SIPp uac) get one ``Via`` line of its own pushed on top and
go to TARGET (the SIPp uas); responses lose that top ``Via`` value and go to the address
in the next one (the uac's). SIPp's uac sends its ACK and BYE to the relay too, as it
sends everything to the address it was given, so no Record-Route is needed.
"""

from __future__ import annotations

import asyncio
import ipaddress
import sys
from typing import cast

_VIA = b"\r\nVia: "
_RESPONSE = b"SIP/2.0 "
_UDP = b"SIP/2.0/UDP "
_BRANCH = b"branch=z9hG4bK"


def via_prefix(host: str, port: int) -> bytes:
    """The start of the relay's own Via line; the caller's branch value is appended."""
    return f"Via: SIP/2.0/UDP {host}:{port};branch=z9hG4bKfl".encode()


def _token_end(data: bytes, start: int, stop: int) -> int:
    """Where the parameter value starting at ``start`` ends (before ``stop`` at most)."""
    end = stop
    for sep in (b";", b",", b" ", b"\t"):
        i = data.find(sep, start, end)
        if i >= 0:
            end = i
    return end


def relay(
    data: bytes, prefix: bytes, target: tuple[str, int]
) -> tuple[bytes, tuple[str, int]] | None:
    """What to send, and where, for one datagram; ``None`` drops it (not what it relays).

    A request gets ``prefix`` + the top branch's value after ``z9hG4bK`` as a new top Via
    (unique per client transaction, as RFC 3261 §8.1.1.7 asks, and the same for a
    retransmission) and goes to ``target``. A response loses its top Via value, whether
    on a line of its own or first in a comma list (SIPp's ``[last_Via:]`` folds them),
    and goes to the sent-by address of the next, an IP address (port 5060 if it has
    none).
    """
    i = data.find(_VIA)
    if i < 0:
        return None
    i += 2  # the start of the top Via line
    eol = data.find(b"\r\n", i)
    if eol < 0:
        return None
    if not data.startswith(_RESPONSE):
        b = data.find(_BRANCH, i, eol)
        if b < 0:
            return None
        b += len(_BRANCH)
        branch = data[b : _token_end(data, b, eol)]
        return data[:i] + prefix + branch + b"\r\n" + data[i:], target
    comma = data.find(b",", i, eol)
    if comma > 0:  # "Via: ours, theirs": keep "Via: " and theirs
        v = comma + 1
        while data[v : v + 1] in (b" ", b"\t"):
            v += 1
        out = data[: i + 5] + data[v:]
    else:  # our own line: drop it; theirs is the next line
        if not data.startswith(b"Via: ", eol + 2):
            return None
        out = data[:i] + data[eol + 2 :]
        v = eol + 2 + 5
    if not data.startswith(_UDP, v):
        return None
    sent_by = v + len(_UDP)
    end = data.find(b"\r\n", sent_by)
    if end < 0:
        return None
    host, _, port = data[sent_by : _token_end(data, sent_by, end)].partition(b":")
    addr = _HOSTS.get(host)
    try:
        if addr is None:
            addr = str(ipaddress.ip_address(host.decode("ascii")))
            if len(_HOSTS) < 64:  # the few peers of a run; never grows with input
                _HOSTS[host] = addr
        number = int(port) if port else 5060
    except ValueError:
        return None
    if not 0 < number < 65536:
        return None
    return out, (addr, number)


_HOSTS: dict[bytes, str] = {}  # sent-by hosts checked to be IP addresses


def serve(listen: tuple[str, int], target: tuple[str, int]) -> None:
    """Relay on uvloop until killed."""
    import uvloop

    prefix = via_prefix(*listen)

    class Relay(asyncio.DatagramProtocol):
        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            self.transport = cast(asyncio.DatagramTransport, transport)  # uvloop's UDPTransport

        def datagram_received(self, data: bytes, addr: tuple[str | object, int]) -> None:
            sent = relay(data, prefix, target)
            if sent is not None:
                self.transport.sendto(*sent)

    async def run() -> None:
        loop = asyncio.get_running_loop()
        await loop.create_datagram_endpoint(Relay, local_addr=listen)
        await asyncio.Event().wait()

    uvloop.run(run())


def _address(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    return host, int(port)


if __name__ == "__main__":
    if len(sys.argv) != 3:
        print("usage: floor_relay.py LISTEN_IP:PORT TARGET_IP:PORT", file=sys.stderr)
        sys.exit(2)
    serve(_address(sys.argv[1]), _address(sys.argv[2]))
