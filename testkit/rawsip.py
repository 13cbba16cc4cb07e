"""Raw SIP over sockets towards a sipguard process: requests written out by hand, a UDP
peer, and the few readers the driver's tests need (no parser of sipguard's own)."""

from __future__ import annotations

import contextlib
import random
import socket
import time
import urllib.request
from typing import Any

from sipguard.sip.message import Request, parse_message
from testkit.sipp import CALLER_IP, SIPGUARD_IP, Setup, Sipguard


def sip_request(
    method: str,
    *,
    local: tuple[str, int],
    transport: str = "UDP",
    ruri: str | None = None,
    call_id: str | None = None,
    from_tag: str | None = None,
    to_tag: str | None = None,
    branch: str | None = None,
    cseq: int = 1,
    user: str = "0201234567",
    target: str = f"{SIPGUARD_IP}",
    extra: tuple[tuple[str, str], ...] = (),
    body: bytes = b"",
) -> bytes:
    """A well-formed request from ``local`` (host, port) to sipguard."""
    host, port = local
    hp = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    ruri = ruri or f"sip:{user}@{target}"
    call_id = call_id or f"{random.getrandbits(64):x}@test"
    from_tag = from_tag or f"{random.getrandbits(32):x}"
    branch = branch or f"z9hG4bK{random.getrandbits(64):x}"
    to = f"<sip:{user}@{target}>" + (f";tag={to_tag}" if to_tag else "")
    lines = [
        f"{method} {ruri} SIP/2.0",
        f"Via: SIP/2.0/{transport} {hp};branch={branch};rport",
        "Max-Forwards: 70",
        f"From: <sip:+31201234567@{host if ':' not in host else '[' + host + ']'}>;tag={from_tag}",
        f"To: {to}",
        f"Call-ID: {call_id}",
        f"CSeq: {cseq} {method}",
        f"Contact: <sip:caller@{hp}>",
        *(f"{n}: {v}" for n, v in extra),
    ]
    if body:
        lines.append("Content-Type: application/sdp")
    lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


SDP = (
    b"v=0\r\no=- 1 1 IN IP4 127.0.0.3\r\ns=-\r\nc=IN IP4 127.0.0.3\r\nt=0 0\r\n"
    b"m=audio 40000 RTP/AVP 0\r\na=rtpmap:0 PCMU/8000\r\n"
)


def status_of(data: bytes) -> int | None:
    if data.startswith(b"SIP/2.0 "):
        with contextlib.suppress(ValueError, IndexError):
            return int(data.split(b" ", 2)[1])
    return None


def requests_in(msgs: list[bytes]) -> list[str]:
    """The methods of the requests among ``msgs``."""
    return [m.split(b" ", 1)[0].decode() for m in msgs if status_of(m) is None]


def header(data: bytes, name: str) -> str | None:
    """The first value of header ``name`` (full name only) in a message, or None."""
    head = data.split(b"\r\n\r\n", 1)[0].decode("utf-8", "replace")
    for line in head.split("\r\n")[1:]:
        n, sep, v = line.partition(":")
        if sep and n.strip().lower() == name.lower():
            return v.strip()
    return None


def ack_for(request: bytes, response: bytes) -> bytes:
    """The ACK of a non-2xx final response to ``request`` (same branch, §17.1.1.3)."""
    req = request.split(b"\r\n\r\n", 1)[0].decode()
    lines = req.split("\r\n")
    ruri = lines[0].split(" ")[1]
    out = [f"ACK {ruri} SIP/2.0"]
    for line in lines[1:]:
        name = line.split(":", 1)[0].strip().lower()
        if name in ("via", "from", "call-id", "max-forwards"):
            out.append(line)
        elif name == "cseq":
            out.append(f"CSeq: {line.split(':', 1)[1].split()[0]} ACK")
        elif name == "to":
            out.append(f"To: {header(response, 'To')}")
    out.append("Content-Length: 0")
    return ("\r\n".join(out) + "\r\n\r\n").encode()


class UdpPeer:
    """A UDP socket on 127.0.0.3 (or ``host``) that talks to sipguard."""

    def __init__(self, host: str = CALLER_IP, port: int = 0) -> None:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self.sock = socket.socket(family, socket.SOCK_DGRAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 21)
        self.sock.bind((host, port))
        self.local: tuple[str, int] = self.sock.getsockname()[:2]

    def send(self, data: bytes, dest: tuple[str, int]) -> None:
        with contextlib.suppress(OSError):
            self.sock.sendto(data, dest)

    def recv_all(self, wait: float) -> list[bytes]:
        """Every datagram that arrives within ``wait`` seconds."""
        out: list[bytes] = []
        deadline = time.monotonic() + wait
        while (left := deadline - time.monotonic()) > 0:
            self.sock.settimeout(left)
            try:
                out.append(self.sock.recv(70000))
            except (TimeoutError, OSError):
                break
        return out

    def transact(self, data: bytes, dest: tuple[str, int], timeout: float = 3.0) -> bytes | None:
        """Send a request; the first final response (None if none came in ``timeout``)."""
        self.send(data, dest)
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            self.sock.settimeout(left)
            try:
                msg = self.sock.recv(70000)
            except (TimeoutError, OSError):
                return None
            st = status_of(msg)
            if st is not None and st >= 200:
                return msg
        return None

    def close(self) -> None:
        self.sock.close()


def sipguard_addr(setup: Setup) -> tuple[str, int]:
    return (SIPGUARD_IP, setup.sip_port)


def scrape_samples(sg: Sipguard) -> list[tuple[str, dict[str, str], float]]:
    """Every sample of /metrics as (name, labels, value), parsed by prometheus_client."""
    from prometheus_client.parser import text_string_to_metric_families

    with urllib.request.urlopen(sg.url("/metrics"), timeout=5.0) as r:
        text = r.read().decode()
    out = []
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out.append((s.name, dict(s.labels), float(s.value)))
    return out


def tcp_read_until_closed(sock: socket.socket, timeout: float) -> tuple[bytes, bool]:
    """What arrives on ``sock`` within ``timeout``, and whether the peer closed it."""
    got = b""
    deadline = time.monotonic() + timeout
    while (left := deadline - time.monotonic()) > 0:
        sock.settimeout(left)
        try:
            chunk = sock.recv(65536)
        except TimeoutError:
            return got, False
        except OSError:
            return got, True
        if not chunk:
            return got, True
        got += chunk
    return got, False


def tcp_transact(sock: socket.socket, data: bytes, timeout: float = 3.0) -> bytes | None:
    """Send a request on a connection; the first final response that comes back."""
    sock.sendall(data)
    buf = b""
    deadline = time.monotonic() + timeout
    while (left := deadline - time.monotonic()) > 0:
        sock.settimeout(left)
        try:
            chunk = sock.recv(65536)
        except (TimeoutError, OSError):
            return None
        if not chunk:
            return None
        buf += chunk
        while b"\r\n\r\n" in buf:
            head, _, rest = buf.partition(b"\r\n\r\n")
            clen = int(header(head + b"\r\n\r\n", "Content-Length") or 0)
            msg, buf = head + b"\r\n\r\n" + rest[:clen], rest[clen:]
            st = status_of(msg)
            if st is not None and st >= 200:
                return msg
    return None


def wait_for(pred: Any, timeout: float, step: float = 0.05) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return True
        time.sleep(step)
    return bool(pred())


def tcp_connect(setup: Setup) -> socket.socket:
    return socket.create_connection(
        sipguard_addr(setup), timeout=2.0, source_address=(CALLER_IP, 0)
    )


def b_leg_invite(callee: UdpPeer, sg: Sipguard) -> Request:
    """The B-leg INVITE as the UDP ``callee`` gets it (within 3 s)."""
    b_invite = None
    deadline = time.monotonic() + 3.0
    while b_invite is None and time.monotonic() < deadline:
        b_invite = next((m for m in callee.recv_all(0.1) if m.startswith(b"INVITE ")), None)
    assert b_invite is not None, sg.log_tail()
    req = parse_message(b_invite)
    assert isinstance(req, Request)
    return req


def tcp_read_message(sock: socket.socket, start: bytes, timeout: float = 5.0) -> bytes:
    """What arrives on ``sock`` until a message beginning with ``start`` is in it."""
    got = b""
    deadline = time.monotonic() + timeout
    while start not in got and time.monotonic() < deadline:
        more, closed = tcp_read_until_closed(sock, 0.2)
        got += more
        if closed:
            break
    return got
