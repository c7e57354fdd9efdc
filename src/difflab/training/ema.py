"""Exponential moving average of weights with a half-life counted in training images
(Karras et al. 2022, Appendix F.3: ema_halflife_kimg with ema_rampup_ratio).

After a step that showed ``batch`` images, ``beta = 0.5 ** (batch / half_life)`` and
``ema <- beta * ema + (1 - beta) * weights``. With a ramp-up ratio r the half-life is capped at
r * images_seen, so early, poor weights are forgotten quickly in short runs.
"""
from __future__ import annotations

import copy

import torch
from torch import nn


class EMA:
    def __init__(self, model: nn.Module, half_life_images: float, rampup_ratio: float | None = 0.05):
        if half_life_images <= 0:
            raise ValueError(f"ema half-life must be positive, got {half_life_images}")
        self.model = copy.deepcopy(model).eval().requires_grad_(False)
        self.half_life_images = float(half_life_images)
        self.rampup_ratio = rampup_ratio

    def decay(self, batch: int, images_seen: int) -> float:
        half_life = self.half_life_images
        if self.rampup_ratio is not None:
            half_life = min(half_life, self.rampup_ratio * images_seen)
        return 0.5 ** (batch / max(half_life, 1e-8))

    @torch.no_grad()
    def update(self, model: nn.Module, batch: int, images_seen: int) -> None:
        beta = self.decay(batch, images_seen)
        ema_params = list(self.model.parameters())
        params = [p.detach() for p in model.parameters()]
        torch._foreach_lerp_(ema_params, params, 1.0 - beta)
        for ema_b, b in zip(self.model.buffers(), model.buffers()):
            ema_b.copy_(b)

    def state_dict(self) -> dict[str, torch.Tensor]:
        return self.model.state_dict()

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        self.model.load_state_dict(state)
