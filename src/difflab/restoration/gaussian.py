"""An exact oracle for restoration: a full-covariance Gaussian prior, its denoiser and the
closed-form posterior of a linear measurement.

For x0 ~ N(mu, Sigma) and x = x0 + sigma n (the VE form), with Sigma = Q diag(lam) Q^T,

    D(x; sigma) = E[x0 | x] = mu + Q diag(lam / (lam + sigma^2)) Q^T (x - mu),

and for y = A x0 + sigma_y n the posterior is Gaussian (Bishop 2006, eqs. 2.113-2.117 / the
Kalman update) with K = A Sigma A^T + sigma_y^2 I,

    mean = mu + Sigma A^T K^+ (y - A mu),   cov = Sigma - Sigma A^T K^+ A Sigma.
"""
from __future__ import annotations

import torch


class GaussianPrior:
    """N(mean, cov) over images of ``shape`` (flattened to d = prod(shape)); a denoiser under the
    ``D(x, sigma, cond=None)`` contract with ``sigma_min``, ``sigma_max`` and ``alpha_bar = None``."""

    def __init__(self, mean, cov, shape, sigma_min: float = 0.002, sigma_max: float = 80.0):
        self.shape = tuple(shape)
        d = 1
        for n in self.shape:
            d *= n
        self.mean = torch.as_tensor(mean, dtype=torch.float64).reshape(-1).expand(d).clone()
        self.cov = torch.as_tensor(cov, dtype=torch.float64)
        if self.cov.shape != (d, d):
            raise ValueError(f"Gaussian prior over {self.shape} needs a {d}x{d} covariance, "
                             f"got {tuple(self.cov.shape)}")
        self.cov = (self.cov + self.cov.T) / 2
        self.eigenvalues, self.eigenvectors = torch.linalg.eigh(self.cov)
        if self.eigenvalues.min() <= 0:
            raise ValueError(f"covariance must be positive definite, smallest eigenvalue "
                             f"{self.eigenvalues.min().item():g}")
        self.sigma_min, self.sigma_max = float(sigma_min), float(sigma_max)
        self.alpha_bar = None

    @property
    def dim(self) -> int:
        return self.mean.shape[0]

    def __call__(self, x: torch.Tensor, sigma, cond=None) -> torch.Tensor:
        """Exact E[x0 | x] at noise level sigma (a float or a tensor [B])."""
        flat = x.reshape(x.shape[0], -1).double()
        sigma = torch.as_tensor(sigma, dtype=torch.float64, device=x.device).reshape(-1, 1)
        gain = self.eigenvalues / (self.eigenvalues + sigma.square())  # [1 or B, d]
        coords = (flat - self.mean) @ self.eigenvectors
        return (self.mean + (gain * coords) @ self.eigenvectors.T).to(x.dtype).reshape(x.shape)

    def sample(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """n exact draws, float64 [n, *shape]."""
        z = torch.randn(n, self.dim, generator=generator, dtype=torch.float64)
        x = self.mean + (z * self.eigenvalues.sqrt()) @ self.eigenvectors.T
        return x.reshape(n, *self.shape)

    def posterior(self, matrix: torch.Tensor, y: torch.Tensor, sigma_y: float = 0.0):
        """Exact posterior (mean [d], cov [d, d]) of x0 given one flattened measurement y = A x0 +
        sigma_y n, with A given as an [m, d] matrix (see ``operator_matrix``)."""
        A = matrix.double()
        K = A @ self.cov @ A.T + sigma_y**2 * torch.eye(A.shape[0], dtype=torch.float64)
        gain = self.cov @ A.T @ torch.linalg.pinv(K, hermitian=True)
        mean = self.mean + gain @ (y.reshape(-1).double() - A @ self.mean)
        cov = self.cov - gain @ A @ self.cov
        return mean, (cov + cov.T) / 2


def operator_matrix(operator, shape) -> torch.Tensor:
    """The dense [m, d] matrix of ``operator.A`` on images of ``shape`` (C, H, W), built by applying
    it to the d basis images (the operator must broadcast over a batch of d, e.g. a [1, ...] mask)."""
    d = 1
    for n in shape:
        d *= n
    basis = torch.eye(d, dtype=torch.float64).reshape(d, *shape)
    return operator.A(basis).reshape(d, -1).T
