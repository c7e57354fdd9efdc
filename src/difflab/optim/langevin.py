"""Langevin ("diffusion") optimizers: SGLD, the tutorial's constant-noise variant, SGHMC-style
momentum, annealed gradient noise and the pSGLD preconditioner, in ``torch.optim`` style.

| code name        | paper symbol                   | meaning                                              |
| ---------------- | ------------------------------ | ---------------------------------------------------- |
| ``lr``           | eps/2 (Welling & Teh 2011)     | step size of the drift -grad L                       |
| ``temperature``  | D (diffusion coefficient)      | SDE d theta = -grad L dt + sqrt(2 D) dW              |
| ``xi``           | xi ~ N(0, I)                   | unit noise from the optimizer's own generator        |
| ``momentum``     | 1 - alpha (Chen et al. 2014)   | SGHMC friction alpha = 1 - momentum                  |
| ``square_avg``   | V (Li et al. 2016, Alg. 1)     | RMSprop average of g*g                               |
| ``G``            | G = 1 / (lambda + sqrt(V))     | pSGLD diagonal preconditioner (``eps`` is lambda)    |
| ``gamma``        | gamma (Neelakantan et al. 2015) | decay exponent of the annealed gradient-noise variance |

Noise is ONE standard-normal vector per group and step over all parameters of the group that
have a gradient, in group order: the next ``sum(numel)`` elements of the optimizer's own
counter-based ``NormalStream`` (``normal.py``; by default), or one ``flat.normal_(generator)``
split into views when a ``torch.Generator`` is passed. The stream lets a compiled kernel add
``std * xi`` straight into each parameter (or momentum buffer), which is what keeps ``step()``
close to the cost of ``torch.optim.SGD(momentum=0.9)``; torch's MT19937 ``normal_`` alone costs
about 2x such a step on a small CNN (BENCHMARKS.md). Both implementations (plain loop and
``torch._foreach_*``) consume exactly the same elements, so they agree bit for bit; with an
effective temperature of 0 nothing is drawn and the update is ``torch.optim.SGD``'s, operation
for operation.
"""
from __future__ import annotations

import math

import torch
from torch.optim import Optimizer

from difflab.optim.normal import NormalStream

NOISE_MODES = ("langevin", "constant", "annealed")
PRECONDITIONERS = (None, "rmsprop")
TEMPERATURE_SCHEDULES = ("constant", "linear", "cosine")


def _check_choice(name: str, value, choices) -> None:
    if value not in choices:
        raise ValueError(f"Langevin: invalid {name} {value!r} (choose from "
                         f"{', '.join(repr(c) for c in choices)})")


def scheduled_temperature(group: dict, step: int) -> float:
    """Temperature D_t of a param group at (0-based) step ``step``.

    ``constant``: D. ``linear``/``cosine``: from D to ``temperature_end`` over ``schedule_steps``
    steps, then ``temperature_end``.
    """
    d0, kind = group["temperature"], group["temperature_schedule"]
    if kind == "constant":
        return d0
    d1, total = group["temperature_end"], group["schedule_steps"]
    u = min(step / total, 1.0)
    if kind == "linear":
        return d1 + (d0 - d1) * (1.0 - u)
    return d1 + (d0 - d1) * 0.5 * (1.0 + math.cos(math.pi * u))


class Langevin(Optimizer):
    r"""Stochastic gradient Langevin dynamics, Welling & Teh 2011 (eq. 4), with variants.

    Plain update (``noise="langevin"``, no momentum), the Euler-Maruyama step of
    ``d theta = -grad L dt + sqrt(2 D) dW``::

        g     = grad + weight_decay * theta
        theta = theta - lr * g + sqrt(2 * lr * D) * xi,      xi ~ N(0, I)

    Mapping from Welling & Teh (eq. 4: ``d theta = eps/2 * grad log p(theta | X) + N(0, eps)``):
    for a *sum* loss (negative log posterior) use ``lr = eps/2`` and ``D = 1``; for a *mean*
    loss over N training points (what deep learning code minimises) use ``lr = N * eps / 2`` and
    ``D = 1/N``. ``D = 1/N`` is therefore the Bayesian posterior temperature; larger D is hotter.

    Noise modes (``temperature`` is the one noise knob in every mode):

    * ``"langevin"``: std ``sqrt(2 * lr * D)`` added to theta (above).
    * ``"constant"``: std ``D`` per step regardless of lr, ``theta = theta - lr*g + D*xi``, the
      update the popular tutorial's code performs.
    * ``"annealed"``: Gaussian noise added to the gradient, variance ``eta / (1 + t)^gamma`` with
      ``eta = temperature`` and t the 0-based step (Neelakantan et al. 2015); the noisy
      gradient then flows through weight decay, preconditioner and momentum like any gradient.

    Momentum (SGHMC-style friction; Chen et al. 2014 write SGHMC as SGD with momentum,
    ``v = v - eta grad U - alpha v + N(0, 2 alpha eta D)``, here with friction
    ``alpha = 1 - momentum`` and step ``eta = lr * (1 - dampening)``, noise estimate beta_hat = 0):
    the buffer follows ``torch.optim.SGD`` exactly,
    ``buf = momentum * buf + (1 - dampening) * g`` (``buf = g`` on the first step), and in
    ``"langevin"`` mode the noise enters the buffer,
    ``buf += sqrt(2 * (1 - momentum) * (1 - dampening) * D / lr) * xi``, so that the velocity
    ``-lr * buf`` receives variance ``2 * alpha * eta * D`` and the stationary temperature stays
    D. ``nesterov`` uses SGD's look-ahead ``g + momentum * buf`` (the temperature is then
    approximate). In ``"constant"`` mode the noise is added to theta as in the tutorial.

    Preconditioner ``"rmsprop"`` (pSGLD, Li et al. 2016, Algorithm 1, without the Gamma
    correction as in their experiments): ``V = alpha*V + (1-alpha) g*g``,
    ``G = 1 / (eps + sqrt(V))``; the drift uses ``G * g`` and the Langevin noise ``sqrt(G) * xi``.

    Temperature schedule per group: ``temperature_schedule`` in ``constant | linear | cosine``
    goes from ``temperature`` to ``temperature_end`` over ``schedule_steps`` steps.

    Noise comes from the optimizer's own generator, never from the global RNG: a
    ``NormalStream`` seeded with ``seed`` (random if None), or the ``torch.Generator`` passed
    as ``generator`` (any device; slower on CPU). Its state is part of ``state_dict()``.
    ``foreach=None`` selects the ``torch._foreach_*`` path; ``foreach=False`` the plain loop.
    With an effective temperature of 0 the result equals ``torch.optim.SGD`` with the same
    ``lr, momentum, dampening, nesterov, weight_decay`` bit for bit.
    """

    def __init__(self, params, lr: float = 1e-3, temperature: float = 0.0, *,
                 noise: str = "langevin", momentum: float = 0.0, dampening: float = 0.0,
                 nesterov: bool = False, weight_decay: float = 0.0,
                 preconditioner: str | None = None, alpha: float = 0.99, eps: float = 1e-8,
                 gamma: float = 0.55, temperature_schedule: str = "constant",
                 temperature_end: float = 0.0, schedule_steps: int = 0,
                 seed: int | None = None, generator: torch.Generator | None = None,
                 foreach: bool | None = None):
        if lr < 0:
            raise ValueError(f"Langevin: invalid lr {lr} (must be >= 0)")
        if temperature < 0 or temperature_end < 0:
            raise ValueError(f"Langevin: invalid temperature {temperature}/{temperature_end} "
                             "(must be >= 0)")
        if not 0.0 <= momentum < 1.0:
            raise ValueError(f"Langevin: invalid momentum {momentum} (must be in [0, 1))")
        if weight_decay < 0:
            raise ValueError(f"Langevin: invalid weight_decay {weight_decay} (must be >= 0)")
        if nesterov and (momentum <= 0 or dampening != 0):
            raise ValueError("Langevin: nesterov requires momentum > 0 and zero dampening")
        if not 0.0 <= alpha < 1.0 or eps <= 0:
            raise ValueError(f"Langevin: invalid alpha {alpha} or eps {eps}")
        _check_choice("noise", noise, NOISE_MODES)
        _check_choice("preconditioner", preconditioner, PRECONDITIONERS)
        _check_choice("temperature_schedule", temperature_schedule, TEMPERATURE_SCHEDULES)
        if temperature_schedule != "constant" and schedule_steps <= 0:
            raise ValueError("Langevin: a temperature schedule needs schedule_steps > 0")
        if generator is not None and seed is not None:
            raise ValueError("Langevin: pass either seed or generator, not both")
        defaults = dict(lr=lr, temperature=temperature, noise=noise, momentum=momentum,
                        dampening=dampening, nesterov=nesterov, weight_decay=weight_decay,
                        preconditioner=preconditioner, alpha=alpha, eps=eps, gamma=gamma,
                        temperature_schedule=temperature_schedule,
                        temperature_end=temperature_end, schedule_steps=schedule_steps,
                        foreach=foreach)
        super().__init__(params, defaults)
        for group in self.param_groups:
            _check_choice("noise", group["noise"], NOISE_MODES)
            _check_choice("preconditioner", group["preconditioner"], PRECONDITIONERS)
            _check_choice("temperature_schedule", group["temperature_schedule"],
                          TEMPERATURE_SCHEDULES)
            if group["temperature_schedule"] != "constant" and group["schedule_steps"] <= 0:
                raise ValueError("Langevin: a temperature schedule needs schedule_steps > 0")
            group.setdefault("step", 0)
        self.generator = generator
        self.noise_stream = NormalStream(seed) if generator is None else None
        self._flat_noise: dict[int, torch.Tensor] = {}

    # -- state ---------------------------------------------------------------------------------
    def state_dict(self) -> dict:
        state = super().state_dict()
        if self.generator is None:
            state["noise_stream"] = self.noise_stream.state_dict()
        else:
            state["generator_state"] = self.generator.get_state()
        return state

    def load_state_dict(self, state_dict: dict) -> None:
        state_dict = dict(state_dict)
        stream_state = state_dict.pop("noise_stream", None)
        generator_state = state_dict.pop("generator_state", None)
        has_source = stream_state is not None or generator_state is not None
        if has_source and (stream_state is not None) != (self.generator is None):
            raise ValueError("Langevin: the state_dict's noise source (seed/stream or "
                             "torch.Generator) differs from this optimizer's")
        super().load_state_dict(state_dict)
        if stream_state is not None:
            self.noise_stream.load_state_dict(stream_state)
        if generator_state is not None:
            self.generator.set_state(generator_state)

    # -- noise ---------------------------------------------------------------------------------
    def _group_noise(self, index: int, params: list[torch.Tensor]) -> "_GroupNoise":
        """This step's unit noise for one group: the next ``sum(numel)`` elements."""
        sizes = [p.numel() for p in params]
        if self.generator is None:
            return _GroupNoise(params, sizes, self.noise_stream.reserve(sum(sizes)),
                               stream=self.noise_stream)
        dtype, device = params[0].dtype, params[0].device
        if any(p.dtype != dtype or p.device != device for p in params):
            raise ValueError("Langevin: with a torch.Generator all parameters of a group must "
                             "share dtype and device")
        flat = self._flat_noise.get(index)
        if flat is None or flat.numel() != sum(sizes) or flat.dtype != dtype:
            flat = torch.empty(sum(sizes), dtype=dtype, device=self.generator.device)
            self._flat_noise[index] = flat
        flat.normal_(generator=self.generator)
        return _GroupNoise(params, sizes, 0, flat=flat.to(device))

    # -- step ----------------------------------------------------------------------------------
    @torch.no_grad()
    def step(self, closure=None):
        """One update of every param group; returns the closure's loss if a closure is given."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for index, group in enumerate(self.param_groups):
            params, grads = [], []
            for p in group["params"]:
                if p.grad is not None:
                    params.append(p)
                    grads.append(p.grad)
            t = group["step"]
            group["step"] = t + 1
            if not params:
                continue
            if any(g.is_sparse for g in grads):
                raise ValueError("Langevin: sparse gradients are not supported")
            temperature = scheduled_temperature(group, t)
            if group["momentum"] != 0 or group["preconditioner"] is not None:
                states = [self.state[p] for p in params]
                for p, state in zip(params, states):  # lazy per-parameter state
                    if group["momentum"] != 0 and "momentum_buffer" not in state:
                        state["momentum_buffer"] = None
                    if group["preconditioner"] == "rmsprop" and "square_avg" not in state:
                        state["square_avg"] = torch.zeros_like(
                            p, memory_format=torch.preserve_format)
            else:
                states = [None] * len(params)    # plain SGLD keeps no per-parameter state
            noise = self._group_noise(index, params) if temperature > 0 else None
            foreach = group["foreach"] is not False
            update = _foreach_update if foreach else _reference_update
            update(params, grads, states, noise, group, temperature, t)
        return loss


class _GroupNoise:
    """Unit noise xi ~ N(0, I) of one group for one step, element j of parameter i being
    element ``start + offset_i + j`` of either the optimizer's ``NormalStream`` (added by the
    kernel without a buffer) or a flat ``torch.Generator`` draw (``flat``, start 0)."""

    def __init__(self, params, sizes, start, *, stream=None, flat=None):
        self.params, self.sizes, self.start = params, sizes, start
        self.stream, self.flat = stream, flat
        self._starts = self._unit = None

    @property
    def starts(self) -> list[int]:
        if self._starts is None:
            self._starts = [self.start]
            for n in self.sizes[:-1]:
                self._starts.append(self._starts[-1] + n)
        return self._starts

    def unit(self) -> list[torch.Tensor]:
        """xi as tensors shaped like the parameters."""
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
        if self.flat is None:
            self.stream.add_([t], std, self.starts[i])
        else:
            t.add_(self.unit()[i], alpha=std)

    def add_all_(self, tensors: list[torch.Tensor], std: float) -> None:
        """tensors[i] += std * xi_i for every parameter i."""
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


def _reference_update(params, grads, states, noise, group, temperature, t) -> None:
    """Plain per-parameter loop (the readable definition)."""
    lr, wd, mu = group["lr"], group["weight_decay"], group["momentum"]
    dampening, nesterov = group["dampening"], group["nesterov"]
    grad_std, buf_std, param_std = _noise_scales(group, temperature, t)
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
            v = state["square_avg"]
            v.mul_(group["alpha"]).addcmul_(g, g, value=1 - group["alpha"])
            denom = v.sqrt().add_(group["eps"])          # 1 / G
            g = g.div(denom)
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
                    buf.add_(scaled_xi, alpha=buf_std)
            g = g.add(buf, alpha=mu) if nesterov else buf
        p.add_(g, alpha=-lr)
        if param_std != 0 and scaled_xi is not None:
            p.add_(scaled_xi, alpha=param_std)
    if param_std != 0 and not scale_noise:
        noise.add_all_(params, param_std)   # theta += std * xi_i for every i, in one call


def _foreach_update(params, grads, states, noise, group, temperature, t) -> None:
    """The same update with ``torch._foreach_*`` kernels (one call per operation and group)."""
    lr, wd, mu = group["lr"], group["weight_decay"], group["momentum"]
    dampening, nesterov = group["dampening"], group["nesterov"]
    grad_std, buf_std, param_std = _noise_scales(group, temperature, t)
    if wd != 0:
        grads = torch._foreach_add(grads, params, alpha=wd)
    if grad_std != 0:
        grads = [g.clone() for g in grads] if wd == 0 else grads
        noise.add_all_(grads, grad_std)
    scaled_xis = None
    if group["preconditioner"] == "rmsprop":
        squares = [s["square_avg"] for s in states]
        torch._foreach_mul_(squares, group["alpha"])
        torch._foreach_addcmul_(squares, grads, grads, value=1 - group["alpha"])
        denoms = torch._foreach_sqrt(squares)
        torch._foreach_add_(denoms, group["eps"])
        grads = torch._foreach_div(grads, denoms)
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
                torch._foreach_add_(bufs, scaled_xis, alpha=buf_std)
        grads = torch._foreach_add(grads, bufs, alpha=mu) if nesterov else bufs
    torch._foreach_add_(params, grads, alpha=-lr)
    if param_std != 0:
        if scaled_xis is None:
            noise.add_all_(params, param_std)
        else:
            torch._foreach_add_(params, scaled_xis, alpha=param_std)
