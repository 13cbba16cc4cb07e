"""Nobody but a leg's own peer can end or redirect a call: a running sipguard on loopback.

The attack of issue 13: a live call's exact Call-ID and tags (both legs'), in a BYE and
in a re-INVITE whose SDP points the media elsewhere, sent from an address that matches no
trunk (127.0.0.9), from another trunk's address (127.0.0.4), and from the caller's own
address over a second TCP connection. Each gets the ``481`` of a request for no dialog,
reaches neither peer, leaves the call up, and is counted as
``sipguard_rejected_total{reason="dialog_source"}``; the CDR keeps the real end. The
peers themselves still refresh the target and end the call.
"""

from __future__ import annotations

import contextlib
from pathlib import Path

import pytest

from sipguard.sip.message import Request, parse_message
from testkit.callsim import response_to
from testkit.hijack import (
    NET_EVIL_SDP,
    NET_OTHER_TRUNK,
    OTHER_IP,
    STRANGER_IP,
    running_tcp_call,
    udp_call,
)
from testkit.rawsip import (
    SDP,
    UdpPeer,
    requests_in,
    sipguard_addr,
    status_of,
    tcp_connect,
    tcp_transact,
    wait_for,
)
from testkit.sipp import (
    CALLEE_IP,
    CALLER_IP,
    Setup,
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


def final(peer: UdpPeer, data: bytes, setup: Setup) -> int | None:
    got = peer.transact(data, sipguard_addr(setup))
    return None if got is None else status_of(got)


def test_forged_bye_and_reinvite_from_elsewhere_reach_nobody(tmp_path: Path) -> None:
    setup = write_config(tmp_path, overrides=NET_OTHER_TRUNK)
    sg = Sipguard(setup).start()
    caller = UdpPeer(CALLER_IP)
    callee = UdpPeer(CALLEE_IP, setup.callee_port)
    forgers = [UdpPeer(STRANGER_IP), UdpPeer(OTHER_IP)]
    with running(sg), contextlib.ExitStack() as stack:
        for peer in (caller, callee, *forgers):
            stack.callback(peer.close)
        call = udp_call(setup, sg, caller, callee)
        assert wait_for(lambda: metric_sum(sg.metrics(), "sipguard_active_calls") == 1, 3.0)
        caller.recv_all(0.2)
        callee.recv_all(0.2)
        cseq = 10
        for forger, status in zip(forgers, (403, 481), strict=True):
            # a source of no trunk gets the 403 of everything it sends; another trunk
            # the 481 of a request for no dialog
            for data in (
                call.caller_request("BYE", forger.local, cseq),
                call.caller_request("INVITE", forger.local, cseq + 1, NET_EVIL_SDP),
                call.callee_request("BYE", forger.local, cseq + 2),
                call.callee_request("INVITE", forger.local, cseq + 3, NET_EVIL_SDP),
            ):
                assert final(forger, data, setup) == status, (data, sg.log_tail())
            cseq += 10
        # nothing reached either peer; the call is up; every forgery was counted
        assert requests_in(caller.recv_all(0.5)) == []
        assert requests_in(callee.recv_all(0.1)) == []
        metrics = sg.metrics()
        assert metric_sum(metrics, "sipguard_active_calls") == 1
        assert metric_sum(metrics, "sipguard_rejected_total", reason="dialog_source") == 8

        # the callee moves its target (RFC 3261 §12.2.1.1) and is still believed after it
        moved = f"Contact: <sip:moved@{CALLEE_IP}:{setup.callee_port}>"
        callee.send(
            call.callee_request("INVITE", callee.local, 2, SDP, contact=moved),
            sipguard_addr(setup),
        )
        reinvite = next((m for m in caller.recv_all(1.0) if m.startswith(b"INVITE ")), None)
        assert reinvite is not None, sg.log_tail()
        assert b"127.0.0.9" not in reinvite
        a_reinvite = parse_message(reinvite)
        assert isinstance(a_reinvite, Request)
        caller.send(
            response_to(a_reinvite, 200, "OK", None, SDP, contact=caller.local),
            sipguard_addr(setup),
        )
        assert any(status_of(m) == 200 for m in callee.recv_all(1.0)), sg.log_tail()
        callee.send(call.callee_request("ACK", callee.local, 2), sipguard_addr(setup))
        # and the caller hangs up: the callee gets the BYE, the CDR says so
        caller.send(call.caller_request("BYE", caller.local, 3), sipguard_addr(setup))
        bye = next((m for m in callee.recv_all(1.0) if m.startswith(b"BYE ")), None)
        assert bye is not None, sg.log_tail()
        b_bye = parse_message(bye)
        assert isinstance(b_bye, Request)
        callee.send(response_to(b_bye, 200, "OK", None), sipguard_addr(setup))
        assert any(status_of(m) == 200 for m in caller.recv_all(1.0)), sg.log_tail()
        assert wait_for(lambda: metric_sum(sg.metrics(), "sipguard_active_calls") == 0, 3.0)
    ends = [r for r in read_cdrs(setup.cdr_dir) if r["kind"] == "end"]
    assert [r["end_reason"] for r in ends] == ["caller_bye"]


def test_a_second_tcp_connection_from_the_callers_address_is_not_the_caller(
    tmp_path: Path,
) -> None:
    """While the caller's connection is open, only it speaks for the caller: a BYE with
    the dialog's ids on another connection from the same address (another port) is a
    481; the caller's own BYE on its connection ends the call."""
    with running_tcp_call(tmp_path) as (setup, sg, callee, conn, local, call):
        conn.sendall(call.caller_request("ACK", local, 1))
        assert requests_in(callee.recv_all(0.5)) == ["ACK"]
        forged = tcp_connect(setup)
        with contextlib.closing(forged):
            at = forged.getsockname()[:2]
            assert at != local
            answer = tcp_transact(forged, call.caller_request("BYE", at, 5))
            assert answer is not None and status_of(answer) == 481, sg.log_tail()
            answer = tcp_transact(forged, call.caller_request("INVITE", at, 6))
            assert answer is not None and status_of(answer) == 481, sg.log_tail()
        assert requests_in(callee.recv_all(0.5)) == []
        metrics = sg.metrics()
        assert metric_sum(metrics, "sipguard_active_calls") == 1
        assert metric_sum(metrics, "sipguard_rejected_total", reason="dialog_source") == 2
        conn.sendall(call.caller_request("BYE", local, 2))
        bye = next((m for m in callee.recv_all(1.0) if m.startswith(b"BYE ")), None)
        assert bye is not None, sg.log_tail()
        b_bye = parse_message(bye)
        assert isinstance(b_bye, Request)
        callee.send(response_to(b_bye, 200, "OK", None), sipguard_addr(setup))
        assert wait_for(lambda: metric_sum(sg.metrics(), "sipguard_active_calls") == 0, 3.0)
    ends = [r for r in read_cdrs(setup.cdr_dir) if r["kind"] == "end"]
    assert [r["end_reason"] for r in ends] == ["caller_bye"]
