"""Debian's real ``rtpengine`` on loopback for the media tests, and a test-side ng client.

What is here:

* :class:`Rtpengine` — one rtpengine process in userspace mode (no kernel module), with
  a private folder for its PID file and log, its own ng control port and its own range
  of media ports, so that several can run side by side. :meth:`Rtpengine.start` waits
  until it answers an ng ``ping``; :meth:`Rtpengine.stop` stops it by its PID (SIGTERM,
  then SIGKILL). :meth:`Rtpengine.ng` sends one command and returns the decoded reply;
  :meth:`query`, :meth:`list_calls`, :meth:`delete` are the ones tests read;
  :func:`relayed_packets` turns a ``query`` reply into packets received per tag (per
  direction of the call).
* :func:`dead_relay` — an ng address nobody answers on (a bound UDP socket never read:
  datagrams vanish without an ICMP error, as with a host that is down).
* The pytest fixtures :func:`rtpengine` (one instance per test, stopped after it),
  :func:`rtpengine_factory` (as many as a test asks for) and :func:`dead_ng`. Import them
  into a test module: ``from testkit.rtpengine import rtpengine, rtpengine_factory``.
  :attr:`Rtpengine.control` is the ``udp:HOST:PORT`` for sipguard's ``rtpengine.control``;
  the relay's media address is :data:`RTPENGINE_IP` (``127.0.0.10``), none of the
  caller's, callee's or sipguard's.

If ``/usr/bin/rtpengine`` is missing the fixtures fail (never skip): ``./dev.sh test``
(as root) installs Debian's ``rtpengine-daemon``.

The ng messages are bencoded with :mod:`sipguard.media.bencode` (the code under test
elsewhere; these helpers only need it to be right for well-formed messages).
"""

from __future__ import annotations

import contextlib
import itertools
import os
import shutil
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from sipguard.media.bencode import BencodeError, decode_dict, encode
from testkit.sipp import child_setup, free_port, stop_pid

RTPENGINE = shutil.which("rtpengine") or "/usr/bin/rtpengine"
RTPENGINE_IP = "127.0.0.10"  # the relay's media address: not the caller's, callee's or ours

_PORT_BLOCK = 200  # media ports per instance (an RTP/RTCP pair per stream)
_blocks = itertools.count()


def rtpengine_available() -> bool:
    return os.path.exists(RTPENGINE) and os.access(RTPENGINE, os.X_OK)


def _media_ports() -> tuple[int, int]:
    """A block of media ports for one instance, below Linux's ephemeral range (32768).

    Spread by PID so that two test processes rarely share a block; rtpengine skips a
    port it cannot bind, so an overlap costs ports, not a failure.
    """
    n = (os.getpid() * 7 + next(_blocks)) % 60
    low = 20000 + n * _PORT_BLOCK
    return low, low + _PORT_BLOCK - 1


def _free_v6(ip: str) -> int:
    """A UDP port free on an IPv6 address (``free_port`` speaks IPv4 only)."""
    with socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as s:
        s.bind((ip, 0))
        return int(s.getsockname()[1])


class NgError(RuntimeError):
    """No reply from rtpengine, or a reply that is not a bencoded dictionary."""


def ng_request(
    address: tuple[str, int], command: dict[str, Any], timeout: float = 2.0, tries: int = 3
) -> dict[str, Any]:
    """Send one ng command to ``address`` and return its decoded reply (blocking).

    The cookie is random; a reply with another cookie is ignored. The same datagram is
    sent again after ``timeout / tries`` seconds, ``tries`` times in all.
    """
    cookie = os.urandom(8).hex()
    data = cookie.encode() + b" " + encode(command)
    family = socket.AF_INET6 if ":" in address[0] else socket.AF_INET
    with socket.socket(family, socket.SOCK_DGRAM) as sock:
        wait = timeout / tries
        for _ in range(tries):
            sock.sendto(data, address)
            deadline = time.monotonic() + wait
            while (left := deadline - time.monotonic()) > 0:
                sock.settimeout(left)
                try:
                    reply, _addr = sock.recvfrom(65535)
                except TimeoutError:
                    break
                head, _, body = reply.partition(b" ")
                if head.decode(errors="replace") != cookie:
                    continue
                try:
                    return decode_dict(body)
                except BencodeError as exc:
                    raise NgError(f"ng reply from {address} is not bencode: {exc}") from exc
    raise NgError(f"no ng reply from {address} to {command.get('command')!r}")


@dataclass
class Rtpengine:
    """One rtpengine process on loopback (see the module docstring)."""

    root: Path
    ip: str = RTPENGINE_IP  # media address (``--interface``)
    ng_ip: str = "127.0.0.1"
    ng_port: int = 0  # 0: a free one
    timeout: int = 60  # ``--timeout``: seconds without RTP before rtpengine ends a call
    extra: list[str] = field(default_factory=list)
    proc: subprocess.Popen[bytes] | None = None

    def __post_init__(self) -> None:
        if self.ng_port == 0:
            self.ng_port = free_port(self.ng_ip) if ":" not in self.ng_ip else _free_v6(self.ng_ip)
        self.port_min, self.port_max = _media_ports()

    @property
    def address(self) -> tuple[str, int]:
        return (self.ng_ip, self.ng_port)

    @property
    def control(self) -> str:
        """As sipguard's ``rtpengine.control`` takes it."""
        host = f"[{self.ng_ip}]" if ":" in self.ng_ip else self.ng_ip
        return f"udp:{host}:{self.ng_port}"

    @property
    def logfile(self) -> Path:
        return self.root / "rtpengine.log"

    @property
    def pidfile(self) -> Path:
        return self.root / "rtpengine.pid"

    def command(self) -> list[str]:
        ng_host = f"[{self.ng_ip}]" if ":" in self.ng_ip else self.ng_ip
        return [
            RTPENGINE,
            # Debian's /etc/rtpengine/rtpengine.conf is read by default and sets table=0
            # (kernel forwarding) and fixed ports: read no file at all
            "--config-file=none",
            # userspace forwarding only: no kernel module, no iptables, no root needed
            "--table=-1",
            # stay our child, so that the PID we started is the one we stop
            "--foreground",
            # a PID file in the private folder, never /run/rtpengine
            f"--pidfile={self.pidfile}",
            # log to stderr (captured in the private folder), not to syslog
            "--log-stderr",
            "--log-level=6",  # INFO: each ng command and reply is logged (7 is per packet)
            # the media address it offers in SDP and relays on
            f"--interface={self.ip}",
            # the ng control socket, ours alone
            f"--listen-ng={ng_host}:{self.ng_port}",
            # a media port range of our own, so that two instances never fight over ports
            f"--port-min={self.port_min}",
            f"--port-max={self.port_max}",
            # end a call after this many seconds without RTP (the media-timeout tests
            # lower it)
            f"--timeout={self.timeout}",
            # forget a deleted call at once (default 30 s), so that query/list show the
            # delete; and an incomplete one-sided offer after as long as a silent call
            "--delete-delay=0",
            # two cores shared by the whole test session: few threads
            "--num-threads=2",
            "--media-num-threads=1",
            *self.extra,
        ]

    def start(self, wait: float = 10.0) -> Rtpengine:
        if not rtpengine_available():
            raise RuntimeError(
                f"{RTPENGINE} not found: the media tests need Debian's rtpengine-daemon; "
                "./dev.sh test (as root) installs it"
            )
        self.root.mkdir(parents=True, exist_ok=True)
        with open(self.logfile, "ab") as log:
            self.proc = subprocess.Popen(
                self.command(),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=self.root,
                preexec_fn=child_setup(None),  # noqa: PLW1509
            )
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(
                    f"rtpengine exited with {self.proc.returncode}:\n{self.log()[-3000:]}"
                )
            with contextlib.suppress(NgError):
                if ng_request(self.address, {"command": "ping"}, 0.2, 1).get("result") == "pong":
                    return self
        self.stop()
        raise RuntimeError(f"rtpengine did not answer ping within {wait} s:\n{self.log()[-3000:]}")

    def stop(self) -> int | None:
        """Stop it by its PID (SIGTERM, then SIGKILL); its exit code."""
        if self.proc is None:
            return None
        code = stop_pid(self.proc)
        self.proc = None
        return code

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def log(self) -> str:
        try:
            return self.logfile.read_text(errors="replace")
        except OSError:
            return ""

    # -- ng commands for the tests -----------------------------------------------------

    def ng(self, command: dict[str, Any], timeout: float = 2.0) -> dict[str, Any]:
        """One ng command, its decoded reply."""
        return ng_request(self.address, command, timeout)

    def ping(self) -> bool:
        try:
            return self.ng({"command": "ping"}, 1.0).get("result") == "pong"
        except NgError:
            return False

    def query(self, call_id: str) -> dict[str, Any]:
        """``query`` of one call: ``result`` is ``ok`` with ``totals`` and ``tags``, or
        ``error`` (``Unknown call-id``) once the call is gone."""
        return self.ng({"command": "query", "call-id": call_id})

    def list_calls(self, limit: int = 1000) -> list[str]:
        """The Call-IDs rtpengine holds now."""
        reply = self.ng({"command": "list", "limit": str(limit)})
        calls = reply.get("calls", [])
        return [str(c) for c in calls] if isinstance(calls, list) else []

    def delete(self, call_id: str, from_tag: str | None = None) -> dict[str, Any]:
        cmd: dict[str, Any] = {"command": "delete", "call-id": call_id}
        if from_tag is not None:
            cmd["from-tag"] = from_tag
        return self.ng(cmd)


def relayed_packets(query: dict[str, Any]) -> dict[str, int]:
    """RTP packets rtpengine received from each tag's endpoint (so relayed towards the
    other), from a ``query`` reply: ``{from-tag: n, to-tag: m}``. RTCP is not counted."""
    out: dict[str, int] = {}
    tags = query.get("tags")
    if not isinstance(tags, dict):
        return out
    for tag, info in tags.items():
        total = 0
        medias = info.get("medias", []) if isinstance(info, dict) else []
        for media in medias if isinstance(medias, list) else []:
            streams = media.get("streams", []) if isinstance(media, dict) else []
            for stream in streams if isinstance(streams, list) else []:
                if not isinstance(stream, dict) or "RTP" not in stream.get("flags", []):
                    continue
                stats = stream.get("stats", {})
                packets = stats.get("packets", 0) if isinstance(stats, dict) else 0
                total += packets if isinstance(packets, int) else 0
        out[str(tag)] = total
    return out


@contextlib.contextmanager
def dead_relay(ip: str = "127.0.0.1") -> Iterator[tuple[str, int]]:
    """An ng address nobody answers on, held for the ``with`` block.

    The port is bound and never read, so datagrams to it are dropped silently (no ICMP
    port unreachable), as with a relay whose host is down. Close the block and start an
    :class:`Rtpengine` with ``ng_port`` set to this port to bring the relay "back".
    """
    family = socket.AF_INET6 if ":" in ip else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_DGRAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.bind((ip, free_port(ip) if ":" not in ip else 0))
        yield sock.getsockname()[:2]
    finally:
        sock.close()


def _require() -> None:
    if not rtpengine_available():
        pytest.fail(
            f"{RTPENGINE} not found: the media tests need Debian's rtpengine-daemon. "
            "Run ./dev.sh test as root, which installs it.",
            pytrace=False,
        )


@pytest.fixture
def rtpengine_factory(tmp_path: Path) -> Iterator[Callable[..., Rtpengine]]:
    """``make(**kwargs)``: start one more :class:`Rtpengine` (kwargs as the class takes);
    all are stopped by PID after the test."""
    _require()
    made: list[Rtpengine] = []
    names = itertools.count()

    def make(**kwargs: Any) -> Rtpengine:
        inst = Rtpengine(root=tmp_path / f"rtpengine{next(names)}", **kwargs)
        made.append(inst)
        return inst.start()

    try:
        yield make
    finally:
        for inst in made:
            inst.stop()


@pytest.fixture
def dead_ng() -> Iterator[tuple[str, int]]:
    """An ng address nobody answers on, for this test (:func:`dead_relay`)."""
    with dead_relay() as addr:
        yield addr


@pytest.fixture
def rtpengine(rtpengine_factory: Callable[..., Rtpengine]) -> Rtpengine:
    """One rtpengine on loopback for this test."""
    return rtpengine_factory()
