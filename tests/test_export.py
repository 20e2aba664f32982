"""``python -m harness.export`` against a real MLflow sqlite store written like harness.tracking."""

from __future__ import annotations

import contextlib
import io
import itertools
import json
import time

import mlflow
import pandas as pd
import pytest
from mlflow.entities import Metric, Param

from harness import export, report

FACTORS = {"stem": ["none", "deep"], "optimizer": ["sgd", "adam", "lamb"]}
DEFAULTS = {"stem": "none", "optimizer": "sgd"}
GAIN = {"none": 0.0, "deep": 3.0, "sgd": 0.0, "adam": 6.0, "lamb": 1.5}
SEEDS = (0, 1)


def _accuracy(stem: str, optimizer: str, seed: int) -> float:
    bonus = 1.0 if (stem, optimizer) == ("deep", "adam") else 0.0  # an interaction
    # Seed noise of up to 0.4 points that differs between configs, so no pair repeats exactly.
    wobble = 0.2 * ((seed + 2 * seed * (stem == "deep") + len(optimizer)) % 3)
    return 55.0 + GAIN[stem] + GAIN[optimizer] + bonus + 0.7 * seed + wobble


def _trial(client, experiment_id, parent_id, toggles, seed, status, metrics, failure=None):
    tags = {
        "mlflow.parentRunId": parent_id,
        "harness.role": "trial",
        "harness.toggles": json.dumps(toggles),
        "harness.seed": str(seed),
        "harness.device": "cpu",
    }
    if failure:
        tags |= {"harness.failure": failure, "harness.failure_reason": f"synthetic {failure}"}
    run = client.create_run(experiment_id, tags=tags)
    now = int(time.time() * 1000)
    client.log_batch(
        run.info.run_id,
        metrics=[Metric(name, value, now, 0) for name, value in metrics.items()],
        params=[Param(trick, option) for trick, option in toggles.items()]
        + [Param("seed", str(seed))],
    )
    client.set_terminated(run.info.run_id, status)


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """A store with study "tricks", budget "cpu": a 2 × 3 grid, 2 seeds, a diverged and a crash."""
    folder = tmp_path_factory.mktemp("store")
    uri = f"sqlite:///{folder}/mlflow.db"
    client = mlflow.MlflowClient(uri)
    experiment_id = client.create_experiment(
        "tricks-cpu", artifact_location=(folder / "artifacts").as_uri()
    )
    parent = client.create_run(
        experiment_id,
        tags={
            "harness.role": "parent",
            "harness.study": "tricks",
            "harness.budget": "cpu",
            "harness.factors": json.dumps(FACTORS),
            "harness.defaults": json.dumps(DEFAULTS),
            "harness.kind": "grid",
        },
    )
    parent_id = parent.info.run_id
    for stem, optimizer, seed in itertools.product(*FACTORS.values(), SEEDS):
        toggles = {"stem": stem, "optimizer": optimizer}
        acc = _accuracy(stem, optimizer, seed)
        metrics = {
            "test_acc": acc,
            "val_acc": acc - 0.5,
            "test_loss": 1.5 - acc / 100,
            "test_acc_cat": acc - 3.0,
            "test_acc_dog": acc + 3.0,
            "train_seconds": 40.0 + 10.0 * (stem == "deep") + 5.0 * (optimizer != "sgd"),
            "epochs_completed": 2.0,
        }
        if (stem, optimizer, seed) == ("none", "lamb", 1):  # diverged: still a result
            _trial(
                client,
                experiment_id,
                parent_id,
                toggles,
                seed,
                "FAILED",
                {**metrics, "test_acc": 10.0},
                failure="diverged",
            )
        else:
            _trial(client, experiment_id, parent_id, toggles, seed, "FINISHED", metrics)
    _trial(client, experiment_id, parent_id, dict(DEFAULTS), 7, "FAILED", {}, failure="crashed")
    client.set_terminated(parent_id, "FINISHED")
    # An older parent of the same experiment (another restriction of the study): never mixed in.
    older = client.create_run(
        experiment_id,
        start_time=int(time.time() * 1000) - 86_400_000,  # a day earlier, in milliseconds
        tags={
            "harness.role": "parent",
            "harness.factors": json.dumps({"stem": ["none", "deep"]}),
            "harness.kind": "grid",
        },
    ).info.run_id
    _trial(client, experiment_id, older, {"stem": "deep"}, 0, "FINISHED", {"test_acc": 1.0})
    return {"uri": uri, "folder": folder, "parent_id": parent_id, "older_parent_id": older}


@pytest.fixture(scope="module")
def exported(store, tmp_path_factory):
    """Run the export once; return its exit code, printout and output folder."""
    out = tmp_path_factory.mktemp("export") / "tricks-cpu"
    stdout = io.StringIO()  # capsys is function-scoped, so capture by hand
    with contextlib.redirect_stdout(stdout):
        code = export.main(
            ["study=tricks", "budget=cpu", f"out={out}", f"tracking_uri={store['uri']}"]
        )
    return {"code": code, "stdout": stdout.getvalue(), "out": out}


def test_load_runs_follows_the_schema(store):
    runs, meta = report.load_runs(store["uri"], "tricks", "cpu")
    assert meta["factors"] == FACTORS and meta["defaults"] == DEFAULTS
    assert meta["design"].name == "grid" and meta["parent_run_id"] == store["parent_id"]
    assert len(runs) == 13
    for column in (
        "run_id",
        "status",
        "failure",
        "seed",
        "stem",
        "optimizer",
        "test_acc",
        "val_acc",
        "test_loss",
        "test_acc_cat",
        "test_acc_dog",
        "train_seconds",
        "epochs_completed",
        "device",
    ):
        assert column in runs.columns
    assert sorted(runs["failure"].dropna()) == ["crashed", "diverged"]
    assert set(runs["seed"]) == {0, 1, 7}
    assert set(runs["device"]) == {"cpu"}


def test_export_writes_the_tables(exported):
    assert exported["code"] == 0
    out = exported["out"]
    for name in (
        "configs.csv",
        "effects.csv",
        "interactions.csv",
        "verdict.md",
        "pareto.png",
        "cost_vs_accuracy.png",
    ):
        assert (out / name).stat().st_size > 0
    assert not [path.name for path in out.iterdir() if path.name.startswith(".")]
    configs = pd.read_csv(out / "configs.csv", keep_default_na=False, na_values=[""])
    assert list(configs.columns) == report.config_columns(FACTORS, ["cat", "dog"])
    assert len(configs) == 6 and configs["n_seeds"].eq(2).all()
    assert configs["n_failed"].sum() == 1 and configs["n_excluded"].sum() == 1
    effects = pd.read_csv(out / "effects.csv")
    assert list(effects.columns) == list(report.EFFECT_COLUMNS)
    assert list(zip(effects["trick"], effects["option"])) == [
        ("stem", "deep"),
        ("optimizer", "adam"),
        ("optimizer", "lamb"),
    ]
    assert effects["n_pairs"].tolist() == [6, 4, 4]
    interactions = pd.read_csv(out / "interactions.csv")
    assert list(interactions.columns) == list(report.INTERACTION_COLUMNS)
    # stem × adam: the +1 bonus. stem × lamb: the diverged (none, lamb, seed 1) run logged 10%
    # instead of its accuracy, which shows up in one of the two seeds' quadruples.
    lamb = (_accuracy("none", "lamb", 1) - 10.0) / 2
    assert interactions["interaction_mean"].tolist() == pytest.approx([1.0, lamb])


def test_effects_equal_the_mean_difference_of_config_means(exported):
    """With the same seeds in every config, the paired mean equals the difference of means."""
    out = exported["out"]
    configs = pd.read_csv(out / "configs.csv").set_index(list(FACTORS))
    effects = pd.read_csv(out / "effects.csv")
    assert len(effects) == 3  # stem=deep, optimizer=adam, optimizer=lamb: the loop checks each
    for row in effects.itertuples():
        others = [trick for trick in FACTORS if trick != row.trick]
        by_trick = configs["test_acc_mean"].unstack(row.trick)
        differences = by_trick[row.option] - by_trick[row.baseline_option]
        assert len(differences) == len(configs) // len(FACTORS[row.trick]), others
        assert row.effect_mean == pytest.approx(differences.mean())
        seconds = configs["train_seconds_mean"].unstack(row.trick)
        assert row.cost_delta_seconds == pytest.approx(
            (seconds[row.option] - seconds[row.baseline_option]).mean()
        )


def test_export_prints_the_verdict_and_paths(store, exported):
    text = exported["stdout"]
    assert f"Study tricks-cpu: 13 trial runs of parent run {store['parent_id']}" in text
    assert "1 other parent run(s) there, choose with parent=RUN_ID" in text
    assert "rank  trick      option  call" in text and "undetermined" in text
    assert "1 run(s) crashed" in text
    assert str(exported["out"] / "effects.csv") in text


def test_export_calls_effects_on_another_metric(store, exported, tmp_path, capsys):
    # The store's loss is 1.5 - accuracy / 100: each option's gain on the loss (how much it
    # lowers it) is its effect on accuracy over 100 where no pair holds the diverged run (whose
    # accuracy alone was set to 10%): Adam's pairs are with SGD, never with LAMB.
    argv = ["study=tricks", "budget=cpu", f"out={tmp_path}", f"tracking_uri={store['uri']}",
            "metric=test_loss"]
    assert export.main(argv) == 0
    text = capsys.readouterr().out
    assert "Effects are on test_loss" in text and "nats" in text
    on_loss = pd.read_csv(tmp_path / "effects.csv").set_index(["trick", "option"])
    on_acc = pd.read_csv(exported["out"] / "effects.csv").set_index(["trick", "option"])
    adam = ("optimizer", "adam")
    assert on_loss.loc[adam, "effect_mean"] == pytest.approx(
        on_acc.loc[adam, "effect_mean"] / 100, abs=1e-9)
    assert on_loss.loc[("stem", "deep"), "effect_mean"] > 0  # it lowers the loss
    assert (on_loss["margin"] == 0.05).all()  # the loss's own margin, in nats


def test_an_older_parent_is_chosen_by_id(store):
    runs, meta = report.load_runs(store["uri"], "tricks", "cpu", store["older_parent_id"])
    assert meta["factors"] == {"stem": ["none", "deep"]} and meta["defaults"] == {"stem": "none"}
    assert len(runs) == 1 and runs.loc[0, "test_acc"] == 1.0


def test_unknown_parent_is_one_line(store, capsys):
    argv = ["study=tricks", "budget=cpu", "parent=abc", f"tracking_uri={store['uri']}"]
    assert export.main(argv) == 2
    assert "unknown parent run of 'tricks-cpu' 'abc'" in _error_line(capsys)


def _error_line(capsys) -> str:
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1, captured.err
    assert lines[0].startswith("error: ")
    return lines[0]


def test_unknown_study_is_one_line_naming_the_experiments(store, tmp_path, capsys):
    out = tmp_path / "never"
    code = export.main(["study=nope", "budget=cpu", f"out={out}", f"tracking_uri={store['uri']}"])
    assert code == 2
    line = _error_line(capsys)
    assert "no experiment 'nope-cpu'" in line and "tricks-cpu" in line
    assert not out.exists()


def test_missing_store_is_one_line_and_creates_nothing(tmp_path, capsys):
    database = tmp_path / "absent" / "mlflow.db"
    out = tmp_path / "never"
    code = export.main(
        ["study=tricks", "budget=cpu", f"out={out}", f"tracking_uri=sqlite:///{database}"]
    )
    assert code == 2
    assert "no MLflow store at" in _error_line(capsys)
    assert not database.exists() and not out.exists()


@pytest.mark.parametrize(
    "argv, message",
    [
        (["study=tricks", "bugdet=cpu"], "unknown argument 'bugdet' (did you mean 'budget'?)"),
        (["study=tricks", "cpu"], "is not key=value"),
        (["budget=cpu"], "missing study=NAME"),
        (["study=a", "study=b"], "given twice"),
        (["study=tricks", "metric=test_lose"], "unknown metric 'test_lose' (did you mean"),
    ],
)
def test_bad_arguments_are_one_line(argv, message, capsys):
    assert export.main(argv) == 2
    assert message in _error_line(capsys)


def test_empty_experiment_is_one_line(store, capsys):
    client = mlflow.MlflowClient(store["uri"])
    experiment_id = client.create_experiment("empty-cpu")
    client.create_run(
        experiment_id,
        tags={"harness.role": "parent", "harness.factors": json.dumps(FACTORS)},
    )
    assert export.main(["study=empty", "budget=cpu", f"tracking_uri={store['uri']}"]) == 2
    assert "has no trial runs" in _error_line(capsys)


def test_log_report_to_mlflow_puts_the_files_under_report(store, exported):
    from harness.report import log_report_to_mlflow

    out = exported["out"]
    names = ("configs.csv", "effects.csv", "interactions.csv", "verdict.md", "pareto.png")
    paths = {name.split(".")[0]: out / name for name in names}
    log_report_to_mlflow(paths, store["parent_id"], store["uri"])
    client = mlflow.MlflowClient(store["uri"])
    logged = sorted(item.path for item in client.list_artifacts(store["parent_id"], "report"))
    assert logged == sorted(f"report/{name}" for name in names)


def _study(store, name, factors, trials, kind="grid"):
    """Log a parent run and its ``trials`` (toggles, seed, status, metrics, failure) as ``name``."""
    client = mlflow.MlflowClient(store["uri"])
    experiment_id = client.create_experiment(f"{name}-cpu")
    parent_id = client.create_run(
        experiment_id,
        tags={"harness.role": "parent", "harness.factors": json.dumps(factors),
              "harness.kind": kind},
    ).info.run_id
    for toggles, seed, status, metrics, failure in trials:
        _trial(client, experiment_id, parent_id, toggles, seed, status, metrics, failure)
    return name


def _exported_text(store, name, tmp_path, capsys) -> str:
    code = export.main([f"study={name}", "budget=cpu", f"out={tmp_path / name}",
                        f"tracking_uri={store['uri']}"])
    assert code == 0
    return capsys.readouterr().out


def test_a_one_config_study_gets_a_sentence(store, tmp_path, capsys):
    trials = [({"depth": "simplecnn"}, seed, "FINISHED", {"test_acc": 52.0 + seed}, None)
              for seed in (0, 1)]
    name = _study(store, "single", {"depth": ["simplecnn"]}, trials)
    text = _exported_text(store, name, tmp_path, capsys)
    assert "One config only (depth=simplecnn): 52.5% test accuracy over 2 seed(s)" in text
    assert "n/a" not in text


def test_a_failed_only_study_gets_a_sentence(store, tmp_path, capsys):
    trials = [({"stem": stem}, 0, "FAILED", {}, "crashed") for stem in ("none", "deep")]
    name = _study(store, "failed", {"stem": ["none", "deep"]}, trials)
    text = _exported_text(store, name, tmp_path, capsys)
    assert "No trial has a result yet: 2 crashed, were pruned or interrupted." in text
    assert "n/a" not in text


def test_a_search_study_names_its_best_trial(store, tmp_path, capsys):
    trials = [({"stem": stem}, 0, "FINISHED", {"test_acc": acc, "val_acc": acc - 1}, None)
              for stem, acc in (("none", 50.0), ("deep", 55.0), ("none", 51.0))]
    name = _study(store, "search", {"stem": ["none", "deep"]}, trials, kind="optuna")
    text = _exported_text(store, name, tmp_path, capsys)
    assert "An Optuna search, not a grid, so no option is called: of 3 trials the best is " \
           "stem=deep at 54.0% validation and 55.0% test accuracy" in text


def test_a_live_worker_s_runs_are_running_not_crashed(store, tmp_path, capsys):
    client = mlflow.MlflowClient(store["uri"])
    trials = [({"stem": stem}, seed, "FINISHED",
                {"test_acc": 50.0 + 3 * (stem == "deep") + seed * (1 + (stem == "deep")),
                 "test_images": 10_000}, None)
              for stem in ("none", "deep") for seed in (0, 1)]
    name = _study(store, "live", {"stem": ["none", "deep"]}, trials)
    experiment = client.get_experiment_by_name("live-cpu")
    parent = client.search_runs([experiment.experiment_id], "tags.`harness.role` = 'parent'")[0]
    client.create_run(experiment.experiment_id, tags={  # left RUNNING, as a live worker's
        "mlflow.parentRunId": parent.info.run_id, "harness.role": "trial",
        "harness.toggles": json.dumps({"stem": "deep"}), "harness.seed": "2"})
    text = _exported_text(store, name, tmp_path, capsys)
    assert "1 trial(s) still running elsewhere; the report will be complete when the last " \
           "worker ends." in text
    assert "crashed" not in text
    effects = pd.read_csv(tmp_path / name / "effects.csv")
    # The running trial is left out: the effect rests on the two finished pairs.
    assert effects.loc[0, "n_pairs"] == 2 and effects.loc[0, "effect_mean"] == 3.5
    assert effects.loc[0, "ci_source"] == "paired runs; test set: bound (no per-example results)"
    assert {"p_value", "p_adjusted", "call"} <= set(effects.columns)
