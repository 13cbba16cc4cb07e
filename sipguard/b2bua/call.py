"""A call: two dialogs (A-leg towards the caller, B-leg towards the next hop), sans-IO.

The legs share nothing on the wire: each has its own Call-ID, tags, CSeq, Via, Contact,
route set and negotiated extensions. What crosses from one leg to the other is a call
event (an offer, a provisional answer, the answer, a hangup, a failure); its headers are
rebuilt for the other side by the call's :class:`~sipguard.b2bua.crossing.Crossing`,
never copied wholesale.

A call is the caller's INVITE server transaction's owner and the B-leg INVITE's; its
parts keep their own state and are handed the call when they act on it:

- :class:`~sipguard.b2bua.reliable.ReliableProvisionals`: RFC 3262 towards the caller;
- :class:`~sipguard.b2bua.outgoing.Outgoing`: the B-leg INVITE's targets, failover,
  redirects and retries until it is answered;
- :class:`~sipguard.b2bua.relay.Dialogs`: in-dialog requests relayed across, and the one
  offer/answer at a time;
- :class:`~sipguard.b2bua.session_timer.SessionTimer` on each leg (RFC 4028).

It talks to the element only through its :class:`~sipguard.b2bua.host.CallHost`, and
reports :class:`~sipguard.b2bua.host.Answered` and :class:`~sipguard.b2bua.host.Ended`.
"""

from __future__ import annotations

from collections.abc import Callable

from sipguard.b2bua.admission import merge_key
from sipguard.b2bua.crossing import Crossing
from sipguard.b2bua.host import ALLOW, Answered, CallHost, Ended
from sipguard.b2bua.identity import CallIdentity
from sipguard.b2bua.leg import IGNORE, Leg, interned, is_sdp, without_tag
from sipguard.b2bua.media import ANSWER, OFFER, CallMedia, rejecting_answer, sdp_kind
from sipguard.b2bua.outgoing import Outgoing
from sipguard.b2bua.relay import Dialogs
from sipguard.b2bua.reliable import ReliableProvisionals
from sipguard.b2bua.session_timer import (
    SESSION_EXPIRED,
    SessionTimer,
    a_session_timer,
    session_expires,
)
from sipguard.cdr.record import CdrRecord
from sipguard.config.model import Config, Trunk
from sipguard.sip.message import Request, Response
from sipguard.sip.timers import Timer
from sipguard.sip.transaction import ClientTransaction, Flow, ServerTransaction, make_response

# Call states
EARLY = 0  # B-leg INVITE pending
ANSWERED = 1  # 2xx relayed to the caller
ENDED = 2


class Call:
    """Both legs of one call, its privacy decision, and what its CDR needs."""

    __slots__ = (
        "a",
        "a_cseq",
        "a_invite",
        "answered_at",
        "b",
        "cdr_start",
        "config",
        "crossing",
        "dialogs",
        "emergency",
        "host",
        "id",
        "late_offer",
        "media",
        "merge_key",
        "out",
        "rel",
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
        host: CallHost,
        cdr_id: str,
        config: Config,
        trunk_in: Trunk,
        trunk_out: Trunk,
        ident: CallIdentity,
        invite: Request,
        stx: ServerTransaction,
        now: float,
    ) -> None:
        self.host = host
        self.id = cdr_id
        self.config = config  # the policy this call started with (kept across reloads)
        self.trunk_in = trunk_in
        self.trunk_out = trunk_out
        self.crossing = Crossing(trunk_in, trunk_out, ident)
        self.emergency = ident.decision.emergency
        self.state = EARLY
        self.status = 0
        self.started_at = now
        self.wall_start = host.wall(now)
        self.answered_at: float | None = None
        # the start record, written when the call is answered; the end record closes it
        self.cdr_start: CdrRecord | None = None
        self.a_invite = stx
        self.a_cseq = invite.cseq.number  # the transaction forgets its INVITE once ACKed
        self.merge_key = merge_key(invite, stx.flow)
        a = self.a = Leg(host, True, invite.call_id, stx.flow)
        a.remote_tag = invite.from_.tag
        a.remote_seq = invite.cseq.number
        a.remote_uri = without_tag(invite.get("from") or "")
        a.local_uri = without_tag(invite.get("to") or "")
        contacts = invite.contacts
        a.remote_target = str(contacts[0].uri) if contacts else str(invite.from_.uri)
        a.route_set = list(invite.get_all("record-route"))
        a.supports = interned(invite.tokens("supported") | invite.tokens("require"))
        a.allow = interned(frozenset(m.upper() for m in invite.tokens("allow")))
        self.b: Leg | None = None
        self.late_offer = not invite.body
        self.out = Outgoing()
        self.rel = ReliableProvisionals()
        self.dialogs = Dialogs()
        self.media: CallMedia | None = None  # anchored through a media relay
        self.timer: Timer | None = None  # target, no-answer or maximum-duration timer
        stx.owner = self
        stx.peer = trunk_in  # who may CANCEL it, also once it is answered (core.py)
        stx.local_tag = a.local_tag

    # -- state -----------------------------------------------------------------------------

    @property
    def early(self) -> bool:
        return self.state == EARLY

    @property
    def answered(self) -> bool:
        return self.state == ANSWERED

    @property
    def a_open(self) -> bool:
        """The caller's INVITE has no final response yet (a 2xx held for a PRACK, or the
        callee's answer still at the relay)."""
        return self.a_invite.last_status < 200

    @property
    def ended(self) -> bool:
        return self.state == ENDED

    @property
    def ident(self) -> CallIdentity:
        return self.crossing.ident

    def trunk_of(self, leg: Leg) -> Trunk:
        return self.trunk_in if leg.is_a else self.trunk_out

    def other(self, leg: Leg) -> Leg:
        if leg is self.a:
            assert self.b is not None
            return self.b
        return self.a

    def arm(self, now: float, delay: float, fn: Callable[[float], None]) -> None:
        if self.timer is not None:
            self.timer.cancel()
        self.timer = self.host.layer.timers.after(now, delay, fn)

    def disarm(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None

    # -- the caller's side -----------------------------------------------------------------

    def on_cancel(self, tx: ServerTransaction, cancel: Request, now: float) -> None:
        """CANCEL from the caller before the answer: CANCEL the B-leg, 487 to the caller."""
        if self.state != EARLY:
            return
        if self.out.tx is not None:
            self.host.layer.cancel(self.out.tx, now)
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
        self.rel.answer(self, status, now, reason, headers, body)

    def relay_to_a(self, resp: Response, now: float) -> None:
        """The next hop's response to our INVITE, as it may cross to the caller."""
        crossing = self.crossing
        headers = crossing.headers(resp, towards_a=True, response=True)
        body = crossing.body(resp, headers, towards_a=True)
        status = resp.status
        phrase = crossing.phrase(resp, towards_a=True)
        media = self.media
        if media is not None and status >= 300:
            body = crossing.no_body(headers)
        if media is None or status >= 300:
            self.answer_a(status, now, phrase, headers, body)
            return
        # anchored: its SDP (the answer, or a late offer) through the relay first
        # a late offer's SDP comes in the 18x/2xx; once answered in a PRACK, it is no offer
        offer = self.late_offer and self.out.prack != ""
        kind = sdp_kind(resp, OFFER if offer else ANSWER)
        media.step(
            self,
            kind,
            False,
            body,
            now,
            lambda sdp, t: self.answer_a(
                status, t, phrase, headers if sdp else crossing.no_headers(headers), sdp
            ),
            resp.get("content-type"),
        )

    def respond_a(
        self,
        status: int,
        now: float,
        reason: str | None,
        headers: list[tuple[str, str]] | None,
        body: bytes,
    ) -> None:
        """Respond to the caller's INVITE now, unreliably."""
        if status >= 200:
            self.rel.stop()
        # a Response, not bytes: the transaction keeps its To (tag) for the 200 to a
        # CANCEL, which must carry the dialog's tag (§9.2)
        self.a_invite.respond(self.a_response(status, reason, headers or [], body), now)

    def a_response(
        self, status: int, reason: str | None, headers: list[tuple[str, str]], body: bytes
    ) -> Response:
        hdrs = list(headers)
        req = self.a_invite.request
        if status < 300 and status != 100:
            hdrs[:0] = [("Contact", self.host.contact(self.a.flow)), ("Allow", ALLOW)]
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

    def on_ack(self, leg: Leg, req: Request, now: float) -> None:
        """An ACK for a 2xx on ``leg``: ours to absorb, or the answer to pass on."""
        if not (leg.is_a and req.cseq.number == self.a_cseq):
            self.dialogs.on_ack(leg, req, now)
            return
        self.a_invite.ack_received(now)
        b = self.b
        out = self.out
        if (
            self.late_offer
            and b is not None
            and out.ack is None
            and out.tx is not None
            and not out.acking
        ):
            # handled once: a retransmission of the ACK sends no second answer
            out.acking = True
            body = self.crossing.body(req, [], towards_a=False)
            if self.media is None:
                self._ack_b(body, now)
            else:  # the caller's answer, through the relay first
                kind = sdp_kind(req, ANSWER)
                ctype = req.get("content-type")
                self.media.step(self, kind, True, body, now, self._ack_b, ctype)
        held, self.dialogs.held = self.dialogs.held, None
        if held is not None:
            self.dialogs.relay(self, *held, now)

    def _ack_b(self, body: bytes, now: float) -> None:
        """ACK the callee's late-offer 2xx with the caller's answer (once)."""
        out = self.out
        if out.ack is None and self.b is not None:
            out.ack = self.b.ack(out.cseq, body)
            self.host.layer.send(self.b.flow, out.ack)

    # -- the B-leg -------------------------------------------------------------------------

    def start_b(self, targets: list[Flow], now: float, reuse: Leg | None = None) -> None:
        """Send the B-leg INVITE to the first target; the rest are for failover."""
        self.out.start(self, targets, now, reuse)

    def on_timeout(self, tx: ClientTransaction, now: float) -> None:
        """Timer B on the B-leg INVITE, or the transport failed."""
        if tx is self.out.tx and self.state == EARLY:
            self.disarm()
            self.out.next_target(self, now, 408)

    def on_response(self, tx: ClientTransaction, resp: Response, now: float) -> None:
        """A response to the B-leg INVITE (any fork), or to our PRACK."""
        if tx.request.method != "INVITE":
            return  # PRACK: nothing to do
        status = resp.status
        b = self.b
        assert b is not None
        out = self.out
        if tx is not out.tx:
            if 200 <= status < 300:  # from a target given up on (target_timeout)
                out.ack_and_bye(self, resp, now, tx.flow)
            return
        if status < 200:
            if self.state == EARLY:
                # Timer C (§16.6 step 11): no call stays early for ever holding its slot
                self.arm(now, self.config.sip.no_answer_timeout, self._no_answer)
                if status != 100 and out.provisional(self, resp, now):
                    self.relay_to_a(resp, now)
        elif status < 300:
            if self.state == EARLY:
                self._answered(resp, now)
            elif self.state == ANSWERED and b.remote_tag == resp.to.tag:
                if out.ack is not None:  # our ACK was lost: the 2xx came again
                    self.host.layer.send(b.flow, out.ack, retransmission=True)
            else:
                # another fork answered too, or the caller went away (CANCEL crossed
                # this 2xx, RFC 5407): ACK it, then BYE it
                out.ack_and_bye(self, resp, now, None)
        elif self.state == EARLY:
            self.disarm()
            out.failed(self, resp, now)

    def _no_answer(self, now: float) -> None:
        """Timer C: the target went quiet after a provisional response (§16.7 step 2)."""
        self.timer = None
        if self.state == EARLY:
            self.hangup(True, now, reason="timeout", status=408)

    def _answered(self, resp: Response, now: float) -> None:
        b = self.b
        out = self.out
        assert b is not None and out.tx is not None
        self.disarm()
        b.learn(resp)
        b.supports = interned(resp.tokens("supported") | resp.tokens("require"))
        b.allow = interned(frozenset(m.upper() for m in resp.tokens("allow")))
        if self.late_offer:
            out.offer = resp.body  # the offer the caller's ACK is to answer
        else:
            out.ack = b.ack(out.cseq, b"")
            self.host.layer.send(b.flow, out.ack)
        self.state = ANSWERED
        self.answered_at = now
        self.status = resp.status
        self._start_session_timers(resp, now)
        self.relay_to_a(resp, now)
        if self.state == ENDED:
            return  # ended on the way to the caller (its offer refused): never answered
        self.host.outcomes.append(Answered(self, now))
        if self.media is not None:
            self.media.watch(self, now)
        limit = self.config.sip.max_call_duration
        if limit > 0:
            self.arm(now, limit, self._max_duration)

    def _start_session_timers(self, resp: Response, now: float) -> None:
        """RFC 4028 on each leg, negotiated separately (§9 UAS on A, §7.2 UAC on B)."""
        b = self.b
        assert b is not None
        se = session_expires(resp)
        if se is not None:
            b.st = SessionTimer(self, False, se[0], us=se[1] != "uas")
            b.st.restart(now)
        a_st = a_session_timer(self.a_invite.request, self.config)
        if a_st is not None:
            interval, refresher = a_st
            self.a.st = SessionTimer(self, True, interval, us=refresher == "uas")
            self.a.st.restart(now)

    def _max_duration(self, now: float) -> None:
        self.timer = None
        if self.state == ANSWERED:
            self.hangup(True, now, reason="max_duration", status=self.status, to_a=True)

    def stray_2xx(self, resp: Response, flow: Flow, now: float) -> None:
        """A 2xx to our INVITE after its transaction ended: ours again (our ACK was lost),
        repeat the ACK; another fork's (Timer M), that dialog exists but is not ours to
        use: ACK it and end it with BYE (§13.2.2.4). The To tag alone tells which: its
        source is the B-leg's peer already (the core checked, ``Peers.from_peer``), which
        may retransmit from a new connection's port or another address of its trunk."""
        b = self.b
        assert b is not None
        if b.remote_tag == resp.to.tag:
            if self.state == ANSWERED and self.out.ack is not None:
                self.host.layer.send(b.flow, self.out.ack, retransmission=True)
        elif self.state != ENDED:
            self.out.ack_and_bye(self, resp, now, flow)

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
        elif method == "PRACK" and leg.is_a:
            if self.rel.on_prack(req, stx, now):
                self.out.answer_prack(self, req, now)
        elif method == "REFER":
            # never relayed: a transfer would send the call anywhere (issue 3: 403)
            stx.respond(make_response(req, 403), now)
        else:
            self.dialogs.on_request(self, leg, req, stx, now)

    # -- session timers --------------------------------------------------------------------

    def refresh(self, leg: Leg, now: float) -> None:
        """We are the refresher on ``leg`` (RFC 4028 §7.4)."""
        self.dialogs.refresh(self, leg, now)

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
            if self.out.tx is not None:
                self.host.layer.cancel(self.out.tx, now)
            self.respond_a(status if status >= 300 else 480, now, None, None, b"")
            self.finish(now, reason, status if status >= 300 else 480)
            return
        extra: list[tuple[str, str]] = []
        if by is not None:
            # RFC 3326, carried over like any end-to-end header: its text= is free text,
            # so it passes the next trunk's allowlist and privacy filter first
            crossed = self.crossing.headers(by, towards_a=not by_a)
            extra = [h for h in crossed if h[0] == "Reason"]
        elif reason == "session_timeout":
            extra = [("Reason", SESSION_EXPIRED)]
        # our 2xx to the caller may still be held for a PRACK (RFC 3262 §3): its INVITE
        # then gets a final response (§15.1.2: 487 to the caller's BYE), never a BYE on
        # its early dialog
        a_open = self.a_open
        bye_a = ((not by_a) or to_a or both) and not a_open
        bye_b = by_a or to_a or both or a_open
        if a_open:
            final = 487 if by is not None and by_a else status if 400 <= status < 700 else 500
            self.respond_a(final, now, None, None, b"")
        if bye_a:
            self.a.send(self.a.request("BYE", extra), IGNORE, now)
        b = self.b
        out = self.out
        if bye_b and b is not None and b.remote_tag:
            if self.late_offer and out.ack is None and out.offer:
                # the callee's 2xx carried the offer and the caller never answered it:
                # the 2xx is still ACKed (§13.2.2.4), with every stream rejected
                # (RFC 3264 §6), before the BYE
                out.ack = b.ack(out.cseq, rejecting_answer(out.offer))
                self.host.layer.send(b.flow, out.ack)
            b.send(b.request("BYE", extra), IGNORE, now)
        self.finish(now, reason, status)

    def abort(self, now: float) -> None:
        """Our own bug hit this call: end it, never left half-done holding its slot."""
        if self.state != ENDED:
            reason = "shutdown" if self.state == ANSWERED else "rejected"
            self.hangup(True, now, reason=reason, status=self.status or 500, to_a=True)

    def finish(self, now: float, end_reason: str, status: int) -> None:
        if self.state == ENDED:
            return
        self.state = ENDED
        if self.answered_at is not None and not 200 <= self.a_invite.last_status < 300:
            self.answered_at = None  # the callee's 2xx never reached the caller: unanswered
        if self.answered_at is None:
            self.status = status
        try:
            self._release(now)
        finally:
            # counted and recorded whatever went wrong above: never a slot held for ever
            self.host.outcomes.append(Ended(self, now, end_reason))

    def _release(self, now: float) -> None:
        """What an ended call lets go: its timers, pending requests, transactions' refs."""
        self.disarm()
        for leg in (self.a, self.b):
            if leg is not None and leg.st is not None:
                leg.st.cancel()
                leg.st = None  # SessionTimer -> call: the last cycle, broken here
        self.rel.clear()
        self.dialogs.release(now)
        if self.media is not None:
            self.media.release(now)
        # transactions that outlive the call must not keep it (and its messages) alive:
        # only an unanswered B-leg INVITE keeps its owner, to ACK and BYE a 2xx that
        # crosses our CANCEL (RFC 5407 §3.1.2)
        self.a_invite.owner = None
        if self.out.tx is not None and self.answered_at is not None:
            self.out.tx.owner = None
