"""SIPVicious (``pip install sipvicious``, the ``test`` extra) against a running sipguard.

Issue 15: ``sipvicious_svmap`` and ``sipvicious_svwar`` from an unknown loopback address
learn nothing: no extension, no version, no ``Server``/``User-Agent``/``Allow``; never
``-A`` (it looks up the machine's address on the Internet).

Where the tools send from:

* svmap honours ``-b``: it sends from 127.0.0.66, which no trunk's sources hold;
* svwar 0.3.8 takes ``-b`` but never passes it on (``TakeASip`` binds to all
  addresses), so it sends from the address the kernel picks for 127.0.0.1, which is
  127.0.0.1 itself (asserted below the same way: an unbound UDP socket connected to
  sipguard). The configuration's trunks (127.0.0.2, 127.0.0.3) do not hold 127.0.0.1,
  so svwar too is a stranger here, and sipguard's ``unknown_source`` count shows that it
  was treated as one.

What sipguard answered is captured from the tools' own debug output (svmap ``-d``,
svwar ``--debug`` print every datagram they receive).

svmap and the SPEC: SPEC §8 has a stranger's requests answered ``403`` until it spends
``limits.unknown_source_budget`` (default 20 per 10 s). svmap lists any address that
answers at all, a ``403`` included (as a device with an ``unknown`` User-Agent), so at the
default budget the box is still found, and only with ``unknown_source_budget: 0`` (silence
from the first request) is nothing listed. Both are tested: the default for "nothing
about sipguard in what it says", the budget of 0 for "no host listed".
"""

from __future__ import annotations

import re
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest

import sipguard
from testkit.sipp import Sipguard, free_port, metric_sum, running, write_config

pytestmark = [pytest.mark.timeout(180)]

BIN = Path(sys.executable).parent
SCANNER = "127.0.0.66"
TIMEOUT = shutil.which("timeout") or "/usr/bin/timeout"
# what would tell a scanner what it found
REVEALING = re.compile(
    rb"server\s*:|user-agent\s*:|allow\s*:|supported\s*:|sipguard|"
    + re.escape(sipguard.__version__.encode()),
    re.I,
)


def tool(name: str, *args: str, limit: int = 60) -> tuple[int, str]:
    exe = BIN / name
    assert exe.exists(), f"{name} is not installed: pip install -e .[test] (sipvicious)"
    proc = subprocess.run(
        [TIMEOUT, "--kill-after=5", str(limit), str(exe), *args],
        capture_output=True,
        timeout=limit + 15,
        check=False,
    )
    return proc.returncode, (proc.stdout + proc.stderr).decode("utf-8", "replace")


def received(output: str) -> list[str]:
    """The datagrams a tool printed as received (``b'SIP/2.0 …'`` reprs)."""
    return re.findall(r"b'(SIP/2\.0 [^']*)'", output)


def kernel_source_for(dest: tuple[str, int]) -> str:
    """The source address an unbound UDP socket gets for ``dest`` (what svwar sends from)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.connect(dest)
        return str(s.getsockname()[0])


def strangers(sg: Sipguard) -> float:
    """Requests sipguard counted from sources that match no trunk (answered or not)."""
    m = sg.metrics()
    return metric_sum(m, "sipguard_rejected_total", reason="unknown_source") + metric_sum(
        m, "sipguard_rejected_total", reason="unknown_source_silenced"
    )


def start(tmp_path: Path, budget: int | None) -> Sipguard:
    limits = {} if budget is None else {"limits": {"unknown_source_budget": budget}}
    setup = write_config(tmp_path, overrides=limits)
    for trunk in setup.config["trunks"].values():
        assert not any(s.startswith(("127.0.0.1/", "127.0.0.66/")) for s in trunk["sources"])
    return Sipguard(setup)


def test_svmap_and_svwar_learn_nothing_about_sipguard(tmp_path: Path) -> None:
    sg = start(tmp_path, None)
    with running(sg):
        sg.start()
        port = str(sg.setup.sip_port)
        dest = ("127.0.0.1", sg.setup.sip_port)
        assert kernel_source_for(dest) == "127.0.0.1"  # where svwar really sends from
        before = strangers(sg)
        svmap_port = str(free_port(SCANNER))
        rc, svmap = tool("sipvicious_svmap", "-b", SCANNER, "-P", svmap_port, "-p", port, "-d",
                         "127.0.0.1")  # fmt: skip
        war_port = str(free_port("0.0.0.0"))
        runs = []
        for method in ("REGISTER", "OPTIONS", "INVITE"):
            rc_w, out = tool(
                "sipvicious_svwar", "-b", SCANNER, "-P", war_port, "-p", port, "--debug",
                "--force", "-m", method, "-e", "100-130,1000,2000,9999", "127.0.0.1",
            )  # fmt: skip
            runs.append((method, rc_w, out))
        after = strangers(sg)
        log = sg.log_path.read_text(errors="replace")
    answers = received(svmap) + [a for _, _, out in runs for a in received(out)]
    context = f"svmap:\n{svmap[-3000:]}\n" + "\n".join(
        f"svwar -m {m} (exit {rc}):\n{out[-2000:]}" for m, rc, out in runs
    )
    assert rc == 0, context
    assert answers, context  # the tools did reach sipguard, and printed what it said
    for text in answers:
        assert text.startswith("SIP/2.0 403 "), context
        assert not REVEALING.search(text.encode()), text
    assert "unknown " in svmap or "| unknown" in svmap, context  # no User-Agent learnt
    for method, rc_w, out in runs:
        assert rc_w == 0, context
        assert "found nothing" in out, f"svwar -m {method} found an extension:\n{out}"
    # every request of the tools came from a stranger's address: counted as such (each
    # answer the tools printed is one; svwar gives up at the first answer it does not know,
    # the 403, so each run sends only a few)
    assert after - before >= max(len(answers), 1 + len(runs)), (before, after, len(answers))
    assert "Traceback" not in log


def test_svmap_lists_nothing_when_strangers_get_silence(tmp_path: Path) -> None:
    sg = start(tmp_path, 0)
    with running(sg):
        sg.start()
        rc, out = tool(
            "sipvicious_svmap", "-b", SCANNER, "-P", str(free_port(SCANNER)),
            "-p", str(sg.setup.sip_port), "-d", "127.0.0.1",
        )  # fmt: skip
        silenced = metric_sum(
            sg.metrics(), "sipguard_rejected_total", reason="unknown_source_silenced"
        )
    assert rc == 30 and "found nothing" in out, out  # svmap's exit status for "nothing"
    assert received(out) == [], out
    assert "127.0.0.1:" not in out, out  # no SIP device listed
    assert silenced >= 1, out
