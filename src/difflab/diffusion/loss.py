"""Per-sample weighted denoising loss (Karras et al. 2022, eq. 2 and Table 1).

    L = E_{sigma, x0, n} [ lambda(sigma) || D(x0 + sigma n; sigma) - x0 ||^2 ]

| code     | symbol        | meaning                                                          |
|----------|---------------|------------------------------------------------------------------|
| weight   | lambda(sigma) | x0-space loss weight                                             |
| snr      | 1 / sigma^2   | signal-to-noise ratio of the VE form                             |

``uniform`` weighting is the plain MSE on the parameterization's own target (eps: lambda = SNR,
the "simple" loss of Ho et al. 2020, eq. 14; v: SNR + 1; x0: 1; EDM: Table 1). ``min-snr``
(Hang et al. 2023, eq. 7) caps the weight at gamma: lambda = min(SNR, gamma) in x0 space, which is
min(SNR, gamma)/SNR on eps and min(SNR, gamma)/(SNR + 1) on v.
"""
from __future__ import annotations

import torch

from difflab.diffusion.denoiser import Denoiser, append_dims


def loss_weight(denoiser: Denoiser, sigma: torch.Tensor, weighting: str = "uniform",
                min_snr_gamma: float = 5.0) -> torch.Tensor:
    if weighting == "uniform":
        return denoiser.natural_weight(sigma)
    if weighting == "min-snr":
        return (1 / sigma**2).clamp(max=min_snr_gamma)
    raise ValueError(f"unknown loss weighting {weighting!r} (choose from uniform, min-snr)")


def denoising_loss(denoiser: Denoiser, x0: torch.Tensor, sigma: torch.Tensor, noise: torch.Tensor,
                   cond: torch.Tensor | None = None, weighting: str = "uniform",
                   min_snr_gamma: float = 5.0) -> torch.Tensor:
    """Mean over the batch of lambda(sigma) * mean-over-pixels (D(x0 + sigma n) - x0)^2."""
    x = x0 + append_dims(sigma, x0.dim()) * noise
    x0_hat = denoiser(x, sigma, cond)
    per_sample = (x0_hat.float() - x0).square().flatten(1).mean(1)
    return (loss_weight(denoiser, sigma, weighting, min_snr_gamma) * per_sample).mean()
