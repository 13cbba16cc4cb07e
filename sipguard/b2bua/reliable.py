"""Reliable provisional responses towards the caller (RFC 3262).

When the caller supports ``100rel``, every provisional response we relay to it is sent
reliably, with our own ``RSeq`` numbering, and retransmitted at T1, 2·T1 … until its
PRACK comes. One is outstanding at a time: the next provisional, and a 2xx after a 1xx
that carried SDP (§3), wait for the PRACK. With no PRACK in 64·T1 the caller's INVITE is
failed, or, answered meanwhile, the call ended.

The state is this object's; the call it serves is passed in (no reference back: a call
and its parts form no cycle that outlives it).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from sipguard.sip.message import Request
from sipguard.sip.timers import Timer
from sipguard.sip.transaction import ServerTransaction, make_response

if TYPE_CHECKING:
    from sipguard.b2bua.call import Call

Headers = list[tuple[str, str]] | None


class ReliableProvisionals:
    """RFC 3262 towards the caller: ``unacked`` is the 1xx waiting for its PRACK."""

    __slots__ = ("held_final", "rseq", "timer", "unacked", "waiting")

    def __init__(self) -> None:
        self.rseq = 0
        self.unacked: tuple[int, bytes, bool] | None = None  # (RSeq, bytes, has SDP)
        self.timer: Timer | None = None
        self.waiting: list[Callable[[float], None]] = []  # held until the PRACK comes
        self.held_final = False  # a 2xx waits for the PRACK of a 1xx with SDP

    def answer(
        self,
        call: Call,
        status: int,
        now: float,
        reason: str | None,
        headers: Headers,
        body: bytes,
    ) -> None:
        """Respond to the caller's INVITE, reliably where that is asked for."""
        rel = self.unacked
        if rel is not None and 200 <= status < 300 and rel[2] and not self.held_final:
            # §3: no 2xx before the PRACK of a 1xx with SDP (a failure may go)
            self.held_final = True
            self.waiting.append(lambda t: call.respond_a(status, t, reason, headers, body))
            return
        if 100 < status < 200 and "100rel" in call.a.supports:
            if rel is not None:  # one unacknowledged reliable 1xx at a time
                self.waiting.append(lambda t: self.answer(call, status, t, reason, headers, body))
                return
            self.rseq += 1
            hdrs = [("Require", "100rel"), ("RSeq", str(self.rseq)), *(headers or [])]
            resp = call.a_response(status, reason, hdrs, body)
            self.unacked = (self.rseq, resp.to_bytes(), bool(body))
            call.a_invite.respond(resp, now)
            t1 = call.host.layer.t.t1
            self._retransmit(call, now, t1, now + 64 * t1)
            return
        call.respond_a(status, now, reason, headers, body)

    def _retransmit(self, call: Call, now: float, interval: float, give_up: float) -> None:
        """Retransmit the reliable 1xx at T1, 2T1 … until its PRACK (§3)."""
        rel = self.unacked
        if rel is None or call.ended:
            return
        layer = call.host.layer
        if now >= give_up:
            self.unacked = None
            if self.held_final and call.answered:
                # §3: no PRACK for 64*T1: the caller's INVITE is rejected (5xx), the
                # answered B-leg gets a BYE
                call.hangup(False, now, reason="timeout", status=500)
                return
            self.release(now)
            return
        if interval > layer.t.t1:  # not the first call: this is a retransmission
            layer.send(call.a.flow, rel[1], retransmission=True)

        def again(t: float) -> None:
            self._retransmit(call, t, interval * 2, give_up)

        self.timer = layer.timers.schedule(min(now + interval, give_up), again)

    def release(self, now: float) -> None:
        """The PRACK came (or never will): what waited for it goes out now."""
        self.stop()
        waiting, self.waiting = self.waiting, []
        self.held_final = False
        for fn in waiting:
            fn(now)

    def on_prack(self, req: Request, stx: ServerTransaction, now: float) -> bool:
        """The caller's PRACK: True if it acknowledges the reliable 1xx outstanding."""
        rack = (req.get("rack") or "").split()
        rel = self.unacked
        if rel is None or len(rack) != 3 or rack[0] != str(rel[0]):
            stx.respond(make_response(req, 481), now)
            return False
        stx.respond(make_response(req, 200), now)
        self.unacked = None
        self.release(now)
        return True

    def stop(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None

    def clear(self) -> None:
        """The call is over: nothing waits any more (the closures held the call)."""
        self.stop()
        self.waiting = []
