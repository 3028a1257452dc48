"""``hesscli spectrum``, ``trace`` and ``diag`` through the real command line.

The JSON contract of DESIGN.md, numbers against a dense float64 Hessian built in the test,
seeds, stopping rules, tables, and bad input (exit code 2, one line, inputs untouched).

The dense truth is the engine's own product, ``curvature_operator(...).dense()``; it is
cross-checked once against ``torch.autograd.functional.hessian`` (seed network, every column)
and against one-pass double backward (a few columns of the MLP). The MLP runs use its first
32 samples (``--max-samples 32``) so that the dense truth (3,466 × 3,466) stays cheap. A layer
subset (``--layer fc2 --layer fc3``) is checked against the principal submatrix of its rows.
"""

from __future__ import annotations

import copy
import json
import math
import shutil
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner, Result

import hesscli
from hesscli.cli.app import app
from hesscli.engine.functional import to_device
from hesscli.engine.operator import CurvatureOperator
from tests import dense
from tests.conftest import SAMPLES, WIDTH, tree_digest

F64 = torch.float64
CHECKPOINT = {
    "seed_ann": "model.safetensors",
    "digits_mlp": "model.safetensors",
    "tiny_transformer": "model.safetensors",
}
MLP_SAMPLES = 32
MLP = ("--dtype", "float64", "--max-samples", str(MLP_SAMPLES))
MLP_SUBSET = ("--layer", "fc2", "--layer", "fc3")
SEED = ("--dtype", "float64")
QKV_SAMPLES = 4
#: Relative accuracy promised for eigenvalues in float64 (the default tolerance asks their
#: estimated error ‖r‖²/gap, or the residual in a cluster, to be below 1e-8 · ‖C‖; the
#: actual error is far smaller).
EIG_RTOL = 1e-8

TOP_KEYS = {"schema_version", "command", "inputs", "settings", "results", "cost"}
INPUT_KEYS = {"checkpoint", "model", "data", "loss", "samples", "parameters", "layers"}
SETTING_KEYS = {"curvature", "device", "dtype", "seed"}
COST_KEYS = {"seconds", "hvps", "data_passes"}
EIGEN_KEYS = {"value", "residual", "error", "converged"}
TRACE_KEYS = {"value", "stderr", "exact", "interval", "parameters"}
DIAG_KEYS = {
    "count",
    "mean",
    "std",
    "min",
    "max",
    "median",
    "p01",
    "p99",
    "fraction_negative",
    "sum",
    "exact",
    "largest",
}


# -- helpers ---------------------------------------------------------------------------------
@pytest.fixture(scope="module", autouse=True)
def _one_thread() -> Iterator[None]:
    """One intra-op thread for this module: the models are tiny, and on a shared 2-core runner
    two spinning OpenMP threads per process made every product 10-100x slower (the file took
    ~45-80 s instead of ~9 s). Results do not depend on the thread count."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _json(result: Result) -> dict:
    """The one JSON document on stdout of a successful run."""
    assert result.exit_code == 0, result.output
    text = result.stdout.strip()
    assert text.startswith("{") and text.endswith("}"), result.stdout[:500]
    return json.loads(result.stdout)  # fails on anything but exactly one document


def _invoke(folder: Path, *args: str) -> Result:
    """``hesscli ARGS`` from inside ``folder`` (the sample's hesscli.toml applies)."""
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(folder)
        return CliRunner().invoke(app, list(args), env={"COLUMNS": WIDTH, "NO_COLOR": "1"})


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Callable[..., dict]:
    """``run(folder, command, *options)`` → the JSON document, computed once per module.

    Runs in a module-wide private copy of ``sample_models/`` that nobody writes to; tests that
    write files or check the tree use the function-scoped ``samples`` fixture instead.
    """
    root = tmp_path_factory.mktemp("curvature") / "sample_models"
    shutil.copytree(SAMPLES, root, ignore=shutil.ignore_patterns("__pycache__"))
    done: dict[tuple[str, ...], dict] = {}

    def once(folder: str, command: str, *options: str) -> dict:
        key = (folder, command, *options)
        if key not in done:
            result = _invoke(root / folder, command, CHECKPOINT[folder], "--json", *options)
            done[key] = _json(result)
        return copy.deepcopy(done[key])

    return once


@dataclass(frozen=True)
class Truth:
    """A dense float64 curvature matrix over some layers, with the operator's layout."""

    op: CurvatureOperator
    matrix: torch.Tensor
    blocks: dict[str, tuple[int, int]]  # layer → rows
    slots: dict[str, tuple[int, tuple[int, ...]]]  # parameter → (first row, shape)

    def select(self, names: list[str]) -> Truth:
        """The principal submatrix of the rows of layers ``names``, laid out in that order."""
        rows, blocks, slots, offset = [], {}, {}, 0
        for name in names:
            start, stop = self.blocks[name]
            rows.append(torch.arange(start, stop))
            blocks[name] = (offset, offset + stop - start)
            for parameter, (first, shape) in self.slots.items():
                if start <= first < stop:
                    slots[parameter] = (first - start + offset, shape)
            offset += stop - start
        index = torch.cat(rows)
        return Truth(self.op, self.matrix[index][:, index], blocks, slots)

    @cached_property
    def eigenvalues(self) -> torch.Tensor:
        """All eigenvalues, ascending."""
        return torch.linalg.eigvalsh(self.matrix)

    def block(self, name: str) -> torch.Tensor:
        start, stop = self.blocks[name]
        return self.matrix[start:stop, start:stop]

    @property
    def diagonal(self) -> torch.Tensor:
        return torch.diagonal(self.matrix)

    def row(self, parameter: str, index: list[int]) -> int:
        start, shape = self.slots[parameter]
        return start + (int(np.ravel_multi_index(index, shape)) if shape else 0)


def _truth(folder: str, **settings: object) -> Truth:
    base = SAMPLES / folder
    op = hesscli.curvature_operator(
        base / CHECKPOINT[folder], cwd=base, dtype="float64", **settings
    )
    matrix = op.dense()
    assert matrix.dtype == F64
    return Truth(
        op,
        matrix,
        {b.name: (b.start, b.stop) for b in op.blocks},
        {s.name: (s.start, tuple(s.shape)) for s in op.layout.slots},
    )


@pytest.fixture(scope="module")
def seed_truth() -> Truth:
    """The full 41 × 41 Hessian of the seed network (one sample, MSE)."""
    return _truth("seed_ann")


@pytest.fixture(scope="module")
def mlp_truth() -> Truth:
    """The 3,466 × 3,466 Hessian of the MLP on its first 32 samples."""
    return _truth("digits_mlp", max_samples=MLP_SAMPLES)


def _all_samples(op: CurvatureOperator) -> tuple[object, torch.Tensor]:
    (batch,) = op.dataset.batches
    moved = to_device(batch, device=op.device, dtype=op.dtype)
    return moved.inputs, moved.targets


def _loss_fn(op: CurvatureOperator) -> Callable[[torch.Tensor], torch.Tensor]:
    inputs, targets = _all_samples(op)
    return dense.loss_at(op.model, list(op.layout.names), inputs, targets, op.loss_fn)


def _honest(entries: list, exact: torch.Tensor) -> list[str]:
    """Entries whose residual or error does not bound their distance to ``exact``."""
    slack = 1e-12 * float(exact.abs().max())
    return [
        f"{e}: {float((exact - e['value']).abs().min()):.2e} from every eigenvalue"
        for e in entries
        if float((exact - e["value"]).abs().min()) > min(e["residual"], e["error"]) + slack
        or e["error"] > e["residual"]
    ]


def _check_spectrum(
    found: dict, exact: torch.Tensor, top_k: int, bottom_k: int, where: str
) -> list[str]:
    """Mismatches between a reported spectrum and the ascending eigenvalues ``exact``."""
    scale = float(exact.abs().max())
    problems = []
    for side, expected in [("top", exact.flip(0)[:top_k]), ("bottom", exact[:bottom_k])]:
        got = [e["value"] for e in found[side]]
        want = expected.tolist()
        if len(got) != len(want) or any(
            abs(g - w) > EIG_RTOL * scale for g, w in zip(got, want, strict=False)
        ):
            problems.append(f"{where} {side}: got {got}, dense eigvalsh {want}")
        # Honest residuals and errors: some eigenvalue lies within both of every Ritz value.
        problems += [f"{where} {side}: {line}" for line in _honest(found[side], exact)]
        stuck = [e for e in found[side] if not e["converged"]]
        problems += [f"{where} {side}: {e} not converged" for e in stuck]
    return problems


def _strip_timings(document: dict) -> dict:
    """The document without wall-clock time, the timing-based route explanation and the
    automatic memory budget (a share of the memory free at that moment)."""
    document = copy.deepcopy(document)
    del document["cost"]["seconds"]
    document["results"].pop("engine", None)
    del document["settings"]["memory"]["budget"]
    return document


# -- the dense truth itself --------------------------------------------------------------------
def test_dense_truth_matches_autograd_and_finite_differences(seed_truth, mlp_truth):
    """The engine's dense matrix (used as truth below) against independent double backward."""
    op = seed_truth.op
    fn = _loss_fn(op)
    at = dense.flat_parameters(op.model, list(op.layout.names))
    reference = dense.dense_hessian(fn, at)
    assert op.size == 41
    assert dense.relative(seed_truth.matrix, reference) < 1e-12, dense.worst(
        seed_truth.matrix, reference
    )
    fd = dense.fd_columns(fn, at, torch.eye(op.size, dtype=F64))
    assert dense.relative(fd, reference) < 1e-7, dense.worst(fd, reference)
    # The MLP: a few columns by one-pass double backward over all 32 samples.
    op = mlp_truth.op
    fn = _loss_fn(op)
    at = dense.flat_parameters(op.model, list(op.layout.names))
    assert op.size == 3466 and op.dataset.num_samples == MLP_SAMPLES
    assert mlp_truth.blocks == {"fc1": (0, 2080), "fc2": (2080, 3136), "fc3": (3136, 3466)}
    columns = [0, 2079, 2080, 3100, 3136, 3465]  # first and last of every layer
    units = torch.eye(op.size, dtype=F64)[:, columns]
    reference = dense.hessian_columns(fn, at, units)
    actual = mlp_truth.matrix[:, columns]
    assert dense.relative(actual, reference) < 1e-12, dense.worst(actual, reference)
    assert dense.relative(mlp_truth.matrix, mlp_truth.matrix.T) < 1e-13


# -- JSON contract -----------------------------------------------------------------------------
def _check_envelope(document: dict, command: str) -> None:
    assert document.keys() >= TOP_KEYS
    assert document["schema_version"] == 1
    assert document["command"] == command
    assert document["inputs"].keys() >= INPUT_KEYS
    assert document["settings"].keys() >= SETTING_KEYS
    assert document["cost"].keys() >= COST_KEYS
    cost = document["cost"]
    assert cost["seconds"] >= 0
    assert isinstance(cost["hvps"], int) and cost["hvps"] >= 0
    assert isinstance(cost["data_passes"], int) and cost["data_passes"] >= 1
    assert document["settings"]["dtype"] == "float64"
    assert document["settings"]["curvature"] == "hessian"
    assert document["settings"]["device"] == "cpu"
    assert document["settings"]["seed"] == 0
    assert document["inputs"]["layers"] == ["fc1", "fc2"]
    assert document["inputs"]["parameters"] == 41
    assert document["inputs"]["samples"] == 1
    assert Path(document["inputs"]["checkpoint"]).name == "model.safetensors"


def _check_eigenvalues(entries: list, k: int, order: str, where: str) -> None:
    # A block with a repeated eigenvalue (seed_ann's fc2 block is 16.405·I₅ ⊕ 0) must still
    # list k values: a single-vector Krylov space that becomes invariant early holds only one
    # copy of each eigenvalue, which is not a reason to return fewer (or wrong) values.
    assert len(entries) == k, f"{where}: asked for {k}, got {entries}"
    for entry in entries:
        assert entry.keys() >= EIGEN_KEYS, entry
        assert isinstance(entry["value"], float) and isinstance(entry["converged"], bool)
        assert entry["residual"] >= 0
    values = [e["value"] for e in entries]
    assert values == sorted(values, reverse=order == "top"), f"{where} {order}: {values}"


def test_spectrum_json_contract(run):
    document = run("seed_ann", "spectrum", *SEED, "--top-k", "3", "--bottom-k", "2")
    _check_envelope(document, "spectrum")
    results = document["results"]
    _check_eigenvalues(results["top"], 3, "top", "whole")
    _check_eigenvalues(results["bottom"], 2, "bottom", "whole")
    assert results["layers"] == {}
    assert document["settings"]["options"]["top_k"] == 3
    assert document["settings"]["options"]["bottom_k"] == 2
    assert document["cost"]["hvps"] >= 1


def test_spectrum_per_layer_json_contract(run):
    document = run("seed_ann", "spectrum", *SEED, "--top-k", "3", "--bottom-k", "2", "--per-layer")
    _check_envelope(document, "spectrum")
    layers = document["results"]["layers"]
    assert list(layers) == ["fc1", "fc2"]
    # fc2's block has the eigenvalue 16.405 five times (I₅ ⊗ A): all copies must be listed.
    for name, layer in layers.items():
        _check_eigenvalues(layer["top"], 3, "top", name)
        _check_eigenvalues(layer["bottom"], 2, "bottom", name)


def test_trace_json_contract(run):
    document = run("seed_ann", "trace", *SEED)
    _check_envelope(document, "trace")
    results = document["results"]
    assert results["trace"].keys() >= TRACE_KEYS
    assert list(results["layers"]) == ["fc1", "fc2"]
    for layer in results["layers"].values():
        assert layer.keys() >= TRACE_KEYS
    assert results["trace"]["parameters"] == 41
    assert [layer["parameters"] for layer in results["layers"].values()] == [16, 25]
    total = sum(layer["value"] for layer in results["layers"].values())
    assert total == pytest.approx(results["trace"]["value"], rel=1e-9)


def test_diag_json_contract(run):
    document = run("seed_ann", "diag", *SEED, "--largest", "3")
    _check_envelope(document, "diag")
    layers = document["results"]["layers"]
    assert list(layers) == ["fc1", "fc2"]
    for name, summary in layers.items():
        assert summary.keys() >= DIAG_KEYS, summary.keys()
        assert len(summary["largest"]) == 3
        for entry in summary["largest"]:
            assert set(entry) >= {"parameter", "index", "value"}
            assert entry["parameter"].startswith(f"{name}.")
            assert all(isinstance(i, int) for i in entry["index"])
        assert summary["min"] <= summary["p01"] <= summary["median"] <= summary["p99"]
        assert summary["p99"] <= summary["max"]
        assert 0 <= summary["fraction_negative"] <= 1
        assert summary["sum"] == pytest.approx(summary["mean"] * summary["count"], rel=1e-12)
    assert [s["count"] for s in layers.values()] == [16, 25]


# -- numbers against the dense truth -----------------------------------------------------------
def test_spectrum_of_seed_network_matches_dense(run, seed_truth):
    document = run("seed_ann", "spectrum", *SEED, "--per-layer")
    problems = _check_spectrum(document["results"], seed_truth.eigenvalues, 5, 1, "whole")
    assert not problems, "\n".join(problems)


def test_spectrum_per_layer_of_seed_network_matches_dense_blocks(run, seed_truth):
    # The fc2 block is I₅ ⊗ A: the top-5 is [16.405] × 5, found by restarts of Lanczos.
    document = run("seed_ann", "spectrum", *SEED, "--per-layer")
    problems = []
    for name in ("fc1", "fc2"):
        found = document["results"]["layers"][name]
        exact = torch.linalg.eigvalsh(seed_truth.block(name))
        problems += _check_spectrum(found, exact, 5, 1, name)
        assert found["parameters"] == seed_truth.blocks[name][1] - seed_truth.blocks[name][0]
    assert not problems, "\n".join(problems)


def test_spectrum_of_mlp_matches_dense(run, mlp_truth):
    document = run("digits_mlp", "spectrum", *MLP, "--per-layer")
    assert document["inputs"]["samples"] == MLP_SAMPLES
    assert document["inputs"]["parameters"] == 3466
    problems = _check_spectrum(document["results"], mlp_truth.eigenvalues, 5, 1, "whole")
    # The Hessian of a trained classifier is indefinite: the bottom must be negative.
    assert document["results"]["bottom"][0]["value"] < 0
    assert not problems, "\n".join(problems)


def test_spectrum_per_layer_of_mlp_matches_dense_blocks(run, mlp_truth):
    document = run("digits_mlp", "spectrum", *MLP, "--per-layer")
    problems = []
    for name in ("fc1", "fc2", "fc3"):
        exact = torch.linalg.eigvalsh(mlp_truth.block(name))
        problems += _check_spectrum(document["results"]["layers"][name], exact, 5, 1, name)
    assert not problems, "\n".join(problems)


def test_spectrum_of_a_layer_subset_is_that_of_its_submatrix(run, mlp_truth):
    document = run("digits_mlp", "spectrum", *MLP, *MLP_SUBSET)
    assert document["inputs"]["layers"] == ["fc2", "fc3"]
    assert document["results"]["layers"] == {}
    truth = mlp_truth.select(["fc2", "fc3"])
    problems = _check_spectrum(document["results"], truth.eigenvalues, 5, 1, "fc2+fc3")
    assert not problems, "\n".join(problems)


def test_unconverged_eigenvalues_are_flagged_and_honest(run, mlp_truth):
    document = run("digits_mlp", "spectrum", *MLP, "--max-steps", "4", "--top-k", "2")
    results = document["results"]
    entries = results["top"] + results["bottom"]
    assert results["steps"] == 4 and results["exact"] is False
    assert not any(e["converged"] for e in entries), entries
    assert not _honest(entries, mlp_truth.eigenvalues)
    exact = mlp_truth.eigenvalues
    for entry in entries:  # Ritz values lie inside the spectrum
        assert float(exact[0]) - 1e-12 <= entry["value"] <= float(exact[-1]) + 1e-12


def test_looser_tolerance_stops_earlier_and_says_so(run, mlp_truth):
    loose = run("digits_mlp", "spectrum", *MLP, "--tol", "1e-2")["results"]
    default = run("digits_mlp", "spectrum", *MLP, "--per-layer")["results"]
    assert loose["tolerance"] == 1e-2 and default["tolerance"] == 1e-8  # float64 default
    assert loose["steps"] < default["steps"]
    norm = float(mlp_truth.eigenvalues.abs().max())
    entries = loose["top"] + loose["bottom"]
    assert not _honest(entries, mlp_truth.eigenvalues)
    for entry in entries:  # "converged" means error ≤ tol·‖C‖
        if entry["converged"]:
            assert entry["error"] <= 1e-2 * norm * (1 + 1e-6), entry


@pytest.mark.parametrize(
    ("folder", "options"),
    [
        ("seed_ann", (*SEED, "--method", "exact")),
        ("seed_ann", SEED),  # 41 parameters: auto is exact
        ("digits_mlp", (*MLP, "--method", "exact")),
        ("digits_mlp", (*MLP, *MLP_SUBSET, "--method", "exact")),
    ],
    ids=["seed-exact", "seed-auto", "mlp-exact", "mlp-subset-exact"],
)
def test_exact_trace_matches_dense(run, seed_truth, mlp_truth, folder, options):
    truth = seed_truth if folder == "seed_ann" else mlp_truth
    if "--layer" in options:
        truth = truth.select(["fc2", "fc3"])
    document = run(folder, "trace", *options)
    results = document["results"]
    assert results["method"] == "exact"
    assert results["stopped"] == "exact"
    expected = float(torch.trace(truth.matrix))
    assert results["trace"]["value"] == pytest.approx(expected, rel=1e-10)
    assert results["trace"]["stderr"] == 0 and results["trace"]["exact"] is True
    assert results["trace"]["interval"] == 0
    for name in truth.blocks:
        layer = results["layers"][name]
        assert layer["value"] == pytest.approx(float(torch.trace(truth.block(name))), rel=1e-10)
        assert layer["exact"] is True and layer["stderr"] == 0
    total = sum(layer["value"] for layer in results["layers"].values())
    assert total == pytest.approx(results["trace"]["value"], rel=1e-9)


def _check_diagonal(document: dict, truth: Truth, largest: int) -> None:
    layers = document["results"]["layers"]
    assert list(layers) == list(truth.blocks)
    for name, (start, stop) in truth.blocks.items():
        s = layers[name]
        d = truth.diagonal[start:stop]
        scale = float(d.abs().max())
        close = {"rel": 1e-10, "abs": 1e-12 * scale}
        assert s["exact"] is True, (name, s)
        assert s["count"] == stop - start
        assert s["mean"] == pytest.approx(float(d.mean()), **close), name
        assert s["min"] == pytest.approx(float(d.min()), **close), name
        assert s["max"] == pytest.approx(float(d.max()), **close), name
        assert s["sum"] == pytest.approx(float(d.sum()), **close), name
        assert s["std"] == pytest.approx(float(d.std(unbiased=False)), **close), name
        p01, median, p99 = np.quantile(d.numpy(), [0.01, 0.5, 0.99])
        assert [s["p01"], s["median"], s["p99"]] == pytest.approx([p01, median, p99], **close)
        # Entries that are zero up to round-off may fall either side of 0.
        fuzz = 1e-12 * scale
        assert float((d < -fuzz).double().mean()) <= s["fraction_negative"], name
        assert s["fraction_negative"] <= float((d < fuzz).double().mean()), name
        # The largest |entries|: the right values, at the parameter and index they name.
        assert len(s["largest"]) == min(largest, stop - start)
        kth = float(d.abs().sort(descending=True).values[len(s["largest"]) - 1])
        for entry in s["largest"]:
            row = truth.row(entry["parameter"], entry["index"])
            assert start <= row < stop, entry
            assert entry["value"] == pytest.approx(float(truth.matrix[row, row]), **close), entry
            assert abs(entry["value"]) >= kth - fuzz, (entry, kth)
        magnitudes = [abs(e["value"]) for e in s["largest"]]
        assert magnitudes == sorted(magnitudes, reverse=True)


def test_exact_diagonal_of_seed_network_matches_dense(run, seed_truth):
    _check_diagonal(run("seed_ann", "diag", *SEED, "--exact"), seed_truth, 5)


def test_exact_diagonal_of_mlp_matches_dense(run, mlp_truth):
    document = run("digits_mlp", "diag", *MLP, "--largest", "7")
    _check_diagonal(document, mlp_truth, 7)  # auto: every layer small enough to be exact


def test_exact_diagonal_of_a_layer_subset(run, mlp_truth):
    document = run("digits_mlp", "diag", *MLP, *MLP_SUBSET, "--exact")
    _check_diagonal(document, mlp_truth.select(["fc2", "fc3"]), 5)


def test_exact_diagonal_of_transformer_attention_matches_dense(run):
    truth = _truth("tiny_transformer", max_samples=QKV_SAMPLES, layers=["attn.qkv"])
    options = ("--dtype", "float64", "--max-samples", str(QKV_SAMPLES), "--layer", "attn.qkv")
    document = run("tiny_transformer", "diag", *options, "--exact")
    assert document["inputs"]["layers"] == ["attn.qkv"]
    _check_diagonal(document, truth, 5)


# -- seeds -------------------------------------------------------------------------------------
HUTCH_BUDGET = (*MLP, "--method", "hutch++", "--products", "40", "--target-error", "0")


def _flatten(value: object, path: str = "") -> dict[str, object]:
    if isinstance(value, dict):
        return {
            k: v for key, item in value.items() for k, v in _flatten(item, f"{path}.{key}").items()
        }
    if isinstance(value, list):
        return {
            k: v for i, item in enumerate(value) for k, v in _flatten(item, f"{path}[{i}]").items()
        }
    return {path: value}


def test_same_seed_gives_identical_json(samples, monkeypatch, cli):
    monkeypatch.chdir(samples / "digits_mlp")
    first = _json(cli("trace", "model.safetensors", "--json", *HUTCH_BUDGET, "--seed", "7"))
    second = _json(cli("trace", "model.safetensors", "--json", *HUTCH_BUDGET, "--seed", "7"))
    assert first["settings"]["seed"] == 7
    assert first["results"]["trace"]["exact"] is False
    if first["results"]["engine"]["route"] == second["results"]["engine"]["route"]:
        assert _strip_timings(first) == _strip_timings(second)
    else:  # the timing-based route choice flipped: the same numbers to round-off
        a, b = _flatten(_strip_timings(first)), _flatten(_strip_timings(second))
        assert a.keys() == b.keys()
        for key, value in a.items():
            if isinstance(value, float):
                assert b[key] == pytest.approx(value, rel=1e-12, abs=1e-15), key
            else:
                assert b[key] == value, key


def test_different_seed_gives_a_different_estimate(run):
    zero = run("digits_mlp", "trace", *HUTCH_BUDGET)["results"]
    one = run("digits_mlp", "trace", *HUTCH_BUDGET, "--seed", "1")["results"]
    assert zero["trace"]["value"] != one["trace"]["value"]
    assert zero["trace"]["stderr"] != one["trace"]["stderr"]
    assert zero["trace"]["stderr"] > 0 and one["trace"]["stderr"] > 0
    # Two estimates of the same trace agree within their standard errors (generously).
    gap = abs(zero["trace"]["value"] - one["trace"]["value"])
    assert gap <= 6 * math.hypot(zero["trace"]["stderr"], one["trace"]["stderr"])


# -- trace stopping ----------------------------------------------------------------------------
def test_trace_spends_exactly_the_budget_without_a_target(run):
    document = run("digits_mlp", "trace", *HUTCH_BUDGET)
    results = document["results"]
    assert results["stopped"] == "budget"
    assert results["method"] == "hutch++"
    assert document["cost"]["hvps"] == 40
    assert results["budget"] == 40
    assert results["trace"]["exact"] is False and results["trace"]["stderr"] > 0
    assert results["trace"]["parameters"] == 3466
    total = sum(layer["value"] for layer in results["layers"].values())
    assert total == pytest.approx(results["trace"]["value"], rel=1e-9)
    assert list(results["layers"]) == ["fc1", "fc2", "fc3"]
    for layer in results["layers"].values():
        assert layer["exact"] is False and layer["stderr"] > 0


def test_trace_hutchpp_stops_on_the_target(run):
    # The default budget (100 products) is too small for 1 % here; a larger one stops early.
    document = run("digits_mlp", "trace", *MLP, "--method", "hutch++", "--products", "5000")
    results = document["results"]
    assert results["stopped"] == "target" and results["target"] == 0.01
    trace = results["trace"]
    assert trace["exact"] is False and 0 < trace["stderr"] <= 0.01 * abs(trace["value"])
    assert 0 < document["cost"]["hvps"] < 5000
    total = sum(layer["value"] for layer in results["layers"].values())
    assert total == pytest.approx(trace["value"], rel=1e-9)


def test_trace_default_budget_bounds_the_work_and_reports_its_error(run):
    document = run("digits_mlp", "trace", *MLP, "--method", "hutch++")
    results = document["results"]
    assert results["budget"] == 100
    assert results["stopped"] in ("budget", "target")
    assert document["cost"]["hvps"] <= 100
    assert results["trace"]["stderr"] > 0


def test_trace_default_is_exact_when_every_layer_has_a_fast_diagonal(run, mlp_truth):
    """digits_mlp is all Linear layers: the exact diagonal is cheap, so the trace is exact."""
    document = run("digits_mlp", "trace", *MLP)
    results = document["results"]
    assert results["method"] == "exact" and results["stopped"] == "exact"
    assert results["trace"]["stderr"] == 0
    assert results["trace"]["value"] == pytest.approx(
        float(torch.trace(mlp_truth.matrix)), rel=1e-10
    )
    assert document["cost"]["hvps"] == 0 and document["cost"]["output_space_products"] > 0


def test_trace_of_small_model_is_exact_by_default(run):
    results = run("seed_ann", "trace", *SEED)["results"]
    assert results["method"] == "exact"
    assert results["stopped"] == "exact"
    assert results["trace"]["stderr"] == 0 and results["trace"]["exact"] is True


# -- estimated diagonal, GGN -------------------------------------------------------------------
def test_estimated_diagonal_says_so_and_is_close(run, mlp_truth):
    document = run("digits_mlp", "diag", *MLP, "--layer", "fc3", "--estimate", "--products", "30")
    summary = document["results"]["layers"]["fc3"]
    start, stop = mlp_truth.blocks["fc3"]
    d = mlp_truth.diagonal[start:stop]
    assert summary["exact"] is False
    assert summary["stderr"] > 0
    assert summary["count"] == stop - start == 330
    assert document["cost"]["hvps"] == 30
    assert abs(summary["sum"] - float(d.sum())) < 0.2 * abs(float(d.sum()))
    # The per-entry standard error also bounds the error of their mean (generously).
    assert abs(summary["mean"] - float(d.mean())) <= 5 * summary["stderr"]


def test_ggn_spectrum_is_positive_semidefinite(run):
    document = run("digits_mlp", "spectrum", *MLP, "--curvature", "ggn", "--top-k", "1")
    assert document["settings"]["curvature"] == "ggn"
    top = document["results"]["top"][0]["value"]
    bottom = document["results"]["bottom"][0]["value"]
    assert top > 0
    assert bottom >= -1e-8 * top, (bottom, top)


def test_ggn_equals_hessian_on_the_last_layer(run):
    """Outputs are linear in fc3's parameters, so the fc3 blocks of GGN and Hessian agree."""
    options = (*MLP, "--layer", "fc3", "--method", "exact")
    hessian = run("digits_mlp", "trace", *options)["results"]["trace"]["value"]
    ggn = run("digits_mlp", "trace", *options, "--curvature", "ggn")["results"]["trace"]["value"]
    assert ggn == pytest.approx(hessian, rel=1e-10)


# -- tables ------------------------------------------------------------------------------------
def _table(result: Result) -> str:
    assert result.exit_code == 0, result.output
    assert result.stderr.strip() == ""  # progress bars are transient; nothing else is said
    text = result.stdout
    assert max(len(line) for line in text.splitlines()) <= int(WIDTH)
    assert "curvature-vector products" in text
    assert "\nroute: " in text
    return text


def test_spectrum_table(cli, samples, monkeypatch):
    monkeypatch.chdir(samples / "seed_ann")
    text = _table(cli("spectrum", "model.safetensors", "--per-layer"))
    for layer in ("(all selected)", "fc1", "fc2"):
        assert f"│ {layer} " in text
    for heading in ("layer", "parameters", "λmax", "λmin", "residual", "converged", "steps"):
        assert heading in text
    assert "Extreme eigenvalues of the hessian" in text


def test_trace_table(cli, samples, monkeypatch):
    monkeypatch.chdir(samples / "digits_mlp")
    text = _table(cli("trace", "model.safetensors", *HUTCH_BUDGET))
    for layer in ("(all selected)", "fc1", "fc2", "fc3"):
        assert f"│ {layer} " in text
    for heading in ("trace", "± stderr", "95 % interval ±", "exact"):
        assert heading in text
    assert "stopped on budget" in text
    assert "3,466" in text


def test_diag_table(cli, samples, monkeypatch):
    monkeypatch.chdir(samples / "digits_mlp")
    text = _table(cli("diag", "model.safetensors", *MLP))
    for layer in ("fc1", "fc2", "fc3"):  # one row per layer, no whole-model row
        assert f"│ {layer} " in text
    assert "(all selected)" not in text
    headings = ("count", "mean", "std", "min", "p01", "median", "p99", "max", "neg", "frac")
    for heading in (*headings, "sum", "exact", "largest"):  # "neg frac" wraps at 120
        assert heading in text
    assert "methods:" in text


# -- bad input ---------------------------------------------------------------------------------
BAD = [
    (("spectrum", "--top-k", "0", "--bottom-k", "0"), ["--top-k", "--bottom-k"]),
    (("spectrum", "--tol", "-1"), ["--tol"]),
    (("spectrum", "--tol", "0"), ["--tol"]),
    (("spectrum", "--max-steps", "0"), ["--max-steps"]),
    (("trace", "--method", "bogus"), ["bogus", "hutch++"]),
    (("diag", "--layer", "nonexistent"), ["nonexistent", "fc1", "fc2"]),
    (("spectrum", "--layer", "fc3"), ["fc3", "fc2"]),  # close names
    (("trace", "--curvature", "foo"), ["foo", "ggn"]),
    (("diag", "--curvature", "foo"), ["foo", "ggn"]),
    (("trace", "--products", "0"), ["--products"]),
    (("diag", "--products", "0"), ["--products"]),
    (("trace", "--target-error", "-1"), ["--target-error"]),
    (("spectrum", "--hvp-method", "sideways"), ["sideways"]),
    (("diag", "--largest", "-1"), ["--largest"]),
    (("trace", "--dtype", "float16"), ["float16"]),
]


@pytest.mark.parametrize(("args", "named"), BAD, ids=[" ".join(a) for a, _ in BAD])
def test_bad_input_is_one_line_exit_2(cli, samples, monkeypatch, args, named):
    monkeypatch.chdir(samples / "seed_ann")
    before = tree_digest(samples)
    command, *options = args
    result = cli(command, "model.safetensors", *options)
    assert result.exit_code == 2, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exc_info
    assert result.stdout == ""
    assert "Traceback" not in result.output
    message = result.stderr.strip()
    assert len(message.splitlines()) == 1, result.stderr
    assert message.startswith("hesscli: error:"), message
    for word in named:
        assert word in message, message
    assert tree_digest(samples) == before


# -- outputs -----------------------------------------------------------------------------------
@pytest.mark.parametrize("command", ["spectrum", "trace", "diag"])
def test_output_file_is_written_outside_the_inputs(cli, samples, tmp_path, monkeypatch, command):
    monkeypatch.chdir(samples / "seed_ann")
    before = tree_digest(samples)
    out = tmp_path / "out"
    out.mkdir()
    result = cli(command, "model.safetensors", *SEED, "--json", "--output", str(out / "r.json"))
    document = _json(result)
    assert json.loads((out / "r.json").read_text()) == document
    result = cli(command, "model.safetensors", *SEED, "--output", str(out / "r.txt"))
    assert result.exit_code == 0, result.output
    text = (out / "r.txt").read_text()
    assert "(all selected)" in text or "│ fc1 " in text
    assert "route: " in text
    # Without --json, a .json output still gets JSON while stdout shows the table.
    result = cli(command, "model.safetensors", *SEED, "--output", str(out / "again.json"))
    assert result.exit_code == 0 and result.stdout.lstrip().startswith(("Extreme", "Trace", "Diag"))
    assert json.loads((out / "again.json").read_text())["command"] == command
    assert tree_digest(samples) == before


@pytest.mark.parametrize("command", ["spectrum", "trace", "diag"])
@pytest.mark.parametrize("target", ["model.safetensors", "data.pt", "hesscli.toml", "model.py"])
def test_output_never_overwrites_an_input(cli, samples, monkeypatch, command, target):
    folder = samples / "seed_ann"
    monkeypatch.chdir(folder)
    before = tree_digest(samples)
    result = cli(command, "model.safetensors", "--json", "--output", target)
    assert result.exit_code == 2, result.output
    assert result.stdout == ""
    message = result.stderr.strip()
    assert message.startswith("hesscli: error:") and len(message.splitlines()) == 1, message
    assert "is one of the input files" in message
    assert tree_digest(samples) == before


def test_output_into_a_directory_is_refused(cli, samples, tmp_path, monkeypatch):
    monkeypatch.chdir(samples / "seed_ann")
    before = tree_digest(samples)
    result = cli("trace", "model.safetensors", "--output", str(tmp_path))
    assert result.exit_code == 2, result.output
    assert "is a directory" in result.stderr
    assert tree_digest(samples) == before


def test_too_small_a_trace_budget_is_a_usage_error(cli, samples, monkeypatch):
    monkeypatch.chdir(samples / "digits_mlp")
    result = cli("trace", "model.safetensors", "--method", "hutchinson", "--products", "4")
    assert result.exit_code == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "a budget of 4 products leaves fewer than" in lines[0]
    assert "raise --products" in lines[0]
