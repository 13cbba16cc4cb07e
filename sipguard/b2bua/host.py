"""What a call needs from the element it runs in, and what it reports back.

A :class:`~sipguard.b2bua.call.Call` is typed against :class:`CallHost`, a handful of
members, never against the core: it builds its messages with the host's ``via`` and
``contact``, sends them through the host's transaction ``layer``, and reports what
happened to it as :class:`Outcome` values appended to ``outcomes``, which the core drains
after every input (as aioquic's connection reports events). The call never calls back
into the core.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

from sipguard.sip.transaction import Flow, TransactionLayer

if TYPE_CHECKING:
    from sipguard.b2bua.call import Call

# the methods our legs allow (RFC 3261 §20.5), one constant for every message that says so
ALLOW = "INVITE, ACK, CANCEL, BYE, OPTIONS, INFO, UPDATE, PRACK, MESSAGE"
SUPPORTED = "100rel, replaces, timer"


class Outcome:
    """Something that happened to a call that the element must act on."""

    __slots__ = ("call", "now")

    def __init__(self, call: Call, now: float) -> None:
        self.call = call
        self.now = now


class Answered(Outcome):
    """The call was answered: its start record is due."""

    __slots__ = ()


class Ended(Outcome):
    """The call is over (answered or not): its slot is free, its end record due."""

    __slots__ = ("reason",)

    def __init__(self, call: Call, now: float, reason: str) -> None:
        super().__init__(call, now)
        self.reason = reason


class TargetFailed(Outcome):
    """A next hop gave no answer, a 503 or a transport error: probe it until it answers."""

    __slots__ = ("flow",)

    def __init__(self, call: Call, now: float, flow: Flow) -> None:
        super().__init__(call, now)
        self.flow = flow


class Challenged(Outcome):
    """The next hop challenged the INVITE (401/407): keep the B-leg for the retry."""

    __slots__ = ()


class ForkIgnored(Outcome):
    """A 2xx of yet another fork past the call's bound (``Outgoing.ack_and_bye``):
    ignored, counted."""

    __slots__ = ()


class Unanchored(Outcome):
    """The call asked for media anchoring and goes on without it (the relay failed):
    counted, and logged where the caller is withheld."""

    __slots__ = ()


class CallHost(Protocol):
    """The element a call runs in."""

    layer: TransactionLayer
    outcomes: list[Outcome]

    def via(self, flow: Flow) -> str:
        """A Via of ours for a request sent on ``flow``, with a new branch."""
        ...

    def contact(self, flow: Flow) -> str:
        """Our Contact for a dialog on ``flow``."""
        ...

    def new_call_id(self) -> str: ...

    def watch_egress(self, call: Call) -> None:
        """The call's B-leg exists and its first message is next: the egress check
        learns its Call-ID (:mod:`sipguard.b2bua.egress`)."""
        ...

    def media_unanchored(self, call: Call) -> None:
        """The call goes on without the media anchoring it had: the egress check stops
        searching its bodies (:meth:`~sipguard.b2bua.egress.Egress.media_unanchored`)."""
        ...

    def wall(self, now: float) -> float:
        """The wall-clock time (for records) at monotonic ``now``."""
        ...
