"""What of a message body may cross to the other leg (SPEC §1.5, §1.6, §3).

A body is relayed as it is (the media is never inspected), with two exceptions, both on
signalling:

- **Location by value** (RFC 6442 §4.1: a PIDF-LO body part, RFC 4119, RFC 5491) and
  the emergency call's additional data (RFC 7852: device and subscriber information)
  reach only the emergency trunk on an emergency call, like the location headers
  (:data:`sipguard.policy.headers.LOCATION`). Elsewhere those parts are taken out of a
  multipart body, and a body that is nothing but location is dropped.
- **The caller's identity in the SDP** of a restricted call. The SDP is signalling
  (SPEC §1.5), and a user agent fills some of its free-text fields in with its user's
  identity, as it does ``From`` and ``User-Agent`` (RFC 3323 §4.1): the ``o=`` username
  (often the SIP user, i.e. the number) becomes ``-`` (RFC 4566 §5.2: no user id), the
  ``s=`` session name becomes ``-`` (RFC 3264 §5 recommends it for unicast), and the
  optional ``i=``, ``u=``, ``e=``, ``p=`` lines (information, URI, e-mail address,
  *phone number*: RFC 4566 §5.4-§5.6) and ``a=tool:`` (the SDP's User-Agent, §6) are
  removed. The ``o=`` session id, version and address, ``c=`` and ``m=`` stay as they
  are: hiding the caller's addresses is media anchoring (``media: anchor``, SPEC §1.5),
  and a constant ``-`` keeps the ``o=`` line stable through the session, as RFC 3264 §8
  requires of every later offer.

Pure functions on bytes; a body that is not understood (an unknown type, a multipart
without its boundary) is returned unchanged.
"""

from __future__ import annotations

from typing import Final

__all__ = ["LOCATION_TYPES", "anonymise_sdp", "filter_body"]

# Body types that carry a location or the emergency call's additional data (device and
# subscriber information, RFC 7852 §4.1-§4.4): lower-case, parameters off.
LOCATION_TYPES: Final = frozenset({"application/pidf+xml", "application/cpim-pidf+xml"})
_EMERGENCY_DATA_PREFIX: Final = "application/emergencycalldata."

# SDP lines a user agent fills in with its user's identity, removed on a restricted call
_SDP_DROPPED: Final = (b"i=", b"u=", b"e=", b"p=")


def _media_type(content_type: str | None) -> str:
    if not content_type:
        return ""
    return content_type.split(";", 1)[0].strip().lower()


def _is_location(media_type: str) -> bool:
    return media_type in LOCATION_TYPES or media_type.startswith(_EMERGENCY_DATA_PREFIX)


def anonymise_sdp(sdp: bytes) -> bytes:
    """An SDP without its user's identity (see the module doc); ``sdp`` itself if clean.

    ``o=+31201234567 1 2 IN IP4 192.0.2.1`` -> ``o=- 1 2 IN IP4 192.0.2.1``;
    ``s=Call from Alice`` -> ``s=-``; ``p=+31 20 123 4567`` removed.
    """
    out: list[bytes] = []
    changed = False
    for line in sdp.splitlines(keepends=True):
        head = line[:2]
        new = line
        if head == b"o=":
            sp = line.find(b" ")
            if sp > 2 and line[2:sp] != b"-":
                new = b"o=-" + line[sp:]
        elif head == b"s=":
            text = line[2:].rstrip(b"\r\n")
            if text not in (b"-", b" "):
                new = b"s=-" + line[2 + len(text) :]
        elif head in _SDP_DROPPED or line[:7].lower() == b"a=tool:":
            changed = True
            continue
        if new is not line:
            changed = True
        out.append(new)
    return b"".join(out) if changed else sdp


def multipart_boundary(content_type: str) -> bytes | None:
    """The ``boundary`` parameter of a multipart ``Content-Type`` (RFC 2046 §5.1.1)."""
    for param in content_type.split(";")[1:]:
        name, eq, value = param.partition("=")
        if eq and name.strip().lower() == "boundary":
            value = value.strip()
            if len(value) >= 2 and value[0] == value[-1] == '"':
                value = value[1:-1]
            if value and value.isascii():
                return value.encode()
    return None


def part_content_type(head: bytes) -> str | None:
    """The ``Content-Type`` of a body part's header section, or None."""
    for line in head.split(b"\r\n"):
        name, colon, value = line.partition(b":")
        if colon and name.strip().lower() in (b"content-type", b"c"):
            return value.decode("ascii", "replace").strip()
    return None


def _filter_part(part: bytes, restricted: bool, keep_location: bool) -> bytes | None:
    """One body part (from the CRLF that ends its delimiter line), filtered; None: drop."""
    end = part.find(b"\r\n\r\n")
    if end < 0:
        return part  # no header section: not understood, left as it is
    head, content = part[: end + 4], part[end + 4 :]
    full_type = part_content_type(head)
    # RFC 2046 §5.1: a part without Content-Type is text/plain
    ctype = _media_type(full_type) if full_type is not None else "text/plain"
    if not keep_location and _is_location(ctype):
        return None
    if ctype == "application/sdp" and restricted:
        new = anonymise_sdp(content)
    elif ctype.startswith("multipart/"):
        new = filter_body(full_type, content, restricted=restricted, keep_location=keep_location)
    else:
        return part
    return part if new is content else head + new


def filter_body(
    content_type: str | None, body: bytes, *, restricted: bool, keep_location: bool
) -> bytes:
    """The body that may cross to the other leg (see the module doc).

    ``restricted``: the call withholds the caller's identity and the body goes towards
    the callee. ``keep_location``: an emergency call towards its emergency trunk.
    Returns ``body`` itself when nothing changes, ``b""`` when nothing of it may go (the
    caller then drops its ``Content-Type``).
    """
    if not body:
        return body
    media = _media_type(content_type)
    if media == "application/sdp":
        return anonymise_sdp(body) if restricted else body
    if not keep_location and _is_location(media):
        return b""
    if not media.startswith("multipart/") or content_type is None:
        return body
    boundary = multipart_boundary(content_type)
    if boundary is None:
        return body
    # RFC 2046 §5.1.1: every delimiter is CRLF "--" boundary (the first one may open the
    # body); the close delimiter adds "--", and the epilogue follows
    delim = b"\r\n--" + boundary
    segments = (b"\r\n" + body).split(delim)
    if len(segments) < 2:
        return body
    kept = [segments[0]]
    changed = False
    closed = False
    for seg in segments[1:]:
        if closed or seg.startswith(b"--"):
            closed = True
            kept.append(seg)
            continue
        new = _filter_part(seg, restricted, keep_location)
        if new is not seg:
            changed = True
        if new is not None:
            kept.append(new)
    if not changed:
        return body
    return delim.join(kept)[2:]
