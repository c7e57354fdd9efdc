"""Loaders against the check figures of ../shared/data/README.md, and clear errors on bad files."""
import gzip
import struct
import subprocess
import sys

import numpy as np
import pytest

from difflab.data import (DataError, load_cifar10, load_dataset, load_digits, load_image_folder,
                          load_mnist, resolve_data_dir)


def test_mnist_check_figures(data_dir):
    images, labels = load_mnist(data_dir, "train")
    assert images.shape == (60000, 1, 28, 28) and images.dtype == np.uint8
    assert np.bincount(labels).tolist() == [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]
    assert labels[:10].tolist() == [5, 0, 4, 1, 9, 2, 1, 3, 1, 4]
    assert abs(images.mean() / 255 - 0.1307) < 5e-5
    test_images, test_labels = load_mnist(data_dir, "test")
    assert test_images.shape == (10000, 1, 28, 28) and len(test_labels) == 10000


def test_cifar10_check_figures(data_dir):
    images, labels = load_cifar10(data_dir, "train")
    assert images.shape == (50000, 3, 32, 32)
    assert np.bincount(labels).tolist() == [5000] * 10
    assert labels[:10].tolist() == [6, 9, 9, 4, 1, 1, 2, 7, 8, 3]
    pixels = images / 255.0
    np.testing.assert_allclose(pixels.mean(axis=(0, 2, 3)), [0.4914, 0.4822, 0.4465], atol=5e-5)
    np.testing.assert_allclose(pixels.std(axis=(0, 2, 3)), [0.2470, 0.2435, 0.2616], atol=5e-5)
    _, test_labels = load_cifar10(data_dir, "test")
    assert test_labels[:10].tolist() == [3, 8, 8, 0, 6, 6, 1, 6, 3, 1]
    assert np.bincount(test_labels).tolist() == [1000] * 10


def test_dataset_range_and_labels(data_dir):
    data = load_dataset("mnist", data_dir, "test")
    assert data.images.shape == (10000, 1, 28, 28)
    assert data.images.min() == -1 and data.images.max() == 1
    assert data.num_classes == 10 and data.labels.dtype.is_floating_point is False


def test_digits_need_no_files():
    images, labels = load_digits()
    assert images.shape == (1797, 1, 8, 8) and images.max() == 255 and len(set(labels)) == 10


def test_image_folder_resize_crop_and_labels(tmp_path):
    from PIL import Image

    for cls, color in (("cat", (255, 0, 0)), ("dog", (0, 0, 255))):
        (tmp_path / cls).mkdir()
        for i in range(2):
            Image.new("RGB", (40 + 10 * i, 20), color).save(tmp_path / cls / f"{i}.png")
    images, labels = load_image_folder(tmp_path, 16, channels=3)
    assert images.shape == (4, 3, 16, 16) and labels.tolist() == [0, 0, 1, 1]
    assert images[0, 0].min() == 255 and images[0, 2].max() == 0
    gray, _ = load_image_folder(tmp_path, 8, channels=1)
    assert gray.shape == (4, 1, 8, 8)
    (tmp_path / "dog" / "broken.png").write_bytes(b"not an image")
    with pytest.raises(DataError, match="broken.png: cannot decode image"):
        load_image_folder(tmp_path, 16)


def _write_idx(path, magic, dims, payload, compress=True):
    raw = struct.pack(">I", magic) + struct.pack(f">{len(dims)}I", *dims) + payload
    if compress:
        path.write_bytes(gzip.compress(raw))
    else:
        path.write_bytes(raw)


def _fake_mnist(folder, image_magic=2051, cut=0, compress=True):
    folder.mkdir(parents=True, exist_ok=True)
    suffix = ".gz" if compress else ""
    _write_idx(folder / f"t10k-images-idx3-ubyte{suffix}", image_magic, (3, 28, 28),
               bytes(3 * 28 * 28 - cut), compress)
    _write_idx(folder / f"t10k-labels-idx1-ubyte{suffix}", 2049, (3,), bytes([1, 2, 3]), compress)


def test_raw_idx_files_load(tmp_path):
    _fake_mnist(tmp_path / "mnist", compress=False)
    images, labels = load_mnist(tmp_path, "test")
    assert images.shape == (3, 1, 28, 28) and labels.tolist() == [1, 2, 3]


def test_wrong_magic_names_file_and_values(tmp_path):
    _fake_mnist(tmp_path / "mnist", image_magic=1234)
    with pytest.raises(DataError, match=r"t10k-images-idx3-ubyte.gz: expected magic 2051, found 1234"):
        load_mnist(tmp_path, "test")


def test_truncated_idx_payload(tmp_path):
    _fake_mnist(tmp_path / "mnist", cut=100)
    with pytest.raises(DataError, match=r"t10k-images-idx3-ubyte.gz: expected 2352 data bytes"):
        load_mnist(tmp_path, "test")


def test_truncated_and_corrupt_gzip(tmp_path):
    _fake_mnist(tmp_path / "mnist")
    path = tmp_path / "mnist" / "t10k-images-idx3-ubyte.gz"
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(DataError, match="t10k-images-idx3-ubyte.gz: truncated gzip stream"):
        load_mnist(tmp_path, "test")
    path.write_bytes(b"\x1f\x8b" + b"\x00" * 40)
    with pytest.raises(DataError, match="t10k-images-idx3-ubyte.gz: corrupt gzip data"):
        load_mnist(tmp_path, "test")


def test_cifar_bad_record_size_and_missing_file(tmp_path):
    folder = tmp_path / "cifar10"
    folder.mkdir()
    (folder / "test_batch.bin").write_bytes(bytes(3073 * 2 + 5))
    with pytest.raises(DataError, match="test_batch.bin: size 6151 is not a multiple of the 3073-byte"):
        load_cifar10(tmp_path, "test")
    with pytest.raises(DataError, match=r"data_batch_1.bin\(.gz\): not found"):
        load_cifar10(tmp_path, "train")


def test_data_dir_rule(monkeypatch, tmp_path):
    monkeypatch.setenv("DIFFLAB_DATA", str(tmp_path))
    assert resolve_data_dir(None) == tmp_path
    assert resolve_data_dir("/elsewhere").as_posix() == "/elsewhere"
    monkeypatch.delenv("DIFFLAB_DATA")
    assert resolve_data_dir(None).parts[-2:] == ("difflab", "data")


def test_cli_reports_bad_file_in_one_line(tmp_path):
    _fake_mnist(tmp_path / "mnist", image_magic=1234)
    for kind in ("images-idx3", "labels-idx1"):
        (tmp_path / "mnist" / f"t10k-{kind}-ubyte.gz").rename(tmp_path / "mnist" / f"train-{kind}-ubyte.gz")
    result = subprocess.run([sys.executable, "-m", "difflab", "train", "--data-dir", str(tmp_path),
                             "--steps", "1", "--out", str(tmp_path / "run")],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    assert result.stderr.strip() == ("difflab: error: train-images-idx3-ubyte.gz: expected magic "
                                     "2051, found 1234")
