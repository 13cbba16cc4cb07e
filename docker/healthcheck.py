#!/usr/bin/env python3
"""The image's HEALTHCHECK: GET /healthz of the metrics endpoint sipguard listens on.

Where that endpoint is comes from the configuration file sipguard runs with: the ``-c``
argument of the container's main process (``/proc/1/cmdline``), else ``$SIPGUARD_CONFIG``,
else ``/etc/sipguard/sipguard.yaml``. A wildcard address (``0.0.0.0``, ``::``) is asked on
loopback. ``$SIPGUARD_HEALTH_URL`` overrides all of this. With ``metrics: null`` there is
no endpoint to ask: the check then passes while the main process lives.

Exit status 0 healthy, 1 unhealthy (Docker's convention); one line on stdout says why.
"""

from __future__ import annotations

import os
import sys
import urllib.request
from pathlib import Path

import yaml

DEFAULT_CONFIG = "/etc/sipguard/sipguard.yaml"


def config_path() -> Path:
    try:
        args = Path("/proc/1/cmdline").read_bytes().decode().split("\0")
    except OSError:
        args = []
    for i, arg in enumerate(args):
        if arg in ("-c", "--config") and i + 1 < len(args):
            path = Path(args[i + 1])
            return path if path.is_absolute() else Path("/proc/1/cwd") / path
        if arg.startswith("--config="):
            return Path(arg.split("=", 1)[1])
    return Path(os.environ.get("SIPGUARD_CONFIG") or DEFAULT_CONFIG)


def health_url() -> str | None:
    if os.environ.get("SIPGUARD_HEALTH_URL"):
        return os.environ["SIPGUARD_HEALTH_URL"]
    with open(config_path(), encoding="utf-8") as f:
        config = yaml.safe_load(f) or {}
    if "metrics" in config and not config["metrics"]:
        return None  # the endpoint is turned off
    metrics = config.get("metrics") or {}
    host = str(metrics.get("address", "127.0.0.1"))
    port = int(metrics.get("port", 9460))
    host = {"0.0.0.0": "127.0.0.1", "::": "::1"}.get(host, host)
    if ":" in host:
        host = f"[{host}]"
    return f"http://{host}:{port}/healthz"


def main() -> int:
    try:
        url = health_url()
        if url is None:
            os.kill(1, 0)
            print("no metrics endpoint configured; the main process is running")
            return 0
        with urllib.request.urlopen(url, timeout=2.5) as response:
            print(f"{url}: {response.status}")
            return 0 if response.status == 200 else 1
    except Exception as exc:
        print(f"unhealthy: {exc}")
        return 1


if __name__ == "__main__":
    sys.exit(main())
