"""In-dialog requests across a call, and the one offer/answer at a time (RFC 3264).

A re-INVITE, UPDATE, INFO or MESSAGE from one leg's peer is relayed to the other leg as a
request of ours (:class:`Relay`), its response back the same way; a session refresh of
ours (RFC 4028) is a :class:`Refresh`. :class:`Dialogs` keeps what these share: the offer
now out (``offer``: glare is answered ``491``, §14.1 and RFC 3311 §5.2), the relays whose
answers are awaited, the ACK a relayed 2xx awaits, and a re-INVITE of the callee held until
the caller's ACK (§14.1).

Every offer crosses in two steps, each its own: the body is made ready for the other leg
(:meth:`Dialogs.relay`), then sent (:meth:`Relay.forward`). A step that must wait for an
answer from elsewhere (a media relay's SDP) waits between the two, with ``offer`` showing
that an offer is under way.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from sipguard.b2bua.leg import Leg, refresh_target
from sipguard.b2bua.media import ANSWER, OFFER, sdp_kind, too_many_streams
from sipguard.sip.message import Request, Response
from sipguard.sip.transaction import ClientTransaction, ServerTransaction, make_response

if TYPE_CHECKING:
    from sipguard.b2bua.call import Call


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

    def send(self, req: Request, headers: list[tuple[str, str]], body: bytes, now: float) -> None:
        """Send ``req`` on to the other leg, its headers and body crossed."""
        if not body and req.body:
            self.call.crossing.no_body(headers)  # its body did not cross
        mf = req.max_forwards
        out = self.to_leg.request(
            req.method, headers, body, max_forwards=70 if mf is None else mf - 1
        )
        self.forward(out, now)

    def forward(self, out: Request, now: float) -> None:
        self.call.dialogs.relays.add(self)
        self.to_leg.send(out, self, now)

    def on_response(self, tx: ClientTransaction, resp: Response, now: float) -> None:
        call = self.call
        status = resp.status
        if status == 100:
            return
        method = tx.request.method
        state = call.dialogs
        if status >= 200 and (call.media is None or call.ended):
            # (anchored, it stays until its response is relayed: a call that ends while
            # the answer is at the media relay answers the request 487)
            state.relays.discard(self)
        layer = call.host.layer
        if call.ended:
            # the call ended while this request was out (a BYE crossed it): its request
            # was answered 487 then (§15.1.2); a 2xx is ACKed so that it stops, never relayed
            if method == "INVITE" and 200 <= status < 300:
                if self.ack is None:
                    self.ack = self.to_leg.ack(resp.cseq.number, b"")
                layer.send(self.to_leg.flow, self.ack)
            return
        if method in ("INVITE", "UPDATE") and 200 <= status < 300 and self.ack is None:
            # a target refresh that succeeded (§12.2.1.2, §12.2.2, RFC 6141 §3.2): each
            # leg's remote target from its own Contact (our ACK goes there); route sets stay
            refresh_target(self.to_leg, resp)
            refresh_target(self.from_leg, self.inbound.request)
        if method == "INVITE" and 200 <= status < 300:
            if self.ack is not None:  # a retransmitted 2xx: our ACK was lost
                layer.send(self.to_leg.flow, self.ack, retransmission=True)
                return
            if self.cseq:
                # a retransmitted 2xx to our offerless re-INVITE: its offer was relayed
                # (through the media relay once), and our 2xx is retransmitted by its
                # own transaction until the other side's ACK comes
                return
            if tx.request.body:
                # the offer was in our re-INVITE: the answer is here, ACK at once
                self.ack = self.to_leg.ack(resp.cseq.number, b"")
                layer.send(self.to_leg.flow, self.ack)
            self.cseq = resp.cseq.number
            # else the answer will come in the other side's ACK (late offer re-INVITE);
            # either way that ACK must reach the server transaction, or our 2xx is
            # retransmitted until Timer L (§13.3.1.4)
            state.awaiting_ack[self.from_leg.is_a] = self
        if status >= 200 and method in ("INVITE", "UPDATE"):
            state.offer = None
            if status < 300:
                for leg in (self.from_leg, self.to_leg):
                    if leg.st is not None:
                        leg.st.restart(now)
        crossing = call.crossing
        towards_a = self.from_leg.is_a
        headers = crossing.headers(resp, towards_a=towards_a, response=True)
        body = crossing.body(resp, headers, towards_a=towards_a)
        media = call.media
        if media is not None and status >= 300:
            body = crossing.no_body(headers)
        if media is None or status >= 300:
            self.respond(resp, headers, body, now)
            return
        # anchored: the answer (or, to an offerless re-INVITE, the offer) via the relay
        kind = ""
        if method in ("INVITE", "UPDATE"):
            kind = sdp_kind(resp, ANSWER if tx.request.body else OFFER)
        from_a = self.to_leg.is_a
        media.step(
            call,
            kind,
            from_a,
            body,
            now,
            lambda sdp, t: self.respond(resp, headers, sdp, t),
            resp.get("content-type"),
        )

    def respond(
        self, resp: Response, headers: list[tuple[str, str]], body: bytes, now: float
    ) -> None:
        """The response of the other leg relayed back, its headers and body crossed."""
        call = self.call
        status = resp.status
        method = resp.cseq.method
        if status >= 200:
            call.dialogs.relays.discard(self)
        crossing = call.crossing
        towards_a = self.from_leg.is_a
        if not body and resp.body:
            crossing.no_body(headers)  # its body did not cross
        if method in ("INVITE", "UPDATE") and status < 300:
            headers.insert(0, ("Contact", call.host.contact(self.from_leg.flow)))
            st = self.from_leg.st
            if st is not None and status >= 200:
                headers.append(("Require", "timer"))
                headers.append(("Session-Expires", st.header(request=False)))
        out = make_response(
            self.inbound.request,
            status,
            crossing.phrase(resp, towards_a=towards_a),
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
        call.dialogs.relays.discard(self)
        if call.ended:
            return
        self.inbound.respond(make_response(self.inbound.request, 408), now)
        if tx.request.method in ("INVITE", "UPDATE"):
            call.dialogs.offer = None
        call.hangup(not self.from_leg.is_a, now, reason="timeout", status=408)

    def ack_from_peer(self, req: Request, now: float) -> None:
        """The other side's ACK for the relayed 2xx: stops our 2xx; an answer goes on."""
        self.inbound.ack_received(now)
        if self.ack is not None:
            return  # the offer was in the re-INVITE: its 2xx was ACKed on arrival
        call = self.call
        body = call.crossing.body(req, [], towards_a=self.to_leg.is_a)
        if call.media is None:
            self._ack(body, now)
            return
        kind = sdp_kind(req, ANSWER)
        ctype = req.get("content-type")
        call.media.step(call, kind, self.from_leg.is_a, body, now, self._ack, ctype)

    def _ack(self, body: bytes, now: float) -> None:
        if self.ack is None:
            self.ack = self.to_leg.ack(self.cseq, body)
            self.call.host.layer.send(self.to_leg.flow, self.ack)


class Refresh:
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
            refresh_target(self.leg, resp)  # §12.2.1.2: before the ACK, which goes there
        if tx.request.method == "INVITE" and status < 300:
            call.host.layer.send(self.leg.flow, self.leg.ack(resp.cseq.number, b""))
        call.dialogs.offer = None
        if status < 300 or status == 491:
            if self.leg.st is not None:
                self.leg.st.restart(now)
        elif status in (408, 481) or status >= 500:
            call.hangup(self.leg.is_a, now, reason="session_timeout", status=408, to_a=True)
        elif self.leg.st is not None:
            self.leg.st.restart(now)

    def on_timeout(self, tx: ClientTransaction, now: float) -> None:
        self.call.dialogs.offer = None
        self.call.hangup(self.leg.is_a, now, reason="session_timeout", status=408, to_a=True)


class Dialogs:
    """What the in-dialog traffic of one call shares (see the module's docstring)."""

    __slots__ = ("awaiting_ack", "held", "offer", "relays")

    def __init__(self) -> None:
        self.offer: Relay | Refresh | None = None  # the offer/answer under way
        self.relays: set[Relay] = set()  # in-dialog requests out on the other leg
        self.awaiting_ack: dict[bool, Relay] = {}  # by "the ACK arrives on the A-leg"
        # the callee's re-INVITE that came before the caller's ACK (§14.1): relayed then
        self.held: tuple[Leg, Request, ServerTransaction] | None = None

    def on_request(
        self, call: Call, leg: Leg, req: Request, stx: ServerTransaction, now: float
    ) -> None:
        """A request within the dialog of ``leg`` (not BYE, PRACK or REFER: the call's)."""
        b = call.b
        if call.ended or b is None or b.remote_tag is None:
            stx.respond(make_response(req, 481), now)
            return
        mf = req.max_forwards
        if mf is not None and mf <= 0:
            stx.respond(make_response(req, 483), now)  # loop detection (RFC 7332 §3)
            return
        method = req.method
        if method == "INVITE" and leg.is_a and call.a_invite.last_status < 200:
            # §14.2: a second INVITE before our final response to the first: 500 with
            # Retry-After (never relayed: the B-leg's own INVITE is still in progress)
            stx.respond(make_response(req, 500, headers=[("Retry-After", "1")]), now)
            return
        if method == "INVITE" and not leg.is_a and call.early:
            stx.respond(make_response(req, 491), now)  # §14.2: our INVITE is in progress
            return
        if method == "INVITE" and self.offer is None:
            waiting = not leg.is_a and not call.a_invite.acked
            if waiting and self.held is not None:
                stx.respond(make_response(req, 491), now)  # one is held already
                return
            # §17.2.1: the relayed answer may take longer than 200 ms (glare: 491 at once)
            stx.respond(make_response(req, 100), now)
            if waiting:
                # §14.1: no new INVITE on the A-leg while its first one awaits the ACK
                self.held = (leg, req, stx)
                return
        self.relay(call, leg, req, stx, now)

    def relay(self, call: Call, leg: Leg, req: Request, stx: ServerTransaction, now: float) -> None:
        """Relay an in-dialog request to the other leg (an offer: unless one is pending)."""
        method = req.method
        other = call.other(leg)
        relay = None
        if method in ("INVITE", "UPDATE"):
            if self.offer is not None:
                stx.respond(make_response(req, 491), now)  # glare (§14.1, RFC 3311 §5.2)
                return
            if method == "UPDATE" and not req.body and leg.st is not None:
                # a session refresh without an offer: answered on this leg (RFC 4028 §7.4)
                refresh_target(leg, req)
                leg.st.restart(now)
                hdrs = [
                    ("Contact", call.host.contact(leg.flow)),
                    ("Require", "timer"),
                    ("Session-Expires", leg.st.header(request=False)),
                ]
                stx.respond(make_response(req, 200, headers=hdrs), now)
                return
            media = call.media
            if media is not None and media.active and too_many_streams(req.body):
                stx.respond(make_response(req, 488), now)  # see media.MAX_STREAMS
                return
            relay = self.offer = Relay(call, leg, other, stx)
        crossing = call.crossing
        headers = crossing.headers(req, towards_a=not leg.is_a)
        body = crossing.body(req, headers, towards_a=not leg.is_a)
        relay = relay or Relay(call, leg, other, stx)
        media = call.media
        if media is None or relay is not self.offer:
            relay.send(req, headers, body, now)
            return
        # anchored: the offer goes to the media relay first; ``offer`` shows it under way
        kind = sdp_kind(req, OFFER)
        media.step(
            call,
            kind,
            leg.is_a,
            body,
            now,
            lambda sdp, t: relay.send(req, headers, sdp, t),
            req.get("content-type"),
        )

    def on_ack(self, leg: Leg, req: Request, now: float) -> None:
        """The ACK of a relayed re-INVITE's 2xx (on ``leg``), if one awaits it."""
        relay = self.awaiting_ack.pop(leg.is_a, None)
        if relay is not None:
            relay.ack_from_peer(req, now)

    def refresh(self, call: Call, leg: Leg, now: float) -> None:
        """We are the refresher on ``leg``: UPDATE without an offer (RFC 4028 §7.4)."""
        if not call.answered or leg.remote_tag is None or leg.st is None:
            return
        if self.offer is not None:
            leg.st.restart(now)  # an offer/answer is under way: it refreshes too
            return
        refresh = Refresh(call, leg)
        if "UPDATE" in leg.allow:
            req = leg.request("UPDATE")
        else:
            # a re-INVITE offers the session unchanged: the SDP last sent on this leg,
            # its version the same (RFC 3264 §8); without one the peer's 2xx would hold
            # an offer that our ACK must answer and cannot (RFC 3261 §13.2.1)
            self.offer = refresh
            ctype = [("Content-Type", "application/sdp")] if leg.sdp else []
            req = leg.request("INVITE", ctype, leg.sdp)
        leg.send(req, refresh, now)

    def release(self, now: float) -> None:
        """The call is over: what still waits for the other leg is answered now."""
        self.awaiting_ack.clear()
        offer, self.offer = self.offer, None
        # the dialog is gone, so requests still waiting for the other leg's answer are
        # answered 487 (RFC 3261 §15.1.2); their late answers are not relayed
        relays, self.relays = self.relays, set()
        if isinstance(offer, Relay) and offer not in relays and offer.inbound.last_status < 200:
            relays.add(offer)  # its offer was still at the media relay, never sent
        for relay in relays:
            relay.inbound.respond(make_response(relay.inbound.request, 487), now)
        held, self.held = self.held, None
        if held is not None:
            held[2].respond(make_response(held[1], 487), now)  # pending too: §15.1.2
