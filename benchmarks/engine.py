"""Benchmark hesscli's curvature engine against PyHessian and curvlinops, same model and batch.

Every time is a median over at least ``--repeats`` runs after a warm-up, also shown as a multiple
of one plain-autograd gradient (forward + backward) on the same model and batch. Every product
is checked against hesscli's reverse-over-reverse route in float64 on the same vectors. Peak
memory is the extra memory one call allocates: ``torch.cuda.max_memory_allocated`` on CUDA; on
the CPU the running sum of the allocation events ``torch.profiler`` records (torch tensors only).
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import itertools
import json
import os
import statistics
import time
import warnings
from collections.abc import Callable, Iterator, Mapping
from dataclasses import asdict, dataclass
from importlib.metadata import version
from pathlib import Path
from typing import Any

import torch
from curvlinops import GGNLinearOperator, HessianLinearOperator
from pyhessian import hessian as PyHessian  # GPL: imported and called, never copied
from pyhessian.utils import hessian_vector_product
from rich.console import Console
from rich.table import Table
from torch import nn
from torch.nn import functional as F

from hesscli.batches import Batch, Dataset
from hesscli.engine.operator import CurvatureOperator
from hesscli.loading.problem import load_problem, resolve_settings

K = 16  # columns of the batched products
ROOT = Path(__file__).resolve().parent.parent
Call = Callable[[Any], torch.Tensor | object]
warnings.filterwarnings("ignore", message=".*create_graph=True.*reference cycle")


@dataclass
class Row:
    """One measurement: median seconds per call, the product's error, peak memory of a call."""

    tool: str
    what: str
    seconds: float
    columns: int = 1  # products per call
    error: float | None = None
    peak_bytes: int = 0
    note: str = ""

    @property
    def per_product(self) -> float:
        """Seconds per product (per column of a batched call)."""
        return self.seconds / self.columns


def mlp() -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    """784→300→200→10 ReLU MLP (297,710 parameters), 512 random samples."""
    torch.manual_seed(0)
    layers = [nn.Linear(784, 300), nn.ReLU(), nn.Linear(300, 200), nn.ReLU(), nn.Linear(200, 10)]
    return nn.Sequential(*layers), torch.randn(512, 784), torch.randint(0, 10, (512,))


def cnn() -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    """Conv(3,16,3)→ReLU→MaxPool→Conv(16,32,3)→ReLU→MaxPool→Linear, 256 random 32x32x3."""
    torch.manual_seed(0)
    stage1 = [nn.Conv2d(3, 16, 3), nn.ReLU(), nn.MaxPool2d(2)]
    stage2 = [nn.Conv2d(16, 32, 3), nn.ReLU(), nn.MaxPool2d(2)]
    model = nn.Sequential(*stage1, *stage2, nn.Flatten(), nn.Linear(32 * 6 * 6, 10))
    return model, torch.randn(256, 3, 32, 32), torch.randint(0, 10, (256,))


def sample_problem(name: str, checkpoint: str) -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    """A shipped ``sample_models/<name>`` model and its evaluation batch, via hesscli's loader."""
    folder = ROOT / "sample_models" / name
    settings, _ = resolve_settings(
        {"checkpoint": checkpoint}, cwd=folder, config_path=None, use_config=True
    )
    loaded = load_problem(settings)
    (batch,) = loaded.dataset.batches
    assert isinstance(batch.inputs, torch.Tensor)
    return loaded.model, batch.inputs, batch.targets


def digits_cnn() -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    """The shipped ``sample_models/digits_cnn`` and its 256 samples, via hesscli's loader."""
    return sample_problem("digits_cnn", "model.pt")


MODELS = {"mlp": mlp, "cnn": cnn, "digits_cnn": digits_cnn}


def sync(device: torch.device) -> None:
    """Wait for queued device work, so wall-clock times are complete."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def median_seconds(call: Call, setup: Callable, repeats: int, device: torch.device) -> float:
    """Median wall time of ``call(setup())`` after one warm-up run.

    At least ``repeats`` timed runs, and more (up to 50) until they add up to half a second, so
    that millisecond calls are not judged on five samples. ``setup`` is not timed; it gives each
    run its state (e.g. a fresh operator).
    """
    times: list[float] = []  # times[0] is the warm-up
    while len(times) <= repeats or (sum(times[1:]) < 0.5 and len(times) <= 50):
        state = setup()
        sync(device)
        start = time.perf_counter()
        call(state)
        sync(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times[1:])


@contextlib.contextmanager
def quiet_stderr() -> Iterator[None]:
    """Silence file descriptor 2 (the profiler's C++ start/stop lines); exceptions still raise."""
    saved = os.dup(2)
    with open(os.devnull, "w") as null:
        os.dup2(null.fileno(), 2)
        try:
            yield
        finally:
            os.dup2(saved, 2)
            os.close(saved)


def peak_bytes(call: Call, setup: Callable, device: torch.device) -> int:
    """Extra memory at the peak of one ``call(setup())``; memory live before it is not counted."""
    state = setup()
    if device.type == "cuda":
        sync(device)
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
        call(state)
        sync(device)
        return torch.cuda.max_memory_allocated(device) - base
    cpu = [torch.profiler.ProfilerActivity.CPU]
    with quiet_stderr(), torch.profiler.profile(activities=cpu, profile_memory=True) as prof:
        call(state)
    events = prof.profiler.kineto_results.events()  # type: ignore[union-attr]
    steps = sorted((e.start_ns(), e.nbytes()) for e in events if e.name() == "[memory]")
    return max(itertools.accumulate(b for _, b in steps), default=0)


def cpu_ticks() -> tuple[int, int, int]:
    """Busy and total clock ticks of all CPUs, and this process's own (Linux; else zeros)."""
    try:
        with open("/proc/stat") as stat:
            cpu = [int(t) for t in stat.readline().split()[1:9]]
        with open("/proc/self/stat") as stat:
            own = stat.read().rsplit(")", 1)[1].split()
    except OSError:
        return 0, 0, 0
    return sum(cpu) - cpu[3] - cpu[4], sum(cpu), int(own[11]) + int(own[12])  # utime + stime


def others_share(start: tuple[int, int, int]) -> float:
    """Share of all CPU time since ``start`` that other processes used (0: a quiet machine)."""
    busy, total, own = (b - a for a, b in zip(start, cpu_ticks(), strict=True))
    return max(busy - own, 0) / max(total, 1)


def memory_dataset(x: torch.Tensor, y: torch.Tensor) -> Dataset:
    """One in-memory batch as a hesscli data set."""
    return Dataset((Batch(x, y),), source="bench", format="memory", available=len(y))


class Bench:
    """Runs every tool on one problem and collects the rows, keyed by a short id."""

    def __init__(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, repeats: int) -> None:
        self.model, self.x, self.y, self.repeats = model.eval(), x, y, repeats
        self.device = device = x.device
        self.params = list(self.model.parameters())
        self.data = memory_dataset(self.x, self.y)
        layout = self.op("hessian", method="reverse", verify=False).layout
        # Peers use the model.parameters() order; hesscli's flat order is per layer.
        sizes = [p.numel() for p in self.params]
        names = [n for n, _ in self.model.named_parameters()]
        starts = dict(zip(names, itertools.accumulate([0, *sizes[:-1]]), strict=True))
        ranges = [
            torch.arange(starts[s.name], starts[s.name] + s.stop - s.start) for s in layout.slots
        ]
        self.to_layout = torch.cat(ranges).to(device)  # params-order vector[to_layout] = ours
        self.to_params = torch.argsort(self.to_layout)
        self.size, self.sizes = layout.size, sizes
        generator = torch.Generator().manual_seed(1)
        self.V = torch.randn(self.size, K, generator=generator).to(device)
        self.v = self.V[:, 0].contiguous()
        self.reference = {kind: self._reference(kind) for kind in ("hessian", "ggn")}
        self.rows: dict[str, Row] = {}

    def op(self, kind: str, **options: Any) -> CurvatureOperator:
        """A fresh hesscli operator over the whole batch (one micro-batch)."""
        return CurvatureOperator(
            self.model, self.data, F.cross_entropy, kind=kind, micro_batch=len(self.y), **options
        )

    def _reference(self, kind: str) -> torch.Tensor:
        """C·V in float64 by hesscli's reverse-over-reverse route (unchecked, uncached)."""
        model = copy.deepcopy(self.model).double()
        data = memory_dataset(self.x.double(), self.y)
        options = {
            "method": "reverse",
            "verify": False,
            "cache_bytes": 0,
            "micro_batch": len(self.y),
        }
        op = CurvatureOperator(model, data, F.cross_entropy, kind=kind, **options)
        return op.matmat(self.V.double())

    def add(self, key: str, tool: str, what: str, call: Call, **how: Any) -> Row:
        """Time ``call`` (``how``: setup, kind, note), check its product, measure its peak.

        ``call`` returns the product flat in hesscli's order (``kind`` None: nothing to check).
        """
        setup, kind = how.get("setup", object), how.get("kind", "hessian")
        seconds = median_seconds(call, setup, self.repeats, self.device)
        row = Row(tool, what, seconds, note=how.get("note", ""))
        if kind is not None:
            out = call(setup())
            row.columns = out.shape[1] if out.ndim == 2 else 1
            ref = self.reference[kind][:, : row.columns].reshape(out.shape)
            row.error = float(torch.linalg.norm(out.double() - ref) / torch.linalg.norm(ref))
        row.peak_bytes = peak_bytes(call, setup, self.device)
        self.rows[key] = row
        return row

    def run(self) -> dict[str, Row]:
        """All measurements, in table order."""
        x, y, params = self.x, self.y, self.params

        def gradient(_: object) -> object:
            return torch.autograd.grad(F.cross_entropy(self.model(x), y), params)

        self.add("grad", "autograd", "gradient (fwd+bwd) = unit", gradient, kind=None)
        self._hesscli()
        self._pyhessian()
        self._curvlinops()
        return self.rows

    def _hesscli(self) -> None:
        v, V = self.v, self.V
        routes = {
            "auto": ("hesscli auto (checked)", {}),
            "forward": ("hesscli forward", {"method": "forward", "verify": False}),
            "rev0": ("hesscli reverse, cache 0", {"method": "reverse", "cache_bytes": 0}),
            "rev": ("hesscli reverse, cached", {"method": "reverse"}),
        }
        for key, (tool, options) in routes.items():
            options = {"verify": False, **options} if options else {}
            fresh = lambda o=options: self.op("hessian", **o)  # noqa: E731
            first = self.add(f"h.{key}.first", tool, "H·v first call", _mv(v), setup=fresh)
            op = fresh()
            op.matmat(v)
            self.add(f"h.{key}.steady", tool, "H·v later calls", _mv(v, op))
            self.add(f"h.{key}.k16", tool, f"H·V K={K}, one call", _mv(V, op))
            if key == "auto":
                assert op.route is not None
                checks = ", ".join(f"{r[:3]} {s * 1e3:.1f} ms" for r, s in op.route.seconds.items())
                extra = op.counters.check_products
                first.note = f"picked {op.route.route[:3]}; check: {checks}, {extra} extra products"
        tool, ggn = "hesscli GGN auto (checked)", self.op("ggn")
        ggn.matmat(v)
        assert ggn.route is not None
        fresh_ggn = lambda: self.op("ggn")  # noqa: E731
        first = self.add("g.first", tool, "GGN·v first call", _mv(v), setup=fresh_ggn, kind="ggn")
        first.note = f"picked {ggn.route.route[:3]}, {ggn.counters.check_products} extra products"
        self.add("g.steady", tool, "GGN·v later calls", _mv(v, ggn), kind="ggn")
        self.add("g.k16", tool, f"GGN·V K={K}, one call", _mv(V, ggn), kind="ggn")

    def _as_list(self, v: torch.Tensor) -> list[torch.Tensor]:
        """Our flat vector as a tensor list in ``model.parameters()`` order (PyHessian's)."""
        parts = v[self.to_params].split(self.sizes)
        return [t.view_as(p) for t, p in zip(parts, self.params, strict=True)]

    def _from_list(self, tensors: list[torch.Tensor] | tuple[torch.Tensor, ...]) -> torch.Tensor:
        """A tensor list in ``model.parameters()`` order as our flat vector."""
        return torch.cat([t.reshape(-1) for t in tensors])[self.to_layout]

    def _pyhessian(self) -> None:
        model, batch, vlist = self.model, (self.x, self.y), self._as_list(self.v)
        cuda = self.device.type == "cuda"

        def build(_: object = None) -> PyHessian:
            model.zero_grad(set_to_none=True)  # its backward(create_graph) accumulates in .grad
            return PyHessian(model, F.cross_entropy, data=batch, cuda=cuda)

        def hv(h: PyHessian) -> torch.Tensor:
            return self._from_list(hessian_vector_product(h.gradsH, h.params, vlist))

        tool = "PyHessian hessian(data=)"
        self.add("py.build", tool, "construction (builds graph)", build, kind=None)
        self.add("py.first", tool, "construction + H·v", lambda _: hv(build()))
        kept = build()
        self.add("py.steady", tool, "H·v later calls (graph kept)", lambda _: hv(kept))
        loader = PyHessian(model, F.cross_entropy, dataloader=[batch], cuda=cuda)
        call = lambda _: self._from_list(loader.dataloader_hv_product(vlist)[1])  # noqa: E731
        note = "rebuilds the graph every call"
        self.add(
            "py.loader", "PyHessian hessian(dataloader=)", "dataloader_hv_product", call, note=note
        )
        model.zero_grad(set_to_none=True)  # drop the graph PyHessian left in .grad

    def _curvlinops(self) -> None:
        loss, data = nn.CrossEntropyLoss(), [(self.x, self.y)]
        vp, Vp, back = self.v[self.to_params], self.V[self.to_params], self.to_layout
        for kind, cls, t in (
            ("hessian", HessianLinearOperator, "H"),
            ("ggn", GGNLinearOperator, "GGN"),
        ):
            tool = f"curvlinops {cls.__name__.removesuffix('LinearOperator')}"
            build = lambda _, c=cls: c(self.model, loss, self.params, data)  # noqa: E731
            self.add(f"cl.{t}.build", tool, "construction (+ its checks)", build, kind=None)
            lin = build(None)
            for key, what, vec in (
                ("steady", f"{t}·v later calls", vp),
                ("k16", f"{t}·V K={K}, one call", Vp),
            ):
                product = lambda _, o=lin, m=vec: (o @ m)[back]  # noqa: E731
                self.add(f"cl.{t}.{key}", tool, what, product, kind=kind)


def _mv(matrix: torch.Tensor, op: CurvatureOperator | None = None) -> Call:
    """``call(state)`` = C·matrix by ``op``, or by the operator the set-up passes as state."""
    return lambda state: (op or state).matmat(matrix)


#: (comparison, peer rows (times added; the last one per product), our row): peer / ours.
RATIOS = [
    ("H·v first: PyHessian build + H·v / hesscli auto (checked)", ["py.first"], "h.auto.first"),
    ("H·v first: PyHessian build + H·v / hesscli reverse, cache 0", ["py.first"], "h.rev0.first"),
    ("H·v first: curvlinops build + H·v / hesscli auto (checked)", ["cl.H.build", "cl.H.steady"],
     "h.auto.first"),
    ("H·v later: PyHessian graph kept / hesscli auto", ["py.steady"], "h.auto.steady"),
    ("H·v later: PyHessian graph kept / hesscli reverse, cached", ["py.steady"], "h.rev.steady"),
    ("H·v later: PyHessian dataloader / hesscli reverse, cache 0", ["py.loader"], "h.rev0.steady"),
    ("H·v later: curvlinops / hesscli auto", ["cl.H.steady"], "h.auto.steady"),
    ("H·v later: curvlinops / hesscli forward (same route)", ["cl.H.steady"], "h.forward.steady"),
    (f"H·V K={K} per column: PyHessian (K × H·v) / hesscli auto", ["py.steady"], "h.auto.k16"),
    (f"H·V K={K} per column: curvlinops / hesscli auto", ["cl.H.k16"], "h.auto.k16"),
    ("GGN·v later: curvlinops / hesscli auto", ["cl.GGN.steady"], "g.steady"),
    (f"GGN·V K={K} per column: curvlinops / hesscli auto", ["cl.GGN.k16"], "g.k16"),
]  # fmt: skip
#: Columns of the main table (left-aligned text first).
COLUMNS = ("tool", "measurement", "note", "ms/call", "ms/product", "× grad", "rel. err",
           "peak MiB", "× grad peak")  # fmt: skip


def ratios(rows: dict[str, Row]) -> dict[str, float]:
    """Peer time / hesscli time per product (above 1: hesscli is faster)."""
    out = {}
    for label, peers, ours in RATIOS:
        peer = sum(rows[k].seconds for k in peers[:-1]) + rows[peers[-1]].per_product
        out[label] = peer / rows[ours].per_product
    return out


def render(console: Console, title: str, rows: dict[str, Row], busy: float) -> None:
    """Print the measurement table, the peer/ours ratios and how busy other processes were."""
    grad = rows["grad"]
    table = Table(title=title, title_justify="left")
    for name in COLUMNS:
        table.add_column(name, justify="left" if name in COLUMNS[:3] else "right")
    for r in rows.values():
        table.add_row(
            r.tool, r.what, r.note, f"{r.seconds * 1e3:.2f}", f"{r.per_product * 1e3:.2f}",
            f"{r.per_product / grad.seconds:.2f}", "—" if r.error is None else f"{r.error:.1e}",
            f"{r.peak_bytes / 2**20:.2f}", f"{r.peak_bytes / max(grad.peak_bytes, 1):.1f}",
        )  # fmt: skip
    console.print(table)
    title = "peer time / hesscli time, per product (> 1: hesscli faster)"
    ratio_table(console, title, ratios(rows))
    print_busy(console, busy)


def ratio_table(console: Console, title: str, values: Mapping[str, float | None]) -> None:
    """Print ``label: ratio`` rows (None: not measured)."""
    table = Table(title=title, title_justify="left")
    table.add_column("comparison")
    table.add_column("ratio", justify="right")
    for label, value in values.items():
        table.add_row(label, "—" if value is None else f"{value:.2f}")
    console.print(table)


def print_busy(console: Console, busy: float) -> None:
    """Print how busy other processes kept the CPU (in red above 5 %)."""
    line = f"other processes used {busy:.0%} of the CPU time during these measurements"
    console.print(
        line if busy <= 0.05 else f"[bold red]warning: {line}; rerun on a quiet machine[/]"
    )


def options(description: str, models: dict[str, Any], repeats: int) -> argparse.ArgumentParser:
    """The options every benchmark takes: ``--device``, ``--repeats``, ``--models``, ``--json``."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--device", choices=("cpu", "cuda", "auto"), default="auto")
    parser.add_argument(
        "--repeats", type=int, default=repeats, help="least timed runs after a warm-up"
    )
    parser.add_argument(
        "--models", default=",".join(models), help=f"comma-separated, of {', '.join(models)}"
    )
    parser.add_argument("--json", type=Path, help="also write every number to this file")
    return parser


def begin(
    device: str, packages: tuple[str, ...], width: int = 200
) -> tuple[torch.device, Console, dict[str, str]]:
    """The device (``auto``: CUDA if there is one), a console and the packages' versions.

    Prints the device, torch's thread count and the versions.
    """
    cuda = device == "cuda" or (device == "auto" and torch.cuda.is_available())
    chosen = torch.device("cuda" if cuda else "cpu")
    # Every tool in true float32 (TF32 off, as hesscli computes by default), for the whole run.
    torch.set_float32_matmul_precision("highest")
    torch.backends.cudnn.allow_tf32 = False
    console = Console(width=None if Console().is_terminal else width)
    versions = {p: version(p) for p in packages}
    console.print(
        f"device {chosen}, {torch.get_num_threads()} torch threads, float32 (TF32 off); "
        + ", ".join(f"{k} {v}" for k, v in versions.items())
    )
    return chosen, console, versions


def write_json(console: Console, path: Path | None, report: dict[str, Any]) -> None:
    """Write ``report`` to ``path`` (if given) and say so."""
    if path:
        path.write_text(json.dumps(report, indent=2, ensure_ascii=False))
        console.print(f"wrote {path}")


def main() -> None:
    args = options(__doc__.splitlines()[0], MODELS, repeats=5).parse_args()
    packages = ("torch", "hesscli", "PyHessian", "curvlinops-for-pytorch")
    device, console, versions = begin(args.device, packages)
    cuda = device.type == "cuda"
    console.print("torch.eig is NOT shimmed (only PyHessian's density() needs it; not called).")
    how = "torch.cuda.max_memory_allocated" if cuda else "torch.profiler events, tensors only"
    console.print(f"peak = extra memory allocated at the peak of one call ({how}).")
    report: dict[str, Any] = {"device": str(device), "versions": versions}
    for name in args.models.split(","):
        start = cpu_ticks()
        model, x, y = MODELS[name]()
        bench = Bench(model.to(device), x.to(device), y.to(device), args.repeats)
        rows = bench.run()
        title = (
            f"{name}: {bench.size:,} parameters, {len(y)} samples, median of ≥{args.repeats} runs"
        )
        busy = others_share(start)
        render(console, title, rows, busy)
        report[name] = {
            "parameters": bench.size, "samples": len(y), "repeats": args.repeats, "others": busy,
            "rows": {k: asdict(r) for k, r in rows.items()}, "ratios": ratios(rows),
        }  # fmt: skip
    write_json(console, args.json, report)


if __name__ == "__main__":
    main()
