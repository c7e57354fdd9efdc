"""Linear measurement operators y = A x + sigma_y n for training-free restoration.

Each operator is a small object in the style of DDRM's ``H_functions`` (Kawar et al. 2022, App. B)
and deepinv's ``LinearPhysics``: batched, differentiable torch on the input's device and dtype.

| code        | symbol          | meaning                                                        |
|-------------|-----------------|----------------------------------------------------------------|
| A(x)        | A x             | the forward map, image [B, C, H, W] -> measurement y           |
| At(y)       | A^T y           | the adjoint                                                    |
| pinv(y)     | A^+ y           | the Moore-Penrose pseudo-inverse (singular values below        |
|             |                 | ``rcond * s_max`` count as zero, like ``numpy.linalg.pinv``)   |
| sigma_y     | sigma_y         | std of the measurement noise                                   |
| Vt, V       | V^T, V          | orthonormal image-space basis of the SVD A = U S V^T           |
| Ut, U       | U^T, U          | orthonormal measurement-space basis                            |
| singulars(x)| diag(S)         | singular values, broadcastable to the shape of ``Vt(x)``       |

The SVD view uses a padded "spectral" tensor z = Vt(x) (one entry per image dimension, in an
operator-specific layout); ``singulars(x)`` is zero where a direction is not measured, ``Ut(y)``
returns a spectral tensor that is zero there, and ``U(z)`` ignores those entries, so that
A x = U(singulars(x) * Vt(x)) and A^T y = V(singulars(x) * Ut(y)) hold for every operator.

Measurements live in a per-operator space: images for Identity, Inpainting (masked images: the
unobserved pixels of y are 0 and carry no noise) and Blur; [B, C, H/f, W/f] for Downsample;
[B, 1, H, W] for Grayscale. ``measure(x, generator)`` draws y = A x + sigma_y n in that space.
"""
from __future__ import annotations

import math

import torch


def _check_sigma_y(sigma_y) -> float:
    sigma_y = float(sigma_y)
    if not (math.isfinite(sigma_y) and sigma_y >= 0):
        raise ValueError(f"measurement noise sigma_y={sigma_y} must be a finite number >= 0")
    return sigma_y


def _check_image(x: torch.Tensor, name: str) -> None:
    if x.dim() != 4:
        raise ValueError(f"{name} needs images [B, C, H, W], got shape {tuple(x.shape)}")


def constant_first_basis(n: int, dtype=torch.float64, device=None) -> torch.Tensor:
    """Orthonormal n x n matrix whose first row is 1/sqrt(n): the orthonormal DCT-II,
    Q[k, j] = sqrt(2/n) cos(pi (j + 1/2) k / n), Q[0, j] = 1/sqrt(n) (Ahmed et al. 1974)."""
    k = torch.arange(n, dtype=torch.float64)[:, None]
    j = torch.arange(n, dtype=torch.float64)[None]
    q = math.sqrt(2 / n) * torch.cos(math.pi * (j + 0.5) * k / n)
    q[0] = 1 / math.sqrt(n)
    return q.to(dtype=dtype, device=device)


class LinearOperator:
    """Base class: subclasses define A, At, Vt, V, Ut, U, singulars and image_shape; pinv,
    project and measure follow (subclasses override them where a shortcut is exact)."""

    def __init__(self, sigma_y: float = 0.0, rcond: float = 1e-6):
        self.sigma_y = _check_sigma_y(sigma_y)
        rcond = float(rcond)
        if not 0 <= rcond < 1:
            raise ValueError(f"rcond={rcond} must be in [0, 1)")
        self.rcond = rcond

    def image_shape(self, y: torch.Tensor) -> tuple[int, ...]:
        """Shape of the images x whose measurements have the shape of ``y``."""
        return tuple(y.shape)

    def kept(self, x: torch.Tensor) -> torch.Tensor:
        """Boolean spectral mask of the directions A measures (s > rcond * s_max)."""
        s = self.singulars(x)
        return s > self.rcond * s.amax()

    def inv_singulars(self, x: torch.Tensor) -> torch.Tensor:
        """1 / s on the measured directions, 0 elsewhere (the diagonal of S^+)."""
        s = self.singulars(x)
        return torch.where(self.kept(x), 1 / torch.where(s > 0, s, torch.ones_like(s)),
                           torch.zeros_like(s))

    def pinv(self, y: torch.Tensor) -> torch.Tensor:
        """A^+ y = V S^+ U^T y."""
        like = y.new_empty(self.image_shape(y))
        return self.V(self.inv_singulars(like) * self.Ut(y))

    def project(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """The closest image to x with A x = y: x + A^+ (y - A x) (the DDNM range-space step)."""
        return x + self.pinv(y - self.A(x))

    def noise(self, y: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """Standard normal noise in the measurement space of ``y``."""
        return torch.randn(y.shape, generator=generator, dtype=y.dtype, device=y.device)

    def measure(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """y = A x + sigma_y n."""
        y = self.A(x)
        return y + self.sigma_y * self.noise(y, generator) if self.sigma_y > 0 else y

    def __repr__(self) -> str:
        return f"{type(self).__name__}(sigma_y={self.sigma_y:g})"


class Identity(LinearOperator):
    """A = I: denoising of y = x + sigma_y n."""

    def A(self, x):
        return x

    At = Vt = V = Ut = U = pinv = A

    def singulars(self, x):
        return x.new_ones(())

    def project(self, x, y):
        return y.clone()


class Inpainting(LinearOperator):
    """A = diag(mask): keep the pixels where ``mask`` is 1 (per image: [B, 1, H, W], [B, C, H, W]
    or anything broadcastable to the images), zero the rest. U = V = I, singular values = mask."""

    def __init__(self, mask, sigma_y: float = 0.0):
        super().__init__(sigma_y)
        mask = torch.as_tensor(mask)
        if mask.dtype != torch.bool:
            bad = mask[(mask != 0) & (mask != 1)]
            if bad.numel():
                raise ValueError(f"inpainting mask must hold only 0 and 1, got value {bad[0].item():g}")
            mask = mask != 0
        self.mask = mask

    def _mask(self, x: torch.Tensor) -> torch.Tensor:
        try:
            shape = torch.broadcast_shapes(self.mask.shape, x.shape)
        except RuntimeError:
            shape = None
        if shape != x.shape:
            raise ValueError(f"inpainting mask of shape {tuple(self.mask.shape)} does not broadcast "
                             f"to images of shape {tuple(x.shape)}")
        return self.mask.to(x.device)

    def A(self, x):
        return x * self._mask(x).to(x.dtype)

    At = U = Ut = pinv = A

    def Vt(self, x):
        return x

    V = Vt

    def singulars(self, x):
        return self._mask(x).to(x.dtype)

    def project(self, x, y):
        """Known pixels set to y exactly (torch.where, not x + (y - x))."""
        return torch.where(self._mask(x), y, x)

    def noise(self, y, generator=None):
        return super().noise(y, generator) * self._mask(y).to(y.dtype)

    def __repr__(self):
        return f"Inpainting(mask={tuple(self.mask.shape)}, sigma_y={self.sigma_y:g})"


class Downsample(LinearOperator):
    """Average pooling by an integer ``factor`` f (super-resolution): each f x f block -> its mean.
    Per block A is the row (1/f^2) 1^T, with one singular value 1/f; V is the orthonormal DCT of
    the block (first row constant), U = I. Spectral layout [B, C, H/f, W/f, f^2]."""

    def __init__(self, factor: int, sigma_y: float = 0.0):
        super().__init__(sigma_y)
        if isinstance(factor, bool) or int(factor) != factor or factor < 1:
            raise ValueError(f"downsampling factor={factor} must be a positive integer")
        self.factor = int(factor)

    def _check(self, x):
        _check_image(x, "Downsample")
        H, W = x.shape[-2:]
        if H % self.factor or W % self.factor:
            raise ValueError(f"downsampling factor {self.factor} does not divide image size {H}x{W}")

    def image_shape(self, y):
        return (*y.shape[:-2], y.shape[-2] * self.factor, y.shape[-1] * self.factor)

    def A(self, x):
        self._check(x)
        return torch.nn.functional.avg_pool2d(x, self.factor)

    def At(self, y):
        f = self.factor
        return y.repeat_interleave(f, -2).repeat_interleave(f, -1) / f**2

    def pinv(self, y):
        """Nearest-neighbour upsampling (A A^T = I / f^2, so A^+ = f^2 A^T)."""
        return y.repeat_interleave(self.factor, -2).repeat_interleave(self.factor, -1)

    def _basis(self, t):
        return constant_first_basis(self.factor**2, t.dtype, t.device)

    def Vt(self, x):
        self._check(x)
        B, C, H, W = x.shape
        f = self.factor
        blocks = x.reshape(B, C, H // f, f, W // f, f).permute(0, 1, 2, 4, 3, 5)
        return blocks.reshape(B, C, H // f, W // f, f * f) @ self._basis(x).T

    def V(self, z):
        B, C, h, w, _ = z.shape
        f = self.factor
        blocks = (z @ self._basis(z)).reshape(B, C, h, w, f, f).permute(0, 1, 2, 4, 3, 5)
        return blocks.reshape(B, C, h * f, w * f)

    def Ut(self, y):
        return torch.nn.functional.pad(y[..., None], (0, self.factor**2 - 1))

    def U(self, z):
        return z[..., 0]

    def singulars(self, x):
        s = x.new_zeros(self.factor**2)
        s[0] = 1 / self.factor
        return s

    def __repr__(self):
        return f"Downsample(factor={self.factor}, sigma_y={self.sigma_y:g})"


def hartley2(x: torch.Tensor) -> torch.Tensor:
    """Orthonormal 2-D discrete Hartley transform over the last two axes,
    H x = Re(F x) - Im(F x) with the unitary DFT F (Bracewell 1983). Real, symmetric, H H = I."""
    spectrum = torch.fft.fft2(x, norm="ortho")
    return spectrum.real - spectrum.imag


MAX_BLUR_STD = 1e4  # pixels: wider is a uniform blur for any image there is; std^2 fits


class Blur(LinearOperator):
    """Circular convolution with a point-symmetric kernel: a Gaussian of standard deviation
    ``std`` pixels (periodised over the image) or a ``size`` x ``size`` box (odd size).

    A circulant matrix is diagonalised by the DFT; for a point-symmetric kernel its eigenvalues
    lambda = DFT(kernel) are real and equal at +-frequency, so the real, orthonormal Hartley basis
    diagonalises it too: A = H diag(lambda) H. The SVD is V = H, S = |lambda|, U = H diag(sign lambda):
    exact and diagonal in Fourier space. Spectral layout: the image shape [B, C, H, W]."""

    def __init__(self, std: float | None = None, size: int | None = None, sigma_y: float = 0.0,
                 rcond: float = 1e-6):
        super().__init__(sigma_y, rcond)
        if (std is None) == (size is None):
            raise ValueError(f"Blur needs exactly one of std (Gaussian) or size (box), "
                             f"got std={std}, size={size}")
        if std is not None and not 0 < float(std) <= MAX_BLUR_STD:  # (NaN fails too)
            raise ValueError(f"Gaussian blur std={std} must be a number in (0, {MAX_BLUR_STD:g}] "
                             "pixels")
        if size is not None and (isinstance(size, bool) or int(size) != size or size < 1
                                 or size % 2 == 0):
            raise ValueError(f"box blur size={size} must be an odd positive integer")
        self.std = None if std is None else float(std)
        self.size = None if size is None else int(size)

    def kernel(self, H: int, W: int, dtype=torch.float64, device=None) -> torch.Tensor:
        """The H x W periodic kernel, centred at pixel (0, 0), summing to 1."""
        dy = torch.arange(H, dtype=torch.float64)
        dx = torch.arange(W, dtype=torch.float64)
        dy, dx = torch.minimum(dy, H - dy), torch.minimum(dx, W - dx)  # circular distance
        if self.std is not None:
            k = torch.exp(-(dy[:, None] ** 2 + dx[None] ** 2) / (2 * self.std**2))
        else:
            if self.size > min(H, W):
                raise ValueError(f"box blur size {self.size} exceeds image size {H}x{W}")
            r = self.size // 2
            k = ((dy[:, None] <= r) & (dx[None] <= r)).to(torch.float64)
        return (k / k.sum()).to(dtype=dtype, device=device)

    def eigenvalues(self, x: torch.Tensor) -> torch.Tensor:
        """Real eigenvalues lambda of the circulant A, shape [H, W]."""
        _check_image(x, "Blur")
        H, W = x.shape[-2:]
        k = self.kernel(H, W, torch.float64, x.device)
        return torch.fft.fft2(k).real.to(x.dtype)

    def A(self, x):
        lam = self.eigenvalues(x)
        return hartley2(lam * hartley2(x))

    At = A  # symmetric kernel: A^T = A

    def Vt(self, x):
        return hartley2(x)

    V = Vt

    def Ut(self, y):
        return torch.sign(self.eigenvalues(y)) * hartley2(y)

    def U(self, z):
        return hartley2(torch.sign(self.eigenvalues(z)) * z)

    def singulars(self, x):
        return self.eigenvalues(x).abs()

    def __repr__(self):
        kind = f"std={self.std:g}" if self.std is not None else f"size={self.size}"
        return f"Blur({kind}, sigma_y={self.sigma_y:g})"


class Grayscale(LinearOperator):
    """Colorization: y = mean over the C channels, [B, C, H, W] -> [B, 1, H, W]. Per pixel A is
    the row (1/C) 1^T with singular value 1/sqrt(C); V is the orthonormal DCT across channels,
    U = I. Spectral layout [B, C, H, W] (channel 0 is the measured direction)."""

    def __init__(self, channels: int = 3, sigma_y: float = 0.0):
        super().__init__(sigma_y)
        if isinstance(channels, bool) or int(channels) != channels or channels < 1:
            raise ValueError(f"grayscale channels={channels} must be a positive integer")
        self.channels = int(channels)

    def _check(self, x):
        _check_image(x, "Grayscale")
        if x.shape[1] != self.channels:
            raise ValueError(f"Grayscale expects {self.channels} channels, got {x.shape[1]}")

    def image_shape(self, y):
        return (y.shape[0], self.channels, *y.shape[2:])

    def A(self, x):
        self._check(x)
        return x.mean(1, keepdim=True)

    def At(self, y):
        return y.expand(self.image_shape(y)) / self.channels

    def pinv(self, y):
        return y.expand(self.image_shape(y)).clone()

    def Vt(self, x):
        self._check(x)
        return torch.einsum("kc,bchw->bkhw", constant_first_basis(self.channels, x.dtype, x.device), x)

    def V(self, z):
        return torch.einsum("kc,bkhw->bchw", constant_first_basis(self.channels, z.dtype, z.device), z)

    def Ut(self, y):
        return torch.nn.functional.pad(y, (0, 0, 0, 0, 0, self.channels - 1))

    def U(self, z):
        return z[:, :1]

    def singulars(self, x):
        s = x.new_zeros(self.channels, 1, 1)
        s[0] = 1 / math.sqrt(self.channels)
        return s

    def __repr__(self):
        return f"Grayscale(channels={self.channels}, sigma_y={self.sigma_y:g})"
