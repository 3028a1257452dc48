"""The README and the pages in ``docs/`` stay true: their commands run and give what they show.

What is checked, page by page:

- every ``console`` block is replayed like a shell session from the repository root (``cd``
  carries over within a block) in a private copy of ``sample_models/``: each ``$ hesscli ...``
  exits with the code the block implies (``$ echo $?`` and its answer, else 2 when the output
  shows ``hesscli: error:``, else 0), each shown error line is printed exactly, and each number
  the output shows to three or more significant digits (values, counts, sizes — not timings,
  residuals in scientific notation or plans) is printed by the command. Layout and wording may
  change without breaking a page; a changed number may not;
- every command in the README's table of examples runs;
- every ``python`` block runs;
- a ``json`` block announced by ``<!-- output-of: hesscli ... -->`` has only keys the command
  prints, with the same numbers and strings (``...`` stands for anything);
- every relative link and ``#anchor`` resolves, and every repository path a page names exists;
- the reference lists stay complete: every config key, every flag, the torch lower bound.

Replaying the commands costs about 30 seconds on two cores; identical commands run once.
When an output changes on purpose, ``python -m tests.test_docs --write`` replays every console
block and writes what the commands print now under each ``$`` line (then read the diff).
"""

from __future__ import annotations

import json
import math
import os
import re
import shlex
import shutil
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner, Result

from hesscli.cli.app import app
from hesscli.loading.config import SETTING_TYPES
from hesscli.runs.flags import RULES
from tests.conftest import REPO, SAMPLES

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

PAGES = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
#: Lines of a shown output whose numbers depend on the moment (timings, plans, machine).
VOLATILE_LINE = re.compile(r"^\s*(cost:|plan:|planned:|computed\b|route:)")
_SCIENTIFIC = re.compile(r"-?\d+(?:\.\d+)?e[-+]?\d+", re.I)
_NUMBER = re.compile(
    r"(?<![\w.,])[-−]?\d{1,3}(?:,\d{3})+(?:\.\d+)?(?![\w])|(?<![\w.,])[-−]?\d+(?:\.\d+)?(?![\w])"
)
_SECONDS = re.compile(r"\d+(?:\.\d+)?\s*s\b")


@dataclass(frozen=True)
class Block:
    """A fenced code block of a page."""

    page: Path
    line: int
    lang: str
    text: str
    note: str  # the HTML comment just above the block, if any

    @property
    def label(self) -> str:
        return f"{self.page.relative_to(REPO)}:{self.line}"


def _blocks(page: Path) -> list[Block]:
    lines = page.read_text().splitlines()
    found, index = [], 0
    while index < len(lines):
        match = re.match(r"^(\s*)```(\w*)\s*$", lines[index])
        if not match:
            index += 1
            continue
        indent, lang, start = match.group(1), match.group(2), index
        body = []
        index += 1
        while not lines[index].strip().startswith("```"):
            body.append(lines[index].removeprefix(indent))
            index += 1
        before = lines[start - 1].strip() if start > 0 else ""
        note = before if before.startswith("<!--") else ""
        found.append(Block(page, start + 1, lang, "\n".join(body), note))
        index += 1
    return found


def _all(lang: str) -> list[Block]:
    return [b for page in PAGES for b in _blocks(page) if b.lang == lang]


# -- running commands --------------------------------------------------------------------------
@pytest.fixture(scope="module")
def workspace(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A repository-like root holding a private copy of the sample models, and a ``tmp``."""
    root = tmp_path_factory.mktemp("docs")
    shutil.copytree(SAMPLES, root / "sample_models", ignore=shutil.ignore_patterns("__pycache__"))
    (root / "tmp").mkdir()
    return root


@pytest.fixture(scope="module")
def shell(workspace: Path) -> Iterator[Shell]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the models are tiny; the runner has two cores
    yield Shell(workspace)
    torch.set_num_threads(threads)


class Shell:
    """Replays documented command lines in the workspace; identical runs are done once."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.runner = CliRunner()
        self.done: dict[tuple[str, tuple[str, ...]], Result] = {}

    def run(self, line: str, cwd: Path) -> tuple[Result | None, Path]:
        """Run one ``$`` line (``cd`` and ``hesscli`` joined by ``&&``); returns the last result."""
        result = None
        words = shlex.split(line, comments=True)
        for segment in _split(words, "&&"):
            if segment[0] == "cd":
                cwd = (cwd / self._path(segment[1])).resolve()
                continue
            assert segment[0] == "hesscli", f"only cd and hesscli are replayed, not {segment[0]}"
            args = tuple(self._path(a) for a in _drop_redirect(segment[1:]))
            key = (str(cwd), args)
            if key not in self.done:
                here = Path.cwd()
                os.chdir(cwd)
                try:
                    env = {"COLUMNS": "120", "NO_COLOR": "1"}
                    self.done[key] = self.runner.invoke(app, list(args), env=env)
                finally:
                    os.chdir(here)
            result = self.done[key]
        return result, cwd

    def _path(self, arg: str) -> str:
        """A ``/tmp`` path, moved into the workspace."""
        if arg == "/tmp" or arg.startswith("/tmp/"):
            return str(self.root / "tmp" / arg.removeprefix("/tmp").lstrip("/"))
        return arg


def _split(words: list[str], separator: str) -> list[list[str]]:
    parts: list[list[str]] = [[]]
    for word in words:
        if word == separator:
            parts.append([])
        else:
            parts[-1].append(word)
    return [p for p in parts if p]


def _drop_redirect(args: list[str]) -> list[str]:
    if len(args) >= 2 and args[-2] == ">":
        return args[:-2]
    return args


@dataclass
class Step:
    """A ``$`` line of a console block, the output shown under it and the exit code it implies."""

    command: str
    shown: list[str]
    code: int
    echoed: bool = False


def _steps(block: Block) -> list[Step]:
    steps: list[Step] = []
    lines = block.text.splitlines()
    index = 0
    while index < len(lines):
        line = lines[index]
        assert line.startswith("$ "), f"{block.label}: output before any command: {line!r}"
        command, shown = line[2:], []
        index += 1
        while index < len(lines) and not lines[index].startswith("$ "):
            shown.append(lines[index])
            index += 1
        if command.strip() == "echo $?":
            steps[-1].code, steps[-1].echoed = int(shown[0]), True
            continue
        errors = any(s.startswith("hesscli: error:") for s in shown)
        steps.append(Step(command, shown, 2 if errors else 0))
    return steps


def _significant(token: str) -> int:
    digits = token.replace(",", "").replace("-", "").replace("−", "").replace(".", "")
    return len(digits.lstrip("0"))


def shown_numbers(lines: list[str]) -> list[str]:
    """Numbers an output shows to three or more significant digits, outside volatile lines."""
    numbers = []
    for line in lines:
        if VOLATILE_LINE.match(line):
            continue
        text = _SECONDS.sub(" ", _SCIENTIFIC.sub(" ", line))
        numbers += [t.replace("−", "-") for t in _NUMBER.findall(text) if _significant(t) >= 3]
    return numbers


def test_shown_numbers_skip_timings_and_residuals():
    lines = [
        "│ fc1 │ 2,080 │ 3.086 │ 2.3e-07 │ 2.114, 1.575 │ -0.2227 │ yes │ 32 │",
        "cost: 1.31 s, 120 curvature-vector products",
        "format    safetensors, 14.5 kB, 6 tensors; took 0.125 s; epoch_01.safetensors",
    ]
    assert shown_numbers(lines) == ["2,080", "3.086", "2.114", "1.575", "-0.2227", "14.5"]


CONSOLE = _all("console")


@pytest.mark.parametrize("block", CONSOLE, ids=[b.label for b in CONSOLE])
def test_console_block_is_what_the_commands_print(shell: Shell, block: Block) -> None:
    cwd = shell.root
    for step in _steps(block):
        result, cwd = shell.run(step.command, cwd)
        if result is None:
            continue
        where = f"{block.label}: $ {step.command}\n{result.output}"
        assert result.exit_code == step.code, where
        printed = result.output.replace("−", "-")
        for line in step.shown:
            if line.startswith("hesscli: error:"):
                assert line in result.stderr.splitlines(), where
        wanted = shown_numbers(step.shown)
        got = set(shown_numbers(printed.splitlines()))
        missing = [n for n in wanted if n not in got]
        assert not missing, f"numbers shown but not printed: {missing}\n{where}"


def test_readme_table_commands_run(shell: Shell) -> None:
    text = (REPO / "README.md").read_text()
    commands = re.findall(r"^\|[^|]+\| `(hesscli [^`]+)` \|$", text, re.M)
    assert len(commands) == 9, "one example per command"
    assert {c.split()[1] for c in commands} == {
        "spectrum", "trace", "diag", "density", "report", "check", "compare", "info", "convert"
    }  # fmt: skip
    for command in commands:
        result, _ = shell.run(command, shell.root / "sample_models" / "digits_mlp")
        assert result is not None and result.exit_code == 0, f"$ {command}\n{result.output}"


PYTHON = _all("python")


@pytest.mark.parametrize("block", PYTHON, ids=[b.label for b in PYTHON])
def test_python_block_runs(shell: Shell, block: Block) -> None:
    here = Path.cwd()
    os.chdir(shell.root)
    try:
        exec(compile(block.text, block.label, "exec"), {"__name__": "__docs__"})
    finally:
        os.chdir(here)


JSON_OUTPUTS = [b for b in _all("json") if b.note.startswith("<!-- output-of:")]


def _loads_abridged(text: str) -> object:
    """A documented JSON with ``0.0309...`` numbers: those become ``"..."`` (anything)."""
    return json.loads(re.sub(r"(?<![\w\"])(-?\d+(?:\.\d+)?)\.\.\.", '"..."', text))


def _agree(shown: object, printed: object, path: str = "") -> list[str]:
    if shown == "..." or path.endswith(".seconds"):  # anything; a timing
        return []
    if isinstance(shown, dict):
        if not isinstance(printed, dict):
            return [f"{path}: {printed!r} is not an object"]
        problems = [f"{path}.{k}: not printed" for k in shown if k not in printed]
        for key in shown.keys() & printed.keys():
            problems += _agree(shown[key], printed[key], f"{path}.{key}")
        return problems
    if isinstance(shown, list):
        if not isinstance(printed, list) or len(printed) < len(shown):
            return [f"{path}: {printed!r} lacks the {len(shown)} items shown"]
        return [p for i, s in enumerate(shown) for p in _agree(s, printed[i], f"{path}[{i}]")]
    if isinstance(shown, str) and "sample_models/" in shown:  # a path: the copy's is elsewhere
        tail = shown.split("sample_models/", 1)[1]
        ok = isinstance(printed, str) and printed.endswith(tail)
        return [] if ok else [f"{path}: {printed!r} is not {shown!r}"]
    if isinstance(shown, float) and isinstance(printed, (int, float)):
        ok = math.isclose(shown, printed, rel_tol=1e-3, abs_tol=1e-6)
        return [] if ok else [f"{path}: printed {printed!r}, shown {shown!r}"]
    return [] if shown == printed else [f"{path}: printed {printed!r}, shown {shown!r}"]


@pytest.mark.parametrize("block", JSON_OUTPUTS, ids=[b.label for b in JSON_OUTPUTS])
def test_json_example_matches_the_command(shell: Shell, block: Block) -> None:
    command = block.note.removeprefix("<!-- output-of:").removesuffix("-->").strip()
    result, _ = shell.run(command, shell.root)
    assert result is not None and result.exit_code == 0, result.output
    problems = _agree(_loads_abridged(block.text), json.loads(result.stdout))
    assert not problems, "\n".join(problems)


def test_the_info_json_example_is_checked():
    assert any("hesscli info" in b.note for b in JSON_OUTPUTS)


# -- links, paths and reference lists ----------------------------------------------------------
def _slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = heading.strip().lower()
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def _anchors(page: Path) -> set[str]:
    text = re.sub(r"```.*?```", "", page.read_text(), flags=re.S)
    return {_slug(m) for m in re.findall(r"^#+ (.+)$", text, re.M)}


def test_slugs_follow_github():
    assert _slug("An example: `info --json`") == "an-example-info---json"
    assert _slug("all-MiniLM-L6-v2 (22.7 M parameters)") == "all-minilm-l6-v2-227-m-parameters"


@pytest.mark.parametrize("page", PAGES, ids=[str(p.relative_to(REPO)) for p in PAGES])
def test_links_and_paths_resolve(page: Path) -> None:
    text = page.read_text()
    problems = []
    for target in re.findall(r"\]\(([^)\s]+)\)", text):
        if re.match(r"https?://", target):
            continue
        file, _, anchor = target.partition("#")
        linked = (page.parent / file).resolve() if file else page
        if not linked.exists():
            problems.append(f"{target}: no such file")
        elif anchor and anchor not in _anchors(linked):
            problems.append(f"{target}: no such heading in {linked.name}")
    for path in re.findall(
        r"(?<![\w./])((?:benchmarks|sample_models|hesscli|tests)/[\w./-]*\w)", text
    ):
        if not (REPO / path).exists() and not path.startswith(
            "sample_models/digits_mlp/run/epoch_"
        ):
            problems.append(f"{path}: not in the repository")
    assert not problems, "\n".join(problems)


def test_readme_is_a_front_page():
    text = (REPO / "README.md").read_text()
    assert len(text.encode()) < 10_000
    for page in (REPO / "docs").glob("*.md"):
        assert f"docs/{page.name}" in text, f"the README does not point to {page.name}"


def test_every_config_key_is_documented():
    text = (REPO / "docs" / "inputs.md").read_text()
    keys = text.split("Keys:", 1)[1].split("Paths are relative", 1)[0]
    assert set(re.findall(r"`(\w+)`", keys)) == set(SETTING_TYPES)


def test_every_flag_is_documented():
    text = (REPO / "docs" / "reading.md").read_text()
    for rule in RULES:
        row = re.search(rf"^\| `{rule.name}` \| ([^|]+) \|", text, re.M)
        assert row, f"flag {rule.name} is not in the table"
        subjects = set(re.findall(r"\w+", rule.subject)) - {"or", "and"}
        assert subjects <= set(re.findall(r"\w+", row.group(1))), rule.name


def test_readme_states_pyproject_torch_bound():
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    bound = next(d for d in project["dependencies"] if d.startswith("torch"))
    assert f"`{bound.replace(' ', '')}`" in (REPO / "README.md").read_text()


def rewrite(page: Path, shell: Shell) -> None:
    """Write under each ``$`` line of ``page``'s console blocks what the command prints now."""
    text = page.read_text()
    for block in (b for b in _blocks(page) if b.lang == "console"):
        cwd, lines = shell.root, []
        for step in _steps(block):
            result, cwd = shell.run(step.command, cwd)
            lines.append(f"$ {step.command}")
            if result is not None:
                quiet = "> /dev/null" in step.command  # stdout discarded: stderr shows
                printed = result.stderr if quiet else result.output
                printed = printed.replace(str(shell.root / "tmp"), "/tmp")
                printed = printed.replace(str(shell.root), str(REPO))
                lines += [line.rstrip() for line in printed.rstrip("\n").splitlines()]
            if step.echoed:
                lines += ["$ echo $?", str(result.exit_code if result else 0)]
        fence = f"```console\n{block.text}\n```"
        assert text.count(fence) == 1, f"{block.label}: the same block twice"
        text = text.replace(fence, "```console\n" + "\n".join(lines) + "\n```")
    page.write_text(text)


if __name__ == "__main__" and sys.argv[1:] == ["--write"]:
    import tempfile

    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder)
        shutil.copytree(
            SAMPLES, root / "sample_models", ignore=shutil.ignore_patterns("__pycache__")
        )
        (root / "tmp").mkdir()
        replay = Shell(root)
        for page in PAGES:
            rewrite(page, replay)


def _layout_paths(text: str) -> set[str]:
    """The module paths of the tree in docs/development.md's layout block."""
    block = text.split("\nLayout (", 1)[1].split("```\n", 2)[1]
    paths: set[str] = set()
    folders: list[str] = []
    for line in block.splitlines():
        name = re.split(r"\s{2}", re.sub(r"^[│├└─\s]*", "", line), maxsplit=1)[0]
        depth = (len(line) - len(line.lstrip("│├└─ "))) // 4
        del folders[depth:]
        if name.endswith("/"):
            folders.append(name)
            paths.add("".join(folders) + "__init__.py")
        else:
            paths.add("".join(folders) + name)
    return paths


def test_development_layout_lists_every_module() -> None:
    listed = _layout_paths((REPO / "docs" / "development.md").read_text())
    modules = {str(p.relative_to(REPO)) for p in (REPO / "hesscli").rglob("*.py")}
    assert sorted(modules - listed) == [], "modules missing from the layout"
    assert sorted(listed - modules) == [], "the layout lists modules that are gone"
