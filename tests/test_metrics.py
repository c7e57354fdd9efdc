"""Metrics: exact oracles (Frechet distance closed forms, IS of a perfect classifier, PR of a set
against itself), agreement with scipy, KID unbiasedness, input errors, feature networks,
Inception-v3 weight compatibility, and the eval pipeline on real data."""
import json

import numpy as np
import pytest
import scipy.linalg
import torch

from difflab.evaluation import evaluate, metrics
from difflab.data import load_mnist, to_float
from difflab.evaluation.metrics import MetricsError
from difflab.nets import classifier, inception


def random_spd(d, rng):
    a = rng.standard_normal((d, d))
    return a @ a.T / d + 0.1 * np.eye(d)


def scipy_fid(mu1, s1, mu2, s2):
    covmean = scipy.linalg.sqrtm(s1 @ s2).real
    return float(((mu1 - mu2) ** 2).sum() + np.trace(s1) + np.trace(s2) - 2 * np.trace(covmean))


# ---------------------------------------------------------------- Frechet distance

def test_frechet_identical_stats_is_zero():
    rng = np.random.default_rng(0)
    mu, s = rng.standard_normal(20), random_spd(20, rng)
    assert metrics.frechet_distance(mu, s, mu, s) == pytest.approx(0.0, abs=1e-9)


def test_frechet_diagonal_closed_form():
    rng = np.random.default_rng(1)
    mu1, mu2 = rng.standard_normal(10), rng.standard_normal(10)
    a, b = rng.uniform(0.1, 3, 10), rng.uniform(0.1, 3, 10)
    expected = ((mu1 - mu2) ** 2).sum() + ((np.sqrt(a) - np.sqrt(b)) ** 2).sum()
    got = metrics.frechet_distance(mu1, np.diag(a), mu2, np.diag(b))
    assert got == pytest.approx(expected, rel=1e-12)


def test_frechet_matches_scipy_on_random_data():
    rng = np.random.default_rng(2)
    x = rng.standard_normal((400, 32)) @ rng.standard_normal((32, 32))
    y = 0.8 * rng.standard_normal((300, 32)) @ rng.standard_normal((32, 32)) + 0.3
    sx, sy = metrics.FeatureStats.of(x), metrics.FeatureStats.of(y)
    ours = metrics.fid_from_stats(sx, sy)
    ref = scipy_fid(x.mean(0), np.cov(x, rowvar=False), y.mean(0), np.cov(y, rowvar=False))
    assert ours == pytest.approx(ref, rel=1e-6)
    assert isinstance(ours, float)


def test_frechet_singular_covariance_is_real_and_nonnegative():
    rng = np.random.default_rng(3)
    x = rng.standard_normal((10, 64))  # N < D: rank-deficient covariances
    y = rng.standard_normal((10, 64)) + 1
    fd = metrics.fid_from_stats(metrics.FeatureStats.of(x), metrics.FeatureStats.of(y))
    assert np.isfinite(fd) and fd > 0


def test_streamed_stats_equal_numpy_for_any_batch_split():
    rng = np.random.default_rng(4)
    x = rng.standard_normal((257, 12)).astype(np.float32) * 3 + 5
    stats = metrics.FeatureStats(12)
    for chunk in np.array_split(x, 7):
        stats.update(chunk)
    np.testing.assert_allclose(stats.mean, x.astype(np.float64).mean(0), rtol=1e-12)
    np.testing.assert_allclose(stats.cov, np.cov(x.astype(np.float64), rowvar=False), rtol=1e-9, atol=1e-12)


# ---------------------------------------------------------------- KID

def test_kid_unbiased_for_same_distribution_and_positive_for_shift():
    rng = np.random.default_rng(5)
    x, y = rng.standard_normal((1000, 16)), rng.standard_normal((1000, 16))
    gen = torch.Generator().manual_seed(0)
    mean, std = metrics.kid(x, y, subsets=50, subset_size=200, generator=gen)
    assert std > 0 and abs(mean) < 2 * std
    mean_shift, std_shift = metrics.kid(x, y + 0.5, subsets=50, subset_size=200, generator=gen)
    assert mean_shift > 10 * std_shift


def test_kid_matches_direct_formula():
    rng = np.random.default_rng(6)
    x, y = rng.standard_normal((6, 3)), rng.standard_normal((6, 3)) + 0.2
    k = lambda a, b: (a @ b / 3 + 1) ** 3  # noqa: E731
    m = 6
    xx = sum(k(x[i], x[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
    yy = sum(k(y[i], y[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
    xy = sum(k(x[i], y[j]) for i in range(m) for j in range(m)) / m**2
    mean, std = metrics.kid(x, y, subsets=3, subset_size=6)
    assert mean == pytest.approx(xx + yy - 2 * xy, rel=1e-10) and std == pytest.approx(0, abs=1e-12)


# ---------------------------------------------------------------- Inception Score

def test_inception_score_of_confident_uniform_classifier_is_num_classes():
    probs = np.eye(10)[np.arange(1000) % 10]  # one-hot, every class equally often in every split
    mean, std = metrics.inception_score(probs, splits=10)
    assert mean == pytest.approx(10.0, rel=1e-12) and std == pytest.approx(0.0, abs=1e-12)


def test_inception_score_of_uninformative_classifier_is_one():
    mean, _ = metrics.inception_score(np.full((100, 7), 1 / 7), splits=5)
    assert mean == pytest.approx(1.0, rel=1e-12)


# ---------------------------------------------------------------- precision / recall

def test_precision_recall_of_set_against_itself_is_one():
    x = np.random.default_rng(7).standard_normal((300, 8))
    assert metrics.precision_recall(x, x.copy(), k=3, chunk=64) == (1.0, 1.0)


def test_precision_recall_of_disjoint_sets_is_zero_and_mode_collapse_lowers_recall():
    rng = np.random.default_rng(8)
    real = rng.standard_normal((400, 4))
    assert metrics.precision_recall(real, real + 100, k=3) == (0.0, 0.0)
    collapsed = real[real[:, 0] > 0.5]  # fakes cover only part of the real support
    precision, recall = metrics.precision_recall(real, collapsed, k=3)
    assert precision == 1.0 and recall < 0.6


# ---------------------------------------------------------------- bad input

@pytest.mark.parametrize("images, fragment", [
    (torch.zeros(4, 28, 28), "4-d"),
    (torch.zeros(4, 3, 28, 28), "expected 1 channel"),
    (torch.zeros(4, 1, 32, 32), "28x28"),
    (torch.zeros(4, 1, 28, 28, dtype=torch.uint8), "dtype"),
    (torch.zeros(0, 1, 28, 28), "no images"),
])
def test_check_images_rejects_bad_shapes(images, fragment):
    with pytest.raises(MetricsError, match=fragment):
        metrics.check_images(images, channels=1, size=28)


def test_nan_images_and_too_few_samples_give_clear_errors():
    x = torch.zeros(5, 1, 28, 28)
    x[2, 0, 3, 3] = float("nan")
    with pytest.raises(MetricsError, match="1 of 5 images contain NaN"):
        metrics.check_images(x, 1, 28)
    with pytest.raises(MetricsError, match="at least 2 samples, got 1"):
        metrics.FeatureStats.of(np.ones((1, 4))).cov
    with pytest.raises(MetricsError, match="shapes do not match"):
        metrics.frechet_distance(np.zeros(3), np.eye(3), np.zeros(4), np.eye(4))
    with pytest.raises(ValueError, match="NaN"):
        metrics.kid(np.full((5, 2), np.nan), np.ones((5, 2)))


def test_sample_arrays_accept_uint8_nhwc_and_reject_bad_ranges():
    a = np.random.default_rng(9).integers(0, 256, (3, 32, 32, 3), dtype=np.uint8)
    x = evaluate.array_to_images(a, 3, "s.npz")
    assert x.shape == (3, 3, 32, 32) and x.min() >= -1 and x.max() <= 1
    assert torch.equal(x, evaluate.array_to_images(a.transpose(0, 3, 1, 2), 3, "s.npz"))
    with pytest.raises(MetricsError, match=r"range \[-1, 1\]"):
        evaluate.array_to_images(np.linspace(-1, 1, 3 * 28 * 28, dtype=np.float32).reshape(3, 1, 28, 28), 1, "s.npz")
    with pytest.raises(MetricsError, match="expected 1 channel"):
        evaluate.array_to_images(a, 1, "s.npz")


# ---------------------------------------------------------------- feature networks

@pytest.mark.parametrize("name, threshold", [("mnist", 0.99), ("cifar10", 0.85), ("mnist-alt", 0.99)])
def test_shipped_feature_weights_load_and_record_accuracy(name, threshold):
    path, meta = classifier.weights_paths(name)
    assert path.stat().st_size < 5e6
    info = json.loads(meta.read_text())
    assert info["test_accuracy"] >= threshold and info["test_images"] == 10000
    net = classifier.load_feature_net(name)
    x = torch.rand(3, net.in_channels, net.image_size, net.image_size) * 2 - 1
    feats, probs = metrics.extract(net, x)
    assert feats.shape == (3, net.feature_dim) and np.allclose(probs.sum(1), 1)


def test_mnist_feature_net_classifies_real_test_images(data_dir):
    net = classifier.load_feature_net("mnist")
    pixels, labels = load_mnist(data_dir, "test")
    _, probs = metrics.extract(net, to_float(pixels[:2000]))
    assert (probs.argmax(1) == labels[:2000]).mean() >= 0.98


def test_second_mnist_feature_space_is_another_network():
    """The second space must not be a copy of the first: other architecture, other seed, and
    features that are not a linear image of the first network's."""
    first, second = classifier.load_feature_net("mnist"), classifier.load_feature_net("mnist-alt")
    assert type(first) is not type(second)
    assert json.loads(classifier.weights_paths("mnist-alt")[1].read_text())["seed"] != \
        json.loads(classifier.weights_paths("mnist")[1].read_text())["seed"]
    x = torch.rand(300, 1, 28, 28, generator=torch.Generator().manual_seed(0)) * 2 - 1
    a, _ = metrics.extract(first, x)
    b, _ = metrics.extract(second, x)
    a = np.c_[a, np.ones(len(a))]
    fit = np.linalg.lstsq(a, b, rcond=None)[0]
    explained = 1 - ((a @ fit - b) ** 2).sum() / ((b - b.mean(0)) ** 2).sum()
    assert explained < 0.99


def test_missing_feature_weights_say_how_to_train(tmp_path):
    with pytest.raises(classifier.WeightsError, match="train_features.py --dataset mnist"):
        classifier.load_feature_net("mnist", tmp_path)


# ---------------------------------------------------------------- Inception-v3

def test_inception_state_dict_names_and_shapes_match_pytorch_fid_file_layout():
    state = inception.InceptionV3().state_dict()
    assert state["Conv2d_1a_3x3.conv.weight"].shape == (32, 3, 3, 3)
    assert state["Mixed_5b.branch_pool.conv.weight"].shape == (32, 192, 1, 1)
    assert state["Mixed_6e.branch7x7dbl_5.conv.weight"].shape == (192, 192, 1, 7)
    assert state["Mixed_7c.branch3x3dbl_3b.bn.running_var"].shape == (384,)
    assert state["fc.weight"].shape == (1008, 2048)
    assert sum(v.numel() for k, v in state.items() if "running" not in k and "num_batches" not in k) == 23_850_960


def test_inception_loads_tensor_only_file_and_refuses_missing_or_wrong_files(tmp_path):
    with pytest.raises(inception.InceptionWeightsError, match="pt_inception-2015-12-05-6726825d.pth"):
        inception.load_inception(tmp_path / "nope.pth")
    with pytest.raises(inception.InceptionWeightsError, match="--inception-weights"):
        inception.load_inception(None)
    source = inception.InceptionV3().eval()
    state = {k: v for k, v in source.state_dict().items() if "num_batches" not in k}
    torch.save(state, tmp_path / "w.pth")
    net = inception.load_inception(tmp_path / "w.pth")
    x = torch.rand(1, 1, 28, 28) * 2 - 1
    with torch.no_grad():
        assert torch.equal(net.features(x), source.features(x))
    torch.save({"fc.weight": torch.zeros(3)}, tmp_path / "bad.pth")
    with pytest.raises(inception.InceptionWeightsError, match="not the pytorch-fid Inception weights"):
        inception.load_inception(tmp_path / "bad.pth")


# ---------------------------------------------------------------- eval pipeline on real data

@pytest.fixture
def small_splits(monkeypatch, tmp_path, data_dir):
    """Real MNIST, first 2000 images of each split, with a private stats cache."""
    full, original = {}, evaluate.load_split

    def load_split(dataset, split, data_dir=None):
        if (dataset, split) not in full:
            full[dataset, split] = original(dataset, split, data_dir)[:2000]
        return full[dataset, split]

    monkeypatch.setattr(evaluate, "load_split", load_split)
    monkeypatch.setenv(evaluate.CACHE_ENV, str(tmp_path / "cache"))
    return load_split


def test_eval_cli_scores_real_and_noise_samples(small_splits, data_dir, tmp_path, capsys):
    from difflab.cli import main

    real = (small_splits("mnist", "train", data_dir)[:500] + 1) / 2
    np.savez(tmp_path / "real.npz", samples=real.numpy())
    noise = np.random.default_rng(0).random((500, 1, 28, 28), dtype=np.float32)
    np.savez(tmp_path / "noise.npz", samples=noise)
    assert main(["eval", "--ref", "mnist-test", "--data-dir", str(data_dir)]) == 0
    assert len(list((tmp_path / "cache").glob("mnist-*.npz"))) == 4  # 2 splits x 2 feature nets
    assert main(["eval", str(tmp_path / "real.npz"), "--ref", "mnist-test", "--data-dir", str(data_dir),
                 "--json", str(tmp_path / "real.json")]) == 0
    out = capsys.readouterr().out
    assert "FID (difflab-MNIST features)" in out and "warning: N=500 is small" in out
    assert "FID (difflab-MNIST-alt features)" in out
    assert main(["eval", str(tmp_path / "noise.npz"), "--ref", "mnist-test", "--data-dir", str(data_dir),
                 "--json", str(tmp_path / "noise.json")]) == 0
    r, z = json.loads((tmp_path / "real.json").read_text()), json.loads((tmp_path / "noise.json").read_text())
    assert r["n"] == 500 and r["floor_n"] == 500
    assert z["fid"] > 20 * r["fid"] and z["kid"] > 20 * abs(r["kid"]) and z["precision"] < 0.05
    assert r["precision"] > 0.5 and r["recall"] > 0.5 and 8 < r["is"] <= 10
    # the second feature space sees the same: real near its floor, noise far off
    assert r["alt_features"] == "difflab-MNIST-alt" and r["alt_precision"] > 0.5
    assert z["alt_fid"] > 20 * r["alt_fid"] and r["alt_fid"] < 3 * r["alt_fid_floor"]


def test_eval_cli_bad_input_is_one_line_error(small_splits, data_dir, tmp_path, capsys):
    from difflab.cli import main

    np.savez(tmp_path / "rgb.npz", samples=np.zeros((10, 3, 28, 28), np.float32))
    assert main(["eval", str(tmp_path / "rgb.npz"), "--ref", "mnist-test", "--data-dir", str(data_dir)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("difflab: error:") and "expected 1 channel" in err and "\n" not in err
    assert main(["eval", str(tmp_path / "missing.npz"), "--ref", "mnist-test"]) == 2
    assert "no such file" in capsys.readouterr().err


def test_training_evaluator_rejects_data_sets_without_feature_network():
    from difflab.config import TrainConfig
    from difflab.runs import make_training_evaluator

    config = TrainConfig()
    config.data.dataset = "digits"
    with pytest.raises(MetricsError, match="mnist or cifar10.*'digits'"):
        make_training_evaluator(config, "fp32")
    config.data.dataset, config.data.image_size = "mnist", 32
    with pytest.raises(MetricsError, match="28x28.*image_size=32"):
        make_training_evaluator(config, "fp32")


def test_load_samples_from_npz_folder_and_unsupported_paths(tmp_path):
    from PIL import Image

    pixels = np.random.default_rng(10).integers(0, 256, (4, 28, 28), dtype=np.uint8)
    np.savez(tmp_path / "s.npz", samples=pixels[:, None])  # uint8 NCHW
    x = evaluate.load_samples(tmp_path / "s.npz", "mnist", n=3)
    assert x.shape == (3, 1, 28, 28) and torch.equal(x, to_float(pixels[:3, None]))
    folder = tmp_path / "pngs"
    folder.mkdir()
    for i, p in enumerate(pixels):
        Image.fromarray(p).save(folder / f"{i}.png")
    assert torch.equal(evaluate.load_samples(folder, "mnist"), to_float(pixels[:, None]))
    with pytest.raises(MetricsError, match="asked for --n 9 samples, found only 4"):
        evaluate.load_samples(folder, "mnist", n=9)
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(MetricsError, match="unsupported samples input"):
        evaluate.load_samples(tmp_path / "notes.txt", "mnist")
