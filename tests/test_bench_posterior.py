"""Calibration fields of final-run records, the trajectory average, noiseless twins and the
report sections they feed ("Where Langevin noise pays")."""
import copy
import math

import numpy as np
import pytest
import torch

from difflab.bench import run_benchmark
from difflab.bench.records import record_problem
from difflab.bench.plan import FINAL_SEED0, final_specs, get_budget
from difflab.bench.runner import (CALIBRATION_BINS, TWINS, RunSpec, hp, run_one,
                                  trajectory_schedule)

torch.set_num_threads(1)

LANGEVIN_FINAL = RunSpec("digits-mlp", "langevin", hp(lr=0.1, temperature_n=100.0), 101, 2,
                         "final", n_train=400)


def _metrics_finite(m):
    assert set(m) == {"nll", "brier", "ece", "acc", "entropy"}
    assert all(isinstance(v, float) and math.isfinite(v) for v in m.values())
    assert m["nll"] >= 0 and 0 <= m["brier"] <= 2 and 0 <= m["ece"] <= 1
    assert 0 <= m["acc"] <= 1 and 0 <= m["entropy"] <= math.log(10) + 1e-9


def test_final_records_carry_finite_calibration_fields():
    rec = run_one(LANGEVIN_FINAL)
    cal = rec["calibration"]
    assert cal["bins"] == CALIBRATION_BINS == 15
    _metrics_finite(cal["final"])
    avg = cal["average"]
    _metrics_finite(avg["metrics"])
    steps = math.ceil(400 / 128)
    sched = trajectory_schedule(2, steps)
    assert avg["from_step"] == steps and avg["thinning"] == sched.thinning
    assert avg["samples"] == sum(sched.should_collect(t) for t in range(2 * steps)) > 0
    assert record_problem(rec) is None
    base = run_one(RunSpec("digits-mlp", "sgd", hp(lr=0.1), 101, 2, "final", n_train=400))
    _metrics_finite(base["calibration"]["final"])
    assert "average" not in base["calibration"]               # baselines: final iterate only
    tune = run_one(RunSpec("digits-mlp", "langevin", hp(lr=0.1, temperature_n=100.0), 0, 1,
                           "tune", n_train=400))
    assert "calibration" not in tune                          # tuning records are unchanged


def test_trajectory_average_nll_matches_hand_computation():
    """Record the test softmax at the scheduled steps by hand; average; compute NLL/Brier."""
    steps = math.ceil(400 / 128)
    sched = trajectory_schedule(2, steps)
    seen, final = [], {}

    def on_step(model, step):
        if sched.should_collect(step):
            with torch.no_grad():
                seen.append(model(test_x).softmax(-1).double())
        with torch.no_grad():
            final["probs"] = model(test_x).softmax(-1).double()   # ends as the final iterate

    from difflab.bench.problems import load_problem
    problem = load_problem("digits-mlp", None, 400, None, None)
    test_x, test_y = problem.test_x, problem.test_y
    rec = run_one(LANGEVIN_FINAL, on_step=on_step)
    assert len(seen) == rec["calibration"]["average"]["samples"] > 1
    mean = torch.stack(seen).mean(0)
    p_true = mean[torch.arange(len(test_y)), test_y]
    hand_nll = float(-torch.log(p_true.clamp_min(1e-12)).mean())
    onehot = torch.nn.functional.one_hot(test_y, mean.shape[1]).double()
    hand_brier = float(((mean - onehot) ** 2).sum(1).mean())
    avg = rec["calibration"]["average"]["metrics"]
    assert avg["nll"] == pytest.approx(hand_nll, rel=1e-9, abs=1e-12)
    assert avg["brier"] == pytest.approx(hand_brier, rel=1e-9, abs=1e-12)
    p_final = final["probs"][torch.arange(len(test_y)), test_y]
    assert rec["calibration"]["final"]["nll"] == pytest.approx(
        float(-torch.log(p_final.clamp_min(1e-12)).mean()), rel=1e-6)


def test_twins_use_the_partners_lr_and_seeds_and_only_remove_noise():
    b = get_budget("quick", "digits-mlp")
    tune = []
    for arm, h in (("sgd", {"lr": 0.1}), ("momentum", {"lr": 0.01}),
                   ("langevin", {"lr": 0.05, "temperature_n": 1.0}),
                   ("sghmc", {"lr": 0.003, "temperature_n": 1.0})):
        tune.append({"arm": arm, "phase": "tune", "hparams": h, "curve": {"val_acc": [0.5]}})
    specs = final_specs("digits-mlp", b, tune, arms=("sgd", "momentum", "langevin", "sghmc"))
    for twin, (partner, _) in TWINS.items():
        mine = [s for s in specs if s.arm == twin]
        theirs = [s for s in specs if s.arm == partner]
        assert len(mine) == len(theirs) == b.final_seeds
        assert [s.seed for s in mine] == [s.seed for s in theirs] == \
            list(range(FINAL_SEED0, FINAL_SEED0 + b.final_seeds))
        for m, t in zip(mine, theirs):
            assert dict(m.hparams) == {"lr": dict(t.hparams)["lr"]}
            assert (m.epochs, m.n_train, m.n_val, m.n_test, m.phase) == \
                (t.epochs, t.n_train, t.n_val, t.n_test, "final")
    # without its partner arm no twin is planned
    assert not [s for s in final_specs("digits-mlp", b, tune, arms=("sgd",))
                if s.arm in TWINS]
    # langevin_twin is exactly SGD: temperature 0 removes the noise and nothing else
    twin = run_one(RunSpec("digits-mlp", "langevin_twin", hp(lr=0.1), 100, 1, "final",
                           n_train=400))
    sgd = run_one(RunSpec("digits-mlp", "sgd", hp(lr=0.1), 100, 1, "final", n_train=400))
    assert twin["curve"] == sgd["curve"]
    with pytest.raises(ValueError, match="final phase only"):
        RunSpec("digits-mlp", "langevin_twin", hp(lr=0.1), 0, 1, "tune")


def test_calibration_fields_are_optional_but_validated():
    rec = run_one(LANGEVIN_FINAL)
    old = copy.deepcopy(rec)
    old.pop("calibration")                       # results files written before the feature
    assert record_problem(old) is None
    diverged = copy.deepcopy(rec)
    diverged["calibration"]["final"] = None
    diverged["calibration"]["average"]["metrics"] = None
    assert record_problem(diverged) is None
    bad = []
    for path, value in ((("bins",), 10), (("final", "nll"), -1.0), (("final", "ece"), 2.0),
                        (("final", "brier"), "x"), (("average", "samples"), -1),
                        (("average", "thinning"), 0), (("average", "metrics"), [])):
        m = copy.deepcopy(rec)
        target = m["calibration"]
        for k in path[:-1]:
            target = target[k]
        target[path[-1]] = value
        bad.append(m)
    for path in (("final",), ("average", "metrics"), ("final", "nll")):
        m = copy.deepcopy(rec)
        target = m["calibration"]
        for k in path[:-1]:
            target = target[k]
        target.pop(path[-1])
        bad.append(m)
    m = copy.deepcopy(rec)
    m["calibration"] = 3
    bad.append(m)
    assert all(record_problem(m) is not None for m in bad)
    twin_tune = copy.deepcopy(rec)
    twin_tune["arm"] = "langevin_twin"
    twin_tune["phase"] = "tune"
    assert record_problem(twin_tune) is not None


def test_report_has_calibration_and_twin_sections(tmp_path):
    path = run_benchmark("digits-mlp", "quick", tmp_path,
                         arms=("sgd", "momentum", "langevin", "sghmc"), log=lambda *_: None)
    text = path.read_text()
    for needle in ("## Calibration", "| langevin | final: nll |",
                   "| langevin | trajectory average: nll |", "| sghmc | trajectory average: ece |",
                   "## Noise isolated", "| langevin | test_acc vs langevin_twin |",
                   "| sghmc | nll vs sghmc_twin |", "| langevin_twin | 3 |"):
        assert needle in text, needle
    assert np.isfinite(float(text.split("| langevin | trajectory average: nll | ")[1]
                             .split(" |")[0]))


def test_report_wall_time_leaves_out_pauses_between_invocations():
    from difflab.bench.report import busy_seconds

    assert busy_seconds([(1000.0, 1010.0), (0.0, 10.0), (10.5, 20.0)]) == 30.0
    assert busy_seconds([(0.0, 10.0), (5.0, 8.0)]) == 10.0 and busy_seconds([]) == 0.0
