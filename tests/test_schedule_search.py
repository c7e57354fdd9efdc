"""Per-model optimized sigma grids (difflab.diffusion.schedule_search) against exact answers:
the closed-form probability-flow ODE of a Gaussian and a many-step teacher on a Gaussian mixture.
Errors are measured on held-out start noise (seed 2), never on the search's own trajectories."""
import itertools
import json
import math

import pytest
import torch

from difflab.data.shape import DataShape
from difflab.diffusion import mixtures, schedules
from difflab.diffusion import schedule_dp as dp
from difflab.diffusion import schedule_search as ss
from difflab.diffusion import schedule_store as store
from difflab.diffusion.denoiser import Denoiser
from difflab.diffusion.generation import (AUTO_FEW_NFE, AUTO_LAST_SIGMA, get_sampler,
                                          model_sigmas, nfe_of)
from difflab.diffusion.guidance import NULL_LABEL
from difflab.nets.unet import UNet, UNetConfig

SEARCH_SEED, TEST_SEED = 1, 2


def _noise(dim, n, seed, shape=()):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, *(shape or (dim,)), generator=g, dtype=torch.float64)


def _error(problem, sampler, sigmas, z, target):
    """Mean over samples of the RMS error of the sampler's output against ``target``."""
    out = get_sampler(sampler)(problem, z * float(sigmas[0]), sigmas)
    return (out - target).square().mean(1).sqrt().mean().item()


def _check_grid(sigmas, steps, sigma_max):
    assert sigmas.dtype == torch.float64 and sigmas.shape == (steps + 1,)
    assert sigmas[0].item() == pytest.approx(sigma_max) and sigmas[-1].item() == 0.0
    assert (sigmas[1:] < sigmas[:-1]).all(), sigmas


@pytest.fixture(autouse=True)
def _one_thread():
    """The searches run many tiny tensor operations: one thread avoids thread start-up costs
    dominating on a shared machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def mixture():
    return mixtures.random_mixture(8, 5, seed=7)


@pytest.mark.parametrize("sampler", ["euler", "ddim", "dpmpp-2m", "heun", "dpmpp-3m", "unipc"])
def test_grid_is_strictly_decreasing_and_ends_at_zero(sampler, mixture):
    z = _noise(mixture.dim, 8, SEARCH_SEED)
    for steps in (1, 2, 4):
        sigmas = ss.optimize_sigmas(mixture, sampler, steps, z, teacher_steps=30, refine=6)
        _check_grid(sigmas, steps, mixture.sigma_max)
    # pure GITS (no selection, no refinement): the levels are taken from the teacher's grid
    result = ss.search_schedule(mixture, sampler, 4, z, teacher_steps=30, refine=0, baselines=())
    _check_grid(result.sigmas, 4, mixture.sigma_max)
    teacher_levels = schedules.log_snr_sigmas(30, mixture.sigma_min, mixture.sigma_max)
    assert all(torch.isclose(teacher_levels, s).any() for s in result.sigmas)
    assert result.meta["start"] == "dp" and result.meta["nfe"] == nfe_of(sampler, 4)


def test_local_costs_are_one_sampler_step_from_the_teacher(mixture):
    """The Gram-matrix costs equal the error of one Euler / DPM-Solver++(2M) update computed directly."""
    z = _noise(mixture.dim, 6, SEARCH_SEED)
    fine = schedules.log_snr_sigmas(24, 0.002, 80.0)
    teacher = ss.teacher_trajectory(mixture, z * 80.0, fine, torch.arange(0, 24, 2))
    levels, y, D = teacher.levels, teacher.states, teacher.denoised
    N = levels.shape[0] - 1
    weights = torch.linspace(1.0, 0.5, N + 1, dtype=torch.float64)
    gram = dp._gram(torch.cat([y, D]))
    euler, history = (f(gram, levels, weights, mixture.dim) for f in (dp.euler_costs, dp.dpmpp_2m_costs))

    def rms(e):
        return e.square().mean(1).sqrt().mean().item()

    for i, j in [(0, 1), (0, N), (3, 7), (5, N), (N - 1, N)]:
        step = get_sampler("euler")(mixture, y[i].clone(), torch.stack([levels[i], levels[j]]))
        assert euler[i, j].item() == pytest.approx(weights[j].item() * rms(step - y[j]), rel=1e-6)
    for p, i, j in [(0, 1, 2), (2, 5, 9), (0, 4, N - 1)]:
        h, h_prev = math.log(levels[i] / levels[j]), math.log(levels[p] / levels[i])
        r = h_prev / h
        step = (levels[j] / levels[i]) * y[i] - math.expm1(-h) * ((1 + 1 / (2 * r)) * D[i] - D[p] / (2 * r))
        assert history[p, i, j].item() == pytest.approx(weights[j].item() * rms(step - y[j]), rel=1e-6)
    assert torch.isinf(euler[3, 3]) and torch.isinf(history[4, 2, 7])  # no jump back or in place


def test_dynamic_programs_find_the_min_cost_path():
    g = torch.Generator().manual_seed(0)
    N = 9
    single = torch.rand(N, N + 1, generator=g, dtype=torch.float64).triu(1)
    single[single == 0] = math.inf
    history = torch.rand(N, N, N, generator=g, dtype=torch.float64)

    def cost(path, multistep):
        total = single[path[0], path[1]].item()
        for p, i, j in zip(path, path[1:], path[2:]):
            total += history[p, i, j].item() if multistep and j < N else single[i, j].item()
        return total

    for steps in (1, 2, 3, 5):
        paths = [(0, *inner, N) for inner in itertools.combinations(range(1, N), steps - 1)]
        for multistep in (False, True):
            best = min(cost(p, multistep) for p in paths)
            path, value = (dp.dp_two_step(single, history, steps) if multistep
                           else dp.dp_single_step(single, steps))
            assert len(path) == steps + 1 and path[0] == 0 and path[-1] == N
            assert value == pytest.approx(best) and cost(path, multistep) == pytest.approx(best)


def _ddpm_range(problem):
    """The problem as a DDPM-trained model sees it: linear betas, T = 1000, sigma in [0.01, 157]."""
    problem.alpha_bar = schedules.make_alpha_bar("linear", 1000)
    sig = schedules.sigma_from_alpha_bar(problem.alpha_bar)
    problem.sigma_min, problem.sigma_max = float(sig[0]), float(sig[-1])
    return problem


@pytest.mark.parametrize("problem_name,grids", [
    ("gaussian-2d", ("karras", "log-snr")),
    ("gaussian-64d", ("karras", "log-snr", "uniform-t", "ddpm"))])
@pytest.mark.parametrize("sampler", ["euler", "dpmpp-2m"])
def test_optimized_grid_beats_every_fixed_grid_on_the_exact_gaussian_ode(problem_name, grids, sampler):
    gauss = mixtures.make_problem(problem_name)
    if "ddpm" in grids:
        gauss = _ddpm_range(gauss)
    smin, smax = gauss.sigma_min, gauss.sigma_max
    z_search, z_test = _noise(gauss.dim, 32, SEARCH_SEED), _noise(gauss.dim, 1000, TEST_SEED)
    exact = gauss.ode_solution(z_test * smax, smax, 0.0)
    for steps in (3, 4, 5, 6):
        fixed = {g: _error(gauss, sampler, schedules.sigma_grid(g, steps, smin, smax, gauss.alpha_bar),
                           z_test, exact) for g in grids}
        sigmas = ss.optimize_sigmas(gauss, sampler, steps, z_search)
        optimized = _error(gauss, sampler, sigmas, z_test, exact)
        assert optimized <= min(fixed.values()) * (1 + 1e-9), (steps, optimized, fixed)
        if sampler == "euler":  # GITS alone (no selection, no refinement) already wins clearly
            dp = ss.optimize_sigmas(gauss, sampler, steps, z_search, refine=0, baselines=())
            assert _error(gauss, sampler, dp, z_test, exact) < 0.8 * min(fixed.values())


@pytest.mark.parametrize("sampler", ["euler", "dpmpp-2m"])
def test_optimized_grid_beats_karras_on_a_mixture(sampler, mixture):
    smin, smax = mixture.sigma_min, mixture.sigma_max
    z_search, z_test = _noise(mixture.dim, 32, SEARCH_SEED), _noise(mixture.dim, 1000, TEST_SEED)
    teacher = get_sampler("dpmpp-3m")(mixture, z_test * smax, schedules.log_snr_sigmas(400, smin, smax))
    for steps in (3, 4, 5, 6):
        karras = _error(mixture, sampler, schedules.karras_sigmas(steps, smin, smax), z_test, teacher)
        dp = ss.optimize_sigmas(mixture, sampler, steps, z_search, refine=0, baselines=())
        assert _error(mixture, sampler, dp, z_test, teacher) < karras  # GITS alone
        full = ss.optimize_sigmas(mixture, sampler, steps, z_search)
        assert _error(mixture, sampler, full, z_test, teacher) < 0.8 * karras


def test_condition_and_guidance_reach_teacher_and_sampler():
    """A class-conditional Gaussian (mean by label, the null label's mean 0): the search sees both
    halves of classifier-free guidance, and its grid beats Karras on the guided exact ODE."""
    means = torch.tensor([[1.0, 0.0], [-1.0, 0.5]], dtype=torch.float64)
    labels_seen = set()

    def denoiser(x, sigma, cond=None):
        labels_seen.update(cond.tolist())
        mu = torch.where((cond == NULL_LABEL)[:, None], torch.zeros(2, dtype=x.dtype), means[cond.clamp(min=0)])
        sigma = torch.as_tensor(sigma, dtype=x.dtype).reshape(-1, 1)
        return mu + 0.1 / (0.1 + sigma**2) * (x - mu)  # data N(mu, 0.1 I)

    denoiser.sigma_min, denoiser.sigma_max, denoiser.alpha_bar = 0.002, 80.0, None
    z, cond = _noise(2, 16, SEARCH_SEED), torch.arange(16) % 2
    result = ss.search_schedule(denoiser, "euler", 4, z, cond=cond, guidance=2.0, teacher_steps=40)
    assert labels_seen == {0, 1, NULL_LABEL}
    _check_grid(result.sigmas, 4, 80.0)
    assert result.meta["guidance"] == 2.0
    assert result.meta["batch_error"]["optimized"] < result.meta["batch_error"]["karras"]


def test_unet_images_with_labels_run_end_to_end():
    torch.manual_seed(0)
    net = UNet(UNetConfig(channels=8, channel_mult=(1, 2), attention_resolutions=(), groups=4),
               DataShape(1, (8, 8), 3))
    model = Denoiser(net, "edm").train()
    z = torch.randn(4, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    result = ss.search_schedule(model, "dpmpp-2m", 3, z, cond=torch.tensor([0, 1, 2, 0]),
                                guidance=1.5, teacher_steps=12, refine=2)
    _check_grid(result.sigmas, 3, 80.0)
    assert model.training  # mode restored
    assert result.meta["teacher_nfe"] == 12 and result.meta["trajectories"] == 4


@pytest.mark.parametrize("sampler,options", [("ddpm", {}), ("euler-maruyama", {}), ("ddim", {"eta": 1.0}),
                                             ("heun", {"s_churn": 5.0}), ("nope", {})])
def test_stochastic_or_unknown_samplers_are_refused(sampler, options, mixture):
    with pytest.raises(ValueError, match="sampler"):
        ss.optimize_sigmas(mixture, sampler, 3, _noise(8, 4, 0), sampler_options=options)


def test_bad_arguments_are_refused(mixture):
    z = _noise(8, 4, 0)
    with pytest.raises(ValueError, match="teacher"):
        ss.optimize_sigmas(mixture, "euler", 3, z, teacher="unipc")
    with pytest.raises(ValueError, match="steps"):
        ss.optimize_sigmas(mixture, "euler", 31, z, teacher_steps=30)
    with pytest.raises(ValueError, match="candidates"):
        ss.optimize_sigmas(mixture, "euler", 3, z, teacher_steps=30, candidates=40)
    with pytest.raises(ValueError, match="weighting"):
        ss.optimize_sigmas(mixture, "euler", 3, z, weighting="l1")


# ----- schedules.json --------------------------------------------------------------------------
def test_save_load_round_trip(tmp_path, mixture):
    z = _noise(mixture.dim, 8, SEARCH_SEED)
    result = ss.search_schedule(mixture, "dpmpp-2m", 4, z, teacher_steps=30, refine=4)
    key = store.schedule_key("dpmpp-2m", 4)
    path = store.save_schedule(tmp_path, key, result.sigmas, result.meta)
    store.save_schedule(tmp_path, "euler/2", torch.tensor([80.0, 0.5, 0.0]), {"note": "by hand"})
    assert path == tmp_path / "schedules.json" and sorted(p.name for p in tmp_path.iterdir()) == ["schedules.json"]
    loaded = store.load_schedules(tmp_path)
    assert set(loaded) == {"dpmpp-2m/4", "euler/2"}
    assert torch.equal(loaded[key]["sigmas"], result.sigmas)  # exact through JSON's repr of floats
    assert loaded[key]["meta"] == json.loads(json.dumps(result.meta))
    store.save_schedule(tmp_path, "euler/2", [80.0, 0.3, 0.0])  # replace one, keep the other
    loaded = store.load_schedules(tmp_path)
    assert loaded["euler/2"]["sigmas"].tolist() == [80.0, 0.3, 0.0] and loaded["euler/2"]["meta"] == {}
    assert torch.equal(loaded[key]["sigmas"], result.sigmas)
    assert store.load_schedules(tmp_path / "missing") == {}


GOOD = {"sigmas": [80.0, 1.0, 0.0], "meta": {}}


@pytest.mark.parametrize("content,field", [
    ("{not json", "not valid JSON"),
    (json.dumps([1, 2]), "format"),
    (json.dumps({"format": "difflab-checkpoint", "version": 1, "schedules": {}}), "format"),
    (json.dumps({"format": "difflab-schedules", "version": 9, "schedules": {}}), "version"),
    (json.dumps({"format": "difflab-schedules", "version": 1, "schedules": []}), "schedules"),
    (json.dumps({"format": "difflab-schedules", "version": 1, "schedules": {"euler": GOOD}}), "key"),
    (json.dumps({"format": "difflab-schedules", "version": 1, "schedules": {"euler/2": [80, 0]}}),
     "schedules['euler/2']"),
    (json.dumps({"format": "difflab-schedules", "version": 1,
                 "schedules": {"euler/2": {"sigmas": [80.0, 1.0, 0.5]}}}), "sigmas must end in 0"),
    (json.dumps({"format": "difflab-schedules", "version": 1,
                 "schedules": {"euler/2": {"sigmas": [1.0, 80.0, 0.0]}}}), "strictly decreasing"),
    (json.dumps({"format": "difflab-schedules", "version": 1,
                 "schedules": {"euler/3": GOOD}}), "3 steps"),
    (json.dumps({"format": "difflab-schedules", "version": 1,
                 "schedules": {"euler/2": {"sigmas": [80.0, "1", 0.0]}}}), "finite numbers"),
    ('{"format": "difflab-schedules", "version": 1, "schedules": {"euler/2": {"sigmas": [NaN, 1.0, 0.0]}}}',
     "finite numbers"),
    (json.dumps({"format": "difflab-schedules", "version": 1,
                 "schedules": {"euler/2": {"sigmas": [80.0, 1.0, 0.0], "meta": [1]}}}), "meta"),
])
def test_malformed_schedules_file_is_rejected_in_one_line(tmp_path, content, field):
    path = tmp_path / "schedules.json"
    path.write_text(content)
    with pytest.raises(ValueError) as info:
        store.load_schedules(tmp_path)
    message = str(info.value)
    assert str(path) in message and field in message and "\n" not in message, message
    with pytest.raises(ValueError):  # a malformed file is not silently overwritten
        store.save_schedule(tmp_path, "euler/2", [80.0, 1.0, 0.0])
    assert path.read_text() == content


@pytest.mark.parametrize("key,sigmas,meta", [
    ("euler/2", [80.0, 1.0, 0.1], {}), ("euler/2", [80.0, 80.0, 0.0], {}), ("euler/3", [80.0, 1.0, 0.0], {}),
    ("Euler 2", [80.0, 1.0, 0.0], {}), ("euler/2", [80.0, 1.0, 0.0], {"x": object()})])
def test_save_refuses_a_bad_grid_and_writes_nothing(tmp_path, key, sigmas, meta):
    with pytest.raises(ValueError, match="schedules.json"):
        store.save_schedule(tmp_path, key, sigmas, meta)
    assert not (tmp_path / "schedules.json").exists()


@pytest.mark.parametrize("sampler, steps, expected", [
    ("dpmpp-2m", 5, "few"), ("euler", AUTO_FEW_NFE, "few"), ("dpmpp-2m", AUTO_FEW_NFE + 1, None),
    ("heun", 5, "few"), ("heun", 6, None),            # Heun: 2 steps - 1 evaluations
    ("ddpm", 5, None), ("euler-maruyama", 5, None),   # stochastic: the model's grid
])
def test_grid_auto_is_log_snr_with_a_tweedie_step_at_few_evaluations(sampler, steps, expected):
    mix = mixtures.make_problem("mixture-2d")
    got = model_sigmas(mix, steps, "auto", sampler)
    if expected == "few":
        want = schedules.sigma_grid("log-snr", steps, AUTO_LAST_SIGMA, mix.sigma_max)
        assert float(got[-2]) == pytest.approx(AUTO_LAST_SIGMA) and got[-1] == 0
    else:
        want = model_sigmas(mix, steps, None, sampler)
    assert torch.equal(got, want)
