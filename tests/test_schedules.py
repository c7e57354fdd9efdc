"""Schedule identities and the discrete <-> continuous (sigma) view."""
import math

import pytest
import torch

from difflab.diffusion.schedules import (alpha_bar_cosine, alpha_bar_from_sigma, betas_from_alpha_bar,
                               karras_sigmas, make_alpha_bar, sample_training_sigma, sigma_from_alpha_bar,
                               sigma_grid)


@pytest.mark.parametrize("name", ["linear", "cosine", "sigmoid"])
@pytest.mark.parametrize("T", [1000, 5000])
def test_alpha_bar_is_a_valid_schedule(name, T):
    ab = make_alpha_bar(name, T)
    assert ab.shape == (T,) and ab.dtype == torch.float64
    assert (ab > 0).all() and (ab <= 1).all()
    assert (ab[1:] < ab[:-1]).all()  # strictly more noise at every step
    betas = betas_from_alpha_bar(ab)
    assert ((betas > 0) & (betas < 1)).all()
    torch.testing.assert_close(torch.cumprod(1 - betas, 0), ab)  # ab_t = prod (1 - beta_s)
    assert ab[0] > 0.99 and ab[-1] < 0.01  # starts near data, ends near pure noise


def test_linear_betas_match_ho_et_al():
    betas = betas_from_alpha_bar(make_alpha_bar("linear", 1000))
    torch.testing.assert_close(betas, torch.linspace(1e-4, 0.02, 1000, dtype=torch.float64))


@pytest.mark.parametrize("name", ["linear", "cosine", "sigmoid"])
def test_schedules_discretize_one_continuous_process(name):
    """T = 1000 and T = 5000 agree at the same continuous time t/T."""
    a, b = make_alpha_bar(name, 1000), make_alpha_bar(name, 5000)
    for frac in (0.1, 0.3, 0.5, 0.7, 0.9):
        i, j = round(frac * 1000) - 1, round(frac * 5000) - 1
        assert abs(math.log(a[i]) - math.log(b[j])) < 0.02 * abs(math.log(a[i])) + 1e-3


def test_cosine_closed_form():
    s, T = 0.008, 1000
    ab = alpha_bar_cosine(T, s)
    f = lambda t: math.cos((t / T + s) / (1 + s) * math.pi / 2) ** 2  # noqa: E731
    for t in (1, 250, 500, 900):
        assert ab[t - 1].item() == pytest.approx(f(t) / f(0), rel=1e-9)


def test_sigma_alpha_bar_round_trip():
    ab = make_alpha_bar("cosine", 1000)
    sigma = sigma_from_alpha_bar(ab)
    torch.testing.assert_close(alpha_bar_from_sigma(sigma), ab)
    # VP and VE forms describe the same signal-to-noise ratio: SNR = ab / (1 - ab) = 1 / sigma^2
    torch.testing.assert_close(ab / (1 - ab), 1 / sigma**2)


def test_karras_grid_endpoints_and_rho_spacing():
    sigmas = karras_sigmas(10, 0.002, 80.0, rho=7.0)
    assert len(sigmas) == 11 and sigmas[-1] == 0
    assert sigmas[0].item() == pytest.approx(80.0) and sigmas[-2].item() == pytest.approx(0.002)
    roots = sigmas[:-1] ** (1 / 7)
    torch.testing.assert_close(roots[1:] - roots[:-1], (roots[1] - roots[0]).expand(9))


def test_ddpm_grid_uses_trained_levels():
    ab = make_alpha_bar("linear", 1000)
    trained = set(sigma_from_alpha_bar(ab).tolist())
    grid = sigma_grid("ddpm", 50, 0.0, 0.0, alpha_bar=ab)
    assert len(grid) == 51 and grid[-1] == 0
    assert all(s in trained for s in grid[:-1].tolist())
    assert grid[0] == sigma_from_alpha_bar(ab)[-1]  # starts at t = T
    assert (grid[1:] < grid[:-1]).all()


def test_grid_errors_name_the_problem():
    with pytest.raises(ValueError, match="unknown sigma grid 'bogus'"):
        sigma_grid("bogus", 10, 0.002, 80)
    with pytest.raises(ValueError, match="needs the model's alpha_bar"):
        sigma_grid("ddpm", 10, 0.002, 80)
    with pytest.raises(ValueError, match="unknown schedule 'quadratic'"):
        make_alpha_bar("quadratic", 1000)


def test_lognormal_training_density_moments():
    g = torch.Generator().manual_seed(0)
    log_sigma = sample_training_sigma("lognormal", 200_000, g, p_mean=-1.2, p_std=1.2).log()
    assert log_sigma.mean().item() == pytest.approx(-1.2, abs=0.01)
    assert log_sigma.std().item() == pytest.approx(1.2, abs=0.01)
