"""A call: two dialogs (A-leg towards the caller, B-leg towards the next hop), sans-IO.

The legs share nothing on the wire: each has its own Call-ID, tags, CSeq, Via, Contact,
route set and negotiated extensions. What crosses from one leg to the other is a call
event (an offer, a provisional answer, the answer, a hangup, a failure); its headers are
rebuilt for the other side through the privacy filters, never copied wholesale.

Per leg, independently:

- reliable provisional responses (RFC 3262): towards the caller they are sent reliably
  when the caller supports ``100rel``, with our own ``RSeq`` numbering, retransmitted
  until the PRACK comes; a reliable 1xx from the next hop is PRACKed by us;
- session timers (RFC 4028): each leg has its own interval and refresher; where we are
  the refresher we send UPDATE (or re-INVITE), where the peer is and no refresh comes,
  the call ends (``session_timeout``);
- offer/answer in re-INVITE and UPDATE, relayed, with glare answered ``491``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING

from sipguard.b2bua.identity import CallIdentity
from sipguard.cdr.record import CdrRecord
from sipguard.config.model import MAX_SESSION_INTERVAL, Config, Trunk
from sipguard.policy.body import filter_body
from sipguard.policy.headers import copy_headers
from sipguard.sip.message import Request, Response, SipMessage, canonical_name
from sipguard.sip.timers import Timer
from sipguard.sip.transaction import (
    ClientOwner,
    ClientTransaction,
    Flow,
    ServerTransaction,
    make_response,
    new_tag,
)
from sipguard.sip.uri import param

if TYPE_CHECKING:
    from sipguard.b2bua.core import B2BUA

# Call states
EARLY = 0  # B-leg INVITE pending
ANSWERED = 1  # 2xx relayed to the caller
ENDED = 2

ALLOW = "INVITE, ACK, CANCEL, BYE, OPTIONS, INFO, UPDATE, PRACK, MESSAGE"
SESSION_EXPIRED = 'SIP;cause=408;text="Session timer expired"'
# Timer C (RFC 3261 §16.6 step 11, §16.7 step 2): an INVITE that got a provisional
# response but no final one is given up (CANCEL, 408 to the caller) after this long
# without a further provisional, so that no call stays early for ever and holds a slot.

# Headers that belong to one leg's negotiation or routing: never relayed, rebuilt per leg.
_PER_LEG = frozenset(
    {
        "rseq",
        "rack",
        "record-route",
        "contact",
        "server",
        "unsupported",
        "supported",
        "require",
        "allow",
        "session-expires",
        "min-se",
    }
)
_AUTH_CHALLENGE = frozenset({"www-authenticate", "proxy-authenticate"})
_AUTH_CREDENTIALS = frozenset({"authorization", "proxy-authorization"})
_NO_AUTH: frozenset[str] = frozenset()
# what describes a body: goes when the policy leaves nothing of the body to relay
_CONTENT_HEADERS = frozenset(
    {"content-type", "content-disposition", "content-encoding", "content-language"}
)


MIN_SESSION_INTERVAL = 90  # RFC 4028 §4: the smallest Min-SE, and so Session-Expires


def delta_seconds(text: str) -> int | None:
    """A delta-seconds value (ASCII digits, RFC 3261 §25.1) as an int, capped at
    :data:`MAX_SESSION_INTERVAL`; None if it is not one. Never ``int()`` of a peer's
    arbitrary text: ``"²".isdigit()`` is true, and 4,300 digits raise."""
    value = text.strip()
    if not value or not value.isascii() or not value.isdigit():
        return None
    value = value.lstrip("0") or "0"
    if len(value) > 10:
        return MAX_SESSION_INTERVAL
    return min(int(value), MAX_SESSION_INTERVAL)


def session_expires(msg: SipMessage) -> tuple[int, str | None] | None:
    """``Session-Expires`` of a message: (interval, refresher or None), or None."""
    raw = msg.get("session-expires")
    if raw is None:
        return None
    value, _, rest = raw.partition(";")
    interval = delta_seconds(value)
    if interval is None:
        return None
    refresher = None
    for part in rest.split(";"):
        k, _, v = part.partition("=")
        if k.strip().lower() == "refresher":
            refresher = v.strip().lower() or None
    return interval, refresher


def request_min_se(msg: SipMessage) -> int:
    """The ``Min-SE`` of a request in seconds, 0 when it has none (or not a number)."""
    raw = msg.get("min-se")
    return (delta_seconds(raw.partition(";")[0]) or 0) if raw is not None else 0


def interval_too_small(req: Request, config: Config) -> bool:
    """A caller that supports session timers asked for an interval below our Min-SE: the
    INVITE gets 422 with our Min-SE (RFC 4028 §9)."""
    se = session_expires(req)
    if se is None or se[0] >= config.sip.min_se or config.sip.session_expires <= 0:
        return False  # timers off: never a refusal for their sake
    return "timer" in (req.tokens("supported") | req.tokens("require"))


class SessionTimer:
    """RFC 4028 on one leg: ``us`` means we refresh; else we expect the peer to."""

    __slots__ = ("call", "interval", "is_a", "timer", "us")

    def __init__(self, call: Call, is_a: bool, interval: int, us: bool) -> None:
        self.call = call
        self.is_a = is_a
        # RFC 4028 §4: never below 90 s, whatever a peer wrote (0 would refresh at once,
        # again and again)
        self.interval = max(interval, MIN_SESSION_INTERVAL)
        self.us = us
        self.timer: Timer | None = None

    def restart(self, now: float) -> None:
        self.cancel()
        call = self.call
        if self.us:
            when, fn = now + self.interval / 2, self._refresh
        else:
            # §10: the non-refresher gives up at the expiry minus min(32, interval/3)
            when, fn = now + self.interval - min(32.0, self.interval / 3), self._expired
        self.timer = call.core.layer.timers.schedule(when, fn)

    def cancel(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None

    def header(self, request: bool) -> str:
        """Our Session-Expires for a request we send (``request``) or a response."""
        role = ("uac" if self.us else "uas") if request else ("uas" if self.us else "uac")
        return f"{self.interval};refresher={role}"

    def _leg(self) -> Leg | None:
        return self.call.a if self.is_a else self.call.b

    def _refresh(self, now: float) -> None:
        self.timer = None
        leg = self._leg()
        if leg is not None:
            self.call.refresh(leg, now)

    def _expired(self, now: float) -> None:
        self.timer = None
        leg = self._leg()
        if leg is not None:
            self.call.session_expired(leg, now)


class Leg:
    """One dialog of a call: the UAS side towards the caller, or the UAC side onwards."""

    __slots__ = (
        "allow",
        "call_id",
        "core",
        "flow",
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

    def __init__(self, core: B2BUA, is_a: bool, call_id: str, flow: Flow) -> None:
        # no reference back to the call: a call and its legs form no cycle, so a call is
        # freed by reference counting the moment it ends (SIPP-NOTES: GC pauses)
        self.core = core
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
        core = self.core
        to = f"{self.remote_uri};tag={self.remote_tag}" if self.remote_tag else self.remote_uri
        hdrs = [
            ("Via", core.via(self.flow)),
            ("Max-Forwards", str(max_forwards)),
            ("From", f"{self.local_uri};tag={self.local_tag}"),
            ("To", to),
            ("Call-ID", self.call_id),
            ("CSeq", f"{cseq} {method}"),
        ]
        hdrs.extend(("Route", r) for r in self.route_set)
        if method in ("INVITE", "UPDATE"):
            hdrs.append(("Contact", core.contact(self.flow)))
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
        return self.core.layer.send_request(req, self.flow, owner, now)

    def key(self) -> tuple[str, str]:
        return (self.call_id, self.local_tag)


class Relay:
    """An in-dialog request relayed from one leg to the other, and its response back."""

    __slots__ = ("ack", "call", "cseq", "from_leg", "inbound", "to_leg")

    def __init__(self, call: Call, from_leg: Leg, to_leg: Leg, inbound: ServerTransaction):
        self.call = call
        self.from_leg = from_leg
        self.to_leg = to_leg
        self.inbound = inbound
        self.ack: bytes | None = None  # our ACK on to_leg for a relayed re-INVITE's 2xx
        self.cseq = 0  # our re-INVITE's CSeq: its ACK's (§13.2.2.4), whatever came since

    def on_response(self, tx: ClientTransaction, resp: Response, now: float) -> None:
        call = self.call
        status = resp.status
        if status == 100:
            return
        method = tx.request.method
        if status >= 200:
            call.relays.discard(self)
        if call.state == ENDED:
            # the call ended while this request was out (a BYE crossed it): its request
            # was answered 487 then (§15.1.2); a 2xx is ACKed so that it stops, never relayed
            if method == "INVITE" and 200 <= status < 300:
                if self.ack is None:
                    self.ack = call.ack_bytes(self.to_leg, resp.cseq.number, b"")
                call.core.layer.send(self.to_leg.flow, self.ack)
            return
        if method in ("INVITE", "UPDATE") and 200 <= status < 300 and self.ack is None:
            # a target refresh that succeeded (§12.2.1.2, §12.2.2, RFC 6141 §3.2): each
            # leg's remote target from its own Contact (our ACK goes there); route sets stay
            _refresh_target(self.to_leg, resp)
            _refresh_target(self.from_leg, self.inbound.request)
        if method == "INVITE" and 200 <= status < 300:
            if self.ack is not None:  # a retransmitted 2xx: our ACK was lost
                call.core.layer.send(self.to_leg.flow, self.ack, retransmission=True)
                return
            if tx.request.body:
                # the offer was in our re-INVITE: the answer is here, ACK at once
                self.ack = call.ack_bytes(self.to_leg, resp.cseq.number, b"")
                call.core.layer.send(self.to_leg.flow, self.ack)
            self.cseq = resp.cseq.number
            # else the answer will come in the other side's ACK (late offer re-INVITE);
            # either way that ACK must reach the server transaction, or our 2xx is
            # retransmitted until Timer L (§13.3.1.4)
            call.pending_ack[self.from_leg.is_a] = self
        if status >= 200 and method in ("INVITE", "UPDATE"):
            call.offer_pending = False
            if status < 300:
                for leg in (self.from_leg, self.to_leg):
                    if leg.st is not None:
                        leg.st.restart(now)
        headers = call.relay_headers(resp, towards_a=self.from_leg.is_a, response=True)
        body = call.relay_body(resp, headers, towards_a=self.from_leg.is_a)
        if method in ("INVITE", "UPDATE") and status < 300:
            headers.insert(0, ("Contact", call.core.contact(self.from_leg.flow)))
            st = self.from_leg.st
            if st is not None and status >= 200:
                headers.append(("Require", "timer"))
                headers.append(("Session-Expires", st.header(request=False)))
        out = make_response(
            self.inbound.request,
            status,
            call.phrase(resp, towards_a=self.from_leg.is_a),
            to_tag=self.from_leg.local_tag,
            headers=headers,
            body=body,
        )
        if body and resp.content_type == "application/sdp":
            self.from_leg.sdp = body
        self.inbound.respond(out, now)
        if status in (408, 481) and method != "BYE":
            # the dialog is gone on the far side (§12.2.1.2): end the call
            call.hangup(not self.from_leg.is_a, now, reason="timeout", status=status)

    def on_timeout(self, tx: ClientTransaction, now: float) -> None:
        call = self.call
        call.relays.discard(self)
        if call.state == ENDED:
            return
        self.inbound.respond(make_response(self.inbound.request, 408), now)
        if tx.request.method in ("INVITE", "UPDATE"):
            call.offer_pending = False
        call.hangup(not self.from_leg.is_a, now, reason="timeout", status=408)

    def ack_from_peer(self, req: Request, now: float) -> None:
        """The other side's ACK for the relayed 2xx: stops our 2xx; an answer goes on."""
        self.inbound.ack_received(now)
        if self.ack is not None:
            return  # the offer was in the re-INVITE: its 2xx was ACKed on arrival
        body = self.call.relay_body(req, [], towards_a=self.to_leg.is_a)
        self.ack = self.call.ack_bytes(self.to_leg, self.cseq, body)
        self.call.core.layer.send(self.to_leg.flow, self.ack)


class _Refresh:
    """Owner of a session refresh we send: success restarts the timer, failure ends."""

    __slots__ = ("call", "leg")

    def __init__(self, call: Call, leg: Leg) -> None:
        self.call = call
        self.leg = leg

    def on_response(self, tx: ClientTransaction, resp: Response, now: float) -> None:
        call = self.call
        status = resp.status
        if status < 200:
            return
        if status < 300:
            _refresh_target(self.leg, resp)  # §12.2.1.2: before the ACK, which goes there
        if tx.request.method == "INVITE" and status < 300:
            call.core.layer.send(self.leg.flow, call.ack_bytes(self.leg, resp.cseq.number, b""))
        call.offer_pending = False
        if status < 300 or status == 491:
            if self.leg.st is not None:
                self.leg.st.restart(now)
        elif status in (408, 481) or status >= 500:
            call.hangup(self.leg.is_a, now, reason="session_timeout", status=408, to_a=True)
        elif self.leg.st is not None:
            self.leg.st.restart(now)

    def on_timeout(self, tx: ClientTransaction, now: float) -> None:
        self.call.offer_pending = False
        self.call.hangup(self.leg.is_a, now, reason="session_timeout", status=408, to_a=True)


class Call:
    """Both legs of one call, its privacy decision, and what its CDR needs."""

    __slots__ = (
        "a",
        "a_cseq",
        "a_invite",
        "a_rel",
        "a_rel_timer",
        "a_rel_wait",
        "a_rseq",
        "answered_at",
        "auth_retry",
        "b",
        "b_ack",
        "b_cseq",
        "b_invite",
        "b_min_se",
        "b_offer",
        "b_rseq",
        "b_ruri",
        "b_targets",
        "cdr_start",
        "config",
        "core",
        "emergency",
        "forks",
        "held_final",
        "held_reinvite",
        "id",
        "ident",
        "late_offer",
        "merge_key",
        "offer_pending",
        "pending_ack",
        "redirects",
        "relays",
        "started_at",
        "state",
        "status",
        "timer",
        "trunk_in",
        "trunk_out",
        "wall_start",
    )

    def __init__(
        self,
        core: B2BUA,
        cdr_id: str,
        config: Config,
        trunk_in: Trunk,
        trunk_out: Trunk,
        ident: CallIdentity,
        invite: Request,
        stx: ServerTransaction,
        now: float,
    ) -> None:
        self.core = core
        self.id = cdr_id
        self.config = config  # the policy this call started with (kept across reloads)
        self.trunk_in = trunk_in
        self.trunk_out = trunk_out
        self.ident = ident
        self.emergency = ident.decision.emergency
        self.state = EARLY
        self.status = 0
        self.started_at = now
        self.wall_start = core.wall(now)
        self.answered_at: float | None = None
        # the start record, written when the call is answered; the end record closes it
        self.cdr_start: CdrRecord | None = None
        self.a_invite = stx
        self.b_cseq = 0
        self.b_offer = b""
        self.b_rseq = 0  # the highest RSeq of the callee's reliable 1xx seen (RFC 3262)
        self.relays: set[Relay] = set()  # in-dialog requests out on the other leg
        self.a_cseq = invite.cseq.number  # the transaction forgets its INVITE once ACKed
        self.merge_key = (invite.call_id, invite.from_.tag or "", invite.cseq.number)
        a = self.a = Leg(core, True, invite.call_id, stx.flow)
        a.remote_tag = invite.from_.tag
        a.remote_seq = invite.cseq.number
        a.remote_uri = _without_tag(invite.get("from") or "")
        a.local_uri = _without_tag(invite.get("to") or "")
        contacts = invite.contacts
        a.remote_target = str(contacts[0].uri) if contacts else str(invite.from_.uri)
        a.route_set = list(invite.get_all("record-route"))
        a.supports = _interned(invite.tokens("supported") | invite.tokens("require"))
        a.allow = _interned(frozenset(m.upper() for m in invite.tokens("allow")))
        self.b: Leg | None = None
        self.b_invite: ClientTransaction | None = None
        self.b_targets: list[Flow] = []
        self.b_ruri: str | None = None  # the Request-URI a followed 3xx gave
        self.b_ack: bytes | None = None
        self.late_offer = not invite.body
        self.offer_pending = False
        self.pending_ack: dict[bool, Relay] = {}  # by "ACK arrives on the A-leg"
        self.redirects = 0
        # the largest Min-SE a 422 of the next hop asked for (RFC 4028 §7.4), 0 if none
        self.b_min_se = 0
        self.forks: dict[str, bytes] | None = None  # To tag -> our ACK, of 2xx we BYEd
        self.auth_retry = False  # this INVITE answers a challenge relayed from the B-leg
        # reliable provisional responses towards the caller (RFC 3262)
        self.a_rseq = 0
        self.a_rel: tuple[int, bytes, bool] | None = None  # (rseq, bytes, has SDP) unPRACKed
        self.a_rel_timer: Timer | None = None
        self.a_rel_wait: list[Callable[[float], None]] = []  # held until the PRACK comes
        self.held_final = False
        # the callee's re-INVITE that came before the caller's ACK (§14.1): relayed then
        self.held_reinvite: tuple[Leg, Request, ServerTransaction] | None = None
        self.timer: Timer | None = None
        stx.owner = self
        stx.local_tag = a.local_tag

    # -- helpers ---------------------------------------------------------------------------

    def other(self, leg: Leg) -> Leg:
        if leg is self.a:
            assert self.b is not None
            return self.b
        return self.a

    def relay_headers(
        self, msg: SipMessage, *, towards_a: bool, response: bool = False
    ) -> list[tuple[str, str]]:
        """The end-to-end headers of ``msg`` that may cross to the other leg."""
        trunk = self.trunk_in if towards_a else self.trunk_out
        restricted = self.ident.decision.presentation == "restricted" and not towards_a
        if response and towards_a:
            auth = _AUTH_CHALLENGE
        elif not response and not towards_a and self.auth_retry:
            # credentials go only to the trunk that asked for them, never unasked
            auth = _AUTH_CREDENTIALS
        else:
            auth = _NO_AUTH
        pairs = [
            (lname, value)
            for lname, value in msg.keyed_headers()
            if lname not in _PER_LEG
            and (lname in auth or (lname not in _AUTH_CHALLENGE and lname not in _AUTH_CREDENTIALS))
        ]
        source = self.trunk_out if towards_a else self.trunk_in
        out = copy_headers(
            pairs,
            towards_trusted=trunk.trusted,
            restricted=restricted,
            emergency_to_emergency_trunk=self.emergency and not towards_a,
            allowlist=trunk.header_allowlist | auth if auth else trunk.header_allowlist,
            # RFC 7044 §10.1: the caller's Privacy: history (sipguard sends no Privacy
            # header of its own that would ask the next hop for it)
            anonymise_history=not towards_a and "history" in self.ident.facts.privacy,
            from_trusted=source.trusted,
        )
        return [(canonical_name(n), v) for n, v in out]

    def relay_body(
        self, msg: SipMessage, headers: list[tuple[str, str]], *, towards_a: bool
    ) -> bytes:
        """The body of ``msg`` as it may cross to the other leg (:mod:`sipguard.policy.body`):
        no location but towards the emergency trunk, no caller identity in the SDP of a
        restricted call. ``headers`` (the relayed ones) lose their ``Content-*`` headers
        when nothing of the body may go."""
        body = msg.body
        if not body:
            return body
        out = filter_body(
            msg.get("content-type"),
            body,
            restricted=self.ident.decision.restricted and not towards_a,
            keep_location=self.emergency and not towards_a,
        )
        if not out:
            headers[:] = [h for h in headers if h[0].lower() not in _CONTENT_HEADERS]
        return out

    def phrase(self, resp: Response, *, towards_a: bool) -> str | None:
        """The reason phrase to relay: the peer's own only towards a trusted trunk.

        A reason phrase is free text and can name a person, a number or an address;
        towards an untrusted trunk the standard phrase for the status is used instead.
        """
        trunk = self.trunk_in if towards_a else self.trunk_out
        return resp.reason if trunk.trusted else None

    def ack_bytes(self, leg: Leg, cseq: int, body: bytes) -> bytes:
        headers = [("Content-Type", "application/sdp")] if body else []
        return leg.request("ACK", headers, body, cseq=cseq).to_bytes()

    def _arm(self, now: float, delay: float, fn: Callable[[float], None]) -> None:
        if self.timer is not None:
            self.timer.cancel()
        self.timer = self.core.layer.timers.after(now, delay, fn)

    def _disarm(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None

    # -- the caller's side -----------------------------------------------------------------

    def on_cancel(self, tx: ServerTransaction, cancel: Request, now: float) -> None:
        """CANCEL from the caller before the answer: CANCEL the B-leg, 487 to the caller."""
        if self.state != EARLY:
            return
        if self.b_invite is not None:
            self.core.layer.cancel(self.b_invite, now)
        self.answer_a(487, now)
        self.finish(now, "cancel", 487)

    def on_ack_timeout(self, tx: ServerTransaction, now: float) -> None:
        """No ACK for our 2xx within 64*T1 (§13.3.1.4): end the call with BYE on both legs."""
        if self.state == ANSWERED and tx is self.a_invite:
            self.hangup(True, now, reason="timeout", status=408, to_a=True)

    def answer_a(
        self,
        status: int,
        now: float,
        reason: str | None = None,
        headers: list[tuple[str, str]] | None = None,
        body: bytes = b"",
    ) -> None:
        """Respond to the caller's INVITE (provisional responses reliably where asked)."""
        rel = self.a_rel
        if rel is not None and 200 <= status < 300 and rel[2] and not self.held_final:
            # RFC 3262 §3: no 2xx before the PRACK of a 1xx with SDP (a failure may go)
            self.held_final = True
            self.a_rel_wait.append(lambda t: self._answer_a(status, t, reason, headers, body))
            return
        if 100 < status < 200 and "100rel" in self.a.supports:
            if self.a_rel is not None:  # one unacknowledged reliable 1xx at a time
                self.a_rel_wait.append(lambda t: self.answer_a(status, t, reason, headers, body))
                return
            self.a_rseq += 1
            hdrs = [("Require", "100rel"), ("RSeq", str(self.a_rseq)), *(headers or [])]
            resp = self._a_response(status, reason, hdrs, body)
            self.a_rel = (self.a_rseq, resp.to_bytes(), bool(body))
            self.a_invite.respond(resp, now)
            self._rel_retransmit(now, self.core.layer.t.t1, now + 64 * self.core.layer.t.t1)
            return
        self._answer_a(status, now, reason, headers, body)

    def _answer_a(
        self,
        status: int,
        now: float,
        reason: str | None,
        headers: list[tuple[str, str]] | None,
        body: bytes,
    ) -> None:
        if status >= 200 and self.a_rel_timer is not None:
            self.a_rel_timer.cancel()
            self.a_rel_timer = None
        # a Response, not bytes: the transaction keeps its To (tag) for the 200 to a
        # CANCEL, which must carry the dialog's tag (§9.2)
        self.a_invite.respond(self._a_response(status, reason, headers or [], body), now)

    def _a_response(
        self, status: int, reason: str | None, headers: list[tuple[str, str]], body: bytes
    ) -> Response:
        hdrs = list(headers)
        req = self.a_invite.request
        if status < 300 and status != 100:
            hdrs[:0] = [("Contact", self.core.contact(self.a.flow)), ("Allow", ALLOW)]
            # §12.1.1: a response that makes a dialog carries the request's Record-Route
            # (the caller's own proxies: nothing of the B-leg)
            hdrs[:0] = [("Record-Route", v) for v in req.get_lines("record-route")]
        if 200 <= status < 300 and self.a.st is not None:
            # Require: timer only to a caller that supports the extension (RFC 3261
            # §8.2.2.3; RFC 4028 §9: one that does not gets refresher=uas)
            if "timer" in (req.tokens("supported") | req.tokens("require")):
                hdrs.append(("Require", "timer"))
            hdrs.append(("Session-Expires", self.a.st.header(request=False)))
        if body and is_sdp(hdrs):
            self.a.sdp = body
        return make_response(req, status, reason, to_tag=self.a.local_tag, headers=hdrs, body=body)

    def _rel_retransmit(self, now: float, interval: float, give_up: float) -> None:
        """Retransmit the reliable 1xx at T1, 2T1 … until its PRACK (RFC 3262 §3)."""
        rel = self.a_rel
        if rel is None or self.state == ENDED:
            return
        if now >= give_up:
            self.a_rel = None
            if self.held_final and self.state == ANSWERED:
                # RFC 3262 §3: no PRACK for 64*T1: the caller's INVITE is rejected (5xx),
                # the answered B-leg gets a BYE
                self.hangup(False, now, reason="timeout", status=500)
                return
            self._release_held(now)
            return
        if interval > self.core.layer.t.t1:  # not the first call: this is a retransmission
            self.core.layer.send(self.a.flow, rel[1], retransmission=True)
        nxt = now + interval

        def again(t: float) -> None:
            self._rel_retransmit(t, interval * 2, give_up)

        self.a_rel_timer = self.core.layer.timers.schedule(min(nxt, give_up), again)

    def _release_held(self, now: float) -> None:
        if self.a_rel_timer is not None:
            self.a_rel_timer.cancel()
            self.a_rel_timer = None
        waiting, self.a_rel_wait = self.a_rel_wait, []
        self.held_final = False
        for fn in waiting:
            fn(now)

    def on_prack(self, req: Request, stx: ServerTransaction, now: float) -> None:
        rack = (req.get("rack") or "").split()
        rel = self.a_rel
        if rel is None or len(rack) != 3 or rack[0] != str(rel[0]):
            stx.respond(make_response(req, 481), now)
            return
        stx.respond(make_response(req, 200), now)
        self.a_rel = None
        self._release_held(now)

    def on_ack(self, leg: Leg, req: Request, now: float) -> None:
        """An ACK for a 2xx on ``leg``: ours to absorb, or the answer to pass on."""
        if leg.is_a and req.cseq.number == self.a_cseq:
            self.a_invite.ack_received(now)
            b = self.b
            if self.late_offer and b is not None and self.b_ack is None and self.b_invite:
                body = self.relay_body(req, [], towards_a=False)
                self.b_ack = self.ack_bytes(b, self.b_cseq, body)
                self.core.layer.send(b.flow, self.b_ack)
            held, self.held_reinvite = self.held_reinvite, None
            if held is not None:
                self._relay(*held, now)
            return
        relay = self.pending_ack.pop(leg.is_a, None)
        if relay is not None:
            relay.ack_from_peer(req, now)

    # -- the B-leg -------------------------------------------------------------------------

    def start_b(self, targets: list[Flow], now: float, reuse: Leg | None = None) -> None:
        """Send the B-leg INVITE to the first target; the rest are for failover."""
        self.b_targets = targets
        if reuse is not None:
            # the retry of a challenged INVITE goes on the same B-leg (RFC 3261 §22.2)
            self.b = reuse
            self.auth_retry = True
        else:
            self.b = Leg(self.core, False, self.core.new_call_id(), targets[0])
        self._send_b_invite(now)

    def _send_b_invite(self, now: float) -> None:
        b = self.b
        assert b is not None
        flow = self.b_targets[0]
        b.flow = flow
        b.remote_tag = None
        b.local_seq += 1
        self.b_cseq = b.local_seq  # the INVITE's: PRACKs in the early dialog move local_seq
        req = self.core.build_b_invite(self, flow, b.local_seq)
        self.b_invite = b.send(req, self, now)
        self._arm(now, self.config.sip.target_timeout, self._target_timeout)

    def _target_timeout(self, now: float) -> None:
        """No provisional response from this target in time: try the next one."""
        self.timer = None
        tx = self.b_invite
        if self.state != EARLY or tx is None or tx.provisional_seen:
            return
        # not forgotten: CANCELled as soon as it may be (§9.1), and a 2xx that comes late
        # after all is ACKed and ended with BYE (§13.2.2.4) rather than left answered
        self.core.layer.cancel(tx, now)
        self._next_target(now, 408)

    def _no_answer(self, now: float) -> None:
        """Timer C: the target went quiet after a provisional response (§16.7 step 2)."""
        self.timer = None
        if self.state == EARLY:
            self.hangup(True, now, reason="timeout", status=408)

    def _next_target(self, now: float, status: int) -> None:
        self.b_ruri = None  # a redirect's Request-URI was for the target that failed
        if self.b_targets:
            self.core.target_failed(self.b_targets[0], now)
            self.b_targets = self.b_targets[1:]
        if self.b_targets and self.state == EARLY:
            self._send_b_invite(now)
            return
        final = 408 if status == 408 else 503
        self.answer_a(final, now)
        self.finish(now, "timeout" if final == 408 else "rejected", final)

    def on_timeout(self, tx: ClientTransaction, now: float) -> None:
        """Timer B on the B-leg INVITE, or the transport failed."""
        if tx is self.b_invite and self.state == EARLY:
            self._disarm()
            self._next_target(now, 408)

    def on_response(self, tx: ClientTransaction, resp: Response, now: float) -> None:
        """A response to the B-leg INVITE (any fork), or to our PRACK."""
        if tx.request.method != "INVITE":
            return  # PRACK: nothing to do
        status = resp.status
        b = self.b
        assert b is not None
        if tx is not self.b_invite:
            if 200 <= status < 300:  # from a target given up on (target_timeout)
                self.ack_and_bye(resp, now, tx.flow)
            return
        if status == 100:
            if self.state == EARLY:
                self._arm(now, self.config.sip.no_answer_timeout, self._no_answer)
            return
        if status < 200:
            self._provisional(resp, now)
        elif status < 300:
            if self.state == EARLY:
                self._answered(resp, now)
            elif self.state == ANSWERED and b.remote_tag == resp.to.tag:
                if self.b_ack is not None:  # our ACK was lost: the 2xx came again
                    self.core.layer.send(b.flow, self.b_ack, retransmission=True)
            else:
                # another fork answered too, or the caller went away (CANCEL crossed
                # this 2xx, RFC 5407): ACK it, then BYE it
                self.ack_and_bye(resp, now)
        elif self.state == EARLY:
            self._failed(resp, now)

    def _provisional(self, resp: Response, now: float) -> None:
        if self.state != EARLY:
            return
        b = self.b
        assert b is not None
        self._arm(now, self.config.sip.no_answer_timeout, self._no_answer)
        to_tag = resp.to.tag
        if to_tag and (b.remote_tag is None or b.remote_tag == to_tag):
            # the early dialog (the first fork's): its target serves UPDATE and PRACK
            b.remote_tag = to_tag
            contacts = resp.contacts
            if contacts:
                b.remote_target = str(contacts[0].uri)
            b.route_set = list(reversed(resp.get_all("record-route")))
            rseq_text = (resp.get("rseq") or "").strip()
            if rseq_text and "100rel" in resp.tokens("require"):
                if not (rseq_text.isascii() and rseq_text.isdigit()) or len(rseq_text) > 10:
                    return  # an RSeq that is not a number: the response is ignored
                rack = f"{rseq_text} {resp.cseq.number} INVITE"
                b.send(b.request("PRACK", [("RAck", rack)]), self, now)
                rseq = int(rseq_text)
                if rseq <= self.b_rseq:
                    # a retransmission (our PRACK was lost): PRACKed again, not relayed
                    # again (RFC 3262 §4: only a higher RSeq is a new response)
                    return
                self.b_rseq = rseq
        headers = self.relay_headers(resp, towards_a=True, response=True)
        body = self.relay_body(resp, headers, towards_a=True)
        self.answer_a(resp.status, now, self.phrase(resp, towards_a=True), headers, body)

    def _answered(self, resp: Response, now: float) -> None:
        b = self.b
        assert b is not None and self.b_invite is not None
        self._disarm()
        b.remote_tag = resp.to.tag
        contacts = resp.contacts
        if contacts:
            b.remote_target = str(contacts[0].uri)
        b.route_set = list(reversed(resp.get_all("record-route")))
        b.supports = _interned(resp.tokens("supported") | resp.tokens("require"))
        b.allow = _interned(frozenset(m.upper() for m in resp.tokens("allow")))
        if self.late_offer:
            self.b_offer = resp.body  # the offer the caller's ACK is to answer
        if not self.late_offer:
            self.b_ack = self.ack_bytes(b, self.b_cseq, b"")
            self.core.layer.send(b.flow, self.b_ack)
        self.state = ANSWERED
        self.answered_at = now
        self.status = resp.status
        self._start_session_timers(resp, now)
        headers = self.relay_headers(resp, towards_a=True, response=True)
        body = self.relay_body(resp, headers, towards_a=True)
        self.answer_a(resp.status, now, self.phrase(resp, towards_a=True), headers, body)
        self.core.call_answered(self, now)
        limit = self.config.sip.max_call_duration
        if limit > 0:
            self._arm(now, limit, self._max_duration)

    def _start_session_timers(self, resp: Response, now: float) -> None:
        """RFC 4028 on each leg, negotiated separately (§9 UAS on A, §7.2 UAC on B)."""
        b = self.b
        assert b is not None
        se = session_expires(resp)
        if se is not None:
            b.st = SessionTimer(self, False, se[0], us=se[1] != "uas")
            b.st.restart(now)
        a_st = self.core.a_session_timer(self.a_invite.request, self.config)
        if a_st is not None:
            interval, refresher = a_st
            self.a.st = SessionTimer(self, True, interval, us=refresher == "uas")
            self.a.st.restart(now)

    def _failed(self, resp: Response, now: float) -> None:
        status = resp.status
        self._disarm()
        if status == 503:
            self._next_target(now, status)
            return
        if 300 <= status < 400:
            found = self.core.redirect_target(self, resp)
            if found is not None and self.redirects < 3:
                self.redirects += 1
                flow, self.b_ruri = found
                self.b_targets = [flow, *self.b_targets[1:]]
                self._send_b_invite(now)
                return
            # a 3xx is never relayed (topology): it is a failure of this target
            self.answer_a(480, now)
            self.finish(now, "rejected", 480)
            return
        if status == 422 and self.b is not None:
            min_se = delta_seconds((resp.get("min-se") or "").split(";")[0])
            sent = self.b_session_interval()
            if min_se is not None and min_se > sent and self.redirects < 3:
                # RFC 4028 §7.4: again, asking for the largest Min-SE a 422 gave
                self.redirects += 1
                self.b_min_se = max(self.b_min_se, min_se)
                self._send_b_invite(now)
                return
            # a 422 we cannot satisfy (no usable Min-SE, none above what we asked for, or
            # too many): the caller's session is not at fault, and a 422 relayed without
            # our Min-SE would only fail it (RFC 4028 §9 and its erratum 1687)
            self.answer_a(500, now, "Session Interval Not Agreed")
            self.finish(now, "rejected", 500)
            return
        if status in (401, 407):
            self.core.await_auth_retry(self, now)
        headers = self.relay_headers(resp, towards_a=True, response=True)
        body = self.relay_body(resp, headers, towards_a=True)
        self.answer_a(status, now, self.phrase(resp, towards_a=True), headers, body)
        self.finish(now, "rejected", status)

    def b_session_interval(self) -> int:
        """The Session-Expires our B-leg INVITE asks for (0: none), RFC 4028 §7.4: our
        interval, raised to the largest Min-SE a 422 of the next hop gave."""
        se = self.config.sip.session_expires
        if se <= 0 and not self.b_min_se:
            return 0
        return max(se, self.b_min_se, self.config.sip.min_se)

    def b_min_se_value(self) -> int:
        """The Min-SE our B-leg INVITE carries: ours, or a 422's if larger."""
        return max(self.config.sip.min_se, self.b_min_se)

    def _max_duration(self, now: float) -> None:
        self.timer = None
        if self.state == ANSWERED:
            self.hangup(True, now, reason="max_duration", status=self.status, to_a=True)

    def ack_and_bye(self, resp: Response, now: float, flow: Flow | None = None) -> None:
        """A 2xx we will not use: ACK it and end that dialog with BYE (§13.2.2.4).

        ``flow``: where it came from, when not from the B-leg's current target.
        """
        b = self.b
        assert b is not None
        flow = flow or b.flow
        tag = resp.to.tag or ""
        if self.forks is None:
            self.forks = {}
        forks = self.forks
        if tag in forks:
            # that 2xx again (our ACK was lost): ACK it again, BYE it only once (§13.2.2.4)
            self.core.layer.send(flow, forks[tag], retransmission=True)
            return
        fork = Leg(self.core, False, b.call_id, flow)
        fork.local_tag = b.local_tag
        fork.local_uri = b.local_uri
        fork.remote_uri = b.remote_uri
        fork.remote_tag = resp.to.tag
        contacts = resp.contacts
        fork.remote_target = str(contacts[0].uri) if contacts else b.remote_target
        fork.route_set = list(reversed(resp.get_all("record-route")))
        fork.local_seq = resp.cseq.number
        forks[tag] = self.ack_bytes(fork, resp.cseq.number, b"")
        self.core.layer.send(fork.flow, forks[tag])
        fork.send(fork.request("BYE"), IGNORE, now)

    # -- in-dialog requests ----------------------------------------------------------------

    def on_in_dialog(self, leg: Leg, req: Request, stx: ServerTransaction, now: float) -> None:
        method = req.method
        cseq = req.cseq.number
        if leg.remote_seq and cseq < leg.remote_seq and method != "PRACK":
            stx.respond(make_response(req, 500, "CSeq Out of Order"), now)
            return
        if method != "PRACK" or cseq > leg.remote_seq:
            leg.remote_seq = cseq
        if method == "BYE":
            if not leg.is_a and self.state == EARLY:
                # §15: the callee MUST NOT send BYE in an early dialog; the call rings on
                stx.respond(make_response(req, 481), now)
                return
            stx.respond(make_response(req, 200), now)
            reason = "caller_bye" if leg.is_a else "callee_bye"
            self.hangup(leg.is_a, now, reason=reason, status=self.status or 487, by=req)
            return
        if method == "PRACK" and leg.is_a:
            self.on_prack(req, stx, now)
            return
        if method == "REFER":
            # never relayed: a transfer would send the call anywhere (issue 3: 403)
            stx.respond(make_response(req, 403), now)
            return
        b = self.b
        if self.state == ENDED or b is None or b.remote_tag is None:
            stx.respond(make_response(req, 481), now)
            return
        mf = req.max_forwards
        if mf is not None and mf <= 0:
            stx.respond(make_response(req, 483), now)  # loop detection (RFC 7332 §3)
            return
        if method == "INVITE" and leg.is_a and self.a_invite.last_status < 200:
            # §14.2: a second INVITE before our final response to the first: 500 with
            # Retry-After (never relayed: the B-leg's own INVITE is still in progress)
            hdrs = [("Retry-After", "1")]
            stx.respond(make_response(req, 500, headers=hdrs), now)
            return
        if method == "INVITE" and not leg.is_a and self.state == EARLY:
            stx.respond(make_response(req, 491), now)  # §14.2: our INVITE is in progress
            return
        if method == "INVITE" and not self.offer_pending:
            waiting = not leg.is_a and not self.a_invite.acked
            if waiting and self.held_reinvite is not None:
                stx.respond(make_response(req, 491), now)  # one is held already
                return
            # §17.2.1: the relayed answer may take longer than 200 ms (glare: 491 at once)
            stx.respond(make_response(req, 100), now)
            if waiting:
                # §14.1: no new INVITE on the A-leg while its first one awaits the ACK
                self.held_reinvite = (leg, req, stx)
                return
        self._relay(leg, req, stx, now)

    def _relay(self, leg: Leg, req: Request, stx: ServerTransaction, now: float) -> None:
        """Relay an in-dialog request to the other leg (an offer: unless one is pending)."""
        method = req.method
        if method in ("INVITE", "UPDATE"):
            if self.offer_pending:
                stx.respond(make_response(req, 491), now)  # glare (§14.1, RFC 3311 §5.2)
                return
            if method == "UPDATE" and not req.body and leg.st is not None:
                # a session refresh without an offer: answered on this leg (RFC 4028 §7.4)
                _refresh_target(leg, req)
                leg.st.restart(now)
                hdrs = [
                    ("Contact", self.core.contact(leg.flow)),
                    ("Require", "timer"),
                    ("Session-Expires", leg.st.header(request=False)),
                ]
                stx.respond(make_response(req, 200, headers=hdrs), now)
                return
            self.offer_pending = True
        other = self.other(leg)
        headers = self.relay_headers(req, towards_a=not leg.is_a)
        body = self.relay_body(req, headers, towards_a=not leg.is_a)
        mf = req.max_forwards
        out = other.request(method, headers, body, max_forwards=70 if mf is None else mf - 1)
        relay = Relay(self, leg, other, stx)
        self.relays.add(relay)
        other.send(out, relay, now)

    # -- session timers --------------------------------------------------------------------

    def refresh(self, leg: Leg, now: float) -> None:
        """We are the refresher on ``leg``: UPDATE without an offer (RFC 4028 §7.4)."""
        if self.state != ANSWERED or leg.remote_tag is None or leg.st is None:
            return
        if self.offer_pending:
            leg.st.restart(now)  # an offer/answer is under way: it refreshes too
            return
        if "UPDATE" in leg.allow:
            req = leg.request("UPDATE")
        else:
            # a re-INVITE offers the session unchanged: the SDP last sent on this leg,
            # its version the same (RFC 3264 §8); without one the peer's 2xx would hold
            # an offer that our ACK must answer and cannot (RFC 3261 §13.2.1)
            self.offer_pending = True
            ctype = [("Content-Type", "application/sdp")] if leg.sdp else []
            req = leg.request("INVITE", ctype, leg.sdp)
        leg.send(req, _Refresh(self, leg), now)

    def session_expired(self, leg: Leg, now: float) -> None:
        if self.state == ANSWERED:
            self.hangup(
                leg.is_a, now, reason="session_timeout", status=self.status, to_a=True, both=True
            )

    # -- the end ---------------------------------------------------------------------------

    def hangup(
        self,
        by_a: bool,
        now: float,
        *,
        reason: str,
        status: int,
        by: Request | None = None,
        to_a: bool = False,
        both: bool = False,
    ) -> None:
        """End the call: BYE the leg(s) that did not hang up (both with ``to_a``/``both``)."""
        if self.state == ENDED:
            return
        if self.state == EARLY:
            if self.b_invite is not None:
                self.core.layer.cancel(self.b_invite, now)
            self._answer_a(status if status >= 300 else 480, now, None, None, b"")
            self.finish(now, reason, status if status >= 300 else 480)
            return
        extra: list[tuple[str, str]] = []
        if by is not None:
            # RFC 3326, carried over like any end-to-end header: its text= is free text,
            # so it passes the next trunk's allowlist and privacy filter first
            extra = [h for h in self.relay_headers(by, towards_a=not by_a) if h[0] == "Reason"]
        elif reason == "session_timeout":
            extra = [("Reason", SESSION_EXPIRED)]
        # our 2xx to the caller may still be held for a PRACK (RFC 3262 §3): its INVITE
        # then gets a final response (§15.1.2: 487 to the caller's BYE), never a BYE on
        # its early dialog
        a_open = self.a_invite.last_status < 200
        bye_a = ((not by_a) or to_a or both) and not a_open
        bye_b = by_a or to_a or both or a_open
        if a_open:
            self._answer_a(487 if by is not None and by_a else 500, now, None, None, b"")
        if bye_a:
            self.a.send(self.a.request("BYE", extra), IGNORE, now)
        b = self.b
        if bye_b and b is not None and b.remote_tag:
            if self.late_offer and self.b_ack is None and self.b_offer:
                # the callee's 2xx carried the offer and the caller never answered it:
                # the 2xx is still ACKed (§13.2.2.4), with every stream rejected
                # (RFC 3264 §6), before the BYE
                self.b_ack = self.ack_bytes(b, self.b_cseq, rejecting_answer(self.b_offer))
                self.core.layer.send(b.flow, self.b_ack)
            b.send(b.request("BYE", extra), IGNORE, now)
        self.finish(now, reason, status)

    def finish(self, now: float, end_reason: str, status: int) -> None:
        if self.state == ENDED:
            return
        self.state = ENDED
        if self.answered_at is None:
            self.status = status
        try:
            self._release(now)
        finally:
            # counted and recorded whatever went wrong above: never a slot held for ever
            self.core.call_ended(self, end_reason, now)

    def _release(self, now: float) -> None:
        """What an ended call lets go: its timers, pending requests, transactions' refs."""
        self._disarm()
        for leg in (self.a, self.b):
            if leg is not None and leg.st is not None:
                leg.st.cancel()
                leg.st = None  # SessionTimer -> call: the last cycle, broken here
        if self.a_rel_timer is not None:
            self.a_rel_timer.cancel()
            self.a_rel_timer = None
        self.a_rel_wait = []
        self.pending_ack.clear()
        # requests still waiting for the other leg's answer: the dialog is gone, so they
        # are answered 487 now (RFC 3261 §15.1.2); their late answers are not relayed
        relays, self.relays = self.relays, set()
        for relay in relays:
            relay.inbound.respond(make_response(relay.inbound.request, 487), now)
        held, self.held_reinvite = self.held_reinvite, None
        if held is not None:
            held[2].respond(make_response(held[1], 481), now)  # the dialog is gone
        # transactions that outlive the call must not keep it (and its messages) alive:
        # only an unanswered B-leg INVITE keeps its owner, to ACK and BYE a 2xx that
        # crosses our CANCEL (RFC 5407 §3.1.2)
        self.a_invite.owner = None
        if self.b_invite is not None and self.answered_at is not None:
            self.b_invite.owner = None


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


def _interned(tokens: frozenset[str]) -> frozenset[str]:
    """One shared copy of each option-tag set: calls from one peer all carry the same
    ``Supported``/``Allow``, and a held call should not pay for its own (bounded)."""
    shared = _SETS.get(tokens)
    if shared is not None:
        return shared
    if len(_SETS) < 4096:
        _SETS[tokens] = tokens
    return tokens


def _refresh_target(leg: Leg, msg: SipMessage) -> None:
    """A target refresh (re-INVITE, UPDATE, or its 2xx): the peer's Contact, if any, is
    the leg's new remote target (RFC 3261 §12.2.1.2, §12.2.2)."""
    contacts = msg.contacts
    if contacts:
        leg.remote_target = str(contacts[0].uri)


def rejecting_answer(offer: bytes) -> bytes:
    """An SDP answer that rejects every stream of ``offer`` (RFC 3264 §6: port 0, one
    ``m=`` line per offered one, in order)."""
    lines = [b"v=0", b"o=- 0 0 IN IP4 0.0.0.0", b"s=-", b"c=IN IP4 0.0.0.0", b"t=0 0"]
    for raw in offer.split(b"\n"):
        line = raw.rstrip(b"\r")
        if line.startswith(b"m="):
            parts = line[2:].split()
            if len(parts) >= 4:
                lines.append(b"m=" + b" ".join([parts[0], b"0", parts[2], parts[3]]))
    return b"\r\n".join(lines) + b"\r\n"


def _without_tag(value: str) -> str:
    """A From/To value with its ``tag`` parameter removed (for reuse as a dialog URI)."""
    low = value.lower()
    i = low.find(";tag=")
    if i < 0:
        return value
    j = value.find(";", i + 1)
    return value[:i] + (value[j:] if j >= 0 else "")


__all__ = [
    "ANSWERED",
    "EARLY",
    "ENDED",
    "IGNORE",
    "Call",
    "Leg",
    "interval_too_small",
    "param",
    "request_min_se",
    "session_expires",
]
