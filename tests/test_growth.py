"""Growing a study: more seeds, a new factor or option, a superset study file, a changed recipe.

Every test runs real studies into a temporary SQLite MLflow store and an Optuna journal. A trial
is known by its identity (what it computes), so a grown study trains only the trials it lacks.
"""

import hashlib
import json
import re
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import mlflow
import pytest

from harness.config.settings import build_config, with_more_seeds
from harness.core.errors import UserError
from harness.report import build_report, load_runs
from harness.report.render import grow_command
from harness.run import main
from harness.study.identity import trial_identity
from harness.tracking.schema import Tag
from tests.conftest import make_learnable_folder
from tests.test_study import store_args
from tests.test_workers import harness

SMALL_STUDY = ("kind: grid\n"
               "recipe: {model: {arch: simplecnn}, data: {name: imagefolder}}\n")


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small learnable ImageFolder: enough for smoke trials, quick to train."""
    return make_learnable_folder(tmp_path_factory.mktemp("images"), per_class_train=12,
                                 per_class_test=4)


def args_for(images: Path, tmp: Path, *extra: str) -> list[str]:
    """The store arguments of tests/test_study.py, with a validation split this data can hold."""
    return [*store_args(images, tmp), "data.val_size=6", *extra]


def small_study(tmp: Path, factors: str) -> Path:
    """Write (or rewrite) the study file ``tmp/grow.yaml`` with ``factors``."""
    path = tmp / "grow.yaml"
    path.write_text(SMALL_STUDY + f"factors: {factors}\n")
    return path


def experiment_runs(tmp: Path, experiment: str):
    """Return (client, experiment id, trial runs, parent runs, newest first)."""
    client = mlflow.MlflowClient(f"sqlite:///{tmp}/mlflow.db")
    found = client.get_experiment_by_name(experiment)
    runs = client.search_runs([found.experiment_id], f"tags.`{Tag.ROLE}` = 'trial'")
    parents = client.search_runs([found.experiment_id], f"tags.`{Tag.ROLE}` = 'parent'",
                                 order_by=["attributes.start_time DESC"])
    return client, found.experiment_id, runs, parents


def finished(runs):
    return [r for r in runs if r.info.status == "FINISHED"]


def trained_under(runs, parent_id: str):
    """The runs a parent trained itself (not the ones it adopted)."""
    return [r for r in runs if r.data.tags.get(Tag.PARENT) == parent_id]


def assert_one_finished_run_per_identity(runs, count: int) -> None:
    done = finished(runs)
    identities = [r.data.tags[Tag.IDENTITY] for r in done]
    assert len(done) == count and len(set(identities)) == count, identities


def toggles_of(run) -> tuple:
    return tuple(sorted(json.loads(run.data.tags[Tag.TOGGLES]).items()))


@pytest.mark.slow
def test_more_seeds_train_only_the_new_seeds(images, tmp_path, capsys):
    first = ["study=tricks", *args_for(images, tmp_path), "seeds=[0]"]
    assert main(first) == 0
    capsys.readouterr()
    assert main(["study=tricks", *args_for(images, tmp_path), "seeds=[0,1]"]) == 0
    out = capsys.readouterr().out
    assert "16 reused, 16 to run" in out, out
    _, _, runs, parents = experiment_runs(tmp_path, "tricks-smoke")
    assert len(parents) == 2
    grown = trained_under(runs, parents[0].info.run_id)
    assert len(grown) == 16 and {r.data.tags[Tag.SEED] for r in grown} == {"1"}
    assert_one_finished_run_per_identity(runs, 32)
    counted, _ = load_runs(f"sqlite:///{tmp_path}/mlflow.db", "tricks", "smoke")
    assert len(counted) == 32 and set(counted["seed"]) == {0, 1}


@pytest.mark.slow
def test_new_factor_option_and_superset_file_train_only_new_configs(images, tmp_path, capsys):
    study = small_study(tmp_path, "{optimizer: [sgd, adam]}")
    assert main([f"study={study}", *args_for(images, tmp_path)]) == 0
    capsys.readouterr()

    # The study file edited to a superset: a new factor, whose default changes no recipe value.
    small_study(tmp_path, "{optimizer: [sgd, adam], label_smoothing: ['0.0', '0.1']}")
    assert main([f"study={study}", *args_for(images, tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "2 reused, 2 to run" in out, out
    _, _, runs, parents = experiment_runs(tmp_path, "grow-smoke")
    new = trained_under(runs, parents[0].info.run_id)
    assert {dict(toggles_of(r))["label_smoothing"] for r in new} == {"0.1"} and len(new) == 2

    # One more option of that factor on the command line.
    assert main([f"study={study}", *args_for(images, tmp_path),
                 "factors.label_smoothing=[0.0,0.1,0.2]"]) == 0
    out = capsys.readouterr().out
    assert "4 reused, 2 to run" in out, out
    _, _, runs, parents = experiment_runs(tmp_path, "grow-smoke")
    new = trained_under(runs, parents[0].info.run_id)
    assert {dict(toggles_of(r))["label_smoothing"] for r in new} == {"0.2"} and len(new) == 2
    assert_one_finished_run_per_identity(runs, 6)
    counted, meta = load_runs(f"sqlite:///{tmp_path}/mlflow.db", "grow", "smoke")
    assert len(counted) == 6 and meta["parent_run_id"] == parents[0].info.run_id


@pytest.mark.slow
def test_changed_recipe_value_trains_everything_again(images, tmp_path, capsys):
    study = small_study(tmp_path, "{optimizer: [sgd, adam]}")
    assert main([f"study={study}", *args_for(images, tmp_path)]) == 0
    assert main([f"study={study}", *args_for(images, tmp_path), "trainer.epochs=2"]) == 0
    out = capsys.readouterr().out
    assert not re.search(r"\d+ reused", out), out
    _, _, runs, parents = experiment_runs(tmp_path, "grow-smoke")
    assert len(trained_under(runs, parents[0].info.run_id)) == 2
    assert_one_finished_run_per_identity(runs, 4)


@pytest.mark.slow
def test_report_command_adds_seeds_and_trains_only_them(images, tmp_path, capsys):
    study = small_study(tmp_path, "{optimizer: [sgd, adam]}")
    assert main([f"study={study}", *args_for(images, tmp_path)]) == 0
    report = build_report(f"sqlite:///{tmp_path}/mlflow.db", "grow", "smoke", tmp_path / "r")
    command = grow_command(report.verdict, 3)
    words = shlex.split(command)
    assert words[:3] == ["python", "-m", "harness.run"] and words[-1] == "seeds=[0,1,2]"
    assert words[3] == f"study={study}" and "budget=smoke" in words
    capsys.readouterr()
    assert main(words[3:]) == 0
    out = capsys.readouterr().out
    assert "2 reused, 4 to run" in out, out
    _, _, runs, parents = experiment_runs(tmp_path, "grow-smoke")
    assert {r.data.tags[Tag.SEED] for r in trained_under(runs, parents[0].info.run_id)} == {
        "1", "2"}
    assert main(words[3:]) == 0  # the same command again: nothing left to train
    assert "already done" in capsys.readouterr().out


@pytest.mark.slow
def test_rerun_replaces_the_old_run_and_deletes_nothing(images, tmp_path, capsys):
    study = small_study(tmp_path, "{optimizer: [sgd, adam]}")
    args = [f"study={study}", *args_for(images, tmp_path)]
    assert main(args) == 0
    _, _, old_runs, _ = experiment_runs(tmp_path, "grow-smoke")
    capsys.readouterr()
    assert main([*args, "rerun=true"]) == 0
    out = capsys.readouterr().out
    assert out.count("replaces run") == 2 and not re.search(r"\d+ reused", out), out
    client, _, runs, parents = experiment_runs(tmp_path, "grow-smoke")
    assert len(finished(runs)) == 4  # the old runs are kept, FINISHED
    new = trained_under(runs, parents[0].info.run_id)
    old_ids = {r.info.run_id for r in old_runs}
    for run in new:
        replaced = run.data.tags[Tag.REPLACES]
        assert replaced in old_ids
        assert client.get_run(replaced).data.tags[Tag.REPLACED_BY] == run.info.run_id
    # Either parent's report counts one run per identity: the new ones.
    for parent in parents:
        counted, _ = load_runs(f"sqlite:///{tmp_path}/mlflow.db", "grow", "smoke",
                               parent_run_id=parent.info.run_id)
        assert set(counted["run_id"]) == {r.info.run_id for r in new}
    # A grown study after the re-run adopts the replacements, not the replaced runs.
    assert main([*args, "seeds=[0,1]"]) == 0
    _, _, runs, parents = experiment_runs(tmp_path, "grow-smoke")
    counted, _ = load_runs(f"sqlite:///{tmp_path}/mlflow.db", "grow", "smoke")
    assert len(counted) == 4 and not (set(counted["run_id"]) & old_ids)


@pytest.mark.slow
def test_runs_without_identity_are_not_reused_and_still_export(images, tmp_path, capsys):
    study = small_study(tmp_path, "{optimizer: [sgd, adam]}")
    args = [f"study={study}", *args_for(images, tmp_path)]
    assert main(args) == 0
    client, _, runs, _ = experiment_runs(tmp_path, "grow-smoke")
    for run in runs:  # as a store written before identities existed
        client.delete_tag(run.info.run_id, Tag.IDENTITY)
    capsys.readouterr()
    assert main([*args, "seeds=[0,1]"]) == 0
    out = capsys.readouterr().out
    # The settle advice may say finished runs are reused; no run may be counted as reused.
    assert not re.search(r"\d+ reused", out), out
    counted, _ = load_runs(f"sqlite:///{tmp_path}/mlflow.db", "grow", "smoke")
    assert len(counted) == 4
    old_parent = experiment_runs(tmp_path, "grow-smoke")[3][-1].info.run_id
    report = build_report(f"sqlite:///{tmp_path}/mlflow.db", "grow", "smoke", tmp_path / "old",
                          parent_run_id=old_parent)
    assert len(report.configs) == 2


@pytest.mark.slow
def test_more_seeds_syntax_reads_the_seeds_already_run(images, tmp_path):
    study = small_study(tmp_path, "{optimizer: [sgd, adam]}")
    args = [f"study={study}", *args_for(images, tmp_path)]
    assert build_config([*args, "seeds=+2"]).seeds == (0,)  # parsing reads no store
    # A fresh store: the study's [0] and two new ones.
    assert with_more_seeds(build_config([*args, "seeds=+2"])).seeds == (0, 1, 2)
    assert not (tmp_path / "mlflow.db").exists()  # read only: nothing was created
    assert main([*args, "seeds=[0,3]"]) == 0
    assert with_more_seeds(build_config([*args, "seeds=+1"])).seeds == (0, 3, 4)


def _file_hashes(folder: Path) -> dict[str, str]:
    return {str(p): hashlib.sha256(p.read_bytes()).hexdigest() for p in folder.rglob("*")
            if p.is_file()}


@pytest.mark.parametrize("bad", [
    ["seeds=+0"], ["seeds=+x"], ["seeds=+1", "seeds=[0]"], ["seeds=+1", "seeds=+2"],
    ["rerun=maybe"], ["rerun=1"],
])
def test_bad_growth_inputs_get_one_line_and_write_nothing(images, tmp_path, capsys, bad):
    study = small_study(tmp_path, "{optimizer: [sgd, adam]}")
    before = _file_hashes(tmp_path)
    assert main([f"study={study}", *args_for(images, tmp_path), *bad]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: "), err
    assert _file_hashes(tmp_path) == before
    with pytest.raises(UserError):
        build_config([f"study={study}", *args_for(images, tmp_path), *bad])


def test_identity_is_what_a_trial_computes():
    cfg = build_config(["study=tricks", "budget=smoke"])
    plan = cfg.plan()
    toggles = dict(cfg.configs[0])
    recipe = plan.trial_recipe(toggles, 0)
    same = plan.trial_recipe({**toggles, "label_smoothing": "0.0"}, 0)  # a default: no change
    assert same.seed == recipe.seed
    identity = trial_identity(recipe, 0, "smoke", "digest")
    assert trial_identity(same, 0, "smoke", "digest") == identity
    assert trial_identity(recipe, 1, "smoke", "digest") != identity
    assert trial_identity(recipe, 0, "smoke", "other data") != identity
    longer = build_config(["study=tricks", "budget=smoke", "trainer.epochs=2"]).plan()
    assert trial_identity(longer.trial_recipe(toggles, 0), 0, "smoke", "digest") != identity



@pytest.mark.slow
def test_growth_after_sigkill_finishes_every_trial_once(images, tmp_path):
    # Four configs, each slow enough (many epochs) to be killed in the middle of one. A gentle
    # SGD rate: at 0.1 the deep stem diverged on some CPUs, and a diverged trial is run again.
    base = ["study=tricks", *args_for(images, tmp_path), "depth=resnet18", "init=default",
            "trainer.epochs=30", "trainer.batch_size=8", "optimizer.lr=0.02"]
    assert main([*base, "seeds=[0]"]) == 0
    process = harness([*base, "seeds=[0,1]"])
    lines = []
    deadline = time.time() + 240
    for line in process.stdout:
        lines.append(line)
        if line.startswith("trial 5:"):  # the grown study's second trial of its own
            time.sleep(0.5)
            process.send_signal(signal.SIGKILL)
            break
        assert time.time() < deadline, "".join(lines)
    process.wait(timeout=30)
    assert process.returncode == -signal.SIGKILL, "".join(lines)
    assert any("4 reused, 4 to run" in line for line in lines), "".join(lines)

    completed = subprocess.run([sys.executable, "-m", "harness.run", *base, "seeds=[0,1]"],
                               capture_output=True, text=True, timeout=600)
    assert completed.returncode == 0, completed.stdout + completed.stderr
    assert "4 reused" in completed.stdout and "1 trial(s) already done, 3 to run" in \
        completed.stdout, completed.stdout
    _, _, runs, parents = experiment_runs(tmp_path, "tricks-smoke")
    assert_one_finished_run_per_identity(runs, 8)
    assert "RUNNING" not in {r.info.status for r in runs}
    assert "KILLED" in {r.info.status for r in runs}
    assert parents[0].info.status == "FINISHED"
    counted, _ = load_runs(f"sqlite:///{tmp_path}/mlflow.db", "tricks", "smoke")
    assert len(counted[counted["status"] == "FINISHED"]) == 8


@pytest.mark.slow
def test_growth_with_two_workers_runs_each_new_trial_once(images, tmp_path):
    base = ["study=tricks", *args_for(images, tmp_path), "depth=resnet18"]
    assert main([*base, "seeds=[0]"]) == 0
    process = harness([*base, "seeds=[0,1]", "workers=2"])
    out, _ = process.communicate(timeout=600)
    assert process.returncode == 0, out
    assert "2 workers:" in out and "8 reused, 8 to run" in out, out
    _, _, runs, parents = experiment_runs(tmp_path, "tricks-smoke")
    grown = trained_under(runs, parents[0].info.run_id)
    assert len(grown) == 8 and {r.data.tags[Tag.SEED] for r in grown} == {"1"}
    assert_one_finished_run_per_identity(runs, 16)
    counted, _ = load_runs(f"sqlite:///{tmp_path}/mlflow.db", "tricks", "smoke")
    assert len(counted) == 16
