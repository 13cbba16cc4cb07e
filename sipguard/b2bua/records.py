"""What a call's outcomes write: its CDRs (SPEC §6), the call metrics (SPEC §7), the log.

A call answered gets its ``start`` record at once (a crash then loses no answered call);
every call attempt ends with one ``end`` record, a refused one too. Records go to
``out``, which the driver hands to the CDR writer after each input. The messages
received are counted by kind in ``stats_in`` (the driver reads it for the metrics).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TYPE_CHECKING

from sipguard.b2bua.admission import within_rate
from sipguard.b2bua.host import ALLOW
from sipguard.b2bua.peers import EveryFew
from sipguard.cdr.record import CdrRecord, end_of, end_record, epoch_ms, make_call_id, start_record
from sipguard.metrics import Metrics
from sipguard.policy.numbers import mask

log = logging.getLogger("sipguard.b2bua")

if TYPE_CHECKING:
    from sipguard.b2bua.admission import Refused
    from sipguard.b2bua.call import Call
    from sipguard.b2bua.identity import CallIdentity

log = logging.getLogger("sipguard.b2bua")

# the message kinds counted by name: a peer chooses the method token, so only known ones
# become metric labels (a bounded set that can never carry a number), the rest "other"
KNOWN_METHODS = (
    *ALLOW.replace(" ", "").split(","),
    "REGISTER",
    "SUBSCRIBE",
    "NOTIFY",
    "PUBLISH",
    "REFER",
)
KNOWN_KINDS = frozenset([*KNOWN_METHODS, *(f"{c}xx" for c in range(1, 7))])


class Records:
    """The CDRs and call metrics of one element (``instance``: its tag in every id)."""

    __slots__ = ("_attack_log", "_refusals", "instance", "metrics", "out", "stats_in", "wall")

    def __init__(
        self, instance: str, metrics: Metrics | None, wall: Callable[[float], float]
    ) -> None:
        self.instance = instance
        self.metrics = metrics
        self.wall = wall
        self.out: list[CdrRecord] = []
        self._refusals: dict[str, tuple[int, int]] = {}  # trunk -> (second, records)
        self._attack_log = EveryFew(10.0)  # the emergency-flood warning, per trunk
        self.stats_in: dict[str, int] = {}  # messages received, by kind

    def message_in(self, kind: str) -> None:
        """A message received: a method, or a response's class (``"2xx"``)."""
        if kind not in KNOWN_KINDS:
            kind = "other"
        self.stats_in[kind] = self.stats_in.get(kind, 0) + 1

    def decided(self, ident: CallIdentity) -> None:
        """A new call's privacy decision is made (whether the call goes on or not)."""
        if self.metrics is not None:
            decision = ident.decision
            counts = self.metrics.presentation_counts  # exported at each collection
            key = (decision.presentation, decision.reason)
            counts[key] = counts.get(key, 0) + 1
            if decision.emergency:
                self.metrics.emergency_calls.inc()

    def started(self, call: Call, emergency_numbers: tuple[str, ...]) -> None:
        """A call goes on to its B-leg: one log line (numbers masked; net/logs.py reads it)."""
        ident = call.crossing.ident
        decision = ident.decision
        log.info(
            "call %s %s -> %s caller=%s presentation=%s reason=%s%s",
            call.id,
            call.trunk_in.name,
            call.trunk_out.name,
            mask(ident.caller, emergency_numbers),
            decision.presentation,
            decision.reason,
            " emergency" if decision.emergency else "",
        )

    def _count(self, trunk_in: str, trunk_out: str, result: str) -> None:
        if self.metrics is not None:
            counts = self.metrics.call_counts  # exported at each collection
            key = (trunk_in, trunk_out, result)
            counts[key] = counts.get(key, 0) + 1

    def recording(self, trunk_in: str, now: float, rate: int) -> bool:
        """Would a refused call attempt of ``trunk_in`` still get its record this second?"""
        if not rate:
            return True
        second, count = self._refusals.get(trunk_in, (-1, 0))
        return second != int(now) or count < rate

    def shed(self, trunk_in: str, trunk_out: str) -> None:
        """A new call shed unread (b2bua/shed.py): counted, never written one by one."""
        if self.metrics is not None:
            self.metrics.inc(self.metrics.rejected, "overload")
            self.metrics.inc(self.metrics.cdr_refusals_unrecorded, trunk_in)
        self._count(trunk_in, trunk_out, "limit")

    def refused(self, trunk_in: str, refusal: Refused, now: float, rate: int) -> None:
        """The end record of a call attempt refused before it had a B-leg: at most
        ``rate`` a second per trunk (0: all), the rest counted (a flood of refused INVITEs
        writes no flood of records); an emergency call's always."""
        end_reason = refusal.end_reason
        if end_reason is None:
            return
        ident = refusal.ident
        emergency = ident is not None and ident.decision.emergency
        if emergency:
            self._emergency_refused(trunk_in, refusal.label, now)
        if rate and not emergency and not within_rate(self._refusals, trunk_in, now, rate):
            if self.metrics is not None:
                self.metrics.inc(self.metrics.cdr_refusals_unrecorded, trunk_in)
            self._count(trunk_in, refusal.route or "", end_reason)
            return
        wall = self.wall(now)
        self.out.append(
            end_record(
                call_id=make_call_id(self.instance),
                trunk_in=trunk_in,
                trunk_out=refusal.route,
                caller=refusal.caller,
                callee=refusal.callee,
                presentation=refusal.presentation,  # type: ignore[arg-type]
                emergency=emergency,
                start=wall,
                answer=None,
                end=wall,
                status=refusal.status,
                end_reason=end_reason,  # type: ignore[arg-type]
            )
        )
        self._count(trunk_in, refusal.route or "", end_reason)

    def _emergency_refused(self, trunk: str, label: str, now: float) -> None:
        if self.metrics is not None:
            self.metrics.inc(self.metrics.emergency_refused, label)
        if label.startswith("trunk_emergency") and self._attack_log.event(trunk, now):
            log.warning(
                "emergency calls from trunk %s refused over its share of the emergency "
                "reserve (%s): a flood of emergency calls is an attack on the emergency "
                "service",
                trunk,
                label,
            )

    def answered(self, call: Call, now: float) -> None:
        ident = call.crossing.ident
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
        self.out.append(rec)
        if self.metrics is not None:
            self.metrics.call_setup.observe(now - call.started_at)

    def unanchored(self, call: Call) -> None:
        """A call carried without the media anchoring it asked for (every relay down):
        counted; for a withheld caller, the log says its media address was not hidden."""
        if self.metrics is not None:
            self.metrics.media_unanchored.inc()
        if call.crossing.ident.decision.restricted:
            log.warning(
                "call %s %s -> %s: media not anchored (rtpengine down): the withheld "
                "caller's media address was not hidden",
                call.id,
                call.trunk_in.name,
                call.trunk_out.name,
            )
        else:
            log.info("call %s: media not anchored (rtpengine down)", call.id)

    def ended(self, call: Call, end_reason: str, now: float) -> None:
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
            ident = call.crossing.ident
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
        self.out.append(rec)
        answered = call.answered_at is not None
        self._count(call.trunk_in.name, call.trunk_out.name, "answered" if answered else end_reason)
        if self.metrics is not None and not answered:
            self.metrics.call_setup.observe(now - call.started_at)
