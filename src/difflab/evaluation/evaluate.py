"""``difflab eval``: score generated images against a reference split with every metric of
``difflab.evaluation.metrics``, next to the real-vs-real floor at the same sample count.

- Reference features of a split (``mnist-test``, ``cifar10-train``, ...) are computed once and
  cached as ``.npz`` (no pickles) in ``$DIFFLAB_CACHE`` or ``~/.cache/difflab/stats``; the cache
  name holds a hash of the feature-network weights, so retrained weights never reuse stale stats.
- Samples come from a ``.npz``/``.npy`` file (key ``samples``; float in [0, 1] or uint8; NCHW, or
  NHWC when unambiguous), a folder of images, or a checkpoint (run directory), which is sampled.
- The floor: FID/KID of N real images of the *other* split of the same data set against the
  reference (drawn from its first max(10,000, N) images). FID is biased upward at small N
  (Chong & Forsyth 2020), so a model's FID means little without the floor at the same N.
- Two feature spaces where difflab ships two networks (MNIST: ``SECOND_FEATURES``): every metric
  is computed in both, the second under the prefix ``alt_``, so that a recipe choice made on one
  network can be checked on another it was not tuned on.
- :func:`evaluate_images` is the in-memory entry point (used by ``difflab train --eval-every``).
"""
from __future__ import annotations

import hashlib
import os
import sys
import zipfile
import zlib
from pathlib import Path

import numpy as np
import torch

from difflab.evaluation import metrics
from difflab.data import load_image_folder, load_pixels, to_float
from difflab.evaluation.metrics import MetricsError
from difflab.files import write_atomic
from difflab.options import REFERENCES

SHAPES = {"mnist": (1, 28), "cifar10": (3, 32)}  # dataset -> (channels, size)
SMALL_N = 5000
FLOOR_POOL = 10_000  # real images of the other split that the floor's N are drawn from (at least)
CACHE_ENV = "DIFFLAB_CACHE"
SECOND_FEATURES = {"mnist": "mnist-alt"}  # dataset -> the second shipped feature network
FEATURE_LABELS = {"mnist": "difflab-MNIST", "cifar10": "difflab-CIFAR10",
                  "mnist-alt": "difflab-MNIST-alt"}


def parse_reference(reference: str) -> tuple[str, str]:
    """'mnist-test' -> ('mnist', 'test'); ValueError listing the choices otherwise."""
    if reference not in REFERENCES:
        raise MetricsError(f"unknown reference {reference!r} (choose from {', '.join(REFERENCES)})")
    dataset, split = reference.split("-")
    return dataset, split


def cache_dir() -> Path:
    return Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "difflab" / "stats").expanduser()


def _file_hash(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()[:12]


class Extractor:
    """A feature network with a plain display name ("difflab-MNIST features", "Inception-v3")."""

    def __init__(self, net, name: str, tag: str, batch_size: int):
        self.net, self.name, self.tag, self.batch_size = net, name, tag, batch_size

    def __call__(self, images: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
        return metrics.extract(self.net, images, self.batch_size)


def difflab_extractor(name: str) -> Extractor:
    """The shipped feature network ``name`` (a data set, or e.g. ``mnist-alt``)."""
    from difflab.nets.classifier import load_feature_net, weights_paths

    net = load_feature_net(name)
    return Extractor(net, FEATURE_LABELS[name],
                     f"{name}-features-{_file_hash(weights_paths(name)[0])}", 1000)


def extractors_for(dataset: str, inception_weights=None) -> list[tuple[str, Extractor]]:
    """(metric-name prefix, extractor) of every feature space scored for ``dataset``: difflab's
    network (no prefix), the second one (``alt_``) where shipped, Inception-v3 if given."""
    out = [("", difflab_extractor(dataset))]
    if dataset in SECOND_FEATURES:
        out.append(("alt_", difflab_extractor(SECOND_FEATURES[dataset])))
    if inception_weights:
        out.append(("inception_", inception_extractor(inception_weights)))
    return out


def inception_extractor(path) -> Extractor:
    from difflab.nets.inception import load_inception

    net = load_inception(path)
    return Extractor(net, "Inception-v3", f"inception-{_file_hash(Path(path).expanduser())}", 50)


def load_split(dataset: str, split: str, data_dir=None) -> torch.Tensor:
    return to_float(load_pixels(dataset, data_dir, split)[0])


def cache_path(reference: str, extractor: Extractor, first: int | None = None) -> Path:
    """Where the features of a split (its first ``first`` images, if given) are cached."""
    return cache_dir() / f"{reference}{'' if first is None else f'-first{first}'}-{extractor.tag}.npz"


def reference_features(reference: str, extractor: Extractor, data_dir=None, verbose: bool = False,
                       first: int | None = None):
    """(features [N, D] float32, class probabilities [N, K]) of a whole split (or its first
    ``first`` images), cached on disk."""
    path = cache_path(reference, extractor, first)
    if path.is_file():
        try:
            with np.load(path, allow_pickle=False) as z:
                return z["features"], z["probs"]
        except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile):  # unreadable: recompute
            if verbose:
                print(f"{path}: unreadable cache file, recomputing", file=sys.stderr)
    dataset, split = parse_reference(reference)
    images = load_split(dataset, split, data_dir)[:first]
    if verbose:
        print(f"computing {extractor.name} features of {reference} ({len(images)} images) ...",
              file=sys.stderr, flush=True)
    features, probs = extractor(images)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(path, lambda f: np.savez(f, features=features, probs=probs.astype(np.float32)))
    return features, probs


def floor_reference(reference: str) -> str:
    """The other split of the same data set (the real-vs-real floor's images)."""
    dataset, split = parse_reference(reference)
    return f"{dataset}-{'train' if split == 'test' else 'test'}"


def floor_features(reference: str, extractor: Extractor, n: int, data_dir=None,
                   verbose: bool = False):
    """The pool the real-vs-real floor of ``n`` samples draws from: features of the first
    max(FLOOR_POOL, n) images of the other split (10,000 of MNIST's 60,000 training images
    instead of all: a sixth of the feature computation of a first evaluation on a machine)."""
    return reference_features(floor_reference(reference), extractor, data_dir, verbose,
                              first=max(FLOOR_POOL, n))


def score_features(fake: np.ndarray, fake_probs: np.ndarray, ref: np.ndarray, floor_pool: np.ndarray,
                   seed: int = 0, kid_subsets: int = 100, pr_k: int = 3) -> dict:
    """All metrics of fake features against reference features, plus the real-vs-real floor:
    N features drawn (seeded) from ``floor_pool`` (real images not in the reference split)."""
    n = len(fake)
    if n < 2:
        raise MetricsError(f"samples: FID needs at least 2 samples for the covariance, got {n}")
    gen = torch.Generator().manual_seed(seed)
    ref_stats = metrics.FeatureStats.of(ref)
    out = {"n": n, "fid": metrics.fid_from_stats(metrics.FeatureStats.of(fake), ref_stats)}
    out["kid"], out["kid_std"] = metrics.kid(fake, ref, kid_subsets, generator=gen)
    out["is"], out["is_std"] = metrics.inception_score(fake_probs, splits=min(10, n))
    if n > pr_k:
        ref_sub = ref[torch.randperm(len(ref), generator=gen)[:n].numpy()]
        out["precision"], out["recall"] = metrics.precision_recall(ref_sub, fake, k=pr_k)
    floor_n = min(n, len(floor_pool))
    real = floor_pool[torch.randperm(len(floor_pool), generator=gen)[:floor_n].numpy()]
    out["floor_n"] = floor_n
    out["fid_floor"] = metrics.fid_from_stats(metrics.FeatureStats.of(real), ref_stats)
    out["kid_floor"], _ = metrics.kid(real, ref, kid_subsets, generator=gen)
    if n > pr_k and floor_n > pr_k:  # the real-vs-real balance that samples' P/R should match
        out["precision_floor"], out["recall_floor"] = metrics.precision_recall(ref_sub, real, k=pr_k)
    return out


def evaluate_images(images: torch.Tensor, reference: str = "mnist-test", data_dir=None,
                    inception_weights=None, seed: int = 0, kid_subsets: int = 100,
                    verbose: bool = False) -> dict:
    """Score images in [-1, 1] ``[N, C, H, W]`` against a reference split; a flat dict
    (``n, fid, fid_floor, kid, kid_std, kid_floor, is, is_std, precision, recall``, repeated with
    the prefix ``alt_`` in the second feature space where one is shipped and ``inception_`` for
    Inception-v3 when ``inception_weights`` is given) plus ``features`` / ``alt_features`` naming
    the networks. Reference features are cached (fast after the first call)."""
    dataset, _ = parse_reference(reference)
    channels, size = SHAPES[dataset]
    images = metrics.check_images(images, channels, size, what="samples")
    extractors = extractors_for(dataset, inception_weights)
    result = {"reference": reference,
              **{f"{prefix}features": ex.name for prefix, ex in extractors}}
    for prefix, ex in extractors:
        ref, _ = reference_features(reference, ex, data_dir, verbose)
        pool, _ = floor_features(reference, ex, len(images), data_dir, verbose)
        if verbose:
            print(f"score: {len(images)} samples in {ex.name} features", file=sys.stderr, flush=True)
        fake, probs = ex(images)
        for key, value in score_features(fake, probs, ref, pool, seed, kid_subsets).items():
            result[prefix + key] = value
    if len(images) < SMALL_N:
        result["warning"] = (f"N={len(images)} is small: FID is biased upward at small N; "
                             f"compare it with the real-vs-real floor at the same N, not with "
                             f"published figures (usually N=10000-50000)")
    return result


# ----------------------------------------------------------------------------------------------
# Loading samples
# ----------------------------------------------------------------------------------------------

def array_to_images(arr: np.ndarray, channels: int, what: str, size: int | None = None) -> torch.Tensor:
    """uint8 [0, 255] or float [0, 1] array, NCHW / NHWC / NHW -> float tensor in [-1, 1]."""
    if arr.ndim == 3:
        arr = arr[:, None]
    if arr.ndim != 4:
        raise MetricsError(f"{what}: expected images [N, C, H, W], got shape {arr.shape}")
    if arr.shape[1] not in (1, 3) and arr.shape[-1] in (1, 3):
        arr = arr.transpose(0, 3, 1, 2)  # NHWC -> NCHW
    if arr.shape[1] != channels:
        raise MetricsError(f"{what}: expected {channels} channel(s), got shape {arr.shape}")
    if size is not None and arr.shape[2:] != (size, size):
        raise MetricsError(f"{what}: expected {size}x{size} images, got shape {arr.shape}")
    if arr.shape[0] == 0:
        raise MetricsError(f"{what}: no images (shape {arr.shape})")
    if arr.dtype == np.uint8:
        return to_float(arr)
    if not np.issubdtype(arr.dtype, np.floating):
        raise MetricsError(f"{what}: expected float32 in [0, 1] or uint8, got dtype {arr.dtype}")
    x = torch.from_numpy(np.ascontiguousarray(arr, dtype=np.float32))
    if not torch.isfinite(x).all():
        bad = int((~torch.isfinite(x.flatten(1))).any(1).sum())
        raise MetricsError(f"{what}: {bad} of {len(x)} samples contain NaN or inf")
    finite = x
    if finite.numel() and (finite.min() < -0.05 or finite.max() > 1.05):
        raise MetricsError(f"{what}: float samples must be in [0, 1], found range "
                           f"[{finite.min():.3g}, {finite.max():.3g}]")
    return x.clamp(0, 1) * 2 - 1  # NaN stays NaN and is reported by check_images


def load_samples(path, dataset: str, n: int | None = None) -> torch.Tensor:
    """Samples in [-1, 1] from a .npz/.npy file or an image folder (first ``n``); a run
    directory is sampled by the caller (``difflab.runs``)."""
    channels, size = SHAPES[dataset]
    path = Path(path).expanduser()
    if not path.exists():
        raise MetricsError(f"{path}: no such file or directory")
    if path.suffix in (".npz", ".npy"):
        try:
            data = np.load(path, allow_pickle=False)
            if isinstance(data, np.lib.npyio.NpzFile):
                keys = list(data.keys())
                if "samples" not in keys and len(keys) != 1:
                    raise MetricsError(f"{path}: no 'samples' array (keys: {', '.join(keys)})")
                data = data["samples" if "samples" in keys else keys[0]]
        except (ValueError, OSError, EOFError, zipfile.BadZipFile, zlib.error) as e:
            if isinstance(e, MetricsError):
                raise
            raise MetricsError(f"{path}: cannot read ({type(e).__name__}: {e})") from None
        images = array_to_images(data[:n] if n else data, channels, str(path), size)
    elif path.is_dir():
        pixels, _ = load_image_folder(path, size, channels)
        images = to_float(pixels[:n] if n else pixels)
    else:
        raise MetricsError(f"{path}: unsupported samples input (expected a .npz/.npy file, an image "
                           "folder, or a checkpoint run directory / checkpoint.json)")
    if n and len(images) < n:
        raise MetricsError(f"{path}: asked for --n {n} samples, found only {len(images)}")
    if len(images) < 2:
        raise MetricsError(f"{path}: FID needs at least 2 samples for the covariance, "
                           f"found {len(images)}")
    return images


# ----------------------------------------------------------------------------------------------
# Command
# ----------------------------------------------------------------------------------------------

def format_result(r: dict, samples_label: str) -> str:
    """A plain-text table of an evaluate_images result."""
    lines = [f"{r['n']} samples from {samples_label} vs {r['reference']}"]
    prefixes = [(p, r[p + "features"]) for p in ("", "alt_", "inception_") if p + "features" in r]
    floor = f"real-vs-real floor (N={r['floor_n']})"
    lines.append(f"{'metric':<38}{'value':>22}   {floor}")
    for p, name in prefixes:
        lines.append(f"{'FID (' + name + ' features)':<38}{r[p + 'fid']:>22.4f}   {r[p + 'fid_floor']:.4f}")
        kid = f"{r[p + 'kid']:.5f} ± {r[p + 'kid_std']:.5f}"
        lines.append(f"{'KID (' + name + ' features)':<38}{kid:>22}   {r[p + 'kid_floor']:.5f}")
        is_ = f"{r[p + 'is']:.3f} ± {r[p + 'is_std']:.3f}"
        lines.append(f"{'IS (' + name + ' classifier)':<38}{is_:>22}")
        if p + "precision" in r:
            lines.append(f"{'precision (k=3, ' + name + ')':<38}{r[p + 'precision']:>22.4f}   "
                         f"{r.get(p + 'precision_floor', float('nan')):.4f}")
            lines.append(f"{'recall (k=3, ' + name + ')':<38}{r[p + 'recall']:>22.4f}   "
                         f"{r.get(p + 'recall_floor', float('nan')):.4f}")
    if "warning" in r:
        lines.append(f"warning: {r['warning']}")
    return "\n".join(lines)
