"""Few-step sampling of a trained MNIST run, scored in two feature spaces (issue 12).

Two parts, each row appended to a JSON-lines file as soon as it is measured (a killed run
continues where it stopped; ``--out``):

``recipe``  the run's sampler (DPM-Solver++(2M)) on the model's Karras grid at 10 steps with
            classifier-free guidance 1 (plain conditional sampling), 1.5, 2 and 3
            (``RECIPE_GRID``; 20 steps at guidance 1 and 1.5 are rows of the ``nfe`` part): FID, KID,
            precision and recall in difflab's MNIST features *and* in the second, independent
            MNIST feature network (``mnist-alt``: another architecture and seed), plus
            real-vs-real rows (1,000 mnist-train images) giving the precision/recall balance of
            real data in each space. This table chooses the recipe's guidance and steps.
``nfe``     FID/KID in both spaces at NFE 3, 4, 5, 6, 8, 10, 20 (and 40, the reference) for
            difflab's DPM-Solver++(2M) on the model's Karras grid, on the fixed few-step grid of
            ``--grid auto`` (log-SNR down to sigma = 0.03, then a Tweedie step), on the grid
            optimized for this model (``Model.optimize_schedule``: GITS DP + refinement from 32
            trajectories; seconds per search recorded), and diffusers' best configuration. For
            diffusers, candidates are its EDM schedulers (EDMDPMSolverMultistep orders 2/3 with
            Karras or exponential sigmas, EDMEuler) on the model's own [0.002, 80] range and its
            DDPM-style schedulers on DDPM's linear-beta timesteps (the network wrapped as an
            eps-model, as in sampler_quality.py; order 3 with Karras sigmas is left out: at
            these NFE it matched order 2 to all digits); per NFE the candidate with the lowest sum of
            FID / real-vs-real floor over both spaces is selected on 200 samples of another seed
            and reported on the common 1,000.

Every sampler gets the same 1,000 start noises and labels (cycling 0..9); guided rows apply
classifier-free guidance inside the denoiser for both sides, so a guided NFE is two network
calls. Network in the run's resolved precision (bf16 where native).

Run:  python benchmarks/generative/few_step_mnist.py RUN --part recipe --out recipe.jsonl
      python benchmarks/generative/few_step_mnist.py RUN --part nfe --guidance 1 --out nfe.jsonl
      python benchmarks/generative/few_step_mnist.py --markdown recipe.jsonl nfe.jsonl
"""
from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from sampler_quality import EpsModel, diffusers_loop  # noqa: E402

from difflab import load  # noqa: E402
from difflab.device import autocast  # noqa: E402
from difflab.diffusion import schedules  # noqa: E402
from difflab.diffusion.generation import AUTO_LAST_SIGMA, class_labels, get_sampler  # noqa: E402
from difflab.diffusion.guidance import guided  # noqa: E402
from difflab.evaluation.evaluate import evaluate_images, load_split  # noqa: E402

NFES = (3, 4, 5, 6, 8, 10, 20)
RECIPE_GRID = ((10, 1.0), (10, 1.5), (10, 2.0), (10, 3.0))  # (steps, guidance)
SPACES = ("", "alt_")
KEYS = ("fid", "fid_floor", "kid", "kid_floor", "precision", "recall")


class Labelled:
    """The run's EMA denoiser with fixed labels per sample, in chunks, with guidance and autocast:
    D(x, sigma) for a whole set of samples [N, ...]; counts its calls (denoiser evaluations)."""

    def __init__(self, model, labels, guidance: float, chunk: int = 250):
        self.model, self.labels, self.chunk, self.calls = model, labels, chunk, 0
        self.denoiser = guided(model.denoiser, guidance)

    @torch.no_grad()
    def __call__(self, x, sigma, cond=None):
        self.calls += 1
        out = []
        with autocast(self.model.device, self.model.precision):
            for part, labels in zip(x.split(self.chunk), self.labels.split(self.chunk)):
                out.append(self.denoiser(part, sigma, labels).float())
        return torch.cat(out)


class EDMNet:
    """A denoiser D as the raw network F of diffusers' EDM schedulers, which feed it
    c_in(sigma) x and c_noise = log(sigma) / 4 and form D = c_skip x + c_out F (Karras et al.
    2022, Table 1): F = (D(x) - c_skip x) / c_out, exactly the inverse."""

    def __init__(self, denoiser, sigma_data: float):
        self.denoiser, self.sigma_data = denoiser, sigma_data

    def __call__(self, x_in, c_noise):
        sigma = math.exp(4 * float(c_noise))
        sd2 = self.sigma_data ** 2
        c_in, c_skip = 1 / math.sqrt(sigma**2 + sd2), sd2 / (sigma**2 + sd2)
        c_out = sigma * self.sigma_data / math.sqrt(sigma**2 + sd2)
        x = x_in / c_in
        return (self.denoiser(x, sigma) - c_skip * x) / c_out


def diffusers_candidates(sigma_min: float, sigma_max: float, sigma_data: float) -> dict:
    """label -> (kind, scheduler factory); kind "edm" (EDMNet) or "vp" (EpsModel, linear betas)."""
    import diffusers as d

    edm = dict(sigma_min=sigma_min, sigma_max=sigma_max, sigma_data=sigma_data)
    vp = dict(num_train_timesteps=1000, beta_start=1e-4, beta_end=0.02, beta_schedule="linear")
    out = {}
    for order, sched in ((2, "karras"), (2, "exponential"), (3, "exponential")):
        out[f"EDMDPMSolverMultistep/o{order}/{sched}"] = ("edm", lambda o=order, s=sched: (
            d.EDMDPMSolverMultistepScheduler(**edm, sigma_schedule=s, solver_order=o,
                                             final_sigmas_type="zero")))
    out["EDMEuler/karras"] = ("edm", lambda: d.EDMEulerScheduler(**edm, sigma_schedule="karras"))
    out["DPMSolverMultistep/o2/exponential"] = ("vp", lambda: d.DPMSolverMultistepScheduler(
        **vp, use_exponential_sigmas=True, solver_order=2, algorithm_type="dpmsolver++"))
    out["UniPCMultistep/o2/bh2/exponential"] = ("vp", lambda: d.UniPCMultistepScheduler(
        **vp, use_exponential_sigmas=True, solver_order=2, solver_type="bh2"))
    return out


def run_diffusers(kind_make, denoiser: Labelled, z: torch.Tensor, nfe: int, sigma_data: float):
    """Samples of a diffusers scheduler at its largest step count with <= ``nfe`` evaluations."""
    kind, make = kind_make
    steps = nfe
    while steps >= 1:
        scheduler = make()
        scheduler.set_timesteps(steps)
        if len(scheduler.timesteps) <= nfe:
            break
        steps -= 1
    net = EDMNet(denoiser, sigma_data) if kind == "edm" else EpsModel(denoiser, scheduler.alphas_cumprod)
    start = denoiser.calls
    out = diffusers_loop(scheduler, net, z, steps)
    return out, denoiser.calls - start


def scores(images: torch.Tensor, data_dir) -> dict:
    r = evaluate_images(images.clamp(-1, 1), "mnist-test", data_dir, seed=0, kid_subsets=50)
    return {p + k: r[p + k] for p in SPACES for k in KEYS}


def done_keys(path: Path) -> set:
    if not path.exists():
        return set()
    return {json.loads(line)["key"] for line in path.read_text().splitlines() if line.strip()}


def read_rows(path) -> list[dict]:
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]


def markdown(paths) -> str:
    """Tables of the recorded rows: the recipe table, and per guidance the FID by NFE in both
    spaces, with the 5-vs-40 NFE ratios and the search times."""
    rows = [r for path in paths for r in read_rows(path)]
    out = []
    recipe = [r for r in rows if r["key"] == "real" or r["key"].startswith("recipe/")]
    if recipe:
        out += ["| steps | guidance | network calls | FID | KID | precision | recall | alt FID | "
                "alt KID | alt precision | alt recall |", "|---|---|---|---|---|---|---|---|---|---|---|"]
        for r in recipe:
            head = "real (mnist-train) | - | -" if r["key"] == "real" else \
                f"{r['steps']} | {r['guidance']:g} | {r['steps'] * (1 if r['guidance'] == 1 else 2)}"
            out.append(f"| {head} | " + " | ".join(
                f"{r[p + k]:.3g}" if k == "kid" else f"{r[p + k]:.3f}"
                for p in SPACES for k in ("fid", "kid", "precision", "recall")) + " |")
        out.append("")
    for g in sorted({r["guidance"] for r in rows if "side" in r}):
        sub = [r for r in rows if r.get("guidance") == g and "side" in r]
        nfes = sorted({r["nfe"] for r in sub if r["nfe"] != 40 and r["side"] == "difflab"})
        ref = next((r for r in sub if r["key"].endswith("/karras/40")), None)
        for p, space in (("", "difflab-MNIST"), ("alt_", "difflab-MNIST-alt")):
            out += [f"FID ({space} features), guidance {g:g}" + (f"; 40 NFE reference (Karras): "
                    f"{ref[p + 'fid']:.3f}" if ref else ""), "",
                    "| side | grid | " + " | ".join(f"NFE {n}" for n in nfes) + " |",
                    "|---|---|" + "---|" * len(nfes)]
            for side, grid in (("difflab", "karras"), ("difflab", "auto-fixed"),
                               ("difflab", "optimized"), ("diffusers", "best")):
                cells = []
                for n in nfes:
                    hit = [r for r in sub if r["side"] == side and r["nfe"] <= n and
                           r["key"] == f"g{g:g}/{side}/{grid}/{n}"]
                    cells.append(f"{hit[0][p + 'fid']:.3f}" if hit else "-")
                out.append(f"| {side} | {grid} | " + " | ".join(cells) + " |")
            out.append("")
        picks = [f"NFE {r['key'].split('/')[-1]}: {r['grid']}" for r in sub if r["side"] == "diffusers"]
        out += ["diffusers' selected configurations: " + "; ".join(picks), ""]
        searches = [f"NFE {r['nfe']}: {r['search_seconds']:.0f} s" for r in sub if "search_seconds" in r]
        out += ["schedule search time (busy machine): " + "; ".join(searches), ""]
    return "\n".join(out)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("run", nargs="?")
    p.add_argument("--part", choices=("recipe", "nfe"))
    p.add_argument("--markdown", nargs="+", metavar="JSONL", help="print the tables of recorded "
                   "rows and exit")
    p.add_argument("--guidance", type=float, default=1.0, help="nfe part: guidance scale")
    p.add_argument("--n", type=int, default=1000)
    p.add_argument("--nfe", type=int, nargs="+", default=list(NFES))
    p.add_argument("--select-n", type=int, default=200)
    p.add_argument("--data-dir")
    p.add_argument("--out")
    p.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    args = p.parse_args()
    if args.markdown:
        print(markdown(args.markdown))
        return
    if not (args.run and args.part and args.out):
        p.error("RUN, --part and --out are needed (or --markdown FILES)")
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    done = done_keys(out)
    model = load(args.run)
    den = model.denoiser
    shape = model.shape
    labels = class_labels(0, args.n, shape.num_classes)
    z = torch.randn((args.n, *shape.item), generator=torch.Generator().manual_seed(0))

    def record(key: str, row: dict) -> None:
        row = {"key": key, **row}
        with open(out, "a") as f:
            f.write(json.dumps(row) + "\n")
        print(json.dumps(row), flush=True)

    def difflab_row(guidance, sigmas, noise=z, labels_=labels):
        d = Labelled(model, labels_, guidance)
        started = time.perf_counter()
        x = get_sampler("dpmpp-2m")(d, noise * float(sigmas[0]), sigmas)
        return x, d.calls, time.perf_counter() - started

    if args.part == "recipe":
        if "real" not in done:
            real = load_split("mnist", "train", args.data_dir)
            pick = torch.randperm(len(real), generator=torch.Generator().manual_seed(1))[:args.n]
            record("real", {"what": "real-vs-real: mnist-train images", **scores(real[pick], args.data_dir)})
        for steps, g in RECIPE_GRID:
            key = f"recipe/dpmpp-2m/karras/{steps}/g{g:g}"
            if key in done:
                continue
            sigmas = schedules.sigma_grid("karras", steps, den.sigma_min, den.sigma_max)
            x, calls, sec = difflab_row(g, sigmas)
            record(key, {"steps": steps, "guidance": g, "nfe": calls, "seconds": sec,
                         **scores(x, args.data_dir)})
        return

    g = args.guidance
    candidates = diffusers_candidates(den.sigma_min, den.sigma_max, den.sigma_data)
    z_sel = torch.randn((args.select_n, *shape.item), generator=torch.Generator().manual_seed(7))
    labels_sel = class_labels(0, args.select_n, shape.num_classes)
    reference = f"g{g:g}/difflab/karras/40"
    if reference not in done:
        x, calls, sec = difflab_row(g, schedules.sigma_grid("karras", 40, den.sigma_min, den.sigma_max))
        record(reference, {"side": "difflab", "grid": "karras", "nfe": calls, "guidance": g,
                           "seconds": sec, **scores(x, args.data_dir)})
    for nfe in args.nfe:
        grids = {"karras": schedules.sigma_grid("karras", nfe, den.sigma_min, den.sigma_max),
                 "auto-fixed": schedules.sigma_grid("log-snr", nfe, max(den.sigma_min, AUTO_LAST_SIGMA),
                                                    den.sigma_max)}
        key = f"g{g:g}/difflab/optimized/{nfe}"
        if key not in done:
            started = time.perf_counter()
            grids["optimized"] = model.optimize_schedule("dpmpp-2m", nfe, guidance=g)
            search_seconds = time.perf_counter() - started
        for name, sigmas in grids.items():
            key = f"g{g:g}/difflab/{name}/{nfe}"
            if key in done:
                continue
            x, calls, sec = difflab_row(g, sigmas)
            extra = {"search_seconds": search_seconds, "sigmas": [float(s) for s in sigmas]} \
                if name == "optimized" else {}
            record(key, {"side": "difflab", "grid": name, "nfe": calls, "guidance": g,
                         "seconds": sec, **extra, **scores(x, args.data_dir)})
        key = f"g{g:g}/diffusers/best/{nfe}"
        if key in done:
            continue
        selection = {}
        for label, cand in candidates.items():
            d = Labelled(model, labels_sel, g)
            x, calls = run_diffusers(cand, d, z_sel, nfe, den.sigma_data)
            if calls > nfe:
                raise AssertionError(f"{label}: {calls} evaluations > {nfe}")
            s = scores(x, args.data_dir)
            selection[label] = sum(s[p + "fid"] / s[p + "fid_floor"] for p in SPACES)
            print(f"  select NFE {nfe} {label}: {selection[label]:.2f}", flush=True)
        best = min(selection, key=selection.get)
        d = Labelled(model, labels, g)
        started = time.perf_counter()
        x, calls = run_diffusers(candidates[best], d, z, nfe, den.sigma_data)
        record(key, {"side": "diffusers", "grid": best, "nfe": calls, "guidance": g,
                     "seconds": time.perf_counter() - started, "selection": selection,
                     **scores(x, args.data_dir)})


if __name__ == "__main__":
    main()
