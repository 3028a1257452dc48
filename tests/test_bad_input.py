"""Bad input gets a clear error and changes nothing (DESIGN.md).

Every case here runs the real ``hesscli`` command line (through its error boundary) against tiny
files built in ``tmp_path`` and checks the whole contract of a user error:

- exit code 2;
- exactly one line on stderr, starting with ``hesscli: error:`` and naming the problem;
- no Python traceback, nothing on stdout;
- every file in the folder byte-for-byte unchanged, and no file added.

A happy-path test proves the fixtures themselves work, so an error test cannot pass merely
because its inputs were broken in some other way.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import re
import struct
import subprocess
import sys
import textwrap
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file
from torch import nn
from typer.testing import CliRunner, Result

from hesscli.cli.app import app

MODEL_SOURCE = textwrap.dedent(
    '''
    """A tiny 4 -> 8 -> 3 network for the bad-input tests."""

    import torch
    from torch import nn

    WIDTH = 3


    class Net(nn.Module):
        def __init__(self, hidden=8):
            super().__init__()
            self.fc1 = nn.Linear(4, hidden)
            self.fc2 = nn.Linear(hidden, 3)

        def forward(self, x):
            return self.fc2(torch.tanh(self.fc1(x)))


    class FrozenNet(Net):
        def __init__(self):
            super().__init__()
            for param in self.parameters():
                param.requires_grad_(False)


    class TupleNet(Net):
        def forward(self, x):
            return super().forward(x), x


    class NotAModule:
        pass


    def make_list():
        return [1, 2, 3]
    '''
)

SAMPLES = 16
FEATURES = 4
CLASSES = 3


def _digest(root: Path) -> dict[str, str]:
    """sha256 of every file under ``root`` (bytecode caches excluded)."""
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file() and "__pycache__" not in p.parts
    }


def _state(hidden: int = 8) -> dict[str, torch.Tensor]:
    """A state dict for ``Net(hidden)`` with fixed random weights."""
    gen = torch.Generator().manual_seed(1)
    return {
        "fc1.weight": torch.randn(hidden, FEATURES, generator=gen),
        "fc1.bias": torch.randn(hidden, generator=gen),
        "fc2.weight": torch.randn(CLASSES, hidden, generator=gen),
        "fc2.bias": torch.randn(CLASSES, generator=gen),
    }


def _inputs(n: int = SAMPLES, features: int = FEATURES) -> torch.Tensor:
    return torch.randn(n, features, generator=torch.Generator().manual_seed(2))


def _labels(n: int = SAMPLES, high: int = CLASSES) -> torch.Tensor:
    return torch.randint(0, high, (n,), generator=torch.Generator().manual_seed(3))


@dataclass
class Workspace:
    """Valid files in ``root`` (the current directory) and a way to run ``hesscli`` on them."""

    root: Path
    model_py: Path
    ckpt_pt: Path
    ckpt_st: Path
    data: Path
    before: dict[str, str] = field(default_factory=dict)

    @property
    def model(self) -> str:
        return f"{self.model_py}:Net"

    def write(self, name: str, content: str | bytes) -> Path:
        path = self.root / name
        if isinstance(content, bytes):
            path.write_bytes(content)
        else:
            path.write_text(content, encoding="utf-8")
        return path

    def save(self, name: str, obj: object) -> Path:
        path = self.root / name
        torch.save(obj, path)
        return path

    def invoke(self, *args: str, no_config: bool = True) -> Result:
        """Run ``hesscli ARGS`` (``--no-config`` added unless told otherwise)."""
        self.before = _digest(self.root)
        argv = [*args, "--no-config"] if no_config else list(args)
        # typer 0.29's CliRunner takes the Typer app and calls get_command(app).main(),
        # i.e. HesscliGroup.main: the real error boundary.
        runner = CliRunner()
        return runner.invoke(app, argv, env={"COLUMNS": "120", "NO_COLOR": "1"})

    def info(self, ckpt: Path, *extra: str, model: str | None = None, data: Path | None = None):
        """``hesscli info CKPT --model M --data D EXTRA...`` with the valid defaults."""
        return self.invoke(
            "info",
            str(ckpt),
            "--model",
            model or self.model,
            "--data",
            str(data or self.data),
            *extra,
        )

    def assert_error(self, result: Result, pattern: str) -> str:
        """Check the whole bad-input contract; ``pattern`` must match the one error line."""
        context = f"exit {result.exit_code}\nstdout:\n{result.stdout}\nstderr:\n{result.stderr}"
        assert result.exit_code == 2, context
        assert result.exception is None or isinstance(result.exception, SystemExit), (
            f"uncaught {result.exception!r}\n{context}"
        )
        assert "Traceback" not in result.output, context
        assert result.stdout == "", context
        lines = result.stderr.splitlines()
        assert len(lines) == 1, context
        line = lines[0]
        assert line.startswith("hesscli: error: "), context
        assert re.search(pattern, line), f"{pattern!r} not in {line!r}"
        assert _digest(self.root) == self.before, "input files changed or files were added"
        return line


@pytest.fixture
def ws(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Workspace:
    """A folder holding a valid model file, checkpoints (.pt, .safetensors) and data."""
    monkeypatch.chdir(tmp_path)
    model_py = tmp_path / "model.py"
    model_py.write_text(MODEL_SOURCE, encoding="utf-8")
    state = _state()
    ckpt_pt = tmp_path / "net.pt"
    torch.save(state, ckpt_pt)
    ckpt_st = tmp_path / "net.safetensors"
    save_file(state, str(ckpt_st))
    data = tmp_path / "data.pt"
    torch.save({"inputs": _inputs(), "targets": _labels()}, data)
    return Workspace(tmp_path, model_py, ckpt_pt, ckpt_st, data)


# --------------------------------------------------------------------------------- happy path


@pytest.mark.parametrize("which", ["ckpt_pt", "ckpt_st"])
def test_valid_files_succeed(ws: Workspace, which: str) -> None:
    result = ws.info(getattr(ws, which), "--json")
    assert result.exit_code == 0, result.output
    assert result.stdout.strip()
    report = json.loads(result.stdout)
    assert report["command"] == "info"
    assert report["inputs"]["samples"] == SAMPLES
    assert "Traceback" not in result.output
    assert _digest(ws.root) == ws.before


def test_valid_files_table_output(ws: Workspace) -> None:
    result = ws.info(ws.ckpt_pt)
    assert result.exit_code == 0, result.output
    assert "fc1" in result.stdout
    assert "hesscli: error" not in result.output


def test_valid_data_variants_succeed(ws: Workspace) -> None:
    """The alternative data forms used below are themselves readable when valid."""
    npz = ws.root / "data.npz"
    np.savez(npz, inputs=_inputs().numpy(), targets=_labels().numpy())
    ws.write(
        "factory.py",
        "import torch\n\ndef make():\n    return torch.randn(8, 4), torch.randn(8, 3)\n",
    )
    for data, extra in [(npz, ()), (ws.root / "factory.py", ("--loss", "mse"))]:
        spec = f"{data}:make" if data.suffix == ".py" else str(data)
        result = ws.invoke("info", str(ws.ckpt_pt), "--model", ws.model, "--data", spec, *extra)
        assert result.exit_code == 0, result.output
        assert result.stdout.strip()


def test_valid_mse_targets_succeed(ws: Workspace) -> None:
    data = ws.save("reg.pt", {"inputs": _inputs(), "targets": torch.randn(SAMPLES, CLASSES)})
    result = ws.info(ws.ckpt_pt, "--loss", "mse", data=data)
    assert result.exit_code == 0, result.output


# --------------------------------------------------------------------------------- checkpoint


def test_checkpoint_missing(ws: Workspace) -> None:
    result = ws.info(ws.root / "nope.pt")
    ws.assert_error(result, r"checkpoint not found: .*nope\.pt")


def test_checkpoint_is_directory(ws: Workspace) -> None:
    folder = ws.root / "ckpts"
    folder.mkdir()
    (folder / "inner.pt").write_bytes(ws.ckpt_pt.read_bytes())
    line = ws.assert_error(ws.info(folder), r"checkpoint .*ckpts is a directory")
    assert "inner.pt" in line


def test_checkpoint_empty(ws: Workspace) -> None:
    empty = ws.write("empty.pt", b"")
    ws.assert_error(ws.info(empty), r"empty\.pt is empty \(0 bytes\)")


def test_safetensors_truncated(ws: Workspace) -> None:
    data = ws.ckpt_st.read_bytes()
    cut = ws.write("cut.safetensors", data[: len(data) // 2])
    ws.assert_error(ws.info(cut), r"cut\.safetensors .*(truncated|corrupt)")


@pytest.mark.parametrize(
    "content",
    [
        pytest.param(random.Random(7).randbytes(512), id="random-bytes"),
        pytest.param(struct.pack("<Q", 40) + b"{" + random.Random(8).randbytes(200), id="bad-json"),
        pytest.param(struct.pack("<Q", 10**9) + b'{"a": 1}', id="header-too-long"),
    ],
)
def test_safetensors_corrupt_header(ws: Workspace, content: bytes) -> None:
    bad = ws.write("bad.safetensors", content)
    ws.assert_error(ws.info(bad), r"bad\.safetensors .*(truncated|corrupt|not a valid safetensors)")


def test_random_bytes_named_pt(ws: Workspace) -> None:
    rng = random.Random(3)
    content = bytes([0x17]) + rng.randbytes(1023)  # neither a zip nor a pickle opcode first
    junk = ws.write("junk.pt", content)
    ws.assert_error(ws.info(junk), r"junk\.pt .*(not a checkpoint format|corrupt|not a readable)")


def test_random_bytes_pickle_like_pt(ws: Workspace) -> None:
    junk = ws.write("legacy.pt", b"\x80\x02" + random.Random(4).randbytes(300))
    ws.assert_error(ws.info(junk), r"legacy\.pt .*(corrupt|not a readable|truncated)")


def test_torch_zip_truncated(ws: Workspace) -> None:
    data = ws.ckpt_pt.read_bytes()
    cut = ws.write("cut.pt", data[: len(data) // 2])
    ws.assert_error(ws.info(cut), r"cut\.pt .*(truncated|corrupt)")


def _pickled_module(ws: Workspace) -> Path:
    torch.manual_seed(0)
    module = nn.Sequential(nn.Linear(FEATURES, 8), nn.Tanh(), nn.Linear(8, CLASSES))
    return ws.save("full.pt", module)


def test_pickled_module_needs_trust(ws: Workspace) -> None:
    full = _pickled_module(ws)
    result = ws.invoke("info", str(full), "--data", str(ws.data))
    ws.assert_error(result, r"full\.pt .*--trust-pickle")


def test_pickled_module_needs_trust_even_with_model(ws: Workspace) -> None:
    full = _pickled_module(ws)
    ws.assert_error(ws.info(full), r"full\.pt .*--trust-pickle")


def test_pickled_module_with_trust_succeeds(ws: Workspace) -> None:
    full = _pickled_module(ws)
    result = ws.invoke("info", str(full), "--data", str(ws.data), "--trust-pickle")
    assert result.exit_code == 0, result.output
    assert result.stdout.strip()
    assert _digest(ws.root) == ws.before


def test_state_dict_missing_keys(ws: Workspace) -> None:
    state = _state()
    del state["fc1.weight"], state["fc2.bias"]
    ckpt = ws.save("missing.pt", state)
    line = ws.assert_error(ws.info(ckpt), r"missing\.pt does not fit the model: .*missing")
    assert "fc1.weight" in line
    assert "fc2.bias" in line


def test_state_dict_unexpected_keys(ws: Workspace) -> None:
    state = {**_state(), "fc3.weight": torch.zeros(2, 2), "head.bias": torch.zeros(2)}
    ckpt = ws.save("extra.pt", state)
    line = ws.assert_error(ws.info(ckpt), r"extra\.pt does not fit the model: .*unexpected")
    assert "fc3.weight" in line
    assert "head.bias" in line


def test_state_dict_wrong_shapes(ws: Workspace) -> None:
    state = {**_state(), "fc1.weight": torch.zeros(8, 5), "fc2.bias": torch.zeros(4)}
    ckpt = ws.save("shapes.pt", state)
    line = ws.assert_error(ws.info(ckpt), r"shapes\.pt does not fit the model")
    assert re.search(r"fc1\.weight.*\(8, 5\).*\(8, 4\)", line), line
    assert re.search(r"fc2\.bias.*\(4\).*\(3\)", line), line


def test_state_dict_missing_keys_safetensors(ws: Workspace) -> None:
    state = _state()
    del state["fc1.bias"], state["fc2.weight"]
    ckpt = ws.root / "missing.safetensors"
    save_file(state, str(ckpt))
    line = ws.assert_error(ws.info(ckpt), r"missing\.safetensors does not fit the model")
    assert "fc1.bias" in line
    assert "fc2.weight" in line


@pytest.mark.parametrize(
    ("obj", "pattern"),
    [
        pytest.param({"epoch": 3, "lr": 0.1}, r"no state dict .*epoch, lr", id="dict"),
        pytest.param([1, 2, 3], r"holds a list, not a state dict", id="list"),
        pytest.param(torch.zeros(3), r"holds a Tensor, not a state dict", id="tensor"),
    ],
)
def test_checkpoint_without_state_dict(ws: Workspace, obj: object, pattern: str) -> None:
    ckpt = ws.save("nostate.pt", obj)
    ws.assert_error(ws.info(ckpt), pattern)


@pytest.mark.parametrize(
    ("key", "value", "word"),
    [
        ("fc1.weight", float("nan"), "NaN"),
        ("fc2.bias", float("inf"), "Inf"),
        ("fc2.weight", float("-inf"), "Inf"),
    ],
)
@pytest.mark.parametrize("suffix", [".pt", ".safetensors"])
def test_non_finite_weight(ws: Workspace, key: str, value: float, word: str, suffix: str) -> None:
    state = _state()
    state[key].view(-1)[0] = value
    ckpt = ws.root / f"diverged{suffix}"
    if suffix == ".pt":
        torch.save(state, ckpt)
    else:
        save_file(state, str(ckpt))
    line = ws.assert_error(ws.info(ckpt), rf"non-finite .*{re.escape(key)} \(1 {word}\)")
    others = {"fc1.weight", "fc1.bias", "fc2.weight", "fc2.bias"} - {key}
    assert not any(f"{other} (" in line for other in others), line


def test_finite_but_huge_weights_give_non_finite_loss(ws: Workspace) -> None:
    state = _state()
    state["fc1.weight"].mul_(100)
    state["fc2.weight"].fill_(3e38)
    ckpt = ws.save("huge.pt", state)
    ws.assert_error(ws.info(ckpt), r"the loss is (nan|inf|-inf) on samples 0-15")


def test_non_finite_weight_in_trusted_pickled_module(ws: Workspace) -> None:
    module = nn.Sequential(nn.Linear(FEATURES, 8), nn.Tanh(), nn.Linear(8, CLASSES))
    with torch.no_grad():
        module[0].weight[0, 0] = float("nan")
    full = ws.save("nanmod.pt", module)
    result = ws.invoke("info", str(full), "--data", str(ws.data), "--trust-pickle")
    ws.assert_error(result, r"non-finite .*0\.weight \(1 NaN\)")


def test_all_parameters_frozen(ws: Workspace) -> None:
    result = ws.info(ws.ckpt_pt, model=f"{ws.model_py}:FrozenNet")
    ws.assert_error(result, r"FrozenNet has no trainable parameters")


# --------------------------------------------------------------------------------- model spec


def test_model_spec_without_colon(ws: Workspace) -> None:
    ws.assert_error(ws.info(ws.ckpt_pt, model="model.py"), r"model spec 'model\.py' has no ':Name'")


def test_model_file_missing(ws: Workspace) -> None:
    result = ws.info(ws.ckpt_pt, model="nothere.py:Net")
    ws.assert_error(result, r"model file not found: .*nothere\.py")


def test_model_module_missing(ws: Workspace) -> None:
    result = ws.info(ws.ckpt_pt, model="no_such_pkg.models:Net")
    ws.assert_error(result, r"module 'no_such_pkg\.models' not found")


def test_model_name_missing_suggests_close_name(ws: Workspace) -> None:
    result = ws.info(ws.ckpt_pt, model=f"{ws.model_py}:Nett")
    line = ws.assert_error(result, r"'Nett' not found in .*model\.py")
    assert re.search(r"did you mean .*\bNet\b", line), line


@pytest.mark.parametrize(
    ("name", "pattern"),
    [
        ("WIDTH", r"'WIDTH' .*is a int, not a module class or factory"),
        ("NotAModule", r"'NotAModule' .*is a class but not a torch\.nn\.Module"),
        ("make_list", r"'make_list' returned a list, not a torch\.nn\.Module"),
    ],
)
def test_model_name_not_a_module(ws: Workspace, name: str, pattern: str) -> None:
    ws.assert_error(ws.info(ws.ckpt_pt, model=f"{ws.model_py}:{name}"), pattern)


def test_model_file_syntax_error(ws: Workspace) -> None:
    broken = ws.write("broken.py", "import torch\n\nclass Net(nn.Module:\n    pass\n")
    result = ws.info(ws.ckpt_pt, model=f"{broken}:Net")
    ws.assert_error(result, r"broken\.py has a syntax error at line 3")


def test_model_file_raises_on_import(ws: Workspace) -> None:
    boom = ws.write("boom.py", "raise RuntimeError('kaboom at import')\n")
    result = ws.info(ws.ckpt_pt, model=f"{boom}:Net")
    ws.assert_error(result, r"boom\.py failed: RuntimeError: kaboom at import")


def test_model_file_raises_multiline_message(ws: Workspace) -> None:
    """An exception text spanning lines must still become one stderr line."""
    boom = ws.write("boom2.py", "raise ValueError('first line\\nsecond line\\nthird')\n")
    result = ws.info(ws.ckpt_pt, model=f"{boom}:Net")
    ws.assert_error(result, r"boom2\.py failed: ValueError: first line")


def test_model_constructor_raises(ws: Workspace) -> None:
    bad = ws.write(
        "ctor.py",
        "from torch import nn\n\nclass Net(nn.Module):\n"
        "    def __init__(self):\n        raise RuntimeError('ctor exploded')\n",
    )
    ws.assert_error(ws.info(ws.ckpt_pt, model=f"{bad}:Net"), r"Net.* failed: .*ctor exploded")


# ------------------------------------------------------------------------------ model kwargs


@pytest.mark.parametrize(
    ("kwargs", "pattern"),
    [
        pytest.param("{hidden: 8", r"--model-kwargs is not valid JSON", id="not-json"),
        pytest.param("[1, 2]", r"--model-kwargs must be a JSON object, got list", id="list"),
        pytest.param('"text"', r"--model-kwargs must be a JSON object, got str", id="string"),
        pytest.param('{"nope": 1}', r"kwargs .*nope.* do not fit Net", id="unknown-key"),
    ],
)
def test_model_kwargs_bad(ws: Workspace, kwargs: str, pattern: str) -> None:
    ws.assert_error(ws.info(ws.ckpt_pt, "--model-kwargs", kwargs), pattern)


def test_model_kwargs_change_shapes(ws: Workspace) -> None:
    """Valid kwargs that build a different architecture: the shape mismatch is reported."""
    line = ws.assert_error(
        ws.info(ws.ckpt_pt, "--model-kwargs", '{"hidden": 5}'), r"net\.pt does not fit the model"
    )
    for key in ("fc1.weight", "fc1.bias", "fc2.weight"):
        assert key in line, line


# ----------------------------------------------------------------------------------- data


def test_data_missing(ws: Workspace) -> None:
    ws.assert_error(
        ws.info(ws.ckpt_pt, data=ws.root / "nodata.pt"), r"data file not found: .*nodata\.pt"
    )


def test_data_is_directory(ws: Workspace) -> None:
    folder = ws.root / "datadir"
    folder.mkdir()
    ws.assert_error(ws.info(ws.ckpt_pt, data=folder), r"data path .*datadir is a directory")


@pytest.mark.parametrize("suffix", [".pt", ".safetensors", ".npz"])
def test_data_without_known_keys(ws: Workspace, suffix: str) -> None:
    tensors = {"a": _inputs(), "b": _labels()}
    data = ws.root / f"odd{suffix}"
    if suffix == ".pt":
        torch.save(tensors, data)
    elif suffix == ".safetensors":
        save_file(tensors, str(data))
    else:
        np.savez(data, **{k: v.numpy() for k, v in tensors.items()})
    line = ws.assert_error(ws.info(ws.ckpt_pt, data=data), r"no recognisable inputs/targets")
    found = re.search(r"keys found: ([^)]*)\)", line)
    assert found, line
    assert sorted(found.group(1).split(", ")) == ["a", "b"], line
    assert f"odd{suffix}" in line


def test_data_inputs_do_not_fit_model(ws: Workspace) -> None:
    data = ws.save("wide.pt", {"inputs": _inputs(features=5), "targets": _labels()})
    line = ws.assert_error(ws.info(ws.ckpt_pt, data=data), r"does not fit the model")
    assert re.search(r"inputs \(\d+, 5\)", line), line


def test_data_sample_counts_differ(ws: Workspace) -> None:
    data = ws.save("uneven.pt", {"inputs": _inputs(n=16), "targets": _labels(n=10)})
    ws.assert_error(
        ws.info(ws.ckpt_pt, data=data), r"inputs has shape \(16, 4\) but there are 10 targets"
    )


def test_class_labels_out_of_range(ws: Workspace) -> None:
    labels = _labels()
    labels[5] = 7
    data = ws.save("labels.pt", {"inputs": _inputs(), "targets": labels})
    result = ws.info(ws.ckpt_pt, "--loss", "cross_entropy", data=data)
    ws.assert_error(result, r"class labels in \[0, 7\] but the model outputs 3 classes")


def test_class_labels_out_of_range_inferred_loss(ws: Workspace) -> None:
    labels = _labels()
    labels[-1] = 3
    data = ws.save("labels.pt", {"inputs": _inputs(), "targets": labels})
    ws.assert_error(
        ws.info(ws.ckpt_pt, data=data), r"class labels in \[0, 3\] but the model outputs 3"
    )


def test_negative_class_labels(ws: Workspace) -> None:
    labels = _labels()
    labels[0] = -1
    data = ws.save("labels.pt", {"inputs": _inputs(), "targets": labels})
    ws.assert_error(ws.info(ws.ckpt_pt, data=data), r"class labels in \[-1, \d\]")


def test_mse_targets_wrong_shape(ws: Workspace) -> None:
    data = ws.save("reg.pt", {"inputs": _inputs(), "targets": torch.randn(SAMPLES, 2)})
    result = ws.info(ws.ckpt_pt, "--loss", "mse", data=data)
    ws.assert_error(
        result, r"mse: model outputs have shape \(\d+, 3\) but targets have shape \(\d+, 2\)"
    )


def test_mse_with_integer_labels(ws: Workspace) -> None:
    result = ws.info(ws.ckpt_pt, "--loss", "mse")
    ws.assert_error(result, r"loss mse needs floating-point targets, got int64")


def test_cross_entropy_with_mismatched_float_targets(ws: Workspace) -> None:
    data = ws.save("soft.pt", {"inputs": _inputs(), "targets": torch.rand(SAMPLES, 5)})
    result = ws.info(ws.ckpt_pt, "--loss", "cross_entropy", data=data)
    ws.assert_error(
        result, r"cross_entropy: float targets \(\d+, 5\) need outputs of the same shape"
    )


def test_nan_in_inputs(ws: Workspace) -> None:
    inputs = _inputs()
    inputs[3, 1] = float("nan")
    data = ws.save("nan.pt", {"inputs": inputs, "targets": _labels()})
    line = ws.assert_error(ws.info(ws.ckpt_pt, data=data), r"inputs contains 1 NaN and 0 Inf")
    assert "nan.pt" in line


def test_inf_in_targets(ws: Workspace) -> None:
    targets = torch.randn(SAMPLES, CLASSES)
    targets[0, 0] = float("inf")
    targets[2, 1] = float("-inf")
    data = ws.save("inf.pt", {"inputs": _inputs(), "targets": targets})
    result = ws.info(ws.ckpt_pt, "--loss", "mse", data=data)
    line = ws.assert_error(result, r"targets contains 0 NaN and 2 Inf")
    assert "inf.pt" in line


def test_model_returns_tuple(ws: Workspace) -> None:
    # A built-in loss sees a tuple's first element (issue 15); another one is named by index.
    result = ws.info(ws.ckpt_pt, "--json", model=f"{ws.model_py}:TupleNet")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["inputs"]["model"].endswith("TupleNet → [0]")
    result = ws.info(ws.ckpt_pt, "--output-key", "2", model=f"{ws.model_py}:TupleNet")
    ws.assert_error(result, r"--output-key 2 does not index the model's 2 outputs")


def test_data_inputs_wrong_dtype(ws: Workspace) -> None:
    data = ws.save(
        "ints.pt", {"inputs": torch.ones(SAMPLES, FEATURES, dtype=torch.long), "targets": _labels()}
    )
    ws.assert_error(ws.info(ws.ckpt_pt, data=data), r"inputs \(\d+, 4\).* does not fit the model")


def test_data_zero_samples(ws: Workspace) -> None:
    data = ws.save("none.pt", {"inputs": torch.zeros(0, FEATURES), "targets": _labels(n=0)})
    ws.assert_error(ws.info(ws.ckpt_pt, data=data), r"none\.pt holds no samples")


def test_data_scalar_targets(ws: Workspace) -> None:
    data = ws.save("scalar.pt", {"inputs": _inputs(), "targets": torch.tensor(1)})
    ws.assert_error(ws.info(ws.ckpt_pt, data=data), r"scalar\.pt: targets are a scalar")


def test_data_empty_file(ws: Workspace) -> None:
    data = ws.write("empty_data.pt", b"")
    ws.assert_error(ws.info(ws.ckpt_pt, data=data), r"empty_data\.pt is not a readable")


def test_data_factory_file_missing(ws: Workspace) -> None:
    result = ws.invoke("info", str(ws.ckpt_pt), "--model", ws.model, "--data", "nothere.py:make")
    ws.assert_error(result, r"data factory file not found: .*nothere\.py")


def test_custom_loss_module_missing(ws: Workspace) -> None:
    result = ws.info(ws.ckpt_pt, "--loss", "no_such_pkg:loss")
    ws.assert_error(result, r"loss module 'no_such_pkg' not found")


def test_custom_loss_fails(ws: Workspace) -> None:
    losses = ws.write(
        "losses.py", "def bad(outputs, targets):\n    raise ValueError('loss broke')\n"
    )
    result = ws.info(ws.ckpt_pt, "--loss", f"{losses}:bad")
    ws.assert_error(result, r"loss .*losses\.py:bad failed .*ValueError: loss broke")


def test_unknown_loss(ws: Workspace) -> None:
    line = ws.assert_error(ws.info(ws.ckpt_pt, "--loss", "hinge"), r"unknown loss 'hinge'")
    assert "cross_entropy" in line


def test_data_factory_raises(ws: Workspace) -> None:
    factory = ws.write("factory.py", "def make():\n    raise ValueError('no data today')\n")
    result = ws.invoke("info", str(ws.ckpt_pt), "--model", ws.model, "--data", f"{factory}:make")
    ws.assert_error(result, r"data factory .*factory\.py:make raised ValueError: no data today")


def test_data_factory_name_missing(ws: Workspace) -> None:
    factory = ws.write("factory.py", "def make():\n    return None\n")
    result = ws.invoke("info", str(ws.ckpt_pt), "--model", ws.model, "--data", f"{factory}:mkae")
    ws.assert_error(result, r"data factory 'mkae' not found .*did you mean make")


@pytest.mark.parametrize("kind", ["random", "truncated"])
def test_npz_corrupt(ws: Workspace, kind: str) -> None:
    if kind == "random":
        content = random.Random(5).randbytes(400)
    else:
        valid = ws.root / "valid.npz"
        np.savez(valid, inputs=_inputs().numpy(), targets=_labels().numpy())
        content = valid.read_bytes()[: valid.stat().st_size // 2]
        valid.unlink()
    data = ws.write("broken.npz", content)
    ws.assert_error(ws.info(ws.ckpt_pt, data=data), r"broken\.npz is not a readable \.npz")


def test_data_pt_corrupt(ws: Workspace) -> None:
    data = ws.write("broken_data.pt", ws.data.read_bytes()[:100])
    ws.assert_error(ws.info(ws.ckpt_pt, data=data), r"broken_data\.pt is not a readable")


def test_data_safetensors_corrupt(ws: Workspace) -> None:
    data = ws.write("broken_data.safetensors", random.Random(9).randbytes(300))
    ws.assert_error(ws.info(ws.ckpt_pt, data=data), r"broken_data\.safetensors is not a readable")


def test_data_unsupported_extension(ws: Workspace) -> None:
    data = ws.write("data.tsv", "x1\tx2\tx3\tx4\ty\n0\t0\t0\t0\t1\n")
    ws.assert_error(
        ws.info(ws.ckpt_pt, data=data), r"data\.tsv has an unsupported extension '\.tsv'"
    )


# -------------------------------------------------------------------------------- options


def test_dtype_float16(ws: Workspace) -> None:
    ws.assert_error(
        ws.info(ws.ckpt_pt, "--dtype", "float16"),
        r"--dtype.*'float16' is not one of 'float32', 'float64'",
    )


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_device_cuda_unavailable(ws: Workspace) -> None:
    ws.assert_error(ws.info(ws.ckpt_pt, "--device", "cuda"), r"CUDA is not available")


@pytest.mark.parametrize("device", ["nonsense", "cuda:x", "tpu"])
def test_device_unknown(ws: Workspace, device: str) -> None:
    ws.assert_error(ws.info(ws.ckpt_pt, "--device", device), rf"device '{re.escape(device)}'")


def test_curvature_unknown(ws: Workspace) -> None:
    ws.assert_error(
        ws.info(ws.ckpt_pt, "--curvature", "nope"),
        r"--curvature.*'nope' is not one of 'hessian', 'ggn'",
    )


@pytest.mark.parametrize("option", ["--max-samples", "--micro-batch"])
@pytest.mark.parametrize("value", ["0", "-3"])
def test_count_options_below_one(ws: Workspace, option: str, value: str) -> None:
    ws.assert_error(ws.info(ws.ckpt_pt, option, value), re.escape(option))


def test_count_option_not_a_number(ws: Workspace) -> None:
    ws.assert_error(ws.info(ws.ckpt_pt, "--max-samples", "lots"), r"--max-samples.*integer")


def test_seed_out_of_range(ws: Workspace) -> None:
    ws.assert_error(ws.info(ws.ckpt_pt, "--seed", str(2**70)), r"--seed")


def test_unknown_layer_suggests_names(ws: Workspace) -> None:
    line = ws.assert_error(ws.info(ws.ckpt_pt, "--layer", "fc3"), r"--layer 'fc3'")
    assert re.search(r"closest names: .*fc[12]", line), line


def test_unknown_layer_glob(ws: Workspace) -> None:
    ws.assert_error(ws.info(ws.ckpt_pt, "--layer", "encoder.*"), r"--layer 'encoder\.\*'")


def test_unknown_option(ws: Workspace) -> None:
    ws.assert_error(ws.info(ws.ckpt_pt, "--bogus"), r"No such option: --bogus")


def test_unknown_command(ws: Workspace) -> None:
    ws.assert_error(ws.invoke("spectrumm", str(ws.ckpt_pt)), r"spectrumm")


@pytest.mark.parametrize(
    "which",
    [
        "ckpt_pt",
        "data",
        "model_py",
    ],
)
def test_output_onto_an_input(ws: Workspace, which: str) -> None:
    target = getattr(ws, which)
    result = ws.info(ws.ckpt_pt, "--output", str(target))
    ws.assert_error(result, rf"--output .*{re.escape(target.name)} is one of the input files")


def test_output_onto_data_factory_file(ws: Workspace) -> None:
    factory = ws.write(
        "factory.py",
        "import torch\n\ndef make():\n    return torch.randn(8, 4), torch.randn(8, 3)\n",
    )
    result = ws.invoke(
        "info",
        str(ws.ckpt_pt),
        "--model",
        ws.model,
        "--data",
        f"{factory}:make",
        "--loss",
        "mse",
        "--output",
        "factory.py",
    )
    ws.assert_error(result, r"--output factory\.py is one of the input files")


def test_output_onto_checkpoint_json(ws: Workspace) -> None:
    result = ws.info(ws.ckpt_st, "--json", "-o", ws.ckpt_st.name)
    ws.assert_error(result, r"--output net\.safetensors is one of the input files")


def test_output_is_directory(ws: Workspace) -> None:
    (ws.root / "outdir").mkdir()
    ws.assert_error(ws.info(ws.ckpt_pt, "--output", "outdir"), r"--output outdir is a directory")


# --------------------------------------------------------------------------------- config


def test_config_invalid_toml(ws: Workspace) -> None:
    ws.write("hesscli.toml", 'model = "model.py:Net"\ndata = \n')
    result = ws.invoke("info", str(ws.ckpt_pt), no_config=False)
    ws.assert_error(result, r"hesscli\.toml is not valid TOML")


def test_config_unknown_key_suggests(ws: Workspace) -> None:
    ws.write("hesscli.toml", f'modle = "{ws.model_py.name}:Net"\ndata = "data.pt"\n')
    result = ws.invoke("info", str(ws.ckpt_pt), no_config=False)
    ws.assert_error(result, r"hesscli\.toml: unknown setting 'modle'; did you mean 'model'")


def test_config_wrong_type(ws: Workspace) -> None:
    ws.write("hesscli.toml", 'model = "model.py:Net"\ndata = "data.pt"\nmax_samples = "ten"\n')
    result = ws.invoke("info", str(ws.ckpt_pt), no_config=False)
    ws.assert_error(result, r"setting 'max_samples' should be a integer")


def test_pyproject_unknown_key(ws: Workspace) -> None:
    ws.write("pyproject.toml", '[tool.hesscli]\nmodel = "model.py:Net"\nlos = "mse"\n')
    result = ws.invoke("info", str(ws.ckpt_pt), no_config=False)
    ws.assert_error(result, r"pyproject\.toml \[tool\.hesscli\]: unknown setting 'los'.*'loss'")


def test_config_option_missing_file(ws: Workspace) -> None:
    result = ws.invoke("info", str(ws.ckpt_pt), "--config", "nothere.toml", no_config=False)
    ws.assert_error(result, r"config file not found: .*nothere\.toml")


def test_config_valid_is_used(ws: Workspace) -> None:
    """Control for the config cases: a correct hesscli.toml alone makes ``info`` work."""
    ws.write("hesscli.toml", 'model = "model.py:Net"\ndata = "data.pt"\n')
    result = ws.invoke("info", str(ws.ckpt_pt), no_config=False)
    assert result.exit_code == 0, result.output
    assert result.stdout.strip()


# ------------------------------------------------------------------------ checkpoint metadata


@pytest.mark.parametrize("key", ["model", "data", "loss"])
def test_metadata_naming_installed_module_is_refused(
    ws: Workspace, monkeypatch: pytest.MonkeyPatch, key: str
) -> None:
    calls: list[tuple] = []
    monkeypatch.setattr(subprocess, "run", lambda *a, **k: calls.append((a, k)))
    monkeypatch.setattr(subprocess, "Popen", lambda *a, **k: calls.append((a, k)))
    defaults = {"model": "model.py:Net", "data": "data.pt", key: "subprocess:run"}
    ckpt = ws.root / "evil.safetensors"
    save_file(_state(), str(ckpt), metadata={"hesscli": json.dumps(defaults)})
    result = ws.invoke("info", str(ckpt))
    line = ws.assert_error(result, rf"evil\.safetensors names {key} 'subprocess:run'")
    assert "installed module" in line
    assert calls == []


def test_metadata_naming_installed_module_by_file_path_is_refused(ws: Workspace) -> None:
    defaults = {
        "model": f"{subprocess.__file__}:run",
        "model_kwargs": {"args": [sys.executable, "-c", "open('pwned.txt', 'w').close()"]},
        "data": "data.pt",
    }
    ckpt = ws.root / "evil.safetensors"
    save_file(_state(), str(ckpt), metadata={"hesscli": json.dumps(defaults)})
    result = ws.invoke("info", str(ckpt))
    try:
        ws.assert_error(result, r"evil\.safetensors .*model")
    finally:
        assert not (ws.root / "pwned.txt").exists(), "the checkpoint's metadata ran a command"


def test_metadata_not_json(ws: Workspace) -> None:
    ckpt = ws.root / "meta.safetensors"
    save_file(_state(), str(ckpt), metadata={"hesscli": "{not json"})
    ws.assert_error(ws.info(ckpt), r"meta\.safetensors has hesscli metadata that is not valid JSON")


def test_metadata_unknown_key(ws: Workspace) -> None:
    ckpt = ws.root / "meta.safetensors"
    save_file(_state(), str(ckpt), metadata={"hesscli": json.dumps({"modle": "model.py:Net"})})
    ws.assert_error(ws.info(ckpt), r"meta\.safetensors metadata: unknown setting 'modle'.*'model'")


def test_metadata_file_spec_is_used(ws: Workspace) -> None:
    """Control: metadata naming a .py file beside the checkpoint is accepted."""
    ckpt = ws.root / "good.safetensors"
    defaults = {"model": "model.py:Net", "data": "data.pt"}
    save_file(_state(), str(ckpt), metadata={"hesscli": json.dumps(defaults)})
    result = ws.invoke("info", str(ckpt))
    assert result.exit_code == 0, result.output
    assert result.stdout.strip()


# --------------------------------------------------------------------- the real entry point


@pytest.mark.parametrize(
    ("case", "pattern"),
    [
        ("missing-keys", r"does not fit the model: .*fc1\.weight"),
        ("pickled", r"--trust-pickle"),
        ("nan-data", r"inputs contains 1 NaN"),
        pytest.param(
            "nan-loss",
            r"the loss is (nan|inf)",
        ),
    ],
)
def test_console_entry_point(ws: Workspace, case: str, pattern: str) -> None:
    """``python -m hesscli`` in a subprocess: real stderr, warnings included, one line."""
    data = ws.data
    if case == "missing-keys":
        state = _state()
        del state["fc1.weight"]
        ckpt = ws.save("missing.pt", state)
    elif case == "pickled":
        ckpt = _pickled_module(ws)
    elif case == "nan-loss":
        state = _state()
        state["fc1.weight"].mul_(100)
        state["fc2.weight"].fill_(3e38)
        ckpt = ws.save("huge.pt", state)
    else:
        ckpt = ws.ckpt_pt
        inputs = _inputs()
        inputs[0, 0] = float("nan")
        data = ws.save("nan.pt", {"inputs": inputs, "targets": _labels()})
    before = _digest(ws.root)
    # The user's view: Python's default warning filters (nothing forced on or off).
    env = {k: v for k, v in os.environ.items() if k != "PYTHONWARNINGS"}
    env.update(COLUMNS="120", NO_COLOR="1")
    argv = [sys.executable, "-m", "hesscli", "info", str(ckpt), "--model", ws.model]
    argv += ["--data", str(data), "--no-config"]
    proc = subprocess.run(argv, capture_output=True, text=True, env=env, cwd=ws.root, check=False)
    context = f"exit {proc.returncode}\nstdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
    assert proc.returncode == 2, context
    assert proc.stdout == "", context
    lines = proc.stderr.splitlines()
    assert len(lines) == 1, context
    assert lines[0].startswith("hesscli: error: "), context
    assert re.search(pattern, lines[0]), context
    assert _digest(ws.root) == before


@pytest.mark.parametrize(
    ("command", "option"), [("diag", "--products"), ("report", "--diag-products")]
)
def test_diag_budget_too_small_for_diag_plus_plus(ws: Workspace, command: str, option: str) -> None:
    extra = ["--estimate"] if command == "diag" else ["--steps", "4", "--probes", "2"]
    result = ws.invoke(
        command, str(ws.ckpt_pt), "--model", ws.model, "--data", str(ws.data), option, "12", *extra
    )
    ws.assert_error(
        result, rf"{option} 12 is too small for a Diag\+\+ estimate.*{option} 24 or more"
    )
