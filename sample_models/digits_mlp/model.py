"""A small multilayer perceptron for the 8x8 scikit-learn digits (flattened to 64 features).

It mixes two activations (tanh, ReLU) and a dropout layer so that hesscli sees a model whose
behaviour differs between training and evaluation mode.
"""

import torch
from torch import nn


class DigitsMLP(nn.Module):
    """``Linear(64, h) -> tanh -> Dropout -> Linear(h, h) -> ReLU -> Linear(h, 10)``.

    Args:
        hidden: Width ``h`` of both hidden layers.
        dropout: Dropout probability after the first hidden layer (inactive in eval mode).
    """

    def __init__(self, hidden: int = 32, dropout: float = 0.1) -> None:
        super().__init__()
        self.fc1 = nn.Linear(64, hidden)
        self.drop = nn.Dropout(dropout)
        self.fc2 = nn.Linear(hidden, hidden)
        self.fc3 = nn.Linear(hidden, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Map ``(B, 64)`` pixel vectors in [0, 1] to ``(B, 10)`` class logits."""
        h = self.drop(torch.tanh(self.fc1(x)))
        h = torch.relu(self.fc2(h))
        return self.fc3(h)
