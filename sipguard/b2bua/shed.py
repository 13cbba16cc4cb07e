"""A new call shed before it is parsed: the ``503`` made from the INVITE's own lines.

Under overload the shedder refuses most new calls (:mod:`~sipguard.b2bua.overload`). A
refusal that costs as much as parsing, validating and judging the INVITE in full makes an
overload dearer the more is offered: calls completed fall as the load grows. So while
the core sheds, a new INVITE that the shedder refuses is answered here, from its raw
bytes, without the parser: the start line and five header fields (``Via``, ``From``,
``To``, ``Call-ID``, ``CSeq``, long or compact names) are found by splitting lines, and
the response copies them, as RFC 3261 §8.2.6.2 asks, with a To tag of ours (the top
``Via`` stamped with the source, ``received`` and ``rport``, as §18.2.1 and RFC 3581 §4
ask and the whole way does).

Only the plain case is taken. :func:`early_refusal` returns None, and the core goes the
whole way (which may still shed the call), for anything else: an emergency call (the
Request-URI's dialled number, its CLIR code removed, or ``urn:service:sos``: SPEC §1.4,
never shed), a ``To`` with anything like a tag (a re-INVITE is never shed), a folded or
repeated header line, a bare CR, LF or a NUL anywhere in the header (what the parser
refuses as header injection is never copied back), a ``CSeq`` of another method, a top
``Via`` without an RFC 3261 branch, no end of the header, a start line that is not
``INVITE <uri> SIP/2.0``, or a response that would be larger than the request (never an
amplifier, SPEC §8). The core asks only then whether the shedder admits the call, and
first whether the INVITE is a retransmission: of a call under way (its transaction is
there: never shed, §17.2.3) or of one shed already (:class:`Shed`: shed again, the same
way, §8.2.7).

The To tag is :func:`~sipguard.sip.transaction.stateless_tag`'s, made of the same raw
``Call-ID``, ``From`` and top ``Via`` values: a request gets one tag whichever path
answers it.
"""

from __future__ import annotations

from collections.abc import Collection
from typing import Final

from sipguard.b2bua.overload import Shedder
from sipguard.config.model import Config
from sipguard.policy.numbers import is_emergency, is_sos_urn, split_clir_code
from sipguard.sip.errors import SipError
from sipguard.sip.message import Request, parse_via, stamp_via
from sipguard.sip.transaction import MAGIC_COOKIE, Flow, raw_stateless_tag, stateless_tag
from sipguard.sip.uri import parse_uri

_STATUS: Final = b"SIP/2.0 503 Service Unavailable\r\n"
_END: Final = b"Content-Length: 0\r\n\r\n"
# the header fields a response copies, by their long and compact names (RFC 3261 §7.3.3)
_NAMES: Final = {
    b"via": b"v",
    b"v": b"v",
    b"from": b"f",
    b"f": b"f",
    b"to": b"t",
    b"t": b"t",
    b"call-id": b"i",
    b"i": b"i",
    b"cseq": b"c",
}


class Early:
    """A new INVITE that may be shed unread: its ``503``, and its transaction's key
    (§17.2.3: branch, sent-by, method) to look for a call it may already be."""

    __slots__ = ("key", "response", "tag")

    def __init__(self, response: bytes, key: tuple[str, str, str], tag: str) -> None:
        self.response = response
        self.key = key
        self.tag = tag


def early_refusal(data: bytes, config: Config, host: str = "", port: int = 0) -> Early | None:
    """The ``503`` for ``data``, a new INVITE of no emergency from ``host``:``port``, or
    None (see the module's docstring: the core then reads the request in full). Its top
    ``Via`` is stamped with the source as the whole way's is (:func:`stamp_via`)."""
    end = data.find(b"\r\n\r\n")
    if end < 0:
        return None
    head = data[:end]
    breaks = head.count(b"\r\n")
    if head.count(b"\r") != breaks or head.count(b"\n") != breaks or b"\x00" in head:
        return None  # a bare CR or LF, or a NUL: the parser's business
    lines = head.split(b"\r\n")
    start = lines[0].split(b" ")
    if len(start) != 3 or start[0] != b"INVITE" or start[2] != b"SIP/2.0":
        return None
    if _emergency(start[1], config):
        return None
    vias: list[bytes] = []
    found: dict[bytes, bytes] = {}
    for line in lines[1:]:
        if not line or line[0] in b" \t":
            return None  # folded (§7.3.1): the parser's business
        colon = line.find(b":")
        if colon <= 0:
            return None
        key = _NAMES.get(line[:colon].rstrip().lower())
        if key is None:
            continue
        if key == b"v":
            vias.append(line)
        elif key in found:
            return None  # a second From, To, Call-ID or CSeq: malformed, answered 400
        else:
            found[key] = line
    if not vias or len(found) != 4:
        return None
    to = found[b"t"].rstrip()
    cseq = _value(found[b"c"]).split()
    if b"tag" in to.lower() or len(cseq) != 2 or cseq[1] != b"INVITE" or not cseq[0].isdigit():
        return None
    top_line = _value(vias[0])
    top_text = top_line.decode("utf-8", "surrogateescape")
    try:
        top = parse_via(top_text.split(",", 1)[0])
    except SipError:
        return None
    branch = top.branch
    if not branch or not branch.startswith(MAGIC_COOKIE) or len(branch) == len(MAGIC_COOKIE):
        return None  # an RFC 2543 peer's transactions are matched otherwise (§17.2.3)
    tag = raw_stateless_tag(_value(found[b"i"]), _value(found[b"f"]), top_line)
    if host:  # RFC 3261 §18.2.1, RFC 3581 §4: received, rport
        stamped = stamp_via(top_text, top, host, port)
        if stamped is not None:
            vias[0] = b"Via: " + stamped.encode("utf-8", "surrogateescape")
    resp = b"".join(
        [
            _STATUS,
            b"\r\n".join(vias),
            b"\r\n",
            found[b"f"],
            b"\r\n",
            to,
            b";tag=",
            tag.encode(),
            b"\r\n",
            found[b"i"],
            b"\r\n",
            found[b"c"],
            b"\r\n",
            _END,
        ]
    )
    if len(resp) > len(data):
        return None
    return Early(resp, (branch, top.sent_by(), "INVITE"), tag)


# the To header lines an ACK of ours is looked for under (what SIPp and most user agents
# write); any other spelling is read in full, which absorbs it all the same
_TO_LINES: Final = (b"\r\nTo:", b"\r\nt:", b"\r\nTO:", b"\r\nto:")
_TAG_WIDTH: Final = 20  # raw_stateless_tag's hex digits


def raw_to_tag(data: bytes) -> str | None:
    """The To tag of a request read as bytes, where it has the shape of a stateless
    refusal's (:func:`~sipguard.sip.transaction.raw_stateless_tag`), else None."""
    end = data.find(b"\r\n\r\n")
    head = data if end < 0 else data[:end]
    for name in _TO_LINES:
        start = head.find(name)
        if start >= 0:
            break
    else:
        return None
    stop = head.find(b"\r\n", start + 2)
    line = head[start : len(head) if stop < 0 else stop]
    # the header's tag, after the URI's <...> where there is one: a ";tag=" inside it is
    # a URI parameter the caller chose (RFC 3261 §20.39)
    at = line.find(b";tag=", max(0, line.rfind(b">")))
    if at < 0:
        return None
    tag = line[at + 5 : at + 5 + _TAG_WIDTH]
    after = line[at + 5 + _TAG_WIDTH : at + 6 + _TAG_WIDTH]
    if len(tag) != _TAG_WIDTH or after not in (b"", b";", b" ", b"\t") or not tag.isalnum():
        return None
    return tag.decode("ascii")


def _value(line: bytes) -> bytes:
    """A header line's value, as the parser keeps it (blanks around it stripped)."""
    return line[line.find(b":") + 1 :].strip(b" \t")


def _emergency(ruri: bytes, config: Config) -> bool:
    """Is ``ruri`` an emergency call, or not clear enough to tell here (both: True)?"""
    try:
        text = ruri.decode("utf-8")
        if is_sos_urn(text):
            return True
        uri = parse_uri(text)
    except (UnicodeDecodeError, SipError):
        return True  # the parser's business
    if uri.scheme != "tel" and not uri.is_sip:
        return True
    user = uri.user
    if user is None:
        return False
    rest = split_clir_code(user, config.clir_codes)[0]
    return is_emergency(rest, config.emergency_numbers)


SHED_MEMORY: Final = 32.0  # seconds a shed INVITE is remembered: 64*T1, its retransmissions
MAX_SHED: Final = 32768  # remembered per half of that; a half that fills starts afresh


class Shed:
    """The INVITEs shed lately, by source and stateless tag: a retransmission of one is
    shed again, never made a call after the caller was told 503 (§8.2.7). Two halves of
    :data:`SHED_MEMORY` each, the older dropped as a whole: bounded, O(1) per INVITE."""

    __slots__ = ("_new", "_old", "_since")

    def __init__(self) -> None:
        self._new: set[tuple[str, str]] = set()
        self._old: set[tuple[str, str]] = set()
        self._since = 0.0

    def _turn(self, now: float) -> None:
        if now - self._since >= SHED_MEMORY or len(self._new) >= MAX_SHED:
            self._old, self._new = self._new, set()
            self._since = now

    def remember(self, host: str, tag: str, now: float) -> None:
        self._turn(now)
        self._new.add((host, tag))

    def __contains__(self, key: tuple[str, str]) -> bool:
        return key in self._new or key in self._old

    def any(self) -> bool:
        return bool(self._new or self._old)

    def __len__(self) -> int:
        return len(self._new) + len(self._old)


class EarlyShed:
    """The shedder's answer to a new INVITE before it is read, and the memory that keeps
    a retransmission's answer the same (see the module's docstring)."""

    __slots__ = ("memory", "shedder")

    def __init__(self, shedder: Shedder) -> None:
        self.shedder = shedder
        self.memory = Shed()

    def refuse(
        self,
        data: bytes,
        flow: Flow,
        trusted: bool,
        config: Config,
        server: Collection[tuple[str, ...]],
        now: float,
    ) -> bytes | None:
        """The ``503`` for ``data`` from a trunk (``trusted`` or not) if the shedder
        refuses it, or None: read it in full. ``server``: the keys of the server
        transactions (a retransmission of a call under way is never shed)."""
        early = self.plain(data, flow, config, server)
        if early is None:
            return None
        if not self.again_raw(early, flow) and self.shedder.admit(trusted):
            self.shedder.granted = True  # the whole way admits it without asking again
            return None
        return self.refused(early, flow, now)

    def plain(
        self, data: bytes, flow: Flow, config: Config, server: Collection[tuple[str, ...]]
    ) -> Early | None:
        """:func:`early_refusal` of ``data``, a new INVITE from ``flow``, where it is no
        retransmission of a call under way (its key in ``server``); else None."""
        early = early_refusal(data, config, flow.host, flow.port)
        if early is None or (str(flow.local), flow.host, *early.key) in server:
            return None
        return early

    def again_raw(self, early: Early, flow: Flow) -> bool:
        """Was the INVITE of ``early`` refused ``503`` lately (a retransmission)?"""
        return (flow.host, early.tag) in self.memory

    def refused(self, early: Early, flow: Flow, now: float) -> bytes:
        """The ``503`` of ``early``, remembered: its retransmissions get it again."""
        self.memory.remember(flow.host, early.tag, now)
        return early.response

    def acked(self, data: bytes, flow: Flow) -> bool:
        """Is ``data``, an ACK from ``flow``, the caller's ACK of a ``503`` shed lately
        (its To tag is that 503's, :func:`raw_to_tag`)? Absorbed unread then (§17.2.1,
        statelessly): it costs what the INVITE's refusal did, not a parse."""
        tag = raw_to_tag(data)
        return tag is not None and (flow.host, tag) in self.memory

    def again(self, req: Request, flow: Flow) -> bool:
        """Was ``req``, read in full, shed lately (a retransmission: shed again)?"""
        return self.memory.any() and (flow.host, stateless_tag(req)) in self.memory

    def remember(self, flow: Flow, tag: str, now: float) -> None:
        """A request from ``flow`` was refused with ``503`` statelessly, To tag ``tag``."""
        self.memory.remember(flow.host, tag, now)
