"""Restoration solvers against the exact posterior of a correlated Gaussian prior.

For a Gaussian prior x ~ N(mu, Sigma) the denoiser E[x0 | x0 + sigma n] is known in closed form
(``difflab.restoration.GaussianPrior``), and so is the posterior of x given a linear measurement
y = A x + sigma_y n: N(m, C) with m = mu + Sigma A^T K^+ (y - A mu), C = Sigma - Sigma A^T K^+ A Sigma,
K = A Sigma A^T + sigma_y^2 I. A posterior sampler run with the exact denoiser should therefore
return draws from N(m, C), up to discretization: whatever is left is the method's own bias.

Prior: images of 1x8x8 in the model's [-1, 1] units, mean 0, covariance
0.24 exp(-|p - q|^2 / (2 * 2^2)) + 0.01 I over pixel positions p, q (squared-exponential kernel,
length scale 2 pixels, plus a nugget; marginal std 0.5). Colorization uses 3x4x4 images with
covariance D R D (x) K_4x4 + 0.01 I: channel stds D = (0.7, 0.5, 0.3), channel correlations
R = [[1, .8, .6], [.8, 1, .8], [.6, .8, 1]] (unequal, so the gray value informs the colour), the
same spatial kernel (amplitude 1) on the 4x4 grid.

Tasks (sigma_y in [-1, 1] units, the units of ``Inpainting(..., sigma_y)``):
  inpaint-box    centre 6x6 box unknown (36 of 64 pixels), noiseless
  inpaint-80     80% of pixels unknown at random (a fresh mask per test image), noiseless
  sr-x2          2x2 average pooling (8x8 -> 4x4), noiseless
  denoise-0.2    identity, sigma_y = 0.2 (0.1 in [0, 1] pixel units)
  denoise-0.5    identity, sigma_y = 0.5 (0.25 in [0, 1] pixel units)
  deblur         circular Gaussian blur of std 1 pixel, sigma_y = 0.01
  colorize       channel mean of 3x4x4 images, noiseless

Methods, all with the exact denoiser on the Karras grid of the prior (sigma 80 -> 0.002, then 0):
  ddnm           DDNM (eta = 1); DDNM+ when sigma_y > 0
  ddrm           DDRM, the paper's eta = 0.85, eta_b = 1
  ddrm-eta0      DDRM, eta = 0
  pigdm          PiGDM (eta = 1): one denoiser call plus one vector-Jacobian product per step
  pigdm-cost     PiGDM with round(NFE / 3) steps: equal cost if a VJP costs two forward passes
  repaint        RePaint without resampling (U = 1)
  repaint-U2     RePaint with U = 2 and jumps of j = max(1, steps // 5) levels; steps = the most
                 whose path needs at most NFE denoiser calls
  exact          n exact posterior draws: the Monte Carlo floor of every metric

NFE counts denoiser calls (counted by a wrapper, not assumed); PiGDM's VJPs are counted apart.

Metrics per test image, averaged over the test images (``--seeds``), from n draws (``--samples``):
  mean error   ||P (m_hat - m)|| / ||P (m - mu)||: the sample mean's error relative to the
               posterior's shift from the prior mean. For noiseless y, P = I - A^+ A (every
               solver ends with A x = y exactly, so the measured part carries no error and is
               excluded from the shift too); for noisy y, P = I.
  cov error    ||S_hat - C||_F / ||C||_F (sample covariance S_hat against the exact C)
  var ratio    tr(S_hat) / tr(C)
Floors for n exact draws (RMS): mean sqrt(tr(P C P) / n) / ||P (m - mu)||; covariance
sqrt((||C||_F^2 + tr(C)^2) / (n - 1)) / ||C||_F; variance ratio sqrt(2 tr(C^2) / (n - 1)) / tr(C).

Posterior-mean estimators (``--mean-budget B``, instead of the tables above): the mean of K
draws of DDNM or DDRM at S steps each, K x S = B, averaging independent draws or antithetic pairs
(``restore_mean``'s default: the second draw of a pair takes the first's noise negated). Each
estimate is repeated ``--samples`` times (one batch row each); the table gives the RMS over the
repeats of ||P (m_hat - m)|| / ||P (m - mu)||, averaged over the test images. With this prior the
solvers are affine in their noise, so an antithetic pair's error is the S-step draws' bias alone.

Run:  python benchmarks/generative/restoration_exact.py [--samples 1500] [--seeds 3]
          [--nfe 10 20 50 100] [--tasks ...] [--methods ...] [--json out.json]
      python benchmarks/generative/restoration_exact.py --mean-budget 100 [--samples 200]
"""
from __future__ import annotations

import argparse
import json
import math
import time

import torch

from difflab.diffusion.generation import model_sigmas
from difflab.restoration import (Blur, Downsample, GaussianPrior, Grayscale, Identity, Inpainting,
                                 operator_matrix, repaint_path, restore_ddnm, restore_ddrm,
                                 restore_mean, restore_pigdm, restore_repaint)

NFES = (10, 20, 50, 100)
TASKS = ("inpaint-box", "inpaint-80", "sr-x2", "denoise-0.2", "denoise-0.5", "deblur", "colorize")
METHODS = ("ddnm", "ddrm", "ddrm-eta0", "pigdm", "pigdm-cost", "repaint", "repaint-U2")


# ----- priors and tasks ------------------------------------------------------------------------
def se_kernel(h: int, w: int, length: float = 2.0) -> torch.Tensor:
    """exp(-|p - q|^2 / (2 length^2)) over the pixel positions of an h x w grid, [hw, hw]."""
    grid = torch.stack(torch.meshgrid(torch.arange(float(h)), torch.arange(float(w)),
                                      indexing="ij"), -1).reshape(-1, 2).double()
    return torch.exp(-torch.cdist(grid, grid).square() / (2 * length**2))


def gray_prior() -> GaussianPrior:
    cov = 0.24 * se_kernel(8, 8) + 0.01 * torch.eye(64, dtype=torch.float64)
    return GaussianPrior(torch.zeros(64), cov, (1, 8, 8))


def colour_prior() -> GaussianPrior:
    d = torch.tensor([0.7, 0.5, 0.3], dtype=torch.float64)
    r = torch.tensor([[1.0, 0.8, 0.6], [0.8, 1.0, 0.8], [0.6, 0.8, 1.0]], dtype=torch.float64)
    channels = d[:, None] * r * d[None]
    cov = torch.kron(channels, se_kernel(4, 4)) + 0.01 * torch.eye(48, dtype=torch.float64)
    return GaussianPrior(torch.zeros(48), cov, (3, 4, 4))


def make_task(name: str, generator: torch.Generator):
    """(prior, operator, sigma_y) of a task; random masks are drawn from ``generator``."""
    if name == "inpaint-box":
        mask = torch.ones(1, 1, 8, 8, dtype=torch.bool)
        mask[..., 1:7, 1:7] = False
        return gray_prior(), Inpainting(mask), 0.0
    if name == "inpaint-80":
        mask = torch.rand(1, 1, 8, 8, generator=generator) >= 0.8  # 20% known
        return gray_prior(), Inpainting(mask), 0.0
    if name == "sr-x2":
        return gray_prior(), Downsample(2), 0.0
    if name.startswith("denoise-"):
        sigma_y = float(name.split("-")[1])
        return gray_prior(), Identity(sigma_y=sigma_y), sigma_y
    if name == "deblur":
        return gray_prior(), Blur(std=1.0, sigma_y=0.01), 0.01
    if name == "colorize":
        return colour_prior(), Grayscale(3), 0.0
    raise ValueError(f"unknown task {name!r} (choose from {', '.join(TASKS)})")


# ----- methods ---------------------------------------------------------------------------------
class Counted:
    """The exact denoiser, counting calls (NFE) under the solvers' D(x, sigma, cond) contract."""

    def __init__(self, prior: GaussianPrior):
        self.prior, self.calls = prior, 0
        self.sigma_min, self.sigma_max, self.alpha_bar = prior.sigma_min, prior.sigma_max, None

    def __call__(self, x, sigma, cond=None):
        self.calls += 1
        return self.prior(x, sigma, cond)


def repaint_calls(steps: int, jump_length: int, resamplings: int) -> int:
    path = repaint_path(steps, jump_length, resamplings)
    return sum(b == a + 1 for a, b in zip(path, path[1:]))


def repaint_u2_config(nfe: int) -> tuple[int, int]:
    """(steps, jump_length) of RePaint with U = 2, j = max(1, steps // 5), most steps <= nfe calls."""
    best = (1, 1)
    for steps in range(1, nfe + 1):
        j = max(1, steps // 5)
        if repaint_calls(steps, j, 2) <= nfe:
            best = (steps, j)
    return best


def run_method(method: str, nfe: int, denoiser: Counted, y, operator, generator):
    """Samples [n, ...] and the number of VJPs; the call count accumulates on ``denoiser``."""
    if method in ("ddnm", "ddrm", "ddrm-eta0", "pigdm", "repaint"):
        steps = nfe
    elif method == "pigdm-cost":
        steps = max(1, round(nfe / 3))
    elif method == "repaint-U2":
        steps, jump = repaint_u2_config(nfe)
    else:
        raise ValueError(f"unknown method {method!r} (choose from {', '.join(METHODS)})")
    sigmas = model_sigmas(denoiser, steps)
    if method == "ddnm":
        return restore_ddnm(denoiser, y, operator, sigmas, generator=generator), 0
    if method == "ddrm":
        return restore_ddrm(denoiser, y, operator, sigmas, generator=generator), 0
    if method == "ddrm-eta0":
        return restore_ddrm(denoiser, y, operator, sigmas, generator=generator, eta=0.0), 0
    if method in ("pigdm", "pigdm-cost"):
        return restore_pigdm(denoiser, y, operator, sigmas, generator=generator), steps
    if method == "repaint":
        return restore_repaint(denoiser, y, operator, sigmas, generator=generator), 0
    return restore_repaint(denoiser, y, operator, sigmas, generator=generator,
                           jump_length=jump, resamplings=2), 0


def exact_draws(mean, cov, n, generator):
    evals, evecs = torch.linalg.eigh(cov)
    z = torch.randn(n, mean.shape[0], generator=generator, dtype=torch.float64)
    return mean + (z * evals.clamp(min=0).sqrt()) @ evecs.T


# ----- metrics ---------------------------------------------------------------------------------
def null_projector(operator, shape) -> torch.Tensor:
    """I - A^+ A as a [d, d] matrix (symmetric)."""
    d = math.prod(shape)
    basis = torch.eye(d, dtype=torch.float64).reshape(d, *shape)
    return (basis - operator.pinv(operator.A(basis))).reshape(d, d)


def metrics(samples, mean, cov, prior_mean, P):
    x = samples.reshape(samples.shape[0], -1).double()
    m_hat = x.mean(0)
    centred = x - m_hat
    S = centred.T @ centred / (x.shape[0] - 1)
    shift = (P @ (mean - prior_mean)).norm()
    return {"mean": ((P @ (m_hat - mean)).norm() / shift).item(),
            "cov": ((S - cov).norm() / cov.norm()).item(),
            "var": (S.trace() / cov.trace()).item()}


def floors(mean, cov, prior_mean, P, n):
    C = P @ cov @ P
    shift = (P @ (mean - prior_mean)).norm()
    return {"mean": (C.trace() / n).sqrt().item() / shift.item(),
            "cov": math.sqrt((cov.norm().item() ** 2 + cov.trace().item() ** 2) / (n - 1))
            / cov.norm().item(),
            "var": math.sqrt(2 * (cov @ cov).trace().item() / (n - 1)) / cov.trace().item()}


# ----- driver ----------------------------------------------------------------------------------
def run(tasks, methods, nfes, n, seeds):
    results = {}
    for task in tasks:
        t0 = time.perf_counter()
        rows = {m: {nfe: [] for nfe in nfes} for m in methods}
        rows["exact"] = {0: []}
        calls = {m: {nfe: set() for nfe in nfes} for m in methods}
        floor_list = []
        for seed in range(seeds):
            g = torch.Generator().manual_seed(1000 * seed + TASKS.index(task))
            prior, operator, sigma_y = make_task(task, g)
            x_true = prior.sample(1, g)
            y = operator.measure(x_true, g)
            mean, cov = prior.posterior(operator_matrix(operator, prior.shape), y, sigma_y)
            P = null_projector(operator, prior.shape) if sigma_y == 0 else \
                torch.eye(prior.dim, dtype=torch.float64)
            floor_list.append(floors(mean, cov, prior.mean, P, n))
            rows["exact"][0].append(metrics(exact_draws(mean, cov, n, g), mean, cov, prior.mean, P))
            y_batch = y.expand(n, *y.shape[1:])
            for method in methods:
                for nfe in nfes:
                    denoiser = Counted(prior)
                    out, vjps = run_method(method, nfe, denoiser, y_batch, operator, g)
                    calls[method][nfe].add((denoiser.calls, vjps))
                    rows[method][nfe].append(metrics(out, mean, cov, prior.mean, P))
        avg = lambda lst: {k: sum(r[k] for r in lst) / len(lst) for k in lst[0]}  # noqa: E731
        results[task] = {
            "floor": avg(floor_list),
            "rows": {m: {nfe: avg(v) for nfe, v in r.items()} for m, r in rows.items()},
            "calls": {m: {nfe: sorted(c) for nfe, c in r.items()} for m, r in calls.items()},
            "seconds": time.perf_counter() - t0,
        }
        print_task(task, results[task], nfes)
    return results


def mean_estimators(tasks, budget: int, reps: int, seeds: int) -> str:
    """The markdown table of ``--mean-budget``: RMS relative error of K-draw means, K x S = budget."""
    splits = [(k, budget // k) for k in (10, 5, 4, 2) if budget % k == 0]
    lines = [f"| task | solver | {' | '.join(f'{k} x {s}' for k, s in splits)} |",
             "|---|---|" + "---|" * len(splits)]
    for task in tasks:
        for name, solver in (("DDNM", restore_ddnm), ("DDRM", restore_ddrm)):
            errors = {(k, s, anti): 0.0 for k, s in splits for anti in (False, True)}
            for seed in range(seeds):
                g = torch.Generator().manual_seed(1000 * seed + TASKS.index(task))
                prior, operator, sigma_y = make_task(task, g)
                y = operator.measure(prior.sample(1, g), g)
                mean, cov = prior.posterior(operator_matrix(operator, prior.shape), y, sigma_y)
                P = null_projector(operator, prior.shape) if sigma_y == 0 else \
                    torch.eye(prior.dim, dtype=torch.float64)
                shift = (P @ (mean - prior.mean)).norm()
                for k, s, anti in errors:
                    denoiser = Counted(prior)
                    m_hat = restore_mean(solver, k, denoiser, y.expand(reps, *y.shape[1:]), operator,
                                         model_sigmas(denoiser, s), generator=g, antithetic=anti)
                    assert denoiser.calls == budget
                    err = (m_hat.reshape(reps, -1).double() - mean) @ P / shift
                    errors[k, s, anti] += err.square().sum(1).mean().sqrt().item() / seeds
            cells = [f"{errors[k, s, False]:.3f} / **{errors[k, s, True]:.3f}**" for k, s in splits]
            lines.append(f"| {task} | {name} | {' | '.join(cells)} |")
    return "\n".join(lines)


def print_task(task, res, nfes):
    f = res["floor"]
    print(f"\n### {task}  (RMS floor: mean {f['mean']:.3f}, cov {f['cov']:.3f}, "
          f"var ratio 1 +- {f['var']:.3f}; {res['seconds']:.1f} s)")
    head = " | ".join(f"NFE {nfe}" for nfe in nfes)
    print(f"| method | metric | {head} |\n|---|---|" + "---|" * len(nfes))
    ex = res["rows"]["exact"][0]
    for key in ("mean", "cov", "var"):
        print(f"| exact draws | {key} | " + " | ".join(f"{ex[key]:.3f}" for _ in nfes) + " |")
    for method, r in res["rows"].items():
        if method == "exact":
            continue
        for key in ("mean", "cov", "var"):
            print(f"| {method} | {key} | " + " | ".join(f"{r[nfe][key]:.3f}" for nfe in nfes) + " |")
    print("calls (denoiser, VJP) per NFE budget:",
          {m: {nfe: c for nfe, c in r.items()} for m, r in res["calls"].items()})


def summary(results, nfes, methods):
    """The two compact tables (markdown): mean error; covariance error and variance ratio."""
    head = " | ".join(f"NFE {nfe}" for nfe in nfes)

    def row(task, name, cells):
        return (f"| {task} |" if task else "| |") + f" {name} | " + " | ".join(cells) + " |"

    lines = ["#### Mean error ||m_hat - m|| / ||m - mu|| (floor: n exact draws)", "",
             f"| task | method | {head} |", "|---|---|" + "---|" * len(nfes)]
    for task, res in results.items():
        ex = res["rows"]["exact"][0]
        lines.append(row(task, "exact draws (floor)", [f"{ex['mean']:.3f}"] * len(nfes)))
        for m in methods:
            lines.append(row("", m, [f"{res['rows'][m][nfe]['mean']:.3f}" for nfe in nfes]))
    lines += ["", "#### Covariance error ||S_hat - C||_F / ||C||_F "
              "(variance ratio tr S_hat / tr C)", "",
              f"| task | method | {head} |", "|---|---|" + "---|" * len(nfes)]
    for task, res in results.items():
        ex = res["rows"]["exact"][0]
        lines.append(row(task, "exact draws (floor)", [f"{ex['cov']:.2f} ({ex['var']:.2f})"] * len(nfes)))
        for m in methods:
            r = res["rows"][m]
            lines.append(row("", m, [f"{r[nfe]['cov']:.2f} ({r[nfe]['var']:.2f})" for nfe in nfes]))
    return "\n".join(lines)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--samples", type=int, default=1500)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--nfe", type=int, nargs="+", default=list(NFES))
    parser.add_argument("--tasks", nargs="+", default=list(TASKS), choices=TASKS)
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--json", default=None, help="write all numbers to this file")
    parser.add_argument("--mean-budget", type=int, default=None,
                        help="instead: the posterior-mean estimators at this many NFE")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    start = time.perf_counter()
    if args.mean_budget is not None:
        if args.mean_budget < 2 or args.mean_budget % 2:
            parser.error(f"--mean-budget {args.mean_budget}: must be an even number of NFE >= 2 "
                         "(its splits K x S include one pair, K = 2)")
        print(f"Posterior-mean estimators at {args.mean_budget} NFE: RMS error over "
              f"{args.samples} repeats, independent / **antithetic** draws "
              f"({args.seeds} test images per task)\n")
        print(mean_estimators(args.tasks, args.mean_budget, args.samples, args.seeds))
        print(f"\ntotal {time.perf_counter() - start:.1f} s")
        return
    print(f"torch {torch.__version__}, {torch.get_num_threads()} thread(s), n = {args.samples}, "
          f"{args.seeds} test images per task")
    results = run(args.tasks, args.methods, args.nfe, args.samples, args.seeds)
    print("\n" + summary(results, args.nfe, args.methods))
    print(f"\ntotal {time.perf_counter() - start:.1f} s")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(results, fh, indent=1, default=str)


if __name__ == "__main__":
    main()
