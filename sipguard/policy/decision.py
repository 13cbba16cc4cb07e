"""The privacy decision of SPEC §3: a pure, total, deterministic function with its reason.

:func:`decide` walks the table of SPEC §3 in order, first match wins:

====  =====================================================  ============  ===================
step  condition                                              presentation  reason
====  =====================================================  ============  ===================
1     emergency number or ``urn:service:sos[.*]``            allowed       ``emergency``
2     dialled with the withhold code (``#31#``)              restricted    ``withhold_code``
3     dialled with the present code (``*31#``), not          allowed       ``present_code``
      in permanent mode
3     ``Privacy: none``, not in permanent mode               allowed       ``privacy_none``
4     ``Privacy`` has ``id``, ``user`` or ``header``         restricted    ``privacy_header``
4     trusted trunk, ``Remote-Party-ID`` ``privacy=`` not    restricted    ``rpid_privacy``
      ``off``
5     permanent mode (trunk ``presentation: permanent`` or   restricted    ``permanent``
      caller in ``permanent_numbers``)
5     restricted by default (trunk ``presentation:           restricted    ``restricted_default``
      restricted`` or caller in ``restricted_numbers``)
6     otherwise                                              allowed       ``default``
====  =====================================================  ============  ===================

Choices where the table leaves room, each with a test:

- A dialled code beats the ``Privacy`` header: ``*31#`` with ``Privacy: id`` is allowed
  (step 3 comes before step 4). The code is the subscriber's explicit choice for this
  very call; the header is usually a phone's standing setting.
- ``Privacy: none`` counts only when the header asks for no identity privacy at the same
  time: ``none;id`` contradicts itself (RFC 3323 §4.2 forbids combining ``none`` with
  other values) and is resolved towards privacy, i.e. it is step 4, not step 3.
- ``Privacy: none`` and ``*31#`` in permanent mode fall through: to step 4 if the
  request also asks for privacy, else to step 5 (``permanent``).
- A ``Remote-Party-ID`` ``privacy=`` is honoured only from a trusted trunk, also when a
  caller of :func:`decide` passes one from an untrusted trunk by mistake.

The reasons are the ``reason`` label of ``sipguard_presentation_total`` (SPEC §7).
"""

from __future__ import annotations

import re
from collections.abc import Collection, Iterable
from dataclasses import dataclass
from typing import Literal, NamedTuple

from sipguard.config.model import ClirCodes, Trunk
from sipguard.policy.headers import split_entries
from sipguard.policy.numbers import ClirCode, is_emergency, is_sos_urn, split_clir_code

__all__ = [
    "REASONS",
    "CallFacts",
    "Decision",
    "PresentationDecision",
    "Reason",
    "Refusal",
    "decide",
    "facts_from",
    "is_permanent",
    "is_psap_callback",
    "privacy_tokens",
    "refusal",
    "rpid_privacy",
]

PresentationDecision = Literal["allowed", "restricted"]

Reason = Literal[
    "emergency",
    "withhold_code",
    "present_code",
    "privacy_none",
    "privacy_header",
    "rpid_privacy",
    "permanent",
    "restricted_default",
    "default",
]
# every value of Reason, in table order (for pre-declaring metric label sets)
REASONS: tuple[Reason, ...] = (
    "emergency",
    "withhold_code",
    "present_code",
    "privacy_none",
    "privacy_header",
    "rpid_privacy",
    "permanent",
    "restricted_default",
    "default",
)

# Privacy values that withhold the identity (RFC 3323 §4.2 user/header, RFC 3325 §9.3 id)
_IDENTITY_PRIVACY = frozenset({"id", "user", "header"})

# Privacy values sipguard can always give (SPEC §3): a restricted call gets an anonymous
# From, no PAI towards untrusted trunks and no user-filled identity headers (user, id);
# being a B2BUA it never copies Via, Contact or Record-Route (header); it anonymises
# History-Info (RFC 7044 §10.1 history); none and critical ask for nothing themselves.
# 'session' is given only where the media is anchored.
_ALWAYS_GIVEN = frozenset({"id", "user", "header", "history", "none", "critical"})


@dataclass(frozen=True, slots=True)
class CallFacts:
    """What the decision needs to know about a new INVITE, already established.

    ``caller`` is the E.164 number after anti-spoofing (SPEC §2). ``privacy`` holds the
    lower-case tokens of the A-leg's ``Privacy`` header(s) (:func:`privacy_tokens`).
    ``rpid_privacy`` is the ``privacy=`` of ``Remote-Party-ID`` (:func:`rpid_privacy`),
    only believed when ``trunk_in`` is trusted; ``psap_callback`` likewise.
    """

    trunk_in: Trunk
    caller: str
    emergency: bool
    clir_code: ClirCode | None
    privacy: frozenset[str]
    rpid_privacy: str | None
    psap_callback: bool = False

    def __init__(
        self,
        trunk_in: Trunk,
        caller: str,
        emergency: bool,
        clir_code: ClirCode | None,
        privacy: frozenset[str],
        rpid_privacy: str | None,
        psap_callback: bool = False,
    ) -> None:
        # written out rather than generated by @dataclass: mypyc compiles this one
        object.__setattr__(self, "trunk_in", trunk_in)
        object.__setattr__(self, "caller", caller)
        object.__setattr__(self, "emergency", emergency)
        object.__setattr__(self, "clir_code", clir_code)
        object.__setattr__(self, "privacy", privacy)
        object.__setattr__(self, "rpid_privacy", rpid_privacy)
        object.__setattr__(self, "psap_callback", psap_callback)

    def __reduce__(
        self,
    ) -> tuple[
        type[CallFacts],
        tuple[Trunk, str, bool, ClirCode | None, frozenset[str], str | None, bool],
    ]:
        # copy, deepcopy, pickle when compiled by mypyc too (see Uri.__reduce__)
        return CallFacts, (
            self.trunk_in,
            self.caller,
            self.emergency,
            self.clir_code,
            self.privacy,
            self.rpid_privacy,
            self.psap_callback,
        )


@dataclass(frozen=True, slots=True)
class Decision:
    presentation: PresentationDecision
    reason: Reason
    emergency: bool
    session_privacy: bool  # 'session' in Privacy: media anchoring asked for
    critical: bool  # 'critical' in Privacy: refuse what cannot be given (see refusal())

    def __init__(
        self,
        presentation: PresentationDecision,
        reason: Reason,
        emergency: bool,
        session_privacy: bool,
        critical: bool,
    ) -> None:
        # written out rather than generated by @dataclass: mypyc compiles this one
        object.__setattr__(self, "presentation", presentation)
        object.__setattr__(self, "reason", reason)
        object.__setattr__(self, "emergency", emergency)
        object.__setattr__(self, "session_privacy", session_privacy)
        object.__setattr__(self, "critical", critical)

    def __reduce__(
        self,
    ) -> tuple[type[Decision], tuple[PresentationDecision, Reason, bool, bool, bool]]:
        # copy, deepcopy, pickle when compiled by mypyc too (see Uri.__reduce__)
        return Decision, (
            self.presentation,
            self.reason,
            self.emergency,
            self.session_privacy,
            self.critical,
        )

    @property
    def restricted(self) -> bool:
        return self.presentation == "restricted"


class Refusal(NamedTuple):
    """A final response refusing the call: ``status, phrase = refusal(...)``."""

    status: int
    phrase: str

    @property
    def label(self) -> Literal["anonymity_disallowed", "privacy_unavailable"]:
        """The ``reason`` label of ``sipguard_rejected_total``."""
        return "anonymity_disallowed" if self.status == 433 else "privacy_unavailable"


def is_permanent(trunk: Trunk, caller: str) -> bool:
    """3GPP permanent mode (TS 24.607): the trunk or the caller's number always withholds."""
    return trunk.presentation == "permanent" or caller in trunk.permanent_numbers


def _restricted_by_default(trunk: Trunk, caller: str) -> bool:
    return trunk.presentation == "restricted" or caller in trunk.restricted_numbers


def decide(facts: CallFacts) -> Decision:
    """The presentation of the caller's identity for one call: SPEC §3, first match wins.

    Total and deterministic: every combination of facts gives a decision, never raises.
    """
    privacy = facts.privacy
    session = "session" in privacy
    critical = "critical" in privacy

    def result(presentation: PresentationDecision, reason: Reason) -> Decision:
        return Decision(presentation, reason, facts.emergency, session, critical)

    # 1. emergency: the number is always presented (SPEC §1.4)
    if facts.emergency:
        return result("allowed", "emergency")
    # 2. per-call withhold code
    if facts.clir_code == "withhold":
        return result("restricted", "withhold_code")
    trunk = facts.trunk_in
    permanent = is_permanent(trunk, facts.caller)
    asks_identity_privacy = not _IDENTITY_PRIVACY.isdisjoint(privacy)
    # 3. per-call present code or Privacy: none, except in permanent mode
    if not permanent:
        if facts.clir_code == "present":
            return result("allowed", "present_code")
        if "none" in privacy and not asks_identity_privacy:
            return result("allowed", "privacy_none")
    # 4. Privacy: id / user / header, or a trusted Remote-Party-ID privacy=
    if asks_identity_privacy:
        return result("restricted", "privacy_header")
    rpid = facts.rpid_privacy
    if trunk.trusted and rpid is not None and rpid.strip().lower() != "off":
        return result("restricted", "rpid_privacy")
    # 5. withheld permanently or by default
    if permanent:
        return result("restricted", "permanent")
    if _restricted_by_default(trunk, facts.caller):
        return result("restricted", "restricted_default")
    # 6.
    return result("allowed", "default")


# A priv-value in a reason phrase: a token, cut short (it comes from the peer).
_TOKEN = re.compile(r"[A-Za-z0-9.!%*_+`'~-]{1,32}")


def refusal(
    decision: Decision, facts: CallFacts, trunk_out: Trunk, media_anchored: bool
) -> Refusal | None:
    """The final response refusing the call towards ``trunk_out``, or None to go on.

    An emergency call is never refused here. Otherwise, in this order:

    1. ``Privacy`` with ``critical`` asks for something sipguard cannot give on this call
       (``session`` where the media is not anchored, or a priv-value it does not know):
       ``500`` as RFC 3323 §5 requires ("if the privacy service is incapable of
       performing all of the levels of privacy specified in the Privacy header then it
       MUST fail the request with a 500 (Server Error) response code"), with a reason
       phrase naming the priv-values not given, as that section recommends:
       ``500 Privacy Unavailable: session``. Without ``critical`` the call goes on with
       the privacy that can be given (RFC 3323 §5: best effort). ``id``, ``user`` and
       ``header`` count as given: a restricted call gets them, and a call presented
       despite them was presented by the subscriber's own ``*31#``.
    2. ``trunk_out`` has ``reject_anonymous`` and the caller is withheld: ``433 Anonymity
       Disallowed`` (RFC 5079 §3, §5), except for a PSAP call-back (RFC 7090
       ``Priority: psap-callback``) from a trusted trunk.
    """
    if decision.emergency:
        return None
    if decision.critical:
        missing = [
            v
            for v in sorted(facts.privacy)
            if v not in _ALWAYS_GIVEN and not (v == "session" and media_anchored)
        ]
        if missing:
            shown = [v for v in missing if _TOKEN.fullmatch(v)][:4]
            phrase = "Privacy Unavailable"
            if shown:
                phrase += ": " + ";".join(shown)
            return Refusal(500, phrase)
    if (
        trunk_out.reject_anonymous
        and decision.presentation == "restricted"
        and not (facts.psap_callback and facts.trunk_in.trusted)
    ):
        return Refusal(433, "Anonymity Disallowed")
    return None


def privacy_tokens(values: Iterable[str]) -> frozenset[str]:
    """The lower-case priv-values of the ``Privacy`` header field values of a request.

    RFC 3323 §4.2 separates priv-values with ``;`` (``id;user``); commas (several header
    lines joined, or the common ``id, user`` mistake, RFC 3323 erratum 5184) and blanks
    are accepted too. ``['Id; User', 'critical']`` -> ``{'id', 'user', 'critical'}``.
    """
    tokens: set[str] = set()
    for value in values:
        for part in value.replace(",", ";").split(";"):
            token = part.strip().lower()
            if token:
                tokens.add(token)
    return frozenset(tokens)


def _header_params(entry: str) -> dict[str, str]:
    """The header parameters of a name-addr or addr-spec entry (lower-case names)."""
    # params follow the closing '>' of a name-addr; in an addr-spec, the first ';'
    close = entry.rfind(">")
    if close >= 0:
        tail = entry[close + 1 :]
    else:
        semi = entry.find(";")
        tail = entry[semi:] if semi >= 0 else ""
    params: dict[str, str] = {}
    for part in tail.split(";"):
        name, _, val = part.partition("=")
        name = name.strip().lower()
        if name and name not in params:
            params[name] = val.strip().strip('"')
    return params


def rpid_privacy(values: Iterable[str]) -> str | None:
    """The ``privacy=`` of the calling party in ``Remote-Party-ID`` values, or None.

    Entries with ``party=called`` are skipped. With several calling-party entries the
    most private wins: any value other than ``off`` is returned before ``off``. No
    ``privacy=`` at all gives None (the draft's default is ``off``). Only meaningful from
    a trusted trunk; :func:`decide` ignores it otherwise.
    """
    found: str | None = None
    for value in values:
        for entry in split_entries(value):
            params = _header_params(entry)
            if params.get("party", "calling").lower() == "called":
                continue
            privacy = params.get("privacy")
            if privacy is None:
                continue
            privacy = privacy.lower()
            if privacy != "off":
                return privacy
            found = privacy
    return found


def is_psap_callback(values: Iterable[str]) -> bool:
    """Whether a ``Priority`` header field value is ``psap-callback`` (RFC 7090 §5)."""
    return any(v.strip().lower() == "psap-callback" for v in values)


def facts_from(
    *,
    trunk_in: Trunk,
    caller: str,
    request_uri: str,
    dialled_user: str | None,
    codes: ClirCodes,
    emergency_numbers: Collection[str],
    privacy: Iterable[str] = (),
    remote_party_id: Iterable[str] = (),
    priority: Iterable[str] = (),
    to_user: str | None = None,
) -> tuple[CallFacts, str | None]:
    """Build :class:`CallFacts` from the strings of an INVITE, and the dialled rest.

    ``dialled_user`` is the user part of a SIP Request-URI or the number of a ``tel:``
    Request-URI as they stand in the message (None for a URN); ``request_uri`` the whole
    Request-URI. ``privacy``, ``remote_party_id`` and ``priority`` are the values of those
    header fields. ``Remote-Party-ID`` and ``Priority: psap-callback`` are believed only
    from a trusted trunk (SPEC §2). Returns the facts and ``dialled_user`` without its
    CLIR code (still escaped if it was), to be put back into the Request-URI (and, by the
    same :func:`split_clir_code`, into ``To``).

    ``to_user`` is the user part of ``To`` as it stands. A *withhold* code there counts
    when the Request-URI has no code of its own: the subscriber dialled it, and a PBX
    that retargeted the request (RFC 3261 §8.1.1.2: ``To`` keeps what the user asked
    for) or stripped the code from the Request-URI only must not make the call
    presented. A *present* code in ``To`` alone never counts (in doubt, withhold).
    """
    clir_code: ClirCode | None = None
    rest = dialled_user
    if dialled_user is not None:
        rest, clir_code = split_clir_code(dialled_user, codes)
    to_code = None if to_user is None else split_clir_code(to_user, codes)[1]
    if clir_code is None and to_code == "withhold":
        clir_code = "withhold"
    emergency = is_sos_urn(request_uri) or (
        rest is not None and is_emergency(rest, emergency_numbers)
    )
    facts = CallFacts(
        trunk_in=trunk_in,
        caller=caller,
        emergency=emergency,
        clir_code=clir_code,
        privacy=privacy_tokens(privacy),
        rpid_privacy=rpid_privacy(remote_party_id) if trunk_in.trusted else None,
        psap_callback=trunk_in.trusted and is_psap_callback(priority),
    )
    return facts, rest
