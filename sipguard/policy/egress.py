"""The egress check: does a message carry a withheld caller's number or address? (pure)

The last line of defence for privacy (SPEC §8 "Fail closed on a leak"): before a message
leaves towards an untrusted trunk on a withheld call, its bytes are searched for what
identifies the caller. The needles are built once per call (:func:`build_needles`), and
:func:`check` searches one message for them, bytes-level, and names where the first hit
is: a header name (lower case), ``request-uri``, ``reason-phrase`` or ``body``.

**Numbers.** The caller's number is searched in every form it takes in a message: E.164
(``+31201234567``, also ``%2B31201234567``), digits only (``31201234567``), with the
international prefix (``0031201234567``), national (``0201234567``), and the national
significant number alone (``201234567``), under the numbering plan of each trunk given
(the caller's and the callee's). Every form ends with the same digits, so one
``bytes.find`` per number looks for them; a hit counts only where the whole **digit
run** around it (the maximal sequence of digits, bounded by non-digits on both sides) is
one of the forms. That anchoring is what keeps random ids apart: our branches, tags and
Call-IDs are 80 bits of hex, and a digit run inside hex equals a given 9-digit form with a
probability of about 10⁻⁹ per run, where an unanchored substring search would match a
number's short tail all the time. The same search runs a second time over a copy without
visual separators (``-``, ``.``, ``(``, ``)``, space: RFC 3966), so that ``+31 20
123-4567`` is found too; a number glued to other digits only by a separator (an IP
address after it) is still found by the first pass.

**Short numbers.** A form shorter than :data:`MIN_DIGITS` digits (a national number of a
short E.164 number, a port, a CSeq, a Content-Length all look alike at that length) is
searched only as ``+`` and digits, where the ``+`` makes it a number; shorter forms
without it are not searched. A caller calling its own number (voicemail), whose forms
are then the callee's as well, has no number needles: the callee learns nothing.

**Addresses.** IPv4 addresses match where no digit or dot continues them on either side
(``127.0.0.3`` is not in ``127.0.0.30``); IPv6 addresses (compressed and full forms) and
host names case-insensitively, where no hex digit or colon (IPv6) or name character (host
names) continues them. An address equal to the host the message is sent to (``skip``) is
never a hit: a peer knows its own address. A host name needs a dot (``localhost`` or
``pbx`` alone would match words). Addresses are searched in the start line and
the headers; in the body only with ``in_body`` (the call's media anchored, so the SDP
carries the relay's addresses): with ``media: pass`` the caller's media address in the
SDP is passed on by the operator's choice (SPEC §1.5), and it is often the very address
the caller signals from.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from functools import lru_cache

from sipguard.config.model import Numbering

__all__ = ["MIN_DIGITS", "Needles", "NumberNeedle", "build_needles", "check", "find_hit"]

# the shortest form of a number searched without its '+' (see the module docstring)
MIN_DIGITS = 7

_SEPARATORS = b"-.() "
_DIGITS = frozenset(b"0123456789")
_DIGITS_DOT = frozenset(b"0123456789.")
_HEX_COLON = frozenset(b"0123456789abcdef:.")
_NAME = frozenset(b"abcdefghijklmnopqrstuvwxyz0123456789-")
_NAME_DOT = _NAME | frozenset(b".")
_HEADER_NAME = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz-")

_V4, _V6, _HOST = 0, 1, 2


class NumberNeedle:
    """One number in all its forms: ``tail`` (the digits every form ends with) is what is
    searched; a hit counts where its digit run is in ``forms``, or in ``plus_forms`` right
    after a ``+`` (or ``%2B``)."""

    __slots__ = ("forms", "plus_forms", "tail")

    def __init__(self, tail: bytes, forms: frozenset[bytes], plus_forms: frozenset[bytes]):
        self.tail = tail
        self.forms = forms
        self.plus_forms = plus_forms


class Needles:
    """What identifies the caller of one call, ready to search (built once per call)."""

    __slots__ = ("addresses", "in_body", "lower", "numbers")

    def __init__(
        self,
        numbers: tuple[NumberNeedle, ...],
        addresses: tuple[tuple[bytes, int], ...],
        in_body: bool,
    ) -> None:
        self.numbers = numbers
        self.addresses = addresses  # (lower-case text, kind)
        self.in_body = in_body  # search the addresses in the body too (media anchored)
        # a lower-cased copy of a message is needed only for names and IPv6 addresses
        self.lower = any(kind != _V4 for _, kind in addresses)

    def __bool__(self) -> bool:
        return bool(self.numbers or self.addresses)


@lru_cache(maxsize=1024)
def number_forms(e164: str, numberings: tuple[Numbering, ...]) -> NumberNeedle | None:
    """The forms of an E.164 number (``+`` and digits) under each numbering plan, or None
    if it is no E.164 number. Kept for the numbers seen last (callers call again)."""
    if not (e164.startswith("+") and e164[1:].isdigit() and e164[1:].isascii()):
        return None
    digits = e164[1:]
    forms = {digits}
    for plan in numberings:
        if plan.international_prefix.isdigit():
            forms.add(plan.international_prefix + digits)
        cc = plan.country_code
        if cc and digits.startswith(cc) and len(digits) > len(cc):
            nsn = digits[len(cc) :]
            forms.add(nsn)
            if plan.national_prefix.isdigit():
                forms.add(plan.national_prefix + nsn)
    long_forms = frozenset(f.encode() for f in forms if len(f) >= MIN_DIGITS)
    plus = frozenset({digits.encode()}) - long_forms
    return NumberNeedle(_common_tail(long_forms | plus), long_forms, plus)


def _common_tail(forms: frozenset[bytes]) -> bytes:
    """The longest run of digits that every form ends with (what one find looks for)."""
    tail = min(forms, key=len)
    while tail and not all(f.endswith(tail) for f in forms):
        tail = tail[1:]
    return tail


@lru_cache(maxsize=1024)
def _address(text: str) -> tuple[tuple[bytes, int], ...]:
    """The searchable forms of one host (an IP address in its forms, or a name); kept for
    the hosts seen last (peers, ours)."""
    host = text.strip().strip("[]").lower()
    if not host or not host.isascii():
        return ()
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return ((host.encode(), _HOST),) if "." in host else ()
    if ip.is_unspecified:
        return ()
    if isinstance(ip, ipaddress.IPv4Address):
        return ((str(ip).encode(), _V4),)
    out = {str(ip), ip.exploded, host}
    if ip.ipv4_mapped is not None:
        return ((str(ip.ipv4_mapped).encode(), _V4),)
    return tuple((f.encode(), _V6) for f in sorted(out))


def build_needles(
    numbers: Iterable[str],
    numberings: Iterable[Numbering],
    addresses: Iterable[str],
    *,
    not_numbers: Iterable[str] = (),
    not_addresses: Iterable[str] = (),
    in_body: bool = False,
) -> Needles:
    """The needles of one call.

    ``numbers``: the caller's E.164 numbers (as established, and as its side claimed
    them); ``not_numbers``: the callee's (as dialled, ``+`` digits or digits): a number
    with a form among them is no needle (the caller called itself). ``addresses``: the
    caller side's hosts; ``not_addresses``: ours and the next hop's, never needles.
    """
    plans = tuple(numberings)
    callee_forms: set[bytes] = set()
    for n in not_numbers:
        digits = n.lstrip("+")
        if digits.isdigit() and digits.isascii():
            callee_forms.add(digits.encode())
    found: dict[bytes, NumberNeedle] = {}
    for number in numbers:
        needle = number_forms(number, plans)
        if needle is None or needle.tail in found:
            continue
        if callee_forms & (needle.forms | needle.plus_forms):
            continue
        found[needle.tail] = needle
    excluded = {f for a in not_addresses for f, _ in _address(a)}
    addrs: dict[bytes, int] = {}
    for a in addresses:
        for form, kind in _address(a):
            if form not in excluded:
                addrs[form] = kind
    return Needles(tuple(found.values()), tuple(addrs.items()), in_body)


# -- the search ------------------------------------------------------------------------------


def _number_at(buf: bytes, needle: NumberNeedle, end: int) -> int:
    """The first position of a hit of ``needle`` in ``buf[:end]``, or -1."""
    tail = needle.tail
    n = len(tail)
    i = buf.find(tail, 0, end)
    while i >= 0:
        stop = i + n
        if stop >= len(buf) or buf[stop] not in _DIGITS:
            start = i
            while start > 0 and buf[start - 1] in _DIGITS:
                start -= 1
            run = buf[start:stop]
            if run in needle.forms:
                return start
            if run in needle.plus_forms and (
                buf[start - 1 : start] == b"+" or buf[max(0, start - 3) : start].upper() == b"%2B"
            ):
                return start
        i = buf.find(tail, i + 1, end)
    return -1


def _address_at(buf: bytes, form: bytes, kind: int, end: int) -> int:
    n = len(form)
    i = buf.find(form, 0, end)
    while i >= 0:
        before = buf[i - 1] if i > 0 else 0x20
        after = buf[i + n] if i + n < len(buf) else 0x20
        after2 = buf[i + n + 1] if i + n + 1 < len(buf) else 0x20
        if kind == _V4:
            ok = (
                before not in _DIGITS_DOT
                and after not in _DIGITS
                and not (after == 0x2E and after2 in _DIGITS)
            )
        elif kind == _V6:
            ok = before not in _HEX_COLON and after not in _HEX_COLON
        else:
            ok = (
                before not in _NAME_DOT
                and after not in _NAME
                and not (after == 0x2E and after2 in _NAME)
            )
        if ok:
            return i
        i = buf.find(form, i + 1, end)
    return -1


def find_hit(data: bytes, needles: Needles, skip: tuple[str, ...] = ()) -> tuple[str, str] | None:
    """Where ``data`` first carries a needle, and what: ``(where, "number"|"address")``,
    or None. ``skip``: hosts the receiver knows as its own (the host the message is sent
    to, say), never a hit."""
    hits: list[tuple[int, bytes, str]] = []  # (position, the buffer searched, kind)
    if needles.numbers:
        stripped = data.translate(None, _SEPARATORS)
        for nn in needles.numbers:
            for buf in (data, stripped):
                at = _number_at(buf, nn, len(buf))
                if at >= 0:
                    hits.append((at, buf, "number"))
                    break
    if needles.addresses:
        head = data.find(b"\r\n\r\n")
        end = len(data) if needles.in_body or head < 0 else head + 2
        buf = data.lower() if needles.lower else data
        for form, kind in needles.addresses:
            at = _address_at(buf, form, kind, end)
            if at >= 0 and not _skipped(form, skip):
                hits.append((at, buf, "address"))
    if not hits:
        return None
    # the earliest by line (buffers differ in offsets, never in lines)
    line, what = min((buf.count(b"\n", 0, at), what) for at, buf, what in hits)
    return _where(data, line), what


def _skipped(form: bytes, skip: tuple[str, ...]) -> bool:
    return any(form in (f for f, _ in _address(s)) for s in skip)


def check(data: bytes, needles: Needles, skip: tuple[str, ...] = ()) -> str | None:
    """Where ``data`` first carries the caller's number or address (a header name, lower
    case; ``request-uri``; ``reason-phrase``; ``body``), or None if nowhere."""
    hit = find_hit(data, needles, skip)
    return None if hit is None else hit[0]


def _where(data: bytes, line: int) -> str:
    """What line ``line`` of a message is: its start line, a header (by name), the body.

    A header's name is given only as letters and hyphens (a name that would carry digits,
    a number, is just ``header``)."""
    if line == 0:
        return "reason-phrase" if data.startswith(b"SIP/") else "request-uri"
    head_end = data.find(b"\r\n\r\n")
    start = 0
    for _ in range(line):
        start = data.find(b"\n", start) + 1
    if head_end >= 0 and start >= head_end + 4:
        return "body"
    colon = data.find(b":", start, data.find(b"\n", start))
    name = data[start:colon].strip() if colon > start else b""
    if name and len(name) <= 64 and all(c in _HEADER_NAME for c in name):
        return name.decode().lower()
    return "header"
