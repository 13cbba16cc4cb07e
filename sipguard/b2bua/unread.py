"""What the core answers from a message's raw lines, before the parser reads it.

Two refusals of a trunk's new INVITE, and one absorption, each at the cost of splitting a
few lines (issue 19: a refusal costs at most a tenth of a call) rather than of parsing,
validating and judging the request in full:

* **shed**: the shedder refuses the call under overload (:mod:`~sipguard.b2bua.overload`);
* **limited**: a limit refuses every new call of the trunk now
  (:meth:`~sipguard.b2bua.admission.Capacity.full`: draining, the CDR spool full, the
  calls at once, the trunk's calls of this second);
* **the ACK of such a 503**, absorbed unread as §17.2.1 lets a stateless refusal's ACK be.

Both refusals answer what the whole way would (a ``503`` made by
:func:`~sipguard.b2bua.shed.early_refusal` from the INVITE's own lines, its
retransmissions the same) and count it, but only once the trunk's refused attempts of
this second have all their records (``limits.refused_cdr_rps``, SPEC §6): until then the
whole way writes them. No caller identity is decided on this path, and an INVITE the
whole way would refuse for something of its own (a missing Contact, ``Max-Forwards`` 0)
gets the 503 instead. Anything else is read in full: an emergency call, a call under way,
a trunk without a route or whose TLS name is not proved, anything unusual
(:func:`~sipguard.b2bua.shed.early_refusal` says what).
"""

from __future__ import annotations

from collections.abc import Callable

from sipguard.b2bua.admission import Capacity, Refused
from sipguard.b2bua.overload import Shedder
from sipguard.b2bua.peers import Peers
from sipguard.b2bua.records import Records
from sipguard.b2bua.shed import EarlyShed
from sipguard.config.model import Config
from sipguard.sip.tlsnames import name_matches
from sipguard.sip.transaction import Flow, TransactionLayer


class Unread:
    """The core's answers before the parser: see the module's docstring."""

    __slots__ = ("capacity", "count_refused", "early", "layer", "peers", "records", "shedder")

    def __init__(
        self,
        peers: Peers,
        records: Records,
        capacity: Capacity,
        shedder: Shedder,
        layer: TransactionLayer,
        count_refused: Callable[[str], None],
    ) -> None:
        self.peers = peers
        self.records = records
        self.capacity = capacity
        self.shedder = shedder
        self.layer = layer
        self.count_refused = count_refused  # sipguard_rejected_total{reason}
        self.early = EarlyShed(shedder)

    def answer(
        self, data: bytes, flow: Flow, now: float, config: Config, draining: bool, accepting: bool
    ) -> bool:
        """Was ``data``, from a source the gate let in, answered or absorbed unread?"""
        if len(data) > config.sip.max_message_bytes:
            return False  # the parser drops it and counts it: no answer here either
        if data.startswith(b"INVITE "):
            if self.shedder.shedding and self.shed(data, flow, now, config):
                return True
            if self.limited(data, flow, now, config, draining, accepting):
                self.shedder.granted = False  # the shed look's yes was for this INVITE only
                return True
            return False
        early = self.early
        if data.startswith(b"ACK ") and early.memory.any() and early.acked(data, flow):
            self.records.message_in("ACK")  # the ACK of a 503 given unread: absorbed
            return True
        return False

    def shed(self, data: bytes, flow: Flow, now: float, config: Config) -> bool:
        """Shed a trunk's new INVITE unread, where the shedder refuses it."""
        trunk = self.peers.trunk_of(flow.local, flow.host)
        if trunk is None or self.records.recording(trunk.name, now, config.limits.refused_cdr_rps):
            return False
        resp = self.early.refuse(data, flow, trunk.trusted, config, self.layer.server, now)
        if resp is None:
            return False  # an emergency call, a call under way, anything unusual: read it
        self.layer.send(flow, resp)
        self.records.message_in("INVITE")
        self.records.shed(trunk.name, trunk.route_to or "")
        return True

    def limited(
        self, data: bytes, flow: Flow, now: float, config: Config, draining: bool, accepting: bool
    ) -> bool:
        """Refuse a trunk's new INVITE unread with ``503``, where a limit refuses every new
        call of its trunk now; the limit is counted and (under the rate) recorded as the
        whole way would (:meth:`Capacity.limit` names it)."""
        trunk = self.peers.trunk_of(flow.local, flow.host)
        capacity = self.capacity
        rate = config.limits.refused_cdr_rps
        if (
            trunk is None
            or not capacity.full(config, trunk, now, draining=draining, accepting=accepting)
            or self.records.recording(trunk.name, now, rate)
        ):
            return False
        route = trunk.route_to
        if route is None or route not in config.trunks:
            return False  # 404, no route: the whole way says so
        if trunk.tls_name is not None and not name_matches(trunk.tls_name, self.peers.names(flow)):
            return False  # 403: the whole way says so
        early = self.early.plain(data, flow, config, self.layer.server)
        if early is None:
            return False
        if self.early.again_raw(early, flow):
            label = "overload"  # a retransmission of a 503, as the whole way answers it
        else:
            limit = capacity.limit(
                config,
                trunk,
                False,
                now,
                flow.host,
                self.shedder,
                draining=draining,
                accepting=accepting,
            )
            if limit is None:  # never: full() said a limit holds; the whole way decides
                return False
            label = limit
            self.records.refused(
                trunk.name, Refused(503, label, end_reason="limit", route=route), now, rate
            )
        self.records.message_in("INVITE")
        self.count_refused(label)
        self.layer.send(flow, self.early.refused(early, flow, now))
        return True
