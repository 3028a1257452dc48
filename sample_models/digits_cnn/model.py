"""A small convolutional network for the 8x8 scikit-learn digits, with batch normalisation.

BatchNorm keeps running statistics as buffers, so the checkpoint holds more tensors than
parameters, and the model must be put in eval mode for a per-sample (batch-independent) loss.
"""

import torch
from torch import nn


class DigitsCNN(nn.Module):
    """Two ``conv -> BatchNorm -> ReLU -> max-pool`` stages, then a linear classifier.

    Channels go 1 -> 8 -> 16 and the 8x8 image shrinks to 2x2, so the classifier sees
    ``16 * 2 * 2 = 64`` features.
    """

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 8, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(8)
        self.conv2 = nn.Conv2d(8, 16, 3, padding=1)
        self.bn2 = nn.BatchNorm2d(16)
        self.pool = nn.MaxPool2d(2)
        self.fc = nn.Linear(64, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Map ``(B, 1, 8, 8)`` images in [0, 1] to ``(B, 10)`` class logits."""
        x = self.pool(torch.relu(self.bn1(self.conv1(x))))
        x = self.pool(torch.relu(self.bn2(self.conv2(x))))
        return self.fc(torch.flatten(x, 1))
