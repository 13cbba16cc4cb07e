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
from sipguard.cdr.admin import export_numbers, parse_bound
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


def test_export_numbers() -> None:
    de = Numbering(country_code="49", national_prefix="0", international_prefix="00")
    assert export_numbers("+31 20 123", [NL]) == {"+3120123"}
    assert export_numbers("0201234567", [NL, NL]) == {"0201234567", "+31201234567"}
    assert export_numbers("0031201234567", [NL]) == {"0031201234567", "+31201234567"}
    assert export_numbers("0031201234567", [NL, de]) == {"0031201234567", "+31201234567"}
    assert export_numbers("0201234567", [Numbering()]) == {"0201234567"}
    assert export_numbers("%2B31201234567;phone-context=x", [NL]) == {"+31201234567"}
    assert export_numbers("020/123\u00a045\t67", [NL]) == {"0201234567", "+31201234567"}
    for bad in ("", "+", "abc", "sip:+31201234567@example.net", "1", "+0201234567"):
        with pytest.raises(ValueError):
            export_numbers(bad, [NL])


def test_export_numbers_is_the_policy_normaliser() -> None:
    """The export reads a number exactly as the B2BUA wrote it into records
    (policy.numbers.to_e164): a trunk without a national prefix converts only '+' and
    international forms, so '061234567' is recorded, and found, as dialled."""
    it = Numbering(country_code="39", national_prefix="", international_prefix="00")
    assert export_numbers("061234567", [it]) == {"061234567"}
    assert export_numbers("0039061234567", [it]) == {"0039061234567", "+39061234567"}


def test_ambiguous_national_number_is_refused(
    cdr_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """'0201234567' is +31201234567 on one trunk and +49201234567 on another: two
    people. An export of both would hand one person's usage data to the other."""
    de = Numbering(country_code="49", national_prefix="0", international_prefix="00")
    with pytest.raises(ValueError, match=r"\+31201234567, \+49201234567"):
        export_numbers("0201234567", [NL, de])
    cfg = config(cdr_dir)
    cfg = Config(
        source="<test>",
        listen=(),
        trunks={**cfg.trunks, "de": Trunk(name="de", numbering=de)},
        cdr=cfg.cdr,
    )
    assert admin.export(cfg, "0201234567", None, None, "json", "-") == 2
    assert "E.164" in capsys.readouterr().err
    assert run_json(cfg, SUB, capsys)["records"]  # the E.164 form works


def test_parse_bound() -> None:
    assert parse_bound(None) is None
    assert parse_bound("2026-11-28") == "2026-11-28T00:00:00.000Z"
    assert parse_bound("2026-11-28T12:00:00") == "2026-11-28T12:00:00.000Z"
    assert parse_bound("2026-11-28T12:00:00.5Z") == "2026-11-28T12:00:00.500Z"
    assert parse_bound("2026-11-28T13:00:00+01:00") == "2026-11-28T12:00:00.000Z"
    with pytest.raises(ValueError):
        parse_bound("28/11/2026")


def test_withheld_caller_trunk_is_withheld_too(
    cdr_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The trunk a withheld call came in on can name the caller's company (a customer's
    PBX trunk): in the callee's export it is withheld with the number (art. 15(4))."""
    recs = run_json(config(cdr_dir), SUB, capsys)["records"]
    by_id = {r["id"][-1]: r for r in recs if r["kind"] == "end"}
    assert by_id["3"]["trunk_in"] == "withheld"
    assert by_id["1"]["trunk_in"] == "customers"  # their own call
    assert by_id["4"]["trunk_in"] == "customers"  # a presented caller


def test_csv_export_masks_withheld_callers(cdr_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "export.csv"
    assert admin.export(config(cdr_dir), SUB, None, None, "csv", str(out)) == 0
    text = out.read_text()
    assert "+31208888888" not in text
    rows = list(csv.DictReader(io.StringIO(text)))
    third = [r for r in rows if r["id"].endswith("3")]
    assert third and all(r["caller"] == r["trunk_in"] == "withheld" for r in third)


def test_export_file_replaces_never_writes_through(cdr_dir: Path, tmp_path: Path) -> None:
    """An existing file keeps no looser mode (0644 before, 0600 after), and a symbolic
    link is replaced, not followed: personal data never lands in the link's target."""
    out = tmp_path / "export.json"
    out.write_text("old")
    out.chmod(0o644)
    assert admin.export(config(cdr_dir), SUB, None, None, "json", str(out)) == 0
    assert stat.S_IMODE(out.stat().st_mode) == 0o600
    assert json.loads(out.read_text())["number"] == SUB

    target = tmp_path / "elsewhere.txt"
    target.write_text("keep")
    link = tmp_path / "link.json"
    link.symlink_to(target)
    assert admin.export(config(cdr_dir), SUB, None, None, "json", str(link)) == 0
    assert target.read_text() == "keep"
    assert not link.is_symlink() and stat.S_IMODE(link.stat().st_mode) == 0o600
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".sipguard")] == []


def test_failed_export_leaves_no_partial_file(
    cdr_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "export.json"
    out.write_text("previous export")

    def boom(fd: int) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(admin.os, "fsync", boom)
    assert admin.export(config(cdr_dir), SUB, None, None, "json", str(out)) == 1
    assert out.read_text() == "previous export"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cdr", "export.json"]


def test_missing_cdr_directory_is_an_error_not_an_empty_export(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A relative cdr.path read from another directory (or a wrong -c) finds no files:
    answering a subject access request with "no records" would be false."""
    monkeypatch.chdir(tmp_path)
    cfg = config(Path("var/cdr"))
    assert admin.export(cfg, SUB, None, None, "json", "-") == 1
    err = capsys.readouterr().err
    assert f"{tmp_path}/var/cdr" in err and "not a directory" in err
    assert admin.purge(cfg, dry_run=True, out=io.StringIO()) == 1


def test_a_record_stored_twice_is_exported_once(
    cdr_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    day2 = cdr_dir / "cdr-2026-11-28.jsonl"
    lines = day2.read_text().splitlines(keepends=True)
    day2.write_text("".join(lines) + lines[0])  # a retried batch, say
    recs = run_json(config(cdr_dir), SUB, capsys)["records"]
    keys = [(r["id"], r["kind"]) for r in recs]
    assert len(keys) == len(set(keys)) == 5
