"""The caller's identity and the privacy decision for a new INVITE (SPEC §2, §3).

Pure functions on a parsed A-leg INVITE and the trunk values: who is calling (with
anti-spoofing), what was dialled (CLIR code removed, emergency detected before any
normalisation), and the decision. The B-leg identity headers are then *built* from the
result by :func:`identity_headers`; nothing of the A-leg's identity is copied.
"""

from __future__ import annotations

from dataclasses import dataclass

from sipguard.cdr.record import is_cdr_number
from sipguard.config.model import Config, Trunk
from sipguard.policy.decision import CallFacts, Decision, decide, facts_from
from sipguard.policy.headers import anonymous_from, presented_identity
from sipguard.policy.numbers import clean_number, cli_matches, is_e164, to_e164
from sipguard.sip.errors import SipError
from sipguard.sip.message import Request
from sipguard.sip.uri import NameAddr, Uri


class CallRefusedError(Exception):
    """The call is refused before a B-leg exists: answer the A-leg with this status."""

    def __init__(self, status: int, reason: str, label: str, caller: str = "") -> None:
        super().__init__(f"{status} {reason}")
        self.status = status
        self.reason = reason
        self.label = label  # sipguard_rejected_total{reason}
        self.caller = caller  # the number the caller claimed, for the CDR ("" if none)
        self.callee = ""


@dataclass(frozen=True, slots=True)
class CallIdentity:
    caller: str  # E.164 as established (after anti-spoofing), as billed
    dialled: str  # the dialled user part as it goes on: CLIR code removed, still escaped
    callee: str  # the callee as billed: E.164 where the numbering allows, else as dialled
    facts: CallFacts
    decision: Decision
    spoofed: bool  # the asserted/claimed identity was replaced by default_cli


def _user_of(uri: Uri) -> str | None:
    if uri.scheme == "tel" or uri.is_sip:
        return uri.user
    return None


def _first_number(values: list[NameAddr], trunk: Trunk) -> str | None:
    """The first SIP or tel URI among ``values`` whose user part is a number."""
    for na in values:
        user = _user_of(na.uri)
        if user is None:
            continue
        num = to_e164(user, trunk.numbering)
        if num is not None:
            return num
    return None


def establish_caller(req: Request, trunk: Trunk, emergency: bool) -> tuple[str, bool]:
    """The caller's E.164 number (SPEC §2) and whether it was replaced (spoofing).

    Trusted trunk: ``P-Asserted-Identity`` (at most one SIP and one tel URI, RFC 3325
    §9.1), else ``From``. Untrusted trunk: ``P-Asserted-Identity`` and ``Remote-Party-ID``
    are never read; ``P-Preferred-Identity`` is a hint, else ``From``, checked against
    ``allowed_cli``; outside it, ``default_cli`` — or ``403`` under ``cli_policy:
    reject``, except for an emergency call.
    """
    if trunk.trusted:
        pai = req.name_addrs("p-asserted-identity")
        schemes = ["sip" if na.uri.scheme == "sips" else na.uri.scheme for na in pai]
        if len(pai) > 2 or len(set(schemes)) != len(schemes):
            if not emergency:
                raise SipError("more than one SIP or tel URI in P-Asserted-Identity")
            pai = []  # an emergency call is never refused: From (or default_cli) then
        number = _first_number(pai, trunk) or _first_number([req.from_], trunk)
        if number is not None:
            return number, False
        if trunk.default_cli:
            return trunk.default_cli, True
        if emergency:
            return "", True  # unknown: never refused, never presented
        raise CallRefusedError(403, "Forbidden", "no_caller_identity")
    claimed = _first_number(req.name_addrs("p-preferred-identity"), trunk)
    if claimed is None or not cli_matches(claimed, trunk.allowed_cli):
        claimed2 = _first_number([req.from_], trunk)
        if claimed2 is not None and cli_matches(claimed2, trunk.allowed_cli):
            claimed = claimed2
        else:
            claimed = None
    if claimed is not None:
        return claimed, False
    if trunk.cli_policy == "reject" and not emergency:
        raise CallRefusedError(403, "Forbidden", "cli_not_allowed", _claimed(req, trunk))
    if trunk.default_cli:
        return trunk.default_cli, True
    if emergency:
        return "", True  # unknown: never refused, never presented
    raise CallRefusedError(403, "Forbidden", "cli_not_allowed", _claimed(req, trunk))


def _claimed(req: Request, trunk: Trunk) -> str:
    """The number an untrusted caller claimed (for the CDR of a refused call), or ''."""
    return (
        _first_number(req.name_addrs("p-preferred-identity"), trunk)
        or _first_number([req.from_], trunk)
        or ""
    )


def billing_number(value: str) -> str:
    """``value`` if a CDR may carry it as caller or callee, else '' (SPEC §6: numbers)."""
    return value if is_cdr_number(value) else ""


def identify(req: Request, trunk: Trunk, config: Config) -> CallIdentity:
    """Everything the decision needs from a new INVITE, and the decision itself."""
    ruri = req.request_uri
    user = _user_of(ruri)
    # emergency first, on the dialled string before any normalisation (SPEC §3)
    facts0, rest = facts_from(
        trunk_in=trunk,
        caller="",
        request_uri=req.uri,
        dialled_user=user,
        codes=config.clir_codes,
        emergency_numbers=config.emergency_numbers,
        privacy=req.get_lines("privacy"),
        remote_party_id=req.get_lines("remote-party-id"),
        priority=req.get_lines("priority"),
        to_user=_user_of(req.to.uri),
    )
    dialled = rest if rest is not None else ""
    if rest is None:
        callee = req.uri  # urn:service:sos…
    elif facts0.emergency:
        callee = clean_number(rest)
    else:
        callee = to_e164(rest, trunk.numbering) or clean_number(rest)
    callee = billing_number(callee)
    try:
        caller, spoofed = establish_caller(req, trunk, facts0.emergency)
    except CallRefusedError as exc:
        exc.callee = callee
        raise
    facts = CallFacts(
        trunk_in=trunk,
        caller=caller,
        emergency=facts0.emergency,
        clir_code=facts0.clir_code,
        privacy=facts0.privacy,
        rpid_privacy=facts0.rpid_privacy,
        psap_callback=facts0.psap_callback,
    )
    return CallIdentity(caller, dialled, callee, facts, decide(facts), spoofed)


def identity_headers(
    ident: CallIdentity, from_tag: str, trunk_out: Trunk, config: Config
) -> list[tuple[str, str]]:
    """``From``, ``P-Asserted-Identity`` and ``Privacy`` of the B-leg INVITE (SPEC §3)."""
    decision = ident.decision
    presentable = is_e164(ident.caller)
    if decision.presentation == "restricted" or not presentable:
        out = [("From", anonymous_from(from_tag))]
        if trunk_out.trusted and presentable:
            out.append(
                (
                    "P-Asserted-Identity",
                    f"<{presented_identity(ident.caller, config.identity_domain)}>",
                )
            )
        # an emergency call whose caller is unknown has nothing to present, but asks for
        # no privacy either: id/user/header are dropped on an emergency call (SPEC §3)
        out.append(("Privacy", "none" if decision.emergency else "id"))
        return out
    uri = presented_identity(ident.caller, config.identity_domain)
    out = [("From", f"<{uri}>;tag={from_tag}")]
    out.append(("P-Asserted-Identity", f"<{uri}>"))
    if decision.emergency:
        out.append(("Privacy", "none"))
    return out
