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
have a gradient, in group order (a complex parameter counts as ``view_as_real``, i.e. two real
elements per complex one): the next ``sum(numel)`` elements of the optimizer's own
counter-based ``NormalStream`` (``normal.py``; by default), or one ``flat.normal_(generator)``
split into views when a ``torch.Generator`` is passed. The stream lets a compiled kernel add
``std * xi`` straight into each parameter (or momentum buffer), which is what keeps ``step()``
close to the cost of ``torch.optim.SGD(momentum=0.9)``; torch's MT19937 ``normal_`` alone costs
about 2x such a step on a small CNN (BENCHMARKS.md). Both implementations (plain loop and
``torch._foreach_*``) consume exactly the same elements, so they agree bit for bit; with an
effective temperature of 0 nothing is drawn and the update is ``torch.optim.SGD``'s, operation
for operation.

The options and their validation live in ``langevin_options.py``, the update kernels in
``langevin_kernels.py``.
"""
from __future__ import annotations

import operator
from collections.abc import Mapping, Sequence

import torch
from torch.optim import Optimizer

from difflab.optim.langevin_kernels import (_foreach_update, _GroupNoise, _noise_scales, _real,
                                            _reference_update)
from difflab.optim.langevin_options import (_GET_OPTIONS, NOISE_MODES, OPTIONS, PRECONDITIONERS,
                                            STATE_KEYS, TEMPERATURE_SCHEDULES, _check_group,
                                            _is_int, _scheduled_temperature, _show,
                                            scheduled_temperature)
from difflab.optim.normal import NormalStream

__all__ = ["Langevin", "NOISE_MODES", "OPTIONS", "PRECONDITIONERS", "STATE_KEYS",
           "TEMPERATURE_SCHEDULES", "scheduled_temperature"]

# The unit noise stays below about 9 in magnitude (|xi| of a 53-bit Box-Muller draw); a noise std
# above the largest number of the parameters' dtype divided by this would overflow them to inf.
NOISE_HEADROOM = 16.0


def _check_noise_fits(index: int, group: dict, temperature: float, scales, params) -> None:
    """ValueError (before anything changes) if this step's noise std is not finite or so large
    that ``std * xi`` overflows the parameters' dtype (e.g. temperature=1e308)."""
    largest = max(scales)
    limit = min(torch.finfo(p.dtype.to_real()).max for p in params) / NOISE_HEADROOM
    if not largest <= limit:  # NaN and inf too
        raise ValueError(f"Langevin: param group {index}: temperature {_show(temperature)} "
                         f"with lr {_show(group['lr'])} gives a noise std of {largest:.3g}, "
                         f"which would overflow the parameters to inf (at most {limit:.3g}); "
                         "lower the temperature")


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

    Complex parameters are pairs of real parameters, as in ``torch.optim`` (Adam and RMSprop
    work on ``torch.view_as_real``; SGD's complex arithmetic with real scalars is the same per
    part): the real and the imaginary part each receive the noise a real parameter receives
    (in ``"langevin"`` mode variance ``2 * lr * D`` per part, i.e. ``E|xi|^2 = 2`` per complex
    element; annealed gradient noise likewise per part), a complex element consumes two
    consecutive elements of the unit noise (real part first), and the pSGLD average ``V`` is
    kept per part (``g*g`` of ``view_as_real``, not the complex square). Drift, weight decay and
    momentum use the same complex operations as ``torch.optim.SGD``, so the temperature-0
    equality with SGD below holds for complex parameters too. All of this holds for both noise
    sources and both implementations; the state tensors stay complex like the parameter.

    Noise comes from the optimizer's own generator, never from the global RNG: a
    ``NormalStream`` seeded with ``seed`` (random if None), or the ``torch.Generator`` passed
    as ``generator`` (any device; slower on CPU). Its state is part of ``state_dict()``.
    ``foreach=None`` selects the ``torch._foreach_*`` path; ``foreach=False`` the plain loop.
    With an effective temperature of 0 the result equals ``torch.optim.SGD`` with the same
    ``lr, momentum, dampening, nesterov, weight_decay`` bit for bit.

    Every option of every param group is validated (constructor, ``add_param_group``,
    ``load_state_dict`` and again at each ``step``, since schedulers edit groups): NaN/inf,
    negative or out-of-range values and wrong types raise a one-line ``ValueError`` naming the
    option and the value, before anything is changed. ``add_param_group`` works as in
    ``torch.optim`` (missing options filled in from the defaults, per-parameter state created
    lazily on the first step that has a gradient).
    """

    def __init__(self, params, lr: float = 1e-3, temperature: float = 0.0, *,
                 noise: str = "langevin", momentum: float = 0.0, dampening: float = 0.0,
                 nesterov: bool = False, weight_decay: float = 0.0,
                 preconditioner: str | None = None, alpha: float = 0.99, eps: float = 1e-8,
                 gamma: float = 0.55, temperature_schedule: str = "constant",
                 temperature_end: float = 0.0, schedule_steps: int = 0,
                 seed: int | None = None, generator: torch.Generator | None = None,
                 foreach: bool | None = None):
        if generator is not None and seed is not None:
            raise ValueError("Langevin: pass either seed or generator, not both")
        if seed is not None and not _is_int(seed):
            raise ValueError(f"Langevin: invalid seed {_show(seed)} (must be an integer or None)")
        if generator is not None and not isinstance(generator, torch.Generator):
            raise ValueError(f"Langevin: invalid generator {_show(generator)} (must be a "
                             "torch.Generator or None)")
        defaults = dict(lr=lr, temperature=temperature, noise=noise, momentum=momentum,
                        dampening=dampening, nesterov=nesterov, weight_decay=weight_decay,
                        preconditioner=preconditioner, alpha=alpha, eps=eps, gamma=gamma,
                        temperature_schedule=temperature_schedule,
                        temperature_end=temperature_end, schedule_steps=schedule_steps,
                        foreach=foreach)
        _check_group(defaults, with_step=False)
        self.generator = generator
        self.noise_stream = NormalStream(seed) if generator is None else None
        self._flat_noise: dict[int, torch.Tensor] = {}
        super().__init__(params, defaults)     # calls add_param_group for every group

    def add_param_group(self, param_group: dict) -> None:
        """Add a param group as ``torch.optim.Optimizer.add_param_group`` does (options not
        given are taken from the defaults; state is created lazily), after validating every
        option of the resulting group; a bad group raises ValueError and is not added."""
        index = len(self.param_groups)
        if isinstance(param_group, Mapping):
            given = {k: v for k, v in param_group.items() if k != "params"}
            merged = {**self.defaults, **given}
            merged.setdefault("step", 0)
            _check_group(merged, f"param group {index}: " if given or index else "")
        super().add_param_group(param_group)
        self.param_groups[-1].setdefault("step", 0)

    # -- state ---------------------------------------------------------------------------------
    def state_dict(self) -> dict:
        state = super().state_dict()
        if self.generator is None:
            state["noise_stream"] = self.noise_stream.state_dict()
        else:
            state["generator_state"] = self.generator.get_state()
        return state

    def load_state_dict(self, state_dict: dict) -> None:
        """Load a state saved by ``Langevin.state_dict``. Anything else (another optimizer's
        state, other group count or sizes, missing or invalid options, per-parameter state of
        the wrong kind/shape/type or not finite, another noise source) raises a one-line
        ValueError and leaves the optimizer unchanged."""
        source = self._check_state_dict(state_dict)
        state_dict = dict(state_dict)
        source_state = state_dict.pop(source)
        saved = (self.state, self.param_groups)
        try:
            super().load_state_dict(state_dict)
            if source == "noise_stream":
                self.noise_stream.load_state_dict(source_state)
            else:
                self.generator.set_state(source_state)
        except Exception:
            self.state, self.param_groups = saved       # nothing half-loaded
            raise
        self._flat_noise.clear()

    def _check_state_dict(self, sd) -> str:
        """Validate a state dict against this optimizer; return its noise-source key."""
        if not isinstance(sd, Mapping):
            raise ValueError(f"Langevin: state_dict must be a dict, got {type(sd).__name__}")
        source = "noise_stream" if self.generator is None else "generator_state"
        other = "generator_state" if self.generator is None else "noise_stream"
        if other in sd:
            raise ValueError("Langevin: the state_dict's noise source (seed/stream or "
                             "torch.Generator) differs from this optimizer's")
        missing = [k for k in ("state", "param_groups", source) if k not in sd]
        if missing:
            raise ValueError(f"Langevin: state_dict is not a Langevin optimizer's state: missing "
                             f"key(s) {', '.join(map(repr, missing))}")
        extra = sorted(str(k) for k in sd if k not in ("state", "param_groups", source))
        if extra:
            raise ValueError(f"Langevin: state_dict has unexpected key(s) "
                             f"{', '.join(map(repr, extra))}")
        groups = sd["param_groups"]
        if not isinstance(groups, Sequence) or isinstance(groups, (str, bytes)):
            raise ValueError(f"Langevin: state_dict['param_groups'] must be a list, got "
                             f"{type(groups).__name__}")
        if len(groups) != len(self.param_groups):
            raise ValueError(f"Langevin: state_dict has {len(groups)} param group(s), this "
                             f"optimizer {len(self.param_groups)}")
        id_to_param, seen = {}, set()
        for i, (g, own) in enumerate(zip(groups, self.param_groups)):
            where = f"state_dict param group {i}: "
            if not isinstance(g, Mapping):
                raise ValueError(f"Langevin: {where}must be a dict, got {type(g).__name__}")
            ids = g.get("params")
            if not isinstance(ids, Sequence) or isinstance(ids, (str, bytes)) \
                    or not all(_is_int(k) for k in ids):
                raise ValueError(f"Langevin: {where}'params' must be a list of integer ids, got "
                                 f"{_show(ids)}")
            if len(ids) != len(own["params"]):
                raise ValueError(f"Langevin: {where}has {len(ids)} parameter(s), this "
                                 f"optimizer's group {len(own['params'])}")
            if seen.intersection(ids) or len(set(ids)) != len(ids):
                raise ValueError(f"Langevin: {where}repeats a parameter id")
            seen.update(ids)
            id_to_param.update(zip(ids, own["params"]))
            _check_group(g, where)
        state = sd["state"]
        if not isinstance(state, Mapping):
            raise ValueError(f"Langevin: state_dict['state'] must be a dict, got "
                             f"{type(state).__name__}")
        for k, entry in state.items():
            where = f"state_dict state of parameter {k!r}: "
            if k not in id_to_param:
                raise ValueError(f"Langevin: {where}no such parameter id in param_groups")
            if not isinstance(entry, Mapping):
                raise ValueError(f"Langevin: {where}must be a dict, got {type(entry).__name__}")
            unknown = [str(name) for name in entry if name not in STATE_KEYS]
            if unknown:
                raise ValueError(f"Langevin: {where}unexpected entr(y/ies) "
                                 f"{', '.join(map(repr, unknown))} (another optimizer's state?)")
            p = id_to_param[k]
            for name, value in entry.items():
                if value is None and name == "momentum_buffer":
                    continue
                if not torch.is_tensor(value) or not (value.is_floating_point()
                                                      or value.is_complex()):
                    raise ValueError(f"Langevin: {where}{name} must be a floating-point tensor, "
                                     f"got {_show(value)}")
                if value.shape != p.shape or value.is_complex() != p.is_complex():
                    raise ValueError(f"Langevin: {where}{name} has shape {tuple(value.shape)} "
                                     f"{value.dtype}, the parameter {tuple(p.shape)} {p.dtype}")
                if not bool(torch.isfinite(value).all()):
                    raise ValueError(f"Langevin: {where}{name} contains NaN or inf")
                if name == "square_avg" and bool((value < 0).any()):
                    raise ValueError(f"Langevin: {where}square_avg has negative entries")
        if source == "noise_stream":
            NormalStream.check_state(sd[source], "Langevin: state_dict['noise_stream']")
        else:
            gs = sd[source]
            if not torch.is_tensor(gs) or gs.dtype != torch.uint8:
                raise ValueError(f"Langevin: state_dict['generator_state'] must be a uint8 "
                                 f"tensor, got {_show(gs)}")
            try:
                torch.Generator(device=self.generator.device).set_state(gs)
            except (RuntimeError, TypeError, ValueError) as e:
                message = str(e).splitlines()[0] if str(e) else type(e).__name__
                raise ValueError(f"Langevin: state_dict['generator_state'] does not fit this "
                                 f"optimizer's {self.generator.device} generator ({message})") \
                    from None
        return source

    def _check_group_at_step(self, index: int, group: dict) -> None:
        """_check_group for step(): options whose value object changed since the last check
        of this group (schedulers assign new numbers) are checked again, then the relations."""
        checked = self.__dict__.setdefault("_checked", {})
        try:
            values = _GET_OPTIONS(group)
        except KeyError:
            values = None
        t = group.get("step")
        previous = checked.get(index)
        if values is None or type(t) is not int or t < 0 or previous is None \
                or previous[0] is not group:
            _check_group(group, f"param group {index}: ")
        elif not all(map(operator.is_, values, previous[1])):
            changed = tuple(n for n, v, w in zip(OPTIONS, values, previous[1]) if v is not w)
            _check_group(group, f"param group {index}: ", names=changed)
        else:
            return
        checked[index] = (group, values)

    # -- noise ---------------------------------------------------------------------------------
    def _group_noise(self, index: int, params: list[torch.Tensor],
                     has_complex: bool) -> "_GroupNoise":
        """This step's unit noise for one group: the next ``sum(numel)`` elements (numel of
        ``view_as_real`` for complex parameters)."""
        reals = [_real(p) for p in params] if has_complex else params
        sizes = [p.numel() for p in reals]
        if self.generator is None:
            return _GroupNoise(reals, sizes, self.noise_stream.reserve(sum(sizes)),
                               stream=self.noise_stream, has_complex=has_complex)
        dtype, device = reals[0].dtype, reals[0].device
        flat = self._flat_noise.get(index)
        if flat is None or flat.numel() != sum(sizes) or flat.dtype != dtype:
            flat = torch.empty(sum(sizes), dtype=dtype, device=self.generator.device)
            self._flat_noise[index] = flat
        flat.normal_(generator=self.generator)
        return _GroupNoise(reals, sizes, 0, flat=flat.to(device), has_complex=has_complex)

    # -- step ----------------------------------------------------------------------------------
    @torch.no_grad()
    def step(self, closure=None):
        """One update of every param group; returns the closure's loss if a closure is given.

        Every group is checked (options, gradients) before any parameter, state or step
        counter changes, so a ValueError leaves the optimizer as it was."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        plan = []
        for index, group in enumerate(self.param_groups):
            self._check_group_at_step(index, group)
            params = [p for p in group["params"] if p.grad is not None]
            t = group["step"]
            if not params:
                plan.append((index, group, t, None, None, 0.0, None, False))
                continue
            grads = [p.grad for p in params]
            has_complex = False
            for g in grads:     # one pass: sparse gradients (refused), complex ones
                if g.layout is not torch.strided or g.dtype.is_complex:
                    if g.layout is not torch.strided:
                        raise ValueError("Langevin: sparse gradients are not supported")
                    has_complex = True
            if has_complex:
                if any(p.is_conj() for p in params):
                    raise ValueError("Langevin: conjugate views as parameters are not supported")
                grads = [g.resolve_conj() for g in grads]     # view_as_real needs resolved
            temperature = _scheduled_temperature(group, t)
            scales = _noise_scales(group, temperature, t)
            if temperature > 0:
                _check_noise_fits(index, group, temperature, scales, params)
            if temperature > 0 and self.generator is not None:
                dtype, device = params[0].dtype.to_real(), params[0].device
                if any(p.dtype.to_real() != dtype or p.device != device for p in params):
                    raise ValueError("Langevin: with a torch.Generator all parameters of a group "
                                     "must share (real) dtype and device")
            plan.append((index, group, t, params, grads, temperature, scales, has_complex))
        for index, group, t, params, grads, temperature, scales, has_complex in plan:
            group["step"] = t + 1
            if params is None:
                continue
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
            noise = self._group_noise(index, params, has_complex) if temperature > 0 else None
            foreach = group["foreach"] is not False
            update = _foreach_update if foreach else _reference_update
            update(params, grads, states, noise, group, scales)
        return loss
