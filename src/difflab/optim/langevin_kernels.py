"""The update of the ``Langevin`` optimizer (``langevin.py``): a group's unit noise, the noise
scales of each mode, and the two implementations (plain loop and ``torch._foreach_*``) that
consume exactly the same noise elements and so agree bit for bit."""
from __future__ import annotations

import math

import torch

def _real(t: torch.Tensor) -> torch.Tensor:
    """``view_as_real`` of a complex tensor (sharing memory), a real tensor itself."""
    return torch.view_as_real(t) if t.dtype.is_complex else t


def _complex_like(t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """Inverse of ``_real``: a real tensor computed on ``_real(like)`` back in like's dtype."""
    return torch.view_as_complex(t.contiguous()) if like.dtype.is_complex else t


class _GroupNoise:
    """Unit noise xi ~ N(0, I) of one group for one step, element j of parameter i being
    element ``start + offset_i + j`` of either the optimizer's ``NormalStream`` (added by the
    kernel without a buffer) or a flat ``torch.Generator`` draw (``flat``, start 0). ``params``
    are the real views of the group's parameters (complex ones through ``view_as_real``); the
    targets given to ``add_``/``add_all_`` may be complex and are viewed the same way."""

    def __init__(self, params, sizes, start, *, stream=None, flat=None, has_complex=False):
        self.params, self.sizes, self.start = params, sizes, start
        self.stream, self.flat = stream, flat
        self.has_complex = has_complex
        self._starts = self._unit = None

    @property
    def starts(self) -> list[int]:
        if self._starts is None:
            self._starts = [self.start]
            for n in self.sizes[:-1]:
                self._starts.append(self._starts[-1] + n)
        return self._starts

    def unit(self) -> list[torch.Tensor]:
        """xi as real tensors shaped like the (real views of the) parameters."""
        if self._unit is None:
            flat, base = self.flat, 0
            if flat is None:                  # one kernel call for the group, then views
                flat = self.stream.fill_(torch.empty(sum(self.sizes)), self.start)
                base = self.start
            self._unit = [flat[s - base:s - base + p.numel()].view_as(p).to(p)
                          for p, s in zip(self.params, self.starts)]
        return self._unit

    def add_(self, i: int, t: torch.Tensor, std: float) -> None:
        """t += std * xi_i."""
        if self.has_complex:
            t = _real(t)
        if self.flat is None:
            self.stream.add_([t], std, self.starts[i])
        else:
            t.add_(self.unit()[i], alpha=std)

    def add_all_(self, tensors: list[torch.Tensor], std: float) -> None:
        """tensors[i] += std * xi_i for every parameter i."""
        if self.has_complex:
            tensors = [_real(t) for t in tensors]
        if self.flat is None:
            self.stream.add_(tensors, std, self.start, self.sizes)
        else:
            torch._foreach_add_(tensors, self.unit(), alpha=std)


def _noise_scales(group: dict, temperature: float, t: int) -> tuple[float, float, float]:
    """(gradient-noise std, momentum-buffer noise std, parameter noise std) for this step."""
    lr, mu, noise = group["lr"], group["momentum"], group["noise"]
    if temperature == 0:
        return 0.0, 0.0, 0.0
    if noise == "annealed":
        return math.sqrt(temperature / (1.0 + t) ** group["gamma"]), 0.0, 0.0
    if noise == "constant":
        return 0.0, 0.0, temperature
    if mu != 0:
        if lr == 0:
            raise ValueError("Langevin: momentum noise needs lr > 0")
        return 0.0, math.sqrt(2.0 * (1.0 - mu) * (1.0 - group["dampening"]) * temperature / lr), 0.0
    return 0.0, 0.0, math.sqrt(2.0 * lr * temperature)


def _reference_update(params, grads, states, noise, group, scales) -> None:
    """Plain per-parameter loop (the readable definition). Complex tensors use complex
    arithmetic where ``torch.optim.SGD`` does (drift, weight decay, momentum) and their
    ``view_as_real`` for the noise and the per-part RMSprop average."""
    lr, wd, mu = group["lr"], group["weight_decay"], group["momentum"]
    dampening, nesterov = group["dampening"], group["nesterov"]
    grad_std, buf_std, param_std = scales
    precondition = group["preconditioner"] == "rmsprop"
    # pSGLD scales the Langevin noise by sqrt(G): that noise needs the unit tensors
    scale_noise = precondition and noise is not None and group["noise"] == "langevin"
    for i, (p, g, state) in enumerate(zip(params, grads, states)):
        if wd != 0:
            g = g.add(p, alpha=wd)
        if grad_std != 0:
            g = g.clone() if wd == 0 else g
            noise.add_(i, g, grad_std)
        scaled_xi = None                                 # sqrt(G) * xi when preconditioned
        if precondition:
            v, gr = _real(state["square_avg"]), _real(g)
            v.mul_(group["alpha"]).addcmul_(gr, gr, value=1 - group["alpha"])
            denom = v.sqrt().add_(group["eps"])          # 1 / G
            g = _complex_like(gr.div(denom), g)
            if scale_noise:
                scaled_xi = noise.unit()[i].div(denom.sqrt())
        if mu != 0:
            buf = state["momentum_buffer"]
            if buf is None:
                buf = g.detach().clone()
                state["momentum_buffer"] = buf
            else:
                buf.mul_(mu).add_(g, alpha=1 - dampening)
            if buf_std != 0:
                if scaled_xi is None:
                    noise.add_(i, buf, buf_std)
                else:
                    _real(buf).add_(scaled_xi, alpha=buf_std)
            g = g.add(buf, alpha=mu) if nesterov else buf
        p.add_(g, alpha=-lr)
        if param_std != 0 and scaled_xi is not None:
            _real(p).add_(scaled_xi, alpha=param_std)
    if param_std != 0 and not scale_noise:
        noise.add_all_(params, param_std)   # theta += std * xi_i for every i, in one call


def _foreach_update(params, grads, states, noise, group, scales) -> None:
    """The same update with ``torch._foreach_*`` kernels (one call per operation and group)."""
    lr, wd, mu = group["lr"], group["weight_decay"], group["momentum"]
    dampening, nesterov = group["dampening"], group["nesterov"]
    grad_std, buf_std, param_std = scales
    if wd != 0:
        grads = torch._foreach_add(grads, params, alpha=wd)
    if grad_std != 0:
        grads = [g.clone() for g in grads] if wd == 0 else grads
        noise.add_all_(grads, grad_std)
    scaled_xis = None
    if group["preconditioner"] == "rmsprop":
        has_complex = noise.has_complex if noise is not None else any(
            p.dtype.is_complex for p in params)
        squares = [s["square_avg"] for s in states]
        real_grads = grads
        if has_complex:
            squares, real_grads = [_real(s) for s in squares], [_real(g) for g in grads]
        torch._foreach_mul_(squares, group["alpha"])
        torch._foreach_addcmul_(squares, real_grads, real_grads, value=1 - group["alpha"])
        denoms = torch._foreach_sqrt(squares)
        torch._foreach_add_(denoms, group["eps"])
        real_grads = torch._foreach_div(real_grads, denoms)
        grads = [_complex_like(r, g) for r, g in zip(real_grads, grads)] if has_complex \
            else real_grads
        if noise is not None and group["noise"] == "langevin":
            scaled_xis = torch._foreach_div(noise.unit(), torch._foreach_sqrt(denoms))
    if mu != 0:
        if all(s["momentum_buffer"] is not None for s in states):
            bufs = [s["momentum_buffer"] for s in states]
            torch._foreach_mul_(bufs, mu)
            torch._foreach_add_(bufs, grads, alpha=1 - dampening)
        else:
            bufs = []
            for g, s in zip(grads, states):
                if s["momentum_buffer"] is None:
                    s["momentum_buffer"] = g.detach().clone()
                else:
                    s["momentum_buffer"].mul_(mu).add_(g, alpha=1 - dampening)
                bufs.append(s["momentum_buffer"])
        if buf_std != 0:
            if scaled_xis is None:
                noise.add_all_(bufs, buf_std)
            else:
                torch._foreach_add_([_real(b) for b in bufs], scaled_xis, alpha=buf_std)
        grads = torch._foreach_add(grads, bufs, alpha=mu) if nesterov else bufs
    torch._foreach_add_(params, grads, alpha=-lr)
    if param_std != 0:
        if scaled_xis is None:
            noise.add_all_(params, param_std)
        else:
            torch._foreach_add_([_real(p) for p in params], scaled_xis, alpha=param_std)
