"""Shared fixtures of the graphs tests: a small network with tuple outputs and a convolution."""

import pytest
import torch
from torch import nn


class PairOut(nn.Module):
    """Returns a tuple, like attention blocks do: capture keeps the first tensor."""

    def __init__(self, d):
        super().__init__()
        self.lin = nn.Linear(d, d)

    def forward(self, x):
        h = self.lin(x)
        return h, h.sum()


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(nn.Linear(5, 7), nn.ReLU(), nn.Linear(7, 4), nn.Tanh())
        self.pair = PairOut(4)
        self.conv = nn.Conv1d(1, 2, kernel_size=3, padding=1)

    def forward(self, x):
        h = self.body(x)
        h, _ = self.pair(h)
        return self.conv(h.unsqueeze(1))


@pytest.fixture
def net():
    torch.manual_seed(0)
    return Net()
