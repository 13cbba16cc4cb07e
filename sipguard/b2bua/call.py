"""A call: two dialogs (A-leg towards the caller, B-leg towards the next hop), sans-IO.

The legs share nothing on the wire: each has its own Call-ID, tags, CSeq, Via, Contact
and route set. What crosses from one leg to the other is a call event (an offer, a
provisional answer, the answer, a hangup, a failure); its headers are rebuilt for the
other side through the privacy filters, never copied wholesale.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING

from sipguard.b2bua.identity import CallIdentity
from sipguard.config.model import Config, Trunk
from sipguard.policy.headers import copy_headers
from sipguard.sip.errors import SipError
from sipguard.sip.message import REASONS, Request, Response, SipMessage, canonical_name
from sipguard.sip.timers import Timer
from sipguard.sip.transaction import (
    ClientTransaction,
    Flow,
    ServerTransaction,
    make_response,
    new_branch,
    new_tag,
)

if TYPE_CHECKING:
    from sipguard.b2bua.core import B2BUA

# Call states
EARLY = 0  # B-leg INVITE pending
ANSWERED = 1  # 2xx relayed to the caller, waiting for or past the ACK
ENDED = 2

SUPPORTED = "replaces, timer"
ALLOW = "INVITE, ACK, CANCEL, BYE, OPTIONS, INFO, UPDATE, PRACK, MESSAGE"
# Headers that only mean something on the leg they came from: never relayed in
# responses (RFC 3262 RSeq; authentication is relayed only where it belongs).
_RESPONSE_HOP = frozenset({"rseq", "rack", "record-route", "contact", "server", "unsupported"})
_AUTH_CHALLENGE = ("www-authenticate", "proxy-authenticate")
_AUTH_CREDENTIALS = ("authorization", "proxy-authorization")


class Leg:
    """One dialog of a call: the UAS side towards the caller, or the UAC side onwards."""

    __slots__ = (
        "call",
        "call_id",
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
    )

    def __init__(self, call: Call, is_a: bool, call_id: str, flow: Flow) -> None:
        self.call = call
        self.is_a = is_a
        self.call_id = call_id
        self.flow = flow
        self.local_tag = new_tag()
        self.remote_tag: str | None = None
        self.local_uri = ""  # our side's URI as written in From (B) or To (A), without tag
        self.remote_uri = ""
        self.remote_target = ""
        self.route_set: list[str] = []
        self.local_seq = 0
        self.remote_seq = 0

    def request(
        self,
        method: str,
        headers: Iterable[tuple[str, str]] = (),
        body: bytes = b"",
        cseq: int | None = None,
        branch: str | None = None,
    ) -> Request:
        """A request within this dialog (§12.2.1.1), from us."""
        if cseq is None:
            self.local_seq += 1
            cseq = self.local_seq
        core = self.call.core
        hdrs = [
            ("Via", core.via(self.flow, branch or new_branch())),
            ("Max-Forwards", "70"),
            ("From", f"{self.local_uri};tag={self.local_tag}"),
            (
                "To",
                f"{self.remote_uri};tag={self.remote_tag}" if self.remote_tag else self.remote_uri,
            ),
            ("Call-ID", self.call_id),
            ("CSeq", f"{cseq} {method}"),
        ]
        hdrs.extend(("Route", r) for r in self.route_set)
        if method not in ("ACK", "BYE", "CANCEL"):
            hdrs.append(("Contact", core.contact(self.flow)))
        hdrs.extend(headers)
        hdrs.append(("Content-Length", str(len(body))))
        return Request(method, self.remote_target, hdrs, body)

    def send(self, req: Request, owner: object, now: float) -> ClientTransaction:
        return self.call.core.layer.send_request(req, self.flow, owner, now)  # type: ignore[arg-type]


class Relay:
    """An in-dialog request relayed from one leg to the other, and its response back."""

    __slots__ = ("call", "from_leg", "inbound", "out_req")

    def __init__(self, call: Call, from_leg: Leg, inbound: ServerTransaction) -> None:
        self.call = call
        self.from_leg = from_leg
        self.inbound = inbound
        self.out_req: Request | None = None

    def on_response(self, tx: ClientTransaction, resp: Response, now: float) -> None:
        call = self.call
        if resp.status == 100:
            return
        headers = call.relay_headers(resp, towards_a=self.from_leg.is_a, response=True)
        out = make_response(
            self.inbound.request,
            resp.status,
            resp.reason,
            to_tag=self.from_leg.local_tag,
            headers=[("Contact", call.core.contact(self.from_leg.flow)), *headers],
            body=resp.body,
        )
        self.inbound.respond(out, now)
        if tx.request.method == "INVITE" and 200 <= resp.status < 300:
            # ACK the re-INVITE's 2xx on the other leg at once when the offer was in it
            other = call.other(self.from_leg)
            if other.remote_tag:
                call.reinvite_ack_pending[id(self.inbound)] = (other, resp.cseq.number)
                if tx.request.body:
                    call.send_ack(other, resp.cseq.number, b"", now)
        if resp.status >= 200 and tx.request.method in ("INVITE", "UPDATE"):
            call.offer_pending = False
        if resp.status == 481 and tx.request.method != "BYE":
            call.hangup(self.from_leg is call.a, now, reason="callee_bye", status=481)

    def on_timeout(self, tx: ClientTransaction, now: float) -> None:
        out = make_response(self.inbound.request, 408, to_tag=self.from_leg.local_tag)
        self.inbound.respond(out, now)
        if tx.request.method in ("INVITE", "UPDATE"):
            self.call.offer_pending = False
        if tx.request.method in ("INVITE", "BYE"):
            self.call.hangup(True, now, reason="timeout", status=408)


class Call:
    """Both legs of one call, its privacy decision, and what its CDR needs."""

    __slots__ = (
        "a",
        "a_invite",
        "answered_at",
        "auth_retry",
        "b",
        "b_ack",
        "b_invite",
        "b_invite_req",
        "b_targets",
        "config",
        "core",
        "emergency",
        "ended_at",
        "id",
        "ident",
        "late_offer",
        "offer_pending",
        "reinvite_ack_pending",
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
        self.ended_at: float | None = None
        self.a_invite = stx
        self.a = Leg(self, True, invite.call_id, stx.flow)
        self.a.remote_tag = invite.from_.tag
        self.a.remote_seq = invite.cseq.number
        self.a.remote_uri = invite.get("from") or ""
        self.a.remote_uri = _without_tag(self.a.remote_uri)
        self.a.local_uri = _without_tag(invite.get("to") or "")
        contacts = invite.contacts
        self.a.remote_target = str(contacts[0].uri) if contacts else str(invite.from_.uri)
        self.a.route_set = list(invite.get_all("record-route"))
        self.b: Leg | None = None
        self.b_invite: ClientTransaction | None = None
        self.b_invite_req: Request | None = None
        self.b_targets: list[Flow] = []
        self.b_ack: bytes | None = None
        self.late_offer = not invite.body
        self.offer_pending = False
        self.auth_retry = False
        self.reinvite_ack_pending: dict[int, tuple[Leg, int]] = {}
        self.timer: Timer | None = None
        stx.owner = self

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
        pairs = [
            (lname, value)
            for lname, _, value in msg.header_items()
            if lname not in _RESPONSE_HOP
            and (lname not in _AUTH_CHALLENGE or (response and towards_a))
            and (lname not in _AUTH_CREDENTIALS or (not response and not towards_a))
        ]
        emergency_route = self.emergency and not towards_a
        out = copy_headers(
            pairs,
            towards_trusted=trunk.trusted,
            restricted=restricted,
            emergency_to_emergency_trunk=emergency_route,
            allowlist=trunk.header_allowlist | _auth_allow(response, towards_a),
        )
        return [(canonical_name(n), v) for n, v in out]

    def send_ack(self, leg: Leg, cseq: int, body: bytes, now: float) -> None:
        headers: list[tuple[str, str]] = []
        if body:
            headers.append(("Content-Type", "application/sdp"))
        ack = leg.request("ACK", headers, body, cseq=cseq)
        data = ack.to_bytes()
        if (
            leg is self.b
            and self.b_invite_req is not None
            and cseq == self.b_invite_req.cseq.number
        ):
            self.b_ack = data
        self.core.layer.send(leg.flow, data)

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
        """No ACK for the 2xx we sent the caller within 64*T1 (§13.3.1.4): end the call."""
        if self.state != ENDED:
            self.hangup(True, now, reason="timeout", status=408, to_a=True)

    def answer_a(
        self,
        status: int,
        now: float,
        reason: str | None = None,
        headers: list[tuple[str, str]] | None = None,
        body: bytes = b"",
    ) -> None:
        hdrs = list(headers or [])
        if status < 300 and status != 100:
            hdrs.insert(0, ("Contact", self.core.contact(self.a.flow)))
        resp = make_response(
            self.a_invite.request, status, reason, to_tag=self.a.local_tag, headers=hdrs, body=body
        )
        self.a_invite.respond(resp, now)

    def on_ack(self, req: Request, now: float) -> None:
        """ACK from the caller for the 2xx: stop retransmitting; late offer → B-leg ACK."""
        if req.cseq.number == self.a.remote_seq and self.a_invite is not None:
            self.a_invite.ack_received(now)
            if self.late_offer and self.b is not None and self.b_ack is None:
                assert self.b_invite_req is not None
                self.send_ack(self.b, self.b_invite_req.cseq.number, req.body, now)
            return
        # ACK of a relayed re-INVITE's 2xx
        for key, (other, cseq) in list(self.reinvite_ack_pending.items()):
            del self.reinvite_ack_pending[key]
            if req.body:
                self.send_ack(other, cseq, req.body, now)
            elif not self._acked_early(other, cseq):
                self.send_ack(other, cseq, b"", now)
            break

    def _acked_early(self, leg: Leg, cseq: int) -> bool:
        return True

    # -- the B-leg -------------------------------------------------------------------------

    def start_b(self, invite: Request, targets: list[Flow], now: float) -> None:
        """Send the B-leg INVITE to the first target; the rest are for failover."""
        self.b_targets = targets
        first = targets[0]
        self.b = Leg(self, False, self.core.new_call_id(), first)
        self.b_invite_req = invite
        self._send_b_invite(now)

    def _send_b_invite(self, now: float) -> None:
        assert self.b is not None and self.b_invite_req is not None
        flow = self.b_targets[0]
        self.b.flow = flow
        self.b.local_seq += 1
        req = self.core.build_b_invite(self, flow, self.b.local_seq)
        self.b_invite_req = req
        self.b_invite = self.b.send(req, self, now)
        self._arm(now + self.config.sip.target_timeout, self._target_timeout)

    def _arm(self, when: float, fn: object) -> None:
        if self.timer is not None:
            self.timer.cancel()
        self.timer = self.core.layer.timers.schedule(when, fn)  # type: ignore[arg-type]

    def _target_timeout(self, now: float) -> None:
        """No provisional response from this target in time: try the next one (§4 issue)."""
        self.timer = None
        tx = self.b_invite
        if self.state != EARLY or tx is None or tx.provisional_seen:
            return
        tx.owner = None
        tx.fail(now)
        self._next_target(now, 408)

    def _next_target(self, now: float, status: int) -> None:
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
        if tx is not self.b_invite or self.state != EARLY:
            return
        self._next_target(now, 408)

    def on_response(self, tx: ClientTransaction, resp: Response, now: float) -> None:
        """A response to the B-leg INVITE (any fork)."""
        status = resp.status
        b = self.b
        assert b is not None
        if tx.request.method == "PRACK":
            return
        if tx is not self.b_invite:
            if 200 <= status < 300:
                self._ack_and_bye_fork(resp, tx, now)
            return
        if status == 100:
            return
        to_tag = resp.to.tag
        if status < 200:
            if self.state != EARLY:
                return
            if self.timer is not None:
                self.timer.cancel()
                self.timer = None
            if to_tag and b.remote_tag is None:
                b.remote_tag = to_tag
            if resp.get("rseq") is not None and "100rel" in resp.tokens("require"):
                self._prack(resp, tx, now)
            headers = self.relay_headers(resp, towards_a=True, response=True)
            self.answer_a(status, now, resp.reason, headers, resp.body)
            return
        if status < 300:
            if self.state == ENDED:
                # the caller went away (CANCEL crossed this 2xx): ACK it, then BYE
                self._ack_and_bye_fork(resp, tx, now)
                return
            if self.state == ANSWERED:
                if b.remote_tag == to_tag:
                    if self.b_ack is not None:
                        self.core.layer.send(b.flow, self.b_ack, retransmission=True)
                else:
                    self._ack_and_bye_fork(resp, tx, now)
                return
            self._answered(resp, now)
            return
        if self.state != EARLY:
            return
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        if status == 503 or 300 <= status < 400:
            self._next_target(now, status)
            return
        if status in (401, 407):
            self.auth_retry = True
            self.core.await_auth_retry(self, now)
        headers = self.relay_headers(resp, towards_a=True, response=True)
        self.answer_a(status, now, resp.reason, headers, resp.body)
        self.finish(now, "rejected", status)

    def _answered(self, resp: Response, now: float) -> None:
        b = self.b
        assert b is not None and self.b_invite_req is not None
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        b.remote_tag = resp.to.tag
        contacts = resp.contacts
        b.remote_target = str(contacts[0].uri) if contacts else b.remote_target
        b.route_set = list(reversed(resp.get_all("record-route")))
        b.remote_seq = 0
        if not self.late_offer:
            self.send_ack(b, self.b_invite_req.cseq.number, b"", now)
        self.state = ANSWERED
        self.answered_at = now
        self.status = resp.status
        headers = self.relay_headers(resp, towards_a=True, response=True)
        self.answer_a(resp.status, now, resp.reason, headers, resp.body)
        self.core.call_answered(self, now)
        limit = self.config.sip.max_call_duration
        if limit > 0:
            self._arm(now + limit, self._max_duration)

    def _max_duration(self, now: float) -> None:
        self.timer = None
        if self.state == ANSWERED:
            self.hangup(True, now, reason="max_duration", status=200, to_a=True)

    def _prack(self, resp: Response, tx: ClientTransaction, now: float) -> None:
        """Acknowledge a reliable provisional response on the B-leg ourselves (RFC 3262)."""
        b = self.b
        assert b is not None
        saved = b.remote_target, b.remote_tag
        contacts = resp.contacts
        if contacts:
            b.remote_target = str(contacts[0].uri)
        b.remote_tag = resp.to.tag
        rack = f"{(resp.get('rseq') or '').strip()} {resp.cseq.number} INVITE"
        prack = b.request("PRACK", [("RAck", rack)])
        b.remote_target, b.remote_tag = (
            saved
            if self.state == EARLY and saved[1]
            else (
                b.remote_target,
                b.remote_tag,
            )
        )
        b.send(prack, self, now)

    def _ack_and_bye_fork(self, resp: Response, tx: ClientTransaction, now: float) -> None:
        """A 2xx we will not use (another fork won, or the caller cancelled): ACK, BYE."""
        b = self.b
        assert b is not None
        fork = Leg(self, False, b.call_id, b.flow)
        fork.local_tag = b.local_tag
        fork.local_uri = b.local_uri
        fork.remote_uri = b.remote_uri
        fork.remote_tag = resp.to.tag
        contacts = resp.contacts
        fork.remote_target = str(contacts[0].uri) if contacts else b.remote_target
        fork.route_set = list(reversed(resp.get_all("record-route")))
        fork.local_seq = resp.cseq.number
        ack = fork.request("ACK", cseq=resp.cseq.number)
        self.core.layer.send(fork.flow, ack.to_bytes())
        fork.send(fork.request("BYE"), _IGNORE, now)

    # -- in-dialog requests ----------------------------------------------------------------

    def on_in_dialog(self, leg: Leg, req: Request, stx: ServerTransaction, now: float) -> None:
        method = req.method
        if req.cseq.number <= leg.remote_seq and method != "ACK" and leg.remote_seq:
            stx.respond(make_response(req, 500, "CSeq Out of Order"), now)
            return
        leg.remote_seq = req.cseq.number
        if method == "BYE":
            stx.respond(make_response(req, 200), now)
            reason = "caller_bye" if leg.is_a else "callee_bye"
            self.hangup(leg.is_a, now, reason=reason, status=self.status or 200, by=req)
            return
        if method == "PRACK" and leg.is_a:
            stx.respond(make_response(req, 200), now)
            return
        if self.state == ENDED or self.b is None or self.b.remote_tag is None:
            stx.respond(make_response(req, 481), now)
            return
        if method in ("INVITE", "UPDATE"):
            if self.offer_pending:
                stx.respond(make_response(req, 491), now)  # glare (§14.1)
                return
            self.offer_pending = True
        other = self.other(leg)
        headers = self.relay_headers(req, towards_a=not leg.is_a)
        if req.body:
            ctype = req.get("content-type")
            if ctype and not any(n == "Content-Type" for n, _ in headers):
                headers.append(("Content-Type", ctype))
        out = other.request(method, headers, req.body)
        relay = Relay(self, leg, stx)
        relay.out_req = out
        other.send(out, relay, now)

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
    ) -> None:
        """End an established call: BYE the leg(s) that did not hang up."""
        if self.state == ENDED:
            return
        extra: list[tuple[str, str]] = []
        if by is not None:
            extra = [("Reason", r) for r in by.get_lines("reason")]
        if self.state == EARLY:
            if self.b_invite is not None:
                self.core.layer.cancel(self.b_invite, now)
            self.answer_a(status if status >= 300 else 500, now)
        else:
            if not by_a or to_a:
                self.a.send(self.a.request("BYE", extra), _IGNORE, now)
            if (by_a or to_a) and self.b is not None and self.b.remote_tag:
                self.b.send(self.b.request("BYE", extra), _IGNORE, now)
        self.finish(now, reason, status)

    def finish(self, now: float, end_reason: str, status: int) -> None:
        if self.state == ENDED:
            return
        self.state = ENDED
        self.ended_at = now
        if self.status == 0 or self.answered_at is None:
            self.status = status
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        self.core.call_ended(self, end_reason, now)


class _Ignore:
    def on_response(self, tx: ClientTransaction, resp: Response, now: float) -> None:
        return None

    def on_timeout(self, tx: ClientTransaction, now: float) -> None:
        return None


_IGNORE = _Ignore()


def _auth_allow(response: bool, towards_a: bool) -> frozenset[str]:
    if response and towards_a:
        return frozenset(_AUTH_CHALLENGE)
    if not response and not towards_a:
        return frozenset(_AUTH_CREDENTIALS)
    return frozenset()


def _without_tag(value: str) -> str:
    """A From/To value with its ``tag`` parameter removed (for reuse as a dialog URI)."""
    low = value.lower()
    i = low.find(";tag=")
    if i < 0:
        return value
    j = value.find(";", i + 1)
    return value[:i] + (value[j:] if j >= 0 else "")


def reason_phrase(status: int) -> str:
    return REASONS.get(status, "Unknown")


__all__ = ["ANSWERED", "EARLY", "ENDED", "Call", "Leg", "SipError"]
