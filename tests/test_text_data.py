"""Data as Hugging Face users have it: batch dicts, JSONL/CSV text, ``save_to_disk`` folders.

Every format of the same samples gives the same numbers (float64 loss and Hessian-vector
products), and the numbers are those of an independent computation: the folder's model loaded by
transformers, the loss written out by hand. Each refusal is one line and exit 2.
"""

from __future__ import annotations

import csv
import json
import sys
from pathlib import Path

import jsonschema
import pytest
import torch
from safetensors.torch import save_file
from typer.testing import CliRunner

from hesscli.cli.app import app
from hesscli.errors import DataError
from hesscli.loading.text import TextOptions, encode_records, load_tokenizer
from tests import hf_tiny, token_weighting_worker
from tests.conftest import SAMPLES
from tests.test_schemas import load_schema
from tests.test_token_weighting import one_error_line

TEXTS = hf_tiny.texts()
LABELS = ["positive", "negative", "negative", "positive", "positive", "negative", "positive"]
pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A GPT-2 and a BERT folder, and the same samples in every format."""
    root = tmp_path_factory.mktemp("text")
    hf_tiny.gpt2_folder(root / "gpt2")
    hf_tiny.bert_folder(root / "bert")
    records = [{"text": t, "label": label} for t, label in zip(TEXTS, LABELS, strict=True)]
    hf_tiny.write_jsonl(root / "data.jsonl", records)
    hf_tiny.write_jsonl(root / "sentences.jsonl", [{"sentence": t} for t in TEXTS])
    with (root / "data.csv").open("w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=["label", "text"])
        writer.writeheader()
        writer.writerows(
            {"label": int(r["label"] == "positive"), "text": r["text"]} for r in records
        )
    batch = hf_tiny.causal_batch(TEXTS)
    torch.save(batch, root / "batch.pt")
    save_file(batch, str(root / "batch.safetensors"))
    torch.save({k: v for k, v in batch.items() if k != "labels"}, root / "unlabelled.pt")
    return root


def _invoke(root: Path, *args: str):
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(root)
        return CliRunner().invoke(app, [*args, "--no-config"], env={"COLUMNS": "100"})


def _info(root: Path, folder: str, data: str, *options: str) -> dict:
    result = _invoke(root, "info", folder, "--data", data, "--dtype", "float64", "--json", *options)
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


# -- the causal LM: every format, the same numbers ---------------------------------------------
@pytest.fixture(scope="module")
def from_text(root: Path) -> dict:
    return token_weighting_worker.measure(root / "gpt2", root / "data.jsonl", 3)


@pytest.mark.parametrize("data", ["batch.pt", "batch.safetensors", "data.csv", "unlabelled.pt"])
def test_causal_lm_formats_give_the_text_numbers(root, from_text, data):
    found = token_weighting_worker.measure(root / "gpt2", root / data, 3)
    assert found["units"] == from_text["units"] == 70
    assert abs(found["loss"] - from_text["loss"]) <= 1e-14 * from_text["loss"]
    scale = from_text["products"].abs().max()
    assert (found["products"] - from_text["products"]).abs().max() <= 1e-14 * scale


def test_text_is_tokenised_with_the_folders_tokenizer(root):
    document = _info(root, "gpt2", "data.jsonl")
    data = document["results"]["data"]
    schema = load_schema("info")["properties"]["results"]["properties"]["data"]
    jsonschema.validate(data, schema)  # the formats are part of the JSON contract
    assert data["format"] == "jsonl"
    shapes = {tensor["name"]: tensor["shape"] for tensor in data["inputs"]}
    assert shapes == {"inputs['input_ids']": [7, 24], "inputs['attention_mask']": [7, 24]}
    assert document["inputs"]["loss"].startswith("next_token_cross_entropy")


def test_max_length_truncates(root):
    document = _info(root, "gpt2", "data.jsonl", "--max-length", "5")
    shapes = [tensor["shape"] for tensor in document["results"]["data"]["inputs"]]
    assert shapes == [[7, 5], [7, 5]]
    # 5 + 1 + 5 + 5 + 3 + 2 + 5 words kept, one fewer target each after the shift.
    assert document["settings"]["normalisation"]["units"] == 26 - 7


def test_text_field_option(root):
    result = _invoke(root, "info", "gpt2", "--data", "sentences.jsonl")
    one_error_line(result, r"record 1 has no field 'text' \(fields: sentence\); pass --text-field")
    document = _info(root, "gpt2", "sentences.jsonl", "--text-field", "sentence")
    assert document["settings"]["normalisation"]["units"] == 70


# -- the classifier: labels by name or by id ---------------------------------------------------
def _classifier_truth(root: Path) -> float:
    from transformers import BertForSequenceClassification

    model = BertForSequenceClassification.from_pretrained(
        root / "bert", attn_implementation="eager"
    )
    model = model.to(torch.float64).eval()
    tokenizer = load_tokenizer(root / "bert", where="test")
    encoded = tokenizer(TEXTS, padding="longest", return_tensors="pt")
    with torch.no_grad():
        logits = model(**encoded).logits
    labels = torch.tensor([int(label == "positive") for label in LABELS])
    picked = logits.log_softmax(-1).gather(1, labels[:, None])[:, 0]
    return float(-picked.mean())


def test_classifier_names_and_ids_give_the_same_loss(root):
    by_name = _info(root, "bert", "data.jsonl")
    by_id = _info(root, "bert", "data.csv", "--micro-batch", "3")
    truth = _classifier_truth(root)
    for document in (by_name, by_id):
        assert document["settings"]["normalisation"]["kind"] == "samples"
        assert abs(document["results"]["gradient"]["loss"] - truth) <= 1e-12 * truth
    assert by_name["results"]["data"]["targets"]["dtype"] == "int64"


def test_label_not_in_label2id_is_refused(root):
    hf_tiny.write_jsonl(root / "odd.jsonl", [{"text": "the cat", "label": "neutral"}])
    one_error_line(
        _invoke(root, "info", "bert", "--data", "odd.jsonl"),
        r"record 1's label 'neutral' is not a number nor a name in the model's label2id "
        r"\(negative, positive\)",
    )


def test_label_field_missing_is_refused(root):
    one_error_line(
        _invoke(root, "info", "bert", "--data", "sentences.jsonl", "--text-field", "sentence"),
        r"record 1 has no field 'label' .*pass --label-field",
    )


def test_classifier_batch_without_labels_is_refused(root):
    one_error_line(
        _invoke(root, "info", "bert", "--data", "unlabelled.pt"),
        r"unlabelled\.pt is a Hugging Face batch without 'labels'",
    )


# -- refusals: where the tokenizer should come from --------------------------------------------
def test_text_without_a_folder_is_refused(root):
    checkpoint = SAMPLES / "digits_mlp" / "model.safetensors"
    one_error_line(
        _invoke(root, "info", str(checkpoint), "--data", "data.jsonl"),
        r"data\.jsonl is text, which needs a tokenizer, but the checkpoint is not a Hugging "
        r"Face folder; pass the save_pretrained folder",
    )


def test_folder_without_tokenizer_is_refused(root):
    bare = hf_tiny.gpt2_folder(root / "bare", tokenizer=False)
    one_error_line(
        _invoke(root, "info", str(bare), "--data", "data.jsonl"),
        r"the checkpoint folder .*bare holds no tokenizer .*tokenizer\.save_pretrained",
    )


def test_missing_transformers_names_the_extra(root, monkeypatch):
    monkeypatch.setitem(sys.modules, "transformers", None)
    with pytest.raises(DataError, match=r"needs transformers.*hesscli\[hf\]"):
        load_tokenizer(root / "gpt2", where="data file data.jsonl")


# -- datasets' save_to_disk ---------------------------------------------------------------------
@pytest.fixture(scope="module")
def saved(root: Path) -> Path:
    datasets = pytest.importorskip("datasets")  # optional: not part of the hf extra
    records = [
        {"text": t, "label": int(lb == "positive")} for t, lb in zip(TEXTS, LABELS, strict=True)
    ]
    datasets.Dataset.from_list(records).save_to_disk(str(root / "raw"))
    batch = hf_tiny.causal_batch(TEXTS)
    ragged = [
        {"input_ids": ids[mask == 1].tolist(), "label": record["label"]}
        for ids, mask, record in zip(
            batch["input_ids"], batch["attention_mask"], records, strict=True
        )
    ]
    datasets.Dataset.from_list(ragged).save_to_disk(str(root / "tokenised"))
    split = datasets.DatasetDict({"train": datasets.Dataset.from_list(records)})
    split["validation"] = datasets.Dataset.from_list(records)
    split.save_to_disk(str(root / "splits"))
    return root


@pytest.mark.parametrize("folder", ["raw", "tokenised"])
def test_saved_dataset_gives_the_text_numbers(saved, from_text, folder):
    found = token_weighting_worker.measure(saved / "gpt2", saved / folder, 3)
    assert found["units"] == 70
    assert abs(found["loss"] - from_text["loss"]) <= 1e-14 * from_text["loss"]
    scale = from_text["products"].abs().max()
    assert (found["products"] - from_text["products"]).abs().max() <= 1e-14 * scale


def test_saved_dataset_with_splits_names_them(saved):
    one_error_line(
        _invoke(saved, "info", "gpt2", "--data", "splits"),
        r"dataset folder .*splits holds several splits \(train, validation\); pass one of them",
    )


# -- the sample folders ----------------------------------------------------------------------
@pytest.mark.parametrize("folder", ["hf_gpt2", "hf_bert"])
def test_sample_folders_do_not_depend_on_the_micro_batch(folder):
    data = SAMPLES / folder / "data.jsonl"
    one = token_weighting_worker.measure(SAMPLES / folder, data, None)
    split = token_weighting_worker.measure(SAMPLES / folder, data, 5)
    assert split["micro_batches"] > 1 == one["micro_batches"]
    assert abs(split["loss"] - one["loss"]) <= 1e-12 * one["loss"]
    scale = one["products"].abs().max()
    assert (split["products"] - one["products"]).abs().max() <= 1e-12 * scale


def test_a_pickled_batch_encoding_gets_the_fix(root):
    tokenizer = load_tokenizer(root / "gpt2", where="test")
    encoding = tokenizer(TEXTS, padding="longest", return_tensors="pt")
    torch.save(encoding, root / "encoding.pt")  # not a dict: weights_only cannot read it
    one_error_line(
        _invoke(root, "info", "gpt2", "--data", "encoding.pt"),
        r"encoding\.pt is not a readable tensor file .*torch\.save\(dict\(batch\), path\)",
    )
    torch.save(dict(encoding), root / "encoding.pt")
    assert _info(root, "gpt2", "encoding.pt")["settings"]["normalisation"]["units"] == 70


def test_max_length_from_a_config_must_be_positive(root):
    (root / "hesscli.toml").write_text("max_length = 0\n", encoding="utf-8")
    try:
        result = CliRunner().invoke(
            app, ["info", str(root / "gpt2"), "--data", str(root / "data.jsonl"),
                  "--config", str(root / "hesscli.toml")],
        )  # fmt: skip
    finally:
        (root / "hesscli.toml").unlink()
    one_error_line(result, r"max_length must be at least 1, got 0")


def test_text_for_per_token_labels_is_refused(root):
    options = TextOptions(root / "bert", config={"architectures": ["BertForTokenClassification"]})
    with pytest.raises(DataError, match=r"takes one label per token.*tokenised batch dict"):
        encode_records([{"text": "the cat", "label": 1}], options=options, where="data.jsonl")
