"""The B2BUA core: the transaction user that turns requests into calls, sans-IO.

Inputs: :meth:`B2BUA.receive` (bytes from a socket, the :class:`Flow` they came on,
``now``), :meth:`B2BUA.handle_timer`, :meth:`media_receive` (rtpengine's ng replies), the
connections the driver opened or lost (:meth:`connection_up`, :meth:`connection_down`)
and the control calls (:meth:`reload`, :meth:`drain`, :meth:`shutdown`). Outputs, drained
by the driver after each input: :attr:`outbox` (``(flow, bytes)`` to send),
:attr:`media_outbox` (ng datagrams), :attr:`cdr_out` (CDR records to write), and
:meth:`next_deadline`. Only ``net/`` reads clocks and touches sockets.

The core dispatches; each concern has its room: the :class:`~sipguard.b2bua.gate.Gate`
accounts every message to its source unread, :class:`~sipguard.b2bua.unread.Unread`
refuses a new INVITE from its raw lines where overload or a limit refuses it anyway, a
new INVITE read in full is judged by
:func:`~sipguard.b2bua.admission.admit`, routed by the
:class:`~sipguard.b2bua.routing.Router`, becomes a :class:`~sipguard.b2bua.call.Call`
whose B-leg INVITE :mod:`~sipguard.b2bua.bleg` builds, and whose outcomes
:class:`~sipguard.b2bua.records.Records` turns into CDRs and metrics.
"""

from __future__ import annotations

import logging

from sipguard.b2bua.admission import Admitted, Capacity, Refused, admit
from sipguard.b2bua.call import ENDED, Call
from sipguard.b2bua.egress import Egress
from sipguard.b2bua.gate import METERED, STRANGER, Gate
from sipguard.b2bua.host import (
    ALLOW,
    SUPPORTED,
    Answered,
    Challenged,
    Ended,
    ForkIgnored,
    Outcome,
    TargetFailed,
    Unanchored,
)
from sipguard.b2bua.leg import LocalAddresses
from sipguard.b2bua.media import start_media
from sipguard.b2bua.outgoing import Challenges
from sipguard.b2bua.overload import Shedder
from sipguard.b2bua.peers import Peers
from sipguard.b2bua.records import Records
from sipguard.b2bua.routing import Prober, Router
from sipguard.b2bua.table import CallTable
from sipguard.b2bua.unread import Unread
from sipguard.cdr.record import make_call_id, new_instance_tag
from sipguard.config.model import Config, Trunk
from sipguard.media.ng import Address, NgClient, earliest, ng_client
from sipguard.metrics import Metrics
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
# refusals for good, which make a request a stray (b2bua/gate.py); not a limit's 503, a
# 422 (retry with our Min-SE) or a 433 (a caller asked for privacy the trunk refuses)
STRAY_STATUSES = frozenset({400, 403, 405, 481, 482, 483, 501})


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
        self.egress = self.layer.egress = Egress(metrics)  # SPEC §8: fail closed on a leak
        self.outcomes: list[Outcome] = []
        self.wall_offset = wall_offset  # wall clock = now + wall_offset (set by the driver)
        self.instance = instance or new_instance_tag()
        self.records = Records(self.instance, metrics, self.wall)
        self.cdr_out = self.records.out
        self.router = Router(config, self.layer, self)
        self.capacity = Capacity()
        self.shedder = Shedder()  # fed by the driver's readings of the receive queue
        self.challenges = Challenges()
        self.peers = Peers(config)
        self.table = CallTable(self.peers, self._refused)
        self.dialogs = self.table.by_dialog  # the calls by each leg's dialog id
        self.gate = Gate(self.peers)  # every message accounted to its source, unread
        # a trunk's new INVITE refused, and the ACK of its 503 absorbed, from raw lines
        self.unread = Unread(
            self.peers, self.records, self.capacity, self.shedder, self.layer, self._count_refused
        )
        self.early = self.unread.early  # the 503s given lately: their retransmissions too
        self.draining = False
        self.accepting = True  # False while the CDR spool is full (refuse non-emergency)
        self.parse_limits = Limits(max_message=config.sip.max_message_bytes)
        self.stats_in = self.records.stats_in
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
            try:
                if self.media_ng is not None:
                    self.media_ng.handle_timer(now)
            finally:
                self.layer.handle_timer(now)
        finally:
            self.egress.end_leaked(now)
            self._settle()

    def media_receive(self, data: bytes, addr: Address, now: float) -> None:
        """A datagram on the ng control socket (a reply of rtpengine's, or not)."""
        if self.media_ng is not None:
            try:
                self.media_ng.receive(data, addr, now)
            finally:
                self.egress.end_leaked(now)
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
            self.egress.end_leaked(now)
            self._settle()

    def _receive(self, data: bytes, flow: Flow, now: float) -> None:
        door = self.gate.enter(
            flow,
            now,
            self.config.limits,
            self.router.target_hosts(),
            self.shedder.untrusted,
            data,
            self.gate.live,
        )
        if door >= METERED:  # read no further
            self._count_refused("source_messages" if door == METERED else "unknown_source_silenced")
            return
        stranger = door == STRANGER
        if not stranger and self.unread.answer(
            data, flow, now, self.config, self.draining, self.accepting
        ):
            return
        strays = self.layer.strays
        self._read(data, flow, now, stranger)
        self.shedder.granted = False  # asked for this INVITE only
        if self.layer.strays != strays and not stranger:
            self.gate.stray(flow)

    def _read(self, data: bytes, flow: Flow, now: float, stranger: bool) -> None:
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
            if isinstance(msg, Request):
                msg.src_host = flow.host  # its responses' top Via says where it came from
                msg.src_port = flow.port
                msg.wire_size = len(data)
        except SipError as exc:
            if exc.response is None and exc.status is not None and isinstance(msg, Request):
                attach_response(exc, msg.headers)
            self.parse_error()
            self.layer.strays += 1
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
                self.records.message_in(msg.method)
                self.layer.receive_request(msg, flow, now)
            else:
                self.records.message_in(str(msg.status // 100) + "xx")
                self.layer.receive_response(msg, flow, now)
        except SipError as exc:
            # a header read later turned out malformed (a stray response's From, read only
            # to find its call): answer it if we can, never crash
            self.parse_error()
            if isinstance(msg, Request) and msg.method != "ACK":
                self._answer(msg, flow, make_response(msg, exc.status or 400), now)
            else:
                self.layer.strays += 1
        except Exception:
            # our bug, not the peer's: the message is answered 500 where it can be, and the
            # call it belongs to is ended, never left half-done holding its slot for ever
            log.exception("internal error handling a message; its call is ended")
            self._end_after_error(msg, flow, now)

    def _from_stranger(self, msg: Request | Response, flow: Flow, now: float) -> bool:
        """A message from a stranger: go on only with a request of a dialog whose leg was
        set up with that very address (its trunk's sources changed since, by a reload);
        otherwise ``403`` to a request, statelessly and with nothing about sipguard in it
        (no ``Allow``, no ``Server``), and nothing to an ACK or a response."""
        if isinstance(msg, Response):
            return False
        if msg.to.tag is not None and self.table.in_dialog(msg, flow) is not None:
            return True
        if msg.method != "ACK":  # an ACK (of our 403, say) gets nothing and is not counted
            self._count_refused("unknown_source")
            self.layer.refuse(
                flow, msg, make_response(msg, 403, to_tag=stateless_tag(msg)).to_bytes()
            )
        return False

    def _count_refused(self, label: str) -> None:
        if self.metrics is not None:
            self.metrics.inc(self.metrics.rejected, label)

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
        elif isinstance(outcome, ForkIgnored):
            self._count_refused("fork_limit")

    def _end_after_error(self, msg: Request | Response, flow: Flow, now: float) -> None:
        try:
            for call in self.table.of_message(msg, flow):
                call.abort(now)
            if isinstance(msg, Request) and msg.method != "ACK":
                # after the hang-up, which answers the call's own INVITE with its leg's tag
                to_tag = None if msg.to.tag else IDS.next()
                self._answer(msg, flow, make_response(msg, 500, to_tag=to_tag), now)
        except Exception:
            log.exception("internal error ending a call after an internal error")

    def _answer(self, req: Request, flow: Flow, resp: Response, now: float) -> None:
        """Answer a request whatever became of it: through its transaction while that has
        no final response (it then ends, Timer J/H, never left in the table for ever),
        statelessly where it has none."""
        try:
            tx = self.layer.server.get(source_key(req, req.top_via, flow))
        except SipError:
            tx = None
        if tx is None:
            self.layer.send(flow, resp.to_bytes())
        elif tx.last_status < 200:
            tx.respond(resp, now)

    # -- the call host: local addresses and ids ----------------------------------------------

    def via(self, flow: Flow) -> str:
        return self.addresses.via(flow)

    def contact(self, flow: Flow) -> str:
        return self.addresses.contact(flow)

    def new_call_id(self) -> str:
        return IDS.next()

    def watch_egress(self, call: Call) -> None:
        self.egress.watch(call)

    def media_unanchored(self, call: Call) -> None:
        self.egress.media_unanchored(call)

    # -- transaction user ------------------------------------------------------------------

    def on_stray_response(self, resp: Response, flow: Flow, now: float) -> None:
        """A 2xx to our INVITE after its transaction ended (§13.2.2.4). Its branch is
        none of ours to check, and the B-leg's Call-ID and From tag are all that find its
        call: believed only from the B-leg's peer, by the rule of its in-dialog requests
        (:meth:`Peers.from_peer`), or from a target it was sent to before
        (:meth:`_from_callee`). Anyone else's is dropped, counted as
        ``dialog_source``: never ACKed nor BYEd towards an address that may be forged."""
        call = self.table.callee_leg(resp)
        b = call.b if call is not None else None
        if call is None or b is None:
            self.layer.strays += 1
        elif self._from_callee(call, b.flow, flow):
            call.stray_2xx(resp, flow, now)
        else:
            self.layer.strays += 1
            self._refused()

    def _from_callee(self, call: Call, at: Flow, flow: Flow) -> bool:
        """Is ``flow`` the B-leg's peer (now at ``at``), or one of the targets its INVITE
        went to before (a failover, a redirect), each by :meth:`Peers.from_peer`? A
        target given up on may answer late; a trunk with targets and no ``sources``
        knows those addresses only so (bounded: the targets and the retries tried)."""
        trunk = call.trunk_out
        from_peer = self.peers.from_peer
        if from_peer(trunk, at, flow):
            return True
        return any(tried != at and from_peer(trunk, tried, flow) for tried in call.out.tried)

    def _refused(self) -> bool:
        self._count_refused("dialog_source")
        return False

    def cancel_allowed(self, invite: ServerTransaction, flow: Flow) -> bool:
        """A CANCEL is matched by its INVITE's branch (§9.2), which its sender chose and a
        third party can copy: only the INVITE's own peer may cancel it, by the rule of
        every in-dialog request (:meth:`Peers.from_peer`), also once the INVITE has its
        final response and its call is gone: the 200 then changes nothing (§9.2) but
        carries the dialog's To tag, the peer's to know and no one else's. Anyone else
        gets the 481 of no such INVITE, counted as ``dialog_source``. A re-INVITE is
        marked with its leg's trunk too (:meth:`on_request`): a forger copying its branch
        (often a counter) without the To tag must not learn the tag from the 200. An
        INVITE of no call keeps the match of its transaction: the same listen entry and
        source."""
        trunk = invite.peer
        if isinstance(trunk, Trunk):
            return self.peers.from_peer(trunk, invite.flow, flow) or self._refused()
        return (flow.local, flow.host) == (invite.flow.local, invite.flow.host)

    def on_ack(self, req: Request, flow: Flow, now: float) -> None:
        found = self.table.in_dialog(req, flow)
        if found is not None:
            found[0].on_ack(found[1], req, now)
        elif req.to.tag != stateless_tag(req):  # not the ACK of a stateless refusal
            self.layer.strays += 1

    def on_request(self, req: Request, tx: ServerTransaction, now: float) -> None:
        if req.to.tag is not None:
            found = self.table.in_dialog(req, tx.flow)
            # a request from anyone but the leg's peer is answered as if there were no
            # such dialog: the same 481, statelessly (one response per request, nothing
            # kept), so it reveals nothing about the calls there are
            if found is None:
                self.layer.strays += 1
                self.layer.respond_stateless(tx, make_response(req, 481))
                return
            call, leg = found
            if req.method == "INVITE":
                # a re-INVITE's CANCEL is believed by the rule of any request of this
                # dialog (cancel_allowed): its 200 carries the dialog's To tag
                tx.peer = call.trunk_of(leg)
            call.on_in_dialog(leg, req, tx, now)
            return
        method = req.method
        if method == "INVITE":
            self._new_call(req, tx, now)
        elif method == "OPTIONS":
            # a trunk's probe, answered statelessly as a refusal is (§8.2.7, §11.2): a
            # flood of them keeps no transaction for 32 s each
            self.layer.strays += 1
            if self.draining:  # capabilities go in a 200 only (§11.2): this one stays small
                status, headers = 503, []
            else:
                status = 200
                headers = [
                    ("Allow", ALLOW),
                    ("Accept", "application/sdp"),
                    ("Supported", SUPPORTED),
                ]
            resp = make_response(req, status, to_tag=stateless_tag(req), headers=headers)
            self.layer.respond_stateless(tx, resp)  # whatever its size (a probe's answer)
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
        if status in STRAY_STATUSES:  # refused for good, not by a limit to wait out
            self.layer.strays += 1
        elif status == 503 and req.method == "INVITE":  # its retransmissions: 503 too
            self.early.remember(tx.flow, tag, now)
        self.layer.respond_stateless(
            tx, make_response(req, status, reason, to_tag=tag, headers=headers)
        )

    # -- a new call ------------------------------------------------------------------------

    def _new_call(self, req: Request, tx: ServerTransaction, now: float) -> None:
        config = self.config
        flow = tx.flow
        if self.early.again(req, flow):  # a retransmission of an INVITE refused with 503
            self._reject(tx, 503, "overload", now)
            return
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
            merged=self.table.merged(req, flow),
            draining=self.draining,
            accepting=self.accepting,
            relay=self.media_ng,
        )
        if isinstance(verdict, Refused) and verdict.end_reason is None:
            self._reject(tx, verdict.status, verdict.label, now, verdict.headers, verdict.phrase)
            return
        assert trunk is not None
        ident = verdict.ident
        if ident is not None:
            self.records.decided(ident)
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
        self.table.add_caller(call)
        call.start_b(targets, now, reuse)
        assert call.b is not None
        self.table.add_callee(call)
        self.gate.opened(call.a, call.trunk_in)
        self.gate.opened(call.b, call.trunk_out)
        self.records.started(call, self.config.emergency_numbers)

    # -- call outcomes ---------------------------------------------------------------------

    def _ended(self, call: Call, end_reason: str, now: float) -> None:
        self.capacity.give_back(call.trunk_in.name, call.emergency)
        self.gate.closed(call.a)
        if call.b is not None:
            self.gate.closed(call.b)
        self.table.remove(call)
        self.egress.ended(call, now)
        self.records.ended(call, end_reason, now)

    def streams_in_use(self) -> set[tuple[str, str, int]]:
        return self.table.streams_in_use()

    def shutdown(self, now: float) -> None:
        """End every call (drain time is over): BYE both legs, CDRs with ``shutdown``."""
        try:
            for call in self.table.calls():
                if call.state != ENDED:
                    call.hangup(True, now, reason="shutdown", status=call.status or 503, to_a=True)
        finally:
            self._settle()
