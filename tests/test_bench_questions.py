"""The bench's questions of issue 13 beyond calibration: shifted test sets (deterministic,
severity-monotone corruptions), ensembles at the same total epochs (the ensemble's predictive is
exactly the mean of its members' softmax), overfitting at matched training accuracy (exact
selection on synthetic histories), and the report sections on a synthetic result set."""
import copy
import math

import numpy as np
import pytest
import torch
from torch import nn

from difflab.bench.ensembles import member_seed
from difflab.bench.matched import at_level, matched_index, matched_level, matched_rows
from difflab.bench.plan import final_specs, get_budget
from difflab.bench.problems import load_problem
from difflab.bench.records import append_record, read_records, record_problem
from difflab.bench.report import write_report
from difflab.bench.runner import ENSEMBLES, TWINS, RunSpec, hp, run_one
from difflab.bench.shifts import (CLEAN, CONDITIONS, SHIFT_SEVERITIES, parse_condition,
                                  shifted_inputs)
from difflab.optim.posterior import PosteriorCollector

torch.set_num_threads(1)


# -- shifted test sets ---------------------------------------------------------------------------
def test_pixels_round_trip_and_shift_shape_range_determinism():
    p = load_problem("digits-mlp", None, 400, None, None)
    pixels = p.to_pixels(p.test_x)
    assert pixels.min() >= 0 and pixels.max() <= 1
    assert torch.allclose(p.from_pixels(pixels), p.test_x, atol=1e-5)
    # the original uint8 grid comes back (digits are k * 255/16 rounded, then / 255)
    assert torch.allclose(pixels * 255, (pixels * 255).round(), atol=1e-3)
    assert torch.equal(shifted_inputs(p, CLEAN, 0, 50), p.test_x[:50])
    for condition in CONDITIONS:
        kind, severity = parse_condition(condition)
        x = shifted_inputs(p, kind, severity, 50)
        assert x.shape == p.test_x[:50].shape and x.dtype == p.test_x.dtype
        px = p.to_pixels(x)
        assert px.min() >= 0 and px.max() <= 1 and torch.isfinite(x).all()
        assert torch.equal(x, shifted_inputs(p, kind, severity, 50))          # seeded
        assert not torch.equal(x, p.test_x[:50])
    # the first rows do not depend on how many are taken (the same images for every n)
    assert torch.equal(shifted_inputs(p, "gaussian_blur", 3, 20),
                       shifted_inputs(p, "gaussian_blur", 3, 50)[:20])
    # each condition has its own seed: two noise severities differ in their draws, not only scale
    a = p.to_pixels(shifted_inputs(p, "gaussian_noise", 1, 50)) - pixels[:50]
    b = p.to_pixels(shifted_inputs(p, "gaussian_noise", 3, 50)) - pixels[:50]
    assert not torch.allclose(a / a.std(), b / b.std(), atol=1e-2)
    with pytest.raises(ValueError, match="invalid shift condition"):
        parse_condition("gaussian_noise/9")


def test_shift_severity_is_monotone_in_pixel_distance():
    p = load_problem("digits-mlp", None, 400, None, None)
    clean = p.to_pixels(p.test_x[:100])
    for kind in ("gaussian_noise", "gaussian_blur", "contrast"):
        dist = [float((p.to_pixels(shifted_inputs(p, kind, s, 100)) - clean).pow(2).mean())
                for s in SHIFT_SEVERITIES]
        assert dist == sorted(dist) and dist[0] > 0, (kind, dist)
        if kind == "contrast":     # contrast also shrinks the per-image spread
            spread = [float(p.to_pixels(shifted_inputs(p, kind, s, 100)).std(dim=(2, 3)).mean())
                      for s in SHIFT_SEVERITIES]
            assert spread == sorted(spread, reverse=True)


# -- ensembles ------------------------------------------------------------------------------------
def test_collector_predictive_is_exactly_the_mean_of_member_softmax():
    torch.manual_seed(3)
    x = torch.randn(64, 5, dtype=torch.float64)
    model = nn.Sequential(nn.Linear(5, 7), nn.Tanh(), nn.Linear(7, 4)).double()
    collector = PosteriorCollector(model, max_snapshots=5)
    members = []
    for k in range(5):
        with torch.no_grad():
            for prm in model.parameters():
                prm.copy_(torch.randn(prm.shape, dtype=torch.float64,
                                      generator=torch.Generator().manual_seed(k)))
            members.append(model(x).softmax(-1))
        collector.collect()
    total = members[0].clone()
    for m in members[1:]:
        total += m
    assert torch.equal(collector.predictive(model, x), total / 5)
    assert torch.allclose(collector.predictive(model, x), torch.stack(members).mean(0),
                          rtol=0, atol=1e-15)
    # float32 outputs: the float64 mean rounded once, or kept in float64 on request
    small = nn.Linear(5, 4)
    c32 = PosteriorCollector(small, max_snapshots=3)
    probs = []
    for k in range(3):
        with torch.no_grad():
            small.weight.add_(0.5)
            probs.append(small(x.float()).softmax(-1).double())
        c32.collect()
    exact = (probs[0] + probs[1] + probs[2]) / 3
    assert torch.equal(c32.predictive(small, x.float(), dtype=torch.float64), exact)
    assert torch.equal(c32.predictive(small, x.float()), exact.float())


@pytest.mark.parametrize("arm", sorted(ENSEMBLES))
def test_ensemble_record_is_the_mean_of_its_members(arm):
    """Capture each member's parameters at the end of its cycle / training, average their test
    softmax by hand: the record's ensemble metrics are those of that mean."""
    problem = load_problem("digits-mlp", None, 400, None, None)
    steps = math.ceil(400 / 128)                  # 4 steps per epoch, 2 epochs, 2 members
    states, seen = {}, []

    def on_step(model, step):
        seen.append(step)
        if (step + 1) % steps == 0:
            states[step] = copy.deepcopy(model.state_dict())

    h = hp(lr=0.05) if arm == "snapshot" else hp(lr=0.01)
    spec = RunSpec("digits-mlp", arm, h, 101, 2, "final", n_train=400, members=2, shift_n=50)
    rec = run_one(spec, on_step=on_step)
    assert seen == list(range(2 * steps)) and sorted(states) == [steps - 1, 2 * steps - 1]
    model = problem.make_model(0)
    probs = []
    for step in sorted(states):
        model.load_state_dict(states[step])
        with torch.no_grad():
            probs.append(model(problem.test_x).softmax(-1).double())
    mean = (probs[0] + probs[1]) / 2
    ens = rec["calibration"]["ensemble"]
    assert ens["kind"] == arm and ens["members"] == 2 and ens["epochs_per_member"] == 1
    y = problem.test_y
    hand_nll = float(-mean[torch.arange(len(y)), y].clamp_min(1e-12).log().mean())
    assert ens["metrics"]["nll"] == pytest.approx(hand_nll, rel=1e-9)
    assert ens["metrics"]["acc"] == float((mean.argmax(1) == y).double().mean())
    last = probs[1][torch.arange(len(y)), y]
    assert rec["calibration"]["final"]["nll"] == pytest.approx(
        float(-last.clamp_min(1e-12).log().mean()), rel=1e-6)
    assert set(rec["shift"]) == {"seed", "n", "final", "ensemble"}
    assert rec["shift"]["n"] == 50 and set(rec["shift"]["ensemble"]) == {CLEAN, *CONDITIONS}
    assert rec["curve"]["epoch"] == [1.0, 2.0] and record_problem(rec) is None
    if arm == "deep_ensemble":
        # member 0 is the run's seed (the start every arm shares), member 1 its own seed
        assert rec["initial_loss"] == run_one(RunSpec("digits-mlp", "adam", h, 101, 1, "final",
                                                      n_train=400))["initial_loss"]
        first = problem.make_model(member_seed(101, 1))
        assert not torch.equal(first[1].weight, problem.make_model(101)[1].weight)


def test_final_plan_adds_ensembles_with_the_base_lr_and_shift_settings():
    b = get_budget("quick", "digits-mlp")
    tune = [{"arm": a, "phase": "tune", "hparams": h, "curve": {"val_acc": [0.5]}}
            for a, h in (("sgd", {"lr": 0.1}), ("momentum", {"lr": 0.02}), ("adam", {"lr": 0.003}),
                         ("langevin", {"lr": 0.05, "temperature_n": 1.0}))]
    specs = final_specs("digits-mlp", b, tune, arms=("sgd", "momentum", "adam", "langevin"))
    for ensemble, base in ENSEMBLES.items():
        mine = [s for s in specs if s.arm == ensemble]
        theirs = [s for s in specs if s.arm == base]
        assert [s.seed for s in mine] == [s.seed for s in theirs] and len(mine) == b.final_seeds
        for m, t in zip(mine, theirs):
            assert dict(m.hparams) == {"lr": dict(t.hparams)["lr"]}
            assert (m.members, m.epochs, m.shift_n) == (b.ensemble_members, t.epochs,
                                                       b.shift_n_test)
    assert all(s.shift_n == 0 for s in specs if s.arm in TWINS)
    assert all(s.trajectory_samples == b.trajectory_samples for s in specs if s.arm == "langevin")
    for name in ("quick", "standard", "full"):
        budget = get_budget(name, "cifar10-cnn")
        assert budget.final_epochs % budget.ensemble_members == 0
    assert get_budget("standard", "cifar10-cnn").final_epochs == 6
    # fields added later stay out of the key at their defaults: old tuning keys remain valid
    tune_key = RunSpec("digits-mlp", "sgd", hp(lr=0.1), 0, 2, "tune").key
    assert "shift_n" not in tune_key and "members" not in tune_key
    assert '"shift_n": 100' in RunSpec("digits-mlp", "sgd", hp(lr=0.1), 0, 2, "final",
                                       shift_n=100).key
    with pytest.raises(ValueError, match="invalid members"):
        RunSpec("digits-mlp", "snapshot", hp(lr=0.1), 0, 3, "final", members=2)
    with pytest.raises(ValueError, match="invalid members"):
        RunSpec("digits-mlp", "sgd", hp(lr=0.1), 0, 2, "final", members=2)
    with pytest.raises(ValueError, match="final phase only"):
        RunSpec("digits-mlp", "deep_ensemble", hp(lr=0.1), 0, 2, "tune", members=2)


# -- matched training accuracy --------------------------------------------------------------------
def _curve(train_acc, test_acc, train_loss, test_loss):
    n = len(train_acc)
    return {"epoch": [float(i + 1) for i in range(n)], "train_eval_acc": train_acc,
            "test_acc": test_acc, "train_eval_loss": train_loss, "test_loss": test_loss}


def test_matched_index_and_level_are_exact():
    history = [0.5, 0.7, 0.69, 0.8, 0.9]
    assert matched_index(history, 0.7) == 1           # reached exactly
    assert matched_index(history, 0.75) == 3          # the dip at index 2 does not count
    assert matched_index(history, 0.5) == 0 and matched_index(history, 0.91) is None
    runs = [{"seed": s, "curve": _curve(h, h, [0.1] * 3, [0.2] * 3)}
            for s, h in enumerate(([0.4, 0.6, 0.8], [0.5, 0.9, 0.7], [0.3, 0.5, 0.6]))]
    ref = [{"seed": s, "curve": _curve(h, h, [0.1] * 3, [0.2] * 3)}
           for s, h in enumerate(([0.6, 0.95, 0.97], [0.7, 0.9, 0.99], [0.8, 0.85, 0.9]))]
    assert matched_level(runs, ref) == 0.8            # peaks 0.8, 0.9, 0.6 -> median 0.8
    assert matched_level(ref, runs) == 0.8
    r = {"curve": _curve([0.6, 0.85, 0.9], [0.55, 0.7, 0.72], [0.9, 0.4, None], [1.0, 0.9, 0.8])}
    got = at_level(r, 0.8)
    assert got == {"epoch": 2.0, "train_acc": 85.0, "test_acc": 70.0, "acc_gap": 15.0,
                   "loss_gap": pytest.approx(0.5)}
    assert at_level(r, 0.9)["loss_gap"] is None and at_level(r, 0.95) is None


def test_matched_rows_pair_only_seeds_that_reach_the_level():
    def run(seed, train, test):
        return {"seed": seed, "curve": _curve(train, test, [0.5] * len(train), [0.7] * len(train))}
    arm = [run(0, [0.5, 0.8], [0.45, 0.7]), run(1, [0.6, 0.85], [0.5, 0.8]),
           run(2, [0.4, 0.6], [0.4, 0.55])]                   # seed 2 never reaches 0.8
    base = [run(0, [0.9, 0.95], [0.8, 0.8]), run(1, [0.85, 0.99], [0.8, 0.9]),
            run(2, [0.8, 0.9], [0.75, 0.8])]
    rows = matched_rows({"langevin": arm, "sgd": base}, "sgd")
    assert [r["metric"] for r in rows] == ["acc_gap", "loss_gap"]
    gap = rows[0]
    assert gap["level"] == 0.8 and gap["reached"] == (2, 3) and gap["ref_reached"] == (3, 3)
    # seed 0: arm (80 - 70) vs base (90 - 80); seed 1: arm (85 - 80) vs base (85 - 80)
    assert gap["n"] == 2 and gap["diff"] == pytest.approx(((10 - 10) + (5 - 5)) / 2)
    assert gap["arm_mean"] == pytest.approx(7.5) and gap["base_mean"] == pytest.approx(7.5)
    assert rows[1]["diff"] == pytest.approx(0.0) and "verdict" in rows[1]


# -- report sections on a synthetic result set ----------------------------------------------------
ENV = {"cpu": "test cpu", "host_cpus": 2, "noise_kernel": "compiled", "python": "3.11",
       "threads": 1, "torch": torch.__version__}
TUNED = {"sgd": {"lr": 0.1}, "momentum": {"lr": 0.03}, "adam": {"lr": 0.003},
         "langevin": {"lr": 0.1, "temperature_n": 1.0}, "sghmc": {"lr": 0.03, "temperature_n": 1.0}}
FINAL = dict(TUNED, langevin_twin={"lr": 0.1}, sghmc_twin={"lr": 0.03}, snapshot={"lr": 0.03},
             deep_ensemble={"lr": 0.003})


def _metrics(rng, acc):
    return {"nll": float(rng.uniform(0.3, 1.0)), "brier": float(rng.uniform(0.1, 0.5)),
            "ece": float(rng.uniform(0.0, 0.1)), "acc": acc, "entropy": float(rng.uniform(0, 2))}


def _shift(rng, acc):
    per = {c: {"acc": float(np.clip(acc - rng.uniform(0, 0.2), 0, 1)),
               "nll": float(rng.uniform(0.3, 2.0)), "entropy": float(rng.uniform(0, 2))}
           for c in (CLEAN,) + CONDITIONS}
    return per


def _record(arm, seed, phase, rng, epochs=3):
    members = 3 if arm in ENSEMBLES else 1
    spec = RunSpec("digits-mlp", arm, hp(**FINAL[arm]), seed, epochs, phase, n_train=400,
                   shift_n=50 if phase == "final" and arm not in TWINS else 0, members=members)
    train = sorted(float(v) for v in rng.uniform(0.6, 0.99, epochs))
    test = [float(v - rng.uniform(0.0, 0.1)) for v in train]
    curve = {"epoch": [float(i + 1) for i in range(epochs)],
             "val_loss": [float(v) for v in rng.uniform(0.3, 1.0, epochs)],
             "val_acc": [float(v) for v in rng.uniform(0.5, 0.95, epochs)],
             "train_loss": [float(v) for v in rng.uniform(0.3, 1.0, epochs)]}
    rec = {"key": spec.key, "problem": "digits-mlp", "arm": arm, "hparams": FINAL[arm],
           "seed": seed, "phase": phase, "epochs": epochs, "n_train": 400, "n_val": 250,
           "n_test": 250, "batch_size": 128, "n_params": 2410, "env": dict(ENV),
           "initial_loss": 2.3, "diverged": False, "spikes": 0, "last_epoch_loss_std": 0.05,
           "curve": curve, "timing": {"train_seconds": [0.1 * (i + 1) for i in range(epochs)],
                                      "wall_seconds": 1.0, "started": 1e9 + seed,
                                      "finished": 1e9 + seed + 1}}
    if phase != "final":
        return rec
    curve.update(train_eval_acc=train, test_acc=test,
                 train_eval_loss=[float(v) for v in rng.uniform(0.1, 0.4, epochs)],
                 test_loss=[float(v) for v in rng.uniform(0.4, 0.9, epochs)])
    acc = test[-1]
    cal = {"bins": 15, "final": _metrics(rng, acc)}
    shift = {"seed": 1, "n": 50, "final": _shift(rng, acc)}
    if arm in ("langevin", "sghmc") or arm in TWINS:
        cal["average"] = {"samples": 10, "thinning": 1, "from_step": 8,
                          "metrics": _metrics(rng, acc)}
        shift["average"] = _shift(rng, acc)
    if arm in ENSEMBLES:
        cal["ensemble"] = {"kind": arm, "members": 3, "epochs_per_member": 1,
                           "metrics": _metrics(rng, acc)}
        shift["ensemble"] = _shift(rng, acc)
    rec["calibration"] = cal
    if arm not in TWINS:
        rec["shift"] = shift
    return rec


def _synthetic_sweep(tmp_path):
    rng = np.random.default_rng(0)
    path = tmp_path / "results.jsonl"
    for arm in TUNED:
        append_record(path, _record(arm, 0, "tune", rng))
    for arm in FINAL:
        for seed in range(100, 104):
            append_record(path, _record(arm, seed, "final", rng))
    return path


def test_report_has_the_new_sections_with_verdicts(tmp_path):
    path = _synthetic_sweep(tmp_path)
    text = write_report(path, tmp_path).read_text()
    for needle in ("## Ensembles at the same total epochs", "3 x 1 = 3 epochs in all",
                   "| snapshot | ensemble: nll vs", "| deep_ensemble | ensemble: acc vs",
                   "| langevin | trajectory average: ece vs snapshot (ensemble)",
                   "| sghmc | trajectory average: brier vs deep_ensemble (ensemble)",
                   "## Robustness under shifted inputs", "| langevin (trajectory average) |",
                   "| snapshot (ensemble) |", "| langevin | final iterate: acc vs",
                   "| deep_ensemble | ensemble: entropy vs", "mean shifted",
                   "## Overfitting at matched training accuracy", "| langevin | acc_gap at L =",
                   "| sghmc | loss_gap at L =", "vs sghmc_twin", "## Calibration",
                   "| snapshot | 4 |", "3 members"):
        assert needle in text, needle
    for section in ("## Ensembles", "## Robustness", "## Overfitting at matched"):
        body = text.split(section)[1].split("\n## ")[0]
        rows = [line for line in body.splitlines() if line.startswith("| ") and "[" in line]
        assert rows and all(any(v in line for v in ("better", "worse", "higher", "lower",
                                                    "no measurable", "inconclusive"))
                            for line in rows), section
    assert (tmp_path / "robustness.png").stat().st_size > 5000
    # records of another plan in the file are left out when the plan's keys are given
    records = read_records(path)
    keep = {r["key"] for r in records if r["arm"] != "snapshot"}
    text = write_report(path, tmp_path / "only", keys=keep).read_text()
    assert "| snapshot | ensemble" not in text and "left out of this report" in text


def test_new_record_fields_are_validated():
    rng = np.random.default_rng(1)
    rec = _record("deep_ensemble", 100, "final", rng)
    assert record_problem(rec) is None
    old = copy.deepcopy(_record("langevin", 100, "final", rng))
    old.pop("shift")
    for m in (old["calibration"]["final"], old["calibration"]["average"]["metrics"]):
        m.pop("acc"), m.pop("entropy")                     # files written before these fields
    assert record_problem(old) is None
    bad = []
    for edit in (lambda r: r["calibration"].pop("ensemble"),
                 lambda r: r["calibration"]["ensemble"].update(kind="snapshot"),
                 lambda r: r["calibration"]["ensemble"].update(members=-1),
                 lambda r: r["calibration"]["final"].update(acc=1.5),
                 lambda r: r["calibration"]["final"].update(entropy=-0.1),
                 lambda r: r["shift"].pop("final"),
                 lambda r: r["shift"].update(n=0),
                 lambda r: r["shift"].update(other={}),
                 lambda r: r["shift"]["final"].update({"gaussian_noise/7": None}),
                 lambda r: r["shift"]["final"]["contrast/5"].update(acc=float("nan")),
                 lambda r: r["shift"]["ensemble"]["clean"].pop("entropy"),
                 lambda r: r.update(phase="tune")):
        r = copy.deepcopy(rec)
        edit(r)
        bad.append(r)
    problems = [record_problem(r) for r in bad]
    assert all(p is not None for p in problems), problems
