"""Resolving trunk targets given by name (RFC 3263), in the background, with dnspython.

The core never waits for DNS: it is handed a plain dict, ``{target URI text as written in
the configuration: [(transport, ip, port), ...]}``, best first, and routes from it. This
module builds that dict and keeps it fresh:

- :meth:`TargetResolver.snapshot` (no I/O) gives at once what is known: IP-literal
  targets, which need no DNS, and the last good answer of every name;
- :meth:`TargetResolver.refresh_all` looks up the names whose answer is missing or due;
- :meth:`TargetResolver.run` does that for ever, sleeping until the next answer is due (its
  TTL, within ``dns.refresh_min`` .. ``dns.refresh_max``), and calls ``on_update`` with the
  dict each time it changes.

A lookup that fails (timeout, SERVFAIL, NXDOMAIN, a name with no address at all) keeps
the last good answer and is tried again after ``refresh_min``; each change of a name's
state (failing with a new reason, working again) is logged once.

The RFC 3263 choices themselves are made by :func:`sipguard.sip.rfc3263.select_targets`,
which is pure: here it runs against the answers fetched so far and, when it asks for one
not fetched yet, the lookup is made and the selection run again.
"""

from __future__ import annotations

import asyncio
import logging
import math
import random
import time
import traceback
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

import dns.asyncresolver
import dns.exception
import dns.name
import dns.nameserver
import dns.rdatatype
import dns.rdtypes.IN.A
import dns.rdtypes.IN.AAAA
import dns.rdtypes.IN.NAPTR
import dns.rdtypes.IN.SRV
import dns.resolver

from sipguard.config.model import Config, Dns, dns_server_address
from sipguard.sip.errors import SipError
from sipguard.sip.rfc3263 import (
    TRANSPORTS,
    Naptr,
    Srv,
    Target,
    Transport,
    needs_dns,
    select_targets,
)
from sipguard.sip.uri import Uri, parse_uri

__all__ = ["DnsError", "Entry", "Resolved", "TargetResolver", "config_transports"]

log = logging.getLogger("sipguard.dns")

Entry = tuple[str, str, int]  # (transport, ip, port): "udp", "10.0.0.1", 5060
Resolved = dict[str, list[Entry]]  # target URI text as written -> entries, best first

DEFAULT_TIMEOUT = 2.0  # seconds for one query to one server
_MAX_QUERIES = 64  # per target: far above what RFC 3263 needs; a guard, not a limit


class DnsError(Exception):
    """A target could not be resolved (and there is no earlier answer to fall back on)."""


class _NotFetchedError(Exception):
    """Raised inside the selection for an answer not fetched yet."""

    def __init__(self, key: tuple[str, str]) -> None:
        super().__init__(key)
        self.key = key


class _Answers:
    """The answers fetched for one target: a :class:`~sipguard.sip.rfc3263.Lookup`."""

    def __init__(self) -> None:
        self.naptrs: dict[str, list[Naptr]] = {}
        self.srvs: dict[str, list[Srv]] = {}
        self.addrs: dict[str, list[str]] = {}
        self.min_ttl: float | None = None  # over the records found

    def naptr(self, name: str) -> Sequence[Naptr]:
        if name not in self.naptrs:
            raise _NotFetchedError((name, "NAPTR"))
        return self.naptrs[name]

    def srv(self, name: str) -> Sequence[Srv]:
        if name not in self.srvs:
            raise _NotFetchedError((name, "SRV"))
        return self.srvs[name]

    def addresses(self, name: str) -> Sequence[str]:
        if name not in self.addrs:
            raise _NotFetchedError((name, "ADDR"))
        return self.addrs[name]

    def ttl(self, ttl: int | None) -> None:
        if ttl is not None and (self.min_ttl is None or ttl < self.min_ttl):
            self.min_ttl = ttl


@dataclass(slots=True)
class _State:
    """What is known of one target."""

    targets: list[Target] | None = None  # the last good answer; None: never resolved
    due: float = 0.0  # when to look it up again (the resolver's clock)
    problem: str | None = None  # why the last lookup failed; None: it worked


def config_transports(config: Config) -> tuple[Transport, ...]:
    """The transports sipguard can send on: those it listens on, in the listen order."""
    out: list[Transport] = []
    for entry in config.listen:
        if entry.transport not in out:
            out.append(entry.transport)
    return tuple(out)


def _config_targets(config: Config) -> list[str]:
    out: dict[str, None] = {}
    for trunk in config.trunks.values():
        for text in trunk.targets:
            out.setdefault(text, None)
    return list(out)


def _entries(targets: Iterable[Target]) -> list[Entry]:
    return [t.as_tuple() for t in targets]


class TargetResolver:
    """Resolves SIP URIs to (transport, ip, port) lists and keeps them until they are due.

    ``servers``: DNS servers as ``IP``, ``IP:PORT`` or ``[IPv6]:PORT`` (none: the system
    resolver); ``timeout``: seconds for one query to one server; ``clock`` (monotonic
    seconds) and ``randint`` (the RFC 2782 weighting) can be replaced in tests.
    """

    def __init__(
        self,
        servers: Sequence[str] = (),
        *,
        refresh_min: float = 30.0,
        refresh_max: float = 3600.0,
        timeout: float = DEFAULT_TIMEOUT,
        transports: Sequence[Transport] = TRANSPORTS,
        clock: Callable[[], float] = time.monotonic,
        randint: Callable[[int, int], int] = random.randint,
    ) -> None:
        if not 0 < refresh_min <= refresh_max:
            raise ValueError("need 0 < refresh_min <= refresh_max")
        self.refresh_min = refresh_min
        self.refresh_max = refresh_max
        self.timeout = timeout
        self.transports: tuple[Transport, ...] = tuple(transports)
        self._clock = clock
        self._randint = randint
        self._states: dict[str, _State] = {}
        self._servers: tuple[str, ...] = ()
        self._resolver = self._make_resolver(servers)

    @classmethod
    def from_config(cls, dns: Dns, *, timeout: float = DEFAULT_TIMEOUT) -> TargetResolver:
        """A resolver set up as the configuration's ``dns`` section says."""
        return cls(
            dns.servers,
            refresh_min=dns.refresh_min,
            refresh_max=dns.refresh_max,
            timeout=timeout,
        )

    def reconfigure(self, dns: Dns) -> None:
        """Take a reloaded ``dns`` section; the answers known so far are kept."""
        if dns.servers != self._servers:
            self._resolver = self._make_resolver(dns.servers)
            self._expire_all()
        if (dns.refresh_min, dns.refresh_max) != (self.refresh_min, self.refresh_max):
            self.refresh_min, self.refresh_max = dns.refresh_min, dns.refresh_max
            self._expire_all()

    def _make_resolver(self, servers: Sequence[str]) -> dns.asyncresolver.Resolver:
        self._servers = tuple(servers)
        if servers:
            resolver = dns.asyncresolver.Resolver(configure=False)
            resolver.nameservers = [
                dns.nameserver.Do53Nameserver(*dns_server_address(s)) for s in servers
            ]
        else:
            try:
                resolver = dns.asyncresolver.Resolver()
            except (dns.exception.DNSException, OSError) as exc:
                log.warning("dns: no system resolver (%s); names cannot be resolved", exc)
                resolver = dns.asyncresolver.Resolver(configure=False)
        resolver.timeout = self.timeout  # for one query to one server
        resolver.cache = None  # this class keeps the answers, and their TTLs, itself
        resolver.search = []
        return resolver

    def _expire_all(self) -> None:
        for state in self._states.values():
            state.due = 0.0

    def _use_transports(self, transports: tuple[Transport, ...]) -> None:
        if transports != self.transports:
            self.transports = transports
            self._expire_all()

    # -- the dict the core is given --------------------------------------------------------

    def snapshot(self, config: Config) -> Resolved:
        """What is known now for every target of ``config``, without any I/O.

        IP-literal targets are complete; a name never resolved yet maps to ``[]``.
        """
        self._use_transports(config_transports(config))
        out: Resolved = {}
        for text in _config_targets(config):
            try:
                uri = parse_uri(text)
                if not needs_dns(uri):
                    out[text] = _entries(self._select(uri, _Answers()))
                    continue
            except (SipError, ValueError):
                out[text] = []
                continue
            state = self._states.get(text)
            out[text] = _entries(state.targets) if state and state.targets is not None else []
        return out

    async def refresh_all(self, config: Config) -> Resolved:
        """Look up every target of ``config`` that is due; return the dict for the core.

        Targets resolve concurrently. A target that fails keeps its last good answer, or
        maps to ``[]`` if it never had one.
        """
        self._use_transports(config_transports(config))
        texts = _config_targets(config)
        for gone in set(self._states) - set(texts):
            del self._states[gone]
        results = await asyncio.gather(*(self._resolve_or_empty(t) for t in texts))
        return {text: _entries(targets) for text, targets in zip(texts, results, strict=True)}

    async def run(self, config: Config, on_update: Callable[[Resolved], None]) -> None:
        """Keep the targets of ``config`` resolved for ever; cancel the task to stop.

        ``on_update`` gets the whole dict after the first round and whenever it changes.
        On a reload, cancel this task, hand the core :meth:`snapshot` of the new
        configuration, and start it again with the new configuration.
        """
        last: Resolved | None = None
        while True:
            resolved = await self.refresh_all(config)
            if resolved != last:
                last = resolved
                try:
                    on_update(resolved)
                except Exception:
                    log.exception("dns: internal error handing over resolved targets")
            await asyncio.sleep(self._sleep_time(config))

    def _sleep_time(self, config: Config) -> float:
        now = self._clock()
        due = min(
            (s.due for t in _config_targets(config) if (s := self._states.get(t)) is not None),
            default=math.inf,
        )
        return min(max(due - now, 0.0), self.refresh_max)

    # -- one target ------------------------------------------------------------------------

    async def resolve(self, uri_text: str) -> list[Target]:
        """The targets ``uri_text`` leads to, best first: the known answer while it is not
        due, else a new lookup; when that fails, the last good answer.

        Raise :class:`DnsError` when it fails and there is no earlier answer.
        """
        state = self._states.setdefault(uri_text, _State())
        now = self._clock()
        if state.targets is not None and now < state.due:
            return state.targets
        try:
            uri = parse_uri(uri_text)
            targets, ttl = await self._lookup(uri)
            if not targets and not needs_dns(uri):
                raise DnsError("no listen entry for its transport")
            if not targets:
                raise DnsError("no address found")
        except (DnsError, SipError, ValueError) as exc:
            problem = str(exc) or type(exc).__name__
            if problem != state.problem:
                kept = "keeping the last answer" if state.targets is not None else "no answer yet"
                log.warning("dns: %s: %s (%s)", uri_text, problem, kept)
            state.problem = problem
            state.due = self._clock() + self.refresh_min
            if state.targets is None:
                raise DnsError(f"{uri_text}: {problem}") from None
            return state.targets
        if state.problem is not None and state.targets is not None:
            log.info("dns: %s resolves again", uri_text)
        if targets != state.targets:
            shown = ", ".join(f"{t.transport}:{t.host}:{t.port}" for t in targets)
            log.info("dns: %s -> %s", uri_text, shown)
        state.targets = targets
        state.problem = None
        if not needs_dns(uri):
            state.due = math.inf  # an IP literal: nothing to look up again
        else:
            life = self.refresh_max if ttl is None else ttl
            state.due = self._clock() + min(max(life, self.refresh_min), self.refresh_max)
        return targets

    async def _resolve_or_empty(self, uri_text: str) -> list[Target]:
        try:
            return await self.resolve(uri_text)
        except DnsError:
            return []

    def _select(self, uri: Uri, answers: _Answers) -> list[Target]:
        return select_targets(uri, answers, transports=self.transports, randint=self._randint)

    async def _lookup(self, uri: Uri) -> tuple[list[Target], float | None]:
        """Run the RFC 3263 selection, fetching each answer it asks for; (targets, min TTL)."""
        answers = _Answers()
        for _ in range(_MAX_QUERIES):
            try:
                return self._select(uri, answers), answers.min_ttl
            except _NotFetchedError as missing:
                await self._fetch(answers, *missing.key)
        raise DnsError("too many lookups")  # pragma: no cover - select_targets is bounded

    async def _fetch(self, answers: _Answers, name: str, kind: str) -> None:
        if kind == "NAPTR":
            rdatas, ttl = await self._query(name, dns.rdatatype.NAPTR)
            answers.ttl(ttl)
            answers.naptrs[name] = [
                Naptr(
                    rd.order,
                    rd.preference,
                    rd.flags.decode("ascii", "replace"),
                    rd.service.decode("ascii", "replace"),
                    rd.regexp.decode("ascii", "replace"),
                    rd.replacement.to_text(),
                )
                for rd in rdatas
                if isinstance(rd, dns.rdtypes.IN.NAPTR.NAPTR)
            ]
        elif kind == "SRV":
            rdatas, ttl = await self._query(name, dns.rdatatype.SRV)
            answers.ttl(ttl)
            records = [
                Srv(rd.priority, rd.weight, rd.port, rd.target.to_text())
                for rd in rdatas
                if isinstance(rd, dns.rdtypes.IN.SRV.SRV)
            ]
            answers.srvs[name] = records
            # the selection asks for every target's addresses next: fetch them together
            names = {r.target.rstrip(".").lower() for r in records} - {""}
            await asyncio.gather(*(self._fetch(answers, n, "ADDR") for n in names))
        elif name not in answers.addrs:
            (v6, ttl6), (v4, ttl4) = await asyncio.gather(
                self._query(name, dns.rdatatype.AAAA), self._query(name, dns.rdatatype.A)
            )
            answers.ttl(ttl6)
            answers.ttl(ttl4)
            # IPv6 first (RFC 6724's default policy); the core skips a family it does not
            # listen on
            answers.addrs[name] = [
                rd.address
                for rd in (*v6, *v4)
                if isinstance(rd, dns.rdtypes.IN.AAAA.AAAA | dns.rdtypes.IN.A.A)
            ]

    async def _query(
        self, name: str, rdtype: dns.rdatatype.RdataType
    ) -> tuple[list[object], int | None]:
        """The records of ``name``: ([], None) when there are none (NXDOMAIN, no data);
        :class:`DnsError` when the lookup fails (timeout, SERVFAIL, no server)."""
        kind = dns.rdatatype.to_text(rdtype)
        if not self._resolver.nameservers:
            raise DnsError("no DNS server configured")
        # each server gets its turn before the query is given up
        lifetime = self.timeout * max(1, len(self._resolver.nameservers))
        try:
            answer = await self._resolver.resolve(
                dns.name.from_text(name),
                rdtype,
                raise_on_no_answer=False,
                lifetime=lifetime,
                search=False,
            )
        except dns.exception.DNSException as exc:
            _drop_tracebacks(exc)
            if isinstance(exc, dns.resolver.NXDOMAIN | dns.resolver.NoAnswer):
                return [], None
            if isinstance(exc, dns.resolver.LifetimeTimeout):
                raise DnsError(f"{kind} {name}: timed out") from None
            if isinstance(exc, dns.resolver.NoNameservers):
                raise DnsError(f"{kind} {name}: no server answered (SERVFAIL or refused)") from None
            raise DnsError(f"{kind} {name}: {exc}") from None
        rrset = answer.rrset
        if rrset is None:
            return [], None
        return list(rrset), answer.chaining_result.minimum_ttl


def _drop_tracebacks(exc: BaseException) -> None:
    """Free the frames a failed lookup keeps: no reference cycle outlives the query.

    dnspython keeps the error of each server it tried in the exception it raises; their
    tracebacks refer to the frames of the lookup, which refer back to that list. sipguard
    runs without the cyclic collector (``net/server.tune_gc``), so those are cut here.
    """
    seen: set[int] = set()
    todo: list[object] = [exc]
    while todo:
        item = todo.pop()
        if id(item) in seen:
            continue
        seen.add(id(item))
        if isinstance(item, BaseException):
            tb = item.__traceback__
            if tb is not None:
                traceback.clear_frames(tb)
                item.__traceback__ = None
            todo.extend((item.__cause__, item.__context__))
            kwargs = getattr(item, "kwargs", None)
            if isinstance(kwargs, dict):
                todo.extend(kwargs.values())
        elif isinstance(item, list | tuple):
            todo.extend(item)
