"""The media step of a call: anchoring through rtpengine over the ng protocol, sans-IO.

Where either trunk of a call has ``media: anchor`` (or the caller asks for
``Privacy: session``, RFC 3323 §4.2, and a relay is configured), every SDP that crosses
the call goes to rtpengine first, and the other leg gets the SDP rtpengine returns:
the relay's address in ``o=`` and ``c=`` (``replace: [origin, session-connection]``),
no ICE candidates (``ICE: remove``: each can carry an address). So the callee never
learns where the caller is, and the caller never learns where the callee is.

Names: the rtpengine call is sipguard's own id of the call (its CDR id, never a SIP
Call-ID of either leg), and the two sides are the tags ``a`` (the caller's) and ``b``
(the callee's), whichever side offers. Both legs are one rtpengine session.

A crossing body goes through :meth:`CallMedia.step`: the body as the crossing rules
made it ready for the other leg (:mod:`~sipguard.b2bua.crossing`), and what to do with
the body to send (``then``). The step asks the relay (``offer`` or ``answer``) and goes
on when its reply comes; nothing in :class:`~sipguard.b2bua.call.Call` records the
wait: what is waited for is the continuation held here (and, for an in-dialog offer, the
:class:`~sipguard.b2bua.relay.Dialogs` ``offer`` slot, which answers glare ``491``
meanwhile). One ng request per call is out at a time, and the steps of a call go on in
the order they came (a ``180`` does not overtake the ``183`` whose SDP is at the relay).

Of a multipart body (an emergency call's SDP and PIDF-LO, RFC 6442) only the
``application/sdp`` part goes to the relay, and its answer goes back in that part's
place; a multipart body not understood never crosses as it is (a new call: ``488``;
later: without its body). An offer with more than :data:`MAX_STREAMS` ``m=`` lines is
refused ``488`` (rtpengine takes ports for each).

A call that ended while its request was out is not resumed: the late reply only sends a
``delete``. Every end of a call that may have a session deletes it (:meth:`release`).

When the relay fails (no reply from any relay, an error, or none usable): a call that
must be anchored (``rtpengine.when_down: refuse``, not an emergency call) is ended
(``503`` to an unanswered caller), as is an on-demand ``Privacy: session;critical``
one (``500``); any other goes on unanchored from then on, reported as
:class:`~sipguard.b2bua.host.Unanchored` (counted; logged for a withheld caller).

Media timeout (``rtpengine.media_timeout``): an answered anchored call is asked about
(``query``) every half timeout, from its own answer time, so the queries are spread as
the calls are and cost a constant per call. When rtpengine's packet count has not moved
for a whole timeout, or rtpengine no longer knows the call, the call is ended with BYE
on both legs (``end_reason: media_timeout``). A query that gets no reply changes nothing.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING, Protocol

from sipguard.b2bua.host import Unanchored
from sipguard.config.model import Config, Trunk
from sipguard.policy.body import multipart_boundary, part_content_type
from sipguard.policy.decision import Decision
from sipguard.sip.message import SipMessage
from sipguard.sip.timers import Timer

if TYPE_CHECKING:
    from sipguard.b2bua.call import Call

log = logging.getLogger("sipguard.b2bua")

OFFER = "offer"
ANSWER = "answer"
Done = Callable[[dict[str, object] | None, float], None]
Then = Callable[[bytes, float], None]
Span = tuple[int, int] | None

# what every offer and answer asks of rtpengine (see the module's docstring)
FLAGS: dict[str, object] = {"replace": ["origin", "session-connection"], "ICE": "remove"}
TAG_A = "a"
TAG_B = "b"

# the most m= lines an anchored offer may have: rtpengine takes ports for each (two or
# more a stream), so one INVITE must not take a whole port range (more: 488)
MAX_STREAMS = 8

# the most steps a call may have waiting for the relay: more only comes of a peer that
# floods (unreliable 18x with SDP, say); the call is then ended
MAX_QUEUE = 16

# the media plan of a new call (admission): nothing to do, anchor it, carry it unanchored
# though it asked for anchoring (relay down, counted), refuse it (503)
NONE = 0
ANCHOR = 1
UNANCHORED = 2
REFUSE = 3


class MediaControl(Protocol):
    """What a call needs of the ng client (:class:`sipguard.media.ng.NgClient`)."""

    def request(self, command: dict[str, object], now: float, done: Done) -> bool: ...

    @property
    def up(self) -> bool: ...


def media_timeout(config: Config) -> float:
    return config.rtpengine.media_timeout


def plan(
    trunk_in: Trunk,
    trunk_out: Trunk,
    decision: Decision,
    config: Config,
    relay: MediaControl | None,
) -> int:
    """What a new call does about its media (:data:`NONE`, :data:`ANCHOR`,
    :data:`UNANCHORED`, :data:`REFUSE`).

    Anchoring is asked for by a trunk's ``media: anchor``, and by the caller's
    ``Privacy: session`` where a relay is configured (anchored on demand). With every
    relay down, ``when_down: refuse`` refuses a call a trunk wants anchored; an
    emergency call, an on-demand one and ``when_down: pass`` go on unanchored.
    """
    by_trunk = trunk_in.media == "anchor" or trunk_out.media == "anchor"
    if relay is None:
        return NONE  # no relay configured: nothing can be anchored
    if not by_trunk and not decision.session_privacy:
        return NONE  # two media: pass trunks never touch rtpengine
    if relay.up:
        return ANCHOR
    if by_trunk and not decision.emergency and config.rtpengine.when_down == "refuse":
        return REFUSE
    return UNANCHORED


def fail_status(trunk_in: Trunk, trunk_out: Trunk, decision: Decision, config: Config) -> int:
    """How an anchored call ends when the relay fails it: ``503`` (must be anchored),
    ``500`` (``Privacy: session;critical``), or 0 (goes on unanchored)."""
    if decision.emergency:
        return 0
    by_trunk = trunk_in.media == "anchor" or trunk_out.media == "anchor"
    if by_trunk and config.rtpengine.when_down == "refuse":
        return 503
    if decision.session_privacy and decision.critical:
        return 500
    return 0


def start_media(call: Call, media: int, relay: MediaControl | None, now: float) -> CallMedia | None:
    """The media of a new call as admission planned it: anchored (a :class:`CallMedia`),
    or None (not anchored; reported :class:`~sipguard.b2bua.host.Unanchored` where it
    asked for anchoring and every relay is down)."""
    if media == UNANCHORED:
        call.host.outcomes.append(Unanchored(call, now))
    if media != ANCHOR or relay is None:
        return None
    status = fail_status(call.trunk_in, call.trunk_out, call.ident.decision, call.config)
    return CallMedia(relay, call.id, status, media_timeout(call.config))


def sdp_kind(msg: SipMessage, kind: str) -> str:
    """``kind`` where ``msg`` carries a session description, else "" (nothing for the
    relay). A body without ``Content-Type`` in an offer/answer position counts as SDP:
    the leg sends it on as such, and it names an address all the same. A multipart body
    counts when it has an SDP part, or when it is not understood (:func:`sdp_span`)."""
    if not msg.body:
        return ""
    span = sdp_span(msg.get("content-type"), msg.body)
    return kind if span is None or span[0] >= 0 else ""


# how deep an SDP part may be in nested multipart bodies (RFC 2046 §5.1)
MULTIPART_DEPTH = 2
NO_SDP = (-1, -1)


def sdp_span(content_type: str | None, body: bytes, depth: int = MULTIPART_DEPTH) -> Span:
    """Where the SDP of ``body`` is: ``(start, end)`` of the whole body (SDP, or no
    ``Content-Type``) or of its one ``application/sdp`` part (a multipart body, such as
    an emergency call's SDP and PIDF-LO, RFC 6442), :data:`NO_SDP` where it has none,
    None where it is not understood (no boundary, a part without a header section,
    nested deeper than :data:`MULTIPART_DEPTH`, two SDP parts): never relayed as it is
    on an anchored call."""
    full = content_type.strip() if content_type else ""
    media = full.split(";", 1)[0].strip().lower()
    if not media or media == "application/sdp":
        return (0, len(body))
    if not media.startswith("multipart/"):
        return NO_SDP
    if depth <= 0:
        return None
    boundary = multipart_boundary(full)
    if boundary is None:
        return None
    # RFC 2046 §5.1.1: every delimiter is CRLF "--" boundary (the first one may open the
    # body); the close delimiter adds "--". Offsets in CRLF + body, hence the 2 below.
    delim = b"\r\n--" + boundary
    segments = (b"\r\n" + body).split(delim)
    if len(segments) < 2:
        return None
    found = NO_SDP
    pos = len(segments[0])
    for seg in segments[1:]:
        pos += len(delim)
        if seg.startswith(b"--"):
            break  # the close delimiter: the epilogue follows
        end = seg.find(b"\r\n\r\n")
        if end < 0:
            return None
        inner = part_content_type(seg[: end + 2]) or "text/plain"
        start = pos + end + 4 - 2
        span = sdp_span(inner, seg[end + 4 :], depth - 1)
        if span is None:
            return None
        if span[0] >= 0:
            if found[0] >= 0:
                return None  # two session descriptions: not understood
            found = (start + span[0], start + span[1])
        pos += len(seg)
    return found


def too_many_streams(body: bytes) -> bool:
    """More ``m=`` lines in ``body`` than an anchored offer may have (:data:`MAX_STREAMS`)."""
    n = body.startswith(b"m=") + body.count(b"\nm=")
    return n > MAX_STREAMS


def rtp_packets(reply: dict[str, object]) -> int:
    """The packets rtpengine received on a call (RTP and RTCP), from a ``query`` reply."""
    totals = reply.get("totals")
    n = 0
    if isinstance(totals, dict):
        for kind in ("RTP", "RTCP"):
            stats = totals.get(kind)
            if isinstance(stats, dict):
                packets = stats.get("packets")
                if isinstance(packets, int):
                    n += packets
    return n


def sdp_of(reply: dict[str, object] | None) -> bytes | None:
    """The SDP of an ``ok`` reply to ``offer`` or ``answer``; None for anything else."""
    if reply is None or reply.get("result") != "ok":
        return None
    sdp = reply.get("sdp")
    if isinstance(sdp, str):
        return sdp.encode("utf-8", "surrogateescape")
    if isinstance(sdp, bytes):
        return sdp
    return None


def rejecting_answer(offer: bytes) -> bytes:
    """An SDP answer that rejects every stream of ``offer`` (RFC 3264 §6: port 0, one
    ``m=`` line per offered one, in order)."""
    lines = [b"v=0", b"o=- 0 0 IN IP4 0.0.0.0", b"s=-", b"c=IN IP4 0.0.0.0", b"t=0 0"]
    for raw in offer.split(b"\n"):
        line = raw.rstrip(b"\r")
        if line.startswith(b"m="):
            parts = line[2:].split()
            if len(parts) >= 4:
                lines.append(b"m=" + b" ".join([parts[0], b"0", parts[2], parts[3]]))
    return b"\r\n".join(lines) + b"\r\n"


def _in_place(body: bytes, start: int, end: int, then: Then) -> Then:
    """``then`` given the whole multipart ``body`` with the relay's SDP in its part."""

    def put(sdp: bytes, now: float) -> None:
        then(sdp if sdp is body else body[:start] + sdp + body[end:], now)

    return put


def _ignore(reply: dict[str, object] | None, now: float) -> None:
    return None


class CallMedia:
    """The media of one anchored call (see the module's docstring).

    The continuations queued here refer to their call: :meth:`release` drops them when
    the call ends (the call and its parts leave no cycle behind).
    """

    __slots__ = (
        "active",
        "busy",
        "changed",
        "fail_status",
        "packets",
        "queue",
        "relay",
        "session",
        "timeout",
        "timer",
        "used",
    )

    def __init__(self, relay: MediaControl, session: str, fail_status: int, timeout: float) -> None:
        self.relay = relay
        self.session = session  # the rtpengine call-id: sipguard's own id of the call
        self.fail_status = fail_status
        self.timeout = timeout  # rtpengine.media_timeout (0: off)
        self.active = True  # False: carried unanchored from now on
        self.busy = False  # an offer or answer of this call is at the relay
        self.used = False  # an offer went out: rtpengine may hold a session
        self.queue: deque[tuple[str, bool, bytes, Then, str | None]] = deque()
        self.timer: Timer | None = None
        self.packets = 0  # rtpengine's packet count at the last query that moved
        self.changed = 0.0  # when it last moved (or the answer time)

    # -- offer and answer ----------------------------------------------------------------

    def step(
        self,
        call: Call,
        kind: str,
        from_a: bool,
        body: bytes,
        now: float,
        then: Then,
        ctype: str | None = None,
    ) -> None:
        """``then(body to send, now)``: at once, or when the relay has rewritten ``body``.

        ``kind``: :data:`OFFER` or :data:`ANSWER` of the side ``from_a`` names, or ""
        for a message without SDP, which only keeps its place behind the steps waiting.
        ``ctype``: the message's ``Content-Type``; of a multipart body only the SDP part
        goes to the relay, and comes back in its place (:func:`sdp_span`).
        """
        if not self.busy and not self.queue and (not kind or not body or not self.active):
            then(body, now)
            return
        if len(self.queue) >= MAX_QUEUE:
            log.warning("call %s: %d media steps waiting for the relay: ended", call.id, MAX_QUEUE)
            self.queue.clear()
            call.hangup(
                True,
                now,
                reason="rejected" if call.early else "timeout",
                status=500 if call.early else call.status,
                to_a=True,
            )
            return
        self.queue.append((kind, from_a, body, then, ctype))
        self._next(call, now)

    def _next(self, call: Call, now: float) -> None:
        queue = self.queue
        while queue and not self.busy:
            if call.ended:
                queue.clear()
                return
            kind, from_a, body, then, ctype = queue.popleft()
            if not kind or not body or not self.active:
                then(body, now)
                continue
            span = sdp_span(ctype, body)
            if span is None:
                then(b"", now)  # not understood: never relayed as it is (no body)
                continue
            start, end = span
            if start < 0:
                then(body, now)  # a multipart body without SDP: no address in it
                continue
            if too_many_streams(body[start:end]):
                # an offer from either side (a late offer in the callee's 18x/2xx, one in
                # a response to an offerless re-INVITE), or an answer with more streams
                # than any offer may have (RFC 3264 §6: as many as its offer), takes
                # ports per stream: more than MAX_STREAMS ends the call, never relayed
                log.warning(
                    "call %s: an SDP with more than %d streams: ended", call.id, MAX_STREAMS
                )
                queue.clear()
                call.hangup(
                    True,
                    now,
                    reason="rejected" if call.early or call.a_open else "timeout",
                    status=488 if call.early or call.a_open else call.status,
                    to_a=True,
                )
                return
            if (start, end) != (0, len(body)):
                then = _in_place(body, start, end, then)
            self.busy = True
            self.used = True

            def done(
                reply: dict[str, object] | None, t: float, body: bytes = body, then: Then = then
            ) -> None:
                self._done(call, reply, t, body, then)

            sdp = body[start:end]
            if not self.relay.request(self._command(kind, from_a, sdp), now, done):
                self.busy = False
                self._failed(call, now, body, then)

    def _command(self, kind: str, from_a: bool, body: bytes) -> dict[str, object]:
        own, other = (TAG_A, TAG_B) if from_a else (TAG_B, TAG_A)
        cmd: dict[str, object] = {"command": kind, "call-id": self.session, "sdp": body}
        if kind == OFFER:
            cmd["from-tag"] = own
            if self.used:
                cmd["to-tag"] = other  # a new offer within the session (re-INVITE, UPDATE)
        else:
            cmd["from-tag"] = other  # the offerer's
            cmd["to-tag"] = own
        cmd.update(FLAGS)
        return cmd

    def _done(
        self, call: Call, reply: dict[str, object] | None, now: float, body: bytes, then: Then
    ) -> None:
        self.busy = False
        if call.ended:
            self._delete(now)  # the late reply of an ended call: not resumed
            return
        try:
            sdp = sdp_of(reply)
            if sdp is None:
                self._failed(call, now, body, then)
            else:
                then(sdp, now)
            self._next(call, now)
        except Exception:
            # our bug, in the call's step resumed here: the call is ended, never left
            # waiting for ever (the ng client goes on with the other calls' replies)
            log.exception("internal error resuming a call after its relay's reply; it is ended")
            self._abort(call, now)

    def _abort(self, call: Call, now: float) -> None:
        self.queue.clear()
        try:
            call.abort(now)
        except Exception:
            log.exception("internal error ending a call after an internal error")

    def _failed(self, call: Call, now: float, body: bytes, then: Then) -> None:
        """The relay did not anchor this step: end the call, or go on unanchored."""
        if self.fail_status:
            self.queue.clear()
            call.hangup(
                True,
                now,
                reason="rejected" if call.early else "timeout",
                status=self.fail_status,
                to_a=True,
            )
            return
        self.active = False
        call.host.outcomes.append(Unanchored(call, now))
        call.host.media_unanchored(call)  # before its SDP goes on as it is
        then(body, now)

    # -- the end -------------------------------------------------------------------------

    def release(self, now: float) -> None:
        """The call is over: nothing more is resumed; its rtpengine session is deleted
        (by the late reply if a request is still out)."""
        self.queue.clear()
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        if not self.busy:
            self._delete(now)

    def _delete(self, now: float) -> None:
        if self.used:
            self.used = False
            cmd: dict[str, object] = {"command": "delete", "call-id": self.session}
            cmd["delete-delay"] = 0
            self.relay.request(cmd, now, _ignore)  # refused: rtpengine's timeout ends it

    # -- media timeout -------------------------------------------------------------------

    def watch(self, call: Call, now: float) -> None:
        """The call is answered: from now on its media must flow (``media_timeout``)."""
        if self.timeout <= 0 or not self.used or not self.active or self.timer is not None:
            return
        self.changed = now
        self._arm(call, now)

    def _arm(self, call: Call, now: float) -> None:
        def query(t: float) -> None:
            self._query(call, t)

        self.timer = call.host.layer.timers.after(now, self.timeout / 2, query)

    def _query(self, call: Call, now: float) -> None:
        self.timer = None
        if call.ended or not self.active:
            return

        def done(reply: dict[str, object] | None, t: float) -> None:
            self._queried(call, reply, t)

        if not self.relay.request({"command": "query", "call-id": self.session}, now, done):
            self._arm(call, now)

    def _queried(self, call: Call, reply: dict[str, object] | None, now: float) -> None:
        try:
            self._check(call, reply, now)
        except Exception:
            log.exception("internal error checking a call's media; it is ended")
            self._abort(call, now)

    def _check(self, call: Call, reply: dict[str, object] | None, now: float) -> None:
        if call.ended or not self.active:
            return
        gone = False
        result = None if reply is None else reply.get("result")
        if reply is not None and result == "ok":
            packets = rtp_packets(reply)
            if packets != self.packets:
                self.packets = packets
                self.changed = now
        elif reply is not None and result == "error":
            reason = reply.get("error-reason")
            gone = isinstance(reason, str) and "unknown call" in reason.lower()
        if not gone and result != "ok":
            # no reply (or none that says anything): it tells nothing about the media,
            # and never ends the call; the next query asks again
            self._arm(call, now)
            return
        if gone or now - self.changed >= self.timeout:
            call.hangup(True, now, reason="media_timeout", status=call.status, to_a=True)
            return
        self._arm(call, now)
