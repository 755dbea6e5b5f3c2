"""Tongban's import graph, read from the source with ``ast``, and its layering contracts.

    python scripts/import_graph.py           # the package-level graph, one line per package
    python scripts/import_graph.py --check   # the contracts; exit 1 naming each violation

The contracts, and the known debts each may still have, live in ``pyproject.toml``
(``[tool.tongban.layers]``); ``tests/test_layers.py`` runs the check. Every import
counts, including those inside functions and under ``TYPE_CHECKING``: a deferred import
is still a dependency. An "only" contract limits what a module imports of ours; a "not"
contract may name others' packages too (adapters must not import ``grpc``).
"""

from __future__ import annotations

import ast
import sys
import tomllib
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# The source roots of the ``tongban`` namespace (pyproject.toml, [tool.setuptools.package-dir]).
SOURCE_ROOTS = ("signing", "proto", "exchange", "licence", "adapters", "cli")
# Packages shown as one node in the graph (the rest: their first two name parts).
_GROUPED = ("tongban.exchange",)


def modules(root: Path = ROOT) -> Iterator[tuple[str, Path]]:
    """Every module of ours: (dotted name, file)."""
    for source in SOURCE_ROOTS:
        for path in sorted((root / source).rglob("*.py")):
            parts = list(path.relative_to(root / source).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            if parts and parts[0] == "tongban":
                yield ".".join(parts), path


def _type_only(tree: ast.Module) -> set[int]:
    """The ids of import nodes under ``if TYPE_CHECKING:`` (never run)."""
    found: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            for child in node.body:
                found.update(id(n) for n in ast.walk(child))
    return found


def imports(root: Path = ROOT, *, runtime: bool = False) -> dict[str, set[str]]:
    """Module -> the names it imports, ours and others' (``from a import b`` counts as
    ``a.b``; relative imports resolved). With ``runtime``, without those under
    ``if TYPE_CHECKING:``."""
    found: dict[str, set[str]] = defaultdict(set)
    for name, path in modules(root):
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
        skipped = _type_only(tree) if runtime else set()
        for node in ast.walk(tree):
            if id(node) in skipped:
                continue
            if isinstance(node, ast.Import):
                found[name].update(a.name for a in node.names)
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    base = package.split(".")[: len(package.split(".")) - node.level + 1]
                    target = ".".join([*base, *([node.module] if node.module else [])])
                else:
                    target = node.module or ""
                found[name].update(f"{target}.{a.name}" for a in node.names)
    return found


def _ours(name: str) -> bool:
    return name == "tongban" or name.startswith("tongban.")


def _within(name: str, prefixes: list[str]) -> bool:
    return any(name == p or name.startswith(p + ".") for p in prefixes)


@dataclass(frozen=True)
class Violation:
    contract: str
    importer: str
    imported: str

    def __str__(self) -> str:
        return f"{self.importer} imports {self.imported}: breaks {self.contract!r}"


PRIVATE = "a private module (_name) is imported only from within its own package"


def _private_owner(imported: str, known: set[str]) -> str | None:
    """The package that owns the private module ``imported`` names (``a.b`` for
    ``a.b._c.f``), or None if it names no private module."""
    parts = imported.split(".")
    for end in range(len(parts), 0, -1):
        if ".".join(parts[:end]) in known:  # the module this name lives in
            for i, part in enumerate(parts[:end]):
                if part.startswith("_") and not part.startswith("__"):
                    return ".".join(parts[:i])
            return None
    return None


def check(root: Path = ROOT) -> list[Violation]:
    """The imports that break a contract and are not listed as a known debt; besides
    those of pyproject.toml, every private module belongs to its package (``PRIVATE``)
    and no modules import each other round a loop (``CIRCLE``)."""
    layers = tomllib.loads((root / "pyproject.toml").read_text(encoding="utf-8"))
    layers = layers["tool"]["tongban"]["layers"]
    debts = {tuple(p.strip() for p in d.split("->")) for d in layers.get("debts", [])}
    graph = imports(root)
    known = {name for name, _ in modules(root)}
    found = [
        Violation(PRIVATE, importer, imported)
        for importer, targets in sorted(graph.items())
        for imported in sorted(targets)
        if (owner := _private_owner(imported, known)) is not None and not _within(importer, [owner])
    ]
    for contract in layers["contracts"]:
        for importer, targets in sorted(graph.items()):
            if not _within(importer, contract["modules"]) or _within(
                importer, contract.get("except", [])
            ):
                continue
            for imported in sorted(targets):
                if "only" in contract:  # of ours; others' packages are not its concern
                    broken = _ours(imported) and not _within(imported, contract["only"])
                else:
                    broken = _within(imported, contract["not"])
                if broken and not any(
                    _within(importer, [i]) and _within(imported, [t]) for i, t in debts
                ):
                    found.append(Violation(contract["name"], importer, imported))
    found += [Violation(CIRCLE, group[0], " -> ".join(group[1:])) for group in circles(root)]
    return found


CIRCLE = "no import circles between modules (type-only imports aside)"


def circles(root: Path = ROOT) -> list[list[str]]:
    """Groups of our modules that import each other, directly or round a loop, when the
    code runs (deferred imports count: they run too; ``TYPE_CHECKING`` ones do not)."""
    known = {name for name, _ in modules(root)}
    graph: dict[str, set[str]] = {}
    for importer, targets in imports(root, runtime=True).items():
        graph[importer] = set()
        for imported in targets:
            parts = imported.split(".")
            module = next(
                (".".join(parts[:end]) for end in range(len(parts), 0, -1)
                 if ".".join(parts[:end]) in known),
                None,
            )  # fmt: skip
            if module is not None and module != importer:
                graph[importer].add(module)
    # Tarjan's strongly connected components, iteratively.
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    for start in sorted(graph):
        if start in index:
            continue
        work = [(start, iter(sorted(graph[start])))]
        index[start] = low[start] = len(index)
        stack.append(start)
        on_stack.add(start)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph.get(child, ())))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                group = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    group.append(member)
                    if member == node:
                        break
                if len(group) > 1:
                    found.append(sorted(group))
    return sorted(found)


def _node(name: str) -> str:
    parts = name.split(".")
    grouped = any(name.startswith(g + ".") for g in _GROUPED)
    return ".".join(parts[: 3 if grouped else 2])


def package_graph(root: Path = ROOT) -> dict[str, set[str]]:
    """Package -> the packages of ours it imports (``tongban.exchange.*`` by subpackage)."""
    graph: dict[str, set[str]] = defaultdict(set)
    for importer, targets in imports(root).items():
        for imported in filter(_ours, targets):
            a, b = _node(importer), _node(imported)
            if a != b:
                graph[a].add(b)
    return graph


def main(argv: list[str]) -> int:
    if argv == ["--check"]:
        violations = check()
        for v in violations:
            print(v)
        print(f"{len(violations)} import(s) break the layering contracts in pyproject.toml")
        return 1 if violations else 0
    if argv:
        print(__doc__, file=sys.stderr)
        return 2
    for package, targets in sorted(package_graph().items()):
        print(f"{package} -> {', '.join(sorted(targets))}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
