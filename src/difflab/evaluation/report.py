"""Run directory -> pictures and a Markdown report: sample grids, the loss curve, throughput."""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import torch

from difflab.data import to_uint8
from difflab.files import inside, save_figure, write_atomic


def make_grid(images: torch.Tensor, columns: int | None = None, padding: int = 2) -> np.ndarray:
    """[N, C, H, W] in [-1, 1] -> uint8 [rows*(H+p)+p, cols*(W+p)+p, C] picture."""
    n, c, h, w = images.shape
    columns = columns or math.ceil(math.sqrt(n))
    rows = math.ceil(n / columns)
    pixels = to_uint8(images).numpy()
    grid = np.full((rows * (h + padding) + padding, columns * (w + padding) + padding, c), 255,
                   dtype=np.uint8)
    for i in range(n):
        r, col = divmod(i, columns)
        top, left = padding + r * (h + padding), padding + col * (w + padding)
        grid[top:top + h, left:left + w] = pixels[i].transpose(1, 2, 0)
    return grid


def save_grid(images: torch.Tensor, path: str | Path, columns: int | None = None,
              scale: int | None = None) -> Path:
    """Write a PNG grid of images in [-1, 1] (atomically); small images are enlarged (nearest)
    for viewing."""
    from PIL import Image

    grid = make_grid(images.detach().float().cpu(), columns)
    picture = Image.fromarray(grid[..., 0] if grid.shape[2] == 1 else grid)
    scale = scale or max(1, 64 // images.shape[-1])
    if scale > 1:
        picture = picture.resize((picture.width * scale, picture.height * scale), Image.NEAREST)
    return _save_png(picture, path)


def save_image(image: torch.Tensor, path: str | Path) -> Path:
    """One image [C, H, W] in [0, 1] as an 8-bit PNG at its own size (atomically)."""
    from PIL import Image

    pixels = (image.detach().float().cpu().clamp(0, 1) * 255).round().to(torch.uint8).numpy()
    return _save_png(Image.fromarray(pixels[0] if pixels.shape[0] == 1
                                     else pixels.transpose(1, 2, 0)), path)


def _save_png(picture, path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    return write_atomic(path, lambda f: picture.save(f, format="PNG"))


def save_npz(images: torch.Tensor, path: str | Path, labels: torch.Tensor | None = None) -> Path:
    """Samples as float32 [N, C, H, W] in [0, 1] under key ``samples`` (and ``labels``), written
    atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    arrays = {"samples": ((images.float().clamp(-1, 1) + 1) / 2).numpy().astype(np.float32)}
    if labels is not None:
        arrays["labels"] = labels.numpy()
    return write_atomic(path, lambda f: np.savez_compressed(f, **arrays))


def read_log(path: str | Path) -> list[dict]:
    """The records of a metrics.jsonl log; a line a kill tore (not JSON) is skipped."""
    path = Path(path)
    if not path.exists():
        return []
    records = []
    for line in path.read_text().splitlines():
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return [r for r in records if isinstance(r, dict)]


def plot_curves(records: list[dict], path: str | Path) -> Path | None:
    """Loss (and, when logged, FID/KID) against step, as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    losses = [(r["step"], r["loss"]) for r in records if "loss" in r]
    evals = [r for r in records if any(k.startswith("fid") for k in r)]
    if not losses:
        return None
    panels = 2 if evals else 1
    fig, axes = plt.subplots(1, panels, figsize=(5 * panels, 3.5), squeeze=False)
    steps, values = np.array(losses).T
    ax = axes[0, 0]
    ax.plot(steps, values, alpha=0.35, lw=0.8, label="loss")
    if len(values) >= 10:
        k = max(5, len(values) // 20)
        smooth = np.convolve(values, np.ones(k) / k, mode="valid")
        ax.plot(steps[k - 1:], smooth, lw=1.6, label=f"moving average ({k})")
    ax.set_yscale("log")
    ax.set_xlabel("step")
    ax.set_ylabel("weighted denoising loss")
    ax.legend()
    if evals:
        ax = axes[0, 1]
        for key in sorted({k for r in evals for k in r if k.startswith(("fid", "kid"))}):
            points = [(r["step"], r[key]) for r in evals if key in r]
            ax.plot(*np.array(points).T, marker="o", label=key)
        ax.set_xlabel("step")
        ax.set_yscale("log")
        ax.legend(fontsize=7)
    fig.tight_layout()
    path = save_figure(fig, path)
    plt.close(fig)
    return path


SPACE_ROWS = (("FID", "fid", "fid_floor"), ("KID", "kid", "kid_floor"),
              ("precision (k=3)", "precision", "precision_floor"),
              ("recall (k=3)", "recall", "recall_floor"))


def metrics_by_space(spaces: dict) -> list[str]:
    """Markdown table: one row per metric, per feature space the samples' value and the
    real-vs-real value at the same N (FID/KID floor; precision/recall balance of real data)."""
    names = list(spaces)
    lines = ["| metric | " + " | ".join(f"{name} features | real vs real" for name in names) + " |",
             "|---|" + "---|---|" * len(names)]
    for label, key, real in SPACE_ROWS:
        cells = []
        for name in names:
            values = spaces[name]
            cells += [f"{values[key]:.4g}" if key in values else "-",
                      f"{values[real]:.4g}" if real in values else "-"]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    if len(names) > 1:
        lines += ["", f"Every sample metric in two independent feature networks ({', '.join(names)}): "
                  "a change that helps in only one of them is an artefact of that network, not "
                  "better samples."]
    return lines


def write_report(run_dir: str | Path, sample_info: dict, metrics: dict | None = None) -> Path:
    """report.md in the run directory: config, loss curve, samples, throughput, metrics."""
    run_dir = Path(run_dir)
    config = json.loads(inside(run_dir, "config.json").read_text())
    records = read_log(inside(run_dir, "metrics.jsonl"))
    train_records = [r for r in records if "loss" in r]
    curve = plot_curves(records, inside(run_dir, "loss.png"))
    last = train_records[-1] if train_records else {}
    speeds = [r["images_per_sec"] for r in train_records[len(train_records) // 10:]]
    n_params = sample_info.get("parameters")
    lines = [
        f"# difflab run: {run_dir.name}", "",
        f"Data set **{config['data']['dataset']}**, {config['diffusion']['parameterization']} "
        f"parameterization, training sigma density {config['diffusion']['density']}, "
        f"network `{sample_info.get('net', 'unet')}` with {n_params:,} parameters." if n_params else "",
        "",
        "## Training", "",
        "| steps | images seen | training time | median images/s | final loss |",
        "|---|---|---|---|---|",
        f"| {last.get('step', 0)} | {last.get('step', 0) * config['optim']['batch_size']:,} | "
        f"{last.get('train_seconds', 0) / 60:.1f} min | "
        f"{np.median(speeds) if speeds else float('nan'):.0f} | {last.get('loss', float('nan')):.4f} |",
        "",
    ]
    if curve:
        lines += [f"![loss curve]({curve.name})", ""]
    if sample_info.get("train_precision"):
        lines += [f"Precision: training **{sample_info['train_precision']}** "
                  f"({sample_info.get('train_precision_reason') or 'reason not recorded'}); "
                  f"sampling **{sample_info['sample_precision']}** "
                  f"({sample_info['sample_precision_reason']}).", ""]
    lines += ["## Samples", "",
              f"{sample_info['n']} samples, sampler `{sample_info['sampler']}` with "
              f"{sample_info['steps']} steps ({sample_info['nfe']} network evaluations per image"
              + (f"; class-conditional, classifier-free guidance {sample_info['guidance']:g}, "
                 "labels cycling 0..9" if sample_info.get("guidance") is not None else "")
              + f"), EMA weights, {sample_info['seconds']:.1f} s.", ""]
    if sample_info.get("sigmas"):
        lines += [f"Sigma grid `{sample_info['sigma_grid']}`: "
                  + ", ".join(f"{s:g}" for s in sample_info["sigmas"]) + ". The recipes' "
                  "sampling defaults (sampler, steps, guidance, grid) are chosen in BENCHMARKS.md: "
                  "MNIST's in \"Few-step sampling\" on two feature spaces, CIFAR-10's guidance in "
                  "\"CIFAR-10 recipe\".", ""]
    lines += [f"![samples]({sample_info['grid']})", ""]
    if sample_info.get("npz"):
        lines += [f"All samples in [0, 1]: `{sample_info['npz']}`.", ""]
    if metrics:
        lines += ["## Metrics", ""]
        spaces = metrics.get("feature spaces", {})
        if spaces:
            lines += metrics_by_space(spaces) + [""]
        lines += ["| metric | value |", "|---|---|"]
        lines += [f"| {k} | {v:.4g} |" if isinstance(v, float) else f"| {k} | {v} |"
                  for k, v in metrics.items() if k != "feature spaces"]
        lines.append("")
    lines += ["## Config", "", "```json", json.dumps(config, indent=2), "```", ""]
    return write_atomic(inside(run_dir, "report.md"), "\n".join(lines))
