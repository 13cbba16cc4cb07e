"""Where a call goes: a trunk's targets in order, failover, redirects, health probes.

A trunk with ``targets`` receives its calls there, resolved by the driver (RFC 3263) and
tried in order; one that failed is skipped, and probed with ``OPTIONS`` every
``probe_interval`` until it answers (:class:`Prober`). A trunk without ``targets`` receives
its calls at the Request-URI's address, and only where that lies in its ``sources``
(SPEC §5: never an open relay); a redirect is followed only inside them too.
"""

from __future__ import annotations

import ipaddress
import logging
from collections.abc import Sequence
from typing import Protocol

from sipguard.config.model import Config, Listen, Trunk
from sipguard.sip.message import Request, Response
from sipguard.sip.timers import Timer
from sipguard.sip.transaction import ClientTransaction, Flow, TransactionLayer, new_tag
from sipguard.sip.uri import Uri, parse_uri

log = logging.getLogger("sipguard.b2bua")


class Addressing(Protocol):
    """What the router needs of the element for its probes: a Via, a new Call-ID."""

    def via(self, flow: Flow) -> str: ...

    def new_call_id(self) -> str: ...


def flow_on(
    listen: Sequence[Listen], transport: str, host: str, port: int, trunk: Trunk
) -> Flow | None:
    """A flow to ``host:port`` from the first listen entry that fits (transport, family,
    trunk); a trunk with a ``tls_name`` is reached over TLS only."""
    if trunk.tls_name is not None and transport != "tls":
        return None
    v6 = ":" in host
    for i, entry in enumerate(listen):
        if entry.transport != transport or (":" in entry.address) != v6:
            continue
        if entry.trunks is not None and trunk.name not in entry.trunks:
            continue
        return Flow(transport, i, host, port)
    return None


def flow_for(listen: Sequence[Listen], uri: Uri, trunk: Trunk) -> Flow | None:
    """The flow a SIP URI names (its transport, host and port; RFC 3263 defaults)."""
    transport = (uri.param("transport") or "udp").lower()
    if uri.scheme == "sips":
        transport = "tls"
    host, port = uri.host_port(5061 if transport == "tls" else 5060)
    return flow_on(listen, transport, host, port, trunk)


def in_sources(trunk: Trunk, host: str) -> bool:
    """Whether ``host`` is an IP address inside the trunk's sources (a name never is)."""
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return False
    return any(ip.version == n.version and ip in n for n in trunk.sources)


def redirect_target(
    listen: Sequence[Listen], trunk_out: Trunk, resp: Response
) -> tuple[Flow, str] | None:
    """Where a 3xx points, if that is inside the next trunk's sources (else None): the
    flow, and the Contact URI as the new Request-URI (§8.1.3.4, headers off)."""
    for na in resp.contacts:
        uri = na.uri
        if not uri.is_sip or not in_sources(trunk_out, uri.host_port()[0]):
            continue
        flow = flow_for(listen, uri, trunk_out)
        if flow is not None:
            return flow, str(Uri(uri.scheme, uri.user, None, uri.host, uri.port, uri.params))
    return None


class Prober:
    """OPTIONS to a target that failed, every ``probe_interval``, until any answer comes.

    Any response counts as alive (the target's SIP stack answers); a timeout or a
    transport error keeps it down.
    """

    __slots__ = ("flow", "router", "timer")

    def __init__(self, router: Router, flow: Flow, now: float) -> None:
        self.router = router
        self.flow = flow
        self.timer: Timer | None = None
        self.timer = router.layer.timers.schedule(
            now + router.config.sip.probe_interval, self._probe
        )

    def _probe(self, now: float) -> None:
        self.timer = None
        router = self.router
        if router.down.get(self.flow) is self:
            router.layer.send_request(router.options(self.flow), self.flow, self, now)

    def on_response(self, tx: ClientTransaction, resp: Response, now: float) -> None:
        if resp.status >= 200:
            self.router.alive(self.flow)

    def on_timeout(self, tx: ClientTransaction, now: float) -> None:
        router = self.router
        if router.down.get(self.flow) is self:
            self.timer = router.layer.timers.schedule(
                now + router.config.sip.probe_interval, self._probe
            )

    def stop(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None


class Router:
    """The targets of every trunk, which of them are down, and what TLS ones must prove."""

    def __init__(self, config: Config, layer: TransactionLayer, via: Addressing) -> None:
        self.config = config
        self.layer = layer
        self.via = via
        self.down: dict[Flow, Prober] = {}
        self.resolved: dict[str, list[tuple[str, str, int]]] = {}
        self._flows: dict[str, list[Flow]] = {}
        self._hosts: frozenset[str] | None = None  # of every trunk's targets
        # (listen entry, host, port) of a configured TLS target -> its trunk's tls_name
        self.tls_targets: dict[tuple[int, str, int], str] = {}

    def reload(self, config: Config) -> None:
        self.config = config
        self._flows.clear()
        self._hosts = None

    def set_resolved(self, resolved: dict[str, list[tuple[str, str, int]]]) -> None:
        """Where each configured target URI resolves to (RFC 3263, done by the driver)."""
        self.resolved = resolved
        self._flows.clear()
        self._hosts = None

    def target_hosts(self) -> frozenset[str]:
        """The addresses of every trunk's targets: known peers, in sources or not."""
        hosts = self._hosts
        if hosts is None:
            trunks = self.config.trunks.values()
            hosts = self._hosts = frozenset(f.host for t in trunks for f in self.trunk_targets(t))
        return hosts

    def trunk_targets(self, trunk: Trunk) -> list[Flow]:
        """Every next hop of a trunk's ``targets``, in order, resolved (cached)."""
        flows = self._flows.get(trunk.name)
        if flows is not None:
            return flows
        listen = self.config.listen
        flows = []
        for t in trunk.targets:
            entries = self.resolved.get(t)
            if entries is None:  # not resolved (yet): an address literal needs no DNS
                flow = flow_for(listen, parse_uri(t), trunk)
                if flow is not None:
                    flows.append(flow)
                continue
            for transport, host, port in entries:
                flow = flow_on(listen, transport, host, port, trunk)
                if flow is not None and flow not in flows:
                    flows.append(flow)
        self._flows[trunk.name] = flows
        if trunk.tls_name is not None:
            # what these next hops must prove: kept for as long as the process runs
            # (calls in progress keep their targets across reloads); as many as the
            # configured targets' addresses
            for f in flows:
                self.tls_targets[(f.local, f.host, f.port)] = trunk.tls_name
        return flows

    def targets(self, trunk_out: Trunk, ruri: Uri, emergency: bool) -> list[Flow]:
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
        if not ruri.is_sip or not in_sources(trunk_out, ruri.host_port()[0]):
            return []  # a name would need RFC 3263 resolution; only addresses are routed
        flow = flow_for(self.config.listen, ruri, trunk_out)
        return [flow] if flow else []

    def failed(self, flow: Flow, now: float) -> None:
        """A target gave no answer, a 503, or a transport error: probe it until it answers."""
        if flow in self.down:
            return
        log.warning(
            "target %s %s:%d is down; probing it with OPTIONS", flow.transport, flow.host, flow.port
        )
        self.down[flow] = Prober(self, flow, now)

    def alive(self, flow: Flow) -> None:
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
            ("Via", self.via.via(flow)),
            ("Max-Forwards", "70"),
            ("From", f"<sip:sipguard@{self.config.identity_domain}>;tag={new_tag()}"),
            ("To", f"<{uri}>"),
            ("Call-ID", self.via.new_call_id()),
            ("CSeq", "1 OPTIONS"),
            ("Content-Length", "0"),
        ]
        return Request("OPTIONS", uri, hdrs)
