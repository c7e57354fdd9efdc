"""Training-free restoration against exact answers.

Operators: adjoint, pseudo-inverse and SVD identities, autograd VJP == A^T, validation. Solvers:
measurement consistency, and the posterior of Gaussian priors whose denoiser is exact:

* isotropic N(0, I): the posterior of an inpainting problem is known in closed form (unknown
  pixels ~ N(0, 1) independent of the known ones). A solver run with the exact denoiser moves
  each unknown pixel by a scalar linear-Gaussian recursion (its DDIM / DDRM / RePaint steps on
  N(0, 1) data), whose output mean and variance ``chain_moments`` computes exactly; the samples
  must match those moments within Monte Carlo error, and the recursion tends to the exact
  posterior as steps grow (first order: 1 - var ~ 5 / steps for DDIM; see
  ``test_chain_moments_converge_to_posterior``). DDRM with eta > 0 is the exception: its
  recursion converges to variance ~0.76, not 1 (a property of the paper's eqs. 7-8).
* a correlated Gaussian (full covariance, ``GaussianPrior``): the closed-form posterior mean of
  x2 super-resolution, noiseless and noisy, against DDNM / DDRM / PiGDM sample means.

Monte Carlo tolerances are 4 standard errors (two-sided false-alarm rate 6e-5 per check; the seeds
are fixed, so the tests are deterministic).
"""
import math

import pytest
import torch

from difflab.diffusion.mixtures import GaussianMixture
from difflab.diffusion.samplers import MirroredNoise, ancestral_step, noise_like, sample_ddim
from difflab.diffusion.schedules import karras_sigmas
from difflab.restoration import (Blur, Downsample, GaussianPrior, Grayscale, Identity, Inpainting,
                                 operator_matrix, repaint_path, restore_ddnm, restore_ddrm,
                                 restore_mean, restore_pigdm, restore_repaint, restore_sdedit)
from difflab.restoration.solvers import sdedit_start

Z = 4.0  # Monte Carlo tolerance in standard errors


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """These tensors are tiny: intra-op threads only add contention on a shared 2-core machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _gen(seed):
    return torch.Generator().manual_seed(seed)


def _mask(shape, seed=0, p=0.5):
    return torch.rand(shape, generator=_gen(seed)) < p


OPERATORS = {
    "identity": lambda: Identity(),
    "inpaint-per-image": lambda: Inpainting(_mask((2, 1, 8, 8))),
    "inpaint-per-channel": lambda: Inpainting(_mask((2, 3, 8, 8), seed=1)),
    "downsample": lambda: Downsample(2),
    "downsample-4": lambda: Downsample(4),
    "blur-gaussian": lambda: Blur(std=1.0),
    "blur-box": lambda: Blur(size=3),
    "grayscale": lambda: Grayscale(),
}


def _x(seed=0, dtype=torch.float64):
    return torch.randn(2, 3, 8, 8, generator=_gen(seed), dtype=dtype)


# ----- operators ------------------------------------------------------------------------------
@pytest.mark.parametrize("name", OPERATORS)
def test_operator_adjoint_pinv_and_svd_identities(name):
    """<A x, y> = <x, A^T y>; A A^+ A = A and A^+ A A^+ = A^+; A = U S V^T, A^T = V S U^T,
    A^+ = V S^+ U^T, V orthonormal; the consistency projection gives A x = y."""
    op = OPERATORS[name]()
    x, x2 = _x(0), _x(1)
    y = op.A(x2)  # a generic measurement
    Ax = op.A(x)
    assert torch.allclose((Ax * y).sum(), (x * op.At(y)).sum(), rtol=1e-12, atol=1e-12)
    assert torch.allclose(op.A(op.pinv(Ax)), Ax, atol=1e-12)
    assert torch.allclose(op.pinv(op.A(op.pinv(y))), op.pinv(y), atol=1e-12)
    s = op.singulars(x)
    z = op.Vt(x)
    assert torch.allclose(op.U(s * z), Ax, atol=1e-12)
    assert torch.allclose(op.V(s * op.Ut(y)), op.At(y), atol=1e-12)
    assert torch.allclose(op.V(op.inv_singulars(x) * op.Ut(y)), op.pinv(y), atol=1e-12)
    assert torch.allclose(op.V(z), x, atol=1e-12)
    assert torch.allclose(z.square().sum(), x.square().sum(), rtol=1e-12)
    assert torch.allclose(op.A(op.project(x, y)), y, atol=1e-12)


@pytest.mark.parametrize("name", OPERATORS)
def test_operator_is_differentiable_with_adjoint_as_vjp(name):
    """Autograd through A gives d<A x, y>/dx = A^T y, in float32 on the input's dtype."""
    op = OPERATORS[name]()
    x = _x(0, torch.float32).requires_grad_(True)
    Ax = op.A(x)
    assert Ax.dtype == torch.float32
    y = torch.randn(Ax.shape, generator=_gen(2))
    (grad,) = torch.autograd.grad((Ax * y).sum(), x)
    assert torch.allclose(grad, op.At(y), atol=1e-6)


def _circular_conv(x, kernel):
    """sum_{a,b} k[a, b] x[i - a, j - b] by explicit rolls (the definition)."""
    out = torch.zeros_like(x)
    for a in range(kernel.shape[0]):
        for b in range(kernel.shape[1]):
            out = out + kernel[a, b] * torch.roll(x, shifts=(a, b), dims=(-2, -1))
    return out


@pytest.mark.parametrize("op", [Blur(std=1.3), Blur(size=3), Blur(size=5)])
def test_blur_is_circular_convolution_with_a_normalized_kernel(op):
    x = _x(3)[:, :, :, :6]  # non-square 8x6 image
    kernel = op.kernel(8, 6)
    assert torch.isclose(kernel.sum(), torch.tensor(1.0, dtype=torch.float64))
    assert torch.allclose(op.A(x), _circular_conv(x, kernel), atol=1e-12)
    if op.size == 3:
        assert torch.allclose(kernel[:2, :2], torch.full((2, 2), 1 / 9, dtype=torch.float64))


def test_downsample_and_grayscale_are_block_and_channel_means():
    x = _x(4)
    assert torch.allclose(Downsample(2).A(x)[0, 0, 0, 0], x[0, 0, :2, :2].mean())
    assert torch.allclose(Downsample(2).pinv(Downsample(2).A(x))[0, 0, 1, 1], x[0, 0, :2, :2].mean())
    assert torch.allclose(Grayscale().A(x), x.mean(1, keepdim=True))


def test_measure_adds_noise_of_std_sigma_y_only_where_measured():
    x = torch.zeros(64, 1, 8, 8, dtype=torch.float64)
    mask = _mask((64, 1, 8, 8))
    y = Inpainting(mask, sigma_y=0.3).measure(x, _gen(0))
    assert (y[~mask] == 0).all()
    se = 0.3**2 * math.sqrt(2 / mask.sum().item())
    assert abs(y[mask].var().item() - 0.09) < Z * se
    assert torch.equal(Identity().measure(x, _gen(0)), x)  # sigma_y = 0: y = A x exactly


@pytest.mark.parametrize("make,message", [
    (lambda: Downsample(3).A(_x()), "factor 3 does not divide image size 8x8"),
    (lambda: Downsample(0), "factor=0"),
    (lambda: Downsample(1.5), "factor=1.5"),
    (lambda: Blur(std=-1.0), "std=-1.0"),
    (lambda: Blur(size=4), "size=4"),
    (lambda: Blur(size=9).A(_x()), "size 9 exceeds image size 8x8"),
    (lambda: Blur(std=1.0, size=3), "exactly one of std"),
    (lambda: Inpainting(torch.full((1, 1, 8, 8), 0.5)), "got value 0.5"),
    (lambda: Inpainting(torch.ones(3, 1, 8, 8)).A(_x()), r"shape \(3, 1, 8, 8\)"),
    (lambda: Identity(sigma_y=-0.1), "sigma_y=-0.1"),
    (lambda: Grayscale().A(_x()[:, :2]), "expects 3 channels, got 2"),
    (lambda: Blur(std=1.0).A(torch.zeros(4, 64)), r"shape \(4, 64\)"),
])
def test_operator_bad_inputs_raise_value_error_naming_the_value(make, message):
    with pytest.raises(ValueError, match=message):
        make()


# ----- solvers: measurement consistency -----------------------------------------------------
SOLVERS = {
    "ddnm": (restore_ddnm, {}),
    "ddrm": (restore_ddrm, {}),
    "pigdm": (restore_pigdm, {}),
    "repaint": (restore_repaint, {"jump_length": 2, "resamplings": 2}),
}


def _iso_prior(d):
    return GaussianMixture([1.0], torch.zeros(1, d), torch.ones(1, d))


@pytest.mark.parametrize("solver", SOLVERS)
@pytest.mark.parametrize("name", ["inpaint-per-image", "downsample", "blur-gaussian", "grayscale",
                                  "identity"])
def test_noiseless_solution_satisfies_measurement(solver, name):
    """sigma_y = 0: A x == y to float tolerance; inpainting keeps the known pixels bit-exactly."""
    fn, options = SOLVERS[solver]
    op = OPERATORS[name]()
    y = op.A(_x(5))
    out = fn(_iso_prior(3 * 64), y, op, karras_sigmas(6, 0.002, 80.0), generator=_gen(0), **options)
    assert out.shape == (2, 3, 8, 8) and out.dtype == torch.float64
    assert torch.allclose(op.A(out), y, atol=1e-10)
    if isinstance(op, Inpainting):
        known = op.mask.expand_as(out)
        assert torch.equal(out[known], y[known])


@pytest.mark.parametrize("solver", SOLVERS)
def test_solvers_pass_cond_and_work_in_float32_on_any_size(solver):
    """Class labels reach every denoiser call; float32 on a 1x6x10 image stays float32."""
    fn, options = SOLVERS[solver]
    prior, seen = _iso_prior(60), []
    labels = torch.tensor([3, 7])

    def denoiser(x, sigma, cond=None):
        seen.append(cond)
        return prior(x, sigma)

    op = Inpainting(_mask((2, 1, 6, 10)))
    y = op.A(torch.randn(2, 1, 6, 10, generator=_gen(0)))
    out = fn(denoiser, y, op, karras_sigmas(4, 0.002, 80.0), cond=labels, generator=_gen(1), **options)
    assert out.dtype == torch.float32 and seen and all(c is labels for c in seen)
    assert torch.equal(out[op.mask.expand_as(out)], y[op.mask.expand_as(out)])


def test_solver_options_are_validated():
    op, y = Identity(), torch.zeros(1, 1, 2, 2)
    prior = _iso_prior(4)
    with pytest.raises(ValueError, match="eta=1.5"):
        restore_ddnm(prior, y, op, karras_sigmas(3, 0.1, 10.0), eta=1.5)
    with pytest.raises(ValueError, match="end in 0"):
        restore_ddrm(prior, y, op, karras_sigmas(3, 0.1, 10.0)[:-1])
    with pytest.raises(ValueError, match="decreasing, got 1 then 2"):
        restore_pigdm(prior, y, op, torch.tensor([1.0, 2.0, 0.0]))
    with pytest.raises(ValueError, match="strength=1.5"):
        restore_sdedit(prior, y, karras_sigmas(3, 0.1, 10.0), strength=1.5)


def test_repaint_path_walks_each_stretch_resamplings_times():
    path = repaint_path(10, jump_length=2, resamplings=3)
    assert path[0] == 0 and path[-1] == 10
    moves = [b - a for a, b in zip(path, path[1:])]
    assert set(moves) == {1, -2}
    downs = [a for a, b in zip(path, path[1:]) if b == a + 1]
    # levels 0..7 lie in stretches that are re-walked: 3 times each; 8 -> 9 -> 10 once
    assert all(downs.count(k) == 3 for k in range(8)) and downs.count(8) == downs.count(9) == 1
    assert repaint_path(5) == [0, 1, 2, 3, 4, 5]


# ----- solvers: exact posterior of an isotropic Gaussian ---------------------------------------
def chain_moments(levels, eta, kind="ddim", path=None, m=0.0, w=1.0):
    """Exact output mean and variance of one coordinate moved by a solver's steps on data
    N(m, w) with the exact denoiser m + w / (w + sigma^2) (x - m), from x ~ N(0, sigma_0^2).
    ddim: x' = x0 + sigma_down eps + sigma_up z (DDNM, PiGDM, RePaint);
    ddrm: x' = x0 + sqrt(1 - eta^2) sigma' eps + eta sigma' z (Kawar et al. 2022, eq. 8);
    path (RePaint): an upward move adds variance sigma_b^2 - sigma_a^2."""
    path = path or list(range(len(levels)))
    mean, var = 0.0, levels[0] ** 2
    for a, b in zip(path, path[1:]):
        sigma, sigma_next = levels[a], levels[b]
        if b < a:
            var += sigma_next**2 - sigma**2
            continue
        if kind == "ddim":
            sigma_down, sigma_up = ancestral_step(sigma, sigma_next, eta)
            c = sigma_down / sigma
        else:
            c, sigma_up = math.sqrt(1 - eta**2) * sigma_next / sigma, eta * sigma_next
        alpha = w / (w + sigma**2) * (1 - c) + c
        mean, var = m + alpha * (mean - m), alpha**2 * var + sigma_up**2
    return mean, var


STEPS = 100
LEVELS = [float(s) for s in karras_sigmas(STEPS, 0.002, 80.0)]
POSTERIOR_CASES = {  # solver, options, chain kind, eta, RePaint path
    "ddnm": (restore_ddnm, {}, "ddim", 1.0, None),
    "ddnm-eta0": (restore_ddnm, {"eta": 0.0}, "ddim", 0.0, None),
    "ddrm-eta0": (restore_ddrm, {"eta": 0.0}, "ddrm", 0.0, None),
    "ddrm": (restore_ddrm, {}, "ddrm", 0.85, None),
    "pigdm": (restore_pigdm, {}, "ddim", 1.0, None),
    "repaint-jumps": (restore_repaint, {"jump_length": 10, "resamplings": 2}, "ddim", 1.0,
                      repaint_path(STEPS, 10, 2)),
}


@pytest.fixture(scope="module")
def iso_problem():
    """4000 4x4 images from N(0, I), each with its own random mask (about half known)."""
    n = 4000
    x_true = torch.randn(n, 1, 4, 4, generator=_gen(10), dtype=torch.float64)
    op = Inpainting(_mask((n, 1, 4, 4), seed=11))
    return _iso_prior(16), op, op.measure(x_true)


@pytest.mark.parametrize("case", POSTERIOR_CASES)
def test_inpainting_isotropic_gaussian_matches_posterior(case, iso_problem):
    """Unknown pixels: mean 0, variance = the exact moments of the solver's recursion
    (chain_moments), uncorrelated with the known pixels of their image; known pixels = y."""
    fn, options, kind, eta, path = POSTERIOR_CASES[case]
    prior, op, y = iso_problem
    out = fn(prior, y, op, torch.tensor(LEVELS), generator=_gen(12), **options)
    mask = op.mask.expand_as(out)
    assert torch.equal(out[mask], y[mask])
    unknown = out[~mask]
    count = unknown.numel()
    mean, var = chain_moments(LEVELS, eta, kind, path)
    assert abs(unknown.mean().item() - mean) < Z * math.sqrt(var / count)
    assert abs(unknown.var().item() - var) < Z * var * math.sqrt(2 / count)
    known_sum = y.sum(dim=(1, 2, 3), keepdim=True).expand_as(out)[~mask]
    corr = torch.corrcoef(torch.stack([unknown, known_sum]))[0, 1].item()
    assert abs(corr) < Z / math.sqrt(count)


@pytest.mark.parametrize("solver", ["ddnm", "pigdm"])
def test_mean_of_draws_has_the_draws_mean_and_a_kth_of_their_variance(solver, iso_problem):
    """restore_mean with K independent draws (antithetic=False): known pixels exactly y (averaging
    keeps A x = y); unknown pixels keep the one-draw mean and have 1/K of its variance, so the
    estimate's squared error around the posterior mean shrinks by K."""
    fn, options, kind, eta, path = POSTERIOR_CASES[solver]
    prior, op, y = iso_problem
    draws = 4
    out = restore_mean(fn, draws, prior, y, op, torch.tensor(LEVELS), generator=_gen(13),
                       antithetic=False, **options)
    mask = op.mask.expand_as(out)
    assert out.dtype == y.dtype and torch.equal(out[mask], y[mask])
    unknown = out[~mask]
    count = unknown.numel()
    mean, var = chain_moments(LEVELS, eta, kind, path)
    assert abs(unknown.mean().item() - mean) < Z * math.sqrt(var / draws / count)
    assert abs(unknown.var().item() - var / draws) < Z * var / draws * math.sqrt(2 / count)


@pytest.mark.parametrize("solver", list(SOLVERS))
@pytest.mark.parametrize("sigma_y", [0.0, 0.1])
def test_antithetic_pair_mean_has_no_monte_carlo_error_where_the_solver_is_affine(solver, sigma_y):
    """With a Gaussian prior and its exact denoiser every solver is affine in its noise, so the
    mean of a mirrored pair (restore_mean's default) is the draws' expectation itself: the same
    for any seed, and equal to the mean of many independent draws up to their Monte Carlo error.
    The pair's first draw is the plain draw from the same generator, its second the mirror image
    about that expectation."""
    fn, options = SOLVERS[solver]
    prior = _correlated_prior()
    op = Inpainting(_mask((2, 1, 4, 4), seed=3), sigma_y=sigma_y)
    y = op.measure(prior.sample(2, _gen(0)), _gen(1))
    levels = karras_sigmas(8, 0.002, 80.0)
    pairs = [restore_mean(fn, 2, prior, y, op, levels, generator=_gen(seed), **options)
             for seed in (2, 3)]
    assert torch.allclose(pairs[0], pairs[1], atol=1e-9)
    first = fn(prior, y, op, levels, generator=_gen(2), **options)
    assert not torch.allclose(first, pairs[0], atol=1e-3)  # one draw is not noise-free
    noise = MirroredNoise(_gen(2))
    noise.record()
    assert torch.equal(fn(prior, y, op, levels, generator=noise, **options), first)
    noise.mirror()
    assert torch.allclose(fn(prior, y, op, levels, generator=noise, **options),
                          2 * pairs[0] - first, atol=1e-9)
    plain = restore_mean(fn, 400, prior, y, op, levels, generator=_gen(4), antithetic=False,
                         **options)
    spread = (first - pairs[0]).abs().max().item()  # one draw's distance from the expectation
    assert (plain - pairs[0]).abs().max().item() < 0.25 * spread


def test_mirrored_noise_refuses_a_replay_that_asks_for_other_noise():
    noise = MirroredNoise(_gen(0))
    noise.record()
    z = noise_like(torch.zeros(2, 3), noise)
    noise.mirror()
    assert torch.equal(noise_like(torch.zeros(2, 3), noise), -z)
    with pytest.raises(RuntimeError, match="other noise"):
        noise_like(torch.zeros(2, 3), noise)
    noise.mirror()
    with pytest.raises(RuntimeError, match="other noise"):
        noise_like(torch.zeros(3, 3), noise)


def test_mean_of_one_draw_is_the_solver_and_draws_are_validated():
    prior, op = _iso_prior(16), Inpainting(_mask((3, 1, 4, 4)))
    y = op.A(torch.randn(3, 1, 4, 4, generator=_gen(0)))
    levels = karras_sigmas(5, 0.002, 80.0)
    one = restore_mean(restore_ddrm, 1, prior, y, op, levels, generator=_gen(1))
    assert torch.equal(one, restore_ddrm(prior, y, op, levels, generator=_gen(1)))
    for bad in (0, 2.5, True):
        with pytest.raises(ValueError, match=f"draws={bad}"):
            restore_mean(restore_ddrm, bad, prior, y, op, levels)


def test_chain_moments_converge_to_posterior():
    """The reference recursions approach the exact N(m, w) as steps grow, at first order
    (1 - var / w ~ 10-14 / steps: 5% to 13% low at 100 steps, 0.5% to 1.4% at 1000), except DDRM
    with eta = 0.85, whose unmeasured directions converge to variance ~0.76 w, not w (its eq. 8
    adds eta * sigma_next fresh noise per step whatever the step size)."""
    for steps in (100, 1000):
        levels = [float(s) for s in karras_sigmas(steps, 0.002, 80.0)]
        for w in (1.0, 0.04 / 1.04):  # unit prior; the noisy-pixel posterior of the PiGDM test
            for kind, eta in (("ddim", 0.0), ("ddim", 1.0), ("ddrm", 0.0)):
                mean, var = chain_moments(levels, eta, kind, m=1.0, w=w)
                assert 0 < 1 - var / w < 15.0 / steps
                # the start x ~ N(0, sigma_0^2) ignores m: a remnant ~ m sqrt(w) / sigma_0
                assert abs(mean - 1) < 2 * math.sqrt(w) / levels[0]
        assert 0.72 < chain_moments(levels, 0.85, "ddrm")[1] < 0.76


def test_pigdm_noisy_inpainting_isotropic_gaussian_matches_posterior(iso_problem):
    """PiGDM's Gaussian p(y | x) is exact for N(0, I) data, so with noisy y its known pixels follow
    DDIM on the exact posterior N(y / (1 + sigma_y^2), sigma_y^2 / (1 + sigma_y^2)) per pixel."""
    prior, op, _ = iso_problem
    sigma_y = 0.2
    noisy = Inpainting(op.mask, sigma_y=sigma_y)
    x_true = torch.randn(op.mask.shape, generator=_gen(13), dtype=torch.float64)
    y = noisy.measure(x_true, _gen(14))
    out = restore_pigdm(prior, y, noisy, torch.tensor(LEVELS), generator=_gen(15))
    mask = op.mask.expand_as(out)
    w = sigma_y**2 / (1 + sigma_y**2)
    shrink, var = chain_moments(LEVELS, 1.0, m=1.0, w=w)  # mean of the output for m = 1
    residual = out[mask] - shrink * y[mask] / (1 + sigma_y**2)
    count = residual.numel()
    assert abs(residual.mean().item()) < Z * math.sqrt(var / count)
    assert abs(residual.var().item() - var) < Z * var * math.sqrt(2 / count)
    # (the recursion's variance is 13% below w at 100 steps, 1.4% at 1000: see the test above)
    unknown = out[~mask]
    _, var_u = chain_moments(LEVELS, 1.0)
    assert abs(unknown.var().item() - var_u) < Z * var_u * math.sqrt(2 / unknown.numel())


# ----- solvers: correlated Gaussian ------------------------------------------------------------
def _correlated_prior():
    """N(0, Sigma) on 1x4x4 images, Sigma = 0.8 exp(-|p - q|^2 / (2 * 1.5^2)) + 0.2 I."""
    grid = torch.stack(torch.meshgrid(torch.arange(4.0), torch.arange(4.0), indexing="ij"), -1)
    p = grid.reshape(16, 2).double()
    cov = 0.8 * torch.exp(-torch.cdist(p, p).square() / (2 * 1.5**2))
    cov = cov + 0.2 * torch.eye(16, dtype=torch.float64)
    return GaussianPrior(torch.zeros(16), cov, (1, 4, 4))


def test_gaussian_prior_denoiser_is_the_identity_operator_posterior_mean():
    prior = _correlated_prior()
    x = prior.sample(3, _gen(0)) + 0.7 * torch.randn(3, 1, 4, 4, generator=_gen(1), dtype=torch.float64)
    matrix = operator_matrix(Identity(), (1, 4, 4))
    for i in range(3):
        mean, _ = prior.posterior(matrix, x[i], sigma_y=0.7)
        assert torch.allclose(prior(x[i:i + 1], 0.7).reshape(-1), mean, atol=1e-10)


@pytest.mark.parametrize("solver,sigma_y", [
    ("ddnm", 0.0), ("ddrm", 0.0), ("pigdm", 0.0), ("ddnm", 0.1), ("ddrm", 0.1), ("pigdm", 0.1)])
def test_superresolution_correlated_gaussian_posterior_mean(solver, sigma_y):
    """x2 super-resolution of a correlated Gaussian at 100 steps: the mean of 2000 draws is within
    15% of the posterior's own shift from the prior mean, plus Monte Carlo error.

    The error is measured where the method has freedom: for noiseless y on the null space of A
    (the range part equals A^+ y for every consistent answer), for noisy y everywhere. The 15%
    is a bias allowance, since these methods are not exact for a correlated prior; a method that
    ignored the prior's correlations (A^+ y, or the prior mean) would be at 100%. Measured here
    (error / shift, Monte Carlo included): noiseless DDNM 0.077, DDRM 0.133, PiGDM 0.077 with
    Monte Carlo RMS 0.062; noisy DDNM+ 0.029, DDRM 0.037, PiGDM 0.028 with RMS 0.021.
    The Monte Carlo part bounds the norm of the mean of n exact posterior draws, whose square
    has mean tr(C) / n and variance 2 tr(C^2) / n^2 (C = P cov P): Z standard deviations above."""
    fn = SOLVERS[solver][0]
    prior, n = _correlated_prior(), 2000
    op = Downsample(2, sigma_y=sigma_y)
    x_true = prior.sample(1, _gen(0))
    y = op.measure(x_true, _gen(1))
    mean, cov = prior.posterior(operator_matrix(op, (1, 4, 4)), y, sigma_y)
    if sigma_y == 0:
        basis = torch.eye(16, dtype=torch.float64).reshape(16, 1, 4, 4)
        P = (basis - op.pinv(op.A(basis))).reshape(16, 16)  # I - A^+ A (symmetric)
    else:
        P = torch.eye(16, dtype=torch.float64)
    out = fn(prior, y.expand(n, 1, 2, 2), op, torch.tensor(LEVELS), generator=_gen(2))
    error = (P @ (out.reshape(n, 16).mean(0) - mean)).norm().item()
    shift = (P @ (mean - prior.mean)).norm().item()
    C = P @ cov @ P
    mc = math.sqrt((C.trace() + Z * (2 * (C @ C).trace()).sqrt()).item() / n)
    assert shift > 5 * mc  # the Monte Carlo error is small against the effect
    assert error < 0.15 * shift + mc, (error / shift, mc / shift)


# ----- SDEdit -------------------------------------------------------------------------------
def test_sdedit_strength_zero_returns_input_without_drawing():
    x = _x(6)
    g = _gen(0)
    out = restore_sdedit(_iso_prior(192), x, karras_sigmas(10, 0.002, 80.0), strength=0.0, generator=g)
    assert torch.equal(out, x) and out is not x
    assert torch.equal(g.get_state(), _gen(0).get_state())


@pytest.mark.parametrize("eta", [0.0, 1.0])
def test_sdedit_strength_one_is_plain_sampling_from_the_same_noise(eta):
    prior, sigmas = _iso_prior(192), karras_sigmas(10, 0.002, 80.0)
    out = restore_sdedit(prior, _x(7), sigmas, strength=1.0, generator=_gen(3), eta=eta)
    g = _gen(3)
    x = torch.randn(2, 3, 8, 8, generator=g, dtype=torch.float64) * float(sigmas[0])
    assert torch.equal(out, sample_ddim(prior, x, sigmas, generator=g, eta=eta))


def test_sdedit_intermediate_strength_runs_the_grid_tail_from_the_noised_input():
    """strength s starts at sigmas[steps - round(s * steps)] with x + sigma z, then the tail."""
    prior, sigmas, x = _iso_prior(192), karras_sigmas(10, 0.002, 80.0), _x(8)
    assert [sdedit_start(10, s) for s in (0.0, 0.3, 0.5, 1.0)] == [10, 7, 5, 0]
    out = restore_sdedit(prior, x, sigmas, strength=0.3, generator=_gen(4))
    g = _gen(4)
    start = x + torch.randn(x.shape, generator=g, dtype=x.dtype) * float(sigmas[7])
    assert torch.equal(out, sample_ddim(prior, start, sigmas[7:], generator=g))
