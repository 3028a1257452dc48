"""Data parallelism: 2 CPU processes under torchrun (gloo) give the single-process numbers.

Shards are uneven on purpose (101 samples over 2 ranks; 201 tagged sequences whose ranks hold
very different numbers of real tokens), and the micro-batches differ from the single-process
run, so only the exact uⱼ/U weighting across micro-batches and ranks can make them agree.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from hesscli.batches import Batch, Dataset
from hesscli.engine.distributed import SINGLE, shard
from hesscli.engine.functional import micro_batches
from hesscli.engine.weighting import TOKENS, Weighting
from hesscli.errors import DistributedError
from tests import distributed_worker
from tests.conftest import SAMPLES

WORKER = Path(distributed_worker.__file__)


def _torchrun(*args: str, cwd: Path, processes: int = 2) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in {"RANK", "WORLD_SIZE"}}
    env |= {"OMP_NUM_THREADS": "1", "COLUMNS": "120", "PYTHONWARNINGS": "ignore"}
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        f"--nproc-per-node={processes}",
        *args,
    ]
    return subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory) -> dict:
    out = tmp_path_factory.mktemp("distributed") / "found.pt"
    proc = _torchrun(str(WORKER), str(out), cwd=SAMPLES)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return torch.load(out, weights_only=False)


@pytest.mark.parametrize("case", distributed_worker.CASES, ids=lambda c: c[0])
def test_two_gloo_ranks_equal_one_process(two_ranks, case):
    folder, samples, _micro_batch, layers = case
    # One process, a different micro-batching (all samples at once): the same numbers.
    one = distributed_worker.measure(folder, samples, None, layers)
    two = two_ranks[folder]
    assert two["shards"] == [samples // 2, samples - samples // 2]
    assert two["units"] == one["units"]
    assert two["kind"] == one["kind"]
    assert two["route"] == one["route"]
    scale = one["product"].abs().max()
    assert (two["product"] - one["product"]).abs().max() <= 1e-12 * scale
    assert two["loss"] == pytest.approx(one["loss"], rel=1e-12)
    assert two["grad_norm"] == pytest.approx(one["grad_norm"], rel=1e-10)
    assert two["methods"] == one["methods"]
    for name, values in one["diagonal"].items():
        torch.testing.assert_close(two["diagonal"][name], values, rtol=1e-10, atol=1e-14)


def test_token_counts_differ_between_the_ranks(two_ranks):
    # The tagger's sequences are sorted longest first: the ranks' token counts differ a lot,
    # so weighting ranks (or micro-batches) by sequences would give another loss.
    tagger = two_ranks["tiny_tagger"]
    assert tagger["kind"] == TOKENS
    data = torch.load(SAMPLES / "tiny_tagger" / "data.pt", weights_only=True)
    targets = data["targets"][:201]
    first, second = (targets[:100] != -100).sum(), (targets[100:] != -100).sum()
    assert first > 1.5 * second
    assert tagger["units"] == int(first + second)


def test_report_under_torchrun_prints_once_and_matches(cli, samples, monkeypatch):
    folder = samples / "digits_mlp"
    common = ["report", "model.safetensors", "--dtype", "float64", "--max-samples", "101"]
    proc = _torchrun("-m", "hesscli", *common, "--micro-batch", "16", "--json", cwd=folder)
    assert proc.returncode == 0, proc.stderr[-3000:]
    two = json.loads(proc.stdout)  # exactly one document: only rank 0 printed
    assert proc.stderr.count("samples per rank 50 + 51") == 1
    monkeypatch.chdir(folder)
    result = cli(*common, "--json")
    assert result.exit_code == 0, result.output
    one = json.loads(result.stdout)
    assert two["settings"]["distributed"] == {
        "world_size": 2,
        "backend": "gloo",
        "samples_per_rank": [50, 51],
    }
    assert one["settings"]["distributed"] is None
    assert two["inputs"]["samples"] == one["inputs"]["samples"] == 101
    first, second = one["results"]["summary"], two["results"]["summary"]
    for key in ("top", "bottom", "trace"):
        assert second[key]["value"] == pytest.approx(first[key]["value"], rel=1e-8)
    assert second["negative_mass"]["value"] == pytest.approx(
        first["negative_mass"]["value"], abs=1e-8
    )
    for name, layer in one["results"]["layers"].items():
        other = two["results"]["layers"][name]
        for key in ("top", "bottom", "trace"):
            assert other[key]["value"] == pytest.approx(layer[key]["value"], rel=1e-8)
        for key in ("mean", "min", "max", "median", "sum"):
            assert other["diagonal"][key] == pytest.approx(layer["diagonal"][key], rel=1e-8)


def test_fewer_samples_than_processes_is_a_clear_error(samples):
    proc = _torchrun(
        "-m", "hesscli", "trace", "model.safetensors", "--max-samples", "1",
        cwd=samples / "digits_mlp",
    )  # fmt: skip
    assert proc.returncode != 0
    # Each rank says why in one line (torchrun then reports the failed children itself).
    lines = proc.stderr.splitlines()
    reason = "1 samples cannot be shared by 2 processes; use at most 1 processes, or more data"
    assert f"hesscli: error: {reason}" in lines
    assert f"hesscli (rank 1): error: {reason}" in lines
    assert not [line for line in lines if "hesscli/" in line and "File " in line]


def test_distributed_without_a_launcher_is_a_usage_error(cli, samples, monkeypatch):
    monkeypatch.chdir(samples / "digits_mlp")
    for name in ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(name, raising=False)
    result = cli("trace", "model.safetensors", "--distributed")
    assert result.exit_code == 2
    assert "--distributed needs a launcher" in result.stderr
    assert "torchrun --nproc-per-node N -m hesscli" in result.stderr


def _dataset(sizes: list[int]) -> Dataset:
    batches, start = [], 0
    for size in sizes:
        x = torch.arange(start, start + size, dtype=torch.float64)[:, None]
        batches.append(Batch(x, x.clone()))
        start += size
    return Dataset(tuple(batches), "memory", "memory", start)


@pytest.mark.parametrize("world", [1, 2, 3, 7])
def test_shards_are_contiguous_and_cover_every_sample_once(world):
    data = _dataset([5, 1, 7])
    groups = [type(SINGLE)(rank, world, "gloo") for rank in range(world)]
    parts = [shard(data, group) for group in groups]
    joined = torch.cat([b.inputs for part in parts for b in part.batches])
    assert joined[:, 0].tolist() == list(range(13))
    sizes = [part.num_samples for part in parts]
    assert max(sizes) - min(sizes) <= 1


def test_more_processes_than_samples_is_refused():
    with pytest.raises(DistributedError, match="3 samples cannot be shared by 4 processes"):
        shard(_dataset([3]), type(SINGLE)(0, 4, "gloo"))


def test_token_weights_sum_to_one_and_skip_all_padding_micro_batches():
    targets = torch.tensor([[1, 2, -100], [-100, -100, -100], [3, -100, -100], [1, 1, 1]])
    data = Dataset((Batch(targets.clone(), targets),), "memory", "memory", 4)
    weighting = Weighting(TOKENS, 7, 4)
    parts = list(micro_batches(data, 1, weighting))
    assert [first for first, _, _ in parts] == [0, 2, 3]  # sequence 1 is only padding
    assert [w for _, _, w in parts] == [2 / 7, 1 / 7, 3 / 7]
