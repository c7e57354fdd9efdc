"""Data sets read from their official file formats, held in memory as tensors.

Every loader returns uint8 pixels ``[N, C, H, W]`` and int64 labels (or ``None``);
:func:`load_dataset` turns them into float images in [-1, 1], the range every model in difflab
sees. Files are found through one rule (:func:`resolve_data_dir`): an explicit directory, else the
environment variable ``DIFFLAB_DATA``, else ``~/.cache/difflab/data``. Within it a data set lives
either in a sub-folder named after it (``mnist/``, ``cifar10/``) or directly in the directory.

A missing, truncated or corrupt file raises :class:`DataError` with one line naming the file and
the problem; the CLI prints it without a traceback.
"""
from __future__ import annotations

import gzip
import os
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

DATASETS = ("mnist", "cifar10", "digits", "folder")
ENV_VAR = "DIFFLAB_DATA"
DEFAULT_DIR = Path.home() / ".cache" / "difflab" / "data"

MNIST_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
CIFAR10_FILES = {
    "train": tuple(f"data_batch_{i}.bin" for i in range(1, 6)),
    "test": ("test_batch.bin",),
}
CIFAR10_RECORD = 1 + 3 * 32 * 32
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp")
MAX_IMAGE_PIXELS = 1 << 26   # 67 M pixels (8192 x 8192): larger input images are refused
MAX_IMAGE_SIZE = 1024        # side of the training images after resizing
SIXTEEN_BIT_AS_I = ("PNG", "PPM")  # formats whose 16-bit grayscale PIL opens in mode "I"


class DataError(ValueError):
    """A data file is missing, truncated or corrupt; the message is one line naming the file."""


@dataclass
class ImageDataset:
    """Images as float32 ``[N, C, H, W]`` in [-1, 1], optional int64 labels ``[N]``."""

    images: torch.Tensor
    labels: torch.Tensor | None
    num_classes: int
    name: str

    def __len__(self) -> int:
        return self.images.shape[0]

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(self.images.shape[1:])


def resolve_data_dir(data_dir: str | os.PathLike | None = None) -> Path:
    """``data_dir`` if given, else ``$DIFFLAB_DATA``, else ``~/.cache/difflab/data``."""
    if data_dir:
        return Path(data_dir).expanduser()
    if os.environ.get(ENV_VAR):
        return Path(os.environ[ENV_VAR]).expanduser()
    return DEFAULT_DIR


def _find_file(root: Path, subdir: str, stem: str) -> Path:
    """The file ``stem`` or ``stem.gz`` in ``root/subdir`` or ``root``."""
    for folder in (root / subdir, root):
        for candidate in (folder / stem, folder / f"{stem}.gz"):
            if candidate.is_file():
                return candidate
    raise DataError(f"{stem}(.gz): not found in {root / subdir} or {root} "
                    f"(pass --data-dir or set {ENV_VAR})")


def _read_bytes(path: Path) -> bytes:
    try:
        if path.suffix == ".gz":
            with gzip.open(path, "rb") as f:
                return f.read()
        return path.read_bytes()
    except EOFError:
        raise DataError(f"{path.name}: truncated gzip stream") from None
    except (gzip.BadGzipFile, zlib.error) as e:
        raise DataError(f"{path.name}: corrupt gzip data ({e})") from None
    except OSError as e:
        raise DataError(f"{path.name}: cannot read ({e.strerror or e})") from None


def read_idx(path: Path, expected_magic: int) -> np.ndarray:
    """Read an IDX file (LeCun et al.): big-endian magic, dimension sizes, then uint8 data."""
    raw = _read_bytes(path)
    if len(raw) < 8:
        raise DataError(f"{path.name}: file too short for an IDX header ({len(raw)} bytes)")
    magic = struct.unpack(">I", raw[:4])[0]
    if magic != expected_magic:
        raise DataError(f"{path.name}: expected magic {expected_magic}, found {magic}")
    ndim = magic & 0xFF
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise DataError(f"{path.name}: file too short for a {ndim}-d IDX header")
    dims = struct.unpack(f">{ndim}I", raw[4:header])
    expected = int(np.prod(dims))
    found = len(raw) - header
    if found != expected:
        raise DataError(f"{path.name}: expected {expected} data bytes for shape {dims}, "
                        f"found {found} (truncated or corrupt)")
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(dims)


def load_mnist(data_dir=None, split: str = "train") -> tuple[np.ndarray, np.ndarray]:
    """MNIST from its IDX files: uint8 images ``[N, 1, 28, 28]`` and int64 labels ``[N]``."""
    if split not in MNIST_FILES:
        raise DataError(f"mnist: unknown split {split!r} (choose train or test)")
    root = resolve_data_dir(data_dir)
    image_stem, label_stem = MNIST_FILES[split]
    image_path = _find_file(root, "mnist", image_stem)
    label_path = _find_file(root, "mnist", label_stem)
    images = read_idx(image_path, 2051)
    labels = read_idx(label_path, 2049)
    if images.shape[1:] != (28, 28) or images.shape[0] == 0:
        raise DataError(f"{image_path.name}: header says {images.shape[0]} images of "
                        f"{'x'.join(map(str, images.shape[1:]))} pixels; MNIST has 28x28 images")
    if labels.ndim != 1:
        raise DataError(f"{label_path.name}: labels must be 1-d, header says shape {labels.shape}")
    if images.shape[0] != labels.shape[0]:
        raise DataError(f"{label_path.name}: {labels.shape[0]} labels for "
                        f"{images.shape[0]} images in {image_path.name}")
    if labels.size and labels.max() > 9:
        raise DataError(f"{label_path.name}: label {int(labels.max())} outside 0..9")
    return images[:, None].copy(), labels.astype(np.int64)


def load_cifar10(data_dir=None, split: str = "train") -> tuple[np.ndarray, np.ndarray]:
    """CIFAR-10 binary version: records of 1 label byte + 3072 pixel bytes (R, G, B planes)."""
    if split not in CIFAR10_FILES:
        raise DataError(f"cifar10: unknown split {split!r} (choose train or test)")
    root = resolve_data_dir(data_dir)
    images, labels = [], []
    for stem in CIFAR10_FILES[split]:
        path = _find_file(root, "cifar10", stem)
        raw = _read_bytes(path)
        if len(raw) == 0 or len(raw) % CIFAR10_RECORD:
            raise DataError(f"{path.name}: size {len(raw)} is not a multiple of the "
                            f"{CIFAR10_RECORD}-byte CIFAR-10 record (truncated or corrupt)")
        records = np.frombuffer(raw, dtype=np.uint8).reshape(-1, CIFAR10_RECORD)
        if records[:, 0].max() > 9:
            raise DataError(f"{path.name}: label {int(records[:, 0].max())} outside 0..9 "
                            "(not the CIFAR-10 binary version?)")
        labels.append(records[:, 0].astype(np.int64))
        images.append(records[:, 1:].reshape(-1, 3, 32, 32))
    return np.concatenate(images), np.concatenate(labels)


def load_digits() -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's bundled 8x8 digits (1,797 images, values 0..16) as uint8 ``[N, 1, 8, 8]``."""
    from sklearn.datasets import load_digits as sk_load_digits

    bunch = sk_load_digits()
    pixels = np.round(bunch.images * (255.0 / 16.0)).astype(np.uint8)
    return pixels[:, None], bunch.target.astype(np.int64)


def open_image(path: Path, mode: str | None = None):
    """The decoded PIL image at ``path`` in ``mode`` ("L" or "RGB"; None: "L" for grayscale
    files, "RGB" otherwise). DataError naming the file if it cannot be decoded or has more than
    ``MAX_IMAGE_PIXELS`` pixels (corrupt, or a decompression bomb), checked before decoding."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            if im.width * im.height > MAX_IMAGE_PIXELS:
                raise DataError(f"{path}: {im.width}x{im.height} pixels is more than the "
                                f"{MAX_IMAGE_PIXELS:,} an image may have (corrupt or a "
                                "decompression bomb?)")
            if im.mode == "F" or im.mode == "I" and im.format not in SIXTEEN_BIT_AS_I:
                kind = "floating-point" if im.mode == "F" else "32-bit integer"
                raise DataError(f"{path}: {kind} pixels ({im.format} mode {im.mode}) have no "
                                "known range, so they are not read; save the image with 8- or "
                                "16-bit integer pixels (e.g. as PNG)")
            if mode is None:
                mode = "L" if im.mode in ("1", "L", "LA", "I") or im.mode.startswith("I;16") \
                    else "RGB"
            if im.mode.startswith("I;16") or im.mode == "I":
                # 16-bit grayscale (medical and scientific images): PIL's convert would clip
                # every value above 255 to white; scale 0..65535 to 0..255 instead
                wide = np.asarray(im, dtype=np.float64)
                im = Image.fromarray(np.round(wide / 257).clip(0, 255).astype(np.uint8))
            return im.convert(mode)
    except (UnidentifiedImageError, Image.DecompressionBombError, OSError, SyntaxError,
            ValueError) as e:
        if isinstance(e, DataError):
            raise
        raise DataError(f"{path}: cannot decode image ({e})") from None


def load_image_folder(folder, size: int, channels: int = 3) -> tuple[np.ndarray, np.ndarray | None]:
    """PNG/JPEG files below ``folder``, resized (shorter side) and center-cropped to ``size``.

    Images in sub-folders get the sub-folder's index (sorted names) as label; a flat folder has
    no labels.
    """
    from PIL import Image

    if channels not in (1, 3):
        raise DataError(f"image folder: channels must be 1 or 3, got {channels}")
    if not 1 <= size <= MAX_IMAGE_SIZE:
        raise DataError(f"image folder: size must be in [1, {MAX_IMAGE_SIZE}], got {size}")
    root = Path(folder).expanduser()
    if not root.is_dir():
        raise DataError(f"{root}: image folder not found")
    paths = sorted(p for p in root.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
    if not paths:
        raise DataError(f"{root}: no {'/'.join(IMAGE_SUFFIXES)} images found")
    class_names = sorted({p.parent.name for p in paths if p.parent != root})
    labelled = bool(class_names) and all(p.parent != root for p in paths)
    out = np.empty((len(paths), channels, size, size), dtype=np.uint8)
    labels = np.empty(len(paths), dtype=np.int64)
    for i, path in enumerate(paths):
        im = open_image(path, "L" if channels == 1 else "RGB")
        scale = size / min(im.size)
        w, h = max(size, round(im.width * scale)), max(size, round(im.height * scale))
        im = im.resize((w, h), Image.Resampling.BICUBIC)
        left, top = (w - size) // 2, (h - size) // 2
        arr = np.asarray(im.crop((left, top, left + size, top + size)), dtype=np.uint8)
        out[i] = arr[None] if channels == 1 else arr.transpose(2, 0, 1)
        labels[i] = class_names.index(path.parent.name) if labelled else -1
    return out, (labels if labelled else None)


def image_paths(path) -> list[Path]:
    """The files ``read_images`` reads at ``path``: the file itself, or a folder's images
    (sorted); DataError if there are none."""
    path = Path(path).expanduser()
    if path.is_dir():
        paths = sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        if not paths:
            raise DataError(f"{path}: no {'/'.join(IMAGE_SUFFIXES)} images found")
        return paths
    if path.is_file():
        return [path]
    raise DataError(f"{path}: no such image file or folder")


def read_images(path) -> tuple[np.ndarray, list[str]]:
    """An image file, or a folder of them (sorted, all of one size), as they are: uint8
    ``[N, C, H, W]`` with C = 1 for grayscale files and 3 for colour ones, and their names."""
    paths = image_paths(path)
    arrays = []
    for p in paths:
        arr = np.asarray(open_image(p), dtype=np.uint8)
        arrays.append(arr[None] if arr.ndim == 2 else arr.transpose(2, 0, 1))
        if arrays[-1].shape != arrays[0].shape:
            raise DataError(f"{p}: {arrays[-1].shape[2]}x{arrays[-1].shape[1]} pixels with "
                            f"{arrays[-1].shape[0]} channel(s), but {paths[0].name} is "
                            f"{arrays[0].shape[2]}x{arrays[0].shape[1]} with {arrays[0].shape[0]}")
    return np.stack(arrays), [p.name for p in paths]


def to_float(pixels: np.ndarray | torch.Tensor) -> torch.Tensor:
    """uint8 pixels in [0, 255] -> float32 in [-1, 1]."""
    import torch  # here, not at the top: config validation reads DATASETS without torch

    x = torch.as_tensor(np.asarray(pixels))
    return x.float().div_(127.5).sub_(1.0)


def to_uint8(images: torch.Tensor) -> torch.Tensor:
    """float images in [-1, 1] -> uint8 in [0, 255] (clamped, rounded)."""
    import torch

    return ((images.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)


def load_pixels(name: str, data_dir=None, split: str = "train", image_size: int | None = None,
                channels: int | None = None, folder: str | None = None):
    """(uint8 pixels [N, C, H, W], int labels [N] or None) of a data set by name: the one place
    that maps data set names to loaders. ``digits`` has one split; ``folder`` reads ``folder``
    at ``image_size`` (default 32) with ``channels`` (default 3)."""
    if name == "mnist":
        return load_mnist(data_dir, split)
    if name == "cifar10":
        return load_cifar10(data_dir, split)
    if name == "digits":
        return load_digits()
    if name == "folder":
        if folder is None:
            raise DataError("folder data set needs a folder path (--folder)")
        return load_image_folder(folder, image_size or 32, channels or 3)
    raise DataError(f"unknown data set {name!r} (choose from {', '.join(DATASETS)})")


def load_dataset(name: str, data_dir=None, split: str = "train", image_size: int | None = None,
                 channels: int | None = None, folder: str | None = None) -> ImageDataset:
    """Load a data set by name as float images in [-1, 1] (see module docstring for names)."""
    import torch

    pixels, labels = load_pixels(name, data_dir, split, image_size, channels, folder)
    images = to_float(pixels)
    if image_size is not None and images.shape[-1] != image_size and name != "folder":
        images = torch.nn.functional.interpolate(images, size=(image_size, image_size),
                                                 mode="bilinear", antialias=True,
                                                 align_corners=False).clamp_(-1, 1)
    label_tensor = None if labels is None else torch.as_tensor(labels)
    num_classes = 0 if label_tensor is None else int(label_tensor.max()) + 1
    return ImageDataset(images, label_tensor, num_classes, name)
