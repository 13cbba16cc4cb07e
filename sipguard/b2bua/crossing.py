"""What of one leg's message may cross to the other leg of a call, and how.

Nothing is copied wholesale: the end-to-end headers pass the next trunk's allowlist and
the privacy filters (:mod:`sipguard.policy.headers`), the body the body filter
(:mod:`sipguard.policy.body`), and a reason phrase, being free text, only towards a
trusted trunk. Per-leg headers (routing, negotiation, ``Contact``) never cross; each leg
writes its own.
"""

from __future__ import annotations

from sipguard.b2bua.identity import CallIdentity
from sipguard.config.model import Trunk
from sipguard.policy.body import filter_body
from sipguard.policy.headers import copy_headers
from sipguard.sip.message import Response, SipMessage, canonical_name

# Headers that belong to one leg's negotiation or routing: never relayed, rebuilt per leg.
_PER_LEG = frozenset(
    {
        "rseq",
        "rack",
        "record-route",
        "contact",
        "server",
        "unsupported",
        "supported",
        "require",
        "allow",
        "session-expires",
        "min-se",
    }
)
_AUTH_CHALLENGE = frozenset({"www-authenticate", "proxy-authenticate"})
_AUTH_CREDENTIALS = frozenset({"authorization", "proxy-authorization"})
_NO_AUTH: frozenset[str] = frozenset()
# what describes a body: goes when the policy leaves nothing of the body to relay
_CONTENT_HEADERS = frozenset(
    {"content-type", "content-disposition", "content-encoding", "content-language"}
)


class Crossing:
    """The crossing rules of one call: its trunks and its privacy decision (immutable)."""

    __slots__ = ("emergency", "ident", "trunk_in", "trunk_out")

    def __init__(self, trunk_in: Trunk, trunk_out: Trunk, ident: CallIdentity) -> None:
        self.trunk_in = trunk_in
        self.trunk_out = trunk_out
        self.ident = ident
        self.emergency = ident.decision.emergency

    def headers(
        self,
        msg: SipMessage,
        *,
        towards_a: bool,
        response: bool = False,
        credentials: bool = False,
    ) -> list[tuple[str, str]]:
        """The end-to-end headers of ``msg`` that may cross to the other leg.

        A challenge goes back to the caller; credentials go only to the trunk that asked
        for them (``credentials``: this request answers a challenge), never unasked.
        """
        trunk = self.trunk_in if towards_a else self.trunk_out
        restricted = self.ident.decision.presentation == "restricted" and not towards_a
        if response and towards_a:
            auth = _AUTH_CHALLENGE
        elif not response and not towards_a and credentials:
            auth = _AUTH_CREDENTIALS
        else:
            auth = _NO_AUTH
        pairs = [
            (lname, value)
            for lname, value in msg.keyed_headers()
            if lname not in _PER_LEG
            and (lname in auth or (lname not in _AUTH_CHALLENGE and lname not in _AUTH_CREDENTIALS))
        ]
        source = self.trunk_out if towards_a else self.trunk_in
        out = copy_headers(
            pairs,
            towards_trusted=trunk.trusted,
            restricted=restricted,
            emergency_to_emergency_trunk=self.emergency and not towards_a,
            allowlist=trunk.header_allowlist | auth if auth else trunk.header_allowlist,
            # RFC 7044 §10.1: the caller's Privacy: history (sipguard sends no Privacy
            # header of its own that would ask the next hop for it)
            anonymise_history=not towards_a and "history" in self.ident.facts.privacy,
            from_trusted=source.trusted,
        )
        return [(canonical_name(n), v) for n, v in out]

    def body(self, msg: SipMessage, headers: list[tuple[str, str]], *, towards_a: bool) -> bytes:
        """The body of ``msg`` as it may cross to the other leg: no location but towards
        the emergency trunk, no caller identity in the SDP of a restricted call.
        ``headers`` (the relayed ones) lose their ``Content-*`` headers when nothing of
        the body may go."""
        body = msg.body
        if not body:
            return body
        out = filter_body(
            msg.get("content-type"),
            body,
            restricted=self.ident.decision.restricted and not towards_a,
            keep_location=self.emergency and not towards_a,
        )
        if not out:
            headers[:] = [h for h in headers if h[0].lower() not in _CONTENT_HEADERS]
        return out

    def no_body(self, headers: list[tuple[str, str]]) -> bytes:
        """No body for this message: ``headers`` lose their ``Content-*`` headers. On an
        anchored call, an SDP in a failure response never crosses (it names the sender's
        media address, and no offer/answer is made by it)."""
        headers[:] = [h for h in headers if h[0].lower() not in _CONTENT_HEADERS]
        return b""

    def no_headers(self, headers: list[tuple[str, str]]) -> list[tuple[str, str]]:
        """``headers`` without their ``Content-*`` headers (a message without its body)."""
        return [h for h in headers if h[0].lower() not in _CONTENT_HEADERS]

    def phrase(self, resp: Response, *, towards_a: bool) -> str | None:
        """The reason phrase to relay: the peer's own only towards a trusted trunk.

        A reason phrase is free text and can name a person, a number or an address;
        towards an untrusted trunk the standard phrase for the status is used instead.
        """
        trunk = self.trunk_in if towards_a else self.trunk_out
        return resp.reason if trunk.trusted else None
