"""Which A-leg headers reach the B-leg, and the identity headers sipguard builds itself.

SPEC §1.6 and §3. Headers are ``(name, value)`` pairs, ``name`` the canonical lower-case
long name (the SIP layer expands compact forms first). One pass, one dict lookup per
header on the common path, plus a precompiled search of its value for device identities.

What the B2BUA builds itself and never copies (:data:`NEVER_COPIED`): ``Via``, ``From``,
``To``, ``Call-ID``, ``CSeq``, ``Contact``, ``Max-Forwards`` (decremented by the B2BUA),
``Route``, ``Record-Route``, ``Content-Length``, ``Privacy``, ``P-Asserted-Identity``,
``P-Preferred-Identity``, ``Remote-Party-ID``, ``RSeq``/``RAck``, ``Proxy-Require``,
and headers naming the A-leg's dialogs (``Replaces``, ``Join``,
``Target-Dialog``) or its hops. The decision (:mod:`sipguard.policy.decision`) tells it
what to put in ``From``, ``Privacy`` and PAI (:func:`anonymous_from`,
:func:`presented_identity`).

What :func:`copy_headers` lets through, in this order:

1. never: :data:`NEVER_COPIED`; charging headers (:data:`CHARGING`); any header whose
   value carries a device or subscriber identity (:func:`carries_device_identity`:
   ``+sip.instance``, IMEI URNs, IMSI-derived ``3gppnetwork.org`` identities);
2. location (:data:`LOCATION`): only on an emergency call towards the emergency trunk
   (the emergency service is inside the trust domain, SPEC §1.6), never otherwise;
3. digest challenges and credentials (:data:`AUTH`): only when named in ``allowlist``;
4. towards an untrusted trunk: only :data:`DEFAULT_ALLOWLIST` and the trunk's own
   ``header_allowlist``; unknown and ``X-`` headers are dropped;
5. towards a trusted trunk: every other header (end-to-end);
6. on a restricted call, even towards a trusted trunk: the headers a user fills in that
   can carry identity (:data:`IDENTITY_HEADERS`, RFC 3323 §4.1) are removed, and
   ``History-Info``/``Diversion`` entries are anonymised (:func:`anonymise_history_info`,
   :func:`anonymise_diversion`).
7. from an untrusted trunk, ``Priority: psap-callback`` is dropped (never believed, so
   never passed on to where it would be);
8. ``Reason`` (RFC 3326) goes towards an untrusted trunk without its free-text ``text``
   (:func:`reason_without_text`), unless the trunk allowlists it.

The same function cleans responses going back to the caller (the callee's identity and
location never reach an untrusted caller): pass the caller's trunk and the callee's
restriction.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Final

from sipguard.sip.errors import SipError
from sipguard.sip.uri import split_commas

__all__ = [
    "ANONYMOUS_URI",
    "AUTH",
    "CHARGING",
    "DEFAULT_ALLOWLIST",
    "IDENTITY_HEADERS",
    "LOCATION",
    "LOCATION_AND_DEVICE",
    "NEVER_COPIED",
    "anonymise_diversion",
    "anonymise_history_info",
    "anonymous_from",
    "carries_device_identity",
    "copy_headers",
    "presented_identity",
    "reason_without_text",
    "split_entries",
]

ANONYMOUS_URI: Final = "sip:anonymous@anonymous.invalid"  # RFC 3323 §4.1.1.3, RFC 5079 §3

# End-to-end headers that carry no identity: what may go towards an untrusted trunk.
DEFAULT_ALLOWLIST: Final = frozenset(
    {
        "accept",
        "accept-encoding",
        "accept-language",
        "allow",
        "allow-events",
        "content-disposition",
        "content-encoding",
        "content-language",
        "content-type",
        "mime-version",
        "min-se",
        "require",
        "session-expires",
        "supported",
    }
)

# Dialog, transaction and hop headers: the B2BUA builds its own for the B-leg, or they
# name the A-leg's dialogs, hops or credentials (RFC 3261 §16.6, §22; RFC 3262; RFC 3891;
# RFC 3911; RFC 4538; RFC 3329; RFC 3327; RFC 3608; RFC 5502).
NEVER_COPIED: Final = frozenset(
    {
        "via",
        "from",
        "to",
        "call-id",
        "cseq",
        "contact",
        "max-forwards",
        "route",
        "record-route",
        "content-length",
        "privacy",
        "p-asserted-identity",
        "p-preferred-identity",
        "remote-party-id",
        "rseq",
        "rack",
        "authentication-info",
        "proxy-require",
        "unsupported",
        "replaces",
        "join",
        "target-dialog",
        "refer-to",
        "path",
        "service-route",
        "security-client",
        "security-server",
        "security-verify",
        "p-served-user",
        "p-associated-uri",
        "timestamp",
    }
)

# Headers a user fills in that can carry identity (RFC 3323 §4.1: Subject, Call-Info,
# Organization, User-Agent, Reply-To, In-Reply-To; and likewise SPEC §3), removed from a
# restricted call whatever the trust of the next trunk. Server is the responder's
# User-Agent. The asserted/preferred identities are in NEVER_COPIED already (the B2BUA
# builds PAI from the decision).
IDENTITY_HEADERS: Final = frozenset(
    {
        "subject",
        "call-info",
        "organization",
        "user-agent",
        "server",
        "reply-to",
        "in-reply-to",
        "referred-by",
        "alert-info",
        "warning",
        "identity",
        "identity-info",
    }
)

# Digest challenges and credentials (RFC 3261 §22): end-to-end only where the B2BUA relays
# authentication between the caller and the callee. They pass only when the caller of
# copy_headers names them in ``allowlist`` for that message and direction, whatever the
# trust of the next trunk.
AUTH: Final = frozenset(
    {"authorization", "proxy-authorization", "www-authenticate", "proxy-authenticate"}
)

# Location (RFC 7315 §4.4, RFC 7913, RFC 6442, 3GPP TS 24.229 §7.2.15): kept only towards
# the emergency trunk on an emergency call.
LOCATION: Final = frozenset(
    {
        "p-access-network-info",
        "p-last-access-network-info",
        "cellular-network-info",
        "geolocation",
        "geolocation-routing",
        "geolocation-error",
    }
)

# Charging and visited-network headers (RFC 7315 §4.3, §4.5): never leave the trust domain
# through a B2BUA that starts a new charging context.
CHARGING: Final = frozenset(
    {
        "p-charging-vector",
        "p-charging-function-addresses",
        "p-visited-network-id",
    }
)

# Every header name that never leaves the trust domain on an ordinary call. Device and
# subscriber identities are found by value (carries_device_identity), whatever the name.
LOCATION_AND_DEVICE: Final = LOCATION | CHARGING

# +sip.instance (RFC 5626 §4.1, often an IMEI URN: RFC 7254), IMEI URNs themselves
# (urn:gsma:imei:…, and the non-standard urn:imei:…), IMSI-derived IMS identities
# (<IMSI>@ims.mncXXX.mccYYY.3gppnetwork.org, 3GPP TS 23.003 §13.3) and the 3GPP
# "instance id" URN for devices without IMEI.
_DEVICE_ID: Final = re.compile(
    r"sip\.instance|urn:(?:gsma:)?imei|urn:gsma:imeisv|3gppnetwork\.org|"
    r"urn:3gpp:(?:imsi|instance)",
    re.IGNORECASE,
)

# How copy_headers treats a header name; absent: an ordinary end-to-end header.
_NEVER = 0
_LOCATION = 1
_IDENTITY = 2
_HISTORY = 3
_DIVERSION = 4
_AUTH = 5
_PRIORITY = 6
_REASON = 7

_CLASS: Final[dict[str, int]] = {
    **dict.fromkeys(NEVER_COPIED, _NEVER),
    **dict.fromkeys(CHARGING, _NEVER),
    **dict.fromkeys(LOCATION, _LOCATION),
    **dict.fromkeys(IDENTITY_HEADERS, _IDENTITY),
    "history-info": _HISTORY,
    "diversion": _DIVERSION,
    **dict.fromkeys(AUTH, _AUTH),
    "priority": _PRIORITY,
    "reason": _REASON,
}


def carries_device_identity(value: str) -> bool:
    """Whether a header value names a device or subscriber (IMEI, +sip.instance, IMSI)."""
    return _DEVICE_ID.search(value) is not None


def copy_headers(
    headers: Iterable[tuple[str, str]],
    *,
    towards_trusted: bool,
    restricted: bool,
    emergency_to_emergency_trunk: bool = False,
    allowlist: frozenset[str] = frozenset(),
    anonymise_history: bool = False,
    from_trusted: bool = True,
) -> list[tuple[str, str]]:
    """The A-leg headers to put into the B-leg message, in their order (see module doc).

    ``allowlist`` is the next trunk's own ``header_allowlist`` (lower-case names), added
    to :data:`DEFAULT_ALLOWLIST` towards an untrusted trunk; it can never let through a
    header that is never copied, location, or a device identity. It is also the only way
    for :data:`AUTH` headers through, towards any trunk (a B2BUA relaying digest
    authentication adds them for the message and direction concerned).
    ``emergency_to_emergency_trunk``: an emergency call towards its emergency trunk, where
    the location headers go too. ``anonymise_history``: ``Privacy: history`` (RFC 7044
    §10.1) asks for ``History-Info`` anonymity also on a call that presents its number.
    ``from_trusted``: the message comes from a trusted trunk. From an untrusted one,
    ``Priority: psap-callback`` is never believed (SPEC §2), so it is not passed on
    either, where the next hop would believe it and let the call through its
    anonymous-call rejection (RFC 7090, Security Considerations: a provider removes the
    PSAP call-back marking it cannot verify).
    """
    out: list[tuple[str, str]] = []
    classes = _CLASS
    default = DEFAULT_ALLOWLIST
    for name, raw in headers:
        value = raw
        key = name.lower()
        cls = classes.get(key)
        if cls == _NEVER:
            continue
        if cls == _LOCATION:
            if not emergency_to_emergency_trunk:
                continue
        elif cls == _AUTH:
            if key not in allowlist:
                continue
        elif cls == _REASON:
            if not towards_trusted and key not in allowlist:
                # the cause says why (RFC 3326); its text= is free text
                value = reason_without_text(value)
                if not value:
                    continue
        else:
            if not towards_trusted and key not in default and key not in allowlist:
                continue
            if cls == _IDENTITY:
                if restricted:
                    continue
            elif cls == _HISTORY:
                if restricted or anonymise_history:
                    value = ", ".join(anonymise_history_info([value]))
            elif cls == _DIVERSION and restricted:
                value = ", ".join(anonymise_diversion([value]))
            elif cls == _PRIORITY and not from_trusted and value.strip().lower() == "psap-callback":
                continue
        if _DEVICE_ID.search(value) is not None:
            continue
        out.append((name, value))
    return out


def split_entries(value: str) -> list[str]:
    """Split a header value at commas outside quoted strings and ``<…>`` (RFC 3261 §7.3.1).

    The SIP core's splitter, made lenient for policy use: empty entries are skipped, and
    a value with unbalanced quotes is one entry (it can only be filtered as a whole).
    """
    try:
        items = split_commas(value)
    except SipError:
        items = [value.strip()]
    return [item for item in items if item]


# A parameter value kept in an anonymised entry: a token (RFC 3261 §25.1), so that no
# quoted string or URI in a parameter can carry an identity through.
_PARAM_VALUE = re.compile(r"[A-Za-z0-9.!%*_+`'~-]*")


def _anonymise(values: Iterable[str], keep: frozenset[str]) -> list[str]:
    out: list[str] = []
    for value in values:
        for entry in split_entries(value):
            close = entry.rfind(">")
            tail = entry[close + 1 :] if close >= 0 and "<" in entry[:close] else ""
            kept = [ANONYMOUS_URI.join("<>")]
            for part in tail.split(";"):
                pname, eq, pval = part.partition("=")
                pname = pname.strip().lower()
                pval = pval.strip()
                if pname in keep and _PARAM_VALUE.fullmatch(pval):
                    kept.append(f"{pname}={pval}" if eq else pname)
            out.append(";".join(kept))
    return out


_REASON_PROTOCOL = re.compile(r"[A-Za-z0-9.!%*_+`'~-]{1,32}")
_CAUSE = re.compile(r"[0-9]{1,5}")
_QUOTED = re.compile(r'"(?:[^"\\]|\\.)*"?')


def reason_without_text(value: str) -> str:
    """A ``Reason`` value with only each entry's protocol and cause (RFC 3326 §2).

    ``Q.850;cause=16;text="Alice hung up"`` -> ``Q.850;cause=16``. The ``text`` (free
    text, which can name a person or a number) and every other parameter go; an entry
    whose protocol or cause is not a plain token goes whole. ``""`` when none is left.
    """
    out: list[str] = []
    for entry in split_entries(value):
        protocol, _, params = entry.partition(";")
        protocol = protocol.strip()
        if _REASON_PROTOCOL.fullmatch(protocol) is None:
            continue
        cause = None
        for part in _QUOTED.sub('""', params).split(";"):
            pname, _, pval = part.partition("=")
            if pname.strip().lower() == "cause" and _CAUSE.fullmatch(pval.strip()):
                cause = pval.strip()
                break
        if cause is not None:
            out.append(f"{protocol};cause={cause}")
    return ", ".join(out)


_HISTORY_PARAMS: Final = frozenset({"index", "rc", "mp", "np"})
_DIVERSION_PARAMS: Final = frozenset({"reason", "counter", "limit", "privacy", "screen"})


def anonymise_history_info(values: Iterable[str]) -> list[str]:
    """History-Info entries with every target replaced by the anonymous URI (RFC 7044).

    One output entry per input entry (values may hold several, comma-separated), so that
    the indexes still form their tree: ``"Bob" <sip:bob@x?Reason=SIP%3Bcause%3D302>;
    index=1.1;rc=1`` -> ``<sip:anonymous@anonymous.invalid>;index=1.1;rc=1``. Only the
    ``index``, ``rc``, ``mp`` and ``np`` parameters with token values are kept; display
    names, URI parameters and the embedded ``Reason`` (its ``text`` is free text) go.
    """
    return _anonymise(values, _HISTORY_PARAMS)


def anonymise_diversion(values: Iterable[str]) -> list[str]:
    """Diversion entries with every diverting party anonymous (RFC 5806 §4).

    Keeps the ``reason``, ``counter``, ``limit``, ``privacy`` and ``screen`` parameters
    with token values (so billing still sees a forwarded call and why):
    ``<sip:+31201234567@x>;reason=unconditional;counter=1`` ->
    ``<sip:anonymous@anonymous.invalid>;reason=unconditional;counter=1``.
    """
    return _anonymise(values, _DIVERSION_PARAMS)


_TAG = re.compile(r"[A-Za-z0-9.!%*_+`'~-]+")
_E164 = re.compile(r"\+[1-9][0-9]{5,14}")
_HOST = re.compile(r"[A-Za-z0-9.-]+|\[[0-9A-Fa-f:.]+\]")


def anonymous_from(tag: str) -> str:
    """The ``From`` value of a restricted call (RFC 3323 §4.1.1.3, SPEC §3).

    ``anonymous_from("a1b2")`` -> ``"Anonymous" <sip:anonymous@anonymous.invalid>;tag=a1b2``.
    Raises ValueError for a tag that is not a token (our own misuse).
    """
    if _TAG.fullmatch(tag) is None:
        raise ValueError(f"invalid From tag: {tag!r}")
    return f'"Anonymous" <{ANONYMOUS_URI}>;tag={tag}'


def presented_identity(e164: str, identity_domain: str) -> str:
    """The URI presenting a caller (``From`` and PAI of an allowed call, SPEC §3).

    ``presented_identity("+31201234567", "sip.example.net")`` ->
    ``sip:+31201234567@sip.example.net;user=phone``. Raises ValueError unless ``e164``
    is an E.164 number and ``identity_domain`` a host name or address.
    """
    if _E164.fullmatch(e164) is None:
        raise ValueError(f"not an E.164 number: {e164!r}")
    if _HOST.fullmatch(identity_domain) is None:
        raise ValueError(f"invalid identity domain: {identity_domain!r}")
    return f"sip:{e164}@{identity_domain};user=phone"
