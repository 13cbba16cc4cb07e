"""The SIP core compiled with mypyc behaves as the pure-Python one.

``tools/build_native.py`` compiles a copy of the package in a temporary directory
(never in place: no ``.so`` is left in the tree), then, in subprocesses that import that
copy, a parse/serialise round trip and the SIP and B2BUA test files run against it.
Skipped only where there is no C compiler.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tools"))

from build_native import MODULES, build_out, compiled_files, sources_hash  # noqa: E402

# what runs against the compiled copy: every test of the compiled modules that does not
# need sockets (the SIPp and driver tests run the pure tree; ``./dev.sh run`` and the load
# runner run the compiled one)
TEST_GLOBS = (
    "tests/test_sip_*.py",
    "tests/test_policy_*.py",
    "tests/test_b2bua_*.py",
    "tests/test_cdr_record.py",  # the record is compiled: the writer and sinks are not
    "tests/test_net_gc.py",
    "tests/test_media_bencode.py",
    "tests/test_media_ng.py",  # its tests against a real rtpengine are left out (-m)
)


def can_compile() -> bool:
    """A C compiler and the Python headers, as setuptools will look for them."""
    cc = (sysconfig.get_config_var("CC") or "cc").split()[0]
    headers = Path(sysconfig.get_paths()["include"]) / "Python.h"
    return shutil.which(cc) is not None and headers.exists()


ROUND_TRIP = textwrap.dedent(
    """
    import copy
    import pickle
    import sys

    from sipguard.sip import errors, framer, message, transaction, uri

    for mod in (errors, uri, message, framer, transaction):
        assert mod.__file__.endswith(".so"), mod.__file__
        assert mod.__file__.startswith(sys.argv[1]), mod.__file__
    data = (
        b"INVITE sip:bob@example.com;user=phone SIP/2.0\\r\\n"
        b"Via: SIP/2.0/UDP 198.51.100.1:5060;branch=z9hG4bK1;rport\\r\\n"
        b"Max-Forwards: 70\\r\\n"
        b'From: "Alice" <sip:alice@example.net>;tag=a1\\r\\n'
        b"To: <sip:bob@example.com>\\r\\n"
        b"Call-ID: c1@198.51.100.1\\r\\n"
        b"CSeq: 1 INVITE\\r\\n"
        b"Contact: <sip:alice@198.51.100.1:5060>\\r\\n"
        b"Content-Length: 4\\r\\n\\r\\nv=0\\n"
    )
    msg = message.parse_message(data)
    msg.validate()
    assert isinstance(msg, message.Request) and msg.method == "INVITE"
    assert msg.top_via.branch == "z9hG4bK1" and msg.top_via.port == 5060
    assert msg.cseq == message.CSeq(1, "INVITE")
    assert msg.from_.tag == "a1" and msg.from_.uri.host == "example.net"
    assert msg.to.tag is None and msg.request_uri.param("user") == "phone"
    assert msg.body == b"v=0\\n"
    for value in (msg.top_via, msg.cseq, msg.from_, msg.request_uri, message.DEFAULT_LIMITS):
        for other in (copy.copy(value), copy.deepcopy(value), pickle.loads(pickle.dumps(value))):
            assert other == value, (value, other)
    from sipguard.policy.decision import Decision

    flow = transaction.Flow("udp", 0, "192.0.2.1", 5060)
    decision = Decision("restricted", "withhold_code", False, False, False)
    for value in (flow, decision):
        for other in (copy.copy(value), copy.deepcopy(value), pickle.loads(pickle.dumps(value))):
            assert other == value and hash(other) == hash(value), (value, other)
    again = message.Request(msg.method, msg.uri, msg.headers, msg.body)
    assert again.to_bytes() == data
    assert framer.StreamFramer().feed(data + data[:10]) == [data]
    try:
        message.parse_message(data.replace(b"CSeq: 1 INVITE", b"CSeq: x")).validate()
        raise AssertionError("not refused")
    except errors.SipError as exc:
        assert exc.status == 400 and exc.response is not None
    print("round trip ok")
    """
)

IS_COMPILED = textwrap.dedent(
    """
    from sipguard.b2bua import call, core, records
    from sipguard.cdr import record
    from sipguard.media import bencode, ng
    from sipguard.policy import decision
    from sipguard.sip import message, timers


    def test_the_core_under_test_is_compiled() -> None:
        for mod in (message, timers, decision, call, core, records, record, bencode, ng):
            assert mod.__file__.endswith(".so"), mod.__file__
    """
)


@pytest.mark.slow
@pytest.mark.skipif(not can_compile(), reason="no C compiler or no Python headers")
def test_compiled_core_passes_the_core_tests(tmp_path: Path) -> None:
    # the copy sits beside a link to the corpus, as the repository sits beside shared/
    shared = ROOT.parent / "shared"
    if shared.exists():
        (tmp_path / "shared").symlink_to(shared)
    tmp_path = tmp_path / "repo"
    in_place = compiled_files(ROOT)  # a build of one's own in the tree is left as it is
    run = subprocess.run(  # in a process of its own: mypyc runs mypy, with its global state
        [sys.executable, str(ROOT / "tools" / "build_native.py"), "--out", str(tmp_path)],
        check=False,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    built = {p.name.split(".")[0] for p in compiled_files(tmp_path)}
    assert {Path(m).stem for m in MODULES} <= built
    assert compiled_files(ROOT) == in_place, "a compiled module was left in the source tree"
    # the copy is current: a second build does nothing; any source edit makes it stale
    assert build_out(ROOT, tmp_path) is False
    assert sources_hash(ROOT) == (tmp_path / ".sources").read_text()

    skip = shutil.ignore_patterns("__pycache__", "*.so", "*.pyd")
    shutil.copytree(ROOT / "tests", tmp_path / "tests", ignore=skip)
    shutil.copytree(ROOT / "testkit", tmp_path / "testkit", ignore=skip)  # the call simulator
    shutil.copytree(ROOT / "docs", tmp_path / "docs")  # the transaction diagrams are checked
    shutil.copy(ROOT / "pyproject.toml", tmp_path)  # mypy and pytest settings
    (tmp_path / "tests" / "test_zz_compiled.py").write_text(IS_COMPILED)

    env = {**os.environ, "PYTHONPATH": str(tmp_path), "PYTHONDONTWRITEBYTECODE": "1"}
    run = subprocess.run(
        [sys.executable, "-c", ROUND_TRIP, str(tmp_path)],
        check=False,
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert run.returncode == 0, run.stdout + run.stderr
    tests = sorted(str(p.relative_to(tmp_path)) for g in TEST_GLOBS for p in tmp_path.glob(g))
    tests.append("tests/test_zz_compiled.py")
    # the session check that every transaction table row was taken (tests/conftest.py)
    # leaves itself out there: the transitions are recorded by monkeypatching
    # Transaction._to, which compiled code (calling it natively) does not see
    args = ["-q", "-p", "no:cacheprovider", "-m", "not rtpengine", *tests]
    run = subprocess.run(
        [sys.executable, "-m", "pytest", *args],
        check=False,
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert run.returncode == 0, run.stdout[-5000:] + run.stderr[-2000:]
