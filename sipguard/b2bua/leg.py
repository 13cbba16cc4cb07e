"""One dialog of a call (RFC 3261 §12): the A-leg towards the caller or the B-leg onwards.

Each leg has its own Call-ID, tags, CSeq, remote target, route set and negotiated
extensions; nothing of one leg's is ever written on the other.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING

from sipguard.b2bua.host import ALLOW, CallHost
from sipguard.config.model import Config
from sipguard.sip.message import Request, Response, SipMessage
from sipguard.sip.transaction import ClientOwner, ClientTransaction, Flow, new_branch, new_tag

if TYPE_CHECKING:
    from sipguard.b2bua.session_timer import SessionTimer


class LocalAddresses:
    """Our Via and Contact on each listen entry (IPv6 bracketed), worked out once."""

    __slots__ = ("_by_entry", "config")

    def __init__(self, config: Config) -> None:
        self.config = config
        self._by_entry: dict[tuple[int, str], tuple[str, str]] = {}  # -> (Via, Contact)

    def _of(self, flow: Flow) -> tuple[str, str]:
        key = (flow.local, flow.transport)
        found = self._by_entry.get(key)
        if found is None:
            entry = self.config.listen[flow.local]
            host = f"[{entry.address}]" if ":" in entry.address else entry.address
            t = "" if flow.transport == "udp" else f";transport={flow.transport}"
            found = self._by_entry[key] = (
                f"SIP/2.0/{flow.transport.upper()} {host}:{entry.port};branch=",
                f"<sip:{host}:{entry.port}{t}>",
            )
        return found

    def via(self, flow: Flow) -> str:
        """A Via of ours for a request on ``flow``, with a new branch (and ``rport``)."""
        return f"{self._of(flow)[0]}{new_branch()};rport"

    def contact(self, flow: Flow) -> str:
        return self._of(flow)[1]


class Leg:
    """One dialog of a call: the UAS side towards the caller, or the UAC side onwards."""

    __slots__ = (
        "allow",
        "call_id",
        "flow",
        "host",
        "is_a",
        "local_seq",
        "local_tag",
        "local_uri",
        "remote_seq",
        "remote_tag",
        "remote_target",
        "remote_uri",
        "route_set",
        "sdp",
        "st",
        "supports",
    )

    def __init__(self, host: CallHost, is_a: bool, call_id: str, flow: Flow) -> None:
        # no reference back to the call: a call and its legs form no cycle, so a call is
        # freed by reference counting the moment it ends (SIPP-NOTES: GC pauses)
        self.host = host
        self.is_a = is_a
        self.call_id = call_id
        self.flow = flow
        self.local_tag = new_tag()
        self.remote_tag: str | None = None
        self.local_uri = ""  # our URI as written in From (B-leg) or To (A-leg), no tag
        self.remote_uri = ""
        self.remote_target = ""
        self.route_set: list[str] = []
        self.local_seq = 0
        self.remote_seq = 0
        self.supports: frozenset[str] = frozenset()  # the peer's Supported option tags
        self.allow: frozenset[str] = frozenset()  # the methods the peer allows
        self.st: SessionTimer | None = None
        self.sdp = b""  # the session description we last sent on this leg

    def request(
        self,
        method: str,
        headers: Iterable[tuple[str, str]] = (),
        body: bytes = b"",
        cseq: int | None = None,
        max_forwards: int = 70,
    ) -> Request:
        """A request within this dialog (§12.2.1.1), from us."""
        if cseq is None:
            self.local_seq += 1
            cseq = self.local_seq
        host = self.host
        to = f"{self.remote_uri};tag={self.remote_tag}" if self.remote_tag else self.remote_uri
        hdrs = [
            ("Via", host.via(self.flow)),
            ("Max-Forwards", str(max_forwards)),
            ("From", f"{self.local_uri};tag={self.local_tag}"),
            ("To", to),
            ("Call-ID", self.call_id),
            ("CSeq", f"{cseq} {method}"),
        ]
        hdrs.extend(("Route", r) for r in self.route_set)
        if method in ("INVITE", "UPDATE"):
            hdrs.append(("Contact", host.contact(self.flow)))
            hdrs.append(("Allow", ALLOW))
            hdrs.append(("Supported", "timer"))
            if self.st is not None:
                hdrs.append(("Session-Expires", self.st.header(request=True)))
        hdrs.extend(headers)
        hdrs.append(("Content-Length", str(len(body))))
        if body and is_sdp(hdrs):
            self.sdp = body
        return Request(method, self.remote_target, hdrs, body)

    def send(self, req: Request, owner: ClientOwner, now: float) -> ClientTransaction:
        return self.host.layer.send_request(req, self.flow, owner, now)

    def ack(self, cseq: int, body: bytes) -> bytes:
        """Our ACK for a 2xx on this dialog (§13.2.2.4), with the answer in ``body``."""
        headers = [("Content-Type", "application/sdp")] if body else []
        return self.request("ACK", headers, body, cseq=cseq).to_bytes()

    def key(self) -> tuple[str, str]:
        return (self.call_id, self.local_tag)

    def learn(self, resp: Response) -> None:
        """What a response that makes or confirms the dialog says of the peer (§12.1.2):
        its tag, its Contact as the remote target, its Record-Route reversed."""
        self.remote_tag = resp.to.tag
        contacts = resp.contacts
        if contacts:
            self.remote_target = str(contacts[0].uri)
        self.route_set = list(reversed(resp.get_all("record-route")))


def refresh_target(leg: Leg, msg: SipMessage) -> None:
    """A target refresh (re-INVITE, UPDATE, or its 2xx): the peer's Contact, if any, is
    the leg's new remote target (RFC 3261 §12.2.1.2, §12.2.2)."""
    contacts = msg.contacts
    if contacts:
        leg.remote_target = str(contacts[0].uri)


class _Ignore:
    """Owner of requests whose outcome changes nothing (BYE after the end, CANCEL)."""

    def on_response(self, tx: ClientTransaction, resp: Response, now: float) -> None:
        return None

    def on_timeout(self, tx: ClientTransaction, now: float) -> None:
        return None


IGNORE = _Ignore()


def is_sdp(headers: Iterable[tuple[str, str]]) -> bool:
    """Whether headers say the body is a session description (``application/sdp``)."""
    for name, value in headers:
        if name.lower() in ("content-type", "c"):
            return value.split(";", 1)[0].strip().lower() == "application/sdp"
    return False


_SETS: dict[frozenset[str], frozenset[str]] = {}


def interned(tokens: frozenset[str]) -> frozenset[str]:
    """One shared copy of each option-tag set: calls from one peer all carry the same
    ``Supported``/``Allow``, and a held call should not pay for its own (bounded)."""
    shared = _SETS.get(tokens)
    if shared is not None:
        return shared
    if len(_SETS) < 4096:
        _SETS[tokens] = tokens
    return tokens


def without_tag(value: str) -> str:
    """A From/To value with its ``tag`` parameter removed (for reuse as a dialog URI)."""
    low = value.lower()
    i = low.find(";tag=")
    if i < 0:
        return value
    j = value.find(";", i + 1)
    return value[:i] + (value[j:] if j >= 0 else "")
