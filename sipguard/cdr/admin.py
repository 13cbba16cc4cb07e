"""``sipguard cdr export`` and ``sipguard cdr purge`` (SPEC §1.5, §4).

Export: every record where the number is the caller or the callee, from either sink, as
JSON (``{"number", "matched_numbers", "since", "until", "generated", "records": [...]}``)
or CSV (a header row, then one row per record). The number may be given in any form the
trunks' numbering understands (``0201234567``, ``+31 20 123 4567``, ``0031201234567``):
it is normalised by the same functions that made the records' numbers
(:func:`sipguard.policy.numbers.to_e164`, :func:`~sipguard.policy.numbers.clean_number`).
A national form that two trunks' numberings read as two different E.164 numbers is
refused (give it in E.164): an export must never hold another person's usage data.
Where the number is the callee and the caller withheld theirs (``presentation:
restricted``), the caller field, and ``trunk_in`` (the trunk the call came from, which can
name the caller's company PBX), read ``withheld`` (GDPR art. 15(4)); a subscriber's own
number always shows. ``--since``/``--until`` are ``YYYY-MM-DD`` (midnight UTC) or ISO
8601 timestamps (UTC unless they carry an offset) and select on the call's ``start``:
``since`` inclusive, ``until`` exclusive (``--until 2026-12-01`` ends with November).
A record stored twice (same ``(id, kind)``) is exported once. The file (``-o``) is
written whole or not at all, readable by its owner only (0600), and replaces a file of
that name rather than writing through it.

Purge: deletes what is older than the retention (see :mod:`sipguard.cdr.retention`) and
prints what it removed; ``--dry-run`` prints what it would remove and removes nothing.

With the file sink, ``cdr.path`` must exist (a relative path is read from the current
directory): otherwise both commands fail rather than answer "no records".

Exit status: 0 done, 1 the sink failed (database unreachable, disk error, no CDR
directory), 2 bad argument.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import os
import re
import stat
import sys
import tempfile
import time
from collections.abc import Iterable, Iterator
from datetime import UTC, date, datetime
from typing import IO, Any, Final

from sipguard.cdr.record import FIELDS, CdrRecord, datetime_to_ts, format_ts
from sipguard.cdr.registry import open_sink
from sipguard.cdr.retention import purge as purge_sink
from sipguard.cdr.sink import SinkError
from sipguard.config.model import CdrConfig, Config, Numbering
from sipguard.policy.numbers import clean_number, is_e164, to_e164

WITHHELD: Final = "withheld"
EXIT_OK: Final = 0
EXIT_SINK: Final = 1
EXIT_USAGE: Final = 2

# What people put between digits beyond RFC 3966's visual separators (which
# clean_number drops): any white space (also no-break space) and '/' (020/1234567).
_EXTRA_SEPARATORS: Final = re.compile(r"[\s/]")
_NUMBER: Final = re.compile(r"\+?[0-9]{2,32}")
_KIND_ORDER: Final = {"start": 0, "end": 1}


def export_numbers(number: str, numberings: Iterable[Numbering]) -> frozenset[str]:
    """The forms of ``number`` that records may hold: its E.164 form under the trunks'
    numberings (by :func:`~sipguard.policy.numbers.to_e164`, as the B2BUA made the
    records' numbers) and the number as given (a callee that no numbering could convert
    is recorded as dialled). ValueError if it is not a number, or if the numberings read
    it as two different E.164 numbers (two people: give it in E.164)."""
    text = number.strip()
    if text[:4].lower() == "tel:":
        text = text[4:]
    s = clean_number(_EXTRA_SEPARATORS.sub("", text))
    if _NUMBER.fullmatch(s) is None:
        raise ValueError(f"not a telephone number: {number!r}")
    if s.startswith("+"):
        if not is_e164(s):
            raise ValueError(f"not an E.164 number: {number!r}")
        return frozenset({s})
    e164 = {n for n in (to_e164(s, numbering) for numbering in numberings) if n is not None}
    if len(e164) > 1:
        raise ValueError(
            f"{number!r} is a different number under different trunks' numbering "
            f"({', '.join(sorted(e164))}): give it in E.164"
        )
    return frozenset({s, *e164})


def parse_bound(text: str | None) -> str | None:
    """``YYYY-MM-DD`` (midnight UTC) or an ISO 8601 timestamp (UTC if naive) to a record
    timestamp; None stays None. ValueError otherwise."""
    if text is None or not text.strip():
        return None
    text = text.strip()
    try:
        if len(text) == 10:
            d = date.fromisoformat(text)
            return datetime(d.year, d.month, d.day, tzinfo=UTC).strftime("%Y-%m-%dT%H:%M:%S.000Z")
        dt = datetime.fromisoformat(text)
    except ValueError:
        raise ValueError(f"not a date (YYYY-MM-DD) or ISO 8601 timestamp: {text!r}") from None
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)
    return datetime_to_ts(dt.astimezone(UTC))


def _numberings(config: Config) -> list[Numbering]:
    seen: list[Numbering] = []
    for trunk in config.trunks.values():
        if trunk.numbering not in seen:
            seen.append(trunk.numbering)
    return seen


def _masked(rec: CdrRecord, numbers: frozenset[str]) -> dict[str, Any]:
    data = rec.to_dict()
    if rec.presentation == "restricted" and rec.caller not in numbers:
        # the subscriber is the callee: the caller stays withheld, and so does the trunk
        # the call came from (a customer's PBX trunk names the caller's company)
        data["caller"] = WITHHELD
        data["trunk_in"] = WITHHELD
    return data


def _unique(records: Iterable[CdrRecord]) -> list[CdrRecord]:
    """Each ``(id, kind)`` once (a record stored twice is one record)."""
    seen: set[tuple[str, str]] = set()
    out: list[CdrRecord] = []
    for rec in records:
        if rec.key not in seen:
            seen.add(rec.key)
            out.append(rec)
    return out


def _check_store(cfg: CdrConfig) -> None:
    """OSError if the file sink's directory is not there (a wrong ``-c``, or a relative
    ``cdr.path`` read from another directory): an export must not say "no records"."""
    if cfg.sink == "file" and not os.path.isdir(cfg.path):
        where = cfg.path
        if not os.path.isabs(where):
            where += f" (= {os.path.abspath(where)})"
        raise OSError(f"cdr.path {where} is not a directory: no CDRs there")


@contextlib.contextmanager
def _open_output(output: str) -> Iterator[IO[str]]:
    """Where the export goes. A file is written to a temporary file beside it (0600,
    personal data: readable by its owner only) and renamed over ``output`` once complete:
    never a partial export, never the mode of a file that was there, never through a
    symbolic link. A device or pipe (``/dev/stdout``) is written to as it is."""
    if output == "-":
        yield sys.stdout
        sys.stdout.flush()
        return
    try:
        st: os.stat_result | None = os.stat(output)
    except FileNotFoundError:
        st = None
    if st is not None and not stat.S_ISREG(st.st_mode) and not stat.S_ISDIR(st.st_mode):
        with open(output, "w", encoding="utf-8", newline="") as f:
            yield f
        return
    directory = os.path.dirname(output) or "."
    fd, tmp = tempfile.mkstemp(prefix=".sipguard-export-", dir=directory)  # mode 0600
    try:
        with open(fd, "w", encoding="utf-8", newline="") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, output)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def _csv_value(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def export(
    config: Config,
    number: str,
    since: str | None,
    until: str | None,
    fmt: str,
    output: str,
    *,
    now: float | None = None,
) -> int:
    """Write every record about ``number`` to ``output`` (``-``: stdout); exit status."""
    try:
        numbers = export_numbers(number, _numberings(config))
        since_ts = parse_bound(since)
        until_ts = parse_bound(until)
    except ValueError as exc:
        print(f"sipguard cdr export: {exc}", file=sys.stderr)
        return EXIT_USAGE
    if fmt not in ("json", "csv"):
        print(f"sipguard cdr export: unknown format {fmt!r}", file=sys.stderr)
        return EXIT_USAGE
    try:
        _check_store(config.cdr)
        sink = open_sink(config.cdr)
        try:
            records = _unique(sink.iter_records(since_ts, until_ts, numbers))
        finally:
            sink.close()
    except (SinkError, OSError) as exc:
        print(f"sipguard cdr export: {exc}", file=sys.stderr)
        return EXIT_SINK
    except ValueError as exc:  # e.g. sink: postgres without a dsn
        print(f"sipguard cdr export: {exc}", file=sys.stderr)
        return EXIT_USAGE
    records.sort(key=lambda r: (r.start, r.id, _KIND_ORDER[r.kind]))
    rows = [_masked(r, numbers) for r in records]
    e164 = sorted(n for n in numbers if n.startswith("+"))
    shown = e164[0] if e164 else min(numbers)

    if fmt == "json":
        doc = {
            "number": shown,
            "matched_numbers": sorted(numbers),
            "since": since_ts,
            "until": until_ts,
            "generated": format_ts(time.time() if now is None else now),
            "records": rows,
        }
        text = json.dumps(doc, indent=2, ensure_ascii=False) + "\n"
    else:
        buf = io.StringIO()
        w = csv.writer(buf)
        w.writerow(FIELDS)
        for row in rows:
            w.writerow([_csv_value(row[f]) for f in FIELDS])
        text = buf.getvalue()
    try:
        with _open_output(output) as out:
            out.write(text)
    except OSError as exc:
        print(f"sipguard cdr export: {output}: {exc.strerror or exc}", file=sys.stderr)
        return EXIT_SINK
    if output != "-":
        print(f"sipguard cdr export: {len(rows)} records written to {output}", file=sys.stderr)
    return EXIT_OK


def purge(
    config: Config,
    dry_run: bool = False,
    *,
    now: float | None = None,
    out: IO[str] | None = None,
) -> int:
    """Delete usage data older than ``cdr.retention_days``; print what went. Exit status."""
    out = out if out is not None else sys.stdout
    cfg = config.cdr
    try:
        _check_store(cfg)
        sink = open_sink(cfg)
        try:
            summary = purge_sink(
                sink, time.time() if now is None else now, cfg.retention_days, dry_run=dry_run
            )
        finally:
            sink.close()
    except (SinkError, OSError) as exc:
        print(f"sipguard cdr purge: {exc}", file=sys.stderr)
        return EXIT_SINK
    except ValueError as exc:  # e.g. sink: postgres without a dsn
        print(f"sipguard cdr purge: {exc}", file=sys.stderr)
        return EXIT_USAGE
    verb = "would remove" if dry_run else "removed"
    print(
        f"retention {cfg.retention_days} days: {verb} records from before "
        f"{summary.cutoff.isoformat()} (UTC)",
        file=out,
    )
    for what, n in summary.items:
        print(f"{verb} {what} ({n} records)", file=out)
    files = sum(1 for what, _ in summary.items if not what.startswith("table "))
    if not summary.items:
        print("nothing to remove", file=out)
    elif cfg.sink == "file":
        print(f"{verb} {files} files, {summary.records} records in total", file=out)
    else:
        print(f"{verb} {summary.records} records in total", file=out)
    return EXIT_OK
