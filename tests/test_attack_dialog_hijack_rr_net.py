"""Issue 13, second review: the re-INVITE CANCEL leak of
tests/test_attack_dialog_hijack_rr.py against a running sipguard on loopback. FAILS on
8f09b87."""

from __future__ import annotations

import contextlib
import re
import socket
from pathlib import Path

import pytest

from sipguard.sip.message import Response, parse_message
from testkit.callsim import response_to
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
)
from testkit.sipp import CALLEE_IP, CALLER_IP, Sipguard, running, sipp_available, write_config

pytestmark = [
    pytest.mark.sipp,
    pytest.mark.skipif(not sipp_available(), reason="SIPp (sip-tester) is not installed"),
    pytest.mark.timeout(60),
]


def forged_cancel(request: bytes) -> bytes:
    """The CANCEL a forger writes from a request's branch and Via: To without tag."""
    head = request.split(b"\r\n\r\n")[0]
    head = re.sub(rb"^INVITE ", b"CANCEL ", head)
    head = re.sub(rb"CSeq: (\d+) INVITE", rb"CSeq: \1 CANCEL", head)
    head = re.sub(rb"(\r\nTo: [^\r]*?);tag=[^\r;]*", rb"\1", head)
    head = re.sub(rb"\r\n(Content-Type|Content-Length|Contact): [^\r]*", b"", head)
    return head + b"\r\nContent-Length: 0\r\n\r\n"


def test_net_cancel_of_a_reinvite_on_a_second_tcp_connection_reveals_no_to_tag(
    tmp_path: Path,
) -> None:
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
            dialog = {
                "transport": "TCP",
                "ruri": str(ok.contacts[0].uri),
                "call_id": header(invite, "Call-ID"),
                "from_tag": (header(invite, "From") or "").rsplit("tag=", 1)[1],
                "to_tag": ok.to.tag,
            }
            conn.sendall(sip_request("ACK", local=local, **dialog))  # type: ignore[arg-type]
            reinvite = sip_request(
                "INVITE",
                local=local,
                cseq=2,
                branch="z9hG4bK-reinvite-2",
                body=SDP,
                **dialog,  # type: ignore[arg-type]
            )
            conn.sendall(reinvite)
            assert b_leg_invite(callee, sg).cseq.number == 2  # relayed, pending
            forged = socket.create_connection(
                sipguard_addr(setup), timeout=2.0, source_address=(CALLER_IP, 0)
            )
            with contextlib.closing(forged):
                answer = tcp_transact(forged, forged_cancel(reinvite))
            assert answer is not None, sg.log_tail()
            assert ok.to.tag.encode() not in answer, answer
            assert status_of(answer) == 481, answer
