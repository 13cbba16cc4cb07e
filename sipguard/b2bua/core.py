"""The B2BUA core: the transaction user that turns requests into calls, sans-IO.

Inputs: :meth:`B2BUA.receive` (bytes from a socket, the :class:`Flow` they came on,
``now``), :meth:`B2BUA.handle_timer`, :meth:`media_receive` (rtpengine's ng replies), the
connections the driver opened or lost (:meth:`connection_up`, :meth:`connection_down`)
and the control calls (:meth:`reload`, :meth:`drain`, :meth:`shutdown`). Outputs, drained
by the driver after each input: :attr:`outbox` (``(flow, bytes)`` to send),
:attr:`media_outbox` (ng datagrams), :attr:`cdr_out` (CDR records to write), and
:meth:`next_deadline`. Only ``net/`` reads clocks and touches sockets.

The core dispatches; each concern has its room: a new INVITE is judged by
:func:`~sipguard.b2bua.admission.admit`, routed by the
:class:`~sipguard.b2bua.routing.Router`, becomes a :class:`~sipguard.b2bua.call.Call`
whose B-leg INVITE :mod:`~sipguard.b2bua.bleg` builds, and whose outcomes
:class:`~sipguard.b2bua.records.Records` turns into CDRs and metrics.
"""

from __future__ import annotations

import logging

from sipguard.b2bua.admission import Admitted, Capacity, MergeKey, Refused, admit, merge_key
from sipguard.b2bua.call import ANSWERED, ENDED, Call
from sipguard.b2bua.host import (
    ALLOW,
    SUPPORTED,
    Answered,
    Challenged,
    Ended,
    Outcome,
    TargetFailed,
    Unanchored,
)
from sipguard.b2bua.leg import Leg, LocalAddresses
from sipguard.b2bua.media import start_media
from sipguard.b2bua.outgoing import Challenges
from sipguard.b2bua.overload import Shedder
from sipguard.b2bua.peers import EveryFew, Peers, Strangers
from sipguard.b2bua.records import Records
from sipguard.b2bua.routing import Prober, Router
from sipguard.cdr.record import make_call_id, new_instance_tag
from sipguard.config.model import Config, Trunk
from sipguard.media.ng import Address, NgClient, earliest, ng_client
from sipguard.metrics import Metrics
from sipguard.policy.numbers import mask
from sipguard.sip.errors import SipError
from sipguard.sip.message import Limits, Request, Response, attach_response, parse_message
from sipguard.sip.transaction import (
    IDS,
    Flow,
    ServerTransaction,
    Timers,
    TransactionLayer,
    make_response,
    source_key,
    stateless_tag,
)

log = logging.getLogger("sipguard.b2bua")

# option-tag lists a call reads: parsed on arrival, so a malformed one is a 400 at once
_TOKEN_HEADERS = ("supported", "require", "allow")
KNOWN_KINDS = frozenset(
    ALLOW.replace(" ", "").split(",")
    + ["REGISTER", "SUBSCRIBE", "NOTIFY", "PUBLISH", "REFER"]
    + [f"{c}xx" for c in range(1, 7)]
)


class B2BUA:
    def __init__(
        self,
        config: Config,
        metrics: Metrics | None = None,
        *,
        instance: str | None = None,
        wall_offset: float = 0.0,
    ) -> None:
        self.config = config
        self.metrics = metrics
        self.layer = TransactionLayer(self, self._timers(config))
        self.outbox = self.layer.outbox
        self.outcomes: list[Outcome] = []
        self.wall_offset = wall_offset  # wall clock = now + wall_offset (set by the driver)
        self.instance = instance or new_instance_tag()
        self.records = Records(self.instance, metrics, self.wall)
        self.cdr_out = self.records.out
        self.router = Router(config, self.layer, self)
        self.capacity = Capacity()
        self.shedder = Shedder()  # fed by the driver's readings of the receive queue
        self.dialogs: dict[tuple[str, str], Call] = {}
        # (Call-ID, From tag, CSeq) of the INVITEs that made calls: a merged request
        # (the same INVITE by another path) is refused with 482 (§8.2.2.2)
        self.invites: dict[MergeKey, Call] = {}
        self.challenges = Challenges()
        self.peers = Peers(config)
        self.strangers = Strangers()
        self._attack_log = EveryFew(10.0)  # the emergency-flood warning, per trunk
        self.draining = False
        self.accepting = True  # False while the CDR spool is full (refuse non-emergency)
        self.parse_limits = Limits(max_message=config.sip.max_message_bytes)
        self.stats_in: dict[str, int] = {}
        self.stats_out: dict[str, int] = {}
        self.parse_errors = 0
        self.addresses = LocalAddresses(config)
        # rtpengine's ng client (None without rtpengine.control); the driver sends
        # media_outbox and feeds replies to media_receive
        self.media_outbox: list[tuple[Address, bytes]] = []
        self.media_ng: NgClient | None = ng_client(
            config.rtpengine.control, None, self.media_outbox
        )
        if metrics is not None:
            # read when scraped, once the core is whole: nothing to do per call. One core
            # per process: the last one built on these metrics is the one they show.
            metrics.active_calls.set_function(self._count_active)

    @staticmethod
    def _timers(config: Config) -> Timers:
        s = config.sip
        return Timers(t1=s.t1, t2=s.t2, t4=s.t4)

    # -- driver interface ------------------------------------------------------------------

    def wall(self, now: float) -> float:
        return now + self.wall_offset

    def next_deadline(self) -> float | None:
        ng = self.media_ng
        deadline = self.layer.next_deadline()
        return deadline if ng is None else earliest(deadline, ng.next_deadline())

    def handle_timer(self, now: float) -> None:
        try:
            if self.media_ng is not None:
                self.media_ng.handle_timer(now)
        finally:
            try:
                self.layer.handle_timer(now)
            finally:
                self._settle()

    def media_receive(self, data: bytes, addr: Address, now: float) -> None:
        """A datagram on the ng control socket (a reply of rtpengine's, or not)."""
        if self.media_ng is not None:
            try:
                self.media_ng.receive(data, addr, now)
            finally:
                self._settle()

    def reload(self, config: Config) -> None:
        """New policy for new calls; calls in progress keep theirs."""
        self.config = config
        self.addresses = LocalAddresses(config)
        self.peers.reload(config)
        self.layer.t = self._timers(config)
        self.router.reload(config)
        self.parse_limits = Limits(max_message=config.sip.max_message_bytes)
        self.media_ng = ng_client(config.rtpengine.control, self.media_ng, self.media_outbox)

    def drain(self) -> None:
        self.draining = True

    def connection_up(self, conn: int, names: frozenset[str] = frozenset()) -> None:
        """A TCP or TLS connection is open (and, over TLS, its certificate holds ``names``,
        verified): requests may arrive on it."""
        self.peers.conns[conn] = names

    def connection_down(self, conn: int) -> None:
        self.peers.conns.pop(conn, None)

    def trunk_of_source(self, local: int, host: str) -> Trunk | None:
        return self.peers.trunk_of(local, host)

    def set_targets(self, resolved: dict[str, list[tuple[str, str, int]]]) -> None:
        """Where each configured target URI resolves to (RFC 3263, done by the driver)."""
        self.router.set_resolved(resolved)

    def expected_tls_name(self, local: int, host: str, port: int) -> str | None:
        """The ``tls_name`` a TLS connection from listen entry ``local`` to ``host:port``
        must find in the server's certificate, where that is a configured target of a
        trunk with one; None elsewhere (the driver then looks at the trunks' sources,
        which hold every Request-URI and redirect route)."""
        return self.router.tls_targets.get((local, host, port))

    @property
    def calls(self) -> int:
        return self.capacity.calls

    @property
    def down(self) -> dict[Flow, Prober]:
        return self.router.down

    def _count_active(self) -> float:
        return float(self.capacity.calls)

    def receive(self, data: bytes, flow: Flow, now: float) -> None:
        """A datagram, or one framed message from a stream, arrived on ``flow``."""
        try:
            self._receive(data, flow, now)
        finally:
            self._settle()

    def _receive(self, data: bytes, flow: Flow, now: float) -> None:
        stranger = self._stranger(flow)
        if stranger and not self.strangers.answer(flow.host, now, self._budget):
            self._count_refused("unknown_source_silenced")  # read no further
            return
        msg: Request | Response | None = None
        try:
            msg = parse_message(data, datagram=not flow.reliable, limits=self.parse_limits)
            # every typed view the calls read, parsed here, before any transaction or call
            # state moves: a malformed To, Contact or option-tag list of a peer's response
            # must not stop a call half way (it would never end and hold its slot)
            msg.validate()
            for name in _TOKEN_HEADERS:
                if msg.has(name):
                    msg.tokens(name)
        except SipError as exc:
            if exc.response is None and exc.status is not None and isinstance(msg, Request):
                attach_response(exc, msg.headers)
            self.parse_error()
            # a stranger gets nothing, an ACK is never answered, not even a malformed one
            # (§17.1.1.3, §17.2.1)
            if (
                exc.response is not None
                and not stranger
                and not data.lstrip(b"\r\n").startswith(b"ACK ")
            ):
                self.layer.send(flow, exc.response)
            log.debug("malformed message from %s: %s", flow.transport, exc.reason)
            return
        if stranger and not self._from_stranger(msg, flow, now):
            return
        try:
            if isinstance(msg, Request):
                self._count_in(msg.method)
                self.layer.receive_request(msg, flow, now)
            else:
                self._count_in(str(msg.status // 100) + "xx")
                self.layer.receive_response(msg, flow, now)
        except SipError as exc:
            # a header read later turned out malformed: answer it if we can, never crash
            self.parse_error()
            if isinstance(msg, Request) and msg.method != "ACK":
                resp = make_response(msg, exc.status or 400)
                tx = self._server_tx(msg, flow)
                if tx is not None and tx.last_status < 200:
                    # answered through its transaction, which then ends (Timer J/H):
                    # never left in the table, without a final response, for ever
                    tx.respond(resp, now)
                elif tx is None:
                    self.layer.send(flow, resp.to_bytes())
        except Exception:
            # our bug, not the peer's: the message is answered 500 where it can be, and the
            # call it belongs to is ended, never left half-done holding its slot for ever
            log.exception("internal error handling a message; its call is ended")
            self._end_after_error(msg, flow, now)

    def _stranger(self, flow: Flow) -> bool:
        """A source that matches no trunk and is no trunk's target (SPEC §2, §8)."""
        return (
            self.peers.trunk_of(flow.local, flow.host) is None
            and flow.host not in self.router.target_hosts()
        )

    def _from_stranger(self, msg: Request | Response, flow: Flow, now: float) -> bool:
        """A message from a stranger: go on only with a request of a dialog whose leg was
        set up with that very address (its trunk's sources changed since, by a reload);
        otherwise ``403`` to a request, statelessly and with nothing about sipguard in it
        (no ``Allow``, no ``Server``), and nothing to an ACK or a response."""
        if isinstance(msg, Response):
            return False
        if msg.to.tag is not None:
            found = self._leg((msg.call_id, msg.to.tag))
            if found is not None and self._dialog_source(found, msg, flow):
                return True
        if msg.method != "ACK":  # an ACK (of our 403, say) gets nothing and is not counted
            self._count_refused("unknown_source")
            resp = make_response(msg, 403, to_tag=stateless_tag(msg))
            self.layer.send(flow, resp.to_bytes())
        return False

    def _count_refused(self, label: str) -> None:
        if self.metrics is not None:
            self.metrics.inc(self.metrics.rejected, label)

    @property
    def _budget(self) -> int:
        return self.config.limits.unknown_source_budget

    def parse_error(self) -> None:
        """A malformed message, or one the driver could not frame (a broken stream)."""
        self.parse_errors += 1
        if self.metrics is not None:
            self.metrics.parse_errors.inc()

    def _settle(self) -> None:
        """Act on what the calls reported during the last input, in order."""
        outcomes = self.outcomes
        while outcomes:
            done = list(outcomes)
            outcomes.clear()
            for outcome in done:
                try:
                    self._take(outcome)
                except Exception:
                    log.exception("internal error taking a call's outcome")

    def _take(self, outcome: Outcome) -> None:
        call = outcome.call
        if isinstance(outcome, Ended):
            self._ended(call, outcome.reason, outcome.now)
        elif isinstance(outcome, Answered):
            self.records.answered(call, outcome.now)
        elif isinstance(outcome, TargetFailed):
            self.router.failed(outcome.flow, outcome.now)
        elif isinstance(outcome, Challenged):
            self.challenges.remember(call, outcome.now)
        elif isinstance(outcome, Unanchored):
            self.records.unanchored(call)

    def _end_after_error(self, msg: Request | Response, flow: Flow, now: float) -> None:
        try:
            calls: set[Call] = set()
            call_id = msg.call_id
            for tag in (msg.from_.tag, msg.to.tag):
                leg = self._leg((call_id, tag or ""))
                if leg is not None and self.peers.from_peer(
                    leg[0].trunk_of(leg[1]), leg[1].flow, flow
                ):
                    calls.add(leg[0])
            if isinstance(msg, Request):
                found = self.invites.get(merge_key(msg, flow))
                if found is not None:
                    calls.add(found)
            for call in calls:
                if call.state != ENDED:
                    answered = call.state == ANSWERED
                    call.hangup(
                        True,
                        now,
                        reason="shutdown" if answered else "rejected",
                        status=call.status or 500,
                        to_a=True,
                    )
            if isinstance(msg, Request) and msg.method != "ACK":
                # after the hang-up, which answers the call's own INVITE with its leg's tag
                resp = make_response(msg, 500, to_tag=None if msg.to.tag else IDS.next())
                tx = self._server_tx(msg, flow)
                if tx is None:
                    self.layer.send(flow, resp.to_bytes())
                elif tx.last_status < 200:
                    tx.respond(resp, now)
        except Exception:
            log.exception("internal error ending a call after an internal error")

    def _server_tx(self, req: Request, flow: Flow) -> ServerTransaction | None:
        try:
            return self.layer.server.get(source_key(req, req.top_via, flow))
        except SipError:
            return None

    def _count_in(self, kind: str) -> None:
        # a peer chooses the method token: only known ones become metric labels (a bounded
        # set that can never carry a number), the rest count as "other"
        if kind not in KNOWN_KINDS:
            kind = "other"
        self.stats_in[kind] = self.stats_in.get(kind, 0) + 1

    # -- the call host: local addresses and ids ----------------------------------------------

    def via(self, flow: Flow) -> str:
        return self.addresses.via(flow)

    def contact(self, flow: Flow) -> str:
        return self.addresses.contact(flow)

    def new_call_id(self) -> str:
        return IDS.next()

    # -- transaction user ------------------------------------------------------------------

    def on_stray_response(self, resp: Response, flow: Flow, now: float) -> None:
        """A 2xx to our INVITE after its transaction ended (§13.2.2.4)."""
        key = (resp.call_id, resp.from_.tag or "")
        call = self.dialogs.get(key)
        if call is not None and call.b is not None and call.b.key() == key:
            call.stray_2xx(resp, flow, now)

    def _leg(self, key: tuple[str, str]) -> tuple[Call, Leg] | None:
        call = self.dialogs.get(key)
        if call is None:
            return None
        leg = call.a if call.a.key() == key else call.b
        return None if leg is None else (call, leg)

    def _dialog_source(self, found: tuple[Call, Leg], req: Request, flow: Flow) -> bool:
        """Is ``req`` from the peer of the leg it names, and of that leg's dialog? The
        remote tag is part of the dialog's id (§12.2.2): another fork's, or a forger's,
        is no request of this dialog."""
        call, leg = found
        if req.from_.tag == leg.remote_tag and self.peers.from_peer(
            call.trunk_of(leg), leg.flow, flow
        ):
            return True
        log.debug("in-dialog request from %s, not of the leg's peer: refused", flow.host)
        return self._refused()

    def _refused(self) -> bool:
        self._count_refused("dialog_source")
        return False

    def cancel_allowed(self, invite: ServerTransaction, flow: Flow) -> bool:
        """A CANCEL is matched by its INVITE's branch (§9.2), which its sender chose and a
        third party can copy: only the INVITE's own peer may cancel it."""
        owner = invite.owner
        if isinstance(owner, Call):
            return self.peers.from_peer(owner.trunk_in, owner.a.flow, flow) or self._refused()
        return (flow.local, flow.host) == (invite.flow.local, invite.flow.host)

    def on_ack(self, req: Request, flow: Flow, now: float) -> None:
        found = self._leg((req.call_id, req.to.tag or ""))
        if found is not None and self._dialog_source(found, req, flow):
            found[0].on_ack(found[1], req, now)

    def on_request(self, req: Request, tx: ServerTransaction, now: float) -> None:
        to_tag = req.to.tag
        if to_tag is not None:
            found = self._leg((req.call_id, to_tag))
            # a request from anyone but the leg's peer is answered as if there were no
            # such dialog: the same 481, statelessly (one response per request, nothing
            # kept), so it reveals nothing about the calls there are
            if found is None or not self._dialog_source(found, req, tx.flow):
                self.layer.respond_stateless(tx, make_response(req, 481))
                return
            found[0].on_in_dialog(found[1], req, tx, now)
            return
        method = req.method
        if method == "INVITE":
            self._new_call(req, tx, now)
        elif method == "OPTIONS":
            status = 503 if self.draining else 200
            headers = [("Allow", ALLOW), ("Accept", "application/sdp"), ("Supported", SUPPORTED)]
            tx.respond(make_response(req, status, to_tag=IDS.next(), headers=headers), now)
        elif method in ("REGISTER", "SUBSCRIBE", "PUBLISH", "NOTIFY", "MESSAGE", "INFO", "UPDATE"):
            self._reject(tx, 405, "method_not_allowed", now, [("Allow", ALLOW)])
        elif method == "REFER":
            self._reject(tx, 403, "refer", now)
        elif method in ("BYE", "PRACK"):
            self._reject(tx, 481, "no_dialog", now)
        else:
            self._reject(tx, 501, "method_not_implemented", now, [("Allow", ALLOW)])

    def _reject(
        self,
        tx: ServerTransaction,
        status: int,
        label: str,
        now: float,
        headers: list[tuple[str, str]] | None = None,
        reason: str | None = None,
    ) -> None:
        """Refuse a request statelessly (§8.2.7): one response per request received, never
        retransmitted towards a source that may be forged, and no transaction kept. A
        peer that lost it sends its request again and gets the same answer."""
        if self.metrics is not None:
            self.metrics.inc(self.metrics.rejected, label)
        req = tx.request
        tag = stateless_tag(req)
        self.layer.respond_stateless(
            tx, make_response(req, status, reason, to_tag=tag, headers=headers)
        )

    # -- a new call ------------------------------------------------------------------------

    def _new_call(self, req: Request, tx: ServerTransaction, now: float) -> None:
        config = self.config
        flow = tx.flow
        trunk = self.peers.trunk_of(flow.local, flow.host)
        verdict = admit(
            req,
            trunk,
            config,
            self.capacity,
            self.shedder,
            now,
            source=flow.host,
            tls_names=self.peers.names(flow),
            merged=merge_key(req, flow) in self.invites,
            draining=self.draining,
            accepting=self.accepting,
            relay=self.media_ng,
        )
        if isinstance(verdict, Refused) and verdict.end_reason is None:
            self._reject(tx, verdict.status, verdict.label, now, verdict.headers, verdict.phrase)
            return
        assert trunk is not None
        ident = verdict.ident
        if ident is not None and self.metrics is not None:
            decision = ident.decision
            self.metrics.inc(self.metrics.presentation, decision.presentation, decision.reason)
            if decision.emergency:
                self.metrics.emergency_calls.inc()
        if isinstance(verdict, Admitted):
            targets = self.router.targets(
                verdict.trunk_out, req.request_uri, verdict.ident.decision.emergency
            )
            if targets:
                # a call: 100 Trying at once (§17.2.1), the caller stops retransmitting
                tx.respond(make_response(req, 100), now)
                self._start(req, tx, trunk, verdict, targets, now)
                return
            status = 503 if verdict.trunk_out.targets else 403
            verdict = Refused(
                status,
                "no_target",
                end_reason="rejected",
                route=verdict.trunk_out.name,
                caller=verdict.ident.caller,
                callee=verdict.ident.callee,
                ident=verdict.ident,
            )
        self._reject(tx, verdict.status, verdict.label, now, verdict.headers, verdict.phrase)
        self.records.refused(trunk.name, verdict, now, config.limits.refused_cdr_rps)
        if ident is not None and ident.decision.emergency:
            self._emergency_refused(trunk, verdict.label, now)

    def _emergency_refused(self, trunk: Trunk, label: str, now: float) -> None:
        if self.metrics is not None:
            self.metrics.inc(self.metrics.emergency_refused, label)
        if label.startswith("trunk_emergency") and self._attack_log.event(trunk.name, now):
            log.warning(
                "emergency calls from trunk %s refused over its share of the emergency "
                "reserve (%s): a flood of emergency calls is an attack on the emergency "
                "service",
                trunk.name,
                label,
            )

    def _start(
        self,
        req: Request,
        tx: ServerTransaction,
        trunk: Trunk,
        admitted: Admitted,
        targets: list[Flow],
        now: float,
    ) -> None:
        ident = admitted.ident
        call = Call(
            self,
            make_call_id(self.instance),
            self.config,
            trunk,
            admitted.trunk_out,
            ident,
            req,
            tx,
            now,
        )
        call.media = start_media(call, admitted.media, self.media_ng, now)
        reuse = self.challenges.retry_leg(req, tx.flow, self.peers, now)
        self.capacity.take(trunk.name, call.emergency)
        self.dialogs[call.a.key()] = call
        self.invites[call.merge_key] = call
        call.start_b(targets, now, reuse)
        assert call.b is not None
        self.dialogs[call.b.key()] = call
        decision = ident.decision
        log.info(
            "call %s %s -> %s caller=%s presentation=%s reason=%s%s",
            call.id,
            trunk.name,
            admitted.trunk_out.name,
            mask(ident.caller, self.config.emergency_numbers),
            decision.presentation,
            decision.reason,
            " emergency" if decision.emergency else "",
        )

    # -- call outcomes ---------------------------------------------------------------------

    def _ended(self, call: Call, end_reason: str, now: float) -> None:
        self.capacity.give_back(call.trunk_in.name, call.emergency)
        for leg in (call.a, call.b):
            if leg is not None and self.dialogs.get(leg.key()) is call:
                del self.dialogs[leg.key()]
        if self.invites.get(call.merge_key) is call:
            del self.invites[call.merge_key]
        self.records.ended(call, end_reason, now)

    def streams_in_use(self) -> set[tuple[str, str, int]]:
        """(transport, host, port) of every TCP/TLS peer a call in progress uses."""
        out: set[tuple[str, str, int]] = set()
        for call in self.dialogs.values():
            for leg in (call.a, call.b):
                if leg is not None and leg.flow.reliable:
                    out.add((leg.flow.transport, leg.flow.host, leg.flow.port))
        return out

    def shutdown(self, now: float) -> None:
        """End every call (drain time is over): BYE both legs, CDRs with ``shutdown``."""
        try:
            for call in set(self.dialogs.values()):
                if call.state != ENDED:
                    call.hangup(True, now, reason="shutdown", status=call.status or 503, to_a=True)
        finally:
            self._settle()
