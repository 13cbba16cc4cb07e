"""The outsider's tools for the attack tests (issue 15), on loopback only.

* :class:`Sink` — a UDP peer that stands for a trunk's target and answers everything at
  once (``INVITE`` → ``486``, anything else → ``200``; an ``ACK`` gets nothing), so that
  replayed INVITEs that sipguard admits end quickly without involving SIPp;
* :class:`Collector` — a UDP socket on an address of its own that sends and collects
  everything sipguard answers, in a thread; it ACKs final responses to INVITEs so that
  sipguard does not retransmit them;
* :func:`tcp_exchange` — one message on a TCP connection of its own, what came back;
* :class:`Flooder` — a fast UDP sender of prepared datagrams at a given rate for a given
  time (OPTIONS and BYE floods), in a thread, with the rate it achieved;
* :func:`fd_count` and :func:`rss_kb` — what ``/proc/PID`` says of a process.

Every loop here is bounded in count and time; every socket is closed by ``close()``/
``stop()``; nothing here starts a process.
"""

from __future__ import annotations

import contextlib
import os
import random
import re
import socket
import threading
import time
from collections.abc import Sequence
from pathlib import Path

_CALL_ID = re.compile(rb"^(?:call-id|i)[ \t]*:[ \t]*(.*?)[ \t]*$", re.I | re.M)
_CSEQ = re.compile(rb"^cseq[ \t]*:[ \t]*(\d+)[ \t]+(\S+)", re.I | re.M)
_FINAL = re.compile(rb"SIP/2\.0 [2-6]\d\d ")
_KEEP = (b"via", b"v", b"from", b"f", b"to", b"t", b"call-id", b"i", b"cseq")


def call_key(data: bytes) -> tuple[bytes, bytes] | None:
    """(Call-ID, CSeq method) of a message, read naively; None if either is missing."""
    head = data.split(b"\r\n\r\n", 1)[0]
    cid = _CALL_ID.search(head)
    cseq = _CSEQ.search(head)
    if cid is None or cseq is None:
        return None
    return cid.group(1), cseq.group(2).upper()


def status_of(data: bytes) -> int | None:
    if data.startswith(b"SIP/2.0 "):
        with contextlib.suppress(ValueError, IndexError):
            return int(data[8:11])
    return None


def answer(request: bytes, status: int, reason: str) -> bytes:
    """A response to ``request`` that copies its Via, From, To (a tag added), Call-ID and
    CSeq lines, read naively."""
    head = request.split(b"\r\n\r\n", 1)[0].split(b"\r\n")
    out = [f"SIP/2.0 {status} {reason}".encode()]
    for line in head[1:]:
        name = line.split(b":", 1)[0].strip().lower()
        if name in _KEEP:
            tagless = name in (b"to", b"t") and b";tag=" not in line.lower()
            out.append(line + b";tag=sink" if tagless else line)
    out.append(b"Content-Length: 0")
    return b"\r\n".join(out) + b"\r\n\r\n"


def ack_of(response: bytes, ruri: str) -> bytes | None:
    """The ACK of a final response to an INVITE (its Via, From, To, Call-ID, CSeq)."""
    head = response.split(b"\r\n\r\n", 1)[0].split(b"\r\n")
    out = [f"ACK {ruri} SIP/2.0".encode()]
    via_done = False
    for line in head[1:]:
        name = line.split(b":", 1)[0].strip().lower()
        if name in (b"via", b"v"):
            if not via_done:
                out.append(line)
                via_done = True
        elif name in (b"from", b"f", b"to", b"t", b"call-id", b"i"):
            out.append(line)
        elif name == b"cseq":
            num = line.split(b":", 1)[1].split()
            if not num:
                return None
            out.append(b"CSeq: " + num[0] + b" ACK")
    out += [b"Max-Forwards: 70", b"Content-Length: 0"]
    return b"\r\n".join(out) + b"\r\n\r\n"


class _UdpThread:
    def __init__(self, host: str, port: int = 0) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 22)
        self.sock.bind((host, port))
        self.sock.settimeout(0.2)
        self.addr: tuple[str, int] = self.sock.getsockname()[:2]
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> _UdpThread:
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                data, src = self.sock.recvfrom(70000)
            except (TimeoutError, OSError):
                continue
            self.handle(data, src)

    def handle(self, data: bytes, src: tuple[str, int]) -> None:
        raise NotImplementedError

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(5.0)
        self.sock.close()


class Sink(_UdpThread):
    """A trunk target that answers at once: INVITE 486, ACK nothing, anything else 200."""

    def __init__(self, host: str, port: int = 0) -> None:
        super().__init__(host, port)
        self.requests = 0

    def handle(self, data: bytes, src: tuple[str, int]) -> None:
        if data.startswith(b"SIP/2.0") or data.startswith(b"ACK "):
            return
        self.requests += 1
        if data.startswith(b"INVITE "):
            reply = answer(data, 486, "Busy Here")
        else:
            reply = answer(data, 200, "OK")
        with contextlib.suppress(OSError):
            self.sock.sendto(reply, src)


class Collector(_UdpThread):
    """Sends requests from its own address and keeps every datagram that comes back."""

    def __init__(self, host: str, dest: tuple[str, int], ruri: str) -> None:
        super().__init__(host)
        self.dest = dest
        self.ruri = ruri
        self.received: list[bytes] = []
        self._lock = threading.Lock()

    def handle(self, data: bytes, src: tuple[str, int]) -> None:
        with self._lock:
            self.received.append(data)
        status = status_of(data)
        if status is not None and status >= 200:
            key = call_key(data)
            if key is not None and key[1] == b"INVITE":
                ack = ack_of(data, self.ruri)
                if ack is not None:
                    with contextlib.suppress(OSError):
                        self.sock.sendto(ack, self.dest)

    def send_paced(self, datagrams: Sequence[bytes], rate: float) -> float:
        """Send every datagram at about ``rate`` a second; the seconds it took."""
        start = time.monotonic()
        batch = max(1, int(rate / 100))  # a batch every 10 ms
        for i in range(0, len(datagrams), batch):
            for data in datagrams[i : i + batch]:
                with contextlib.suppress(OSError):
                    self.sock.sendto(data, self.dest)
            ahead = start + (i + batch) / rate - time.monotonic()
            if ahead > 0:
                time.sleep(ahead)
        return time.monotonic() - start

    def take(self) -> list[bytes]:
        with self._lock:
            out, self.received = self.received, []
        return out


def tcp_exchange(
    data: bytes, source: str, dest: tuple[str, int], wait: float = 0.5
) -> tuple[list[bytes], bool]:
    """Connect from ``source`` to ``dest``, send ``data``, read for ``wait`` seconds (or
    until sipguard closes). (what came back as raw chunks, whether sipguard closed)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
    chunks: list[bytes] = []
    closed = False
    try:
        sock.bind((source, 0))
        sock.settimeout(2.0)
        sock.connect(dest)
        sock.sendall(data)
        deadline = time.monotonic() + wait
        while (left := deadline - time.monotonic()) > 0:
            sock.settimeout(left)
            try:
                chunk = sock.recv(65536)
            except TimeoutError:
                break
            if not chunk:
                closed = True
                break
            chunks.append(chunk)
            if _FINAL.search(b"".join(chunks)):
                break  # a final response: enough
    except OSError:
        closed = True
    finally:
        sock.close()
    return chunks, closed


def split_stream(data: bytes) -> list[bytes]:
    """Responses read back from a stream, cut at each start line (enough to count them)."""
    parts = re.split(rb"(?=SIP/2\.0 \d\d\d )", data)
    return [p for p in parts if p.startswith(b"SIP/2.0 ")]


class Flooder:
    """Prepared datagrams sent round-robin from ``source`` to ``dest`` at up to ``rate``
    a second for ``seconds``, in a thread; what comes back is counted, not kept."""

    def __init__(
        self,
        source: str,
        dest: tuple[str, int],
        datagrams: Sequence[bytes],
        rate: float,
        seconds: float,
    ) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 1 << 22)
        self.sock.bind((source, 0))
        self.sock.setblocking(False)
        self.dest = dest
        self.datagrams = list(datagrams)
        self.rate = rate
        self.seconds = seconds
        self.sent = 0
        self.answers = 0
        self.elapsed = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> Flooder:
        self._thread.start()
        return self

    def _drain(self) -> None:
        for _ in range(1000):
            try:
                self.sock.recv(70000)
            except (BlockingIOError, OSError):
                return
            self.answers += 1

    def _run(self) -> None:
        start = time.monotonic()
        batch = max(1, int(self.rate / 200))  # a batch every 5 ms
        n = len(self.datagrams)
        i = 0
        while not self._stop.is_set():
            now = time.monotonic()
            if now - start >= self.seconds:
                break
            due = int((now - start) * self.rate) + batch
            while self.sent < due:
                with contextlib.suppress(OSError):
                    self.sock.sendto(self.datagrams[i % n], self.dest)
                i += 1
                self.sent += 1
            self._drain()
            time.sleep(0.005)
        self.elapsed = time.monotonic() - start

    @property
    def achieved_rate(self) -> float:
        return self.sent / self.elapsed if self.elapsed else 0.0

    def wait(self) -> None:
        self._thread.join(self.seconds + 10)

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(5.0)
        self._drain()
        self.sock.close()


def flood_requests(method: str, source: str, count: int, target: str) -> list[bytes]:
    """``count`` distinct out-of-dialog-looking requests (or in-dialog for BYE: a To tag)
    from ``source``: Call-IDs and branches all differ, as a scanner's do."""
    out = []
    salt = random.getrandbits(32)
    for n in range(count):
        to_tag = f";tag=x{n}" if method == "BYE" else ""
        out.append(
            (
                f"{method} sip:{target} SIP/2.0\r\n"
                f"Via: SIP/2.0/UDP {source}:5060;branch=z9hG4bK{salt:x}f{n}\r\n"
                f"From: <sip:flood@{source}>;tag=f{n}\r\nTo: <sip:{target}>{to_tag}\r\n"
                f"Call-ID: flood{salt:x}-{n}@{source}\r\nCSeq: 1 {method}\r\n"
                "Max-Forwards: 70\r\nContent-Length: 0\r\n\r\n"
            ).encode()
        )
    return out


def fd_count(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0
