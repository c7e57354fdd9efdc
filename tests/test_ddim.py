"""DDPM/DDIM against exact answers on Gaussian data (DESIGN.md oracles)."""
import math

import pytest
import torch

from difflab.diffusion.generation import get_sampler, sample
from difflab.diffusion.guidance import guided
from difflab.diffusion.samplers import sample_ddim, sample_ddpm, sample_euler
from difflab.diffusion.schedules import karras_sigmas, make_alpha_bar, sigma_grid

MU, S = 0.5, 0.8  # x0 ~ N(MU, S^2 I)


def gaussian_denoiser(x, sigma, cond=None):
    """Exact E[x0 | x] for Gaussian data: mu + s^2 / (s^2 + sigma^2) (x - mu)."""
    sigma = torch.as_tensor(sigma, dtype=x.dtype).reshape(-1, *([1] * (x.dim() - 1)))
    return MU + S**2 / (S**2 + sigma**2) * (x - MU)


def ode_solution(x_start, sigma_start, sigma_end):
    """Closed-form probability-flow ODE: x(sigma) - mu = sqrt((s^2+sigma^2)/(s^2+sigma_max^2)) (x_max - mu)."""
    return MU + math.sqrt((S**2 + sigma_end**2) / (S**2 + sigma_start**2)) * (x_start - MU)


@pytest.mark.parametrize("grid", ["karras", "ddpm"])
def test_ddim_eta0_matches_closed_form_ode(grid):
    """Per sample, DDIM(eta=0) follows x - mu = gain (x_start - mu) with the exact ODE gain, and the
    relative error of the gain halves as the number of steps doubles (first order)."""
    g = torch.Generator().manual_seed(0)
    ab = make_alpha_bar("linear", 1000)
    errors = []
    for n in (25, 50, 100, 200):
        sigmas = sigma_grid(grid, n, 0.002, 80.0, alpha_bar=ab)
        sigmas = sigmas[:-1]  # stop at the smallest positive level
        x = torch.randn(256, 4, generator=g, dtype=torch.float64) * sigmas[0]
        out = sample_ddim(gaussian_denoiser, x, sigmas)
        exact = ode_solution(x, float(sigmas[0]), float(sigmas[-1]))
        exact_gain = (exact - MU) / (x - MU)
        error = ((out - MU) / (x - MU) / exact_gain - 1).abs()
        assert error.max() - error.min() < 1e-9  # the same relative error for every sample
        torch.testing.assert_close(out, exact, rtol=0, atol=error.max().item() * (x - MU).abs().max().item() + 1e-12)
        errors.append(error.max().item())
    assert errors[-1] < 0.02
    for coarse, fine in zip(errors, errors[1:]):
        assert 1.6 < coarse / fine < 2.6  # first order: doubling the steps halves the error


def test_ddim_eta0_equals_euler():
    sigmas = karras_sigmas(12, 0.002, 80.0)
    x = torch.randn(64, 3, dtype=torch.float64) * 80
    torch.testing.assert_close(sample_ddim(gaussian_denoiser, x, sigmas),
                               sample_euler(gaussian_denoiser, x, sigmas))


def test_ddim_eta1_is_ddpm_ancestral():
    """Same grid, same generator: DDIM(eta=1) and Ho et al.'s posterior sampler coincide."""
    ab = make_alpha_bar("cosine", 1000)
    sigmas = sigma_grid("ddpm", 40, 0, 0, alpha_bar=ab)
    x = torch.randn(128, 5, dtype=torch.float64) * sigmas[0]
    out_ddim = sample_ddim(gaussian_denoiser, x, sigmas, generator=torch.Generator().manual_seed(3), eta=1.0)
    out_ddpm = sample_ddpm(gaussian_denoiser, x, sigmas, generator=torch.Generator().manual_seed(3))
    torch.testing.assert_close(out_ddim, out_ddpm, atol=1e-9, rtol=1e-9)


def test_stochastic_samplers_recover_the_gaussian():
    ab = make_alpha_bar("linear", 1000)
    sigmas = sigma_grid("ddpm", 1000, 0, 0, alpha_bar=ab)  # the full trained chain
    g = torch.Generator().manual_seed(5)
    x = torch.randn(20_000, 2, generator=g, dtype=torch.float64) * sigmas[0]
    for out in (sample_ddpm(gaussian_denoiser, x, sigmas, generator=g),
                sample_ddim(gaussian_denoiser, x, sigmas, generator=g, eta=0.5)):
        assert out.mean().item() == pytest.approx(MU, abs=0.02)
        assert out.std().item() == pytest.approx(S, rel=0.02)


def test_sample_front_door_and_guidance():
    class Toy(torch.nn.Module):
        sigma_min, sigma_max, alpha_bar = 0.002, 80.0, None

        def forward(self, x, sigma, cond=None):
            base = gaussian_denoiser(x, sigma)
            return base if cond is None else base + (cond[:, None] >= 0).to(x.dtype)

    g = torch.Generator().manual_seed(0)
    out = sample(Toy(), (8, 2), "ddim", 10, generator=g)
    assert out.shape == (8, 2) and torch.isfinite(out).all()
    # guidance w extrapolates: D_w = D_null + w (D_cond - D_null) = D_null + w
    D = guided(Toy(), 3.0)
    x = torch.zeros(4, 2)
    torch.testing.assert_close(D(x, 1.0, torch.zeros(4, dtype=torch.long)) - D(x, 1.0, None),
                               torch.full((4, 2), 3.0))
    with pytest.raises(ValueError, match="unknown sampler 'bogus'"):
        get_sampler("bogus")
