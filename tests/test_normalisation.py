"""What the loss is a mean over (samples or real tokens), how micro-batches are weighted by it,
and the engine's reports: attention kernel and the finite-difference route.

The truth for the per-token tagger (sample_models/tiny_tagger: 256 sequences of up to 12
tokens, -100 at padding, sorted longest first) is plain PyTorch on all 256 sequences at once:
``F.cross_entropy(model(**inputs), targets)``, the mean over the 1,756 real tokens, and its
Hessian by double backward. Micro-batches of 32 sequences hold from 377 down to 71 real tokens,
so weighting them by sequences instead of tokens is visibly wrong.
"""

from __future__ import annotations

import copy
import importlib.util
import json
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from torch import nn
from typer.testing import CliRunner

from hesscli.batches import Batch, Dataset
from hesscli.cli.app import app
from hesscli.engine.operator import CurvatureOperator
from hesscli.engine.weighting import Weighting
from hesscli.errors import LossError
from hesscli.loading.losses import BUILTIN_LOSSES, Loss, check_fit, resolve_normalisation
from tests import dense
from tests.conftest import SAMPLES, WIDTH

F64 = torch.float64
CE = BUILTIN_LOSSES["cross_entropy"]
SEQUENCES, TOKENS = 256, 1756


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A module-wide private copy of ``sample_models/`` that nobody writes to."""
    target = tmp_path_factory.mktemp("normalisation") / "sample_models"
    shutil.copytree(SAMPLES, target, ignore=shutil.ignore_patterns("__pycache__"))
    return target


def _invoke(folder: Path, *args: str):
    """``hesscli ARGS`` from inside ``folder`` (its hesscli.toml applies)."""
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(folder)
        return CliRunner().invoke(app, list(args), env={"COLUMNS": WIDTH, "NO_COLOR": "1"})


@pytest.fixture(scope="module")
def run(root: Path) -> Callable[..., dict]:
    """``run(folder, command, *options)`` → the JSON document (each run once per module)."""
    done: dict[tuple[str, ...], dict] = {}

    def once(folder: str, command: str, *options: str) -> dict:
        key = (folder, command, *options)
        if key not in done:
            result = _invoke(root / folder, command, "model.safetensors", "--json", *options)
            assert result.exit_code == 0, result.output
            done[key] = json.loads(result.stdout)
        return copy.deepcopy(done[key])

    return once


class Tagger:
    """The tagger and its data in float64, loaded with plain PyTorch (no hesscli)."""

    def __init__(self, folder: Path) -> None:
        spec = importlib.util.spec_from_file_location("_tagger_for_tests", folder / "model.py")
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        model = module.TinyTagger()
        model.load_state_dict(load_file(folder / "model.safetensors"))
        self.model: nn.Module = model.double().eval()
        data = torch.load(folder / "data.pt")
        self.inputs: dict[str, torch.Tensor] = data["inputs"]
        self.targets: torch.Tensor = data["targets"]

    def dataset(self) -> Dataset:
        return Dataset((Batch(self.inputs, self.targets),), "memory", "memory", SEQUENCES)

    def loss(self, sequences: slice = slice(None)) -> float:
        """Mean cross-entropy over the real tokens of ``sequences``, in one forward."""
        inputs = {k: v[sequences] for k, v in self.inputs.items()}
        with torch.no_grad():
            return float(F.cross_entropy(self.model(**inputs), self.targets[sequences]))

    def hessian_columns(self, names: list[str], vectors: torch.Tensor) -> torch.Tensor:
        """H·V by double backward of the token-mean loss over all sequences in one pass."""

        def loss(flat: torch.Tensor) -> torch.Tensor:
            with dense.swapped(self.model, names, flat), dense.MATH_ATTENTION():
                return F.cross_entropy(self.model(**self.inputs), self.targets)

        return dense.hessian_columns(loss, dense.flat_parameters(self.model, names), vectors)


@pytest.fixture(scope="module")
def tagger(root: Path) -> Tagger:
    return Tagger(root / "tiny_tagger")


# -- choosing the unit -------------------------------------------------------------------------
def _loss(name: str) -> Loss:
    fn = BUILTIN_LOSSES.get(name, lambda outputs, targets: outputs.sum())
    return Loss(name, fn, "option")


LABELS = torch.tensor([0, 2, 1, 1])
PADDED = torch.tensor([[0, 1, -100], [2, -100, -100]])
POSITIONS = torch.tensor([[0, 1, 2], [2, 1, 0]])


@pytest.mark.parametrize(
    ("loss", "targets", "kind", "why"),
    [
        ("cross_entropy", PADDED, "tokens", "padding"),
        ("nll", PADDED, "tokens", "padding"),
        ("cross_entropy", torch.tensor([0, -100, 1]), "tokens", "padding"),
        ("my_loss.py:per_token", PADDED, "tokens", "padding"),  # -100 means padding anywhere
        ("cross_entropy", POSITIONS, "tokens", "one label per position"),
        ("nll", POSITIONS, "tokens", "one label per position"),
        ("my_loss.py:per_sequence", POSITIONS, "samples", None),  # a custom loss decides
        ("cross_entropy", LABELS, "samples", None),
        ("mse", torch.randn(4, 3), "samples", None),
        ("cross_entropy", torch.rand(4, 3).softmax(1), "samples", None),  # soft labels
        ("bce_with_logits", torch.tensor([[True, False]]), "samples", None),
    ],
)
def test_auto_normalisation(loss, targets, kind, why):
    chosen, reason = resolve_normalisation("auto", _loss(loss), targets)
    assert chosen == kind
    assert reason.startswith("auto")
    if why is not None:
        assert why in reason


@pytest.mark.parametrize("requested", ["samples", "tokens", " Tokens ", "SAMPLES"])
def test_requested_normalisation_is_kept(requested):
    chosen, reason = resolve_normalisation(requested, _loss("cross_entropy"), PADDED)
    assert chosen == requested.strip().lower()
    assert reason == "as requested"


@pytest.mark.parametrize(
    "targets", [torch.randn(4, 3), torch.tensor([[True, False]]), torch.randn(2, 3, dtype=F64)]
)
def test_tokens_need_integer_targets(targets):
    with pytest.raises(LossError, match=r"--normalisation tokens counts integer targets"):
        resolve_normalisation("tokens", _loss("mse"), targets)


@pytest.mark.parametrize("requested", ["words", "", "mean", "token"])
def test_unknown_normalisation(requested):
    with pytest.raises(LossError, match=r"unknown --normalisation"):
        resolve_normalisation(requested, _loss("cross_entropy"), PADDED)


def test_padding_passes_the_label_check():
    loss = _loss("cross_entropy")
    outputs = torch.randn(2, 3, 3)  # (N, C, T)
    check_fit(loss, outputs, PADDED)
    # The probe's samples may all be padding while later ones are not: the data as a whole is
    # judged when its tokens are counted (test_cli_all_padding_is_one_error_line).
    check_fit(loss, outputs, torch.full((2, 3), -100))
    # Other negative labels are still errors: only -100 is padding.
    with pytest.raises(LossError, match=r"class labels in \[-5, 2\]"):
        check_fit(loss, outputs, torch.tensor([[0, 1, -5], [2, 0, 0]]))


def test_cli_all_padding_is_one_error_line(root, tmp_path):
    folder = tmp_path / "tagger"
    shutil.copytree(root / "tiny_tagger", folder, ignore=shutil.ignore_patterns("__pycache__"))
    data = torch.load(folder / "data.pt")
    torch.save(
        {"inputs": data["inputs"], "targets": torch.full_like(data["targets"], -100)},
        folder / "padding.pt",
    )
    result = _invoke(folder, "info", "model.safetensors", "--data", "padding.pt")
    context = f"exit {result.exit_code}\nstdout:\n{result.stdout}\nstderr:\n{result.stderr}"
    assert result.exit_code == 2, context
    assert "Traceback" not in result.output, context
    lines = result.stderr.splitlines()
    assert len(lines) == 1, context
    assert "the data holds no real tokens (every target is padding)" in lines[0], context


def test_padding_in_the_first_samples_only_is_fine(root, tmp_path):
    folder = tmp_path / "tagger"
    shutil.copytree(root / "tiny_tagger", folder, ignore=shutil.ignore_patterns("__pycache__"))
    data = torch.load(folder / "data.pt")
    targets = data["targets"].clone()
    targets[:8] = -100  # the samples the data-fit probe runs
    torch.save({"inputs": data["inputs"], "targets": targets}, folder / "late.pt")
    result = _invoke(folder, "info", "model.safetensors", "--data", "late.pt", "--json")
    assert result.exit_code == 0, result.output
    real = int((targets != -100).sum())
    assert json.loads(result.stdout)["settings"]["normalisation"]["units"] == real


# -- the tagger: token weighting of micro-batches ----------------------------------------------
def test_the_tagger_data_is_what_the_tests_assume(tagger):
    real = tagger.targets != -100
    assert tagger.targets.shape == (SEQUENCES, 12)
    assert int(real.sum()) == TOKENS
    per_sequence = real.sum(dim=1)
    # Longest first, so micro-batches of 32 hold very different numbers of real tokens.
    assert bool((per_sequence[:-1] >= per_sequence[1:]).all())
    first, last = int(per_sequence[:32].sum()), int(per_sequence[-32:].sum())
    assert first > 2 * last, (first, last)


def _tagger_operator(tagger: Tagger, micro_batch: int, weighting: Weighting) -> CurvatureOperator:
    return CurvatureOperator(
        tagger.model, tagger.dataset(), CE, micro_batch=micro_batch, weighting=weighting
    )


def test_micro_batches_weighted_by_tokens_equal_one_pass(tagger):
    tokens = Weighting("tokens", TOKENS, SEQUENCES)
    whole = _tagger_operator(tagger, SEQUENCES, tokens)
    assert whole.num_micro_batches == 1
    vectors = torch.randn(whole.size, 3, generator=torch.Generator().manual_seed(0), dtype=F64)
    expected = whole.matmat(vectors)
    # One micro-batch: its weight is 1 whatever the unit.
    samples = Weighting("samples", SEQUENCES, SEQUENCES)
    same = _tagger_operator(tagger, SEQUENCES, samples).matmat(vectors)
    assert dense.relative(same, expected) < 1e-14
    # The truth: double backward of the token mean over all sequences at once.
    truth = tagger.hessian_columns(list(whole.layout.names), vectors)
    assert dense.relative(expected, truth) < 1e-10, dense.worst(expected, truth)
    split = _tagger_operator(tagger, 32, tokens)
    assert split.num_micro_batches == 8
    actual = split.matmat(vectors)
    assert dense.relative(actual, expected) < 1e-12, dense.worst(actual, expected)
    # Weighting the same micro-batches by sequences is wrong, and visibly so.
    wrong = _tagger_operator(tagger, 32, samples).matmat(vectors)
    assert dense.relative(wrong, expected) > 1e-3


def test_info_loss_is_the_token_mean(run, tagger):
    document = run("tiny_tagger", "info", "--dtype", "float64")
    truth = tagger.loss()
    assert abs(document["results"]["gradient"]["loss"] - truth) <= 1e-12 * truth
    normalisation = document["settings"]["normalisation"]
    assert normalisation["kind"] == "tokens"
    assert normalisation["units"] == TOKENS
    assert normalisation["samples"] == SEQUENCES
    assert "1,756 real tokens" in normalisation["description"]
    assert normalisation["reason"].startswith("auto")
    # Split into micro-batches of 100, 100 and 56 sequences: the same token mean.
    split = run("tiny_tagger", "info", "--dtype", "float64", "--micro-batch", "100")
    assert split["results"]["gradient"]["micro_batches"] == 3
    assert abs(split["results"]["gradient"]["loss"] - truth) <= 1e-12 * truth


def test_normalisation_samples_weights_micro_batches_by_sequences(run, tagger):
    document = run(
        "tiny_tagger", "info", "--dtype", "float64", "--micro-batch", "100",
        "--normalisation", "samples",
    )  # fmt: skip
    normalisation = document["settings"]["normalisation"]
    assert normalisation["kind"] == "samples"
    assert normalisation["units"] == SEQUENCES
    assert normalisation["reason"] == "as requested"
    # Each micro-batch's token mean weighted by its share of the sequences, computed here:
    parts = [slice(0, 100), slice(100, 200), slice(200, 256)]
    by_sequences = sum((s.stop - s.start) / SEQUENCES * tagger.loss(s) for s in parts)
    loss = document["results"]["gradient"]["loss"]
    assert abs(loss - by_sequences) <= 1e-12 * by_sequences
    # About 0.0615 against the token mean's 0.0835: the short sequences at the end carry few
    # tokens, so weighting them as whole samples moves the loss by about a quarter.
    truth = tagger.loss()
    assert abs(loss - truth) > 0.1 * truth


def test_cli_trace_does_not_depend_on_the_micro_batch(run):
    # Hutchinson with a fixed seed: both runs use the same probes, so only the weighting of
    # micro-batches (8 of 32 sequences, or one of 256) could make them differ.
    options = ("--dtype", "float64", "--layer", "head", "--method", "hutchinson")
    split = run("tiny_tagger", "trace", *options, "--products", "8", "--micro-batch", "32")
    whole = run("tiny_tagger", "trace", *options, "--products", "8", "--micro-batch", "256")
    assert split["settings"]["micro_batch"] == 32
    assert whole["settings"]["micro_batch"] == 256
    assert split["settings"]["normalisation"]["kind"] == "tokens"
    value, expected = split["results"]["trace"]["value"], whole["results"]["trace"]["value"]
    assert abs(value - expected) <= 1e-9 * abs(expected), (value, expected)


def test_cli_exact_trace_of_the_head_is_that_of_the_token_mean(run, tagger):
    names = ["head.weight", "head.bias"]
    size = sum(tagger.model.get_parameter(n).numel() for n in names)
    truth = float(tagger.hessian_columns(names, torch.eye(size, dtype=F64)).trace())
    for micro_batch in ("32", "256"):
        document = run(
            "tiny_tagger", "trace", "--dtype", "float64", "--layer", "head",
            "--method", "exact", "--micro-batch", micro_batch,
        )  # fmt: skip
        assert document["settings"]["micro_batch"] == int(micro_batch)
        assert document["results"]["trace"]["exact"] is True
        value = document["results"]["trace"]["value"]
        assert abs(value - truth) <= 1e-9 * abs(truth), (micro_batch, value, truth)


# -- engine reports ----------------------------------------------------------------------------
def test_attention_kernel_is_reported_when_the_model_uses_it(run):
    options = ("--top-k", "1", "--bottom-k", "0", "--max-samples", "8")
    transformer = run("tiny_transformer", "spectrum", *options, "--layer", "head")
    attention = transformer["results"]["engine"]["attention"]
    assert "scaled_dot_product_attention" in attention
    assert "math kernel" in attention
    mlp = run("digits_mlp", "spectrum", *options, "--layer", "fc3")
    assert mlp["results"]["engine"]["attention"] == ""


def test_finite_differences_from_the_cli(run):
    # The exact trace takes layer-output routes that never use --hvp-method, so the products
    # are Hutchinson probes (the same ones in both runs: fixed seed).
    options = ("--dtype", "float64", "--layer", "fc3", "--method", "hutchinson")
    fd = run("digits_mlp", "trace", *options, "--products", "8", "--hvp-method", "fd")
    reverse = run("digits_mlp", "trace", *options, "--products", "8", "--hvp-method", "reverse")
    assert fd["results"]["engine"]["route"] == "finite-differences"
    assert reverse["results"]["engine"]["route"] == "reverse-over-reverse"
    error = fd["results"]["engine"]["error"]
    assert 0 < error < 1e-6
    assert reverse["results"]["engine"]["error"] == 0
    value, expected = fd["results"]["trace"]["value"], reverse["results"]["trace"]["value"]
    gap = abs(value - expected) / abs(expected)
    assert gap <= 5 * error, (gap, error)
    assert gap > 1e-14  # a different computation did run
