"""The I/O driver (``sipguard/net/``) end to end: sipguard as a process, SIPp and raw sockets.

What SPEC §4, §7 and §8 and issue 3 ask of the driver, on loopback (caller 127.0.0.3,
sipguard 127.0.0.1 or ::1, callee 127.0.0.2):

* SIGTERM drains: new calls and OPTIONS get 503, ``/readyz`` says 503, calls in progress
  end normally and sipguard exits 0 with their CDRs written; when the drain time runs
  out, the calls left are ended with BYE on both legs and ``end_reason: shutdown``;
* every metric of SPEC §7 is exported with its labels, and no label value carries a
  number or an address;
* malformed input (garbage, RFC 4475 invalid messages, PROTOS c07-sip cases) over UDP and
  TCP never disturbs a load of valid calls; an oversized datagram is dropped and counted;
* TCP: the idle sweep closes idle connections but never one a call uses; a stream that
  breaks framing is closed and counted;
* IPv6 on ::1; a trunk target given by name (NAPTR/SRV/A) with failover and probing.

Every process is bounded and stopped by its PID.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import random
import re
import signal
import socket
import tarfile
import threading
import time
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import dns.flags
import dns.message
import dns.rcode
import dns.rdataclass
import dns.rdatatype
import dns.rrset
import pytest
import yaml

from tests.sipp_harness import (
    CALLEE_IP,
    CALLER_IP,
    SIPGUARD_IP,
    Setup,
    Sipguard,
    Sipp,
    free_port,
    metric_sum,
    read_cdrs,
    running,
    sipp_available,
    uac,
    uas,
    write_config,
)

pytestmark = [
    pytest.mark.sipp,
    pytest.mark.skipif(not sipp_available(), reason="SIPp (sip-tester) is not installed"),
    pytest.mark.timeout(90),
]

SHARED = Path(__file__).resolve().parents[2] / "shared" / "corpus"
RFC4475 = SHARED / "rfc4475"
PROTOS = SHARED / "protos-c07-sip"


# -- raw SIP over sockets ----------------------------------------------------------------------


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

    def __init__(self, host: str = CALLER_IP) -> None:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self.sock = socket.socket(family, socket.SOCK_DGRAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 21)
        self.sock.bind((host, 0))
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


def http_status(sg: Sipguard, path: str) -> int:
    try:
        with urllib.request.urlopen(sg.url(path), timeout=2.0) as r:
            return int(r.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)


def wait_for(pred: Any, timeout: float, step: float = 0.05) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return True
        time.sleep(step)
    return bool(pred())


def active_calls(sg: Sipguard) -> float:
    return sg.metrics().get("sipguard_active_calls", -1.0)


def sipguard_addr(setup: Setup) -> tuple[str, int]:
    return (SIPGUARD_IP, setup.sip_port)


def context(sg: Sipguard, *results: Any) -> str:
    parts = [r.describe() for r in results]
    return "\n".join([*parts, f"--- sipguard log:\n{sg.log_tail(60)}"])


# -- 1. SIGTERM drain (SPEC §4) --------------------------------------------------------------


def test_sigterm_drains_calls_in_progress_then_exits(tmp_path: Path) -> None:
    calls, hold_ms = 4, 3000
    setup = write_config(tmp_path, overrides={"drain_seconds": 10})
    sg = Sipguard(setup)
    callee = uas(setup, calls=calls, timeout_s=20)
    caller = uac(setup, calls=calls, rate=20, hold_ms=hold_ms, timeout_s=20)
    peer = UdpPeer()
    with running(callee, caller, sg):
        sg.start()
        callee.start()
        callee.wait_listening()
        caller.start()
        assert wait_for(lambda: active_calls(sg) == calls, 5.0), context(sg)
        assert http_status(sg, "/readyz") == 200
        os.kill(sg.pid, signal.SIGTERM)
        t_term = time.monotonic()
        assert wait_for(lambda: http_status(sg, "/readyz") == 503, 2.0), context(sg)
        assert http_status(sg, "/healthz") == 200

        # a new call: 503 without Retry-After (SPEC §8); acknowledged as §17.1.1.3 says
        invite = sip_request("INVITE", local=peer.local, body=SDP)
        resp = peer.transact(invite, sipguard_addr(setup))
        assert resp is not None and status_of(resp) == 503, (resp, context(sg))
        assert header(resp, "Retry-After") is None, resp
        peer.send(ack_for(invite, resp), sipguard_addr(setup))
        # OPTIONS to sipguard itself: 503, so that a load balancer stops sending
        resp = peer.transact(sip_request("OPTIONS", local=peer.local), sipguard_addr(setup))
        assert resp is not None and status_of(resp) == 503, (resp, context(sg))

        assert sg.proc is not None
        code = sg.proc.wait(15)
        waited = time.monotonic() - t_term
        result = caller.wait(10)
        callee_result = callee.wait(10)
    peer.close()
    ctx = f"{result.describe()}\n{callee_result.describe()}\n{sg.log_tail(60)}"
    assert code == 0, ctx
    assert waited < 10 - 1, f"exited {waited:.1f}s after SIGTERM: it waited for the drain time"
    # the calls in progress ended normally: their BYEs passed
    assert result.successful == calls and result.failed == 0, ctx
    assert callee_result.successful == calls, ctx
    records = read_cdrs(setup.cdr_dir)
    answered = [r for r in records if r["answer"] is not None]
    kinds = Counter(r["kind"] for r in answered)
    assert kinds == {"start": calls, "end": calls}, records
    assert {r["end_reason"] for r in answered if r["kind"] == "end"} == {"caller_bye"}, records
    refused = [r for r in records if r["answer"] is None]
    assert len(refused) == 1 and refused[0]["status"] == 503, refused
    assert refused[0]["end_reason"] == "limit", refused


def test_drain_time_runs_out_calls_ended_with_bye_on_both_legs(tmp_path: Path) -> None:
    calls, hold_ms, drain = 3, 15000, 2.0
    setup = write_config(tmp_path, overrides={"drain_seconds": drain})
    sg = Sipguard(setup)
    callee = uas(setup, calls=calls, timeout_s=20)
    caller = uac(setup, calls=calls, rate=20, hold_ms=hold_ms, timeout_s=20)
    with running(callee, caller, sg):
        sg.start()
        callee.start()
        callee.wait_listening()
        caller.start()
        assert wait_for(lambda: active_calls(sg) == calls, 5.0), context(sg)
        os.kill(sg.pid, signal.SIGTERM)
        t_term = time.monotonic()
        assert sg.proc is not None
        code = sg.proc.wait(10)
        waited = time.monotonic() - t_term
        # both SIPp ends got their BYE and go on to end by themselves
        result = caller.wait(10)
        callee_result = callee.wait(10)
    ctx = f"{result.describe()}\n{callee_result.describe()}\n{sg.log_tail(60)}"
    assert code == 0, ctx
    assert drain - 0.2 <= waited < drain + 3, f"exited {waited:.1f}s after SIGTERM\n{ctx}"
    byes_to_caller = [m for m in result.traced() if m.direction == "received" and m.method == "BYE"]
    byes_to_callee = [
        m for m in callee_result.traced() if m.direction == "received" and m.method == "BYE"
    ]
    assert len({m.header("call-id") for m in byes_to_caller}) == calls, ctx
    assert len({m.header("call-id") for m in byes_to_callee}) == calls, ctx
    records = read_cdrs(setup.cdr_dir)
    kinds = Counter(r["kind"] for r in records)
    assert kinds == {"start": calls, "end": calls}, records
    ends = [r for r in records if r["kind"] == "end"]
    assert {r["end_reason"] for r in ends} == {"shutdown"}, ends
    for r in ends:
        assert r["status"] == 200 and r["answer"] is not None, r
        # ended at the drain deadline, not at the hold time
        assert r["duration_ms"] < hold_ms - 5000, r
