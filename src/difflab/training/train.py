"""The training loop: data -> noise levels -> weighted denoising loss -> AdamW -> EMA -> log,
sample grids and atomic checkpoints. Read it top to bottom.

Exact resume: every random number comes from one ``torch.Generator`` whose state is saved with the
model, EMA, optimizer and step, so ``--resume`` after a kill continues the same loss curve bit for
bit on CPU. Training wall time (``loop.minutes``) is saved too and keeps counting after a resume.
Scoring during training is the caller's: pass ``evaluator(denoiser, shape) -> dict`` (see
``difflab.runs``), logged every ``loop.eval_every`` steps.
"""
from __future__ import annotations

import json
import math
import time
from pathlib import Path

import torch

from difflab.config import ConfigError, TrainConfig, trajectory, validate
from difflab.data import load_dataset
from difflab.data.shape import DataShape
from difflab.device import autocast, resolve_device, resolve_precision
from difflab.diffusion.denoiser import build_denoiser
from difflab.diffusion.generation import generate, machine_memory
from difflab.diffusion.loss import denoising_loss
from difflab.diffusion.schedules import make_alpha_bar, sample_training_sigma
from difflab.evaluation.report import save_grid
from difflab.nets import build_net
from difflab.progress import Progress
from difflab.training.checkpoint import (INDEX, CheckpointError, checkpoint_config,
                                         claim_run_dir, load_optimizer, load_weights,
                                         optimizer_tensors, read_checkpoint, save_checkpoint,
                                         sub_state)
from difflab.training.ema import EMA

GRID_SEED = 1234


class TrainingError(RuntimeError):
    """Training cannot go on (e.g. the loss became NaN); the message names the step and checkpoint."""


def prepare(config: TrainConfig):
    """Load the data and record its shape: (data, DataShape, validated config)."""
    d = config.data
    data = load_dataset(d.dataset, d.data_dir, "train", d.image_size, d.channels, d.folder)
    if d.class_conditional and data.labels is None:
        raise ConfigError(f"data.class_conditional=True but data set {d.dataset!r} has no labels "
                          "(train with --unconditional)")
    shape = DataShape(data.shape[0], tuple(data.shape[1:]),
                      data.num_classes if d.class_conditional else 0)
    try:
        config.net.validate(shape)
    except ValueError as e:
        raise ConfigError(str(e)) from None
    check_training_memory(config, shape)
    return data, shape, validate(config)


def check_training_memory(config: TrainConfig, shape: DataShape) -> None:
    """ConfigError if training would need more than half of this machine's memory: the network
    is built on the meta device (no memory) and run on one image to count its parameters and
    activations; training keeps about 16 bytes a parameter (weights, gradients, two AdamW
    moments) and about 12 bytes an activation per image (output, gradient, a temporary)."""
    memory = machine_memory()
    if memory is None:
        return
    with torch.device("meta"):
        net = build_net(config.net, shape)
        outputs = [0]
        hooks = [m.register_forward_hook(lambda m, i, o: outputs.__setitem__(
            0, outputs[0] + (o.numel() if torch.is_tensor(o) else 0)))
            for m in net.modules() if not list(m.children())]
        cond = torch.zeros(1, dtype=torch.long) if shape.num_classes else None
        net(torch.zeros(1, *shape.item), torch.zeros(1), cond)
    for hook in hooks:
        hook.remove()
    parameters = sum(p.numel() for p in net.parameters())
    need = 16 * parameters + 12 * outputs[0] * config.optim.batch_size
    if need > memory // 2:
        raise ConfigError(f"optim.batch_size={config.optim.batch_size} with this net ("
                          f"{parameters:,} parameters) on {shape.item} data needs about "
                          f"{need / 2**30:.0f} GiB, more than half of this machine's "
                          f"{memory / 2**30:.0f} GiB; lower optim.batch_size or the net's size")


def train(config: TrainConfig, resume: bool = False, evaluator=None, force: bool = False) -> Path:
    """Train the model ``config`` describes in the run directory ``loop.out``; ``resume``
    continues its checkpoint, ``force`` allows a non-empty directory that is not a run."""
    loop, opt_cfg, diff, run = config.loop, config.optim, config.diffusion, config.run
    out = Path(loop.out)
    if loop.threads:
        torch.set_num_threads(loop.threads)
    device = resolve_device(run.device)
    precision, precision_reason = resolve_precision(run.precision, device)
    data, shape, config = prepare(config)

    torch.manual_seed(run.seed)
    denoiser = build_denoiser(config, shape).to(device)
    ema = EMA(denoiser.net, opt_cfg.ema_half_life_images, opt_cfg.ema_rampup_ratio)
    optimizer = torch.optim.AdamW(denoiser.net.parameters(), lr=opt_cfg.lr, betas=opt_cfg.betas,
                                  weight_decay=opt_cfg.weight_decay)
    generator = torch.Generator().manual_seed(run.seed)
    alpha_bar = make_alpha_bar(diff.schedule, diff.timesteps) if diff.density == "ddpm" else None
    step, train_seconds, last_checkpoint = 0, 0.0, None

    claim_run_dir(out, resume, force)  # refuses, before writing anything, what is not ours
    if resume:
        info, tensors = read_checkpoint(out)
        saved_config, saved_shape = checkpoint_config(info, out / INDEX)
        saved, now = trajectory(saved_config.to_dict()), trajectory(config.to_dict())
        if saved != now or saved_shape != shape:
            changed = sorted(f"{s}.{k}" for s in now for k in now[s]
                             if saved.get(s, {}).get(k) != now[s][k]) or ["data shape"]
            raise ValueError(f"{out / INDEX}: cannot resume with changed settings "
                             f"({', '.join(changed)}); only the loop and sample sections may change")
        load_weights(denoiser.net, sub_state(tensors, "model"), out / INDEX)
        load_weights(ema.model, sub_state(tensors, "ema"), out / INDEX)
        try:
            load_optimizer(optimizer, tensors, info["param_groups"])
            generator.set_state(tensors["rng.train"])
            torch.set_rng_state(tensors["rng.torch"])
            step, train_seconds = info["step"], float(info["train_seconds"])
        except (KeyError, TypeError, ValueError, RuntimeError) as e:
            raise CheckpointError(f"{out / INDEX}: cannot restore the training state "
                                  f"({type(e).__name__}: {str(e).splitlines()[0] if str(e) else e})") from None
        last_checkpoint = out / INDEX
        _truncate_log(out / "metrics.jsonl", step)
    (out / "config.json").write_text(json.dumps(config.to_dict(), indent=2))

    def checkpoint() -> Path:
        tensors = {**{f"model.{k}": v for k, v in denoiser.net.state_dict().items()},
                   **{f"ema.{k}": v for k, v in ema.state_dict().items()},
                   "rng.train": generator.get_state(), "rng.torch": torch.get_rng_state()}
        optim_tensors, param_groups = optimizer_tensors(optimizer)
        return save_checkpoint(out, step, config.to_dict(), {**tensors, **optim_tensors},
                               {"shape": shape.to_dict(), "precision": precision,
                                "precision_reason": precision_reason, "param_groups": param_groups,
                                "train_seconds": train_seconds,
                                "images_seen": step * opt_cfg.batch_size})

    def finished() -> bool:
        return (loop.steps is not None and step >= loop.steps) or \
            (loop.minutes is not None and train_seconds >= 60 * loop.minutes)

    def sample_grid(n: int, seed: int) -> torch.Tensor:
        smp = config.sample
        return generate(denoiser.with_net(ema.model), shape.item, shape.num_classes, n,
                        sampler=smp.sampler, steps=smp.steps, grid=smp.grid,
                        guidance=smp.guidance, seed=seed, precision=precision)

    images, labels, batch = data.images, data.labels, opt_cfg.batch_size
    log = open(out / "metrics.jsonl", "a")
    progress = Progress(loop.steps, 60 * loop.minutes if loop.minutes else None, step)
    denoiser.train()
    while not finished():
        started = time.perf_counter()
        index = torch.randint(len(images), (batch,), generator=generator)
        x0 = images[index]
        cond = None
        if shape.num_classes:  # drop labels for classifier-free guidance (Ho & Salimans 2022)
            keep = torch.rand(batch, generator=generator) >= diff.label_dropout
            cond = torch.where(keep, labels[index], -1).to(device)
        sigma = sample_training_sigma(diff.density, batch, generator, alpha_bar, diff.p_mean,
                                      diff.p_std, diff.sigma_min, diff.sigma_max)
        noise = torch.randn(x0.shape, generator=generator)
        x0, sigma, noise = x0.to(device), sigma.to(device), noise.to(device)
        lr = opt_cfg.lr * min(1.0, (step + 1) / max(opt_cfg.warmup_steps, 1))
        for group in optimizer.param_groups:
            group["lr"] = lr

        with autocast(device, precision):
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

        if step % loop.log_every == 0 or finished():
            record = {"step": step, "loss": loss.item(), "grad_norm": grad_norm.item(), "lr": lr,
                      "images_per_sec": batch / seconds, "train_seconds": round(train_seconds, 3)}
            log.write(json.dumps(record) + "\n")
            log.flush()
            progress.update(step, train_seconds, loss=f"{record['loss']:.4f}",
                            img_s=f"{batch / seconds:.0f}")
        else:
            progress.update(step, train_seconds)
        if step % loop.sample_every == 0:
            save_grid(sample_grid(64, GRID_SEED), out / "samples" / f"step-{step:08d}.png")
        if evaluator is not None and loop.eval_every and step % loop.eval_every == 0:
            log.write(json.dumps({"step": step, **evaluator(denoiser.with_net(ema.model), shape)}) + "\n")
            log.flush()
        if step % loop.checkpoint_every == 0 or finished():
            last_checkpoint = checkpoint()
    progress.close()
    log.close()
    if last_checkpoint is None or read_checkpoint(out)[0]["step"] != step:
        checkpoint()
    return out


def _truncate_log(path: Path, step: int) -> None:
    """Drop log records written after the checkpoint we resume from."""
    if not path.exists():
        return
    kept = []
    for line in path.read_text().splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue  # a line torn by the kill
        if isinstance(record, dict) and isinstance(record.get("step", 0), int) \
                and record.get("step", 0) <= step:
            kept.append(line)
    path.write_text("".join(line + "\n" for line in kept))
