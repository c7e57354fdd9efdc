"""DiT denoiser network (difflab.nets.dit): shapes, adaLN-Zero start, null class, fixed positional
embeddings, U-ViT long skips, a short training run and generation through the Denoiser."""
import copy
import dataclasses

import pytest
import torch
import torch.nn.functional as F

from difflab.data.shape import DataShape
from difflab.diffusion.denoiser import PARAMETERIZATIONS, Denoiser, preconditioning
from difflab.nets.dit import DiT, DiTConfig

SMALL = dict(width=32, depth=2, heads=2)


def n_params(net) -> int:
    return sum(p.numel() for p in net.parameters())


def perturbed(net, seed=1):
    """The net with every parameter moved off its initial value, so that F is no longer zero."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in net.parameters():
            p.add_(0.1 * torch.randn(p.shape, generator=g))
    return net


@pytest.mark.parametrize("channels,size,classes,patch", [
    (1, (28, 28), 10, 2), (1, (28, 28), 0, 4), (3, (32, 32), 10, 2), (1, (8, 12), 10, 2),
    (1, (8, 12), 0, 2)])
def test_output_shapes(channels, size, classes, patch):
    net = perturbed(DiT(DiTConfig(patch=patch, **SMALL), DataShape(channels, size, classes)))
    x, c_noise = torch.randn(3, channels, *size), torch.randn(3)
    conds = [None] + ([torch.tensor([0, 5, 9]), torch.tensor([-1, 2, -1])] if classes else [])
    for cond in conds:
        out = net(x, c_noise, cond)
        assert out.shape == x.shape and torch.isfinite(out).all()
    assert net.pos.shape == (size[0] // patch * size[1] // patch, 32)
    with torch.autocast("cpu", dtype=torch.bfloat16):  # the bf16 training/generation path
        assert torch.isfinite(net(x, c_noise, conds[-1]).float()).all()


def test_unpatchify_inverts_the_patch_layout():
    net = DiT(DiTConfig(patch=2, **SMALL), DataShape(3, (8, 12), 0))
    x = torch.randn(2, 3, 8, 12)
    tokens = F.unfold(x, 2, stride=2).transpose(1, 2)  # [B, h*w, C*p*p], row-major tokens
    assert torch.equal(net.unpatchify(tokens), x)


def test_validation_names_the_field():
    mnist = DataShape(1, (28, 28), 10)
    with pytest.raises(ValueError, match=r"^net\.patch=3 must divide both image sides"):
        DiT(DiTConfig(patch=3), mnist)
    assert DiTConfig(patch=4).validate(mnist).patch == 4 and DiTConfig(patch=3).validate() is not None
    bad = {r"net\.width=30 must be divisible by net\.heads=4": dict(width=30),
           r"net\.depth=0 must be a positive": dict(depth=0),
           r"net\.heads=-1 must be a positive": dict(heads=-1),
           r"net\.patch=0 must be a positive": dict(patch=0),
           r"net\.dropout=1\.0 must be in \[0, 1\)": dict(dropout=1.0),
           r"net\.mlp_ratio=0\.0 must be positive": dict(mlp_ratio=0.0),
           r"net\.long_skips=True needs net\.depth >= 2": dict(long_skips=True, depth=1)}
    for message, fields in bad.items():
        with pytest.raises(ValueError, match=message):
            DiTConfig(**fields).validate()
    with pytest.raises(ValueError, match=r"net\.kind=dit needs 2-D images"):
        DiTConfig().validate(DataShape(1, (64,), 0))
    # config values arrive as JSON-typed fields (difflab.config coerces by annotation text)
    assert {str(f.type) for f in dataclasses.fields(DiTConfig)} <= {"str", "int", "float", "bool"}
    assert DiTConfig().to_dict()["kind"] == "dit"


def test_factory_and_config_coercion():
    """Through the factory (nets.NET_CONFIGS, build_net) and difflab.config."""
    from difflab import nets
    from difflab.config import ConfigError, TrainConfig, parse_overrides, update

    config = update(TrainConfig(), parse_overrides(["net.kind=dit", "net.patch=4", "net.width=64",
                                                    "net.long_skips=true", "net.mlp_ratio=2"]))
    assert config.net == DiTConfig(patch=4, width=64, long_skips=True, mlp_ratio=2.0)
    net = nets.build_net(config.net, DataShape(1, (28, 28), 10))
    assert isinstance(net, DiT) and len(net.skips) == 3
    with pytest.raises(ValueError, match=r"net\.patch=3"):
        nets.build_net(DiTConfig(patch=3), DataShape(1, (28, 28), 10))
    with pytest.raises(ConfigError, match=r"net\.depth: expected an integer"):
        update(TrainConfig(), parse_overrides(["net.kind=dit", "net.depth=2.5"]))


@pytest.mark.parametrize("parameterization", PARAMETERIZATIONS)
def test_zero_at_init_so_denoiser_is_the_skip_path(parameterization):
    net = DiT(DiTConfig(patch=2, **SMALL), DataShape(1, (8, 8), 10))
    assert all(not p.any() for b in net.blocks for p in b.ada.parameters())  # adaLN-Zero
    assert not net.out_ada.weight.any() and not net.out.weight.any()
    x, sigma = 2 * torch.randn(4, 1, 8, 8), torch.tensor([0.01, 0.5, 3.0, 80.0])
    assert not net(x, torch.randn(4), torch.tensor([1, -1, 3, 9])).any()
    c_skip, _, _ = preconditioning(parameterization, sigma, 0.5)
    D = Denoiser(net, parameterization)(x, sigma, torch.tensor([1, -1, 3, 9]))
    assert torch.equal(D, c_skip[:, None, None, None] * x)


def test_null_class_and_unconditional_mode():
    shape = DataShape(1, (8, 8), 10)
    net = perturbed(DiT(DiTConfig(patch=2, **SMALL), shape))
    x, c_noise = torch.randn(4, 1, 8, 8), torch.randn(4)
    null = net(x, c_noise, torch.full((4,), -1))
    assert torch.equal(null, net(x, c_noise, None))
    assert torch.equal(net.condition(c_noise, torch.full((4,), -1)),
                       net.condition(c_noise, torch.full((4,), 10)))  # index num_classes
    assert not torch.allclose(null, net(x, c_noise, torch.full((4,), 3)))  # labels matter
    mixed = net(x, c_noise, torch.tensor([3, -1, 3, -1]))
    assert torch.allclose(mixed[1::2], null[1::2], atol=1e-6)

    uncond = DiT(DiTConfig(patch=2, **SMALL), DataShape(1, (8, 8), 0))
    assert uncond.class_emb is None and not any("class" in n for n, _ in uncond.named_parameters())
    assert n_params(net) - n_params(uncond) == 11 * 32  # exactly the (K + 1) x d embedding
    out = perturbed(uncond)(x, c_noise, None)
    assert torch.equal(out, uncond(x, c_noise, torch.tensor([3, -1, 0, 2])))  # labels ignored


def test_positional_embedding_is_fixed_2d_sincos():
    net = DiT(DiTConfig(patch=2, **SMALL), DataShape(1, (8, 12), 0))
    pos = net.pos
    assert "pos" in dict(net.named_buffers()) and not pos.requires_grad
    assert all(p is not pos for p in net.parameters()) and "pos" not in net.state_dict()
    h, w, d = 4, 6, 32
    assert pos.shape == (h * w, d) and pos.abs().max() <= 1
    assert torch.unique(pos, dim=0).shape[0] == h * w  # every token has its own embedding
    grid = pos.reshape(h, w, d)
    assert torch.equal(grid[:, :, : d // 2], grid[:, :1, : d // 2].expand(h, w, d // 2))  # row part
    assert torch.equal(grid[:, :, d // 2:], grid[:1, :, d // 2:].expand(h, w, d // 2))  # column part
    # sin then cos of each coordinate: sin^2 + cos^2 = 1 per frequency; token (0, 0) is [0.., 1..]
    row = grid[:, 0, : d // 2]
    assert torch.allclose(row[:, : d // 4] ** 2 + row[:, d // 4:] ** 2, torch.ones(h, d // 4))
    assert torch.equal(pos[0], torch.tensor(([0.0] * 8 + [1.0] * 8) * 2))
    perturbed(net)
    assert torch.equal(net.pos, pos)  # not touched by parameter updates


@pytest.mark.parametrize("depth", [2, 3, 4])
def test_long_skips(depth):
    shape = DataShape(1, (8, 8), 10)
    plain = DiT(DiTConfig(patch=2, width=32, depth=depth, heads=2), shape)
    skip = DiT(DiTConfig(patch=2, width=32, depth=depth, heads=2, long_skips=True), shape)
    assert len(plain.skips) == 0 and len(skip.skips) == depth // 2
    assert n_params(skip) - n_params(plain) == depth // 2 * (2 * 32 * 32 + 32)  # Linear(2d -> d)
    x, c_noise, cond = torch.randn(2, 1, 8, 8), torch.randn(2), torch.tensor([1, -1])
    assert not skip(x, c_noise, cond).any()  # still zero at initialisation
    out = perturbed(skip)(x, c_noise, cond)
    assert out.shape == x.shape and torch.isfinite(out).all()
    out.square().sum().backward()
    assert all(s.weight.grad.abs().sum() > 0 for s in skip.skips)  # the skips are on the path


@pytest.fixture(scope="module")
def trained():
    """A conditional DiT on scikit-learn digits (1x8x8), EDM preconditioning, 60 AdamW steps:
    (initial denoiser, trained denoiser)."""
    from difflab.data import load_dataset
    from difflab.diffusion.loss import denoising_loss
    from difflab.diffusion.schedules import sample_training_sigma

    torch.manual_seed(0)
    data = load_dataset("digits")
    images, labels = data.images[:-256], data.labels[:-256]
    denoiser = Denoiser(DiT(DiTConfig(patch=2, width=64, depth=2, heads=4),
                            DataShape(1, (8, 8), data.num_classes)), "edm")
    initial = copy.deepcopy(denoiser)
    opt = torch.optim.AdamW(denoiser.parameters(), lr=2e-3)
    g = torch.Generator().manual_seed(0)
    for _ in range(60):
        index = torch.randint(0, images.shape[0], (64,), generator=g)
        keep = torch.rand(64, generator=g) >= 0.1  # label dropout for guidance
        cond = torch.where(keep, labels[index], -1)
        sigma = sample_training_sigma("lognormal", 64, g, p_mean=-1.2, p_std=1.2)
        noise = torch.randn(64, 1, 8, 8, generator=g)
        loss = denoising_loss(denoiser, images[index], sigma, noise, cond)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return initial, denoiser


def test_training_reduces_held_out_loss(trained):
    from difflab.data import load_dataset
    from difflab.diffusion.loss import denoising_loss

    initial, denoiser = trained
    g = torch.Generator().manual_seed(7)
    x0 = load_dataset("digits").images[-256:]
    sigma = torch.logspace(-1.5, 1, 256)
    noise = torch.randn(x0.shape, generator=g)
    with torch.no_grad():
        before = denoising_loss(initial, x0, sigma, noise).item()
        after = denoising_loss(denoiser, x0, sigma, noise).item()
    assert after < 0.6 * before


def test_generation_with_guidance(trained):
    from difflab.diffusion.generation import generate

    samples = generate(trained[1], (1, 8, 8), 10, 4, sampler="heun", steps=3, guidance=2.0)
    assert samples.shape == (4, 1, 8, 8) and torch.isfinite(samples).all()
    assert samples.min() >= -1 and samples.max() <= 1 and samples.std() > 0
    uncond = Denoiser(perturbed(DiT(DiTConfig(patch=2, **SMALL), DataShape(1, (8, 8), 0))), "edm")
    samples = generate(uncond, (1, 8, 8), 0, 2, sampler="heun", steps=3)
    assert samples.shape == (2, 1, 8, 8) and torch.isfinite(samples).all()
