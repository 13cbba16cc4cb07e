"""Command line: ``sipguard run | check-config | cdr export | cdr purge`` (SPEC §4)."""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import sys
from collections.abc import Sequence
from typing import NoReturn

DEFAULT_CONFIG = "config/sipguard.yaml"
EXIT_CONFIG_ERROR = 2


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="sipguard", description="SIP privacy gateway (B2BUA)")
    sub = p.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="run the proxy in the foreground")
    run.add_argument("-c", "--config", default=DEFAULT_CONFIG)

    chk = sub.add_parser("check-config", help="validate a configuration file")
    chk.add_argument("-c", "--config", default=DEFAULT_CONFIG)

    cdr = sub.add_parser("cdr", help="usage data: export and purge")
    cdr.add_argument("-c", "--config", default=DEFAULT_CONFIG)
    cdr_sub = cdr.add_subparsers(dest="cdr_command", required=True)
    exp = cdr_sub.add_parser("export", help="all usage data about one number")
    exp.add_argument("-c", "--config", default=argparse.SUPPRESS)
    exp.add_argument("--number", required=True)
    exp.add_argument("--since", default=None, help="YYYY-MM-DD or ISO 8601 timestamp (UTC)")
    exp.add_argument("--until", default=None, help="YYYY-MM-DD or ISO 8601 timestamp (UTC)")
    exp.add_argument("--format", choices=("json", "csv"), default="json")
    exp.add_argument("-o", "--output", default="-", help="file to write (default: stdout)")
    pur = cdr_sub.add_parser("purge", help="delete usage data older than the retention")
    pur.add_argument("-c", "--config", default=argparse.SUPPRESS)
    pur.add_argument("--dry-run", action="store_true")
    return p


def _exit_now(code: int) -> NoReturn:
    """End ``sipguard run`` once it has stopped: its CDRs stored, its sockets closed.

    What the interpreter would still do is tear down: a garbage collection over every
    object the last 64*T1 of transactions left behind, and freeing them one by one. After
    a run at 3,000 calls/s that is 1.2 to 1.8 s at 100% of a core between the sockets
    closing and the process ending (a restart waits for it). The kernel takes the memory
    back at once instead; the logs and standard streams are flushed first.
    """
    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    os._exit(code)


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    from sipguard.config.loader import ConfigError, load_config

    try:
        config = load_config(args.config)
    except ConfigError as exc:
        print(str(exc), file=sys.stderr)
        return EXIT_CONFIG_ERROR

    if args.command == "check-config":
        print(f"{args.config}: OK ({len(config.trunks)} trunks)")
        return 0
    if args.command == "run":
        from sipguard.net.logs import setup_logging
        from sipguard.net.server import run

        # log_format applied here: the basicConfig() in run() leaves a configured root be
        setup_logging(config.log_level, config.log_format)
        _exit_now(run(config, args.config))
    if args.command == "cdr":
        from sipguard.cdr import admin

        if args.cdr_command == "export":
            return admin.export(
                config, args.number, args.since, args.until, args.format, args.output
            )
        return admin.purge(config, dry_run=args.dry_run)
    return 2  # pragma: no cover - argparse enforces the choices


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
