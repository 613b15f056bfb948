"""A segmentation "network" with a known answer, for tests and demos of the plumbing.

``FixedEllipse`` ignores the pixels and returns probability 1 inside a centred ellipse and 0
outside. It has no weights and is not a person detector: the functional tests use it to check
that the served pipeline keeps the foreground sharp and blurs the background.
"""

from __future__ import annotations

import torch
from torch import nn


class FixedEllipse(nn.Module):
    """``[B, 3, h, w]`` float -> ``[B, 1, h, w]`` probability: 1 inside the centred ellipse.

    The ellipse's semi-axes are ``semi_axes`` (fractions of the half-height and half-width).
    """

    def __init__(self, semi_axes: tuple[float, float] = (0.8, 0.6)) -> None:
        super().__init__()
        self.semi_axes = semi_axes

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, _, h, w = x.shape
        ys = (torch.arange(h, device=x.device, dtype=torch.float32) + 0.5) / h * 2 - 1
        xs = (torch.arange(w, device=x.device, dtype=torch.float32) + 0.5) / w * 2 - 1
        ay, ax = self.semi_axes
        inside = (ys[:, None] / ay) ** 2 + (xs[None, :] / ax) ** 2 <= 1.0
        return inside.to(x.dtype).expand(batch, 1, h, w).contiguous()
