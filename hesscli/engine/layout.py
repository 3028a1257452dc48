"""The flat coordinate system of a curvature operator: parameters grouped into blocks (layers).

Algorithms see vectors of length P (columns of a ``(P, K)`` matrix); the engine sees parameter
dicts. A layout maps between the two, and records where each block (layer) sits, so per-layer
quantities are slices of the same vectors.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from hesscli.engine.functional import Params


@dataclass(frozen=True)
class Slot:
    """One parameter tensor inside the flat vector: rows ``start:stop``."""

    name: str
    shape: tuple[int, ...]
    start: int
    stop: int


@dataclass(frozen=True)
class Block:
    """One layer (a group of parameter tensors) inside the flat vector: rows ``start:stop``."""

    name: str
    parameters: tuple[str, ...]
    start: int
    stop: int

    @property
    def size(self) -> int:
        """Number of scalar parameters in the block."""
        return self.stop - self.start


@dataclass(frozen=True)
class Layout:
    """Parameters in block order, each block contiguous.

    Attributes:
        slots: Every parameter tensor with its row range.
        blocks: Every block (layer) with its row range.
    """

    slots: tuple[Slot, ...]
    blocks: tuple[Block, ...]

    @classmethod
    def build(
        cls, shapes: dict[str, tuple[int, ...]], blocks: list[tuple[str, list[str]]]
    ) -> Layout:
        """Lay out ``blocks`` (name, parameter names) in order, each parameter once.

        Raises:
            ValueError: when a parameter is unknown or appears in two blocks.
        """
        slots: list[Slot] = []
        placed: list[Block] = []
        seen: set[str] = set()
        offset = 0
        for block_name, names in blocks:
            start = offset
            for name in names:
                if name not in shapes:
                    raise ValueError(f"{name} is not a trainable parameter")
                if name in seen:
                    raise ValueError(f"{name} appears in two blocks")
                seen.add(name)
                size = int(torch.Size(shapes[name]).numel())
                slots.append(Slot(name, tuple(shapes[name]), offset, offset + size))
                offset += size
            placed.append(Block(block_name, tuple(names), start, offset))
        return cls(tuple(slots), tuple(placed))

    @property
    def size(self) -> int:
        """P, the number of coordinates."""
        return self.slots[-1].stop if self.slots else 0

    @property
    def names(self) -> list[str]:
        """Parameter names in flat order."""
        return [s.name for s in self.slots]

    def block(self, name: str) -> Block:
        """The block called ``name``."""
        for block in self.blocks:
            if block.name == name:
                return block
        raise KeyError(name)

    def slots_of(self, block: Block | None) -> tuple[Slot, ...]:
        """The parameter tensors of ``block`` (all of them for ``None``)."""
        if block is None:
            return self.slots
        return tuple(s for s in self.slots if block.start <= s.start < block.stop)

    def unflatten(self, matrix: torch.Tensor, block: Block | None = None) -> Params:
        """``(P, K)`` columns → ``{name: (K, *shape)}``, the layout vmap maps over.

        With ``block``, ``matrix`` holds that block's rows only, and so does the result.
        """
        count, offset = matrix.shape[1], 0 if block is None else block.start
        return {
            s.name: matrix[s.start - offset : s.stop - offset]
            .T.reshape(count, *s.shape)
            .contiguous()
            for s in self.slots_of(block)
        }

    def flatten(self, params: Params, block: Block | None = None) -> torch.Tensor:
        """``{name: (K, *shape)}`` → ``(P, K)`` columns (the block's rows only, with ``block``)."""
        slots = self.slots_of(block)
        parts = [params[s.name].reshape(params[s.name].shape[0], -1) for s in slots]
        return torch.cat(parts, dim=1).T
