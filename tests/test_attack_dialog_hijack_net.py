"""Issue 13 review, against a running sipguard on loopback: the attacks of
``tests/test_attack_dialog_hijack.py`` that matter most, over real sockets.

The attacker is at another trunk's address (127.0.0.4), at an address of no trunk
(127.0.0.9), or at the caller's own address on a second TCP connection. Two tests fail on
the reviewed code (see their docstrings).
"""

from __future__ import annotations

import contextlib
import re
import socket
from pathlib import Path

import pytest

from sipguard.sip.message import Response, parse_message
from testkit.callsim import callee_request, response_to
from testkit.rawsip import (
    SDP,
    UdpPeer,
    b_leg_invite,
    header,
    sip_request,
    sipguard_addr,
    status_of,
    tcp_connect,
    tcp_read_message,
    tcp_transact,
    wait_for,
)
from testkit.sipp import (
    CALLEE_IP,
    CALLER_IP,
    Sipguard,
    metric_sum,
    read_cdrs,
    running,
    sipp_available,
    write_config,
)

pytestmark = [
    pytest.mark.sipp,
    pytest.mark.skipif(not sipp_available(), reason="SIPp (sip-tester) is not installed"),
    pytest.mark.timeout(60),
]

STRANGER_IP = "127.0.0.9"
OTHER_IP = "127.0.0.4"
EVIL_SDP = SDP.replace(b"127.0.0.3", b"127.0.0.9")
OTHER_TRUNK = {
    "trunks": {
        "other": {
            "sources": [f"{OTHER_IP}/32"],
            "trusted": False,
            "route_to": "pbx",
            "allowed_cli": ["+3140*"],
            "default_cli": "+31401234000",
        }
    }
}


def requests_in(msgs: list[bytes]) -> list[str]:
    return [m.split(b" ", 1)[0].decode() for m in msgs if status_of(m) is None]


def cancel_of(invite: bytes) -> bytes:
    """The CANCEL of ``invite`` (§9.1): its Request-URI, top Via, From, To, Call-ID."""
    head = invite.split(b"\r\n\r\n")[0]
    head = head.replace(b"INVITE sip:", b"CANCEL sip:", 1)
    head = re.sub(rb"CSeq: (\d+) INVITE", rb"CSeq: \1 CANCEL", head)
    head = re.sub(rb"\r\n(Content-Type|Content-Length|Contact): [^\r]*", b"", head)
    return head + b"\r\nContent-Length: 0\r\n\r\n"


def test_net_in_dialog_methods_from_elsewhere_reach_nobody(tmp_path: Path) -> None:
    """UPDATE, INFO, PRACK, OPTIONS and a forged ACK with SDP, with a live call's exact
    ids (both legs), from another trunk and from no trunk: 481 or 403 (ACK: nothing),
    nothing reaches a peer, the call stays, the CDR says the real end."""
    setup = write_config(tmp_path, overrides=OTHER_TRUNK)
    sg = Sipguard(setup).start()
    caller = UdpPeer(CALLER_IP)
    callee = UdpPeer(CALLEE_IP, setup.callee_port)
    forgers = {OTHER_IP: UdpPeer(OTHER_IP), STRANGER_IP: UdpPeer(STRANGER_IP)}
    with running(sg), contextlib.ExitStack() as stack:
        for peer in (caller, callee, *forgers.values()):
            stack.callback(peer.close)
        invite = sip_request("INVITE", local=caller.local, body=SDP)
        caller.send(invite, sipguard_addr(setup))
        b_inv = b_leg_invite(callee, sg)
        callee.send(
            response_to(b_inv, 200, "OK", "callee-tag", SDP, contact=callee.local),
            sipguard_addr(setup),
        )
        ok_bytes = next((m for m in caller.recv_all(1.0) if status_of(m) == 200), None)
        assert ok_bytes is not None, sg.log_tail()
        ok = parse_message(ok_bytes)
        assert isinstance(ok, Response)
        caller_tag = (header(invite, "From") or "").rsplit("tag=", 1)[1]

        def as_caller(method: str, at: tuple[str, int], cseq: int, body: bytes = b"") -> bytes:
            extra = (("RAck", "1 1 INVITE"),) if method == "PRACK" else ()
            return sip_request(
                method,
                local=at,
                ruri=str(ok.contacts[0].uri),
                call_id=header(invite, "Call-ID"),
                from_tag=caller_tag,
                to_tag=ok.to.tag,
                cseq=cseq,
                body=body,
                extra=extra,
            )

        caller.send(as_caller("ACK", caller.local, 1), sipguard_addr(setup))
        caller.recv_all(0.3)
        callee.recv_all(0.1)
        cseq = 10
        for ip, forger in forgers.items():
            want = 481 if ip == OTHER_IP else 403
            for method in ("UPDATE", "INFO", "PRACK", "OPTIONS"):
                body = EVIL_SDP if method == "UPDATE" else b""
                for data in (
                    as_caller(method, forger.local, cseq, body),
                    callee_request(
                        method, b_inv, "callee-tag", cseq, 1, body=body, addr=forger.local
                    ),
                ):
                    got = forger.transact(data, sipguard_addr(setup))
                    assert got is not None and status_of(got) == want, (data, got)
                    assert (ok.to.tag or "-").encode() not in got.split(b"\r\nTo:", 1)[0]
                cseq += 1
            forger.send(as_caller("ACK", forger.local, 1, EVIL_SDP), sipguard_addr(setup))
            assert forger.recv_all(0.3) == []
        assert requests_in(caller.recv_all(0.5)) == []
        assert requests_in(callee.recv_all(0.1)) == []
        metrics = sg.metrics()
        assert metric_sum(metrics, "sipguard_active_calls") == 1
        # 16 requests, 2 ACKs: each counted
        assert metric_sum(metrics, "sipguard_rejected_total", reason="dialog_source") == 18
        caller.send(as_caller("BYE", caller.local, 2), sipguard_addr(setup))
        bye = next((m for m in callee.recv_all(1.0) if m.startswith(b"BYE ")), None)
        assert bye is not None, sg.log_tail()
        b_bye = parse_message(bye)
        callee.send(response_to(b_bye, 200, "OK", None), sipguard_addr(setup))  # type: ignore[arg-type]
        assert wait_for(lambda: metric_sum(sg.metrics(), "sipguard_active_calls") == 0, 3.0)
    ends = [r for r in read_cdrs(setup.cdr_dir) if r["kind"] == "end"]
    assert [r["end_reason"] for r in ends] == ["caller_bye"]


def test_net_cancel_after_the_ack_on_a_second_tcp_connection_reveals_no_to_tag(
    tmp_path: Path,
) -> None:
    """FAILS on ca01030. The caller is on TCP; its call is answered and ACKed. A second
    connection from the caller's address (another program there) sends the CANCEL of the
    caller's INVITE (its branch and Via copied: a counter in many user agents). Expected:
    the 481 of a CANCEL for no INVITE, as while the call rang. Got: ``200`` carrying the
    A-leg's To tag, the dialog id the issue keeps secret (``B2BUA.cancel_allowed`` once
    the INVITE transaction has no owner)."""
    setup = write_config(tmp_path)
    sg = Sipguard(setup).start()
    callee = UdpPeer(CALLEE_IP, setup.callee_port)
    with running(sg), contextlib.closing(callee.sock):
        conn = tcp_connect(setup)
        with contextlib.closing(conn):
            local = conn.getsockname()[:2]
            invite = sip_request("INVITE", local=local, transport="TCP", body=SDP)
            conn.sendall(invite)
            b_inv = b_leg_invite(callee, sg)
            callee.send(
                response_to(b_inv, 200, "OK", "callee-tag", SDP, contact=callee.local),
                sipguard_addr(setup),
            )
            got = tcp_read_message(conn, b"SIP/2.0 200")
            ok = parse_message(got[got.index(b"SIP/2.0 200") :], datagram=True)
            assert isinstance(ok, Response) and ok.to.tag
            conn.sendall(
                sip_request(
                    "ACK",
                    local=local,
                    transport="TCP",
                    ruri=str(ok.contacts[0].uri),
                    call_id=header(invite, "Call-ID"),
                    from_tag=(header(invite, "From") or "").rsplit("tag=", 1)[1],
                    to_tag=ok.to.tag,
                )
            )
            assert requests_in(callee.recv_all(0.5)) == ["ACK"]
            forged = socket.create_connection(
                sipguard_addr(setup), timeout=2.0, source_address=(CALLER_IP, 0)
            )
            with contextlib.closing(forged):
                answer = tcp_transact(forged, cancel_of(invite))
            assert answer is not None, sg.log_tail()
            assert ok.to.tag.encode() not in answer, answer
            assert status_of(answer) == 481, answer
            assert metric_sum(sg.metrics(), "sipguard_active_calls") == 1


def test_net_a_forged_2xx_from_another_trunk_draws_no_ack_and_no_bye(tmp_path: Path) -> None:
    """FAILS on ca01030. With the B-leg's Call-ID and From tag (a live call's exact ids, as
    the issue grants the attacker), another trunk sends a 200 "to our INVITE" with a
    branch of its own: sipguard finds the call by those ids alone
    (``B2BUA.on_stray_response``) and ACKs and BYEs that "fork" towards the sender
    (``Call.stray_2xx``, ``Outgoing.ack_and_bye``): the B-leg's dialog, From/To and our
    Via to a non-peer, a BYE retransmitted over UDP for one datagram, one more entry of
    ``Outgoing.forks`` per new To tag."""
    setup = write_config(tmp_path, overrides=OTHER_TRUNK)
    sg = Sipguard(setup).start()
    caller = UdpPeer(CALLER_IP)
    callee = UdpPeer(CALLEE_IP, setup.callee_port)
    forger = UdpPeer(OTHER_IP)
    with running(sg), contextlib.ExitStack() as stack:
        for peer in (caller, callee, forger):
            stack.callback(peer.close)
        invite = sip_request("INVITE", local=caller.local, body=SDP)
        caller.send(invite, sipguard_addr(setup))
        b_inv = b_leg_invite(callee, sg)
        callee.send(
            response_to(b_inv, 200, "OK", "callee-tag", SDP, contact=callee.local),
            sipguard_addr(setup),
        )
        assert any(status_of(m) == 200 for m in caller.recv_all(1.0)), sg.log_tail()
        forged = response_to(b_inv, 200, "OK", "evil-tag", SDP, contact=forger.local).replace(
            (b_inv.top_via.branch or "").encode(), b"z9hG4bK-00000000000000000000"
        )
        forger.send(forged, sipguard_addr(setup))
        got = forger.recv_all(1.5)
        assert requests_in(got) == [], got[:2]
        assert metric_sum(sg.metrics(), "sipguard_active_calls") == 1
