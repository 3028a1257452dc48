"""The layers import one way (DESIGN.md "Architecture"): a forbidden import fails this test.

loading → engine → algorithms → runs → results → cli. Every module under ``hesscli/`` is parsed
with :mod:`ast` (nothing is imported, so the test is fast and sees imports inside functions too)
and checked against five rules; one failure lists every offender, so a refactor sees all it has
left to fix at once.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "hesscli"
#: The orchestration package: one module per command, between the library and the CLI.
RUNS = "hesscli.runs"
#: What the engine and the algorithms may not import: they take a model, a loss and batches.
BELOW_FORBIDDEN = ("hesscli.loading", "hesscli.cli", RUNS)
#: What the CLI may not import: it talks to the orchestration layer and to errors/results only.
CLI_FORBIDDEN = ("hesscli.engine", "hesscli.algorithms", "hesscli.loading")
#: Presentation libraries, for the CLI alone.
PRESENTATION = ("typer", "rich")


@dataclass(frozen=True)
class Import:
    """One imported module (and name, for ``from m import name``) at a line of a module."""

    module: str
    name: str | None
    line: int


def module_name(path: Path, root: Path = PACKAGE) -> str:
    """``hesscli/engine/operator.py`` → ``hesscli.engine.operator`` (``__init__`` dropped)."""
    parts = path.relative_to(root.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(path: Path, root: Path = PACKAGE) -> Iterator[Import]:
    """Every import statement of ``path``, relative ones resolved to absolute module names."""
    name = module_name(path, root)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield Import(alias.name, None, node.lineno)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            for alias in node.names:
                yield Import(base, alias.name, node.lineno)


def within(module: str, packages: tuple[str, ...]) -> bool:
    """Whether ``module`` is one of ``packages`` or inside one of them."""
    return any(module == p or module.startswith(p + ".") for p in packages)


def offences(path: Path, root: Path = PACKAGE) -> Iterator[str]:
    """One line per forbidden import of ``path``, naming the file, the line and the rule."""
    name = module_name(path, root)
    where = path.relative_to(root.parent)
    for imp in imports_of(path, root):
        target = imp.module if imp.name is None else f"{imp.module}.{imp.name}"
        shown = f"{where}:{imp.line} imports {target}"
        if within(name, ("hesscli.engine", "hesscli.algorithms")) and within(
            target, BELOW_FORBIDDEN
        ):
            yield f"{shown} (engine/algorithms import neither loading, cli nor runs)"
        if not within(name, ("hesscli.cli",)) and within(imp.module, PRESENTATION):
            yield f"{shown} (only hesscli.cli imports typer or rich)"
        if within(name, ("hesscli.cli",)) and within(target, CLI_FORBIDDEN):
            yield f"{shown} (the CLI talks to {RUNS}, hesscli.errors and hesscli.results only)"
        private = (
            imp.name is not None and imp.name.startswith("_") and not imp.name.startswith("__")
        )
        if private and within(imp.module, ("hesscli",)) and imp.module != name:
            yield f"{shown} (another module's private name: make it public, named for what it does)"
        if within(imp.module, ("hesscli",)) and _names_private_module(imp.module):
            yield f"{shown} (a private module: put what it shares in a public module named for it)"


def _names_private_module(module: str) -> bool:
    """Whether a dotted module path goes through a ``_private`` module or package."""
    return any(p.startswith("_") and not p.startswith("__") for p in module.split("."))


def all_offences(root: Path = PACKAGE) -> list[str]:
    """Every forbidden import under ``root``, in file order."""
    return [line for path in sorted(root.rglob("*.py")) for line in offences(path, root)]


def test_layers_import_one_way() -> None:
    found = all_offences()
    assert not found, f"{len(found)} forbidden import(s):\n" + "\n".join(found)


def test_the_checker_sees_what_it_forbids(tmp_path: Path) -> None:
    # A package with offences of every kind: the checker must report each of them.
    files = {
        "engine/bad.py": "from hesscli.loading.data import load_data\nfrom ..cli import app\n",
        "algorithms/bad.py": "def f():\n    import hesscli.runs.spectrum\n",
        "loading/bad.py": "import rich\nfrom typer import Option\n",
        "cli/bad.py": "from hesscli.engine.memory import free\nimport hesscli.loading\n",
        "runs/bad.py": "from hesscli.runs.prepare import _private\n",
        "cli/commands/bad.py": "from hesscli.cli.commands._shared import helper\n",
        "cli/good.py": "import typer\nfrom hesscli.runs import trace\nfrom hesscli import errors\n",
    }
    for name, text in files.items():
        (tmp_path / "hesscli" / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / "hesscli" / name).write_text(text)
    found = all_offences(tmp_path / "hesscli")
    assert len(found) == 9, "\n".join(found)
    assert not any("good.py" in line for line in found)
