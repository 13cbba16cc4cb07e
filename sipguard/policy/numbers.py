"""Numbers: CLIR codes, emergency recognition, E.164 normalisation, masking, CLI patterns.

Pure string functions (SPEC §1, §2, §3): no I/O, no clock, no SIP parser. The callers
hand in the user part of a Request-URI or ``To`` URI, or the number of a ``tel:`` URI,
as it stands in the message (percent-escaped or not) and get strings back.

The order of work on a dialled string is the one of SPEC §3::

    rest, code = split_clir_code(user, codes)        # '#31#112' -> ('112', 'withhold')
    emergency = is_emergency(rest, emergency_numbers) or is_sos_urn(request_uri)
    callee = None if emergency else to_e164(rest, trunk.numbering)

so that ``112`` is recognised before any normalisation could turn it into ``+31112``.
"""

from __future__ import annotations

import re
from collections.abc import Collection, Iterable
from functools import lru_cache
from typing import Literal
from urllib.parse import unquote

from sipguard.config.model import ClirCodes, Numbering

__all__ = [
    "ClirCode",
    "clean_number",
    "cli_matches",
    "cli_pattern_can_match",
    "is_e164",
    "is_emergency",
    "is_sos_urn",
    "mask",
    "split_clir_code",
    "to_e164",
    "unescape_user",
]

ClirCode = Literal["withhold", "present"]

_HEX = frozenset("0123456789abcdefABCDEF")

# RFC 3966 visual-separator ("-" / "." / "(" / ")"), plus the space that people and some
# PBXs put in dialled strings (never valid in a URI, but harmless to drop here).
_VISUAL = str.maketrans("", "", "-.() ")

# E.164 (ITU-T E.164 §6): at most 15 digits, country codes never start with 0. Anything
# shorter than 6 digits is a short code or a typo, not an international number.
_E164 = re.compile(r"\+[1-9][0-9]{5,14}")

# RFC 5031 §4.1: service = top-level *("." sub-service); a label is letters, digits and
# inner hyphens. The URN scheme and NID are case-insensitive (RFC 8141 §3.1), and RFC 5031
# service labels are compared case-insensitively too.
_SOS_URN = re.compile(
    r"urn:service:sos(?:\.[a-z0-9](?:[a-z0-9-]*[a-z0-9])?)*",
    re.IGNORECASE,
)


def unescape_user(s: str) -> str:
    """Percent-decode ``s`` once (RFC 3261 §19.1.2 escapes); invalid escapes stay literal.

    ``'%2331%23112'`` -> ``'#31#112'``; ``'%zz1'`` -> ``'%zz1'``. Decoding is done once
    only, so ``'%2523'`` becomes ``'%23'``, never ``'#'``.
    """
    if "%" not in s:
        return s
    return unquote(s, errors="replace")


def split_clir_code(dialled_user: str, codes: ClirCodes) -> tuple[str, ClirCode | None]:
    """Remove a leading per-call CLIR code from a dialled user part (SPEC §3 steps 2, 3).

    ``dialled_user`` is the user part as it stands in the message or already unescaped:
    each character of the code may independently be raw or a ``%XX`` escape in either hex
    case (``#31#``, ``%2331%23``, ``%2331#``). The rest is returned exactly as it was
    (still escaped if it was), with the code found, or the input unchanged and ``None``.
    The longer code is tried first, so that two codes where one is a prefix of the other
    still work; an empty code in the configuration never matches. Codes repeated or
    mixed at the start are all removed; if any of them withholds, the result is
    ``withhold``.
    """
    candidates: list[tuple[str, ClirCode]] = [
        (codes.withhold, "withhold"),
        (codes.present, "present"),
    ]
    candidates.sort(key=lambda c: -len(c[0]))
    found: ClirCode | None = None
    rest = dialled_user
    # several codes in a row (``#31##31#112``, ``*31##31#…``) are all removed, so that
    # the number behind them is what is checked for an emergency and billed; withholding
    # wins over presenting, whatever the order (the safer reading of a mixed dial)
    while True:
        for code, kind in candidates:
            if code:
                end = _match_prefix(rest, code)
                if end >= 0:
                    rest = rest[end:]
                    if found != "withhold":
                        found = kind
                    break
        else:
            return rest, found


def _match_prefix(s: str, code: str) -> int:
    """Length of the prefix of ``s`` that spells ``code`` (raw or escaped chars), or -1."""
    i = 0
    n = len(s)
    for c in code:
        if i < n and s[i] == c:
            i += 1
        elif (
            i + 2 < n
            and s[i] == "%"
            and s[i + 1] in _HEX
            and s[i + 2] in _HEX
            and chr(int(s[i + 1 : i + 3], 16)) == c
        ):
            i += 3
        else:
            return -1
    return i


def clean_number(user: str) -> str:
    """A dialled or calling number as digits (with its ``+``), ready to compare.

    Percent-decodes once, drops user parameters (``;phone-context=…``, ``;isub=…``: RFC
    3966 parameters also appear in the user part of a ``user=phone`` SIP URI) and the
    visual separators. ``'%2B31 (20) 123-4567;phone-context=x'`` -> ``'+31201234567'``.
    The result is not validated: see :func:`to_e164`.
    """
    s = unescape_user(user)
    semi = s.find(";")
    if semi >= 0:
        s = s[:semi]
    return s.translate(_VISUAL)


def is_emergency(dialled: str, emergency_numbers: Collection[str]) -> bool:
    """Whether the dialled string is one of the configured emergency numbers.

    ``dialled`` is the user part (or ``tel:`` number) after :func:`split_clir_code` and
    BEFORE any normalisation. The match is exact on :func:`clean_number` of it: ``112``,
    ``1-1-2`` and ``112;phone-context=+31`` are emergency calls when ``112`` is configured;
    ``+112``, ``0112``, ``1120`` and ``+31112`` are not. Helplines (113, 116xxx) are not
    emergency numbers unless the operator configures them: their callers rely on
    withholding their number.
    """
    return bool(dialled) and clean_number(dialled) in emergency_numbers


def is_sos_urn(uri: str) -> bool:
    """Whether ``uri`` is ``urn:service:sos`` or one of its sub-services (RFC 5031 §4.2).

    ``urn:service:sos.fire`` and ``URN:Service:SOS`` are; ``urn:service:sosx``,
    ``urn:service:sos.`` and ``urn:service:counseling`` are not. Angle brackets and
    surrounding blanks are tolerated.
    """
    s = uri.strip()
    if s.startswith("<") and s.endswith(">"):
        s = s[1:-1].strip()
    return _SOS_URN.fullmatch(s) is not None


def is_e164(number: str) -> bool:
    """Whether ``number`` is exactly ``+`` and 6 to 15 digits, the first one not 0."""
    return _E164.fullmatch(number) is not None


def to_e164(number: str, numbering: Numbering) -> str | None:
    """``number`` in E.164 (``+31201234567``) under a trunk's numbering plan, or None.

    After :func:`clean_number` (escapes, parameters and visual separators gone):

    - ``+CC…`` is kept as it is;
    - with the trunk's international prefix (``00…``) -> ``+…``;
    - with the trunk's national prefix (``0…``) -> ``+<country_code>…``;
    - anything else (a subscriber number without any prefix, a short code, letters) ->
      None: without a prefix we cannot know the area, and guessing would bill and present
      the wrong number. The caller decides what None means (``default_cli``, or the
      dialled string routed unchanged).

    A trunk with ``country_code: ""`` converts only ``+`` numbers (its numbering plan is
    unknown, so neither prefix is trusted). The result is validated by :func:`is_e164`.
    """
    s = clean_number(number)
    if s.startswith("+"):
        result = s
    else:
        cc = numbering.country_code
        if not cc:
            return None
        prefixes = [
            (numbering.international_prefix, "+"),
            (numbering.national_prefix, "+" + cc),
        ]
        prefixes.sort(key=lambda p: -len(p[0]))  # '00' (international) before '0'
        for prefix, replacement in prefixes:
            if prefix and s.startswith(prefix):
                result = replacement + s[len(prefix) :]
                break
        else:
            return None
    return result if _E164.fullmatch(result) else None


def mask(number: str, unmasked: Collection[str] = ()) -> str:
    """``number`` for a log line at INFO and above: ``+31201234567`` -> ``+3120123****``.

    Keeps at most the first 8 characters and always masks at least the last 4 (all of a
    number shorter than 5), keeping the length: ``+3112345`` -> ``+311****``, ``113`` ->
    ``***``. Numbers in ``unmasked`` (pass the configured emergency numbers: ``112``
    identifies nobody) are shown as they are.
    """
    if number in unmasked:
        return number
    keep = max(0, min(8, len(number) - 4))
    return number[:keep] + "*" * (len(number) - keep)


@lru_cache(maxsize=256)
def _compile_cli(patterns: tuple[str, ...]) -> re.Pattern[str] | None:
    if not patterns:
        return None
    parts = []
    for p in patterns:
        parts.append("".join(".*" if c == "*" else "." if c == "?" else re.escape(c) for c in p))
    return re.compile("|".join(f"(?:{p})" for p in parts))


def cli_matches(e164: str, patterns: Iterable[str]) -> bool:
    """Whether a calling number is within a trunk's ``allowed_cli`` (SPEC §2).

    Patterns are globs on E.164 numbers: ``*`` stands for any run of characters (also
    none), ``?`` for exactly one, everything else for itself: ``+3120123*``,
    ``+31201234??0``. The number is checked with :func:`is_e164` first, so a wildcard can
    only ever stand for digits (and the ``+`` for a pattern that starts with ``*``): ``*``
    alone admits every valid number. No pattern admits nothing. The compiled patterns are
    cached per tuple (pass the trunk's ``allowed_cli`` tuple itself).
    """
    if _E164.fullmatch(e164) is None:
        return False
    key = patterns if isinstance(patterns, tuple) else tuple(patterns)
    rx = _compile_cli(key)
    return rx is not None and rx.fullmatch(e164) is not None


def cli_pattern_can_match(pattern: str) -> bool:
    """Whether some valid E.164 number matches ``pattern`` (for configuration checks).

    ``3120123*`` (no ``+``), ``+0*``, ``+31a*`` and ``+1234567890123456*`` never match and
    are configuration errors. Works by walking the pattern over the positions of an E.164
    number (``+``, a digit 1-9, then digits) for every length from 7 to 16 characters.
    """
    # states: index into pattern; '*' may match nothing, so close over it
    n = len(pattern)

    def closure(states: set[int]) -> set[int]:
        out = set(states)
        stack = list(states)
        while stack:
            i = stack.pop()
            if i < n and pattern[i] == "*" and i + 1 not in out:
                out.add(i + 1)
                stack.append(i + 1)
        return out

    def accepts(c: str, allowed: str) -> bool:
        return c in "*?" or c in allowed

    states = closure({0})
    for pos in range(16):
        allowed = "+" if pos == 0 else "123456789" if pos == 1 else "0123456789"
        nxt: set[int] = set()
        for i in states:
            if i < n and accepts(pattern[i], allowed):
                nxt.add(i if pattern[i] == "*" else i + 1)
        states = closure(nxt)
        if not states:
            return False
        if pos >= 6 and n in states:
            return True
    return False
