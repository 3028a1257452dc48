"""Hugging Face ``save_pretrained`` folders as checkpoints, against an independent truth.

The truth never goes through hesscli: transformers' own ``from_pretrained`` loads the sample
folder in float64, the loss is written out by hand (log-softmax and a gather, not
``F.cross_entropy`` and not ``model(**batch).loss``, which upcasts to float32), and products are
double backward over the whole batch. hesscli reads the same folder with its own loader and
loss, from the command line (``--json``) and from ``hesscli.curvature_operator``.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from transformers import (
    AutoModelForCausalLM,
    AutoModelForSequenceClassification,
    AutoTokenizer,
)

import hesscli
from tests.conftest import SAMPLES

F64 = torch.float64
BERT = SAMPLES / "hf_bert"
GPT2 = SAMPLES / "hf_gpt2"
#: Relative accuracy asked of float64 results against the double-backward truth.
TOLERANCE = 1e-10


# -- data and truth, built without hesscli ---------------------------------------------------
def _tokenised(folder: Path, path: Path, *, causal: bool) -> Path:
    """``data.jsonl`` tokenised by the folder's tokenizer, as an (inputs, targets) .pt file."""
    rows = [json.loads(line) for line in (folder / "data.jsonl").read_text().splitlines()]
    batch = AutoTokenizer.from_pretrained(folder)(
        [r["text"] for r in rows], padding=True, return_tensors="pt"
    )
    inputs = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}
    if causal:
        targets = batch["input_ids"].masked_fill(batch["attention_mask"] == 0, -100)
    else:
        targets = torch.tensor([r["label"] for r in rows])
    torch.save({"inputs": inputs, "targets": targets}, path)
    return path


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Tokenised evaluation data of both samples."""
    root = tmp_path_factory.mktemp("hf_data")
    return {
        "bert": _tokenised(BERT, root / "bert.pt", causal=False),
        "gpt2": _tokenised(GPT2, root / "gpt2.pt", causal=True),
    }


def _hand_loss(name: str, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Cross-entropy written out: the classifier's mean over sentences, the LM's over tokens."""
    if name == "bert":
        logp = logits.log_softmax(-1)
        return -logp[torch.arange(len(targets)), targets].mean()
    logp = logits[:, :-1].log_softmax(-1)  # position t predicts the token at t + 1
    following = targets[:, 1:]
    real = following != -100
    picked = logp.gather(-1, following.clamp(min=0).unsqueeze(-1)).squeeze(-1)
    return -(picked * real).sum() / real.sum()


class Truth:
    """The sample's loss as a function of its parameters, by transformers and autograd alone."""

    def __init__(self, name: str, data_file: Path) -> None:
        folder = BERT if name == "bert" else GPT2
        auto = AutoModelForSequenceClassification if name == "bert" else AutoModelForCausalLM
        self.model = auto.from_pretrained(folder, attn_implementation="eager").to(F64).eval()
        self.name = name
        batch = torch.load(data_file, weights_only=True)
        self.inputs, self.targets = batch["inputs"], batch["targets"]
        self.params = dict(self.model.named_parameters())  # a tied weight once

    def loss(self) -> torch.Tensor:
        """The mean loss over the whole data set."""
        return _hand_loss(self.name, self.model(**self.inputs).logits, self.targets)

    def hvp(self, vectors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """H·v by double backward over every parameter."""
        names = list(self.params)
        grads = torch.autograd.grad(self.loss(), [self.params[n] for n in names], create_graph=True)
        dot = sum((g * vectors[n]).sum() for g, n in zip(grads, names, strict=True))
        products = torch.autograd.grad(dot, [self.params[n] for n in names])
        return dict(zip(names, products, strict=True))

    def block(self, prefix: str) -> torch.Tensor:
        """The dense Hessian block of the parameters under ``prefix``, column by column."""
        names = [n for n in self.params if n.startswith(prefix + ".")]
        sizes = [self.params[n].numel() for n in names]
        grads = torch.autograd.grad(self.loss(), [self.params[n] for n in names], create_graph=True)
        flat = torch.cat([g.reshape(-1) for g in grads])
        columns = [
            torch.cat(
                [
                    c.reshape(-1)
                    for c in torch.autograd.grad(
                        flat[i], [self.params[n] for n in names], retain_graph=True
                    )
                ]
            )
            for i in range(sum(sizes))
        ]
        return torch.stack(columns, dim=1)


@pytest.fixture(scope="module")
def truths(data: dict[str, Path]) -> dict[str, Truth]:
    """The independent truth of both samples."""
    return {name: Truth(name, path) for name, path in data.items()}


def _json(result) -> dict:
    assert result.exit_code == 0, f"stdout:\n{result.stdout}\nstderr:\n{result.stderr}"
    return json.loads(result.stdout)


def _relative(got: torch.Tensor, expected: torch.Tensor) -> float:
    return float((got - expected).abs().max() / expected.abs().max())


# -- numbers against the truth --------------------------------------------------------------
@pytest.mark.parametrize("name", ["bert", "gpt2"])
def test_products_from_python_equal_double_backward(name, data, truths) -> None:
    folder = BERT if name == "bert" else GPT2
    op = hesscli.curvature_operator(
        str(folder), data=str(data[name]), dtype="float64", use_config=False, micro_batch=7
    )
    truth = truths[name]
    generator = torch.Generator().manual_seed(0)
    vectors = torch.randn(op.size, 2, generator=generator, dtype=F64)
    got = op.matmat(vectors)
    for column in range(2):
        pieces, expected = {}, torch.zeros(op.size, dtype=F64)
        for block in op.blocks:  # the operator's coordinates: layer after layer, by name
            offset = block.start
            for parameter in block.parameters:
                size = truth.params[parameter].numel()
                pieces[parameter] = vectors[offset : offset + size, column].reshape(
                    truth.params[parameter].shape
                )
                offset += size
        products = truth.hvp(pieces)
        for block in op.blocks:
            offset = block.start
            for parameter in block.parameters:
                size = truth.params[parameter].numel()
                expected[offset : offset + size] = products[parameter].reshape(-1)
                offset += size
        assert set(pieces) == set(truth.params), "every parameter is a coordinate, once"
        assert _relative(got[:, column], expected) < TOLERANCE


@pytest.mark.parametrize(("name", "layer"), [("bert", "classifier"), ("gpt2", "transformer.ln_f")])
def test_cli_spectrum_and_trace_of_a_layer_equal_its_dense_block(
    name, layer, cli, data, truths
) -> None:
    folder = BERT if name == "bert" else GPT2
    common = ["--data", str(data[name]), "--dtype", "float64", "--layer", layer, "--no-config"]
    spectrum = _json(
        cli("spectrum", str(folder), *common, "--top-k", "2", "--tol", "1e-12", "--json")
    )
    trace = _json(cli("trace", str(folder), *common, "--method", "exact", "--json"))
    dense = truths[name].block(layer)
    assert torch.allclose(dense, dense.T, rtol=0, atol=1e-12)
    values = torch.linalg.eigvalsh(dense)
    scale = float(values.abs().max())
    top = [entry["value"] for entry in spectrum["results"]["top"]]
    bottom = spectrum["results"]["bottom"][0]["value"]
    assert abs(top[0] - float(values[-1])) < TOLERANCE * scale
    assert abs(top[1] - float(values[-2])) < TOLERANCE * scale
    assert abs(bottom - float(values[0])) < TOLERANCE * scale
    assert trace["results"]["trace"]["exact"]
    assert abs(trace["results"]["trace"]["value"] - float(dense.trace())) < TOLERANCE * scale
    assert spectrum["inputs"]["layers"] == [layer]


@pytest.mark.parametrize("name", ["bert", "gpt2"])
def test_info_loss_is_the_hand_written_loss_in_float64(name, cli, data, truths) -> None:
    folder = BERT if name == "bert" else GPT2
    document = _json(
        cli("info", str(folder), "--data", str(data[name]), "--dtype", "float64", "--json")
    )
    with torch.no_grad():
        expected = float(truths[name].loss())
    assert document["results"]["gradient"]["loss"] == pytest.approx(expected, rel=1e-13)
    family = "next_token_cross_entropy" if name == "gpt2" else "cross_entropy"
    assert document["results"]["loss"]["name"] == family
    built = "GPT2LMHeadModel" if name == "gpt2" else "BertForSequenceClassification"
    assert document["inputs"]["model"].startswith(built)
    assert "eager attention" in document["inputs"]["model"]


@pytest.mark.parametrize("name", ["hf_bert", "hf_gpt2"])
def test_samples_match_their_manifest_from_text_with_no_code(name, cli) -> None:
    manifest = json.loads((SAMPLES / "manifest.json").read_text())[name]
    folder = SAMPLES / name
    sizes = {p.name: p.stat().st_size for p in sorted(folder.iterdir())}
    assert sizes == manifest["files"] and sum(sizes.values()) < 1_000_000
    document = _json(cli("info", str(folder), "--data", str(folder / "data.jsonl"), "--json"))
    assert document["inputs"]["parameters"] == manifest["parameters"]
    assert document["inputs"]["samples"] == manifest["eval_samples"]
    # the loss regenerate.py measured with transformers, in float32
    assert document["results"]["gradient"]["loss"] == pytest.approx(manifest["eval_loss"], rel=1e-5)
    if name == "hf_gpt2":
        assert document["settings"]["normalisation"]["units"] == manifest["eval_tokens"]
