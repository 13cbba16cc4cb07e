"""What a call's outcomes write: its CDRs (SPEC §6) and the call metrics (SPEC §7).

A call answered gets its ``start`` record at once (a crash then loses no answered call);
every call attempt ends with one ``end`` record, a refused one too. Records go to
``out``, which the driver hands to the CDR writer after each input.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TYPE_CHECKING

from sipguard.b2bua.admission import within_rate
from sipguard.cdr.record import CdrRecord, end_of, end_record, epoch_ms, make_call_id, start_record
from sipguard.metrics import Metrics

log = logging.getLogger("sipguard.b2bua")

if TYPE_CHECKING:
    from sipguard.b2bua.admission import Refused
    from sipguard.b2bua.call import Call


class Records:
    """The CDRs and call metrics of one element (``instance``: its tag in every id)."""

    __slots__ = ("_refusals", "instance", "metrics", "out", "wall")

    def __init__(
        self, instance: str, metrics: Metrics | None, wall: Callable[[float], float]
    ) -> None:
        self.instance = instance
        self.metrics = metrics
        self.wall = wall
        self.out: list[CdrRecord] = []
        self._refusals: dict[str, tuple[int, int]] = {}  # trunk -> (second, records)

    def _count(self, trunk_in: str, trunk_out: str, result: str) -> None:
        if self.metrics is not None:
            self.metrics.inc(self.metrics.calls, trunk_in, trunk_out, result)

    def refused(self, trunk_in: str, refusal: Refused, now: float, rate: int) -> None:
        """The end record of a call attempt refused before it had a B-leg: at most
        ``rate`` a second per trunk (0: all), the rest counted (a flood of refused INVITEs
        writes no flood of records); an emergency call's always."""
        end_reason = refusal.end_reason
        if end_reason is None:
            return
        ident = refusal.ident
        emergency = ident is not None and ident.decision.emergency
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
