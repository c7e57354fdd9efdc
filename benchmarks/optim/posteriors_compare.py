"""difflab's SGLD/SGHMC (``Langevin`` + ``sgld_hyperparameters``/``sghmc_hyperparameters``)
against the ``posteriors`` package's ``sgld``/``sghmc`` (pip ``posteriors``; not a difflab
dependency), on (1) the moments of a 10-D Gaussian posterior with a closed form, and (2) the
cost of one step on the CIFAR-10 CNN's parameters (62,006).

(1) Bayesian linear regression, d = 10, N = 200, noise sd 1, prior N(0, I): exact posterior
N(m, A^{-1}). Every sampler gets the same step size on the potential U = -log posterior
(h = eta; ``sgmcmc.py`` conventions), friction, burn-in, thinning and number of full-batch
gradient evaluations, and starts at theta = 0. difflab differentiates the *mean* NLL (its helper
supplies lr = N h, D = T / N, weight_decay = lam_p / N); posteriors differentiates the summed
log posterior with ``lr = h`` (sgld) and, for sghmc, ``lr = sqrt(eta)``, ``alpha = friction /
sqrt(eta)`` (its Hamiltonian form with sigma = 1 is Chen et al.'s eq. 15 with eta = lr^2 and
friction lr * alpha, except that theta moves with the previous momentum and the momentum with
the gradient at the previous theta: explicit Euler, whose transition ``[[mu, -h lam], [1, 1]]``
has determinant ``mu + h lam``, so it is stable only if ``h lam_max < friction``). Reported: largest
|mean error| in posterior sds, relative Frobenius error of the covariance with the Monte Carlo
part's scale from the smallest ESS of the squared deviations, and each recursion's exact
stationary covariance error ("exact-chain bias", by discrete Lyapunov equation; for difflab it is
``gaussian_stationary_covariance``).

(2) Interleaved blocks in one process (alternating order), ratio per repeat = difflab block time /
posteriors block time, median with a 95% bootstrap CI:
* "update": parameters' gradients given. difflab: ``opt.step()``; posteriors: ``sgld.update``
  with a linear log posterior whose gradient is that same fixed tensor tree (its cost is then the
  update plus torch.func's ``grad_and_value`` over a trivial function, as posteriors offers no
  update without the gradient call).
* "train step": forward + backward of a batch of 32 + update, the same model and batch.

    python benchmarks/optim/posteriors_compare.py [--steps 12000] [--repeats 15]
"""
from __future__ import annotations

import argparse
import math
import time
import warnings

import numpy as np
import torch
import torch.nn.functional as F

from difflab.bench.problems import build_model
from difflab.optim import Langevin
from difflab.optim.cyclical import SamplingSchedule
from difflab.optim.posterior import PosteriorCollector
from difflab.optim.sgmcmc import (effective_sample_size, gaussian_stationary_covariance,
                                  sghmc_hyperparameters, sgld_hyperparameters)
from difflab.timing import interleave, summarise

with warnings.catch_warnings():                 # tensordict FutureWarnings on import
    warnings.simplefilter("ignore", FutureWarning)
    import posteriors

F64 = torch.float64


def gaussian_problem(d: int = 10, n: int = 200, seed: int = 0) -> dict:
    """Design with singular values giving posterior precision eigenvalues in [60, 140]."""
    g = torch.Generator().manual_seed(seed)
    q = torch.linalg.qr(torch.randn(n, d, generator=g, dtype=F64))[0]
    rotation = torch.linalg.qr(torch.randn(d, d, generator=g, dtype=F64))[0]
    lam = torch.linspace(60.0, 140.0, d, dtype=F64)
    x = q @ torch.diag((lam - 1.0).sqrt()) @ rotation.T        # X^T X eigenvalues lam - 1
    y = x @ torch.randn(d, generator=g, dtype=F64) + torch.randn(n, generator=g, dtype=F64)
    precision = x.T @ x + torch.eye(d, dtype=F64)
    return dict(x=x, y=y, n=n, precision=precision,
                mean=torch.linalg.solve(precision, x.T @ y),
                covariance=torch.linalg.inv(precision))


def moments_report(samples: torch.Tensor, problem: dict) -> dict:
    s = samples.to(F64)
    sd = problem["covariance"].diagonal().sqrt()
    cov = torch.cov(s.T, correction=0)
    ref = problem["covariance"]
    return dict(mean_err=((s.mean(0) - problem["mean"]).abs() / sd).max().item(),
                cov_err=(torch.linalg.norm(cov - ref) / torch.linalg.norm(ref)).item(),
                min_ess=effective_sample_size((s - s.mean(0)) ** 2).min().item(), count=len(s))


def run_difflab(problem, hp, steps, schedule, seed) -> torch.Tensor:
    theta = torch.nn.Parameter(torch.zeros(problem["x"].shape[1]))
    holder = torch.nn.Module()
    holder.theta = theta
    x, y = problem["x"].float(), problem["y"].float()
    opt = Langevin([theta], **hp, seed=seed)
    collector = PosteriorCollector(holder, schedule, max_snapshots=10 ** 6)
    for _ in range(steps):
        opt.zero_grad()
        (0.5 * ((x @ theta - y) ** 2).mean()).backward()     # mean NLL, noise sd 1
        opt.step()
        collector.step()
    return collector.flat_samples()


def run_posteriors(problem, transform, steps, schedule) -> torch.Tensor:
    x, y = problem["x"].float(), problem["y"].float()
    state = transform.init(torch.zeros(x.shape[1]))
    rows = []
    for t in range(steps):
        state, _ = transform.update(state, (x, y), inplace=True)
        if schedule.should_collect(t):
            rows.append(state.params.detach().clone())
    return torch.stack(rows)


def log_posterior_sum(theta, batch):
    """Summed log posterior: Gaussian likelihood (sd 1) plus N(0, I) prior."""
    x, y = batch
    value = -0.5 * ((x @ theta - y) ** 2).sum() - 0.5 * (theta ** 2).sum()
    return value, torch.tensor([])


def stationary_covariance(precision: torch.Tensor, h: float, friction: float | None,
                          scheme: str) -> torch.Tensor | None:
    """Exact stationary covariance of theta for the linear recursion each sampler runs on this
    Gaussian (None if unstable). ``friction=None``: SGLD (both packages: Euler-Maruyama, see
    ``gaussian_stationary_covariance``). SGHMC, x = theta - m, s^2 = 2 friction h T:
    difflab (eq. 15 order) ``v' = mu v - h A x + s xi, x' = x + v'``;
    posteriors (explicit Euler) ``x' = x + v, v' = mu v - h A x + s xi``."""
    from scipy.linalg import solve_discrete_lyapunov
    if friction is None:
        return gaussian_stationary_covariance(precision, h, 1.0, 1.0)
    a = precision.numpy()
    d, mu, s = a.shape[0], 1.0 - friction, math.sqrt(2 * friction * h)
    eye = np.eye(d)
    if scheme == "difflab":
        transition = np.block([[mu * eye, -h * a], [mu * eye, eye - h * a]])
        noise = np.vstack([s * eye, s * eye])
    else:
        transition = np.block([[mu * eye, -h * a], [eye, eye]])
        noise = np.vstack([s * eye, np.zeros((d, d))])
    if np.abs(np.linalg.eigvals(transition)).max() >= 1.0:
        return None
    return torch.from_numpy(solve_discrete_lyapunov(transition, noise @ noise.T)[d:, d:])


def compare_moments(steps: int, seed: int) -> None:
    problem = gaussian_problem()
    n, lam = problem["n"], torch.linalg.eigvalsh(problem["precision"])
    burn_in, thinning = 2000, 10
    schedule = SamplingSchedule(burn_in=burn_in, thinning=thinning)
    print(f"(1) 10-D Gaussian posterior, precision eigenvalues {lam.min():.0f}..{lam.max():.0f}, "
          f"{steps} steps, burn-in {burn_in}, thinning {thinning}, start theta = 0")
    print(f"{'sampler':17s} {'h':>6s} {'fric':>5s} {'max|mean err|/sd':>16s} "
          f"{'cov rel err':>11s} {'exact-chain bias':>16s} {'ESS(x^2)':>8s} {'time s':>7s}")
    norm = torch.linalg.norm(problem["covariance"])
    mc_scales = []
    for h, friction in ((1e-3, None), (1e-3, 0.1), (1e-3, 0.5)):
        for package in ("difflab", "posteriors"):
            torch.manual_seed(seed)
            t0 = time.perf_counter()
            if package == "difflab":
                hp = (sgld_hyperparameters(n, h, prior_precision=1.0) if friction is None else
                      sghmc_hyperparameters(n, h, friction, prior_precision=1.0))
                samples = run_difflab(problem, hp, steps, schedule, seed)
            elif friction is None:
                samples = run_posteriors(problem, posteriors.sgmcmc.sgld.build(
                    log_posterior_sum, lr=h, temperature=1.0), steps, schedule)
            else:
                root = math.sqrt(h)
                samples = run_posteriors(problem, posteriors.sgmcmc.sghmc.build(
                    log_posterior_sum, lr=root, alpha=friction / root, temperature=1.0,
                    momenta=0.0), steps, schedule)
            seconds = time.perf_counter() - t0
            chain_cov = stationary_covariance(problem["precision"], h, friction, package)
            bias = ("unstable" if chain_cov is None else
                    f"{(torch.linalg.norm(chain_cov - problem['covariance']) / norm).item():.3f}")
            name = f"{package} {'sgld' if friction is None else 'sghmc'}"
            blown_up = (not torch.isfinite(samples).all()
                        or samples.abs().max() > 1e3 * problem["mean"].abs().max())
            if blown_up:
                print(f"{name:17s} {h:6.0e} {friction or 1.0:5.2f} {'diverged':>28s} "
                      f"{bias:>16s} {'':>8s} {seconds:7.1f}")
                continue
            r = moments_report(samples, problem)
            mc_scales.append(math.sqrt(2 / r["min_ess"]))
            print(f"{name:17s} {h:6.0e} {friction or 1.0:5.2f} {r['mean_err']:16.3f} "
                  f"{r['cov_err']:11.3f} {bias:>16s} {r['min_ess']:8.0f} {seconds:7.1f}")
    print("exact-chain bias: ||Sigma_chain - Sigma|| / ||Sigma|| of the recursion's exact "
          "stationary covariance; ESS(x^2): smallest ESS of the squared deviations; Monte Carlo "
          "scale of 'cov rel err' ~ sqrt(2 / ESS(x^2)) = "
          f"{min(mc_scales):.2f}..{max(mc_scales):.2f}")


def compare_speed(repeats: int, block_update: int, block_train: int, seed: int) -> None:
    torch.manual_seed(seed)
    n_train, h = 45000, 1e-6
    base = build_model("cifar10-cnn")
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(32, 3, 32, 32, generator=g)
    y = torch.randint(0, 10, (32,), generator=g)
    n_params = sum(p.numel() for p in base.parameters())

    # difflab side
    model_d = build_model("cifar10-cnn")
    model_d.load_state_dict(base.state_dict())
    opt = Langevin(model_d.parameters(), **sgld_hyperparameters(n_train, h), seed=seed)
    fixed = {k: torch.randn(v.shape, generator=g) * 1e-3 for k, v in base.named_parameters()}

    def difflab_update(k):
        for name, p in model_d.named_parameters():
            p.grad = fixed[name]
        for _ in range(k):
            opt.step()

    def difflab_train(k):
        for _ in range(k):
            opt.zero_grad()
            F.cross_entropy(model_d(x), y).backward()
            opt.step()

    # posteriors side: same initial parameters, summed log posterior
    model_p = build_model("cifar10-cnn")
    model_p.load_state_dict(base.state_dict())
    params = {k: v.detach().clone() for k, v in base.named_parameters()}

    def linear_log_post(p, batch):
        return sum((p[k] * fixed[k]).sum() for k in p), torch.tensor([])

    def cnn_log_post(p, batch):
        logits = torch.func.functional_call(model_p, p, (batch[0],))
        return -n_train * F.cross_entropy(logits, batch[1]), torch.tensor([])

    sgld_update = posteriors.sgmcmc.sgld.build(linear_log_post, lr=h, temperature=1.0)
    sgld_train = posteriors.sgmcmc.sgld.build(cnn_log_post, lr=h, temperature=1.0)
    state_u = sgld_update.init(params)
    state_t = sgld_train.init({k: v.clone() for k, v in params.items()})

    def posteriors_update(k):
        nonlocal state_u
        for _ in range(k):
            state_u, _ = sgld_update.update(state_u, None, inplace=True)

    def posteriors_train(k):
        nonlocal state_t
        for _ in range(k):
            state_t, _ = sgld_train.update(state_t, (x, y), inplace=True)

    print(f"\n(2) step cost on the CIFAR-10 CNN ({n_params} parameters), torch "
          f"{torch.__version__}, {torch.get_num_threads()} thread(s), posteriors "
          f"{posteriors.__version__}, {repeats} interleaved repeats")
    for label, ours, theirs, block in (("update", difflab_update, posteriors_update, block_update),
                                       ("train step (batch 32)", difflab_train, posteriors_train,
                                        block_train)):
        times = interleave({"difflab": lambda: ours(1), "posteriors": lambda: theirs(1)},
                           repeats, block, alternate=True)
        r = summarise(times, "posteriors")["difflab"]
        lo, hi = r["ratio_ci"]
        print(f"  {label:22s} difflab {np.median(times['difflab']) * 1e6:8.1f} us  posteriors "
              f"{np.median(times['posteriors']) * 1e6:8.1f} us  ratio difflab/posteriors "
              f"{r['ratio']:.3f} [95% CI {lo:.3f}, {hi:.3f}]")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=12000)
    ap.add_argument("--repeats", type=int, default=15)
    ap.add_argument("--block-update", type=int, default=200)
    ap.add_argument("--block-train", type=int, default=20)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    compare_moments(args.steps, args.seed)
    compare_speed(args.repeats, args.block_update, args.block_train, args.seed)


if __name__ == "__main__":
    main()
