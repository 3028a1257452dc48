"""How micro-batch losses are weighted into the loss over the whole data set.

The loss is a mean over *units*: samples (DESIGN.md: L = (1/N) Σₙ ℓₙ), or, for sequence
models whose loss averages over real tokens, tokens (L = (1/T) Σₜ ℓₜ, padding excluded). A
micro-batch's loss is the mean over its own units, so it enters with weight uⱼ/U: its units over
the units of all micro-batches on all ranks. Weighting a token-mean loss by sequence counts is
the same bug as dividing by the number of micro-batches: micro-batches with more padding would
count too much.

A shifted loss (next-token cross-entropy: position t predicts label t + 1) never uses the first
``shift`` label positions of a sequence, so its units are ``targets[:, shift:] != -100``: the
targets the loss really averages over. Counting the unshifted labels would give every sequence
one unit too many (short sequences gain most), and the weighted sum would then move with the
micro-batch and the number of ranks. Micro-batches split the samples, never a sequence, so
every micro-batch sees whole sequences and its own count is exact.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from hesscli.batches import IGNORE_INDEX, Batch, Dataset
from hesscli.errors import LossError

SAMPLES = "samples"
TOKENS = "tokens"
KINDS = (SAMPLES, TOKENS)


def count_units(targets: torch.Tensor, kind: str, shift: int = 0) -> int:
    """Samples in ``targets``, or its real target tokens (≠ -100) after the first ``shift``.

    >>> labels = torch.tensor([[5, 6, 7, -100], [8, -100, -100, -100]])
    >>> count_units(labels, TOKENS), count_units(labels, TOKENS, shift=1)
    (4, 2)
    """
    if kind == SAMPLES:
        return int(targets.shape[0])
    if shift and targets.ndim >= 2:
        targets = targets[:, shift:]
    return int((targets != IGNORE_INDEX).sum())


def units(batch: Batch, kind: str, shift: int = 0) -> int:
    """Samples in ``batch``, or its real target tokens (see :func:`count_units`)."""
    return count_units(batch.targets, kind, shift)


@dataclass(frozen=True)
class Weighting:
    """The unit a loss averages over, and how many of them the whole data set holds.

    Attributes:
        kind: ``samples`` or ``tokens``.
        total: Units over every batch on every rank (U).
        samples: Samples over every rank (N).
        shift: Leading target positions per sequence that the loss never uses (1 for
            next-token cross-entropy); tokens are counted after them.
        single_pass: The loss is not a mean over these units (it failed the additivity
            check), so only one micro-batch holding every sample gives its value; any other
            split is refused instead of silently weighted.
    """

    kind: str
    total: int
    samples: int
    shift: int = 0
    single_pass: bool = False

    def weight(self, part: Batch) -> float:
        """uⱼ/U for micro-batch ``part``: the share of the mean that its mean loss carries.

        Raises:
            LossError: for a :attr:`single_pass` loss, on any part smaller than the whole.
        """
        share = units(part, self.kind, self.shift)
        if self.single_pass and (part.size != self.samples or share != self.total):
            raise LossError(
                f"the loss is not a mean over {self.kind}, so it cannot be split, but a "
                f"micro-batch of {part.size} of the {self.samples:,} samples was asked for",
                "keep all samples in one micro-batch (--micro-batch, --max-memory) on one "
                "process, or write the loss as a mean",
            )
        return share / self.total

    def describe(self) -> str:
        """One phrase for people, e.g. ``mean over 1,234 real tokens in 64 sequences``."""
        if self.kind == SAMPLES:
            return f"mean over {self.samples:,} samples"
        after = ""
        if self.shift:
            first = "position" if self.shift == 1 else f"{self.shift} positions"
            after = f" past each sequence's first {first}"
        return (
            f"mean over {self.total:,} real tokens (targets ≠ {IGNORE_INDEX}{after}) in "
            f"{self.samples:,} sequences"
        )


def local_units(dataset: Dataset, kind: str, shift: int = 0) -> tuple[int, int]:
    """``(units, samples)`` of this process's data set."""
    return sum(units(b, kind, shift) for b in dataset.batches), dataset.num_samples
