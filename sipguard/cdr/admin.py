"""``sipguard cdr export`` and ``sipguard cdr purge`` (SPEC open_sink41.5).

Export: every record where the number is the caller or the callee, from either sink, as
JSON (``{"number", "matched_numbers", "since", "until", "generated", "records": [...]}``)
or CSV (a header row, then one row per record). The number may be given in any form the
trunks' numbering understands (``0201234567``, ``+31 20 123 4567``, ``0031201234567``).
Where the number is the callee and the caller withheld theirs (``presentation:
restricted``), the caller field reads ``withheld`` (GDPR art. 15(4)); a subscriber's own
number always shows. ``--since``/``--until`` are ``YYYY-MM-DD`` (midnight UTC) or ISO
8601 timestamps (UTC unless they carry an offset) and select on the call's ``start``:
``since`` inclusive, ``until`` exclusive (``--until 2026-12-01`` ends with November).

Purge: deletes what is older than the retention (see :mod:`sipguard.cdr.retention`) and
prints what it removed; ``--dry-run`` prints what it would remove and removes nothing.

Exit status: 0 done, 1 the sink failed (database unreachable, disk error), 2 bad argument.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import os
import re
import sys
import time
from collections.abc import Iterable, Iterator
from datetime import UTC, date, datetime
from typing import IO, Any, Final

from sipguard.cdr.record import FIELDS, CdrRecord, datetime_to_ts, format_ts
from sipguard.cdr.registry import open_sink
from sipguard.cdr.retention import purge as purge_sink
from sipguard.cdr.sink import SinkError
from sipguard.config.model import Config, Numbering

WITHHELD: Final = "withheld"
EXIT_OK: Final = 0
EXIT_SINK: Final = 1
EXIT_USAGE: Final = 2

_SEPARATORS: Final = re.compile(r"[\s\-./()\u00a0]")
_NUMBER: Final = re.compile(r"\+?[0-9]{2,32}")
_KIND_ORDER: Final = {"start": 0, "end": 1}


def _normalise_candidates(number: str, numberings: Iterable[Numbering]) -> frozenset[str]:
    """The forms of ``number`` that records may hold: E.164 by each trunk numbering, and
    the number as given (without visual separators). ValueError if it is not a number."""
    s = _SEPARATORS.sub("", number.strip())
    if s.lower().startswith("tel:"):
        s = s[4:]
    if _NUMBER.fullmatch(s) is None:
        raise ValueError(f"not a telephone number: {number!r}")
    if s.startswith("+"):
        return frozenset({s})
    out = {s}
    for n in numberings:
        if n.international_prefix and s.startswith(n.international_prefix):
            rest = s[len(n.international_prefix) :]
            if rest:
                out.add("+" + rest)
        elif n.country_code and n.national_prefix and s.startswith(n.national_prefix):
            rest = s[len(n.national_prefix) :]
            if rest:
                out.add("+" + n.country_code + rest)
        elif n.country_code and not n.national_prefix:
            out.add("+" + n.country_code + s)
    return frozenset(out)


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
        data["caller"] = WITHHELD  # the subscriber is the callee: the caller stays withheld
    return data


@contextlib.contextmanager
def _open_output(output: str) -> Iterator[IO[str]]:
    if output == "-":
        yield sys.stdout
        sys.stdout.flush()
        return
    # Personal data: readable by its owner only.
    fd = os.open(output, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with open(fd, "w", encoding="utf-8", newline="") as f:
        yield f


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
        numbers = _normalise_candidates(number, _numberings(config))
        since_ts = parse_bound(since)
        until_ts = parse_bound(until)
    except ValueError as exc:
        print(f"sipguard cdr export: {exc}", file=sys.stderr)
        return EXIT_USAGE
    if fmt not in ("json", "csv"):
        print(f"sipguard cdr export: unknown format {fmt!r}", file=sys.stderr)
        return EXIT_USAGE
    try:
        sink = open_sink(config.cdr)
        try:
            records = list(sink.iter_records(since_ts, until_ts, numbers))
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
    shown = e164[0] if len(e164) == 1 else _SEPARATORS.sub("", number.strip())

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
