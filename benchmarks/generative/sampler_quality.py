"""Sample quality per network evaluation (NFE): difflab samplers vs Hugging Face diffusers
schedulers, driven by the same exact denoiser in the same process.

Problems: the exact-score Gaussian mixtures ``mixture-2d`` and ``mixture-64d`` of
``difflab.diffusion.mixtures``. Both sides use DDPM's linear beta schedule with T = 1000 (betas 1e-4..0.02):
diffusers through its ``alphas_cumprod``, difflab through the same alpha_bar and its sigma range
[sigma(alpha_bar_1), sigma(alpha_bar_T)] = [0.0100, 156.7]. The diffusers model is the exact
denoiser written as an eps-prediction network on diffusers' timesteps (sigma of a fractional
timestep interpolated in log sigma, as diffusers itself does). Both sides start from the same
standard-normal draw z (common random numbers), scaled by each side's initial noise level.

Error against an independent set of exact samples: sliced 2-Wasserstein distance (``sw``, 512
random directions), relative mean error ||m - m*|| / sqrt(tr C*), relative covariance error
||C - C*||_F / ||C*||_F, and total-variation distance of the component weights (each sample
assigned to its most likely component). ``floor`` rows are a second exact sample set: the
sampling-noise level of each metric. Every configuration runs at its largest step count with
NFE <= budget (evaluations are counted, not assumed).

Each side may use its best configuration: for every (side, family, NFE budget) the configuration
with the lowest sliced W2 is selected on one run (seed s, ``--select-samples``), and the selected
configurations are then reported on an independent run (seed s + 1000: fresh start noise,
reference set and directions, ``--samples``), so selection noise does not flatter either side.
difflab's options: grid karras (rho 7 or 3) / log-SNR with last positive level the trained 0.0100
or 0.03 or 0.1, uniform-t, ddpm. diffusers' options: timestep spacing, Karras / exponential /
uniform-lambda sigmas, solver order 2/3 and UniPC's bh1/bh2 (see ``diffusers_configs``); DDIM
with set_alpha_to_one; all with their default final step to sigma = 0.

With ``--mnist RUN_DIR``, a trained checkpoint is sampled by a fixed set of configurations of
each side (``MNIST_DIFFLAB``, ``MNIST_DIFFUSERS``) and scored by FID on difflab's MNIST features.

Run:  python benchmarks/generative/sampler_quality.py [--problems mixture-64d] [--samples 10000]
          [--mnist runs/mnist --mnist-samples 1000 --data-dir ../shared/data]
"""
from __future__ import annotations

import argparse
import json
import math
import time

import torch

from difflab.device import autocast
from difflab.diffusion import mixtures, schedules
from difflab.diffusion.generation import get_sampler

T_TRAIN = 1000
NFES = (5, 10, 20, 50)


# ----- metrics ---------------------------------------------------------------------------------
def sorted_projections(x: torch.Tensor, directions: torch.Tensor) -> torch.Tensor:
    """Projections of x [n, d] on unit directions [d, P], each sorted: [P, n]."""
    return (directions.T @ x.double().T).sort(dim=1).values


def errors(samples: torch.Tensor, reference_projections: torch.Tensor, mix: mixtures.GaussianMixture,
           directions: torch.Tensor) -> dict:
    """sliced W2 (sqrt of the mean over directions of the 1-D W2^2, by sorting equally sized
    samples), relative mean and covariance errors, and total variation of component weights."""
    samples = samples.double()
    if not torch.isfinite(samples).all():
        return {"sw": math.inf, "mean": math.inf, "cov": math.inf, "weights": math.inf}
    cov_true = mix.covariance()
    counts = torch.bincount(mix.responsibilities(samples).argmax(1), minlength=mix.num_components)
    projections = sorted_projections(samples, directions)
    return {
        "sw": float((projections - reference_projections).square().mean().sqrt()),
        "mean": float((samples.mean(0) - mix.mean()).norm() / cov_true.trace().sqrt()),
        "cov": float((torch.cov(samples.T) - cov_true).norm() / cov_true.norm()),
        "weights": float(0.5 * (counts.double() / samples.shape[0] - mix.weights).abs().sum()),
    }


# ----- difflab side ----------------------------------------------------------------------------
def difflab_configs() -> list[tuple[str, str, str, dict, callable]]:
    """(label, sampler, grid, options, steps for an NFE budget). ``options`` may hold the grid's
    ``rho`` and its last positive level ``grid_min`` (default: the trained sigma_min)."""
    same = lambda nfe: nfe  # noqa: E731  one evaluation per step
    heun = lambda nfe: (nfe + 1) // 2  # noqa: E731  2 per step, the last (to 0) 1
    ode = (("euler", "euler", {}, same), ("heun", "heun", {}, heun), ("dpmpp-2m", "dpmpp-2m", {}, same),
           ("dpmpp-3m", "dpmpp-3m", {}, same), ("unipc-o2", "unipc", {"order": 2}, same),
           ("unipc-o3", "unipc", {"order": 3}, same))
    configs = []
    for family_, name, sampler_options, steps in ode:
        for grid_min in (None, 0.03, 0.1):
            suffix = "" if grid_min is None else f",min={grid_min}"
            for grid, rho in (("karras", 7.0), ("karras", 3.0), ("log-snr", None)):
                options = dict(sampler_options, **({"rho": rho} if rho else {}))
                if grid_min is not None:
                    options["grid_min"] = grid_min
                tag = f"karras(rho={rho:g}{suffix})" if rho else f"log-snr({suffix[1:]})"
                configs.append((f"{family_}/{tag}", name, grid, options, steps))
        configs += [(f"{family_}/uniform-t", name, "uniform-t", sampler_options, steps),
                    (f"{family_}/ddpm", name, "ddpm", sampler_options, steps)]
    configs += [("ddpm/ddpm", "ddpm", "ddpm", {}, same),
                ("euler-maruyama/karras", "euler-maruyama", "karras", {}, same),
                ("pc/karras", "pc", "karras", {}, lambda nfe: nfe // 2),
                ("ald/log-snr", "ald", "log-snr", {"steps_per_level": 1}, lambda nfe: nfe - 1),
                ("heun-churn/karras", "heun", "karras", {"s_churn": 10.0}, heun)]
    return configs


class Counted:
    """A denoiser that counts its evaluations (to check every NFE claim)."""

    def __init__(self, denoiser):
        self.denoiser, self.calls = denoiser, 0

    def __call__(self, x, sigma, cond=None):
        self.calls += 1
        return self.denoiser(x, sigma, cond)


def run_difflab(config, mix, z, nfe, alpha_bar, generator) -> tuple[torch.Tensor, int]:
    label, name, grid, options, steps_for = config
    steps = steps_for(nfe)
    if steps < 1:
        return None, 0
    options = dict(options)
    sigma_min, sigma_max = (float(s) for s in schedules.sigma_from_alpha_bar(alpha_bar[[0, -1]]))
    sigma_min = options.pop("grid_min", sigma_min)
    sigmas = schedules.sigma_grid(grid, steps, sigma_min, sigma_max, alpha_bar=alpha_bar,
                                  rho=options.pop("rho", 7.0))
    model = Counted(mix)
    out = get_sampler(name)(model, z * float(sigmas[0]), sigmas, generator=generator, **options)
    return out, model.calls


# ----- diffusers side --------------------------------------------------------------------------
class EpsModel:
    """The exact x0-denoiser as diffusers' eps-prediction model on its discrete timesteps."""

    def __init__(self, denoiser, alphas_cumprod: torch.Tensor):
        ab = alphas_cumprod.double()
        self.log_sigmas = ((1 - ab) / ab).sqrt().log()
        self.denoiser, self.calls = denoiser, 0

    def sigma(self, t: float) -> float:
        lo = min(int(math.floor(t)), len(self.log_sigmas) - 2)
        w = t - lo
        return math.exp((1 - w) * self.log_sigmas[lo] + w * self.log_sigmas[lo + 1])

    def __call__(self, x_t: torch.Tensor, t) -> torch.Tensor:
        self.calls += 1
        sigma = self.sigma(float(t))
        x = x_t * math.sqrt(1 + sigma**2)  # VP -> VE
        return (x - self.denoiser(x, sigma)) / sigma


def diffusers_configs() -> list[tuple[str, callable]]:
    """(label, scheduler factory): DDIM with three timestep spacings; DPMSolverMultistep
    (dpmsolver++) and UniPC (bh1, bh2) of orders 2 and 3, Euler and Heun, each with the
    timestep spacings linspace / trailing and the sigma options karras / exponential (log-uniform
    sigma, difflab's log-SNR grid) and, for DPM-Solver, lu (uniform lambda, Lu et al.)."""
    import diffusers as d

    base = dict(num_train_timesteps=T_TRAIN, beta_start=1e-4, beta_end=0.02, beta_schedule="linear")
    grids = {"linspace": dict(timestep_spacing="linspace"), "trailing": dict(timestep_spacing="trailing"),
             "karras": dict(use_karras_sigmas=True), "exponential": dict(use_exponential_sigmas=True)}
    configs = [(f"DDIM/{spacing}", lambda s=spacing: d.DDIMScheduler(
        **base, timestep_spacing=s, clip_sample=False, set_alpha_to_one=True))
        for spacing in ("leading", "trailing", "linspace")]
    for order in (2, 3):
        for tag, grid in {**grids, "lu": dict(use_lu_lambdas=True)}.items():
            configs.append((f"DPMSolverMultistep/o{order}/{tag}", lambda o=order, g=grid:
                            d.DPMSolverMultistepScheduler(**base, **g, solver_order=o,
                                                          algorithm_type="dpmsolver++")))
        for tag, grid in grids.items():
            for solver in ("bh1", "bh2"):
                configs.append((f"UniPCMultistep/o{order}/{solver}/{tag}", lambda o=order, g=grid, b=solver:
                                d.UniPCMultistepScheduler(**base, **g, solver_order=o, solver_type=b)))
    for tag, grid in grids.items():
        configs.append((f"EulerDiscrete/{tag}", lambda g=grid: d.EulerDiscreteScheduler(**base, **g)))
        configs.append((f"HeunDiscrete/{tag}", lambda g=grid: d.HeunDiscreteScheduler(**base, **g)))
    return configs


def diffusers_loop(scheduler, model, z: torch.Tensor, steps: int) -> torch.Tensor:
    """The loop of diffusers' pipelines: scale_model_input -> model -> step."""
    scheduler.set_timesteps(steps)
    x = z * scheduler.init_noise_sigma
    for t in scheduler.timesteps:
        eps = model(scheduler.scale_model_input(x, t), t)
        x = scheduler.step(eps, t, x).prev_sample
    return x


def run_diffusers(config, mix, z, nfe) -> tuple[torch.Tensor, int]:
    label, make = config
    steps = nfe
    while steps >= 1:  # largest step count whose timestep count (= NFE) fits the budget
        scheduler = make()
        scheduler.set_timesteps(steps)
        if len(scheduler.timesteps) <= nfe:
            break
        steps -= 1
    if steps < 1:
        return None, 0
    model = EpsModel(mix, scheduler.alphas_cumprod)
    return diffusers_loop(scheduler, model, z, steps), model.calls


# ----- driver ----------------------------------------------------------------------------------
ODE_FAMILIES = ("euler", "heun", "dpmpp-2m", "dpmpp-3m", "unipc-o2", "unipc-o3")
TRAINED_RANGE = "best ODE, trained range"  # difflab without the grid_min option


def family(label: str) -> str:
    """'difflab:dpmpp-2m/log-snr()' -> 'dpmpp-2m'."""
    return label.split(":")[1].split("/")[0]


class Run:
    """One problem, one seed: exact reference and floor sets, shared start noise, projections."""

    def __init__(self, problem: str, samples: int, seed: int):
        self.mix = mixtures.make_problem(problem)
        self.seed = seed
        g = torch.Generator().manual_seed(seed)
        self.reference = self.mix.sample(samples, g)[0]
        self.floor = self.mix.sample(samples, g)[0]
        self.directions = torch.randn(self.mix.dim, 512, generator=g, dtype=torch.float64)
        self.directions /= self.directions.norm(dim=0, keepdim=True)
        self.z = torch.randn(samples, self.mix.dim, generator=g)  # float32, shared by every run
        self.reference_projections = sorted_projections(self.reference, self.directions)
        self.alpha_bar = schedules.make_alpha_bar("linear", T_TRAIN)
        self.configs = {f"difflab:{c[0]}": c for c in difflab_configs()}
        self.configs.update({f"diffusers:{c[0]}": c for c in diffusers_configs()})

    def floor_errors(self) -> dict:
        return errors(self.floor, self.reference_projections, self.mix, self.directions)

    def errors(self, label: str, nfe: int) -> dict | None:
        config = self.configs[label]
        if label.startswith("difflab:"):
            out, calls = run_difflab(config, self.mix, self.z, nfe, self.alpha_bar,
                                     torch.Generator().manual_seed(self.seed + 1))
        else:
            out, calls = run_diffusers(config, self.mix, self.z, nfe)
        if out is None:
            return None
        assert calls <= nfe, (label, calls, nfe)
        return {**errors(out, self.reference_projections, self.mix, self.directions), "nfe": calls}


def benchmark(problem: str, select_samples: int, eval_samples: int, seed: int, nfes=NFES) -> dict:
    """Select each (side, family, NFE)'s best configuration by sliced W2 on one seed, then report
    the selected configurations on an independent seed (fresh noise, reference and directions)."""
    selection, evaluation = Run(problem, select_samples, seed), Run(problem, eval_samples, seed + 1000)
    chosen = {}
    for label in selection.configs:
        for nfe in nfes:
            e = selection.errors(label, nfe)
            keys = [(label.split(":")[0], family(label), nfe)]
            if label.startswith("difflab:") and "min=" not in label and family(label) in ODE_FAMILIES:
                keys.append(("difflab", TRAINED_RANGE, nfe))  # the trained sigma range only
            for key in keys:
                if e is not None and (key not in chosen or e["sw"] < chosen[key][1]):
                    chosen[key] = (label, e["sw"])
    table = {"floor": evaluation.floor_errors(), "rows": []}
    for (side, fam, nfe), (label, _) in chosen.items():
        table["rows"].append({"side": side, "family": fam, "nfe_budget": nfe, "config": label.split(":")[1],
                              **evaluation.errors(label, nfe)})
    return table


def best(table: dict, side: str, nfe: int, fam: str | None = None) -> dict:
    rows = [r for r in table["rows"] if r["side"] == side and r["nfe_budget"] == nfe
            and (r["family"] == fam if fam else r["family"] != TRAINED_RANGE)]
    return min(rows, key=lambda r: r["sw"]) if fam is None else rows[0]


def markdown(problem: str, table: dict, nfes=NFES) -> str:
    lines = [f"#### {problem}: sliced W2 by NFE (each family's selected configuration)", "",
             "| side | family | " + " | ".join(f"NFE {n}" for n in nfes) + " | configs at NFE 5 / 10 |",
             "|---|---|" + "---|" * len(nfes) + "---|"]
    for side in ("difflab", "diffusers"):
        fams = list(dict.fromkeys(r["family"] for r in table["rows"] if r["side"] == side))
        for fam in fams:
            cells = [f"{best(table, side, n, fam)['sw']:.4f}" for n in nfes]
            configs = " / ".join(best(table, side, n, fam)["config"] for n in (5, 10))
            lines.append(f"| {side} | {fam} | " + " | ".join(cells) + f" | {configs} |")
    lines.append("| exact samples | (noise floor) | " + " | ".join(
        f"{table['floor']['sw']:.4f}" for _ in nfes) + " | |")
    f = table["floor"]
    lines += ["", f"#### {problem}: best of each side, all errors", "",
              "| NFE | side | config | sliced W2 | mean err | cov err | weight TV | NFE used |",
              "|---|---|---|---|---|---|---|---|"]
    for n in nfes:
        for side in ("difflab", "diffusers"):
            e = best(table, side, n)
            lines.append(f"| {n} | {side} | {e['config']} | {e['sw']:.4f} | {e['mean']:.4f} | "
                         f"{e['cov']:.4f} | {e['weights']:.4f} | {e['nfe']} |")
    lines.append(f"| - | floor | exact samples | {f['sw']:.4f} | {f['mean']:.4f} | {f['cov']:.4f} | "
                 f"{f['weights']:.4f} | - |")
    return "\n".join(lines)


# ----- trained MNIST model ---------------------------------------------------------------------
# The configurations each side selected on the 64-D mixture at 5 and 10 NFE, plus the Karras grid
# and DDIM as common baselines.
MNIST_DIFFLAB = ("dpmpp-2m/log-snr(min=0.03)", "unipc-o2/log-snr(min=0.03)", "unipc-o2/karras(rho=7)",
                 "euler/ddpm")
MNIST_DIFFUSERS = ("DDIM/trailing", "DPMSolverMultistep/o2/exponential", "UniPCMultistep/o2/bh2/exponential",
                   "UniPCMultistep/o2/bh2/karras")


class Chunked:
    """Evaluate a network denoiser in batches of ``size`` (memory) in a resolved ``precision``
    ('bf16' or 'fp32': the run's ``run.precision`` on this machine, as ``difflab sample`` does by
    default), one level per call; float32 out."""

    def __init__(self, denoiser, precision: str, size: int = 250):
        self.denoiser, self.precision, self.size = denoiser, precision, size

    @torch.no_grad()
    def __call__(self, x, sigma, cond=None):
        with autocast(torch.device("cpu"), self.precision):
            return torch.cat([self.denoiser(part, sigma, None).float() for part in x.split(self.size)])


def mnist_table(checkpoint: str, samples: int, seed: int, data_dir=None, nfes=(5, 10, 20),
                precision: str | None = None) -> dict:
    """FID (difflab MNIST features, vs mnist-test) of a trained checkpoint per sampler and NFE;
    both sides share the start noise and DDPM's linear schedule (T = 1000) as in the mixtures.
    ``precision`` (auto | bf16 | fp32) defaults to the run's ``run.precision``."""
    from difflab.device import resolve_precision
    from difflab.evaluation.evaluate import evaluate_images
    from difflab.training.checkpoint import load_denoiser, read_checkpoint

    denoiser, config, shape = load_denoiser(checkpoint)
    precision, why = resolve_precision(precision or config.run.precision, torch.device("cpu"))
    print(f"  network precision: {precision} ({why})", flush=True)
    denoiser = Chunked(denoiser.eval(), precision)
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(samples, *shape.item, generator=g)
    alpha_bar = schedules.make_alpha_bar("linear", T_TRAIN)
    configs = {f"difflab:{c[0]}": c for c in difflab_configs() if c[0] in MNIST_DIFFLAB}
    configs.update({f"diffusers:{c[0]}": c for c in diffusers_configs() if c[0] in MNIST_DIFFUSERS})
    table = {"checkpoint": str(checkpoint), "samples": samples, "rows": [], "precision": precision,
             "step": read_checkpoint(checkpoint)[0]["step"]}
    for label, config_ in configs.items():
        for nfe in nfes:
            if label.startswith("difflab:"):
                out, calls = run_difflab(config_, denoiser, z, nfe, alpha_bar,
                                         torch.Generator().manual_seed(seed + 1))
            else:
                out, calls = run_diffusers(config_, denoiser, z, nfe)
            result = evaluate_images(out.clamp(-1, 1), "mnist-test", data_dir, seed=seed)
            table["floor"] = result["fid_floor"]
            side, name = label.split(":")
            table["rows"].append({"side": side, "config": name, "nfe_budget": nfe, "nfe": calls,
                                  "fid": result["fid"]})
            print(f"  {label} NFE {calls}: FID {result['fid']:.2f}", flush=True)
    return table


def mnist_markdown(table: dict, nfes=(5, 10, 20)) -> str:
    lines = [f"#### Trained MNIST model: FID (difflab MNIST features, {table['samples']} samples "
             f"vs mnist-test; lower is better)", "",
             f"checkpoint `{table['checkpoint']}` (step {table['step']}); real-vs-real floor at the "
             f"same N: {table['floor']:.2f}", "",
             "| side | config | " + " | ".join(f"NFE {n}" for n in nfes) + " |",
             "|---|---|" + "---|" * len(nfes)]
    for side, names in (("difflab", MNIST_DIFFLAB), ("diffusers", MNIST_DIFFUSERS)):
        for name in names:
            cells = [f"{r['fid']:.2f}" for n in nfes for r in table["rows"]
                     if r["side"] == side and r["config"] == name and r["nfe_budget"] == n]
            lines.append(f"| {side} | {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--problems", nargs="*", default=["mixture-2d", "mixture-64d"],
                        choices=[p for p in mixtures.PROBLEMS if p.startswith("mixture")])
    parser.add_argument("--select-samples", type=int, default=4000)
    parser.add_argument("--samples", type=int, default=10000, help="samples of the reported run")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", help="write the reported rows to this JSON file")
    parser.add_argument("--mnist", metavar="CHECKPOINT", help="also compare on a trained MNIST "
                        "checkpoint (run directory) by FID")
    parser.add_argument("--mnist-samples", type=int, default=500)
    parser.add_argument("--mnist-nfe", type=int, nargs="+", default=[5, 10, 20])
    parser.add_argument("--mnist-precision", choices=("auto", "bf16", "fp32"),
                        help="network precision for --mnist (default: the run's run.precision)")
    parser.add_argument("--data-dir", help="data directory for the FID reference (MNIST)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    results = {}
    for problem in args.problems:
        start = time.time()
        table = benchmark(problem, args.select_samples, args.samples, args.seed)
        results[problem] = table
        print(markdown(problem, table))
        print(f"\n({problem}: {time.time() - start:.0f} s)\n")
        for n in (10, 5):
            b = best(table, "diffusers", n)
            for fam, what in ((None, "best"), (TRAINED_RANGE, "trained sigma range")):
                a = best(table, "difflab", n, fam)
                print(f"{problem} NFE {n}: sliced W2 ratio difflab ({what})/diffusers = "
                      f"{a['sw'] / b['sw']:.3f} ({a['config']} {a['sw']:.4f} vs {b['config']} {b['sw']:.4f})")
        print(flush=True)
    if args.mnist:
        results["mnist"] = mnist_table(args.mnist, args.mnist_samples, args.seed, args.data_dir,
                                       tuple(args.mnist_nfe), args.mnist_precision)
        print(mnist_markdown(results["mnist"], tuple(args.mnist_nfe)), flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)


if __name__ == "__main__":
    main()
