"""The CDR record of SPEC §6: a value, no I/O, no clock.

A record holds exactly the fields of SPEC §6 and nothing else, ever: no display names,
addresses, SIP Call-IDs, user agents, SDP, IMEI/IMSI or location. Every field is checked
on construction (closed vocabularies, number syntax, timestamp format), so a record that
would carry anything else cannot be built.

Timestamps are strings, exactly as written: UTC, ISO 8601, millisecond precision, ``Z``
(``2026-11-28T00:49:20.123Z``). Fixed width, so they compare correctly as strings. The
builders take float epoch seconds (wall clock) from the caller; this module never reads
the clock.

Conventions for the fields SPEC §6 leaves open:

- A ``start`` record (written when the call is answered) has ``end``, ``end_reason`` and
  ``duration_ms`` null and ``status`` 200.
- An ``end`` record always has an integer ``duration_ms``: answer to end, ``0`` for a call
  never answered (so that billing can sum the column without null checks).
- ``duration_ms`` is computed from the millisecond timestamps of the record itself, so
  ``end - answer == duration_ms`` holds exactly for every record.
"""

from __future__ import annotations

import json
import re
import secrets
import time
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from functools import lru_cache
from typing import Any, Final, Literal, cast, get_args

from sipguard.sip.ids import IdSource

SCHEMA_VERSION: Final = 1

Kind = Literal["start", "end"]
CdrPresentation = Literal["allowed", "restricted"]
EndReason = Literal[
    "caller_bye",
    "callee_bye",
    "cancel",
    "rejected",
    "timeout",
    "limit",
    "session_timeout",
    "max_duration",
    "media_timeout",
    "shutdown",
    "crash_recovered",
]

# the value sets that records are checked against: the Literal types above, once
KINDS: Final = frozenset(get_args(Kind))
PRESENTATIONS: Final = frozenset(get_args(CdrPresentation))
END_REASONS: Final = frozenset(get_args(EndReason))

# The field names, in the order they are written (the JSON key order and CSV columns).
FIELDS: Final = (
    "v",
    "id",
    "kind",
    "trunk_in",
    "trunk_out",
    "caller",
    "callee",
    "presentation",
    "emergency",
    "start",
    "answer",
    "end",
    "duration_ms",
    "status",
    "end_reason",
)

# ASCII digits only: int() would take any Unicode digit, and a record stays canonical
_TS_RE: Final = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}\.[0-9]{3}Z")
# sipguard's own call id: opaque, URL- and file-safe. A SIP Call-ID (word@host) never fits.
_ID_RE: Final = re.compile(r"[0-9A-Za-z_-]{1,64}")
# An instance tag: the first characters of every call id this instance makes.
INSTANCE_LEN: Final = 8
_INSTANCE_RE: Final = re.compile(r"[0-9a-f]{8}")
ID_RANDOM_HEX: Final = 24  # and 96 random bits, in hex: 32 characters in all
# E.164 as billed (or a dialled short code such as 112, 116123, *31# already removed),
# or an emergency service URN. Nothing with letters, '@', ':' (other than the URN) or '.'.
_NUMBER_RE: Final = re.compile(r"\+?[0-9*#]{0,32}|urn:service:sos(?:\.[a-z0-9-]+)*")
_TRUNK_RE: Final = re.compile(r"[^\s\x00-\x1f\x7f]{1,128}")

_EPOCH: Final = datetime(1970, 1, 1, tzinfo=UTC)
_EPOCH_ORDINAL: Final = date(1970, 1, 1).toordinal()
_MS: Final = timedelta(milliseconds=1)


def is_cdr_number(value: str) -> bool:
    """True if ``value`` may stand in a record's ``caller`` or ``callee`` field."""
    return _NUMBER_RE.fullmatch(value) is not None


def epoch_ms(seconds: float) -> int:
    """Wall-clock epoch seconds to integer milliseconds (rounded to the nearest)."""
    return round(seconds * 1000.0)


# the last second formatted: calls end in bursts, the same second is formatted again
_last_second: tuple[int, str] = (-1, "")
# the millisecond tails, ".000Z" to ".999Z": looked up, not formatted, for every timestamp
_MILLIS: Final = tuple(f".{n:03d}Z" for n in range(1000))


def format_ms(ms: int) -> str:
    """Epoch milliseconds to the record's timestamp form, ``2026-11-28T00:49:20.123Z``."""
    global _last_second
    secs = ms // 1000
    rest = ms - secs * 1000
    last = _last_second  # one read: another thread may replace it, never half of it
    if last[0] == secs:
        return last[1] + _MILLIS[rest]
    text = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(secs))
    _last_second = (secs, text)
    return text + _MILLIS[rest]


def format_ts(seconds: float) -> str:
    """Wall-clock epoch seconds to the record's timestamp form."""
    return format_ms(epoch_ms(seconds))


@lru_cache(maxsize=64)
def _day_ms(day: str) -> int:
    """Epoch milliseconds of a UTC midnight ``YYYY-MM-DD`` (validated by the calendar)."""
    return (date.fromisoformat(day).toordinal() - _EPOCH_ORDINAL) * 86_400_000


def parse_ms(ts: str) -> int:
    """A record timestamp (exact form) to epoch milliseconds; ValueError otherwise.

    On the per-call path (every record is checked when built), so it does its own
    arithmetic instead of ``time.strptime``.
    """
    if type(ts) is not str or _TS_RE.fullmatch(ts) is None:
        raise ValueError(f"not a CDR timestamp (YYYY-MM-DDTHH:MM:SS.mmmZ): {ts!r}")
    hour, minute, second = int(ts[11:13]), int(ts[14:16]), int(ts[17:19])
    if hour > 23 or minute > 59 or second > 59:
        raise ValueError(f"not a CDR timestamp (time of day out of range): {ts!r}")
    return _day_ms(ts[:10]) + ((hour * 60 + minute) * 60 + second) * 1000 + int(ts[20:23])


def ts_to_datetime(ts: str) -> datetime:
    """A record timestamp to an aware UTC datetime (exact, no float rounding)."""
    return _EPOCH + parse_ms(ts) * _MS


def datetime_to_ts(dt: datetime) -> str:
    """An aware datetime to a record timestamp (truncated to the millisecond)."""
    if dt.tzinfo is None:
        raise ValueError("naive datetime")
    return format_ms((dt - _EPOCH) // _MS)


def ts_day(ts: str) -> date:
    """The UTC calendar day of a record timestamp."""
    return date.fromisoformat(ts[:10])


# the random part of call ids: 96 bits of the OS's CSPRNG, read in batches (sip/ids.py).
# Unique and secret: a CDR id is also the call's rtpengine session (the ng ``call-id``),
# so the ids seen in an export or a log must tell nothing of the next call's
_ids = IdSource(batch=64, width=ID_RANDOM_HEX)


def new_instance_tag() -> str:
    """A random tag for one sipguard instance (8 lower-case hex digits)."""
    return secrets.token_hex(INSTANCE_LEN // 2)


def make_call_id(instance: str) -> str:
    """sipguard's own id for a new call: the instance tag and 96 random bits, 32 hex digits.

    Not a SIP Call-ID, and not derived from one. The instance tag lets crash recovery
    against a shared database close only the calls of the instance that crashed.
    """
    if _INSTANCE_RE.fullmatch(instance) is None:
        raise ValueError(f"instance tag must be 8 lower-case hex digits: {instance!r}")
    return instance + _ids.next()


@lru_cache(maxsize=256)
def _json_text(text: str) -> str:
    """A string as JSON (a trunk name: any printable text; few distinct, so kept)."""
    return json.dumps(text, ensure_ascii=False)


def _json_opt(text: str | None) -> str:
    """A string that needs no escaping (a timestamp, an end reason), or null."""
    return "null" if text is None else f'"{text}"'


def _json_int(value: int | None) -> str:
    return "null" if value is None else str(value)


@dataclass(frozen=True, slots=True)
class CdrRecord:
    """One CDR record (SPEC §6). Build it with :func:`start_record` or :func:`end_record`.

    The constructor checks every field (ValueError); ``_checked`` is for this module's
    builders only, which check what they are given themselves and make the times.
    """

    v: int
    id: str
    kind: Kind
    trunk_in: str
    trunk_out: str | None
    caller: str
    callee: str
    presentation: CdrPresentation
    emergency: bool
    start: str
    answer: str | None
    end: str | None
    duration_ms: int | None
    status: int | None
    end_reason: EndReason | None

    def __init__(
        self,
        v: int,
        id: str,
        kind: Kind,
        trunk_in: str,
        trunk_out: str | None,
        caller: str,
        callee: str,
        presentation: CdrPresentation,
        emergency: bool,
        start: str,
        answer: str | None,
        end: str | None,
        duration_ms: int | None,
        status: int | None,
        end_reason: EndReason | None,
        *,
        _checked: bool = False,
    ) -> None:
        # written out rather than generated by @dataclass: mypyc compiles this one (its
        # object.__setattr__ calls become plain stores), and it is the only way to build
        # a record there, the builders' too (a native class has no bare instances)
        object.__setattr__(self, "v", v)
        object.__setattr__(self, "id", id)
        object.__setattr__(self, "kind", kind)
        object.__setattr__(self, "trunk_in", trunk_in)
        object.__setattr__(self, "trunk_out", trunk_out)
        object.__setattr__(self, "caller", caller)
        object.__setattr__(self, "callee", callee)
        object.__setattr__(self, "presentation", presentation)
        object.__setattr__(self, "emergency", emergency)
        object.__setattr__(self, "start", start)
        object.__setattr__(self, "answer", answer)
        object.__setattr__(self, "end", end)
        object.__setattr__(self, "duration_ms", duration_ms)
        object.__setattr__(self, "status", status)
        object.__setattr__(self, "end_reason", end_reason)
        if not _checked:
            self._check()

    def __reduce__(self) -> tuple[type[CdrRecord], tuple[object, ...]]:
        # copy, deepcopy, pickle when compiled by mypyc too (see Uri.__reduce__)
        return CdrRecord, tuple(getattr(self, name) for name in FIELDS)

    def _check(self) -> None:
        if type(self.v) is not int or self.v != SCHEMA_VERSION:
            raise ValueError(f"v must be {SCHEMA_VERSION}")
        if type(self.kind) is not str or self.kind not in KINDS:
            raise ValueError(f"bad kind {self.kind!r}")
        self._check_given()
        self._check_times()

    def _check_given(self) -> None:
        """The fields a record's builder is given (not worked out from times)."""
        if type(self.id) is not str or _ID_RE.fullmatch(self.id) is None:
            raise ValueError(f"bad call id {self.id!r}")
        if type(self.trunk_in) is not str or _TRUNK_RE.fullmatch(self.trunk_in) is None:
            raise ValueError(f"bad trunk_in {self.trunk_in!r}")
        if self.trunk_out is not None and (
            type(self.trunk_out) is not str or _TRUNK_RE.fullmatch(self.trunk_out) is None
        ):
            raise ValueError(f"bad trunk_out {self.trunk_out!r}")
        if type(self.caller) is not str or not is_cdr_number(self.caller):
            raise ValueError("caller must be an E.164 number or a dialled code")
        if type(self.callee) is not str or not is_cdr_number(self.callee):
            raise ValueError("callee must be an E.164 number or a dialled code")
        if type(self.presentation) is not str or self.presentation not in PRESENTATIONS:
            raise ValueError(f"bad presentation {self.presentation!r}")
        if type(self.emergency) is not bool:
            raise ValueError("emergency must be a bool")
        if self.status is not None and (
            type(self.status) is not int or not 100 <= self.status <= 699
        ):
            raise ValueError(f"bad status {self.status!r}")
        if self.end_reason is not None and (
            type(self.end_reason) is not str or self.end_reason not in END_REASONS
        ):
            raise ValueError(f"bad end_reason {self.end_reason!r}")

    def _check_times(self) -> None:
        start_ms = parse_ms(self.start)
        answer_ms = parse_ms(self.answer) if self.answer is not None else None
        end_ms = parse_ms(self.end) if self.end is not None else None
        if answer_ms is not None and answer_ms < start_ms:
            raise ValueError("answer before start")
        if self.kind == "start":
            if answer_ms is None:
                raise ValueError("a start record is written when the call is answered")
            if (
                end_ms is not None
                or self.end_reason is not None
                or self.duration_ms is not None
                or self.status != 200
            ):
                raise ValueError("a start record has no end, end_reason or duration; status 200")
            return
        if end_ms is None or end_ms < start_ms:
            raise ValueError("an end record needs an end not before the start")
        if self.end_reason not in END_REASONS:
            raise ValueError(f"bad end_reason {self.end_reason!r}")
        if self.status is None:
            raise ValueError("an end record has a status")
        if type(self.duration_ms) is not int:
            raise ValueError("an end record has an integer duration_ms")
        expected = 0 if answer_ms is None else end_ms - answer_ms
        if self.duration_ms != expected:
            raise ValueError(f"duration_ms {self.duration_ms} != end - answer ({expected})")

    def to_dict(self) -> dict[str, Any]:
        """The record as a dict, keys in :data:`FIELDS` order."""
        return {name: getattr(self, name) for name in FIELDS}

    def to_json(self) -> str:
        """One compact JSON line (no newline), keys in :data:`FIELDS` order: what
        ``json.dumps(self.to_dict(), separators=(",", ":"), ensure_ascii=False)`` gives.

        Written out field by field (a sixth of the time, for every record written): the
        checks every record passed (plain ``str`` values of the shapes they allow) leave
        nothing to escape but in the trunk names, which go through ``json.dumps``."""
        trunk_out = "null" if self.trunk_out is None else _json_text(self.trunk_out)
        emergency = "true" if self.emergency else "false"
        return (
            f'{{"v":{self.v},"id":"{self.id}","kind":"{self.kind}",'
            f'"trunk_in":{_json_text(self.trunk_in)},"trunk_out":{trunk_out},'
            f'"caller":"{self.caller}","callee":"{self.callee}",'
            f'"presentation":"{self.presentation}","emergency":{emergency},'
            f'"start":"{self.start}","answer":{_json_opt(self.answer)},'
            f'"end":{_json_opt(self.end)},"duration_ms":{_json_int(self.duration_ms)},'
            f'"status":{_json_int(self.status)},"end_reason":{_json_opt(self.end_reason)}}}'
        )

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> CdrRecord:
        """Read a record back; exactly the SPEC §6 keys, or ValueError."""
        keys = set(data)
        if keys != set(FIELDS):
            extra = sorted(keys - set(FIELDS))
            missing = sorted(set(FIELDS) - keys)
            raise ValueError(f"not a CDR record: extra keys {extra}, missing keys {missing}")
        try:
            return cls(**{name: data[name] for name in FIELDS})
        except TypeError as exc:  # compiled (mypyc), a value of the wrong type stops here
            raise ValueError(f"not a CDR record: {exc}") from exc

    @classmethod
    def from_json(cls, line: str | bytes) -> CdrRecord:
        """Read one JSON line back; ValueError for anything that is not a record."""
        try:
            data = json.loads(line)
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise ValueError(f"not JSON: {exc}") from exc
        if not isinstance(data, dict):
            raise ValueError("not a JSON object")
        return cls.from_dict(cast(dict[str, Any], data))

    @property
    def key(self) -> tuple[str, str]:
        """The idempotency key ``(id, kind)``."""
        return (self.id, self.kind)


def _built(
    kind: Kind,
    call_id: str,
    trunk_in: str,
    trunk_out: str | None,
    caller: str,
    callee: str,
    presentation: CdrPresentation,
    emergency: bool,
    start_ms: int,
    answer_ms: int | None,
    end_ms: int | None,
    status: int,
    end_reason: EndReason | None,
) -> CdrRecord:
    """A record from times in epoch milliseconds already in order (the builders clamp
    them): the given fields are checked, the times are formatted, not parsed back."""
    duration = None
    if end_ms is not None:
        duration = 0 if answer_ms is None else end_ms - answer_ms
    rec = CdrRecord(
        SCHEMA_VERSION, call_id, kind, trunk_in, trunk_out, caller, callee, presentation,
        emergency, format_ms(start_ms), None if answer_ms is None else format_ms(answer_ms),
        None if end_ms is None else format_ms(end_ms), duration, status, end_reason,
        _checked=True,
    )  # fmt: skip
    rec._check_given()
    return rec


def start_record(
    *,
    call_id: str,
    trunk_in: str,
    trunk_out: str | None,
    caller: str,
    callee: str,
    presentation: CdrPresentation,
    emergency: bool,
    start: float,
    answer: float,
) -> CdrRecord:
    """The ``start`` record of an answered call; ``start``/``answer`` are epoch seconds
    (an ``answer`` before ``start``, a wall clock that stepped back, counts as ``start``)."""
    start_ms = epoch_ms(start)
    answer_ms = max(epoch_ms(answer), start_ms)
    return _built(
        "start", call_id, trunk_in, trunk_out, caller, callee, presentation, emergency,
        start_ms, answer_ms, None, 200, None,
    )  # fmt: skip


def end_record(
    *,
    call_id: str,
    trunk_in: str,
    trunk_out: str | None,
    caller: str,
    callee: str,
    presentation: CdrPresentation,
    emergency: bool,
    start: float,
    answer: float | None,
    end: float,
    status: int,
    end_reason: EndReason,
) -> CdrRecord:
    """The ``end`` record of any call attempt; times are epoch seconds (``answer`` None if
    the call was never answered). ``duration_ms`` is computed here. Times out of order (a
    wall clock that stepped back) are clamped: never an answer before the start or an end
    before the answer, so building a record never fails on the clock."""
    start_ms = epoch_ms(start)
    answer_ms = max(epoch_ms(answer), start_ms) if answer is not None else None
    end_ms = max(epoch_ms(end), answer_ms if answer_ms is not None else start_ms)
    return _built(
        "end", call_id, trunk_in, trunk_out, caller, callee, presentation, emergency,
        start_ms, answer_ms, end_ms, status, end_reason,
    )  # fmt: skip


def end_of(start_rec: CdrRecord, end_ms: int, *, status: int, end_reason: EndReason) -> CdrRecord:
    """The ``end`` record that closes ``start_rec`` at ``end_ms`` (never before the answer).

    The fields the two records share were checked when the start record was built and
    are copied as they are: only the end, the status and the reason are new. On the
    per-call path (every answered call ends this way), so it builds the record as
    :func:`_built` does."""
    if start_rec.kind != "start" or start_rec.answer is None:
        raise ValueError("end_of() takes a start record")
    if type(status) is not int or not 100 <= status <= 699:
        raise ValueError(f"bad status {status!r}")
    if type(end_reason) is not str or end_reason not in END_REASONS:
        raise ValueError(f"bad end_reason {end_reason!r}")
    answer_ms = parse_ms(start_rec.answer)
    end_ms = max(end_ms, answer_ms)
    s = start_rec
    return CdrRecord(
        s.v, s.id, "end", s.trunk_in, s.trunk_out, s.caller, s.callee, s.presentation,
        s.emergency, s.start, s.answer, format_ms(end_ms), end_ms - answer_ms, status,
        end_reason, _checked=True,
    )  # fmt: skip
