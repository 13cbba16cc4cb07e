"""Whether a new INVITE becomes a call: every check, in one order, in one place.

:func:`admit` takes the request, where it came from, the policy and the load, and gives
:class:`Admitted` (the caller's identity and the next trunk) or :class:`Refused` (the
final response and, for an attempt that got as far as an identity, its CDR facts). The
order, first refusal wins:

====  ==========================================  ======  ======================  =====
step  check                                       status  reason (rejected_total)  CDR
====  ==========================================  ======  ======================  =====
1     the source matches no trunk (SPEC §2)        403     unknown_source          no
2     the trunk's ``tls_name`` not proved          403     tls_name                no
3     the same INVITE by another path (§8.2.2.2)   482     loop_detected           no
4     ``Max-Forwards`` at 0 (RFC 7332)             483     too_many_hops           no
5     no ``Contact`` (§8.1.1.8)                    400     bad_request             no
6     a Request-URI scheme we do not route         416     unsupported_uri_scheme  no
7     a ``Require`` we do not support              420     bad_extension           no
8     no caller identity, or one refused           403     no_caller_identity,     yes
      (``cli_policy: reject``)                            cli_not_allowed
9     no next trunk for the call                   404     no_route                yes
10    a capacity limit (:meth:`Capacity.limit`)    503     (the limit)             yes
11    session interval below our Min-SE (4028 §9)  422     session_interval_…      yes
12    media to anchor, every relay down and        503     media_down              yes
      ``rtpengine.when_down: refuse``
      (:func:`~sipguard.b2bua.media.plan`)
13    privacy that cannot be given, anonymity      500,    privacy_unavailable,    yes
      refused (SPEC §3, :func:`refusal`;           433     anonymity_disallowed
      ``Privacy: session`` is given where the
      call is anchored)
====  ==========================================  ======  ======================  =====

From step 8 on the attempt is a call attempt: it is answered ``100 Trying`` first and its
refusal has an end record. An emergency call is refused by no limit but the emergency
reserve, by no session interval and by no privacy rule.

Step 0, under overload only: a new INVITE from a trunk source that the shedder refuses
is answered ``503`` (``overload``) before it is read at all, once its trunk's refusal
records of the second are written (:mod:`~sipguard.b2bua.shed`; never an emergency
call). Overload is a state of the element, not of the request: the checks above would
cost it what it is short of. A retransmission of an INVITE refused ``503`` gets ``503``
again, whichever path answered it.

Step 10 early, likewise: where a limit refuses every new call of the trunk now but an
emergency one (draining, the CDR spool full, the calls at once, the trunk's calls of
this second: :meth:`Capacity.full`), and the trunk's refusal records of the second are
written, a new INVITE is answered ``503`` unread with the limit :meth:`Capacity.limit`
names (:mod:`~sipguard.b2bua.unread`): no record would be written, and the limit is the
trunk's state, not the request's. No caller identity is decided for it.

"Refused statelessly" everywhere: one response per request (§8.2.7), no transaction
kept. Refusals for good (400, 403, 405, 481, 482, 483, 501) are strays that count
against an untrusted source's budget (:mod:`~sipguard.b2bua.gate`); a limit's 503 is not.
"""

from __future__ import annotations

from sipguard.b2bua.identity import CallIdentity, CallRefusedError, identify
from sipguard.b2bua.media import ANCHOR, NONE, REFUSE, MediaControl, plan
from sipguard.b2bua.overload import Shedder
from sipguard.b2bua.session_timer import interval_too_small
from sipguard.config.model import Config, Trunk
from sipguard.policy.decision import refusal
from sipguard.sip.message import Request
from sipguard.sip.tlsnames import name_matches
from sipguard.sip.transaction import Flow

SUPPORTED_REQUIRE = frozenset({"100rel", "timer", "replaces"})
SCHEMES = frozenset({"sip", "sips", "tel", "urn"})
# per-source new-call counts are kept for one second, for at most this many sources
MAX_FLOOD_SOURCES = 65536


MergeKey = tuple[str, str, int, int, str]


def merge_key(req: Request, flow: Flow) -> MergeKey:
    """(Call-ID, From tag, CSeq, listen entry, source) of an INVITE: the same INVITE again
    by another path is refused 482 (§8.2.2.2), but only one from the same place (a
    source elsewhere learns nothing of the calls there are)."""
    return (req.call_id, req.from_.tag or "", req.cseq.number, flow.local, flow.host)


class Admitted:
    __slots__ = ("ident", "media", "trunk_out")

    def __init__(self, ident: CallIdentity, trunk_out: Trunk, media: int = NONE) -> None:
        self.ident = ident
        self.trunk_out = trunk_out
        self.media = media  # the media plan (sipguard.b2bua.media)


class Refused:
    """The final response refusing a new INVITE, and the CDR facts of the attempt
    (``end_reason`` None: refused before it was a call attempt, no record)."""

    __slots__ = (
        "callee",
        "caller",
        "end_reason",
        "headers",
        "ident",
        "label",
        "phrase",
        "route",
        "status",
    )

    def __init__(
        self,
        status: int,
        label: str,
        phrase: str | None = None,
        headers: list[tuple[str, str]] | None = None,
        *,
        end_reason: str | None = None,
        route: str | None = None,
        caller: str = "",
        callee: str = "",
        ident: CallIdentity | None = None,
    ) -> None:
        self.status = status
        self.label = label
        self.phrase = phrase
        self.headers = headers
        self.end_reason = end_reason
        self.route = route
        self.caller = caller
        self.callee = callee
        self.ident = ident

    @property
    def presentation(self) -> str:
        # a caller refused before the decision is recorded as withheld: its number
        # stays out of the callee's itemised bill
        return self.ident.decision.presentation if self.ident is not None else "restricted"


def emergency_share(config: Config, trunk: Trunk) -> tuple[int, int]:
    """(emergency calls at once, new ones per second) that ``trunk`` may take of the
    global emergency reserve (SPEC §8): its own limits, or by default a fair share, the
    reserve divided among the trunks that can place calls, and a quarter of that per
    second (at least 5, or all of it where it is smaller). One trunk's flood of fake 112
    calls then never refuses another's real one."""
    tl = trunk.limits
    reserve = config.limits.emergency_max_calls
    callers = sum(1 for t in config.trunks.values() if t.route_to or t.emergency_route_to)
    calls = min(tl.emergency_max_calls or max(1, reserve // max(1, callers)), reserve)
    return calls, tl.emergency_cps or max(calls // 4, min(calls, 5))


def _count(table: dict[str, int], key: str, step: int) -> None:
    left = table.get(key, 0) + step
    if left > 0:
        table[key] = left
    else:
        table.pop(key, None)  # no entry for a trunk without calls


def within_rate(table: dict[str, tuple[int, int]], key: str, now: float, rate: int) -> bool:
    """One more this second for ``key`` in ``table``, if fewer than ``rate`` were."""
    second = int(now)
    sec, count = table.get(key, (second, 0))
    if sec != second:
        count = 0
    if count >= rate:
        return False
    table[key] = (second, count + 1)
    return True


class Capacity:
    """The calls in progress, in total, per trunk and emergency, and the rates of new
    ones per trunk and per source: what the limits of SPEC §1.4 and §8 are checked on.
    Its tables hold one entry per trunk, and per source for one second at most."""

    __slots__ = (
        "_flood",
        "_flood_second",
        "calls",
        "emergency_calls",
        "trunk_calls",
        "trunk_cps",
        "trunk_emergency",
        "trunk_emergency_cps",
    )

    def __init__(self) -> None:
        self.calls = 0
        self.emergency_calls = 0
        self.trunk_calls: dict[str, int] = {}
        self.trunk_emergency: dict[str, int] = {}
        self.trunk_cps: dict[str, tuple[int, int]] = {}  # trunk -> (second, count)
        self.trunk_emergency_cps: dict[str, tuple[int, int]] = {}
        self._flood: dict[str, int] = {}
        self._flood_second = -1

    def take(self, trunk: str, emergency: bool) -> None:
        self.calls += 1
        _count(self.trunk_calls, trunk, 1)
        if emergency:
            self.emergency_calls += 1
            _count(self.trunk_emergency, trunk, 1)

    def give_back(self, trunk: str, emergency: bool) -> None:
        self.calls -= 1
        _count(self.trunk_calls, trunk, -1)
        if emergency:
            self.emergency_calls -= 1
            _count(self.trunk_emergency, trunk, -1)

    def limit(
        self,
        config: Config,
        trunk: Trunk,
        emergency: bool,
        now: float,
        source: str,
        shedder: Shedder,
        *,
        draining: bool,
        accepting: bool,
    ) -> str | None:
        """Why a new call must be refused with 503, or None, in this order."""
        limits = config.limits
        if emergency:
            # the reserved emergency capacity is the one cap that applies to them, shared
            # fairly between the trunks
            if self.emergency_calls >= limits.emergency_max_calls:
                return "emergency_limit"
            calls, cps = emergency_share(config, trunk)
            if self.trunk_emergency.get(trunk.name, 0) >= calls:
                return "trunk_emergency_limit"
            if not within_rate(self.trunk_emergency_cps, trunk.name, now, cps):
                return "trunk_emergency_cps"
            return None
        if limits.source_rps and self._flooding(source, now, limits.source_rps):
            return "source_flood"
        held = self._held(config, trunk, draining=draining, accepting=accepting)
        if held is not None:
            return held
        tl = trunk.limits
        if not shedder.admit(trunk.trusted):
            return "overload"  # the receive queue grows: part of the new calls are shed
        if tl.cps and not within_rate(self.trunk_cps, trunk.name, now, tl.cps):
            return "trunk_cps"
        return None

    def full(
        self, config: Config, trunk: Trunk, now: float, *, draining: bool, accepting: bool
    ) -> bool:
        """Does a limit refuse every new call of ``trunk`` now but an emergency one,
        whoever sends it and whatever it asks: draining, the CDR spool full, the calls
        at once (the element's or the trunk's), the trunk's new calls of this second?
        Nothing is counted: :meth:`limit` then says which, and counts as it does for
        every new call (a source's flood, the shedder's offered mix)."""
        if self._held(config, trunk, draining=draining, accepting=accepting) is not None:
            return True
        tl = trunk.limits
        if not tl.cps:
            return False
        sec, count = self.trunk_cps.get(trunk.name, (-1, 0))
        return sec == int(now) and count >= tl.cps  # within_rate would say no

    def _held(self, config: Config, trunk: Trunk, *, draining: bool, accepting: bool) -> str | None:
        """The state that refuses every new non-emergency call of ``trunk`` now, counting
        nothing: draining, the CDR spool full, the calls at once (element, trunk)."""
        if draining:
            return "draining"
        if not accepting:
            return "cdr_spool_full"
        if self.calls - self.emergency_calls >= config.limits.max_calls:
            return "max_calls"
        tl = trunk.limits
        if tl.max_calls and self.trunk_calls.get(trunk.name, 0) >= tl.max_calls:
            return "trunk_max_calls"
        return None

    def _flooding(self, source: str, now: float, rps: int) -> bool:
        """More than ``rps`` new calls this second from one source address (SPEC §8)."""
        second = int(now)
        if second != self._flood_second or len(self._flood) >= MAX_FLOOD_SOURCES:
            self._flood_second = second
            self._flood.clear()  # one small dict per second: no unbounded growth
        count = self._flood.get(source, 0) + 1
        self._flood[source] = count
        return count > rps


def admit(
    req: Request,
    trunk: Trunk | None,
    config: Config,
    capacity: Capacity,
    shedder: Shedder,
    now: float,
    *,
    source: str,
    tls_names: frozenset[str],
    merged: bool,
    draining: bool,
    accepting: bool,
    relay: MediaControl | None = None,
) -> Admitted | Refused:
    """The decision on a new INVITE from ``source`` that matched ``trunk`` (None: no
    trunk); ``tls_names``: the names its TLS connection proved; ``merged``: the same
    INVITE already made a call; ``relay``: the media relays (None: none configured).
    See the module's table for the order."""
    if trunk is None:
        return Refused(403, "unknown_source")
    if trunk.tls_name is not None and not name_matches(trunk.tls_name, tls_names):
        return Refused(403, "tls_name")
    if merged:
        return Refused(482, "loop_detected")
    mf = req.max_forwards
    if mf is not None and mf <= 0:
        return Refused(483, "too_many_hops")
    if not req.contacts:
        return Refused(400, "bad_request", "Missing Contact")
    if req.request_uri.scheme not in SCHEMES:
        return Refused(416, "unsupported_uri_scheme")
    require = req.tokens("require") - SUPPORTED_REQUIRE
    if require:
        return Refused(420, "bad_extension", None, [("Unsupported", ", ".join(sorted(require)))])
    try:
        ident = identify(req, trunk, config)
    except CallRefusedError as exc:
        return Refused(
            exc.status,
            exc.label,
            exc.reason,
            end_reason="rejected",
            route=trunk.route_to,
            caller=exc.caller,
            callee=exc.callee,
        )
    decision = ident.decision
    emergency = decision.emergency
    route = trunk.emergency_target() if emergency else trunk.route_to
    trunk_out = config.trunks.get(route) if route else None

    def refused(
        status: int,
        label: str,
        end_reason: str,
        phrase: str | None = None,
        headers: list[tuple[str, str]] | None = None,
    ) -> Refused:
        return Refused(
            status,
            label,
            phrase,
            headers,
            end_reason=end_reason,
            route=route,
            caller=ident.caller,
            callee=ident.callee,
            ident=ident,
        )

    if trunk_out is None:
        return refused(404, "no_route", "rejected")
    limited = capacity.limit(
        config, trunk, emergency, now, source, shedder, draining=draining, accepting=accepting
    )
    if limited is not None:
        return refused(503, limited, "limit")
    if not emergency and interval_too_small(req, config):
        # RFC 4028 §9: the caller retries with our Min-SE (an emergency call never waits
        # for that: its interval is raised instead)
        headers = [("Min-SE", str(config.sip.min_se))]
        return refused(422, "session_interval_too_small", "rejected", None, headers)
    media = plan(trunk, trunk_out, decision, config, relay)
    if media == REFUSE:
        return refused(503, "media_down", "rejected")  # no Retry-After (SPEC §8)
    r = refusal(decision, ident.facts, trunk_out, media_anchored=media == ANCHOR)
    if r is not None:
        return refused(r.status, r.label, "rejected", r.phrase)
    return Admitted(ident, trunk_out, media)
