"""Shared test data and mixer lists (importable from any test module)."""

import torch

import openmix

INPUT_MIXERS = sorted(openmix.available("input"))
MODES = ("batch", "elem")


def images(batch: int = 6, channels: int = 3, size: int = 16, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """A batch whose samples differ everywhere, so any mix is visible."""
    x = torch.rand(batch, channels, size, size) + torch.arange(batch, dtype=torch.float32).view(-1, 1, 1, 1)
    return x.to(dtype)
