"""The import rules of monitor/ (README "Layout"), checked from the source with `ast`: which package may
import what, and no import circle. Every import counts, also one inside a function or under TYPE_CHECKING:
a lazy import is still a dependency, and a circle through a type-only import is still a circle."""

from __future__ import annotations

import ast
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

IO_LIBRARIES = ("aiokafka", "redis", "httpx", "requests", "urllib3")
MODEL_LIBRARIES = ("torch", "transformers", "vllm", "peft", "onnx", "onnxruntime")


@dataclass(frozen=True)
class Rule:
    """Modules under `scope` may not import anything under `forbidden`; where `only` is given, they may
    import from monitor nothing but `only` (third-party imports are not limited by `only`)."""

    scope: tuple[str, ...]
    forbidden: tuple[str, ...] = ()
    only: tuple[str, ...] | None = None
    why: str = ""


RULES = (
    Rule(
        ("monitor.core",),
        (
            *IO_LIBRARIES,
            *MODEL_LIBRARIES,
            "monitor.edges",
            "monitor.client",
            "monitor.evaluation",
            "monitor.training",
            "monitor.worker",
            "monitor.cli",
        ),
        why="the core is pure: no I/O library, no edge, no client, evaluation or training",
    ),
    Rule(
        ("monitor.worker", "monitor.core"),
        ("monitor.training", "monitor.evaluation"),
        why="serving never needs training or evaluation",
    ),
    Rule(
        ("monitor.client",),
        only=("monitor.messages", "monitor.settings", "monitor.edges", "monitor.client"),
        why="what a serving stack imports stays small: messages, settings and the edges",
    ),
    Rule(
        ("monitor.settings", "monitor.messages", "monitor.images"),
        (
            *IO_LIBRARIES,
            *MODEL_LIBRARIES,
            "monitor.edges",
            "monitor.guards",
            "monitor.core",
            "monitor.client",
            "monitor.evaluation",
            "monitor.training",
        ),
        why="the shared top-level modules know no edge and no guard",
    ),
    Rule(
        ("monitor.telemetry",),  # serves /metrics through edges.health, so the edges are allowed here
        ("monitor.guards", "monitor.core", "monitor.client", "monitor.evaluation", "monitor.training"),
        why="telemetry is shared by every package and depends on none of them",
    ),
    Rule(
        ("monitor",),
        MODEL_LIBRARIES,
        why="model libraries only in guards and training",
    ),
)
MODEL_HOMES = ("monitor.guards", "monitor.training")  # where the last rule does not apply


def within(name: str, prefixes: Iterable[str]) -> bool:
    return any(name == p or name.startswith(p + ".") for p in prefixes)


def modules(root: Path, package: str = "monitor") -> dict[str, Path]:
    """Dotted module name -> file, for every .py file under root (root is the package folder)."""
    out = {}
    for path in sorted(root.rglob("*.py")):
        parts = [package, *path.relative_to(root).with_suffix("").parts]
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


def imports(name: str, path: Path, known: set[str]) -> Iterator[tuple[str, int]]:
    """(imported name, line) for every import in a module; a `from a import b` names a.b when that is a
    module of ours, otherwise a. Relative imports are resolved against the module's package."""
    tree = ast.parse(path.read_text(), str(path))
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name, node.lineno
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")
                anchor = anchor[: len(anchor) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            for alias in node.names:
                full = f"{base}.{alias.name}"
                yield (full if full in known else base), node.lineno


def graph(root: Path, package: str = "monitor") -> dict[str, list[tuple[str, int]]]:
    found = modules(root, package)
    known = set(found)
    return {name: list(imports(name, path, known)) for name, path in found.items()}


def violations(root: Path, package: str = "monitor") -> list[str]:
    """Every broken rule and every circle, as readable lines; empty when the layout holds."""
    edges = graph(root, package)
    out = []
    for name, targets in sorted(edges.items()):
        for target, line in targets:
            for rule in RULES:
                if not within(name, rule.scope):
                    continue
                if rule.forbidden is MODEL_LIBRARIES and within(name, MODEL_HOMES):
                    continue
                bad = within(target, rule.forbidden) and not (name == target or within(target, (name,)))
                outside = (
                    rule.only is not None and within(target, (package,)) and not within(target, rule.only)
                )
                if bad or outside:
                    out.append(f"{name}:{line} imports {target}: {rule.why}")
    out = list(dict.fromkeys(out))  # `from a import b, c` is one line, said once
    out += [f"import circle: {' -> '.join(c)}" for c in circles(edges, package)]
    return out


def circles(edges: dict[str, list[tuple[str, int]]], package: str = "monitor") -> list[list[str]]:
    """Strongly connected components of more than one module (or a module importing itself), by Tarjan."""
    ours = {n: sorted({t for t, _ in ts if t in edges and t != n}) for n, ts in edges.items()}
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in ours[node]:
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                top = stack.pop()
                on_stack.discard(top)
                component.append(top)
                if top == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(ours):
        if node not in index:
            visit(node)
    return sorted(found)
