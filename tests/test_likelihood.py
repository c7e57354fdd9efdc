"""Likelihood through the probability-flow ODE against the closed-form density of Gaussians and
Gaussian mixtures."""
import math

import pytest
import torch

from difflab.diffusion import mixtures, likelihood, schedules
from difflab.diffusion.denoiser import Denoiser
from difflab.data.shape import DataShape
from difflab.nets.unet import UNet, UNetConfig


def test_gaussian_nll_matches_analytic_within_one_percent():
    gauss = mixtures.gaussian(torch.linspace(-0.5, 0.5, 16), torch.linspace(0.05, 0.3, 16))
    x, _ = gauss.sample(16, torch.Generator().manual_seed(0))
    bpd = likelihood.nll_bits_per_dim(gauss, x, dequantize_data=False,
                                      generator=torch.Generator().manual_seed(1))
    exact = -gauss.log_prob(x, gauss.sigma_min) / (16 * math.log(2))
    assert exact.mean().abs() > 0.3  # the relative check below is not near zero
    assert (bpd.mean() - exact.mean()).abs() < 0.01 * exact.mean().abs()
    assert ((bpd - exact).abs() < 0.01 * exact.abs().clamp(min=0.3)).all()


@pytest.mark.parametrize("estimator", likelihood.ESTIMATORS)
def test_mixture_nll_is_unbiased_within_sampling_error(estimator):
    mix = mixtures.make_problem("mixture-2d")
    x, _ = mix.sample(1000, torch.Generator().manual_seed(0))
    logp = likelihood.log_likelihood(mix, x, steps=30, estimator=estimator,
                                     generator=torch.Generator().manual_seed(2))
    difference = logp - mix.log_prob(x, mix.sigma_min)
    stderr = difference.std() / math.sqrt(x.shape[0])
    assert difference.mean().abs() < 4 * stderr + 0.02, (difference.mean(), stderr)


def test_dequantization_stays_in_the_pixel_bin():
    y = torch.arange(256, dtype=torch.float32).reshape(1, 1, 16, 16)
    x0 = y / 127.5 - 1
    x = likelihood.dequantize(x0, torch.Generator().manual_seed(0))
    assert torch.equal(torch.floor((x.double() + 1) * 128), y.double())


def test_nll_runs_for_a_trained_network_and_validates_input():
    net = UNet(UNetConfig(channels=8, channel_mult=(1, 2), attention_resolutions=(), groups=4,
                          attention_head_channels=8), DataShape(1, (8, 8)))
    denoiser = Denoiser(net, "eps", alpha_bar=schedules.make_alpha_bar("linear", 100)).eval()
    images = torch.rand(3, 1, 8, 8) * 2 - 1
    result = likelihood.evaluate_nll(denoiser, images, batch_size=2, steps=2)
    assert result["nll_images"] == 3 and math.isfinite(result["nll_bpd"])
    with pytest.raises(ValueError, match="sigma_min < sigma_max"):
        likelihood.log_likelihood(denoiser, images, sigma_min=1.0, sigma_max=0.5)
    with pytest.raises(ValueError, match="unknown trace estimator 'x'"):
        likelihood.log_likelihood(denoiser, images, estimator="x")


def test_eval_nll_command_on_a_checkpoint(tmp_path, data_dir, capsys):
    from difflab import cli
    from difflab.training.checkpoint import save_checkpoint
    from difflab.config import TrainConfig, update, validate
    from difflab.diffusion.denoiser import build_denoiser

    config = validate(update(TrainConfig(), {"net": {"channels": 8, "groups": 4,
                                                     "attention_head_channels": 8}}))
    shape = DataShape(1, (28, 28), 10)
    net = build_denoiser(config, shape).net
    save_checkpoint(tmp_path, 1, config.to_dict(),
                    {f"model.{k}": v for k, v in net.state_dict().items()}, {"shape": shape.to_dict()})
    args = ["eval", str(tmp_path), "--ref", "mnist-test", "--data-dir", str(data_dir), "--nll",
            "--nll-n", "2", "--nll-steps", "1", "--json", str(tmp_path / "nll.json")]
    assert cli.main(args) == 0
    assert "bits/dim (2 images" in capsys.readouterr().out
    assert (tmp_path / "nll.json").exists()
    assert cli.main(args[:-6] + ["--nll-steps", "0"]) == 2
    assert "--nll-n and --nll-steps must be at least 1" in capsys.readouterr().err
