"""Sample quality per CPU budget: difflab's recipe (MNIST or CIFAR-10) against Hugging Face
diffusers' UNet2DModel + DDPMScheduler trained for the same number of minutes (or steps), then
sampled with 50 DDIM steps (diffusers) and difflab's default sampler, both scored with the same
feature networks (FID/KID/precision/recall in each of difflab's feature spaces: two for MNIST;
1,000 samples against the test split). Each side's training images/s and achieved GFLOP/s
(training FLOPs per image from ``torch.utils.flop_counter``) are printed beside the scores, with
the CPU's fp32 peak (``--peak-gflops``) or a dense convolution measured here as the yardstick.

    python benchmarks/generative/quality_vs_diffusers.py --minutes 10 --data-dir ../shared/data
    python benchmarks/generative/quality_vs_diffusers.py --diffusers-steps 1750 --difflab-run runs/mnist
    python benchmarks/generative/quality_vs_diffusers.py --data cifar10 --minutes 30 \
        --difflab-run runs/cifar10

On CIFAR-10 the diffusers side gets random horizontal flips, as difflab's recipe (and diffusers'
training example with ``--random_flip``), and a UNet2DModel of about the recipe network's size.

``--difflab-run`` scores an existing difflab run directory (e.g. the main job's) instead of training
difflab here. Prints both scores and the ratio (diffusers FID / difflab FID).
"""
from __future__ import annotations

import argparse
import time

import torch


def train_diffusers(images: torch.Tensor, minutes: float | None, steps: int | None, batch: int,
                    seed: int, flips: bool = False):
    """The diffusers recipe of its unconditional training example: eps-prediction, linear betas,
    AdamW with warm-up, EMA; a ~1.1M-parameter UNet2DModel for 28x28 (or 32x32 colour), with
    attention at the lowest resolution; ``flips`` mirrors each image with probability 1/2."""
    from diffusers import DDPMScheduler, UNet2DModel
    from diffusers.training_utils import EMAModel

    torch.manual_seed(seed)
    channels, size = images.shape[1], images.shape[-1]
    model = UNet2DModel(sample_size=size, in_channels=channels, out_channels=channels,
                        block_out_channels=(32, 64, 64), layers_per_block=1, norm_num_groups=8,
                        down_block_types=("DownBlock2D", "DownBlock2D", "AttnDownBlock2D"),
                        up_block_types=("AttnUpBlock2D", "UpBlock2D", "UpBlock2D"))
    scheduler = DDPMScheduler(num_train_timesteps=1000)
    ema = EMAModel(model.parameters(), decay=0.999, use_ema_warmup=True)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    g = torch.Generator().manual_seed(seed)
    started, step = time.perf_counter(), 0
    while (steps is None or step < steps) and (minutes is None or time.perf_counter() - started < 60 * minutes):
        if step == 1:  # the first step (kernel warm-up) is not timed, as in difflab's log
            started = time.perf_counter()
        x0 = images[torch.randint(len(images), (batch,), generator=g)]
        if flips:
            mirror = torch.rand(batch, generator=g) < 0.5
            x0 = torch.where(mirror[:, None, None, None], x0.flip(-1), x0)
        noise = torch.randn(x0.shape, generator=g)
        t = torch.randint(0, 1000, (batch,), generator=g)
        for group in opt.param_groups:
            group["lr"] = 1e-3 * min(1.0, (step + 1) / 200)
        loss = torch.nn.functional.mse_loss(model(scheduler.add_noise(x0, noise, t), t).sample, noise)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        ema.step(model.parameters())
        step += 1
    ema.copy_to(model.parameters())
    return model, step, time.perf_counter() - started


def diffusers_train_flops(model, channels: int, size: int, batch: int) -> float:
    """Training FLOPs per image of a UNet2DModel step (forward, MSE, backward)."""
    from torch.utils.flop_counter import FlopCounterMode

    x, t = torch.randn(batch, channels, size, size), torch.randint(0, 1000, (batch,))
    with FlopCounterMode(display=False) as counter:
        torch.nn.functional.mse_loss(model(x, t).sample, x).backward()
    model.zero_grad(set_to_none=True)
    return counter.get_total_flops() / batch


def difflab_train_flops(run_dir, batch: int) -> float:
    """Training FLOPs per image of the run's network (forward, loss, backward), fp32."""
    from torch.utils.flop_counter import FlopCounterMode

    from difflab.diffusion.loss import denoising_loss
    from difflab.training.checkpoint import load_denoiser

    denoiser, config, shape = load_denoiser(run_dir, ema=False)
    denoiser.train().requires_grad_(True)
    x0 = torch.rand(batch, *shape.item) * 2 - 1
    cond = torch.zeros(batch, dtype=torch.long) if shape.num_classes else None
    with FlopCounterMode(display=False) as counter:
        denoising_loss(denoiser, x0, torch.ones(batch), torch.randn_like(x0), cond,
                       config.diffusion.weighting, config.diffusion.min_snr_gamma).backward()
    return counter.get_total_flops() / batch


def scores(result: dict) -> str:
    """FID, KID, precision and recall in every feature space of an evaluate_images result."""
    parts = []
    for prefix in ("", "alt_"):
        if prefix + "fid" in result:
            parts.append(f"[{result[prefix + 'features']}] FID {result[prefix + 'fid']:.2f} "
                         f"KID {result[prefix + 'kid']:.4f} precision "
                         f"{result[prefix + 'precision']:.3f} recall {result[prefix + 'recall']:.3f}")
    return "; ".join(parts)


@torch.no_grad()
def sample_diffusers(model, n: int, seed: int, steps: int = 50) -> torch.Tensor:
    item = (model.config.in_channels, model.config.sample_size, model.config.sample_size)
    from diffusers import DDIMScheduler

    scheduler = DDIMScheduler(num_train_timesteps=1000)
    scheduler.set_timesteps(steps)
    g = torch.Generator().manual_seed(seed)
    out = []
    for start in range(0, n, 250):
        x = torch.randn(min(250, n - start), *item, generator=g)
        for t in scheduler.timesteps:
            x = scheduler.step(model(x, t).sample, t, x).prev_sample
        out.append(x.clamp(-1, 1))
    return torch.cat(out)


def main() -> None:
    from difflab.config import update
    from difflab.recipes import recipe
    from difflab.data import load_dataset
    from difflab.evaluation.evaluate import evaluate_images
    from difflab.runs import finish_run, load
    from difflab.training.checkpoint import read_checkpoint
    from difflab.training.train import train

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", choices=("mnist", "cifar10"), default="mnist")
    parser.add_argument("--minutes", type=float, default=None, help="training budget of each side")
    parser.add_argument("--diffusers-steps", type=int, default=None)
    parser.add_argument("--difflab-run", help="score this existing difflab run instead of training")
    parser.add_argument("--data-dir")
    parser.add_argument("--n", type=int, default=1000)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--peak-gflops", type=float, default=None,
                        help="the CPU's fp32 peak, for the percentages (default: a dense "
                        "convolution measured here)")
    parser.add_argument("--out", default="runs/quality-vs-diffusers")
    parser.add_argument("--diffusers-only", action="store_true",
                        help="train and score only the diffusers side; save its samples to --out")
    args = parser.parse_args()
    if args.minutes is None and args.diffusers_steps is None:
        parser.error("give --minutes or --diffusers-steps")

    images = load_dataset(args.data, args.data_dir, "train").images
    reference = f"{args.data}-test"
    from cpu_speed import yardstick

    peak, peak_name = yardstick(args.peak_gflops)
    print(f"torch {torch.__version__}, ATen capability {torch.backends.cpu.get_cpu_capability()}, "
          f"{torch.get_num_threads()} threads; yardstick: {peak_name}, {peak:.0f} GFLOP/s")
    model, steps, seconds = train_diffusers(images, args.minutes, args.diffusers_steps, args.batch,
                                            args.seed, flips=args.data == "cifar10")
    flops = diffusers_train_flops(model, images.shape[1], images.shape[-1], args.batch)
    rate = (steps - 1) * args.batch / seconds
    print(f"diffusers UNet2DModel: {sum(p.numel() for p in model.parameters()):,} parameters, "
          f"{flops / 1e6:.0f} training MFLOP/image, {rate:.0f} images/s, "
          f"{flops * rate / 1e9:.0f} GFLOP/s ({flops * rate / 1e9 / peak:.0%} of the yardstick)")
    diffusers_samples = sample_diffusers(model, args.n, args.seed)
    theirs = evaluate_images(diffusers_samples, reference, args.data_dir)
    print(f"diffusers: {steps} steps in {seconds / 60:.1f} min, {scores(theirs)}")
    if args.diffusers_only:
        from pathlib import Path

        from difflab.evaluation.report import save_grid, save_npz

        save_grid(diffusers_samples[:64], Path(args.out) / "diffusers-samples.png")
        print(f"samples: {save_npz(diffusers_samples, Path(args.out) / 'diffusers-samples.npz')}")
        return

    if args.difflab_run:
        run_dir = args.difflab_run
    else:
        config = recipe(args.data)
        update(config, {"data": {"dataset": args.data, "data_dir": args.data_dir},
                        "run": {"seed": args.seed},
                        "loop": {"out": args.out, "minutes": args.minutes,
                                 "steps": None if args.minutes else args.diffusers_steps},
                        "sample": {"final_samples": 0}})
        run_dir = train(config)
        finish_run(run_dir, 0)
    info = read_checkpoint(run_dir)[0]
    ours_steps, ours_seconds = info["step"], info["train_seconds"]
    batch = info["images_seen"] // max(ours_steps, 1)
    flops = difflab_train_flops(run_dir, batch)
    rate = info["images_seen"] / ours_seconds
    print(f"difflab {load(run_dir).config.net.kind}: {flops / 1e6:.0f} training MFLOP/image, "
          f"{rate:.0f} images/s, {flops * rate / 1e9:.0f} GFLOP/s "
          f"({flops * rate / 1e9 / peak:.0%} of the yardstick; {info.get('precision')})")
    ours = evaluate_images(load(run_dir).generate(args.n, seed=args.seed), reference,
                           args.data_dir)
    print(f"difflab:   {ours_steps} steps in {ours_seconds / 60:.1f} min, {scores(ours)}")
    for prefix in ("", "alt_"):
        if prefix + "fid" in ours:
            print(f"FID ratio diffusers / difflab [{ours[prefix + 'features']}]: "
                  f"{theirs[prefix + 'fid'] / ours[prefix + 'fid']:.2f}x (real-vs-real floor at "
                  f"N={args.n}: {ours[prefix + 'fid_floor']:.2f})")


if __name__ == "__main__":
    main()
