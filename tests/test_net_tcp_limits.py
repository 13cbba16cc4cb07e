"""TCP/TLS limits against a running sipguard (issue 15, item 4; SPEC §8 "bounded
everything"): connections per source and in total, a deadline for a message head and for
a TLS handshake, and a flood under a 1,024 descriptor limit.

On loopback only: trunk callers on 127.0.0.3 and 127.0.0.4, the callee on 127.0.0.2,
unknown sources on 127.0.0.9. Every loop is bounded; sipguard is stopped by its PID.
The sans-IO parts (counts, deadlines, the descriptor plan): ``test_net_limits.py``.
"""

from __future__ import annotations

import contextlib
import re
import shutil
import socket
import ssl
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from sipguard.sip.message import Request, Response, parse_message
from testkit import sipp as sipp_harness
from testkit.callsim import response_to
from testkit.rawsip import (
    SDP,
    UdpPeer,
    b_leg_invite,
    header,
    sip_request,
    sipguard_addr,
    status_of,
    tcp_read_message,
    tcp_read_until_closed,
    tcp_transact,
    wait_for,
)
from testkit.sipp import (
    CALLEE_IP,
    CALLER_IP,
    SIPGUARD_IP,
    Setup,
    Sipguard,
    metric_sum,
    read_cdrs,
    running,
    write_config,
)
from testkit.tls import listens

pytestmark = [pytest.mark.timeout(120)]

OTHER_CALLER = "127.0.0.4"  # a second address of the customers trunk
UNKNOWN = "127.0.0.9"  # matches no trunk
TWO_CALLERS = {"trunks": {"customers": {"sources": [f"{CALLER_IP}/32", f"{OTHER_CALLER}/32"]}}}


def connect(setup: Setup, source: str) -> socket.socket:
    return socket.create_connection(sipguard_addr(setup), timeout=2.0, source_address=(source, 0))


def refused(sock: socket.socket, wait: float = 1.0) -> bool:
    """Whether sipguard closed ``sock`` at once (within ``wait``), having sent nothing."""
    got, closed = tcp_read_until_closed(sock, wait)
    return closed and not got


def alive(sock: socket.socket) -> bool:
    """Whether an OPTIONS on ``sock`` is answered (by a trunk's source: 200)."""
    local = sock.getsockname()[:2]
    resp = tcp_transact(sock, sip_request("OPTIONS", local=local, transport="TCP"))
    return resp is not None and status_of(resp) == 200


def rejected(sg: Sipguard, reason: str) -> float:
    return metric_sum(sg.metrics(), "sipguard_rejected_total", reason=reason)


@contextlib.contextmanager
def sockets() -> Iterator[list[socket.socket]]:
    held: list[socket.socket] = []
    try:
        yield held
    finally:
        for s in held:
            s.close()


def tcp_call(setup: Setup, sg: Sipguard, callee: UdpPeer, source: str) -> None:
    """A call over a fresh TCP connection from ``source``: answered by the UDP
    ``callee``, ACKed, then hung up by the caller with BYE (200). Fails the test if not."""
    with contextlib.closing(connect(setup, source)) as conn:
        local = conn.getsockname()[:2]
        invite = sip_request("INVITE", local=local, transport="TCP", body=SDP)
        conn.sendall(invite)
        req = b_leg_invite(callee, sg)
        callee.send(response_to(req, 200, "OK", "callee-tag", SDP), sipguard_addr(setup))
        got = tcp_read_message(conn, b"SIP/2.0 200")
        assert b"SIP/2.0 200" in got, (got, sg.log_tail())
        ok = parse_message(got[got.index(b"SIP/2.0 200") :], datagram=True)
        assert isinstance(ok, Response) and ok.contacts, got
        dialog: dict[str, Any] = {
            "local": local,
            "transport": "TCP",
            "ruri": str(ok.contacts[0].uri),
            "call_id": header(invite, "Call-ID"),
            "from_tag": (header(invite, "From") or "").rsplit("tag=", 1)[1],
            "to_tag": ok.to.tag,
        }
        conn.sendall(sip_request("ACK", **dialog))
        bye = sip_request("BYE", cseq=2, **dialog)
        conn.sendall(bye)
        # the callee answers the B-leg BYE; the caller gets its 200
        deadline = time.monotonic() + 3.0
        while time.monotonic() < deadline:
            msgs = [m for m in callee.recv_all(0.1) if m.startswith(b"BYE ")]
            if msgs:
                b_bye = parse_message(msgs[0])
                assert isinstance(b_bye, Request)
                callee.send(response_to(b_bye, 200, "OK", None), sipguard_addr(setup))
                break
        got = tcp_read_message(conn, b"SIP/2.0 200 OK\r\nVia", 3.0)
        assert re.search(rb"CSeq: 2 BYE", got), (got, sg.log_tail())


# -- connections per source and in total ----------------------------------------------------


def test_a_source_over_its_limit_is_closed_at_once_and_others_go_on(tmp_path: Path) -> None:
    per_source = 4
    setup = write_config(
        tmp_path,
        overrides={**TWO_CALLERS, "limits": {"tcp_max_per_source": per_source}},
    )
    sg = Sipguard(setup)
    callee = UdpPeer(CALLEE_IP, setup.callee_port)
    with running(sg), contextlib.closing(callee.sock), sockets() as held:
        sg.start()
        for _ in range(per_source):
            held.append(connect(setup, CALLER_IP))
        assert all(alive(s) for s in held), sg.log_tail()
        extra = connect(setup, CALLER_IP)
        held.append(extra)
        assert refused(extra), sg.log_tail()
        assert rejected(sg, "tcp_source_limit") == 1
        assert all(alive(s) for s in held[:per_source])  # those taken go on
        # a call over a fresh connection from another address of the trunk
        tcp_call(setup, sg, callee, OTHER_CALLER)
        # one closed: that source may connect again
        held[0].close()
        assert wait_for(lambda: sg.metrics().get("sipguard_tcp_connections") == per_source - 1, 3)
        again = connect(setup, CALLER_IP)
        held.append(again)
        assert alive(again), sg.log_tail()
        assert re.search(
            r"connection limit: 1 connections refused \(tcp_source_limit", sg.log_tail()
        )
    cdrs = read_cdrs(setup.cdr_dir)
    assert [c["end_reason"] for c in cdrs if c["kind"] == "end"] == ["caller_bye"], cdrs


def test_the_total_is_shared_and_unknown_sources_leave_room_to_trunks(tmp_path: Path) -> None:
    total = 8  # sources matching no trunk may hold 6 of them
    setup = write_config(
        tmp_path,
        overrides={"limits": {"tcp_max_connections": total, "tcp_max_per_source": 100}},
    )
    sg = Sipguard(setup)
    with running(sg), sockets() as held:
        sg.start()
        unknown = [connect(setup, UNKNOWN) for _ in range(7)]
        held.extend(unknown)
        assert refused(unknown[6]), sg.log_tail()
        assert not any(refused(s, 0.1) for s in unknown[:6])
        trunk = [connect(setup, CALLER_IP) for _ in range(3)]
        held.extend(trunk)
        assert alive(trunk[0]) and alive(trunk[1]), sg.log_tail()
        assert refused(trunk[2])  # the total is reached
        assert rejected(sg, "tcp_limit") == 2
        assert sg.metrics().get("sipguard_tcp_connections") == total
        for s in unknown[:2]:
            s.close()
        assert wait_for(lambda: sg.metrics().get("sipguard_tcp_connections") == total - 2, 3)
        late = connect(setup, CALLER_IP)
        held.append(late)
        assert alive(late), sg.log_tail()


# -- a deadline for the message head and the TLS handshake ---------------------------------------


def test_a_trickled_head_is_closed_and_a_slow_whole_one_served(tmp_path: Path) -> None:
    timeout = 2.0
    setup = write_config(tmp_path, overrides={"sip": {"tcp_header_timeout": timeout}})
    sg = Sipguard(setup)
    with running(sg), sockets() as held:
        sg.start()
        # one byte a second: closed within the timeout (and a sweep) of its first byte
        trickle = connect(setup, CALLER_IP)
        held.append(trickle)
        msg = sip_request("OPTIONS", local=trickle.getsockname()[:2], transport="TCP")
        t0 = time.monotonic()
        closed_after = None
        for i in range(int(timeout) + 4):  # bounded: a few bytes past the deadline
            try:
                trickle.sendall(msg[i : i + 1])
            except OSError:
                closed_after = time.monotonic() - t0
                break
            got, closed = tcp_read_until_closed(trickle, 1.0)
            if closed:
                closed_after = time.monotonic() - t0
                break
            assert not got
        assert closed_after is not None, sg.log_tail()
        assert timeout * 0.9 <= closed_after <= timeout + 1.5, closed_after
        assert rejected(sg, "tcp_header_timeout") == 1

        # a slow but whole message within the timeout is served; then idle, between
        # messages, longer than the timeout: no deadline runs, the next one is served
        slow = connect(setup, CALLER_IP)
        held.append(slow)
        msg = sip_request("OPTIONS", local=slow.getsockname()[:2], transport="TCP")
        parts = [msg[i : i + len(msg) // 4 + 1] for i in range(0, len(msg), len(msg) // 4 + 1)]
        for part in parts[:-1]:
            slow.sendall(part)
            time.sleep(timeout / 8)
        resp = tcp_transact(slow, parts[-1])
        assert resp is not None and status_of(resp) == 200, sg.log_tail()
        time.sleep(timeout * 1.5)
        assert alive(slow), sg.log_tail()

        # a head begun and then left: closed
        half = connect(setup, CALLER_IP)
        held.append(half)
        half.sendall(b"OPTIONS sip:x@127.0.0.1 SIP/2.0\r\nVia: SIP/2.0/TCP")
        t0 = time.monotonic()
        _, closed = tcp_read_until_closed(half, timeout + 2.0)
        assert closed and time.monotonic() - t0 >= timeout * 0.9, sg.log_tail()

        # a connection that sends nothing after the accept: closed as well
        silent = connect(setup, CALLER_IP)
        held.append(silent)
        _, closed = tcp_read_until_closed(silent, timeout + 2.0)
        assert closed, sg.log_tail()
        assert rejected(sg, "tcp_header_timeout") == 3
        assert alive(slow)  # the good connection all along


def test_a_tls_handshake_never_made_is_closed_at_its_deadline(tmp_path: Path) -> None:
    timeout = 1.5
    port = sipp_harness.free_port(SIPGUARD_IP)
    setup = write_config(
        tmp_path,
        sip_port=port,
        overrides={"listen": listens(port), "sip": {"tcp_header_timeout": timeout}},
    )
    sg = Sipguard(setup)
    with running(sg), sockets() as held:
        sg.start()
        raw = connect(setup, CALLER_IP)  # TCP to the TLS port, no ClientHello
        held.append(raw)
        t0 = time.monotonic()
        _, closed = tcp_read_until_closed(raw, timeout + 3.0)
        assert closed, sg.log_tail()
        assert timeout * 0.9 <= time.monotonic() - t0 <= timeout + 2.0
        # a real handshake is served, counted and let go like any connection
        ctx = ssl.create_default_context(cafile=str(Path(__file__).parent / "data/tls/ca.crt"))
        with (
            connect(setup, CALLER_IP) as plain,
            ctx.wrap_socket(plain, server_hostname=SIPGUARD_IP) as tls,
        ):
            local = tls.getsockname()[:2]
            resp = tcp_transact(tls, sip_request("OPTIONS", local=local, transport="TLS"))  # type: ignore[arg-type]
            assert resp is not None and status_of(resp) == 200, sg.log_tail()
            assert sg.metrics().get("sipguard_tcp_connections") == 1
        assert wait_for(lambda: sg.metrics().get("sipguard_tcp_connections") == 0, 3)


# -- under a 1,024 descriptor limit ----------------------------------------------------------------


def open_fds(pid: int) -> int:
    return len(list(Path(f"/proc/{pid}/fd").iterdir()))


def test_a_flood_under_1024_descriptors_starves_neither_calls_nor_metrics_nor_cdrs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """One address opens 1,100 connections (its per-source limit set out of the way, and
    no head deadline to clear them): sipguard keeps descriptors back, so a TCP call from
    a trunk over a fresh connection, the metrics endpoint and the CDR writer go on, and
    nothing fails for want of a descriptor."""
    prlimit = [shutil.which("prlimit") or "/usr/bin/prlimit", "--nofile=1024:1024"]
    real = sipp_harness.sipguard_command
    monkeypatch.setattr(sipp_harness, "sipguard_command", lambda: [*prlimit, *real()])
    setup = write_config(
        tmp_path,
        overrides={
            "limits": {"tcp_max_per_source": 100000},
            "sip": {"tcp_header_timeout": 60},
        },
    )
    sg = Sipguard(setup)
    callee = UdpPeer(CALLEE_IP, setup.callee_port)
    flood_n = 1100
    with running(sg), contextlib.closing(callee.sock), sockets() as flood:
        sg.start()
        limits = Path(f"/proc/{sg.pid}/limits").read_text()
        assert re.search(r"Max open files\s+1024\s+1024", limits), limits
        assert "descriptor limit (RLIMIT_NOFILE) 1024 is below" in sg.log_tail()
        give_up = time.monotonic() + 40.0
        for _ in range(flood_n):
            if time.monotonic() > give_up:  # bounded even if connects hang
                break
            try:
                flood.append(connect(setup, UNKNOWN))
            except OSError:  # the accept queue full for a moment: the flood goes on
                continue
        assert len(flood) > 1000, len(flood)
        # the flood holds what an unknown source may (three quarters of 1024 - 128)
        assert wait_for(lambda: rejected(sg, "tcp_limit") >= flood_n - 672 - 50, 10), sg.log_tail()
        assert sg.metrics().get("sipguard_tcp_connections") == 672
        assert open_fds(sg.pid) < 1024 - 64
        tcp_call(setup, sg, callee, CALLER_IP)  # a fresh connection from a trunk
        assert sg.healthy()
        assert wait_for(lambda: len(read_cdrs(setup.cdr_dir)) >= 1, 5), sg.log_tail()
        log = sg.log_path.read_text()
    assert "Too many open files" not in log, log[-4000:]
    assert "EMFILE" not in log
    cdrs = [c for c in read_cdrs(setup.cdr_dir) if c["kind"] == "end"]
    assert [c["end_reason"] for c in cdrs] == ["caller_bye"], cdrs
