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
import socket
from pathlib import Path

import pytest

from sipguard.sip.message import Request, Response, parse_message
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

STRANGER_IP = "127.0.0.9"  # matches no trunk
OTHER_IP = "127.0.0.4"  # another customer's trunk
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


def final(peer: UdpPeer, data: bytes, setup: Setup) -> int | None:
    got = peer.transact(data, sipguard_addr(setup))
    return None if got is None else status_of(got)


def requests_in(msgs: list[bytes]) -> list[str]:
    return [m.split(b" ", 1)[0].decode() for m in msgs if status_of(m) is None]


class Call:
    """A UDP call from the caller to the callee through sipguard, answered and ACKed."""

    def __init__(self, setup: Setup, sg: Sipguard, caller: UdpPeer, callee: UdpPeer) -> None:
        self.setup = setup
        self.invite = sip_request("INVITE", local=caller.local, body=SDP)
        caller.send(self.invite, sipguard_addr(setup))
        self.b_invite = b_leg_invite(callee, sg)
        self.callee_contact = callee.local
        callee.send(
            response_to(self.b_invite, 200, "OK", "callee-tag", SDP, contact=callee.local),
            sipguard_addr(setup),
        )
        ok = next(
            (m for m in caller.recv_all(1.0) if status_of(m) == 200),
            None,
        )
        assert ok is not None, sg.log_tail()
        parsed = parse_message(ok)
        assert isinstance(parsed, Response)
        self.a_ok = parsed
        self.caller_tag = (header(self.invite, "From") or "").rsplit("tag=", 1)[1]
        caller.send(self.caller_request("ACK", caller.local, 1), sipguard_addr(setup))

    def caller_request(
        self, method: str, local: tuple[str, int], cseq: int, body: bytes = b"", tcp: bool = False
    ) -> bytes:
        """A request in the A-leg dialog, as the caller (or a forger of it) writes it."""
        return sip_request(
            method,
            local=local,
            transport="TCP" if tcp else "UDP",
            ruri=str(self.a_ok.contacts[0].uri),
            call_id=header(self.invite, "Call-ID"),
            from_tag=self.caller_tag,
            to_tag=self.a_ok.to.tag,
            cseq=cseq,
            body=body,
        )

    def callee_request(
        self, method: str, local: tuple[str, int], cseq: int, body: bytes = b"", contact: str = ""
    ) -> bytes:
        """A request in the B-leg dialog, as the callee (or a forger of it) writes it."""
        data = callee_request(method, self.b_invite, "callee-tag", cseq, 1, body=body, addr=local)
        if contact:
            data = data.replace(f"Contact: <sip:{local[0]}:{local[1]}>".encode(), contact.encode())
        return data


def test_forged_bye_and_reinvite_from_elsewhere_reach_nobody(tmp_path: Path) -> None:
    setup = write_config(tmp_path, overrides=OTHER_TRUNK)
    sg = Sipguard(setup).start()
    caller = UdpPeer(CALLER_IP)
    callee = UdpPeer(CALLEE_IP, setup.callee_port)
    forgers = [UdpPeer(STRANGER_IP), UdpPeer(OTHER_IP)]
    with running(sg), contextlib.ExitStack() as stack:
        for peer in (caller, callee, *forgers):
            stack.callback(peer.close)
        call = Call(setup, sg, caller, callee)
        assert wait_for(lambda: metric_sum(sg.metrics(), "sipguard_active_calls") == 1, 3.0)
        caller.recv_all(0.2)
        callee.recv_all(0.2)
        cseq = 10
        for forger, status in zip(forgers, (403, 481), strict=True):
            # a source of no trunk gets the 403 of everything it sends; another trunk
            # the 481 of a request for no dialog
            for data in (
                call.caller_request("BYE", forger.local, cseq),
                call.caller_request("INVITE", forger.local, cseq + 1, EVIL_SDP),
                call.callee_request("BYE", forger.local, cseq + 2),
                call.callee_request("INVITE", forger.local, cseq + 3, EVIL_SDP),
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
    setup = write_config(tmp_path)
    sg = Sipguard(setup).start()
    callee = UdpPeer(CALLEE_IP, setup.callee_port)
    with running(sg), contextlib.closing(callee.sock):
        conn = tcp_connect(setup)
        stack = contextlib.ExitStack()
        stack.callback(conn.close)
        with stack:
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
            assert isinstance(ok, Response)

            def in_dialog(method: str, cseq: int, at: tuple[str, int]) -> bytes:
                return sip_request(
                    method,
                    local=at,
                    transport="TCP",
                    ruri=str(ok.contacts[0].uri),
                    call_id=header(invite, "Call-ID"),
                    from_tag=(header(invite, "From") or "").rsplit("tag=", 1)[1],
                    to_tag=ok.to.tag,
                    cseq=cseq,
                )

            conn.sendall(in_dialog("ACK", 1, local))
            assert requests_in(callee.recv_all(0.5)) == ["ACK"]
            forged = socket.create_connection(
                sipguard_addr(setup), timeout=2.0, source_address=(CALLER_IP, 0)
            )
            with contextlib.closing(forged):
                at = forged.getsockname()[:2]
                assert at != local
                answer = tcp_transact(forged, in_dialog("BYE", 5, at))
                assert answer is not None and status_of(answer) == 481, sg.log_tail()
                answer = tcp_transact(forged, in_dialog("INVITE", 6, at))
                assert answer is not None and status_of(answer) == 481, sg.log_tail()
            assert requests_in(callee.recv_all(0.5)) == []
            metrics = sg.metrics()
            assert metric_sum(metrics, "sipguard_active_calls") == 1
            assert metric_sum(metrics, "sipguard_rejected_total", reason="dialog_source") == 2
            conn.sendall(in_dialog("BYE", 2, local))
            bye = next((m for m in callee.recv_all(1.0) if m.startswith(b"BYE ")), None)
            assert bye is not None, sg.log_tail()
            b_bye = parse_message(bye)
            assert isinstance(b_bye, Request)
            callee.send(response_to(b_bye, 200, "OK", None), sipguard_addr(setup))
            assert wait_for(lambda: metric_sum(sg.metrics(), "sipguard_active_calls") == 0, 3.0)
    ends = [r for r in read_cdrs(setup.cdr_dir) if r["kind"] == "end"]
    assert [r["end_reason"] for r in ends] == ["caller_bye"]
