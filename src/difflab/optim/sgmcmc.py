r"""SG-MCMC with the ``Langevin`` optimizer: hyperparameters that target a (tempered) Bayesian
posterior from a *mean* minibatch loss, the chain's exact stationary covariance on a Gaussian
posterior (its discretization bias), and an effective-sample-size estimate.

``Langevin``'s own convention (its docstring): for the loss V it differentiates, ``lr`` is the
Euler-Maruyama time step of ``d theta = -grad V dt + sqrt(2 D) dW`` and ``temperature`` is D, so
it targets ``exp(-V / D)``. With V the *mean* NLL (plus weight decay), the posterior's potential
is ``U = N V``: the helpers below return ``lr = N h`` and ``D = T / N``.

Conventions (every function here uses them):

| code name          | symbol  | meaning                                                            |
| ------------------ | ------- | ------------------------------------------------------------------ |
| ``dataset_size``   | N       | number of training examples                                        |
| (loss)             | L_n     | mean minibatch NLL ``(1/n) sum_{i in batch} l_i``                   |
| (example loss)     | l_i     | ``-log p(y_i given x_i, theta)``                                   |
| (full loss)        | L       | ``(1/N) sum_{i=1..N} l_i``, so ``E[L_n] = L``                      |
| ``prior_precision``| lam_p   | Gaussian prior N(0, I / lam_p), ``R(theta) = lam_p / 2 * theta^2``  |
| (potential)        | U       | ``U = N * L + R = -log p(theta given data) + const``                |
| ``temperature``    | T       | target ``p_T(theta) ~ p(theta given data)^(1/T) = exp(-U / T)``     |
| ``step_size``      | h       | step on U: ``theta - h grad U + N(0, 2 h T)``                       |

``h`` relates to the papers' step sizes as: Welling & Teh 2011 eq. (4) ``epsilon = 2 h``
(their drift is ``epsilon/2 * grad log p``, their noise ``N(0, epsilon)``); Chen, Fox & Guestrin
2014 eq. (15) ``eta = h`` (SGHMC in SGD-with-momentum form); ``posteriors``' ``lr`` (sgld, with
``log_posterior`` the *summed* log posterior) ``= h``.
"""
from __future__ import annotations

import math

import torch

from difflab.optim.langevin_options import _is_int, _is_real


def sgld_hyperparameters(dataset_size: int, step_size: float, temperature: float = 1.0, *,
                         prior_precision: float = 0.0) -> dict:
    r"""``Langevin`` keyword arguments (``lr``, ``temperature``, ``weight_decay``) for SGLD
    (Welling & Teh 2011) on the posterior tempered by ``temperature`` T, when the loss that is
    backpropagated is the *mean* minibatch NLL L_n (what deep-learning code minimises).

    Returns ``lr = N h``, ``temperature = D = T / N``, ``weight_decay = lam_p / N``.

    Derivation. ``Langevin`` (no momentum, ``noise="langevin"``) performs
    ``theta' = theta - lr (grad L_n + wd theta) + sqrt(2 lr D) xi``, the Euler-Maruyama step with
    time step ``lr`` of ``d theta = -grad V dt + sqrt(2 D) dW`` for ``V = L + wd/2 theta^2``
    (its docstring: ``lr`` is W&T's eps/2 for a sum loss). That SDE's stationary density
    (Fokker-Planck) is ``exp(-V / D)``. With ``wd = lam_p / N``, ``N V = N L + lam_p/2 theta^2
    = U``, so ``exp(-V / D) = exp(-U / (N D))``, which is ``p(theta given data)^(1/T)`` iff
    ``D = T / N``. Rewriting the step on U: ``lr grad V = (lr / N) grad U`` and
    ``2 lr D = 2 (lr / N) T``, i.e. ``theta' = theta - h grad U + N(0, 2 h T)`` with
    ``h = lr / N``, hence ``lr = N h``. Equivalently, W&T eq. (4) with their N/n-scaled
    minibatch gradient ``(N/n) sum grad log p = -N grad L_n``: ``lr = N epsilon / 2``,
    ``D = T / N`` (for T = 1 the Langevin docstring's ``D = 1/N``).

    With minibatches, ``grad L_n`` is unbiased for ``grad L``; its extra variance adds
    ``lr^2 Var[grad L_n] = O(h^2)`` per step against the injected ``2 lr D = O(h)``, negligible
    as h -> 0 (W&T section 3). Discretization bias on a Gaussian posterior with full-batch
    gradients: see ``gaussian_stationary_covariance`` (friction 1); the covariance is inflated by
    at most ``1 / (1 - h lam_max / 2)``, the mean is exact.
    """
    _check_common(dataset_size, step_size, temperature, prior_precision)
    n = float(dataset_size)
    return dict(lr=n * step_size, temperature=temperature / n,
                weight_decay=prior_precision / n)


def sghmc_hyperparameters(dataset_size: int, step_size: float, friction: float,
                          temperature: float = 1.0, *, prior_precision: float = 0.0) -> dict:
    r"""``Langevin`` keyword arguments (``lr``, ``momentum``, ``temperature``, ``weight_decay``)
    for SGHMC (Chen, Fox & Guestrin 2014) in their SGD-with-momentum form, eq. (15),
    ``v' = v - eta grad U - alpha v + N(0, 2 alpha eta T)``, ``theta' = theta + v'`` (noise
    estimate beta_hat = 0), from the mean minibatch NLL. ``step_size`` is eta (= h; in their
    Hamiltonian notation ``eta = epsilon^2 / M``), ``friction`` is alpha (``= epsilon C / M``).

    Returns ``lr = N eta``, ``momentum = 1 - alpha``, ``temperature = D = T / N``,
    ``weight_decay = lam_p / N``.

    Derivation. ``Langevin`` with momentum mu and dampening 0 performs
    ``buf' = mu buf + (grad L_n + wd theta) + sqrt(2 (1 - mu) D / lr) xi``,
    ``theta' = theta - lr buf'``. With ``v = -lr buf``:
    ``v' = v - (1 - mu) v - lr grad V + N(0, 2 (1 - mu) lr D)``, ``V = L + wd/2 theta^2``.
    With ``wd = lam_p / N`` we have ``lr grad V = (lr / N) grad U``, so matching eq. (15) term
    by term: ``eta = lr / N``, ``alpha = 1 - mu``, and the noise ``2 alpha lr D = 2 alpha eta T``
    requires ``lr D = eta T``, i.e. ``D = T / N``. The theta-marginal of the stationary
    distribution is then ``exp(-U / T)`` up to O(eta) discretization error
    (``gaussian_stationary_covariance`` gives it exactly for a Gaussian posterior).
    """
    _check_common(dataset_size, step_size, temperature, prior_precision)
    if not _is_real(friction) or not 0.0 < friction <= 1.0:
        raise ValueError(f"sghmc_hyperparameters: friction must be in (0, 1], got {friction!r}")
    n = float(dataset_size)
    return dict(lr=n * step_size, momentum=1.0 - friction, temperature=temperature / n,
                weight_decay=prior_precision / n)


def _check_common(dataset_size, step_size, temperature, prior_precision) -> None:
    """One-line ValueError naming the first bad argument: an integer dataset_size >= 1 and
    finite numbers step_size > 0, temperature >= 0, prior_precision >= 0 (NaN and inf never
    pass, so the hyperparameters returned are finite)."""
    if not _is_int(dataset_size) or dataset_size < 1:
        raise ValueError(f"dataset_size must be an integer >= 1, got {dataset_size!r}")
    _check_number("step_size", step_size, positive=True)
    _check_number("temperature", temperature)
    _check_number("prior_precision", prior_precision)


def _check_tensor(name: str, value, square: bool = False) -> None:
    """ValueError unless ``value`` is a finite real tensor of at least one dimension (a square
    matrix if ``square``), naming ``name`` and what it got."""
    shape = tuple(value.shape) if torch.is_tensor(value) else None
    if shape is None or not shape or value.is_complex() or \
            square and (len(shape) != 2 or shape[0] != shape[1]):
        got = type(value).__name__ if shape is None else f"shape {shape} {value.dtype}"
        raise ValueError(f"{name} must be a real {'square matrix' if square else 'tensor'}, "
                         f"got {got}")
    if not bool(torch.isfinite(value).all()):
        raise ValueError(f"{name} contains NaN or inf")


def _check_number(name: str, value, positive: bool = False) -> None:
    """ValueError unless ``value`` is a finite real number > 0 (``positive``) or >= 0."""
    if not _is_real(value) or not math.isfinite(value) or value < 0 or positive and value == 0:
        raise ValueError(f"{name} must be a finite number {'>' if positive else '>='} 0, got "
                         f"{value!r}")


def gaussian_stationary_covariance(precision: torch.Tensor, step_size: float,
                                   temperature: float = 1.0, friction: float = 1.0
                                   ) -> torch.Tensor:
    r"""Exact stationary covariance of theta for ``Langevin`` with the hyperparameters of
    ``sgld_hyperparameters`` (``friction=1``) or ``sghmc_hyperparameters`` and full-batch
    gradients, on a Gaussian posterior ``U = 1/2 (theta - m)^T A (theta - m)`` (``precision``
    A = Hessian of U, prior included):

        Sigma_h = T A^{-1} (I - h A / (2 (1 + mu)))^{-1},     mu = 1 - friction.

    Derivation. In an eigendirection of A with eigenvalue lam, write x for the coordinate of
    ``theta - m`` and ``a = h lam``. SGLD: ``x' = (1 - a) x + sqrt(2 h T) xi``, stationary
    variance ``2 h T / (1 - (1 - a)^2) = (T / lam) / (1 - a / 2)``. SGHMC (previous function's
    form): ``x' = (1 + mu - a) x - mu x_prev + sqrt(2 alpha h T) xi``, an AR(2) process whose
    variance ``(1 - phi2) s^2 / ((1 + phi2)((1 - phi2)^2 - phi1^2))`` with ``phi1 = 1 + mu - a``,
    ``phi2 = -mu``, ``s^2 = 2 (1 - mu) h T`` simplifies to ``(T / lam) / (1 - a / (2 (1 + mu)))``
    (mu = 0 recovers SGLD). The noise is isotropic, so the directions are independent and
    Sigma_h shares A's eigenvectors. The mean is exactly m; the absolute bias is
    ``Sigma_h - T A^{-1} = (h T / (2 (1 + mu))) (I - h A / (2 (1 + mu)))^{-1}`` (spectral norm
    ``<= h T / (2 (1 + mu) - h lam_max)``). Stable iff ``h lam_max < 2 (1 + mu)``.
    """
    if not _is_real(friction) or not 0.0 < friction <= 1.0:
        raise ValueError(f"gaussian_stationary_covariance: friction must be in (0, 1], got "
                         f"{friction!r}")
    _check_number("step_size", step_size, positive=True)
    _check_number("temperature", temperature)
    _check_tensor("gaussian_stationary_covariance: precision", precision, square=True)
    a = precision.to(torch.float64)
    lam, vectors = torch.linalg.eigh((a + a.T) / 2)
    denominator = 2.0 * (2.0 - friction)                       # 2 (1 + mu)
    if lam.min() <= 0 or step_size * lam.max() >= denominator:
        raise ValueError("gaussian_stationary_covariance: need a positive definite precision "
                         f"and step_size * lam_max < {denominator:g} (stability)")
    variances = temperature / (lam * (1.0 - step_size * lam / denominator))
    return (vectors * variances) @ vectors.T


def effective_sample_size(chain: torch.Tensor) -> torch.Tensor:
    r"""Effective sample size ``n / tau`` of each coordinate of ``chain`` (shape ``[n, ...]``,
    draws along dim 0), with the integrated autocorrelation time
    ``tau = -1 + 2 sum_m Gamma_m`` from Geyer's initial monotone sequence estimator (Geyer 1992,
    "Practical Markov chain Monte Carlo", Statist. Sci. 7(4), section 3.3):
    ``Gamma_m = rho_{2m} + rho_{2m+1}`` summed while positive, made non-increasing.
    Autocorrelations ``rho_k`` use the biased (1/n) autocovariance, by FFT. The Monte Carlo
    standard error of the chain mean is then ``std / sqrt(ESS)``. A constant coordinate gets
    ``n``. The first pair always counts and ``tau >= 1 / log10(n)`` (so ESS <= n log10 n, as in
    Stan), which keeps strongly antithetic chains finite. Returns float64 of shape
    ``chain.shape[1:]``.
    """
    _check_tensor("effective_sample_size: chain", chain)
    n = chain.shape[0]
    if n < 4:
        raise ValueError(f"effective_sample_size: need at least 4 draws, got {n}")
    x = chain.to(torch.float64).reshape(n, -1)
    x = x - x.mean(0)
    spectrum = torch.fft.rfft(x, n=2 * n, dim=0)
    autocovariance = torch.fft.irfft(spectrum * spectrum.conj(), n=2 * n, dim=0)[:n] / n
    variance = autocovariance[0]
    constant = variance <= 0
    rho = autocovariance / torch.where(constant, torch.ones_like(variance), variance)
    rho[:, constant] = 0.0
    rho[0] = 1.0
    pairs = n // 2
    gamma = rho[0:2 * pairs:2] + rho[1:2 * pairs:2]                       # [pairs, P]
    positive = gamma > 0
    positive[0] = True                      # the first pair always counts (as in Stan)
    initial_positive = torch.cumprod(positive.to(torch.float64), dim=0)
    monotone = torch.cummin(gamma, dim=0).values
    tau = -1.0 + 2.0 * (monotone * initial_positive).sum(0)
    tau = tau.clamp_min(1.0 / math.log10(n))   # ESS <= n log10(n), Stan's cap for antithetic chains
    return (n / tau).reshape(chain.shape[1:])
