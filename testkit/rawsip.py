"""Raw SIP over sockets towards a sipguard process: requests written out by hand, a UDP
peer, and the few readers the driver's tests need (no parser of sipguard's own)."""

from __future__ import annotations

import contextlib
import random
import socket
import time
import urllib.request

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
