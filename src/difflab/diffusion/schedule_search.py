"""Per-model optimized sigma grids: the few-step grid that makes one sampler's output closest to
a many-step teacher's, found on a small batch of start noises, and its storage in a run.

Method: GITS (Chen, Zhou, Wang, Shen & Lyu 2024, "On the Trajectory Regularity of ODE-based
Diffusion Sampling", ICML 2024, "Geometry-Inspired Time Scheduling"; journal version "Geometric
Regularity in Deterministic Sampling Dynamics of Diffusion-based Generative Models"), followed by
a selection against fixed grids and an AYS-style refinement:

1. Teacher. From the start noises x_0 = sigma_max z an accurate deterministic sampler runs once
   over a fine log-SNR grid (default DPM-Solver++(3M), 60 steps: 3e-4 RMS from a 2000-step run on
   the 64-D mixture, as accurate as (2M) at about 200 steps), and its states y_n = x(c_n) and
   denoised estimates D_n = D(y_n; c_n) are kept at the candidate levels
   c_0 = sigma_max > c_1 > ... > c_{N-1} = sigma_min, c_N = 0 (y_N is the teacher's output).
   Every cost below is built from these states: the DP adds no network evaluations.
2. Cost of a jump (GITS): the error of ONE sampler step started from the teacher's state at c_i
   against the teacher's state at c_j, i < j:

       c(i, j) = w(c_j) * mean_b || Phi(y_i; c_i -> c_j) - y_j ||_b / sqrt(d),

   Phi the sampler's update, ||.||_b the norm of trajectory b, d the item size, w below.
3. Dynamic programming (GITS). With exactly K steps, V_0(0) = 0, V_0(j > 0) = inf and

       V_k(j) = min_{i < j} V_{k-1}(i) + c(i, j),         k = 1 .. K,

   the grid is the minimising path 0 = n_0 < n_1 < ... < n_K = N, read back from the argmins:
   (c_{n_0}, ..., c_{n_K}) starts at sigma_max, is strictly decreasing and ends in 0.
4. Selection. The sampler is run on the batch with the DP's grid and with the fixed grids
   ``baselines`` (default karras and log-SNR, plus uniform-t and ddpm for a model with an
   alpha_bar schedule); the grid with the lowest output error against the teacher is kept
   (``meta['start']``). The DP minimises a *sum of local error norms*, blind to local errors of
   opposite sign cancelling: on the 2-D Gaussian, DPM-Solver++(2M) on the 6-step Karras grid has
   5x the DP optimum's path cost yet less than half its output error (0.011 vs 0.027). On
   mixtures the DP's grid wins alone (tests/test_schedule_search.py, the benchmark).
5. Refinement (``refine`` sampler runs; default about twice the teacher's network calls, 0 turns
   it off). AYS (Sabour, Fidler & Kreis 2024, "Align Your Steps: Optimizing Sampling Schedules in
   Diffusion Models", ICML 2024) optimizes a grid one level at a time between its fixed
   neighbours. We keep that coordinate-wise structure but minimise the sampler's actual output
   error against the teacher on the batch (AYS minimises a KL upper bound): each interior level
   moves by +-delta in log sigma (2 candidate spacings at first), a move is repeated while the
   error drops, delta halves after a sweep without improvement. The first level stays
   sigma_max, the last positive one >= sigma_min.

Which update Phi (``LOCAL_COST``):

* euler / ddim (eta = 0; the same update): Phi(y_i) = (c_j/c_i) y_i + (1 - c_j/c_i) D_i
  (Karras et al. 2022, eq. 3 discretised; Song et al. 2021, eq. 12), exact for these samplers.
* dpmpp-2m: the update uses the previous step's estimate, so the cost is not defined by (i, j)
  alone. The DP runs over pairs (previous level p, current level i), with the local cost of the
  multistep update given the teacher's history (Lu et al. 2022, "DPM-Solver++", Algorithm 2, VE
  form, lambda = -log sigma):

       Phi(y_i | D_p) = (c_j/c_i) y_i + (1 - c_j/c_i) [(1 + 1/(2r)) D_i - 1/(2r) D_p],
       r = (lambda_i - lambda_p) / (lambda_j - lambda_i),

       W_1(0, i) = c_DDIM(0, i),   W_k(i, j) = min_{p < i} W_{k-1}(p, i) + c_2M(p, i, j),

   the first step being DDIM and a step to sigma = 0 the Tweedie step x = D_i (as the sampler
   does). Costs of all (p, i, j) are quadratic forms in four teacher vectors, read off
   per-trajectory Gram matrices of the 2N + 1 vectors; the DP is O(N^3) per step on scalars.
   The teacher's history is exact, the sampler's is not: the update multiplies the previous
   estimate by 1/(2r), so a step much longer than the previous one amplifies earlier errors
   that this cost cannot see, and the unconstrained DP exploits it (giant first DDIM step, then
   r ~ 0.1 extrapolations). Steps are therefore limited to ``max_step_growth`` = 2 times the
   previous one in log sigma (r >= 1/2, |1/(2r)| <= 1). Measured over 30 cases (2 Gaussians and
   3 mixtures of ``mixtures``, NFE 3-10, RMS error against the ODE solution on held-out noise),
   geometric-mean error of the DP's grid alone: 0.046 unconstrained, 0.043 with the limit, 0.043
   with a single-step DDIM cost as surrogate instead (a tie: the history-aware cost is kept for
   being exact given the history, not for a measured gain); fixed grids 0.060 (log-SNR ending at
   0.1) to 0.103 (Karras); the whole search (with selection and refinement) 0.023.
* dpmpp-3m, unipc (longer history or a corrector): the 2M cost with the same limit as a
  surrogate (a second-order history would make the DP O(N^4)); heun (its second evaluation is
  off the teacher's trajectory: an exact cost needs O(N^2) extra network calls): the Euler cost
  as a surrogate, which is poor for Heun, so selection and refinement matter most there.

Weighting ``w``: GITS compares states directly (``weighting="none"``). By default
("propagated") the error landing at c_j is weighted by w(c_j) = sqrt(v / (v + c_j^2)), v the
per-dimension variance of the teacher's outputs: for Gaussian data of variance v the
probability-flow map from c_j to 0 is x -> mu + sqrt(v / (v + c_j^2)) (x - mu)
(``difflab.diffusion.mixtures``), so this is the size a local error keeps in the output; the
path cost then approximates a bound on the output error instead of over-counting errors made at
high noise, which the flow shrinks. Same 30 cases, DP alone: dpmpp-2m 0.043 vs 0.054 with
"none", euler 0.076 vs 0.080.

Cost in network calls on the batch: teacher_steps (x2 for a heun teacher) + (1 + len(baselines)
+ refine) * nfe; the rest (Gram matrices, DP) takes < 1 s for N = 80, d = 784, B = 32. Measured
(defaults, 32 trajectories of an untrained 28x28 difflab U-Net with 1.2M parameters and labels,
1 CPU thread, shared machine): dpmpp-2m 5 steps 195 calls 42 s, euler 10 steps 210 calls 44 s.

Samplers: the deterministic ones (euler, ddim with eta = 0, heun without churn, dpmpp-2m,
dpmpp-3m, unipc). Stochastic samplers are refused: their output does not follow the teacher's
trajectory from the same start noise.

Storage (``schedule_store``). ``save_schedule`` / ``load_schedules`` keep the grids of a run in
``schedules.json``::

    {"format": "difflab-schedules", "version": 1,
     "schedules": {"dpmpp-2m/5": {"sigmas": [80.0, ..., 0.0], "meta": {...}}}}

keyed ``"<sampler>/<steps>"`` (``schedule_key``; steps = NFE for all samplers but heun, whose
NFE is 2 steps - 1), written atomically (temporary file + ``os.replace``) and validated on read
(one-line ValueErrors naming the file and the field).
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

import torch

from difflab.diffusion.generation import get_sampler, nfe_of
from difflab.diffusion.guidance import guided
from difflab.diffusion.schedule_dp import (_gram, dp_single_step, dp_two_step, dpmpp_2m_costs,
                                           euler_costs)
from difflab.diffusion.schedules import log_snr_sigmas, sigma_grid

TEACHERS = ("dpmpp-2m", "dpmpp-3m", "heun", "euler", "ddim")
LOCAL_COST = {"euler": "euler", "ddim": "euler", "heun": "euler", "dpmpp-2m": "dpmpp-2m",
              "dpmpp-3m": "dpmpp-2m", "unipc": "dpmpp-2m"}
WEIGHTINGS = ("propagated", "none")


@dataclass
class ScheduleSearch:
    """An optimized grid (float64 [steps + 1], sigma_max first, 0 last) and how it was found."""

    sigmas: torch.Tensor
    meta: dict = field(default_factory=dict)


@dataclass
class Teacher:
    """Teacher states at the candidate levels: ``levels`` [N + 1] (c_0 = sigma_max ... c_N = 0),
    ``states`` [N + 1, B, d] (y_N the output), ``denoised`` [N, B, d] (D(y_n; c_n))."""

    levels: torch.Tensor
    states: torch.Tensor
    denoised: torch.Tensor
    nfe: int


def _check_sampler(name: str, options: dict, role: str) -> None:
    get_sampler(name)  # ValueError listing the valid names
    allowed = TEACHERS if role == "teacher" else tuple(LOCAL_COST)
    if name not in allowed:
        raise ValueError(f"schedule search: {role} {name!r} is not supported (deterministic "
                         f"samplers only: {', '.join(allowed)})")
    if name == "ddim" and float(options.get("eta", 0.0)) != 0.0:
        raise ValueError("schedule search: ddim needs eta=0 (a stochastic sampler does not follow "
                         "the teacher's trajectory)")
    if name == "heun" and float(options.get("s_churn", 0.0)) != 0.0:
        raise ValueError("schedule search: heun needs s_churn=0 (a stochastic sampler does not "
                         "follow the teacher's trajectory)")


@torch.no_grad()
def teacher_trajectory(denoiser, x_start: torch.Tensor, fine: torch.Tensor, keep: torch.Tensor,
                       teacher: str = "dpmpp-3m", cond=None) -> Teacher:
    """Run ``teacher`` once over the fine grid ``fine`` (decreasing, ending in 0) from
    ``x_start`` (scaled by fine[0]) and keep state and denoised estimate at the levels
    ``fine[keep]`` (indices of positive levels, increasing, keep[0] = 0)."""
    wanted = {int(k): n for n, k in enumerate(keep)}
    states: list = [None] * len(keep)
    denoised: list = [None] * len(keep)
    calls = [0]

    def counted(x, sigma, c=None):
        calls[0] += 1
        return denoiser(x, sigma, c)

    def record(i, sigma, x, x0_hat):
        n = wanted.get(i)
        if n is not None:
            states[n] = x.reshape(x.shape[0], -1).clone()
            denoised[n] = x0_hat.reshape(x.shape[0], -1).clone()

    out = get_sampler(teacher)(counted, x_start.clone(), fine, cond=cond, callback=record)
    states.append(out.reshape(out.shape[0], -1))
    levels = torch.cat([fine[keep], fine.new_zeros(1)])
    return Teacher(levels, torch.stack(states), torch.stack(denoised), calls[0])


@torch.no_grad()
def _output_error(sampler_fn, denoiser, x_start, sigmas, cond, target, options) -> float:
    """Mean over trajectories of the RMS error of the sampler's output against ``target``."""
    out = sampler_fn(denoiser, x_start.clone(), sigmas, cond=cond, **options)
    err = (out.reshape(out.shape[0], -1).double() - target.double()).square().mean(1).sqrt().mean()
    return float(err) if torch.isfinite(err) else math.inf


def _refine(error_of, sigmas: torch.Tensor, floor: float, delta: float, budget: int,
            best: float | None = None) -> tuple[torch.Tensor, float, int]:
    """Coordinate search in log sigma over the interior positive levels (AYS-style, see the module
    docstring), at most ``budget`` evaluations of ``error_of(sigmas)`` (``best``: the error of
    ``sigmas`` if known). A move that lowers the error is repeated while it keeps doing so."""
    evals = 0
    if best is None:
        best, evals = error_of(sigmas), 1
    K = sigmas.shape[0] - 1
    log = sigmas[:K].log().clone()  # positive levels; log[0] = log sigma_max stays
    margin = 1e-3

    def grid(values):
        out = torch.cat([values.exp(), sigmas.new_zeros(1)])
        out[0] = sigmas[0]
        return out

    while evals < budget and K > 1 and delta > 1e-3:
        improved = False
        for k in range(1, K):
            upper = float(log[k - 1]) - margin
            lower = float(log[k + 1]) + margin if k + 1 < K else math.log(floor)
            for sign in (1.0, -1.0):
                moved = False
                while evals < budget:
                    value = float(log[k]) + sign * delta
                    if not lower <= value <= upper:
                        break
                    trial = log.clone()
                    trial[k] = value
                    err = error_of(grid(trial))
                    evals += 1
                    if not err < best:
                        break
                    best, log, moved = err, trial, True
                if moved:
                    improved = True
                    break
        if not improved:
            delta /= 2
    moved_any = not torch.equal(log, sigmas[:K].log())
    return (grid(log) if moved_any else sigmas), best, evals


@torch.no_grad()
def search_schedule(denoiser, sampler: str, steps: int, x_start_noise: torch.Tensor, cond=None,
                    guidance: float = 1.0, teacher: str = "dpmpp-3m", teacher_steps: int = 60,
                    candidates: int | None = None, sigma_min: float | None = None,
                    sigma_max: float | None = None, weighting: str = "propagated",
                    refine: int | None = None, baselines: tuple[str, ...] | None = None,
                    max_step_growth: float = 2.0,
                    sampler_options: dict | None = None) -> ScheduleSearch:
    """The grid of ``steps`` steps for ``sampler`` whose output on the trajectories started from
    ``x_start_noise`` is closest to the teacher's (module docstring: GITS DP, selection against
    fixed grids, AYS-style refinement), with diagnostics in ``meta``.

    ``x_start_noise``: standard-normal start noise [B, ...] on the denoiser's device (not yet
    scaled by sigma_max; a few dozen trajectories suffice); ``cond``: their class labels, with
    classifier-free ``guidance`` applied to teacher and sampler alike. ``teacher`` runs
    ``teacher_steps`` steps over a log-SNR grid on [sigma_min, sigma_max] (default: the
    denoiser's range); ``candidates`` levels of it (default: all) are the DP's choices.
    ``weighting``: "propagated" or "none" (GITS's plain state distance). ``refine``: at most that
    many sampler runs on the batch to polish the grid (None: about twice the teacher's network
    calls; 0: none). ``baselines``: fixed grids (``sigma_grid`` names) the DP's grid must beat on
    the batch (None: karras, log-snr, and uniform-t, ddpm for a model with alpha_bar; (): pure
    GITS). ``max_step_growth``: longest multistep step relative to the previous one, in log
    sigma. ``sampler_options``: passed to the sampler (e.g. unipc's order)."""
    start_time = time.time()
    options = dict(sampler_options or {})
    _check_sampler(sampler, options, "sampler")
    _check_sampler(teacher, {}, "teacher")
    if weighting not in WEIGHTINGS:
        raise ValueError(f"schedule search: unknown weighting {weighting!r} (choose from "
                         f"{', '.join(WEIGHTINGS)})")
    sigma_min = float(denoiser.sigma_min if sigma_min is None else sigma_min)
    sigma_max = float(denoiser.sigma_max if sigma_max is None else sigma_max)
    if not 0 < sigma_min < sigma_max:
        raise ValueError(f"schedule search: need 0 < sigma_min < sigma_max, got {sigma_min}, "
                         f"{sigma_max}")
    candidates = teacher_steps if candidates is None else int(candidates)
    if not 2 <= candidates <= teacher_steps:
        raise ValueError(f"schedule search: candidates must be in [2, teacher_steps="
                         f"{teacher_steps}], got {candidates}")
    if not 1 <= steps <= candidates:
        raise ValueError(f"schedule search: steps must be in [1, candidates={candidates}], "
                         f"got {steps}")
    if refine is not None and refine < 0 or not max_step_growth > 0:
        raise ValueError(f"schedule search: need refine >= 0 and max_step_growth > 0, got "
                         f"{refine} and {max_step_growth}")
    if x_start_noise.dim() < 2:
        raise ValueError(f"schedule search: x_start_noise must be a batch [B, ...], got shape "
                         f"{tuple(x_start_noise.shape)}")
    alpha_bar = getattr(denoiser, "alpha_bar", None)
    if baselines is None:
        baselines = ("karras", "log-snr") + (("uniform-t", "ddpm") if alpha_bar is not None else ())

    was_training = getattr(denoiser, "training", False)
    if isinstance(denoiser, torch.nn.Module):
        denoiser.eval()
    try:
        model = guided(denoiser, guidance)
        x_start = x_start_noise * sigma_max
        fine = log_snr_sigmas(teacher_steps, sigma_min, sigma_max).to(x_start.device)
        keep = torch.linspace(0, teacher_steps - 1, candidates, dtype=torch.float64).round().long()
        traj = teacher_trajectory(model, x_start, fine, keep, teacher, cond)
        levels, dim, target = traj.levels.double(), traj.states.shape[-1], traj.states[-1]

        # GITS: local costs from the teacher's states, then the min-cost path of `steps` jumps
        v = None
        if weighting == "propagated":
            v = float(target.double().var(0, unbiased=False).mean()) if len(target) > 1 else 0.0
            v = v if v > 0 else float(getattr(denoiser, "sigma_data", 0.5)) ** 2
        weights = (v / (v + levels.square())).sqrt() if v else torch.ones_like(levels)
        gram = _gram(torch.cat([traj.states, traj.denoised]))
        single = euler_costs(gram, levels, weights, dim)
        if LOCAL_COST[sampler] == "dpmpp-2m":
            history = dpmpp_2m_costs(gram, levels, weights, dim, max_step_growth)
            path, cost = dp_two_step(single, history, steps)
        else:
            path, cost = dp_single_step(single, steps)
        dp_sigmas = levels[path].cpu()

        # selection against fixed grids and refinement, on the sampler's real output error
        fn = get_sampler(sampler)
        nfe = nfe_of(sampler, steps)
        refine = max(8, 2 * traj.nfe // nfe) if refine is None else int(refine)

        def error_of(grid):
            return _output_error(fn, model, x_start, grid, cond, target, options)

        grids = {"dp": dp_sigmas}
        grids.update((name, sigma_grid(name, steps, sigma_min, sigma_max, alpha_bar=alpha_bar))
                     for name in baselines)
        errors = {name: error_of(grid) for name, grid in grids.items()}
        start = min(errors, key=errors.get)  # ties: the DP's grid (first)
        sigmas, best, evals = grids[start].double(), errors[start], 0
        if refine > 0:
            spacing = math.log(sigma_max / sigma_min) / max(candidates - 1, 1)
            sigmas, best, evals = _refine(error_of, sigmas, sigma_min, 2 * spacing, refine, best)
    finally:
        if isinstance(denoiser, torch.nn.Module):
            denoiser.train(was_training)

    def finite(x):
        return x if math.isfinite(x) else None

    meta = {"method": "gits-dp" + ("+select" if baselines else "") + ("+refine" if refine else ""),
            "sampler": sampler, "steps": steps, "nfe": nfe,
            "local_cost": {"euler": "euler", "dpmpp-2m": "dpmpp-2m-history"}[LOCAL_COST[sampler]],
            "teacher": teacher, "teacher_steps": teacher_steps, "teacher_nfe": traj.nfe,
            "candidates": candidates, "sigma_min": sigma_min, "sigma_max": sigma_max,
            "max_step_growth": finite(float(max_step_growth)), "weighting": weighting,
            "output_variance": v, "trajectories": int(x_start.shape[0]),
            "guidance": float(guidance), "dp_cost": cost, "dp_sigmas": dp_sigmas.tolist(),
            "start": start, "refine_evals": evals,
            "batch_error": {**{k: finite(e) for k, e in errors.items()}, "optimized": finite(best)},
            "seconds": round(time.time() - start_time, 3)}
    return ScheduleSearch(sigmas, meta)


def optimize_sigmas(denoiser, sampler: str, steps: int, x_start_noise: torch.Tensor, cond=None,
                    guidance: float = 1.0, teacher: str = "dpmpp-3m", teacher_steps: int = 60,
                    candidates: int | None = None, **kwargs) -> torch.Tensor:
    """The optimized grid of ``search_schedule`` (float64 [steps + 1], sigma_max first, strictly
    decreasing, 0 last), usable as ``sigmas`` of the named sampler."""
    return search_schedule(denoiser, sampler, steps, x_start_noise, cond=cond, guidance=guidance,
                           teacher=teacher, teacher_steps=teacher_steps, candidates=candidates,
                           **kwargs).sigmas


# ----- storage in a run directory ---------------------------------------------------------------
