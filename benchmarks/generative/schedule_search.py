"""Optimized sigma grids (difflab.diffusion.schedule_search) against fixed grids and against
diffusers' best scheduler configuration, on exact-score Gaussian mixtures never used by the
tests (random_mixture(dim, 6, seed) for seeds 1001-1005; ``--dim`` 64 by default, or 2).

The model is the one of sampler_quality.py, so diffusers can drive it: DDPM's linear beta
schedule (T = 1000), difflab on its sigma range [0.0100, 156.7], diffusers through its
``alphas_cumprod`` with the exact denoiser written as an eps-prediction network. Every side
starts from the same noise.

Per mixture, sampler and NFE: the grid is searched on 32 start noises (seed 7; the defaults of
``search_schedule``: teacher DPM-Solver++(3M) with 60 steps) and evaluated on 2000 fresh start
noises (seed 8) by

* ``sw``:  sliced 2-Wasserstein distance (128 random directions) of the samples to 2000 exact
           draws of the mixture (its floor, two exact sample sets, is printed);
* ``ode``: mean per-sample RMS error against a 400-step DPM-Solver++(3M) run from the same noise
           (the error the search minimises, on held-out noise).

Grids: ``optimized`` (default search: GITS DP, selection against karras/log-snr on the search
batch, AYS-style refinement), ``gits-dp`` (the DP alone: no selection, no refinement), ``karras``
and ``log-snr`` on the model range, and ``best-fixed``: per (mixture, NFE) the best of karras /
log-snr ending at the model's sigma_min, 0.03 or 0.1 before the final Tweedie step (the option
BENCHMARKS.md found best at low NFE), selected per metric on the evaluation set itself (which
flatters it). ``diffusers best``: per (mixture, NFE) the best by sliced W2 of diffusers'
37 scheduler configurations (sampler_quality.diffusers_configs: DDIM, DPMSolverMultistep,
UniPC, Euler, Heun with every spacing / sigma option), also selected on the evaluation set
itself. Tables print means over the 5 mixtures and how often ``optimized`` beats ``best-fixed``.
Heun (``--samplers heun``) runs (NFE + 1) // 2 steps, 2 steps - 1 evaluations.

Run:  python benchmarks/generative/schedule_search.py [--samplers euler dpmpp-2m] [--nfe 3 4 5 6 8 10]
"""
from __future__ import annotations

import argparse
import sys
import time
from collections import Counter
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from sampler_quality import T_TRAIN, diffusers_configs, run_diffusers  # noqa: E402

from difflab.diffusion import mixtures, schedules  # noqa: E402
from difflab.diffusion import schedule_search as ss  # noqa: E402
from difflab.diffusion.generation import get_sampler  # noqa: E402

SEEDS = (1001, 1002, 1003, 1004, 1005)
ALPHA_BAR = schedules.make_alpha_bar("linear", T_TRAIN)
SIGMA_MIN, SIGMA_MAX = (float(s) for s in schedules.sigma_from_alpha_bar(ALPHA_BAR[[0, -1]]))


def projections(x: torch.Tensor, directions: torch.Tensor) -> torch.Tensor:
    """Sorted projections of samples [n, d] on unit directions [d, P]: [P, n]."""
    return (directions.T @ x.double().T).contiguous().sort(dim=1).values


def sliced_w2(x: torch.Tensor, reference: torch.Tensor, directions: torch.Tensor) -> float:
    """sqrt(mean over directions of the 1-D W2^2 between equally sized samples, by sorting);
    ``reference``: the other sample set's ``projections``."""
    return float((projections(x, directions) - reference).square().mean().sqrt())


def fixed_grids(steps: int) -> dict[str, torch.Tensor]:
    grids = {}
    for name in ("karras", "log-snr"):
        for low in (SIGMA_MIN, 0.03, 0.1):
            grids[f"{name}(min={low:.3g})"] = schedules.sigma_grid(name, steps, low, SIGMA_MAX)
    return grids


def run(samplers, nfes, n_search: int, n_eval: int, dim: int = 64) -> dict:
    rows = {}  # (sampler, grid, nfe) -> list over mixtures of (sw, ode)
    floors = []
    for seed in SEEDS:
        mix = mixtures.random_mixture(dim, 6, seed=seed)
        mix.sigma_min, mix.sigma_max = SIGMA_MIN, SIGMA_MAX
        g = torch.Generator().manual_seed(seed)
        directions = torch.randn(dim, 128, generator=g, dtype=torch.float64)
        directions /= directions.norm(dim=0, keepdim=True)
        exact = projections(mix.sample(n_eval, generator=g)[0], directions)
        floors.append(sliced_w2(mix.sample(n_eval, generator=g)[0], exact, directions))
        z_search, z_eval = (torch.randn(n, dim, generator=torch.Generator().manual_seed(s),
                                        dtype=torch.float64) for n, s in ((n_search, 7), (n_eval, 8)))
        teacher = get_sampler("dpmpp-3m")(mix, z_eval * SIGMA_MAX,
                                          schedules.log_snr_sigmas(400, SIGMA_MIN, SIGMA_MAX))

        def score(sampler, sigmas):
            return score_samples(get_sampler(sampler)(mix, z_eval * float(sigmas[0]), sigmas))

        def score_samples(out):
            if not torch.isfinite(out).all():
                return float("inf"), float("inf")
            ode = (out.double() - teacher).square().mean(1).sqrt().mean()
            return sliced_w2(out, exact, directions), float(ode)

        for nfe in nfes:  # diffusers' best configuration on this mixture (selected by sw)
            theirs = {label: score_samples(run_diffusers((label, make), mix, z_eval, nfe)[0])
                      for label, make in diffusers_configs()}
            pick = min(theirs, key=lambda k: theirs[k][0])
            for sampler in samplers:
                rows.setdefault((sampler, "diffusers best", nfe), []).append(theirs[pick])
                rows.setdefault((sampler, "diffusers best config", nfe), []).append((pick, pick))

        for sampler in samplers:
            for nfe in nfes:
                steps = (nfe + 1) // 2 if sampler == "heun" else nfe
                grids = {"optimized": ss.optimize_sigmas(mix, sampler, steps, z_search),
                         "gits-dp": ss.optimize_sigmas(mix, sampler, steps, z_search, refine=0,
                                                       baselines=())}
                scores = {name: score(sampler, s) for name, s in grids.items()}
                fixed = {name: score(sampler, s) for name, s in fixed_grids(steps).items()}
                scores["karras"] = fixed[f"karras(min={SIGMA_MIN:.3g})"]
                scores["log-snr"] = fixed[f"log-snr(min={SIGMA_MIN:.3g})"]
                best = [min(fixed, key=lambda k: fixed[k][m]) for m in (0, 1)]  # per metric
                scores["best-fixed"] = (fixed[best[0]][0], fixed[best[1]][1])
                for name, value in scores.items():
                    rows.setdefault((sampler, name, nfe), []).append(value)
                rows.setdefault((sampler, "best-fixed config", nfe), []).append(best)
        print(f"  mixture seed {seed} done", flush=True)
    return {"rows": rows, "floor": sum(floors) / len(floors)}


def table(result, samplers, nfes, metric: int, label: str) -> str:
    rows = result["rows"]
    lines = [f"#### {label} (mean over mixtures {SEEDS[0]}-{SEEDS[-1]})", "",
             "| sampler | grid | " + " | ".join(f"NFE {n}" for n in nfes) + " |",
             "|---|---|" + "---|" * len(nfes)]
    for sampler in samplers:
        for name in ("optimized", "gits-dp", "karras", "log-snr", "best-fixed", "diffusers best"):
            cells = [sum(v[metric] for v in rows[(sampler, name, n)]) / len(SEEDS) for n in nfes]
            lines.append(f"| {sampler} | {name} | " + " | ".join(f"{c:.4f}" for c in cells) + " |")
        wins = [sum(o[metric] < b[metric] for o, b in zip(rows[(sampler, "optimized", n)],
                                                            rows[(sampler, "best-fixed", n)])) for n in nfes]
        lines.append(f"| {sampler} | optimized < best-fixed | " + " | ".join(f"{w}/{len(SEEDS)}" for w in wins) + " |")
        ratio = [sum(v[metric] for v in rows[(sampler, "optimized", n)])
                 / sum(v[metric] for v in rows[(sampler, "diffusers best", n)]) for n in nfes]
        lines.append(f"| {sampler} | optimized / diffusers best | " + " | ".join(f"{r:.3f}" for r in ratio) + " |")
    if metric == 0:
        lines.append("| exact samples | (floor) | " + " | ".join(f"{result['floor']:.4f}" for _ in nfes) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samplers", nargs="+", default=["euler", "dpmpp-2m"])
    parser.add_argument("--nfe", type=int, nargs="+", default=[3, 4, 5, 6, 8, 10])
    parser.add_argument("--search-trajectories", type=int, default=32)
    parser.add_argument("--samples", type=int, default=2000)
    parser.add_argument("--dim", type=int, default=64, help="mixture dimension (default 64)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    start = time.time()
    result = run(args.samplers, args.nfe, args.search_trajectories, args.samples, args.dim)
    print(table(result, args.samplers, args.nfe, 0, "sliced W2 to exact samples"))
    print()
    print(table(result, args.samplers, args.nfe, 1, "per-sample RMS error vs the 400-step ODE solution"))
    print()
    for sampler in args.samplers:
        for m, metric in enumerate(("sliced W2", "ODE error")):
            configs = [", ".join(f"{name} x{count}" for name, count in Counter(
                best[m] for best in result["rows"][(sampler, "best-fixed config", n)]).most_common())
                for n in args.nfe]
            print(f"{sampler} best-fixed grids by {metric}: "
                  + "; ".join(f"NFE {n}: {c}" for n, c in zip(args.nfe, configs)))
    configs = [", ".join(f"{name} x{count}" for name, count in Counter(
        best[0] for best in result["rows"][(args.samplers[0], "diffusers best config", n)]).most_common())
        for n in args.nfe]
    print("diffusers best configurations by sliced W2: "
          + "; ".join(f"NFE {n}: {c}" for n, c in zip(args.nfe, configs)))
    print(f"\n({time.time() - start:.0f} s)")


if __name__ == "__main__":
    main()
