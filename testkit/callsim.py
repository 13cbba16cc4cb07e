"""A caller and a callee in memory, wired to the sans-IO B2BUA core with a fake clock.

Used by the scenario tests (no sockets, no sleeps: a lost datagram is one not delivered,
and :meth:`Wire.advance` fires the timers in order; T1 is 0.5 s, so 64*T1 is 32 s)
and by ``benchmarks/b2bua.py``. The messages are what SIPp's built-in ``uac``/``uas``
scenarios send, so the benchmark measures the same work as a SIPp load run.

Besides the caller (127.0.0.3, trunk ``customers``) and the callee (127.0.0.2, trunk
``pbx``), a test may use further peers (:data:`PEER2` at 127.0.0.4, :data:`PSAP` at
127.0.0.5) with a configuration of its own: what sipguard sends them is kept in
:attr:`Wire.others`, and :meth:`Wire.from_peer` delivers what they send.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from sipguard.b2bua.core import B2BUA
from sipguard.config.loader import load_config_text
from sipguard.config.model import Config
from sipguard.metrics import Metrics
from sipguard.sip.message import Request, Response, parse_message
from sipguard.sip.transaction import Flow
from testkit.fake_rtpengine import CONTROL, FakeRtpengine

Addr = tuple[str, int]
CALLER: Addr = ("127.0.0.3", 5062)
CALLEE: Addr = ("127.0.0.2", 5080)
PEER2: Addr = ("127.0.0.4", 5080)  # a second target, or a redirect target
PSAP: Addr = ("127.0.0.5", 5080)  # an emergency trunk
STRANGER: Addr = ("192.0.2.9", 5060)  # no trunk's source
OTHER_PEERS = frozenset({PEER2, PSAP, STRANGER})

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
SDP_CALLEE = (
    b"v=0\r\no=user2 1 1 IN IP4 127.0.0.2\r\ns=-\r\nc=IN IP4 127.0.0.2\r\n"
    b"t=0 0\r\nm=audio 7000 RTP/AVP 0\r\na=rtpmap:0 PCMU/8000\r\n"
)


def default_config(extra: str = "") -> Config:
    return load_config_text(CONFIG + extra, "<callsim>")


def config_text(text: str) -> Config:
    """A whole configuration of a test's own (YAML text)."""
    return load_config_text(text, "<callsim>")


def invite(
    n: int,
    user: str = "0201234567",
    headers: str = "",
    body: bytes = SDP,
    *,
    from_user: str = "+31201234567",
    from_tag: str | None = None,
    cseq: int = 1,
    branch: str | None = None,
    contact: str | None = None,
    max_forwards: int = 70,
    addr: Addr = CALLER,
) -> bytes:
    """The caller's INVITE (call ``n``); ``headers`` are extra header lines (CRLF ended)."""
    h, p = addr
    tag = from_tag or f"{n}SIPpTag001"
    br = branch or f"z9hG4bK-{n}-{cseq}-0"
    ctype = "Content-Type: application/sdp\r\n" if body else ""
    text = (
        f"INVITE sip:{user}@127.0.0.1:5060 SIP/2.0\r\n"
        f"Via: SIP/2.0/UDP {h}:{p};branch={br}\r\n"
        f"From: sipp <sip:{from_user}@{h}:{p}>;tag={tag}\r\n"
        f"To: <sip:{user}@127.0.0.1:5060>\r\n"
        f"Call-ID: {n}-sim@{h}\r\n"
        f"CSeq: {cseq} INVITE\r\n"
        f"Contact: {contact or f'sip:sipp@{h}:{p}'}\r\n"
        f"Max-Forwards: {max_forwards}\r\n"
        "Subject: Performance Test\r\n"
        f"{headers}"
        f"{ctype}"
        f"Content-Length: {len(body)}\r\n\r\n"
    )
    return text.encode() + body


def in_dialog(
    method: str,
    resp: Response,
    cseq: int,
    n: int,
    branch: str,
    body: bytes = b"",
    extra: str = "",
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
        f"Max-Forwards: 70\r\n{extra}"
        f"{ctype}Content-Length: {len(body)}\r\n\r\n"
    )
    return text.encode() + body


def response_to(
    req: Request,
    status: int,
    reason: str,
    to_tag: str | None,
    body: bytes = b"",
    extra: str = "",
    contact: Addr = CALLEE,
) -> bytes:
    """A peer's response to a request (Via, From, To, Call-ID, CSeq copied)."""
    vias = "".join(f"Via: {v}\r\n" for v in req.get_lines("via"))
    to = req.get("to") or ""
    if to_tag and ";tag=" not in to:
        to += f";tag={to_tag}"
    ctype = "Content-Type: application/sdp\r\n" if body else ""
    h, p = contact
    text = (
        f"SIP/2.0 {status} {reason}\r\n{vias}"
        f"From: {req.get('from')}\r\nTo: {to}\r\nCall-ID: {req.call_id}\r\n"
        f"CSeq: {req.get('cseq')}\r\nContact: <sip:{h}:{p};transport=UDP>\r\n{extra}"
        f"{ctype}Content-Length: {len(body)}\r\n\r\n"
    )
    return text.encode() + body


def callee_request(
    method: str,
    invite_req: Request,
    to_tag: str,
    cseq: int,
    n: int,
    body: bytes = b"",
    extra: str = "",
    addr: Addr = CALLEE,
) -> bytes:
    """A request of the callee within the B-leg dialog (e.g. its BYE)."""
    h, p = addr
    contact = invite_req.contacts[0].uri
    ctype = "Content-Type: application/sdp\r\n" if body else ""
    text = (
        f"{method} {contact} SIP/2.0\r\n"
        f"Via: SIP/2.0/UDP {h}:{p};branch=z9hG4bK-callee-{n}-{cseq}-{method}\r\n"
        f"From: {invite_req.get('to')};tag={to_tag}\r\n"
        f"To: {invite_req.get('from')}\r\n"
        f"Call-ID: {invite_req.call_id}\r\n"
        f"CSeq: {cseq} {method}\r\n"
        f"Contact: <sip:{h}:{p}>\r\n"
        f"Max-Forwards: 70\r\n{extra}"
        f"{ctype}Content-Length: {len(body)}\r\n\r\n"
    )
    return text.encode() + body


@dataclass
class Wire:
    """The B2BUA with its two peers: what it sent to each, and a fake clock."""

    config: Config = field(default_factory=default_config)
    now: float = 1000.0
    core: B2BUA = field(init=False)
    to_caller: list[bytes] = field(default_factory=list)
    to_callee: list[bytes] = field(default_factory=list)
    # what was sent to PEER2, PSAP: by address
    others: dict[Addr, list[bytes]] = field(default_factory=dict)
    drop: Callable[[Flow, bytes], bool] | None = None  # True: the datagram is lost
    caller_transport: str = "udp"  # or "tcp": the caller on a connection (listen entry 1)
    metrics: Metrics | None = None  # the core counts into these when given
    # the media relay behind rtpengine.control (testkit.fake_rtpengine): its replies are
    # delivered as soon as sipguard sends, unless it holds or drops them
    relay: FakeRtpengine | None = None

    def __post_init__(self) -> None:
        self.core = B2BUA(self.config, self.metrics)

    def from_caller(self, data: bytes) -> None:
        if self.caller_transport == "udp":
            flow = Flow("udp", 0, *CALLER)
        else:
            flow = Flow(self.caller_transport, 1, *CALLER, conn=1)
        self.core.receive(data, flow, self.now)
        self.flush()

    def from_callee(self, data: bytes) -> None:
        self.core.receive(data, Flow("udp", 0, *CALLEE), self.now)
        self.flush()

    def from_peer(self, addr: Addr, data: bytes) -> None:
        self.core.receive(data, Flow("udp", 0, *addr), self.now)
        self.flush()

    def flush(self) -> None:
        self._flush_sip()
        media = self.core.media_outbox
        while media:
            sent = list(media)
            media.clear()
            for addr, data in sent:
                reply = None if self.relay is None else self.relay.handle(data)
                if reply is not None:
                    self.core.media_receive(reply, addr, self.now)
                self._flush_sip()

    def relay_replies(self) -> None:
        """Deliver the replies the relay held (``hold``), in order."""
        assert self.relay is not None
        for reply in self.relay.release():
            self.core.media_receive(reply, CONTROL, self.now)
            self.flush()

    def _flush_sip(self) -> None:
        for flow, data in self.core.outbox:
            if self.drop is not None and self.drop(flow, data):
                continue
            addr = (flow.host, flow.port)
            if addr == CALLER:
                self.to_caller.append(data)
            elif addr == CALLEE:
                self.to_callee.append(data)
            elif addr in OTHER_PEERS:
                self.others.setdefault(addr, []).append(data)
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

    def take(self, addr: Addr) -> list[Request | Response]:
        """What was sent to a peer (caller, callee or another) since the last take."""
        if addr == CALLER:
            return self.take_caller()
        if addr == CALLEE:
            return self.take_callee()
        return [parse_message(d) for d in self.others.pop(addr, [])]


def requests(msgs: list[Request | Response], method: str | None = None) -> list[Request]:
    return [m for m in msgs if isinstance(m, Request) and (method is None or m.method == method)]


def responses(msgs: list[Request | Response], status: int | None = None) -> list[Response]:
    return [m for m in msgs if isinstance(m, Response) and (status is None or m.status == status)]


# -- what the call-flow tests share ---------------------------------------------------------

T1 = 0.5  # the default configuration's T1, seconds: 64*T1 is 32 s


def statuses(msgs: list[Request | Response]) -> list[int | str]:
    return [m.status if isinstance(m, Response) else m.method for m in msgs]


class Recorder:
    """A drop hook that loses nothing, or the first ``lose`` matches, and notes when."""

    def __init__(self, wire: Wire, match: str, to: tuple[str, int], lose: int = 0) -> None:
        self.wire = wire
        self.match = match.encode()
        self.to = to
        self.lose = lose
        self.times: list[float] = []

    def __call__(self, flow: Flow, data: bytes) -> bool:
        if (flow.host, flow.port) != self.to or not data.startswith(self.match):
            return False
        self.times.append(self.wire.now)
        if self.lose > 0:
            self.lose -= 1
            return True
        return False


def start_call(wire: Wire, n: int, data: bytes | None = None) -> Request:
    """The caller's INVITE sent; the B-leg INVITE the callee received."""
    wire.from_caller(data if data is not None else invite(n))
    (b_inv,) = requests(wire.take_callee(), "INVITE")
    return b_inv


def cancel_of(n: int) -> bytes:
    """The caller's CANCEL of its INVITE ``n`` (§9.1: the same Request-URI, top Via,
    From, To, Call-ID and CSeq number)."""
    return (
        f"CANCEL sip:0201234567@127.0.0.1:5060 SIP/2.0\r\n"
        f"Via: SIP/2.0/UDP 127.0.0.3:5062;branch=z9hG4bK-{n}-1-0\r\n"
        f"From: sipp <sip:+31201234567@127.0.0.3:5062>;tag={n}SIPpTag001\r\n"
        f"To: <sip:0201234567@127.0.0.1:5060>\r\n"
        f"Call-ID: {n}-sim@127.0.0.3\r\n"
        "CSeq: 1 CANCEL\r\nMax-Forwards: 70\r\nContent-Length: 0\r\n\r\n"
    ).encode()


# a caller that supports session timers and asks for 90 s, refreshed by itself
SE_CALLER = "Supported: timer\r\nSession-Expires: 90;refresher=uac\r\n"


@dataclass
class Established:
    """A call answered and ACKed: what each side needs for its in-dialog requests."""

    n: int
    b_invite: Request  # the INVITE the callee received
    a_ok: Response  # the 200 the caller received
    callee_tag: str


def establish(
    wire: Wire,
    n: int,
    data: bytes | None = None,
    ok_extra: str = "",
    ok_body: bytes = SDP_CALLEE,
) -> Established:
    """INVITE, 180, 200, ACK: a call in progress (the messages so far are taken)."""
    wire.from_caller(data if data is not None else invite(n))
    (b_inv,) = requests(wire.take_callee(), "INVITE")
    tag = f"callee{n}"
    wire.from_callee(response_to(b_inv, 180, "Ringing", tag))
    wire.from_callee(response_to(b_inv, 200, "OK", tag, ok_body, extra=ok_extra))
    (ok,) = responses(wire.take_caller(), 200)
    wire.from_caller(in_dialog("ACK", ok, 1, n, f"z9hG4bK-{n}-ack"))
    wire.take_callee()
    return Established(n, b_inv, ok, tag)


def basic_call(wire: Wire, n: int, hold: float = 0.0, user: str = "0201234567") -> None:
    """One whole call: INVITE, 100, 180, 200, ACK, BYE, 200 — the SIPp uac/uas flow
    (``user``: the number dialled; the default is the caller's own, as SIPp's uac)."""
    wire.from_caller(invite(n, user))
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
