#!/bin/sh
# docker/wheels.sh [PYTHON]: download into docker/wheels/ every wheel the image installs:
# sipguard's dependencies, its `native` extra (mypy, whose mypyc compiles the core) and its
# build backend, all read from pyproject.toml. `docker build` then installs them with
# `pip --no-index`: nothing inside the build reaches a package index (a build needs no
# proxy or CA set-up), and every build installs the same files. Without this step the
# build installs from PyPI instead.
#
# PYTHON (default python3) runs pip. Where it is not CPython 3.11, the wheels are still
# chosen for the image's Python (Debian bookworm's 3.11) on this machine's architecture.
set -eu
cd "$(dirname "$0")/.."
py=${1:-python3}
out=docker/wheels
reqs=$(mktemp)
trap 'rm -f "$reqs"' EXIT
"$py" - >"$reqs" <<'PY'
import tomllib

with open("pyproject.toml", "rb") as f:
    project = tomllib.load(f)
wanted = [
    *project["project"]["dependencies"],
    *project["project"]["optional-dependencies"]["native"],
    *project["build-system"]["requires"],
]
print("\n".join(wanted))
PY
set -- --only-binary=:all:
if ! "$py" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 11))'; then
    arch=$(uname -m)
    set -- "$@" --python-version 3.11 --implementation cp --abi cp311 --abi abi3 --abi none \
        --platform "manylinux_2_36_$arch" --platform "manylinux_2_28_$arch" \
        --platform "manylinux_2_17_$arch" --platform "manylinux2014_$arch" --platform any
fi
"$py" -m pip download --quiet --disable-pip-version-check "$@" --dest "$out" -r "$reqs"
echo "docker/wheels.sh: $(ls "$out"/*.whl | wc -l) wheels in $out"
