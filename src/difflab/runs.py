"""A run, end to end and after the fact: train it (with scoring during training), finish it
(final samples, scores, report.md), and load it for use as a model object.

This module sits above both training and evaluation, so neither imports the other::

    model = difflab.load("runs/mnist")
    images = model.sample(16)            # [16, C, H, W] in [0, 1], the run's sampling recipe
"""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch

from difflab.config import TrainConfig, update, validate
from difflab.device import fast_layout, resolve_device, resolve_precision
from difflab.diffusion.generation import generate, model_sigmas
from difflab.evaluation.evaluate import (SHAPES, difflab_extractor, evaluate_images,
                                         extractors_for, floor_features, reference_features)
from difflab.evaluation.metrics import MetricsError
from difflab.evaluation.report import save_grid, save_npz, write_report
from difflab.files import inside
from difflab.options import check_steps
from difflab.progress import Progress
from difflab.training.checkpoint import load_denoiser, read_checkpoint
from difflab.training.run_dir import lock_run
from difflab.training.train import train

EVAL_SEED = 4321
TRAINING_LOG_KEYS = ("fid", "fid_floor", "kid", "kid_std", "is", "precision", "recall",
                     "alt_fid", "alt_fid_floor", "alt_kid", "alt_precision", "alt_recall")
PER_SPACE = ("fid", "fid_floor", "kid", "kid_std", "kid_floor", "precision", "precision_floor",
             "recall", "recall_floor")


class Model:
    """A trained run loaded for use: the EMA denoiser, its config, the data shape, the device
    and the resolved precision. ``sample`` draws images with the run's recipe as defaults."""

    def __init__(self, denoiser, config: TrainConfig, shape, path: Path, precision: str,
                 precision_reason: str):
        self.denoiser, self.config, self.shape, self.path = denoiser, config, shape, path
        self.precision, self.precision_reason = precision, precision_reason

    @property
    def device(self) -> torch.device:
        return next(self.denoiser.parameters()).device

    def generate(self, n: int, steps: int | None = None, sampler: str | None = None,
                 guidance: float | None = None, seed: int = 0, grid: str | None = None,
                 class_label: int | None = None, batch_size: int = 250, **options) -> torch.Tensor:
        """``n`` samples in [-1, 1] (the model's data range); None means the run's recipe."""
        recipe = self.config.sample
        sampler = recipe.sampler if sampler is None else sampler
        steps = recipe.steps if steps is None else check_steps(steps)  # 0 is not "the default"
        grid = self.resolve_grid(grid if grid is not None else recipe.grid, sampler, steps)
        return generate(self.denoiser, self.shape.item, self.shape.num_classes, n,
                        sampler=sampler, steps=steps, grid=grid,
                        guidance=recipe.guidance if guidance is None else guidance, seed=seed,
                        batch_size=batch_size, class_label=class_label,
                        precision=self.precision, **options)

    def resolve_grid(self, grid, sampler: str, steps: int):
        """``optimized``: the run's saved grid for this sampler and steps (error if none);
        ``auto``: that grid if saved, else ``auto`` for ``generation.model_sigmas``' rule."""
        if grid == "optimized":
            return self.optimized_sigmas(sampler, steps)
        if grid == "auto":
            from difflab.diffusion.schedule_store import load_schedules, schedule_key

            saved = load_schedules(self.run_dir).get(schedule_key(sampler, steps))
            return self._checked(saved["sigmas"], sampler, steps) if saved else "auto"
        return grid

    def _checked(self, sigmas: torch.Tensor, sampler: str, steps: int) -> torch.Tensor:
        """A grid read from the run's schedules.json, if it fits this model's sigma range
        (``model_sigmas``); else a ValueError naming the file and the entry."""
        from difflab.diffusion.schedule_store import SCHEDULES_FILE, schedule_key

        try:
            return model_sigmas(self.denoiser, steps, sigmas)
        except ValueError as e:
            raise ValueError(f"{self.run_dir / SCHEDULES_FILE}: schedules"
                             f"[{schedule_key(sampler, steps)!r}]: {e}") from None

    @property
    def run_dir(self) -> Path:
        return self.path if self.path.is_dir() else self.path.parent

    def optimized_sigmas(self, sampler: str, steps: int) -> torch.Tensor:
        """The grid ``difflab schedule`` optimized for this run, sampler and steps."""
        from difflab.diffusion.schedule_store import SCHEDULES_FILE, load_schedules, schedule_key

        run_dir = self.run_dir
        key = schedule_key(sampler, steps)
        saved = load_schedules(run_dir)
        if key not in saved:
            raise ValueError(f"{run_dir / SCHEDULES_FILE}: no optimized grid for {sampler} at "
                             f"{steps} steps (make one: difflab schedule {run_dir} --sampler "
                             f"{sampler} --steps {steps})")
        return self._checked(saved[key]["sigmas"], sampler, steps)

    def optimize_schedule(self, sampler: str, steps: int, n: int = 32, seed: int = 0,
                          guidance: float | None = None) -> torch.Tensor:
        """Optimize the sigma grid of ``sampler`` at ``steps`` steps for this model from ``n``
        of its own trajectories (``difflab.diffusion.schedule_search``: GITS dynamic
        programming, selection against fixed grids, refinement), save it in the run's
        schedules.json and return it. Conditional runs use labels cycling 0..K-1 and the run's
        guidance, as sampling does."""
        from difflab.device import autocast
        from difflab.diffusion.generation import class_labels
        from difflab.diffusion.schedule_search import search_schedule
        from difflab.diffusion.schedule_store import save_schedule, schedule_key

        generator = torch.Generator(self.device).manual_seed(seed)
        noise = torch.randn((n, *self.shape.item), generator=generator, device=self.device)
        cond = class_labels(0, n, self.shape.num_classes)
        guidance = self.config.sample.guidance if guidance is None else guidance
        with autocast(self.device, self.precision):
            found = search_schedule(self.denoiser, sampler, steps, noise,
                                    cond=None if cond is None else cond.to(self.device),
                                    guidance=guidance if self.shape.num_classes else 1.0)
        save_schedule(self.run_dir, schedule_key(sampler, steps), found.sigmas,
                      {**found.meta, "trajectories": n, "seed": seed, "guidance": guidance})
        return found.sigmas

    def sample(self, n: int, steps: int | None = None, sampler: str | None = None,
               guidance: float | None = None, seed: int = 0, **options) -> torch.Tensor:
        """``n`` samples as a float tensor ``[n, C, H, W]`` in [0, 1]. Defaults (None) are the
        run's recipe: ``config.sample.steps``, ``.sampler``, ``.guidance``; ``grid=``,
        ``class_label=``, ``batch_size=`` and sampler options pass through."""
        return (self.generate(n, steps, sampler, guidance, seed, **options) + 1) / 2

    def restore(self, images: torch.Tensor, task: str, **options) -> torch.Tensor:
        """Restore ``images`` ([N, C, H, W] in [0, 1]): ``task`` is one of inpaint (mask=),
        upscale (factor=), denoise (sigma=), deblur (kernel="gaussian:1.0"), colorize, edit
        (strength=); method=, steps=, seed=, class_label= as in ``difflab.restoration.tasks``."""
        from difflab.restoration.tasks import restore

        return restore(self, images, task, **options)

    def inpaint(self, images, mask, **options):
        """Fill the pixels where ``mask`` is 0 (mask 1 = known), keeping the known ones exactly."""
        return self.restore(images, "inpaint", mask=mask, **options)

    def upscale(self, images, factor: int, **options):
        """Super-resolve ``images`` by an integer ``factor`` (their average-pooled view is kept)."""
        return self.restore(images, "upscale", factor=factor, **options)

    def denoise(self, images, sigma: float, **options):
        """Remove Gaussian noise of std ``sigma`` (in [0, 1] pixel units)."""
        return self.restore(images, "denoise", sigma=sigma, **options)

    def deblur(self, images, kernel: str = "gaussian:1.0", sigma: float | None = None,
               **options):
        """Undo a blur with ``kernel`` ``gaussian:STD`` or ``box:SIZE`` (circular); ``sigma``:
        noise std of the blurred images in [0, 1] units (default: 8-bit rounding noise)."""
        return self.restore(images, "deblur", kernel=kernel, sigma=sigma, **options)

    def colorize(self, images, **options):
        """Colour grayscale ``images`` [N, 1, H, W] (colour models)."""
        return self.restore(images, "colorize", **options)

    def edit(self, images, strength: float = 0.5, **options):
        """SDEdit: noise ``images`` to ``strength`` in [0, 1] and sample from there."""
        return self.restore(images, "edit", strength=strength, **options)

    def __repr__(self) -> str:
        s = self.config.sample
        return (f"Model({str(self.path)!r}, net={self.config.net.kind}, shape={self.shape.item}, "
                f"classes={self.shape.num_classes}, recipe={s.sampler}/{s.steps} steps/"
                f"guidance {s.guidance:g}, {self.device}, {self.precision})")


def load(path, device: str | None = None, precision: str | None = None) -> Model:
    """Load a run directory (or its checkpoint.json) for sampling, EMA weights. ``device``
    defaults to the run's own where this machine has it, else cpu; ``precision`` to the run's
    (``auto`` resolves on this machine)."""
    denoiser, config, shape = load_denoiser(path)
    if device is None:
        try:
            resolved = resolve_device(config.run.device)
        except ValueError:
            resolved = torch.device("cpu")
    else:
        resolved = resolve_device(device)
    chosen, reason = resolve_precision(precision or config.run.precision, resolved)
    return Model(fast_layout(denoiser.to(resolved), resolved), config, shape, Path(path), chosen,
                 reason)


def make_training_evaluator(config: TrainConfig, precision: str):
    """For ``difflab train --eval-every K``: ``(denoiser, shape) -> dict`` that draws ``loop.eval_n``
    samples (fixed seed, the run's recipe) and scores them against the test split of the
    training data. Checks the data set and warms the reference cache up front, so a
    misconfigured run fails before training. Uses its own generators: resuming stays exact."""
    dataset = config.data.dataset
    if dataset not in SHAPES:
        raise MetricsError(f"loop.eval_every needs data set mnist or cifar10 (feature networks "
                           f"exist only for those), got {dataset!r}")
    size = SHAPES[dataset][1]
    if config.data.image_size not in (None, size):
        raise MetricsError(f"loop.eval_every: the {dataset} feature network needs {size}x{size} "
                           f"images, got data.image_size={config.data.image_size}")
    reference = f"{dataset}-test"
    for _, extractor in extractors_for(dataset):
        reference_features(reference, extractor, config.data.data_dir, verbose=True)
        floor_features(reference, extractor, config.loop.eval_n, config.data.data_dir, verbose=True)
    smp = config.sample

    def evaluate_model(denoiser, shape) -> dict:
        images = generate(denoiser, shape.item, shape.num_classes, config.loop.eval_n,
                          sampler=smp.sampler, steps=smp.steps, grid=smp.grid,
                          guidance=smp.guidance, seed=EVAL_SEED, precision=precision)
        r = evaluate_images(images, reference, config.data.data_dir, seed=EVAL_SEED, kid_subsets=50)
        return {"eval_n": r["n"], "eval_features": r["features"],
                **{k: r[k] for k in TRAINING_LOG_KEYS if k in r}}

    return evaluate_model


def train_run(config: TrainConfig, resume: bool = False, force: bool = False) -> Path:
    """``difflab train``: train (scoring every ``loop.eval_every`` steps if set), then finish the
    run; returns the report's path. Under torchrun rank 0 scores and finishes the run; the other
    ranks return None when training ends."""
    from difflab.training import distributed

    evaluator = None
    if config.loop.eval_every and distributed.is_main():
        precision, _ = resolve_precision(config.run.precision, resolve_device(config.run.device))
        evaluator = make_training_evaluator(config, precision)
    run_dir = train(config, resume=resume, evaluator=evaluator, force=force)
    return finish_run(run_dir) if distributed.is_main() else None


def finish_run(run_dir, n: int | None = None, **sampling) -> Path:
    """Sample the trained EMA model, save a 64-image grid and all samples (.npz), write report.md.
    ``sampling`` overrides fields of the run's ``sample`` section (``sampler=``, ``steps=``,
    ``guidance=``, ``grid=``) for this call. Holds the run's lock (one writer at a time)."""
    with lock_run(Path(run_dir)):
        return _finish_run(Path(run_dir), n, sampling)


def _finish_run(run_dir: Path, n: int | None, sampling: dict) -> Path:
    model = load(run_dir)
    validate(update(model.config, {"sample": sampling}))
    recipe = model.config.sample
    n = recipe.final_samples if n is None else n
    calls = []  # batch size of every network evaluation
    hook = model.denoiser.net.register_forward_pre_hook(lambda module, args: calls.append(args[0].shape[0]))
    started = time.perf_counter()
    progress = Progress(max(n, 64), None, label="sample", unit="image", every_percent=25)
    images = model.generate(max(n, 64), seed=1234, progress=progress.update)
    progress.close()
    seconds = time.perf_counter() - started
    hook.remove()
    save_grid(images[:64], inside(run_dir, "samples.png"))
    info, _ = read_checkpoint(run_dir)
    grid = model.resolve_grid(recipe.grid, recipe.sampler, recipe.steps)
    sigmas = model_sigmas(model.denoiser, recipe.steps, grid, recipe.sampler)
    sample_info = {"n": len(images), "sampler": recipe.sampler, "steps": recipe.steps,
                   "sigma_grid": f"{recipe.grid or 'model'}" + (" (this run's optimized grid)"
                                                     if torch.is_tensor(grid) else ""),
                   "sigmas": [round(float(s), 4) for s in sigmas],
                   "guidance": recipe.guidance if model.shape.num_classes else None,
                   "nfe": round(sum(calls) / len(images)),  # network evaluations per image
                   "seconds": seconds, "grid": "samples.png", "net": model.config.net.kind,
                   "parameters": sum(p.numel() for p in model.denoiser.net.parameters()),
                   "train_precision": info.get("precision", "bf16 (run before precision "
                                               "was recorded)"),
                   "train_precision_reason": info.get("precision_reason", ""),
                   "sample_precision": model.precision,
                   "sample_precision_reason": model.precision_reason}
    metrics = None
    if n:
        save_npz(images[:n], inside(run_dir, "samples.npz"))
        sample_info["npz"] = "samples.npz"
        started = time.perf_counter()
        metrics = score_samples(images[:n], model.config)
        if metrics is not None:
            metrics["scoring seconds"] = round(time.perf_counter() - started, 1)
    return write_report(run_dir, sample_info, metrics)


def score_samples(images: torch.Tensor, config: TrainConfig) -> dict | None:
    """FID/KID/IS/precision/recall of final samples against the test split, with difflab's own
    feature networks (only MNIST and CIFAR-10 at their native size have them; MNIST has two,
    and every per-space metric is reported in both, named by its network)."""
    dataset = config.data.dataset
    if dataset not in SHAPES or config.data.image_size not in (None, SHAPES[dataset][1]) \
            or len(images) < 2:
        return None
    result = evaluate_images(images, f"{dataset}-test", config.data.data_dir, verbose=True)
    spaces = {result[f"{prefix}features"]: {key: result[prefix + key] for key in PER_SPACE
                                             if prefix + key in result}
              for prefix in ("", "alt_") if f"{prefix}features" in result}
    scores = {"feature spaces": spaces, "n": result["n"], "is": result["is"],
              "is_std": result["is_std"]}
    if "warning" in result:
        scores["warning"] = result["warning"]
    # What the classifier behind the features sees: how confident, and which classes.
    _, probs = difflab_extractor(dataset)(images)
    counts = np.bincount(probs.argmax(1), minlength=probs.shape[1])
    scores["classifier confidence (mean max probability)"] = float(probs.max(1).mean())
    scores["share of samples with confidence > 0.9"] = float((probs.max(1) > 0.9).mean())
    scores["classes present"] = f"{int((counts > 0).sum())} of {probs.shape[1]}"
    scores["predicted class counts"] = " ".join(str(c) for c in counts)
    return scores

