#!/usr/bin/env bash
# Writes the dependency locks from the environment the tests ran in (pip-tools' pip-compile, hashes from PyPI):
#   requirements.lock       the dependencies of pyproject.toml   (the Dockerfile: pip install --require-hashes)
#   requirements-dev.lock   the same plus the `dev` extra        (CI and contributors)
#   bash scripts/lock.sh            # after changing pyproject.toml or upgrading a package; then run the tests
# Every version is the one installed here (pip freeze is passed as a constraint), so the lock pins what was
# tested. torch's PyPI wheel is the CUDA build for Linux x86_64 (with its nvidia-* wheels); the hashes cover
# every platform PyPI has a wheel for. tests/unit/test_lock.py checks the locks against pyproject.toml and
# the installed versions.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PYTHON="${PYTHON:-python}"
cd "$ROOT"
"$PYTHON" -m piptools compile --version >/dev/null 2>&1 || { echo "lock.sh: needs pip-tools (pip install pip-tools)" >&2; exit 1; }

tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
"$PYTHON" -m pip freeze --exclude-editable | grep -vi '^qta-monitor' >"$tmp/installed.txt"

compile() {  # compile OUTPUT [pip-compile args...]
    local out="$1"; shift
    CUSTOM_COMPILE_COMMAND="bash scripts/lock.sh" "$PYTHON" -m piptools compile --quiet --generate-hashes \
        --allow-unsafe --strip-extras --no-emit-index-url --no-emit-find-links --no-emit-trusted-host \
        --constraint "$tmp/installed.txt" --output-file "$tmp/$out" "$@" pyproject.toml
    # The constraint file is a temporary copy of `pip freeze`; keep it out of the "via" annotations.
    grep -v -- "-c $tmp/installed.txt" "$tmp/$out" >"$out"
    echo "lock.sh: wrote $out ($(grep -c '^[a-z0-9]' "$out") packages)" >&2
}

compile requirements.lock
compile requirements-dev.lock --extra dev
