"""SIP transactions (RFC 3261 §17 as updated by RFC 6026), sans-IO.

The :class:`TransactionLayer` takes parsed messages with the :class:`Flow` they came on and
``now``; it sends by appending ``(flow, bytes)`` to :attr:`TransactionLayer.outbox`, and
keeps every timer in one :class:`~sipguard.sip.timers.TimerHeap`. Each transaction
reports to its ``owner`` (the transaction user: a call leg) through the small
:class:`ClientOwner` / :class:`ServerOwner` protocols.

Transitions are data: ``TRANSITIONS`` lists, per machine, each state change with the
event that causes it and the RFC section, and the machines below assert that every state
change they make is in that table (tests draw the state diagrams from it too).

Timer values (§17.1.1.1, Table 4), with T1/T2/T4 configurable:

====== ============================== =================== =================
timer  machine                        value               reliable transport
====== ============================== =================== =================
A      INVITE client, retransmit      T1, doubling        not used
B      INVITE client, give up         64*T1, in Calling
D      INVITE client, absorb retrans. 32 s                0
E      non-INVITE client, retransmit  T1, doubling to T2  not used
F      non-INVITE client, give up     64*T1
G      INVITE server, retransmit      T1, doubling to T2  not used
H      INVITE server, wait for ACK    64*T1
I      INVITE server, absorb ACKs     T4                  0
J      non-INVITE server, absorb      64*T1               0
K      non-INVITE client, absorb      T4                  0
L      INVITE server, Accepted        64*T1               (RFC 6026)
M      INVITE client, Accepted        64*T1               (RFC 6026)
====== ============================== =================== =================

The INVITE server transaction in *Accepted* also retransmits the 2xx (§13.3.1.4, T1
doubling to T2) until the TU reports the ACK, so a lost 200 is repeated and an INVITE
retransmitted after the 2xx is absorbed, never a second call.

Timer B runs only in *Calling* (§17.1.1.2): once a provisional response has come, an
INVITE may ring for as long as the TU lets it. After the TU CANCELs it, the INVITE gets
64*T1 for its final response (§9.1). The ``100 Trying`` for an INVITE is the TU's to send
(it knows whether it will answer within 200 ms, §17.2.1).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum
from typing import Protocol

from sipguard.sip.errors import SipError
from sipguard.sip.message import REASONS, Request, Response, SipMessage, Via
from sipguard.sip.timers import Timer, TimerHeap
from sipguard.sip.uri import parse_name_addr

MAGIC_COOKIE = "z9hG4bK"


@dataclass(frozen=True, slots=True)
class Flow:
    """Where a message came from or goes to: transport, local socket, remote address."""

    transport: str  # "udp" | "tcp" | "tls"
    local: int  # index of the listening socket in the configuration
    host: str
    port: int
    conn: int = 0  # stream connection id; 0 for UDP, or "any connection to host:port"

    @property
    def reliable(self) -> bool:
        return self.transport != "udp"


@dataclass(frozen=True, slots=True)
class Timers:
    t1: float = 0.5
    t2: float = 4.0
    t4: float = 5.0
    d: float = 32.0


class State(Enum):
    CALLING = "Calling"
    TRYING = "Trying"
    PROCEEDING = "Proceeding"
    COMPLETED = "Completed"
    ACCEPTED = "Accepted"
    CONFIRMED = "Confirmed"
    TERMINATED = "Terminated"


S = State
# (machine, from, to, event, RFC section). Each machine asserts that every state change it
# makes is a row here; tests/test_sip_transaction.py checks that every row is exercised and
# draws docs/transactions.md from this table.
TRANSITIONS: tuple[tuple[str, State, State, str, str], ...] = (
    ("ICT", S.CALLING, S.PROCEEDING, "1xx (stop Timers A and B)", "17.1.1.2"),
    ("ICT", S.CALLING, S.ACCEPTED, "2xx", "RFC 6026 7.2"),
    ("ICT", S.CALLING, S.COMPLETED, "300-699 (send ACK)", "17.1.1.2"),
    ("ICT", S.CALLING, S.TERMINATED, "Timer B / transport error", "17.1.1.2"),
    ("ICT", S.PROCEEDING, S.ACCEPTED, "2xx", "RFC 6026 7.2"),
    ("ICT", S.PROCEEDING, S.COMPLETED, "300-699 (send ACK)", "17.1.1.2"),
    ("ICT", S.PROCEEDING, S.TERMINATED, "no final 64*T1 after CANCEL / transport error", "9.1"),
    ("ICT", S.COMPLETED, S.TERMINATED, "Timer D", "17.1.1.2"),
    ("ICT", S.ACCEPTED, S.TERMINATED, "Timer M", "RFC 6026 7.2"),
    ("NICT", S.TRYING, S.PROCEEDING, "1xx", "17.1.2.2"),
    ("NICT", S.TRYING, S.COMPLETED, "200-699", "17.1.2.2"),
    ("NICT", S.TRYING, S.TERMINATED, "Timer F / transport error", "17.1.2.2"),
    ("NICT", S.PROCEEDING, S.COMPLETED, "200-699", "17.1.2.2"),
    ("NICT", S.PROCEEDING, S.TERMINATED, "Timer F / transport error", "17.1.2.2"),
    ("NICT", S.COMPLETED, S.TERMINATED, "Timer K", "17.1.2.2"),
    ("IST", S.PROCEEDING, S.ACCEPTED, "TU sends 2xx", "RFC 6026 7.1"),
    ("IST", S.PROCEEDING, S.COMPLETED, "TU sends 300-699", "17.2.1"),
    ("IST", S.PROCEEDING, S.TERMINATED, "transport error / TU drops it", "17.2.1"),
    ("IST", S.COMPLETED, S.CONFIRMED, "ACK", "17.2.1"),
    ("IST", S.COMPLETED, S.TERMINATED, "Timer H / TU drops it", "17.2.1"),
    ("IST", S.CONFIRMED, S.TERMINATED, "Timer I / TU drops it", "17.2.1"),
    ("IST", S.ACCEPTED, S.TERMINATED, "Timer L / TU drops it", "RFC 6026 7.1"),
    ("NIST", S.TRYING, S.PROCEEDING, "TU sends 1xx", "17.2.2"),
    ("NIST", S.TRYING, S.COMPLETED, "TU sends 200-699", "17.2.2"),
    ("NIST", S.TRYING, S.TERMINATED, "TU drops it", "17.2.2"),
    ("NIST", S.PROCEEDING, S.COMPLETED, "TU sends 200-699", "17.2.2"),
    ("NIST", S.PROCEEDING, S.TERMINATED, "transport error / TU drops it", "17.2.2"),
    ("NIST", S.COMPLETED, S.TERMINATED, "Timer J / TU drops it", "17.2.2"),
)
_ALLOWED = frozenset((m, a, b) for m, a, b, _, _ in TRANSITIONS)


class ClientOwner(Protocol):
    def on_response(self, tx: ClientTransaction, resp: Response, now: float) -> None: ...

    def on_timeout(self, tx: ClientTransaction, now: float) -> None:
        """Timer B or F fired, or the transport failed: act as if 408 was received."""


class ServerOwner(Protocol):
    def on_cancel(self, tx: ServerTransaction, cancel: Request, now: float) -> None: ...

    def on_ack_timeout(self, tx: ServerTransaction, now: float) -> None:
        """Timer L ended an Accepted INVITE server transaction with no ACK for its 2xx."""


class TransactionUser(Protocol):
    """What the layer above receives: requests that start no transaction of theirs."""

    def on_request(self, req: Request, tx: ServerTransaction | None, now: float) -> None: ...

    def on_stray_response(self, resp: Response, flow: Flow, now: float) -> None: ...


class _IdSource:
    """Unique branch / tag / Call-ID material: a random prefix per process and a counter."""

    __slots__ = ("_n", "_prefix")

    def __init__(self) -> None:
        self._prefix = os.urandom(6).hex()
        self._n = 0

    def next(self) -> str:
        self._n += 1
        return f"{self._prefix}{self._n:x}"


IDS = _IdSource()


def new_branch() -> str:
    return f"{MAGIC_COOKIE}-{IDS.next()}"


def new_tag() -> str:
    return IDS.next()


class Transaction:
    __slots__ = ("_deadline", "_rtx", "flow", "key", "layer", "machine", "request", "state")

    machine: str

    def __init__(self, layer: TransactionLayer, key: tuple[str, ...], request: Request, flow: Flow):
        self.layer = layer
        self.key = key
        self.request = request
        self.flow = flow
        self.state = State.TRYING
        # at most two timers per transaction: the retransmission timer (A, E, G, or the
        # 2xx's) and the one that ends the state (B, D, F, H, I, J, K, L, M, §9.1 CANCEL)
        self._rtx: Timer | None = None
        self._deadline: Timer | None = None

    def _to(self, state: State) -> None:
        assert (self.machine, self.state, state) in _ALLOWED, (self.machine, self.state, state)
        self.state = state
        if state is State.TERMINATED:
            self._cancel_timers()
            self.layer._remove(self)

    def _cancel_timers(self) -> None:
        self._stop_rtx()
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def _stop_rtx(self) -> None:
        if self._rtx is not None:
            self._rtx.cancel()
            self._rtx = None

    def _retransmit_at(self, when: float, fn: Callable[[float], None]) -> None:
        self._rtx = self.layer.timers.schedule(when, fn)  # the previous one has fired

    def _deadline_at(self, when: float, fn: Callable[[float], None]) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
        self._deadline = self.layer.timers.schedule(when, fn)

    @property
    def terminated(self) -> bool:
        return self.state is State.TERMINATED


class ClientTransaction(Transaction):
    """INVITE (ICT) or non-INVITE (NICT) client transaction, by the request's method."""

    __slots__ = (
        "_data",
        "_interval",
        "ack",
        "cancel_pending",
        "cancel_sent",
        "owner",
        "provisional_seen",
    )

    def __init__(
        self,
        layer: TransactionLayer,
        key: tuple[str, ...],
        request: Request,
        flow: Flow,
        owner: ClientOwner,
    ):
        super().__init__(layer, key, request, flow)
        self.machine = "ICT" if request.method == "INVITE" else "NICT"
        self.owner: ClientOwner | None = owner
        self._data = request.to_bytes()
        self._interval = layer.t.t1
        self.ack: bytes | None = None
        self.provisional_seen = False
        self.cancel_pending = False  # CANCEL asked for before any provisional (§9.1)
        self.cancel_sent = False

    @property
    def is_invite(self) -> bool:
        return self.machine == "ICT"

    def start(self, now: float) -> None:
        t = self.layer.t
        self.state = State.CALLING if self.is_invite else State.TRYING
        self.layer.send(self.flow, self._data)
        if not self.flow.reliable:
            self._retransmit_at(now + t.t1, self._retransmit)  # Timer A / E
        self._deadline_at(now + 64 * t.t1, self._timeout)  # Timer B / F

    def _retransmit(self, now: float) -> None:
        """Timer A (INVITE, Calling only) or Timer E (non-INVITE, Trying and Proceeding)."""
        self._rtx = None
        self.layer.send(self.flow, self._data, retransmission=True)
        if self.is_invite:
            self._interval *= 2  # Timer A doubles without a cap (§17.1.1.2)
        elif self.state is State.PROCEEDING:
            self._interval = self.layer.t.t2  # Timer E every T2 in Proceeding (§17.1.2.2)
        else:
            self._interval = min(self._interval * 2, self.layer.t.t2)
        self._retransmit_at(now + self._interval, self._retransmit)

    def _timeout(self, now: float) -> None:
        """Timer B or F, or no final response 64*T1 after our CANCEL (§9.1)."""
        self._deadline = None
        self.fail(now)

    def fail(self, now: float) -> None:
        """Timer B/F fired or the transport failed: terminate and tell the owner (408)."""
        if self.state in (State.CALLING, State.TRYING, State.PROCEEDING):
            self._to(State.TERMINATED)
            owner, self.owner = self.owner, None
            if owner is not None:
                owner.on_timeout(self, now)

    def receive(self, resp: Response, now: float) -> None:
        status = resp.status
        state = self.state
        if state is State.TERMINATED:
            return
        if self.is_invite:
            if status < 200:
                if state in (State.CALLING, State.PROCEEDING):
                    if state is State.CALLING:
                        # Timer A stops, and so does Timer B: it only runs in Calling
                        # (§17.1.1.2); a ringing INVITE waits for its final response
                        self._cancel_timers()
                        self._to(State.PROCEEDING)
                    self.provisional_seen = True
                    if self.cancel_pending:
                        self.cancel_pending = False
                        self.layer.send_cancel(self, now)
                    self._deliver(resp, now)
                return
            if status < 300:
                if state in (State.CALLING, State.PROCEEDING):
                    self._cancel_timers()
                    self._to(State.ACCEPTED)
                    self._data = b""  # no more retransmissions: free the bytes
                    # an answered INVITE is kept (Timer M) by its key; of its request only
                    # what the TU still reads: the method, the URI and the offer
                    req = self.request
                    self.request = Request(req.method, req.uri, (), req.body)
                    self._deadline_at(now + 64 * self.layer.t.t1, self._end)  # Timer M
                # every 2xx, first or retransmitted, from any fork, goes to the TU (6026)
                self._deliver(resp, now)
                return
            if state in (State.CALLING, State.PROCEEDING):
                self._cancel_timers()
                self.ack = self._build_ack(resp)
                self.layer.send(self.flow, self.ack)
                self._to(State.COMPLETED)
                self._data = b""  # no more retransmissions: free the bytes
                d = 0 if self.flow.reliable else self.layer.t.d
                self._deadline_at(now + d, self._end)  # Timer D
                self._deliver(resp, now)
            elif state is State.COMPLETED and self.ack is not None:
                self.layer.send(self.flow, self.ack, retransmission=True)
            return
        # non-INVITE
        if state not in (State.TRYING, State.PROCEEDING):
            return  # retransmitted final in Completed: absorbed
        if status < 200:
            if state is State.TRYING:
                self._to(State.PROCEEDING)
            self._deliver(resp, now)
            return
        self._cancel_timers()
        self._to(State.COMPLETED)
        self._data = b""  # no more retransmissions: free the bytes
        k = 0 if self.flow.reliable else self.layer.t.t4
        self._deadline_at(now + k, self._end)  # Timer K
        self._deliver(resp, now)

    def _deliver(self, resp: Response, now: float) -> None:
        if self.owner is not None:
            self.owner.on_response(self, resp, now)

    def _end(self, now: float) -> None:
        """Timer D, K or M."""
        self._deadline = None
        self._to(State.TERMINATED)
        self.owner = None

    def _build_ack(self, resp: Response) -> bytes:
        """The ACK for a non-2xx final response (§17.1.1.3): same branch, the response's To."""
        req = self.request
        headers = [
            ("Via", _top_via_text(req)),
            ("Max-Forwards", "70"),
            ("From", req.get("from") or ""),
            ("To", resp.get("to") or ""),
            ("Call-ID", req.call_id),
            ("CSeq", f"{req.cseq.number} ACK"),
        ]
        headers += [("Route", r) for r in req.get_lines("route")]
        headers.append(("Content-Length", "0"))
        return Request("ACK", req.uri, headers).to_bytes()


def _top_via_text(req: Request) -> str:
    """The top Via entry as written (an ACK or CANCEL carries exactly that one, §9.1)."""
    vias = req.get_all("via")
    return vias[0] if vias else ""


class ServerTransaction(Transaction):
    """INVITE (IST) or non-INVITE (NIST) server transaction."""

    __slots__ = ("_interval", "acked", "last", "last_status", "last_to", "local_tag", "owner")

    def __init__(self, layer: TransactionLayer, key: tuple[str, ...], request: Request, flow: Flow):
        super().__init__(layer, key, request, flow)
        self.machine = "IST" if request.method == "INVITE" else "NIST"
        self.state = State.PROCEEDING if self.machine == "IST" else State.TRYING
        self.owner: ServerOwner | None = None
        self.last: bytes | None = None  # the response to repeat
        self.last_status = 0
        self.last_to: str | None = None  # its To header (the tag a CANCEL's 200 reuses)
        # the To tag the TU gives its responses, where it sends them as bytes (§9.2)
        self.local_tag: str | None = None
        self.acked = False  # the TU reported the ACK for our 2xx (Accepted)
        self._interval = layer.t.t1

    @property
    def is_invite(self) -> bool:
        return self.machine == "IST"

    def respond(self, resp: Response | bytes, now: float, status: int | None = None) -> None:
        """Send a response (a :class:`Response`, or bytes with its ``status``)."""
        if isinstance(resp, Response):
            data, status, to = resp.to_bytes(), resp.status, resp.get("to")
        else:
            data, to = resp, None
            if status is None:
                raise ValueError("status is required with a response given as bytes")
        state = self.state
        if self.is_invite:
            if state is not State.PROCEEDING:
                if state is State.ACCEPTED and 200 <= status < 300:
                    self.last = data  # a 2xx from another fork: retransmit this one
                    self.layer.send(self.flow, data)
                return
            self.last, self.last_status, self.last_to = data, status, to
            self.layer.send(self.flow, data)
            if status < 200:
                return
            t = self.layer.t
            self._interval = t.t1
            if status < 300:
                self._to(State.ACCEPTED)
                if not self.flow.reliable:
                    self._retransmit_at(now + t.t1, self._retransmit)  # 2xx (§13.3.1.4)
                self._deadline_at(now + 64 * t.t1, self._timer_l)
            else:
                self._to(State.COMPLETED)
                if not self.flow.reliable:
                    self._retransmit_at(now + t.t1, self._retransmit)  # Timer G
                self._deadline_at(now + 64 * t.t1, self._timer_h)
            return
        if state not in (State.TRYING, State.PROCEEDING):
            return
        self.last, self.last_status, self.last_to = data, status, to
        self.layer.send(self.flow, data)
        if status < 200:
            if state is State.TRYING:
                self._to(State.PROCEEDING)
            return
        self._to(State.COMPLETED)
        j = 0 if self.flow.reliable else 64 * self.layer.t.t1
        self._deadline_at(now + j, self._end)  # Timer J

    def _retransmit(self, now: float) -> None:
        """Timer G (Completed), or the 2xx's retransmission (Accepted): T1 doubling to T2."""
        self._rtx = None
        assert self.last is not None
        self.layer.send(self.flow, self.last, retransmission=True)
        self._interval = min(self._interval * 2, self.layer.t.t2)
        self._retransmit_at(now + self._interval, self._retransmit)

    def retransmitted(self, now: float) -> None:
        """The request came again: repeat the last response (absorbed in Accepted)."""
        if self.last is None:
            return
        if self.state in (State.PROCEEDING, State.TRYING, State.COMPLETED):
            self.layer.send(self.flow, self.last, retransmission=True)

    def ack_received(self, now: float) -> None:
        """ACK for a non-2xx final (same transaction) or, from the TU, for the 2xx."""
        if self.state is State.COMPLETED:
            self._cancel_timers()
            self._to(State.CONFIRMED)
            i = 0 if self.flow.reliable else self.layer.t.t4
            self._deadline_at(now + i, self._end)  # Timer I
        elif self.state is State.ACCEPTED:
            # stop retransmitting the 2xx; stay to absorb INVITE retransmissions (Timer L)
            self._stop_rtx()
            self.acked = True
            # what is left of the transaction is its key: free the INVITE and the 2xx, so
            # that 64*T1 of answered calls do not keep their messages (memory per call)
            self.last = None
            self.request = _ABSORBED
            self.owner = None

    def _timer_h(self, now: float) -> None:
        """No ACK for our non-2xx final response in 64*T1 (§17.2.1)."""
        self._deadline = None
        self._to(State.TERMINATED)
        self.owner = None

    def _timer_l(self, now: float) -> None:
        self._deadline = None
        self._to(State.TERMINATED)
        owner, self.owner = self.owner, None
        if not self.acked and owner is not None:
            owner.on_ack_timeout(self, now)

    def _end(self, now: float) -> None:
        """Timer I or J."""
        self._deadline = None
        self._to(State.TERMINATED)
        self.owner = None

    def terminate(self) -> None:
        """Forget the transaction now (its owner is gone, or the transport failed)."""
        self.owner = None
        if self.state is not State.TERMINATED:
            self._to(State.TERMINATED)


def server_key(req: Request, via: Via) -> tuple[str, ...]:
    """Match key of a request to its server transaction (§17.2.3), ACK/CANCEL folded."""
    method = req.method
    if method == "ACK":
        method = "INVITE"
    branch = via.branch
    if branch and branch.startswith(MAGIC_COOKIE) and len(branch) > len(MAGIC_COOKIE):
        return (branch, via.sent_by(), method)
    # RFC 2543 fallback (§17.2.3): the To tag is left out so that the ACK matches too
    return (
        "2543",
        req.uri,
        req.from_.tag or "",
        req.call_id,
        str(req.cseq.number),
        str(via),
        method,
    )


def _own_branch(req: Request) -> str:
    """The branch of a request we built: its Via comes first, read without parsing it."""
    name, value = req.headers[0] if req.headers else ("", "")
    if name == "Via" and "," not in value:
        i = value.find(";branch=")
        if i >= 0:
            j = value.find(";", i + 8)
            return value[i + 8 : j if j >= 0 else len(value)].strip()
    return req.top_via.branch or ""


# what an ACKed INVITE server transaction keeps in place of its INVITE
_ABSORBED = Request("INVITE", "sip:absorbed.invalid", ())


class TransactionLayer:
    """All transactions of one stack: matching, timers, and the outbox."""

    def __init__(self, tu: TransactionUser, timers: Timers | None = None) -> None:
        self.tu = tu
        self.t = timers or Timers()
        self.timers = TimerHeap()
        self.outbox: list[tuple[Flow, bytes]] = []
        self.client: dict[tuple[str, ...], ClientTransaction] = {}
        self.server: dict[tuple[str, ...], ServerTransaction] = {}
        self.retransmissions = 0

    # -- output --------------------------------------------------------------------------

    def send(self, flow: Flow, data: bytes, retransmission: bool = False) -> None:
        if retransmission:
            self.retransmissions += 1
        self.outbox.append((flow, data))

    def next_deadline(self) -> float | None:
        return self.timers.next_deadline()

    def handle_timer(self, now: float) -> None:
        self.timers.fire(now)

    def _remove(self, tx: Transaction) -> None:
        table: dict[tuple[str, ...], ClientTransaction] | dict[tuple[str, ...], ServerTransaction]
        table = self.client if isinstance(tx, ClientTransaction) else self.server
        if table.get(tx.key) is tx:
            del table[tx.key]

    # -- client side -----------------------------------------------------------------------

    def send_request(
        self, req: Request, flow: Flow, owner: ClientOwner, now: float
    ) -> ClientTransaction:
        """Start a client transaction for ``req`` (its top Via carries a fresh branch).

        An ACK is not a transaction: use :meth:`send` for it.
        """
        if req.method == "ACK":
            raise ValueError("ACK is sent without a transaction")
        branch = _own_branch(req)
        key = (branch, req.method)
        tx = ClientTransaction(self, key, req, flow, owner)
        self.client[key] = tx
        tx.start(now)
        return tx

    def cancel(self, tx: ClientTransaction, now: float) -> None:
        """CANCEL a pending INVITE (§9.1): at once after a provisional, else when one comes.

        Only once per INVITE; a no-op once its final response has come.
        """
        if not tx.is_invite or tx.state not in (State.CALLING, State.PROCEEDING):
            return
        if tx.cancel_sent or tx.cancel_pending:
            return
        if tx.provisional_seen:
            self.send_cancel(tx, now)
        else:
            tx.cancel_pending = True

    def send_cancel(self, tx: ClientTransaction, now: float) -> None:
        """Send the CANCEL for ``tx`` (§9.1): its top Via (same branch), Request-URI, Call-ID,
        From, To, Route and CSeq number; then give the INVITE 64*T1 for its final response."""
        req = tx.request
        headers = [
            ("Via", _top_via_text(req)),
            ("Max-Forwards", "70"),
            ("From", req.get("from") or ""),
            ("To", req.get("to") or ""),
            ("Call-ID", req.call_id),
            ("CSeq", f"{req.cseq.number} CANCEL"),
        ]
        headers += [("Route", r) for r in req.get_lines("route")]
        headers.append(("Content-Length", "0"))
        cancel = Request("CANCEL", req.uri, headers)
        tx.cancel_sent = True
        self.send_request(cancel, tx.flow, _CANCEL_SINK, now)
        if tx.state is State.PROCEEDING:
            # §9.1: no final response 64*T1 after the CANCEL: consider it cancelled
            tx._deadline_at(now + 64 * self.t.t1, tx._timeout)

    def receive_response(self, resp: Response, flow: Flow, now: float) -> None:
        via = resp.top_via
        key = (via.branch or "", resp.cseq.method)
        tx = self.client.get(key)
        if tx is not None:
            tx.receive(resp, now)
        elif resp.cseq.method == "INVITE" and 200 <= resp.status < 300:
            # a 2xx retransmitted after the ICT ended (Timer M): the TU must still ACK it
            self.tu.on_stray_response(resp, flow, now)
        # any other stray response is dropped (§18.1.2)

    # -- server side -----------------------------------------------------------------------

    def receive_request(self, req: Request, flow: Flow, now: float) -> None:
        via = req.top_via
        key = server_key(req, via)
        method = req.method
        if method == "CANCEL":
            self._receive_cancel(req, key, flow, now)
            return
        tx = self.server.get(key)
        if method == "ACK":
            if tx is not None and tx.state in (State.COMPLETED, State.CONFIRMED):
                tx.ack_received(now)  # ACK for our non-2xx final: absorbed here (§17.2.1)
                return
            self.tu.on_request(req, None, now)  # ACK for a 2xx: its own transaction
            return
        if tx is not None:
            tx.retransmitted(now)
            return
        tx = ServerTransaction(self, key, req, flow)
        self.server[key] = tx
        self.tu.on_request(req, tx, now)

    def _receive_cancel(
        self, cancel: Request, key: tuple[str, ...], flow: Flow, now: float
    ) -> None:
        """CANCEL (§9.2): its own non-INVITE server transaction, matched to the INVITE's."""
        ctx = self.server.get(key)
        if ctx is not None:
            ctx.retransmitted(now)
            return
        ctx = ServerTransaction(self, key, cancel, flow)
        self.server[key] = ctx
        invite_tx = self.server.get((*key[:-1], "INVITE"))
        if invite_tx is None:
            # §8.2.6.2: a response to a request without a To tag gets one
            ctx.respond(make_response(cancel, 481, to_tag=new_tag()), now)
            return
        # §9.2: the 200 to the CANCEL SHOULD carry the To tag of the INVITE's responses
        tag = invite_tx.local_tag
        if tag is None and invite_tx.last_to is not None:
            try:
                tag = parse_name_addr(invite_tx.last_to).tag
            except SipError:
                tag = None
        ctx.respond(make_response(cancel, 200, to_tag=tag or new_tag()), now)
        if invite_tx.state is State.PROCEEDING and invite_tx.owner is not None:
            invite_tx.owner.on_cancel(invite_tx, cancel, now)


class _CancelSink:
    """Owner of our CANCEL transactions: their responses need no action (§9.1)."""

    def on_response(self, tx: ClientTransaction, resp: Response, now: float) -> None:
        return None

    def on_timeout(self, tx: ClientTransaction, now: float) -> None:
        return None


_CANCEL_SINK = _CancelSink()


def make_response(
    req: SipMessage,  # not "SipMessage | Request": that union crashes mypyc 2.4.1
    status: int,
    reason: str | None = None,
    *,
    to_tag: str | None = None,
    headers: list[tuple[str, str]] | None = None,
    body: bytes = b"",
) -> Response:
    """A response to ``req`` as §8.2.6 builds it: Via, From, To (+tag), Call-ID, CSeq."""
    hdrs = [("Via", v) for v in req.get_lines("via")]
    hdrs.append(("From", req.get("from") or ""))
    to = req.get("to") or ""
    if to_tag is not None and status != 100:
        try:
            has_tag = req.to.tag is not None
        except SipError:
            has_tag = True
        if not has_tag:
            to = f"{to};tag={to_tag}"
    hdrs.append(("To", to))
    hdrs.append(("Call-ID", req.get("call-id") or ""))
    hdrs.append(("CSeq", req.get("cseq") or ""))
    if headers:
        hdrs.extend(headers)
    hdrs.append(("Content-Length", str(len(body))))
    return Response(status, reason or REASONS.get(status, "Unknown"), hdrs, body)
