"""``sipguard cdr export``: every record about a number, a withheld caller stays withheld."""

from __future__ import annotations

import csv
import io
import json
import stat
from pathlib import Path
from typing import Any

import pytest

from sipguard.cdr import admin
from sipguard.cdr.admin import _normalise_candidates, parse_bound
from sipguard.cdr.record import FIELDS, CdrRecord, end_record, start_record
from sipguard.config.model import CdrConfig, Config, Numbering, Trunk

DAY = 1795824000.0  # 2026-11-28T00:00:00Z
SUB = "+31201234567"  # the subscriber asking for their data
NL = Numbering(country_code="31", national_prefix="0", international_prefix="00")


def config(path: Path) -> Config:
    return Config(
        source="<test>",
        listen=(),
        trunks={
            "customers": Trunk(name="customers", numbering=NL),
            "pbx": Trunk(name="pbx", numbering=NL),  # the same numbering: one candidate
            "intl": Trunk(name="intl", numbering=Numbering()),
        },
        cdr=CdrConfig(path=str(path)),
    )


def end(n: int, caller: str, callee: str, presentation: str, t: float) -> CdrRecord:
    return end_record(
        call_id=f"0123abcd{n:024x}",
        trunk_in="customers",
        trunk_out="pbx",
        caller=caller,
        callee=callee,
        presentation=presentation,  # type: ignore[arg-type]
        emergency=False,
        start=t,
        answer=t + 3,
        end=t + 63,
        status=200,
        end_reason="caller_bye",
    )


@pytest.fixture
def cdr_dir(tmp_path: Path) -> Path:
    d = tmp_path / "cdr"
    d.mkdir()
    start1 = start_record(
        call_id=f"0123abcd{1:024x}",
        trunk_in="customers",
        trunk_out="pbx",
        caller=SUB,
        callee="+31207654321",
        presentation="restricted",
        emergency=False,
        start=DAY - 100,
        answer=DAY - 97,
    )
    day1 = [
        start1,
        end(1, SUB, "+31207654321", "restricted", DAY - 100),  # SUB calls, withheld
        end(2, "+31209999999", "+31205555555", "allowed", DAY - 50),  # not about SUB
    ]
    day2 = [
        end(3, "+31208888888", SUB, "restricted", DAY + 100),  # SUB called by a withheld caller
        end(4, "+31207777777", SUB, "allowed", DAY + 200),  # SUB called, caller shown
        end(5, SUB, SUB, "restricted", DAY + 300),  # SUB calls itself, withheld
    ]
    (d / "cdr-2026-11-27.jsonl").write_text("".join(r.to_json() + "\n" for r in day1))
    (d / "cdr-2026-11-28.jsonl").write_text("".join(r.to_json() + "\n" for r in day2))
    return d


def run_json(
    cfg: Config, number: str, capsys: pytest.CaptureFixture[str], **kw: str | None
) -> dict[str, Any]:
    rc = admin.export(cfg, number, kw.get("since"), kw.get("until"), "json", "-", now=DAY + 1000)
    out = capsys.readouterr().out
    assert rc == 0
    return json.loads(out)  # type: ignore[no-any-return]


def test_json_export_masks_withheld_callers(
    cdr_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    doc = run_json(config(cdr_dir), SUB, capsys)
    assert doc["number"] == SUB
    assert doc["generated"] == "2026-11-28T00:16:40.000Z"
    recs = doc["records"]
    assert [(r["id"][-1], r["kind"]) for r in recs] == [
        ("1", "start"), ("1", "end"), ("3", "end"), ("4", "end"), ("5", "end"),
    ]  # fmt: skip
    by_id = {r["id"][-1]: r for r in recs if r["kind"] == "end"}
    assert by_id["1"]["caller"] == SUB  # their own number shows, withheld or not
    assert by_id["3"]["caller"] == "withheld"  # GDPR art. 15(4)
    assert by_id["3"]["callee"] == SUB
    assert by_id["4"]["caller"] == "+31207777777"  # presented: shown
    assert by_id["5"]["caller"] == SUB
    for r in recs:
        assert tuple(r) == FIELDS
    assert "+31208888888" not in json.dumps(doc)


@pytest.mark.parametrize(
    "form",
    [
        "+31201234567",
        "0201234567",
        "020-123 45 67",
        "(020) 1234567",
        "0031201234567",
        "+31 20 123 4567",
        "tel:+31201234567",
    ],
)
def test_any_number_form(cdr_dir: Path, capsys: pytest.CaptureFixture[str], form: str) -> None:
    doc = run_json(config(cdr_dir), form, capsys)
    assert doc["number"] == SUB
    assert len(doc["records"]) == 5


def test_since_inclusive_until_exclusive(cdr_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cfg = config(cdr_dir)
    doc = run_json(cfg, SUB, capsys, since="2026-11-28")
    assert [r["id"][-1] for r in doc["records"]] == ["3", "4", "5"]
    doc = run_json(cfg, SUB, capsys, until="2026-11-28")
    assert [r["id"][-1] for r in doc["records"]] == ["1", "1"]
    doc = run_json(cfg, SUB, capsys, since="2026-11-28T00:03:20Z", until="2026-11-28T00:05:00Z")
    assert [r["id"][-1] for r in doc["records"]] == ["4"]  # start 00:03:20 in, 00:05:00 out
    doc = run_json(cfg, SUB, capsys, since="2026-11-28T01:03:20+01:00")
    assert [r["id"][-1] for r in doc["records"]] == ["4", "5"]
    assert doc["since"] == "2026-11-28T00:03:20.000Z"


def test_csv_export(cdr_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "export.csv"
    assert admin.export(config(cdr_dir), "0201234567", None, None, "csv", str(out)) == 0
    assert stat.S_IMODE(out.stat().st_mode) == 0o600  # personal data
    rows = list(csv.reader(io.StringIO(out.read_text())))
    assert rows[0][:3] == ["v", "id", "kind"] and len(rows[0]) == 15
    assert len(rows) == 6
    head = rows[0]
    third = dict(zip(head, rows[3], strict=True))
    assert third["caller"] == "withheld"
    assert third["callee"] == SUB
    assert third["emergency"] == "false"
    start = dict(zip(head, rows[1], strict=True))
    assert start["kind"] == "start" and start["end"] == "" and start["duration_ms"] == ""


def test_nothing_about_the_number(cdr_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    doc = run_json(config(cdr_dir), "+441234567890", capsys)
    assert doc["records"] == []


def test_bad_arguments(cdr_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cfg = config(cdr_dir)
    assert admin.export(cfg, "alice", None, None, "json", "-") == 2
    assert admin.export(cfg, SUB, "yesterday", None, "json", "-") == 2
    assert admin.export(cfg, SUB, None, None, "xml", "-") == 2
    assert "export" in capsys.readouterr().err


def test_normalise_candidates() -> None:
    de = Numbering(country_code="49", national_prefix="0", international_prefix="00")
    it = Numbering(country_code="39", national_prefix="", international_prefix="00")
    assert _normalise_candidates("+31 20 123", [NL]) == {"+3120123"}
    assert _normalise_candidates("0201234567", [NL, NL]) == {"0201234567", "+31201234567"}
    assert _normalise_candidates("0201234567", [NL, de]) == {
        "0201234567", "+31201234567", "+49201234567",
    }  # fmt: skip
    assert _normalise_candidates("0031201234567", [NL]) == {"0031201234567", "+31201234567"}
    assert _normalise_candidates("061234567", [it]) == {"061234567", "+39061234567"}
    assert _normalise_candidates("0201234567", [Numbering()]) == {"0201234567"}
    for bad in ("", "+", "abc", "sip:+31201234567@example.net", "1"):
        with pytest.raises(ValueError):
            _normalise_candidates(bad, [NL])


def test_parse_bound() -> None:
    assert parse_bound(None) is None
    assert parse_bound("2026-11-28") == "2026-11-28T00:00:00.000Z"
    assert parse_bound("2026-11-28T12:00:00") == "2026-11-28T12:00:00.000Z"
    assert parse_bound("2026-11-28T12:00:00.5Z") == "2026-11-28T12:00:00.500Z"
    assert parse_bound("2026-11-28T13:00:00+01:00") == "2026-11-28T12:00:00.000Z"
    with pytest.raises(ValueError):
        parse_bound("28/11/2026")
