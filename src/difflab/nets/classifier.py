"""Small classifiers whose penultimate features define difflab's own FID/KID/PR and whose class
probabilities define its Inception Score (see ``difflab.evaluation.metrics``).

Both take images in [-1, 1], ``[N, C, H, W]``, and expose

- ``features(x) -> [N, feature_dim]``: the penultimate activations (global average pool of the
  last convolutional block, after its ReLU), the analogue of Inception-v3's 2048-d pool3 features;
- ``forward(x) -> [N, num_classes]``: logits, ``head(features(x))``.

``MNISTFeatureNet`` is a plain VGG-style CNN (about 0.14 M parameters, 128-d features), kept small
so 10,000 images take a few seconds on a CPU. ``MNISTAltFeatureNet`` is the second, independent
MNIST feature space (another architecture, another seed: strided convolutions, GroupNorm and SiLU,
no pooling, features from a fully connected layer over the whole 4x4 map, so they keep where
strokes are); metrics in both spaces guard recipe choices against artefacts of one network. ``CIFARFeatureNet`` is a ResNet-9-style network
(Page 2018, "How to train your ResNet"; He et al. 2016 residual blocks) narrowed to about 0.8 M
parameters (256-d features) so that its weights file stays under 5 MB.

Weights are trained by ``scripts/train_features.py`` and shipped as
``difflab/weights/{mnist,cifar10}-features.safetensors`` with a JSON file recording the measured
test accuracy; :func:`load_feature_net` reads them (never unpickles).
"""
from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import nn

WEIGHTS_DIR = Path(__file__).resolve().parent.parent / "weights"
FEATURE_NETS = ("mnist", "cifar10", "mnist-alt")


def conv_bn(c_in: int, c_out: int) -> nn.Sequential:
    """3x3 convolution (no bias) -> BatchNorm -> ReLU."""
    return nn.Sequential(nn.Conv2d(c_in, c_out, 3, padding=1, bias=False),
                         nn.BatchNorm2d(c_out), nn.ReLU(inplace=True))


class Residual(nn.Module):
    """x + f(x) with f = two conv_bn layers (He et al. 2016)."""

    def __init__(self, channels: int):
        super().__init__()
        self.f = nn.Sequential(conv_bn(channels, channels), conv_bn(channels, channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.f(x)


class MNISTFeatureNet(nn.Module):
    """VGG-style CNN for 1x28x28 digits: 28 -> 14 -> 7 -> global pool -> 128-d features."""

    in_channels, image_size, num_classes, feature_dim = 1, 28, 10, 128

    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(
            conv_bn(1, 32), conv_bn(32, 32), nn.MaxPool2d(2),        # [N, 32, 14, 14]
            conv_bn(32, 64), conv_bn(64, 64), nn.MaxPool2d(2),       # [N, 64, 7, 7]
            conv_bn(64, 128),                                        # [N, 128, 7, 7]
        )
        self.head = nn.Linear(self.feature_dim, self.num_classes)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x).mean(dim=(2, 3))                         # [N, 128]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


class MNISTAltFeatureNet(nn.Module):
    """Strided CNN for 1x28x28 digits: 28 -> 14 -> 7 -> 4, flatten, linear -> 128-d features."""

    in_channels, image_size, num_classes, feature_dim = 1, 28, 10, 128

    def __init__(self):
        super().__init__()

        def block(c_in: int, c_out: int, kernel: int) -> nn.Sequential:
            return nn.Sequential(nn.Conv2d(c_in, c_out, kernel, stride=2, padding=kernel // 2),
                                 nn.GroupNorm(8, c_out), nn.SiLU())

        self.body = nn.Sequential(
            block(1, 32, 5), block(32, 64, 3), block(64, 64, 3),    # [N, 64, 4, 4]
            nn.Flatten(), nn.Linear(64 * 16, self.feature_dim), nn.SiLU(),
        )
        self.head = nn.Linear(self.feature_dim, self.num_classes)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)                                          # [N, 128]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


class CIFARFeatureNet(nn.Module):
    """ResNet-9-style network for 3x32x32 images: 32 -> 16 -> 8 -> 4 -> global pool -> 256-d."""

    in_channels, image_size, num_classes, feature_dim = 3, 32, 10, 256

    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(
            conv_bn(3, 64), nn.MaxPool2d(2),                         # [N, 64, 16, 16]
            conv_bn(64, 64), Residual(64),                           # [N, 64, 16, 16]
            conv_bn(64, 128), nn.MaxPool2d(2), Residual(128),        # [N, 128, 8, 8]
            conv_bn(128, 256), nn.MaxPool2d(2),                      # [N, 256, 4, 4]
        )
        self.head = nn.Linear(self.feature_dim, self.num_classes)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x).mean(dim=(2, 3))                         # [N, 256]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


def make_feature_net(name: str) -> nn.Module:
    """An untrained feature network ``name`` (one of ``FEATURE_NETS``)."""
    if name == "mnist":
        return MNISTFeatureNet()
    elif name == "cifar10":
        return CIFARFeatureNet()
    elif name == "mnist-alt":
        return MNISTAltFeatureNet()
    raise ValueError(f"unknown feature network {name!r} (choose from {', '.join(FEATURE_NETS)})")


class WeightsError(ValueError):
    """A weights file is missing or does not fit the network; one line naming the file."""


def weights_paths(name: str, weights_dir: str | Path | None = None) -> tuple[Path, Path]:
    """(safetensors path, JSON path) of the shipped weights of feature network ``name``."""
    folder = Path(weights_dir) if weights_dir is not None else WEIGHTS_DIR
    return folder / f"{name}-features.safetensors", folder / f"{name}-features.json"


def load_feature_net(name: str, weights_dir: str | Path | None = None) -> nn.Module:
    """The trained feature network ``name`` in eval mode, weights from safetensors."""
    from safetensors.torch import load_file

    net = make_feature_net(name)
    path, _ = weights_paths(name, weights_dir)
    if not path.is_file():
        raise WeightsError(f"{path}: feature-network weights not found (train them with "
                           f"`python scripts/train_features.py --dataset {name} --out {path.parent}`)")
    state = load_file(str(path))
    try:
        net.load_state_dict(state, strict=True)
    except RuntimeError as e:
        first = str(e).splitlines()[0] if str(e) else "mismatch"
        raise WeightsError(f"{path}: weights do not fit {type(net).__name__} ({first})") from None
    return net.eval().requires_grad_(False)


def feature_net_info(name: str, weights_dir: str | Path | None = None) -> dict:
    """The JSON record next to the weights (test accuracy, training settings), or {}."""
    _, meta = weights_paths(name, weights_dir)
    return json.loads(meta.read_text()) if meta.is_file() else {}
