"""The CDR record (SPEC §6): its JSON shape, and that nothing else can get into it."""

from __future__ import annotations

import copy
import dataclasses
import json
import pickle
import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sipguard.cdr.record import (
    END_REASONS,
    FIELDS,
    CdrRecord,
    end_of,
    end_record,
    epoch_ms,
    format_ts,
    make_call_id,
    parse_ms,
    start_record,
)
from testkit.forking import in_child

T0 = 1795827560.123  # 2026-11-28T00:59:20.123Z
TS_RE = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}Z")


def _start(**kw: object) -> CdrRecord:
    args: dict[str, object] = {
        "call_id": "a1b2c3d4" + "0" * 24,
        "trunk_in": "customers",
        "trunk_out": "pbx",
        "caller": "+31201234567",
        "callee": "+31207654321",
        "presentation": "restricted",
        "emergency": False,
        "start": T0,
        "answer": T0 + 2.5,
    }
    args.update(kw)
    return start_record(**args)  # type: ignore[arg-type]


def _end(**kw: object) -> CdrRecord:
    args: dict[str, object] = {
        "call_id": "a1b2c3d4" + "0" * 24,
        "trunk_in": "customers",
        "trunk_out": "pbx",
        "caller": "+31201234567",
        "callee": "+31207654321",
        "presentation": "allowed",
        "emergency": False,
        "start": T0,
        "answer": T0 + 2.5,
        "end": T0 + 62.75,
        "status": 200,
        "end_reason": "caller_bye",
    }
    args.update(kw)
    return end_record(**args)  # type: ignore[arg-type]


def test_fields_are_exactly_spec_section_6() -> None:
    assert tuple(f.name for f in dataclasses.fields(CdrRecord)) == FIELDS
    assert FIELDS == (
        "v", "id", "kind", "trunk_in", "trunk_out", "caller", "callee", "presentation",
        "emergency", "start", "answer", "end", "duration_ms", "status", "end_reason",
    )  # fmt: skip


def test_timestamps_are_utc_milliseconds_with_z() -> None:
    assert format_ts(T0) == "2026-11-28T00:59:20.123Z"
    assert format_ts(0.0) == "1970-01-01T00:00:00.000Z"
    assert format_ts(T0 + 0.0004) == "2026-11-28T00:59:20.123Z"
    assert format_ts(T0 + 0.0006) == "2026-11-28T00:59:20.124Z"
    assert parse_ms("2026-11-28T00:59:20.123Z") == 1795827560123
    for bad in (
        "2026-11-28T00:59:20Z",
        "2026-11-28 00:59:20.123Z",
        "2026-11-28T00:59:20.123+00:00",
    ):
        with pytest.raises(ValueError):
            parse_ms(bad)


def test_start_record_json_shape() -> None:
    rec = _start()
    line = rec.to_json()
    assert "\n" not in line and " " not in line
    data = json.loads(line)
    assert list(data) == list(FIELDS)
    assert data == {
        "v": 1,
        "id": "a1b2c3d4" + "0" * 24,
        "kind": "start",
        "trunk_in": "customers",
        "trunk_out": "pbx",
        "caller": "+31201234567",
        "callee": "+31207654321",
        "presentation": "restricted",
        "emergency": False,
        "start": "2026-11-28T00:59:20.123Z",
        "answer": "2026-11-28T00:59:22.623Z",
        "end": None,
        "duration_ms": None,
        "status": 200,
        "end_reason": None,
    }
    assert CdrRecord.from_json(line) == rec


def test_end_record_duration_is_answer_to_end() -> None:
    rec = _end()
    assert rec.kind == "end"
    assert rec.end == "2026-11-28T01:00:22.873Z"
    assert rec.duration_ms == 60250
    assert parse_ms(rec.end) - parse_ms(rec.answer or "") == rec.duration_ms
    assert CdrRecord.from_json(rec.to_json()) == rec


def test_unanswered_end_record() -> None:
    rec = _end(answer=None, end=T0 + 10, status=486, end_reason="rejected")
    data = json.loads(rec.to_json())
    assert data["answer"] is None
    assert data["duration_ms"] == 0
    assert data["status"] == 486


def test_builders_never_fail_on_a_clock_that_steps_back() -> None:
    s = _start(start=T0, answer=T0 - 0.004)
    assert s.answer == s.start
    e = _end(start=T0, answer=T0 - 0.004, end=T0 - 1.0)
    assert e.answer == e.start == e.end and e.duration_ms == 0
    e = _end(start=T0, answer=None, end=T0 - 1.0, status=487, end_reason="cancel")
    assert e.end == e.start and e.duration_ms == 0


def test_end_of_start_record() -> None:
    start = _start()
    end = end_of(
        start, parse_ms(start.answer or "") + 5000, status=200, end_reason="crash_recovered"
    )
    assert end.key == (start.id, "end")
    assert end.duration_ms == 5000
    assert (end.caller, end.callee, end.presentation) == (start.caller, start.callee, "restricted")
    # never before the answer
    early = end_of(start, 0, status=200, end_reason="crash_recovered")
    assert early.duration_ms == 0 and early.end == early.answer
    # what it builds is a whole valid record, as the constructor would check it
    assert CdrRecord(**end.to_dict()) == end
    with pytest.raises(ValueError, match="bad status"):
        end_of(start, 0, status=99, end_reason="caller_bye")
    with pytest.raises(ValueError, match="bad end_reason"):
        end_of(start, 0, status=200, end_reason="hung_up")  # type: ignore[arg-type]


def test_an_answered_call_closed_from_its_start_record_equals_the_built_end() -> None:
    """The core ends an answered call with end_of(): the same record end_record() gives."""
    for answer, end in ((T0 + 0.25, T0 + 61.0004), (T0 - 0.004, T0 - 1.0), (T0 + 1, T0 + 1)):
        start = _start(start=T0, answer=answer, presentation="allowed")
        built = _end(start=T0, answer=answer, end=end, status=200, end_reason="callee_bye")
        closed = end_of(start, epoch_ms(end), status=200, end_reason="callee_bye")
        assert closed == built


@pytest.mark.parametrize(
    "extra",
    ["display_name", "source_ip", "sip_call_id", "user_agent", "sdp", "imei", "imsi", "location"],
)
def test_no_other_field_can_be_read_in(extra: str) -> None:
    data = _end().to_dict()
    data[extra] = "x"
    with pytest.raises(ValueError, match="extra keys"):
        CdrRecord.from_dict(data)


def test_no_field_can_be_added_or_changed() -> None:
    rec = _end()
    with pytest.raises(dataclasses.FrozenInstanceError):
        rec.caller = "+31000000000"  # type: ignore[misc]
    with pytest.raises((AttributeError, TypeError)):
        rec.display_name = "Alice"  # type: ignore[attr-defined]
    assert not hasattr(rec, "__dict__")


def test_a_record_copies_and_pickles_to_an_equal_record() -> None:
    for rec in (_start(), _end()):
        for other in (copy.copy(rec), copy.deepcopy(rec), pickle.loads(pickle.dumps(rec))):
            assert other == rec and hash(other) == hash(rec)
            assert other.to_json() == rec.to_json()


def test_a_value_of_the_wrong_type_is_refused_as_a_value_error() -> None:
    """Read back from JSON, any type can stand in any field; compiled (mypyc), the
    constructor's own argument checks then stop it: ValueError either way."""
    for field, value in (("emergency", 1), ("status", "200"), ("v", "1"), ("caller", 31)):
        with pytest.raises(ValueError):
            CdrRecord.from_dict(dict(_end().to_dict(), **{field: value}))


def test_missing_field_is_refused() -> None:
    data = _end().to_dict()
    del data["status"]
    with pytest.raises(ValueError, match="missing keys"):
        CdrRecord.from_dict(data)


@pytest.mark.parametrize(
    "caller",
    [
        '"Alice" <sip:+31201234567@example.net>',
        "sip:+31201234567@10.0.0.1",
        "10.0.0.1",
        "2001:db8::1",
        "alice",
        "+31 20 123",
        "+31201234567;user=phone",
        "354123456789012@imei",
    ],
)
def test_numbers_carry_nothing_but_a_number(caller: str) -> None:
    with pytest.raises(ValueError):
        _end(caller=caller)


def test_emergency_and_short_numbers_are_numbers() -> None:
    assert _end(callee="112", emergency=True).callee == "112"
    assert _end(callee="urn:service:sos.fire", emergency=True).callee == "urn:service:sos.fire"
    assert _end(callee="116123").callee == "116123"


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("id", "a84b4c76e66710@pc33.atlanta.com"),  # a SIP Call-ID does not fit
        ("kind", "middle"),
        ("presentation", "permanent"),
        ("end_reason", "hangup"),
        ("status", 99),
        ("status", 700),
        ("emergency", "false"),
        ("v", 2),
        ("start", "2026-11-28T00:59:20Z"),
        ("trunk_in", "a b"),
        ("duration_ms", 1),
    ],
)
def test_bad_values_are_refused(field: str, value: object) -> None:
    data = _end().to_dict()
    data[field] = value
    with pytest.raises(ValueError):
        CdrRecord.from_dict(data)


def test_start_record_invariants() -> None:
    data = _start().to_dict()
    for field, value in (("end", data["start"]), ("end_reason", "caller_bye"), ("duration_ms", 0)):
        bad = dict(data, **{field: value})
        with pytest.raises(ValueError):
            CdrRecord.from_dict(bad)
    with pytest.raises(ValueError):
        CdrRecord.from_dict(dict(data, answer=None))


def test_end_before_start_refused() -> None:
    data = _end().to_dict()
    data["end"] = "2020-01-01T00:00:00.000Z"
    with pytest.raises(ValueError):
        CdrRecord.from_dict(data)


def test_call_ids() -> None:
    ids = {make_call_id("0123abcd") for _ in range(1000)}
    assert len(ids) == 1000
    for i in ids:
        assert re.fullmatch(r"0123abcd[0-9a-f]{24}", i)
    for bad in ("", "0123ABCD", "xyz", "0123abcd0"):
        with pytest.raises(ValueError):
            make_call_id(bad)


def test_call_ids_of_a_forked_child_are_its_own() -> None:
    """A forked child never makes its parent's next call ids (they are also rtpengine
    sessions): the random part's batch is forgotten at the fork."""
    make_call_id("0123abcd")  # a batch is read
    child = in_child(lambda: " ".join(make_call_id("0123abcd") for _ in range(3))).split()
    assert len(child) == 3
    assert set(child).isdisjoint(make_call_id("0123abcd") for _ in range(3))


@given(
    caller=st.from_regex(r"\+[1-9][0-9]{6,14}", fullmatch=True),
    callee=st.one_of(st.from_regex(r"\+[1-9][0-9]{6,14}", fullmatch=True), st.just("112")),
    presentation=st.sampled_from(["allowed", "restricted"]),
    emergency=st.booleans(),
    start=st.floats(min_value=1e9, max_value=4e9),
    ring=st.floats(min_value=0, max_value=300),
    talk=st.one_of(st.none(), st.floats(min_value=0, max_value=86400)),
    status=st.integers(min_value=100, max_value=699),
    reason=st.sampled_from(sorted(END_REASONS)),
    trunk=st.from_regex(r"[a-z][a-z0-9_-]{0,20}", fullmatch=True),
)
def test_any_record_round_trips_with_only_its_fields(
    caller: str,
    callee: str,
    presentation: str,
    emergency: bool,
    start: float,
    ring: float,
    talk: float | None,
    status: int,
    reason: str,
    trunk: str,
) -> None:
    answer = None if talk is None else start + ring
    end = start + ring + (talk or 0.0)
    rec = end_record(
        call_id=make_call_id("0123abcd"),
        trunk_in=trunk,
        trunk_out=None,
        caller=caller,
        callee=callee,
        presentation=presentation,  # type: ignore[arg-type]
        emergency=emergency,
        start=start,
        answer=answer,
        end=end,
        status=status,
        end_reason=reason,  # type: ignore[arg-type]
    )
    data = json.loads(rec.to_json())
    assert tuple(data) == FIELDS
    for ts in (data["start"], data["end"]):
        assert TS_RE.fullmatch(ts)
    assert isinstance(data["duration_ms"], int) and data["duration_ms"] >= 0
    assert CdrRecord.from_dict(data) == rec


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("caller", "alice"),
        ("callee", "sip:bob@example.net"),
        ("trunk_in", "two words"),
        ("trunk_out", ""),
        ("presentation", "shown"),
        ("call_id", "not/an/id"),
        ("status", 99),
        ("end_reason", "vanished"),
    ],
)
def test_the_builders_check_what_they_are_given(field: str, value: object) -> None:
    """start_record/end_record format times they order themselves, but check the rest."""
    args: dict[str, object] = {
        "call_id": make_call_id("0123abcd"),
        "trunk_in": "customers",
        "trunk_out": "pbx",
        "caller": "+31201234567",
        "callee": "+31201234568",
        "presentation": "allowed",
        "emergency": False,
        "start": 1.8e9,
        "answer": 1.8e9 + 2,
        "end": 1.8e9 + 5,
        "status": 200,
        "end_reason": "caller_bye",
        field: value,
    }
    with pytest.raises(ValueError):
        end_record(**args)  # type: ignore[arg-type]
    if field not in ("status", "end_reason"):
        for key in ("end", "status", "end_reason"):
            args.pop(key)
        with pytest.raises(ValueError):
            start_record(**args)  # type: ignore[arg-type]


@given(
    trunk_in=st.from_regex(r"[^\s\x00-\x1f\x7f]{1,40}", fullmatch=True),
    trunk_out=st.one_of(st.none(), st.from_regex(r"[^\s\x00-\x1f\x7f]{1,40}", fullmatch=True)),
    caller=st.from_regex(r"\+?[0-9*#]{0,32}|urn:service:sos(?:\.[a-z0-9-]+)*", fullmatch=True),
    callee=st.from_regex(r"\+?[0-9*#]{0,32}|urn:service:sos(?:\.[a-z0-9-]+)*", fullmatch=True),
    presentation=st.sampled_from(["allowed", "restricted"]),
    emergency=st.booleans(),
    start=st.floats(min_value=0, max_value=4e9),
    talk=st.one_of(st.none(), st.floats(min_value=0, max_value=86400)),
    status=st.integers(min_value=100, max_value=699),
    reason=st.sampled_from(sorted(END_REASONS)),
    closed=st.booleans(),
)
def test_the_json_line_is_what_json_dumps_writes(
    trunk_in: str,
    trunk_out: str | None,
    caller: str,
    callee: str,
    presentation: str,
    emergency: bool,
    start: float,
    talk: float | None,
    status: int,
    reason: str,
    closed: bool,
) -> None:
    """to_json() writes each field out itself: byte for byte what json.dumps gives, for
    every value the record's checks let in (quotes, backslashes, non-ASCII trunk names)."""
    common = {
        "call_id": make_call_id("0123abcd"),
        "trunk_in": trunk_in,
        "trunk_out": trunk_out,
        "caller": caller,
        "callee": callee,
        "presentation": presentation,
        "emergency": emergency,
    }
    records = [
        end_record(
            **common, start=start, answer=None, end=start + 1, status=status, end_reason=reason
        )
    ]  # type: ignore[arg-type]
    if talk is not None:
        first = start_record(**common, start=start, answer=start + 0.5)  # type: ignore[arg-type]
        last = (
            end_of(first, epoch_ms(start + talk), status=status, end_reason=reason)  # type: ignore[arg-type]
            if closed
            else end_record(
                **common,
                start=start,
                answer=start + 0.5,
                end=start + talk,
                status=status,
                end_reason=reason,
            )  # type: ignore[arg-type]
        )
        records += [first, last]
    for rec in records:
        line = rec.to_json()
        assert line == json.dumps(rec.to_dict(), separators=(",", ":"), ensure_ascii=False)
        assert CdrRecord.from_json(line) == rec


def test_only_plain_ascii_values_are_admitted() -> None:
    """A record is canonical: ASCII digits in its timestamps (int() would read any
    Unicode digit) and plain strings (a str subclass could format itself otherwise in
    the JSON line than json.dumps writes it)."""

    class Sneaky(str):
        def __format__(self, spec: str) -> str:
            return 'x","caller":"+31999'

    data = _end().to_dict()
    for field, value in (
        ("start", data["start"][:11] + "\u0660\u0660" + data["start"][13:]),
        ("end", data["end"][:-4] + "\uff11\uff12\uff13Z"),
        ("id", Sneaky(data["id"])),
        ("caller", Sneaky(data["caller"])),
        ("kind", Sneaky("end")),
        ("presentation", Sneaky("allowed")),
        ("end_reason", Sneaky("caller_bye")),
        ("start", Sneaky(data["start"])),
    ):
        bad = dict(data, **{field: value})
        with pytest.raises(ValueError):
            CdrRecord.from_dict(bad)
    start = _start()
    with pytest.raises(ValueError):
        end_of(start, 0, status=200, end_reason=Sneaky("caller_bye"))  # type: ignore[arg-type]
