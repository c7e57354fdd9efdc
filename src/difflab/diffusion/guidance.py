"""Classifier-free guidance (Ho & Salimans 2022) as a wrapper that is itself a denoiser."""
from __future__ import annotations

import torch

NULL_LABEL = -1  # the "no label" token: networks map it to their unconditional embedding


def guided(denoiser, guidance_scale: float):
    """Classifier-free guidance (Ho & Salimans 2022, eq. 6) as a denoiser:
    D_w(x) = D(x, null) + w (D(x, c) - D(x, null)); w = 1 is plain conditional sampling."""
    if guidance_scale == 1.0:
        return denoiser

    def guided_denoiser(x, sigma, cond=None):
        if cond is None:
            return denoiser(x, sigma, None)
        sigma = torch.as_tensor(sigma)
        both = denoiser(torch.cat([x, x]), sigma.repeat(2) if sigma.dim() else sigma,
                        torch.cat([cond, torch.full_like(cond, NULL_LABEL)]))
        conditional, unconditional = both.chunk(2)
        return unconditional + guidance_scale * (conditional - unconditional)

    return guided_denoiser
