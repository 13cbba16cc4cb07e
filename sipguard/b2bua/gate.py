"""The door: every message is accounted to its source before a byte of it is read.

Parsing and answering a message costs tens of microseconds; dropping one unread costs a
few. So the first thing the core does with a datagram or a framed message is ask
:meth:`Gate.enter` whether its source may still send (SPEC §8, "per-source accounting of
all traffic"):

* **A trusted trunk's source** is never metered: its calls are what the element is for.
* **An untrusted trunk's source, or a trunk's target outside the sources,** may send
  ``limits.stray_mps`` stray messages a second: messages that belong to no call and make
  none (an ``OPTIONS``, a request of no dialog, a stray response or ACK, a malformed
  message, a request refused for good; never a call refused by a limit with ``503``,
  which it may retry). The core reports each one (:meth:`Gate.stray`) once it knows.
  Past the budget, every message of that source is dropped unread for the rest of the
  second and counted (``source_messages``), but those with the Call-ID of a call in
  progress whose leg's peer this source may be (:meth:`Gate.opened`, :func:`bound_to`:
  the address the leg is bound to, or any source of the leg's trunk, the rule of
  :meth:`Peers.from_peer`): its own calls go on, while another trunk's Call-IDs (a
  caller's may be a counter) fare no better than any other, so that what is read, and
  answered, tells no one which calls exist.
  Its calls' own messages are never counted, so a busy trunk with thousands of calls a
  second is never metered; a flood of anything else costs what the budget lets through
  and a few microseconds per message after it. While the core sheds load, the budget
  shrinks with the fraction of new calls admitted (never under :data:`MIN_STRAYS`): an
  overload is paid for first by the sources that send junk, never by a trusted trunk's
  calls.
* **A source that matches no trunk** (a stranger) has ``limits.unknown_source_budget``
  requests per window (:class:`Strangers`), each refused ``403`` statelessly by the core;
  past that, silence until it has been quiet for a window (``unknown_source_silenced``).
  All strangers together get at most :data:`STRANGER_ANSWERS` answers a second, so that
  a flood from forged, ever new addresses buys no more than one from a single address.

Every table here holds at most one small entry per source and is bounded: the per-second
counts are emptied every second, and a table that fills is started afresh; the live
Call-IDs are one entry per leg of a call in progress (as many as the calls admitted).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Final

from sipguard.b2bua.peers import Peers
from sipguard.config.model import Limits, Trunk
from sipguard.sip.transaction import Flow

if TYPE_CHECKING:
    from sipguard.b2bua.leg import Leg

OPEN: Final = 0  # read it
STRANGER: Final = 1  # read it, to refuse it (403, statelessly)
METERED: Final = 2  # dropped unread: the source spent its stray messages this second
SILENCED: Final = 3  # dropped unread: a stranger past its budget, or too many strangers

STRANGER_WINDOW: Final = 10.0  # seconds: limits.unknown_source_budget counts per window
MAX_STRANGERS: Final = 65536  # strangers kept at once; a table that fills starts afresh
STRANGER_ANSWERS: Final = 200  # answers a second to all strangers together
MAX_METERED: Final = 65536  # sources with strays in one second; a full table starts afresh
MIN_STRAYS: Final = 10  # an untrusted source's stray budget while shedding never falls below


class Strangers:
    """Sources that match no trunk (SPEC §8): each gets ``budget`` answers per window;
    past that, silence, until it has been quiet for a whole window. O(1) per source, at
    most :data:`MAX_STRANGERS` of them."""

    __slots__ = ("seen",)

    def __init__(self) -> None:
        self.seen: dict[str, tuple[float, int]] = {}  # host -> (window start, requests)

    def answer(self, host: str, now: float, budget: int) -> bool:
        """One more request from ``host``: may it be answered?"""
        seen = self.seen
        entry = seen.get(host)
        if entry is None or now - entry[0] >= STRANGER_WINDOW:
            if entry is None and len(seen) >= MAX_STRANGERS:
                seen.clear()  # a scan of many sources: each still gets one answer a request
            seen[host] = (now, 1)
            return budget >= 1
        count = entry[1] + 1
        # over budget, the window starts again with every request: silence lasts for as
        # long as the source keeps sending, and ends a window after it stops
        seen[host] = (now if count > budget else entry[0], count)
        return count <= budget


class Gate:
    """What each source may still send (see the module's docstring)."""

    __slots__ = ("_answers", "_second", "_strays", "live", "peers", "strangers")

    def __init__(self, peers: Peers) -> None:
        self.peers = peers
        self.strangers = Strangers()
        self._second = -1
        # (listen entry, host) -> stray messages this second, of untrusted sources: behind a
        # balancer each trunk has its own port (SPEC §2), and one's junk is not another's
        self._strays: dict[tuple[int, str], int] = {}
        self._answers = 0  # answers to strangers this second
        # Call-ID -> the legs of the calls in progress with it (a caller chose the A-leg's:
        # two may share one) and the name of each leg's trunk, whose peers' messages pass
        # a metered source
        self.live: dict[str, tuple[tuple[Leg, str], ...]] = {}

    def opened(self, leg: Leg, trunk: Trunk) -> None:
        """A call's leg of ``trunk`` is up: its peer's messages with its Call-ID pass once
        metered."""
        live = self.live
        live[leg.call_id] = (*live.get(leg.call_id, ()), (leg, trunk.name))

    def closed(self, leg: Leg) -> None:
        live = self.live
        cid = leg.call_id
        kept = tuple(other for other in live.get(cid, ()) if other[0] is not leg)
        if kept:
            live[cid] = kept
        else:
            live.pop(cid, None)

    def enter(
        self,
        flow: Flow,
        now: float,
        limits: Limits,
        targets: frozenset[str],
        admitted: float,
        data: bytes,
        live: dict[str, tuple[tuple[Leg, str], ...]],
    ) -> int:
        """May ``data`` from ``flow`` be read? :data:`OPEN`, :data:`STRANGER` (read, to be
        refused), or why not (:data:`METERED`, :data:`SILENCED`). ``targets`` are the
        trunks' target hosts; ``admitted`` the fraction of an untrusted trunk's new calls
        the shedder admits; ``live`` the legs of the calls in progress by Call-ID, whose
        messages a metered source may still send where it is their peer (its BYE ends
        a call, its 200 answers one)."""
        host = flow.host
        second = int(now)
        if second != self._second:
            self._second = second
            self._strays.clear()
            self._answers = 0
        trunk = self.peers.trunk_of(flow.local, host)
        if trunk is None and host not in targets:
            if not self.strangers.answer(host, now, limits.unknown_source_budget):
                return SILENCED
            if self._answers >= STRANGER_ANSWERS:
                return SILENCED
            self._answers += 1
            return STRANGER
        budget = limits.stray_mps
        if not budget or (trunk is not None and trunk.trusted):
            return OPEN
        strays = self._strays.get((flow.local, host))
        if strays is None:
            return OPEN
        if admitted < 1.0:
            budget = max(min(MIN_STRAYS, budget), int(budget * admitted))
        if strays < budget:
            return OPEN
        legs = live.get(raw_call_id(data))
        if legs is not None and bound_to(legs, flow, trunk):
            return OPEN
        return METERED

    def stray(self, flow: Flow) -> None:
        """The message just read from ``flow`` belonged to no call and made none."""
        trunk = self.peers.trunk_of(flow.local, flow.host)
        if trunk is not None and trunk.trusted:
            return
        strays = self._strays
        key = (flow.local, flow.host)
        count = strays.get(key)
        if count is None and len(strays) >= MAX_METERED:
            strays.clear()
        strays[key] = 1 if count is None else count + 1


def bound_to(legs: tuple[tuple[Leg, str], ...], flow: Flow, trunk: Trunk | None) -> bool:
    """May ``flow``'s source (of ``trunk``, None if of none) be the peer of one of
    ``legs``: the listen entry and address the leg was set up with, or moved to (a
    failover, a redirect), or any source of the leg's trunk on a listen entry that
    serves it (``trunk``, found already: no lookup more)? The rule of
    :meth:`Peers.from_peer`, whose full check (TLS name, connection) then decides what
    the message may do.

    The trade-off: a metered address of trunk X can still tell, by what is read, which
    Call-IDs are live in trunk X's own calls (its peers' to know), never another
    trunk's. Memory stays one entry per leg in :attr:`Gate.live`."""
    name = trunk.name if trunk is not None else None
    for leg, leg_trunk in legs:
        at = leg.flow
        if (at.host == flow.host and at.local == flow.local) or leg_trunk == name:
            return True
    return False


def raw_call_id(data: bytes) -> str:
    """The ``Call-ID`` of a message not parsed yet ('' if none is found): its first
    ``Call-ID``/``i`` header line, any case, the value stripped."""
    end = data.find(b"\r\n\r\n")
    head = (data if end < 0 else data[:end]).lower()
    for name in (b"\r\ncall-id", b"\r\ni"):
        at = head.find(name)
        while at >= 0:
            rest = at + len(name)
            colon = head.find(b":", rest)
            if colon >= 0 and not head[rest:colon].strip(b" \t"):
                eol = data.find(b"\r\n", colon)
                value = data[colon + 1 : eol if eol >= 0 else len(data)]
                return value.strip(b" \t").decode("utf-8", "surrogateescape")
            at = head.find(name, rest)
    return ""
