"""Data loading: file formats, key names, tuples, factories, --max-samples."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from hesscli.errors import DataError
from hesscli.loading.data import load_data

X = torch.arange(12.0).reshape(6, 2)
Y = torch.tensor([0, 1, 0, 1, 1, 0])


def _write(path, mapping):
    if path.suffix == ".safetensors":
        save_file(mapping, str(path))
    elif path.suffix == ".npz":
        np.savez(path, **{k: v.numpy() for k, v in mapping.items()})
    else:
        torch.save(mapping, path)


@pytest.mark.parametrize("suffix", [".pt", ".pth", ".safetensors", ".npz"])
@pytest.mark.parametrize(("xk", "yk"), [("inputs", "targets"), ("x", "y")])
def test_tensor_files(tmp_path, suffix, xk, yk):
    path = tmp_path / f"data{suffix}"
    _write(path, {xk: X, yk: Y})
    dataset = load_data(path.name, base=tmp_path)
    assert dataset.num_samples == 6 and len(dataset.batches) == 1
    assert torch.equal(dataset.first.inputs, X) and torch.equal(dataset.first.targets, Y)


def test_pt_tuple_and_max_samples(tmp_path):
    path = tmp_path / "data.pt"
    torch.save((X, Y), path)
    dataset = load_data(str(path), base=tmp_path, max_samples=4)
    assert (dataset.num_samples, dataset.available) == (4, 6)
    assert torch.equal(dataset.first.targets, Y[:4])


def test_factory_returning_batches_is_truncated_across_batches(tmp_path):
    (tmp_path / "make.py").write_text(
        "import torch\n"
        "def batches():\n"
        "    for i in range(3):\n"
        "        yield torch.full((4, 2), float(i)), torch.full((4,), i)\n"
        "def whole():\n"
        "    return {'x': torch.zeros(5, 2), 'y': torch.ones(5)}\n"
        "def as_dict_inputs():\n"
        "    return ({'a': torch.zeros(3, 1), 'b': torch.ones(3, 2)}, torch.zeros(3))\n"
    )
    dataset = load_data("make.py:batches", base=tmp_path, max_samples=10)
    assert [b.size for b in dataset.batches] == [4, 4, 2]
    assert (dataset.format, dataset.available) == ("factory", 12)
    assert load_data("make.py:whole", base=tmp_path).num_samples == 5
    dict_inputs = load_data("make.py:as_dict_inputs", base=tmp_path)
    assert set(dict_inputs.first.inputs) == {"a", "b"}


def test_batch_slicing_keeps_structure(tmp_path):
    (tmp_path / "make.py").write_text(
        "import torch\n"
        "def pair():\n"
        "    return ((torch.arange(6).reshape(3, 2), torch.zeros(3)), torch.arange(3))\n"
    )
    batch = load_data("make.py:pair", base=tmp_path).first.slice(1, 3)
    assert isinstance(batch.inputs, tuple) and batch.inputs[0].tolist() == [[2, 3], [4, 5]]
    assert batch.targets.tolist() == [1, 2]


def test_nan_is_located(tmp_path):
    bad = X.clone()
    bad[2, 1] = float("nan")
    path = tmp_path / "data.pt"
    torch.save({"inputs": bad, "targets": Y}, path)
    with pytest.raises(DataError, match=r"inputs contains 1 NaN and 0 Inf values"):
        load_data(str(path), base=tmp_path)
