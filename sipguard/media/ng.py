"""The rtpengine ng control protocol, client side, sans-IO.

An ng message is one UDP datagram: a cookie, a space, and a bencoded dictionary
(:mod:`sipguard.media.bencode`). A request holds ``command`` (``offer``, ``answer``,
``delete``, ``query``, ``ping``...); the reply repeats the cookie and holds ``result``
(``ok``, ``pong``, ``error`` with ``error-reason``, sometimes ``load limit``). rtpengine
remembers the cookies it answered for a while and answers a retransmission with the
same reply without doing the command twice, so a retransmission carries the same cookie
and the same bytes.

:class:`NgClient` is driven like the transaction layer (:mod:`sipguard.sip.transaction`):
every input takes ``now`` (a monotonic clock: it never goes back); the datagrams to send
are appended to :attr:`NgClient.outbox` as ``(address, bytes)``;
:meth:`NgClient.next_deadline` is the one time the driver must call
:meth:`NgClient.handle_timer` at. It never reads a clock or touches a socket.

Relays and failover:

* The control addresses are tried in their configured order. A request goes to the
  first relay believed alive, except that the commands of a call whose ``offer`` (or
  any command) a relay has answered go to that relay while it is alive: rtpengine's
  session lives there (:attr:`NgClient.affinity`, bounded, forgotten at ``delete``).
* No reply within ``timeout``: the same datagram again, ``tries`` sends in all per relay.
  Then that relay is marked dead and the request goes to the next live relay it has
  not tried (same cookie). None left: ``done(None, now)``. A request is over after at
  most ``tries * timeout`` per relay. A request whose relay another request found dead
  moves on at its next timeout rather than use up its tries there (where there is a
  live relay to move to: with none, it keeps trying, since a reply may still come).
* A dead relay is skipped by new requests. The client pings it every
  ``ping_interval`` seconds; a ``pong`` (or any valid reply) marks it alive again.
  :meth:`NgClient.probe` (the driver's, at start and reload) pings each relay believed
  alive once, on its own: one that does not answer is marked dead before a call waits.
* A reply is accepted only with the cookie of a pending request and from the address
  that request was last sent to; anything else is ignored and counted (``stray``).
* ``done(reply, now)`` for every reply that decodes, whatever its ``result``: the
  caller reads ``reply["result"]`` and ``reply.get("error-reason")``.

A relay named by a host name is not used until the driver gives its address
(:meth:`NgClient.resolved`); the sans-IO client resolves nothing.

Everything is bounded: at most ``max_pending`` requests in flight (:meth:`request`
returns False past it), one ping per relay, ``max_affinity`` calls remembered.

The plain counters (:attr:`NgClient.requests` per ``(command, result)``,
:attr:`retransmissions`, :attr:`timeouts`, :attr:`errors`, :attr:`relays_up`) are what
``net/server`` exports as ``sipguard_rtpengine_*`` metrics.
"""

from __future__ import annotations

import ipaddress
import logging
from collections.abc import Callable, Sequence

from sipguard.media.bencode import BencodeError, decode_dict, encode
from sipguard.sip.ids import IdSource

log = logging.getLogger("sipguard.media")

Address = tuple[str, int]
Done = Callable[[dict[str, object] | None, float], None]

# the commands counted by name in the metrics; any other is counted as "other"
COMMANDS = frozenset(
    {"offer", "answer", "delete", "query", "ping", "list", "statistics", "publish"}
)
# commands of a call's own session: only to the relay that holds it (no failover)
_PINNED = frozenset({"query", "delete"})
# results counted by name; any other result string a reply holds is counted as "other"
RESULTS = frozenset({"ok", "pong", "error", "load limit"})
# what a request that got no reply is counted as: every relay failed, or none was usable
TIMEOUT = "timeout"
REFUSED = "refused"

_DIGITS = "0123456789"
_COOKIE_MAX = 64  # longest cookie head read from a reply
# the cookies of every client: unguessable, and never its parent's in a forked child
# (sip/ids.py); one source per process, not per client (each keeps a fork hook)
COOKIES = IdSource(batch=128)
PING_INTERVAL = 2.0


def parse_control(text: str) -> Address:
    """``udp:HOST:PORT`` (HOST a name, an IPv4 address or ``[IPv6]``) -> ``(host, port)``.

    ValueError for anything else (the config loader checks the same shape first).
    """
    if not text.startswith("udp:"):
        raise ValueError(f"expected udp:HOST:PORT, got {text!r}")
    rest = text[4:]
    host, sep, port_text = rest.rpartition(":")
    if not sep or not host or not 0 < len(port_text) <= 5 or port_text.strip(_DIGITS):
        raise ValueError(f"expected udp:HOST:PORT, got {text!r}")
    port = int(port_text)
    if not 1 <= port <= 65535:
        raise ValueError(f"port {port} out of range 1-65535 in {text!r}")
    if host.startswith("["):
        if not host.endswith("]"):
            raise ValueError(f"expected udp:[IPv6]:PORT, got {text!r}")
        host = host[1:-1]
        if not is_ip(host) or ":" not in host:
            raise ValueError(f"invalid IPv6 address in {text!r}")
    elif ":" in host:
        raise ValueError(f"an IPv6 address goes in brackets: {text!r}")
    return (host, port)


def is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def _canonical(ip: str) -> str:
    """An IP address as the kernel reports a datagram's source (``0:0::1`` -> ``::1``)."""
    return str(ipaddress.ip_address(ip))


class Relay:
    """One control address: where it is sent to, whether it is believed alive, its ping."""

    __slots__ = ("addr", "alive", "control", "next_ping", "ping_cookie")

    def __init__(self, control: Address) -> None:
        self.control = control  # as configured (host may be a name)
        host = control[0]
        self.addr: Address | None = (_canonical(host), control[1]) if is_ip(host) else None
        self.alive = self.addr is not None
        self.next_ping = 0.0  # when a dead relay is pinged next
        self.ping_cookie = ""  # the cookie of the ping in flight ("" none)


def _addr(relay: Relay | None) -> Address:
    assert relay is not None and relay.addr is not None  # only such relays are chosen
    return relay.addr


def _show(relay: Relay) -> str:
    host, port = relay.control
    return f"udp:[{host}]:{port}" if ":" in host else f"udp:{host}:{port}"


def _ignore(reply: dict[str, object] | None, now: float) -> None:
    """The ``done`` of the client's own probes: the relay's state is what they change."""


def _alive(relay: Relay | None) -> bool:
    return relay is not None and relay.alive


def ng_client(
    control: Sequence[str], client: NgClient | None, outbox: list[tuple[Address, bytes]]
) -> NgClient | None:
    """The client for ``rtpengine.control`` (``udp:HOST:PORT`` entries), sending into
    ``outbox``: ``client`` reconfigured (a reload), a new one, or None (no control and no
    client yet). A client whose control list empties is kept: its requests in flight end."""
    controls = [parse_control(c) for c in control]
    if client is not None:
        client.reconfigure(controls)
        return client
    if not controls:
        return None
    client = NgClient(controls)
    client.outbox = outbox
    return client


def earliest(a: float | None, b: float | None) -> float | None:
    """The earlier of two deadlines, None meaning none."""
    if a is None:
        return b
    return a if b is None or b >= a else b


class _Pending:
    __slots__ = (
        "call_id",
        "command",
        "data",
        "deadline",
        "done",
        "pinned",
        "relay",
        "sends",
        "tried",
    )

    def __init__(self, command: str, call_id: str, data: bytes, done: Done) -> None:
        self.command = command
        self.call_id = call_id
        self.data = data
        self.done = done
        self.relay: Relay | None = None  # the relay it is being sent to
        self.sends = 0  # datagrams sent to that relay
        self.tried: list[Relay] = []
        self.deadline = 0.0
        # a query or delete of a call whose relay is known: to that relay only, never
        # another (which has no session of it and would say "unknown call")
        self.pinned = False


class NgClient:
    """The sans-IO ng client (see the module docstring)."""

    def __init__(
        self,
        controls: Sequence[Address],
        *,
        timeout: float = 0.5,
        tries: int = 3,
        max_pending: int = 10000,
        ping_interval: float = PING_INTERVAL,
        max_affinity: int = 100_000,
    ) -> None:
        if timeout <= 0 or tries < 1 or max_pending < 1 or ping_interval <= 0:
            raise ValueError("timeout, tries, max_pending and ping_interval must be positive")
        self.controls: tuple[Address, ...] = ()
        self.relays: list[Relay] = []
        self.reconfigure(controls)
        self.timeout = timeout
        self.tries = tries
        self.max_pending = max_pending
        self.ping_interval = ping_interval
        self.max_affinity = max_affinity
        self.outbox: list[tuple[Address, bytes]] = []
        # in flight, by cookie; insertion order is deadline order (every deadline is
        # now + timeout, and a request is re-inserted when its deadline moves)
        self._pending: dict[str, _Pending] = {}
        self.affinity: dict[str, Relay] = {}  # Call-ID -> the relay that holds its session
        # counters, exported by the driver
        self.requests: dict[tuple[str, str], int] = {}
        self.retransmissions = 0
        self.timeouts = 0  # a relay that did not answer one request after every try
        self.errors = 0  # replies with result "error"
        self.stray = 0  # datagrams ignored: unknown cookie, wrong address, not bencode

    # -- state ---------------------------------------------------------------------------

    @property
    def up(self) -> bool:
        """At least one relay believed alive."""
        return any(r.alive for r in self.relays)

    @property
    def relays_up(self) -> int:
        return sum(1 for r in self.relays if r.alive)

    @property
    def pending(self) -> int:
        return len(self._pending)

    def reconfigure(self, controls: Sequence[Address]) -> None:
        """New control addresses (a reload). A relay kept keeps its state; requests in
        flight to one that went finish there (a failover goes to the new ones); a call's
        affinity to one that went is forgotten at its next command."""
        old = {r.control: r for r in self.relays}
        self.controls = tuple((h, int(p)) for h, p in controls)
        self.relays = [old.get(c) or Relay(c) for c in self.controls]

    def resolved(self, host: str, ip: str, now: float) -> None:
        """The driver found ``host``'s address: relays named so are sent to ``ip``.

        A relay newly given an address is pinged at once and used when it answers.
        """
        for relay in self.relays:
            if relay.control[0] == host:
                addr = (_canonical(ip), relay.control[1])
                if relay.addr != addr:
                    relay.addr = addr
                    relay.alive = False
                    relay.next_ping = now

    # -- inputs --------------------------------------------------------------------------

    def probe(self, now: float) -> None:
        """Ping every relay believed alive, each on its own (no failover): one that does
        not answer its tries is marked dead before a call finds out. The driver calls
        this when it starts and after a reload, so ``relays_up`` is true from the start."""
        for relay in self.relays:
            if relay.alive and relay.addr is not None and len(self._pending) < self.max_pending:
                cookie = COOKIES.next()
                p = _Pending("ping", "", cookie.encode() + b" d7:command4:pinge", _ignore)
                p.tried = [r for r in self.relays if r is not relay]  # so it stays on this one
                self._send_to(cookie, p, relay, now)

    def request(self, command: dict[str, object], now: float, done: Done) -> bool:
        """Send ``command`` (a dict with ``command``); ``done(reply | None, now)`` later.

        False at once (and ``done`` never called) when ``max_pending`` requests are in
        flight or no relay is believed alive: the caller decides what that means.
        """
        name = command.get("command")
        label = name if isinstance(name, str) and name in COMMANDS else "other"
        if len(self._pending) >= self.max_pending:
            self._count(label, REFUSED)
            return False
        call_id = command.get("call-id")
        cid = call_id if isinstance(call_id, str) else ""
        own = self.affinity.get(cid) if cid and label in _PINNED else None
        if own is not None:
            relay = own if own.alive and own in self.relays else None
        else:
            relay = self._choose(cid, ())
        if relay is None:
            self._count(label, REFUSED)
            if own is not None and label == "delete":
                self.affinity.pop(cid, None)  # the call is over either way
            return False
        cookie = COOKIES.next()
        p = _Pending(label, cid, cookie.encode() + b" " + encode(command), done)
        p.pinned = own is not None
        self._send_to(cookie, p, relay, now)
        return True

    def receive(self, data: bytes, addr: Address, now: float) -> None:
        """A datagram that came to the control socket from ``addr`` (host, port)."""
        space = data.find(b" ", 0, _COOKIE_MAX + 1)
        if space <= 0:
            self.stray += 1
            return
        cookie = data[:space].decode("ascii", "replace")
        source = (addr[0], addr[1])
        p = self._pending.get(cookie)
        relay: Relay | None = None
        if p is not None:
            relay = p.relay
            if relay is None or relay.addr != source:
                self.stray += 1
                return
        else:
            relay = self._pinged(cookie, source)
            if relay is None:
                self.stray += 1
                return
        try:
            reply = decode_dict(data[space + 1 :])
        except BencodeError:
            self.stray += 1  # like a lost reply: the request's timer still runs
            return
        if not relay.alive:
            log.warning("rtpengine %s answers again: in use", _show(relay))
            relay.alive = True
        relay.ping_cookie = ""
        result = reply.get("result")
        label = result if isinstance(result, str) and result in RESULTS else "other"
        if p is None:
            self._count("ping", label)  # our own ping of a dead relay
            return
        del self._pending[cookie]
        if label == "error":
            self.errors += 1
        self._count(p.command, label)
        if p.call_id:
            if p.command == "delete":
                self.affinity.pop(p.call_id, None)
            elif label == "ok":
                self._remember(p.call_id, p.relay)
        p.done(reply, now)

    def next_deadline(self) -> float | None:
        """When :meth:`handle_timer` must run next (None: nothing to wait for)."""
        best: float | None = None
        for p in self._pending.values():
            best = p.deadline
            break
        for relay in self.relays:
            waiting = not relay.alive and relay.addr is not None
            if waiting and (best is None or relay.next_ping < best):
                best = relay.next_ping
        return best

    def handle_timer(self, now: float) -> None:
        """Retransmit, fail over, give up and ping, as far as ``now``."""
        while self._pending:
            cookie = next(iter(self._pending))
            p = self._pending[cookie]
            if p.deadline > now:
                break
            del self._pending[cookie]
            if p.sends < self.tries:
                # a relay another request found dead: the next live one at once, if any
                dead = not _alive(p.relay) and not p.pinned
                relay = self._choose(p.call_id, p.tried) if dead else None
                if relay is not None:
                    self._send_to(cookie, p, relay, now)
                    continue
                p.sends += 1
                p.deadline = now + self.timeout
                self._pending[cookie] = p
                self.retransmissions += 1
                self.outbox.append((_addr(p.relay), p.data))
                continue
            # this relay had its tries: it is down; the next live one it has not tried
            self.timeouts += 1
            self._mark_dead(p.relay, now)
            relay = None if p.pinned else self._choose(p.call_id, p.tried)
            if relay is not None:
                self._send_to(cookie, p, relay, now)
                continue
            self._count(p.command, TIMEOUT)
            if p.command == "delete":
                self.affinity.pop(p.call_id, None)  # the call is over either way
            p.done(None, now)
        for relay in self.relays:
            if not relay.alive and relay.addr is not None and relay.next_ping <= now:
                if relay.ping_cookie:
                    self._count("ping", TIMEOUT)  # the last one got no pong
                cookie = COOKIES.next()
                relay.ping_cookie = cookie
                relay.next_ping = now + self.ping_interval
                self.outbox.append((relay.addr, cookie.encode() + b" d7:command4:pinge"))

    # -- helpers -------------------------------------------------------------------------

    def _choose(self, call_id: str, tried: Sequence[Relay]) -> Relay | None:
        """The relay for a request: the call's own while alive, else the first alive."""
        if call_id:
            own = self.affinity.get(call_id)
            if own is not None and own.alive and own not in tried and own in self.relays:
                return own
        for relay in self.relays:
            if relay.alive and relay not in tried:
                return relay
        return None

    def _send_to(self, cookie: str, p: _Pending, relay: Relay, now: float) -> None:
        p.relay = relay
        p.sends = 1
        p.tried.append(relay)
        p.deadline = now + self.timeout
        self._pending.pop(cookie, None)
        self._pending[cookie] = p
        self.outbox.append((_addr(relay), p.data))

    def _mark_dead(self, relay: Relay | None, now: float) -> None:
        if relay is not None and relay.alive:
            relay.alive = False
            relay.next_ping = now + self.ping_interval
            log.warning(
                "rtpengine %s did not answer %d tries in %.1f s: skipped until it answers a ping",
                _show(relay),
                self.tries,
                self.tries * self.timeout,
            )

    def _pinged(self, cookie: str, source: Address) -> Relay | None:
        for relay in self.relays:
            if relay.ping_cookie and relay.ping_cookie == cookie and relay.addr == source:
                return relay
        return None

    def _remember(self, call_id: str, relay: Relay | None) -> None:
        affinity = self.affinity
        if relay is None:
            return
        if call_id not in affinity and len(affinity) >= self.max_affinity:
            del affinity[next(iter(affinity))]  # the oldest call
        affinity[call_id] = relay

    def _count(self, command: str, result: str) -> None:
        key = (command, result)
        self.requests[key] = self.requests.get(key, 0) + 1
