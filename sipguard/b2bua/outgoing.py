"""The B-leg INVITE of a call until it is answered: targets, failover, redirects, 422.

One attempt at a time goes to the first of the call's targets. A target that does not
answer in time, answers ``503`` or fails in transport is given up (the element probes it,
:class:`~sipguard.b2bua.host.TargetFailed`) and the next one is tried; a ``3xx`` inside
the next trunk is followed (at most three times, never relayed); a ``422`` is retried
with the larger ``Min-SE`` (RFC 4028 §7.4); a ``401``/``407`` is relayed to the caller and
the B-leg kept for its retry (:class:`~sipguard.b2bua.host.Challenged`). The callee's
reliable provisional responses are PRACKed here (RFC 3262 §4).

The state is this object's; the call it serves is passed in.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from sipguard.b2bua.bleg import build_b_invite
from sipguard.b2bua.host import Challenged, ForkIgnored, TargetFailed
from sipguard.b2bua.leg import IGNORE, Leg
from sipguard.b2bua.media import ANSWER, OFFER, sdp_kind, sdp_span, too_many_streams
from sipguard.b2bua.peers import Peers
from sipguard.b2bua.routing import redirect_target
from sipguard.b2bua.session_timer import delta_seconds
from sipguard.config.model import Config, Trunk
from sipguard.sip.message import Request, Response
from sipguard.sip.transaction import ClientTransaction, Flow

if TYPE_CHECKING:
    from sipguard.b2bua.call import Call

log = logging.getLogger("sipguard.b2bua")

MAX_RETRIES = 3  # redirects and 422 retries of one call, together
AUTH_RETRY_WINDOW = 32.0  # how long a challenged B-leg waits for the caller's retry
MAX_CHALLENGES = 1000  # challenged B-legs kept at once
MAX_FORKS = 8  # other forks' 2xx whose ACK a call keeps (to repeat it); more are not kept
MAX_FORK_TAGS = 64  # other forks' To tags a call knows (BYEd once); more are ignored


class Outgoing:
    """The B-leg INVITE's attempts: ``targets[0]`` is the one being tried."""

    __slots__ = (
        "ack",
        "acking",
        "credentials",
        "cseq",
        "fork_tags",
        "forks",
        "forks_ignored",
        "min_se",
        "offer",
        "prack",
        "redirect",
        "relayed_offer",
        "retries",
        "rseq",
        "targets",
        "tried",
        "tx",
    )

    def __init__(self) -> None:
        self.targets: list[Flow] = []
        # every flow an attempt went to (a target given up on may answer late, and its
        # 2xx is still ACKed and BYEd): at most the targets and MAX_RETRIES redirects
        self.tried: list[Flow] = []
        self.redirect: str | None = None  # the Request-URI a followed 3xx gave
        self.retries = 0  # redirects followed and 422s retried
        # the largest Min-SE a 422 of the next hop asked for (RFC 4028 §7.4), 0 if none
        self.min_se = 0
        self.credentials = False  # this INVITE answers a challenge relayed from the B-leg
        self.tx: ClientTransaction | None = None  # the INVITE now out
        self.cseq = 0  # its CSeq (PRACKs in the early dialog move the leg's local_seq)
        self.rseq = 0  # the highest RSeq of the callee's reliable 1xx seen (RFC 3262)
        self.ack: bytes | None = None  # our ACK of the 2xx
        self.acking = False  # the caller's ACK (its answer) is at the media relay
        self.offer = b""  # the offer in a late-offer 2xx, which the caller's ACK answers
        self.forks: dict[str, bytes] | None = None  # To tag -> our ACK, of 2xx we BYEd
        # the To tags of every other fork's 2xx we BYEd, at most MAX_FORK_TAGS
        self.fork_tags: set[str] | None = None
        self.forks_ignored = 0  # 2xx of new forks past MAX_FORK_TAGS, ignored
        # the caller's offer as the media relay rewrote it, for every attempt (None: as
        # the crossing rules give it)
        self.relayed_offer: bytes | None = None
        # the RAck of the callee's reliable 1xx whose offer (to our offerless INVITE) the
        # caller answers in its PRACK: our PRACK waits for it (None: none; "": answered)
        self.prack: str | None = None

    def start(self, call: Call, targets: list[Flow], now: float, reuse: Leg | None) -> None:
        """Send the B-leg INVITE to the first target; the rest are for failover."""
        self.targets = targets
        if reuse is not None:
            # the retry of a challenged INVITE goes on the same B-leg (RFC 3261 §22.2)
            call.b = reuse
            self.credentials = True
        else:
            call.b = Leg(call.host, False, call.host.new_call_id(), targets[0])
        call.host.watch_egress(call)  # before its first message (SPEC §8: fail closed)
        a_req = call.a_invite.request
        media = call.media
        if media is None or not sdp_kind(a_req, OFFER):
            self.send(call, now)
            return
        # anchored: the caller's offer goes to the media relay first, and the INVITE
        # when its answer comes (the call waits with no INVITE out: ``tx`` is None)
        body = call.crossing.body(a_req, [], towards_a=False)
        ctype = a_req.get("content-type")
        if media.active and (too_many_streams(body) or sdp_span(ctype, body) is None):
            # more streams than a call may take of rtpengine's ports, or a multipart body
            # whose SDP cannot be told apart: refused, never relayed as it is
            call.hangup(True, now, reason="rejected", status=488, to_a=True)
            return
        media.step(call, OFFER, True, body, now, lambda sdp, t: self._offered(call, sdp, t), ctype)

    def _offered(self, call: Call, sdp: bytes, now: float) -> None:
        self.relayed_offer = sdp
        self.send(call, now)

    def send(self, call: Call, now: float) -> None:
        b = call.b
        assert b is not None
        flow = self.targets[0]
        b.flow = flow
        if flow not in self.tried:
            self.tried.append(flow)
        b.remote_tag = None
        b.local_seq += 1
        self.cseq = b.local_seq
        config = call.config
        inv = build_b_invite(
            call.a_invite.request,
            call.crossing,
            config,
            flow=flow,
            via=call.host.via(flow),
            contact=call.host.contact(flow),
            call_id=b.call_id,
            local_tag=b.local_tag,
            cseq=b.local_seq,
            redirect=self.redirect,
            remote_uri=b.remote_uri,
            session_interval=self.session_interval(config),
            min_se=self.min_se_value(config),
            credentials=self.credentials,
            sdp=self.relayed_offer,
        )
        b.local_uri = inv.local_uri
        b.remote_uri = inv.remote_uri
        b.remote_target = inv.remote_target
        if inv.sdp:
            b.sdp = inv.sdp
        self.tx = b.send(inv.request, call, now)
        call.arm(now, config.sip.target_timeout, lambda t: self.target_timeout(call, t))

    def target_timeout(self, call: Call, now: float) -> None:
        """No provisional response from this target in time: try the next one."""
        call.timer = None
        tx = self.tx
        if not call.early or tx is None or tx.provisional_seen:
            return
        # not forgotten: CANCELled as soon as it may be (§9.1), and a 2xx that comes late
        # after all is ACKed and ended with BYE (§13.2.2.4) rather than left answered
        call.host.layer.cancel(tx, now)
        self.next_target(call, now, 408)

    def next_target(self, call: Call, now: float, status: int) -> None:
        self.redirect = None  # a redirect's Request-URI was for the target that failed
        if self.targets:
            call.host.outcomes.append(TargetFailed(call, now, self.targets[0]))
            self.targets = self.targets[1:]
        if self.targets and call.early:
            self.send(call, now)
            return
        final = 408 if status == 408 else 503
        call.answer_a(final, now)
        call.finish(now, "timeout" if final == 408 else "rejected", final)

    def provisional(self, call: Call, resp: Response, now: float) -> bool:
        """A provisional response: the early dialog learnt, a reliable one PRACKed.
        False: not to be relayed (a retransmission, or an RSeq that is no number)."""
        b = call.b
        assert b is not None
        to_tag = resp.to.tag
        if not to_tag or (b.remote_tag is not None and b.remote_tag != to_tag):
            return True
        # the early dialog (the first fork's): its target serves UPDATE and PRACK
        b.learn(resp)
        rseq_text = (resp.get("rseq") or "").strip()
        if not rseq_text or "100rel" not in resp.tokens("require"):
            return True
        if not (rseq_text.isascii() and rseq_text.isdigit()) or len(rseq_text) > 10:
            return False  # an RSeq that is not a number: the response is ignored
        rack = f"{rseq_text} {resp.cseq.number} INVITE"
        rseq = int(rseq_text)
        if rack == self.prack:
            return False  # its offer still awaits the caller's answer: our PRACK too
        if self.prack is None and call.late_offer and resp.body and "100rel" in call.a.supports:
            # an offer in a reliable 1xx (RFC 3262 §5): the caller answers it in its
            # PRACK, which is relayed as ours (answer_prack)
            self.prack = rack
        else:
            b.send(b.request("PRACK", [("RAck", rack)]), call, now)
        if rseq <= self.rseq:
            # a retransmission (our PRACK was lost): PRACKed again, not relayed again
            # (RFC 3262 §4: only a higher RSeq is a new response)
            return False
        self.rseq = rseq
        return True

    def answer_prack(self, call: Call, prack: Request, now: float) -> None:
        """The caller's PRACK: where the callee's reliable 1xx made an offer, our PRACK
        carries the caller's answer (through the media relay on an anchored call)."""
        rack = self.prack
        b = call.b
        if not rack or b is None or call.ended:
            return
        self.prack = ""
        body = call.crossing.body(prack, [], towards_a=False)

        def send(sdp: bytes, t: float) -> None:
            ctype = [("Content-Type", "application/sdp")] if sdp else []
            b.send(b.request("PRACK", [("RAck", rack), *ctype], sdp), call, t)

        if call.media is None:
            send(body, now)
        else:
            kind = sdp_kind(prack, ANSWER)
            call.media.step(call, kind, True, body, now, send, prack.get("content-type"))

    def failed(self, call: Call, resp: Response, now: float) -> None:
        """A final failure of the attempt: the next target, a redirect or retry, or the
        caller told."""
        status = resp.status
        if status == 503:
            self.next_target(call, now, status)
            return
        if 300 <= status < 400:
            found = redirect_target(call.config.listen, call.trunk_out, resp)
            if found is not None and self.retries < MAX_RETRIES:
                self.retries += 1
                flow, self.redirect = found
                self.targets = [flow, *self.targets[1:]]
                self.send(call, now)
                return
            # a 3xx is never relayed (topology): it is a failure of this target
            call.answer_a(480, now)
            call.finish(now, "rejected", 480)
            return
        if status == 422:
            min_se = delta_seconds((resp.get("min-se") or "").split(";")[0])
            asked = self.session_interval(call.config)
            if min_se is not None and min_se > asked and self.retries < MAX_RETRIES:
                # RFC 4028 §7.4: again, asking for the largest Min-SE a 422 gave
                self.retries += 1
                self.min_se = max(self.min_se, min_se)
                self.send(call, now)
                return
            # a 422 we cannot satisfy (no usable Min-SE, none above what we asked for, or
            # too many): the caller's session is not at fault, and a 422 relayed without
            # our Min-SE would only fail it (RFC 4028 §9 and its erratum 1687)
            call.answer_a(500, now, "Session Interval Not Agreed")
            call.finish(now, "rejected", 500)
            return
        if status in (401, 407):
            call.host.outcomes.append(Challenged(call, now))
        call.relay_to_a(resp, now)
        call.finish(now, "rejected", status)

    def session_interval(self, config: Config) -> int:
        """The Session-Expires our INVITE asks for (0: none), RFC 4028 §7.4: our interval,
        raised to the largest Min-SE a 422 of the next hop gave."""
        se = config.sip.session_expires
        if se <= 0 and not self.min_se:
            return 0
        return max(se, self.min_se, config.sip.min_se)

    def min_se_value(self, config: Config) -> int:
        """The Min-SE our INVITE carries: ours, or a 422's if larger."""
        return max(config.sip.min_se, self.min_se)

    def ack_and_bye(self, call: Call, resp: Response, now: float, flow: Flow | None) -> None:
        """A 2xx we will not use: ACK it and end that dialog with BYE (§13.2.2.4).

        ``flow``: where it came from, when not from the B-leg's current target (its
        peer's: the caller checked). Each dialog is BYEd once (§13.2.2.4): the To tags of
        :data:`MAX_FORK_TAGS` of them are known, and the ACKs of the first
        :data:`MAX_FORKS` kept, to repeat one if its 2xx comes again (a known fork's 2xx
        without a kept ACK gets nothing). A 2xx of yet another dialog past that is
        ignored, counted as ``sipguard_rejected_total{reason="fork_limit"}`` and logged
        once per call: a call holds bounded state whatever its peer sends, and one
        datagram never buys a new BYE transaction.
        """
        b = call.b
        assert b is not None
        flow = flow or b.flow
        tag = resp.to.tag or ""
        if self.forks is None:
            self.forks = {}
            self.fork_tags = set()
        forks = self.forks
        tags = self.fork_tags
        assert tags is not None
        layer = call.host.layer
        if tag in tags:
            # that 2xx again (our ACK was lost): ACK it again, BYE it only once (§13.2.2.4)
            ack = forks.get(tag)
            if ack is not None:
                layer.send(flow, ack, retransmission=True)
            return
        if len(tags) >= MAX_FORK_TAGS:
            layer.strays += 1  # its source's stray budget pays for it (b2bua/gate.py)
            self.forks_ignored += 1
            if self.forks_ignored == 1:
                log.warning(
                    "call %s: more than %d other forks answered; their 2xx are ignored",
                    call.id,
                    MAX_FORK_TAGS,
                )
            call.host.outcomes.append(ForkIgnored(call, now))
            return
        tags.add(tag)
        fork = Leg(call.host, False, b.call_id, flow)
        fork.local_tag = b.local_tag
        fork.local_uri = b.local_uri
        fork.remote_uri = b.remote_uri
        fork.learn(resp)
        if not resp.contacts:
            fork.remote_target = b.remote_target
        fork.local_seq = resp.cseq.number
        ack = fork.ack(resp.cseq.number, b"")
        if len(forks) < MAX_FORKS:
            forks[tag] = ack
        layer.send(fork.flow, ack)
        fork.send(fork.request("BYE"), IGNORE, now)


class Challenges:
    """B-legs whose INVITE the next hop challenged (401/407), kept for the caller's retry
    with credentials, which goes on the same B-leg (RFC 3261 §22.2): by the caller's
    Call-ID and From tag, for :data:`AUTH_RETRY_WINDOW` seconds, at most
    :data:`MAX_CHALLENGES` of them."""

    __slots__ = ("waiting",)

    def __init__(self) -> None:
        # the caller's (Call-ID, From tag) -> (when, the B-leg, the caller's trunk, where
        # its INVITE came from)
        self.waiting: dict[tuple[str, str], tuple[float, Leg, Trunk, Flow]] = {}

    def remember(self, call: Call, now: float) -> None:
        if call.b is None:
            return
        waiting = self.waiting
        entry = (now, call.b, call.trunk_in, call.a.flow)
        waiting[(call.a.call_id, call.a.remote_tag or "")] = entry
        if len(waiting) > MAX_CHALLENGES or len(waiting) % 64 == 0:
            fresh = now - AUTH_RETRY_WINDOW
            kept = [(k, v) for k, v in waiting.items() if v[0] > fresh]
            self.waiting = dict(kept[-MAX_CHALLENGES:])  # the oldest go first

    def retry_leg(self, req: Request, flow: Flow, peers: Peers, now: float) -> Leg | None:
        """The B-leg a caller's INVITE with credentials retries on, if it is one: from
        the caller that was challenged (its ids alone are the caller's to choose)."""
        key = (req.call_id, req.from_.tag or "")
        entry = self.waiting.get(key)
        if entry is None or not peers.from_peer(entry[2], entry[3], flow):
            return None
        del self.waiting[key]
        if entry[0] < now - AUTH_RETRY_WINDOW:
            return None
        if not (req.has("authorization") or req.has("proxy-authorization")):
            return None
        return entry[1]
