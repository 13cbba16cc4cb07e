"""The egress check: does a message carry a withheld caller's number or address? (pure)

The last line of defence for privacy (SPEC §8 "Fail closed on a leak"): before a message
leaves towards an untrusted trunk on a withheld call, its bytes are searched for what
identifies the caller. The needles are built once per call (:func:`build_needles`), and
:func:`check` searches one message for them, bytes-level, and names where the first hit
is: a header name (lower case), ``request-uri``, ``reason-phrase`` or ``body``.

**Numbers.** The caller's number is searched in every form it takes in a message: E.164
(``+31201234567``), digits only (``31201234567``), with the international prefix
(``0031201234567``), national (``0201234567``), the national prefix kept after the
country code (``+31 (0)20 ...``: ``310201234567``, ``00310201234567``), and the national
significant number alone (``201234567``), under the numbering plan of each trunk given
(the caller's and the callee's). Every form ends with the same digits, so one
``bytes.find`` per number looks for them; a hit counts only where the whole **digit
run** around it (the maximal sequence of digits, bounded by non-digits on both sides) is
one of the forms. That anchoring is what keeps random ids apart: our branches, tags and
Call-IDs are 80 bits of hex, and a digit run inside hex equals a given 9-digit form with a
probability of about 10⁻⁹ per run, where an unanchored substring search would match a
number's short tail all the time. Percent escapes are decoded first (``%2B31...``,
``%32%30...``; never into a line break, so that lines stay where they are). The search
runs a second time over a copy without separators (``-``, ``.``, ``(``, ``)``, space:
RFC 3966; and ``/``, tab, ``,``, ``_``, the no-break space), so that ``+31 20 123-4567``
is found too; a number glued to other digits only by a separator (an IP address after
it) is still found by the first pass. In that copy IPv4 literals are masked before the
separators go: our own ``20.123.45.67`` would otherwise read as ``201234567`` (the masked
copy is made only where a number's tail is in the plain one: masking only takes digits
away).

**Short numbers.** A form shorter than :data:`MIN_DIGITS` digits (a national number of a
short E.164 number, a port, a CSeq, a Content-Length all look alike at that length) is
searched only as ``+`` and digits, where the ``+`` makes it a number; shorter forms
without it are not searched. A caller calling its own number (voicemail), whose forms
are then the callee's as well, has no number needles: the callee learns nothing.

**Addresses.** IPv4 addresses match where no digit or dot continues them on either side
(``127.0.0.3`` is not in ``127.0.0.30``); IPv6 addresses (compressed and full forms) and
host names case-insensitively, where no hex digit or colon (IPv6) or name character (host
names) continues them. An address equal to the host the message is sent to (``skip``) is
never a hit: a peer knows its own address. What the receiver chose itself and we send
back to it is masked out by :func:`mask_receivers_own` before the search that counts (see
:mod:`sipguard.b2bua.egress`, "No oracle"). A host name needs a dot (``localhost`` or
``pbx`` alone would match words). Addresses are searched in the start line and
the headers; in the body only with ``in_body`` (the call's media anchored, so the SDP
carries the relay's addresses): with ``media: pass`` the caller's media address in the
SDP is passed on by the operator's choice (SPEC §1.5), and it is often the very address
the caller signals from.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable
from functools import lru_cache

from sipguard.config.model import Numbering

__all__ = [
    "MIN_DIGITS",
    "Needles",
    "NumberNeedle",
    "build_needles",
    "check",
    "find_hit",
    "mask_receivers_own",
]

# the shortest form of a number searched without its '+' (see the module docstring)
MIN_DIGITS = 7

# visual separators (RFC 3966) and what else people put between digits: '/', tab, ',', '_'
# and the no-break space (its UTF-8 bytes and its Latin-1 byte)
_SEPARATORS = b"-.() /\t,_\xa0\xc2"
# an IPv4 literal (no digit or dot around it): masked before the separators go, so that
# ``20.123.45.67`` never reads as the digits ``201234567``
_IPV4 = re.compile(rb"(?<![0-9.])[0-9]{1,3}(?:\.[0-9]{1,3}){3}(?![0-9]|\.[0-9])")
# a percent escape that is no line break (decoding keeps the lines where they are)
_ESCAPE = re.compile(rb"%(?!0[aAdD])([0-9a-fA-F]{2})")
_MASK = 0x7E  # '~': what a masked byte becomes (no digit, hex digit, name character or separator)
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
                national = plan.national_prefix + nsn
                forms.add(national)
                if len(national) >= MIN_DIGITS:
                    # "+31 (0)20 ...": the national prefix kept after the country code
                    forms.add(cc + national)
                    if plan.international_prefix.isdigit():
                        forms.add(plan.international_prefix + cc + national)
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
    text = data
    if b"%" in data:  # %32%30... and %2B31...: decoded (never into a line break)
        text = _ESCAPE.sub(lambda m: bytes((int(m.group(1), 16),)), data)
    if needles.numbers:
        stripped = text.translate(None, _SEPARATORS)
        masked = b""  # the same with IPv4 literals masked first: made on a hit only
        for nn in needles.numbers:
            at = _number_at(text, nn, len(text))
            if at >= 0:
                hits.append((at, text, "number"))
                continue
            if nn.tail not in stripped:
                continue  # every run of digits of the masked copy is in this one
            if not masked:
                masked = _IPV4.sub(_masked, text).translate(None, _SEPARATORS)
            at = _number_at(masked, nn, len(masked))
            if at >= 0:
                hits.append((at, masked, "number"))
    if needles.addresses:
        head = text.find(b"\r\n\r\n")
        end = len(text) if needles.in_body or head < 0 else head + 2
        buf = text.lower() if needles.lower else text
        for form, kind in needles.addresses:
            at = _address_at(buf, form, kind, end)
            if at >= 0 and not _skipped(form, skip):
                hits.append((at, buf, "address"))
    if not hits:
        return None
    # the earliest by line (buffers differ in offsets, never in lines)
    line, what = min((buf.count(b"\n", 0, at), what) for at, buf, what in hits)
    return _where(data, line), what


def _masked(m: re.Match[bytes]) -> bytes:
    return bytes((_MASK,)) * (m.end() - m.start())


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


# -- what the receiver chose itself ----------------------------------------------------------

# the headers a response copies from the request it answers (RFC 3261 §8.2.6.2): the
# receiver of our response wrote them (full and compact names)
_ECHOED = frozenset({b"via", b"v", b"from", b"f", b"to", b"t", b"cseq", b"call-id", b"i"})
# in a request of ours: the values the receiver's challenge (401/407) chose
_AUTH = frozenset({b"authorization", b"proxy-authorization"})
_AUTH_PARAM = re.compile(
    rb"(?i)\b(?:realm|nonce|opaque|uri|qop|algorithm)\s*=\s*(\"[^\"]*\"|[^,\s]*)"
)
# in a request of ours: numbers the receiver chose (its RSeq in our RAck, the Min-SE and
# session interval of its 422 or 2xx)
_NUMERIC = frozenset({b"rack", b"min-se", b"session-expires", b"x"})
_TAG = re.compile(rb"(?i);\s*tag\s*=\s*([^;,\s]*)")


def mask_receivers_own(data: bytes, targets: Iterable[str] = ()) -> bytes:
    """``data`` with what its receiver chose itself masked out (the same length and lines).

    A value the receiver wrote and we only send back to it tells it nothing; searched, it
    would be an oracle: a callee that guesses a withheld caller's number puts the guess
    in its To tag, and a blocked ACK tells it the guess was right. Masked: in a response,
    the headers copied from the request it answers (``Via``, ``From``, ``To``, ``CSeq``,
    ``Call-ID``); in a request with a ``To`` tag (within a dialog, or the ACK of a
    non-2xx, whose ``To`` is the response's): the ``To`` (the receiver's tag; the rest
    was checked in the INVITE, or the receiver wrote it), the Request-URI (its remote
    target, or the INVITE's) and the ``Route`` headers (its route set, or the INVITE's); a
    Request-URI that is one of ``targets`` (the receiver's Contact or a redirect's); the
    values of a digest challenge in ``Authorization`` (realm, nonce, opaque, uri, qop,
    algorithm); and the numbers of ``RAck``, ``Min-SE`` and ``Session-Expires``. The
    body, and every other header, is kept as it is.
    """
    head_end = data.find(b"\r\n\r\n")
    head_end = len(data) if head_end < 0 else head_end
    out = bytearray(data)
    response = data.startswith(b"SIP/")
    # the header lines: (name, start of the value, end of the line)
    lines: list[tuple[bytes, int, int]] = []
    first_end = data.find(b"\r\n", 0, head_end)
    first_end = head_end if first_end < 0 else first_end
    pos = first_end + 2
    while pos < head_end:
        end = data.find(b"\r\n", pos, head_end)
        end = head_end if end < 0 else end
        colon = data.find(b":", pos, end)
        if colon > pos:
            lines.append((data[pos:colon].strip().lower(), colon + 1, end))
        pos = end + 2

    def mask(start: int, end: int) -> None:
        out[start:end] = bytes((_MASK,)) * (end - start)

    if response:
        for name, start, end in lines:
            if name in _ECHOED:
                mask(start, end)
        return bytes(out)
    in_dialog = False
    for name, start, end in lines:
        if name in (b"to", b"t"):
            if _TAG.search(data, start, end) is not None:
                # with a tag: the receiver's tag, and the rest as the INVITE had it (checked
                # then) or as the receiver's non-2xx wrote it (the ACK copies its To)
                in_dialog = True
                mask(start, end)
        elif name in _AUTH:
            for m in _AUTH_PARAM.finditer(data, start, end):
                mask(m.start(1), m.end(1))
        elif name in _NUMERIC:
            i = start
            while i < end and data[i] in b" \t":
                i += 1
            j = i
            while j < end and data[j] in _DIGITS:
                j += 1
            mask(i, j)
            if name == b"rack":  # RSeq CSeq-number method: the RSeq is the receiver's
                k = j
                while k < end and data[k] not in _DIGITS:
                    k += 1
                while k < end and data[k] in _DIGITS:
                    k += 1
                mask(j, k)
    if in_dialog:
        for name, start, end in lines:
            if name == b"route":
                mask(start, end)
    sp1 = data.find(b" ", 0, first_end)
    sp2 = data.rfind(b" ", 0, first_end)
    if 0 < sp1 < sp2:
        uri = data[sp1 + 1 : sp2]
        if in_dialog or uri.decode("utf-8", "surrogateescape") in targets:
            mask(sp1 + 1, sp2)
    return bytes(out)
