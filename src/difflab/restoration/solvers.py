"""Training-free restoration: posterior samplers over a trained denoiser and a linear operator.

Every solver has one signature::

    restore_X(denoiser, y, operator, sigmas, cond=None, generator=None, callback=None, **options) -> x

``denoiser(x, sigma, cond) -> x0_hat`` is the VE-form contract of ``difflab.diffusion.denoiser``
(wrap it with classifier-free guidance before passing it, if wanted); ``y`` is the measurement
``operator.measure(x0)`` of ``difflab.restoration.operators`` (per-image masks, any image size);
``sigmas`` is a decreasing grid ending in 0 (``difflab.diffusion.schedules.sigma_grid``);
``callback(i, sigma, x, x0_hat)`` is called once per denoiser evaluation. The result is x at
sigma = 0 in the data range (no clipping). When the measurement is noiseless (``sigma_y == 0``)
the result is finally projected onto {x : A x = y} (``operator.project``), so A x == y to float
tolerance and inpainting keeps the known pixels exactly.

| code        | paper symbol           | meaning                                                   |
|-------------|------------------------|-----------------------------------------------------------|
| sigma       | sigma_t                | current noise level (VE form x = x0 + sigma n)            |
| sigma_next  | sigma_{t-1}            | next noise level                                          |
| x0_hat      | x_{0|t}, D(x; sigma)   | the denoiser's estimate of x0                             |
| s           | diag(Sigma)            | singular values of A = U Sigma V^T (``operator.singulars``) |
| y_bar       | Sigma^+ U^T y          | measurement in the spectral basis (DDRM's y-bar)          |
| sigma_down, sigma_up | -             | DDIM step with stochasticity eta (``ancestral_step``)     |

The DDIM step (Song et al. 2021, eq. 12 in VE form) is the samplers' one:
x_next = x0 + sigma_down eps_hat + sigma_up z (``difflab.diffusion.samplers.ancestral_step``).
"""
from __future__ import annotations

import math

import torch

from difflab.diffusion.samplers import MirroredNoise, ancestral_step, check_option, noise_like


def check_sigmas(sigmas) -> list[float]:
    """``sigmas`` as a list of floats if it is a strictly decreasing grid of positive levels ending
    in 0; else ValueError naming the offending values."""
    levels = [float(s) for s in torch.as_tensor(sigmas).reshape(-1)]
    if len(levels) < 2 or levels[-1] != 0:
        raise ValueError(f"sigmas must have at least 2 levels and end in 0, got {levels[-3:]}")
    for a, b in zip(levels, levels[1:]):
        if not (math.isfinite(a) and a > b):
            raise ValueError(f"sigmas must be finite and strictly decreasing, got {a:g} then {b:g}")
    return levels


def start_noise(shape, like: torch.Tensor, sigma: float, generator=None) -> torch.Tensor:
    """sigma * z, z ~ N(0, I) of ``shape`` on ``like``'s device and dtype (the first draw of every
    solver, as in the plain samplers)."""
    return noise_like(torch.empty(shape, dtype=like.dtype, device=like.device), generator) * sigma


def _ddim_step(x, x0, sigma, sigma_next, eta, generator):
    sigma_down, sigma_up = ancestral_step(sigma, sigma_next, eta)
    x_next = x0 + sigma_down * (x - x0) / sigma
    return x_next + sigma_up * noise_like(x, generator) if sigma_up > 0 else x_next


def _finish(x, y, operator):
    return operator.project(x, y) if operator.sigma_y == 0 else x


@torch.no_grad()
def restore_ddnm(denoiser, y, operator, sigmas, cond=None, generator=None, callback=None,
                 eta: float = 1.0):
    """DDNM / DDNM+ (Wang et al. 2023, "Zero-shot image restoration using denoising diffusion
    null-space model"), in DDIM form (Song et al. 2021, eq. 12, stochasticity eta; eta = 1 is
    ancestral sampling as in the paper's Algorithm 1).

    Noiseless y (Algorithm 1, eq. 13): range-null decomposition of the denoised estimate,
    x0_r = A^+ y + (I - A^+ A) x0_hat = x0_hat + A^+ (y - A x0_hat); the DDIM step then takes the
    corrected x0_r as its x0 prediction and the network's own eps_hat = (x - x0_hat) / sigma as
    the direction to x (as the authors' implementation does):
        x_next = x0_r + sigma_down eps_hat + sigma_up z.
    (Taking eps from x0_r instead, i.e. the DDPM posterior mean of x_t and x0_r, keeps the measured
    part of x at y + fresh-looking noise; in half-image inpainting of a correlated Gaussian its
    posterior-mean error in the null space stays ~70% of the posterior's shift at 50-200 steps,
    versus 46%, 32%, 21% at 50, 100, 200 steps for this form.)

    Noisy y (DDNM+, Sec. 3.3, eqs. 17-19): the correction is scaled in the SVD basis,
    x0_r = x0_hat - Sigma_t A^+ (A x0_hat - y) with Sigma_t = V diag(lam) V^T, and the fresh noise
    has covariance Phi_t = V diag(gam) V^T, so that the noise the correction carries
    (lam_i sigma_y / s_i; x0_r enters the step with weight 1) plus the fresh noise is the step's
    noise sigma_up^2:
        lam_i = 1 if sigma_up >= sigma_y / s_i else sigma_up s_i / sigma_y,
        gam_i = sigma_up^2 - (lam_i sigma_y / s_i)^2.
    With eta = 0 there is no noise budget (sigma_up = 0) and DDNM+ makes no correction; use eta > 0.
    DDNM+ is not a posterior sampler for the measured directions: the same y noise is re-injected
    at every step, so they end near y itself (N(0, I) inpainting, sigma_y = 0.2: the observed pixels
    come out as y with variance 0.0015, where the posterior is N(y / 1.04, 0.038)). The
    "time-travel" trick of Sec. 3.3 is not included (see ``restore_repaint`` for resampling)."""
    eta = check_option("eta", eta, 0.0, 1.0)
    levels = check_sigmas(sigmas)
    x = start_noise(operator.image_shape(y), y, levels[0], generator)
    inv_s = operator.inv_singulars(x)
    noise_std = operator.sigma_y * inv_s  # sigma_y / s_i (0 on unmeasured directions)
    for i, (sigma, sigma_next) in enumerate(zip(levels[:-1], levels[1:])):
        x0 = denoiser(x, sigma, cond)
        if callback is not None:
            callback(i, sigma, x, x0)
        sigma_down, sigma_up = ancestral_step(sigma, sigma_next, eta)
        eps = (x - x0) / sigma
        residual = operator.Ut(y - operator.A(x0))
        if operator.sigma_y == 0:
            x = x0 + operator.V(inv_s * residual) + sigma_down * eps
            if sigma_up > 0:
                x = x + sigma_up * noise_like(x, generator)
            continue
        safe_std = torch.where(noise_std > 0, noise_std, 1.0)
        lam = torch.where(noise_std > sigma_up, sigma_up / safe_std, 1.0)
        gam = (sigma_up**2 - (lam * noise_std) ** 2).clamp(min=0)
        x = x0 + operator.V(lam * inv_s * residual) + sigma_down * eps
        if sigma_up > 0:
            x = x + operator.V(gam.sqrt() * operator.Vt(noise_like(x, generator)))
    return _finish(x, y, operator)


@torch.no_grad()
def restore_ddrm(denoiser, y, operator, sigmas, cond=None, generator=None, callback=None,
                 eta: float = 0.85, eta_b: float = 1.0):
    """DDRM (Kawar et al. 2022, "Denoising diffusion restoration models"), eqs. 7-8, in the
    spectral basis of A = U Sigma V^T: x_bar = V^T x, y_bar_i = (U^T y)_i / s_i, and per direction
    i with measurement noise n_i = sigma_y / s_i, from level sigma to sigma_next:

        s_i = 0:                 x_bar0 + sqrt(1 - eta^2) sigma_next (x_bar - x_bar0) / sigma + eta sigma_next z
        sigma_next < n_i:        x_bar0 + sqrt(1 - eta^2) sigma_next (y_bar - x_bar0) / n_i + eta sigma_next z
        sigma_next >= n_i:       (1 - eta_b) x_bar0 + eta_b y_bar + sqrt(sigma_next^2 - n_i^2 eta_b^2) z

    with x_bar0 = V^T D(x; sigma). Start (eq. 7): x_bar_i = y_bar_i + sqrt(sigma_0^2 - n_i^2) z where
    sigma_0 >= n_i, else sigma_0 z. The paper's eta = 0.85, eta_b = 1 are the defaults. Note eta is
    a fixed fraction of sigma_next (not DDIM's eta): the unmeasured directions follow the
    probability-flow ODE only for eta = 0; for eta > 0 they keep a bias that does not vanish with
    more steps (N(0, I) inpainting: unknown-pixel variance 0.72 at 100 steps, -> 0.76, not 1; see
    tests/test_restoration.py). With noisy y the measured directions are also too narrow (N(0, I),
    sigma_y = 0.2: variance 0.005 where the posterior has 0.038)."""
    eta = check_option("eta", eta, 0.0, 1.0)
    eta_b = check_option("eta_b", eta_b, 0.0, 1.0)
    levels = check_sigmas(sigmas)
    shape = operator.image_shape(y)
    z = start_noise(shape, y, 1.0, generator)
    kept = operator.kept(z)
    inv_s = operator.inv_singulars(z)
    y_bar = inv_s * operator.Ut(y)
    n = operator.sigma_y * inv_s
    use_y = kept & (levels[0] >= n)
    z_bar = operator.Vt(z)
    x_bar = torch.where(use_y, y_bar + (levels[0] ** 2 - n**2).clamp(min=0).sqrt() * z_bar,
                        levels[0] * z_bar)
    x = operator.V(x_bar)
    for i, (sigma, sigma_next) in enumerate(zip(levels[:-1], levels[1:])):
        x0 = denoiser(x, sigma, cond)
        if callback is not None:
            callback(i, sigma, x, x0)
        x0_bar = operator.Vt(x0)
        z_bar = operator.Vt(noise_like(x, generator)) if sigma_next > 0 else torch.zeros_like(x0_bar)
        c = math.sqrt(1 - eta**2) * sigma_next
        unmeasured = x0_bar + c * (x_bar - x0_bar) / sigma + eta * sigma_next * z_bar
        below = x0_bar + c * (y_bar - x0_bar) / torch.where(n > 0, n, 1.0) + eta * sigma_next * z_bar
        above = (1 - eta_b) * x0_bar + eta_b * y_bar + \
            (sigma_next**2 - (n * eta_b) ** 2).clamp(min=0).sqrt() * z_bar
        x_bar = torch.where(kept, torch.where(sigma_next >= n, above, below), unmeasured)
        x = operator.V(x_bar)
    return _finish(x, y, operator)


def restore_pigdm(denoiser, y, operator, sigmas, cond=None, generator=None, callback=None,
                  eta: float = 1.0, guidance_scale: float = 1.0):
    """PiGDM (Song, Vahdat, Mardani & Kautz 2023, "Pseudoinverse-guided diffusion models for
    inverse problems"), eqs. 5-8, in the VE form. p(x0 | x) is approximated by
    N(x0_hat, r^2 I) with r^2 = sigma^2 / (1 + sigma^2) (their choice for data of unit variance),
    so p(y | x) ~ N(A x0_hat, r^2 A A^T + sigma_y^2 I) and its score is the vector-Jacobian product

        g = (d x0_hat / d x)^T A^T (r^2 A A^T + sigma_y^2 I)^{-1} (y - A x0_hat)
          = (d x0_hat / d x)^T V diag(s / (r^2 s^2 + sigma_y^2)) U^T (y - A x0_hat),

    computed with autograd through the denoiser. By Tweedie's formula the posterior denoiser is
    x0_hat + sigma^2 g (times ``guidance_scale``, the paper's step-size knob), used in a DDIM(eta)
    step (so the step follows the conditional score; the paper's Algorithm 1 instead adds
    sqrt(alpha_bar_t) g to a DDIM step on the unguided x0_hat and eps). For Gaussian data of unit
    covariance the approximation is exact, and so is the sampler (up to discretization), also for
    noisy y. On data whose pixels are strongly correlated, r^2 I is far below Cov[x0 | x] along the
    smooth directions, and the guidance overshoots at few steps: CIFAR-10 colorization of 32 test
    images scores 12.8 dB at 10 steps and 14.7 dB at 30 (DDNM: 23.6, 23.3); guidance_scale 0.2
    gives 16.8 and 23.3. The CLI's defaults (DDNM, DDRM) do not use it."""
    eta = check_option("eta", eta, 0.0, 1.0)
    guidance_scale = check_option("guidance_scale", guidance_scale, 0.0)
    levels = check_sigmas(sigmas)
    x = start_noise(operator.image_shape(y), y, levels[0], generator)
    s = operator.singulars(x)
    kept = operator.kept(x)
    for i, (sigma, sigma_next) in enumerate(zip(levels[:-1], levels[1:])):
        r2 = sigma**2 / (1 + sigma**2)
        weight = torch.where(kept, s / (r2 * s**2 + operator.sigma_y**2), torch.zeros_like(s))
        with torch.enable_grad():
            x_in = x.detach().requires_grad_(True)
            x0 = denoiser(x_in, sigma, cond)
            v = operator.V(weight * operator.Ut(y - operator.A(x0.detach())))
            (g,) = torch.autograd.grad(x0, x_in, v)
        x0 = x0.detach()
        if callback is not None:
            callback(i, sigma, x, x0)
        with torch.no_grad():
            x = _ddim_step(x, x0 + guidance_scale * sigma**2 * g, sigma, sigma_next, eta, generator)
    return _finish(x, y, operator)


def repaint_path(steps: int, jump_length: int = 1, resamplings: int = 1) -> list[int]:
    """Grid indices visited by RePaint (Lugmayr et al. 2022, Sec. 4.2 and Algorithm 1): walk down
    one level at a time; on reaching an index k that is a positive multiple of ``jump_length``
    (k < steps), jump back up to k - jump_length, ``resamplings - 1`` times per k, before going on."""
    jumps = {k: resamplings - 1 for k in range(jump_length, steps, jump_length)}
    path, i = [0], 0
    while i < steps:
        i += 1
        path.append(i)
        if jumps.get(i, 0) > 0:
            jumps[i] -= 1
            i -= jump_length
            path.append(i)
    return path


def _repaint_jump(x_bar, y_bar, n, kept, sigma, sigma_up, z_bar):
    """Forward-noise spectral x_bar from level sigma to sigma_up > sigma given the measurement.
    Unmeasured directions: x_bar + sqrt(sigma_up^2 - sigma^2) z (eq. 2). Measured directions, where
    y_bar is the level-n version of x0: y_bar + sqrt(sigma_up^2 - n^2) z if sigma_up >= n, else the
    Brownian bridge from (sigma^2, x_bar) to (n^2, y_bar) evaluated at sigma_up^2 (noise added
    independently of y would lose the link to y below level n)."""
    up = x_bar + math.sqrt(sigma_up**2 - sigma**2) * z_bar
    above = y_bar + (sigma_up**2 - n**2).clamp(min=0).sqrt() * z_bar
    span = torch.where(n > sigma_up, n**2 - sigma**2, 1.0)
    t = (sigma_up**2 - sigma**2) / span
    spread = ((sigma_up**2 - sigma**2) * (1 - t)).clamp(min=0).sqrt()
    bridge = x_bar + t * (y_bar - x_bar) + spread * z_bar
    return torch.where(kept, torch.where(sigma_up >= n, above, bridge), up)


@torch.no_grad()
def restore_repaint(denoiser, y, operator, sigmas, cond=None, generator=None, callback=None,
                    jump_length: int = 1, resamplings: int = 1, eta: float = 1.0):
    """RePaint (Lugmayr et al. 2022, "RePaint: inpainting using denoising diffusion probabilistic
    models"), Algorithm 1 with the jump schedule of Sec. 4.2, in the VE form:

        known:    x_known ~ q(x_next | y)  = y + sigma_next z            (eq. 8, noise the measurement)
        unknown:  x_unknown = DDIM(eta) step from x with D(x; sigma)       (eq. 9; eta = 1 is DDPM)
        x_next = m * x_known + (1 - m) * x_unknown                          (eq. 10)
        jump back k levels: x <- x + sqrt(sigma_{i-k}^2 - sigma_i^2) z       (q(x_t | x_{t-1}), eq. 2)
                            on the unmeasured part; measured part re-drawn given y

    ``resamplings`` is the paper's U (how often each stretch is walked; 1 = no resampling) and
    ``jump_length`` its j (the paper uses j = 10, U = 10 on 250 levels). The mask m is written
    generally as the measured directions of the operator's SVD, so this is the paper's method for
    ``Inpainting`` and its direct extension otherwise. With noisy y (sigma_y > 0) a measured
    direction is y_bar + sqrt(sigma_next^2 - n^2) z where sigma_next >= n = sigma_y / s (y_bar is x0
    already noised to level n), the model's value below that level, and a jump from below n
    follows the Brownian bridge to y_bar (``_repaint_jump``)."""
    jump_length = check_option("jump_length", jump_length, 1, integer=True)
    resamplings = check_option("resamplings", resamplings, 1, integer=True)
    eta = check_option("eta", eta, 0.0, 1.0)
    levels = check_sigmas(sigmas)
    x = start_noise(operator.image_shape(y), y, levels[0], generator)
    kept = operator.kept(x)
    inv_s = operator.inv_singulars(x)
    y_bar = inv_s * operator.Ut(y)
    n = operator.sigma_y * inv_s
    path = repaint_path(len(levels) - 1, jump_length, resamplings)
    evaluations = 0
    for a, b in zip(path[:-1], path[1:]):
        sigma, sigma_next = levels[a], levels[b]
        if b < a:  # jump back up to sigma_next > sigma
            x = operator.V(_repaint_jump(operator.Vt(x), y_bar, n, kept, sigma, sigma_next,
                                         operator.Vt(noise_like(x, generator))))
            continue
        x0 = denoiser(x, sigma, cond)
        if callback is not None:
            callback(evaluations, sigma, x, x0)
        evaluations += 1
        unknown = operator.Vt(_ddim_step(x, x0, sigma, sigma_next, eta, generator))
        noise = operator.Vt(noise_like(x, generator)) if sigma_next > 0 else 0.0
        known = y_bar + (sigma_next**2 - n**2).clamp(min=0).sqrt() * noise
        x = operator.V(torch.where(kept & (sigma_next >= n), known, unknown))
    return _finish(x, y, operator)


def sdedit_start(steps: int, strength: float) -> int:
    """Index into a grid of ``steps`` levels (plus the final 0) where SDEdit at ``strength``
    starts: the last round(strength * steps) steps are run."""
    return steps - round(check_option("strength", strength, 0.0, 1.0) * steps)


def restore_sdedit(denoiser, x, sigmas, strength: float = 0.5, cond=None, generator=None,
                   callback=None, sampler=None, **options):
    """SDEdit (Meng et al. 2022, "SDEdit: guided image synthesis and editing with stochastic
    differential equations"), Algorithm 1 in the VE form: perturb the guide image x to the level
    sigma_s = sigmas[i0] at fraction ``strength`` along the grid, x_s = x + sigma_s z, and run
    ``sampler`` (default ``sample_ddim``; pass eta=1 for the paper's stochastic reverse process)
    on the grid's tail sigmas[i0:].

    strength = 0 returns x itself (no step, no draw). strength = 1 starts at sigmas[0], where
    every plain sampler takes the data as forgotten and starts from sigmas[0] * z: SDEdit does the
    same (the guide image is not added there), so with the same generator the result equals plain
    sampling from the same noise, by construction (same draws in the same order)."""
    if sampler is None:
        from difflab.diffusion.samplers import sample_ddim as sampler
    levels = check_sigmas(sigmas)
    i0 = sdedit_start(len(levels) - 1, strength)
    if i0 == len(levels) - 1:
        return x.clone()
    x_s = start_noise(x.shape, x, levels[i0], generator)
    if i0 > 0:
        x_s = x + x_s
    tail = torch.as_tensor(levels[i0:], dtype=torch.float64)
    return sampler(denoiser, x_s, tail, cond=cond, generator=generator, callback=callback, **options)


MAX_DRAWS = 1000  # a posterior mean of more draws than this is a job for a loop of calls


def restore_mean(solver, draws: int, denoiser, y, operator, sigmas, cond=None, generator=None,
                 callback=None, antithetic: bool = True, **options):
    """The mean of ``draws`` restorations by ``solver``: a Monte Carlo estimate of the posterior
    mean E[x | y], the minimum-mean-squared-error answer, at ``draws`` times the solver's cost. For
    exact posterior draws x_k around the true x, E||x_k - x||^2 = 2 tr Cov[x | y] while the mean
    of K independent draws has (1 + 1/K) tr Cov[x | y]: where the measurement leaves much unknown
    (half an image), one draw is a sharp, plausible answer and the mean is the better one in
    squared error (PSNR), blurred where the posterior is uncertain.

    ``antithetic`` (default) takes the draws in pairs, the second of each pair from the first's
    noise negated (``MirroredNoise``; an odd last draw is unpaired). Each draw is still a plain
    draw, so the estimate's expectation is unchanged; what cancels is the part of the draws'
    spread that is odd in the noise, all of it where the sampler is affine in its noise (a
    Gaussian prior with its exact denoiser: one pair gives the draws' expectation exactly). On
    CIFAR-10 half-image inpainting one pair of 50-step DDNM draws had a lower error than ten
    independent ones (BENCHMARKS.md). ``antithetic=False``: successive independent draws from
    ``generator``. Averaging is linear, so with noiseless y the mean satisfies A x = y like every
    draw (known pixels exact). Accumulated in float64 whatever the draws' dtype."""
    if isinstance(draws, bool) or int(draws) != draws or not 1 <= draws <= MAX_DRAWS:
        raise ValueError(f"draws={draws}: must be an integer in [1, {MAX_DRAWS}]")
    draws = int(draws)
    mirrored = MirroredNoise(generator) if antithetic and draws > 1 else None
    total = None
    for k in range(draws):
        noise = generator  # an unpaired draw keeps no noise
        if mirrored is not None and k % 2 == 1:
            mirrored.mirror()
            noise = mirrored
        elif mirrored is not None and k + 1 < draws:
            mirrored.record()
            noise = mirrored
        x = solver(denoiser, y, operator, sigmas, cond=cond, generator=noise,
                   callback=callback, **options)
        total = x.double() if total is None else total + x.double()
    return (total / draws).to(x.dtype)


SOLVERS = {"ddnm": restore_ddnm, "ddrm": restore_ddrm, "pigdm": restore_pigdm,
           "repaint": restore_repaint}


def get_solver(name: str):
    """The restoration solver called ``name``; ValueError listing the valid names otherwise."""
    if name not in SOLVERS:
        raise ValueError(f"unknown restoration solver {name!r} (choose from {', '.join(SOLVERS)})")
    return SOLVERS[name]
