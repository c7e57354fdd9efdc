"""Restoration tasks on a trained model: a task name and its parameter become a measurement
operator, the user's image becomes the measurement y, and a solver samples x with A x = y.

Images enter and leave in [0, 1] (PNG conventions); inside, the model's range [-1, 1]. So the
noise level of ``denoise`` (``sigma``, std of the noise in [0, 1] pixel units) is 2 sigma as the
operator's ``sigma_y``. Masks: nonzero (white) pixels are known, zero (black) pixels are filled.

| task     | operator               | y (what the user gives)                 | default method |
|----------|------------------------|-----------------------------------------|----------------|
| inpaint  | Inpainting(mask)       | the image; pixels under the mask kept   | ddnm           |
| upscale  | Downsample(factor)     | a small image, factor x smaller         | ddnm           |
| denoise  | Identity(sigma_y)      | the noisy image                         | ddrm           |
| deblur   | Blur(std or size)      | the blurred image (noise: 8-bit rounding, or ``sigma``) | ddrm |
| colorize | Grayscale(3 channels)  | a grayscale image, for a colour model   | ddnm           |
| edit     | none (SDEdit)          | a guide image, noised to ``strength``   | sdedit         |
"""
from __future__ import annotations

import torch

from difflab.device import autocast
from difflab.diffusion.generation import check_class_label, model_sigmas
from difflab.diffusion.guidance import guided
from difflab.restoration.operators import Blur, Downsample, Grayscale, Identity, Inpainting
from difflab.options import DEFAULT_METHOD, RESTORATION_TASKS as TASKS  # noqa: F401
from difflab.options import check_seed, check_steps
from difflab.restoration.solvers import get_solver, restore_mean, restore_sdedit

DEFAULT_STEPS = 50
# std of 8-bit rounding noise in [0, 1] pixel units (uniform on +-1/510): a blurred PNG is never
# a noiseless measurement, and blur's small singular values would amplify that noise without
# bound (one MNIST digit, Gaussian blur std 1, 50 steps: RMSE 0.49 assumed noiseless, 0.05 with it)
QUANTIZATION_SIGMA = 1 / (255 * 12 ** 0.5)


def parse_kernel(text: str, sigma_y: float = 0.0) -> Blur:
    """``gaussian:STD`` or ``box:SIZE`` -> a Blur operator (one-line ValueError otherwise)."""
    kind, _, value = str(text).partition(":")
    try:
        if kind == "gaussian":
            return Blur(std=float(value), sigma_y=sigma_y)
        if kind == "box":
            return Blur(size=int(value), sigma_y=sigma_y)
    except ValueError as e:
        raise ValueError(f"--kernel {text!r}: {e}") from None
    raise ValueError(f"--kernel {text!r}: give gaussian:STD (pixels) or box:SIZE (odd)")


def check_mask(mask, height: int, width: int, images: int, where: str = "the mask",
               names=None) -> torch.Tensor:
    """An inpainting mask (nonzero = known pixel; [H, W] for all images, or [1 or N, ...] with
    one per image) as a boolean tensor, if it fits ``images`` images of ``height`` x ``width``
    and leaves something to restore from and something to fill. ValueError otherwise, naming
    the mask by ``where`` and an empty one of several by ``names`` (e.g. its file)."""
    known = torch.as_tensor(mask) != 0
    if known.dim() > 2 and len(known) not in (1, images):
        raise ValueError(f"{where}: {len(known)} masks for {images} images")
    if known.shape[-2:] != (height, width):
        raise ValueError(f"{where}: {known.shape[-1]}x{known.shape[-2]} pixels, but the image(s) "
                         f"are {width}x{height}")
    per_mask = known.flatten(1) if known.dim() > 2 else known.reshape(1, -1)
    for i, pixels in enumerate(per_mask):
        if not pixels.any():
            name = names[i] if names else where if len(per_mask) == 1 else f"{where} (image {i})"
            raise ValueError(f"{name}: the mask has no known (white) pixels: nothing to restore "
                             "from (use difflab sample)")
    if per_mask.all():
        raise ValueError(f"{where}: every pixel is known (white): nothing to inpaint")
    return known


def make_operator(task: str, model_shape, y: torch.Tensor, *, mask=None, factor=None,
                  sigma=None, kernel=None):
    """(operator, shape of the restored images) for ``task`` with measurement ``y`` in [-1, 1]."""
    channels = model_shape.channels
    batch, y_channels, height, width = y.shape
    if task == "colorize":
        if channels != 3:
            raise ValueError(f"colorize needs a colour model; this one makes {channels}-channel "
                             "images")
        if y_channels != 1:
            raise ValueError(f"colorize takes a grayscale image; got {y_channels} channels")
        return Grayscale(3), (batch, 3, height, width)
    if y_channels != channels:
        raise ValueError(f"the image has {y_channels} channel(s); the model makes {channels}")
    if task == "inpaint":
        return Inpainting(check_mask(mask, height, width, batch)), tuple(y.shape)
    if task == "upscale":
        if isinstance(factor, bool) or int(factor) != factor or factor < 2:
            raise ValueError(f"--factor {factor}: must be an integer >= 2")
        return Downsample(int(factor)), (batch, channels, height * factor, width * factor)
    if task == "denoise":
        if sigma is None or not 0 < float(sigma) <= 1:
            raise ValueError(f"--sigma {sigma}: the noise std in [0, 1] pixel units must be in "
                             "(0, 1]")
        return Identity(sigma_y=2 * float(sigma)), tuple(y.shape)
    if task == "deblur":
        sigma = QUANTIZATION_SIGMA if sigma is None else float(sigma)
        if not 0 <= sigma <= 1:
            raise ValueError(f"--sigma {sigma}: the noise std in [0, 1] pixel units must be in "
                             "[0, 1]")
        return parse_kernel(kernel, 2 * sigma), tuple(y.shape)
    raise ValueError(f"unknown restoration task {task!r} (choose from {', '.join(TASKS)})")


@torch.no_grad()
def restore(model, images: torch.Tensor, task: str, *, method: str | None = None,
            steps: int | None = None, seed: int = 0, class_label: int | None = None,
            guidance: float | None = None, strength: float = 0.5, draws: int = 1,
            **task_options) -> torch.Tensor:
    """Restore ``images`` (float [N, C, H, W] in [0, 1]) with a loaded ``difflab.runs.Model``;
    returns [N, C', H', W'] in [0, 1]. ``task_options``: mask= (inpaint), factor= (upscale),
    sigma= (denoise), kernel= (deblur). Class-conditional models restore unconditionally unless
    ``class_label`` is given (then with the run's guidance, or ``guidance``). ``draws`` > 1
    returns the mean of that many restorations, in antithetic pairs (``restore_mean``: a
    posterior-mean estimate, higher PSNR, blurrier where the measurement leaves the image
    uncertain; not for edit)."""
    if task not in TASKS:
        raise ValueError(f"unknown restoration task {task!r} (choose from {', '.join(TASKS)})")
    steps = DEFAULT_STEPS if steps is None else check_steps(steps)  # 0 is not "the default"
    seed = check_seed(seed)
    images = torch.as_tensor(images)
    if images.is_complex() or images.dtype == torch.bool:
        raise ValueError(f"images must be real numbers in [0, 1], got dtype {images.dtype}")
    images = images.to(torch.float32)
    if images.dim() != 4 or not torch.isfinite(images).all() or images.min() < 0 or images.max() > 1:
        raise ValueError("images must be a finite float tensor [N, C, H, W] in [0, 1]")
    denoiser, shape, device = model.denoiser, model.shape, model.device
    y = images.to(device) * 2 - 1
    grid = model.config.sample.grid  # a named grid of the recipe; optimized ones are per sampler
    sigmas = model_sigmas(denoiser, steps, None if grid in ("auto", "optimized") else grid)
    cond = None
    if class_label is not None:
        check_class_label(class_label, shape.num_classes)
        cond = torch.full((len(y),), class_label, device=device)
        denoiser = guided(denoiser, model.config.sample.guidance if guidance is None else guidance)
    generator = torch.Generator(device).manual_seed(seed)
    with autocast(device, model.precision):
        if task == "edit":
            if y.shape[1] != shape.channels:
                raise ValueError(f"the image has {y.shape[1]} channel(s); the model makes "
                                 f"{shape.channels}")
            if method not in (None, "sdedit"):
                raise ValueError(f"edit uses method sdedit, not {method!r}")
            if draws != 1:
                raise ValueError(f"draws={draws}: edit returns one edit per image")
            x = restore_sdedit(denoiser, y, sigmas, strength, cond=cond, generator=generator)
        else:
            operator, out_shape = make_operator(task, shape, y, **task_options)
            check_size(model, out_shape)
            check_memory(model, out_shape, steps, draws, guided=cond is not None)
            solver = get_solver(method or DEFAULT_METHOD[task])
            x = restore_mean(solver, draws, denoiser, y, operator, sigmas, cond=cond,
                             generator=generator)
    x = x.float()
    if not torch.isfinite(x).all():
        raise ValueError("the restoration produced NaN or inf (check the weights and guidance)")
    return ((x.clamp(-1, 1) + 1) / 2).cpu()


def check_size(model, out_shape) -> None:
    """ValueError unless the model's network accepts images of ``out_shape`` and they are no
    larger than an input image may be (``data.MAX_IMAGE_PIXELS``)."""
    from difflab.data import MAX_IMAGE_PIXELS
    from difflab.data.shape import DataShape

    height, width = out_shape[2:]
    if height * width > MAX_IMAGE_PIXELS:
        raise ValueError(f"the restored images would be {width}x{height} ({height * width:,} "
                         f"pixels), more than the {MAX_IMAGE_PIXELS:,} an image may have "
                         "(lower --factor, or give smaller images)")
    size = DataShape(out_shape[1], tuple(out_shape[2:]), model.shape.num_classes)
    try:
        model.config.net.validate(size)
        if model.config.net.kind != "unet" and size.size != model.shape.size:
            raise ValueError(f"net.kind={model.config.net.kind} was trained on "
                             f"{'x'.join(map(str, model.shape.size[::-1]))} images only")
    except ValueError as e:
        raise ValueError(f"the network cannot restore {out_shape[3]}x{out_shape[2]} images ({e})") from None


def check_memory(model, out_shape, steps: int, draws: int, guided: bool) -> None:
    """ValueError if restoring ``out_shape`` ([N, C, H, W]) would need more than half of this
    machine's memory, before anything is allocated: per image twice the network's counted peak
    activations at that size (``memory.forward_peak_bytes``: a real CPU forward pass of the
    digits and MNIST U-Nets at 224-448 pixels peaked at 1.5-2x the count, its kernels'
    workspaces), twice that again with guidance, and the solver's state (about 16 image-sized
    float32 tensors, plus the noise of every step that the second draw of an antithetic pair
    replays)."""
    from difflab.data.shape import DataShape
    from difflab.memory import forward_peak_bytes, machine_memory

    memory = machine_memory()
    if memory is None:
        return
    n, pixels = out_shape[0], 4 * out_shape[1] * out_shape[2] * out_shape[3]
    one = DataShape(out_shape[1], tuple(out_shape[2:]), model.shape.num_classes)
    network = 2 * forward_peak_bytes(model.config.net, one) * (2 if guided else 1)
    need = n * (network + pixels * (16 + (steps + 1 if draws > 1 else 0)))
    if need > memory // 2:
        raise ValueError(f"restoring {n} image(s) of {out_shape[3]}x{out_shape[2]} pixels needs "
                         f"about {need / 2**30:.1f} GiB, more than half of this machine's "
                         f"{memory / 2**30:.0f} GiB; restore fewer or smaller images at a time "
                         "(or a lower --factor)")
