"""URIs (RFC 3261 §19.1, RFC 3966 ``tel:``, RFC 5031 ``urn:service``) and name-addr.

The user part is kept as written (escaped); :attr:`Uri.user_unescaped` decodes it once,
so ``%2331%23`` reads as ``#31#`` and ``value%2541`` stays ``value%41``.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import FrozenInstanceError, dataclass
from types import FunctionType
from typing import ClassVar, Final, TypeVar

from sipguard.sip.errors import SipError

Params = tuple[tuple[str, str | None], ...]

_SCHEME_RE: Final = re.compile(r"[A-Za-z][A-Za-z0-9+\-.]*\Z")
# hostname, IPv4, or bracketed IPv6 (RFC 5118 §4.10: the 3-colon form is tolerated)
_HOST: Final = r"\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9](?:[A-Za-z0-9\-.]*[A-Za-z0-9.])?"
_HOST_RE: Final = re.compile(f"(?:{_HOST})\\Z")
_USER_BAD: Final = re.compile(r"[\x00-\x20\"<>\x7f@]")
_TOKEN: Final = r"[A-Za-z0-9\-.!%*_+`'~]"
_TOKEN_RE: Final = re.compile(_TOKEN + r"+\Z")
_PARAM_VALUE_BAD: Final = re.compile(r"[\x00-\x20\"<>,\x7f]")
_QUOTED_STRING_RE: Final = re.compile(r'"(?:[^"\\]|\\.)*"\Z', re.S)
_HEX: Final = "0123456789abcdefABCDEF"

# Fast paths for the common shapes; whatever they do not match takes the general code,
# which alone decides what is an error. Printable ASCII only, so that no Unicode
# whitespace or digit can make the two disagree (tests/test_sip_properties.py checks it).
# A parameter value: printable ASCII but SP " , ; < > (and, inside a URI, ? @).
_PVALUE: Final = r"[!#-+\--:=?-~]"
_URI_PVALUE: Final = r"[!#-+\--:=A-~]"
_PARAM_ITEM_RE: Final = re.compile(f";({_TOKEN}+)(?:=({_PVALUE}+))?(?=;|\\Z)")
_ONE_PARAM_RE: Final = re.compile(f"({_TOKEN}+)(?:=({_PVALUE}+))?\\Z")


def _sip_uri(g: str) -> str:
    """A sip/sips URI. ``g`` opens its groups (scheme, user, password, host, params,
    headers): ``"("`` to capture them or ``"(?:"``; the port is always captured."""
    return (
        f"{g}[Ss][Ii][Pp][Ss]?):"
        f'(?:{g}[^\\x00-\\x20"<>\\x7f@:]+)(?::{g}[^\\x00-\\x20"<>\\x7f@]*))?@)?'
        f"{g}{_HOST})"
        r"(?::([0-9]{1,5}))?"
        f"{g}(?:;{_TOKEN}+(?:={_URI_PVALUE}+)?)*)"
        f"(?:\\?{g}[!#-;=?-~]*))?"
    )


_SIP_URI_RE: Final = re.compile(_sip_uri("(") + r"\Z")


def unescape(text: str) -> str:
    """Decode ``%XX`` escapes once; a ``%`` not followed by two hex digits stays literal."""
    if "%" not in text:
        return text
    out: list[str] = []
    i, n = 0, len(text)
    while i < n:
        c = text[i]
        if c == "%" and i + 2 < n and text[i + 1] in _HEX and text[i + 2] in _HEX:
            out.append(chr(int(text[i + 1 : i + 3], 16)))
            i += 3
        else:
            out.append(c)
            i += 1
    return "".join(out)


def parse_params(text: str, what: str) -> Params:
    """``;a=b;c`` (leading ``;`` already removed) into ((name, value|None), ...).

    Names and values may have LWS around them; a value is a token-like word or a quoted
    string (which may hold ``;`` and ``,``).
    """
    if ";" not in text:
        m = _ONE_PARAM_RE.match(text)
        if m is not None:
            return (m.groups(),)  # type: ignore[return-value]  # (name, value or None)
    else:
        items = _PARAM_ITEM_RE.findall(";" + text)
        if len(items) == text.count(";") + 1:  # every parameter is of the plain shape
            return tuple([(k, v or None) for k, v in items])
    return _parse_params_general(text, what)


def _parse_params_general(text: str, what: str) -> Params:
    out: list[tuple[str, str | None]] = []
    for part in _split_params(text, what):
        name, eq, value = part.partition("=")
        name = name.strip(" \t")
        if not name or not _TOKEN_RE.match(name):
            raise SipError(f"malformed {what} parameter")
        if eq:
            value = value.strip(" \t")
            if value.startswith('"'):
                if not _QUOTED_STRING_RE.match(value):
                    raise SipError(f"unbalanced quotes in {what} parameter")
            elif not value or _PARAM_VALUE_BAD.search(value):
                raise SipError(f"malformed {what} parameter value")
            out.append((name, value))
        else:
            out.append((name, None))
    return tuple(out)


def _semi_params(text: str, what: str) -> Params:
    """:func:`parse_params` of a text that starts with its first ``;``."""
    n = text.count(";")
    if n == 1:
        m = _ONE_PARAM_RE.match(text, 1)
        if m is not None:
            return (m.groups(),)  # type: ignore[return-value]
    else:
        items = _PARAM_ITEM_RE.findall(text)
        if len(items) == n:
            return tuple([(k, v or None) for k, v in items])
    return parse_params(text[1:], what)


def _split_params(text: str, what: str) -> list[str]:
    """Split at ``;`` outside quoted strings."""
    if '"' not in text:
        return text.split(";")
    out: list[str] = []
    in_q = False
    start = i = 0
    n = len(text)
    while i < n:
        c = text[i]
        if in_q:
            if c == "\\":
                i += 1
            elif c == '"':
                in_q = False
        elif c == '"':
            in_q = True
        elif c == ";":
            out.append(text[start:i])
            start = i + 1
        i += 1
    if in_q:
        raise SipError(f"unbalanced quotes in {what} parameter")
    out.append(text[start:])
    return out


def format_params(params: Params) -> str:
    return "".join(f";{k}" if v is None else f";{k}={v}" for k, v in params)


def param(params: Params, name: str) -> str | None:
    """Value of a parameter (names compare case-insensitively); '' for a flag param."""
    name = name.lower()
    for k, v in params:
        if k == name or k.lower() == name:
            return "" if v is None else v
    return None


def _interpreted() -> bool:
    """False when mypyc compiled this module: its functions are then not Python functions."""
    return isinstance(_interpreted, FunctionType)


# How the parser builds the values it has just checked (Uri, NameAddr, and in message.py
# Via and CSeq). Interpreted, it fills the ``__slots__`` of a bare instance, which costs
# about half of what a frozen class's ``__init__`` does. Compiled by mypyc, the classes
# are native: only their ``__init__`` can build one, and it is then the fastest way (its
# ``object.__setattr__`` calls, written out, become plain stores).
_FILL_SLOTS: Final = _interpreted()
_new = object.__new__


def _slot_setter(cls: type, name: str) -> Callable[[object, object], None]:
    """The setter of a ``__slots__`` field, bypassing a frozen class's ``__setattr__``."""
    setter: Callable[[object, object], None] = vars(cls)[name].__set__
    return setter


@dataclass(frozen=True, slots=True)
class Uri:
    """A parsed URI. For ``sip``/``sips``: user, password, host, port, params, headers.

    For ``tel``: ``user`` is the number and ``params`` its parameters. Any other scheme
    (``urn:service:sos``, ``http``…) keeps its scheme-specific part in ``opaque``.
    """

    scheme: str  # lower-case
    user: str | None = None
    password: str | None = None
    host: str = ""
    port: int | None = None
    params: Params = ()
    headers: str | None = None
    opaque: str | None = None

    def __init__(
        self,
        scheme: str,
        user: str | None = None,
        password: str | None = None,
        host: str = "",
        port: int | None = None,
        params: Params = (),
        headers: str | None = None,
        opaque: str | None = None,
    ) -> None:
        # written out rather than generated by @dataclass: mypyc compiles this one
        object.__setattr__(self, "scheme", scheme)
        object.__setattr__(self, "user", user)
        object.__setattr__(self, "password", password)
        object.__setattr__(self, "host", host)
        object.__setattr__(self, "port", port)
        object.__setattr__(self, "params", params)
        object.__setattr__(self, "headers", headers)
        object.__setattr__(self, "opaque", opaque)

    @property
    def is_sip(self) -> bool:
        return self.scheme in ("sip", "sips")

    @property
    def user_unescaped(self) -> str | None:
        return None if self.user is None else unescape(self.user)

    def param(self, name: str) -> str | None:
        return param(self.params, name)

    def host_port(self, default: int = 5060) -> tuple[str, int]:
        """Host without IPv6 brackets, and port (the default where none is written)."""
        host = self.host[1:-1] if self.host.startswith("[") else self.host
        return host, self.port if self.port is not None else default

    def __str__(self) -> str:
        if self.opaque is not None:
            return f"{self.scheme}:{self.opaque}"
        if self.scheme == "tel":
            return f"tel:{self.user}{format_params(self.params)}"
        userinfo = ""
        if self.user is not None:
            userinfo = self.user + (f":{self.password}" if self.password is not None else "") + "@"
        port = f":{self.port}" if self.port is not None else ""
        hdrs = f"?{self.headers}" if self.headers is not None else ""
        return f"{self.scheme}:{userinfo}{self.host}{port}{format_params(self.params)}{hdrs}"

    def __reduce__(self) -> tuple[type[Uri], tuple[object, ...]]:
        # copy, deepcopy, pickle: also when compiled by mypyc, whose default state setter
        # would run into the frozen __setattr__
        return Uri, (
            self.scheme,
            self.user,
            self.password,
            self.host,
            self.port,
            self.params,
            self.headers,
            self.opaque,
        )


_uri_scheme = _slot_setter(Uri, "scheme")
_uri_user = _slot_setter(Uri, "user")
_uri_password = _slot_setter(Uri, "password")
_uri_host = _slot_setter(Uri, "host")
_uri_port = _slot_setter(Uri, "port")
_uri_params = _slot_setter(Uri, "params")
_uri_headers = _slot_setter(Uri, "headers")
_uri_opaque = _slot_setter(Uri, "opaque")


def _parse_port(text: str) -> int:
    """port = 1*DIGIT (RFC 3261 §25.1): leading zeros allowed, never int() a long string."""
    if not (text.isascii() and text.isdigit()):
        raise SipError("invalid port in URI")
    text = text.lstrip("0")
    if len(text) > 5 or not 0 < int(text or "0") <= 65535:
        raise SipError("invalid port in URI")
    return int(text)


def parse_host_port(text: str) -> tuple[str, int | None]:
    """``host[:port]`` with bracketed IPv6; the host is returned lower-cased."""
    if text.startswith("["):
        end = text.find("]")
        if end < 0:
            raise SipError("unterminated IPv6 reference")
        host, rest = text[: end + 1], text[end + 1 :]
        if rest and not rest.startswith(":"):
            raise SipError("invalid host")
        port = _parse_port(rest[1:]) if rest else None
    else:
        host, colon, port_s = text.partition(":")
        port = _parse_port(port_s) if colon else None
    if not _HOST_RE.match(host):
        raise SipError("invalid host")
    return host.lower(), port


# Both parse caches keep only small values (a bounded text with few parameters: a value
# with dozens of parameters is many objects, and a peer chooses what it sends) and at most
# NA_CACHE_ENTRIES of them, the oldest going first. Whatever a peer sends, each holds well
# under a MB and a few thousand objects, and evicting is one entry at a time.
#
# What a cache saves is the repeats within a transaction or two (the 180 and the 200 of an
# INVITE, its ACK): about seven new texts a call, so 256 entries cover tens of
# milliseconds even at thousands of calls a second. A BYE seconds later misses at any
# size that fits in memory, and so does a 200 after seconds of ringing. Measured at 2,500
# calls/s, 256 entries were no slower than 2,048 (0.316-0.328 CPU ms per call against
# 0.334, within the noise) and hold an eighth of the memory.
NA_CACHE_ENTRIES: Final = 256
NA_CACHE_TEXT: Final = 160
NA_CACHE_PARAMS: Final = 6


_V = TypeVar("_V")


class _Ring:
    """The keys of a parse cache in the order they were kept: the next slot is the oldest.

    Eviction is a dict deletion by key. Taking the oldest key as ``next(iter(cache))``
    instead walks over every entry deleted before it that the dict has not compacted yet:
    hundreds per call under load, 5% of the process at 1,500 calls/s.
    """

    __slots__ = ("keys", "pos")

    def __init__(self, size: int) -> None:
        self.keys: list[str | None] = [None] * size
        self.pos = 0


def _keep(cache: dict[str, _V], ring: _Ring, text: str, value: _V) -> None:
    """Keep a parsed ``value`` of ``text`` (not in ``cache``) if it is small, the oldest
    entry going first. Every key in ``cache`` has exactly one slot in ``ring``."""
    if len(text) <= NA_CACHE_TEXT and text.count(";") <= NA_CACHE_PARAMS:
        keys = ring.keys
        pos = ring.pos
        old = keys[pos]
        if old is not None:
            cache.pop(old, None)  # never fails: were the invariant broken, it heals
        keys[pos] = text
        pos += 1
        ring.pos = 0 if pos == len(keys) else pos
        cache[text] = value


# Parsed URIs by their text: the Request-URI of every in-dialog request is a Contact that
# came before, and a Uri is an immutable value.
_URI_CACHE: Final[dict[str, Uri]] = {}
_URI_RING: Final = _Ring(NA_CACHE_ENTRIES)


def parse_uri(text: str) -> Uri:
    """Parse a URI; raise :class:`SipError` (400) if it is malformed."""
    uri = _URI_CACHE.get(text)
    if uri is None:
        uri = _parse_uri(text)
        _keep(_URI_CACHE, _URI_RING, text, uri)
    return uri


def _parse_uri(text: str) -> Uri:
    m = _SIP_URI_RE.match(text)
    if m is not None:
        scheme, user, password, host, port_s, ptext, headers = m.groups()
        port = None
        if port_s is not None:
            port = int(port_s)
            if not 0 < port <= 65535:
                raise SipError("invalid port in URI")
        params = _semi_params(ptext, "URI") if ptext else ()
        if _FILL_SLOTS:
            uri = _new(Uri)
            _uri_scheme(uri, scheme.lower())
            _uri_user(uri, user)
            _uri_password(uri, password)
            _uri_host(uri, host.lower())
            _uri_port(uri, port)
            _uri_params(uri, params)
            _uri_headers(uri, headers)
            _uri_opaque(uri, None)
            return uri
        return Uri(scheme.lower(), user, password, host.lower(), port, params, headers)
    return _parse_uri_general(text)


def _parse_uri_general(text: str) -> Uri:
    scheme, colon, rest = text.partition(":")
    if not colon or not _SCHEME_RE.match(scheme):
        raise SipError("malformed URI")
    scheme = scheme.lower()
    if not rest or any(c in rest for c in " \t\r\n<>"):
        raise SipError("malformed URI")
    if scheme in ("sip", "sips"):
        return _parse_sip(scheme, rest)
    if scheme == "tel":
        number, _, ptext = rest.partition(";")
        if not number:
            raise SipError("empty tel number")
        return Uri(scheme, user=number, params=parse_params(ptext, "tel") if ptext else ())
    return Uri(scheme, opaque=rest)


def _parse_sip(scheme: str, rest: str) -> Uri:
    user = password = None
    at = rest.find("@")
    if at >= 0:
        userinfo, rest = rest[:at], rest[at + 1 :]
        user, colon, pw = userinfo.partition(":")
        password = pw if colon else None
        if not user or _USER_BAD.search(userinfo):
            raise SipError("malformed user part in URI")
    headers = None
    q = rest.find("?")
    if q >= 0:
        rest, headers = rest[:q], rest[q + 1 :]
    hostport, semi, ptext = rest.partition(";")
    host, port = parse_host_port(hostport)
    params = parse_params(ptext, "URI") if semi else ()
    return Uri(scheme, user, password, host, port, params, headers)


class NameAddr:
    """``"Display" <uri>;params`` or a bare ``uri;params`` (From, To, Contact, PAI …).

    An immutable value like :class:`Uri` (equality, hash, no assignment).
    :func:`parse_name_addr` checks a SIP URI's syntax at once but builds its :class:`Uri`
    only when :attr:`uri` is first read (``_uri_text`` is then known to parse): most
    messages are read for their tags only.
    """

    __slots__ = ("_uri", "_uri_text", "display", "params")
    # ClassVar: else mypyc would make it a per-instance attribute
    __match_args__: ClassVar[tuple[str, ...]] = ("uri", "display", "params")

    _uri: Uri | None
    _uri_text: str
    display: str | None  # as written, with quotes if it was quoted
    params: Params

    def __init__(
        self, uri: Uri | None, display: str | None = None, params: Params = (), uri_text: str = ""
    ) -> None:
        """``uri`` None: ``uri_text``, a URI the parser has checked, is parsed when read.

        ``object.__setattr__`` is written out (not aliased) so that mypyc compiles it to a
        plain store; it bypasses the ``__setattr__`` below that makes the value immutable.
        """
        if uri is None and not uri_text:
            raise ValueError("a NameAddr needs a Uri, or the text of one")
        object.__setattr__(self, "_uri", uri)
        object.__setattr__(self, "_uri_text", uri_text)
        object.__setattr__(self, "display", display)
        object.__setattr__(self, "params", params)

    @property
    def uri(self) -> Uri:
        u = self._uri
        if u is None:
            u = parse_uri(self._uri_text)
            object.__setattr__(self, "_uri", u)
        return u

    def __setattr__(self, name: str, value: object) -> None:
        raise FrozenInstanceError(f"cannot assign to field {name!r}")

    def __delattr__(self, name: str) -> None:
        raise FrozenInstanceError(f"cannot delete field {name!r}")

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, NameAddr):
            return NotImplemented
        return (self.uri, self.display, self.params) == (other.uri, other.display, other.params)

    def __hash__(self) -> int:
        return hash((self.uri, self.display, self.params))

    def __repr__(self) -> str:
        return f"NameAddr(uri={self.uri!r}, display={self.display!r}, params={self.params!r})"

    def __reduce__(self) -> tuple[type[NameAddr], tuple[Uri, str | None, Params]]:
        return NameAddr, (self.uri, self.display, self.params)  # copy, deepcopy, pickle

    @property
    def tag(self) -> str | None:
        for k, v in self.params:
            if k == "tag" or k.lower() == "tag":
                return "" if v is None else v
        return None

    def param(self, name: str) -> str | None:
        return param(self.params, name)

    @property
    def display_text(self) -> str | None:
        """The display name without quotes and quoted-pair escapes."""
        d = self.display
        if d is None:
            return None
        if d.startswith('"'):
            return re.sub(r"\\(.)", r"\1", d[1:-1], flags=re.S)
        return d

    def __str__(self) -> str:
        disp = f"{self.display} " if self.display else ""
        return f"{disp}<{self.uri}>{format_params(self.params)}"


_na_uri = _slot_setter(NameAddr, "_uri")
_na_uri_text = _slot_setter(NameAddr, "_uri_text")
_na_display = _slot_setter(NameAddr, "display")
_na_params = _slot_setter(NameAddr, "params")

_QUOTED_RE: Final = re.compile(r'"(?:[^"\\]|\\.)*"', re.S)
_LWS_RE: Final = re.compile(r"[ \t]+")
# The common ``"Display" <sip:…>;tag=…`` and ``Token words <…>`` shapes, ASCII only.
_DISPLAY: Final = (
    r'(?:("[ !#-\[\]-~]*(?:\\[ -~][ !#-\[\]-~]*)*")[ \t]*|'
    f"({_TOKEN}+(?:[ \\t]+{_TOKEN}+)*)[ \\t]*)?"
)
_NA_PARAMS: Final = r"(;[\t -~]*[!-~])?\Z"
_NAME_ADDR_RE: Final = re.compile(_DISPLAY + r"<([!#-;=?-~]+)>" + _NA_PARAMS)
# the same with a sip/sips URI checked in the same pass (its Uri is built when read);
# groups: quoted display, token display, the URI text, its port, header params
_NAME_ADDR_SIP_RE: Final = re.compile(_DISPLAY + "<(" + _sip_uri("(?:") + ")>" + _NA_PARAMS)


# Parsed name-addrs by their text. A dialog's From and To (and a peer's Contact) come
# again in the messages of the call, and a NameAddr is an immutable value: the same text
# is parsed once while it is among the most recent. Bounded as the URI cache is.
_NA_CACHE: Final[dict[str, NameAddr]] = {}
_NA_RING: Final = _Ring(NA_CACHE_ENTRIES)


def parse_name_addr(text: str) -> NameAddr:
    """Parse one name-addr or addr-spec with header parameters (RFC 3261 §20.10, §25.1)."""
    na = _NA_CACHE.get(text)
    if na is None:
        na = _parse_name_addr(text)
        _keep(_NA_CACHE, _NA_RING, text, na)
    return na


def _parse_name_addr(text: str) -> NameAddr:
    m = _NAME_ADDR_SIP_RE.match(text)
    if m is not None:
        quoted, words, uri_text, port, rest = m.groups()
        if port is not None and not 0 < int(port) <= 65535:
            raise SipError("invalid port in URI")
        params = _semi_params(rest, "header") if rest else ()
        if _FILL_SLOTS:
            na = _new(NameAddr)
            _na_uri(na, None)
            _na_uri_text(na, uri_text)
            _na_display(na, quoted or words)
            _na_params(na, params)
            return na
        return NameAddr(None, quoted or words, params, uri_text)
    m = _NAME_ADDR_RE.match(text)
    if m is not None:
        quoted, words, uri_text, rest = m.groups()
        params = parse_params(rest[1:], "header") if rest else ()
        return NameAddr(parse_uri(uri_text), quoted or words, params)
    return _parse_name_addr_general(text)


def _parse_name_addr_general(text: str) -> NameAddr:
    s = text.strip(" \t")  # LWS is SP and HTAB only (folding is undone already)
    display: str | None = None
    if s.startswith('"'):
        m = _QUOTED_RE.match(s)
        if m is None:
            raise SipError("unbalanced quotes in display name")
        display = m.group(0)
        s = s[m.end() :].lstrip(" \t")
        if not s.startswith("<"):
            raise SipError("display name without <URI>")
    lt = s.find("<")
    if lt >= 0:
        if display is None:
            token = s[:lt].strip(" \t")
            if token:
                if not all(_TOKEN_RE.match(w) for w in _LWS_RE.split(token)):
                    raise SipError("malformed display name")
                display = token
        gt = s.find(">", lt)
        if gt < 0:
            raise SipError("unterminated <URI>")
        uri_text = s[lt + 1 : gt].strip(" \t")
        rest = s[gt + 1 :].strip(" \t")
        uri = parse_uri(uri_text)
    else:
        # addr-spec: URI parameters are header parameters here (RFC 3261 §20)
        uri_text, semi, ptext = s.partition(";")
        rest = semi + ptext
        uri = parse_uri(uri_text.strip(" \t"))
        if uri.headers is not None:
            raise SipError("addr-spec with headers must be in <>")
    if rest:
        if not rest.startswith(";"):
            raise SipError("garbage after URI")
        params = parse_params(rest[1:], "header")
    else:
        params = ()
    return NameAddr(uri, display, params)


def split_commas(value: str) -> list[str]:
    """Split a header value at commas outside quotes and angle brackets (RFC 3261 §7.3.1)."""
    if "," not in value:
        value = value.strip(" \t")
        return [value] if value else []
    out: list[str] = []
    depth_lt = False
    in_q = False
    start = 0
    i = 0
    n = len(value)
    while i < n:
        c = value[i]
        if in_q:
            if c == "\\":
                i += 1
            elif c == '"':
                in_q = False
        elif c == '"':
            in_q = True
        elif c == "<":
            depth_lt = True
        elif c == ">":
            depth_lt = False
        elif c == "," and not depth_lt:
            out.append(value[start:i].strip(" \t"))
            start = i + 1
        i += 1
    if in_q:
        raise SipError("unbalanced quotes")
    out.append(value[start:].strip(" \t"))
    return out
