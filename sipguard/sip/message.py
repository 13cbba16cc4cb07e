"""SIP messages: parse and serialise (RFC 3261 §7, §20, §25), sans-IO.

Parsing is in two steps so that the hot path stays cheap: :func:`parse_message` frames the
message, reads the start line and cuts the header section into ``(name, value)`` pairs,
keeping every header in order with its raw value (folding undone); the typed views a
B2BUA needs (Via, From, To, CSeq, Contact, Privacy, P-Asserted-Identity …) are parsed on
first access and cached. The common shapes (an unfolded CRLF header section, a plain Via,
``"Name" <sip:…>;tag=…``, ``1 INVITE``) are read by single regular expressions; anything
else takes the general code, which alone decides errors (the property tests check that
both agree). ``benchmarks/parse.py`` measures it. :meth:`SipMessage.validate` forces
every typed view, so a caller that wants the whole message checked up front can have it.

A malformed message raises :class:`~sipguard.sip.errors.SipError`. When the message is a
request whose Via, From, To, Call-ID and CSeq can be read, the error carries a ready-made
response in :attr:`SipError.response` (400, 505, …); otherwise it is to be dropped.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable
from dataclasses import dataclass
from types import FunctionType
from typing import Final

from sipguard.sip.errors import MessageTooLarge, SipError
from sipguard.sip.uri import (
    NameAddr,
    Params,
    Uri,
    _new,
    _semi_params,
    _slot_setter,
    format_params,
    param,
    parse_host_port,
    parse_name_addr,
    parse_params,
    parse_uri,
    split_commas,
)

SIP_VERSION: Final = "SIP/2.0"
CRLF: Final = "\r\n"

# Compact forms: RFC 3261 §7.3.3 (i m e l c f s k t v) and later RFCs
# (x Session-Expires RFC 4028, o Event / u Allow-Events RFC 6665, r Refer-To RFC 3515,
# b Referred-By RFC 3892, a Accept-Contact / j Reject-Contact / d Request-Disposition
# RFC 3841, y Identity RFC 8224).
COMPACT_FORMS: Final[dict[str, str]] = {
    "i": "call-id",
    "m": "contact",
    "e": "content-encoding",
    "l": "content-length",
    "c": "content-type",
    "f": "from",
    "s": "subject",
    "k": "supported",
    "t": "to",
    "v": "via",
    "x": "session-expires",
    "o": "event",
    "u": "allow-events",
    "r": "refer-to",
    "b": "referred-by",
    "a": "accept-contact",
    "j": "reject-contact",
    "d": "request-disposition",
    "y": "identity",
    "n": "identity-info",
}

# Header name as written -> index key (lower-case long form). A bounded memo: the names
# come from the network.
_KEYS: Final[dict[str, str]] = {}
_KEYS_MAX: Final = 4096


def _header_key(name: str) -> str:
    key = name.lower()
    key = COMPACT_FORMS.get(key, key)
    if len(_KEYS) < _KEYS_MAX and len(name) <= 64:
        _KEYS[name] = key
    return key


# Whether the parser fills the slots of bare Via and CSeq instances (interpreted) or calls
# their constructors (compiled by mypyc, whose functions are not Python functions): see
# uri._FILL_SLOTS. Decided per module, so that a module compiled alone still works.
_FILL_SLOTS: Final = isinstance(_header_key, FunctionType)


# Headers whose value may hold several comma-separated entries (RFC 3261 §7.3.1). The
# others (From, To, Call-ID, CSeq, Date, the authentication headers …) are never split.
LIST_HEADERS: Final = frozenset(
    {
        "via",
        "contact",
        "route",
        "record-route",
        "supported",
        "require",
        "proxy-require",
        "unsupported",
        "allow",
        "accept",
        "accept-encoding",
        "accept-language",
        "allow-events",
        "content-encoding",
        "content-language",
        "in-reply-to",
        "p-asserted-identity",
        "p-preferred-identity",
        "remote-party-id",
        "history-info",
        "diversion",
        "reason",
        "warning",
        "call-info",
        "alert-info",
        "error-info",
        "privacy",
        "path",
        "service-route",
        "security-client",
        "security-server",
        "security-verify",
        "accept-contact",
        "reject-contact",
        "request-disposition",
        "p-associated-uri",
    }
)

# List headers whose grammar has at least one element (RFC 3261 §25.1): an empty line of
# one of these is an error, not "no entries" (Allow, Supported, Accept… may be empty).
_NON_EMPTY: Final = frozenset({"via", "contact", "route", "record-route"})

# Headers that must appear at most once (RFC 3261 §20; RFC 4475 §3.3.8).
SINGLE_HEADERS: Final = ("call-id", "cseq", "from", "to", "max-forwards")

_TOKEN: Final = r"[A-Za-z0-9\-.!%*_+`'~]"
_TOKEN_RE: Final = re.compile(_TOKEN + r"+\Z")
_METHOD_RE: Final = _TOKEN_RE
_METHODS: Final = frozenset(
    ("INVITE", "ACK", "BYE", "CANCEL", "OPTIONS", "PRACK", "UPDATE", "INFO", "REFER", "NOTIFY")
)
# \d and \s in ASCII only: a Unicode digit or space is no part of SIP's grammar
_VERSION_RE: Final = re.compile(r"SIP/\d+\.\d+\Z", re.I | re.A)
# LWS between the elements is SP and HTAB only (folding is undone before these run)
_CSEQ_RE: Final = re.compile(r"(\d+)[ \t]+([A-Za-z0-9\-.!%*_+`'~]+)\Z", re.A)
_CSEQ_FAST_RE: Final = re.compile(r"([0-9]{1,10}) ([A-Z]+)\Z")
_VIA_RE: Final = re.compile(
    r"([A-Za-z0-9\-.!%*_+`'~]+)[ \t]*/[ \t]*([A-Za-z0-9\-.!%*_+`'~]+)[ \t]*/[ \t]*"
    r"([A-Za-z0-9\-.!%*_+`'~]+)[ \t]+(\[[^\]]*\]|[^\s;:\[\]]+)(?:[ \t]*:[ \t]*(\d+))?[ \t]*"
    r"(?:;(.*))?\Z",
    re.S | re.A,
)
# The common Via shape, ASCII only; anything else takes _VIA_RE (which decides errors).
_VIA_FAST_RE: Final = re.compile(
    r"SIP/2\.0/([A-Za-z]+) (\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9](?:[A-Za-z0-9\-.]*[A-Za-z0-9.])?)"
    r"(?::([0-9]{1,5}))?(;[\t -~]*)?\Z"
)
# Enough of a Via to send a response back: its protocol, transport and sent-by. Used only
# to decide whether a malformed request can be answered; its parameters may be broken.
# Any SIP version: a request refused with 505 may carry a Via of its own version.
_VIA_SENT_BY_RE: Final = re.compile(
    r"\s*SIP\s*/\s*\d+\.\d+\s*/\s*[A-Za-z0-9\-.!%*_+`'~]+\s+[^\s;,]+", re.I | re.A
)
# Header names the fast reader has seen to be tokens (RFC 3261 §25.1), spelt as sent and
# bounded: a name seen before is not matched against _TOKEN_RE again.
_TOKEN_NAMES: Final[set[str]] = set()
_TOKEN_NAMES_MAX: Final = 4096
_TOKEN_NAME_LEN: Final = 32  # longer names are checked every time: the set stays small
# what stamping a Via may add to it: ";received=" an IPv6 address, and an rport's value
STAMP_GROWTH: Final = 64
MAX_CSEQ: Final = 2**32 - 1


@dataclass(frozen=True, slots=True)
class Limits:
    """Size limits: exceeding one is an error, never unbounded memory."""

    max_message: int = 65535
    max_headers: int = 256
    max_line: int = 16384

    def __reduce__(self) -> tuple[type[Limits], tuple[int, int, int]]:
        # copy, deepcopy, pickle when compiled by mypyc too (see Uri.__reduce__)
        return Limits, (self.max_message, self.max_headers, self.max_line)


DEFAULT_LIMITS: Final = Limits()


@dataclass(frozen=True, slots=True)
class Via:
    """One Via entry: ``SIP/2.0/UDP host:port;branch=…;received=…;rport``."""

    transport: str  # upper-case
    host: str
    port: int | None
    params: Params = ()
    protocol: str = "SIP/2.0"

    def __init__(
        self,
        transport: str,
        host: str,
        port: int | None,
        params: Params = (),
        protocol: str = "SIP/2.0",
    ) -> None:
        # written out rather than generated by @dataclass: mypyc compiles this one
        object.__setattr__(self, "transport", transport)
        object.__setattr__(self, "host", host)
        object.__setattr__(self, "port", port)
        object.__setattr__(self, "params", params)
        object.__setattr__(self, "protocol", protocol)

    @property
    def branch(self) -> str | None:
        for k, v in self.params:
            if k == "branch" or k.lower() == "branch":
                return "" if v is None else v
        return None

    @property
    def received(self) -> str | None:
        return param(self.params, "received")

    @property
    def rport(self) -> str | None:
        """'' when the rport flag is present without value, the port when filled in."""
        return param(self.params, "rport")

    def sent_by(self) -> str:
        return self.host if self.port is None else f"{self.host}:{self.port}"

    def __str__(self) -> str:
        return f"{self.protocol}/{self.transport} {self.sent_by()}{format_params(self.params)}"

    def __reduce__(self) -> tuple[type[Via], tuple[str, str, int | None, Params, str]]:
        # copy, deepcopy, pickle when compiled by mypyc too (see Uri.__reduce__)
        return Via, (self.transport, self.host, self.port, self.params, self.protocol)


_via_transport = _slot_setter(Via, "transport")
_via_host = _slot_setter(Via, "host")
_via_port = _slot_setter(Via, "port")
_via_params = _slot_setter(Via, "params")
_via_protocol = _slot_setter(Via, "protocol")


def stamp_via(line: str, via: Via, host: str, port: int) -> str | None:
    """``line``, a request's first ``Via`` line whose first entry is ``via``, as a server
    transport stamps it before a response copies it (RFC 3261 §18.2.1: ``received``
    where the sent-by host is not the source address ``host``; RFC 3581 §4: with
    ``rport``, ``rport`` filled in with the source ``port`` and ``received`` always), or
    None where it stays as written."""
    rport = via.rport
    sent_by = via.host[1:-1] if via.host[:1] == "[" else via.host
    if rport is None and sent_by == host.lower():
        return None
    params: list[tuple[str, str | None]] = []
    filled = False
    for k, v in via.params:
        name = k.lower()
        if name == "received" or (name == "rport" and filled):
            continue  # ours replaces whatever the sender wrote; one rport, once
        if name == "rport":
            filled = True
            params.append((k, str(port)))
        else:
            params.append((k, v))
    params.append(("received", host))
    top = str(Via(via.transport, via.host, via.port, tuple(params), via.protocol))
    if "," in line:
        top = ", ".join([top, *split_commas(line)[1:]])
    # never a response much larger than its request (SPEC §8): the stamp adds one
    # address and one port at most, else the Via stays as the peer wrote it
    return top if len(top) <= len(line) + STAMP_GROWTH else None


def parse_via(text: str) -> Via:
    m = _VIA_FAST_RE.match(text)
    if m is not None:
        transport, host, port_s, ptext = m.groups()
        port = None
        if port_s is not None:
            port = int(port_s)
            if not 0 < port <= 65535:
                raise SipError("invalid port in Via")
        params = _semi_params(ptext, "Via") if ptext is not None else ()
        if _FILL_SLOTS:
            via = _new(Via)
            _via_transport(via, transport.upper())
            _via_host(via, host.lower())
            _via_port(via, port)
            _via_params(via, params)
            _via_protocol(via, SIP_VERSION)
            return via
        return Via(transport.upper(), host.lower(), port, params, SIP_VERSION)
    return _parse_via_general(text)


def _parse_via_general(text: str) -> Via:
    m = _VIA_RE.match(text.strip(" \t"))
    if m is None:
        raise SipError("malformed Via")
    name, version, transport, host_s, port_s, ptext = m.groups()
    host, _ = parse_host_port(host_s)
    port = None
    if port_s is not None:
        port_s = port_s.lstrip("0")  # port = 1*DIGIT: leading zeros allowed
        if len(port_s) > 5 or not 0 < int(port_s or "0") <= 65535:
            raise SipError("invalid port in Via")
        port = int(port_s)
    params = parse_params(ptext, "Via") if ptext is not None else ()
    return Via(transport.upper(), host, port, params, f"{name}/{version}".upper())


@dataclass(frozen=True, slots=True)
class CSeq:
    number: int
    method: str

    def __init__(self, number: int, method: str) -> None:
        # written out rather than generated by @dataclass: mypyc compiles this one
        object.__setattr__(self, "number", number)
        object.__setattr__(self, "method", method)

    def __reduce__(self) -> tuple[type[CSeq], tuple[int, str]]:
        # copy, deepcopy, pickle when compiled by mypyc too (see Uri.__reduce__)
        return CSeq, (self.number, self.method)


_cseq_number = _slot_setter(CSeq, "number")
_cseq_method = _slot_setter(CSeq, "method")


def parse_cseq(text: str) -> CSeq:
    m = _CSEQ_FAST_RE.match(text)
    if m is not None:
        num = int(m.group(1))
        if num <= MAX_CSEQ:
            if _FILL_SLOTS:
                cseq = _new(CSeq)
                _cseq_number(cseq, num)
                _cseq_method(cseq, m.group(2))
                return cseq
            return CSeq(num, m.group(2))
    return _parse_cseq_general(text)


def _parse_cseq_general(text: str) -> CSeq:
    m = _CSEQ_RE.match(text.strip(" \t"))
    if m is None:
        raise SipError("malformed CSeq")
    # leading zeros do not count, and never int() a long string: past 4300 digits int()
    # raises ValueError, which would escape the SipError family
    digits = m.group(1).lstrip("0") or "0"
    if len(digits) > 10:
        raise SipError("CSeq number out of range")
    num = int(digits)
    if num > MAX_CSEQ:
        raise SipError("CSeq number out of range")
    return CSeq(num, m.group(2))


class SipMessage:
    """A request or a response. Immutable once built: a rewrite builds a new message."""

    __slots__ = ("_cache", "_idx", "body", "headers")

    headers: tuple[tuple[str, str], ...]
    body: bytes

    def __init__(self, headers: Iterable[tuple[str, str]], body: bytes = b"") -> None:
        self.headers = tuple(headers)
        self.body = body
        # built on first use: a message we build only to send is never indexed
        self._idx: dict[str, list[str]] | None = None
        self._cache: dict[str, object] = {}

    @property
    def _index(self) -> dict[str, list[str]]:
        index = self._idx
        return self._build_index() if index is None else index

    def _build_index(self) -> dict[str, list[str]]:
        index: dict[str, list[str]] = {}
        keys = _KEYS
        for name, value in self.headers:
            try:
                key = keys[name]
            except KeyError:
                key = _header_key(name)
            index.setdefault(key, []).append(value)
        self._idx = index
        return index

    # -- raw access ---------------------------------------------------------------------

    def has(self, name: str) -> bool:
        return name in (self._idx or self._build_index())

    def get(self, name: str) -> str | None:
        """First raw value of a header (``name`` lower-case, long form)."""
        values = (self._idx or self._build_index()).get(name)
        return values[0] if values else None

    def get_lines(self, name: str) -> list[str]:
        """Every raw header line value of ``name``, in order, not split at commas."""
        return (self._idx or self._build_index()).get(name, [])

    def get_all(self, name: str) -> list[str]:
        """Every value of ``name``; list headers are split at commas outside quotes."""
        lines = (self._idx or self._build_index()).get(name)
        if not lines:
            return []
        if name not in LIST_HEADERS:
            return list(lines)
        out: list[str] = []
        for line in lines:
            items = split_commas(line)
            if not items and name in _NON_EMPTY:
                raise SipError(f"empty {name} header")
            for item in items:
                if not item:
                    raise SipError(f"empty entry in {name}")
                out.append(item)
        return out

    def keyed_headers(self) -> list[tuple[str, str]]:
        """``(canonical lower-case name, value)`` for every header line, in order."""
        keys = _KEYS
        out: list[tuple[str, str]] = []
        for name, value in self.headers:
            key = keys.get(name)
            out.append((_header_key(name) if key is None else key, value))
        return out

    # -- typed views -----------------------------------------------------------------------

    @property
    def vias(self) -> list[Via]:
        v = self._cache.get("via")
        if v is None:
            lines = self._index.get("via")
            if lines is not None and len(lines) == 1 and "," not in lines[0] and lines[0]:
                v = [parse_via(lines[0])]  # the usual single Via
            else:
                v = [parse_via(x) for x in self.get_all("via")]
            self._cache["via"] = v
        return v  # type: ignore[return-value]

    @property
    def top_via(self) -> Via:
        vias: list[Via] = self._cache.get("via") or self.vias  # type: ignore[assignment]
        if not vias:
            raise SipError("missing Via", status=None)
        return vias[0]

    @property
    def call_id(self) -> str:
        values = self._index.get("call-id")
        v = values[0] if values else None
        if not v or " " in v or "\t" in v:
            raise SipError("missing or malformed Call-ID")
        return v

    @property
    def cseq(self) -> CSeq:
        v = self._cache.get("cseq")
        if v is None:
            values = self._index.get("cseq")
            if not values:
                raise SipError("missing CSeq")
            v = parse_cseq(values[0])
            self._cache["cseq"] = v
        return v  # type: ignore[return-value]

    def _name_addr(self, name: str) -> NameAddr:
        v = self._cache.get(name)
        if v is None:
            values = self._index.get(name)
            if not values:
                raise SipError(f"missing {name.title()}")
            v = parse_name_addr(values[0])
            self._cache[name] = v
        return v  # type: ignore[return-value]

    @property
    def from_(self) -> NameAddr:
        return self._name_addr("from")

    @property
    def to(self) -> NameAddr:
        return self._name_addr("to")

    def name_addrs(self, name: str) -> list[NameAddr]:
        """Contact, Route, Record-Route, P-Asserted-Identity … as parsed name-addrs."""
        key = "na:" + name
        v = self._cache.get(key)
        if v is None:
            v = [parse_name_addr(x) for x in self.get_all(name)]
            self._cache[key] = v
        return v  # type: ignore[return-value]

    @property
    def contacts(self) -> list[NameAddr]:
        """Contact entries; ``*`` (REGISTER only) gives an empty list and :attr:`contact_star`."""
        if self.contact_star:
            return []
        return self.name_addrs("contact")

    @property
    def contact_star(self) -> bool:
        vals = self.get_lines("contact")
        return len(vals) == 1 and vals[0].strip() == "*"

    @property
    def max_forwards(self) -> int | None:
        raw = self.get("max-forwards")
        if raw is None:
            return None
        raw = raw.strip(" \t")
        if not (raw.isascii() and raw.isdigit()):
            raise SipError("malformed Max-Forwards")
        raw = raw.lstrip("0") or "0"  # never int() a long string (ValueError past 4300 digits)
        if len(raw) > 3:
            return 255  # an overlarge value is as good as any large one (RFC 4475 §3.1.2.4)
        return min(int(raw), 255)

    @property
    def content_length(self) -> int | None:
        return _content_length(self._index.get("content-length"))

    @property
    def content_type(self) -> str | None:
        v = self.get("content-type")
        return v.split(";", 1)[0].strip().lower() if v else None

    def tokens(self, name: str) -> frozenset[str]:
        """Option-tag style headers (Supported, Require, Allow …) as a lower-case set."""
        return frozenset(t.lower() for t in self.get_all(name) if t)

    @property
    def privacy(self) -> frozenset[str]:
        """Privacy tokens (RFC 3323 §4.2): ``id;user`` and ``id, user`` both count."""
        out: set[str] = set()
        for line in self.get_lines("privacy"):
            for part in re.split(r"[;,]", line):
                token = part.strip().lower()
                if token:
                    out.add(token)
        return frozenset(out)

    def validate(self) -> None:
        """Parse every typed view a B2BUA relies on; raise :class:`SipError` if one fails."""
        index = self._index
        for name in SINGLE_HEADERS:
            lines = index.get(name)
            if lines is not None and len(lines) > 1:
                raise SipError(f"more than one {name} header")
        if not self.vias:
            raise SipError("missing Via", status=None)
        self.call_id  # noqa: B018
        self.cseq  # noqa: B018
        self.to  # noqa: B018
        self.max_forwards  # noqa: B018
        if "contact" in index and not self.contact_star:
            self.name_addrs("contact")
        for name in ("route", "record-route"):
            if name in index:
                self.name_addrs(name)

    # -- serialisation ---------------------------------------------------------------------

    def start_line(self) -> str:
        raise NotImplementedError

    def to_bytes(self) -> bytes:
        """The message on the wire. A CR or LF inside the start line, a header name or
        value would be a line break to the receiver (header injection): that is our own
        misuse, a ``ValueError``, never bytes sent."""
        head = [self.start_line()]
        head.extend(f"{n}: {v}" for n, v in self.headers)
        head.append(CRLF)
        text = CRLF.join(head)
        lines = len(head)  # start line, headers, and the empty line: one CRLF after each
        if text.count("\n") != lines or text.count("\r") != lines:
            raise ValueError("CR or LF inside a start line, header name or value")
        return text.encode("utf-8", "surrogateescape") + self.body

    def __bytes__(self) -> bytes:
        return self.to_bytes()


class Request(SipMessage):
    __slots__ = ("method", "src_host", "src_port", "uri", "wire_size")

    def __init__(
        self, method: str, uri: str, headers: Iterable[tuple[str, str]], body: bytes = b""
    ) -> None:
        SipMessage.__init__(self, headers, body)
        self.method = method
        self.uri = uri  # as written; see request_uri
        # where a received request came from (set by the core on receipt; "" for one we
        # build): its responses' top Via says so (RFC 3261 §18.2.1, RFC 3581 §4)
        self.src_host = ""
        self.src_port = 0
        # its size on the wire (set on receipt; 0 for one we build): a refusal is never
        # larger than the request that drew it (no amplification towards a forged source)
        self.wire_size = 0

    def stamped_via(self) -> str | None:
        """The first ``Via`` line as a server transport stamps it before a response
        copies it (:func:`stamp_via`), or None where it stays as written."""
        host = self.src_host
        if not host:
            return None
        return stamp_via(self.get_lines("via")[0], self.top_via, host, self.src_port)

    @property
    def request_uri(self) -> Uri:
        v = self._cache.get("ruri")
        if v is None:
            v = parse_uri(self.uri)
            self._cache["ruri"] = v
        return v  # type: ignore[return-value]

    def start_line(self) -> str:
        return f"{self.method} {self.uri} {SIP_VERSION}"

    def validate(self) -> None:
        """Check the whole request; a failure carries its stateless response (or a drop)."""
        try:
            uri = self.request_uri
            if uri.headers is not None:
                # §19.1.5: headers are not allowed in a Request-URI (RFC 4475 §3.1.2.11)
                raise SipError("Request-URI with headers")
            super().validate()
            self.from_  # noqa: B018
            if self.cseq.method != self.method:
                raise SipError("CSeq method does not match the request method")
            if self.method != "REGISTER" and self.contact_star:
                # Contact: * only removes bindings in a REGISTER (RFC 3261 §10.2.2, §20.10)
                raise SipError("Contact: * outside REGISTER")
        except SipError as exc:
            if self.method == "ACK":
                exc.status = None  # an ACK is never answered (RFC 3261 §17.1.1.3, §17.2.1)
                raise
            raise attach_response(exc, self.headers) from None

    def __repr__(self) -> str:
        return f"<Request {self.method} {self.uri}>"


class Response(SipMessage):
    __slots__ = ("reason", "status")

    def __init__(
        self, status: int, reason: str, headers: Iterable[tuple[str, str]], body: bytes = b""
    ) -> None:
        SipMessage.__init__(self, headers, body)
        self.status = status
        self.reason = reason

    def start_line(self) -> str:
        return f"{SIP_VERSION} {self.status} {self.reason}"

    def validate(self) -> None:
        """Check the response; a malformed response is never answered, only dropped.

        Its ``From`` is not parsed here: a response that a transaction takes is matched by
        its branch, and its ``From`` (ours, echoed) is never read. Only a response that no
        transaction takes (a stray 2xx, looked up by its dialog) reads it, and one that
        is malformed is dropped there, before anything moves."""
        try:
            super().validate()
        except SipError as exc:
            exc.status = None
            raise

    def __repr__(self) -> str:
        return f"<Response {self.status} {self.reason}>"


def _content_length(values: list[str] | None) -> int | None:
    if not values:
        return None
    first = values[0].strip(" \t")
    for other in values[1:]:
        if other.strip(" \t") != first:
            raise SipError("conflicting Content-Length values")
    if not (first.isascii() and first.isdigit()) or len(first) > 10:
        raise SipError("malformed Content-Length")
    return int(first)


def _header_end(data: bytes) -> tuple[int, int, bool]:
    """(end of the header section, start of the body, lines end in bare LF)."""
    end = data.find(b"\r\n\r\n")
    if end >= 0:
        return end, end + 4, False
    end = data.find(b"\n\n")
    if end >= 0 and b"\r\n" not in data[:end]:
        return end, end + 2, True
    return -1, -1, False


def parse_message(
    data: bytes, *, datagram: bool = True, limits: Limits = DEFAULT_LIMITS
) -> Request | Response:
    """Parse one whole message.

    ``datagram``: over UDP a missing Content-Length means the body is the rest of the
    datagram, and bytes after the body are ignored (RFC 3261 §18.3). Over a stream the
    framer has already cut exactly one message.
    """
    if len(data) > limits.max_message:
        raise MessageTooLarge("message too large", status=None)
    try:
        return _parse(data, datagram, limits)
    except SipError as exc:
        if exc.status is not None and exc.response is None:
            _answer_or_drop(exc, data)
        raise


def _parse(data: bytes, datagram: bool, limits: Limits) -> Request | Response:
    if data[:1] in (b"\r", b"\n"):
        # RFC 3261 §7.5: CRLFs before the start line are ignored (keep-alives).
        data = data.lstrip(b"\r\n")
    headers: list[tuple[str, str]] | None = None
    start = ""
    end = data.find(b"\r\n\r\n")
    if end >= 0 and end < limits.max_line:
        # the usual case: CRLF lines, nothing folded, every line ``Name: value``
        body_start = end + 4
        head = data[:end].decode("utf-8", "surrogateescape")
        lines = head.split(CRLF)
        if len(lines) <= limits.max_headers + 1:
            headers = _plain_headers(head, lines)
            start = lines[0]
    if headers is None:
        lines, body_start = _head_lines(data, datagram)
        start = lines[0]
        if len(start) > limits.max_line:
            raise MessageTooLarge("start line too long", status=None)
        headers = _split_headers(lines, limits)
    msg: Request | Response
    if start[:4].upper() == "SIP/":
        version, _, rest = start.partition(" ")
        code, _, reason = rest.partition(" ")
        # RFC 3261 §7.1: the SIP-Version string is case-insensitive (sent upper-case)
        if version.upper() != SIP_VERSION:
            raise SipError("unsupported SIP version in response", status=None)
        if len(code) != 3 or not code.isdigit() or not code.isascii() or code[0] not in "123456":
            raise SipError("malformed status code", status=None)
        if "\r" in reason or "\n" in reason:
            raise SipError("malformed reason phrase", status=None)
        msg = Response(int(code), reason, headers)
    else:
        parts = start.split(" ")
        if len(parts) != 3:
            raise SipError("malformed request line")
        method, uri, version = parts
        if (
            version[:4].upper() != "SIP/"
            or (method not in _METHODS and not _METHOD_RE.match(method))
            or not uri
        ):
            raise SipError("malformed request line")
        if version != SIP_VERSION and version.upper() != SIP_VERSION:
            if _VERSION_RE.match(version):
                raise SipError("SIP version not supported", status=505)
            raise SipError("malformed request line")
        if "\r" in uri or "\n" in uri:
            raise SipError("malformed request line")
        msg = Request(method, uri, headers)
    values = msg._index.get("content-length")
    if values is not None and len(values) == 1 and len(values[0]) <= 10 and values[0].isdigit():
        clen: int | None = int(values[0]) if values[0].isascii() else _content_length(values)
    else:
        clen = _content_length(values)
    available = len(data) - body_start
    if clen is None:
        if not datagram and available:
            raise SipError("missing Content-Length on a stream transport")
        clen = available if datagram else 0
    elif clen > available:
        raise SipError("Content-Length larger than the message")
    if clen:
        msg.body = data[body_start : body_start + clen]
    return msg


def _plain_headers(head: str, lines: list[str]) -> list[tuple[str, str]] | None:
    """The header lines of ``head`` (``lines``: it split at CRLF, the start line first)
    when each is ``Name: value`` with a token name and no CR or LF but the line ends;
    else None, and the general reader (:func:`_split_headers`) decides, naming the error.
    A value loses its leading and trailing SP and HTAB, as there. One ``str.find`` per
    line instead of a regular expression: the header block is scanned in C, a character
    at a time only for names not seen before."""
    n = len(lines) - 1
    if head.count("\r") != n or head.count("\n") != n:
        return None  # a bare CR or LF somewhere
    names = _TOKEN_NAMES
    out: list[tuple[str, str]] = []
    for k in range(1, len(lines)):
        line = lines[k]
        colon = line.find(":")
        if colon <= 0:
            return None
        name = line[:colon]
        if name not in names:
            name = name.rstrip(" \t")
            if not _TOKEN_RE.match(name):
                return None  # folded, or not a header line
            if len(names) < _TOKEN_NAMES_MAX and len(name) <= _TOKEN_NAME_LEN:
                names.add(name)
        value = line[colon + 1 :]
        if value[:1] in (" ", "\t") or value[-1:] in (" ", "\t"):
            value = value.strip(" \t")
        out.append((name, value))
    return out


def _head_lines(data: bytes, datagram: bool) -> tuple[list[str], int]:
    """The header section's lines (start line first) and where the body starts."""
    end, body_start, bare_lf = _header_end(data)
    if end < 0:
        if not (datagram and data.endswith(b"\r\n")):
            raise SipError("no end of header section", status=None)
        # a datagram cut right after its last header line: the headers end with it, and
        # there is no body (not even that line's CRLF)
        end, body_start = len(data) - 2, len(data)
    head = data[:end].decode("utf-8", "surrogateescape")
    return (head.split("\n") if bare_lf else head.split(CRLF)), body_start


def _answer_or_drop(exc: SipError, data: bytes) -> None:
    """After a request was refused: attach the stateless answer, or mark it a drop.

    A response is never answered. For a request, the header lines are read again
    leniently (lines that cannot be read are skipped) to find the Via and dialog headers.
    """
    try:
        lines, _ = _head_lines(data.lstrip(b"\r\n"), True)
    except SipError:
        lines = [""]
    if lines[0][:4].upper() == "SIP/" or lines[0].partition(" ")[0] == "ACK":
        # a response is never answered, nor is an ACK, not even a malformed one (RFC 3261
        # §17.1.1.3, §17.2.1): drop it
        exc.status = None
        return
    headers: list[tuple[str, str]] = []
    for line in lines[1:]:
        if line[:1] in (" ", "\t"):
            # a value already too long to be mirrored is not grown further
            if headers and len(headers[-1][1]) <= DEFAULT_LIMITS.max_line:
                name, value = headers[-1]
                folded = line.strip(" \t")
                headers[-1] = (name, f"{value} {folded}" if value and folded else value or folded)
            continue
        name, colon, value = line.partition(":")
        name = name.rstrip(" \t")
        if colon and _TOKEN_RE.match(name):
            headers.append((name, value.strip(" \t")))
    attach_response(exc, headers)


def attach_response(exc: SipError, headers: Iterable[tuple[str, str]]) -> SipError:
    """Give a request's error its stateless response, or mark it unanswerable (drop)."""
    if exc.status is not None and exc.response is None:
        exc.response = _error_response(headers, exc)
        if exc.response is None:
            exc.status = None
    return exc


def _split_headers(lines: list[str], limits: Limits) -> list[tuple[str, str]]:
    """The general reader of header lines: folding, limits, and each error named."""
    headers: list[tuple[str, str]] = []
    if len(lines) > limits.max_headers + 1:
        raise MessageTooLarge("too many headers")
    for line in lines[1:]:
        if len(line) > limits.max_line:
            raise MessageTooLarge("header line too long")
        if "\r" in line or "\n" in line:
            # a bare CR or LF would be a line break to the next parser: header injection
            raise SipError("bare CR or LF in a header line")
        if line[:1] in (" ", "\t"):
            if not headers:
                raise SipError("continuation line before the first header")
            name, value = headers[-1]
            folded = line.strip(" \t")
            value = f"{value} {folded}" if value and folded else value or folded
            if len(value) > limits.max_line:
                raise MessageTooLarge("header line too long")
            headers[-1] = (name, value)
            continue
        name, colon, value = line.partition(":")
        if not colon:
            raise SipError("header line without a colon")
        name = name.rstrip(" \t")
        if not _TOKEN_RE.match(name):
            raise SipError("malformed header name")
        headers.append((name, value.strip(" \t")))
    return headers


def _stable_tag(call_id: str, cseq: str) -> str:
    return hashlib.blake2s(
        f"{call_id}\x00{cseq}".encode(errors="replace"), digest_size=6
    ).hexdigest()


def _error_response(headers: Iterable[tuple[str, str]], exc: SipError) -> bytes | None:
    """A stateless error response to a malformed request, if the request can be answered.

    A request is answerable when its Via can be read (the response must find its way
    back, §18.2.2). From, To, Call-ID and CSeq are copied as written when there is exactly
    one of each (§8.2.6), and a To without a tag gets one that is stable across
    retransmissions. Returns None for a request whose Via cannot be read: drop it.
    """
    wanted: dict[str, list[str]] = {"via": [], "from": [], "to": [], "call-id": [], "cseq": []}
    for name, value in headers:
        key = _header_key(name)
        if key in wanted:
            wanted[key].append(value)
    # only what a sound message could carry is mirrored: no CR or LF (that would be header
    # injection into our own answer), nothing over the usual line limit
    if not all(_mirrorable(v) for v in wanted["via"]):
        return None  # a Via list we cannot copy whole would misroute the answer
    if not wanted["via"] or not _VIA_SENT_BY_RE.match(wanted["via"][0]):
        return None
    hdrs = [f"Via: {v}" for v in wanted["via"]]
    # exactly one in the request, and sound: a second From (say) that cannot be mirrored
    # must not make the first look like the only one
    single = {
        k: v[0] for k, v in wanted.items() if k != "via" and len(v) == 1 and _mirrorable(v[0])
    }
    if "from" in single:
        hdrs.append(f"From: {single['from']}")
    if "to" in single:
        to = single["to"]
        try:
            has_tag = parse_name_addr(to).tag is not None
        except SipError:
            has_tag = True  # unreadable: mirror it as it is
        if not has_tag:
            to = f"{to};tag={_stable_tag(single.get('call-id', ''), single.get('cseq', ''))}"
        hdrs.append(f"To: {to}")
    if "call-id" in single:
        hdrs.append(f"Call-ID: {single['call-id']}")
    if "cseq" in single:
        hdrs.append(f"CSeq: {single['cseq']}")
    status = exc.status or 400
    hdrs.append(f'Warning: 399 sipguard "{_quote_safe(exc.reason)}"')
    hdrs.append("Content-Length: 0")
    text = CRLF.join([f"{SIP_VERSION} {status} {REASONS.get(status, 'Bad Request')}", *hdrs])
    return (text + CRLF + CRLF).encode("utf-8", "surrogateescape")


def _mirrorable(value: str) -> bool:
    return len(value) <= DEFAULT_LIMITS.max_line and "\r" not in value and "\n" not in value


def _quote_safe(text: str) -> str:
    """``text`` as the inside of a quoted-string: no backslash, quote or control char."""
    return "".join("'" if c == '"' else c for c in text if c >= " " and c not in "\\\x7f")


REASONS: Final[dict[int, str]] = {
    100: "Trying",
    180: "Ringing",
    181: "Call Is Being Forwarded",
    182: "Queued",
    183: "Session Progress",
    200: "OK",
    202: "Accepted",
    400: "Bad Request",
    401: "Unauthorized",
    403: "Forbidden",
    404: "Not Found",
    405: "Method Not Allowed",
    407: "Proxy Authentication Required",
    408: "Request Timeout",
    415: "Unsupported Media Type",
    416: "Unsupported URI Scheme",
    420: "Bad Extension",
    421: "Extension Required",
    422: "Session Interval Too Small",
    433: "Anonymity Disallowed",
    480: "Temporarily Unavailable",
    481: "Call/Transaction Does Not Exist",
    482: "Loop Detected",
    483: "Too Many Hops",
    486: "Busy Here",
    487: "Request Terminated",
    488: "Not Acceptable Here",
    491: "Request Pending",
    500: "Server Internal Error",
    501: "Not Implemented",
    503: "Service Unavailable",
    504: "Server Time-out",
    505: "Version Not Supported",
    513: "Message Too Large",
    603: "Decline",
}


_CANONICAL: Final[dict[str, str]] = {
    "call-id": "Call-ID",
    "cseq": "CSeq",
    "www-authenticate": "WWW-Authenticate",
    "mime-version": "MIME-Version",
    "rseq": "RSeq",
    "rack": "RAck",
    "sip-etag": "SIP-ETag",
    "sip-if-match": "SIP-If-Match",
    "min-se": "Min-SE",
}


# name -> its usual spelling, a bounded memo as _KEYS is: every relayed header is spelled
_SPELLED: Final[dict[str, str]] = {}


def canonical_name(lname: str) -> str:
    """A header name in its usual spelling: ``call-id`` -> ``Call-ID``, ``p-asserted-identity``
    -> ``P-Asserted-Identity``; compact forms are expanded first."""
    name = _SPELLED.get(lname)
    if name is None:
        name = _spell(lname)
        if len(_SPELLED) < _KEYS_MAX and len(lname) <= 64:
            _SPELLED[lname] = name
    return name


def _spell(lname: str) -> str:
    key = lname.lower()
    key = COMPACT_FORMS.get(key, key)
    name = _CANONICAL.get(key)
    if name is None:
        name = "-".join(p[:1].upper() + p[1:] for p in key.split("-"))
    return name
