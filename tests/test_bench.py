"""difflab.bench: statistics oracles, deterministic and resumable runs, identical records across
executors (sequential, process pool, local Ray on 2 CPUs), the report from records alone."""
import importlib
import json
import os

import numpy as np
import pytest
import torch

from difflab.bench import planned_keys, run_benchmark
from difflab.bench.executors import run_specs
from difflab.bench.records import RecordWarning, append_record, read_records
from difflab.bench.plan import get_budget, tuning_configs
from difflab.bench.problems import build_model, load_problem
from difflab.bench.runner import RunSpec, hp, run_one
from difflab.bench.stats import bootstrap_ci, holm, paired_permutation_p, verdict
from difflab.cli import main

torch.set_num_threads(1)


def _strip_timing(record: dict) -> dict:
    r = dict(record)
    r.pop("timing")
    return r


def _specs(epochs=1):
    return [RunSpec("digits-mlp", "sgd", hp(lr=0.1), 0, epochs, "tune", n_train=400),
            RunSpec("digits-mlp", "langevin", hp(lr=0.1, temperature_n=100.0), 0, epochs, "tune",
                    n_train=400),
            RunSpec("digits-mlp", "sghmc", hp(lr=0.03, temperature_n=10.0), 1, epochs, "final",
                    n_train=400),
            RunSpec("digits-mlp", "adam", hp(lr=0.01), 1, epochs, "final", n_train=400)]


def test_holm_matches_hand_computation():
    # p sorted 0.01, 0.02, 0.04 with m=3 -> 0.03, 0.04, 0.04 (monotone step-down)
    assert np.allclose(holm([0.04, 0.01, 0.02]), [0.04, 0.03, 0.04])
    assert np.isnan(holm([float("nan"), 0.5])[0])


def test_permutation_p_is_exact_for_small_n():
    # all 5 differences positive: only the identity and the all-flip reach |mean| -> 2/32
    assert paired_permutation_p([1, 2, 3, 4, 5]) == pytest.approx(2 / 32)
    assert paired_permutation_p([1, -1, 1, -1]) == 1.0


def test_bootstrap_ci_and_verdict_words():
    lo, hi = bootstrap_ci(np.full(6, 0.1))
    assert lo == pytest.approx(0.1) and hi == pytest.approx(0.1)
    assert verdict([-0.2, 0.3], 0.9, 0.5, +1, "points") == \
        "no measurable difference within +-0.5 points"
    assert verdict([1.0, 2.0], 0.01, 0.5, +1, "points") == "better"
    assert verdict([1.0, 2.0], 0.01, 0.5, -1, "points") == "worse"
    assert verdict([-1.0, 2.0], 0.01, 0.5, +1, "points").startswith("inconclusive")


def test_runs_are_deterministic_and_share_init_and_data_order():
    spec = _specs()[1]
    a, b = run_one(spec), run_one(spec)
    assert _strip_timing(a) == _strip_timing(b)
    sgd = run_one(_specs()[0])
    assert sgd["initial_loss"] == a["initial_loss"]          # common initialization
    assert sgd["curve"]["val_acc"] != a["curve"]["val_acc"]    # but the noise matters
    assert a["env"]["threads"] == 1 and a["env"]["torch"] == torch.__version__


def test_resume_skips_finished_runs_and_ignores_torn_line(tmp_path):
    out = tmp_path / "results.jsonl"
    specs = _specs()
    first = run_specs(specs[:2], out)
    with open(out, "a") as f:
        f.write('{"key": "torn')               # an interrupted write
    calls = []
    with pytest.warns(RecordWarning, match="results.jsonl:3: skipped incomplete last line"):
        records = run_specs(specs[:3], out, progress=calls.append)
    assert len(calls) == 1 and calls[0]["key"] == specs[2].key
    assert [r["key"] for r in records] == [s.key for s in specs[:3]]
    assert records[0]["timing"] == first[0]["timing"]   # reused, not rerun
    with pytest.warns(RecordWarning, match="results.jsonl:3: skipped not valid JSON"):
        assert len(read_records(out)) == 3  # the torn line stays, now followed by the new record


def test_process_pool_gives_identical_records(tmp_path):
    seq = run_specs(_specs(), tmp_path / "seq.jsonl")
    par = run_specs(_specs(), tmp_path / "par.jsonl", executor="process", workers=2)
    assert [_strip_timing(r) for r in par] == [_strip_timing(r) for r in seq]


def test_ray_local_two_cpus_gives_identical_records(tmp_path):
    if os.environ.get("CI", "").lower() == "true":
        importlib.import_module("ray")   # CI installs the ray extra: missing must fail, not skip
    else:
        pytest.importorskip("ray")
    seq = run_specs(_specs(), tmp_path / "seq.jsonl")
    ray_records = run_specs(_specs(), tmp_path / "ray.jsonl", executor="ray", workers=2)
    assert [_strip_timing(r) for r in ray_records] == [_strip_timing(r) for r in seq]
    assert len(read_records(tmp_path / "ray.jsonl")) == len(seq)


def test_budgets_declare_equal_tuning_budget():
    b = get_budget("standard", "cifar10-cnn")
    sizes = {arm: len(tuning_configs(arm, b)[0]) for arm in
             ("sgd", "momentum", "momentum_wd", "adam", "langevin", "tutorial", "sghmc",
              "annealed")}
    assert set(sizes.values()) == {8}
    tune, grid = tuning_configs("langevin", b)
    assert not set(tune) & set(grid) and len(grid) == 16    # heatmap-only runs
    with pytest.raises(ValueError, match="unknown budget"):
        get_budget("huge", "cifar10-cnn")


def test_quick_benchmark_writes_whole_report(tmp_path):
    path = run_benchmark("digits-mlp", "quick", tmp_path, command="difflab bench test",
                         log=lambda *_: None)
    text = path.read_text()
    for needle in ("## Verdicts", "| langevin | accuracy |", "| sghmc | overhead |",
                   "Sensitivity", "## Step overhead", "difflab bench test", "+-0.5 points",
                   "## Calibration", "| annealed | trajectory average: nll |",
                   "## Noise isolated", "| sghmc | gap vs sghmc_twin |",
                   "## Ensembles at the same total epochs", "| deep_ensemble | ensemble: nll vs",
                   "| langevin | trajectory average: acc vs snapshot (ensemble)",
                   "## Robustness under shifted inputs", "| snapshot | ensemble: acc vs",
                   "| annealed | trajectory average: entropy vs",
                   "## Overfitting at matched training accuracy",
                   "| tutorial | acc_gap at L =", "| langevin | loss_gap at L ="):
        assert needle in text, needle
    for png in ("learning_curves.png", "sensitivity.png", "heatmap_langevin.png",
                "robustness.png"):
        assert (tmp_path / png).stat().st_size > 5000
    records = read_records(tmp_path / "results.jsonl")
    assert planned_keys(tmp_path / "results.jsonl") == {r["key"] for r in records
                                                        if r.get("kind", "run") == "run"}
    # a final run of an older plan (other length) stays in the file but out of the report
    stale = json.loads(json.dumps(next(r for r in records if r.get("phase") == "final")))
    spec = json.loads(stale["key"])
    spec["epochs"] = stale["epochs"] = 5
    stale["key"] = json.dumps(spec, sort_keys=True)
    stale["curve"]["epoch"] = [2.5, 5.0]
    append_record(tmp_path / "results.jsonl", stale)
    path = run_benchmark("digits-mlp", "quick", tmp_path, log=lambda *_: None)  # resume: no run
    assert len(read_records(tmp_path / "results.jsonl")) == len(records) + 1
    assert "1 run record(s) of another plan" in path.read_text()


def test_cli_errors_are_one_line(tmp_path, capsys):
    assert main(["bench", "optimizers", "--report-only", "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("difflab: error:") and "no result records" in err
    with pytest.raises(SystemExit):
        main(["bench", "optimizers", "--budget", "huge"])


def test_cifar10_problem_split_and_model(data_dir):
    p = load_problem("cifar10-cnn", str(data_dir))
    assert (p.train_x.shape[0], p.val_x.shape[0], p.test_x.shape[0]) == (45000, 5000, 10000)
    assert sum(q.numel() for q in build_model("cifar10-cnn").parameters()) == 62006
    assert abs(p.train_x.mean().item()) < 1e-3 and abs(p.train_x.std().item() - 1) < 1e-2
    assert p.train_y.bincount().min() > 4300


def test_record_is_json_serializable():
    rec = run_one(_specs()[3])
    assert json.loads(json.dumps(rec)) == rec
    append_record  # used by the runner; kept importable
