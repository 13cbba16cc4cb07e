#!/bin/sh
# sipguard developer entry point. Needs only python3 and sh (Debian 12).
#   ./dev.sh run   [sipguard run arguments]   install into .venv, run with config/sipguard.yaml
#                                             (compiled with mypyc into build/native where a C
#                                             compiler is; SIPGUARD_PURE=1 runs pure Python)
#   ./dev.sh test  [pytest arguments]         install test tools and system packages, run all checks
#   ./dev.sh lint                             ruff and mypy only
set -eu
cd "$(dirname "$0")"

VENV=.venv
PY="$VENV/bin/python"
# Debian packages the test suite uses: SIPp, PostgreSQL (CDR sink tests), Prometheus and
# promtool (docker/prometheus/ checked and run against sipguard), systemd-analyze
# (deploy/systemd/ verified), and for the container image tests (tests/test_ops_docker.py,
# which start dockerd themselves where none runs) Docker, debootstrap (their Debian base)
# and docker-compose; rtpengine (media anchoring, userspace) and Kamailio (the balancer of
# tests/test_deploy_kamailio.py and the --versus kamailio runs), both started by the tests.
TEST_DEBS="sip-tester rtpengine-daemon postgresql prometheus systemd docker.io debootstrap docker-compose kamailio"

say() { printf '%s\n' "dev.sh: $*" >&2; }

is_root() { [ "$(id -u)" = 0 ]; }

apt_install() {
    # apt_install PKG... : install the missing Debian packages, as root; otherwise say how.
    missing=""
    for pkg in "$@"; do
        dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" \
            || missing="$missing $pkg"
    done
    [ -z "$missing" ] && return 0
    if is_root; then
        say "installing Debian packages:$missing"
        DEBIAN_FRONTEND=noninteractive apt-get update -qq
        # shellcheck disable=SC2086
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $missing >/dev/null
    else
        say "these Debian packages are needed:$missing"
        say "run as root:  apt-get install -y$missing"
        exit 1
    fi
}

ensure_venv() {
    if [ ! -x "$PY" ]; then
        if ! python3 -m venv "$VENV" >/dev/null 2>&1; then
            rm -rf "$VENV"
            apt_install python3-venv
            python3 -m venv "$VENV"
        fi
        "$PY" -m pip install -q --upgrade pip
    fi
    extras="$1"
    stamp="$VENV/.installed-$extras"
    if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
        say "installing sipguard${extras:+[$extras]} into $VENV"
        # explicit: inside "if native_build" a failure would not stop the script (set -e)
        "$PY" -m pip install -q -e ".${extras:+[$extras]}" || return 1
        touch "$stamp"
    fi
}

native_build() {
    # the per-message path compiled with mypyc into build/native (tools/build_native.py,
    # rebuilt when a source changes); without a C compiler, the pure-Python sources run
    [ "${SIPGUARD_PURE:-}" = 1 ] && return 1
    if ! "$PY" -c 'import os, sys, sysconfig, shutil
cc = (sysconfig.get_config_var("CC") or "cc").split()[0]
ok = shutil.which(cc) and os.path.exists(os.path.join(sysconfig.get_paths()["include"], "Python.h"))
sys.exit(0 if ok else 1)'; then
        say "no C compiler or no Python headers: running pure Python (apt-get install gcc python3-dev to compile)"
        return 1
    fi
    if ! ensure_venv native; then
        say "installing mypy (mypyc) failed: running pure Python"
        return 1
    fi
    if ! "$PY" tools/build_native.py --out build/native >&2; then
        say "compiling failed: running pure Python"
        return 1
    fi
}

lint() {
    "$VENV/bin/ruff" check sipguard testkit tests benchmarks loadtests tools
    "$VENV/bin/ruff" format --check sipguard testkit tests benchmarks loadtests tools
    "$VENV/bin/mypy" --strict sipguard testkit
    "$PY" tools/imports.py --quiet  # no import cycle, layers respected; b2bua/ sizes
}

cmd="${1:-}"
[ $# -gt 0 ] && shift
case "$cmd" in
    run)
        ensure_venv ""
        mkdir -p var
        if native_build; then
            PYTHONPATH="$PWD/build/native${PYTHONPATH:+:$PYTHONPATH}"
            export PYTHONPATH
        fi
        exec "$VENV/bin/sipguard" run -c config/sipguard.yaml "$@"
        ;;
    lint)
        ensure_venv test
        lint
        ;;
    test)
        # shellcheck disable=SC2086
        apt_install $TEST_DEBS
        ensure_venv test
        lint  # a function, not "$0 lint": $0 may be relative to where dev.sh was called from
        exec "$VENV/bin/python" -m pytest -q -p no:cacheprovider "$@"
        ;;
    *)
        echo "usage: ./dev.sh run|test|lint [args]" >&2
        exit 64
        ;;
esac
