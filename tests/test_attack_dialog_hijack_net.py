"""Issue 13 review, against a running sipguard on loopback: the attacks of
``tests/test_attack_dialog_hijack.py`` that matter most, over real sockets.

The attacker is at another trunk's address (127.0.0.4), at an address of no trunk
(127.0.0.9), or at the caller's own address on a second TCP connection. Two tests check
findings of the first review (ca01030, see their docstrings), and the last one the
re-INVITE CANCEL leak the second review found (8f09b87,
``test_rr_cancel_of_a_reinvite_on_a_second_connection_reveals_no_to_tag`` of
tests/test_attack_dialog_hijack.py); all are fixed.
"""

from __future__ import annotations

import contextlib
from pathlib import Path

import pytest

from sipguard.sip.message import parse_message
from testkit.callsim import response_to
from testkit.hijack import (
    NET_EVIL_SDP,
    NET_OTHER_TRUNK,
    OTHER_IP,
    STRANGER_IP,
    answer_b_leg,
    forged_cancel,
    running_tcp_call,
    udp_call,
)
from testkit.rawsip import (
    SDP,
    UdpPeer,
    b_leg_invite,
    requests_in,
    sip_request,
    sipguard_addr,
    status_of,
    tcp_connect,
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


def test_net_in_dialog_methods_from_elsewhere_reach_nobody(tmp_path: Path) -> None:
    """UPDATE, INFO, PRACK, OPTIONS and a forged ACK with SDP, with a live call's exact
    ids (both legs), from another trunk and from no trunk: 481 or 403 (ACK: nothing),
    nothing reaches a peer, the call stays, the CDR says the real end."""
    setup = write_config(tmp_path, overrides=NET_OTHER_TRUNK)
    sg = Sipguard(setup).start()
    caller = UdpPeer(CALLER_IP)
    callee = UdpPeer(CALLEE_IP, setup.callee_port)
    forgers = {OTHER_IP: UdpPeer(OTHER_IP), STRANGER_IP: UdpPeer(STRANGER_IP)}
    with running(sg), contextlib.ExitStack() as stack:
        for peer in (caller, callee, *forgers.values()):
            stack.callback(peer.close)
        call = udp_call(setup, sg, caller, callee)
        caller.recv_all(0.3)
        callee.recv_all(0.1)
        cseq = 10
        for ip, forger in forgers.items():
            want = 481 if ip == OTHER_IP else 403
            for method in ("UPDATE", "INFO", "PRACK", "OPTIONS"):
                body = NET_EVIL_SDP if method == "UPDATE" else b""
                rack = (("RAck", "1 1 INVITE"),) if method == "PRACK" else ()
                for data in (
                    call.caller_request(method, forger.local, cseq, body, extra=rack),
                    call.callee_request(method, forger.local, cseq, body),
                ):
                    got = forger.transact(data, sipguard_addr(setup))
                    assert got is not None and status_of(got) == want, (data, got)
                    assert (call.a_ok.to.tag or "-").encode() not in got.split(b"\r\nTo:", 1)[0]
                cseq += 1
            forger.send(
                call.caller_request("ACK", forger.local, 1, NET_EVIL_SDP), sipguard_addr(setup)
            )
            assert forger.recv_all(0.3) == []
        assert requests_in(caller.recv_all(0.5)) == []
        assert requests_in(callee.recv_all(0.1)) == []
        metrics = sg.metrics()
        assert metric_sum(metrics, "sipguard_active_calls") == 1
        # 16 requests, 2 ACKs: each counted
        assert metric_sum(metrics, "sipguard_rejected_total", reason="dialog_source") == 18
        caller.send(call.caller_request("BYE", caller.local, 2), sipguard_addr(setup))
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
    with running_tcp_call(tmp_path) as (setup, sg, callee, conn, local, call):
        assert call.a_ok.to.tag
        conn.sendall(call.caller_request("ACK", local, 1))
        assert requests_in(callee.recv_all(0.5)) == ["ACK"]
        forged = tcp_connect(setup)
        with contextlib.closing(forged):
            answer = tcp_transact(forged, forged_cancel(call.invite))
        assert answer is not None, sg.log_tail()
        assert call.a_ok.to.tag.encode() not in answer, answer
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
    setup = write_config(tmp_path, overrides=NET_OTHER_TRUNK)
    sg = Sipguard(setup).start()
    caller = UdpPeer(CALLER_IP)
    callee = UdpPeer(CALLEE_IP, setup.callee_port)
    forger = UdpPeer(OTHER_IP)
    with running(sg), contextlib.ExitStack() as stack:
        for peer in (caller, callee, forger):
            stack.callback(peer.close)
        invite = sip_request("INVITE", local=caller.local, body=SDP)
        caller.send(invite, sipguard_addr(setup))
        b_inv = answer_b_leg(setup, sg, callee)
        assert any(status_of(m) == 200 for m in caller.recv_all(1.0)), sg.log_tail()
        forged = response_to(b_inv, 200, "OK", "evil-tag", SDP, contact=forger.local).replace(
            (b_inv.top_via.branch or "").encode(), b"z9hG4bK-00000000000000000000"
        )
        forger.send(forged, sipguard_addr(setup))
        got = forger.recv_all(1.5)
        assert requests_in(got) == [], got[:2]
        assert metric_sum(sg.metrics(), "sipguard_active_calls") == 1


def test_net_cancel_of_a_reinvite_on_a_second_tcp_connection_reveals_no_to_tag(
    tmp_path: Path,
) -> None:
    """The second review's re-INVITE CANCEL leak (8f09b87) over real sockets: while the
    caller's re-INVITE is pending, a second connection from the caller's address sends
    its CANCEL (the re-INVITE's branch and Via copied, To without tag): the 481 of a
    CANCEL for no INVITE, without the A-leg's To tag."""
    with running_tcp_call(tmp_path) as (setup, sg, callee, conn, local, call):
        assert call.a_ok.to.tag
        conn.sendall(call.caller_request("ACK", local, 1))
        reinvite = call.caller_request("INVITE", local, 2, SDP, branch="z9hG4bK-reinvite-2")
        conn.sendall(reinvite)
        assert b_leg_invite(callee, sg).cseq.number == 2  # relayed, pending
        forged = tcp_connect(setup)
        with contextlib.closing(forged):
            answer = tcp_transact(forged, forged_cancel(reinvite))
        assert answer is not None, sg.log_tail()
        assert call.a_ok.to.tag.encode() not in answer, answer
        assert status_of(answer) == 481, answer
