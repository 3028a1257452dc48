"""Build the two Hugging Face samples: a tiny BERT sentiment classifier and a tiny GPT-2.

Both are trained here, on the CPU, on a small set of English sentences written by
:func:`sentences` (short reviews, "the food was not great"), and saved as a Hugging Face user
would save them: ``save_pretrained`` for the model and for its tokenizer, made offline with
the ``tokenizers`` library (a WordPiece vocabulary of the sentences' words for BERT, a trained
BPE for GPT-2) and wrapped in ``PreTrainedTokenizerFast``. Each folder also holds
``data.jsonl``: the held-out evaluation sentences, one ``{"text": ..., "label": ...}`` per
line (label 1 positive, 0 negative), which hesscli tokenises with the folder's own tokenizer.

Called by ``regenerate.py`` (``--only hf_bert``, ``--only hf_gpt2``); needs ``transformers`` and
``tokenizers`` (``pip install "hesscli[hf]"``). Seeded and single-threaded: two runs on the same
machine and library versions write the same bytes.
"""

from __future__ import annotations

import itertools
import json
import random
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

#: Seed of weight initialisation and mini-batch order.
SEED = 0
#: Sentences held out as the evaluation set (``data.jsonl``).
EVAL_SENTENCES = 32
#: Longest tokenised sentence the models accept (positions).
MAX_LENGTH = 32

SUBJECTS = (
    "the movie", "the food", "the service", "this book", "the hotel", "the music",
    "our trip", "the game", "the show", "my room", "the staff", "the ending",
)  # fmt: skip
VERBS = ("was", "is", "felt", "seemed")
ADVERBS = ("", "really ", "very ", "quite ", "so ")
POSITIVE = ("great", "good", "lovely", "wonderful", "fun", "excellent", "nice")
NEGATIVE = ("bad", "awful", "boring", "terrible", "poor", "dull", "sad")


def sentences() -> list[dict[str, Any]]:
    """Every review sentence of the grammar, labelled 1 (positive) or 0 (negative).

    "not" flips the label, so a model has to read more than the adjective.
    """
    rows = []
    for subject, verb, adverb, negated, word in itertools.product(
        SUBJECTS, VERBS, ADVERBS, (False, True), POSITIVE + NEGATIVE
    ):
        positive = (word in POSITIVE) != negated
        text = f"{subject} {verb} {'not ' if negated else ''}{adverb}{word}"
        rows.append({"text": text, "label": int(positive)})
    return rows


def split() -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Training sentences and the held-out evaluation sentences (a fixed shuffle)."""
    rows = sentences()
    random.Random(SEED).shuffle(rows)
    return rows[EVAL_SENTENCES:], rows[:EVAL_SENTENCES]


def write_jsonl(path: Path, rows: list[dict[str, Any]]) -> None:
    """One JSON object per line, keys in a fixed order."""
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")


def bert_tokenizer(texts: list[str]) -> Any:
    """A lower-casing WordPiece tokenizer for ``texts``, with BERT's special tokens.

    The vocabulary is built here rather than by ``WordPieceTrainer``, whose choice among
    equally frequent pieces changes from run to run: the special tokens, then every word of
    ``texts``, then every character alone and as a ``##`` continuation, each group sorted.
    Unseen words fall back to their characters, as in BERT.
    """
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    normalizer = normalizers.BertNormalizer(lowercase=True)
    splitter = pre_tokenizers.BertPreTokenizer()
    words = sorted(
        {w for t in texts for w, _ in splitter.pre_tokenize_str(normalizer.normalize_str(t))}
    )
    chars = sorted({c for w in words for c in w})
    pieces = specials + words + [c for c in chars if c not in words] + [f"##{c}" for c in chars]
    tok = Tokenizer(models.WordPiece({p: i for i, p in enumerate(pieces)}, unk_token="[UNK]"))
    tok.normalizer = normalizer
    tok.pre_tokenizer = splitter
    cls, sep = tok.token_to_id("[CLS]"), tok.token_to_id("[SEP]")
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]",
        pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", cls), ("[SEP]", sep)],
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        unk_token="[UNK]",
        pad_token="[PAD]",
        cls_token="[CLS]",
        sep_token="[SEP]",
        mask_token="[MASK]",
        model_max_length=MAX_LENGTH,
    )


def gpt2_tokenizer(texts: list[str]) -> Any:
    """A BPE tokenizer trained on ``texts``; padding with the end-of-text token, as for GPT-2."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    eos = "<|endoftext|>"
    tok = Tokenizer(models.BPE(unk_token=eos))
    tok.pre_tokenizer = pre_tokenizers.Metaspace()
    tok.decoder = decoders.Metaspace()
    tok.train_from_iterator(texts, trainers.BpeTrainer(vocab_size=96, special_tokens=[eos]))
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=eos,
        eos_token=eos,
        unk_token=eos,
        pad_token=eos,
        model_max_length=MAX_LENGTH,
    )


def _batches(rows: list[dict[str, Any]], size: int, steps: int, seed: int) -> list[list[int]]:
    order = random.Random(seed)
    indices = list(range(len(rows)))
    return [order.sample(indices, size) for _ in range(steps)]


def _train(
    model: torch.nn.Module, loss_of: Any, rows: list[dict[str, Any]], steps: int, lr: float
) -> None:
    """``steps`` Adam steps on mini-batches of 32 sentences (dropout on), then eval mode."""
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    model.train()
    for chosen in _batches(rows, 32, steps, SEED):
        loss = loss_of([rows[i] for i in chosen])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    model.eval()


def _causal_loss(logits: torch.Tensor, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Next-token cross-entropy over the real tokens (as hesscli's default for a causal LM)."""
    labels = ids.masked_fill(mask == 0, -100)
    vocab = logits.shape[-1]
    return F.cross_entropy(logits[:, :-1].reshape(-1, vocab), labels[:, 1:].reshape(-1))


def build_hf_bert(folder: Path) -> dict[str, Any]:
    """Train BERT (hidden 32, 2 layers, 2 heads, 300 steps) to classify the sentiment."""
    from transformers import BertConfig, BertForSequenceClassification

    train, held_out = split()
    tokenizer = bert_tokenizer([r["text"] for r in train])
    torch.manual_seed(SEED)
    config = BertConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=MAX_LENGTH,
        num_labels=2,
        problem_type="single_label_classification",
        pad_token_id=tokenizer.pad_token_id,
        id2label={0: "negative", 1: "positive"},
        label2id={"negative": 0, "positive": 1},
    )
    model = BertForSequenceClassification(config)

    def loss_of(rows: list[dict[str, Any]]) -> torch.Tensor:
        batch = tokenizer([r["text"] for r in rows], padding=True, return_tensors="pt")
        logits = model(**batch).logits
        return F.cross_entropy(logits, torch.tensor([r["label"] for r in rows]))

    _train(model, loss_of, train, steps=300, lr=1e-3)
    with torch.no_grad():
        batch = tokenizer([r["text"] for r in held_out], padding=True, return_tensors="pt")
        logits = model(**batch).logits
        labels = torch.tensor([r["label"] for r in held_out])
        accuracy = (logits.argmax(-1) == labels).double().mean().item()
        eval_loss = F.cross_entropy(logits, labels).item()
    _save(folder, model, tokenizer, held_out)
    return {
        **_sizes(model),
        "accuracy": accuracy,
        "eval_loss": eval_loss,
        "eval_samples": len(held_out),
    }


def build_hf_gpt2(folder: Path) -> dict[str, Any]:
    """Train GPT-2 (width 32, 2 layers, 2 heads, 300 steps) as a language model of them."""
    from transformers import GPT2Config, GPT2LMHeadModel

    train, held_out = split()
    tokenizer = gpt2_tokenizer([r["text"] for r in train])
    torch.manual_seed(SEED)
    config = GPT2Config(
        vocab_size=len(tokenizer),
        n_positions=MAX_LENGTH,
        n_embd=32,
        n_layer=2,
        n_head=2,
        bos_token_id=tokenizer.eos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    model = GPT2LMHeadModel(config)

    def loss_of(rows: list[dict[str, Any]]) -> torch.Tensor:
        batch = tokenizer([r["text"] for r in rows], padding=True, return_tensors="pt")
        logits = model(**batch).logits
        return _causal_loss(logits, batch["input_ids"], batch["attention_mask"])

    _train(model, loss_of, train, steps=300, lr=3e-3)
    with torch.no_grad():
        batch = tokenizer([r["text"] for r in held_out], padding=True, return_tensors="pt")
        logits = model(**batch).logits
        eval_loss = _causal_loss(logits, batch["input_ids"], batch["attention_mask"]).item()
        real = batch["attention_mask"][:, 1:].sum().item()
    _save(folder, model, tokenizer, held_out)
    return {
        **_sizes(model),
        "eval_loss": eval_loss,
        "eval_samples": len(held_out),
        "eval_tokens": int(real),
    }


def _sizes(model: torch.nn.Module) -> dict[str, int]:
    """Parameter counts as hesscli reports them (a tied weight counted once)."""
    total = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return {"parameters": total, "trainable_parameters": trainable}


def _save(folder: Path, model: Any, tokenizer: Any, held_out: list[dict[str, Any]]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for old in folder.iterdir():
        old.unlink()
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    write_jsonl(folder / "data.jsonl", held_out)
