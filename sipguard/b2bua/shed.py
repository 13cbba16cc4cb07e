"""A new call shed before it is parsed: the ``503`` made from the INVITE's own lines.

Under overload the shedder refuses most new calls (:mod:`~sipguard.b2bua.overload`). A
refusal that costs as much as parsing, validating and judging the INVITE in full makes an
overload dearer the more is offered: calls completed fall as the load grows. So while
the core sheds, a new INVITE that the shedder refuses is answered here, from its raw
bytes, without the parser: the start line and five header fields (``Via``, ``From``,
``To``, ``Call-ID``, ``CSeq``, long or compact names) are found by splitting lines, and
the response copies them, as RFC 3261 §8.2.6.2 asks, with a To tag of ours.

Only the plain case is taken. :func:`early_refusal` returns None, and the core goes the
whole way (which may still shed the call), for anything else: an emergency call (the
Request-URI's dialled number, its CLIR code removed, or ``urn:service:sos``: SPEC §1.4,
never shed), a ``To`` with anything like a tag (a re-INVITE is never shed), a folded or
repeated header line, a ``CSeq`` of another method, no end of the header, a start line
that is not ``INVITE <uri> SIP/2.0``, or a response that would be larger than the request
(never an amplifier, SPEC §8).
"""

from __future__ import annotations

from typing import Final

from sipguard.config.model import Config
from sipguard.policy.numbers import is_emergency, is_sos_urn, split_clir_code
from sipguard.sip.errors import SipError
from sipguard.sip.transaction import raw_stateless_tag
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


def early_refusal(data: bytes, config: Config) -> bytes | None:
    """The ``503`` for ``data``, a new INVITE of no emergency, or None (see the module's
    docstring: the core then reads the request in full)."""
    end = data.find(b"\r\n\r\n")
    if end < 0:
        return None
    lines = data[:end].split(b"\r\n")
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
    cseq = found[b"c"][found[b"c"].find(b":") + 1 :].split()
    if b"tag" in to.lower() or len(cseq) != 2 or cseq[1] != b"INVITE" or not cseq[0].isdigit():
        return None
    tag = raw_stateless_tag(found[b"i"], found[b"f"], vias[0])
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
    return resp if len(resp) <= len(data) else None


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
