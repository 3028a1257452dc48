"""The classic 3 -> 4 -> 5 linear network, small enough to check Hessians by hand.

Having no activation, the loss is a polynomial in the weights, so its exact Hessian can be
written down and compared with what hesscli estimates.
"""

import torch
from torch import nn


class SeedANN(nn.Module):
    """Two stacked linear layers (3 -> 4 -> 5) without a nonlinearity: 41 parameters."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(3, 4)
        self.fc2 = nn.Linear(4, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Map ``(B, 3)`` inputs to ``(B, 5)`` outputs."""
        return self.fc2(self.fc1(x))
