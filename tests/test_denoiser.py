"""Forward-process moments and the Denoiser contract across parameterizations."""
import pytest
import torch

from difflab.diffusion.denoiser import Denoiser, preconditioning, q_sample
from difflab.diffusion.loss import denoising_loss, loss_weight
from difflab.data.shape import DataShape
from difflab.nets.unet import UNet, UNetConfig
from difflab.diffusion.schedules import make_alpha_bar, sigma_from_alpha_bar


def test_forward_process_moments():
    g = torch.Generator().manual_seed(0)
    x0 = torch.tensor([0.7, -0.3]).repeat(100_000, 1)
    ab = torch.full((100_000,), 0.36, dtype=torch.float64)
    x_t = q_sample(x0, ab, torch.randn(x0.shape, generator=g))
    torch.testing.assert_close(x_t.mean(0), 0.6 * torch.tensor([0.7, -0.3]), atol=0.01, rtol=0)
    torch.testing.assert_close(x_t.var(0), torch.tensor([0.64, 0.64]), atol=0.01, rtol=0)


def test_vp_and_ve_forms_are_one_process():
    """x_t = sqrt(ab) x0 + sqrt(1-ab) eps equals (x0 + sigma eps) / sqrt(1 + sigma^2)."""
    ab = make_alpha_bar("linear", 1000)[[10, 500, 990]]
    sigma = sigma_from_alpha_bar(ab).float()
    x0, eps = torch.randn(3, 4), torch.randn(3, 4)
    ve = (x0 + sigma[:, None] * eps) / (1 + sigma[:, None] ** 2).sqrt()
    torch.testing.assert_close(q_sample(x0, ab, eps), ve)


class TargetNet(torch.nn.Module):
    """A 'perfect' network: outputs the exact target of its parameterization."""

    def __init__(self, parameterization, x0, noise, sigma, sigma_data):
        super().__init__()
        self.p, self.x0, self.noise, self.sigma, self.sigma_data = \
            parameterization, x0, noise, sigma, sigma_data

    def forward(self, x_in, c_noise, cond):
        s = self.sigma[:, None]
        if self.p == "eps":
            return self.noise
        if self.p == "x0":
            return self.x0
        if self.p == "v":  # Salimans & Ho 2022: v = alpha eps - sigma_vp x0
            a = (1 + s**2).rsqrt()
            return a * self.noise - s * a * self.x0
        c_skip, c_out, _ = preconditioning("edm", s, self.sigma_data)
        return (self.x0 - c_skip * (self.x0 + s * self.noise)) / c_out


@pytest.mark.parametrize("parameterization", ["eps", "x0", "v", "edm"])
def test_parameterizations_agree_on_the_exact_target(parameterization):
    g = torch.Generator().manual_seed(1)
    x0, noise = torch.randn(5, 3, generator=g), torch.randn(5, 3, generator=g)
    sigma = torch.tensor([0.01, 0.3, 1.0, 5.0, 40.0])
    net = TargetNet(parameterization, x0, noise, sigma, 0.5)
    D = Denoiser(net, parameterization, sigma_data=0.5)
    torch.testing.assert_close(D(x0 + sigma[:, None] * noise, sigma), x0, atol=2e-4, rtol=1e-4)


@pytest.mark.parametrize("parameterization", ["eps", "x0", "v", "edm"])
def test_uniform_weighting_is_mse_on_the_networks_target(parameterization):
    """lambda(sigma) ||D - x0||^2 = ||F - F_target||^2 for the natural weight."""
    torch.manual_seed(0)
    net = UNet(UNetConfig(channels=8, channel_mult=(1, 2), attention_resolutions=(), groups=4),
               DataShape(1, (8, 8)))
    D = Denoiser(net, parameterization)
    x0, noise, sigma = torch.randn(4, 1, 8, 8), torch.randn(4, 1, 8, 8), torch.tensor([0.1, 0.5, 2.0, 10.0])
    x = x0 + sigma[:, None, None, None] * noise
    c_skip, c_out, c_in = (c[:, None, None, None] for c in preconditioning(parameterization, sigma, 0.5))
    F = net(x * c_in, sigma.log() / 4, None)
    target = (x0 - c_skip * x) / c_out
    expected = (F - target).square().flatten(1).mean(1).mean()
    loss = denoising_loss(D, x0, sigma, noise)
    torch.testing.assert_close(loss, expected, rtol=1e-4, atol=1e-6)


def test_min_snr_weight_caps_at_gamma():
    D = Denoiser(torch.nn.Identity(), "eps")
    w = loss_weight(D, torch.tensor([0.1, 1.0, 10.0]), "min-snr", 5.0)
    torch.testing.assert_close(w, torch.tensor([5.0, 1.0, 0.01]))
    with pytest.raises(ValueError, match="unknown loss weighting 'snr'"):
        loss_weight(D, torch.ones(1), "snr")


def test_unet_shapes_and_classes():
    net = UNet(UNetConfig(channels=16), DataShape(1, (28, 28), 10))
    out = net(torch.randn(3, 1, 28, 28), torch.zeros(3), torch.tensor([0, 9, -1]))
    assert out.shape == (3, 1, 28, 28)
    with pytest.raises(ValueError, match="cannot be halved"):
        UNetConfig(channel_mult=(1, 2, 2, 2)).validate(DataShape(1, (14, 14)))
    with pytest.raises(ValueError, match="unknown parameterization 'score'"):
        Denoiser(net, "score")


def test_patched_unet_is_the_plain_unet_on_the_space_to_depth_image():
    """patch_size p: the U-Net of p^2 C channels at H/p, between pixel_unshuffle and pixel_shuffle
    (the same weights, drawn in the same order), exactly; and the sizes it refuses."""
    config = dict(channels=16, channel_mult=(1, 2), attention_resolutions=(7,), groups=4)
    torch.manual_seed(3)
    patched = UNet(UNetConfig(patch_size=2, **config), DataShape(1, (28, 28), 10))
    torch.manual_seed(3)
    plain = UNet(UNetConfig(**config), DataShape(4, (14, 14), 10))
    for p in (*patched.parameters(), *plain.parameters()):
        p.data.normal_(0, 0.05, generator=torch.Generator().manual_seed(p.numel()))
    x, c_noise, label = torch.randn(3, 1, 28, 28), torch.randn(3), torch.tensor([0, 9, -1])
    expected = torch.nn.functional.pixel_shuffle(
        plain(torch.nn.functional.pixel_unshuffle(x, 2), c_noise, label), 2)
    assert torch.allclose(patched(x, c_noise, label), expected, atol=1e-6)
    with pytest.raises(ValueError, match="net.patch_size=3 does not divide the image size 28"):
        UNetConfig(patch_size=3).validate(DataShape(1, (28, 28)))
    with pytest.raises(ValueError, match="cannot be halved"):  # 28 / 2 = 14 -> 7 -> odd
        UNetConfig(patch_size=2, channel_mult=(1, 2, 2)).validate(DataShape(1, (28, 28)))
    with pytest.raises(ValueError, match="net.patch_size=0 must be at least 1"):
        UNetConfig(patch_size=0).validate()
