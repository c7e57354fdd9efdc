"""Benchmark workloads: a data set held as normalized tensors in memory plus a model factory.

``cifar10-cnn``: the classic small CNN (conv 3->6 5x5, pool, conv 6->16 5x5, pool, FC
400->120->84->10; 62,006 parameters) on CIFAR-10 with a fixed 45,000 / 5,000 train/validation
split of the official train set; the official test set is used only by final runs.
``mnist-mlp``: a 784-100-100-10 ReLU MLP (89,610 parameters) on MNIST, 55,000 / 5,000 split.
``digits-mlp``: a 64-32-10 MLP on scikit-learn's 8x8 digits (1,297 / 250 / 250), for tests and
smoke runs; it needs no data files.

Inputs are standardized per channel with the mean/std of the training part of the split (kept
as ``pixel_mean``/``pixel_std``, so ``to_pixels``/``from_pixels`` map inputs to [0, 1] images
and back, e.g. to corrupt test images). No augmentation (so overfitting stays visible).
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import torch
from torch import nn

from difflab.data import load_pixels
from difflab.options import BENCH_PROBLEMS as PROBLEMS

SPLIT_SEED = 20240601  # fixed: the validation split never depends on a run's seed


@dataclass
class Problem:
    """Train/validation/test tensors (inputs standardized) and the model to train."""

    name: str
    train_x: torch.Tensor
    train_y: torch.Tensor
    val_x: torch.Tensor
    val_y: torch.Tensor
    test_x: torch.Tensor
    test_y: torch.Tensor
    num_classes: int = 10
    pixel_mean: torch.Tensor | None = None     # [1, C, 1, 1]: x = (pixels - mean) / std
    pixel_std: torch.Tensor | None = None

    def to_pixels(self, x: torch.Tensor) -> torch.Tensor:
        """Standardized inputs -> images in [0, 1] (clamped: float rounding of the inverse)."""
        return (x * self.pixel_std + self.pixel_mean).clamp_(0.0, 1.0)

    def from_pixels(self, pixels: torch.Tensor) -> torch.Tensor:
        """Images in [0, 1] -> standardized inputs, with the train part's statistics."""
        return (pixels - self.pixel_mean) / self.pixel_std

    @property
    def n_train(self) -> int:
        return self.train_x.shape[0]

    def make_model(self, seed: int) -> nn.Module:
        """Fresh model initialized from ``seed`` (global RNG seeded here, inside the run)."""
        torch.manual_seed(seed)
        return build_model(self.name)


def build_model(name: str) -> nn.Module:
    if name == "cifar10-cnn":
        return nn.Sequential(
            nn.Conv2d(3, 6, 5), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(6, 16, 5), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
            nn.Linear(400, 120), nn.ReLU(), nn.Linear(120, 84), nn.ReLU(), nn.Linear(84, 10))
    if name == "mnist-mlp":
        return nn.Sequential(nn.Flatten(), nn.Linear(784, 100), nn.ReLU(),
                             nn.Linear(100, 100), nn.ReLU(), nn.Linear(100, 10))
    if name == "digits-mlp":
        return nn.Sequential(nn.Flatten(), nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10))
    raise ValueError(f"unknown problem {name!r} (choose from {', '.join(PROBLEMS)})")


def _standardize(train: np.ndarray, *others: np.ndarray) -> list[torch.Tensor]:
    """uint8 [N, C, H, W] -> float32 standardized per channel with the train part's statistics;
    the last two entries are that mean and std ([1, C, 1, 1])."""
    x = torch.from_numpy(np.ascontiguousarray(train)).float().div_(255.0)
    mean = x.mean(dim=(0, 2, 3), keepdim=True)
    std = x.std(dim=(0, 2, 3), keepdim=True)
    out = [x.sub_(mean).div_(std)]
    for o in others:
        out.append(torch.from_numpy(np.ascontiguousarray(o)).float().div_(255.0)
                   .sub_(mean).div_(std))
    return out + [mean, std]


def _split(n: int, n_val: int) -> tuple[np.ndarray, np.ndarray]:
    perm = np.random.default_rng(SPLIT_SEED).permutation(n)
    return np.sort(perm[:n - n_val]), np.sort(perm[n - n_val:])


@lru_cache(maxsize=4)
def load_problem(name: str, data_dir: str | None = None, n_train: int | None = None,
                 n_val: int | None = None, n_test: int | None = None) -> Problem:
    """Load a workload once per process; ``n_train/n_val/n_test`` take the first rows of each
    part (the split itself is a fixed random permutation, so these are random subsets)."""
    if name not in PROBLEMS:
        raise ValueError(f"unknown problem {name!r} (choose from {', '.join(PROBLEMS)})")
    dataset = name.split("-")[0]
    if dataset != "digits":
        images, labels = load_pixels(dataset, data_dir, "train")
        test_images, test_labels = load_pixels(dataset, data_dir, "test")
        train_idx, val_idx = _split(len(labels), 5000)
    else:
        all_images, all_labels = load_pixels(dataset)
        perm = np.random.default_rng(SPLIT_SEED).permutation(len(all_labels))
        test_part, rest = np.sort(perm[:250]), perm[250:]
        test_images, test_labels = all_images[test_part], all_labels[test_part]
        images, labels = all_images[rest], all_labels[rest]
        train_idx, val_idx = _split(len(labels), 250)
    # shuffle the train part once (fixed seed) so that n_train takes a random subset
    train_idx = train_idx[np.random.default_rng(SPLIT_SEED + 1).permutation(len(train_idx))]
    for label, requested, available in (("n_train", n_train, len(train_idx)),
                                        ("n_val", n_val, len(val_idx)),
                                        ("n_test", n_test, len(test_labels))):
        if requested is not None and (not isinstance(requested, int) or isinstance(requested, bool)
                                      or not 0 < requested <= available):
            raise ValueError(f"{name}: {label}={requested} outside 1..{available}")
    train_idx = train_idx[:n_train]
    val_idx = val_idx[:n_val]
    test_images, test_labels = test_images[:n_test], test_labels[:n_test]
    train_x, val_x, test_x, mean, std = _standardize(images[train_idx], images[val_idx],
                                                     test_images)
    return Problem(name, train_x, torch.from_numpy(labels[train_idx]).long(),
                   val_x, torch.from_numpy(labels[val_idx]).long(),
                   test_x, torch.from_numpy(np.asarray(test_labels)).long(),
                   pixel_mean=mean, pixel_std=std)
