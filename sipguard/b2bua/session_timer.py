"""Session timers (RFC 4028), negotiated on each leg separately.

Where we are the refresher on a leg we send UPDATE (or re-INVITE) at half the interval;
where the peer is and no refresh comes, the call ends (``session_timeout``). The A-leg's
interval is what the caller asked for, never below our Min-SE (§9); the B-leg's is what the
next hop's 2xx says (§7.2).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from sipguard.config.model import MAX_SESSION_INTERVAL, Config
from sipguard.sip.message import Request, SipMessage
from sipguard.sip.timers import Timer

if TYPE_CHECKING:
    from sipguard.b2bua.call import Call
    from sipguard.b2bua.leg import Leg

SESSION_EXPIRED = 'SIP;cause=408;text="Session timer expired"'

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
        self.timer = call.host.layer.timers.schedule(when, fn)

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


def a_session_timer(req: Request, config: Config) -> tuple[int, str] | None:
    """The A-leg session timer (RFC 4028 §9): (interval, refresher) or None.

    The caller's ``Session-Expires`` is honoured (never lowered below our Min-SE), and
    its ``refresher`` too; without one, the caller refreshes if it supports ``timer``,
    else we do. Without ``Session-Expires`` but with ``timer`` supported, we ask for
    our configured interval with the caller as refresher.
    """
    se = session_expires(req)
    timer_ok = "timer" in (req.tokens("supported") | req.tokens("require"))
    if se is None:
        if not timer_ok or config.sip.session_expires <= 0:
            return None
        # never below the Min-SE the caller asked for (§9)
        return max(config.sip.session_expires, request_min_se(req)), "uac"
    interval, refresher = se
    # too small: a caller that supports timers got 422 already (interval_too_small);
    # one that does not, or an emergency call, has it raised, never below the Min-SE
    # it sent either (§9 and its erratum 1687)
    interval = max(interval, config.sip.min_se, request_min_se(req))
    if refresher not in ("uac", "uas"):
        refresher = "uac" if timer_ok else "uas"
    return interval, refresher
