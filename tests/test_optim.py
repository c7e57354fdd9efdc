"""Oracle tests for difflab.optim.Langevin: exact SGD at temperature 0, reference == foreach,
noise = scale * unit noise from the own generator, stationary variance, state_dict round-trip."""
import copy
import math

import numpy as np
import pytest
import torch
from scipy.linalg import solve_discrete_lyapunov

from difflab.optim import Langevin
from difflab.optim.normal import NormalStream

torch.set_num_threads(1)


def _model(seed=0):
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(7, 13), torch.nn.Tanh(), torch.nn.Linear(13, 3))


def _data(seed=1, n=32):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 7, generator=g), torch.randn(n, 3, generator=g)


def _train(model, opt, steps, x, y, start=0):
    losses = []
    for k in range(start, start + steps):
        idx = slice((k * 8) % 32, (k * 8) % 32 + 8)
        opt.zero_grad()
        loss = torch.nn.functional.mse_loss(model(x[idx]), y[idx])
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return losses


def _flat(model):
    return torch.cat([p.detach().reshape(-1) for p in model.parameters()])


@pytest.mark.parametrize("foreach", [False, True])
@pytest.mark.parametrize("kw", [dict(), dict(momentum=0.9), dict(momentum=0.9, dampening=0.1),
                                dict(momentum=0.8, nesterov=True, weight_decay=1e-2),
                                dict(weight_decay=5e-3)])
def test_temperature_zero_is_sgd_bit_exact(foreach, kw):
    x, y = _data()
    m1, m2 = _model(), _model()
    sgd = torch.optim.SGD(m1.parameters(), lr=0.05, foreach=foreach, **kw)
    lan = Langevin(m2.parameters(), lr=0.05, temperature=0.0, foreach=foreach, seed=3, **kw)
    _train(m1, sgd, 60, x, y)
    _train(m2, lan, 60, x, y)
    assert torch.equal(_flat(m1), _flat(m2))
    if kw.get("momentum"):
        for p1, p2 in zip(m1.parameters(), m2.parameters()):
            assert torch.equal(sgd.state[p1]["momentum_buffer"], lan.state[p2]["momentum_buffer"])


@pytest.mark.parametrize("kw", [dict(noise="langevin"), dict(noise="constant"),
                                dict(noise="annealed"), dict(noise="langevin", momentum=0.9),
                                dict(noise="langevin", momentum=0.9, nesterov=True),
                                dict(noise="langevin", preconditioner="rmsprop", weight_decay=1e-3),
                                dict(noise="annealed", momentum=0.5, preconditioner="rmsprop"),
                                dict(noise="langevin", temperature_schedule="cosine",
                                     temperature_end=1e-5, schedule_steps=20)])
@pytest.mark.parametrize("source", ["seed", "torch.Generator"])
def test_foreach_equals_reference_loop(kw, source):
    x, y = _data()
    m1, m2 = _model(), _model()

    def noise_source():
        return dict(seed=5) if source == "seed" else dict(generator=torch.Generator().manual_seed(5))
    o1 = Langevin(m1.parameters(), lr=0.03, temperature=1e-3, foreach=False, **noise_source(), **kw)
    o2 = Langevin(m2.parameters(), lr=0.03, temperature=1e-3, foreach=True, **noise_source(), **kw)
    _train(m1, o1, 40, x, y)
    _train(m2, o2, 40, x, y)
    assert torch.equal(_flat(m1), _flat(m2))
    assert not torch.equal(_flat(m1), _flat(_model()))


def _unit_noise(source, params):
    """The documented draw: one N(0, I) vector over the group's params in order (the next
    elements of the seed's NormalStream, or one normal_ from a torch.Generator)."""
    flat = torch.empty(sum(p.numel() for p in params))
    if isinstance(source, torch.Generator):
        return flat.normal_(generator=source)
    return NormalStream(source).normal_(flat)


@pytest.mark.parametrize("mode,scale", [("langevin", lambda lr, d: math.sqrt(2 * lr * d)),
                                        ("constant", lambda lr, d: d)])
@pytest.mark.parametrize("foreach", [False, True])
@pytest.mark.parametrize("source", ["seed", "torch.Generator"])
def test_one_step_noise_is_scale_times_unit_noise(mode, scale, foreach, source):
    lr, d = 0.1, 0.02
    m1, m2 = _model(), _model()
    x, y = _data()
    for m in (m1, m2):
        torch.nn.functional.mse_loss(m(x), y).backward()
    torch.optim.SGD(m1.parameters(), lr=lr).step()
    kw = dict(seed=11) if source == "seed" else dict(generator=torch.Generator().manual_seed(11))
    Langevin(m2.parameters(), lr=lr, temperature=d, noise=mode, foreach=foreach, **kw).step()
    xi = _unit_noise(11 if source == "seed" else torch.Generator().manual_seed(11),
                     list(m2.parameters()))
    # Tutorial update: theta - lr*grad + D*xi; Langevin: theta - lr*grad + sqrt(2 lr D)*xi
    torch.testing.assert_close(_flat(m2) - _flat(m1), scale(lr, d) * xi, rtol=0, atol=2e-7)


def test_constant_mode_matches_tutorial_loop():
    """Tutorial code: for p: p -= lr * p.grad; p += torch.randn_like(p) * D (our draw order)."""
    lr, d = 0.05, 3e-3
    x, y = _data()
    m1, m2 = _model(), _model()
    opt = Langevin(m2.parameters(), lr=lr, temperature=d, noise="constant", seed=2)
    stream = NormalStream(2)
    for _ in range(10):
        for m in (m1, m2):
            m.zero_grad()
            torch.nn.functional.mse_loss(m(x), y).backward()
        flat = stream.normal_(torch.empty(sum(p.numel() for p in m1.parameters())))
        with torch.no_grad():
            offset = 0
            for p in m1.parameters():
                p -= lr * p.grad
                p += flat[offset:offset + p.numel()].view_as(p) * d
                offset += p.numel()
        opt.step()
    torch.testing.assert_close(_flat(m2), _flat(m1), rtol=0, atol=1e-6)


@pytest.mark.parametrize("foreach", [False, True])
def test_stationary_variance_on_quadratic(foreach):
    """theta <- theta - lr*theta + sqrt(2 lr D) xi has stationary variance D / (1 - lr/2)."""
    lr, d, dim = 0.2, 0.5, 20000
    theta = torch.zeros(dim, requires_grad=True)
    opt = Langevin([theta], lr=lr, temperature=d, seed=0, foreach=foreach)
    samples = []
    for k in range(400):
        theta.grad = theta.detach().clone()   # grad of theta^2 / 2
        opt.step()
        if k >= 100 and k % 10 == 0:         # burn-in 100 steps (contraction 0.8^100)
            samples.append(theta.detach().var().item())
    expected = d / (1 - lr / 2)
    assert abs(np.mean(samples) / expected - 1) < 0.02
    # the tutorial's constant mode has variance D^2 / (1 - (1 - lr)^2) instead
    theta2 = torch.zeros(dim, requires_grad=True)
    opt2 = Langevin([theta2], lr=lr, temperature=d, noise="constant", seed=0, foreach=foreach)
    for k in range(150):
        theta2.grad = theta2.detach().clone()
        opt2.step()
    assert abs(theta2.detach().var().item() / (d * d / (1 - (1 - lr) ** 2)) - 1) < 0.05


def test_sghmc_stationary_variance_matches_discrete_lyapunov():
    """Momentum noise in the buffer: exact stationary covariance of the linear recursion."""
    lr, mu, d, dim = 0.05, 0.9, 0.3, 20000
    theta = torch.zeros(dim, requires_grad=True)
    opt = Langevin([theta], lr=lr, temperature=d, momentum=mu, seed=1)
    c = math.sqrt(2 * (1 - mu) * d / lr)
    # state (buf, theta): buf' = mu buf + theta + c xi ; theta' = theta - lr buf'
    a = np.array([[mu, 1.0], [-lr * mu, 1 - lr]])
    b = np.array([[c], [-lr * c]])
    expected = solve_discrete_lyapunov(a, b @ b.T)[1, 1]
    vals = []
    for k in range(1500):
        theta.grad = theta.detach().clone()
        opt.step()
        if k >= 500 and k % 20 == 0:
            vals.append(theta.detach().var().item())
    assert abs(np.mean(vals) / expected - 1) < 0.03
    assert abs(expected / d - 1) < 0.1   # SGHMC keeps the temperature close to D


def test_state_dict_round_trip_resumes_exactly():
    x, y = _data()
    kw = dict(lr=0.03, temperature=1e-3, momentum=0.9, preconditioner="rmsprop", seed=4)
    m1 = _model()
    o1 = Langevin(m1.parameters(), **kw)
    _train(m1, o1, 30, x, y)
    m2 = _model()
    o2 = Langevin(m2.parameters(), **kw)
    _train(m2, o2, 10, x, y)
    saved_model = copy.deepcopy(m2.state_dict())
    saved_opt = copy.deepcopy(o2.state_dict())
    assert saved_opt["param_groups"][0]["step"] == 10
    m3 = _model(seed=9)
    m3.load_state_dict(saved_model)
    o3 = Langevin(m3.parameters(), lr=0.03, temperature=1e-3, momentum=0.9,
                  preconditioner="rmsprop", seed=123)
    o3.load_state_dict(saved_opt)
    _train(m3, o3, 20, x, y, start=10)
    assert torch.equal(_flat(m1), _flat(m3))


def test_state_dict_round_trip_with_torch_generator_and_mismatch_error():
    x, y = _data()
    m1, m2 = _model(), _model()
    o1 = Langevin(m1.parameters(), lr=0.03, temperature=1e-3,
                  generator=torch.Generator().manual_seed(1))
    _train(m1, o1, 5, x, y)
    m2.load_state_dict(m1.state_dict())
    o2 = Langevin(m2.parameters(), lr=0.03, temperature=1e-3,
                  generator=torch.Generator().manual_seed(99))
    o2.load_state_dict(o1.state_dict())
    _train(m1, o1, 5, x, y, start=5)
    _train(m2, o2, 5, x, y, start=5)
    assert torch.equal(_flat(m1), _flat(m2))
    o3 = Langevin(_model().parameters(), lr=0.03, temperature=1e-3, seed=0)
    with pytest.raises(ValueError, match="noise source"):
        o3.load_state_dict(o1.state_dict())


def test_per_group_temperatures_and_schedule():
    a = torch.zeros(1000, requires_grad=True)
    b = torch.zeros(1000, requires_grad=True)
    c = torch.zeros(1000, requires_grad=True)
    opt = Langevin([{"params": [a], "temperature": 0.0},
                    {"params": [b], "temperature": 0.5},
                    {"params": [c], "temperature": 0.5, "temperature_schedule": "linear",
                     "temperature_end": 0.0, "schedule_steps": 1}], lr=0.1, seed=0)
    for p in (a, b, c):
        p.grad = torch.zeros_like(p)
    opt.step()
    assert torch.equal(a, torch.zeros_like(a))
    assert abs(b.detach().std().item() / math.sqrt(2 * 0.1 * 0.5) - 1) < 0.1
    assert abs(c.detach().std().item() / math.sqrt(2 * 0.1 * 0.5) - 1) < 0.1
    c_before, b_before = c.detach().clone(), b.detach().clone()
    opt.step()   # schedule reached temperature_end = 0 for c's group
    assert torch.equal(c, c_before)
    assert not torch.equal(b, b_before)


def test_global_rng_untouched():
    torch.manual_seed(42)
    expected = torch.rand(5)
    torch.manual_seed(42)
    theta = torch.zeros(100, requires_grad=True)
    opt = Langevin([theta], lr=0.1, temperature=1.0)     # unseeded: still its own generator
    theta.grad = torch.ones(100)
    opt.step()
    assert torch.equal(torch.rand(5), expected)
    assert theta.detach().std() > 0


def test_bad_options_raise_clear_errors():
    p = [torch.zeros(2, requires_grad=True)]
    with pytest.raises(ValueError, match="noise 'gaussian'"):
        Langevin(p, noise="gaussian")
    with pytest.raises(ValueError, match="temperature"):
        Langevin(p, temperature=-1)
    with pytest.raises(ValueError, match="schedule_steps"):
        Langevin(p, temperature_schedule="linear")
