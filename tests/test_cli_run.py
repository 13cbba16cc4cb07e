"""``sipguard run`` as an operator starts it (SPEC §4), where it cannot start.

A listening port already taken is one line, ``cannot start``, and exit 1, with no
traceback, at once: the CDR writer started before the sockets is stopped on the way out
(``sipguard.net.server.serve``), and the process ends without hanging on it.
"""

from __future__ import annotations

import socket
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def config_on(tmp_path: Path, port: int) -> Path:
    text = (ROOT / "config" / "sipguard.yaml").read_text()
    for old, new in (
        ("  path: var/cdr ", f"  path: {tmp_path / 'cdr'} "),
        (
            "{transport: udp, address: 127.0.0.1, port: 5060}",
            f"{{transport: udp, address: 127.0.0.1, port: {port}}}",
        ),
        (
            "{transport: tcp, address: 127.0.0.1, port: 5060}",
            f"{{transport: tcp, address: 127.0.0.1, port: {port}}}",
        ),
        ("metrics: {address: 127.0.0.1, port: 9460}", "metrics: null"),
    ):
        assert old in text, old
        text = text.replace(old, new, 1)
    cfg = tmp_path / "sipguard.yaml"
    cfg.write_text(text)
    return cfg


def run(cfg: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "sipguard", "run", "-c", str(cfg)],
        cwd=cfg.parent,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_a_port_in_use_is_cannot_start_exit_1(tmp_path: Path) -> None:
    taken = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    taken.bind(("127.0.0.1", 0))
    try:
        cfg = config_on(tmp_path, taken.getsockname()[1])
        first = run(cfg)
        assert first.returncode == 1, first.stderr
        assert "cannot start" in first.stderr and "Traceback" not in first.stderr, first.stderr
    finally:
        taken.close()
    assert (tmp_path / "cdr").is_dir()  # the writer had started
