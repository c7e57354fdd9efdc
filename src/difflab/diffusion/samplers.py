"""Samplers: small pure functions over a denoiser and a decreasing list of noise levels.

Every sampler has one signature::

    sample_X(denoiser, x, sigmas, cond=None, generator=None, callback=None, **options) -> x0

``denoiser(x, sigma, cond) -> x0_hat`` is the VE-form contract of ``difflab.diffusion.denoiser``; ``x`` is
the starting noise already scaled by ``sigmas[0]``; ``sigmas`` is a 1-D tensor ending in 0 (see
``difflab.diffusion.schedules.sigma_grid``); ``callback(i, sigma, x, x0_hat)`` is called once per step.
``generator`` is one ``torch.Generator`` or a list of one per row of ``x``; every draw goes through
:func:`noise_like`, so with per-row generators each sample's trajectory is independent of its batch.

| code        | paper symbol       | meaning                                          |
|-------------|--------------------|--------------------------------------------------|
| sigma       | sigma_i            | current noise level (VE form x = x0 + sigma n)   |
| sigma_next  | sigma_{i+1}        | next noise level                                 |
| x0_hat      | D(x; sigma)        | denoised estimate                                |
| d           | dx/dsigma          | probability-flow ODE slope (x - x0_hat) / sigma, Karras et al. 2022 eq. 3 |
| sigma_up    | -                  | std of fresh noise added in an ancestral step    |
| sigma_down  | -                  | deterministic target level of an ancestral step  |
"""
from __future__ import annotations

import hashlib
import math

import torch


def noise_like(x: torch.Tensor, generator) -> torch.Tensor:
    """Standard normal noise shaped like ``x``, on its device, from ``generator``: one
    ``torch.Generator`` (or None) for the whole tensor, a sequence of one generator per row of
    ``x`` (see :func:`sample_generators`), each drawing its own row, so that a row's noise does
    not depend on which other rows share the batch, or a :class:`MirroredNoise`."""
    if isinstance(generator, MirroredNoise):
        return generator.draw(x)
    if generator is None or isinstance(generator, torch.Generator):
        return torch.randn(x.shape, generator=generator, dtype=x.dtype, device=x.device)
    if len(generator) != x.shape[0]:
        raise ValueError(f"{len(generator)} per-row generators for a batch of {x.shape[0]} rows")
    return torch.stack([torch.randn(x.shape[1:], generator=g, dtype=x.dtype, device=x.device)
                        for g in generator])


class MirroredNoise:
    """A noise source for antithetic pairs of draws (Hammersley & Morton 1956, "A new Monte Carlo
    technique: antithetic variates"). Between ``record()`` and ``mirror()`` every draw comes from
    ``generator`` (anything :func:`noise_like` takes) and is kept; after ``mirror()`` the kept draws
    come back negated, in the same order. A sampler run once in each mode makes two draws, x(z)
    and x(-z), each distributed as a plain draw; their mean cancels every term odd in the noise,
    so where the map z -> x is affine (a Gaussian prior with its exact denoiser) the pair's mean is
    the draws' expectation exactly, with no Monte Carlo error."""

    def __init__(self, generator=None):
        self.generator, self.kept, self.replay = generator, [], None

    def record(self) -> None:
        self.kept, self.replay = [], None

    def mirror(self) -> None:
        self.replay = iter(self.kept)

    def draw(self, x: torch.Tensor) -> torch.Tensor:
        if self.replay is None:
            z = noise_like(x, self.generator)
            self.kept.append(z)
            return z
        z = next(self.replay, None)
        if z is None or z.shape != x.shape:
            raise RuntimeError("the mirrored draw asks for other noise than the recorded one")
        return -z


def keyed_seed(*keys) -> int:
    """A 63-bit seed hashed (BLAKE2b) from ``keys`` (ints and strings), e.g. (purpose, run seed,
    step, sample index): a stream per key that no other draw can shift."""
    text = repr(tuple(k if isinstance(k, str) else int(k) for k in keys))
    return int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "little") >> 1


def sample_generators(seed: int, start: int, count: int, device="cpu") -> list[torch.Generator]:
    """One generator per sample index start..start+count-1, seeded by (seed, index): all the
    noise of sample i, whatever its batch or process (pass the list as a sampler's generator)."""
    return [torch.Generator(device).manual_seed(keyed_seed("sample", seed, i))
            for i in range(start, start + count)]


def ancestral_step(sigma: float, sigma_next: float, eta: float = 1.0) -> tuple[float, float]:
    """(sigma_down, sigma_up) of a DDIM step with stochasticity eta, written in the VE form.

    Song et al. 2021 (DDIM), eq. 16, sigma_t(eta) = eta sqrt((1-ab_{t-1})/(1-ab_t)) sqrt(1-ab_t/ab_{t-1});
    with ab = 1/(1+sigma^2) and the VE rescaling this becomes
    sigma_up = eta * sigma_next * sqrt(sigma^2 - sigma_next^2) / sigma,
    sigma_down = sqrt(sigma_next^2 - sigma_up^2).
    """
    if sigma_next == 0:
        return 0.0, 0.0
    sigma_up = min(sigma_next, eta * sigma_next * math.sqrt(max(sigma**2 - sigma_next**2, 0.0)) / sigma)
    return math.sqrt(max(sigma_next**2 - sigma_up**2, 0.0)), sigma_up


@torch.no_grad()
def sample_ddim(denoiser, x, sigmas, cond=None, generator=None, callback=None, eta: float = 0.0):
    """DDIM, Song et al. 2021, eq. 12, in the VE form:
    x_next = x0_hat + sigma_down * eps_hat + sigma_up * z, eps_hat = (x - x0_hat) / sigma.
    eta = 0 is deterministic (and equals Euler on the same grid); eta = 1 is DDPM ancestral."""
    sigmas = [float(s) for s in sigmas]
    for i, (sigma, sigma_next) in enumerate(zip(sigmas[:-1], sigmas[1:])):
        x0_hat = denoiser(x, sigma, cond)
        if callback is not None:
            callback(i, sigma, x, x0_hat)
        sigma_down, sigma_up = ancestral_step(sigma, sigma_next, eta)
        eps_hat = (x - x0_hat) / sigma
        x = x0_hat + sigma_down * eps_hat
        if sigma_up > 0:
            x = x + sigma_up * noise_like(x, generator)
    return x


@torch.no_grad()
def sample_ddpm(denoiser, x, sigmas, cond=None, generator=None, callback=None):
    """DDPM ancestral sampling, Ho et al. 2020, Algorithm 2 with the posterior of eqs. 6-7:
    x_{t-1} ~ N(mu_tilde(x_t, x0_hat), beta_tilde I),
    mu_tilde = sqrt(ab_prev) beta_t / (1 - ab_t) x0_hat + sqrt(alpha_t) (1 - ab_prev) / (1 - ab_t) x_t,
    beta_tilde = (1 - ab_prev) / (1 - ab_t) beta_t, alpha_t = ab_t / ab_prev, beta_t = 1 - alpha_t.
    Works on any sub-grid of levels (the pair of consecutive levels defines alpha_t). The state is
    kept in VP form internally and returned in VE form (equal at sigma = 0)."""
    sigmas = [float(s) for s in sigmas]
    x_t = x / math.sqrt(1 + sigmas[0] ** 2)  # VE -> VP
    for i, (sigma, sigma_next) in enumerate(zip(sigmas[:-1], sigmas[1:])):
        ab, ab_prev = 1 / (1 + sigma**2), 1 / (1 + sigma_next**2)
        x0_hat = denoiser(x_t / math.sqrt(ab), sigma, cond)
        if callback is not None:
            callback(i, sigma, x_t / math.sqrt(ab), x0_hat)
        alpha_t = ab / ab_prev
        beta_t = 1 - alpha_t
        mean = (math.sqrt(ab_prev) * beta_t / (1 - ab)) * x0_hat + \
            (math.sqrt(alpha_t) * (1 - ab_prev) / (1 - ab)) * x_t
        variance = (1 - ab_prev) / (1 - ab) * beta_t
        x_t = mean + math.sqrt(variance) * noise_like(x_t, generator) if variance > 0 else mean
    return x_t * math.sqrt(1 + sigmas[-1] ** 2)


@torch.no_grad()
def sample_euler(denoiser, x, sigmas, cond=None, generator=None, callback=None):
    """Euler steps on the probability-flow ODE dx/dsigma = (x - D(x; sigma)) / sigma
    (Karras et al. 2022, eq. 3 with s = 1, sigma(t) = t; Algorithm 1 without the Heun correction)."""
    sigmas = [float(s) for s in sigmas]
    for i, (sigma, sigma_next) in enumerate(zip(sigmas[:-1], sigmas[1:])):
        x0_hat = denoiser(x, sigma, cond)
        if callback is not None:
            callback(i, sigma, x, x0_hat)
        d = (x - x0_hat) / sigma
        x = x + d * (sigma_next - sigma)
    return x


def check_option(name: str, value, low: float, high: float = math.inf, *, integer: bool = False,
                 open_low: bool = False):
    """``value`` (a float, or an int with ``integer``) if it lies in [low, high] (``open_low``:
    (low, high]), else ValueError naming the sampler option and the value."""
    number = float(value)
    if integer and (not number.is_integer() or isinstance(value, bool)):
        raise ValueError(f"sampler option {name}={value} must be an integer")
    if not (low < number if open_low else low <= number) or not number <= high:
        bound = (f"{'>' if open_low else '>='} {low:g}" if high == math.inf
                 else f"in [{low:g}, {high:g}]")
        raise ValueError(f"sampler option {name}={value} must be {bound}")
    return int(number) if integer else number


@torch.no_grad()
def sample_heun(denoiser, x, sigmas, cond=None, generator=None, callback=None,
                s_churn: float = 0.0, s_tmin: float = 0.0, s_tmax: float = math.inf,
                s_noise: float = 1.0):
    """Heun sampler with stochastic churn, Karras et al. 2022, Algorithm 2.

    With s_churn = 0 this is the deterministic 2nd-order Heun method (Algorithm 1). Otherwise each
    level sigma_i in [s_tmin, s_tmax] is first raised to sigma_hat = (1 + gamma_i) sigma_i,
    gamma_i = min(s_churn / N, sqrt(2) - 1), by adding noise of std s_noise sqrt(sigma_hat^2 - sigma_i^2).
    The final step to sigma = 0 is a plain Euler step (the paper's ``if sigma_{i+1} != 0``)."""
    s_churn = check_option("s_churn", s_churn, 0.0)
    s_noise = check_option("s_noise", s_noise, 0.0)
    sigmas = [float(s) for s in sigmas]
    steps = len(sigmas) - 1
    for i, (sigma, sigma_next) in enumerate(zip(sigmas[:-1], sigmas[1:])):
        gamma = min(s_churn / steps, math.sqrt(2) - 1) if s_tmin <= sigma <= s_tmax else 0.0
        sigma_hat = sigma * (1 + gamma)
        if gamma > 0:
            x = x + s_noise * math.sqrt(sigma_hat**2 - sigma**2) * noise_like(x, generator)
        x0_hat = denoiser(x, sigma_hat, cond)
        if callback is not None:
            callback(i, sigma_hat, x, x0_hat)
        d = (x - x0_hat) / sigma_hat
        x_next = x + (sigma_next - sigma_hat) * d
        if sigma_next != 0:
            d_next = (x_next - denoiser(x_next, sigma_next, cond)) / sigma_next
            x_next = x + (sigma_next - sigma_hat) * (d + d_next) / 2
        x = x_next
    return x


def _lambda(sigma: float) -> float:
    """Half log-SNR of the VE form, lambda = -log sigma (Lu et al. 2022, with alpha = 1)."""
    return -math.log(sigma)


@torch.no_grad()
def sample_dpmpp_2m(denoiser, x, sigmas, cond=None, generator=None, callback=None):
    """DPM-Solver++(2M), Lu et al. 2022 ("DPM-Solver++"), Algorithm 2, in the VE form (alpha = 1):

        x_{i+1} = (sigma_{i+1} / sigma_i) x_i - (e^{-h_i} - 1) D_i,   h_i = lambda_{i+1} - lambda_i,
        D_i = (1 + 1/(2 r_i)) x0_hat_i - 1/(2 r_i) x0_hat_{i-1},    r_i = h_{i-1} / h_i,

    with D_0 = x0_hat_0 (first step is DDIM). A step to sigma = 0 (h = inf) returns x0_hat_i."""
    sigmas = [float(s) for s in sigmas]
    x0_prev, h_prev = None, None
    for i, (sigma, sigma_next) in enumerate(zip(sigmas[:-1], sigmas[1:])):
        x0_hat = denoiser(x, sigma, cond)
        if callback is not None:
            callback(i, sigma, x, x0_hat)
        if sigma_next == 0:
            x = x0_hat
            continue
        h = _lambda(sigma_next) - _lambda(sigma)
        D = x0_hat
        if x0_prev is not None:
            r = h_prev / h
            D = (1 + 1 / (2 * r)) * x0_hat - (1 / (2 * r)) * x0_prev
        x = (sigma_next / sigma) * x - math.expm1(-h) * D
        x0_prev, h_prev = x0_hat, h
    return x


@torch.no_grad()
def sample_dpmpp_3m(denoiser, x, sigmas, cond=None, generator=None, callback=None):
    """DPM-Solver++(3M): third-order multistep exponential integrator in lambda = -log sigma
    (the multistep exponential integrator of Lu et al. 2022, "DPM-Solver++", carried to a
    quadratic Taylor model of x0_hat(lambda)).

    The exact solution of dx/dlambda = -(x - x0_hat) from lambda_i to lambda_i + h is
    x_{i+1} = e^{-h} x_i + integral_0^h e^{u-h} x0_hat(lambda_i + u) du. Expanding x0_hat to
    second order, f(lambda_i + u) = f + u f' + u^2/2 f'', gives
        x_{i+1} = e^{-h} x_i + (1 - e^{-h}) f + (h - 1 + e^{-h}) f' + (h^2/2 - h + 1 - e^{-h}) f'',
    where f' and f'' are the derivatives at lambda_i of the quadratic through the last three
    x0_hat values (Newton divided differences). The first two steps use orders 1 and 2, and a step
    to sigma = 0 returns x0_hat_i. (The third-order multistep update in diffusers 0.42 weights its
    D2 ~ h^2 f''/2 by (h^2/2 - h + 1 - e^{-h}) / h^2, half this f'' term; with that coefficient the
    method measured order 2, not 3, on the Gaussian oracle of tests/test_samplers.py.)"""
    sigmas = [float(s) for s in sigmas]
    history: list[tuple[float, torch.Tensor]] = []  # (lambda, x0_hat), most recent first
    for i, (sigma, sigma_next) in enumerate(zip(sigmas[:-1], sigmas[1:])):
        x0_hat = denoiser(x, sigma, cond)
        if callback is not None:
            callback(i, sigma, x, x0_hat)
        history = [(_lambda(sigma), x0_hat)] + history[:2]
        if sigma_next == 0:
            x = x0_hat
            continue
        h = _lambda(sigma_next) - history[0][0]
        x = math.exp(-h) * x - math.expm1(-h) * x0_hat
        if len(history) >= 2:
            (l0, f0), (l1, f1) = history[:2]
            slope = (f0 - f1) / (l0 - l1)  # f[l0, l1]
            if len(history) == 3:
                l2, f2 = history[2]
                curvature = (slope - (f1 - f2) / (l1 - l2)) / (l0 - l2)  # f[l0, l1, l2]
                slope = slope + (l0 - l1) * curvature  # derivative of the quadratic at l0
                x = x + (h**2 / 2 - h - math.expm1(-h)) * (2 * curvature)
            x = x + (h + math.expm1(-h)) * slope
    return x


def _unipc_coefficients(rks: list[float], h: float, variant: str) -> tuple[float, float, list[float]]:
    """UniPC's phi_1(h) = e^{-h} - 1, B(h) and right-hand side b of R rho = b (Zhao et al. 2023,
    data prediction: hh = -h; bh1: B(h) = hh, bh2: B(h) = e^{hh} - 1)."""
    hh = -h
    phi_1 = math.expm1(hh)
    B_h = hh if variant == "bh1" else phi_1
    b, g, factorial = [], phi_1 / hh - 1, 1
    for i in range(1, len(rks) + 1):
        b.append(g * factorial / B_h)
        factorial *= i + 1
        g = g / hh - 1 / factorial
    return phi_1, B_h, b


def _unipc_update(x, history, lambda_t: float, order: int, variant: str, x0_t=None):
    """One UniP predictor step (x0_t None) or UniC corrector step (x0_t = D at the new point) from
    the last state x at history[-1] to lambda_t, using ``order`` entries of history."""
    (lambda_0, m0), previous = history[-1], history[-order:-1][::-1]
    h = lambda_t - lambda_0
    rks = [(lam - lambda_0) / h for lam, _ in previous]
    D1s = [(m - m0) / r for r, (_, m) in zip(rks, previous)]
    phi_1, B_h, b = _unipc_coefficients(rks + [1.0], h, variant)
    x_t = math.exp(-h) * x - phi_1 * m0  # sigma_t / sigma_0 = e^{-h}
    if x0_t is None:  # predictor: R[:-1, :-1] rho = b[:-1]; rho = 1/2 for order 2
        if not D1s:
            return x_t
        rhos = [0.5] if order == 2 else _solve([[r**k for r in rks] for k in range(len(rks))], b[:-1])
        return x_t - B_h * sum(rho * D for rho, D in zip(rhos, D1s))
    rhos = [0.5] if order == 1 else _solve([[r**k for r in rks + [1.0]] for k in range(order)], b)
    return x_t - B_h * (sum(rho * D for rho, D in zip(rhos, D1s)) + rhos[-1] * (x0_t - m0))


def _solve(matrix: list[list[float]], rhs: list[float]) -> list[float]:
    return torch.linalg.solve(torch.tensor(matrix, dtype=torch.float64),
                              torch.tensor(rhs, dtype=torch.float64)).tolist()


@torch.no_grad()
def sample_unipc(denoiser, x, sigmas, cond=None, generator=None, callback=None, order: int = 2,
                 variant: str = "bh2", corrector: bool = True):
    """UniPC, Zhao et al. 2023 ("UniPC"), data prediction in the VE form: the multistep UniP-p
    predictor and the UniC corrector, which re-uses the network evaluation at the new point (no
    extra evaluation) and raises the order by one. Orders ramp up from 1 as history accumulates;
    a step to sigma = 0 returns x0_hat. With bh2 and order 2 the predictor is DPM-Solver++(2M)."""
    if order not in (1, 2, 3):
        raise ValueError(f"sampler option order={order} must be 1, 2 or 3")
    if variant not in ("bh1", "bh2"):
        raise ValueError(f"sampler option variant={variant!r} must be 'bh1' or 'bh2'")
    sigmas = [float(s) for s in sigmas]
    history: list[tuple[float, torch.Tensor]] = []  # (lambda, x0_hat), oldest first
    x_last, last_order = None, 0
    for i, (sigma, sigma_next) in enumerate(zip(sigmas[:-1], sigmas[1:])):
        x0_hat = denoiser(x, sigma, cond)
        if callback is not None:
            callback(i, sigma, x, x0_hat)
        if corrector and x_last is not None:
            x = _unipc_update(x_last, history, _lambda(sigma), last_order, variant, x0_t=x0_hat)
        history = (history + [(_lambda(sigma), x0_hat)])[-order:]
        if sigma_next == 0:
            x = x0_hat
            continue
        x_last, last_order = x, len(history)
        x = _unipc_update(x, history, _lambda(sigma_next), last_order, variant)
    return x
