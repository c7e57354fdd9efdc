"""Sample-quality metrics on network features: FID, KID, Inception Score, precision/recall.

| code            | paper symbol            | meaning                                                  |
|-----------------|-------------------------|----------------------------------------------------------|
| mu, sigma       | mu, Sigma               | mean and covariance of the features (Heusel et al. 2017) |
| frechet_distance| d^2((m,C),(m_w,C_w))    | ‖mu1-mu2‖² + Tr(S1 + S2 - 2 (S1 S2)^(1/2)), eq. (6)      |
| kid             | MMD²_u                  | unbiased squared MMD, kernel k(x,y) = (x·y/d + 1)^3       |
|                 |                         | (Bińkowski et al. 2018, "Demystifying MMD GANs", Sec. 4)  |
| inception_score | exp(E_x KL(p(y|x)‖p(y)))| Salimans et al. 2016, Sec. 4                             |
| precision,recall| P, R                    | k-NN manifold estimates, Kynkäänniemi et al. 2019, eqs. 1-3 |

Features come from a feature network (``difflab.nets.classifier`` for MNIST / CIFAR-10, or
Inception-v3 from ``difflab.nets.inception`` when the user has the pytorch-fid weights); the
metric names say which (e.g. "FID (difflab-MNIST features)"). All arithmetic on statistics is in
float64. Bad input raises :class:`MetricsError` (a ``ValueError``) with one line naming the problem.
"""
from __future__ import annotations

import math

import numpy as np
import torch


class MetricsError(ValueError):
    """Bad input to a metric (shape, channels, NaN values, too few samples); one line."""


# ----------------------------------------------------------------------------------------------
# Input checks
# ----------------------------------------------------------------------------------------------

def check_images(images: torch.Tensor, channels: int | None = None, size: int | None = None,
                 what: str = "images") -> torch.Tensor:
    """Validate float images ``[N, C, H, W]`` in [-1, 1]; returns them as float32."""
    if not isinstance(images, torch.Tensor):
        images = torch.as_tensor(np.asarray(images))
    if images.ndim != 4:
        raise MetricsError(f"{what}: expected a 4-d tensor [N, C, H, W], got shape {tuple(images.shape)}")
    if not images.is_floating_point():
        raise MetricsError(f"{what}: expected float images in [-1, 1], got dtype {images.dtype}")
    if channels is not None and images.shape[1] != channels:
        raise MetricsError(f"{what}: expected {channels} channel(s), got {images.shape[1]} "
                           f"(shape {tuple(images.shape)})")
    if size is not None and tuple(images.shape[2:]) != (size, size):
        raise MetricsError(f"{what}: expected {size}x{size} images, got "
                           f"{images.shape[2]}x{images.shape[3]} (shape {tuple(images.shape)})")
    if images.shape[0] == 0:
        raise MetricsError(f"{what}: no images (shape {tuple(images.shape)})")
    bad = int((~torch.isfinite(images)).flatten(1).any(1).sum())
    if bad:
        raise MetricsError(f"{what}: {bad} of {images.shape[0]} images contain NaN or inf values")
    return images.float()


def _as_features(x, what: str, min_rows: int = 1) -> np.ndarray:
    """A finite float64 matrix [N, D] with at least ``min_rows`` rows."""
    x = x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)
    if x.ndim != 2:
        raise MetricsError(f"{what}: expected a 2-d array [N, D], got shape {x.shape}")
    if x.shape[0] < min_rows:
        raise MetricsError(f"{what}: need at least {min_rows} samples, got {x.shape[0]}")
    if not np.isfinite(x).all():
        raise MetricsError(f"{what}: contains NaN or inf values")
    return x.astype(np.float64, copy=False)


# ----------------------------------------------------------------------------------------------
# Streaming statistics and the Frechet distance
# ----------------------------------------------------------------------------------------------

class FeatureStats:
    """Mean and covariance of features accumulated over batches as float64 running sums.

    ``cov`` is the unbiased sample covariance (divisor N - 1), as in Heusel et al.'s reference
    implementation. Running sums keep the result independent of the batch split.
    """

    def __init__(self, dim: int):
        self.dim = dim
        self.n = 0
        self.sum = np.zeros(dim, dtype=np.float64)
        self.sum_outer = np.zeros((dim, dim), dtype=np.float64)

    def update(self, features) -> "FeatureStats":
        f = _as_features(features, "features", min_rows=0)
        if f.shape[1] != self.dim:
            raise MetricsError(f"features: expected dimension {self.dim}, got {f.shape[1]}")
        self.n += f.shape[0]
        self.sum += f.sum(axis=0)
        self.sum_outer += f.T @ f
        return self

    @property
    def mean(self) -> np.ndarray:
        if self.n < 1:
            raise MetricsError("feature statistics: no samples accumulated")
        return self.sum / self.n

    @property
    def cov(self) -> np.ndarray:
        if self.n < 2:
            raise MetricsError(f"feature statistics: the covariance needs at least 2 samples, got {self.n}")
        mu = self.mean
        cov = (self.sum_outer - self.n * np.outer(mu, mu)) / (self.n - 1)
        return (cov + cov.T) / 2  # exact symmetry against rounding

    @classmethod
    def of(cls, features) -> "FeatureStats":
        f = _as_features(features, "features", min_rows=0)
        return cls(f.shape[1]).update(f)


def _sym_sqrt(a: np.ndarray) -> np.ndarray:
    """Square root of a symmetric positive semi-definite matrix via eigh (negative rounding
    noise in the eigenvalues is clipped to 0)."""
    w, v = np.linalg.eigh(a)
    return (v * np.sqrt(np.clip(w, 0.0, None))) @ v.T


def frechet_distance(mu1, sigma1, mu2, sigma2) -> float:
    """Frechet distance between N(mu1, sigma1) and N(mu2, sigma2), Heusel et al. 2017, eq. (6).

    d² = ‖mu1 - mu2‖² + Tr(S1) + Tr(S2) - 2 Tr((S1 S2)^(1/2)). S1 S2 is not symmetric, but it is
    similar to the symmetric PSD matrix M = S1^(1/2) S2 S1^(1/2), so Tr((S1 S2)^(1/2)) equals
    the sum of the square roots of M's eigenvalues: real arithmetic in float64, no complex parts.
    """
    mu1, mu2 = np.asarray(mu1, dtype=np.float64), np.asarray(mu2, dtype=np.float64)
    s1, s2 = np.asarray(sigma1, dtype=np.float64), np.asarray(sigma2, dtype=np.float64)
    d = mu1.shape[0] if mu1.ndim == 1 else -1
    if mu1.ndim != 1 or mu2.shape != (d,) or s1.shape != (d, d) or s2.shape != (d, d):
        raise MetricsError(f"frechet_distance: shapes do not match: mu1 {mu1.shape}, sigma1 {s1.shape}, "
                           f"mu2 {mu2.shape}, sigma2 {s2.shape}")
    for name, a in (("mu1", mu1), ("sigma1", s1), ("mu2", mu2), ("sigma2", s2)):
        if not np.isfinite(a).all():
            raise MetricsError(f"frechet_distance: {name} contains NaN or inf values")
    s1, s2 = (s1 + s1.T) / 2, (s2 + s2.T) / 2
    root1 = _sym_sqrt(s1)
    m = root1 @ s2 @ root1
    eig = np.linalg.eigvalsh((m + m.T) / 2)
    tr_sqrt = np.sqrt(np.clip(eig, 0.0, None)).sum()
    diff = mu1 - mu2
    fd = float(diff @ diff + np.trace(s1) + np.trace(s2) - 2.0 * tr_sqrt)
    return max(fd, 0.0)


def fid_from_stats(a: FeatureStats, b: FeatureStats) -> float:
    """Frechet distance between two accumulated feature statistics."""
    return frechet_distance(a.mean, a.cov, b.mean, b.cov)


# ----------------------------------------------------------------------------------------------
# KID
# ----------------------------------------------------------------------------------------------

def _mmd2_unbiased(x: np.ndarray, y: np.ndarray) -> float:
    """Unbiased MMD² with the cubic polynomial kernel, Bińkowski et al. 2018, eq. (3)-(4):
    mean of off-diagonal k(x_i, x_j) + mean of off-diagonal k(y_i, y_j) - 2 mean k(x_i, y_j)."""
    d = x.shape[1]
    kxx = (x @ x.T / d + 1.0) ** 3
    kyy = (y @ y.T / d + 1.0) ** 3
    kxy = (x @ y.T / d + 1.0) ** 3
    m, n = x.shape[0], y.shape[0]
    return float((kxx.sum() - np.trace(kxx)) / (m * (m - 1))
                 + (kyy.sum() - np.trace(kyy)) / (n * (n - 1))
                 - 2.0 * kxy.mean())


def kid(features_x, features_y, subsets: int = 100, subset_size: int = 1000,
        generator: torch.Generator | None = None) -> tuple[float, float]:
    """Kernel Inception Distance, Bińkowski et al. 2018, Sec. 4: the unbiased MMD² estimate
    averaged over ``subsets`` random subsets of ``min(subset_size, N_x, N_y)`` samples from each
    set (drawn without replacement within a subset). Returns (mean, std over subsets)."""
    x = _as_features(features_x, "KID features x", min_rows=2)
    y = _as_features(features_y, "KID features y", min_rows=2)
    if x.shape[1] != y.shape[1]:
        raise MetricsError(f"KID: feature dimensions differ ({x.shape[1]} vs {y.shape[1]})")
    if subsets < 1:
        raise MetricsError(f"KID: subsets must be >= 1, got {subsets}")
    size = min(subset_size, x.shape[0], y.shape[0])
    if size < 2:
        raise MetricsError(f"KID: subset size must be >= 2, got {size}")
    gen = generator if generator is not None else torch.Generator().manual_seed(0)
    values = []
    for _ in range(subsets):
        ix = torch.randperm(x.shape[0], generator=gen)[:size].numpy()
        iy = torch.randperm(y.shape[0], generator=gen)[:size].numpy()
        values.append(_mmd2_unbiased(x[ix], y[iy]))
    values = np.asarray(values)
    return float(values.mean()), float(values.std(ddof=1) if len(values) > 1 else 0.0)


# ----------------------------------------------------------------------------------------------
# Inception Score
# ----------------------------------------------------------------------------------------------

def inception_score(probs, splits: int = 10) -> tuple[float, float]:
    """Inception Score, Salimans et al. 2016, Sec. 4: exp(E_x KL(p(y|x) ‖ p(y))) with the
    marginal p(y) estimated within each of ``splits`` equal parts; returns (mean, std over splits).
    ``probs`` are class probabilities [N, K] (rows summing to 1)."""
    p = _as_features(probs, "class probabilities", min_rows=1)
    if (p < 0).any() or not np.allclose(p.sum(axis=1), 1.0, atol=1e-4):
        raise MetricsError("inception_score: rows of probs must be non-negative and sum to 1")
    if not 1 <= splits <= p.shape[0]:
        raise MetricsError(f"inception_score: splits must be in 1..{p.shape[0]} (N), got {splits}")
    scores = []
    for part in np.array_split(p, splits):
        marginal = part.mean(axis=0, keepdims=True)
        # KL with the convention 0 log 0 = 0.
        with np.errstate(divide="ignore", invalid="ignore"):
            terms = np.where(part > 0, part * (np.log(part) - np.log(marginal)), 0.0)
        scores.append(math.exp(terms.sum(axis=1).mean()))
    scores = np.asarray(scores)
    return float(scores.mean()), float(scores.std(ddof=1) if len(scores) > 1 else 0.0)


# ----------------------------------------------------------------------------------------------
# Precision and recall
# ----------------------------------------------------------------------------------------------

def _sq_dists(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Squared Euclidean distances [len(a), len(b)] in float64, clamped at 0."""
    d = (a * a).sum(1)[:, None] + (b * b).sum(1)[None, :] - 2.0 * (a @ b.T)
    return d.clamp_(min=0.0)


def _knn_radii(x: torch.Tensor, k: int, chunk: int) -> torch.Tensor:
    """Squared distance of each row of x to its k-th nearest other row."""
    radii = []
    for i in range(0, x.shape[0], chunk):
        d = _sq_dists(x[i:i + chunk], x)
        # the (k+1)-th smallest: the smallest is the point itself (distance 0)
        radii.append(d.topk(k + 1, dim=1, largest=False).values[:, k])
    return torch.cat(radii)


def _coverage(points: torch.Tensor, centers: torch.Tensor, radii: torch.Tensor, chunk: int) -> float:
    """Fraction of points inside at least one ball (center, radius) - Kynkäänniemi eq. (1)."""
    # tolerance for float64 rounding of distances between identical points
    tol = 1e-9 * float((centers * centers).sum(1).mean())
    inside = 0
    for i in range(0, points.shape[0], chunk):
        d = _sq_dists(points[i:i + chunk], centers)
        inside += int((d <= radii[None, :] + tol).any(dim=1).sum())
    return inside / points.shape[0]


def precision_recall(real_features, fake_features, k: int = 3, chunk: int = 2048) -> tuple[float, float]:
    """Improved precision and recall, Kynkäänniemi et al. 2019, eqs. (1)-(3).

    The real manifold is the union of balls around real features with radius the distance to the
    k-th nearest real neighbour; precision is the fraction of fake features inside it, recall the
    fraction of real features inside the fake manifold (built the same way from the fakes).
    """
    real = torch.from_numpy(_as_features(real_features, "real features", min_rows=k + 1))
    fake = torch.from_numpy(_as_features(fake_features, "fake features", min_rows=k + 1))
    if real.shape[1] != fake.shape[1]:
        raise MetricsError(f"precision/recall: feature dimensions differ ({real.shape[1]} vs {fake.shape[1]})")
    if k < 1:
        raise MetricsError(f"precision/recall: k must be >= 1, got {k}")
    precision = _coverage(fake, real, _knn_radii(real, k, chunk), chunk)
    recall = _coverage(real, fake, _knn_radii(fake, k, chunk), chunk)
    return precision, recall


# ----------------------------------------------------------------------------------------------
# Feature extraction
# ----------------------------------------------------------------------------------------------

@torch.no_grad()
def extract(net, images: torch.Tensor, batch_size: int = 500) -> tuple[np.ndarray, np.ndarray]:
    """Penultimate features [N, D] (float32) and class probabilities [N, K] of ``images`` under
    a feature network with ``features(x)`` and ``head(f)``; images are checked first."""
    images = check_images(images, getattr(net, "in_channels", None), getattr(net, "image_size", None))
    net.eval()
    feats, probs = [], []
    for i in range(0, images.shape[0], batch_size):
        x = images[i:i + batch_size].clamp(-1.0, 1.0)
        f = net.features(x)
        feats.append(f.float())
        probs.append(torch.softmax(net.head(f).double(), dim=1))
    return torch.cat(feats).numpy(), torch.cat(probs).numpy()
