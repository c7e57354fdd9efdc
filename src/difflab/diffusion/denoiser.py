"""Forward process and the one contract between networks and samplers.

| code      | paper symbol                | meaning                                               |
|-----------|-----------------------------|-------------------------------------------------------|
| x0        | x_0 / y                     | clean data in [-1, 1]                                 |
| x         | x = y + n (Karras et al.)   | VE-form noisy input, n ~ N(0, sigma^2 I)              |
| x_t       | x_t (Ho et al. 2020, eq. 4) | VP-form, x_t = sqrt(ab) x0 + sqrt(1 - ab) eps = x / sqrt(1 + sigma^2) |
| sigma     | sigma                       | noise level                                           |
| sigma_data| sigma_data                  | data standard deviation assumed by EDM preconditioning|
| F         | F_theta                     | the raw network output                                |
| x0_hat    | D_theta(x; sigma)           | the denoiser's estimate of x0                         |

Every model is seen by samplers as ``D(x, sigma, cond) -> x0_hat`` with x in VE form. The
parameterization says what the raw network predicts; all of them are written as Karras et al.
2022, eq. 7: ``D(x) = c_skip x + c_out F(c_in x, c_noise)`` with coefficients from Table 1 (EDM)
or derived from the VP form (eps, x0, v; Salimans & Ho 2022 for v).
"""
from __future__ import annotations

import torch
from torch import nn

from difflab.options import PARAMETERIZATIONS  # noqa: F401 (re-exported)


def q_sample(x0: torch.Tensor, alpha_bar_t: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
    """Closed-form q(x_t | x_0) = N(sqrt(ab) x0, (1 - ab) I) (Ho et al. 2020, eq. 4).
    ``alpha_bar_t`` has shape [B]; returns the VP-form x_t."""
    ab = alpha_bar_t.reshape(-1, *([1] * (x0.dim() - 1))).to(x0.dtype)
    return ab.sqrt() * x0 + (1 - ab).sqrt() * eps


def append_dims(v: torch.Tensor, ndim: int) -> torch.Tensor:
    """[B] -> [B, 1, ..., 1] with ``ndim`` dimensions in all."""
    return v.reshape(-1, *([1] * (ndim - 1)))


def preconditioning(parameterization: str, sigma: torch.Tensor, sigma_data: float = 0.5):
    """(c_skip, c_out, c_in) for D(x) = c_skip x + c_out F(c_in x), all shaped like sigma.

    eps: x0 = x - sigma eps                -> c_skip 1, c_out -sigma
    x0 : x0 = F                            -> c_skip 0, c_out 1
    v  : x0 = a x_t - s v, a = 1/sqrt(1+sigma^2), s = sigma a  -> c_skip a^2, c_out -s
    edm: Karras et al. 2022, Table 1       -> c_skip sd^2/(sigma^2+sd^2), c_out sigma sd/sqrt(sigma^2+sd^2)
    The VP models (eps, x0, v) read c_in = 1/sqrt(1+sigma^2), i.e. x_t; EDM reads 1/sqrt(sigma^2+sd^2).
    """
    if parameterization == "edm":
        norm = (sigma**2 + sigma_data**2).rsqrt()
        return sigma_data**2 * norm**2, sigma * sigma_data * norm, norm
    c_in = (1 + sigma**2).rsqrt()
    if parameterization == "eps":
        return torch.ones_like(sigma), -sigma, c_in
    if parameterization == "x0":
        return torch.zeros_like(sigma), torch.ones_like(sigma), c_in
    if parameterization == "v":
        return c_in**2, -sigma * c_in, c_in
    raise ValueError(f"unknown parameterization {parameterization!r} "
                     f"(choose from {', '.join(PARAMETERIZATIONS)})")


def noise_conditioning(sigma: torch.Tensor) -> torch.Tensor:
    """c_noise = ln(sigma) / 4 (Karras et al. 2022, Table 1), for every parameterization, so any
    network accepts any continuous noise level. sigma is floored at 1e-6 so sigma = 0 stays finite."""
    return sigma.clamp(min=1e-6).log() / 4


class Denoiser(nn.Module):
    """Wrap a raw network ``net(x_in, c_noise, cond) -> F`` as ``D(x, sigma, cond) -> x0_hat``.

    ``sigma`` may be a float or a tensor of shape [B]. The wrapper holds the parameterization,
    ``sigma_data`` and, for DDPM-trained models, the ``alpha_bar`` schedule (as a buffer) so that
    samplers can build the trained grid.
    """

    def __init__(self, net: nn.Module, parameterization: str = "eps", sigma_data: float = 0.5,
                 alpha_bar: torch.Tensor | None = None, sigma_min: float = 0.002,
                 sigma_max: float = 80.0):
        super().__init__()
        preconditioning(parameterization, torch.ones(1), sigma_data)  # validates the name
        self.net = net
        self.parameterization = parameterization
        self.sigma_data = float(sigma_data)
        self.sigma_min = float(sigma_min)
        self.sigma_max = float(sigma_max)
        self.register_buffer("alpha_bar", alpha_bar.double() if alpha_bar is not None else None,
                             persistent=False)

    def forward(self, x: torch.Tensor, sigma, cond: torch.Tensor | None = None) -> torch.Tensor:
        sigma = torch.as_tensor(sigma, dtype=torch.float32, device=x.device)
        if sigma.dim() == 0:
            sigma = sigma.expand(x.shape[0])
        c_skip, c_out, c_in = (append_dims(c, x.dim()) for c in
                               preconditioning(self.parameterization, sigma, self.sigma_data))
        F = self.net(x * c_in, noise_conditioning(sigma), cond)
        return (c_skip * x + c_out * F.to(x.dtype)).to(x.dtype)

    def with_net(self, net: nn.Module) -> "Denoiser":
        """The same wrapper around another network (e.g. the EMA copy)."""
        return Denoiser(net, self.parameterization, self.sigma_data, self.alpha_bar,
                        self.sigma_min, self.sigma_max)

    def natural_weight(self, sigma: torch.Tensor) -> torch.Tensor:
        """The x0-space loss weight under which the loss is plain MSE on the network's own target:
        ||D - x0||^2 * w = ||F - F_target||^2 with w = 1 / c_out^2."""
        _, c_out, _ = preconditioning(self.parameterization, sigma, self.sigma_data)
        return 1 / c_out.square().clamp(min=1e-24)


def build_denoiser(config, shape) -> Denoiser:
    """The Denoiser a ``TrainConfig`` describes, around the network of ``config.net`` built for
    data of ``shape`` (``difflab.data.shape.DataShape``)."""
    from difflab.diffusion.schedules import make_alpha_bar, sigma_from_alpha_bar
    from difflab.nets import build_net

    d = config.diffusion
    alpha_bar = make_alpha_bar(d.schedule, d.timesteps) if d.density == "ddpm" else None
    sigma_min, sigma_max = d.sigma_min, d.sigma_max
    if alpha_bar is not None:  # a DDPM model samples only the levels it was trained on
        sigmas = sigma_from_alpha_bar(alpha_bar)
        sigma_min, sigma_max = float(sigmas[0]), float(sigmas[-1])
    return Denoiser(build_net(config.net, shape), d.parameterization, d.sigma_data, alpha_bar,
                    sigma_min, sigma_max)
