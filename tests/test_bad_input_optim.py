"""Bad input for difflab.optim.Langevin and the optimizer benchmark, generated in families:
every option x (NaN, inf, out of range, wrong type) at every entry point; foreign and mutated
state dicts; complex parameters (noise per real degree of freedom); results.jsonl corruption
(random bytes, every field of valid records deleted or retyped, duplicates); run_benchmark
arguments; an unreachable Ray address. Each must give a one-line ValueError naming the
problem and leave the optimizer / files unchanged, or be skipped with a warning."""
import copy
import json
import math
import os
import re
import socket
import threading
import time
import types
import warnings

import numpy as np
import pytest
import torch

from difflab.bench import run_benchmark
from difflab.bench import executors
from difflab.bench.executors import run_specs
from difflab.bench.records import RecordWarning, append_record, read_records, record_problem
from difflab.bench.plan import TWO_D
from difflab.bench.report import write_report
from difflab.bench.runner import ARM_KNOBS, RunSpec, hp
from difflab.optim import Langevin, scheduled_temperature
from difflab.optim.langevin import OPTIONS
from difflab.optim.normal import NormalStream

torch.set_num_threads(1)
NAN, INF = float("nan"), float("inf")


# -- generators of bad option values --------------------------------------------------------------
WRONG_TYPES = ["0.1", None, [0.1], {"v": 0.1}, True, 1 + 0j, torch.tensor([0.1, 0.2]), object()]
# option -> (lower bound, upper bound, lower end open, upper end open)
NUMERIC = {"lr": (0, INF, False, False), "temperature": (0, INF, False, False),
           "weight_decay": (0, INF, False, False), "gamma": (0, INF, False, False),
           "temperature_end": (0, INF, False, False), "momentum": (0, 1, False, True),
           "dampening": (0, 1, False, False), "alpha": (0, 1, False, True),
           "eps": (0, INF, True, False)}
INTEGER = ("schedule_steps", "step")
CHOICES = {"noise": ["", "Langevin", "gaussian", None, 1, ["langevin"], b"langevin"],
           "preconditioner": ["", "RMSprop", "adam", 0, False, ["rmsprop"]],
           "temperature_schedule": ["", "exp", None, 0, ["linear"]],
           "nesterov": [1, 0, "True", None, 1.0],
           "foreach": [1, 0, "yes", 1.0, "False", []]}


def bad_values(option: str) -> list:
    """A family of invalid values for one option: non-finite, out of range, wrong type."""
    if option in NUMERIC:
        lo, hi, lo_open, hi_open = NUMERIC[option]
        out = [NAN, INF, -INF, np.float64("nan"), lo - 1e-9, lo - 1.0] + WRONG_TYPES
        if lo_open:
            out.append(lo)
        if math.isfinite(hi):
            out += [hi + 1e-9, hi + 1.0] + ([hi] if hi_open else [])
        return out
    if option in INTEGER:
        return [-1, 1.5, 2.0, NAN, INF, "3", None, True, [1]]
    return CHOICES[option]


def test_every_option_has_a_bad_value_family():
    assert set(OPTIONS) | {"step"} == set(NUMERIC) | set(INTEGER) | set(CHOICES)
    assert all(len(bad_values(o)) >= 5 for o in set(OPTIONS) | {"step"})


def _params(seed=0, shapes=((3, 2), (4,))):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(*s, generator=g).requires_grad_() for s in shapes]


def _set_grads(params, seed):
    g = torch.Generator().manual_seed(seed)
    for p in params:
        p.grad = torch.randn(p.shape, dtype=p.dtype, generator=g)


def _same(a, b) -> bool:
    """Deep equality with tensors compared bit for bit (NaN-free inputs)."""
    if torch.is_tensor(a) or torch.is_tensor(b):
        return torch.is_tensor(a) and torch.is_tensor(b) and a.dtype == b.dtype \
            and a.shape == b.shape and torch.equal(a, b)
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return type(a) is type(b) and len(a) == len(b) and all(map(_same, a, b))
    return a == b


def _snapshot(opt, params):
    return copy.deepcopy(opt.state_dict()), [p.detach().clone() for p in params]


def _assert_unchanged(opt, params, snap):
    sd, values = snap
    assert _same(opt.state_dict(), sd), "optimizer state changed by a rejected input"
    assert all(torch.equal(p, v) for p, v in zip(params, values)), "parameters changed"


def _one_line_error(excinfo, *needles):
    text = str(excinfo.value)
    assert "\n" not in text, text
    for needle in needles:
        assert needle in text, f"{needle!r} not in {text!r}"
    return text


def _warm(**kw):
    """A Langevin optimizer with momentum and RMSprop state after two steps."""
    params = _params()
    opt = Langevin(params, lr=0.05, temperature=1e-3, momentum=0.9, preconditioner="rmsprop",
                   seed=3, **kw)
    for k in range(2):
        _set_grads(params, k)
        opt.step()
    return opt, params


CTOR_OPTIONS = [o for o in OPTIONS]            # keyword arguments of the constructor
GROUP_OPTIONS = [*OPTIONS, "step"]             # keys of a param group


@pytest.mark.parametrize("option", CTOR_OPTIONS)
def test_constructor_rejects_bad_values(option):
    for value in bad_values(option):
        with pytest.raises(ValueError) as e:
            Langevin(_params(), **{option: value})
        _one_line_error(e, f"invalid {option}")


@pytest.mark.parametrize("option", GROUP_OPTIONS)
def test_param_group_dicts_are_validated(option):
    for value in bad_values(option):
        with pytest.raises(ValueError) as e:
            Langevin([{"params": _params()[:1]}, {"params": _params(1)[:1], option: value}])
        _one_line_error(e, f"param group 1: invalid {option}")


@pytest.mark.parametrize("option", GROUP_OPTIONS)
def test_add_param_group_rejects_bad_group_and_changes_nothing(option):
    opt, params = _warm()
    extra = _params(5)
    snap = _snapshot(opt, params)
    for value in bad_values(option):
        with pytest.raises(ValueError) as e:
            opt.add_param_group({"params": extra, option: value})
        _one_line_error(e, f"param group 1: invalid {option}")
        assert len(opt.param_groups) == 1
        _assert_unchanged(opt, params, snap)
    opt.add_param_group({"params": extra})    # not half-added: the same tensors are accepted
    assert len(opt.param_groups) == 2


@pytest.mark.parametrize("option", GROUP_OPTIONS)
def test_step_rejects_groups_edited_to_bad_values(option):
    """Schedulers and users edit param groups between steps: step() checks before changing."""
    opt, params = _warm()
    _set_grads(params, 7)
    group = opt.param_groups[0]
    good = group[option]
    snap = _snapshot(opt, params)
    for value in bad_values(option):
        group[option] = value
        with pytest.raises(ValueError) as e:
            opt.step()
        _one_line_error(e, f"invalid {option}")
        group[option] = good
        _assert_unchanged(opt, params, snap)
    opt.step()
    assert opt.param_groups[0]["step"] == 3


@pytest.mark.parametrize("option", GROUP_OPTIONS)
def test_load_state_dict_rejects_bad_group_options(option):
    opt, params = _warm()
    snap = _snapshot(opt, params)
    for value in bad_values(option):
        sd = copy.deepcopy(snap[0])
        sd["param_groups"][0][option] = value
        with pytest.raises(ValueError) as e:
            opt.load_state_dict(sd)
        _one_line_error(e, f"invalid {option}")
        _assert_unchanged(opt, params, snap)
    for_deletion = copy.deepcopy(snap[0])
    del for_deletion["param_groups"][0][option]
    with pytest.raises(ValueError) as e:
        opt.load_state_dict(for_deletion)
    _one_line_error(e, "missing option", option)
    _assert_unchanged(opt, params, snap)


@pytest.mark.parametrize("kw,needle", [
    (dict(nesterov=True), "nesterov"),
    (dict(nesterov=True, momentum=0.9, dampening=0.1), "nesterov"),
    (dict(temperature_schedule="linear"), "schedule_steps"),
    (dict(temperature_schedule="cosine", schedule_steps=0, temperature_end=1.0), "schedule_steps"),
    (dict(temperature=1.0, momentum=0.9, lr=0.0), "lr"),
    (dict(temperature=0.0, temperature_end=1.0, temperature_schedule="linear", schedule_steps=5,
          momentum=0.5, lr=0.0), "lr"),
    (dict(seed=1.5), "seed"), (dict(seed="1"), "seed"), (dict(seed=True), "seed"),
    (dict(generator="cpu"), "generator"),
    (dict(seed=1, generator=torch.Generator()), "seed or generator"),
])
def test_relations_between_options(kw, needle):
    with pytest.raises(ValueError) as e:
        Langevin(_params(), **kw)
    _one_line_error(e, needle)


def test_scheduled_temperature_inputs():
    good = {"temperature": 1.0, "temperature_schedule": "linear", "temperature_end": 0.0,
            "schedule_steps": 10}
    assert scheduled_temperature(good, 5) == pytest.approx(0.5)
    for step in (-1, 1.5, NAN, "3", None, True):
        with pytest.raises(ValueError) as e:
            scheduled_temperature(good, step)
        _one_line_error(e, "invalid step")
    for option in ("temperature", "temperature_schedule", "temperature_end", "schedule_steps"):
        for value in bad_values(option) + [0] * (option == "schedule_steps"):
            with pytest.raises(ValueError) as e:
                scheduled_temperature({**good, option: value}, 1)
            _one_line_error(e, option)
    with pytest.raises(ValueError):
        scheduled_temperature([1.0], 0)


# -- add_param_group ------------------------------------------------------------------------------
def test_add_param_group_fills_defaults_lazy_state_and_state_dict_round_trip():
    def build(seed):
        a, b = _params(0), _params(1)
        opt = Langevin(a, lr=0.05, temperature=1e-3, momentum=0.9, seed=seed)
        return opt, a, b

    opt, a, b = build(4)
    opt.add_param_group({"params": b, "lr": 0.02, "preconditioner": "rmsprop"})
    group = opt.param_groups[1]
    assert set(OPTIONS) <= set(group) and group["step"] == 0
    assert group["momentum"] == 0.9 and group["lr"] == 0.02      # defaults, then the override
    assert all(len(opt.state[p]) == 0 for p in b)                 # state is created lazily
    for k in range(3):
        _set_grads(a + b, k)
        opt.step()
    assert group["step"] == 3
    assert all(set(opt.state[p]) == {"momentum_buffer", "square_avg"} for p in b)
    saved, saved_params = copy.deepcopy(opt.state_dict()), [p.detach().clone() for p in a + b]

    twin, a2, b2 = build(99)
    twin.add_param_group({"params": b2})              # same structure, other options and seed
    with torch.no_grad():
        for p, v in zip(a2 + b2, saved_params):
            p.copy_(v)
    twin.load_state_dict(saved)
    assert twin.param_groups[1]["lr"] == 0.02 and twin.param_groups[1]["step"] == 3
    for k in range(3, 6):
        _set_grads(a + b, k)
        _set_grads(a2 + b2, k)
        opt.step()
        twin.step()
    assert all(torch.equal(p, q) for p, q in zip(a + b, a2 + b2))
    # the state dict of a group structure that differs is refused
    other, _, _ = build(0)
    with pytest.raises(ValueError, match="has 2 param group"):
        other.load_state_dict(saved)


# -- load_state_dict of foreign states ------------------------------------------------------------
def _foreign_states():
    """(name, state dict) that do not belong to _warm()'s optimizer."""
    params = _params()
    out = []
    for name, make in (("SGD", lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.9)),
                       ("Adam", lambda p: torch.optim.Adam(p)),
                       ("RMSprop", lambda p: torch.optim.RMSprop(p)),
                       ("Langevin+generator", lambda p: Langevin(
                           p, lr=0.05, generator=torch.Generator().manual_seed(0))),
                       ("Langevin 2 groups", lambda p: Langevin([{"params": p[:1]},
                                                                 {"params": p[1:]}], lr=0.05)),
                       ("Langevin 1 param", lambda p: Langevin(p[:1], lr=0.05))):
        opt = make(params)
        _set_grads(params, 0)
        opt.step()
        out.append((name, opt.state_dict()))
    base = _warm()[0].state_dict()

    def variant(name, edit):
        sd = copy.deepcopy(base)
        edit(sd)
        out.append((name, sd))

    for key in list(base):
        variant(f"without {key}", lambda sd, key=key: sd.pop(key))
        for wrong in ([], "x", None, 1):
            variant(f"{key}={wrong!r}", lambda sd, key=key, wrong=wrong: sd.__setitem__(key, wrong))
    variant("extra key", lambda sd: sd.__setitem__("generator_state", torch.zeros(3)))
    variant("unknown key", lambda sd: sd.__setitem__("exp_avg", {}))
    variant("no groups", lambda sd: sd.__setitem__("param_groups", []))
    variant("two groups", lambda sd: sd["param_groups"].append(dict(sd["param_groups"][0])))
    variant("group not a dict", lambda sd: sd["param_groups"].__setitem__(0, "x"))
    for ids in ([], [0], ["a", "b"], [0, 0], [0, 1, 2], None):
        variant(f"params={ids}",
                lambda sd, ids=ids: sd["param_groups"][0].__setitem__("params", ids))
    t = base["state"][0]["momentum_buffer"]
    for name, value in (("wrong shape", torch.zeros(7)), ("int dtype", t.to(torch.int64)),
                        ("complex", t.to(torch.complex64)), ("nan", t.clone().fill_(NAN)),
                        ("inf", t.clone().fill_(INF)), ("str", "x"), ("list", t.tolist())):
        variant(f"momentum_buffer {name}",
                lambda sd, value=value: sd["state"][0].__setitem__("momentum_buffer", value))
    variant("square_avg negative", lambda sd: sd["state"][1]["square_avg"].fill_(-1.0))
    variant("square_avg None", lambda sd: sd["state"][1].__setitem__("square_avg", None))
    variant("state of unknown id", lambda sd: sd["state"].__setitem__(99, {}))
    variant("state entry not a dict", lambda sd: sd["state"].__setitem__(0, "x"))
    variant("Adam state entry", lambda sd: sd["state"][0].__setitem__("exp_avg", t.clone()))
    for key in ("seed", "position"):
        variant(f"noise_stream without {key}", lambda sd, key=key: sd["noise_stream"].pop(key))
        for wrong in ("1", 1.5, None, True, -1 if key == "position" else [1]):
            variant(f"noise_stream {key}={wrong!r}",
                    lambda sd, key=key, wrong=wrong: sd["noise_stream"].__setitem__(key, wrong))
    variant("noise_stream extra", lambda sd: sd["noise_stream"].__setitem__("gen", 1))
    return out


def test_load_state_dict_of_foreign_or_broken_states_is_refused_and_changes_nothing():
    foreign = _foreign_states()
    assert len(foreign) > 50
    for name, sd in foreign:
        opt, params = _warm()
        snap = _snapshot(opt, params)
        with pytest.raises(ValueError) as e:
            opt.load_state_dict(sd)
        assert "\n" not in str(e.value) and str(e.value).startswith("Langevin:"), (name, e.value)
        _assert_unchanged(opt, params, snap)
        _set_grads(params, 11)               # and it still steps like its untouched twin
        twin, twin_params = _warm()
        _set_grads(twin_params, 11)
        opt.step()
        twin.step()
        assert all(torch.equal(p, q) for p, q in zip(params, twin_params)), name


def test_generator_state_of_another_size_is_refused():
    opt = Langevin(_params(), lr=0.1, temperature=1.0, generator=torch.Generator().manual_seed(0))
    sd = opt.state_dict()
    for wrong in (torch.zeros(3, dtype=torch.uint8), torch.zeros(5056), "x", None):
        bad = dict(sd, generator_state=wrong)
        with pytest.raises(ValueError) as e:
            opt.load_state_dict(bad)
        _one_line_error(e, "generator_state")
    assert torch.equal(opt.generator.get_state(), sd["generator_state"])


def test_normal_stream_bad_inputs():
    for seed in ("1", 1.5, True, [1]):
        with pytest.raises(ValueError, match="seed"):
            NormalStream(seed)
    s = NormalStream(1)
    for n in (-1, 1.5, "3"):
        with pytest.raises(ValueError, match="count"):
            s.reserve(n)
    for std in (NAN, INF, -INF):
        t = torch.zeros(4)
        with pytest.raises(ValueError, match="std"):
            s.add_([t], std, 0)
        assert torch.equal(t, torch.zeros(4))
    for state in ({"seed": 1}, {"seed": "1", "position": 0}, {"seed": 1, "position": -1},
                  {"seed": 1, "position": 0, "x": 1}, [1, 0], None):
        with pytest.raises(ValueError):
            s.load_state_dict(state)
    assert s.state_dict() == {"seed": 1, "position": 0}


# -- complex parameters ---------------------------------------------------------------------------
def _source(kind, seed=5):
    if kind == "seed":
        return dict(seed=seed)
    return dict(generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("mode,std", [("langevin", math.sqrt(2 * 0.05 * 0.5)), ("constant", 0.5),
                                      ("annealed", math.sqrt(0.5))])
@pytest.mark.parametrize("foreach", [False, True])
@pytest.mark.parametrize("source", ["seed", "torch.Generator"])
def test_complex_noise_has_real_parameter_variance_per_part(mode, std, foreach, source):
    """view_as_real convention: each of the 2 real degrees of freedom gets what a real
    parameter gets (annealed: the gradient noise, here with lr 1 so theta moves by it)."""
    n = 200_000
    z = torch.zeros(n, dtype=torch.complex64, requires_grad=True)
    lr = 1.0 if mode == "annealed" else 0.05
    opt = Langevin([z], lr=lr, temperature=0.5, noise=mode, gamma=0.0, foreach=foreach,
                   **_source(source))
    z.grad = torch.zeros_like(z)
    opt.step()
    parts = torch.view_as_real(z.detach()).double()
    for k, name in ((0, "real"), (1, "imag")):
        assert abs(parts[:, k].std().item() / std - 1) < 0.01, (name, parts[:, k].std().item())
        assert abs(parts[:, k].mean().item()) < 0.01 * std
    assert abs(np.corrcoef(parts[:, 0], parts[:, 1])[0, 1]) < 0.01


@pytest.mark.parametrize("source", ["seed", "torch.Generator"])
def test_complex_element_consumes_two_unit_draws_real_part_first(source):
    z = torch.zeros(6, 5, dtype=torch.complex64, requires_grad=True)
    x = torch.zeros(7, requires_grad=True)
    opt = Langevin([x, z], lr=0.1, temperature=0.2, **_source(source))
    x.grad, z.grad = torch.zeros_like(x), torch.zeros_like(z)
    opt.step()
    flat = torch.empty(7 + 2 * 30)
    if source == "seed":
        NormalStream(5).normal_(flat)
    else:
        flat.normal_(generator=torch.Generator().manual_seed(5))
    std = math.sqrt(2 * 0.1 * 0.2)
    got = torch.cat([x.detach(), torch.view_as_real(z.detach()).reshape(-1)])
    torch.testing.assert_close(got, std * flat, rtol=0, atol=1e-7)


@pytest.mark.parametrize("kw", [dict(noise="langevin"), dict(noise="constant"),
                                dict(noise="annealed", weight_decay=1e-2),
                                dict(noise="langevin", momentum=0.9, dampening=0.1),
                                dict(noise="langevin", momentum=0.8, nesterov=True),
                                dict(noise="langevin", preconditioner="rmsprop"),
                                dict(noise="annealed", momentum=0.5, preconditioner="rmsprop"),
                                dict(noise="langevin", momentum=0.9, preconditioner="rmsprop",
                                     weight_decay=1e-3)])
@pytest.mark.parametrize("source", ["seed", "torch.Generator"])
def test_complex_reference_loop_equals_foreach_bit_for_bit(kw, source):
    def run(foreach):
        params = [torch.randn(5, 3, generator=torch.Generator().manual_seed(1)).requires_grad_(),
                  torch.randn(4, 2, dtype=torch.complex64,
                              generator=torch.Generator().manual_seed(2)).requires_grad_(),
                  torch.randn(3, generator=torch.Generator().manual_seed(3)).requires_grad_()]
        opt = Langevin(params, lr=0.03, temperature=1e-3, foreach=foreach, **_source(source), **kw)
        for k in range(15):
            _set_grads(params, 100 + k)
            opt.step()
        return params, opt

    (p1, o1), (p2, o2) = run(False), run(True)
    assert all(torch.equal(a, b) for a, b in zip(p1, p2))
    s1, s2 = o1.state_dict(), o2.state_dict()
    assert _same(s1["state"], s2["state"])
    assert _same(s1.get("noise_stream"), s2.get("noise_stream"))
    assert _same(s1.get("generator_state"), s2.get("generator_state"))
    assert not torch.equal(p1[1], torch.randn(4, 2, dtype=torch.complex64,
                                              generator=torch.Generator().manual_seed(2)))
    if kw.get("momentum") or kw.get("preconditioner"):      # state stays complex, like the param
        assert all(v.dtype == torch.complex64 for v in o1.state[p1[1]].values())


@pytest.mark.parametrize("foreach", [False, True])
@pytest.mark.parametrize("kw", [dict(), dict(momentum=0.9, dampening=0.1),
                                dict(momentum=0.8, nesterov=True, weight_decay=1e-2)])
def test_complex_temperature_zero_is_sgd_bit_exact(foreach, kw):
    def params():
        return [torch.randn(6, 4, dtype=torch.complex64,
                            generator=torch.Generator().manual_seed(0)).requires_grad_(),
                torch.randn(5, generator=torch.Generator().manual_seed(1)).requires_grad_()]
    a, b = params(), params()
    sgd = torch.optim.SGD(a, lr=0.05, foreach=foreach, **kw)
    lan = Langevin(b, lr=0.05, temperature=0.0, foreach=foreach, seed=0, **kw)
    for k in range(10):
        _set_grads(a, k)
        _set_grads(b, k)
        sgd.step()
        lan.step()
    assert all(torch.equal(x, y) for x, y in zip(a, b))


# -- results.jsonl: valid records, then their corruptions ---------------------------------------
ENV = {"cpu": "test cpu", "host_cpus": 2, "noise_kernel": "compiled", "python": "3.11.7",
       "threads": 1, "torch": torch.__version__}


def _run_record(arm, hparams, seed, phase, rng, problem="digits-mlp", evals=3):
    spec = RunSpec(problem, arm, hp(**hparams), seed, evals, phase, n_train=400)
    curve = {"epoch": [float(i + 1) for i in range(evals)],
             "val_loss": [float(v) for v in rng.uniform(0.3, 2.0, evals)],
             "val_acc": sorted(float(v) for v in rng.uniform(0.5, 0.95, evals)),
             "train_loss": [float(v) for v in rng.uniform(0.3, 2.0, evals)]}
    if seed % 2:
        curve["train_loss"][0] = None               # no step before the first evaluation
    if phase == "final":
        curve.update(test_loss=[float(v) for v in rng.uniform(0.3, 2.0, evals)],
                     test_acc=[float(v) for v in rng.uniform(0.5, 0.95, evals)],
                     train_eval_loss=[float(v) for v in rng.uniform(0.3, 2.0, evals)],
                     train_eval_acc=[float(v) for v in rng.uniform(0.5, 1.0, evals)])
    started = float(1e9 + rng.uniform(0, 1e6))
    return {"key": spec.key, "problem": problem, "arm": arm, "hparams": dict(spec.hparams),
            "seed": seed, "phase": phase, "epochs": evals, "n_train": 400, "n_val": 250,
            "n_test": 250, "batch_size": 128, "n_params": 2410, "env": dict(ENV),
            "initial_loss": 2.3, "diverged": False, "spikes": int(rng.integers(0, 3)),
            "last_epoch_loss_std": float(rng.uniform(0.01, 0.1)), "curve": curve,
            "timing": {"train_seconds": [0.1 * (i + 1) for i in range(evals)],
                       "wall_seconds": 1.5, "started": started, "finished": started + 1.5}}


def _sweep(seed=0, problem="digits-mlp") -> list[dict]:
    """A small but complete, well-formed sweep: tuning + final runs of sgd and langevin, the
    meta record and the overhead record."""
    rng = np.random.default_rng(seed)
    records = [{"kind": "meta", "key": "meta", "command": "difflab bench optimizers",
                "budget": "quick", "problem": problem, "executor": "sequential"}]
    for lr in (0.03, 0.1, 0.3):
        records.append(_run_record("sgd", {"lr": lr}, 0, "tune", rng, problem))
        records.append(_run_record("langevin", {"lr": lr, "temperature_n": 1.0}, 0, "tune", rng,
                                   problem))
    records.append(_run_record("langevin", {"lr": 0.1, "temperature_n": 10.0}, 0, "grid", rng,
                               problem))
    for s in range(100, 103):
        records.append(_run_record("sgd", {"lr": 0.1}, s, "final", rng, problem))
        records.append(_run_record("langevin", {"lr": 0.1, "temperature_n": 1.0}, s, "final",
                                   rng, problem))
    arm = {"state_bytes": 0, "step_seconds": 1e-4, "train_step_seconds": 1e-3,
           "step_ratio": 1.0, "step_ratio_ci": [0.9, 1.1], "train_step_ratio": 1.0,
           "train_step_ratio_ci": [0.95, 1.05]}
    records.append({"kind": "overhead", "key": f"overhead/{problem}", "problem": problem,
                    "n_params": 2410, "batch_size": 128, "env": dict(ENV),
                    "arms": {"sgd": dict(arm, hparams={"lr": 0.1}),
                             "langevin": dict(arm, step_ratio=1.2,
                                              hparams={"lr": 0.1, "temperature_n": 1.0})}})
    return records


def _line(record) -> bytes:
    return json.dumps(record, sort_keys=True).encode()


def _read(path):
    """read_records plus the line numbers its warnings name."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        records = read_records(path)
    messages = [str(w.message) for w in caught if issubclass(w.category, RecordWarning)]
    lines = {int(m) for msg in messages for m in re.findall(rf"{re.escape(str(path))}:(\d+):", msg)}
    return records, messages, lines


def _paths(obj, prefix=()):
    """Every field path of a record (first and last element of lists)."""
    if isinstance(obj, dict):
        for k, v in obj.items():
            yield prefix + (k,)
            yield from _paths(v, prefix + (k,))
    elif isinstance(obj, list) and obj:
        for i in sorted({0, len(obj) - 1}):
            yield prefix + (i,)
            yield from _paths(obj[i], prefix + (i,))


NULLABLE = {("last_epoch_loss_std",), ("env", "host_cpus")}


def _nullable(path) -> bool:
    return path in NULLABLE or (len(path) == 3 and path[0] == "curve"
                                and path[1].endswith("_loss") and isinstance(path[2], int))


def _mutants(record):
    """(description, record) for every field deleted and retyped to a wrong JSON type, minus
    the changes that keep the type (those are data, not shape)."""
    for path in _paths(record):
        parent = record
        for k in path[:-1]:
            parent = parent[k]
        original = parent[path[-1]]
        if not (len(path) == 2 and path[0] == "arms"):          # arms are data: any subset
            m = copy.deepcopy(record)
            target = m
            for k in path[:-1]:
                target = target[k]
            target.pop(path[-1])                      # dict key or list index
            yield f"delete {path}", m
        for new in ("x", None, [], {}, True, NAN, INF, -INF):
            same_type = (isinstance(new, str) and isinstance(original, str)) or \
                (isinstance(new, bool) and isinstance(original, bool)) or \
                (type(new) in (list, dict) and type(new) is type(original)) or \
                (new is None and _nullable(path))
            if same_type:
                continue
            m = copy.deepcopy(record)
            target = m
            for k in path[:-1]:
                target = target[k]
            target[path[-1]] = new
            yield f"{path} = {new!r}", m
    for new in ([record], 7, "record", None, True, [], {}):      # the whole line
        yield f"record = {new!r}"[:40], new


def test_every_field_deleted_or_retyped_is_refused(tmp_path):
    sweep = _sweep()
    kinds = {r.get("kind", "run") + "/" + r.get("phase", "") for r in sweep}
    assert kinds == {"meta/", "overhead/", "run/tune", "run/grid", "run/final"}
    assert all(record_problem(r) is None for r in sweep)
    # meta, tune (sgd, langevin), grid, final (sgd, langevin), overhead
    samples = [sweep[i] for i in (0, 1, 2, 7, 8, 9, -1)]
    assert [r.get("phase", r.get("kind")) for r in samples] == \
        ["meta", "tune", "tune", "grid", "final", "final", "overhead"]
    mutants = [(d, m) for r in samples for d, m in _mutants(r)]
    accepted = [d for d, m in mutants if record_problem(m) is None]
    assert not accepted, f"{len(accepted)} malformed records accepted, e.g. {accepted[:5]}"
    assert len(mutants) > 500
    # in a file: exactly the good records come back, every mutant line is named in a warning
    rng = np.random.default_rng(1)
    lines, bad_lines, good = [], set(), []
    for r in sweep:
        lines.append(_line(r))
        good.append(r)
    for _, m in mutants:
        lines.insert(int(rng.integers(0, len(lines) + 1)), _line(m) if m is not None else b"null")
    bad_set = set(lines) - {_line(r) for r in sweep}
    bad_lines = {i + 1 for i, line in enumerate(lines) if line in bad_set}
    path = tmp_path / "results.jsonl"
    path.write_bytes(b"\n".join(lines) + b"\n")
    records, messages, warned = _read(path)
    assert records == good
    assert warned == bad_lines
    assert all("\n" not in m for m in messages)


def test_random_garbage_lines_are_skipped_with_line_numbers(tmp_path):
    sweep = _sweep()
    rng = np.random.default_rng(2)
    specials = [b"\x00" * 64, b"\xff\xfe\xfd", b"{", b"[1, 2", b"NaN", b"{}", b"[]", b"0",
                b'"text"', b"null", b"[" * 5000 + b"]" * 5000, b"\xef\xbb\xbf{}",
                b'{"kind": "run"}', b'{"key": 1}', b'{"key": "k", "kind": "unknown"}']
    garbage = list(specials)
    for _ in range(300):
        body = bytes(int(b) for b in rng.integers(0, 256, int(rng.integers(0, 120))) if b != 10)
        garbage.append(bytes([int(rng.integers(33, 127))]) + body)   # never blank
    lines = [_line(r) for r in sweep]
    for g in garbage:
        lines.insert(int(rng.integers(0, len(lines) + 1)), g)
    lines.append(b'{"key": "torn')                                  # interrupted last write
    good = {_line(r) for r in sweep}
    expected_bad = {i + 1 for i, line in enumerate(lines) if line not in good}
    path = tmp_path / "results.jsonl"
    path.write_bytes(b"\n".join(lines))                             # no final newline
    records, messages, warned = _read(path)
    assert records == sweep
    assert warned == expected_bad
    assert any("incomplete last line" in m for m in messages)


def test_duplicate_keys_last_well_formed_record_wins(tmp_path):
    sweep = _sweep()
    rng = np.random.default_rng(3)
    lines, winner_line, copies = [], {}, {}
    for r in sweep:
        for c in range(int(rng.integers(1, 4))):
            variant = copy.deepcopy(r)
            variant["copy"] = c                       # extra fields are allowed (and kept)
            lines.append(_line(variant))
            copies.setdefault(r["key"], []).append(len(lines))
            winner_line[r["key"]] = len(lines)
        if rng.random() < 0.5:                        # a later malformed copy never wins
            broken = copy.deepcopy(r)
            broken.pop("problem")
            broken["copy"] = 99
            lines.append(_line(broken))
    rng.shuffle(lines)                                # positions decide, so recompute them
    order = [json.loads(line) for line in lines]
    expected, seen = [], {}
    for i, rec in enumerate(order, 1):
        if record_problem(rec) is None:
            seen[rec["key"]] = (i, rec)
    expected = [rec for _, rec in sorted(seen.values(), key=lambda t: t[0])]
    path = tmp_path / "results.jsonl"
    path.write_bytes(b"\n".join(lines) + b"\n")
    records, messages, _ = _read(path)
    assert records == expected
    assert all(r.get("copy") != 99 for r in records)
    for key, (line, _) in seen.items():
        n_copies = sum(1 for rec in order if isinstance(rec, dict) and rec.get("key") == key
                       and record_problem(rec) is None)
        dup = [m for m in messages if f"key {key} appears on lines" in m]
        assert len(dup) == (n_copies > 1), key
        if dup:
            assert dup[0].endswith(f"using line {line} (the last well-formed record)")


def test_resume_redoes_malformed_runs(tmp_path, monkeypatch):
    """A malformed record of a spec counts as missing: the run is redone and appended."""
    spec = RunSpec("digits-mlp", "sgd", hp(lr=0.1), 0, 3, "tune", n_train=400)
    fake = _run_record("sgd", {"lr": 0.1}, 0, "tune", np.random.default_rng(0))
    assert fake["key"] == spec.key
    monkeypatch.setattr(executors, "run_one", lambda s, data_dir=None: copy.deepcopy(fake))
    path = tmp_path / "results.jsonl"
    record = run_specs([spec], path)[0]
    broken = dict(record, curve="not a curve")
    path.write_text(json.dumps(broken) + "\n[1, 2]\n")
    calls = []
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        again = run_specs([spec], path, progress=calls.append)
    messages = [str(w.message) for w in caught]
    assert any("results.jsonl:1: skipped malformed record (run record: field 'curve'" in m
               for m in messages)
    assert any("results.jsonl:2: skipped malformed record (not a JSON object" in m
               for m in messages)
    assert len(calls) == 1 and again[0]["curve"] == record["curve"]
    text = path.read_text().splitlines()
    assert len(text) == 3 and json.loads(text[0]) == broken     # nothing deleted
    with pytest.raises(ValueError, match="refusing to write a malformed record"):
        append_record(path, dict(record, seed=-1))
    with pytest.raises(ValueError, match="refusing"):
        append_record(path, dict(record, initial_loss=NAN))
    assert len(path.read_text().splitlines()) == 3


def test_report_from_corrupted_file_or_one_line_error(tmp_path):
    sweep = _sweep()
    lines = [_line(r) for r in sweep]
    lines[3:3] = [b"\xff garbage", b"[1, 2, 3]", _line(dict(sweep[4], curve=[]))]
    lines.append(_line(sweep[2]))                           # a duplicate
    path = tmp_path / "results.jsonl"
    path.write_bytes(b"\n".join(lines) + b"\n")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RecordWarning)
        report = write_report(path, tmp_path).read_text()
    assert "## Verdicts" in report and "| langevin | accuracy |" in report
    assert "## Results file problems" in report and f"{path}:4:" in report
    # families of files that cannot make a report: a one-line ValueError naming the file
    mixed = _sweep(1, problem="mnist-mlp")
    cases = {"only garbage": [b"\x00\x01", b"[]", b"{}"],
             "only tuning runs": [_line(r) for r in sweep if r.get("phase") in ("tune", "grid")],
             "only final runs": [_line(r) for r in sweep if r.get("phase") == "final"],
             "no baseline": [_line(r) for r in sweep if r.get("arm") != "sgd"],
             "two problems": [_line(r) for r in sweep + mixed if r.get("kind") != "meta"],
             "two final grids": [_line(r) for r in sweep] + [_line(_run_record(
                 "sgd", {"lr": 0.1}, 200, "final", np.random.default_rng(0), evals=5))],
             "meta and overhead only": [_line(sweep[0]), _line(sweep[-1])]}
    for name, case in cases.items():
        p = tmp_path / f"{name.replace(' ', '_')}.jsonl"
        p.write_bytes(b"\n".join(case) + b"\n")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RecordWarning)
            with pytest.raises(ValueError) as e:
                write_report(p, tmp_path / "out")
        text = _one_line_error(e, str(p))
        assert "Error" not in text, (name, text)        # a diagnosis, not a leaked exception


def test_cli_report_only_on_garbage_is_one_line(tmp_path, capsys):
    from difflab.cli import main
    (tmp_path / "results.jsonl").write_bytes(b"\x00garbage\n[1]\n")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RecordWarning)
        assert main(["bench", "optimizers", "--report-only", "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("difflab: error:") and "\n" not in err and "no result records" in err


# -- run_benchmark arguments ----------------------------------------------------------------------
BAD_INTS = [0, -1, 1.5, "2", True, None, [2]]
BAD_NAMES = ["", "x", None, 1, ["quick"], "QUICK"]


def _bad_arguments(tmp_path):
    """(argument, value, keyword arguments) families for run_benchmark."""
    a_file = tmp_path / "a_file"
    a_file.write_text("not a directory")
    base = dict(problem="digits-mlp", budget="quick", out=tmp_path / "out")
    for name in ("workers", "threads"):
        for v in BAD_INTS:
            yield name, v, dict(base, **{name: v})
    for name in ("problem", "budget", "executor"):
        for v in BAD_NAMES:
            yield name, v, dict(base, **{name: v})
    for v in ((), ("sgd", "sgd"), ("bogus",), ("langevin", "sghmc"), "sgd", None):
        yield "arms", v, dict(base, arms=v)
    for v in (a_file, a_file / "sub", ""):
        yield "out", v, dict(base, out=v)
    yield "data_dir", tmp_path / "missing", dict(base, data_dir=tmp_path / "missing")
    yield "ray_address", "127.0.0.1:1", dict(base, ray_address="127.0.0.1:1")
    for v in ("no-port", "127.0.0.1:", "127.0.0.1:99999", "", 6379):
        yield "ray_address", v, dict(base, executor="ray", ray_address=v)
    yield "command", 3, dict(base, command=3)


def test_run_benchmark_rejects_bad_arguments_before_any_work(tmp_path):
    started = time.time()
    cases = list(_bad_arguments(tmp_path))
    assert len(cases) > 40
    for name, value, kwargs in cases:
        before = sorted(os.listdir(tmp_path))
        with pytest.raises(ValueError) as e:
            run_benchmark(**kwargs, log=lambda *_: pytest.fail("work started"))
        text = str(e.value)
        assert "\n" not in text and (name in text or str(value) in text or repr(value) in text), \
            (name, value, text)
        assert sorted(os.listdir(tmp_path)) == before, (name, value)      # nothing written
    assert time.time() - started < 5


def test_run_benchmark_refuses_to_mix_sweeps(tmp_path):
    path = tmp_path / "results.jsonl"
    path.write_bytes(b"\n".join(_line(r) for r in _sweep(problem="mnist-mlp")) + b"\n")
    before = path.read_bytes()
    with pytest.raises(ValueError, match="holds results of problem 'mnist-mlp'"):
        run_benchmark("digits-mlp", "quick", tmp_path, log=lambda *_: None)
    with pytest.raises(ValueError, match="budget 'quick'"):
        run_benchmark("mnist-mlp", "standard", tmp_path, log=lambda *_: None)
    assert path.read_bytes() == before


def test_arm_knobs_agree_with_the_plan():
    assert ARM_KNOBS == {arm: knob for arm, (_, knob, _, _) in TWO_D.items()}


@pytest.mark.parametrize("field,value", [("arm", "bogus"), ("phase", "train"), ("seed", -1),
                                         ("epochs", 0), ("threads", 0), ("n_train", 0),
                                         ("hparams", hp(lr=NAN)), ("hparams", hp(lr=0.0)),
                                         ("hparams", (("lr", "0.1"),)), ("batch_size", 1.5)])
def test_run_spec_fields_are_validated(field, value):
    kw = dict(problem="digits-mlp", arm="sgd", hparams=hp(lr=0.1), seed=0, epochs=1,
              phase="tune")
    kw[field] = value
    with pytest.raises(ValueError, match=f"invalid {field}"):
        RunSpec(**kw)


# -- Ray ------------------------------------------------------------------------------------------
def _closed_loopback_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()                      # nothing listens there now: connections are refused
    return port


def test_ray_unreachable_address_fails_fast(tmp_path):
    if os.environ.get("CI", "").lower() == "true":
        import ray  # CI installs the ray extra: a missing ray must fail, not skip
    else:
        ray = pytest.importorskip("ray")
    address = f"127.0.0.1:{_closed_loopback_port()}"
    spec = RunSpec("digits-mlp", "sgd", hp(lr=0.1), 0, 1, "tune", n_train=200)
    started = time.time()
    with pytest.raises(ValueError) as e:
        run_specs([spec], tmp_path / "results.jsonl", executor="ray", ray_address=address)
    assert time.time() - started < 30
    _one_line_error(e, "cannot reach the Ray cluster", address)
    assert not (tmp_path / "results.jsonl").exists()
    with pytest.raises(ValueError, match="cannot reach"):
        run_benchmark("digits-mlp", "quick", tmp_path / "out", executor="ray",
                      ray_address=address, log=lambda *_: None)
    assert not (tmp_path / "out").exists()
    assert not ray.is_initialized()


def test_ray_init_is_guarded_by_a_timeout():
    """A port that accepts TCP but never answers as Ray: ray.init would retry for minutes.
    Here a stand-in ray whose init hangs (or fails) shows the guard (no Ray needed)."""
    hanging = types.SimpleNamespace(init=lambda **kw: time.sleep(60))
    started = time.time()
    with pytest.raises(ValueError) as e:
        executors._ray_init(hanging, "127.0.0.1:6379", timeout=0.5)
    assert time.time() - started < 5
    _one_line_error(e, "did not finish within 0.5 s", "127.0.0.1:6379")

    def refuse(**kw):
        raise ConnectionError("Could not find any running Ray instance.\nmore detail")
    with pytest.raises(ValueError) as e:
        executors._ray_init(types.SimpleNamespace(init=refuse), "127.0.0.1:6379", timeout=5)
    _one_line_error(e, "Could not find any running Ray instance")
    # success: the thread that ran ray.init lives until released (Ray's child processes die
    # with the thread that started them)
    calls, before = [], set(threading.enumerate())
    release = executors._ray_init(types.SimpleNamespace(init=lambda **kw: calls.append(kw)),
                                  "127.0.0.1:6379", timeout=5)
    assert calls == [dict(address="127.0.0.1:6379", log_to_driver=False)]
    thread, = [t for t in set(threading.enumerate()) - before if t.name == "difflab-ray-init"]
    assert thread.is_alive()
    release.set()
    thread.join(5)
    assert not thread.is_alive()
