"""Benchmarks at scale: whole hesscli commands against whole peer scripts, each cold.

One command (after ``bash benchmarks/setup.sh``)::

    /tmp/bench/bin/python benchmarks/scale.py [--problems minilm,mlp] [--rows ...] [--json FILE]

Every row is one fresh process, run as a user runs it: imports, model and checkpoint loading and
the computation. For each it measures the wall time around the process, its peak resident set
size (GNU ``/usr/bin/time -v``'s "Maximum resident set size") and, from what the process
prints, the time of its own work (hesscli's ``cost.seconds``; a peer's construction-to-answer
time), its Hessian-vector products and the value it reported (λmax or a trace).

Rows: hesscli ``info``, ``spectrum`` (top-1, top-5, defaults), ``trace``, ``diag``, exact ``diag``
of the largest layer (MLP), ``density``, ``report`` (on MiniLM each with ``--max-memory 8GiB``);
peers (``benchmarks/peers/peer.py``): one plain-autograd gradient (the time unit), PyHessian
``eigenvalues(top_n=1|5)``, ``trace()``, ``density()``; curvlinops' Hessian operator under scipy's
``eigsh`` and its ``hutchpp_trace``; BackPACK's ``DiagHessian`` (MLP); hessian-eigenthings'
``lanczos``, ``hutch_plus_plus`` and ``spectral_density``. Then ratios hesscli ÷ peer, the
issue's targets with PASS / FAIL, and the machine's load.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import resource
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

ROOT = Path(__file__).resolve().parents[1]
PEERS = ROOT / "benchmarks" / "peers"
MINILM = ROOT / "sample_models" / "minilm"
GNU_TIME = "/usr/bin/time"
GIB = 2**30
MAX_MEMORY = "8GiB"  # hesscli's --max-memory on MiniLM (the setting)
MLP_LAYER = "0"  # the MLP's largest layer: Linear(784, 300), 235,500 parameters
PACKAGES = (
    "torch",
    "hesscli",
    "PyHessian",
    "curvlinops-for-pytorch",
    "backpack-for-pytorch",
    "hessian-eigenthings",
)


@dataclass(frozen=True)
class Spec:
    """One row: an id (for ``--rows``), its tool, what it runs and on which problems."""

    id: str
    tool: str
    label: str
    args: tuple[str, ...]  # hesscli: the command and its options; peers: the task
    problems: tuple[str, ...] = ("minilm", "mlp")


HESSCLI = [
    Spec("info", "hesscli", "hesscli info", ("info",)),
    Spec(
        "spectrum-top1",
        "hesscli",
        "hesscli spectrum --top-k 1 --bottom-k 0",
        ("spectrum", "--top-k", "1", "--bottom-k", "0"),
    ),
    Spec(
        "spectrum-top5",
        "hesscli",
        "hesscli spectrum --top-k 5 --bottom-k 0",
        ("spectrum", "--top-k", "5", "--bottom-k", "0"),
    ),
    Spec("spectrum", "hesscli", "hesscli spectrum (top 5, bottom 1)", ("spectrum",)),
    Spec("trace", "hesscli", "hesscli trace", ("trace",)),
    Spec("diag", "hesscli", "hesscli diag", ("diag",)),
    Spec(
        "diag-layer",
        "hesscli",
        f"hesscli diag --layer {MLP_LAYER} --exact",
        ("diag", "--layer", MLP_LAYER, "--exact"),
        ("mlp",),
    ),
    Spec("density", "hesscli", "hesscli density", ("density",)),
    Spec("report", "hesscli", "hesscli report", ("report",)),
]
PEER_ROWS = [
    Spec("gradient", "gradient", "one gradient (autograd)", ("gradient",)),
    Spec("pyhessian-top1", "pyhessian", "PyHessian eigenvalues(top_n=1)", ("pyhessian-top1",)),
    Spec("pyhessian-top5", "pyhessian", "PyHessian eigenvalues(top_n=5)", ("pyhessian-top5",)),
    Spec("pyhessian-trace", "pyhessian", "PyHessian trace()", ("pyhessian-trace",)),
    Spec("pyhessian-density", "pyhessian", "PyHessian density()", ("pyhessian-density",)),
    Spec("curvlinops-top1", "curvlinops", "curvlinops + eigsh k=1", ("curvlinops-top1",)),
    Spec("curvlinops-top5", "curvlinops", "curvlinops + eigsh k=5", ("curvlinops-top5",)),
    Spec("curvlinops-trace", "curvlinops", "curvlinops hutchpp_trace(99)", ("curvlinops-trace",)),
    Spec("backpack-diag", "backpack", "BackPACK DiagHessian", ("backpack-diag",), ("mlp",)),
    Spec("eigenthings-top1", "eigenthings", "eigenthings lanczos k=1", ("eigenthings-top1",)),
    Spec("eigenthings-top5", "eigenthings", "eigenthings lanczos k=5", ("eigenthings-top5",)),
    Spec(
        "eigenthings-trace",
        "eigenthings",
        "eigenthings hutch_plus_plus(99)",
        ("eigenthings-trace",),
    ),
    Spec(
        "eigenthings-density",
        "eigenthings",
        "eigenthings spectral_density",
        ("eigenthings-density",),
    ),
]
SPECS = {spec.id: spec for spec in (PEER_ROWS[:1] + HESSCLI + PEER_ROWS[1:])}  # run order
TOOLS = sorted({spec.tool for spec in SPECS.values()})
# (hesscli row, peer row): the comparisons of the ratio table.
PAIRS = [
    ("spectrum-top1", "pyhessian-top1"),
    ("spectrum-top1", "curvlinops-top1"),
    ("spectrum-top1", "eigenthings-top1"),
    ("spectrum-top5", "pyhessian-top5"),
    ("spectrum-top5", "curvlinops-top5"),
    ("spectrum-top5", "eigenthings-top5"),
    ("trace", "pyhessian-trace"),
    ("trace", "curvlinops-trace"),
    ("trace", "eigenthings-trace"),
    ("diag-layer", "backpack-diag"),
    ("diag", "backpack-diag"),
    ("density", "pyhessian-density"),
    ("density", "eigenthings-density"),
]


@dataclass
class Row:
    """What one process did. ``status``: ok, timeout, killed (...), failed (...)."""

    id: str
    tool: str
    label: str
    status: str
    wall: float
    rss: int | None = None  # peak resident set size, bytes
    rss_source: str = ""
    seconds: float | None = None  # the tool's own work: cost.seconds, or the peer's
    products: int | None = None
    check_products: int | None = None
    value: float | None = None
    kind: str = ""  # lambda, trace, layer, loss
    converged: bool | None = None
    unit: float | None = None  # gradient row: median seconds of a warm gradient
    note: str = ""
    extra: dict[str, Any] = field(default_factory=dict)


# -- running one process ---------------------------------------------------------------------


def _group_rss(group: int) -> int:
    """Resident bytes of every process in a process group (from /proc)."""
    page = os.sysconf("SC_PAGE_SIZE")
    total = 0
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", encoding="ascii") as stat:
                fields = stat.read().rsplit(")", 1)[1].split()
            if int(fields[2]) != group:  # fields: state, ppid, pgrp, ...
                continue
            with open(f"/proc/{entry}/statm", encoding="ascii") as statm:
                total += int(statm.read().split()[1]) * page
        except (OSError, IndexError, ValueError):
            continue  # the process ended meanwhile
    return total


def _time_report(text: str) -> dict[str, int]:
    """The numbers GNU time -v printed that matter here."""
    found = {}
    for key, pattern in (
        ("rss_kib", r"Maximum resident set size \(kbytes\): (\d+)"),
        ("exit", r"Exit status: (\d+)"),
        ("signal", r"Command terminated by signal (\d+)"),
    ):
        match = re.search(pattern, text)
        if match:
            found[key] = int(match.group(1))
    return found


def run_process(
    argv: list[str], cwd: Path, timeout: float, rss_limit: int
) -> tuple[str, float, int | None, str, str, str]:
    """Run ``argv`` cold; ``(status, wall, peak RSS, RSS source, stdout, stderr)``.

    The process runs in its own process group under GNU time (when there is one), is polled
    every 0.2 s, and its whole group is killed on ``timeout`` or when the group's resident
    memory passes ``rss_limit`` (so that a runaway row cannot take the shared machine down).
    """
    has_time = os.access(GNU_TIME, os.X_OK)
    with tempfile.TemporaryDirectory(prefix="scale-") as scratch:
        report = Path(scratch) / "time.txt"
        command = [GNU_TIME, "-v", "-o", str(report), *argv] if has_time else argv
        before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024
        with open(Path(scratch) / "out", "w+") as out, open(Path(scratch) / "err", "w+") as err:
            start = time.perf_counter()
            proc = subprocess.Popen(
                command, cwd=cwd, stdout=out, stderr=err, start_new_session=True
            )
            sampled, status = 0, ""
            while True:
                try:
                    proc.wait(timeout=0.2)
                    break
                except subprocess.TimeoutExpired:
                    pass
                rss = _group_rss(proc.pid)
                sampled = max(sampled, rss)
                if time.perf_counter() - start > timeout:
                    status = "timeout"
                elif rss > rss_limit:
                    status = f"killed (RSS > {rss_limit / GIB:.1f} GiB)"
                if status:
                    os.killpg(proc.pid, signal.SIGKILL)
                    proc.wait()
                    break
            wall = time.perf_counter() - start
            out.seek(0)
            err.seek(0)
            stdout, stderr = out.read(), err.read()
        numbers = _time_report(report.read_text()) if report.exists() else {}
    after = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024
    if "rss_kib" in numbers:
        peak, source = numbers["rss_kib"] * 1024, "time -v"
    elif after > before:  # the running maximum over children grew: this child's own peak
        peak, source = after, "getrusage"
    else:  # a killed row, or no GNU time: the largest sample (a lower bound)
        peak, source = (sampled or None), "sampled"
    if not status:
        code = numbers.get("exit", proc.returncode)
        if "signal" in numbers or proc.returncode < 0:
            number = numbers.get("signal", -proc.returncode)
            status = f"killed (signal {number})"
        elif code != 0:
            last = [line for line in stderr.strip().splitlines() if line.strip()]
            status = f"failed (exit {code}): {last[-1][:120] if last else ''}"
        else:
            status = "ok"
    return status, wall, peak, source, stdout, stderr


# -- reading what a row reported ---------------------------------------------------------------


def _first(entries: Any) -> dict[str, Any] | None:
    """The first entry of a list of ``{"value", ...}`` (or the entry itself)."""
    if isinstance(entries, list):
        return entries[0] if entries else None
    return entries if isinstance(entries, dict) else None


def read_hesscli(row: Row, document: dict[str, Any]) -> None:
    """Fill ``row`` from a hesscli ``--json`` document."""
    cost = document.get("cost", {})
    row.seconds = cost.get("seconds")
    row.products = cost.get("hvps")
    row.check_products = cost.get("check_hvps")
    results = document.get("results", {})
    engine = results.get("engine") or {}
    route = f"route {engine['route']}" if engine.get("route") else ""
    notes = [route] if route else []
    command = document.get("command")
    if command == "spectrum":
        top = _first(results.get("top"))
        if top:
            row.value, row.kind, row.converged = top["value"], "lambda", top.get("converged")
            notes.insert(0, f"{results.get('steps')} steps, residual {top['residual']:.1e}")
    elif command == "trace":
        found = results.get("trace", {})
        row.value, row.kind = found.get("value"), "trace"
        stderr = found.get("stderr")
        notes.insert(0, f"{results.get('method')}, stopped {results.get('stopped')}")
        if stderr:
            notes.insert(1, f"stderr {stderr:.2g}")
    elif command == "diag":
        layers = results.get("layers", {})
        row.value = sum(layer["sum"] for layer in layers.values())
        row.kind = "layer" if row.id == "diag-layer" else "trace"
        exact = all(layer.get("exact") for layer in layers.values())
        methods = sorted({str(layer.get("method")) for layer in layers.values()})
        notes.insert(0, f"Σdiag, {'exact' if exact else 'estimated'} ({', '.join(methods)})")
    elif command == "density":
        top = _first(results.get("top"))
        if top:
            row.value, row.kind = top["value"], "lambda"
        notes.insert(0, f"{results.get('probes')} probes × {results.get('steps')} steps, largest")
    elif command == "report":
        top = (results.get("summary") or {}).get("top")
        if top:
            row.value, row.kind, row.converged = top["value"], "lambda", top.get("converged")
    row.note = ", ".join(notes)


def read_peer(row: Row, document: dict[str, Any]) -> None:
    """Fill ``row`` from the JSON line ``peer.py`` printed."""
    row.seconds = document.get("seconds")
    row.products = document.get("products")
    row.value = document.get("value")
    row.kind = document.get("kind", "")
    row.converged = document.get("converged")
    row.unit = document.get("unit")
    row.note = document.get("note", "")
    row.extra = {k: v for k, v in document.items() if k in ("values", "layer_sum", "stderr")}


# -- one problem -----------------------------------------------------------------------------


@dataclass
class Problem:
    """Where a problem's processes run and the arguments hesscli gets."""

    name: str
    cwd: Path
    hesscli_args: list[str]
    peer_args: list[str]


def problem(name: str, scratch: Path, python: str) -> Problem:
    """The MiniLM sample folder, or the MLP's files written into ``scratch``."""
    if name == "minilm":
        return Problem(name, MINILM, ["--max-memory", MAX_MEMORY], ["--problem", "minilm"])
    folder = scratch / "mlp"
    subprocess.run(
        [python, str(PEERS / "problems.py"), str(folder)], check=True, stdout=subprocess.DEVNULL
    )
    model = f"{PEERS / 'problems.py'}:MLP"
    args = ["model.pt", "--model", model, "--data", "data.pt", "--loss", "cross_entropy"]
    return Problem(name, folder, args, ["--problem", "mlp", "--folder", str(folder)])


def measure(spec: Spec, where: Problem, args: argparse.Namespace) -> Row:
    """Run one row in a fresh process and read what it printed."""
    if spec.tool == "hesscli":
        argv = [args.hesscli_python, "-m", "hesscli", *spec.args, *where.hesscli_args, "--json"]
    else:
        argv = [args.python, str(PEERS / "peer.py"), *spec.args, *where.peer_args]
    status, wall, rss, source, stdout, _ = run_process(
        argv, where.cwd, args.timeout, args.rss_limit
    )
    row = Row(spec.id, spec.tool, spec.label, status, wall, rss, source)
    if status == "ok":
        try:
            if spec.tool == "hesscli":
                read_hesscli(row, json.loads(stdout))
            else:
                read_peer(row, json.loads(stdout.strip().splitlines()[-1]))
        except (ValueError, IndexError, KeyError, TypeError) as error:
            row.status = f"failed: unreadable output ({type(error).__name__}: {error})"
    return row


def references(rows: dict[str, Row]) -> dict[str, tuple[float, str]]:
    """The references: hesscli's converged λmax and trace, BackPACK's exact layer-0 sum.

    Returns ``kind → (value, the row it came from)``.
    """
    found: dict[str, tuple[float, str]] = {}
    for name in ("spectrum", "spectrum-top5", "spectrum-top1", "report"):
        row = rows.get(name)
        if row and row.value is not None and row.converged:
            found["lambda"] = (row.value, name)
            break
    if (row := rows.get("trace")) and row.value is not None:
        found["trace"] = (row.value, "trace")
    if (row := rows.get("backpack-diag")) and "layer_sum" in row.extra:
        found["layer"] = (row.extra["layer_sum"], "backpack-diag")
    return found


def relative_difference(row: Row, refs: dict[str, tuple[float, str]]) -> float | None:
    """|value − reference| / |reference| (None: nothing to compare, or the reference itself)."""
    if row.value is None or row.kind not in refs:
        return None
    reference, source = refs[row.kind]
    if source == row.id or reference == 0:
        return None
    return abs(row.value - reference) / abs(reference)


def per_gradient(row: Row, rows: dict[str, Row]) -> float | None:
    """A row's own time in units of one warm gradient."""
    gradient = rows.get("gradient")
    if row.seconds is None or gradient is None or not gradient.unit:
        return None
    return row.seconds / gradient.unit


@dataclass
class Target:
    """One of the issue's targets: what is compared, its measured value and its limit."""

    name: str
    measured: float | None
    limit: float | None
    unit: str = ""
    note: str = ""

    @property
    def verdict(self) -> str:
        """PASS, FAIL, or n/a when a row it needs is missing."""
        if self.measured is None or self.limit is None:
            return "n/a"
        return "PASS" if self.measured <= self.limit else "FAIL"


def _ok(rows: dict[str, Row], name: str) -> Row | None:
    row = rows.get(name)
    return row if row is not None and row.status == "ok" else None


def _missing(rows: dict[str, Row], *names: str) -> str:
    """Why a target cannot be judged: the rows that did not run or failed."""
    bad = [f"{n}: {rows[n].status if n in rows else 'not run'}" for n in names if not _ok(rows, n)]
    return "; ".join(bad)


def targets(name: str, rows: dict[str, Row]) -> list[Target]:
    """The issue's targets for this problem (issue 13)."""
    out: list[Target] = []

    def ratio(
        label: str,
        ours: str,
        peer: str,
        get: Callable[[Row], float | None],
        factor: float,
        unit: str = "×",
    ) -> None:
        a, b = _ok(rows, ours), _ok(rows, peer)
        x, y = (get(a) if a else None), (get(b) if b else None)
        measured = x / y if x is not None and y else None
        out.append(Target(label, measured, factor, unit, _missing(rows, ours, peer)))

    if name == "minilm":
        ratio(
            "λmax: spectrum-top1 wall ≤ PyHessian top-1 wall",
            "spectrum-top1",
            "pyhessian-top1",
            lambda r: r.wall,
            1.0,
        )
        ratio(
            "λmax: spectrum-top1 peak RSS ≤ 2× PyHessian top-1's",
            "spectrum-top1",
            "pyhessian-top1",
            lambda r: r.rss,
            2.0,
        )
        for row_id, limit in (
            ("spectrum", 250),
            ("trace", 250),
            ("diag", 400),
            ("density", 600),
            ("report", 3000),
        ):
            row = _ok(rows, row_id)
            value = per_gradient(row, rows) if row else None
            out.append(
                Target(
                    f"{row_id} cost.seconds ≤ {limit} gradients",
                    value,
                    limit,
                    "grad",
                    _missing(rows, row_id, "gradient"),
                )
            )
        info = _ok(rows, "info")
        worst: tuple[float, str] | None = None
        for row_id in (
            "spectrum-top1",
            "spectrum-top5",
            "spectrum",
            "trace",
            "diag",
            "density",
            "report",
        ):
            row = _ok(rows, row_id)
            if row and info and row.rss and info.rss:
                above = (row.rss - info.rss) / GIB
                worst = max(worst or (above, row_id), (above, row_id))
        out.append(
            Target(
                "peak RSS ≤ info's + 8 GiB (worst command)",
                worst[0] if worst else None,
                8.0,
                "GiB",
                f"worst: {worst[1]}" if worst else _missing(rows, "info"),
            )
        )
    else:
        ratio(
            "top-5: spectrum-top5 cost.seconds ≤ ½ PyHessian top-5 time",
            "spectrum-top5",
            "pyhessian-top5",
            lambda r: r.seconds,
            0.5,
        )
        ratio(
            f"exact diag of layer {MLP_LAYER} ≤ 3× BackPACK whole-model DiagHessian",
            "diag-layer",
            "backpack-diag",
            lambda r: r.seconds,
            3.0,
        )
    return out


# -- printing ----------------------------------------------------------------------------------


def _f(value: float | None, spec: str) -> str:
    return "—" if value is None else format(value, spec)


def _value(row: Row) -> str:
    if row.value is None:
        return "—"
    mark = {"lambda": "λ ", "trace": "tr ", "layer": "Σ ", "loss": "loss "}.get(row.kind, "")
    flag = "" if row.converged in (None, True) else " (unconv.)"
    return f"{mark}{row.value:.6g}{flag}"


def render(console: Console, name: str, rows: dict[str, Row], ts: list[Target]) -> None:
    """The rows, the hesscli ÷ peer ratios and the targets of one problem."""
    refs = references(rows)
    table = Table(title=f"{name}: whole commands, each a fresh process", title_justify="left")
    for column, justify in (
        ("row", "left"),
        ("wall s", "right"),
        ("own s", "right"),
        ("peak RSS GiB", "right"),
        ("HVPs", "right"),
        ("value", "right"),
        ("rel. diff", "right"),
        ("× grad", "right"),
        ("note", "left"),
    ):
        table.add_column(column, justify=justify, overflow="fold")
    for row in rows.values():
        products = _f(row.products, "d")
        if row.check_products:
            products += f" +{row.check_products}"
        note = row.note if row.status == "ok" else f"[red]{row.status}[/]"
        table.add_row(
            row.label,
            f"{row.wall:.1f}",
            _f(row.seconds, ".2f"),
            _f(row.rss / GIB if row.rss else None, ".2f") + "*" * (row.rss_source == "sampled"),
            products,
            _value(row),
            _f(relative_difference(row, refs), ".1e"),
            _f(per_gradient(row, rows), ".1f"),
            note,
        )
    console.print(table)
    console.print(
        "own s: hesscli's cost.seconds, a peer's construction-to-answer time (no imports, no "
        "loading); × grad: own s ÷ one warm gradient; rel. diff: against "
        + (", ".join(f"{k} of {v[1]}" for k, v in refs.items()) or "nothing (no reference)")
        + "; * peak RSS sampled (a lower bound)"
    )
    ratios = Table(
        title=f"{name}: hesscli ÷ peer (< 1: hesscli faster / smaller)", title_justify="left"
    )
    for column in ("hesscli row", "peer row", "wall", "own s", "peak RSS"):
        ratios.add_column(column, justify="left" if "row" in column else "right")
    for ours, peer in PAIRS:
        a, b = _ok(rows, ours), _ok(rows, peer)
        if ours not in rows or peer not in rows:
            continue

        def quotient(
            get: Callable[[Row], float | None], a: Row | None = a, b: Row | None = b
        ) -> str:
            x, y = (get(a) if a else None), (get(b) if b else None)
            return f"{x / y:.2f}" if x is not None and y else "—"

        ratios.add_row(
            rows[ours].label,
            rows[peer].label,
            quotient(lambda r: r.wall),
            quotient(lambda r: r.seconds),
            quotient(lambda r: r.rss),
        )
    if ratios.row_count:
        console.print(ratios)
    verdicts = Table(title=f"{name}: issue 13 targets", title_justify="left")
    for column in ("target", "measured", "limit", "verdict", "note"):
        verdicts.add_column(column, justify="right" if column in ("measured", "limit") else "left")
    for t in ts:
        colour = {"PASS": "green", "FAIL": "bold red"}.get(t.verdict, "yellow")
        verdicts.add_row(
            t.name,
            _f(t.measured, ".2f") + (f" {t.unit}" if t.measured is not None else ""),
            _f(t.limit, "g") + f" {t.unit}",
            f"[{colour}]{t.verdict}[/]",
            t.note,
        )
    console.print(verdicts)


# -- the machine -------------------------------------------------------------------------------


def cpu_ticks() -> tuple[int, int, int]:
    """Busy and total ticks of all CPUs, and this process's with its finished children's."""
    try:
        with open("/proc/stat", encoding="ascii") as stat:
            cpu = [int(t) for t in stat.readline().split()[1:9]]
    except OSError:
        return 0, 0, 0
    times = os.times()
    own = (times.user + times.system + times.children_user + times.children_system) * (
        os.sysconf("SC_CLK_TCK")
    )
    return sum(cpu) - cpu[3] - cpu[4], sum(cpu), int(own)


def others_share(start: tuple[int, int, int]) -> float:
    """Share of all CPU time since ``start`` used by processes other than these rows."""
    busy, total, own = (b - a for a, b in zip(start, cpu_ticks(), strict=True))
    return max(busy - own, 0) / max(total, 1)


def available_memory() -> int:
    """MemAvailable from /proc/meminfo, bytes (0 when unknown)."""
    try:
        with open("/proc/meminfo", encoding="ascii") as meminfo:
            for line in meminfo:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def versions(python: str) -> dict[str, str]:
    """The packages' versions in the peers' interpreter."""
    code = (
        "import json, importlib.metadata as m\n"
        f"names = {list(PACKAGES)!r}\n"
        "out = {}\n"
        "for n in names:\n"
        "    try: out[n] = m.version(n)\n"
        "    except m.PackageNotFoundError: out[n] = 'missing'\n"
        "print(json.dumps(out))"
    )
    proc = subprocess.run([python, "-c", code], capture_output=True, text=True, check=False)
    return json.loads(proc.stdout) if proc.returncode == 0 else {}


def parse_size(text: str) -> int:
    """``16GiB``, ``16G``, ``16GB``, ``500MB`` → bytes (binary units, as hesscli reads them)."""
    match = re.fullmatch(r"\s*([\d.]+)\s*([KMGT]?)(?:i?B)?\s*", text, re.IGNORECASE)
    if not match:
        raise argparse.ArgumentTypeError(f"not a size: {text!r} (e.g. 16GiB)")
    power = "KMGT".find(match.group(2).upper()) + 1 if match.group(2) else 0
    return int(float(match.group(1)) * 1024**power)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--problems", default="minilm,mlp", help="comma-separated: minilm, mlp")
    parser.add_argument(
        "--rows",
        default=None,
        help="comma-separated row ids or tool names (default: all); rows: "
        + ", ".join(SPECS)
        + "; tools: "
        + ", ".join(TOOLS),
    )
    parser.add_argument("--timeout", type=float, default=900, help="seconds per process")
    parser.add_argument(
        "--rss-limit",
        type=parse_size,
        default=None,
        help="kill a process whose resident memory passes this (default: the machine's "
        "available memory at the start less 1 GiB)",
    )
    parser.add_argument("--json", type=Path, default=None, help="also write every number here")
    parser.add_argument("--python", default=sys.executable, help="the peers' interpreter")
    parser.add_argument(
        "--hesscli-python",
        default=sys.executable,
        help="the interpreter that runs 'python -m hesscli' (default: this one)",
    )
    args = parser.parse_args()
    names = [p.strip() for p in args.problems.split(",") if p.strip()]
    if unknown := set(names) - {"minilm", "mlp"}:
        parser.error(f"unknown problems {sorted(unknown)}; choose from minilm, mlp")
    wanted = None if args.rows is None else {r.strip() for r in args.rows.split(",") if r.strip()}
    if wanted and (unknown := wanted - set(SPECS) - set(TOOLS)):
        parser.error(
            f"unknown rows {sorted(unknown)}; rows: {', '.join(SPECS)}; tools: {', '.join(TOOLS)}"
        )
    if args.rss_limit is None:
        args.rss_limit = max(available_memory() - GIB, 2 * GIB)
    console = Console(width=None if Console().is_terminal else 200)
    found = versions(args.python)
    console.print(
        f"{os.cpu_count()} CPUs, {available_memory() / GIB:.1f} GiB available; timeout "
        f"{args.timeout:g} s, RSS limit {args.rss_limit / GIB:.1f} GiB per process; peak RSS "
        f"from {'GNU time -v' if os.access(GNU_TIME, os.X_OK) else 'getrusage (no /usr/bin/time)'}"
        "; " + ", ".join(f"{k} {v}" for k, v in found.items())
    )
    report: dict[str, Any] = {"versions": found, "timeout": args.timeout, "problems": {}}
    with tempfile.TemporaryDirectory(prefix="hesscli-scale-") as scratch:
        for name in names:
            where = problem(name, Path(scratch), args.python)
            load_before, ticks = os.getloadavg(), cpu_ticks()
            rows: dict[str, Row] = {}
            for spec in SPECS.values():
                if name not in spec.problems:
                    continue
                if wanted and spec.id not in wanted and spec.tool not in wanted:
                    continue
                row = measure(spec, where, args)
                rows[spec.id] = row
                console.print(
                    f"  {name} {spec.id}: {row.status}, {row.wall:.1f} s wall, "
                    f"{_f(row.seconds, '.2f')} s own, "
                    f"{_f(row.rss / GIB if row.rss else None, '.2f')} GiB, {_value(row)}"
                )
            load_after, busy = os.getloadavg(), others_share(ticks)
            ts = targets(name, rows)
            render(console, name, rows, ts)
            line = (
                f"load average (1/5/15 min) before {' '.join(f'{v:.2f}' for v in load_before)}, "
                f"after {' '.join(f'{v:.2f}' for v in load_after)}; other processes used "
                f"{busy:.0%} of the CPU time"
            )
            console.print(
                line if busy <= 0.05 else f"[bold red]warning: {line}; rerun on a quiet machine[/]"
            )
            report["problems"][name] = {
                "rows": {k: asdict(v) for k, v in rows.items()},
                "references": references(rows),
                "targets": [asdict(t) | {"verdict": t.verdict} for t in ts],
                "load_before": load_before,
                "load_after": load_after,
                "others_cpu_share": busy,
                "gradient_unit": rows["gradient"].unit if "gradient" in rows else None,
            }
    if args.json is not None:
        args.json.write_text(json.dumps(report, indent=2, ensure_ascii=False) + "\n")
        console.print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
