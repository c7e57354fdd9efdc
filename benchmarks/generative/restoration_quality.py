"""Restoration quality at <= 100 NFE on MNIST or CIFAR-10, in one run: difflab's solvers against
classical restorers, deepinv's DDRM / DiffPIR / DPS and diffusers' RePaint, all on the same
images, the same masks and the same measurement noise, the diffusion methods all driven by the
same trained network (issue 14, "Quality at <= 100 NFE" and "Speed").

    python benchmarks/generative/restoration_quality.py RUN [--n 1000] [--nfe 10] [--out r.json]
    python benchmarks/generative/restoration_quality.py CIFAR_RUN --data cifar10 [--n 1000] ...

RUN is a trained run of the ``--data`` set (default mnist; the main recipe's, e.g.
/work/baseline/mainjob; for cifar10 the CIFAR-10 recipe's, e.g. /work/runs/cifar/recipe-60min-g2,
3 x 32 x 32), loaded with ``difflab.load`` (EMA weights, the run's precision, applied to every
method's network call); a run of another shape is refused. Class-conditional runs restore
unconditionally (cond = None: the null label the run learnt with label dropout).
Task subsets can run as parallel processes (``--tasks``, one ``--out`` each; masks and noise
depend only on the seed and the task) and be joined with ``--merge a.json b.json ...``.

Setup: ``pip install -e ".[bench]"`` (diffusers, scikit-image, OpenCV, bm3d), then deepinv
without its torchvision dependency, and torchvision beside the venv (``restoration_peers.
import_deepinv`` says why: PyPI's torchvision is a CUDA build that breaks ``import diffusers``
in a venv with the CPU torch):
    pip install "torch==2.13.0" einops natsort h5py torchmetrics && pip install --no-deps deepinv
    pip install --no-deps --target .venv/bench-torchvision torchvision==0.28.0

Images: the first ``--n`` test images of the data set, x in [0, 1]. Tasks (noise std in [0, 1]
pixel units, the CLI's convention; difflab's operators get 2x that in the model's [-1, 1] units;
masks are per pixel, over all channels):
  inpaint-box   the central box of half the rows unknown (rows h/4 .. 3h/4 - 1, all columns:
                MNIST rows 7-20, CIFAR-10 rows 8-23; half the pixels), noiseless
  inpaint-80    80% of the pixels unknown, an independent random mask per image, noiseless
  sr-x2         (MNIST) 2 x 2 average pooling, 14 x 14 -> 28 x 28, noiseless
  sr-x4         (CIFAR-10) 4 x 4 average pooling, 8 x 8 -> 32 x 32, noiseless
  denoise-0.2   identity, sigma = 0.2
  denoise-0.5   identity, sigma = 0.5
  deblur        the CLI's default: circular Gaussian blur of std 1 pixel, sigma = 1 / (255 sqrt 12)
                (8-bit rounding noise, ``difflab.restoration.tasks.QUANTIZATION_SIGMA``)
  colorize      (CIFAR-10) y = the mean of the three channels (``Grayscale(3)``), noiseless
MNIST runs the first six, CIFAR-10 inpaint-box, inpaint-80, sr-x4, denoise-0.2, denoise-0.5,
deblur and colorize (``DATA_TASKS``).

Methods (NFE = network evaluations per image, counted by a wrapper, not assumed):
  difflab DDNM (DDNM+ when noisy), DDRM (eta 0.85), PiGDM (one VJP per step), RePaint (U = 1,
      inpainting tasks): the Karras grid of the run (80 -> 0.002), ``--nfe`` steps, defaults;
  difflab DDNM mean, PiGDM mean: the mean of ``--mean-draws`` such draws (default 2, one
      antithetic pair; ``restore_mean``, an estimate of the posterior mean E[x | y]),
      ``--mean-draws`` x ``--nfe`` network evaluations (``--nfe 50``: 100)
  deepinv DDRM, DiffPIR, DPS: ``restoration_peers.run_deepinv`` (deepinv's defaults, its own
      physics operators; SR and colorization: difflab's SVD as a ``DecomposablePhysics``, since
      deepinv's ``Downsampling`` has none and ``Decolorize``'s is thin)
  diffusers RePaint: ``RePaintPipeline`` at equal NFE (steps = NFE, no resampling, its default
      eta = 0), and at its defaults (250 steps, j = 10, r = 10: 2,410 NFE) on the first
      ``--repaint-default-n`` images only (it costs 2,410 network calls per image)
  classical: bicubic (SR); OpenCV Telea and Navier-Stokes, scikit-image biharmonic (inpainting);
      non-local means, TV, BM3D with the true sigma (denoising); Wiener and Richardson-Lucy
      (deblurring); none for colorization. Their free parameters (NLM h, TV weight, Wiener
      balance, RL iterations, inpainting radius) are chosen by PSNR on 50 *training* images of
      the data set. Colour (``restoration_peers``): OpenCV on 8-bit RGB, biharmonic, NLM and TV
      with ``channel_axis``, BM3D as ``bm3d_rgb``, bicubic, Wiener and RL per channel.
  A^+ y: the pseudo-inverse (reference; for denoising, the noisy input itself; for colorization,
      the gray image in all three channels).

Metrics: PSNR and SSIM (scikit-image ``structural_similarity``, data_range 1, colour with
``channel_axis``) per image, averaged; FID with difflab's features of the data set (MNIST or
CIFAR-10 classifier) of the N restorations against its test split (``difflab.evaluation.
evaluate_images``, the project's FID); s/image = wall time / N.

Speed: difflab DDNM and DDRM against deepinv DDRM and DiffPIR at equal NFE, on the same batch
(``--speed-tasks``, default inpaint-box, denoise-0.2 and the data set's sr task), interleaved
in one process (``--speed-reps`` rounds, order rotated each round), medians and ratios.

The tables it prints (and ``--merge`` joins) are made in ``restoration_report.py``.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from dataclasses import dataclass

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import restoration_peers as peers  # noqa: E402

from difflab.device import autocast  # noqa: E402
from difflab.diffusion.generation import model_sigmas  # noqa: E402
from difflab.restoration import (Blur, Downsample, Grayscale, Identity, Inpainting,  # noqa: E402
                                 get_solver, restore_mean)
from difflab.restoration.tasks import QUANTIZATION_SIGMA  # noqa: E402

# every task; its index seeds its masks and noise (new tasks go at the end)
TASKS = ("inpaint-box", "inpaint-80", "sr-x2", "denoise-0.2", "denoise-0.5", "deblur",
         "sr-x4", "colorize")
DATA_TASKS = {"mnist": TASKS[:6],
              "cifar10": ("inpaint-box", "inpaint-80", "sr-x4", "denoise-0.2", "denoise-0.5",
                          "deblur", "colorize")}
SHAPES = {"mnist": (1, 28), "cifar10": (3, 32)}  # data set -> (channels, size)
DIFFUSION = ("difflab DDNM", "difflab DDRM", "difflab PiGDM", "difflab RePaint",
             "difflab DDNM mean", "difflab PiGDM mean",
             "deepinv DDRM", "deepinv DiffPIR", "deepinv DPS", "diffusers RePaint")
CLASSICAL = {"inpaint": ("OpenCV Telea", "OpenCV NS", "biharmonic"), "sr": ("bicubic",),
             "denoise": ("NLM", "TV", "BM3D"), "deblur": ("Wiener", "Richardson-Lucy"),
             "colorize": ()}


class SharedNet:
    """The run's EMA denoiser D(x, sigma) in [-1, 1] units under the run's precision (autocast),
    float32 out; counts calls (NFE) and calls whose input needs a gradient (VJPs)."""

    def __init__(self, model):
        self.denoiser, self.device, self.precision = model.denoiser, model.device, model.precision
        self.sigma_min, self.sigma_max = self.denoiser.sigma_min, self.denoiser.sigma_max
        self.alpha_bar = getattr(self.denoiser, "alpha_bar", None)
        self.calls = self.vjps = 0

    def reset(self):
        self.calls = self.vjps = 0

    def __call__(self, x, sigma, cond=None):
        self.calls += 1
        self.vjps += bool(x.requires_grad)
        with autocast(self.device, self.precision):
            return self.denoiser(x.float(), sigma, cond).float().to(x.dtype)


@dataclass
class Task:
    name: str
    kind: str            # inpaint | sr | denoise | deblur | colorize
    operator: object     # difflab operator in [-1, 1] units
    x01: torch.Tensor    # ground truth [N, C, H, W] in [0, 1]
    y_pm: torch.Tensor   # measurement in [-1, 1] units (what difflab's solvers take)
    y01: torch.Tensor    # the same measurement in [0, 1] units: (y_pm + A 1) / 2
    sigma01: float       # noise std in [0, 1] units
    known: torch.Tensor | None = None  # inpainting: bool [N, 1, H, W], True = known
    factor: int = 1


def make_task(name: str, x01: torch.Tensor, seed: int) -> Task:
    """The task's operator and measurement; masks and noise from one seeded generator."""
    g = torch.Generator().manual_seed(seed * 100 + TASKS.index(name))
    n, c, h, w = x01.shape
    known, factor, sigma01 = None, 1, 0.0
    if name == "inpaint-box":
        known = torch.ones(n, 1, h, w, dtype=torch.bool)
        known[..., h // 4:3 * h // 4, :] = False
        op, kind = Inpainting(known), "inpaint"
    elif name == "inpaint-80":
        known = torch.rand(n, 1, h, w, generator=g) >= 0.8
        op, kind = Inpainting(known), "inpaint"
    elif name in ("sr-x2", "sr-x4"):
        factor = int(name[4:])
        op, kind = Downsample(factor), "sr"
    elif name.startswith("denoise-"):
        sigma01 = float(name.split("-")[1])
        op, kind = Identity(sigma_y=2 * sigma01), "denoise"
    elif name == "deblur":
        sigma01 = QUANTIZATION_SIGMA
        op, kind = Blur(std=1.0, sigma_y=2 * sigma01), "deblur"
    elif name == "colorize":
        op, kind = Grayscale(c), "colorize"
    else:
        raise ValueError(f"unknown task {name!r} (choose from {', '.join(TASKS)})")
    x_pm = x01 * 2 - 1
    y_pm = op.measure(x_pm, g)
    y01 = (y_pm + op.A(torch.ones_like(x_pm))) / 2
    return Task(name, kind, op, x01, y_pm, y01, sigma01, known, factor)


def subset(task: Task, sl: slice) -> Task:
    """The task restricted to images ``sl`` (per-image masks sliced; a box mask too)."""
    known = None if task.known is None else task.known[sl]
    op = Inpainting(known, task.operator.sigma_y) if known is not None else task.operator
    return Task(task.name, task.kind, op, task.x01[sl], task.y_pm[sl], task.y01[sl],
                task.sigma01, known, task.factor)


# ----- methods ---------------------------------------------------------------------------------
def applies(method: str, kind: str) -> bool:
    if "RePaint" in method:
        return kind == "inpaint"
    return method in DIFFUSION or method in CLASSICAL.get(kind, ()) or method == "A^+ y"


def run_diffusion(method, task: Task, net: SharedNet, nfe: int, seed: int, mean_draws: int = 2,
                  antithetic: bool = True):
    """One batch: images in [0, 1]."""
    sigmas = model_sigmas(net, nfe) if nfe else None  # RePaint at its defaults has its own grid
    if method.startswith("difflab"):
        solver = get_solver(method.split()[1].lower())
        g = torch.Generator().manual_seed(seed)
        draws = mean_draws if method.endswith(" mean") else 1
        x = restore_mean(solver, draws, net, task.y_pm, task.operator, sigmas, generator=g,
                         antithetic=antithetic)
        return ((x.clamp(-1, 1) + 1) / 2).detach()
    if method.startswith("deepinv"):
        per_image = task.known is not None and task.known.shape[0] > 1 and \
            not (task.known == task.known[:1]).all()
        out = peers.run_deepinv(method.split()[1].lower(), task, net, task.y01, nfe,
                                sigmas.tolist(), seed, per_image)
        return out.detach().float().clamp(0, 1)
    if method == "diffusers RePaint":
        return peers.run_repaint_diffusers(net, task.y_pm, task.known, seed, steps=nfe,
                                           jump_n_sample=1)
    if method == "diffusers RePaint (defaults)":
        return peers.run_repaint_diffusers(net, task.y_pm, task.known, seed)
    raise ValueError(f"unknown method {method!r}")


def tune_classical(method, task_name, train01, seed) -> dict:
    """The free parameter of a classical method with the best mean PSNR on training images."""
    if method not in peers.TUNING:
        return {}
    key, grid = peers.TUNING[method]
    task = make_task(task_name, train01, seed + 1)
    scores = {v: psnr(peers.run_classical(method, task, {key: v}), task.x01).mean() for v in grid}
    return {key: max(scores, key=scores.get)}


# ----- metrics ---------------------------------------------------------------------------------
def psnr(out01, x01) -> np.ndarray:
    mse = (out01.double() - x01.double()).square().flatten(1).mean(1).clamp(min=1e-12)
    return (10 * torch.log10(1 / mse)).numpy()


def ssim(out01, x01) -> np.ndarray:
    """Per image; colour: scikit-image's mean over channels (``channel_axis=0``)."""
    from skimage.metrics import structural_similarity

    if x01.shape[1] > 1:
        return np.array([structural_similarity(a.numpy(), b.numpy(), data_range=1.0,
                                               channel_axis=0)
                         for a, b in zip(out01.double(), x01.double())])
    return np.array([structural_similarity(a[0].numpy(), b[0].numpy(), data_range=1.0)
                     for a, b in zip(out01.double(), x01.double())])


def fid(out01, data_dir, data="mnist") -> float:
    """FID with difflab's features of ``data`` against its test split."""
    from difflab.evaluation.evaluate import evaluate_images

    return float(evaluate_images(out01 * 2 - 1, f"{data}-test", data_dir, kid_subsets=10)["fid"])


def score(out01, task: Task, data_dir, with_fid=True, data="mnist") -> dict:
    p, s = psnr(out01, task.x01), ssim(out01, task.x01)
    row = {"psnr": float(p.mean()), "ssim": float(s.mean()), "psnr_per_image": p.tolist(),
           "ssim_per_image": s.tolist()}
    if with_fid:
        row["fid"] = fid(out01, data_dir, data)
    return row


# ----- driver ----------------------------------------------------------------------------------
def run_method(method, task: Task, net, nfe, batch, seed, params, mean_draws=2, antithetic=True):
    """(images [N, C, H, W] in [0, 1], NFE per image, VJPs per image, seconds)."""
    if method not in DIFFUSION and not method.startswith("diffusers"):
        out, seconds = peers.timed(peers.run_classical, method, task, params)
        return out, 0, 0, seconds
    outs, seconds, calls = [], 0.0, set()
    for b, start in enumerate(range(0, len(task.x01), batch)):
        part = subset(task, slice(start, start + batch))
        net.reset()
        out, dt = peers.timed(run_diffusion, method, part, net, nfe, seed * 1000 + b, mean_draws,
                              antithetic)
        outs.append(out)
        seconds += dt
        calls.add((net.calls, net.vjps))
    if len(calls) != 1:
        raise RuntimeError(f"{method}: network calls differ between batches: {calls}")
    (nfe_count, vjps), = calls
    return torch.cat(outs), nfe_count, vjps, seconds


def run_task(name, x01, train01, net, args, methods):
    task = make_task(name, x01, args.seed)
    rows = {}
    for method in ["A^+ y", *CLASSICAL[task.kind], *methods]:
        if not applies(method, task.kind):
            continue
        params = tune_classical(method, name, train01, args.seed)
        for nfe in (args.nfe if method in DIFFUSION else [0]):
            out, calls, vjps, seconds = run_method(method, task, net, nfe, args.batch,
                                                   args.seed, params, args.mean_draws,
                                                   not args.independent)
            row = {"method": method, "nfe": calls, "vjp": vjps, "params": params,
                   "seconds_per_image": seconds / len(x01),
                   **score(out, task, args.data_dir, data=args.data)}
            rows[f"{method} @ {nfe}" if nfe else method] = row
            print(f"  {method:<30} NFE {calls:>4}  PSNR {row['psnr']:6.2f}  SSIM {row['ssim']:.3f}"
                  f"  FID {row['fid']:7.2f}  {row['seconds_per_image']:.4f} s/image", flush=True)
    if task.kind == "inpaint" and args.repaint_default_n > 0:
        k = min(args.repaint_default_n, len(x01))
        sub = subset(task, slice(0, k))
        out, calls, _, seconds = run_method("diffusers RePaint (defaults)", sub, net, 0, args.batch,
                                            args.seed, {})
        row = {"method": "diffusers RePaint (defaults)", "nfe": calls, "vjp": 0, "n": k,
               "seconds_per_image": seconds / k,
               **score(out, sub, args.data_dir, with_fid=False, data=args.data)}
        rows["diffusers RePaint (defaults)"] = row
        print(f"  {row['method']:<30} NFE {calls:>4}  PSNR {row['psnr']:6.2f}  SSIM {row['ssim']:.3f}"
              f"  (first {k} images)  {row['seconds_per_image']:.3f} s/image", flush=True)
    return rows


def speed(x01, net, args) -> dict:
    """Interleaved timing of difflab DDNM / DDRM against deepinv DDRM / DiffPIR on one batch:
    each round runs the four once (order rotated); ratios are medians of within-round ratios."""
    methods = ("difflab DDNM", "difflab DDRM", "deepinv DDRM", "deepinv DiffPIR")
    result = {}
    for name in args.speed_tasks:
        task = subset(make_task(name, x01, args.seed), slice(0, args.speed_n))
        times = {m: [] for m in methods}
        for rep in range(args.speed_reps):
            order = methods[rep % len(methods):] + methods[:rep % len(methods)]
            for m in order:
                net.reset()
                _, dt = peers.timed(run_diffusion, m, task, net, args.speed_nfe, args.seed)
                times[m].append(dt / len(task.x01))
        med = {m: statistics.median(v) for m, v in times.items()}

        def ratio(a, b):  # median over rounds of the within-round ratio (load drifts cancel)
            return statistics.median(x / y for x, y in zip(times[a], times[b]))

        result[name] = {"n": len(task.x01), "nfe": args.speed_nfe, "median_s_per_image": med,
                        "all_s_per_image": times,
                        "deepinv DDRM / difflab DDRM": ratio("deepinv DDRM", "difflab DDRM"),
                        "deepinv DDRM / difflab DDNM": ratio("deepinv DDRM", "difflab DDNM"),
                        "deepinv DiffPIR / difflab DDNM": ratio("deepinv DiffPIR", "difflab DDNM")}
    return result


def make_kind(name: str) -> str:
    return {"inpaint": "inpaint", "sr": "sr", "denoise": "denoise", "deblur": "deblur",
            "colorize": "colorize"}[name.split("-")[0]]


def main():
    import difflab
    from difflab.data import load_pixels

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", metavar="RUN", nargs="?",
                        help="a trained run directory of the --data set")
    parser.add_argument("--data", choices=tuple(DATA_TASKS), default="mnist",
                        help="data set: its test images, tasks, training images for tuning, FID")
    parser.add_argument("--n", type=int, default=1000, help="test images (the first N)")
    parser.add_argument("--nfe", type=int, nargs="+", default=[10],
                        help="network evaluations per image for the diffusion methods (<= 100)")
    parser.add_argument("--tasks", nargs="*", default=None, choices=TASKS,
                        help="tasks to run (default: all of the data set's; none: only the speed "
                             "comparison)")
    parser.add_argument("--methods", nargs="+", default=list(DIFFUSION), choices=DIFFUSION)
    parser.add_argument("--mean-draws", type=int, default=2,
                        help="draws averaged by the 'mean' methods (default 2: one antithetic pair)")
    parser.add_argument("--independent", action="store_true",
                        help="the 'mean' methods average independent draws, not antithetic pairs")
    parser.add_argument("--batch", type=int, default=100)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repaint-default-n", type=int, default=5,
                        help="images for diffusers RePaint at its default settings (2,410 NFE)")
    parser.add_argument("--speed-tasks", nargs="*", default=None, choices=TASKS,
                        help="default: inpaint-box, denoise-0.2 and the data set's sr task "
                             "(none: no speed comparison)")
    parser.add_argument("--speed-n", type=int, default=50)
    parser.add_argument("--speed-nfe", type=int, default=10)
    parser.add_argument("--speed-reps", type=int, default=15)
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--out", default=None, help="write all results to this JSON file")
    parser.add_argument("--merge", nargs="+", metavar="JSON",
                        help="print the tables of earlier runs' JSON files (e.g. task subsets of "
                             "one configuration run side by side) instead of running")
    args = parser.parse_args()
    from restoration_report import merge, report  # (it reads this module's task and method lists)

    if args.merge:
        return merge(args.merge, args.out)
    if args.run is None:
        parser.error("give RUN (or --merge)")
    allowed = DATA_TASKS[args.data]
    if args.tasks is None:
        args.tasks = list(allowed)
    if args.speed_tasks is None:
        args.speed_tasks = ["inpaint-box", "denoise-0.2",
                            "sr-x2" if args.data == "mnist" else "sr-x4"]
    wrong = [t for t in [*args.tasks, *args.speed_tasks] if t not in allowed]
    if wrong:
        parser.error(f"{', '.join(wrong)}: not a {args.data} task "
                     f"(choose from {', '.join(allowed)})")
    means = [m for m in args.methods if m.endswith(" mean")]
    if args.mean_draws < 1:
        parser.error(f"--mean-draws {args.mean_draws}: must be at least 1")
    if max(args.nfe) * (args.mean_draws if means else 1) > 100:
        parser.error(f"--nfe: at most 100 network evaluations per image ({', '.join(means) or 'x'} "
                     f"use {args.mean_draws} x --nfe)")
    torch.set_num_threads(args.threads)
    started = time.perf_counter()
    model = difflab.load(args.run)
    channels, size = SHAPES[args.data]
    if (model.shape.channels, tuple(model.shape.size)) != (channels, (size, size)):
        raise SystemExit(f"{args.run}: a model of {model.shape.channels} x "
                         f"{' x '.join(map(str, model.shape.size))} images, not {args.data}'s "
                         f"{channels} x {size} x {size} (give --data to match the run)")
    net = SharedNet(model)
    x01 = (torch.from_numpy(load_pixels(args.data, args.data_dir, "test")[0][:args.n]).float()
           / 255)
    train01 = torch.from_numpy(load_pixels(args.data, args.data_dir, "train")[0][:50]).float() / 255
    versions = versions_of()
    label = {"mnist": "MNIST", "cifar10": "CIFAR-10"}[args.data]
    print(f"{model}\n{len(x01)} {label} test images, NFE {args.nfe}, {torch.get_num_threads()} "
          f"thread(s); {versions}", flush=True)
    clean = fid(x01, args.data_dir, args.data)
    print(f"FID of the {len(x01)} clean test images themselves (floor): {clean:.2f}", flush=True)
    results = {"config": {**vars(args), "model": repr(model), "versions": versions},
               "clean_fid": clean, "tasks": {}}
    for name in args.tasks:
        print(f"\n== {name}", flush=True)
        results["tasks"][name] = run_task(name, x01, train01, net, args, args.methods)
        if args.out:  # after every task, so that a crash later keeps what is done
            with open(args.out, "w") as fh:
                json.dump({**results, "speed": {}, "wall_seconds": time.perf_counter() - started,
                           "partial": True}, fh, indent=1, default=float)
    speed_res = speed(x01, net, args) if args.speed_tasks and args.speed_reps > 0 else {}
    results["speed"] = speed_res
    results["wall_seconds"] = time.perf_counter() - started
    report(results)
    if args.out:
        with open(args.out, "w") as fh:
            json.dump(results, fh, indent=1, default=float)


def versions_of() -> dict:
    out = {"torch": torch.__version__}
    for name in ("deepinv", "diffusers", "skimage", "cv2", "bm3d"):
        try:
            module = peers.import_deepinv() if name == "deepinv" else __import__(name)
            out[name] = getattr(module, "__version__", "?")
        except ImportError:
            out[name] = None
    return out


if __name__ == "__main__":
    main()
