"""``hesscli info`` on every sample model: tables, JSON, defaults from config and metadata."""

from __future__ import annotations

import json
from importlib.resources import files
from pathlib import Path

import jsonschema
import pytest

from tests.conftest import SAMPLES, tree_digest

MANIFEST = json.loads((SAMPLES / "manifest.json").read_text())
SCHEMA = json.loads(files("hesscli").joinpath("schema/info.schema.json").read_text())

# (folder, checkpoint file) pairs; each works with no option from inside its folder.
CHECKPOINTS = [
    ("seed_ann", "model.safetensors"),
    ("seed_ann", "model.pt"),
    ("digits_mlp", "model.safetensors"),
    ("digits_mlp", "checkpoint.pt"),
    ("digits_cnn", "model.pt"),
    ("tiny_transformer", "model.safetensors"),
]


def _json(result) -> dict:
    assert result.exit_code == 0, result.output
    document = json.loads(result.stdout)
    jsonschema.validate(document, SCHEMA)
    return document


@pytest.mark.parametrize(("folder", "name"), CHECKPOINTS)
def test_info_with_folder_config_matches_manifest(cli, samples, monkeypatch, folder, name):
    monkeypatch.chdir(samples / folder)
    document = _json(cli("info", name, "--json", "--dtype", "float64"))
    expected = MANIFEST[folder]
    assert document["inputs"]["parameters"] == expected["parameters"]
    assert document["inputs"]["samples"] == expected["eval_samples"]
    # The loss hesscli computes equals the loss the training script measured independently.
    assert document["results"]["gradient"]["loss"] == pytest.approx(expected["eval_loss"], rel=1e-5)
    assert document["inputs"]["config"] == str(samples / folder / "hesscli.toml")
    assert document["settings"]["sources"]["model"] in {
        "checkpoint metadata",
        str(samples / folder / "hesscli.toml"),
    }


@pytest.mark.parametrize("folder", ["seed_ann", "digits_mlp", "tiny_transformer"])
def test_info_from_safetensors_metadata_alone(cli, samples, tmp_path, monkeypatch, folder):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    checkpoint = samples / folder / "model.safetensors"
    document = _json(cli("info", str(checkpoint), "--json"))
    sources = document["settings"]["sources"]
    assert sources["model"] == sources["data"] == sources["loss"] == "checkpoint metadata"
    assert document["inputs"]["config"] is None
    assert document["inputs"]["parameters"] == MANIFEST[folder]["parameters"]


def test_info_table_lists_every_layer_and_the_gradient(cli, samples, monkeypatch):
    monkeypatch.chdir(samples / "digits_cnn")
    result = cli("info", "model.pt")
    assert result.exit_code == 0, result.output
    for layer in ("conv1", "bn1", "conv2", "bn2", "fc"):
        assert f"│ {layer} " in result.stdout
    for heading in ("Checkpoint", "Data and loss", "At the checkpoint", "gradient norm"):
        assert heading in result.stdout
    assert "1,946 parameters" in result.stdout
    assert result.stderr.strip() == ""
    assert max(len(line) for line in result.stdout.splitlines()) <= 120


def test_json_stdout_is_exactly_one_document(cli, samples, monkeypatch):
    monkeypatch.chdir(samples / "tiny_transformer")
    result = cli("info", "model.safetensors", "--json")
    document = _json(result)
    assert result.stdout.strip().startswith("{") and result.stdout.strip().endswith("}")
    assert [layer["name"] for layer in document["results"]["layers"]][:2] == ["tok", "pos"]


def test_explicit_options_override_config(cli, samples, monkeypatch):
    monkeypatch.chdir(samples / "digits_mlp")
    result = cli(
        "info",
        "checkpoint.pt",
        "--loss",
        "nll",
        "--max-samples",
        "10",
        "--micro-batch",
        "3",
        "--json",
    )
    document = _json(result)
    assert document["inputs"]["loss"] == "nll"
    assert document["settings"]["sources"]["loss"] == "option"
    assert document["inputs"]["samples"] == 10
    assert document["results"]["data"]["available"] == 256
    assert document["results"]["gradient"]["micro_batches"] == 4


def test_loss_is_inferred_and_reported(cli, samples, monkeypatch):
    monkeypatch.chdir(samples / "digits_cnn")
    (samples / "digits_cnn" / "hesscli.toml").write_text(
        'model = "model.py:DigitsCNN"\ndata = "data.npz"\n'
    )
    result = cli("info", "model.pt")
    assert result.exit_code == 0, result.output
    assert "cross_entropy (inferred from integer class-label targets" in result.stdout


def test_layer_selection_filters_rows(cli, samples, monkeypatch):
    monkeypatch.chdir(samples / "tiny_transformer")
    document = _json(cli("info", "model.safetensors", "--json", "--layer", "attn.*"))
    assert document["inputs"]["layers"] == ["attn.qkv", "attn.out"]
    document = _json(cli("info", "model.safetensors", "--json", "--layer", "head.bias"))
    assert document["inputs"]["layers"] == ["head.bias"]


def test_inputs_are_never_modified(cli, samples, monkeypatch):
    before = tree_digest(samples)
    for folder, name in CHECKPOINTS:
        monkeypatch.chdir(samples / folder)
        assert cli("info", name, "--json").exit_code == 0
    assert tree_digest(samples) == before


def test_output_file_gets_json_and_text(cli, samples, tmp_path, monkeypatch):
    monkeypatch.chdir(samples / "seed_ann")
    as_json = tmp_path / "report.json"
    result = cli("info", "model.pt", "--output", str(as_json))
    assert result.exit_code == 0, result.output
    jsonschema.validate(json.loads(as_json.read_text()), SCHEMA)
    as_text = tmp_path / "report.txt"
    assert cli("info", "model.pt", "--output", str(as_text)).exit_code == 0
    assert "SeedANN" in as_text.read_text()


def test_train_mode_changes_dropout_model_loss(cli, samples, monkeypatch):
    monkeypatch.chdir(samples / "digits_mlp")
    evaluated = _json(cli("info", "model.safetensors", "--json"))
    trained = _json(cli("info", "model.safetensors", "--json", "--train-mode"))
    assert trained["settings"]["train_mode"] is True
    assert trained["results"]["gradient"]["loss"] != evaluated["results"]["gradient"]["loss"]


def test_convert_writes_a_self_describing_copy(cli, samples, tmp_path, monkeypatch):
    folder = samples / "digits_cnn"
    monkeypatch.chdir(folder)
    before = tree_digest(samples)
    result = cli("convert", "model.pt", "--output", "converted.safetensors")
    assert result.exit_code == 0, result.output
    after = tree_digest(samples)
    assert after.pop("digits_cnn/converted.safetensors")
    assert after == before
    (folder / "hesscli.toml").unlink()  # the metadata alone must be enough
    monkeypatch.chdir(tmp_path)
    direct = _json(cli("info", str(folder / "converted.safetensors"), "--json"))
    monkeypatch.chdir(folder)
    original = _json(
        cli("info", "model.pt", "--json", "--model", "model.py:DigitsCNN", "--data", "data.npz")
    )
    assert direct["results"]["gradient"]["loss"] == original["results"]["gradient"]["loss"]
    assert direct["settings"]["sources"]["model"] == "checkpoint metadata"


def test_convert_is_reproducible_and_skips_code_elsewhere(cli, samples, tmp_path, monkeypatch):
    monkeypatch.chdir(samples / "digits_mlp")
    (tmp_path / "out").mkdir()
    outputs = [tmp_path / "out" / "a.safetensors", tmp_path / "out" / "b.safetensors"]
    for out in outputs:
        result = cli("convert", "checkpoint.pt", "--output", str(out), "--json")
        assert result.exit_code == 0, result.output
    assert outputs[0].read_bytes() == outputs[1].read_bytes()
    document = json.loads(result.stdout)
    assert document["command"] == "convert"
    assert {"inputs", "settings", "cost"} <= set(document)
    assert "model" in document["results"]["not_stored"]
    assert "model" not in document["results"]["metadata"]
    assert document["results"]["metadata"]["data"].endswith("digits_mlp/data.safetensors")


def test_convert_refuses_to_overwrite_its_input(cli, samples, monkeypatch):
    monkeypatch.chdir(samples / "seed_ann")
    before = tree_digest(samples)
    result = cli("convert", "model.safetensors", "--output", "model.safetensors")
    assert result.exit_code == 2
    assert "is one of the input files" in result.stderr
    assert tree_digest(samples) == before


def test_checkpoint_taken_from_config(cli, samples, monkeypatch):
    folder = samples / "seed_ann"
    text = (folder / "hesscli.toml").read_text()
    (folder / "hesscli.toml").write_text(text + 'checkpoint = "model.pt"\n')
    nested = folder / "runs" / "deep"
    nested.mkdir(parents=True)
    monkeypatch.chdir(nested)  # config is found by walking upward
    document = _json(cli("info", "--json"))
    assert Path(document["inputs"]["checkpoint"]) == folder / "model.pt"


def test_pyproject_tool_table_is_a_config(cli, samples, monkeypatch):
    folder = samples / "seed_ann"
    (folder / "hesscli.toml").unlink()
    (folder / "pyproject.toml").write_text(
        '[project]\nname = "x"\n\n[tool.hesscli]\nmodel = "model.py:SeedANN"\ndata = "data.pt"\n'
    )
    monkeypatch.chdir(folder)
    document = _json(cli("info", "model.pt", "--json"))
    assert document["inputs"]["config"] == str(folder / "pyproject.toml")
    assert document["inputs"]["loss"] == "mse"  # inferred from float targets


def test_version_and_help(cli):
    from hesscli import __version__

    result = cli("--version")
    assert result.exit_code == 0
    assert result.stdout.strip() == f"hesscli {__version__}"
    for flag in ("-h", "--help"):
        result = cli("info", flag)
        assert result.exit_code == 0
        assert "--max-samples" in result.stdout


EXPLICIT = {
    "seed_ann": ("model.pt", "model.py:SeedANN", "data.pt", "mse"),
    "digits_mlp": ("checkpoint.pt", "model.py:DigitsMLP", "data.safetensors", "cross_entropy"),
    "digits_cnn": ("model.pt", "model.py:DigitsCNN", "data.npz", "cross_entropy"),
    "tiny_transformer": ("model.safetensors", "model.py:TinyTransformer", "data.pt", None),
}


@pytest.mark.parametrize("folder", sorted(EXPLICIT))
def test_info_with_every_option_explicit(cli, samples, tmp_path, monkeypatch, folder):
    checkpoint, model, data, loss = EXPLICIT[folder]
    base = samples / folder
    monkeypatch.chdir(tmp_path)
    args = ["info", str(base / checkpoint), "--model", f"{base / model}", "--no-config"]
    args += ["--data", str(base / data), "--dtype", "float64", "--device", "cpu"]
    if folder == "digits_mlp":
        args += ["--model-kwargs", '{"hidden": 32}']
    if loss is not None:
        args += ["--loss", loss]
    table = cli(*args)
    assert table.exit_code == 0, table.output
    assert MANIFEST[folder]["parameters"] == int(
        table.stdout.split(" parameters (")[0].rsplit(" ", 1)[1].replace(",", "")
    )
    document = _json(cli(*args, "--json"))
    sources = document["settings"]["sources"]
    assert sources["model"] == sources["data"] == "option"
    assert document["results"]["gradient"]["loss"] == pytest.approx(
        MANIFEST[folder]["eval_loss"], rel=1e-5
    )
    if loss is None:  # --no-config ignores project configs, not the checkpoint's own metadata
        assert sources["loss"] == "checkpoint metadata"
