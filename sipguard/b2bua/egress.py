"""The egress check of the element: no withheld caller's number or address leaves (SPEC §8).

On a **withheld** call (``presentation: restricted``) towards an **untrusted** trunk, every
message sent to the B-leg's side is searched (:mod:`sipguard.policy.egress`) for the
caller's number (as established, and as its side claimed it in ``From``,
``P-Asserted-Identity``, ``P-Preferred-Identity``, ``Remote-Party-ID``; a claim without
any prefix, ``31201234567`` or ``201234567``, that :func:`~sipguard.policy.numbers.to_e164`
cannot place, is searched as its digits, with and without ``+``) and the caller
side's addresses (the A-leg's source, the hosts of its ``Via`` and ``Contact``). The
caller's media address in the SDP counts only once the call's media is anchored
(:meth:`Egress.media_anchored`): with ``media: pass`` it is passed on by the operator's
choice (SPEC §1.5), and is then no leak. The needles are built once per call, when its
B-leg is made (:meth:`Egress.watch`).

**A hit is a bug upstream: fail closed.** The message is not sent, nor ever
retransmitted; ``sipguard_privacy_egress_blocked_total{where}`` counts it (``where``:
``request-uri``, ``reason-phrase``, ``header`` or ``body``, a bounded set that carries
no number); one ERROR line names the header (never the number or address); and after
the input that tried to send it, the call is ended (:meth:`Egress.end_leaked`): not yet
answered, the caller gets ``500`` (CDR ``status: 500``, ``end_reason: rejected``: the
attempt was refused by sipguard, as other refusals after admission are); answered, BYE
on both legs (the leaking message is never sent), CDR ``status: 500``, ``end_reason:
shutdown``: sipguard itself ended the call, neither party did, as on an internal error
(:meth:`~sipguard.b2bua.core.B2BUA._end_after_error` does the same). A leaking BYE of
that ending is held back too: the callee's side then ends by its own timers.

**One choke point.** Every byte sipguard sends leaves through
:meth:`~sipguard.sip.transaction.TransactionLayer.send` (its ``egress`` hook), and every
message towards the B-leg's side carries the B-leg's ``Call-ID``, ours: the check finds
the call by it. That covers, without a call per site: the B-leg INVITE and its
retransmissions, failover to the next target, redirects, the 422 and the auth retries
(the same B-leg); CANCEL; the ACKs (of a 2xx, with the late answer, of a non-2xx, of
another fork's 2xx, and the BYE that ends that fork); PRACK; every in-dialog request we
relay or originate (BYE, re-INVITE, UPDATE, INFO, MESSAGE, session refreshes); and every
response to the callee's requests, relayed or our own. The B-leg's Call-ID is learnt
before its first message (:meth:`~sipguard.b2bua.host.CallHost.watch_egress`, called by
:class:`~sipguard.b2bua.outgoing.Outgoing`).

**No oracle.** A hit is searched again without what the callee chose itself and we
only send back to it (:func:`~sipguard.policy.egress.mask_receivers_own`): its To tag
(and the ``To`` of its non-2xx, copied into our ACK), its Contact as our Request-URI and
its Record-Route as our ``Route`` (in-dialog requests), a 3xx's Contact we retarget to,
the values of its digest challenge, its RSeq in our ``RAck``, its ``Min-SE`` and session
interval, and in our responses to its requests the ``Via``, ``From``, ``To``, ``CSeq``
copied from them; and without its own hosts (:func:`callee_hosts`). Searched, they would
be an oracle: a callee that guesses the withheld number puts the guess in its tag, and a
blocked ACK (the call ends) tells it the guess was right. Only the values the callee
wrote are masked: a header of ours that carries the number is still a hit. The first
search, over the whole message, finds nothing in nearly every message, so the masking
costs only on a hit.

**Retransmissions.** A transaction whose message was held back sends nothing any more,
not even a retransmission (:attr:`~sipguard.sip.transaction.Transaction.held`: a flag,
not the bytes, so no bounded list that a caller triggering blocks at will could push
another call's leak out of). Once the call is over its Call-ID stays watched for 64*T1 +
T4, the longest any of its transactions lives, for what is sent outside a transaction
(the ACK of a 2xx, repeated when the callee repeats its 2xx). At most
:data:`MAX_QUARANTINED` ended calls are kept so (the oldest let go first); a transaction's
held message never depends on it.

**Only towards the callee.** The caller's number and addresses are the caller's own, and
every message towards the caller carries them (``From``, ``Via``): the caller's side is
never checked, even when its trunk is untrusted. What SPEC §1 promises is that the
*called* party does not learn a withheld caller's number or address; nothing is promised
about the callee's number (no connected-line restriction). Every message with the B-leg's
Call-ID goes towards the callee, even where the callee's trunk is the caller's own (a
call routed back out to the trunk it came from): it is checked all the same, and the
address it is sent to is never a hit (the receiver knows its own address).

**Never checked:** a presented call; a call towards a trusted trunk (which gets the
number in ``P-Asserted-Identity`` with ``Privacy: id`` by design, SPEC §2); an emergency
call (SPEC §1.4: the number is always presented; :func:`watched` is false for it before
any needle is built, whatever the trunk); a caller calling its own number (the callee's
number is the caller's: no number needle, see :func:`~sipguard.policy.egress.build_needles`).

**Cost** (compiled, on the shared 2-core VM, 2026-12-04). Timed directly
(``benchmarks/egress.py``, best of 5): a watched call costs 9.4 us in all (its needles
2.7 us, the search of its 3 messages to the callee, the look-up of its 4 to the caller,
its end); a call when none is watched 0.2 us. Whole calls (``benchmarks/b2bua.py --cpu
--calls 3000 --runs 7``, interleaved with the parent commit d7562c2, 5 pairs, medians):
withheld calls to an untrusted trunk (``--egress``) 219 against 210 us per call, the
default flow (trusted callee, nothing watched) 197 against 187 us; the machine's noise
(per-pair differences from -66 to +88 us) is larger than what the check adds. The masking
of what the callee chose runs on a hit only, and the IPv4 masking only where a number's
tail is there: pure Python, ``benchmarks/egress.py`` gives 13.4 us per watched call with
them against 12.5 us without (2026-12-04, within the machine's noise; not re-timed
compiled).
"""

from __future__ import annotations

import contextlib
import logging
from typing import TYPE_CHECKING

from sipguard.metrics import EGRESS_WHERE, Metrics
from sipguard.policy.egress import Needles, build_needles, find_hit, mask_receivers_own
from sipguard.policy.numbers import clean_number, to_e164
from sipguard.sip.errors import SipError
from sipguard.sip.transaction import Flow
from sipguard.sip.uri import parse_name_addr, parse_uri

if TYPE_CHECKING:
    from sipguard.b2bua.call import Call
    from sipguard.b2bua.leg import Leg

log = logging.getLogger("sipguard.b2bua")

MAX_QUARANTINED = 10_000  # ended calls whose Call-ID stays watched after a leak
_CALL_ID = b"\r\nCall-ID: "
_WHERE = frozenset(EGRESS_WHERE)  # the metric's label: a header's name counts as "header"
_IDENTITY_HEADERS = ("p-asserted-identity", "p-preferred-identity", "remote-party-id")


def watched(call: Call) -> bool:
    """Whether the call's messages towards its callee are checked: withheld, towards an
    untrusted trunk, and no emergency call (which presents the number by design)."""
    decision = call.crossing.ident.decision
    return (
        not call.trunk_out.trusted
        and decision.presentation == "restricted"
        and not decision.emergency
    )


def needles_of(call: Call, media_anchored: bool = False) -> Needles:
    """What identifies the caller of ``call`` (see the module docstring)."""
    ident = call.crossing.ident
    trunk_in = call.trunk_in
    req = call.a_invite.request
    numbers = [ident.caller]
    addresses = [call.a.flow.host]
    for name in ("from", *_IDENTITY_HEADERS):
        try:
            claimed = req.name_addrs(name)
        except SipError:
            continue  # a claim that does not parse names no number
        for na in claimed:
            if na.uri.user:
                number = to_e164(na.uri.user, trunk_in.numbering)
                if number is not None:
                    numbers.append(number)
                # a number without any prefix (31201234567, 201234567): its digits, as
                # they are and as E.164 (to_e164 cannot know its area)
                digits = clean_number(na.uri.user).lstrip("+")
                if len(digits) >= 7 and digits.isdigit() and digits.isascii():
                    numbers.append("+" + digits)
    try:
        addresses += [v.host for v in req.vias]
        addresses += [v.received for v in req.vias if v.received]
        addresses += [na.uri.host for na in req.contacts]
    except SipError:
        pass  # validated on arrival: a call's INVITE has readable Via and Contact
    ours = [entry.address for entry in call.config.listen]
    ours += [call.config.identity_domain, "anonymous.invalid"]
    for target in call.trunk_out.targets:
        try:
            ours.append(parse_uri(target).host)
        except SipError:
            continue
    return build_needles(
        numbers,
        (trunk_in.numbering, call.trunk_out.numbering),
        addresses,
        not_numbers=(ident.callee, clean_number(ident.dialled)),
        not_addresses=ours,
        in_body=media_anchored,
    )


def callee_hosts(b: Leg) -> list[str]:
    """The hosts the callee's side gave the B-leg: its target, route set and To."""
    hosts = [b.flow.host]
    for text in (b.remote_target, *b.route_set, b.remote_uri):
        try:
            value = text.strip()
            uri = parse_name_addr(value).uri if "<" in value else parse_uri(value)
        except SipError:
            continue
        hosts.append(uri.host)
    return hosts


class Guard:
    """One watched call: its needles, and what a leak needs to say and do."""

    __slots__ = ("call", "call_id", "leaked", "needles", "trunks")

    def __init__(self, call: Call, needles: Needles) -> None:
        self.call: Call | None = call  # None once the call is over
        self.call_id = call.id
        self.trunks = (call.trunk_in.name, call.trunk_out.name)
        self.needles = needles
        self.leaked = False  # a message of it was held back


class Egress:
    """The element's egress check: the watched calls by their B-leg's Call-ID."""

    __slots__ = ("leaks", "metrics", "quarantine", "watching")

    def __init__(self, metrics: Metrics | None) -> None:
        self.metrics = metrics
        self.watching: dict[bytes, Guard] = {}  # B-leg Call-ID -> guard
        self.leaks: list[Guard] = []  # calls to end after this input
        self.quarantine: dict[bytes, float] = {}  # Call-ID -> until (oldest first)

    def watch(self, call: Call) -> None:
        """The call's B-leg exists and its first message is next: watch it if it must be."""
        b = call.b
        if b is None or not watched(call):
            return
        # an anchored call's SDP carries the relay's addresses: the caller's are searched
        # in the bodies too (with media: pass they are passed on by the operator's choice)
        needles = needles_of(call, media_anchored=call.media is not None)
        if not needles:
            return
        key = b.call_id.encode()
        self.quarantine.pop(key, None)
        self.watching[key] = Guard(call, needles)

    def media_anchored(self, call: Call) -> None:
        """The call's media is anchored from now on: its SDP carries the relay's addresses,
        so the caller's addresses are searched in the bodies too."""
        guard = self._guard(call)
        if guard is not None:
            n = guard.needles
            guard.needles = Needles(n.numbers, n.addresses, True)

    def media_unanchored(self, call: Call) -> None:
        """The call goes on unanchored (its relay failed, ``when_down: pass``): its SDP
        carries the caller's media address by the operator's choice, as with
        ``media: pass``, so the bodies are no longer searched."""
        guard = self._guard(call)
        if guard is not None:
            n = guard.needles
            guard.needles = Needles(n.numbers, n.addresses, False)

    def _guard(self, call: Call) -> Guard | None:
        if call.b is None:
            return None
        guard = self.watching.get(call.b.call_id.encode())
        return guard if guard is not None and guard.call is call else None

    # -- the check (TransactionLayer.send) -------------------------------------------------

    def allows(self, flow: Flow, data: bytes) -> bool:
        """False: ``data`` would carry a withheld caller's number or address to the callee."""
        watching = self.watching
        if not watching:
            return True
        i = data.find(_CALL_ID)
        if i < 0:
            return True
        i += len(_CALL_ID)
        guard = watching.get(data[i : data.find(b"\r\n", i)])
        if guard is None:
            return True
        hit = find_hit(data, guard.needles, (flow.host,))
        if hit is None:
            return True
        # a hit, rare: searched again without what the callee chose itself (its tag,
        # target, route set, challenge, the headers our responses copy from its requests:
        # searched, they would tell a callee whether its guess of the number was right),
        # and without the callee's own hosts (its Contact, route set, To: no leak even
        # where the caller side has the same, as private addresses repeat)
        call = guard.call
        b = call.b if call is not None else None
        skip: tuple[str, ...] = (flow.host,)
        targets: list[str] = []
        if call is not None and b is not None:
            skip = (flow.host, *callee_hosts(b))
            if call.out.redirect:  # a 3xx's Contact, where the INVITE now goes
                targets.append(call.out.redirect)
        hit = find_hit(mask_receivers_own(data, targets), guard.needles, skip)
        if hit is None:
            return True
        self._blocked(guard, *hit)
        return False

    def _blocked(self, guard: Guard, where: str, kind: str) -> None:
        first = not guard.leaked
        guard.leaked = True
        if self.metrics is not None:
            label = where if where in _WHERE else "header"
            self.metrics.inc(self.metrics.privacy_egress_blocked, label)
        if not first:
            log.debug("call %s: egress check: another message held back (%s)", guard.call_id, where)
            return
        trunk_in, trunk_out = guard.trunks
        log.error(
            "call %s %s -> %s: egress check: a message towards untrusted trunk %s would carry "
            "the withheld caller's %s in %s: not sent, the call is ended with 500 (a bug "
            "upstream)",
            guard.call_id,
            trunk_in,
            trunk_out,
            trunk_out,
            kind,
            where,
            extra={
                "event": "privacy_egress_blocked",
                "call_id": guard.call_id,
                "trunk": trunk_in,
                "trunk_out": trunk_out,
            },
        )
        if guard.call is not None:
            self.leaks.append(guard)

    # -- after each input, and at a call's end ---------------------------------------------

    def end_leaked(self, now: float) -> None:
        """End the calls a message was held back from (after the input that tried it)."""
        if not self.leaks:
            return
        leaks, self.leaks = self.leaks, []
        for guard in leaks:
            call = guard.call
            if call is None or call.ended:
                continue
            try:
                if call.early:
                    call.hangup(True, now, reason="rejected", status=500)
                else:
                    call.status = 500
                    call.hangup(True, now, reason="shutdown", status=500, to_a=True)
            except Exception:
                log.exception("internal error ending call %s after a leak", guard.call_id)
                with contextlib.suppress(Exception):  # never in the way of the outcomes
                    call.finish(now, "rejected" if call.early else "shutdown", 500)

    def ended(self, call: Call, now: float) -> None:
        """The call is over: it is no longer watched, unless a message of it was held back
        (then its Call-ID is, until no transaction of it can send any more)."""
        self._expire(now)
        guard = self._guard(call)
        if guard is None:
            return
        assert call.b is not None
        key = call.b.call_id.encode()
        guard.call = None  # no ended call kept alive by its guard
        if not guard.leaked:
            del self.watching[key]
            return
        t = call.config.sip
        self.quarantine[key] = now + 64 * t.t1 + t.t4
        while len(self.quarantine) > MAX_QUARANTINED:
            self._release(next(iter(self.quarantine)))

    def _expire(self, now: float) -> None:
        quarantine = self.quarantine
        while quarantine:
            key, until = next(iter(quarantine.items()))
            if until > now:
                return
            self._release(key)

    def _release(self, key: bytes) -> None:
        del self.quarantine[key]
        guard = self.watching.get(key)
        if guard is not None and guard.call is None:
            del self.watching[key]
