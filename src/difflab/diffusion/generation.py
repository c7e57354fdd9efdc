"""The one generation path: N samples from a denoiser, in batches, with the class labels, the
sampler, the sigma grid, guidance, seed, device and precision as arguments.

Training's sample grids, the end-of-run report, ``difflab sample``, ``difflab eval`` of a run and
``difflab.load(...).sample`` all call :func:`generate`; defaults come from the run's
``sample`` config section (``SampleConfig``) where the caller has one.
"""
from __future__ import annotations

import math
import time

import torch

from difflab.device import autocast, model_device
from difflab.diffusion.guidance import guided
from difflab.diffusion.samplers import (noise_like, sample_ddim, sample_ddpm, sample_dpmpp_2m,
                                        sample_dpmpp_3m, sample_euler, sample_generators,
                                        sample_heun, sample_unipc)
from difflab.diffusion.schedules import sigma_grid
from difflab.diffusion.sde import sample_ald, sample_euler_maruyama, sample_pc
from difflab.memory import machine_memory
from difflab.options import ODE_SAMPLERS, check_seed, check_steps, is_integer

SAMPLERS = {"ddim": sample_ddim, "ddpm": sample_ddpm, "euler": sample_euler, "heun": sample_heun,
            "dpmpp-2m": sample_dpmpp_2m, "dpmpp-3m": sample_dpmpp_3m, "unipc": sample_unipc,
            "euler-maruyama": sample_euler_maruyama, "pc": sample_pc, "ald": sample_ald}
# grid "auto" without an optimized grid, at most AUTO_FEW_NFE evaluations per sample: log-SNR
# spacing whose last positive level is AUTO_LAST_SIGMA, then a final Tweedie step x = D(x; sigma)
# to 0 (chosen on BENCHMARKS.md, "Few-step sampling": exact-score mixtures and the MNIST model)
AUTO_FEW_NFE = 10
AUTO_LAST_SIGMA = 0.03
GRID_TOLERANCE = 1e-3  # relative: how far an explicit grid's ends may lie from the model's range


def check_sample_memory(n: int, item_shape) -> None:
    """ValueError if ``n`` float32 samples (kept twice while batches are joined) would need more
    than half of this machine's memory: refuse before allocating, rather than be killed."""
    need = 8 * n * math.prod(item_shape)
    memory = machine_memory()
    if memory is not None and need > memory // 2:
        raise ValueError(f"n={n}: {n} samples of shape {tuple(item_shape)} need "
                         f"{need / 2**30:.1f} GiB, more than half of this machine's "
                         f"{memory / 2**30:.0f} GiB; draw them in several calls")


def get_sampler(name: str):
    """The sampler function called ``name``; ValueError listing the valid names otherwise."""
    if name not in SAMPLERS:
        raise ValueError(f"unknown sampler {name!r} (choose from {', '.join(SAMPLERS)})")
    return SAMPLERS[name]


def nfe_of(sampler: str, steps: int) -> int:
    """Network evaluations per sample of ``steps`` steps ending at sigma = 0 (Heun: 2 per step,
    1 for the last), without guidance (which doubles them)."""
    return 2 * steps - 1 if sampler == "heun" else steps


def model_sigmas(denoiser, steps: int, grid=None, sampler: str | None = None) -> torch.Tensor:
    """The sigma grid of ``steps`` steps for a denoiser: ``grid`` by name, or an explicit grid (a
    decreasing sequence of steps + 1 levels ending in 0, e.g. an optimized one), or by default
    (None) the trained DDPM grid for DDPM-trained models and the Karras grid otherwise.
    ``"auto"`` (a run's optimized grid is resolved by the caller, ``difflab.runs``): for the
    deterministic ``sampler`` s at <= AUTO_FEW_NFE evaluations, log-SNR down to AUTO_LAST_SIGMA
    and a final Tweedie step; else the default. An explicit grid must start at the model's
    sigma_max (the start noise is drawn there) and keep its positive levels in [sigma_min,
    sigma_max], where the network was trained (both within GRID_TOLERANCE)."""
    steps = check_steps(steps)
    alpha_bar = getattr(denoiser, "alpha_bar", None)
    sigma_min, sigma_max = denoiser.sigma_min, denoiser.sigma_max
    if grid is not None and not isinstance(grid, str):
        sigmas = torch.as_tensor(grid, dtype=torch.float64).reshape(-1)
        if len(sigmas) != steps + 1 or sigmas[-1] != 0 or not (sigmas[1:] < sigmas[:-1]).all():
            raise ValueError(f"an explicit sigma grid for {steps} steps must hold {steps + 1} "
                             f"decreasing levels ending in 0, got {sigmas.tolist()}")
        # decreasing from a first level at sigma_max: every level is within the range if the
        # last positive one is
        if abs(sigmas[0] - sigma_max) > GRID_TOLERANCE * sigma_max \
                or sigmas[-2] < sigma_min * (1 - GRID_TOLERANCE):
            raise ValueError(f"an explicit sigma grid must start at the model's sigma_max "
                             f"{sigma_max:g} and keep its levels in [{sigma_min:g}, "
                             f"{sigma_max:g}]; this one runs from {float(sigmas[0]):g} to "
                             f"{float(sigmas[-2]):g} (made for another model?)")
        return sigmas
    if grid == "auto":
        few = sampler in ODE_SAMPLERS and nfe_of(sampler, steps) <= AUTO_FEW_NFE
        grid = "log-snr" if few and max(sigma_min, AUTO_LAST_SIGMA) < sigma_max else None
        sigma_min = max(sigma_min, AUTO_LAST_SIGMA) if few else sigma_min
    if grid is None:
        grid = "ddpm" if alpha_bar is not None else "karras"
    return sigma_grid(grid, steps, sigma_min, sigma_max, alpha_bar=alpha_bar)


@torch.no_grad()
def sample(denoiser, shape, sampler: str = "ddim", steps: int = 50, grid=None,
           cond: torch.Tensor | None = None, generator=None,
           guidance_scale: float = 1.0, callback=None, **options) -> torch.Tensor:
    """One batch of ``shape`` from a denoiser: build the sigma grid, draw the start noise on the
    denoiser's device (scaled by the first sigma) and run the named sampler with guidance.
    ``generator``: one torch.Generator, or a list of one per sample (``samplers.noise_like``)."""
    fn = get_sampler(sampler)
    sigmas = model_sigmas(denoiser, steps, grid, sampler)
    device = model_device(denoiser) if isinstance(denoiser, torch.nn.Module) else torch.device("cpu")
    x = noise_like(torch.empty(shape, device=device), generator) * float(sigmas[0])
    return fn(guided(denoiser, guidance_scale), x, sigmas, cond=cond, generator=generator,
              callback=callback, **options)


def check_class_label(class_label: int | None, num_classes: int, name: str = "class label"):
    """ValueError unless ``class_label`` is None or one of the model's classes."""
    if class_label is not None and not 0 <= class_label < max(num_classes, 1):
        classes = f"{num_classes} classes (0-{num_classes - 1})" if num_classes else "no classes"
        raise ValueError(f"{name} {class_label}: the model has {classes}")


def class_labels(start: int, count: int, num_classes: int, class_label: int | None = None):
    """Labels of samples start..start+count-1: ``class_label`` for all, else cycling 0..K-1;
    None for an unconditional model."""
    if not num_classes:
        return None
    if class_label is not None:
        return torch.full((count,), class_label)
    return torch.arange(start, start + count) % num_classes


@torch.no_grad()
def generate(denoiser, item_shape, num_classes: int, n: int, *, sampler: str, steps: int,
             grid=None, guidance: float = 1.0, seed: int = 0,
             batch_size: int = 250, class_label: int | None = None, precision: str = "fp32",
             start: int = 0, progress=None, **options) -> torch.Tensor:
    """Samples ``start`` .. ``start + n - 1`` in [-1, 1], float32, shape ``[n, *item_shape]``, on
    the denoiser's device.

    Sample i draws all its noise from its own generator, seeded by (``seed``, i)
    (``samplers.sample_generators``), and has class label i mod K (or ``class_label``): its noise
    does not depend on the batch, the call or the process that draws it. Ranges drawn apart (e.g. by the ranks of ``torchrun
    ... difflab sample``) join into the samples of one call: bit for bit when every range starts
    at a multiple of ``batch_size`` (the batches are then the same), else up to float rounding
    (some kernels' results depend on the batch size in the last bits). ``precision`` is a
    resolved precision ('bf16' or 'fp32', see ``difflab.device``); guidance applies to
    conditional models; ``progress(done, seconds)``, if given, is called after every batch.
    Raises ValueError if any sample is not finite."""
    get_sampler(sampler)
    steps, seed = check_steps(steps), check_seed(seed)
    if not all(map(is_integer, (n, batch_size, start))) or n < 1 or batch_size < 1:
        raise ValueError(f"n and batch_size must be integers >= 1, got {n!r} and {batch_size!r}")
    if start < 0:
        raise ValueError(f"start (the first sample index) must be >= 0, got {start}")
    check_sample_memory(n, item_shape)
    if not math.isfinite(guidance) or guidance < 0:
        raise ValueError(f"guidance must be a finite number >= 0, got {guidance}")
    check_class_label(class_label, num_classes)
    device = model_device(denoiser)
    was_training = denoiser.training
    denoiser.eval()
    chunks, started = [], time.perf_counter()
    try:
        for first in range(start, start + n, batch_size):
            count = min(batch_size, start + n - first)
            cond = class_labels(first, count, num_classes, class_label)
            cond = None if cond is None else cond.to(device)
            with autocast(device, precision):
                chunks.append(sample(denoiser, (count, *item_shape), sampler, steps, grid, cond=cond,
                                     generator=sample_generators(seed, first, count, device),
                                     guidance_scale=guidance if num_classes else 1.0, **options))
            if progress is not None:
                progress(first + count - start, time.perf_counter() - started)
    finally:
        denoiser.train(was_training)
    images = torch.cat(chunks).float()
    if not torch.isfinite(images).all():
        bad = int((~torch.isfinite(images.flatten(1))).any(1).sum())
        raise ValueError(f"{bad} of {n} samples contain NaN or inf (check the guidance scale, "
                         "diffusion.sigma_max and whether the weights are finite)")
    return images.clamp(-1, 1)
