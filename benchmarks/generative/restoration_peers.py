"""The peers of ``restoration_quality.py``: classical restorers, deepinv's diffusion solvers and
diffusers' RePaint, each driven by the same measurement (and, for the diffusion peers, the same
trained network) as difflab's solvers.

Conventions. Every function here takes and returns images in [0, 1] pixel units ([N, C, H, W]
float tensors, C = 1 for MNIST, 3 for CIFAR-10), the units of deepinv and of the classical
libraries; difflab's model works in [-1, 1]. Inpainting masks are [N, 1, H, W] (one mask per
pixel, all channels). Colour images go to the classical libraries channels-last (H x W x 3):
OpenCV inpaints 8-bit RGB, scikit-image gets ``channel_axis``, BM3D runs ``bm3d_rgb``
(opponent colour space), bicubic, Wiener and Richardson-Lucy run per channel. ``net(x, sigma)``
is the shared network as a VE-form denoiser in [-1, 1] units (x = x0 + sigma n, returns x0_hat;
``restoration_quality.SharedNet``).

| peer        | its convention                                   | adapter here                          |
|-------------|--------------------------------------------------|---------------------------------------|
| deepinv     | D(x, sigma) with x = x0 + sigma n in [0, 1] units | D01(x, s) = (net(2x - 1, 2s) + 1) / 2 |
| diffusers   | eps_theta(x_t, t), x_t = sqrt(ab_t) x0 + sqrt(1 - ab_t) eps, x0 in [-1, 1], ab_t of the scheduler | sigma_t = sqrt((1 - ab_t) / ab_t), x = x_t / sqrt(ab_t), eps = (x - net(x, sigma_t)) / sigma_t |
| OpenCV      | uint8 image (H x W [x 3]), uint8 mask (nonzero = fill) | round to 8 bits                |
| scikit-image| float image; ``inpaint_biharmonic`` mask True = fill | as is                               |
"""
from __future__ import annotations

import importlib
import math
import os
import sys
import time
from types import SimpleNamespace

import numpy as np
import torch

# ----- classical baselines ---------------------------------------------------------------------


def _images(x: torch.Tensor) -> np.ndarray:
    """[N, 1, H, W] tensor -> [N, H, W] float64 array; [N, C, H, W] -> [N, H, W, C]."""
    if x.shape[1] == 1:
        return x[:, 0].detach().cpu().double().numpy()
    return np.ascontiguousarray(x.detach().cpu().double().permute(0, 2, 3, 1).numpy())


def _tensor(arrays) -> torch.Tensor:
    """Inverse of ``_images`` (float32, clamped to [0, 1])."""
    a = np.stack(arrays)
    a = a[:, None] if a.ndim == 3 else np.ascontiguousarray(a.transpose(0, 3, 1, 2))
    return torch.from_numpy(a.astype(np.float32)).clamp(0, 1)


def _masks(known: torch.Tensor) -> np.ndarray:
    """[N, 1, H, W] bool mask (True = known) -> [N, H, W] float64 array."""
    return known[:, 0].detach().cpu().double().numpy()


def _channel_axis(img: np.ndarray):
    """scikit-image's ``channel_axis`` of one image from ``_images``: None (gray) or -1."""
    return None if img.ndim == 2 else -1


def _per_channel(fn, img: np.ndarray) -> np.ndarray:
    """``fn`` (2-D array -> 2-D array) on a gray image, or on each channel of a colour one."""
    if img.ndim == 2:
        return fn(img)
    return np.stack([fn(np.ascontiguousarray(img[..., k])) for k in range(img.shape[-1])], -1)


def inpaint_opencv(y01: torch.Tensor, known: torch.Tensor, flag: str, radius: int = 3):
    """OpenCV inpainting (Telea 2004, "fmm"; Bertalmio et al. 2001, "ns") of 8-bit images
    (gray or RGB; ``cv2.inpaint`` takes 1- and 3-channel 8-bit images)."""
    import cv2

    flags = {"telea": cv2.INPAINT_TELEA, "ns": cv2.INPAINT_NS}[flag]
    out = []
    for img, m in zip(_images(y01), _masks(known)):
        u8 = np.clip(np.rint(img * 255), 0, 255).astype(np.uint8)
        fill = (m == 0).astype(np.uint8) * 255
        out.append(cv2.inpaint(u8, fill, radius, flags).astype(np.float64) / 255)
    return _tensor(out)


def inpaint_biharmonic(y01: torch.Tensor, known: torch.Tensor):
    """scikit-image's biharmonic inpainting (Damelin & Hoang 2018)."""
    from skimage.restoration import inpaint_biharmonic as biharmonic

    return _tensor([biharmonic(img, m == 0, channel_axis=_channel_axis(img)) for img, m in
                    zip(_images(y01), _masks(known))])


def upscale_bicubic(y01: torch.Tensor, factor: int):
    """PIL bicubic resampling (a = -0.5) of float images, H/f x W/f -> H x W; colour per channel
    (PIL's float mode "F" is one channel; its "RGB" mode would round the measurement to 8 bits)."""
    from PIL import Image

    def up(channel):
        h, w = channel.shape
        pil = Image.fromarray(channel.astype(np.float32), mode="F")
        return np.asarray(pil.resize((w * factor, h * factor), Image.BICUBIC), np.float64)

    return _tensor([_per_channel(up, img) for img in _images(y01)])


def denoise_nlm(y01, sigma: float, h: float):
    """Non-local means (Buades et al. 2005), scikit-image, with the true sigma; ``h`` in
    units of sigma."""
    from skimage.restoration import denoise_nl_means

    return _tensor([denoise_nl_means(img, h=h * sigma, sigma=sigma, fast_mode=True,
                                     patch_size=5, patch_distance=6,
                                     channel_axis=_channel_axis(img)) for img in _images(y01)])


def denoise_tv(y01, sigma: float, weight: float):
    """Total-variation denoising (Chambolle 2004), scikit-image; ``weight`` in units of sigma
    (colour: scikit-image's ``channel_axis``, each channel on its own)."""
    from skimage.restoration import denoise_tv_chambolle

    return _tensor([denoise_tv_chambolle(img, weight=weight * sigma,
                                         channel_axis=_channel_axis(img)) for img in _images(y01)])


def denoise_bm3d(y01, sigma: float, tiles: int = 10):
    """BM3D (Dabov et al. 2007), pip ``bm3d``, with the true noise std, run on mosaics of
    ``tiles`` x ``tiles`` images (one call per mosaic, then cut apart): the library spends ~3 s
    per call whatever the size on this machine (28 x 28: 3.2 s; 280 x 280: 21-24 s), which would
    make 2,000 single-digit calls take longer than the whole diffusion benchmark. Within a mosaic,
    block matching may also find similar blocks in neighbouring digits (more candidates than one
    digit offers; ``tiles=1`` is the per-image form). Colour images: ``bm3d.bm3d_rgb`` (block
    matching on luminance in the opponent colour space; ``sigma`` is the RGB noise std)."""
    import bm3d

    imgs = _images(y01)
    n, h, w = imgs.shape[:3]
    rest = imgs.shape[3:]  # () gray, (3,) colour
    axes = (0, 2, 1, 3, *range(4, 4 + len(rest)))
    denoise = bm3d.bm3d if not rest else bm3d.bm3d_rgb
    out = []
    for start in range(0, n, tiles * tiles):
        part = imgs[start:start + tiles * tiles]
        rows = math.ceil(len(part) / tiles)
        pad = np.zeros((rows * tiles, h, w, *rest))
        pad[:len(part)] = part
        mosaic = pad.reshape(rows, tiles, h, w, *rest).transpose(axes).reshape(
            rows * h, tiles * w, *rest)
        den = np.asarray(denoise(mosaic, sigma_psd=sigma), np.float64)
        den = den.reshape(rows, h, tiles, w, *rest).transpose(axes).reshape(-1, h, w, *rest)
        out.extend(den[:len(part)])
    return _tensor(out)


def centred_psf(kernel: torch.Tensor) -> np.ndarray:
    """The H x W periodic kernel (centred at pixel (0, 0)) with its centre moved to (H//2, W//2),
    the layout scikit-image's Fourier-domain restorers expect."""
    H, W = kernel.shape
    return torch.roll(kernel, (H // 2, W // 2), (0, 1)).double().numpy()


def deblur_wiener(y01, kernel: torch.Tensor, balance: float):
    """Wiener-Hunt deconvolution (scikit-image ``restoration.wiener``; circular, like the blur);
    colour per channel."""
    from skimage.restoration import wiener

    psf = centred_psf(kernel)
    return _tensor([_per_channel(lambda c: wiener(c, psf, balance, clip=False), img)
                    for img in _images(y01)])


def deblur_richardson_lucy(y01, kernel: torch.Tensor, iterations: int):
    """Richardson-Lucy deconvolution (Richardson 1972; Lucy 1974):
    x_{k+1} = x_k K^T(y / K x_k) from the flat x_0 = 0.5 (as scikit-image starts), on the blurred
    image clipped to [0, 1] (RL needs a nonnegative image). K is the task's own circular blur,
    applied by FFT to the whole batch at once. (scikit-image's ``richardson_lucy`` zero-pads, a
    mismatch with the circular blur that made RL degrade after 2 iterations on CIFAR-10; on a
    periodically padded image it gives the same outputs to 2e-4, at seconds per image for 1,000
    iterations.)"""
    transfer = torch.fft.fft2(kernel.double())  # the kernel is symmetric: K^T = K

    def blur(x):
        return torch.fft.ifft2(torch.fft.fft2(x) * transfer).real

    y = y01.double().clamp(0, 1)
    x = torch.full_like(y, 0.5)
    for _ in range(iterations):
        x = x * blur(y / blur(x).clamp(min=1e-12))
    return x.float().clamp(0, 1)


def run_classical(method, task, params: dict):
    """A classical restorer (or the pseudo-inverse A^+ y) on ``task`` (``restoration_quality.Task``)
    with its free parameter from ``params``; images in [0, 1]. (Colorization has no classical
    restorer here: only A^+ y, the gray image in every channel.)"""
    if method == "A^+ y":
        return ((task.operator.pinv(task.y_pm).clamp(-1, 1) + 1) / 2)
    if method == "OpenCV Telea":
        return inpaint_opencv(task.y01, task.known, "telea", params.get("radius", 3))
    if method == "OpenCV NS":
        return inpaint_opencv(task.y01, task.known, "ns", params.get("radius", 3))
    if method == "biharmonic":
        return inpaint_biharmonic(task.y01, task.known)
    if method == "bicubic":
        return upscale_bicubic(task.y01, task.factor)
    if method == "NLM":
        return denoise_nlm(task.y01, task.sigma01, params.get("h", 0.8))
    if method == "TV":
        return denoise_tv(task.y01, task.sigma01, params.get("weight", 1.0))
    if method == "BM3D":
        return denoise_bm3d(task.y01, task.sigma01)
    h, w = task.x01.shape[-2:]
    kernel = task.operator.kernel(h, w, torch.float64)
    if method == "Wiener":
        return deblur_wiener(task.y01, kernel, params.get("balance", 0.01))
    if method == "Richardson-Lucy":
        return deblur_richardson_lucy(task.y01, kernel, params.get("iterations", 30))
    raise ValueError(f"unknown classical method {method!r}")


# Grids wide enough that neither data set's pick sits at an edge (checked on MNIST and CIFAR-10).
TUNING = {"OpenCV Telea": ("radius", (1, 2, 3, 5, 8, 12, 16, 24, 32)),
          "OpenCV NS": ("radius", (1, 2, 3, 5, 8, 12, 16, 24, 32)),
          "NLM": ("h", (0.2, 0.3, 0.4, 0.6, 0.8, 1.0, 1.2, 1.5)),
          "TV": ("weight", (0.125, 0.25, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0)),
          "Wiener": ("balance", (1e-6, 1e-5, 1e-4, 1e-3, 3e-3, 1e-2, 3e-2, 1e-1, 3e-1)),
          "Richardson-Lucy": ("iterations",
                              (1, 2, 3, 5, 10, 20, 30, 50, 100, 200, 500, 1000, 2000, 5000))}


def timed(fn, *args, **kwargs):
    """(result, seconds)."""
    t0 = time.perf_counter()
    out = fn(*args, **kwargs)
    return out, time.perf_counter() - t0


# ----- deepinv --------------------------------------------------------------------------------

_TORCHVISION_SCHEMAS = None  # keeps the schema-only torch.library alive


def import_deepinv():
    """Import deepinv. It imports torchvision at start-up; PyPI's torchvision wheels are CUDA
    builds whose C++ operators cannot load next to the CPU torch wheel, and torchvision's import
    then stops at an unguarded fake-kernel registration ("operator torchvision::nms does not
    exist", pytorch/vision#9085). That torchvision is not installed into the project's venv (it
    would break ``import diffusers`` there): it is looked up in ``$DIFFLAB_TORCHVISION_DIR`` or
    ``<venv>/bench-torchvision`` (``pip install --no-deps --target .venv/bench-torchvision
    torchvision==<the torch's match>``); if its operators are missing, only the schemas of
    ``nms`` and ``qnms`` are declared so that the pure-Python modules import (no torchvision
    operator is ever called here)."""
    global _TORCHVISION_SCHEMAS
    extra = os.environ.get("DIFFLAB_TORCHVISION_DIR") or os.path.join(sys.prefix, "bench-torchvision")
    if os.path.isdir(extra) and extra not in sys.path:
        sys.path.insert(0, extra)
    try:
        importlib.import_module("torchvision")
    except RuntimeError as e:
        if "torchvision::nms" not in str(e):
            raise
        for name in [m for m in sys.modules if m == "torchvision" or m.startswith("torchvision.")]:
            del sys.modules[name]
        _TORCHVISION_SCHEMAS = torch.library.Library("torchvision", "DEF")
        _TORCHVISION_SCHEMAS.define("nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
        _TORCHVISION_SCHEMAS.define("qnms(Tensor qdets, Tensor scores, float iou_threshold) -> Tensor")
        importlib.import_module("torchvision")
    import deepinv

    return deepinv


def deepinv_denoiser(net, channels: int = 1):
    """The shared network as a ``deepinv.models.Denoiser``: x and sigma in [0, 1] units.
    Images whose channel axis holds several images of ``channels`` channels (a batch folded into
    channels, see ``run_deepinv``) are unfolded for the network and folded back."""
    dinv = import_deepinv()

    class SharedDenoiser(dinv.models.Denoiser):
        def forward(self, x, sigma, *args, **kwargs):
            B, C, H, W = x.shape
            sigma = torch.as_tensor(sigma, dtype=torch.float32, device=x.device).reshape(-1)
            folds = C // channels
            if sigma.numel() == B and B > 1:
                sigma = sigma.repeat_interleave(folds)
            z = x.reshape(B * folds, channels, H, W).float()
            out = (net(2 * z - 1, 2 * (sigma if sigma.numel() > 1 else sigma[0])) + 1) / 2
            return out.reshape(B, C, H, W).to(x.dtype)

    return SharedDenoiser()


def svd_physics(op, c: int, h: int, w: int, **kw):
    """difflab operator ``op`` (an SVD A = U S V^T, see ``difflab.restoration.operators``) as a
    deepinv ``DecomposablePhysics`` on [N, c, h, w] images: V^T, V, U, U^T and the singular values
    (the ``mask``) are difflab's, in difflab's padded spectral layout (a full V: every image
    direction, measured or not)."""
    dinv = import_deepinv()

    class DifflabSVD(dinv.physics.DecomposablePhysics):
        def V_adjoint(self, x):
            return op.Vt(x)

        def V(self, z):
            return op.V(z)

        def U(self, z):
            return op.U(z)

        def U_adjoint(self, y):
            return op.Ut(y)

    probe = torch.zeros(1, c, h, w)
    mask = (op.singulars(probe) * torch.ones_like(op.Vt(probe))).clone()
    return DifflabSVD(mask=mask, **kw)


def deepinv_physics(task, sigma01: float, fold: bool = False):
    """deepinv's own operator for ``task`` (``restoration_quality.Task``), with the same A as
    difflab's measurement: Inpainting (the same masks, each over all channels), Denoising, BlurFFT
    (difflab's periodic Gaussian kernel, checked to give the same A x); super-resolution and
    colorization wrap difflab's ``Downsample`` / ``Grayscale`` SVD (``svd_physics``): deepinv's
    ``Downsampling`` has no SVD, which DDRM needs, and its ``Decolorize`` (srf "flat" gives the
    same A x, the channel mean) has a thin SVD (V: the measured direction only), with which
    deepinv's DDRM never samples the unmeasured colour directions and ``prox_l2`` (DiffPIR's data
    step) drops them. Noise model: GaussianNoise(sigma01) for noisy tasks, deepinv's default
    (ZeroNoise) otherwise. ``fold``: the batch is folded into channels (one image of N x C
    channels)."""
    dinv = import_deepinv()
    noise = dinv.physics.GaussianNoise(sigma=sigma01) if sigma01 > 0 else None
    kw = {} if noise is None else {"noise_model": noise}
    n, c, h, w = task.x01.shape
    if task.kind == "inpaint":
        # per image [N, 1, H, W] -> [N, C, H, W]: deepinv's DDRM indexes y by the mask's shape
        mask = task.known.float().expand(n, c, h, w)
        if (mask == mask[:1]).all():
            mask = mask[:1]  # one mask for the batch (deepinv's DDRM repeats it per image)
        elif fold:
            mask = mask.reshape(1, n * c, h, w)
        return dinv.physics.Inpainting(img_size=tuple(mask.shape[1:]), mask=mask.contiguous(),
                                       **kw)
    if task.kind == "denoise":
        return dinv.physics.Denoising(**kw)
    if task.kind == "deblur":
        kernel = task.operator.kernel(h, w, torch.float32)
        filt = torch.roll(kernel, (h // 2, w // 2), (0, 1))[None, None]
        return dinv.physics.BlurFFT(img_size=(c, h, w), filter=filt, **kw)
    if task.kind in ("sr", "colorize"):
        return svd_physics(task.operator, c, h, w, **kw)
    raise ValueError(f"no deepinv operator for task kind {task.kind!r}")


def run_deepinv(method: str, task, net, y01: torch.Tensor, nfe: int, sigmas_pm, seed: int,
                per_image_mask: bool):
    """deepinv's ``method`` (ddrm, diffpir, dps) on one batch; returns images in [0, 1].

    - DDRM (``deepinv.sampling.DDRM``, eta = 0.85, etab = 1 defaults): ``sigmas`` = the first
      ``nfe`` levels of difflab's grid (without its final 0) in [0, 1] units; it evaluates the
      denoiser once per level and returns the last denoised estimate. It reads one mask for the
      whole batch, so per-image masks are run with the batch folded into the channel axis
      (N images of C channels: one image of N x C channels, each image's mask over its C).
    - DiffPIR (``deepinv.sampling.DiffPIR``, defaults zeta = 0.1, lambda = 7; its own linear-beta
      DDPM schedule): ``max_iter = nfe``; L2 data fidelity.
    - DPS (``deepinv.sampling.DPS``, defaults: VP SDE, DDPM solver, weight 1, residual-norm
      guidance): ``num_steps = nfe + 1`` time points, i.e. ``nfe`` steps with one VJP each."""
    dinv = import_deepinv()
    torch.manual_seed(seed)
    if method == "ddrm":
        fold = per_image_mask
        n, c, h, w = task.x01.shape  # the images' shape (y01's differs for sr and colorize)
        physics = deepinv_physics(task, task.sigma01, fold=fold)
        den = deepinv_denoiser(net, channels=c)
        sigmas = [float(s) / 2 for s in sigmas_pm[:nfe]]
        solver = dinv.sampling.DDRM(denoiser=den, sigmas=np.asarray(sigmas))
        y = y01.reshape(1, n * c, *y01.shape[2:]) if fold else y01
        out = solver(y, physics)
        return out.reshape(n, c, h, w) if fold else out
    physics = deepinv_physics(task, task.sigma01)
    den = deepinv_denoiser(net, channels=task.x01.shape[1])
    if method == "diffpir":
        solver = dinv.sampling.DiffPIR(model=den, data_fidelity=dinv.optim.data_fidelity.L2(),
                                       max_iter=nfe)
        with torch.no_grad():
            return solver(y01, physics)
    if method == "dps":
        g = torch.Generator().manual_seed(seed)
        # num_steps time points = num_steps - 1 denoiser calls (none at t = 0, where sigma = 0)
        solver = dinv.sampling.DPS(den, num_steps=nfe + 1, rng=g)
        return solver(y01, physics).float()
    raise ValueError(f"unknown deepinv method {method!r} (choose from ddrm, diffpir, dps)")


# ----- diffusers RePaint ------------------------------------------------------------------------


class EpsModel(torch.nn.Module):
    """The shared network as the eps-prediction UNet that ``RePaintPipeline`` calls as
    ``unet(x_t, t).sample``: at integer timestep t of the scheduler, with its alpha_bar_t,
    sigma_t = sqrt((1 - ab_t) / ab_t), x = x_t / sqrt(ab_t) (VE form), eps = (x - D(x; sigma_t)) / sigma_t
    (Ho et al. 2020, eq. 4 rearranged)."""

    def __init__(self, net, alphas_cumprod: torch.Tensor):
        super().__init__()
        self.net = net
        self.register_buffer("alphas_cumprod", alphas_cumprod.double(), persistent=False)

    @property
    def device(self):
        return self.alphas_cumprod.device

    @property
    def dtype(self):
        return torch.float32

    def forward(self, x_t, t):
        ab = self.alphas_cumprod[int(t)]
        sigma = float(((1 - ab) / ab).sqrt())
        x = x_t / float(ab.sqrt())
        eps = (x - self.net(x, sigma)) / sigma
        return SimpleNamespace(sample=eps.to(x_t.dtype))


def run_repaint_diffusers(net, y_pm: torch.Tensor, known: torch.Tensor, seed: int,
                          steps: int = 250, jump_length: int = 10, jump_n_sample: int = 10,
                          eta: float = 0.0):
    """diffusers' ``RePaintPipeline`` + ``RePaintScheduler`` (default config: 1000 linear betas)
    with the shared network; the pipeline's defaults are steps 250, jump_length 10,
    jump_n_sample 10, eta 0 (2,410 network calls). Returns images in [0, 1]."""
    import warnings

    from diffusers import RePaintPipeline, RePaintScheduler

    scheduler = RePaintScheduler()
    pipe = RePaintPipeline(unet=EpsModel(net, scheduler.alphas_cumprod), scheduler=scheduler)
    pipe.set_progress_bar_config(disable=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        out = pipe(y_pm, known.float(), num_inference_steps=steps, eta=eta,
                   jump_length=jump_length, jump_n_sample=jump_n_sample,
                   generator=torch.Generator().manual_seed(seed), output_type="np")
    return torch.from_numpy(out.images).permute(0, 3, 1, 2).float()
