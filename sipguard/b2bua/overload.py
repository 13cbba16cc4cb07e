"""Load shedding: part of the new calls refused while the receive queue grows (SPEC §8).

Over UDP an element that falls behind collapses. Requests wait in its socket's receive
queue, their senders retransmit them (RFC 3261 §17.1.1.2: from T1, 500 ms), the
retransmissions lengthen the queue, the queue overflows, and soon most calls fail, the
ones in progress too. An element that refuses part of the new calls early stays within
its capacity and completes the others. The receive queue is what tells: it stays near
empty while the element keeps up, whatever the rate, and grows as soon as it does not.

:class:`Shedder` is the decision, without I/O. The driver reads the queue a few times
a second: the memory the UDP sockets' receive buffers hold, as the kernel counts it (a
datagram with its overhead). It calls :meth:`Shedder.update` with each reading. The
core asks :meth:`Shedder.admit` for each new call that the capacity limits let through,
and refuses it with ``503`` (no ``Retry-After``, SPEC §8) when the answer is no.

The fraction admitted follows AIMD, as TCP's congestion window does. While the queue
grows above the threshold (at two readings in a row, or past twice the threshold at
once), the fraction is cut by a quarter at each reading.
Once the queue is back under a quarter of the threshold, it grows by a twentieth per
reading, up to every call. In between it holds. The calls admitted are spread evenly (a
credit counter), not drawn at random. Emergency calls never ask: they have their own
reserved capacity (SPEC §1.4). In-dialog requests and responses are never shed: they
finish calls that are already up.

The untrusted trunks' calls are shed first (SPEC §8: a flood from untrusted sources is
shed before a trusted trunk's calls). The one fraction ``admitted`` (a) is of all the new
calls offered; at each reading it is shared out by the mix offered since the last one
(T trusted, U untrusted): the trusted trunks' calls get all of ``a(T+U)`` they need, the
untrusted ones what is left, ``(a(T+U) - T) / U`` (never under :data:`MIN_ADMITTED`). A
flood of INVITEs from a customer trunk so costs the PBX's calls nothing, and where only
one kind is offered it gets ``a`` itself (a fixed split, ``2a - 1`` for the untrusted
whatever the mix, cut their calls twice as fast as the overload asked, and goodput with
it). With nothing offered since the last reading the mix is taken as even.

Over TCP and TLS the peer's kernel stops sending when ours stops reading. There are no
retransmissions and no collapse, and their queues are not read.
"""

from __future__ import annotations

from typing import Final

DECREASE: Final = 0.75  # the admitted fraction, times this, per reading above the threshold
MIN_ADMITTED: Final = 0.01  # never less: some new calls still get through a long overload
INCREASE: Final = 0.05  # added per reading once the queue is under a quarter of it


class Shedder:
    """The fraction of new calls admitted, from the receive queue's readings."""

    __slots__ = (
        "_asked",
        "_asked_trusted",
        "_credit",
        "_credit_trusted",
        "_mix",
        "_mix_trusted",
        "admitted",
        "granted",
        "queued",
        "shed",
        "shedding",
    )

    def __init__(self) -> None:
        self.admitted = 1.0  # fraction of new calls admitted
        self.queued = 0  # bytes waiting at the last reading
        self.shedding = False  # admitted < 1: some new calls are refused
        self.shed = 0  # new calls refused, since start
        self._asked = 0  # new calls of untrusted trunks asked about since the last reading
        self._asked_trusted = 0
        self._mix = 1  # untrusted and trusted new calls offered before the last reading
        self._mix_trusted = 1
        self._credit = 0.0  # an untrusted trunk's calls
        self._credit_trusted = 0.0
        # admitted already by a look before the call was read (b2bua/shed.py): the next
        # ask is answered yes without drawing on the credit again
        self.granted = False

    def update(self, queued: int, threshold: int) -> None:
        """One reading: ``queued`` bytes wait; shed above ``threshold`` (0: never)."""
        if threshold <= 0:
            self.admitted = 1.0
        elif queued > threshold:
            # cut while the queue grows above the threshold: at a second reading in a
            # row, or at once from twice the threshold. A queue that shrinks is the last
            # cut at work (cutting on would swing the fraction far below what the
            # element can carry), or a pause of the host being caught up on: one reading
            # just above the threshold is not yet an overload
            growing = queued >= self.queued
            if (growing and self.queued > threshold) or (
                queued > 2 * threshold and (growing or not self.shedding)
            ):
                self.admitted = max(MIN_ADMITTED, self.admitted * DECREASE)
        elif queued * 4 <= threshold and self.admitted < 1.0:
            self.admitted = min(1.0, self.admitted + INCREASE)
        self.queued = queued
        self.shedding = self.admitted < 1.0
        # the mix offered since the last reading shares out the fraction until the next
        # (taken as even where nothing was offered)
        untrusted, trusted = self._asked, self._asked_trusted
        self._mix, self._mix_trusted = (untrusted, trusted) if untrusted + trusted else (1, 1)
        self._asked = self._asked_trusted = 0
        if not self.shedding:
            self._credit = self._credit_trusted = 0.0

    @property
    def trusted(self) -> float:
        """The fraction of a trusted trunk's new calls admitted: all of ``admitted`` of
        every new call offered that they need."""
        if not self.shedding:
            return 1.0
        admit = self.admitted * (self._mix + self._mix_trusted)
        return max(MIN_ADMITTED, min(1.0, admit / max(1, self._mix_trusted)))

    @property
    def untrusted(self) -> float:
        """The fraction of an untrusted trunk's new calls admitted: what is left of
        ``admitted`` of every new call offered once the trusted trunks' have theirs. A kind
        not offered lately counts as one call: the first of a flood that starts now gets
        what is left after the others, not all it asks for."""
        if not self.shedding:
            return 1.0
        trusted = self._mix_trusted
        admit = self.admitted * (self._mix + trusted)
        return max(MIN_ADMITTED, min(1.0, (admit - trusted) / max(1, self._mix)))

    def admit(self, trusted: bool = False) -> bool:
        """May one more new call go on? Spreads the admitted fraction evenly over calls."""
        if self.granted:  # asked already, by the look before the call was read
            self.granted = False
            return True
        if trusted:
            self._asked_trusted += 1
        else:
            self._asked += 1
        if not self.shedding:
            return True
        if trusted:
            self._credit_trusted += self.trusted
            if self._credit_trusted >= 1.0:
                self._credit_trusted -= 1.0
                return True
        else:
            self._credit += self.untrusted
            if self._credit >= 1.0:
                self._credit -= 1.0
                return True
        self.shed += 1
        return False
