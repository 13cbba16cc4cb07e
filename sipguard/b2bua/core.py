"""The B2BUA core: the transaction user that turns requests into calls, sans-IO.

Inputs: :meth:`B2BUA.receive` (bytes from a socket, the :class:`Flow` they came on,
``now``), :meth:`B2BUA.handle_timer` and the control calls (:meth:`reload`,
:meth:`drain`). Outputs, drained by the driver after each input: :attr:`outbox`
(``(flow, bytes)`` to send), :attr:`cdr_out` (CDR records to write), and
:meth:`next_deadline`. Only ``net/`` reads clocks and touches sockets.
"""

from __future__ import annotations

import ipaddress
import logging
from dataclasses import dataclass

from sipguard.b2bua.call import (
    ANSWERED,
    ENDED,
    Call,
    Leg,
    interval_too_small,
    request_min_se,
    session_expires,
)
from sipguard.b2bua.identity import CallRefusedError, identify, identity_headers
from sipguard.b2bua.overload import Shedder
from sipguard.cdr.record import (
    CdrRecord,
    end_of,
    end_record,
    epoch_ms,
    make_call_id,
    new_instance_tag,
    start_record,
)
from sipguard.config.model import Config, Trunk
from sipguard.metrics import Metrics
from sipguard.policy.decision import refusal
from sipguard.policy.numbers import mask
from sipguard.sip.errors import SipError
from sipguard.sip.message import (
    Limits,
    Request,
    Response,
    attach_response,
    canonical_name,
    parse_message,
)
from sipguard.sip.timers import Timer
from sipguard.sip.tlsnames import name_matches
from sipguard.sip.transaction import (
    IDS,
    ClientTransaction,
    Flow,
    ServerTransaction,
    Timers,
    TransactionLayer,
    make_response,
    new_branch,
    server_key,
)
from sipguard.sip.uri import Uri, parse_uri

log = logging.getLogger("sipguard.b2bua")

ALLOW = "INVITE, ACK, CANCEL, BYE, OPTIONS, INFO, UPDATE, PRACK, MESSAGE"
SUPPORTED = "100rel, replaces, timer"
AUTH_RETRY_WINDOW = 32.0
# option-tag lists a call reads (Call.__init__, _answered, _provisional, _new_call)
_TOKEN_HEADERS = ("supported", "require", "allow")
_NO_NAMES: frozenset[str] = frozenset()
KNOWN_KINDS = frozenset(
    ALLOW.replace(" ", "").split(",")
    + ["REGISTER", "SUBSCRIBE", "NOTIFY", "PUBLISH", "REFER"]
    + [f"{c}xx" for c in range(1, 7)]
)


@dataclass(frozen=True, slots=True)
class LocalAddress:
    transport: str
    host: str  # as written in Via and Contact (IPv6 bracketed)
    port: int


class Prober:
    """OPTIONS to a target that failed, every ``probe_interval``, until any answer comes.

    Any response counts as alive (the target's SIP stack answers); a timeout or a
    transport error keeps it down.
    """

    __slots__ = ("core", "flow", "timer")

    def __init__(self, core: B2BUA, flow: Flow, now: float) -> None:
        self.core = core
        self.flow = flow
        self.timer: Timer | None = None
        self._schedule(now)

    def _schedule(self, now: float) -> None:
        interval = self.core.config.sip.probe_interval
        self.timer = self.core.layer.timers.schedule(now + interval, self._probe)

    def _probe(self, now: float) -> None:
        self.timer = None
        if self.core.down.get(self.flow) is not self:
            return
        self.core.layer.send_request(self.core.options(self.flow), self.flow, self, now)

    def on_response(self, tx: ClientTransaction, resp: Response, now: float) -> None:
        if resp.status >= 200:
            self.core.target_alive(self.flow)

    def on_timeout(self, tx: ClientTransaction, now: float) -> None:
        if self.core.down.get(self.flow) is self:
            self._schedule(now)

    def stop(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None


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
        self.cdr_out: list[CdrRecord] = []
        self.dialogs: dict[tuple[str, str], Call] = {}
        # (Call-ID, From tag, CSeq) of the INVITEs that made calls: a merged request
        # (the same INVITE by another path) is refused with 482 (§8.2.2.2)
        self.invites: dict[tuple[str, str, int], Call] = {}
        self.auth_wait: dict[tuple[str, str], tuple[float, Leg]] = {}
        self.calls = 0
        self.emergency_calls = 0
        self.trunk_calls: dict[str, int] = {}
        self.trunk_cps: dict[str, tuple[int, int]] = {}  # trunk -> (second, count)
        self.shedder = Shedder()  # fed by the driver's readings of the receive queue
        # the open TCP/TLS connections, by the driver's id, with the names a TLS
        # connection's verified certificate holds (inputs: connection_up/_down)
        self.conns: dict[int, frozenset[str]] = {}
        self.draining = False
        self.accepting = True  # False while the CDR spool is full (refuse non-emergency)
        self.wall_offset = wall_offset  # wall clock = now + wall_offset (set by the driver)
        self.instance = instance or new_instance_tag()
        self.parse_limits = Limits(max_message=config.sip.max_message_bytes)
        self.down: dict[Flow, Prober] = {}
        self.resolved: dict[str, list[tuple[str, str, int]]] = {}
        self._target_flows: dict[str, list[Flow]] = {}
        # (listen entry, host, port) of a configured TLS target -> its trunk's tls_name
        self._tls_targets: dict[tuple[int, str, int], str] = {}
        self._flood: dict[str, int] = {}
        self._flood_second = -1
        self.stats_in: dict[str, int] = {}
        self.stats_out: dict[str, int] = {}
        self.parse_errors = 0
        self._local: dict[tuple[int, str], LocalAddress] = {}  # by listen entry, transport
        self._trunks_by_source: dict[tuple[int, str], Trunk | None] = {}
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
        return self.layer.next_deadline()

    def handle_timer(self, now: float) -> None:
        self.layer.handle_timer(now)

    def reload(self, config: Config) -> None:
        """New policy for new calls; calls in progress keep theirs."""
        self.config = config
        self._local.clear()
        self._trunks_by_source.clear()
        self.layer.t = self._timers(config)
        self._target_flows.clear()
        self.parse_limits = Limits(max_message=config.sip.max_message_bytes)

    def drain(self) -> None:
        self.draining = True

    def connection_up(self, conn: int, names: frozenset[str] = frozenset()) -> None:
        """A TCP or TLS connection is open (and, over TLS, its certificate holds ``names``,
        verified): requests may arrive on it."""
        self.conns[conn] = names

    def connection_down(self, conn: int) -> None:
        self.conns.pop(conn, None)

    @property
    def active_calls(self) -> int:
        return self.calls

    def _count_active(self) -> float:
        return float(self.calls)

    def receive(self, data: bytes, flow: Flow, now: float) -> None:
        """A datagram, or one framed message from a stream, arrived on ``flow``."""
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
            self.parse_errors += 1
            if self.metrics is not None:
                self.metrics.parse_errors.inc()
            if exc.response is not None and not data.lstrip(b"\r\n").startswith(b"ACK "):
                # an ACK is never answered, not even a malformed one (§17.1.1.3, §17.2.1)
                self.layer.send(flow, exc.response)
            log.debug("malformed message from %s: %s", flow.transport, exc.reason)
            return
        try:
            if isinstance(msg, Request):
                self._count_in(msg.method)
                self._fix_via(msg, flow)
                self.layer.receive_request(msg, flow, now)
            else:
                self._count_in(str(msg.status // 100) + "xx")
                self.layer.receive_response(msg, flow, now)
        except SipError as exc:
            # a header read later turned out malformed: answer it if we can, never crash
            self.parse_errors += 1
            if self.metrics is not None:
                self.metrics.parse_errors.inc()
            if isinstance(msg, Request) and msg.method != "ACK":
                resp = make_response(msg, exc.status or 400)
                tx = self._server_tx(msg)
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

    def _end_after_error(self, msg: Request | Response, flow: Flow, now: float) -> None:
        try:
            calls: set[Call] = set()
            call_id = msg.call_id
            for tag in (msg.from_.tag, msg.to.tag):
                found = self.dialogs.get((call_id, tag or ""))
                if found is not None:
                    calls.add(found)
            if isinstance(msg, Request):
                found = self.invites.get((call_id, msg.from_.tag or "", msg.cseq.number))
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
                tx = self._server_tx(msg)
                if tx is None:
                    self.layer.send(flow, resp.to_bytes())
                elif tx.last_status < 200:
                    tx.respond(resp, now)
        except Exception:
            log.exception("internal error ending a call after an internal error")

    def _server_tx(self, req: Request) -> ServerTransaction | None:
        try:
            return self.layer.server.get(server_key(req, req.top_via))
        except SipError:
            return None

    def _count_in(self, kind: str) -> None:
        # a peer chooses the method token: only known ones become metric labels (a bounded
        # set that can never carry a number), the rest count as "other"
        if kind not in KNOWN_KINDS:
            kind = "other"
        self.stats_in[kind] = self.stats_in.get(kind, 0) + 1

    @staticmethod
    def _fix_via(req: Request, flow: Flow) -> None:
        """RFC 3581: responses always go back to the source address and port (symmetric)."""
        return None  # responses use the flow of the request; nothing to rewrite here

    # -- local addresses -------------------------------------------------------------------

    def local(self, flow: Flow) -> LocalAddress:
        key = (flow.local, flow.transport)
        la = self._local.get(key)
        if la is None:
            listen = self.config.listen[flow.local]
            host = listen.address
            if ":" in host:
                host = f"[{host}]"
            la = self._local[key] = LocalAddress(flow.transport, host, listen.port)
        return la

    def via(self, flow: Flow, branch: str | None = None) -> str:
        la = self.local(flow)
        b = branch or new_branch()
        return f"SIP/2.0/{la.transport.upper()} {la.host}:{la.port};branch={b};rport"

    def contact(self, flow: Flow) -> str:
        la = self.local(flow)
        t = "" if la.transport == "udp" else f";transport={la.transport}"
        return f"<sip:{la.host}:{la.port}{t}>"

    def new_call_id(self) -> str:
        return IDS.next()

    # -- transaction user ------------------------------------------------------------------

    def on_stray_response(self, resp: Response, flow: Flow, now: float) -> None:
        """A 2xx to our INVITE after its transaction ended: repeat our ACK (§13.2.2.4)."""
        key = (resp.call_id, resp.from_.tag or "")
        call = self.dialogs.get(key)
        if call is None or call.b is None or call.b.key() != key:
            return
        leg = call.b
        same = leg.remote_tag == resp.to.tag and (leg.flow.host, leg.flow.port) == (
            flow.host,
            flow.port,
        )
        if same:
            if call.state == ANSWERED and call.b_ack is not None:
                self.layer.send(leg.flow, call.b_ack, retransmission=True)
        elif call.state != ENDED:
            # a 2xx of another fork, after our INVITE transaction ended (Timer M): that
            # dialog is not ours to use, but it exists; ACK it and end it with BYE
            # (§13.2.2.4)
            call.ack_and_bye(resp, now, flow)

    def _leg(self, key: tuple[str, str]) -> tuple[Call, Leg] | None:
        call = self.dialogs.get(key)
        if call is None:
            return None
        leg = call.a if call.a.key() == key else call.b
        return None if leg is None else (call, leg)

    def from_peer(self, trunk: Trunk, set_up: Flow, flow: Flow) -> bool:
        """Is a request on ``flow`` from the peer a leg of ``trunk`` was set up with on
        ``set_up`` (SPEC §8)? Its source lies in the trunk's sources on a listen entry that
        serves it, or is the very address the leg was set up with; a trunk with a
        ``tls_name`` speaks only over TLS connections that proved it; and while the
        connection the leg was set up on is open, nothing else speaks for that peer. Once
        that connection has closed, the peer may open another (RFC 3261 §18), from
        another port."""
        if (flow.local, flow.host) != (set_up.local, set_up.host):
            found = self.trunk_of_source(flow.local, flow.host)
            if found is None or found.name != trunk.name:
                return False
        if trunk.tls_name is not None and not self._tls_name_proven(trunk, flow):
            return False
        return not (set_up.conn and set_up.conn in self.conns and flow.conn != set_up.conn)

    def _dialog_source(self, found: tuple[Call, Leg], flow: Flow) -> bool:
        call, leg = found
        if self.from_peer(call.trunk_in if leg.is_a else call.trunk_out, leg.flow, flow):
            return True
        if self.metrics is not None:
            self.metrics.inc(self.metrics.rejected, "dialog_source")
        log.debug("in-dialog request from %s, not the leg's peer: refused", flow.host)
        return False

    def cancel_allowed(self, invite: ServerTransaction, flow: Flow) -> bool:
        """A CANCEL is matched by its INVITE's branch (§9.2), which its sender chose and a
        third party can copy: only the INVITE's own peer may cancel it."""
        owner = invite.owner
        if isinstance(owner, Call):
            return self._dialog_source((owner, owner.a), flow)
        return (flow.local, flow.host) == (invite.flow.local, invite.flow.host)

    def on_ack(self, req: Request, flow: Flow, now: float) -> None:
        found = self._leg((req.call_id, req.to.tag or ""))
        if found is not None and self._dialog_source(found, flow):
            found[0].on_ack(found[1], req, now)

    def on_request(self, req: Request, tx: ServerTransaction, now: float) -> None:
        to_tag = req.to.tag
        if to_tag is not None:
            found = self._leg((req.call_id, to_tag))
            # a request from anyone but the leg's peer is answered as if there were no
            # such dialog: the same 481 reveals nothing about the calls there are
            if found is None or not self._dialog_source(found, tx.flow):
                tx.respond(make_response(req, 481), now)
                return
            found[0].on_in_dialog(found[1], req, tx, now)
            return
        method = req.method
        if method == "INVITE":
            self._new_call(req, tx, now)
        elif method == "OPTIONS":
            status = 503 if self.draining else 200
            tx.respond(
                make_response(
                    req,
                    status,
                    to_tag=IDS.next(),
                    headers=[
                        ("Allow", ALLOW),
                        ("Accept", "application/sdp"),
                        ("Supported", SUPPORTED),
                    ],
                ),
                now,
            )
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
        if self.metrics is not None:
            self.metrics.inc(self.metrics.rejected, label)
        tx.respond(
            make_response(tx.request, status, reason, to_tag=IDS.next(), headers=headers), now
        )

    # -- a new call ------------------------------------------------------------------------

    def _trunk_for(self, flow: Flow) -> Trunk | None:
        """The trunk of a new request from ``flow`` (SPEC §2), kept per socket and source."""
        return self.trunk_of_source(flow.local, flow.host)

    def trunk_of_source(self, local: int, host: str) -> Trunk | None:
        """The trunk whose sources hold ``host`` on listen entry ``local`` (kept); raise
        ``ValueError`` if ``host`` is no IP address."""
        key = (local, host)
        cache = self._trunks_by_source
        if key in cache:
            return cache[key]
        if len(cache) >= 4096:
            cache.clear()  # many sources (a scan): kept small, worked out again
        trunk = cache[key] = self.config.match_trunk(local, ipaddress.ip_address(host))
        return trunk

    def _tls_name_proven(self, trunk: Trunk, flow: Flow) -> bool:
        """A trunk with a ``tls_name`` takes requests only over TLS, on a connection whose
        verified certificate holds that name (SPEC §2); checked on every new request."""
        if trunk.tls_name is None:
            return True
        names = self.conns.get(flow.conn, _NO_NAMES) if flow.transport == "tls" else _NO_NAMES
        if name_matches(trunk.tls_name, names):
            return True
        log.debug(
            "%s peer %s is not %s (trunk %s): refused",
            flow.transport.upper(),
            flow.host,
            trunk.tls_name,
            trunk.name,
        )
        return False

    def expected_tls_name(self, local: int, host: str, port: int) -> str | None:
        """The ``tls_name`` a TLS connection from listen entry ``local`` to ``host:port``
        must find in the server's certificate, where that is a configured target of a
        trunk with one; None elsewhere (the driver then looks at the trunks' sources,
        which hold every Request-URI and redirect route)."""
        return self._tls_targets.get((local, host, port))

    def _new_call(self, req: Request, tx: ServerTransaction, now: float) -> None:
        if (req.call_id, req.from_.tag or "", req.cseq.number) in self.invites:
            self._reject(tx, 482, "loop_detected", now)  # a merged request (§8.2.2.2)
            return
        config = self.config
        trunk = self._trunk_for(tx.flow)
        if trunk is None:
            self._reject(tx, 403, "unknown_source", now)
            return
        if trunk.tls_name is not None and not self._tls_name_proven(trunk, tx.flow):
            self._reject(tx, 403, "tls_name", now)
            return
        mf = req.max_forwards
        if mf is not None and mf <= 0:
            self._reject(tx, 483, "too_many_hops", now)
            return
        if not req.contacts:
            # §8.1.1.8: an INVITE MUST carry a Contact (where the dialog's requests go)
            self._reject(tx, 400, "bad_request", now, reason="Missing Contact")
            return
        ruri = req.request_uri
        if ruri.scheme not in ("sip", "sips", "tel", "urn"):
            self._reject(tx, 416, "unsupported_uri_scheme", now)
            return
        require = req.tokens("require") - {"100rel", "timer", "replaces"}
        if require:
            self._reject(
                tx, 420, "bad_extension", now, [("Unsupported", ", ".join(sorted(require)))]
            )
            return
        # 100 Trying at once (§17.2.1): the caller stops retransmitting
        tx.respond(make_response(req, 100), now)
        try:
            ident = identify(req, trunk, config)
        except CallRefusedError as exc:
            self._reject(tx, exc.status, exc.label, now, reason=exc.reason)
            self._refused_cdr(
                trunk,
                trunk.route_to,
                exc.caller,
                exc.callee,
                "restricted",
                False,
                exc.status,
                "rejected",
                now,
            )
            return
        decision = ident.decision
        emergency = decision.emergency
        if self.metrics is not None:
            self.metrics.inc(self.metrics.presentation, decision.presentation, decision.reason)
            if emergency:
                self.metrics.emergency_calls.inc()
        route = trunk.emergency_target() if emergency else trunk.route_to
        trunk_out = config.trunks.get(route) if route else None

        def refuse(
            status: int,
            label: str,
            end_reason: str,
            phrase: str | None = None,
            headers: list[tuple[str, str]] | None = None,
        ) -> None:
            self._reject(tx, status, label, now, headers, reason=phrase)
            self._refused_cdr(
                trunk,
                route,
                ident.caller,
                ident.callee,
                decision.presentation,
                emergency,
                status,
                end_reason,
                now,
            )

        if trunk_out is None:
            refuse(404, "no_route", "rejected")
            return
        refused = self._limit(trunk, emergency, now, tx.flow.host)
        if refused is not None:
            refuse(503, refused, "limit")
            return
        if not emergency and interval_too_small(req, config):
            # RFC 4028 §9: the caller retries with our Min-SE (an emergency call never
            # waits for that: its interval is raised instead)
            refuse(
                422,
                "session_interval_too_small",
                "rejected",
                headers=[("Min-SE", str(config.sip.min_se))],
            )
            return
        media_anchored = False
        r = refusal(decision, ident.facts, trunk_out, media_anchored)
        if r is not None:
            refuse(r.status, r.label, "rejected", r.phrase)
            return
        targets = self._targets(trunk_out, ruri, emergency, now)
        if not targets:
            refuse(503 if trunk_out.targets else 403, "no_target", "rejected")
            return
        call = Call(
            self, make_call_id(self.instance), config, trunk, trunk_out, ident, req, tx, now
        )
        reuse = self._auth_retry_leg(req, now)
        self._admit(call)
        self.dialogs[call.a.key()] = call
        self.invites[call.merge_key] = call
        call.start_b(targets, now, reuse)
        assert call.b is not None
        self.dialogs[call.b.key()] = call
        log.info(
            "call %s %s -> %s caller=%s presentation=%s reason=%s%s",
            call.id,
            trunk.name,
            trunk_out.name,
            mask(ident.caller, config.emergency_numbers),
            decision.presentation,
            decision.reason,
            " emergency" if emergency else "",
        )

    def _admit(self, call: Call) -> None:
        self.calls += 1
        if call.emergency:
            self.emergency_calls += 1
        name = call.trunk_in.name
        self.trunk_calls[name] = self.trunk_calls.get(name, 0) + 1

    def _limit(self, trunk: Trunk, emergency: bool, now: float, source: str) -> str | None:
        """Why a new call must be refused with 503, or None (SPEC §1.4, §8)."""
        limits = self.config.limits
        if emergency:
            # the reserved emergency capacity is the one cap that applies to them
            return "emergency_limit" if self.emergency_calls >= limits.emergency_max_calls else None
        if limits.source_rps and self._flooding(source, now, limits.source_rps):
            return "source_flood"
        if self.draining:
            return "draining"
        if not self.accepting:
            return "cdr_spool_full"
        if self.calls - self.emergency_calls >= limits.max_calls:
            return "max_calls"
        tl = trunk.limits
        if tl.max_calls and self.trunk_calls.get(trunk.name, 0) >= tl.max_calls:
            return "trunk_max_calls"
        if not self.shedder.admit():
            return "overload"  # the receive queue grows: part of the new calls are shed
        if tl.cps:
            second = int(now)
            sec, count = self.trunk_cps.get(trunk.name, (second, 0))
            if sec != second:
                sec, count = second, 0
            if count >= tl.cps:
                return "trunk_cps"
            self.trunk_cps[trunk.name] = (sec, count + 1)
        return None

    def _flooding(self, source: str, now: float, rps: int) -> bool:
        """More than ``rps`` new calls this second from one source address (SPEC §8)."""
        second = int(now)
        if second != self._flood_second:
            self._flood_second = second
            self._flood.clear()  # one small dict per second: no unbounded growth
        count = self._flood.get(source, 0) + 1
        self._flood[source] = count
        return count > rps

    def set_targets(self, resolved: dict[str, list[tuple[str, str, int]]]) -> None:
        """Where each configured target URI resolves to (RFC 3263, done by the driver)."""
        self.resolved = resolved
        self._target_flows.clear()

    def trunk_targets(self, trunk: Trunk) -> list[Flow]:
        """Every next hop of a trunk's ``targets``, in order, resolved (cached)."""
        flows = self._target_flows.get(trunk.name)
        if flows is None:
            flows = []
            for t in trunk.targets:
                entries = self.resolved.get(t)
                if entries is None:  # not resolved (yet): an address literal needs no DNS
                    flow = self._flow_for(parse_uri(t), trunk)
                    if flow is not None:
                        flows.append(flow)
                    continue
                for transport, host, port in entries:
                    flow = self._flow_on(transport, host, port, trunk)
                    if flow is not None and flow not in flows:
                        flows.append(flow)
            self._target_flows[trunk.name] = flows
            if trunk.tls_name is not None:
                # what these next hops must prove: kept for as long as the process runs
                # (calls in progress keep their targets across reloads); as many as the
                # configured targets' addresses
                for f in flows:
                    self._tls_targets[(f.local, f.host, f.port)] = trunk.tls_name
        return flows

    def _targets(self, trunk_out: Trunk, ruri: Uri, emergency: bool, now: float) -> list[Flow]:
        """Where the B-leg INVITE may go, in order (SPEC §5: never an open relay).

        A target that failed is skipped until it answers an OPTIONS probe; when every
        target is down they are all tried (and an emergency call tries the down ones
        after the live ones) rather than failing at once.
        """
        if trunk_out.targets:
            flows = self.trunk_targets(trunk_out)
            down = self.down
            live = [f for f in flows if f not in down]
            if not live or emergency:
                return live + [f for f in flows if f in down]
            return live
        if not ruri.is_sip:
            return []
        host, _ = ruri.host_port()
        try:
            ip = ipaddress.ip_address(host)
        except ValueError:
            return []  # a name would need RFC 3263 resolution; only addresses are routed
        if not any(ip.version == n.version and ip in n for n in trunk_out.sources):
            return []
        flow = self._flow_for(ruri, trunk_out)
        return [flow] if flow else []

    def _flow_for(self, uri: Uri, trunk: Trunk) -> Flow | None:
        transport = (uri.param("transport") or "udp").lower()
        if uri.scheme == "sips":
            transport = "tls"
        host, port = uri.host_port(5061 if transport == "tls" else 5060)
        return self._flow_on(transport, host, port, trunk)

    def _flow_on(self, transport: str, host: str, port: int, trunk: Trunk) -> Flow | None:
        """A flow to ``host:port`` from the first listen entry that fits (transport, family,
        trunk); a trunk with a ``tls_name`` is reached over TLS only."""
        if trunk.tls_name is not None and transport != "tls":
            return None
        v6 = ":" in host
        for i, listen in enumerate(self.config.listen):
            if listen.transport != transport or (":" in listen.address) != v6:
                continue
            if listen.trunks is not None and trunk.name not in listen.trunks:
                continue
            return Flow(transport, i, host, port)
        return None

    def target_failed(self, flow: Flow, now: float) -> None:
        """A target gave no answer, a 503, or a transport error: probe it until it answers."""
        if flow in self.down:
            return
        log.warning(
            "target %s %s:%d is down; probing it with OPTIONS", flow.transport, flow.host, flow.port
        )
        self.down[flow] = Prober(self, flow, now)

    def target_alive(self, flow: Flow) -> None:
        prober = self.down.pop(flow, None)
        if prober is not None:
            prober.stop()
            log.info("target %s %s:%d answers again", flow.transport, flow.host, flow.port)

    def options(self, flow: Flow) -> Request:
        """An OPTIONS request of our own to a next hop (a health probe)."""
        host = f"[{flow.host}]" if ":" in flow.host else flow.host
        uri = f"sip:{host}:{flow.port}"
        if flow.transport != "udp":
            uri += f";transport={flow.transport}"
        hdrs = [
            ("Via", self.via(flow)),
            ("Max-Forwards", "70"),
            ("From", f"<sip:sipguard@{self.config.identity_domain}>;tag={IDS.next()}"),
            ("To", f"<{uri}>"),
            ("Call-ID", self.new_call_id()),
            ("CSeq", "1 OPTIONS"),
            ("Content-Length", "0"),
        ]
        return Request("OPTIONS", uri, hdrs)

    def build_b_invite(self, call: Call, flow: Flow, cseq: int) -> Request:
        b = call.b
        assert b is not None
        a_req = call.a_invite.request
        config = call.config
        trunk_out = call.trunk_out
        ident = call.ident
        ruri = a_req.request_uri
        if call.b_ruri is not None:
            target_uri = call.b_ruri  # where a 3xx from this trunk sent us
        elif trunk_out.targets:
            if ruri.scheme == "urn" or not ident.dialled:
                target_uri = a_req.uri
            else:
                la = flow.host if ":" not in flow.host else f"[{flow.host}]"
                target_uri = f"sip:{ident.dialled}@{la}:{flow.port}"
                if ruri.param("user") == "phone" or ruri.scheme == "tel":
                    target_uri += ";user=phone"
        else:
            target_uri = str(
                Uri(
                    ruri.scheme, ident.dialled or ruri.user, None, ruri.host, ruri.port, ruri.params
                )
            )
        if not b.remote_uri:
            to_user = ident.dialled
            b.remote_uri = f"<{target_uri}>" if not to_user else f"<{target_uri.split(';')[0]}>"
        # each target (failover, redirect) is addressed by its own Request-URI
        b.remote_target = target_uri
        mf = a_req.max_forwards
        max_forwards = 70 if mf is None else mf - 1
        ident_hdrs = identity_headers(ident, b.local_tag, trunk_out, config)
        b.local_uri = ident_hdrs[0][1].rsplit(";tag=", 1)[0]
        headers: list[tuple[str, str]] = [
            ("Via", self.via(flow, new_branch())),
            ("Max-Forwards", str(max_forwards)),
            *ident_hdrs,
            ("To", b.remote_uri),
            ("Call-ID", b.call_id),
            ("CSeq", f"{cseq} INVITE"),
            ("Contact", self.contact(flow)),
            ("Allow", ALLOW),
            ("Supported", "100rel, timer"),
        ]
        # after a 422, the retry asks for the largest Min-SE any 422 gave, and carries it
        # as its Min-SE (RFC 4028 §7.4)
        se = call.b_session_interval()
        if se > 0:
            headers.append(("Session-Expires", str(se)))
            headers.append(("Min-SE", str(call.b_min_se_value())))
        headers.extend(call.relay_headers(a_req, towards_a=False))
        body = call.relay_body(a_req, headers, towards_a=False)  # SDP identity, location
        if body:
            ctype = a_req.get("content-type")
            if ctype and not any(n == "Content-Type" for n, _ in headers):
                headers.append(("Content-Type", ctype))
        headers.append(("Content-Length", str(len(body))))
        if body and a_req.content_type == "application/sdp":
            b.sdp = body
        return Request("INVITE", b.remote_target, headers, body)

    def await_auth_retry(self, call: Call, now: float) -> None:
        """The next hop challenged the INVITE: keep the B-leg for the caller's retry."""
        if call.b is None:
            return
        self.auth_wait[(call.a.call_id, call.a.remote_tag or "")] = (now, call.b)
        if len(self.auth_wait) > 1000 or len(self.auth_wait) % 64 == 0:
            self.auth_wait = {
                k: v for k, v in self.auth_wait.items() if v[0] > now - AUTH_RETRY_WINDOW
            }

    def _auth_retry_leg(self, req: Request, now: float) -> Leg | None:
        entry = self.auth_wait.pop((req.call_id, req.from_.tag or ""), None)
        if entry is None or entry[0] < now - AUTH_RETRY_WINDOW:
            return None
        if not (req.has("authorization") or req.has("proxy-authorization")):
            return None
        return entry[1]

    def a_session_timer(self, req: Request, config: Config) -> tuple[int, str] | None:
        """The A-leg session timer (RFC 4028 §9): (interval, refresher) or None.

        The caller's ``Session-Expires`` is honoured (never lowered below our Min-SE), and
        its ``refresher`` too; without one, the caller refreshes if it supports ``timer``,
        else we do. Without ``Session-Expires`` but with ``timer`` supported, we ask for
        our configured interval with the caller as refresher.
        """
        se = session_expires(req)
        timer_ok = "timer" in (req.tokens("supported") | req.tokens("require"))
        if se is None:
            if not timer_ok or config.sip.session_expires <= 0:
                return None
            # never below the Min-SE the caller asked for (§9)
            return max(config.sip.session_expires, request_min_se(req)), "uac"
        interval, refresher = se
        # too small: a caller that supports timers got 422 already (interval_too_small);
        # one that does not, or an emergency call, has it raised, never below the Min-SE
        # it sent either (§9 and its erratum 1687)
        interval = max(interval, config.sip.min_se, request_min_se(req))
        if refresher not in ("uac", "uas"):
            refresher = "uac" if timer_ok else "uas"
        return interval, refresher

    def redirect_target(self, call: Call, resp: Response) -> tuple[Flow, str] | None:
        """Where a 3xx points, if that is inside the next trunk's sources (else None):
        the flow, and the Contact URI as the new Request-URI (§8.1.3.4, headers off)."""
        for na in resp.contacts:
            uri = na.uri
            if not uri.is_sip:
                continue
            host, _ = uri.host_port()
            try:
                ip = ipaddress.ip_address(host)
            except ValueError:
                continue
            if any(ip.version == n.version and ip in n for n in call.trunk_out.sources):
                flow = self._flow_for(uri, call.trunk_out)
                if flow is not None:
                    return flow, str(
                        Uri(uri.scheme, uri.user, None, uri.host, uri.port, uri.params)
                    )
        return None

    # -- call outcome ----------------------------------------------------------------------

    def _count_call(self, trunk_in: str, trunk_out: str, result: str) -> None:
        if self.metrics is not None:
            self.metrics.inc(self.metrics.calls, trunk_in, trunk_out, result)

    def _refused_cdr(
        self,
        trunk_in: Trunk,
        trunk_out: str | None,
        caller: str,
        callee: str,
        presentation: str,
        emergency: bool,
        status: int,
        end_reason: str,
        now: float,
    ) -> None:
        """The end record of a call attempt refused before it had a B-leg (SPEC §6)."""
        wall = self.wall(now)
        self.cdr_out.append(
            end_record(
                call_id=make_call_id(self.instance),
                trunk_in=trunk_in.name,
                trunk_out=trunk_out,
                caller=caller,
                callee=callee,
                presentation=presentation,  # type: ignore[arg-type]
                emergency=emergency,
                start=wall,
                answer=None,
                end=wall,
                status=status,
                end_reason=end_reason,  # type: ignore[arg-type]
            )
        )
        self._count_call(trunk_in.name, trunk_out or "", end_reason)

    def call_answered(self, call: Call, now: float) -> None:
        ident = call.ident
        rec = start_record(
            call_id=call.id,
            trunk_in=call.trunk_in.name,
            trunk_out=call.trunk_out.name,
            caller=ident.caller,
            callee=ident.callee,
            presentation=ident.decision.presentation,
            emergency=call.emergency,
            start=call.wall_start,
            answer=self.wall(now),
        )
        call.cdr_start = rec
        self.cdr_out.append(rec)
        if self.metrics is not None:
            self.metrics.call_setup.observe(now - call.started_at)

    def call_ended(self, call: Call, end_reason: str, now: float) -> None:
        self.calls -= 1
        if call.emergency:
            self.emergency_calls -= 1
        name = call.trunk_in.name
        self.trunk_calls[name] = self.trunk_calls.get(name, 1) - 1
        for leg in (call.a, call.b):
            if leg is not None and self.dialogs.get(leg.key()) is call:
                del self.dialogs[leg.key()]
        if self.invites.get(call.merge_key) is call:
            del self.invites[call.merge_key]
        ident = call.ident
        answer = call.answered_at
        end = self.wall(now)
        if call.cdr_start is not None:
            # the answered call's end record closes its start record: the same id, trunks,
            # numbers, start and answer, checked once
            rec = end_of(
                call.cdr_start,
                epoch_ms(end),
                status=call.status,
                end_reason=end_reason,  # type: ignore[arg-type]
            )
        else:
            rec = end_record(
                call_id=call.id,
                trunk_in=call.trunk_in.name,
                trunk_out=call.trunk_out.name,
                caller=ident.caller,
                callee=ident.callee,
                presentation=ident.decision.presentation,
                emergency=call.emergency,
                start=call.wall_start,
                answer=None,
                end=end,
                status=call.status,
                end_reason=end_reason,  # type: ignore[arg-type]
            )
        self.cdr_out.append(rec)
        result = "answered" if answer is not None else end_reason
        self._count_call(call.trunk_in.name, call.trunk_out.name, result)
        if self.metrics is not None and answer is None:
            self.metrics.call_setup.observe(now - call.started_at)

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
        calls = set(self.dialogs.values())
        for call in calls:
            if call.state != ENDED:
                call.hangup(True, now, reason="shutdown", status=call.status or 503, to_a=True)


__all__ = ["B2BUA", "Flow", "canonical_name"]
