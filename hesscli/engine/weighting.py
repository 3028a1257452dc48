"""How micro-batch losses are weighted into the loss over the whole data set.

The loss is a mean over *units*: samples (DESIGN.md: L = (1/N) Σₙ ℓₙ), or, for sequence
models whose loss averages over real tokens, tokens (L = (1/T) Σₜ ℓₜ, padding excluded). A
micro-batch's loss is the mean over its own units, so it enters with weight uⱼ/U: its units over
the units of all micro-batches on all ranks. Weighting a token-mean loss by sequence counts is
the same bug as dividing by the number of micro-batches: micro-batches with more padding would
count too much.
"""

from __future__ import annotations

from dataclasses import dataclass

from hesscli.loading.data import Batch, Dataset
from hesscli.loading.losses import IGNORE_INDEX

SAMPLES = "samples"
TOKENS = "tokens"
KINDS = (SAMPLES, TOKENS)


def units(batch: Batch, kind: str) -> int:
    """Samples in ``batch``, or its real tokens (targets other than :data:`IGNORE_INDEX`)."""
    if kind == SAMPLES:
        return batch.size
    return int((batch.targets != IGNORE_INDEX).sum())


@dataclass(frozen=True)
class Weighting:
    """The unit a loss averages over, and how many of them the whole data set holds.

    Attributes:
        kind: ``samples`` or ``tokens``.
        total: Units over every batch on every rank (U).
        samples: Samples over every rank (N).
    """

    kind: str
    total: int
    samples: int

    def weight(self, part: Batch) -> float:
        """uⱼ/U for micro-batch ``part``: the share of the mean that its mean loss carries."""
        return units(part, self.kind) / self.total

    def describe(self) -> str:
        """One phrase for people, e.g. ``mean over 1,234 real tokens in 64 sequences``."""
        if self.kind == SAMPLES:
            return f"mean over {self.samples:,} samples"
        return (
            f"mean over {self.total:,} real tokens (targets ≠ {IGNORE_INDEX}) in "
            f"{self.samples:,} sequences"
        )


def local_units(dataset: Dataset, kind: str) -> tuple[int, int]:
    """``(units, samples)`` of this process's data set."""
    return sum(units(b, kind) for b in dataset.batches), dataset.num_samples
