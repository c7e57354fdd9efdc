"""Samplers against exact answers: the closed-form probability-flow ODE of a Gaussian (per sample
and order of accuracy), the moments and component weights of a Gaussian mixture (stochastic
samplers), DDIM(eta=0) == Euler, and the exact mixture denoiser == Tweedie's formula."""
import math

import pytest
import torch

from difflab.diffusion import mixtures, samplers, schedules, sde
from difflab.diffusion.denoiser import Denoiser
from difflab.data.shape import DataShape
from difflab.diffusion import generation
from difflab.nets.unet import UNet, UNetConfig

DETERMINISTIC = ("euler", "ddim", "heun", "dpmpp-2m", "dpmpp-3m", "unipc")
STOCHASTIC = {
    "euler-maruyama-ve": ("euler-maruyama", 200, {"sde": "ve"}),
    "euler-maruyama-vp": ("euler-maruyama", 200, {"sde": "vp"}),
    "pc": ("pc", 100, {}),
    "ald": ("ald", 100, {}),
    "heun-churn": ("heun", 50, {"s_churn": 40.0}),
    "ddpm": ("ddpm", 100, {}),
    "ddim-eta1": ("ddim", 100, {"eta": 1.0}),
}


def _start(problem, n, sigma_max, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, problem.dim, generator=g, dtype=torch.float64) * sigma_max


def _ode_error(name, problem, x, n, sigma_min, sigma_max, **options):
    """Mean per-sample error at sigma_min of n steps on a Karras grid that stops at sigma_min > 0
    (so the closed-form comparison is not dominated by the final jump to sigma = 0)."""
    sigmas = schedules.karras_sigmas(n, sigma_min, sigma_max)[:-1]
    out = generation.get_sampler(name)(problem, x.clone(), sigmas, **options)
    return (out - problem.ode_solution(x, sigma_max, sigma_min)).norm(dim=1).mean().item()


@pytest.mark.parametrize("name", DETERMINISTIC)
def test_deterministic_sampler_matches_closed_form_ode_per_sample(name):
    gauss = mixtures.make_problem("gaussian-64d")
    x = _start(gauss, 32, 80.0)
    sigmas = schedules.karras_sigmas(1000, 0.002, 80.0)  # ends in 0
    out = generation.get_sampler(name)(gauss, x.clone(), sigmas)
    exact = gauss.ode_solution(x, 80.0, 0.0)
    relative = (out - exact).norm(dim=1) / (exact - gauss.means[0]).norm(dim=1)
    assert relative.max() < 5e-3, relative.max()


@pytest.mark.parametrize("name,order,options", [
    ("euler", 1, {}), ("heun", 2, {}), ("dpmpp-2m", 2, {}), ("dpmpp-3m", 3, {}),
    ("unipc", 2, {"order": 1}), ("unipc", 3, {"order": 2}), ("unipc", 4, {"order": 3}),
    ("unipc", 3, {"order": 2, "variant": "bh1"})])
def test_error_shrinks_at_theoretical_order(name, order, options):
    """UniC raises the order of UniP-p by one (Zhao et al. 2023)."""
    gauss = mixtures.make_problem("gaussian-2d")
    x = _start(gauss, 64, 80.0)
    errors = [_ode_error(name, gauss, x, n, 0.05, 80.0, **options) for n in (64, 128, 256)]
    rates = [math.log2(a / b) for a, b in zip(errors, errors[1:])]
    assert all(abs(r - order) < 0.3 for r in rates), (errors, rates)


def test_ddim_eta0_equals_euler_on_the_same_grid():
    mix = mixtures.make_problem("mixture-2d")
    alpha_bar = schedules.make_alpha_bar("linear", 1000)
    for sigmas in (schedules.sigma_grid("karras", 10, 0.002, 80.0),
                   schedules.sigma_grid("ddpm", 10, 0.002, 80.0, alpha_bar=alpha_bar)):
        x = _start(mix, 16, float(sigmas[0]))
        ddim = samplers.sample_ddim(mix, x.clone(), sigmas, eta=0.0)
        euler = samplers.sample_euler(mix, x.clone(), sigmas)
        torch.testing.assert_close(ddim, euler, rtol=1e-10, atol=1e-10)


def test_unipc_predictor_alone_is_dpm_solver_pp():
    """Without the corrector, UniP-2 (bh2) is DPM-Solver++(2M)."""
    mix = mixtures.make_problem("mixture-2d")
    sigmas = schedules.karras_sigmas(12, 0.002, 80.0)
    x = _start(mix, 16, 80.0)
    torch.testing.assert_close(samplers.sample_unipc(mix, x.clone(), sigmas, corrector=False),
                               samplers.sample_dpmpp_2m(mix, x.clone(), sigmas), rtol=1e-9, atol=1e-9)


def test_exact_mixture_denoiser_is_tweedie():
    mix = mixtures.make_problem("mixture-64d")
    x = _start(mix, 8, 0.7)
    sigma = 0.7
    xg = x.clone().requires_grad_(True)
    (score,) = torch.autograd.grad(mix.log_prob(xg, sigma).sum(), xg)
    torch.testing.assert_close(mix(x, sigma), x + sigma**2 * score, rtol=1e-9, atol=1e-9)
    # one level per sample (the [B, K, d] path) agrees with one level per call (the matmul path)
    levels = torch.tensor([0.01, 0.1, 0.3, 0.7, 1.0, 3.0, 10.0, 80.0], dtype=torch.float64)
    per_row = torch.cat([mix(x[i:i + 1], float(levels[i])) for i in range(8)])
    torch.testing.assert_close(mix(x, levels), per_row, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("label", list(STOCHASTIC))
def test_stochastic_sampler_recovers_mixture_moments_and_weights(label):
    name, steps, options = STOCHASTIC[label]
    mix = mixtures.GaussianMixture([0.2, 0.3, 0.5], [[-1.0, 0.0], [1.0, 0.5], [0.0, -1.0]],
                              [[0.1, 0.05], [0.05, 0.2], [0.2, 0.1]])
    n = 4000
    g = torch.Generator().manual_seed(1)
    x = torch.randn(n, 2, generator=g, dtype=torch.float64) * 80.0
    out = generation.get_sampler(name)(mix, x, schedules.karras_sigmas(steps, 0.002, 80.0),
                                     generator=g, **options)
    cov = mix.covariance()
    # Standard errors of the sample mean, covariance (Gaussian approximation) and weights.
    mean_z = (out.mean(0) - mix.mean()) / (cov.diag() / n).sqrt()
    cov_se = ((cov.diag()[:, None] * cov.diag()[None] + cov**2) / n).sqrt()
    cov_z = (torch.cov(out.T) - cov) / cov_se
    weights = torch.bincount(mix.responsibilities(out).argmax(1), minlength=3).double() / n
    weight_z = (weights - mix.weights) / (mix.weights * (1 - mix.weights) / n).sqrt()
    assert mean_z.abs().max() < 4.5, mean_z
    assert cov_z.abs().max() < 5.0, cov_z
    assert weight_z.abs().max() < 4.5, weight_z


def test_heun_without_churn_is_deterministic_and_churn_uses_generator():
    mix = mixtures.make_problem("mixture-2d")
    sigmas = schedules.karras_sigmas(8, 0.002, 80.0)
    x = _start(mix, 32, 80.0)
    a = samplers.sample_heun(mix, x.clone(), sigmas, generator=torch.Generator().manual_seed(0))
    b = samplers.sample_heun(mix, x.clone(), sigmas, generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(a, b)
    c = samplers.sample_heun(mix, x.clone(), sigmas, generator=torch.Generator().manual_seed(0),
                             s_churn=10.0)
    d = samplers.sample_heun(mix, x.clone(), sigmas, generator=torch.Generator().manual_seed(0),
                             s_churn=10.0)
    torch.testing.assert_close(c, d)
    assert not torch.allclose(a, c)


def test_ddpm_trained_network_runs_in_every_sampler():
    torch.manual_seed(0)
    net = UNet(UNetConfig(channels=8, channel_mult=(1, 2), attention_resolutions=(), groups=4,
                          attention_head_channels=8), DataShape(1, (8, 8)))
    torch.nn.init.normal_(net.out.weight, std=0.02)  # non-zero output so the network matters
    denoiser = Denoiser(net, "eps", alpha_bar=schedules.make_alpha_bar("linear", 100)).eval()
    for name in generation.SAMPLERS:
        calls = []
        out = generation.sample(denoiser, (2, 1, 8, 8), sampler=name, steps=3,
                                 generator=torch.Generator().manual_seed(0),
                                 callback=lambda i, *rest: calls.append(i))
        assert out.shape == (2, 1, 8, 8) and torch.isfinite(out).all(), name
        assert calls == [0, 1, 2], (name, calls)


def test_vp_sde_is_the_continuous_limit_of_linear_ddpm():
    """Song et al. 2021, App. B: beta_min = 0.1, beta_max = 20 is the T -> infinity limit of DDPM's
    linear schedule (betas 1e-4..0.02 at T = 1000, scaled by 1000/T)."""
    vp = sde.VPSDE()
    T = 100_000
    sigmas = schedules.sigma_from_alpha_bar(schedules.make_alpha_bar("linear", T))
    for t in (0.01, 0.1, 0.5, 1.0):
        assert vp.sigma(t) == pytest.approx(float(sigmas[round(t * T) - 1]), rel=1e-3)
    ve = sde.VESDE(0.01, 50.0)
    grid = sde.sde_sigmas(ve, 5, t_min=0.0)  # uniform in t: geometric in sigma, then 0
    torch.testing.assert_close(grid, torch.tensor([50.0, 50.0 ** 0.75 * 0.01 ** 0.25, math.sqrt(0.5),
                                                   50.0 ** 0.25 * 0.01 ** 0.75, 0.01, 0.0],
                                                  dtype=torch.float64))
    for process in (vp, sde.VESDE()):
        for sigma in (0.05, 1.0, 40.0):
            assert process.sigma(process.t_of_sigma(sigma)) == pytest.approx(sigma, rel=1e-9)


def test_bad_names_and_options_give_clear_errors():
    with pytest.raises(ValueError, match="unknown sampler 'nope'.*dpmpp-2m"):
        generation.get_sampler("nope")
    mix = mixtures.make_problem("gaussian-2d")
    sigmas = schedules.karras_sigmas(4, 0.002, 80.0)
    x = _start(mix, 4, 80.0)
    with pytest.raises(ValueError, match="s_churn=-1 must be >= 0"):
        samplers.sample_heun(mix, x, sigmas, s_churn=-1)
    with pytest.raises(ValueError, match="snr=0 must be > 0"):
        sde.sample_pc(mix, x, sigmas, snr=0)
    with pytest.raises(ValueError, match="unknown SDE 'xx'"):
        sde.sample_euler_maruyama(mix, x, sigmas, sde="xx")
    with pytest.raises(ValueError, match="order=4 must be 1, 2 or 3"):
        samplers.sample_unipc(mix, x, sigmas, order=4)
    with pytest.raises(ValueError, match="unknown toy problem"):
        mixtures.make_problem("mixture-3d")
