"""Train difflab's feature networks (``difflab.nets.classifier``) and write their weights.

    python scripts/train_features.py --dataset mnist --data-dir ../shared/data --out src/difflab/weights
    python scripts/train_features.py --dataset cifar10 --data-dir ../shared/data --out src/difflab/weights
    python scripts/train_features.py --dataset mnist-alt --seed 1 --data-dir ../shared/data --out src/difflab/weights

``mnist-alt`` is the second MNIST feature space (``MNISTAltFeatureNet``: another architecture,
trained from another seed). Writes ``{dataset}-features.safetensors`` (float32 weights) and ``{dataset}-features.json`` (test
accuracy measured in float32 with the saved weights, settings, training time). Deterministic for a
given seed and thread count: shuffling and augmentation draw from one seeded ``torch.Generator``.

Recipe: SGD with Nesterov momentum, one-cycle learning rate (linear warm-up over the first
``warmup`` fraction, then linear decay to 0), weight decay, label smoothing; CIFAR-10 uses random
crops from 4-pixel reflect padding and horizontal flips; MNIST uses random shifts of up to 2
pixels. Channels-last tensors; bfloat16 autocast where the CPU computes it natively (much faster
with AMX; ``difflab.device``), fp32 elsewhere or with ``--fp32``.
"""
from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from difflab.data import load_cifar10, load_mnist, to_float
from difflab.device import autocast, resolve_precision
from difflab.nets.classifier import make_feature_net, weights_paths

CPU = torch.device("cpu")

DEFAULTS = {  # dataset -> recipe
    "mnist": dict(epochs=4, batch_size=128, lr=0.05, weight_decay=5e-4, label_smoothing=0.0,
                  pad=2, flip=False, warmup=0.15),
    "mnist-alt": dict(epochs=3, batch_size=128, lr=0.05, weight_decay=5e-4, label_smoothing=0.0,
                      pad=2, flip=False, warmup=0.15),
    "cifar10": dict(epochs=12, batch_size=256, lr=0.2, weight_decay=5e-4, label_smoothing=0.2,
                    pad=4, flip=True, warmup=0.2),
}


def augment(x: torch.Tensor, pad: int, flip: bool, generator: torch.Generator) -> torch.Tensor:
    """Random crops of the reflect-padded batch (shift up to ``pad`` pixels) and random flips."""
    n, c, h, w = x.shape
    if pad:
        xp = F.pad(x, (pad, pad, pad, pad), mode="reflect")           # [N, C, H+2p, W+2p]
        dy = torch.randint(0, 2 * pad + 1, (n,), generator=generator)
        dx = torch.randint(0, 2 * pad + 1, (n,), generator=generator)
        rows = (dy[:, None] + torch.arange(h))[:, None, :, None]      # [N, 1, H, 1]
        cols = (dx[:, None] + torch.arange(w))[:, None, None, :]      # [N, 1, 1, W]
        batch = torch.arange(n)[:, None, None, None]
        chan = torch.arange(c)[None, :, None, None]
        x = xp[batch, chan, rows, cols]                               # [N, C, H, W]
    if flip:
        mask = torch.rand(n, generator=generator) < 0.5
        x = torch.where(mask[:, None, None, None], x.flip(3), x)
    return x


@torch.no_grad()
def accuracy(net, images: torch.Tensor, labels: torch.Tensor, batch_size: int = 1000) -> float:
    """Top-1 accuracy in float32, eval mode."""
    net.eval()
    correct = 0
    for i in range(0, len(images), batch_size):
        correct += (net(images[i:i + batch_size]).argmax(1) == labels[i:i + batch_size]).sum().item()
    return correct / len(images)


def lr_at(step: int, total: int, peak: float, warmup: float) -> float:
    """One-cycle schedule: linear 0 -> peak over warmup*total steps, then linear peak -> 0."""
    up = max(1, int(warmup * total))
    return peak * step / up if step < up else peak * max(0.0, (total - step) / (total - up))


def load_split(dataset: str, data_dir, split: str) -> tuple[torch.Tensor, torch.Tensor]:
    loader = load_mnist if dataset.startswith("mnist") else load_cifar10
    pixels, labels = loader(data_dir, split)
    return to_float(pixels), torch.as_tensor(labels)


def train(args) -> dict:
    recipe = {k: getattr(args, k) if getattr(args, k) is not None else v
              for k, v in DEFAULTS[args.dataset].items()}
    torch.manual_seed(args.seed)
    torch.set_num_threads(args.threads)
    generator = torch.Generator().manual_seed(args.seed)
    x_train, y_train = load_split(args.dataset, args.data_dir, "train")
    x_test, y_test = load_split(args.dataset, args.data_dir, "test")
    net = make_feature_net(args.dataset).to(memory_format=torch.channels_last)
    decay = [p for p in net.parameters() if p.ndim > 1]
    no_decay = [p for p in net.parameters() if p.ndim <= 1]
    opt = torch.optim.SGD([{"params": decay, "weight_decay": recipe["weight_decay"]},
                           {"params": no_decay, "weight_decay": 0.0}],
                          lr=recipe["lr"], momentum=0.9, nesterov=True)
    steps_per_epoch = len(x_train) // recipe["batch_size"]
    total = recipe["epochs"] * steps_per_epoch
    precision = "fp32" if args.fp32 else resolve_precision("auto", CPU)[0]
    step, start = 0, time.perf_counter()
    for epoch in range(recipe["epochs"]):
        net.train()
        order = torch.randperm(len(x_train), generator=generator)
        loss_sum = 0.0
        for b in range(steps_per_epoch):
            idx = order[b * recipe["batch_size"]:(b + 1) * recipe["batch_size"]]
            x = augment(x_train[idx], recipe["pad"], recipe["flip"], generator)
            x = x.contiguous(memory_format=torch.channels_last)
            for group in opt.param_groups:
                group["lr"] = lr_at(step, total, recipe["lr"], recipe["warmup"])
            with autocast(CPU, precision):
                loss = F.cross_entropy(net(x), y_train[idx], label_smoothing=recipe["label_smoothing"])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            loss_sum += loss.item()
            step += 1
        acc = accuracy(net, x_test, y_test) if (args.eval_each_epoch or epoch == recipe["epochs"] - 1) else math.nan
        print(f"epoch {epoch + 1}/{recipe['epochs']}  loss {loss_sum / steps_per_epoch:.4f}  "
              f"test acc {acc:.4f}  {time.perf_counter() - start:.0f} s", flush=True)
    train_seconds = time.perf_counter() - start

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    weights_file, meta_file = weights_paths(args.dataset, out)
    from safetensors.torch import save_file
    state = {k: v.detach().contiguous() for k, v in net.state_dict().items()}
    save_file(state, str(weights_file))
    # Measure the accuracy of exactly what was saved (float32, contiguous tensors).
    reloaded = make_feature_net(args.dataset)
    from safetensors.torch import load_file
    reloaded.load_state_dict(load_file(str(weights_file)))
    test_acc = accuracy(reloaded, x_test, y_test)
    record = {
        "dataset": args.dataset, "network": type(reloaded).__name__,
        "feature_dim": reloaded.feature_dim, "num_parameters": sum(p.numel() for p in reloaded.parameters()),
        "test_accuracy": round(test_acc, 4), "test_images": len(x_test),
        "train_seconds": round(train_seconds, 1), "threads": args.threads,
        "seed": args.seed, "bf16_autocast": precision == "bf16", **recipe,
        "torch": torch.__version__,
        "command": "python scripts/train_features.py " + " ".join(sys.argv[1:]),
    }
    meta_file.write_text(json.dumps(record, indent=2) + "\n")
    print(f"test accuracy {test_acc:.4f}; wrote {weights_file} "
          f"({weights_file.stat().st_size / 1e6:.2f} MB) and {meta_file.name}")
    return record


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dataset", required=True, choices=sorted(DEFAULTS))
    p.add_argument("--data-dir", default=None, help="data directory (default: $DIFFLAB_DATA or ~/.cache/difflab/data)")
    p.add_argument("--out", default=str(weights_paths("mnist")[0].parent), help="output folder")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1,
                   help="torch threads (default 1: far faster than 2 on a CPU shared with other jobs)")
    p.add_argument("--fp32", action="store_true", help="train in fp32 even where bf16 is native")
    p.add_argument("--eval-each-epoch", action="store_true", help="print test accuracy after every epoch")
    for key in DEFAULTS["mnist"]:
        kind = type(DEFAULTS["cifar10"][key])
        if kind is bool:
            p.add_argument(f"--{key.replace('_', '-')}", type=lambda s: s.lower() in ("1", "true", "yes"),
                           default=None, help="true/false (default per dataset)")
        else:
            p.add_argument(f"--{key.replace('_', '-')}", type=kind, default=None, help="default per dataset")
    return p


if __name__ == "__main__":
    train(build_parser().parse_args())
