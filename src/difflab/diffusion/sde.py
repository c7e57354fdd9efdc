"""Score SDEs (Song et al. 2021, "Score-Based Generative Modeling through SDEs") and the samplers
that integrate their reverse-time SDE: Euler-Maruyama, predictor-corrector with a Langevin
corrector, and annealed Langevin dynamics (Song & Ermon 2019).

| code        | paper symbol            | meaning                                                  |
|-------------|-------------------------|----------------------------------------------------------|
| t           | t in [0, 1]             | SDE time                                                 |
| f, g        | f(x, t), g(t)           | drift and diffusion of dx = f dt + g dw (Song et al. eq. 5) |
| scale       | s(t) (Karras et al.)    | x_sde = s(t) x_ve; 1 for VE, sqrt(alpha_bar(t)) for VP   |
| sigma       | sigma(t)                | VE-form noise level: x_ve = x0 + sigma n                 |
| beta        | beta(t)                 | VP rate, beta_min + t (beta_max - beta_min) (eq. 11)     |
| score       | grad log p_t            | (s D(x/s; sigma) - x) / (s^2 sigma^2) in SDE coordinates |
| snr         | r                       | signal-to-noise ratio of the Langevin corrector (Alg. 4)  |
| eps         | epsilon                 | Langevin step size                                       |

Every SDE is a time reparameterization of the same VE family x = s(t) (x0 + sigma(t) n) (Karras
et al. 2022, eq. 6), so any ``Denoiser`` D(x, sigma, cond) provides its score in every SDE: the
reverse process is the same in sigma, only the discretization (and thus the sampler) differs.
Samplers here take the common signature of ``difflab.diffusion.samplers``; a step to sigma = 0 is the
noise-free Tweedie step x = D(x; sigma), as the authors' code does with its final "noise
removal" step.
"""
from __future__ import annotations

import math

import torch

from difflab.diffusion.samplers import check_option, noise_like

SDES = ("ve", "vp")


class VESDE:
    """Variance-exploding SDE, Song et al. 2021, eq. 9 and App. C:
    dx = sqrt(d sigma^2/dt) dw, sigma(t) = sigma_min (sigma_max / sigma_min)^t."""

    def __init__(self, sigma_min: float = 0.01, sigma_max: float = 50.0):
        if not 0 < sigma_min < sigma_max:
            raise ValueError(f"VE SDE: need 0 < sigma_min < sigma_max, got {sigma_min}, {sigma_max}")
        self.sigma_min, self.sigma_max = float(sigma_min), float(sigma_max)
        self.log_ratio = math.log(sigma_max / sigma_min)

    def sigma(self, t: float) -> float:
        return self.sigma_min * math.exp(t * self.log_ratio)

    def t_of_sigma(self, sigma: float) -> float:
        return math.log(sigma / self.sigma_min) / self.log_ratio

    def scale(self, t: float) -> float:
        return 1.0

    def drift_diffusion(self, x: torch.Tensor, t: float) -> tuple[torch.Tensor, float]:
        """(f(x, t), g(t)) with f = 0, g = sigma(t) sqrt(2 log(sigma_max / sigma_min))."""
        return torch.zeros_like(x), self.sigma(t) * math.sqrt(2 * self.log_ratio)


class VPSDE:
    """Variance-preserving SDE, Song et al. 2021, eq. 11: dx = -beta(t)/2 x dt + sqrt(beta(t)) dw,
    beta(t) = beta_min + t (beta_max - beta_min); alpha_bar(t) = exp(-beta_min t - (beta_max -
    beta_min) t^2 / 2) (App. B), sigma(t) = sqrt(1/alpha_bar - 1), s(t) = sqrt(alpha_bar)."""

    def __init__(self, beta_min: float = 0.1, beta_max: float = 20.0):
        if not 0 < beta_min < beta_max:
            raise ValueError(f"VP SDE: need 0 < beta_min < beta_max, got {beta_min}, {beta_max}")
        self.beta_min, self.beta_max = float(beta_min), float(beta_max)

    def _integral_beta(self, t: float) -> float:
        return self.beta_min * t + (self.beta_max - self.beta_min) * t * t / 2

    def sigma(self, t: float) -> float:
        return math.sqrt(math.expm1(self._integral_beta(t)))

    def t_of_sigma(self, sigma: float) -> float:
        """Positive root of (beta_max - beta_min) t^2 / 2 + beta_min t = log(1 + sigma^2)."""
        delta = self.beta_max - self.beta_min
        return (math.sqrt(self.beta_min**2 + 2 * delta * math.log1p(sigma**2)) - self.beta_min) / delta

    def scale(self, t: float) -> float:
        return math.exp(-self._integral_beta(t) / 2)

    def drift_diffusion(self, x: torch.Tensor, t: float) -> tuple[torch.Tensor, float]:
        beta = self.beta_min + t * (self.beta_max - self.beta_min)
        return -0.5 * beta * x, math.sqrt(beta)


def make_sde(name: str, **params):
    """The named SDE (``ve`` or ``vp``) with its parameters."""
    if name == "ve":
        return VESDE(**params)
    if name == "vp":
        return VPSDE(**params)
    raise ValueError(f"unknown SDE {name!r} (choose from {', '.join(SDES)})")


def sde_sigmas(sde, n: int, t_min: float = 1e-3) -> torch.Tensor:
    """n levels uniform in the SDE's time from t = 1 to t_min, then 0 (length n + 1, float64);
    the discretization used by Song et al. 2021 (t_min = 1e-3 for VP; use 0 for VE)."""
    if n < 1:
        raise ValueError(f"sde grid: steps must be at least 1, got {n}")
    t = torch.linspace(1.0, t_min, n, dtype=torch.float64)
    return torch.cat([torch.tensor([sde.sigma(float(s)) for s in t], dtype=torch.float64),
                      torch.zeros(1, dtype=torch.float64)])


@torch.no_grad()
def sample_euler_maruyama(denoiser, x, sigmas, cond=None, generator=None, callback=None,
                          sde: str = "ve", beta_min: float = 0.1, beta_max: float = 20.0):
    """Euler-Maruyama on the reverse-time SDE, Song et al. 2021, eq. 6:
    dx = [f(x, t) - g(t)^2 grad log p_t(x)] dt + g(t) dw_bar, stepped in the chosen SDE's own time
    and coordinates (``sde`` = "ve": eq. 9, time sigma(t) log-linear; "vp": eq. 11 with
    beta_min/beta_max). The grid's sigmas are mapped to times by sigma^{-1}; the VE time scale
    cancels, leaving x += 2 log(sigma_i/sigma_{i+1}) (D - x) + sigma_i sqrt(2 log(sigma_i/sigma_{i+1})) z."""
    process = VESDE() if sde == "ve" else make_sde(sde, beta_min=beta_min, beta_max=beta_max)
    sigmas = [float(s) for s in sigmas]
    for i, (sigma, sigma_next) in enumerate(zip(sigmas[:-1], sigmas[1:])):
        t = process.t_of_sigma(sigma)
        s = process.scale(t)
        y = s * x  # SDE coordinates
        x0_hat = denoiser(x, sigma, cond)
        if callback is not None:
            callback(i, sigma, x, x0_hat)
        if sigma_next == 0:
            x = x0_hat
            continue
        score = (s * x0_hat - y) / (s * sigma) ** 2
        dt = t - process.t_of_sigma(sigma_next)  # > 0, time runs backwards
        f, g = process.drift_diffusion(y, t)
        y = y - (f - g**2 * score) * dt + g * math.sqrt(dt) * noise_like(y, generator)
        x = y / process.scale(t - dt)
    return x


def langevin_corrector(denoiser, x, sigma: float, cond, generator, snr: float, steps: int):
    """Langevin corrector, Song et al. 2021, Algorithm 4 (VE SDE), in VE coordinates:
    g = grad log p_sigma(x), eps = 2 (r ||z|| / ||g||)^2, x <- x + eps g + sqrt(2 eps) z.
    As in the authors' code, ||z|| and ||g|| are per-sample norms averaged over the batch (a
    per-sample step size is unstable in low dimensions, where ||g|| of one sample can be ~0)."""
    for _ in range(steps):
        score = (denoiser(x, sigma, cond) - x) / sigma**2
        z = noise_like(x, generator)
        noise_norm = z.flatten(1).norm(dim=1).mean()
        score_norm = score.flatten(1).norm(dim=1).mean().clamp(min=1e-30)
        eps = 2 * (snr * noise_norm / score_norm) ** 2
        x = x + eps * score + (2 * eps).sqrt() * z
    return x


@torch.no_grad()
def sample_pc(denoiser, x, sigmas, cond=None, generator=None, callback=None,
              snr: float = 0.16, corrector_steps: int = 1):
    """Predictor-corrector sampler, Song et al. 2021, Algorithm 2 (VE SDE): at each level,
    ``corrector_steps`` Langevin corrector steps (Algorithm 4, step size from ``snr``), then the
    reverse-diffusion predictor (Sec. 4.2) x <- x + (sigma_i^2 - sigma_{i+1}^2) grad log p + sqrt(
    sigma_i^2 - sigma_{i+1}^2) z. Corrector first, as in the authors' code, so the last corrector
    acts at sigma > 0. Evaluations per level: corrector_steps + 1."""
    snr = check_option("snr", snr, 0.0, open_low=True)
    corrector_steps = check_option("corrector_steps", corrector_steps, 0, integer=True)
    sigmas = [float(s) for s in sigmas]
    for i, (sigma, sigma_next) in enumerate(zip(sigmas[:-1], sigmas[1:])):
        x = langevin_corrector(denoiser, x, sigma, cond, generator, snr, corrector_steps)
        x0_hat = denoiser(x, sigma, cond)
        if callback is not None:
            callback(i, sigma, x, x0_hat)
        variance = sigma**2 - sigma_next**2
        x = x + variance * (x0_hat - x) / sigma**2
        if sigma_next > 0:
            x = x + math.sqrt(variance) * noise_like(x, generator)
    return x


@torch.no_grad()
def sample_ald(denoiser, x, sigmas, cond=None, generator=None, callback=None,
               steps_per_level: int = 5, step_size: float | None = None):
    """Annealed Langevin dynamics, Song & Ermon 2019, Algorithm 1: for each level sigma_i (largest
    first), alpha_i = eps sigma_i^2 / sigma_L^2 and ``steps_per_level`` updates
    x <- x + alpha_i/2 grad log p_{sigma_i}(x) + sqrt(alpha_i) z. ``step_size`` is eps; the default
    eps = sigma_L^2 (alpha_i = sigma_i^2) mixes within the few steps per level used here; the
    paper's CIFAR-10 ratio eps = 0.2 sigma_L^2 (2e-5 at sigma_L = 0.01) assumes 100 steps per
    level and left visible bias on the test mixtures at 5 steps per level. If the grid ends in 0,
    a final Tweedie step x = D(x; sigma_L) removes the remaining noise (the denoising step of
    Jolicoeur-Martineau et al. 2021)."""
    steps_per_level = check_option("steps_per_level", steps_per_level, 0, integer=True)
    levels = [float(s) for s in sigmas if float(s) > 0]
    sigma_last = levels[-1]
    eps = sigma_last**2 if step_size is None else check_option("step_size", step_size, 0.0, open_low=True)
    x0_hat = None
    for i, sigma in enumerate(levels):
        alpha = eps * (sigma / sigma_last) ** 2
        for _ in range(steps_per_level):
            x0_hat = denoiser(x, sigma, cond)
            x = x + (alpha / 2) * (x0_hat - x) / sigma**2 + math.sqrt(alpha) * noise_like(x, generator)
        if callback is not None:
            callback(i, sigma, x, x0_hat)
    if float(sigmas[-1]) == 0:
        x = denoiser(x, sigma_last, cond)
    return x
