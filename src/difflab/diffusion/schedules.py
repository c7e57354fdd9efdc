"""Noise schedules: discrete ``alpha_bar`` schedules, the continuous sigma view, sigma grids for
samplers and sigma densities for training.

| code        | paper symbol                 | meaning                                            |
|-------------|------------------------------|----------------------------------------------------|
| alpha_bar   | \\bar\\alpha_t (Ho et al. 2020) | cumulative signal fraction, x_t = sqrt(ab) x0 + sqrt(1-ab) eps |
| beta        | \\beta_t                     | per-step variance, 1 - ab_t / ab_{t-1}               |
| sigma       | \\sigma (Karras et al. 2022)  | noise level of the VE form x = x0 + sigma * n        |
| T           | T                            | number of discrete training steps                   |

The two views meet at ``sigma = sqrt((1 - alpha_bar) / alpha_bar)`` (Karras et al. 2022, eq. 6
with s(t) = 1/sqrt(1 + sigma^2)). Schedules are computed in float64; index ``i`` of an array of
length T holds step ``t = i + 1``.
"""
from __future__ import annotations

import math

import torch

from difflab.options import GRIDS, SCHEDULES, TRAINING_DENSITIES  # noqa: F401 (re-exported)


def alpha_bar_linear(T: int, beta_start: float = 1e-4, beta_end: float = 0.02) -> torch.Tensor:
    """Linear betas (Ho et al. 2020, Sec. 4), endpoints scaled by 1000/T so that every T
    discretizes the same continuous process (Nichol & Dhariwal 2021, Sec. 3.2)."""
    scale = 1000.0 / T
    betas = torch.linspace(beta_start * scale, beta_end * scale, T, dtype=torch.float64)
    return torch.cumprod(1.0 - betas.clamp(max=0.999), dim=0)


def alpha_bar_cosine(T: int, s: float = 0.008, max_beta: float = 0.999) -> torch.Tensor:
    """Cosine schedule, Nichol & Dhariwal 2021, eq. 17: ab_t = f(t)/f(0),
    f(t) = cos((t/T + s)/(1 + s) * pi/2)^2, with betas clipped at 0.999."""
    t = torch.arange(T + 1, dtype=torch.float64)
    f = torch.cos((t / T + s) / (1 + s) * math.pi / 2) ** 2
    betas = (1 - f[1:] / f[:-1]).clamp(max=max_beta)
    return torch.cumprod(1.0 - betas, dim=0)


def alpha_bar_sigmoid(T: int, start: float = -3.0, end: float = 3.0, tau: float = 1.0,
                      min_alpha_bar: float = 1e-9) -> torch.Tensor:
    """Sigmoid schedule (Jabri et al. 2022; Chen 2023, Algorithm 1):
    ab(t) = (sigmoid(end/tau) - sigmoid((t (end - start) + start)/tau)) /
            (sigmoid(end/tau) - sigmoid(start/tau)), t in (0, 1]."""
    t = torch.arange(1, T + 1, dtype=torch.float64) / T
    v_start, v_end = torch.sigmoid(torch.tensor(start / tau, dtype=torch.float64)), \
        torch.sigmoid(torch.tensor(end / tau, dtype=torch.float64))
    ab = (v_end - torch.sigmoid((t * (end - start) + start) / tau)) / (v_end - v_start)
    return ab.clamp(min=min_alpha_bar, max=1.0)


def make_alpha_bar(name: str, T: int) -> torch.Tensor:
    """The named schedule with T steps (float64, length T)."""
    if T < 2:
        raise ValueError(f"schedule: T must be at least 2, got {T}")
    if name == "linear":
        return alpha_bar_linear(T)
    if name == "cosine":
        return alpha_bar_cosine(T)
    if name == "sigmoid":
        return alpha_bar_sigmoid(T)
    raise ValueError(f"unknown schedule {name!r} (choose from {', '.join(SCHEDULES)})")


def betas_from_alpha_bar(alpha_bar: torch.Tensor) -> torch.Tensor:
    previous = torch.cat([alpha_bar.new_ones(1), alpha_bar[:-1]])
    return 1 - alpha_bar / previous


def sigma_from_alpha_bar(alpha_bar: torch.Tensor) -> torch.Tensor:
    """sigma = sqrt((1 - ab) / ab): the VE noise level of a VP state (Karras et al. 2022, eq. 6)."""
    return ((1 - alpha_bar) / alpha_bar).sqrt()


def alpha_bar_from_sigma(sigma: torch.Tensor) -> torch.Tensor:
    return 1 / (1 + sigma**2)


def append_zero(sigmas: torch.Tensor) -> torch.Tensor:
    return torch.cat([sigmas, sigmas.new_zeros(1)])


def karras_sigmas(n: int, sigma_min: float, sigma_max: float, rho: float = 7.0) -> torch.Tensor:
    """Karras et al. 2022, eq. 5: sigma_i = (smax^(1/rho) + i/(n-1) (smin^(1/rho) - smax^(1/rho)))^rho,
    followed by a final 0. Length n + 1, decreasing."""
    ramp = torch.linspace(0, 1, n, dtype=torch.float64)
    inv_rho_min, inv_rho_max = sigma_min ** (1 / rho), sigma_max ** (1 / rho)
    return append_zero((inv_rho_max + ramp * (inv_rho_min - inv_rho_max)) ** rho)


def log_snr_sigmas(n: int, sigma_min: float, sigma_max: float) -> torch.Tensor:
    """Uniform in log-SNR = -2 log sigma (the grid of DPM-Solver, Lu et al. 2022), then 0."""
    return append_zero(torch.logspace(math.log10(sigma_max), math.log10(sigma_min), n,
                                      dtype=torch.float64))


def ddpm_sigmas(n: int, alpha_bar: torch.Tensor) -> torch.Tensor:
    """n of the trained discrete levels, evenly spaced in t from t = T down ("trailing" spacing,
    Lin et al. 2024, Table 2), then 0. Every level is one the network saw in training."""
    T = alpha_bar.shape[0]
    if not 1 <= n <= T:
        raise ValueError(f"ddpm grid: steps must be in 1..{T}, got {n}")
    t = torch.round(torch.arange(T, 0, -T / n, dtype=torch.float64)).long() - 1  # 0-based, decreasing
    return append_zero(sigma_from_alpha_bar(alpha_bar[t]))


def uniform_t_sigmas(n: int, alpha_bar: torch.Tensor) -> torch.Tensor:
    """n levels uniform in continuous t in [1/T, 1] of the schedule, interpolating log alpha_bar
    linearly between trained steps, then 0."""
    T = alpha_bar.shape[0]
    t = torch.linspace(T - 1, 0, n, dtype=torch.float64)  # fractional 0-based index
    lo = t.floor().long()
    hi = (lo + 1).clamp(max=T - 1)
    w = t - lo
    log_ab = (1 - w) * alpha_bar[lo].log() + w * alpha_bar[hi].log()
    return append_zero(sigma_from_alpha_bar(log_ab.exp()))


def sigma_grid(name: str, n: int, sigma_min: float, sigma_max: float,
               alpha_bar: torch.Tensor | None = None, rho: float = 7.0) -> torch.Tensor:
    """A decreasing sampling grid of n noise levels followed by 0 (length n + 1, float64)."""
    if n < 1:
        raise ValueError(f"sigma grid: steps must be at least 1, got {n}")
    if name == "karras":
        return karras_sigmas(n, sigma_min, sigma_max, rho)
    if name == "log-snr":
        return log_snr_sigmas(n, sigma_min, sigma_max)
    if name in ("ddpm", "uniform-t"):
        if alpha_bar is None:
            raise ValueError(f"sigma grid {name!r} needs the model's alpha_bar schedule")
        return ddpm_sigmas(n, alpha_bar) if name == "ddpm" else uniform_t_sigmas(n, alpha_bar)
    raise ValueError(f"unknown sigma grid {name!r} (choose from {', '.join(GRIDS)})")


def sample_training_sigma(density: str, n: int, generator: torch.Generator | None = None,
                          alpha_bar: torch.Tensor | None = None, p_mean: float = -1.2,
                          p_std: float = 1.2, sigma_min: float = 0.002,
                          sigma_max: float = 80.0) -> torch.Tensor:
    """Noise levels for one training batch (float32, shape [n]).

    ``lognormal``: ln sigma ~ N(p_mean, p_std^2) (Karras et al. 2022, Table 1, "EDM");
    ``ddpm``: t uniform on {1..T}, sigma = sigma(alpha_bar_t) (Ho et al. 2020, Algorithm 1);
    ``log-uniform``: ln sigma uniform on [ln sigma_min, ln sigma_max] (VE SDE, Song et al. 2021).
    """
    if density == "lognormal":
        z = torch.randn(n, generator=generator)
        return (p_mean + p_std * z).exp()
    if density == "ddpm":
        if alpha_bar is None:
            raise ValueError("ddpm training density needs an alpha_bar schedule")
        t = torch.randint(0, alpha_bar.shape[0], (n,), generator=generator)
        return sigma_from_alpha_bar(alpha_bar[t]).float()
    if density == "log-uniform":
        u = torch.rand(n, generator=generator)
        return (math.log(sigma_min) + u * (math.log(sigma_max) - math.log(sigma_min))).exp()
    raise ValueError(f"unknown training sigma density {density!r} "
                     f"(choose from {', '.join(TRAINING_DENSITIES)})")
