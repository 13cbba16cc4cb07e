"""A caller and a callee in memory, wired to the sans-IO B2BUA core with a fake clock.

Used by the scenario tests (no sockets, no sleeps: a lost datagram is one not delivered)
and by ``benchmarks/b2bua.py``. The messages are what SIPp's built-in ``uac``/``uas``
scenarios send, so the benchmark measures the same work as a SIPp load run.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from sipguard.b2bua.core import B2BUA
from sipguard.config.loader import load_config_text
from sipguard.config.model import Config
from sipguard.sip.message import Request, Response, parse_message
from sipguard.sip.transaction import Flow

CALLER = ("127.0.0.3", 5062)
CALLEE = ("127.0.0.2", 5080)

CONFIG = """
listen:
  - {transport: udp, address: 127.0.0.1, port: 5060}
  - {transport: tcp, address: 127.0.0.1, port: 5060}
metrics: null
identity_domain: sip.example.net
cdr: {sink: file, path: var/test-cdr}
trunks:
  customers:
    sources: [127.0.0.3/32]
    route_to: pbx
    allowed_cli: ["+3120123*"]
    default_cli: "+31201234000"
    numbering: {country_code: "31", national_prefix: "0", international_prefix: "00"}
  pbx:
    sources: [127.0.0.2/32]
    trusted: true
    targets: ["sip:127.0.0.2:5080"]
    route_to: customers
"""

SDP = (
    b"v=0\r\no=user1 53655765 2353687637 IN IP4 127.0.0.3\r\ns=-\r\nc=IN IP4 127.0.0.3\r\n"
    b"t=0 0\r\nm=audio 6000 RTP/AVP 0\r\na=rtpmap:0 PCMU/8000\r\n"
)


def default_config(extra: str = "") -> Config:
    return load_config_text(CONFIG + extra, "<callsim>")


def invite(n: int, user: str = "0201234567", headers: str = "", body: bytes = SDP) -> bytes:
    h, p = CALLER
    text = (
        f"INVITE sip:{user}@127.0.0.1:5060 SIP/2.0\r\n"
        f"Via: SIP/2.0/UDP {h}:{p};branch=z9hG4bK-{n}-1-0\r\n"
        f"From: sipp <sip:+31201234567@{h}:{p}>;tag={n}SIPpTag001\r\n"
        f"To: <sip:{user}@127.0.0.1:5060>\r\n"
        f"Call-ID: {n}-sim@{h}\r\n"
        "CSeq: 1 INVITE\r\n"
        f"Contact: sip:sipp@{h}:{p}\r\n"
        "Max-Forwards: 70\r\n"
        "Subject: Performance Test\r\n"
        f"{headers}"
        "Content-Type: application/sdp\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    )
    return text.encode() + body


def in_dialog(
    method: str, resp: Response, cseq: int, n: int, branch: str, body: bytes = b""
) -> bytes:
    """A request of the caller within the dialog the response ``resp`` established."""
    h, p = CALLER
    ctype = "Content-Type: application/sdp\r\n" if body else ""
    text = (
        f"{method} sip:127.0.0.1:5060 SIP/2.0\r\n"
        f"Via: SIP/2.0/UDP {h}:{p};branch={branch}\r\n"
        f"From: {resp.get('from')}\r\n"
        f"To: {resp.get('to')}\r\n"
        f"Call-ID: {resp.call_id}\r\n"
        f"CSeq: {cseq} {method}\r\n"
        f"Contact: sip:sipp@{h}:{p}\r\n"
        "Max-Forwards: 70\r\n"
        f"{ctype}Content-Length: {len(body)}\r\n\r\n"
    )
    return text.encode() + body


def response_to(
    req: Request, status: int, reason: str, to_tag: str | None, body: bytes = b"", extra: str = ""
) -> bytes:
    """The callee's response to a request (Via, From, To, Call-ID, CSeq copied)."""
    vias = "".join(f"Via: {v}\r\n" for v in req.get_lines("via"))
    to = req.get("to") or ""
    if to_tag and ";tag=" not in to:
        to += f";tag={to_tag}"
    ctype = "Content-Type: application/sdp\r\n" if body else ""
    h, p = CALLEE
    text = (
        f"SIP/2.0 {status} {reason}\r\n{vias}"
        f"From: {req.get('from')}\r\nTo: {to}\r\nCall-ID: {req.call_id}\r\n"
        f"CSeq: {req.get('cseq')}\r\nContact: <sip:{h}:{p};transport=UDP>\r\n{extra}"
        f"{ctype}Content-Length: {len(body)}\r\n\r\n"
    )
    return text.encode() + body


def callee_request(method: str, invite_req: Request, to_tag: str, cseq: int, n: int) -> bytes:
    """A request of the callee within the B-leg dialog (e.g. its BYE)."""
    h, p = CALLEE
    contact = invite_req.contacts[0].uri
    text = (
        f"{method} {contact} SIP/2.0\r\n"
        f"Via: SIP/2.0/UDP {h}:{p};branch=z9hG4bK-callee-{n}-{cseq}\r\n"
        f"From: {invite_req.get('to')};tag={to_tag}\r\n"
        f"To: {invite_req.get('from')}\r\n"
        f"Call-ID: {invite_req.call_id}\r\n"
        f"CSeq: {cseq} {method}\r\n"
        "Max-Forwards: 70\r\nContent-Length: 0\r\n\r\n"
    )
    return text.encode()


@dataclass
class Wire:
    """The B2BUA with its two peers: what it sent to each, and a fake clock."""

    config: Config = field(default_factory=default_config)
    now: float = 1000.0
    core: B2BUA = field(init=False)
    to_caller: list[bytes] = field(default_factory=list)
    to_callee: list[bytes] = field(default_factory=list)
    drop: Callable[[Flow, bytes], bool] | None = None  # True: the datagram is lost

    def __post_init__(self) -> None:
        self.core = B2BUA(self.config, None)

    def from_caller(self, data: bytes) -> None:
        self.core.receive(data, Flow("udp", 0, *CALLER), self.now)
        self.flush()

    def from_callee(self, data: bytes) -> None:
        self.core.receive(data, Flow("udp", 0, *CALLEE), self.now)
        self.flush()

    def flush(self) -> None:
        for flow, data in self.core.outbox:
            if self.drop is not None and self.drop(flow, data):
                continue
            if (flow.host, flow.port) == CALLER:
                self.to_caller.append(data)
            elif (flow.host, flow.port) == CALLEE:
                self.to_callee.append(data)
            else:
                raise AssertionError(f"sent to an unexpected address {flow}")
        self.core.outbox.clear()

    def advance(self, seconds: float) -> None:
        """Move the clock, firing every timer due on the way, in order."""
        end = self.now + seconds
        while True:
            deadline = self.core.next_deadline()
            if deadline is None or deadline > end:
                break
            self.now = max(self.now, deadline)
            self.core.handle_timer(self.now)
            self.flush()
        self.now = end

    def take_caller(self) -> list[Request | Response]:
        msgs = [parse_message(d) for d in self.to_caller]
        self.to_caller.clear()
        return msgs

    def take_callee(self) -> list[Request | Response]:
        msgs = [parse_message(d) for d in self.to_callee]
        self.to_callee.clear()
        return msgs


def basic_call(wire: Wire, n: int, hold: float = 0.0) -> None:
    """One whole call: INVITE, 100, 180, 200, ACK, BYE, 200 — the SIPp uac/uas flow."""
    wire.from_caller(invite(n))
    (b_inv,) = [m for m in wire.take_callee() if isinstance(m, Request)]
    assert isinstance(b_inv, Request)
    tag = f"callee{n}"
    wire.from_callee(response_to(b_inv, 180, "Ringing", tag))
    wire.from_callee(response_to(b_inv, 200, "OK", tag, SDP))
    msgs = wire.take_caller()
    ok = msgs[-1]
    assert isinstance(ok, Response) and ok.status == 200, msgs
    wire.from_caller(in_dialog("ACK", ok, 1, n, f"z9hG4bK-{n}-ack"))
    wire.take_callee()
    if hold:
        wire.advance(hold)
    wire.from_caller(in_dialog("BYE", ok, 2, n, f"z9hG4bK-{n}-bye"))
    (bye,) = [m for m in wire.take_callee() if isinstance(m, Request)]
    assert isinstance(bye, Request) and bye.method == "BYE"
    wire.from_callee(response_to(bye, 200, "OK", None))
    wire.take_caller()
