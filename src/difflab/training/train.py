"""The training loop: data -> noise levels -> weighted denoising loss -> AdamW -> EMA -> log,
sample grids and atomic checkpoints. Read it top to bottom.

Exact resume: every random number comes from one ``torch.Generator`` whose state is saved with the
model, EMA, optimizer and step, so ``--resume`` after a kill continues the same loss curve bit for
bit on CPU. Training wall time (``run.minutes``) is saved too and keeps counting after a resume.
"""
from __future__ import annotations

import json
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from difflab.training.checkpoint import (INDEX, load_optimizer, optimizer_tensors, read_checkpoint,
                                save_checkpoint, sub_state)
from difflab.config import TrainConfig, validate
from difflab.data import load_dataset
from difflab.diffusion.denoiser import build_denoiser
from difflab.training.ema import EMA
from difflab.evaluation.evaluate import make_training_evaluator
from difflab.diffusion.loss import denoising_loss
from difflab.evaluation.report import save_grid
from difflab.diffusion.samplers import sample
from difflab.diffusion.schedules import make_alpha_bar, sample_training_sigma

GRID_SEED = 1234


class TrainingError(RuntimeError):
    """Training cannot go on (e.g. the loss became NaN); the message names the step and checkpoint."""


def prepare(config: TrainConfig):
    """Load the data and fit the network's input shape and classes to it."""
    d = config.data
    data = load_dataset(d.dataset, d.data_dir, "train", d.image_size, d.channels, d.folder)
    config.unet.in_channels, config.unet.image_size = data.shape[0], data.shape[1]
    config.unet.num_classes = data.num_classes if d.class_conditional else 0
    if d.class_conditional and data.labels is None:
        raise ValueError(f"data.class_conditional=True but data set {d.dataset!r} has no labels "
                         "(train with --unconditional)")
    return data, validate(config)


def train(config: TrainConfig, resume: bool = False) -> Path:
    run, opt_cfg, diff = config.run, config.optim, config.diffusion
    out = Path(run.out)
    if run.threads:
        torch.set_num_threads(run.threads)
    if (out / INDEX).exists() and not resume:
        raise ValueError(f"{out}: run directory already has a checkpoint; pass --resume to "
                         "continue it or choose another --out")
    data, config = prepare(config)

    torch.manual_seed(run.seed)
    denoiser = build_denoiser(config)
    ema = EMA(denoiser.net, opt_cfg.ema_half_life_images, opt_cfg.ema_rampup_ratio)
    optimizer = torch.optim.AdamW(denoiser.net.parameters(), lr=opt_cfg.lr, betas=opt_cfg.betas,
                                  weight_decay=opt_cfg.weight_decay)
    generator = torch.Generator().manual_seed(run.seed)
    alpha_bar = make_alpha_bar(diff.schedule, diff.timesteps) if diff.density == "ddpm" else None
    step, train_seconds, last_checkpoint = 0, 0.0, None

    if resume and (out / INDEX).exists():
        info, tensors = read_checkpoint(out)
        saved, now = _trajectory_fields(info["config"]), _trajectory_fields(config.to_dict())
        if saved != now:
            changed = sorted(f"{s}.{k}" for s in now for k in now[s] if saved.get(s, {}).get(k) != now[s][k])
            raise ValueError(f"{out / INDEX}: cannot resume with changed settings "
                             f"({', '.join(changed)}); only the stopping rule, logging and "
                             "sampling settings may change")
        denoiser.net.load_state_dict(sub_state(tensors, "model"))
        ema.load_state_dict(sub_state(tensors, "ema"))
        load_optimizer(optimizer, tensors, info["param_groups"])
        generator.set_state(tensors["rng.train"])
        torch.set_rng_state(tensors["rng.torch"])
        step, train_seconds, last_checkpoint = info["step"], info["train_seconds"], out / INDEX
        _truncate_log(out / "metrics.jsonl", step)
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.json").write_text(json.dumps(config.to_dict(), indent=2))

    def checkpoint() -> Path:
        tensors = {**{f"model.{k}": v for k, v in denoiser.net.state_dict().items()},
                   **{f"ema.{k}": v for k, v in ema.state_dict().items()},
                   "rng.train": generator.get_state(), "rng.torch": torch.get_rng_state()}
        optim_tensors, param_groups = optimizer_tensors(optimizer)
        return save_checkpoint(out, step, config.to_dict(), {**tensors, **optim_tensors},
                               {"param_groups": param_groups, "train_seconds": train_seconds,
                                "images_seen": step * opt_cfg.batch_size})

    def finished() -> bool:
        return (run.steps is not None and step >= run.steps) or \
            (run.minutes is not None and train_seconds >= 60 * run.minutes)

    images, labels, batch = data.images, data.labels, opt_cfg.batch_size
    evaluate_model = make_training_evaluator(config) if run.eval_every else None
    log = open(out / "metrics.jsonl", "a")
    bar = tqdm(total=run.steps, initial=step, unit="step", dynamic_ncols=True, mininterval=1.0,
               disable=None, file=sys.stderr)
    denoiser.train()
    while not finished():
        started = time.perf_counter()
        index = torch.randint(len(images), (batch,), generator=generator)
        x0 = images[index]
        cond = None
        if config.unet.num_classes:  # drop labels for classifier-free guidance (Ho & Salimans 2022)
            keep = torch.rand(batch, generator=generator) >= diff.label_dropout
            cond = torch.where(keep, labels[index], -1)
        sigma = sample_training_sigma(diff.density, batch, generator, alpha_bar, diff.p_mean,
                                      diff.p_std, diff.sigma_min, diff.sigma_max)
        noise = torch.randn(x0.shape, generator=generator)
        lr = opt_cfg.lr * min(1.0, (step + 1) / max(opt_cfg.warmup_steps, 1))
        for group in optimizer.param_groups:
            group["lr"] = lr

        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=run.bf16):
            loss = denoising_loss(denoiser, x0, sigma, noise, cond, diff.weighting, diff.min_snr_gamma)
        if not torch.isfinite(loss):
            raise TrainingError(f"loss became {loss.item()} at step {step + 1}; last good "
                                f"checkpoint: {last_checkpoint or 'none written yet'}")
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(denoiser.net.parameters(),
                                                   opt_cfg.grad_clip or math.inf)
        optimizer.step()
        step += 1
        ema.update(denoiser.net, batch, step * batch)
        seconds = time.perf_counter() - started
        train_seconds += seconds

        if step % run.log_every == 0 or finished():
            record = {"step": step, "loss": loss.item(), "grad_norm": grad_norm.item(), "lr": lr,
                      "images_per_sec": batch / seconds, "train_seconds": round(train_seconds, 3)}
            log.write(json.dumps(record) + "\n")
            log.flush()
            bar.set_postfix(loss=f"{record['loss']:.4f}", img_s=f"{batch / seconds:.0f}",
                            min=f"{train_seconds / 60:.1f}")
        bar.update(1)
        if step % run.sample_every == 0:
            grid = draw_samples(denoiser.with_net(ema.model), config, 64)
            save_grid(grid, out / "samples" / f"step-{step:08d}.png")
        if evaluate_model is not None and step % run.eval_every == 0:  # FID/KID curve (metrics.py)
            log.write(json.dumps({"step": step, **evaluate_model(denoiser.with_net(ema.model))}) + "\n")
            log.flush()
        if step % run.checkpoint_every == 0 or finished():
            last_checkpoint = checkpoint()
    bar.close()
    log.close()
    if last_checkpoint is None or read_checkpoint(out)[0]["step"] != step:
        checkpoint()
    return out


@torch.no_grad()
def draw_samples(denoiser, config: TrainConfig, n: int, seed: int = GRID_SEED,
                 batch_size: int = 250) -> torch.Tensor:
    """n samples in [-1, 1] from the configured sampler (class labels cycle 0..K-1 if conditional)."""
    generator = torch.Generator().manual_seed(seed)
    shape = (config.unet.in_channels, config.unet.image_size, config.unet.image_size)
    was_training = denoiser.training
    denoiser.eval()
    chunks = []
    for start in range(0, n, batch_size):
        count = min(batch_size, n - start)
        cond = (torch.arange(start, start + count) % config.unet.num_classes
                if config.unet.num_classes else None)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=config.run.bf16):
            chunks.append(sample(denoiser, (count, *shape), config.run.sample_sampler,
                                 config.run.sample_steps, cond=cond, generator=generator,
                                 guidance_scale=config.run.sample_guidance))
    denoiser.train(was_training)
    return torch.cat(chunks).float().clamp(-1, 1)


# Run fields that do not change the training trajectory, so a resume may change them.
RESUMABLE_FIELDS = {"steps", "minutes", "threads", "final_samples", "log_every", "sample_every",
                    "checkpoint_every", "sample_steps", "sample_sampler", "sample_guidance",
                    "eval_every", "eval_n"}


def _trajectory_fields(config: dict) -> dict:
    """The config without the fields a resume may change (stopping rule, logging, sampling)."""
    config = json.loads(json.dumps(config))  # tuples -> lists, as saved
    config["run"] = {k: v for k, v in config["run"].items() if k not in RESUMABLE_FIELDS}
    return config


def _truncate_log(path: Path, step: int) -> None:
    """Drop log records written after the checkpoint we resume from."""
    if not path.exists():
        return
    kept = [line for line in path.read_text().splitlines()
            if line.strip() and json.loads(line).get("step", 0) <= step]
    path.write_text("".join(line + "\n" for line in kept))


def finish_run(run_dir: str | Path, n: int | None = None, **sampling) -> Path:
    """Sample the trained EMA model, save a 64-image grid and all samples (.npz), write report.md.
    ``sampling`` overrides run fields such as ``sample_sampler=``, ``sample_steps=``,
    ``sample_guidance=`` for this call."""
    from difflab.training.checkpoint import load_denoiser
    from difflab.config import update, validate
    from difflab.evaluation.report import save_npz, write_report

    run_dir = Path(run_dir)
    denoiser, config = load_denoiser(run_dir)
    validate(update(config, {"run": sampling}))
    n = config.run.final_samples if n is None else n
    calls = []  # batch size of every network evaluation
    denoiser.net.register_forward_pre_hook(lambda module, args: calls.append(args[0].shape[0]))
    started = time.perf_counter()
    images = draw_samples(denoiser, config, max(n, 64))
    seconds = time.perf_counter() - started
    save_grid(images[:64], run_dir / "samples.png")
    info = {"n": len(images), "sampler": config.run.sample_sampler, "steps": config.run.sample_steps,
            "guidance": config.run.sample_guidance if config.unet.num_classes else None,
            "nfe": round(sum(calls) / len(images)),  # network evaluations per image
            "seconds": seconds, "grid": "samples.png",
            "parameters": sum(p.numel() for p in denoiser.net.parameters())}
    metrics = None
    if n:
        save_npz(images[:n], run_dir / "samples.npz")
        info["npz"] = "samples.npz"
        metrics = score_samples(images[:n], config)
    return write_report(run_dir, info, metrics)


def score_samples(images: torch.Tensor, config: TrainConfig) -> dict | None:
    """FID/KID/IS/precision/recall of final samples against the test split, with difflab's own
    feature network (only MNIST and CIFAR-10 at their native size have one)."""
    from difflab.evaluation.evaluate import SHAPES, difflab_extractor, evaluate_images

    dataset = config.data.dataset
    if dataset not in SHAPES or config.data.image_size not in (None, SHAPES[dataset][1]) \
            or len(images) < 2:
        return None
    result = evaluate_images(images, f"{dataset}-test", config.data.data_dir)
    features = result.pop("features")
    scores = {f"{k} ({features} features)" if k.split("_")[0] in ("fid", "kid") else k: v
              for k, v in result.items() if k != "reference"}
    # What the classifier behind the features sees: how confident, and which classes.
    _, probs = difflab_extractor(dataset)(images)
    counts = np.bincount(probs.argmax(1), minlength=probs.shape[1])
    scores["classifier confidence (mean max probability)"] = float(probs.max(1).mean())
    scores["share of samples with confidence > 0.9"] = float((probs.max(1) > 0.9).mean())
    scores["classes present"] = f"{int((counts > 0).sum())} of {probs.shape[1]}"
    scores["predicted class counts"] = " ".join(str(c) for c in counts)
    return scores
