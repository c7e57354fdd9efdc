"""Calibration metrics and shifted (corrupted) test inputs for the optimizer benchmark.

Pure functions on torch tensors (array-likes are accepted and converted). Every function checks
its inputs and raises a one-line ``ValueError`` that names the offending argument.

Metrics (``probs`` is ``[N, K]`` class probabilities, ``labels`` is ``[N]`` integer classes; all
arithmetic in float64; scalars are returned as Python floats):

* ``nll``: mean negative log-likelihood of the true class, ``mean_i -log(max(p_{i,y_i}, EPS))``
  with ``EPS = 1e-12``: a correct one-hot prediction costs exactly 0, a wrong one at most
  ``-log(EPS) ~ 27.63`` nats instead of ``inf``.
* ``brier``: Brier score, Brier (1950), "Verification of forecasts expressed in terms of
  probability", Monthly Weather Review 78(1): ``mean_i sum_k (p_ik - 1[k = y_i])^2`` in [0, 2]
  (the original multi-category form, not divided by K).
* ``ece``: expected calibration error, Naeini, Cooper & Hauskrecht (2015), "Obtaining well
  calibrated probabilities using Bayesian binning", AAAI; in the form of Guo, Pleiss, Sun &
  Weinberger (2017), "On calibration of modern neural networks", ICML, eq. (3):
  ``sum_m |B_m|/N * |acc(B_m) - conf(B_m)|`` over ``bins`` equal-width bins of the top-1
  confidence ``max_k p_ik``; the prediction is the argmax (ties go to the lowest class index).
  Binning convention (Guo et al.'s ``I_m = ((m-1)/M, m/M]``): bins are closed on the right, so a
  confidence exactly on an interior edge ``m/M`` belongs to the lower bin ``m``; a confidence of
  exactly 0 goes to the first bin. "Exactly" is judged in the input's floating dtype: the edges are
  ``m / M`` rounded to that dtype (float64 for integer tensors and for lists, which are read via
  numpy), so a float32 softmax output equal to ``float32(0.6)`` sits on the edge 6/10, not above
  it. Empty bins contribute 0.
* ``reliability``: the per-bin table behind ``ece`` (edges, counts, accuracy, mean confidence;
  accuracy and confidence are NaN for empty bins), as in the reliability diagrams of
  DeGroot & Fienberg (1983) and Niculescu-Mizil & Caruana (2005) used by Guo et al.
* ``predictive_entropy``: per-example Shannon entropy ``-sum_k p_k log p_k`` in nats
  (``0 log 0 = 0``), shape ``[N]``; the uniform distribution over K classes has ``log K``.

Shifted inputs (``shift_images``): re-implementations (not the original code) of three of the
corruptions of Hendrycks & Dietterich (2019), "Benchmarking neural network robustness to common
corruptions and perturbations", ICLR, with the CIFAR-10-C parameter tables taken from their
generation script ``ImageNet-C/create_c/make_cifar_c.py`` (github.com/hendrycks/robustness):

====================  ====================================  ==============================
kind                  severity 1..5 parameter               operation on x in [0, 1]
====================  ====================================  ==============================
``gaussian_noise``    std  0.04, 0.06, 0.08, 0.09, 0.10     clip(x + std * z), z ~ N(0, 1)
``gaussian_blur``     sigma 0.4, 0.6, 0.7, 0.8, 1.0 (px)    clip(G_sigma * x), per channel
``contrast``          factor 0.75, 0.5, 0.4, 0.3, 0.15      clip(m + factor * (x - m))
====================  ====================================  ==============================

(The sigma [1, 2, 3, 4, 6] and contrast [0.4, 0.3, 0.2, 0.1, 0.05] tables are the ImageNet-C ones
in ``make_imagenet_c.py``, meant for 224 px images; they are not used here.) Gaussian noise and
contrast are among the 15 main CIFAR-10-C corruptions; gaussian blur is one of the 4 extra ones.
Details of this re-implementation: the blur kernel is a sampled Gaussian truncated at
``radius = int(4 * sigma + 0.5)`` and normalised to sum 1, applied separably with edge
replication (what ``skimage.filters.gaussian`` does by default: ``truncate=4``, ``mode='nearest'``);
the contrast mean ``m`` is per image and per channel over H and W (as in the original); images
are not quantised to uint8 (the published CIFAR-10-C arrays are), so values differ from the
published data set by up to 1/255 plus the random draws.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

EPS = 1e-12                 # NLL clamp: p is replaced by max(p, EPS)
SUM_ATOL = 1e-4             # tolerance on |sum_k p_ik - 1| (float32 softmax is ~1e-7 * K off);
                            # max(SUM_ATOL, K * dtype eps) for half-precision inputs
DEFAULT_BINS = 15

SHIFT_KINDS = ("gaussian_noise", "gaussian_blur", "contrast")
SEVERITIES = (1, 2, 3, 4, 5)
# CIFAR-10-C parameters, Hendrycks & Dietterich (2019), make_cifar_c.py.
SHIFT_PARAMS = {
    "gaussian_noise": (0.04, 0.06, 0.08, 0.09, 0.10),   # noise std on [0, 1] images
    "gaussian_blur": (0.4, 0.6, 0.7, 0.8, 1.0),         # kernel sigma in pixels
    "contrast": (0.75, 0.5, 0.4, 0.3, 0.15),            # factor applied to x - mean
}
BLUR_TRUNCATE = 4.0

__all__ = ["nll", "brier", "ece", "reliability", "predictive_entropy", "Reliability",
           "shift_images", "shift_parameter", "SHIFT_KINDS", "SHIFT_PARAMS", "SEVERITIES", "EPS"]


# ----------------------------------------------------------------------------- validation

def _as_tensor(name: str, value) -> torch.Tensor:
    if isinstance(value, torch.Tensor):
        return value
    try:   # via numpy so Python floats stay float64 (torch.as_tensor would make them float32)
        return torch.from_numpy(np.array(value))
    except (TypeError, ValueError, RuntimeError) as exc:
        raise ValueError(f"{name} must be a tensor or array-like ({type(value).__name__} given: "
                         f"{str(exc).splitlines()[0] if str(exc) else exc!r})") from None


def _check_probs(probs) -> torch.Tensor:
    return _check_probs_native(probs)[0]


def _check_probs_native(probs) -> tuple[torch.Tensor, torch.dtype]:
    """Validated probs as float64, and the floating dtype they arrived in (float64 for ints)."""
    t = _as_tensor("probs", probs)
    if t.dtype == torch.bool or t.is_complex() or not (t.is_floating_point() or _is_int(t)):
        raise ValueError(f"probs must be a real floating-point array (dtype {t.dtype})")
    if t.ndim != 2:
        raise ValueError(f"probs must have shape [N, K], got shape {tuple(t.shape)}")
    n, k = t.shape
    if n < 1 or k < 2:
        raise ValueError(f"probs must have N >= 1 rows and K >= 2 classes, "
                         f"got shape {tuple(t.shape)}")
    if not torch.isfinite(t).all():
        raise ValueError("probs must be finite (found NaN or inf)")
    native = t.dtype if t.is_floating_point() else torch.float64
    t = t.detach().to(dtype=torch.float64, device="cpu")
    if (t < 0).any() or (t > 1).any():
        raise ValueError(f"probs must lie in [0, 1] "
                         f"(min {t.min().item():.6g}, max {t.max().item():.6g})")
    tol = max(SUM_ATOL, k * torch.finfo(native).eps)   # looser only for float16/bfloat16
    err = (t.sum(dim=1) - 1.0).abs().max().item()
    if err > tol:
        raise ValueError(f"probs rows must sum to 1 within {tol:.3g} (worst deviation {err:.3g})")
    return t, native


def _is_int(t: torch.Tensor) -> bool:
    return t.dtype in (torch.uint8, torch.int8, torch.int16, torch.int32, torch.int64)


def _check_labels(labels, n: int, k: int) -> torch.Tensor:
    t = _as_tensor("labels", labels)
    if not _is_int(t):
        raise ValueError(f"labels must be an integer array (dtype {t.dtype})")
    if t.ndim != 1 or t.shape[0] != n:
        raise ValueError(f"labels must have shape [{n}] to match probs, got shape {tuple(t.shape)}")
    t = t.detach().to(dtype=torch.int64, device="cpu")
    if (t < 0).any() or (t >= k).any():
        raise ValueError(f"labels must lie in [0, {k - 1}] "
                         f"(min {t.min().item()}, max {t.max().item()})")
    return t


def _check_bins(bins) -> int:
    if not isinstance(bins, int) or isinstance(bins, bool) or bins < 1:
        raise ValueError(f"bins must be an integer >= 1, got {bins!r}")
    return bins


def _check_pair(probs, labels) -> tuple[torch.Tensor, torch.Tensor]:
    p = _check_probs(probs)
    return p, _check_labels(labels, *p.shape)


# ----------------------------------------------------------------------------- metrics

def nll(probs, labels) -> float:
    """Mean negative log-likelihood (nats) of the true class, with p clamped below at ``EPS``."""
    p, y = _check_pair(probs, labels)
    picked = p.gather(1, y[:, None]).squeeze(1).clamp_min(EPS)
    return float(-picked.log().mean())


def brier(probs, labels) -> float:
    """Brier (1950) score: mean over examples of sum over classes of (p_k - y_k)^2, in [0, 2]."""
    p, y = _check_pair(probs, labels)
    onehot = F.one_hot(y, p.shape[1]).to(p.dtype)
    return float(((p - onehot) ** 2).sum(dim=1).mean())


def predictive_entropy(probs) -> torch.Tensor:
    """Per-example entropy -sum_k p_k log p_k in nats (0 log 0 = 0), float64 tensor of shape [N]."""
    p = _check_probs(probs)
    return -torch.special.xlogy(p, p).sum(dim=1)


@dataclass(frozen=True)
class Reliability:
    """Per-bin reliability table: bin ``m`` covers ``(edges[m], edges[m+1]]`` (bin 0 also
    holds confidence 0). ``accuracy``/``confidence`` are NaN where ``counts`` is 0."""
    edges: torch.Tensor        # [bins + 1] float64, m / bins (rounded in the input dtype)
    counts: torch.Tensor       # [bins] int64, sums to N
    accuracy: torch.Tensor     # [bins] float64, fraction of correct top-1 predictions
    confidence: torch.Tensor   # [bins] float64, mean top-1 probability

    @property
    def n(self) -> int:
        return int(self.counts.sum())

    @property
    def ece(self) -> float:
        filled = self.counts > 0
        w = self.counts[filled].to(torch.float64) / self.n
        return float((w * (self.accuracy[filled] - self.confidence[filled]).abs()).sum())


def _bin_index(conf: torch.Tensor, bins: int,
               native: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    # edges m / M rounded in the input's dtype, so float32 0.6 sits exactly on the edge 6/10
    edges = (torch.arange(bins + 1, dtype=native) / bins).to(torch.float64)
    # right=False: idx with edges[idx-1] < conf <= edges[idx], i.e. right-closed bins
    idx = torch.bucketize(conf, edges, right=False) - 1
    return edges, idx.clamp_(0, bins - 1)


def reliability(probs, labels, bins: int = DEFAULT_BINS) -> Reliability:
    """Per-bin counts, accuracy and mean confidence over ``bins`` equal-width confidence bins,
    right-closed (see the module docstring for the edge convention)."""
    p, native = _check_probs_native(probs)
    y = _check_labels(labels, *p.shape)
    bins = _check_bins(bins)
    conf = p.max(dim=1).values
    pred = p.argmax(dim=1)          # documented first-index tie break
    correct = (pred == y).to(torch.float64)
    edges, idx = _bin_index(conf, bins, native)
    counts = torch.bincount(idx, minlength=bins)
    sum_acc = torch.zeros(bins, dtype=torch.float64).index_add_(0, idx, correct)
    sum_conf = torch.zeros(bins, dtype=torch.float64).index_add_(0, idx, conf)
    denom = counts.to(torch.float64)
    nan = torch.full((bins,), math.nan, dtype=torch.float64)
    filled = counts > 0
    accuracy = torch.where(filled, sum_acc / denom.clamp_min(1), nan)
    confidence = torch.where(filled, sum_conf / denom.clamp_min(1), nan)
    return Reliability(edges=edges, counts=counts, accuracy=accuracy, confidence=confidence)


def ece(probs, labels, bins: int = DEFAULT_BINS) -> float:
    """Expected calibration error (Naeini et al. 2015; Guo et al. 2017 eq. 3), equal-width
    right-closed bins of the top-1 confidence, weighted by bin size."""
    return reliability(probs, labels, bins).ece


# ----------------------------------------------------------------------------- shifted inputs

def _check_kind_severity(kind, severity) -> None:
    if not isinstance(kind, str) or kind not in SHIFT_KINDS:
        raise ValueError(f"unknown kind {kind!r} (choose from {', '.join(SHIFT_KINDS)})")
    if not isinstance(severity, int) or isinstance(severity, bool) or severity not in SEVERITIES:
        raise ValueError(f"invalid severity {severity!r} (must be an integer in 1..5)")


def shift_parameter(kind: str, severity: int) -> float:
    """The CIFAR-10-C parameter (noise std, blur sigma or contrast factor) for kind/severity."""
    _check_kind_severity(kind, severity)
    return SHIFT_PARAMS[kind][severity - 1]


def _check_images(images) -> torch.Tensor:
    if not isinstance(images, torch.Tensor):
        raise ValueError(f"images must be a torch.Tensor, got {type(images).__name__}")
    if not images.is_floating_point():
        raise ValueError(f"images must be a floating-point tensor in [0, 1] (dtype {images.dtype})")
    if images.ndim != 4 or min(images.shape) < 1:
        raise ValueError(f"images must have shape [N, C, H, W] with all sizes >= 1, "
                         f"got shape {tuple(images.shape)}")
    if not torch.isfinite(images).all():
        raise ValueError("images must be finite (found NaN or inf)")
    lo, hi = images.min().item(), images.max().item()
    if lo < 0 or hi > 1:
        raise ValueError(f"images must lie in [0, 1] (min {lo:.6g}, max {hi:.6g})")
    return images.detach()


def _gaussian_kernel(sigma: float, dtype: torch.dtype, device) -> torch.Tensor:
    radius = int(BLUR_TRUNCATE * sigma + 0.5)
    x = torch.arange(-radius, radius + 1, dtype=torch.float64)
    w = torch.exp(-0.5 * (x / sigma) ** 2)
    return (w / w.sum()).to(dtype=dtype, device=device)


def _gaussian_blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    n, c, h, w = x.shape
    k = _gaussian_kernel(sigma, x.dtype, x.device)
    r = (k.numel() - 1) // 2
    flat = x.reshape(n * c, 1, h, w)
    flat = F.conv2d(F.pad(flat, (r, r, 0, 0), mode="replicate"), k.view(1, 1, 1, -1))
    flat = F.conv2d(F.pad(flat, (0, 0, r, r), mode="replicate"), k.view(1, 1, -1, 1))
    return flat.reshape(n, c, h, w)


def shift_images(images: torch.Tensor, kind: str, severity: int,
                 generator: torch.Generator) -> torch.Tensor:
    """CIFAR-10-C-style corruption (Hendrycks & Dietterich 2019) of float images [N, C, H, W] in
    [0, 1]. Returns a new tensor of the same shape, dtype and device, clipped to [0, 1]; the
    input is not modified. Deterministic given the generator's state (only ``gaussian_noise``
    draws from it: one standard normal per pixel, in the images' dtype on the generator's
    device). Parameters per severity: ``SHIFT_PARAMS`` (module docstring)."""
    _check_kind_severity(kind, severity)
    if not isinstance(generator, torch.Generator):
        raise ValueError(f"generator must be a torch.Generator, got {type(generator).__name__}")
    x = _check_images(images)
    value = SHIFT_PARAMS[kind][severity - 1]
    if kind == "gaussian_noise":
        z = torch.randn(x.shape, generator=generator, dtype=x.dtype, device=generator.device)
        out = x + value * z.to(x.device)
    elif kind == "gaussian_blur":
        out = _gaussian_blur(x, value)
    else:  # contrast
        mean = x.mean(dim=(2, 3), keepdim=True)
        out = (x - mean) * value + mean
    return out.clamp(0.0, 1.0)
