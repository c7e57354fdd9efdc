"""The training loop: data -> noise levels -> weighted denoising loss -> AdamW -> EMA -> log,
sample grids and atomic checkpoints. Read it top to bottom.

One process or several (``torchrun --nproc_per_node N -m difflab train ...``, see
``difflab.training.distributed``): each step trains on one global batch of ``optim.batch_size``
samples, and rank r of N computes the loss of its contiguous share (samples r*B/N .. (r+1)*B/N-1);
the gradients are averaged over the ranks after the backward pass (one all-reduce,
``distributed.average_gradients``; DistributedDataParallel wraps the network), so every rank
takes the step one process would take. Every sample's randomness is a function of (run seed,
step, global sample index):

- its data index: position step * B + i of the stream of data permutations, one permutation per
  epoch, seeded by (run seed, epoch) (an epoch shows every image once);
- its noise level, label dropout, noise and (with ``data.hflip``) horizontal flip: drawn, in that
  order, from a generator of its own seeded by (run seed, step, i) (``samplers.keyed_seed``);

so the global batch and its noise are the same for any N, and ``--resume`` continues bit for bit
without saved generator states. Only network dropout (off by default) draws from torch's global
generator, reseeded each step by (seed, step, rank): exact on resume, but it depends on N. This
replaced (format version 3) one generator drawing batches with replacement: the same seed gives
other trajectories and loss curves than runs trained before it.

Rank 0 alone writes (config.json, metrics.jsonl, sample grids, checkpoints) while the others wait;
every rank reads the checkpoint on ``--resume``. The logged loss is the mean over ranks (the
global batch's loss) and the step time is averaged over ranks, so all ranks count the same
training wall time (saved, it keeps counting after a resume) and stop at the same step under
``loop.minutes``. Scoring during training is the caller's: pass ``evaluator(denoiser, shape) ->
dict`` (see ``difflab.runs``), called on rank 0 every ``loop.eval_every`` steps.
"""
from __future__ import annotations

import contextlib
import functools
import json
import math
import time
from pathlib import Path

import torch

from difflab.config import ConfigError, TrainConfig, trajectory, validate
from difflab.data import load_dataset
from difflab.data.shape import DataShape
from difflab.device import autocast, fast_layout, resolve_device, resolve_precision
from difflab.diffusion.denoiser import build_denoiser
from difflab.diffusion.generation import generate
from difflab.diffusion.loss import denoising_loss
from difflab.diffusion.samplers import keyed_seed
from difflab.diffusion.schedules import make_alpha_bar, sample_training_sigma
from difflab.evaluation.report import save_grid
from difflab.nets import build_net
from difflab.progress import Progress
from difflab.training import TrainingError, distributed
from difflab.files import append_line, inside, write_atomic
from difflab.memory import machine_memory
from difflab.training.checkpoint import (CheckpointError, checkpoint_config, load_optimizer,
                                         load_weights, optimizer_tensors, read_checkpoint,
                                         save_checkpoint, sub_state)
from difflab.training.run_dir import INDEX, SAMPLES, claim_run_dir
from difflab.training.ema import EMA

GRID_SEED = 1234


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


@functools.lru_cache(maxsize=2)  # the current epoch and the next (read only)
def epoch_order(seed: int, epoch: int, n: int) -> torch.Tensor:
    """The permutation of the ``n`` data indices that epoch ``epoch`` shows, seeded by (seed,
    epoch)."""
    generator = torch.Generator().manual_seed(keyed_seed("epoch", seed, epoch))
    return torch.randperm(n, generator=generator)


def batch_share(data, config: TrainConfig, alpha_bar, step: int, first: int, count: int):
    """Samples ``first`` .. ``first + count - 1`` of the global batch of ``step`` (0-based): x0
    [count, C, H, W], class labels with dropout (-1; None for an unconditional run), sigma
    [count] and noise like x0, on the CPU. A sample is the same whichever rank draws it."""
    seed, diff, batch, n = config.run.seed, config.diffusion, config.optim.batch_size, len(data)
    positions = torch.arange(step * batch + first, step * batch + first + count)
    index = torch.empty_like(positions)
    for epoch in (positions // n).unique().tolist():  # a batch may straddle two epochs
        here = positions // n == epoch
        index[here] = epoch_order(seed, epoch, n)[positions[here] % n]
    sigma, keep, noise, flip = [], [], [], []
    for i in range(first, first + count):
        generator = torch.Generator().manual_seed(keyed_seed("train", seed, step, i))
        sigma.append(sample_training_sigma(diff.density, 1, generator, alpha_bar, diff.p_mean,
                                           diff.p_std, diff.sigma_min, diff.sigma_max))
        keep.append(torch.rand(1, generator=generator) >= diff.label_dropout)
        noise.append(torch.randn(data.shape, generator=generator))
        if config.data.hflip:  # drawn last, so that runs without flips keep their streams
            flip.append(bool(torch.rand(1, generator=generator) < 0.5))
    x0 = data.images[index]
    if any(flip):  # horizontal flips: an augmentation of the data distribution
        mirrored = torch.tensor(flip)
        x0 = torch.where(mirrored[:, None, None, None], x0.flip(-1), x0)
    cond = None
    if config.data.class_conditional:  # drop labels for classifier-free guidance (Ho & Salimans 2022)
        cond = torch.where(torch.cat(keep), data.labels[index], -1)
    return x0, cond, torch.cat(sigma), torch.stack(noise)


def make_optimizer(net: torch.nn.Module, config: TrainConfig, device: torch.device):
    """AdamW (Loshchilov & Hutter 2019) over ``net``'s parameters with the recipe's settings (the
    learning rate is set every step, with its warm-up). On CPU and CUDA it runs torch's fused
    kernel, one pass over all parameters: for the main recipe's U-Net (167 tensors) on one CPU
    thread the step takes 2.9 ms instead of the per-tensor loop's 9.1 (torch's default on CPU;
    ``benchmarks/generative/optimizer_step.py``). The kind is saved with the checkpoint's param
    groups, so a run resumes with the kernel it was trained with."""
    o = config.optim
    return torch.optim.AdamW(net.parameters(), lr=o.lr, betas=o.betas, weight_decay=o.weight_decay,
                             fused=True if device.type in ("cpu", "cuda") else None)


def optimization_step(model, net: torch.nn.Module, optimizer, config: TrainConfig, batch,
                      device: torch.device, precision: str, average: bool = True):
    """One step on this rank's share ``batch`` = (x0, cond, sigma, noise): the weighted
    denoising loss of ``model`` (whose ``net`` may be the DDP-wrapped ``net``), its backward
    pass, the gradients' mean over ranks, clipping and the optimizer step. Returns (loss,
    gradient norm). ``average=False`` leaves out the all-reduce, for measuring what it costs
    (``benchmarks/generative/ddp_speed.py``); training always averages."""
    x0, cond, sigma, noise = batch
    with distributed.local_gradients(model.net):
        with autocast(device, precision):
            loss = denoising_loss(model, x0, sigma, noise, cond, config.diffusion.weighting,
                                  config.diffusion.min_snr_gamma)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
    if average:
        distributed.average_gradients(net)  # the mean over ranks (several ranks only)
    grad_norm = torch.nn.utils.clip_grad_norm_(net.parameters(), config.optim.grad_clip or math.inf)
    optimizer.step()
    return loss, grad_norm


def train(config: TrainConfig, resume: bool = False, evaluator=None, force: bool = False) -> Path:
    """Train the model ``config`` describes in the run directory ``loop.out``; ``resume``
    continues its checkpoint, ``force`` allows a non-empty directory that is not a run. Under
    torchrun every rank calls this; see the module docstring."""
    loop, opt_cfg, diff, run = config.loop, config.optim, config.diffusion, config.run
    out = Path(loop.out)
    if loop.threads:
        torch.set_num_threads(loop.threads)
    device = distributed.init(resolve_device(run.device))
    precision, precision_reason = resolve_precision(run.precision, device)
    data, shape, config = prepare(config)
    batch, world, rank, main = opt_cfg.batch_size, distributed.world_size(), distributed.rank(), \
        distributed.is_main()
    if batch % world:
        raise ConfigError(f"optim.batch_size={batch}: must be divisible by the number of "
                          f"processes ({world})")
    share = batch // world  # this rank's samples of every global batch
    distributed.check_same(json.dumps([trajectory(config.to_dict()), precision]),
                           "the training config or precision")

    torch.manual_seed(run.seed)
    denoiser = fast_layout(build_denoiser(config, shape).to(device), device)
    ema = EMA(denoiser.net, opt_cfg.ema_half_life_images, opt_cfg.ema_rampup_ratio)
    optimizer = make_optimizer(denoiser.net, config, device)
    alpha_bar = make_alpha_bar(diff.schedule, diff.timesteps) if diff.density == "ddpm" else None
    step, train_seconds, saved_step, last_checkpoint = 0, 0.0, None, None

    # rank 0 refuses, before anything is written, a directory that is not ours, and holds the
    # run's lock (one writer at a time) until training ends; the others wait
    with distributed.on_main(claim_run_dir, out, resume, force) or contextlib.nullcontext():
        if resume:  # every rank loads the checkpoint
            info, tensors = read_checkpoint(out)
            saved_config, saved_shape = checkpoint_config(info, out / INDEX)
            saved, now = trajectory(saved_config.to_dict()), trajectory(config.to_dict())
            if saved != now or saved_shape != shape:
                changed = sorted(f"{s}.{k}" for s in now for k in now[s]
                                 if saved.get(s, {}).get(k) != now[s][k]) or ["data shape"]
                raise ValueError(f"{out / INDEX}: cannot resume with changed settings "
                                 f"({', '.join(changed)}); only the loop and sample sections "
                                 "(and where the data is) may change")
            load_weights(denoiser.net, sub_state(tensors, "model"), out / INDEX)
            load_weights(ema.model, sub_state(tensors, "ema"), out / INDEX)
            try:
                load_optimizer(optimizer, tensors, info["param_groups"])
                step, train_seconds = info["step"], float(info["train_seconds"])
                if not 0 <= train_seconds < math.inf:
                    raise ValueError(f"train_seconds is {train_seconds}")
            except (KeyError, TypeError, ValueError, RuntimeError) as e:
                raise CheckpointError(f"{out / INDEX}: cannot restore the training state "
                                      f"({type(e).__name__}: {str(e).splitlines()[0] if str(e) else e})") from None
            # a resume that changes the loop or sample section rewrites the checkpoint at the end,
            # even if it trains no further step: what reads the run (finish, sample) sees the new one
            saved_step = step if saved_config.to_dict() == config.to_dict() else None
            last_checkpoint = out / INDEX
            distributed.on_main(_truncate_log, inside(out, "metrics.jsonl"), step)
        distributed.on_main(write_atomic, inside(out, "config.json"),
                            json.dumps(config.to_dict(), indent=2))

        def checkpoint() -> Path:
            tensors = {**{f"model.{k}": v for k, v in denoiser.net.state_dict().items()},
                       **{f"ema.{k}": v for k, v in ema.state_dict().items()}}
            optim_tensors, param_groups = optimizer_tensors(optimizer)
            distributed.on_main(save_checkpoint, out, step, config.to_dict(),
                                {**tensors, **optim_tensors},
                                {"shape": shape.to_dict(), "precision": precision,
                                 "precision_reason": precision_reason, "param_groups": param_groups,
                                 "train_seconds": train_seconds, "images_seen": step * batch,
                                 "processes": world})
            return out / INDEX

        def finished() -> bool:
            return (loop.steps is not None and step >= loop.steps) or \
                (loop.minutes is not None and train_seconds >= 60 * loop.minutes)

        def sample_grid(n: int, seed: int) -> torch.Tensor:
            smp = config.sample
            return generate(denoiser.with_net(ema.model), shape.item, shape.num_classes, n,
                            sampler=smp.sampler, steps=smp.steps, grid=smp.grid,
                            guidance=smp.guidance, seed=seed, precision=precision)

        def log(record: dict) -> None:
            if main:
                append_line(inside(out, "metrics.jsonl"), json.dumps(record))

        # several ranks: DistributedDataParallel around the same network (rank 0's parameters)
        model = denoiser.with_net(distributed.wrap(denoiser.net, device))
        progress = Progress(loop.steps, 60 * loop.minutes if loop.minutes else None, step) if main else None
        denoiser.train()
        while not finished():
            started = time.perf_counter()
            torch.manual_seed(keyed_seed("torch", run.seed, step, rank))  # network dropout, if any
            x0, cond, sigma, noise = batch_share(data, config, alpha_bar, step, rank * share, share)
            x0, sigma, noise = x0.to(device), sigma.to(device), noise.to(device)
            cond = None if cond is None else cond.to(device)
            lr = opt_cfg.lr * min(1.0, (step + 1) / max(opt_cfg.warmup_steps, 1))
            for group in optimizer.param_groups:
                group["lr"] = lr

            loss, grad_norm = optimization_step(model, denoiser.net, optimizer, config,
                                                (x0, cond, sigma, noise), device, precision)
            step += 1
            ema.update(denoiser.net, batch, step * batch)
            # the global batch's loss and the step's wall time, the same on every rank
            loss_value, seconds = distributed.all_mean([loss.item(), time.perf_counter() - started])
            train_seconds += seconds
            if not math.isfinite(loss_value):  # raised before this step's state can be saved
                raise TrainingError(f"loss became {loss_value} at step {step}; last good "
                                    f"checkpoint: {last_checkpoint or 'none written yet'}")

            if step % loop.log_every == 0 or finished():
                record = {"step": step, "loss": loss_value, "grad_norm": grad_norm.item(), "lr": lr,
                          "images_per_sec": batch / seconds, "train_seconds": round(train_seconds, 3)}
                log(record)
                if main:
                    progress.update(step, train_seconds, loss=f"{loss_value:.4f}",
                                    img_s=f"{batch / seconds:.0f}")
            elif main:
                progress.update(step, train_seconds)
            if step % loop.sample_every == 0:
                distributed.on_main(lambda: save_grid(sample_grid(64, GRID_SEED),
                                                      inside(out, SAMPLES, f"step-{step:08d}.png")))
            if loop.eval_every and step % loop.eval_every == 0:  # (the evaluator may exist on rank 0 only)
                distributed.on_main(lambda: evaluator and log(
                    {"step": step, **evaluator(denoiser.with_net(ema.model), shape)}))
            if step % loop.checkpoint_every == 0 or finished():
                last_checkpoint, saved_step = checkpoint(), step
        if main:
            progress.close()
        if saved_step != step:
            checkpoint()
        return out


def _truncate_log(path: Path, step: int) -> None:
    """Drop log records written after the checkpoint we resume from (atomically: a kill leaves
    the old log or the new one)."""
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
    write_atomic(path, "".join(line + "\n" for line in kept))
