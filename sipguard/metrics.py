"""Prometheus metrics (SPEC §7). Labels never carry a number or an address.

One :class:`Metrics` object per process, passed to whoever counts; tests make their own
with a private registry, so nothing here is a global singleton.

The counters of every call (``sipguard_calls_total``, ``sipguard_presentation_total``) are
counted in plain integers by the core (:attr:`Metrics.call_counts`,
:attr:`Metrics.presentation_counts`: a dict update where a labelled counter takes a lock)
and moved into their counters whenever the registry is collected (a scrape, a test's
read): what is read is always every call counted so far.
"""

from __future__ import annotations

from collections.abc import Iterable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.metrics_core import Metric

# where the egress check found a withheld caller's number or address (sipguard.b2bua.egress)
EGRESS_WHERE = ("request-uri", "reason-phrase", "header", "body")
SETUP_BUCKETS = (0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0)


class _Export:
    """Registered before the counters: each collection of the registry first moves the
    plain counts into them (:meth:`Metrics.export`), and yields nothing of its own."""

    def __init__(self, metrics: Metrics) -> None:
        self.metrics = metrics

    def describe(self) -> Iterable[Metric]:
        return ()  # no names of its own (and register() then does not collect it)

    def collect(self) -> Iterable[Metric]:
        self.metrics.export()
        return ()


class Metrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        # labelled children of counters, kept: labels() checks and locks on every call
        self._children: dict[tuple[Counter, tuple[str, ...]], Counter] = {}
        # calls by (trunk_in, trunk_out, result) and decisions by (decision, reason),
        # counted by the core (b2bua/records.py), and what of them the counters hold
        self.call_counts: dict[tuple[str, ...], int] = {}
        self.presentation_counts: dict[tuple[str, ...], int] = {}
        self._exported: tuple[dict[tuple[str, ...], int], ...] = ({}, {})
        r = self.registry
        r.register(_Export(self))  # first: collected before the counters it feeds
        self.calls = Counter(
            "sipguard_calls_total",
            "Call attempts by trunks and result",
            ["trunk_in", "trunk_out", "result"],
            registry=r,
        )
        self.active_calls = Gauge("sipguard_active_calls", "Calls in progress", registry=r)
        self.presentation = Counter(
            "sipguard_presentation_total",
            "Caller-ID presentation decisions by reason",
            ["decision", "reason"],
            registry=r,
        )
        self.emergency_calls = Counter(
            "sipguard_emergency_calls_total", "Emergency calls", registry=r
        )
        self.sip_messages = Counter(
            "sipguard_sip_messages_total",
            "SIP messages by direction (in/out) and kind (method or status class)",
            ["direction", "kind"],
            registry=r,
        )
        self.rejected = Counter(
            "sipguard_rejected_total", "Requests refused, by reason", ["reason"], registry=r
        )
        self.parse_errors = Counter(
            "sipguard_parse_errors_total", "Malformed SIP messages received", registry=r
        )
        self.call_setup = Histogram(
            "sipguard_call_setup_seconds",
            "Time from the A-leg INVITE to the first final response relayed",
            buckets=SETUP_BUCKETS,
            registry=r,
        )
        self.cdr_records = Counter(
            "sipguard_cdr_records_total",
            "CDR records by sink and result (written, failed, spooled, dropped)",
            ["sink", "result"],
            registry=r,
        )
        self.config_reloads = Counter(
            "sipguard_config_reloads_total", "Configuration reloads", ["result"], registry=r
        )
        self.retransmissions = Counter(
            "sipguard_retransmissions_total", "SIP retransmissions sent", registry=r
        )
        self.refusals_withheld = Counter(
            "sipguard_refusals_withheld_total",
            "Stateless refusals not sent over UDP: larger than the request that drew them "
            "(counted in sipguard_rejected_total as well)",
            registry=r,
        )
        self.loop_lag = Histogram(
            "sipguard_event_loop_lag_seconds",
            "How late the event loop ran a 50 ms probe: its pauses (GC, long handlers)",
            buckets=(0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0),
            registry=r,
        )
        self.loop_lag_max = Gauge(
            "sipguard_event_loop_lag_max_seconds",
            "The longest event-loop pause seen since start",
            registry=r,
        )
        self.gc_collections = Counter(
            "sipguard_gc_collections_total",
            "Full cyclic garbage collections run by the guard (objects left by cycles)",
            registry=r,
        )
        self.gc_pending = Gauge(
            "sipguard_gc_pending_objects",
            "Growth of the objects the cyclic garbage collector tracks since its last run",
            registry=r,
        )
        self.gc_unreachable = Counter(
            "sipguard_gc_unreachable_objects_total",
            "Objects that only the cyclic garbage collector could free (should stay 0)",
            registry=r,
        )
        self.receive_queue = Gauge(
            "sipguard_receive_queue_bytes",
            "Memory the UDP sockets' receive queues held at the last reading (datagrams "
            "waiting, with the kernel's overhead)",
            registry=r,
        )
        self.admitted_ratio = Gauge(
            "sipguard_overload_admitted_ratio",
            "Fraction of new calls admitted by load shedding (1: none shed)",
            registry=r,
        )
        self.admitted_ratio.set(1.0)
        self.ready = Gauge(
            "sipguard_ready",
            "1 while /readyz answers 200, 0 while draining (read at each scrape)",
            registry=r,
        )
        self.cdr_spool_bytes = Gauge(
            "sipguard_cdr_spool_bytes",
            "Bytes of CDR records waiting in the spool for the database (0 without one)",
            registry=r,
        )
        self.cdr_spool_max_bytes = Gauge(
            "sipguard_cdr_spool_max_bytes",
            "cdr.spool_max_bytes of a sink that spools (0 without a spool)",
            registry=r,
        )
        self.tls_name_failures = Counter(
            "sipguard_tls_name_failures_total",
            "TLS connections sipguard opened whose peer failed certificate verification or "
            "did not prove the trunk's tls_name (refused requests: "
            'sipguard_rejected_total{reason="tls_name"})',
            registry=r,
        )
        self.emergency_refused = Counter(
            "sipguard_emergency_refused_total",
            "Emergency calls refused, by reason (a trunk over its share of the reserve: a "
            "flood of emergency calls, an attack on the emergency service)",
            ["reason"],
            registry=r,
        )
        self.cdr_refusals_unrecorded = Counter(
            "sipguard_cdr_refusals_unrecorded_total",
            "Refused call attempts past limits.refused_cdr_rps, counted instead of written",
            ["trunk_in"],
            registry=r,
        )
        self.privacy_egress_blocked = Counter(
            "sipguard_privacy_egress_blocked_total",
            "Messages not sent because they would have carried a withheld caller's number or "
            "address towards an untrusted trunk (a bug upstream; the call was ended), by "
            "where: request-uri, reason-phrase, header, body",
            ["where"],
            registry=r,
        )
        for where in EGRESS_WHERE:  # a bounded set, exported at 0 from the start
            self.privacy_egress_blocked.labels(where)
        self.media_unanchored = Counter(
            "sipguard_media_unanchored_total",
            "Calls carried without the media anchoring they asked for (rtpengine down)",
            registry=r,
        )
        self.rtpengine_requests = Counter(
            "sipguard_rtpengine_requests_total",
            "rtpengine ng requests by command and result (ok, error, pong, load limit, other; "
            "timeout: no relay answered; refused: none alive or too many in flight)",
            ["command", "result"],
            registry=r,
        )
        self.rtpengine_relays_up = Gauge(
            "sipguard_rtpengine_relays_up",
            "rtpengine control addresses believed alive (read at each scrape)",
            registry=r,
        )
        self.rtpengine_retransmissions = Counter(
            "sipguard_rtpengine_retransmissions_total",
            "ng requests sent again for want of a reply",
            registry=r,
        )
        self.rtpengine_timeouts = Counter(
            "sipguard_rtpengine_timeouts_total",
            "ng requests a relay left unanswered after every try (it is then marked down)",
            registry=r,
        )
        self.rtpengine_stray = Counter(
            "sipguard_rtpengine_stray_total",
            "Datagrams on the ng control socket ignored: no pending cookie, not from the "
            "relay asked, or not bencode (late replies, or someone else's)",
            registry=r,
        )

    def export(self) -> None:
        """Move what :attr:`call_counts` and :attr:`presentation_counts` gained since the
        last time into their counters. Only increases are read (never a reset), so a count
        taken while this runs is moved the next time."""
        for counter, counts, exported in zip(
            (self.calls, self.presentation),
            (self.call_counts, self.presentation_counts),
            self._exported,
            strict=True,
        ):
            for labels, n in list(counts.items()):
                delta = n - exported.get(labels, 0)
                if delta:
                    self.inc(counter, *labels, by=delta)
                    exported[labels] = n

    def inc(self, counter: Counter, *labels: str, by: int = 1) -> None:
        """``counter.labels(*labels).inc(by)`` for a counter of this object, on the hot path.

        Label values come from bounded sets (trunk names, results, reasons), so the kept
        children stay few.
        """
        key = (counter, labels)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = counter.labels(*labels)
        child.inc(by)
