"""The attacker's view of a live call, for the dialog-source tests (issue 13).

An outsider given a live call's exact Call-ID and tags (both legs') tries to end,
redirect or learn about it from another trunk's address, from an address of no trunk,
or from the caller's own address on a second TCP connection. What those tests share:

* in memory (:mod:`testkit.callsim`): a wire with a third trunk ``other`` at PEER2's
  address, the counters they read, and the CANCEL a forger writes
  (``tests/test_attack_dialog_hijack.py``, ``tests/test_b2bua_dialog_source.py``);
* over sockets, against a running sipguard (:mod:`testkit.rawsip`): the attackers'
  addresses, the ``other`` trunk as configuration overrides, and a call set up by the
  real peers whose ids the attacker then uses (``tests/test_attack_dialog_hijack_net.py``,
  ``tests/test_net_dialog_source.py``).
"""

from __future__ import annotations

import contextlib
import re
import socket
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

from sipguard.metrics import Metrics
from sipguard.sip.message import Request, Response, parse_message
from testkit import callsim
from testkit.callsim import CONFIG, Wire, callee_request, config_text, response_to
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
)
from testkit.sipp import CALLEE_IP, Setup, Sipguard, running, write_config

# -- in memory ------------------------------------------------------------------------------

# a third trunk at PEER2's address: a customer that could try to end another's calls
OTHER_TRUNK = """
  other:
    sources: [127.0.0.4/32]
    route_to: pbx
    allowed_cli: ["+3140*"]
    default_cli: "+31401234000"
"""
# an offer that would move the caller's media elsewhere
EVIL_SDP = callsim.SDP.replace(b"127.0.0.3", b"198.51.100.66")


def wire(transport: str = "udp") -> Wire:
    """The default configuration and ``OTHER_TRUNK``, with metrics; the caller on
    ``transport``."""
    return Wire(config_text(CONFIG + OTHER_TRUNK), metrics=Metrics(), caller_transport=transport)


def refused(w: Wire) -> float:
    """How many requests were refused for coming from other than the dialog's peer."""
    assert w.metrics is not None
    value = w.metrics.registry.get_sample_value(
        "sipguard_rejected_total", {"reason": "dialog_source"}
    )
    return value or 0.0


def active(w: Wire) -> float:
    assert w.metrics is not None
    return w.metrics.registry.get_sample_value("sipguard_active_calls") or 0.0


def statuses(msgs: list[Request | Response]) -> list[int]:
    """The status codes of the responses among ``msgs``."""
    return [m.status for m in msgs if isinstance(m, Response)]


def cancel_without_to_tag(req: bytes) -> bytes:
    """A CANCEL as a forger writes it from a request it saw the branch of (or guessed:
    a counter): Request-URI, Via, From, Call-ID and CSeq number copied, To without tag."""
    head = req.split(b"\r\n\r\n")[0].decode()
    lines = head.split("\r\n")
    uri = lines[0].split(" ", 2)[1]
    keep = []
    for line in lines[1:]:
        name = line.split(":", 1)[0].strip().lower()
        if name in ("via", "from", "call-id"):
            keep.append(line)
        elif name == "to":
            keep.append(line.split(";tag=")[0])
        elif name == "cseq":
            keep.append(f"CSeq: {line.split(':', 1)[1].split()[0]} CANCEL")
    text = f"CANCEL {uri} SIP/2.0\r\n" + "\r\n".join(keep)
    return (text + "\r\nMax-Forwards: 70\r\nContent-Length: 0\r\n\r\n").encode()


# -- over sockets ---------------------------------------------------------------------------

STRANGER_IP = "127.0.0.9"  # matches no trunk
OTHER_IP = "127.0.0.4"  # another customer's trunk
# an offer that would move the media to the stranger
NET_EVIL_SDP = SDP.replace(b"127.0.0.3", b"127.0.0.9")
# ``write_config(overrides=...)``: the trunk ``other`` at OTHER_IP
NET_OTHER_TRUNK = {
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


def forged_cancel(request: bytes) -> bytes:
    """The CANCEL a forger writes from a request's branch and Via (§9.1): its
    Request-URI, top Via, From, Call-ID and CSeq number, the To without tag (an initial
    INVITE has none: then it is the caller's own CANCEL)."""
    head = request.split(b"\r\n\r\n")[0]
    head = re.sub(rb"^INVITE ", b"CANCEL ", head)
    head = re.sub(rb"CSeq: (\d+) INVITE", rb"CSeq: \1 CANCEL", head)
    head = re.sub(rb"(\r\nTo: [^\r]*?);tag=[^\r;]*", rb"\1", head)
    head = re.sub(rb"\r\n(Content-Type|Content-Length|Contact): [^\r]*", b"", head)
    return head + b"\r\nContent-Length: 0\r\n\r\n"


@dataclass
class NetCall:
    """A call from the caller to the UDP callee through a running sipguard, answered:
    its ids, as the peers (and an attacker given them) know them."""

    invite: bytes  # the caller's INVITE
    b_invite: Request  # as the callee got it
    a_ok: Response  # the 200 the caller got
    tcp: bool = False  # the caller is on TCP

    @property
    def caller_tag(self) -> str:
        return (header(self.invite, "From") or "").rsplit("tag=", 1)[1]

    def caller_request(
        self,
        method: str,
        local: tuple[str, int],
        cseq: int,
        body: bytes = b"",
        *,
        branch: str | None = None,
        extra: tuple[tuple[str, str], ...] = (),
    ) -> bytes:
        """A request in the A-leg dialog, as the caller (or a forger of it) writes it."""
        return sip_request(
            method,
            local=local,
            transport="TCP" if self.tcp else "UDP",
            ruri=str(self.a_ok.contacts[0].uri),
            call_id=header(self.invite, "Call-ID"),
            from_tag=self.caller_tag,
            to_tag=self.a_ok.to.tag,
            branch=branch,
            cseq=cseq,
            body=body,
            extra=extra,
        )

    def callee_request(
        self, method: str, local: tuple[str, int], cseq: int, body: bytes = b"", contact: str = ""
    ) -> bytes:
        """A request in the B-leg dialog, as the callee (or a forger of it) writes it."""
        data = callee_request(method, self.b_invite, "callee-tag", cseq, 1, body=body, addr=local)
        if contact:
            data = data.replace(f"Contact: <sip:{local[0]}:{local[1]}>".encode(), contact.encode())
        return data


def answer_b_leg(setup: Setup, sg: Sipguard, callee: UdpPeer) -> Request:
    """The B-leg INVITE the callee gets, answered 200 (To tag ``callee-tag``)."""
    b_invite = b_leg_invite(callee, sg)
    callee.send(
        response_to(b_invite, 200, "OK", "callee-tag", SDP, contact=callee.local),
        sipguard_addr(setup),
    )
    return b_invite


def udp_call(setup: Setup, sg: Sipguard, caller: UdpPeer, callee: UdpPeer) -> NetCall:
    """A UDP call from ``caller`` to ``callee``, answered and ACKed."""
    invite = sip_request("INVITE", local=caller.local, body=SDP)
    caller.send(invite, sipguard_addr(setup))
    b_invite = answer_b_leg(setup, sg, callee)
    ok = next((m for m in caller.recv_all(1.0) if status_of(m) == 200), None)
    assert ok is not None, sg.log_tail()
    parsed = parse_message(ok)
    assert isinstance(parsed, Response)
    call = NetCall(invite, b_invite, parsed)
    caller.send(call.caller_request("ACK", caller.local, 1), sipguard_addr(setup))
    return call


def tcp_call(setup: Setup, sg: Sipguard, conn: socket.socket, callee: UdpPeer) -> NetCall:
    """A call from the caller's TCP connection ``conn`` to ``callee``, answered (the 200
    read from ``conn``), not yet ACKed."""
    local = conn.getsockname()[:2]
    invite = sip_request("INVITE", local=local, transport="TCP", body=SDP)
    conn.sendall(invite)
    b_invite = answer_b_leg(setup, sg, callee)
    got = tcp_read_message(conn, b"SIP/2.0 200")
    ok = parse_message(got[got.index(b"SIP/2.0 200") :], datagram=True)
    assert isinstance(ok, Response)
    return NetCall(invite, b_invite, ok, tcp=True)


class TcpScene(NamedTuple):
    """What :func:`running_tcp_call` set up: sipguard, the callee, the caller's
    connection (at ``local``) and its call."""

    setup: Setup
    sg: Sipguard
    callee: UdpPeer
    conn: socket.socket
    local: tuple[str, int]
    call: NetCall


@contextlib.contextmanager
def running_tcp_call(tmp_path: Path) -> Iterator[TcpScene]:
    """sipguard started with the default configuration in ``tmp_path``, a UDP callee, and
    a call from the caller's TCP connection to it, answered, not yet ACKed (:func:`tcp_call`);
    the connection and the callee closed and sipguard stopped on exit."""
    setup = write_config(tmp_path)
    sg = Sipguard(setup).start()
    callee = UdpPeer(CALLEE_IP, setup.callee_port)
    with running(sg), contextlib.closing(callee.sock):
        conn = tcp_connect(setup)
        with contextlib.closing(conn):
            local = conn.getsockname()[:2]
            call = tcp_call(setup, sg, conn, callee)
            yield TcpScene(setup, sg, callee, conn, local, call)
