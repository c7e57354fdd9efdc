"""Calibration metrics and CIFAR-10-C-style shifts (difflab.bench.calibration): hand-computed
values, statistical bounds, the bin-edge convention, shift monotonicity/determinism, and
one-line ValueErrors naming the bad argument."""
import math

import numpy as np
import pytest
import torch

from difflab.bench.calibration import (EPS, SHIFT_KINDS, SHIFT_PARAMS, brier, ece, nll,
                                       predictive_entropy, reliability, shift_images,
                                       shift_parameter)


def onehot(labels, k):
    return torch.nn.functional.one_hot(torch.as_tensor(labels), k).double()


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


# ------------------------------------------------------------------------ NLL / Brier / entropy

def test_nll_hand_values():
    y = torch.tensor([0, 2, 1])
    assert nll(onehot(y, 3), y) == 0.0                              # correct one-hot: -log 1
    assert nll(onehot([1, 0, 0], 3), y) == pytest.approx(-math.log(EPS))   # all wrong, clamped
    assert nll(torch.full((3, 3), 1 / 3), y) == pytest.approx(math.log(3))
    p = [[0.7, 0.2, 0.1], [0.3, 0.2, 0.5]]
    assert nll(p, [0, 1]) == pytest.approx((-math.log(0.7) - math.log(0.2)) / 2)


def test_brier_hand_values():
    for k in (2, 3, 10):
        y = torch.arange(k)
        assert brier(torch.full((k, k), 1 / k), y) == pytest.approx((k - 1) / k)
        assert brier(onehot(y, k), y) == 0.0
        assert brier(onehot((y + 1) % k, k), y) == pytest.approx(2.0)
    assert brier([[0.7, 0.2, 0.1]], [0]) == pytest.approx(0.09 + 0.04 + 0.01)


def test_entropy_hand_values():
    for k in (2, 3, 10):
        h = predictive_entropy(torch.full((4, k), 1 / k))
        assert h.shape == (4,)
        assert torch.allclose(h, torch.full((4,), math.log(k), dtype=torch.float64))
    h = predictive_entropy([[1.0, 0.0, 0.0], [0.5, 0.5, 0.0], [0.25, 0.25, 0.5]])
    assert h.tolist() == pytest.approx([0.0, math.log(2), 1.5 * math.log(2)])


def test_accepts_numpy_and_float32_softmax():
    logits = torch.randn(64, 10)
    p32 = logits.softmax(1)
    y = torch.randint(0, 10, (64,))
    assert nll(p32, y) == pytest.approx(torch.nn.functional.cross_entropy(logits, y).item(),
                                        rel=1e-5)
    assert brier(p32.numpy(), y.numpy()) == pytest.approx(brier(p32.double(), y))
    assert ece(p32.numpy(), y.numpy().astype(np.int32)) == pytest.approx(ece(p32, y))


# ----------------------------------------------------------------------------- ECE / reliability

def test_ece_overconfident_known_gap():
    # 10 examples at confidence 0.9 with 6 correct, 10 at 0.7 with 5 correct:
    # ECE = 0.5 * |0.6 - 0.9| + 0.5 * |0.5 - 0.7| = 0.25
    p = torch.tensor([[0.9, 0.1]] * 10 + [[0.3, 0.7]] * 10)
    y = torch.tensor([0] * 6 + [1] * 4 + [1] * 5 + [0] * 5)
    assert ece(p, y) == pytest.approx(0.25)
    assert ece(p, y, bins=1) == pytest.approx(abs(0.55 - 0.8))     # one bin: |acc - conf|
    table = reliability(p, y, bins=10)
    # 0.7 -> bin (0.6, 0.7], 0.9 -> bin (0.8, 0.9]
    assert table.counts.tolist() == [0] * 6 + [10, 0, 10, 0]
    assert table.accuracy[6].item() == pytest.approx(0.5)
    assert table.accuracy[8].item() == pytest.approx(0.6)
    assert table.confidence[8].item() == pytest.approx(0.9)
    assert torch.isnan(table.accuracy[0]) and torch.isnan(table.confidence[0])


def test_ece_perfectly_calibrated_within_hoeffding_bound():
    # Labels drawn with the stated probabilities: within bin m, acc_m - conf_m is a mean of n_m
    # independent centred [-1, 1]-bounded terms, so with prob >= 1 - delta (Hoeffding + union
    # bound over M bins) ECE <= sum_m (n_m/N) sqrt(log(2M/delta) / (2 n_m))
    #                         <= sqrt(M log(2M/delta) / (2N)).
    n, k, bins, delta = 50_000, 3, 15, 1e-6
    g = gen(1)
    probs = torch.distributions.Dirichlet(torch.ones(k)).sample((n,))
    labels = torch.multinomial(probs, 1, generator=g).squeeze(1)
    bound = math.sqrt(bins * math.log(2 * bins / delta) / (2 * n))
    value = ece(probs, labels, bins)
    assert value <= bound
    assert bound < 0.1                                              # discriminates a 0.1 gap:
    sharpened = torch.where(probs == probs.max(1, keepdim=True).values, probs + 0.1, probs - 0.05)
    sharpened = sharpened.clamp(0, 1)
    sharpened = sharpened / sharpened.sum(1, keepdim=True)
    assert ece(sharpened, labels, bins) > value + 0.02


def test_bin_edge_convention_right_closed():
    # bins=5, edges 0, .2, .4, .6, .8, 1: conf exactly on 0.6 falls in (0.4, 0.6] (bin 2),
    # 1.0 in the last bin, 0.5 in bin 2, and with bins=2 conf 0.5 is in bin 0 = [0, 0.5].
    # "Exactly" is in the input's dtype: float32 0.6 (0.60000002...) is on the float32 edge 6/10.
    rows = [[0.6, 0.4], [1.0, 0.0], [0.5, 0.5], [0.4, 0.6], [0.8, 0.2]]
    y = [0, 0, 0, 0, 0]
    for p in (rows, np.array(rows), torch.tensor(rows), torch.tensor(rows, dtype=torch.float64),
              torch.tensor(rows, dtype=torch.float16)):
        assert reliability(p, y, bins=5).counts.tolist() == [0, 0, 3, 1, 1]
        assert reliability(p, y, bins=2).counts.tolist() == [1, 4]
        assert reliability(p, y, bins=10).counts.tolist() == [0, 0, 0, 0, 1, 2, 0, 1, 0, 1]
    assert reliability([[1, 0]], [0], bins=3).counts.tolist() == [0, 0, 1]   # integer one-hot
    assert reliability([[0.6 + 1e-12, 0.4 - 1e-12]], [0], bins=5).counts.tolist() == [0, 0, 0, 1, 0]
    # tie at 0.5: prediction is class 0 (first index), so [0.5, 0.5] with label 0 is correct
    assert reliability([[0.5, 0.5]], [0], bins=1).accuracy.item() == 1.0


def test_reliability_table_consistent_with_ece():
    p = torch.distributions.Dirichlet(torch.full((10,), 0.3)).sample((777,))
    y = torch.randint(0, 10, (777,))
    table = reliability(p, y)
    assert table.counts.shape == (15,) and table.edges.shape == (16,)
    assert int(table.counts.sum()) == 777
    filled = table.counts > 0
    manual = sum(c / 777 * abs(a - f) for c, a, f in zip(table.counts[filled].tolist(),
                 table.accuracy[filled].tolist(), table.confidence[filled].tolist()))
    assert ece(p, y) == pytest.approx(manual)
    lo, hi = table.edges[:-1][filled], table.edges[1:][filled]
    conf = table.confidence[filled]
    assert bool(((conf > lo) & (conf <= hi)).all())


# ----------------------------------------------------------------------------- shifts

def test_shift_parameter_table_is_cifar10c():
    assert SHIFT_PARAMS["gaussian_noise"] == (0.04, 0.06, 0.08, 0.09, 0.10)
    assert SHIFT_PARAMS["gaussian_blur"] == (0.4, 0.6, 0.7, 0.8, 1.0)
    assert SHIFT_PARAMS["contrast"] == (0.75, 0.5, 0.4, 0.3, 0.15)
    assert shift_parameter("contrast", 5) == 0.15


@pytest.mark.parametrize("kind", SHIFT_KINDS)
def test_shift_shape_range_determinism(kind):
    x = torch.rand(3, 3, 16, 16)
    x[0, 0, :4] = 0.0
    x[0, 1, :4] = 1.0                                               # exercise clipping
    before = x.clone()
    for s in range(1, 6):
        out = shift_images(x, kind, s, gen(7))
        assert out.shape == x.shape and out.dtype == x.dtype
        assert float(out.min()) >= 0.0 and float(out.max()) <= 1.0
        assert torch.equal(out, shift_images(x, kind, s, gen(7)))
        assert not torch.equal(out, x)
    assert torch.equal(x, before)                                    # input untouched
    x64 = x.double()
    assert shift_images(x64, kind, 3, gen(0)).dtype == torch.float64


def test_noise_std_and_monotone():
    x = torch.full((8, 3, 32, 32), 0.5)                              # 5 sigma from the clip at 0.1
    deltas = [shift_images(x, "gaussian_noise", s, gen(3)) - x for s in range(1, 6)]
    for s, d in zip(range(1, 6), deltas):
        assert d.std().item() == pytest.approx(SHIFT_PARAMS["gaussian_noise"][s - 1], rel=0.03)
    # same generator -> same z, so |clip(x + c z) - x| is pointwise non-decreasing in c
    x = torch.rand(4, 3, 16, 16)
    dist = [(shift_images(x, "gaussian_noise", s, gen(3)) - x).abs() for s in range(1, 6)]
    for a, b in zip(dist, dist[1:]):
        assert bool((b >= a - 1e-7).all()) and b.mean() > a.mean()
    assert not torch.equal(shift_images(x, "gaussian_noise", 1, gen(3)),
                           shift_images(x, "gaussian_noise", 1, gen(4)))


def test_blur_matches_scipy_and_monotone():
    ndimage = pytest.importorskip("scipy.ndimage")
    x = torch.rand(2, 3, 20, 24, dtype=torch.float64)
    for s, sigma in enumerate(SHIFT_PARAMS["gaussian_blur"], start=1):
        ref = ndimage.gaussian_filter(x.numpy(), sigma=(0, 0, sigma, sigma), mode="nearest",
                                      truncate=4.0)
        out = shift_images(x, "gaussian_blur", s, gen())
        assert np.allclose(out.numpy(), np.clip(ref, 0, 1), atol=1e-12)
    mse = [float(((shift_images(x, "gaussian_blur", s, gen()) - x) ** 2).mean())
           for s in range(1, 6)]
    assert all(b > a for a, b in zip(mse, mse[1:]))
    flat = torch.full((1, 1, 5, 5), 0.3, dtype=torch.float64)        # constant: a fixed point
    assert torch.allclose(shift_images(flat, "gaussian_blur", 5, gen()), flat)
    tiny = torch.rand(1, 1, 1, 2)                                    # kernel wider than the image
    assert shift_images(tiny, "gaussian_blur", 5, gen()).shape == (1, 1, 1, 2)


def test_contrast_exact_and_monotone():
    x = torch.rand(2, 3, 8, 8, dtype=torch.float64)
    mean = x.mean(dim=(2, 3), keepdim=True)
    previous = None
    for s, c in enumerate(SHIFT_PARAMS["contrast"], start=1):
        out = shift_images(x, "contrast", s, gen())
        assert torch.allclose(out - x, (1 - c) * (mean - x))         # |out - x| = (1 - c)|x - m|
        assert torch.allclose(out.mean(dim=(2, 3), keepdim=True), mean)
        dist = (out - x).abs()
        if previous is not None:
            assert bool((dist >= previous - 1e-12).all()) and dist.sum() > previous.sum()
        previous = dist


# ----------------------------------------------------------------------------- bad inputs

GOOD_P = [[0.6, 0.4], [0.2, 0.8]]
GOOD_Y = [0, 1]


@pytest.mark.parametrize("probs, labels, name", [
    ([0.5, 0.5], [0], "probs"),                                      # 1-D
    ([[1.0], [1.0]], GOOD_Y, "probs"),                               # K = 1
    (torch.empty(0, 3), [], "probs"),                                # N = 0
    ([[math.nan, 1.0], [0.2, 0.8]], GOOD_Y, "probs"),
    ([[1.2, -0.2], [0.2, 0.8]], GOOD_Y, "probs"),
    ([[0.6, 0.6], [0.2, 0.8]], GOOD_Y, "probs"),                     # row sums to 1.2
    ([[True, False], [False, True]], GOOD_Y, "probs"),
    ("abc", GOOD_Y, "probs"),
    (GOOD_P, [0.0, 1.0], "labels"),                                  # float labels
    (GOOD_P, [0, 2], "labels"),                                      # out of range
    (GOOD_P, [-1, 0], "labels"),
    (GOOD_P, [0], "labels"),                                         # wrong length
    (GOOD_P, [[0, 1]], "labels"),
])
def test_metrics_reject_bad_inputs(probs, labels, name):
    for fn in (nll, brier, ece, reliability):
        with pytest.raises(ValueError, match=rf"^{name}\b") as info:
            fn(probs, labels)
        assert "\n" not in str(info.value)
    if name == "probs":
        with pytest.raises(ValueError, match=r"^probs\b"):
            predictive_entropy(probs)


@pytest.mark.parametrize("bins", [0, -3, 2.0, True, None])
def test_bad_bins(bins):
    for fn in (ece, reliability):
        with pytest.raises(ValueError, match=r"^bins\b"):
            fn(GOOD_P, GOOD_Y, bins)


@pytest.mark.parametrize("images, kind, severity, generator, name", [
    (torch.rand(1, 1, 4, 4), "fog", 1, "g", "kind"),
    (torch.rand(1, 1, 4, 4), None, 1, "g", "kind"),
    (torch.rand(1, 1, 4, 4), "contrast", 0, "g", "severity"),
    (torch.rand(1, 1, 4, 4), "contrast", 6, "g", "severity"),
    (torch.rand(1, 1, 4, 4), "contrast", 2.0, "g", "severity"),
    (torch.rand(1, 1, 4, 4), "contrast", True, "g", "severity"),
    (torch.rand(1, 1, 4, 4), "gaussian_noise", 1, None, "generator"),
    (torch.rand(1, 1, 4, 4), "gaussian_noise", 1, 0, "generator"),
    (torch.rand(1, 4, 4), "contrast", 1, "g", "images"),
    (torch.rand(0, 1, 4, 4), "contrast", 1, "g", "images"),
    (torch.rand(1, 1, 4, 4) + 1.0, "contrast", 1, "g", "images"),
    (-torch.rand(1, 1, 4, 4) - 0.1, "contrast", 1, "g", "images"),
    (torch.full((1, 1, 4, 4), math.nan), "contrast", 1, "g", "images"),
    (torch.ones(1, 1, 4, 4, dtype=torch.uint8), "contrast", 1, "g", "images"),
    (np.random.rand(1, 1, 4, 4), "contrast", 1, "g", "images"),
])
def test_shift_rejects_bad_inputs(images, kind, severity, generator, name):
    if generator == "g":
        generator = gen()
    with pytest.raises(ValueError, match=rf"^(unknown |invalid )?{name}\b") as info:
        shift_images(images, kind, severity, generator)
    assert "\n" not in str(info.value)
