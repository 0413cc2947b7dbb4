"""The dependency locks (scripts/lock.sh): every dependency of pyproject.toml is pinned, with hashes, at a
version its specifier allows, the runtime lock agrees with the dev lock, each pin is the version installed
here (the one the tests run with), and the Dockerfile installs from the lock with hash checking."""

from __future__ import annotations

import importlib.metadata as md
import re
import tomllib
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[2]
_PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==(\S+)")


def _pins(name: str) -> dict[str, tuple[str, int]]:
    """canonical name -> (version, number of hashes)."""
    pins: dict[str, tuple[str, int]] = {}
    current = None
    for line in (ROOT / name).read_text().splitlines():
        found = _PIN.match(line)
        if found:
            current = canonicalize_name(found.group(1))
            pins[current] = (found.group(2), 0)
        elif current and line.strip().startswith("--hash=sha256:"):
            version, hashes = pins[current]
            pins[current] = (version, hashes + 1)
        elif line.strip() and not line.startswith(" "):
            current = None
    return pins


def _project() -> dict[str, list[str]]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    return {"runtime": project["dependencies"], "dev": project["optional-dependencies"]["dev"]}


def test_every_dependency_is_pinned_with_hashes_at_an_allowed_version() -> None:
    runtime, dev = _pins("requirements.lock"), _pins("requirements-dev.lock")
    deps = _project()
    for lock, texts in ((runtime, deps["runtime"]), (dev, deps["runtime"] + deps["dev"])):
        for text in texts:
            req = Requirement(text)
            name = canonicalize_name(req.name)
            assert name in lock, f"{req.name} is not in the lock: run bash scripts/lock.sh"
            assert lock[name][0] in req.specifier, f"{name} {lock[name][0]} does not satisfy {req.specifier}"
    assert all(hashes for _, hashes in [*runtime.values(), *dev.values()]), "a pin without --hash"


def test_the_runtime_lock_is_the_dev_lock_without_the_dev_extras() -> None:
    runtime, dev = _pins("requirements.lock"), _pins("requirements-dev.lock")
    assert set(runtime) <= set(dev)
    assert {name: pin[0] for name, pin in runtime.items()} == {name: dev[name][0] for name in runtime}
    assert "torch" in runtime and "qta-monitor" not in dev


def test_the_locks_pin_the_versions_installed_here() -> None:
    differ = {}
    for name, (version, _) in _pins("requirements-dev.lock").items():
        try:
            installed = md.version(name)
        except md.PackageNotFoundError:
            installed = "missing"
        if installed != version:
            differ[name] = f"locked {version}, installed {installed}"
    assert not differ, f"the lock and this environment differ (bash scripts/install.sh): {differ}"


def test_the_dockerfile_installs_the_lock_with_hash_checking() -> None:
    steps = [line.strip() for line in (ROOT / "Dockerfile").read_text().splitlines()]
    lock = steps.index("RUN pip install --require-hashes -r requirements.lock")
    assert steps.index("COPY requirements.lock ./") < lock < steps.index("RUN pip install --no-deps .")
