"""The Langevin optimizer's noise: a counter-based standard-normal stream.

Element ``e`` of the stream of ``seed`` is a pure function of ``(seed, e)`` (SplitMix64 output
function, Steele, Lea & Flood 2014, then Box-Muller, Box & Muller 1958; the definition is
``reference_normal`` below, the compiled kernel ``_normal.c`` computes the same bits). Being
counter-based, it has two properties the optimizer needs:

* speed: no sequential generator state, so the kernel vectorizes; on the CIFAR-10 CNN's 62,006
  parameters it is several times faster than ``torch.Tensor.normal_`` (MT19937) on one thread
  (``benchmarks/optim/optim_overhead.py``);
* no noise buffer: ``add_`` adds ``std * xi[start:start + n]`` straight into a tensor, so a
  step reads and writes each parameter once for its noise.

The state is two integers (``seed``, ``position``), saved by ``state_dict``. Without the
compiled kernel (no C compiler at install time) the NumPy definition is used: same numbers,
slower.
"""
from __future__ import annotations

import math
import numbers
import os

import numpy as np
import torch

try:
    from difflab.optim import _normal as _kernel
except ImportError:  # the extension is optional (setup.py)
    _kernel = None

MASK64 = (1 << 64) - 1
GAMMA = np.uint64(0x9E3779B97F4A7C15)
MIX1, MIX2 = np.uint64(0xBF58476D1CE4E5B9), np.uint64(0x94D049BB133111EB)
F = np.float32


def kernel_available() -> bool:
    """Whether the compiled kernel is loaded (otherwise the NumPy definition is used)."""
    return _kernel is not None


def _mix64(z: np.ndarray) -> np.ndarray:
    """SplitMix64's output function (Stafford's mix variant 13), on uint64 arrays."""
    z = (z ^ (z >> np.uint64(30))) * MIX1
    z = (z ^ (z >> np.uint64(27))) * MIX2
    return z ^ (z >> np.uint64(31))


def _log_unit(u: np.ndarray) -> np.ndarray:
    """ln u for float32 u in (0, 1], the kernel's polynomial (2 atanh series), op for op."""
    bits = u.view(np.uint32)
    e = (bits >> np.uint32(23)).astype(np.int32) - 127
    mb = (bits & np.uint32(0x007FFFFF)) | np.uint32(0x3F800000)       # m in [1, 2)
    big = (mb > np.uint32(0x3FB504F3)).astype(np.uint32)                 # m > sqrt(2)
    m = (mb - (big << np.uint32(23))).view(np.float32)                  # m or m / 2, exact
    e = e + big.astype(np.int32)
    f = m - F(1.0)
    s = f / (F(2.0) + f)
    s2 = s * s
    poly = F(1.0) + s2 * (F(0.33333333) + s2 * (F(0.2) + s2 * (F(0.14285714) + s2 * F(0.11111111))))
    ef = e.astype(np.float32)
    return ef * F(0.693145751953125) + (ef * F(1.4286068203094172e-06) + F(2.0) * s * poly)


def reference_normal(seed: int, start: int, n: int) -> np.ndarray:
    """Elements ``start .. start + n - 1`` of the stream of ``seed`` (float32): the definition."""
    if n <= 0:
        return np.zeros(0, np.float32)
    with np.errstate(over="ignore"):
        key = _mix64(np.array([seed & MASK64], np.uint64))[0]
        pairs = np.arange(start // 2, (start + n - 1) // 2 + 1, dtype=np.uint64)
        z = _mix64(key + (pairs + np.uint64(1)) * GAMMA)
    a = (z >> np.uint64(40)).astype(np.int32)                            # bits 40..63
    b = ((z >> np.uint64(8)) & np.uint64(0xFFFFFF)).astype(np.int32)     # bits 8..31
    u1 = (a + 1).astype(np.float32) * F(5.9604644775390625e-08)          # (0, 1]
    r = np.sqrt(F(-2.0) * _log_unit(u1))
    q = (b + (1 << 21)) >> 22                                            # angle = q pi/2 + t
    t = (b - (q << 22)).astype(np.float32) * F(3.7450702829239286e-07)
    t2 = t * t
    sn = t * (F(1.0) + t2 * (F(-0.16666667) + t2 * (F(0.0083333333) + t2 * (
        F(-0.00019841270) + t2 * F(2.7557319e-06)))))
    cs = F(1.0) + t2 * (F(-0.5) + t2 * (F(0.041666667) + t2 * (F(-0.0013888889) + t2 * (
        F(2.4801587e-05) + t2 * F(-2.7557319e-07)))))
    swap = (np.uint32(0) - (q & 1).astype(np.uint32)).astype(np.uint32)
    flip = (q.astype(np.uint32) & np.uint32(2)) << np.uint32(30)
    cb, sb = cs.view(np.uint32), sn.view(np.uint32)
    c1 = (cb & ~swap) | ((sb ^ np.uint32(0x80000000)) & swap)
    s1 = (sb & ~swap) | (cb & swap)
    xi = np.empty(2 * pairs.size, np.float32)
    xi[0::2] = r * (c1 ^ flip).view(np.float32)
    xi[1::2] = r * (s1 ^ flip).view(np.float32)
    offset = start - 2 * (start // 2)
    return xi[offset:offset + n]


def _kernel_ok(t: torch.Tensor) -> bool:
    """Whether the kernel can write t in place: a contiguous float32 CPU tensor."""
    return _kernel is not None and t.dtype is torch.float32 and t.is_cpu and t.is_contiguous()


class NormalStream:
    """A standard-normal stream with a position, used like a generator.

    ``reserve(n)`` hands out the next n elements (returns their start); ``fill_``/``add_``
    produce any reserved range. ``normal_(t)`` is reserve + fill.
    """

    def __init__(self, seed: int | None = None):
        if seed is None:
            seed = int.from_bytes(os.urandom(8), "little")  # the global RNG is never touched
        if not _is_int(seed):
            raise ValueError(f"NormalStream: invalid seed {seed!r} (must be an integer or None)")
        self.seed = int(seed) & MASK64
        self.position = 0

    def reserve(self, n: int) -> int:
        if not _is_int(n) or n < 0:
            raise ValueError(f"NormalStream: invalid count {n!r} (must be an integer >= 0)")
        start = self.position
        self.position += int(n)
        return start

    def _unit(self, start: int, n: int) -> torch.Tensor:
        """xi[start:start + n] as a new float32 CPU tensor."""
        if _kernel is None:
            return torch.from_numpy(reference_normal(self.seed, start, n))
        xi = torch.empty(n)
        _kernel.apply((xi.data_ptr(),), (n,), self.seed, start, 0.0, False)
        return xi

    def fill_(self, out: torch.Tensor, start: int) -> torch.Tensor:
        """``out = xi[start:start + out.numel()]`` (shaped like out)."""
        if _kernel_ok(out):
            _kernel.apply((out.data_ptr(),), (out.numel(),), self.seed, start, 0.0, False)
            torch.autograd.graph.increment_version(out)
        else:
            out.copy_(self._unit(start, out.numel()).view(out.shape))
        return out

    def add_(self, tensors: list[torch.Tensor], std: float, start: int,
             sizes: list[int] | None = None) -> None:
        """``t += std * xi[...]`` for each t in order, from element ``start`` on (float32: the
        product is rounded, then the sum, as ``t.add_(xi.mul(std))`` does). ``sizes``: the
        tensors' numel, if the caller has them."""
        sizes = [t.numel() for t in tensors] if sizes is None else sizes
        if not math.isfinite(std):    # NaN/inf would silently poison every tensor
            raise ValueError(f"NormalStream: invalid std {std!r} (must be finite)")
        if _kernel is not None:
            addresses = []
            for t in tensors:
                if not _kernel_ok(t):
                    break
                addresses.append(t.data_ptr())
            else:
                _kernel.apply(addresses, sizes, self.seed, start, float(std), True)
                torch.autograd.graph.increment_version(tensors)
                return
        for t, n in zip(tensors, sizes):
            xi = self._unit(start, n).view(t.shape).to(device=t.device, dtype=t.dtype)
            t.add_(xi.mul_(std))
            start += n

    def normal_(self, out: torch.Tensor) -> torch.Tensor:
        """Fill ``out`` with the next ``out.numel()`` elements of the stream."""
        return self.fill_(out, self.reserve(out.numel()))

    def state_dict(self) -> dict:
        return {"seed": self.seed, "position": self.position}

    @staticmethod
    def check_state(state, where: str = "NormalStream: state") -> None:
        """One-line ValueError unless ``state`` is a ``state_dict()`` of a stream."""
        if not isinstance(state, dict):
            raise ValueError(f"{where} must be a dict with 'seed' and 'position', got "
                             f"{type(state).__name__}")
        keys = set(state)
        if keys != {"seed", "position"}:
            raise ValueError(f"{where} must have exactly the keys 'seed' and 'position', got "
                             f"{', '.join(sorted(map(repr, map(str, keys)))) or 'none'}")
        if not _is_int(state["seed"]):
            raise ValueError(f"{where}: invalid seed {state['seed']!r} (must be an integer)")
        if not _is_int(state["position"]) or state["position"] < 0:
            raise ValueError(f"{where}: invalid position {state['position']!r} (must be an "
                             "integer >= 0)")

    def load_state_dict(self, state: dict) -> None:
        self.check_state(state)
        self.seed = int(state["seed"]) & MASK64
        self.position = int(state["position"])


def _is_int(v) -> bool:
    return isinstance(v, numbers.Integral) and not isinstance(v, bool)
