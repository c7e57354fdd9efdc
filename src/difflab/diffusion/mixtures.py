"""Exact-score problems: Gaussian mixtures whose denoiser, score and density are closed form.

| code      | paper symbol              | meaning                                               |
|-----------|---------------------------|-------------------------------------------------------|
| weights   | pi_k                      | component weights, sum 1                              |
| means     | mu_k                      | component means [K, d]                                |
| variances | diag(Sigma_k)             | per-dimension component variances [K, d]              |
| sigma     | sigma (Karras et al. 2022)| noise level of the VE form x = x0 + sigma n           |
| resp      | p(k | x; sigma)           | component posterior ("responsibility") at level sigma |

Noising a mixture of diagonal Gaussians by N(0, sigma^2 I) gives the mixture with variances
``Sigma_k + sigma^2``, so everything a sampler needs is exact (Bishop 2006, Sec. 2.3.3 for the
Gaussian conditional):

    E[x0 | x, k] = mu_k + Sigma_k / (Sigma_k + sigma^2) (x - mu_k)
    D(x; sigma)  = sum_k p(k | x; sigma) E[x0 | x, k]          (Tweedie: score = (D - x) / sigma^2)

For one component (K = 1) the probability-flow ODE dx/dsigma = (x - D(x; sigma)) / sigma
(Karras et al. 2022, eq. 3) is linear per dimension with solution
``x(sigma) - mu = sqrt((Sigma + sigma^2) / (Sigma + sigma_0^2)) (x(sigma_0) - mu)``.

A mixture object *is* a denoiser under the contract of ``difflab.diffusion.denoiser``: ``mix(x, sigma,
cond=None) -> x0_hat`` with x of shape [B, d] (or [B, ...] flattening to d) and sigma a float or a
tensor [B]. It also carries ``sigma_min``, ``sigma_max`` and ``alpha_bar = None`` so that
``difflab.diffusion.samplers.sample`` can build a grid for it.
"""
from __future__ import annotations

import math

import torch

PROBLEMS = ("gaussian-2d", "mixture-2d", "gaussian-64d", "mixture-64d")


class GaussianMixture:
    """Mixture of diagonal Gaussians with closed-form noisy density, denoiser and ODE (K = 1)."""

    def __init__(self, weights, means, variances, sigma_min: float = 0.002,
                 sigma_max: float = 80.0, name: str = "mixture"):
        self.weights = torch.as_tensor(weights, dtype=torch.float64)
        self.means = torch.as_tensor(means, dtype=torch.float64)
        self.variances = torch.as_tensor(variances, dtype=torch.float64).expand_as(self.means).clone()
        if self.means.dim() != 2 or self.weights.shape != (self.means.shape[0],):
            raise ValueError(f"mixture {name}: need weights [K] and means [K, d], got "
                             f"{tuple(self.weights.shape)} and {tuple(self.means.shape)}")
        if (self.variances <= 0).any() or (self.weights <= 0).any():
            raise ValueError(f"mixture {name}: weights and variances must be positive")
        self.weights = self.weights / self.weights.sum()
        self.sigma_min, self.sigma_max = float(sigma_min), float(sigma_max)
        self.alpha_bar = None
        self.name = name

    @property
    def dim(self) -> int:
        return self.means.shape[1]

    @property
    def num_components(self) -> int:
        return self.means.shape[0]

    # ----- exact quantities ------------------------------------------------------------------
    def _noisy(self, x: torch.Tensor, sigma) -> torch.Tensor:
        """Noisy variances Sigma_k + sigma^2: [1, K, d] if the batch shares one level, else [B, K, d]."""
        sigma = torch.as_tensor(sigma, dtype=torch.float64, device=x.device).reshape(-1)
        if sigma.numel() > 1 and bool((sigma == sigma[0]).all()):
            sigma = sigma[:1]
        if sigma.numel() not in (1, x.shape[0]):
            raise ValueError(f"sigma has {sigma.numel()} values for a batch of {x.shape[0]}")
        return self.variances[None] + sigma.square()[:, None, None]

    def log_prob(self, x: torch.Tensor, sigma=0.0) -> torch.Tensor:
        """log p_sigma(x) of the noised mixture, shape [B] (float64)."""
        x = x.reshape(x.shape[0], -1).double()
        return torch.logsumexp(self._log_joint(x, sigma), dim=1)

    def _log_joint(self, x: torch.Tensor, sigma) -> torch.Tensor:
        """log pi_k + log N(x; mu_k, Sigma_k + sigma^2), shape [B, K]."""
        var = self._noisy(x, sigma)
        if var.shape[0] == 1:  # one level for the whole batch: [B, d] x [d, K] products
            inv = 1 / var[0]  # [K, d]
            quad = x.square() @ inv.T - 2 * x @ (self.means * inv).T + (self.means.square() * inv).sum(1)
            log_det = var[0].log().sum(1)  # [K]
        else:
            diff = x[:, None, :] - self.means[None]  # [B, K, d]
            quad, log_det = (diff.square() / var).sum(-1), var.log().sum(-1)
        return self.weights.log() - 0.5 * (quad + log_det + self.dim * math.log(2 * math.pi))

    def responsibilities(self, x: torch.Tensor, sigma=0.0) -> torch.Tensor:
        """p(k | x; sigma), shape [B, K]."""
        return torch.softmax(self._log_joint(x.reshape(x.shape[0], -1).double(), sigma), dim=1)

    def __call__(self, x: torch.Tensor, sigma, cond=None) -> torch.Tensor:
        """Exact denoiser D(x; sigma) = E[x0 | x] (the module docstring's formula), computed as
        sum_k p(k|x) (1 - a_k) mu_k + x sum_k p(k|x) a_k with a_k = Sigma_k / (Sigma_k + sigma^2)."""
        flat = x.reshape(x.shape[0], -1).double()
        resp = torch.softmax(self._log_joint(flat, sigma), dim=1)  # [B, K]
        a = self.variances[None] / self._noisy(flat, sigma)  # [1 or B, K, d]
        if a.shape[0] == 1:
            a = a[0]  # [K, d]
            out = resp @ ((1 - a) * self.means) + flat * (resp @ a)
        else:
            out = (resp[:, :, None] * ((1 - a) * self.means[None] + a * flat[:, None, :])).sum(1)
        return out.to(x.dtype).reshape(x.shape)

    def score(self, x: torch.Tensor, sigma) -> torch.Tensor:
        """grad_x log p_sigma(x) = (D(x; sigma) - x) / sigma^2."""
        sigma = torch.as_tensor(sigma, dtype=x.dtype).reshape(-1, *([1] * (x.dim() - 1)))
        return (self(x, sigma.reshape(-1)) - x) / sigma.square()

    def sample(self, n: int, generator: torch.Generator | None = None,
               sigma: float = 0.0) -> tuple[torch.Tensor, torch.Tensor]:
        """n exact draws of x = x0 + sigma n (float64 [n, d]) and their components (int64 [n])."""
        k = torch.multinomial(self.weights, n, replacement=True, generator=generator)
        z = torch.randn(n, self.dim, generator=generator, dtype=torch.float64)
        std = (self.variances[k] + sigma**2).sqrt()
        return self.means[k] + std * z, k

    def mean(self) -> torch.Tensor:
        return self.weights @ self.means

    def covariance(self) -> torch.Tensor:
        """Total covariance sum_k pi_k (Sigma_k + mu_k mu_k^T) - mu mu^T, shape [d, d]."""
        mu = self.mean()
        second = torch.einsum("k,ki,kj->ij", self.weights, self.means, self.means)
        return torch.diag(self.weights @ self.variances) + second - torch.outer(mu, mu)

    def ode_solution(self, x_start: torch.Tensor, sigma_start: float, sigma: float) -> torch.Tensor:
        """Exact probability-flow ODE map x(sigma_start) -> x(sigma); only for K = 1 (Gaussian)."""
        if self.num_components != 1:
            raise ValueError("closed-form ODE solution exists only for a single Gaussian")
        mu, var = self.means[0], self.variances[0]
        flat = x_start.reshape(x_start.shape[0], -1).double()
        ratio = ((var + sigma**2) / (var + sigma_start**2)).sqrt()
        return (mu + ratio * (flat - mu)).to(x_start.dtype).reshape(x_start.shape)


def gaussian(mean, std, **kwargs) -> GaussianMixture:
    """A single Gaussian N(mean, diag(std^2)) as a one-component mixture."""
    mean = torch.as_tensor(mean, dtype=torch.float64).reshape(1, -1)
    std = torch.as_tensor(std, dtype=torch.float64)
    return GaussianMixture([1.0], mean, (std**2).expand_as(mean), name="gaussian", **kwargs)


def ring_mixture_2d(components: int = 8, radius: float = 1.0, std: float = 0.1) -> GaussianMixture:
    """Components on a circle with unequal weights (pi_k proportional to k + 1) and
    alternately round and elongated shapes."""
    angle = torch.arange(components, dtype=torch.float64) * 2 * math.pi / components
    means = radius * torch.stack([angle.cos(), angle.sin()], dim=1)
    weights = torch.arange(1, components + 1, dtype=torch.float64)
    stretch = torch.tensor([[1.0, 1.0], [2.0, 0.5]], dtype=torch.float64)[torch.arange(components) % 2]
    return GaussianMixture(weights, means, (std * stretch) ** 2, name="mixture-2d")


def random_mixture(dim: int = 64, components: int = 6, seed: int = 0,
                   mean_scale: float = 0.5) -> GaussianMixture:
    """A fixed random mixture in ``dim`` dimensions: means ~ N(0, mean_scale^2 I), per-dimension
    standard deviations log-uniform in [0.05, 0.4], weights log-uniform in [1, 4] (normalized)."""
    g = torch.Generator().manual_seed(seed)
    means = mean_scale * torch.randn(components, dim, generator=g, dtype=torch.float64)
    log_std = math.log(0.05) + torch.rand(components, dim, generator=g, dtype=torch.float64) * \
        (math.log(0.4) - math.log(0.05))
    weights = (torch.rand(components, generator=g, dtype=torch.float64) * math.log(4.0)).exp()
    return GaussianMixture(weights, means, (2 * log_std).exp(), name=f"mixture-{dim}d")


def make_problem(name: str) -> GaussianMixture:
    """The named exact-score problem (see ``PROBLEMS``)."""
    if name == "gaussian-2d":
        return gaussian([0.3, -0.2], [0.5, 0.2])
    if name == "mixture-2d":
        return ring_mixture_2d()
    if name == "gaussian-64d":
        g = torch.Generator().manual_seed(1)
        return gaussian(0.3 * torch.randn(64, generator=g, dtype=torch.float64),
                        0.1 + 0.5 * torch.rand(64, generator=g, dtype=torch.float64))
    if name == "mixture-64d":
        return random_mixture(64)
    raise ValueError(f"unknown toy problem {name!r} (choose from {', '.join(PROBLEMS)})")
