"""The B-leg INVITE, built from scratch for one target (SPEC §3 "Always").

Its own Call-ID, tags, Via, Contact and CSeq; ``From``, ``P-Asserted-Identity`` and
``Privacy`` from the privacy decision (:func:`~sipguard.b2bua.identity.identity_headers`);
every other header and the body only through the call's crossing rules. The builder
mutates nothing: it returns the request and what the B-leg learns from building it.
"""

from __future__ import annotations

from sipguard.b2bua.crossing import Crossing
from sipguard.b2bua.host import ALLOW
from sipguard.b2bua.identity import identity_headers
from sipguard.config.model import Config
from sipguard.sip.message import Request
from sipguard.sip.transaction import Flow
from sipguard.sip.uri import Uri


class BInvite:
    """A B-leg INVITE and what its leg learns: the URIs of its dialog and the SDP sent."""

    __slots__ = ("local_uri", "remote_target", "remote_uri", "request", "sdp")

    def __init__(
        self, request: Request, local_uri: str, remote_uri: str, remote_target: str, sdp: bytes
    ) -> None:
        self.request = request
        self.local_uri = local_uri  # our From, without its tag
        self.remote_uri = remote_uri  # To
        self.remote_target = remote_target  # the Request-URI: this target's own
        self.sdp = sdp  # the session description offered (b"" if none)


def target_uri(a_req: Request, crossing: Crossing, flow: Flow, redirect: str | None) -> str:
    """The Request-URI for a target: where a 3xx sent us; the dialled number at a
    configured target's address; or, for a trunk reached at the Request-URI's own host,
    that URI with the dialled number (CLIR code removed) as its user."""
    if redirect is not None:
        return redirect
    ruri = a_req.request_uri
    dialled = crossing.ident.dialled
    if crossing.trunk_out.targets:
        if ruri.scheme == "urn" or not dialled:
            return a_req.uri
        host = flow.host if ":" not in flow.host else f"[{flow.host}]"
        uri = f"sip:{dialled}@{host}:{flow.port}"
        if ruri.param("user") == "phone" or ruri.scheme == "tel":
            uri += ";user=phone"
        return uri
    return str(Uri(ruri.scheme, dialled or ruri.user, None, ruri.host, ruri.port, ruri.params))


def build_b_invite(
    a_req: Request,
    crossing: Crossing,
    config: Config,
    *,
    flow: Flow,
    via: str,
    contact: str,
    call_id: str,
    local_tag: str,
    cseq: int,
    redirect: str | None,
    remote_uri: str,
    session_interval: int,
    min_se: int,
    credentials: bool,
    sdp: bytes | None = None,
) -> BInvite:
    """The INVITE of one B-leg attempt. ``remote_uri``: the To of an earlier attempt
    (kept across failover and redirects), "" for the first; ``session_interval`` and
    ``min_se``: what to ask for (RFC 4028 §7.4; 0: no session timer);
    ``credentials``: this INVITE answers a challenge, so its credentials may go;
    ``sdp``: the offer as the media relay rewrote it (:mod:`~sipguard.b2bua.media`),
    in place of the caller's SDP."""
    uri = target_uri(a_req, crossing, flow, redirect)
    if not remote_uri:
        remote_uri = f"<{uri}>" if not crossing.ident.dialled else f"<{uri.split(';')[0]}>"
    mf = a_req.max_forwards
    max_forwards = 70 if mf is None else mf - 1
    ident_hdrs = identity_headers(crossing.ident, local_tag, crossing.trunk_out, config)
    headers: list[tuple[str, str]] = [
        ("Via", via),
        ("Max-Forwards", str(max_forwards)),
        *ident_hdrs,
        ("To", remote_uri),
        ("Call-ID", call_id),
        ("CSeq", f"{cseq} INVITE"),
        ("Contact", contact),
        ("Allow", ALLOW),
        ("Supported", "100rel, timer"),
    ]
    if session_interval > 0:
        headers.append(("Session-Expires", str(session_interval)))
        headers.append(("Min-SE", str(min_se)))
    headers.extend(crossing.headers(a_req, towards_a=False, credentials=credentials))
    body = crossing.body(a_req, headers, towards_a=False)  # SDP identity, location
    if sdp is not None and body:
        body = sdp
    if body:
        ctype = a_req.get("content-type")
        if ctype and not any(n == "Content-Type" for n, _ in headers):
            headers.append(("Content-Type", ctype))
    headers.append(("Content-Length", str(len(body))))
    sdp = body if body and a_req.content_type == "application/sdp" else b""
    local_uri = ident_hdrs[0][1].rsplit(";tag=", 1)[0]
    return BInvite(Request("INVITE", uri, headers, body), local_uri, remote_uri, uri, sdp)
