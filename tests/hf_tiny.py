"""Tiny Hugging Face folders built in the tests (no download): a GPT-2 causal LM, a BERT classifier.

Both share a word-level tokenizer built with the ``tokenizers`` library, saved beside the model
with ``save_pretrained``, so the folder is what a Trainer leaves behind. Texts are drawn from a
seeded generator with very different lengths (1 to 24 words), so micro-batches and ranks hold very
different numbers of real tokens.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

import torch

WORDS = [
    "the", "cat", "sat", "on", "a", "mat", "and", "dog", "ran", "far", "away", "big",
    "small", "red", "blue", "green", "tree", "house", "river", "stone", "bird", "sang",
    "loud", "soft",
]  # fmt: skip
SPECIALS = ["<pad>", "<unk>", "<eos>", "[CLS]", "[SEP]"]
LENGTHS = (24, 1, 9, 17, 3, 2, 21)  # words per text: sequences of very different lengths


def texts(lengths: tuple[int, ...] = LENGTHS, seed: int = 0) -> list[str]:
    """Seeded texts with the given numbers of words."""
    rng = random.Random(seed)
    return [" ".join(rng.choice(WORDS) for _ in range(n)) for n in lengths]


def vocabulary() -> dict[str, int]:
    """Word → id (the specials first)."""
    return {word: i for i, word in enumerate([*SPECIALS, *WORDS])}


def _tokenizer(*, bert: bool):
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = vocabulary()
    core = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.Whitespace()
    if bert:
        core.post_processor = processors.TemplateProcessing(
            single="[CLS] $A [SEP]",
            special_tokens=[("[CLS]", vocab["[CLS]"]), ("[SEP]", vocab["[SEP]"])],
        )
        return PreTrainedTokenizerFast(
            tokenizer_object=core, unk_token="<unk>", pad_token="<pad>", cls_token="[CLS]",
            sep_token="[SEP]", model_input_names=["input_ids", "token_type_ids", "attention_mask"],
        )  # fmt: skip
    return PreTrainedTokenizerFast(
        tokenizer_object=core, unk_token="<unk>", eos_token="<eos>",
        model_input_names=["input_ids", "attention_mask"],
    )  # fmt: skip


def gpt2_folder(folder: Path, *, tokenizer: bool = True) -> Path:
    """A seeded tiny GPT-2 (``GPT2LMHeadModel``) saved with ``save_pretrained``."""
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    config = GPT2Config(
        n_embd=16, n_layer=1, n_head=2, vocab_size=50, n_positions=32,
        bos_token_id=2, eos_token_id=2,
    )  # fmt: skip
    GPT2LMHeadModel(config).save_pretrained(folder)
    if tokenizer:
        _tokenizer(bert=False).save_pretrained(folder)
    return folder


def bert_folder(folder: Path) -> Path:
    """A seeded tiny BERT sequence classifier with named labels (``negative``, ``positive``)."""
    from transformers import BertConfig, BertForSequenceClassification

    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=50, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
        intermediate_size=32, max_position_embeddings=32, pad_token_id=0,
        id2label={0: "negative", 1: "positive"}, label2id={"negative": 0, "positive": 1},
    )  # fmt: skip
    BertForSequenceClassification(config).save_pretrained(folder)
    _tokenizer(bert=True).save_pretrained(folder)
    return folder


def write_jsonl(path: Path, records: list[dict]) -> Path:
    """One JSON object per line."""
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return path


def causal_batch(lines: list[str]) -> dict[str, torch.Tensor]:
    """The batch dict of ``lines`` built by hand (word ids, right padding, -100 labels)."""
    vocab = vocabulary()
    ids = [[vocab[w] for w in line.split()] for line in lines]
    longest = max(len(row) for row in ids)
    input_ids = torch.tensor([row + [vocab["<eos>"]] * (longest - len(row)) for row in ids])
    mask = torch.tensor([[1] * len(row) + [0] * (longest - len(row)) for row in ids])
    labels = input_ids.masked_fill(mask == 0, -100)
    return {"input_ids": input_ids, "attention_mask": mask, "labels": labels}
