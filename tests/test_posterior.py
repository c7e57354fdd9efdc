"""Oracle tests for posterior sampling on difflab.optim: SGLD/SGHMC through ``Langevin`` with
``sgld_hyperparameters``/``sghmc_hyperparameters`` against the closed-form posterior of Bayesian
linear regression, the cyclical step size (Zhang et al. 2020, eq. 1) and sampling schedule at
exact indices, the collectors' posterior predictive, and state_dict round trips.

Monte Carlo tolerances are not tuned: each is ``Z * std / sqrt(ESS)`` with the ESS estimated from
the chain itself (Geyer's initial monotone sequence), plus, for second moments, the exact
discretization bias bound of ``gaussian_stationary_covariance``. Z = 4: with 24 such comparisons
per sampler (4 means, 10 covariance entries, 5 predictive means, 5 predictive variances), the
family-wise false-alarm probability of a correct sampler is <= 48 * P(|N(0,1)| > 4) = 0.3%.
"""
import copy
import io
import json
import math

import numpy as np
import pytest
import torch
from scipy.linalg import solve_discrete_lyapunov
from torch import nn

from difflab.optim import Langevin
from difflab.optim.cyclical import (CyclicalStepSize, SamplingSchedule, cycle_length,
                                    cyclical_step_size, in_exploration)
from difflab.optim.normal import reference_normal
from difflab.optim.posterior import PosteriorCollector, PredictiveAverage
from difflab.optim.sgmcmc import (effective_sample_size, gaussian_stationary_covariance,
                                  sghmc_hyperparameters, sgld_hyperparameters)

torch.set_num_threads(1)
F64 = torch.float64
Z = 4.0

# Bayesian linear regression y = w^T x + b + N(0, SIGMA^2), prior theta = (w, b) ~ N(0, I / LAM_P)
N, SIGMA, LAM_P = 64, 1.0, 1.0
SQUARED_SINGULAR_VALUES = (55.0, 63.0, 71.0)    # -> posterior precision eigenvalues 56, 64, 65, 72


def _blr_problem():
    """Design with centred columns (orthogonal to the bias column) and chosen singular values,
    rotated so the posterior covariance has off-diagonal terms. Exact posterior:
    A = D^T D / sigma^2 + lam_p I (precision of U), m = A^{-1} D^T y / sigma^2, Sigma = A^{-1}."""
    g = torch.Generator().manual_seed(0)
    raw = torch.randn(N, 4, generator=g, dtype=F64)
    raw[:, 0] = 1.0
    basis = torch.linalg.qr(raw)[0][:, 1:]                  # orthonormal, orthogonal to ones
    rotation = torch.linalg.qr(torch.randn(3, 3, generator=g, dtype=F64))[0]
    x = basis @ torch.diag(torch.tensor(SQUARED_SINGULAR_VALUES, dtype=F64).sqrt()) @ rotation.T
    y = x @ torch.tensor([1.0, -0.5, 0.8], dtype=F64) + 0.3 + SIGMA * torch.randn(
        N, generator=g, dtype=F64)
    design = torch.cat([x, torch.ones(N, 1, dtype=F64)], 1)
    precision = design.T @ design / SIGMA ** 2 + LAM_P * torch.eye(4, dtype=F64)
    mean = torch.linalg.solve(precision, design.T @ y / SIGMA ** 2)
    x_test = 1.5 * torch.randn(5, 3, generator=g, dtype=F64)
    return dict(x=x, y=y, design=design, precision=precision, mean=mean,
                covariance=torch.linalg.inv(precision), x_test=x_test)


PROBLEM = _blr_problem()


def _linear_model():
    model = nn.Linear(3, 1)
    nn.init.zeros_(model.weight)
    nn.init.zeros_(model.bias)
    return model


def _mean_nll(model, x, y):
    """Mean Gaussian NLL over the data (up to a constant): what the optimizer differentiates."""
    return ((model(x).squeeze(-1) - y) ** 2).mean() / (2 * SIGMA ** 2)


class _FullBatchGradient:
    """grad of the mean NLL, ``(D^T D theta - D^T y) / (sigma^2 N)``, written into .grad
    (autograd gives the same numbers, ``test_full_batch_gradient_matches_autograd``; this is 3x
    cheaper per step, which buys the Monte Carlo sample size)."""

    def __init__(self, problem):
        d = problem["design"]
        self.gram = (d.T @ d / (SIGMA ** 2 * N)).float()
        self.shift = (d.T @ problem["y"] / (SIGMA ** 2 * N)).float()

    def __call__(self, model):
        theta = torch.cat([model.weight.detach().reshape(-1), model.bias.detach()])
        grad = self.gram @ theta - self.shift
        model.weight.grad = grad[:3].reshape(1, 3)
        model.bias.grad = grad[3:]


def test_full_batch_gradient_matches_autograd():
    model = nn.Linear(3, 1)
    _FullBatchGradient(PROBLEM)(model)
    expected = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    _mean_nll(model, PROBLEM["x"].float(), PROBLEM["y"].float()).backward()
    for p, e in zip(model.parameters(), expected):
        torch.testing.assert_close(p.grad, e, rtol=1e-5, atol=1e-6)


# ---------------------------------------------------------------------------------------------
# The hyperparameter helpers reproduce the papers' updates on the sum potential U
# ---------------------------------------------------------------------------------------------
def _grad_u(theta):
    """grad U = A theta - D^T y / sigma^2 (prior included), float64."""
    return PROBLEM["precision"] @ theta - PROBLEM["design"].T @ PROBLEM["y"] / SIGMA ** 2


def _theta(model):
    return torch.cat([model.weight.detach().reshape(-1), model.bias.detach()]).to(F64)


def test_sgld_hyperparameters_give_welling_teh_update_tempered():
    """One Langevin step == theta - h grad U + sqrt(2 h T) xi (W&T eq. 4 with epsilon = 2h,
    tempered), xi being the optimizer's first 4 stream elements."""
    h, temperature, seed = 3e-3, 0.5, 11
    hp = sgld_hyperparameters(N, h, temperature, prior_precision=LAM_P)
    assert hp == dict(lr=N * h, temperature=temperature / N, weight_decay=LAM_P / N)
    model = nn.Linear(3, 1)
    theta0 = _theta(model)
    opt = Langevin(model.parameters(), **hp, seed=seed)
    grad = _FullBatchGradient(PROBLEM)
    grad(model)
    opt.step()
    xi = torch.from_numpy(reference_normal(seed, 0, 4)).to(F64)
    expected = theta0 - h * _grad_u(theta0) + math.sqrt(2 * h * temperature) * xi
    torch.testing.assert_close(_theta(model), expected, rtol=0, atol=2e-6)


def test_sghmc_hyperparameters_give_chen_eq15_update_tempered():
    """Three Langevin(momentum) steps == Chen et al. 2014 eq. (15):
    v' = v - eta grad U - alpha v + N(0, 2 alpha eta T), theta' = theta + v'."""
    eta, alpha, temperature, seed = 2e-3, 0.2, 0.7, 5
    hp = sghmc_hyperparameters(N, eta, alpha, temperature, prior_precision=LAM_P)
    assert hp == dict(lr=N * eta, momentum=1 - alpha, temperature=temperature / N,
                      weight_decay=LAM_P / N)
    model = nn.Linear(3, 1)
    theta = _theta(model)
    opt = Langevin(model.parameters(), **hp, seed=seed)
    grad = _FullBatchGradient(PROBLEM)
    v = torch.zeros(4, dtype=F64)
    for t in range(3):
        grad(model)
        opt.step()
        xi = torch.from_numpy(reference_normal(seed, 4 * t, 4)).to(F64)
        # Langevin adds +c xi to the buffer and v = -lr * buffer: the noise enters v as -xi
        v = v - eta * _grad_u(theta) - alpha * v - math.sqrt(2 * alpha * eta * temperature) * xi
        theta = theta + v
        torch.testing.assert_close(_theta(model), theta, rtol=0, atol=5e-6)


# ---------------------------------------------------------------------------------------------
# Exact stationary covariance and ESS (the tools the tolerances below rely on)
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("friction", [1.0, 0.1])
def test_gaussian_stationary_covariance_matches_discrete_lyapunov(friction):
    """Joint linear recursion of (v, theta - m) in eq. (15) form, solved exactly by scipy."""
    a = PROBLEM["precision"].numpy()
    h, temperature, mu = 5e-3, 0.8, 1.0 - friction
    eye = np.eye(4)
    if mu == 0:    # SGLD: x' = (I - hA) x + sqrt(2hT) xi
        transition, noise = eye - h * a, math.sqrt(2 * h * temperature) * eye
    else:          # v' = mu v - hA x + s xi, x' = x + v'
        s = math.sqrt(2 * friction * h * temperature)
        transition = np.block([[mu * eye, -h * a], [mu * eye, eye - h * a]])
        noise = np.vstack([s * eye, s * eye])
    joint = solve_discrete_lyapunov(transition, noise @ noise.T)
    expected = joint[-4:, -4:]
    got = gaussian_stationary_covariance(PROBLEM["precision"], h, temperature, friction).numpy()
    np.testing.assert_allclose(got, expected, rtol=1e-9, atol=1e-12)


def test_effective_sample_size_of_ar1_and_iid():
    """AR(1) with coefficient rho has tau = (1 + rho) / (1 - rho) (= 9 for rho = 0.8)."""
    rng = np.random.default_rng(0)
    n, chains, rho = 4000, 64, 0.8
    x = np.zeros((n, chains))
    eps = rng.standard_normal((n, chains))
    for t in range(1, n):
        x[t] = rho * x[t - 1] + eps[t]
    ess = effective_sample_size(torch.from_numpy(x))
    assert abs(ess.mean().item() / (n / 9.0) - 1) < 0.1
    iid = effective_sample_size(torch.from_numpy(eps))
    assert abs(iid.mean().item() / n - 1) < 0.1
    constant = effective_sample_size(torch.ones(100, 2))
    assert torch.equal(constant, torch.full((2,), 100.0, dtype=F64))


# ---------------------------------------------------------------------------------------------
# SGLD and SGHMC reach the exact posterior and posterior predictive
# ---------------------------------------------------------------------------------------------
def _mc_se(chain):
    """Monte Carlo standard error of the mean of each coordinate of chain [S, ...]."""
    return chain.std(0) / effective_sample_size(chain).sqrt()


# (name, hyperparameters, h, friction, steps, thinning). h is chosen so the discretization bias
# of the covariance, <= h T / (2 (1 + mu) - h lam_max) (gaussian_stationary_covariance), is at
# most 2.5% of the smallest posterior variance: h lam_max / (2 (1 + mu)) = 0.0252 / 0.0246.
SAMPLERS = [
    ("sgld", sgld_hyperparameters(N, 7e-4, prior_precision=LAM_P), 7e-4, 1.0, 25000, 8),
    ("sghmc", sghmc_hyperparameters(N, 1.3e-3, 0.1, prior_precision=LAM_P), 1.3e-3, 0.1,
     11000, 4),
]
BURN_IN = 1000   # from theta = 0, |theta - m| shrinks at least by (1 - h lam_min)^1000 < 1e-16
                 # (SGLD) and sqrt(mu)^1000 < 1e-22 (SGHMC): transient bias negligible


@pytest.mark.parametrize("name,hp,h,friction,steps,thinning", SAMPLERS,
                         ids=[s[0] for s in SAMPLERS])
def test_langevin_samples_exact_blr_posterior_and_predictive(name, hp, h, friction, steps,
                                                             thinning):
    schedule = SamplingSchedule(burn_in=BURN_IN, thinning=thinning)
    model = _linear_model()
    opt = Langevin(model.parameters(), **hp, seed=2024)
    collector = PosteriorCollector(model, schedule, max_snapshots=10 ** 5)
    grad = _FullBatchGradient(PROBLEM)
    for _ in range(steps):
        grad(model)
        opt.step()
        collector.step()
    assert len(collector) == (steps - BURN_IN) // thinning
    assert collector.snapshot_steps == schedule.collected_steps(steps)

    mean, cov = PROBLEM["mean"], PROBLEM["covariance"]
    lam_max = torch.linalg.eigvalsh(PROBLEM["precision"]).max().item()
    bias = h / (2 * (2 - friction) - h * lam_max)          # spectral bound, T = 1
    assert bias <= 0.025 * cov.diagonal().min().item()

    samples = collector.flat_samples().to(F64)             # [S, 4]: weight (3), bias (1)
    assert torch.all((samples.mean(0) - mean).abs() <= Z * _mc_se(samples))
    centred = samples - samples.mean(0)
    products = centred[:, :, None] * centred[:, None, :]   # sample covariance = their mean
    tolerance = Z * _mc_se(products) + bias
    assert torch.all((products.mean(0) - cov).abs() <= tolerance)
    assert torch.all(tolerance.diagonal() < 0.35 * cov.diagonal())   # the test has power

    # posterior predictive at new inputs: mean x~^T m, variance x~^T Sigma x~ + sigma^2
    x_test = PROBLEM["x_test"]
    x_aug = torch.cat([x_test, torch.ones(len(x_test), 1, dtype=F64)], 1)
    before = [p.detach().clone() for p in model.parameters()]
    pred_mean, pred_var = collector.predictive_moments(model, x_test.float(), task="regression")
    assert all(torch.equal(p, b) for p, b in zip(model.parameters(), before))   # restored
    outputs = samples @ x_aug.T                           # [S, 5], what the model computed
    exact_mean = x_aug @ mean
    assert torch.all((pred_mean.squeeze(-1).to(F64) - exact_mean).abs()
                     <= Z * _mc_se(outputs) + 1e-5)
    exact_var = torch.einsum("ki,ij,kj->k", x_aug, cov, x_aug) + SIGMA ** 2
    spread = (outputs - outputs.mean(0)) ** 2
    var_tolerance = Z * _mc_se(spread) + bias * (x_aug ** 2).sum(1) + 1e-5
    assert torch.all((pred_var.squeeze(-1).to(F64) + SIGMA ** 2 - exact_var).abs()
                     <= var_tolerance)


# ---------------------------------------------------------------------------------------------
# Cyclical step size and sampling schedule: exact values and indices
# ---------------------------------------------------------------------------------------------
def test_cyclical_step_size_values_and_cycle_boundaries():
    a0 = 0.5
    assert cycle_length(100, 4) == 25 and cycle_length(10, 3) == 4 and cycle_length(7, 7) == 1
    for start in (0, 25, 50, 75, 100):                     # first step of each cycle: alpha_0
        assert cyclical_step_size(start, a0, 100, 4) == a0
    assert cyclical_step_size(24, a0, 100, 4) == pytest.approx(
        a0 / 2 * (math.cos(math.pi * 24 / 25) + 1), rel=1e-15)
    assert cyclical_step_size(49, a0, 100, 4) == cyclical_step_size(24, a0, 100, 4)
    assert cyclical_step_size(10, a0, 80, 4) == pytest.approx(a0 / 2, rel=1e-15)   # mid-cycle
    assert cyclical_step_size(5, a0, 80, 4) == pytest.approx(
        a0 / 2 * (math.cos(math.pi / 4) + 1), rel=1e-15)
    values = [cyclical_step_size(t, 1.0, 10, 3) for t in range(10)]   # L = 4, last cycle cut
    c = [0.5 * (math.cos(math.pi * p / 4) + 1) for p in range(4)]
    assert values == pytest.approx(c + c + c[:2], rel=1e-15)
    assert min(values) > 0
    stages = [in_exploration(t, 10, 3, 0.5) for t in range(10)]
    assert stages == [True, True, False, False] * 2 + [True, True]
    # beta = 0.7 with L = 10: position 7 (r = 0.7) is sampling, 6 is exploring
    assert in_exploration(6, 20, 2, 0.7) and not in_exploration(7, 20, 2, 0.7)
    assert not any(in_exploration(t, 20, 2, 0.0) for t in range(20))


def test_sampling_schedule_indices_and_counts():
    plain = SamplingSchedule(burn_in=5, thinning=3)
    assert plain.collected_steps(20) == [7, 10, 13, 16, 19]
    assert SamplingSchedule().collected_steps(4) == [0, 1, 2, 3]
    assert len(SamplingSchedule(burn_in=1000, thinning=8).collected_steps(25000)) == 3000
    # cycles of 10, exploring positions 0-2, every 2nd step counted back from the cycle's end
    cyc = SamplingSchedule.cyclical(20, 2, 0.3, thinning=2)
    assert cyc.cycle_length == 10
    assert cyc.collected_steps(20) == [3, 5, 7, 9, 13, 15, 17, 19]
    assert SamplingSchedule.cyclical(20, 2, 0.3, thinning=2, samples_per_cycle=2
                                     ).collected_steps(20) == [7, 9, 17, 19]
    assert SamplingSchedule.cyclical(20, 2, 0.3, thinning=2, burn_in=10
                                     ).collected_steps(20) == [13, 15, 17, 19]
    short_last = SamplingSchedule.cyclical(10, 3, 0.5)     # L = 4, last cycle = steps 8, 9
    assert short_last.collected_steps(10) == [2, 3, 6, 7]
    assert short_last.collected_steps(12) == [2, 3, 6, 7, 10, 11]
    # same stage split as the step-size schedule
    for t in range(40):
        collect = SamplingSchedule.cyclical(40, 3, 0.4).should_collect(t)
        assert collect == (not in_exploration(t, 40, 3, 0.4))
    assert SamplingSchedule.from_dict(json.loads(json.dumps(cyc.to_dict()))) == cyc
    for bad in (dict(thinning=0), dict(burn_in=-1), dict(exploration=0.5),
                dict(cycle_length=4, exploration=1.0), dict(cycle_length=4, samples_per_cycle=0)):
        with pytest.raises(ValueError):
            SamplingSchedule(**bad)


def test_cyclical_scheduler_drives_langevin_lr_and_noise():
    """lr follows eq. (1) step by step; no noise is drawn in the exploration stage (the stream
    does not advance), the initial temperature is used in the sampling stage."""
    theta = torch.zeros(6, requires_grad=True)
    opt = Langevin([theta], lr=0.2, temperature=0.3, seed=0)
    sched = CyclicalStepSize(opt, total_steps=12, cycles=3, exploration=0.5)
    for t in range(12):
        group = opt.param_groups[0]
        assert sched.last_epoch == t
        assert group["lr"] == cyclical_step_size(t, 0.2, 12, 3)
        exploring = in_exploration(t, 12, 3, 0.5)
        assert group["temperature"] == (0.0 if exploring else 0.3)
        before = opt.noise_stream.position
        theta.grad = theta.detach().clone()
        opt.step()
        assert opt.noise_stream.position - before == (0 if exploring else 6)
        sched.step()
    noisy = Langevin([theta], lr=0.2, temperature=0.3, seed=0)
    sched = CyclicalStepSize(noisy, 12, 3, 0.5, exploration_noise=True)
    assert noisy.param_groups[0]["temperature"] == 0.3 and sched.exploring()
    sgd = torch.optim.SGD([theta], lr=0.1)                 # plain cyclical lr for any optimizer
    sched = CyclicalStepSize(sgd, 8, 2)
    lrs = []
    for _ in range(8):
        lrs.append(sgd.param_groups[0]["lr"])
        sgd.step()
        sched.step()
    assert lrs == [cyclical_step_size(t, 0.1, 8, 2) for t in range(8)]
    with pytest.raises(ValueError, match="temperature_schedule"):
        CyclicalStepSize(Langevin([theta], temperature=1.0, temperature_schedule="linear",
                                  schedule_steps=5), 10, 2)


# ---------------------------------------------------------------------------------------------
# Collectors: overflow rules, predictive, running average
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("overflow,kept,stride", [("drop_oldest", [16, 17, 18, 19], 1),
                                                  ("halve", [7, 15], 8)])
def test_collector_overflow_keeps_exact_steps(overflow, kept, stride):
    theta = nn.Parameter(torch.zeros(2))
    holder = nn.Module()
    holder.theta = theta
    collector = PosteriorCollector(holder, max_snapshots=4, overflow=overflow)
    for t in range(20):
        with torch.no_grad():
            theta.fill_(t)                                 # "optimizer step" t
        collector.step()
    assert collector.snapshot_steps == kept and collector.stride == stride
    assert collector.flat_samples()[:, 0].tolist() == [float(k) for k in kept]


def _classifier(seed):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(5, 8), nn.BatchNorm1d(8), nn.Tanh(), nn.Dropout(0.5),
                         nn.Linear(8, 3))


def test_predictive_averages_softmax_over_snapshots_and_restores_model():
    model = _classifier(0)
    collector = PosteriorCollector(model, max_snapshots=10)
    g = torch.Generator().manual_seed(3)
    x_train, x_test = torch.randn(16, 5, generator=g), torch.randn(7, 5, generator=g)
    states = []
    for _ in range(3):                                     # params and BN statistics change
        with torch.no_grad():
            for p in model.parameters():
                p.add_(0.3 * torch.randn(p.shape, generator=g))
            model(x_train)
        states.append(copy.deepcopy(model.state_dict()))
        collector.collect()
    expected = []
    reference = _classifier(1).eval()
    for state in states:
        reference.load_state_dict(state)
        expected.append(reference(x_test).softmax(-1))
    expected = torch.stack(expected).mean(0)
    current = copy.deepcopy(model.state_dict())
    assert model.training
    probs = collector.predictive(model, x_test)
    torch.testing.assert_close(probs, expected, rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(probs.sum(-1), torch.ones(7))
    assert model.training                                 # mode restored
    for name, tensor in model.state_dict().items():       # parameters and buffers restored
        assert torch.equal(tensor, current[name]), name
    other = _classifier(2)                                 # any model with the same names
    torch.testing.assert_close(collector.predictive(other, (x_test,)), expected,
                               rtol=1e-6, atol=1e-7)
    with pytest.raises(KeyError):
        collector.predictive(nn.Linear(5, 3), x_test)
    with pytest.raises(ValueError, match="task"):
        collector.predictive(model, x_test, task="ranking")


def test_predictive_average_equals_collector_on_same_run():
    model = _linear_model()
    opt = Langevin(model.parameters(), **sgld_hyperparameters(N, 5e-4, prior_precision=LAM_P),
                   seed=7)
    schedule = SamplingSchedule(burn_in=100, thinning=5)
    x_test = PROBLEM["x_test"].float()
    collector = PosteriorCollector(model, schedule, max_snapshots=1000)
    running = PredictiveAverage(model, x_test, schedule, task="regression")
    grad = _FullBatchGradient(PROBLEM)
    for _ in range(400):
        grad(model)
        opt.step()
        assert collector.step() == running.step()
    assert running.count == len(collector) == 60
    mean, var = collector.predictive_moments(model, x_test, task="regression")
    torch.testing.assert_close(running.mean.float(), mean, rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(running.variance.float(), var, rtol=1e-5, atol=1e-9)


# ---------------------------------------------------------------------------------------------
# state_dict round trips: continuing after a reload == never stopping
# ---------------------------------------------------------------------------------------------
def _regression_setup(seed):
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(3, 8), nn.Tanh(), nn.Linear(8, 1))
    opt = Langevin(model.parameters(), **sghmc_hyperparameters(N, 1e-3, 0.2, 0.5,
                                                               prior_precision=LAM_P),
                   seed=seed)
    sched = CyclicalStepSize(opt, total_steps=40, cycles=4, exploration=0.3)
    schedule = SamplingSchedule.cyclical(40, 4, 0.3, thinning=2)
    collector = PosteriorCollector(model, schedule, max_snapshots=5, overflow="halve")
    running = PredictiveAverage(model, PROBLEM["x_test"].float(), schedule, task="regression")
    return model, opt, sched, collector, running


def _run(parts, start, stop):
    model, opt, sched, collector, running = parts
    x, y = PROBLEM["x"].float(), PROBLEM["y"].float()
    for t in range(start, stop):
        batch = slice((t * 16) % N, (t * 16) % N + 16)     # minibatches of the mean NLL
        opt.zero_grad()
        _mean_nll(model, x[batch], y[batch]).backward()
        opt.step()
        sched.step()
        collector.step()
        running.step()


def _through_bytes(state):
    buffer = io.BytesIO()
    torch.save(state, buffer)
    buffer.seek(0)
    return torch.load(buffer, weights_only=True)           # plain tensors and JSON-able data


def test_state_dict_round_trip_continues_exactly():
    straight = _regression_setup(0)
    _run(straight, 0, 40)
    first = _regression_setup(0)
    _run(first, 0, 17)
    saved = _through_bytes({name: obj.state_dict() for name, obj in
                            zip(("model", "opt", "sched", "collector", "running"), first)})
    json.dumps(saved["collector"]["metadata"])
    json.dumps(saved["running"]["metadata"])
    resumed = _regression_setup(99)                        # other init, other noise seed
    model, opt, sched, collector, running = resumed
    model.load_state_dict(saved["model"])
    opt.load_state_dict(saved["opt"])                      # after building the scheduler
    sched.load_state_dict(saved["sched"])
    collector.load_state_dict(saved["collector"])
    running.load_state_dict(saved["running"])
    _run(resumed, 17, 40)

    for p, q in zip(straight[0].parameters(), model.parameters()):
        assert torch.equal(p, q)
    assert straight[1].param_groups[0]["lr"] == opt.param_groups[0]["lr"]
    assert straight[1].param_groups[0]["temperature"] == opt.param_groups[0]["temperature"]
    a, b = straight[3].state_dict(), collector.state_dict()
    assert a["metadata"] == b["metadata"]
    assert a["metadata"]["snapshot_steps"] == [9, 19, 29, 39] and a["metadata"]["stride"] == 4
    for name in a["snapshots"]:
        assert torch.equal(a["snapshots"][name], b["snapshots"][name])
    assert straight[4].count == running.count == len(SamplingSchedule.cyclical(
        40, 4, 0.3, thinning=2).collected_steps(40))
    assert torch.equal(straight[4].mean, running.mean)
    assert torch.equal(straight[4].variance, running.variance)
    with pytest.raises(ValueError, match="tracks tensors"):
        PosteriorCollector(nn.Linear(3, 1)).load_state_dict(saved["collector"])
