"""Docker for the image tests (``tests/test_ops_docker.py``): a daemon, a base, images.

* :func:`daemon` gives a Docker daemon: the one the environment names
  (``DOCKER_HOST``, else ``/var/run/docker.sock``) where it answers; otherwise, as root,
  a ``dockerd`` of its own, started here by its PID with a private data root
  (``/var/lib/sipguard-tests/docker``, kept between runs so that the base image and the
  build cache are) and stopped by its PID at the end. That daemon has no bridge and no
  iptables rules: every container of these tests uses the host's network, on loopback.
  Where no daemon can run (not root, no ``dockerd``, no overlay or cgroups), it raises
  :class:`DockerUnavailableError` with the reason, and the tests skip with it.
* :func:`ensure_base` makes the Debian bookworm base: ``debootstrap --variant=minbase``
  from the mirror this host's apt uses (read from its apt sources, never written down
  here), imported with ``docker import``; kept while it is younger than a week. Where
  debootstrap cannot run (not root), Docker Hub's ``debian:bookworm-slim`` if it can be
  pulled.
* :func:`build` runs ``docker build`` on the host's network, bounded by a timeout.

Everything is bounded by timeouts; one test run at a time uses the private daemon (a lock
file), so that two runs on one machine wait for each other instead of colliding.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import fcntl
import json
import os
import re
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from testkit.sipp import stop_foreign_pid

DATA_ROOT = Path("/var/lib/sipguard-tests/docker")
EXEC_ROOT = Path("/run/sgt-docker")  # short: containerd's socket paths must stay short
SOCKET = EXEC_ROOT / "docker.sock"
LOCK = Path("/run/sipguard-tests-docker.lock")
LOCK_WAIT_S = 480.0
BASE_IMAGE = "sipguard-base:bookworm"
BASE_MAX_AGE = dt.timedelta(days=7)
FALLBACK_BASE = "debian:bookworm-slim"  # Docker Hub's, where debootstrap cannot run


class DockerUnavailableError(Exception):
    """No Docker daemon can run here; the message says why."""


@dataclass
class Docker:
    """A Docker daemon that answers, and how to reach it."""

    env: dict[str, str]
    own: bool  # started here (and so stopped here, its images pruned)
    compose: list[str] = field(default_factory=list)  # docker-compose, or docker compose
    log: Path | None = None

    def run(
        self, *args: str, timeout: float = 60.0, check: bool = True, input: bytes | None = None
    ) -> subprocess.CompletedProcess[str]:
        """``docker ARGS``; output captured as text. ``check``: fail on a non-zero exit."""
        proc = subprocess.run(
            ["docker", *args],
            env=self.env,
            input=input.decode() if input is not None else None,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        if check and proc.returncode != 0:
            raise RuntimeError(
                f"docker {' '.join(args)}: exit {proc.returncode}\n{proc.stdout[-3000:]}"
                f"\n{proc.stderr[-3000:]}"
            )
        return proc

    def inspect(self, kind: str, name: str) -> dict[str, Any] | None:
        proc = self.run(kind, "inspect", name, check=False, timeout=30)
        if proc.returncode != 0:
            return None
        data = json.loads(proc.stdout)
        return data[0] if data else None


def _answers(env: dict[str, str], timeout: float = 20.0) -> bool:
    try:
        proc = subprocess.run(
            ["docker", "info", "--format", "{{.ServerVersion}}"],
            env=env,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired):
        return False
    return proc.returncode == 0 and bool(proc.stdout.strip())


def _compose_command(env: dict[str, str]) -> list[str]:
    """``docker-compose`` (Debian's 1.29) where installed, else the ``docker compose``
    plugin; empty when neither is there."""
    if shutil.which("docker-compose"):
        return ["docker-compose"]
    with contextlib.suppress(OSError, subprocess.TimeoutExpired):
        proc = subprocess.run(
            ["docker", "compose", "version"], env=env, capture_output=True, timeout=20, check=False
        )
        if proc.returncode == 0:
            return ["docker", "compose"]
    return []


@contextlib.contextmanager
def _lock() -> Iterator[None]:
    """One test run at a time on this machine's private daemon (another one waits)."""
    LOCK.parent.mkdir(parents=True, exist_ok=True)
    with open(LOCK, "w") as f:
        deadline = time.monotonic() + LOCK_WAIT_S
        while True:
            try:
                fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise RuntimeError(
                        f"another test run held {LOCK} (the Docker tests) for {LOCK_WAIT_S:.0f} s"
                    ) from None
                time.sleep(1.0)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


@contextlib.contextmanager
def daemon(workdir: Path) -> Iterator[Docker]:
    """A Docker daemon for the tests; see the module docstring. ``workdir`` gets its log."""
    if shutil.which("docker") is None:
        raise DockerUnavailableError("no docker command (Debian: apt-get install docker.io)")
    env = dict(os.environ)
    if _answers(env, timeout=10):
        yield Docker(env=env, own=False, compose=_compose_command(env))
        return
    if os.geteuid() != 0:
        raise DockerUnavailableError("no Docker daemon answers, and only root can start dockerd")
    dockerd = shutil.which("dockerd") or "/usr/sbin/dockerd"
    if not os.access(dockerd, os.X_OK):
        raise DockerUnavailableError("no dockerd (Debian: apt-get install docker.io)")
    with _lock():
        env["DOCKER_HOST"] = f"unix://{SOCKET}"
        pidfile = EXEC_ROOT / "dockerd.pid"
        if _answers(env, timeout=10):  # left running by a run that was killed: ours anyway
            try:
                yield Docker(env=env, own=True, compose=_compose_command(env))
            finally:
                with contextlib.suppress(OSError, ValueError):
                    _stop_pid(int(pidfile.read_text().strip()))
            return
        DATA_ROOT.mkdir(parents=True, exist_ok=True)
        EXEC_ROOT.mkdir(parents=True, exist_ok=True)
        log = workdir / "dockerd.log"
        cmd = [
            dockerd,
            "--data-root",
            str(DATA_ROOT),
            "--exec-root",
            str(EXEC_ROOT / "exec"),
            "--pidfile",
            str(pidfile),
            "--host",
            f"unix://{SOCKET}",
            "--storage-driver",
            "overlay2",
            # host networking only: no bridge, no NAT rules on this machine
            "--bridge=none",
            "--iptables=false",
            "--ip6tables=false",
        ]
        with open(log, "wb") as out:
            proc = subprocess.Popen(
                cmd, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT
            )
        try:
            deadline = time.monotonic() + 60
            while not _answers(env, timeout=5):
                if proc.poll() is not None or time.monotonic() > deadline:
                    tail = log.read_text(errors="replace")[-2000:]
                    raise DockerUnavailableError(f"dockerd cannot run here:\n{tail}")
                time.sleep(0.5)
            yield Docker(env=env, own=True, compose=_compose_command(env), log=log)
        finally:
            _stop(proc)
            # the network namespace dockerd keeps mounted there outlives it
            netns = EXEC_ROOT / "exec" / "netns" / "default"
            if netns.exists():
                subprocess.run(["umount", str(netns)], capture_output=True, timeout=30, check=False)


def _stop_pid(pid: int) -> None:
    """SIGTERM a dockerd this process did not start (a killed run's) by its PID."""
    stop_foreign_pid(pid, signal.SIGTERM, step=0.5)


def _stop(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM dockerd by its PID (it stops its containers and its containerd), then KILL."""
    if proc.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.kill(proc.pid, signal.SIGTERM)
    try:
        proc.wait(30)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.kill(proc.pid, signal.SIGKILL)
        proc.wait(10)


# -- the base image ------------------------------------------------------------------------


def _deb822_mirrors(text: str) -> Iterator[tuple[str, list[str], list[str]]]:
    for stanza in re.split(r"\n\s*\n", text):
        fields: dict[str, str] = {}
        key = ""
        for line in stanza.splitlines():
            if line.startswith("#") or not line.strip():
                continue
            if line[0].isspace() and key:
                fields[key] += " " + line.strip()
                continue
            key, _, value = line.partition(":")
            key = key.strip().lower()
            fields[key] = value.strip()
        if "deb" not in fields.get("types", "").split():
            continue
        if fields.get("enabled", "yes").lower() == "no":
            continue
        for uri in fields.get("uris", "").split():
            yield uri, fields.get("suites", "").split(), fields.get("components", "").split()


def _one_line_mirrors(text: str) -> Iterator[tuple[str, list[str], list[str]]]:
    for line in text.splitlines():
        words = re.sub(r"\[[^\]]*\]", "", line.split("#", 1)[0]).split()  # no [options]
        if len(words) >= 3 and words[0] == "deb":
            yield words[1], [words[2]], words[3:]


def apt_mirror(etc: Path = Path("/etc/apt")) -> str | None:
    """The Debian mirror this host's apt takes bookworm's main component from, or None."""
    found: list[tuple[str, list[str], list[str]]] = []
    files = [etc / "sources.list", *sorted((etc / "sources.list.d").glob("*"))]
    for path in files:
        try:
            text = path.read_text(errors="replace")
        except OSError:
            continue
        if path.suffix == ".sources":
            found += _deb822_mirrors(text)
        elif path.suffix == ".list" or path.name == "sources.list":
            found += _one_line_mirrors(text)
    for uri, suites, components in found:
        if "bookworm" in suites and "main" in components and uri.startswith("http"):
            return uri
    return None


def _image_age(docker: Docker, image: str) -> dt.timedelta | None:
    info = docker.inspect("image", image)
    if info is None:
        return None
    created = dt.datetime.fromisoformat(info["Created"][:19]).replace(tzinfo=dt.UTC)
    return dt.datetime.now(dt.UTC) - created


def ensure_base(docker: Docker, log: list[str]) -> str:
    """The Debian bookworm base image: kept, or made with debootstrap (about 30 s)."""
    age = _image_age(docker, BASE_IMAGE)
    if age is not None and age < BASE_MAX_AGE:
        log.append(f"base {BASE_IMAGE}: kept ({age.days} days old)")
        return BASE_IMAGE
    mirror = apt_mirror()
    debootstrap = shutil.which("debootstrap") or "/usr/sbin/debootstrap"
    if mirror is None or not os.access(debootstrap, os.X_OK) or os.geteuid() != 0:
        why = (
            "no bookworm mirror in /etc/apt"
            if mirror is None
            else "debootstrap needs root"
            if os.geteuid() != 0
            else "no debootstrap (Debian: apt-get install debootstrap)"
        )
        # where Docker Hub is reached, its image does as well
        pulled = docker.run("pull", FALLBACK_BASE, check=False, timeout=300)
        if pulled.returncode != 0:
            raise RuntimeError(
                f"cannot make the base image: {why}; {FALLBACK_BASE}: {pulled.stderr}"
            )
        log.append(f"base {FALLBACK_BASE}: pulled ({why})")
        return FALLBACK_BASE
    start = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="sipguard-base-", dir="/var/tmp") as tmp:
        root = Path(tmp) / "root"
        proc = subprocess.run(
            [debootstrap, "--variant=minbase", "bookworm", str(root), mirror],
            capture_output=True,
            text=True,
            timeout=480,
            check=False,
        )
        if proc.returncode != 0:
            raise RuntimeError(f"debootstrap failed:\n{(proc.stdout + proc.stderr)[-3000:]}")
        # as lean as debian:bookworm-slim's: the package lists and caches go
        for junk in ("var/lib/apt/lists", "var/cache/apt", "var/log"):
            for p in (root / junk).glob("*"):
                if p.is_dir() and not p.is_symlink():
                    shutil.rmtree(p)
                else:
                    p.unlink()
        tar = subprocess.Popen(["tar", "-C", str(root), "-c", "."], stdout=subprocess.PIPE)
        try:
            imported = subprocess.run(
                ["docker", "import", "-", BASE_IMAGE],
                env=docker.env,
                stdin=tar.stdout,
                capture_output=True,
                text=True,
                timeout=300,
                check=False,
            )
        finally:
            assert tar.stdout is not None
            tar.stdout.close()
            tar.wait(60)
        if imported.returncode != 0:
            raise RuntimeError(f"docker import failed: {imported.stderr[-2000:]}")
    log.append(f"base {BASE_IMAGE}: debootstrap and import took {time.monotonic() - start:.0f} s")
    return BASE_IMAGE


def build(
    docker: Docker,
    tag: str,
    context: Path,
    *,
    base: str,
    dockerfile: Path | None = None,
    target: str | None = None,
    workdir: Path,
    timeout: float = 600.0,
    extra: Sequence[str] = (),
) -> float:
    """``docker build`` (classic builder, host network); the seconds it took. The output
    goes to ``workdir/build-<tag>.log``."""
    args = ["build", "--network", "host", "--build-arg", f"BASE={base}", "-t", tag]
    if dockerfile is not None:
        args += ["-f", str(dockerfile)]
    if target is not None:
        args += ["--target", target]
    args += [*extra, str(context)]
    env = dict(docker.env, DOCKER_BUILDKIT="0")
    start = time.monotonic()
    log = workdir / f"build-{tag.replace(':', '-').replace('/', '-')}.log"
    with open(log, "w") as out:
        proc = subprocess.run(
            ["docker", *args],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            timeout=timeout,
            check=False,
        )
    if proc.returncode != 0:
        raise RuntimeError(f"docker build {tag} failed:\n{log.read_text()[-4000:]}")
    return time.monotonic() - start
