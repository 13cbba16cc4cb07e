"""The validated configuration: immutable values, built only by the loader.

Every field name here is part of the operator interface of SPEC.md §5. The loader
(:mod:`sipguard.config.loader`) is the only code that reads YAML and builds these;
everything else receives a :class:`Config` and never mutates it, so that a reload can
swap the whole object atomically while calls in progress keep the one they started with.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from typing import Literal

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

Transport = Literal["udp", "tcp", "tls"]
Presentation = Literal["allowed", "restricted", "permanent"]
CliPolicy = Literal["replace", "reject"]
MediaMode = Literal["pass", "anchor"]


# the longest session interval (RFC 4028 sets none): a day. A peer's larger value is taken
# as this, so that no value can overflow a timer or let a dead call live on unchecked.
MAX_SESSION_INTERVAL = 86_400


@dataclass(frozen=True, slots=True)
class Listen:
    transport: Transport
    address: str
    port: int
    trunks: tuple[str, ...] | None = None  # None: serves every trunk
    cert: str | None = None
    key: str | None = None
    # TLS: the CA certificates that verify peers' certificates (a client's, which it is
    # then asked for; a server's we connect to), for trunks with a tls_name
    ca: str | None = None


# where sipguard listens when the configuration has no `listen` section
DEFAULT_LISTEN: tuple[Listen, ...] = (
    Listen("udp", "127.0.0.1", 5060),
    Listen("tcp", "127.0.0.1", 5060),
)


@dataclass(frozen=True, slots=True)
class Metrics:
    address: str = "127.0.0.1"
    port: int = 9460


@dataclass(frozen=True, slots=True)
class ClirCodes:
    withhold: str = "#31#"
    present: str = "*31#"


@dataclass(frozen=True, slots=True)
class CdrConfig:
    sink: Literal["file", "postgres"] = "file"
    path: str = "var/cdr"
    retention_days: int = 92
    dsn: str | None = None  # postgres sink
    fsync: Literal["always", "batch", "never"] = "batch"
    spool_path: str = "var/cdr-spool"  # postgres sink: records waiting for the database
    spool_max_bytes: int = 256 * 1024 * 1024
    on_spool_full: Literal["refuse", "drop"] = "refuse"


@dataclass(frozen=True, slots=True)
class Limits:
    max_calls: int = 10000
    emergency_max_calls: int = 200
    # per-source flood protection: requests per second from one source address (0: off)
    source_rps: int = 0
    # load shedding: above this many KiB held by the UDP receive queues (at most a quarter
    # of the receive buffer), part of the new calls are refused with 503 until the queue
    # is short again (0: off)
    overload_queue_kb: int = 2048
    # requests per window (10 s) from a source matching no trunk, each answered 403
    # statelessly; past it that source gets silence until it has been quiet for a window
    unknown_source_budget: int = 20
    # end records of refused call attempts per trunk and second; the rest are counted in
    # sipguard_cdr_refusals_unrecorded_total, not written (0: every one written)
    refused_cdr_rps: int = 20
    # TCP/TLS connections open at once, in total (accepted and opened by us; fewer where
    # the descriptor limit allows fewer) and accepted from one source address: one more is
    # closed at once (the connections sipguard opens are counted, never refused)
    tcp_max_connections: int = 10000
    tcp_max_per_source: int = 64


@dataclass(frozen=True, slots=True)
class RtpEngine:
    control: tuple[str, ...] = ()
    when_down: Literal["refuse", "pass"] = "refuse"
    # seconds without RTP before an anchored call is ended with BYE (0: never)
    media_timeout: float = 60.0


@dataclass(frozen=True, slots=True)
class Dns:
    """How trunk targets given by name are resolved (RFC 3263: NAPTR, SRV, A/AAAA)."""

    servers: tuple[str, ...] = ()  # "IP" or "IP:PORT" ("[v6]:PORT"); none: the system resolver
    # answers are looked up again when their TTL runs out, within these bounds (seconds)
    refresh_min: float = 30.0
    refresh_max: float = 3600.0


def dns_server_address(text: str) -> tuple[str, int]:
    """``IP``, ``IP:PORT`` or ``[IPv6]:PORT`` of a DNS server; raise ``ValueError``."""
    host, port = text, 53
    if text.startswith("["):
        host, sep, rest = text[1:].partition("]")
        if not sep or (rest and not rest.startswith(":")):
            raise ValueError(f"invalid DNS server {text!r}")
        if rest:
            port = _dns_port(text, rest[1:])
    elif text.count(":") == 1:  # IPv4:PORT (a bare IPv6 address has two colons or more)
        host, _, port_text = text.partition(":")
        port = _dns_port(text, port_text)
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        raise ValueError(f"invalid DNS server {text!r}: an IP address or IP:PORT") from None
    return str(address), port


def _dns_port(text: str, port: str) -> int:
    if not (port.isascii() and port.isdigit()) or not 1 <= int(port) <= 65535:
        raise ValueError(f"invalid port in DNS server {text!r}")
    return int(port)


@dataclass(frozen=True, slots=True)
class SipTimers:
    """RFC 3261 timer base values and the B2BUA's own call timers (all in seconds)."""

    t1: float = 0.5
    t2: float = 4.0
    t4: float = 5.0
    # a target that gives no provisional response in this time is skipped for the next
    target_timeout: float = 3.0
    # longest call; ends a call whose BYE was lost (0: no limit)
    max_call_duration: float = 4 * 3600.0
    # RFC 4028 session timer offered on each leg (0: off) and the smallest we accept
    session_expires: int = 1800
    min_se: int = 90
    # idle TCP connections with no call on them are closed after this time
    tcp_idle_timeout: float = 120.0
    # a TCP/TLS connection that has not delivered a whole message head this long after its
    # first byte (or after it was accepted, before its first message) is closed; the
    # deadline of a TLS handshake too
    tcp_header_timeout: float = 5.0
    max_message_bytes: int = 65535
    # a call that rings this long with no answer is ended (RFC 3261 §16.6 Timer C, > 3 min)
    no_answer_timeout: float = 185.0
    # a target that failed is probed with OPTIONS this often until it answers
    probe_interval: float = 5.0


@dataclass(frozen=True, slots=True)
class Numbering:
    country_code: str = ""  # "" : numbers without '+' are not made E.164
    national_prefix: str = "0"
    international_prefix: str = "00"


@dataclass(frozen=True, slots=True)
class TrunkLimits:
    cps: int = 0  # new calls per second from this trunk (0: no limit)
    max_calls: int = 0  # calls at once from this trunk (0: only the global limit)
    # emergency calls at once from this trunk, and new ones per second, under the global
    # reserve (0: a fair share of it, :func:`sipguard.b2bua.admission.emergency_share`)
    emergency_max_calls: int = 0
    emergency_cps: int = 0


@dataclass(frozen=True, slots=True)
class Trunk:
    name: str
    sources: tuple[IPNetwork, ...] = ()
    trusted: bool = False
    route_to: str | None = None
    emergency_route_to: str | None = None
    presentation: Presentation = "allowed"
    restricted_numbers: frozenset[str] = frozenset()
    permanent_numbers: frozenset[str] = frozenset()
    allowed_cli: tuple[str, ...] = ()  # glob-style patterns on E.164 numbers ('*' wildcard)
    default_cli: str | None = None
    cli_policy: CliPolicy = "replace"
    reject_anonymous: bool = False
    numbering: Numbering = field(default_factory=Numbering)
    limits: TrunkLimits = field(default_factory=TrunkLimits)
    media: MediaMode = "pass"
    targets: tuple[str, ...] = ()  # SIP URIs, tried in order
    # extra headers copied towards this trunk when it is untrusted (lower-case names)
    header_allowlist: frozenset[str] = frozenset()
    # TLS trunks: the name the peer's certificate must hold (verified against the ``ca`` of
    # the TLS listen entry), or "*." and a domain; requests without it are refused (403),
    # and the trunk is reached over TLS only
    tls_name: str | None = None

    def emergency_target(self) -> str | None:
        return self.emergency_route_to or self.route_to


@dataclass(frozen=True, slots=True)
class Config:
    source: str  # the file it was read from ("<embedded>" for the defaults)
    listen: tuple[Listen, ...]
    trunks: dict[str, Trunk]
    metrics: Metrics | None = field(default_factory=Metrics)
    identity_domain: str = "sip.example.net"
    clir_codes: ClirCodes = field(default_factory=ClirCodes)
    emergency_numbers: tuple[str, ...] = ("112", "911")
    cdr: CdrConfig = field(default_factory=CdrConfig)
    limits: Limits = field(default_factory=Limits)
    rtpengine: RtpEngine = field(default_factory=RtpEngine)
    sip: SipTimers = field(default_factory=SipTimers)
    drain_seconds: float = 30.0
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    # text, or json: one object per line for a log collector (a restart applies a change)
    log_format: Literal["text", "json"] = "text"
    dns: Dns = field(default_factory=Dns)

    def match_trunk(self, listen_index: int, source_ip: IPAddress) -> Trunk | None:
        """The trunk a new request belongs to (SPEC §2), or None: refuse with 403.

        ``listen_index`` is the index in :attr:`listen` of the socket it arrived on; a
        listen entry that names trunks serves only those. The longest matching prefix wins
        (the loader refuses sources that overlap between trunks sharing a listen entry).
        """
        allowed = self.listen[listen_index].trunks if 0 <= listen_index < len(self.listen) else None
        if isinstance(source_ip, ipaddress.IPv6Address) and source_ip.ipv4_mapped is not None:
            source_ip = source_ip.ipv4_mapped  # ::ffff:a.b.c.d from a dual-stack socket
        best: Trunk | None = None
        best_len = -1
        for trunk in self.trunks.values():
            if allowed is not None and trunk.name not in allowed:
                continue
            for net in trunk.sources:
                if net.version != source_ip.version or net.prefixlen <= best_len:
                    continue
                if source_ip in net:
                    best, best_len = trunk, net.prefixlen
        return best
