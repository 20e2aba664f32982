"""``python -m harness.results``: the studies of a store at a glance, and a study's verdict again.

The slow tests run three real two-trial studies at the smoke budget (a grid, a listed design and
an Optuna search) on a small generated ImageFolder into one temporary SQLite store, and compare
the listing with what MlflowClient reads there. The bad-input tests use a store written by hand,
as tests/test_export.py does, and train nothing.
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

import mlflow
import pytest
from mlflow.entities import Metric

import harness.report
from harness import results
from harness.report.effects import CALLS
from harness.run import main as run_main
from harness.tracking.schema import Tag
from tests.conftest import make_learnable_folder
from tests.test_study import store_args

RECIPE = "recipe: {model: {arch: simplecnn}, data: {name: imagefolder}}\n"
STUDIES = {  # file name → (study file, the design the listing should name)
    "pair": ("kind: grid\nfactors: {optimizer: [sgd, adam]}\n", "grid"),
    "picked": ("kind: grid\nconfigs: [{optimizer: sgd}, {optimizer: adam}]\n", "listed"),
    "hunt": ("kind: optuna\nfactors: {optimizer: [sgd, adam]}\nn_trials: 2\npruner: none\n",
             "optuna search"),
}
PLURAL = {"helps": "help", "hurts": "hurt"}


def run_results(capsys: pytest.CaptureFixture, *argv: str) -> tuple[int, str, str]:
    code = results.main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """Three finished smoke studies, each of two trials, in one store."""
    tmp = tmp_path_factory.mktemp("results")
    images = make_learnable_folder(tmp / "images", per_class_train=12, per_class_test=4)
    for name, (text, _) in STUDIES.items():
        study = tmp / f"{name}.yaml"
        study.write_text(text + RECIPE)
        args = [f"study={study}", *store_args(images, tmp), "data.val_size=6",
                f"out={tmp}/exports/{name}-smoke"]
        assert run_main(args) == 0, name
    uri = f"sqlite:///{tmp}/mlflow.db"
    return {"tmp": tmp, "uri": uri, "exports": tmp / "exports",
            "client": mlflow.MlflowClient(uri)}


def parent_of(store: dict, experiment: str):
    client = store["client"]
    found = client.get_experiment_by_name(experiment)
    parents = client.search_runs([found.experiment_id], f"tags.`{Tag.ROLE}` = 'parent'",
                                 order_by=["attributes.start_time DESC"])
    children = client.search_runs([found.experiment_id],
                                  f"tags.`{Tag.PARENT}` = '{parents[0].info.run_id}'")
    return parents[0], children


def expected_words(parent) -> str:
    counts = {call: int(parent.data.metrics.get(f"n_{call}", 0)) for call in CALLS}
    words = [f"{n} {call if n == 1 else PLURAL.get(call, call)}"
             for call, n in counts.items() if n]
    return ", ".join(words)


@pytest.mark.slow
def test_listing_has_one_line_per_study_that_matches_mlflow(store, capsys):
    code, out, err = run_results(capsys, f"tracking_uri={store['uri']}",
                                 f"exports={store['exports']}")
    assert code == 0, err
    lines = out.splitlines()
    assert lines[0].split() == results.HEADER
    rows = {line.split()[0]: line for line in lines[1:] if line.strip()
            and line.split()[0] in STUDIES}
    assert set(rows) == set(STUDIES), out
    assert len([line for line in lines[1:] if line.strip()]) == 4  # three rows and the footer
    for name, (_, design) in STUDIES.items():
        parent, children = parent_of(store, f"{name}-smoke")
        row = rows[name]
        cells = dict(zip(results.HEADER, re.split(r"\s{2,}", row)))
        finished = sum(run.info.status == "FINISHED" for run in children)
        running = sum(run.info.status == "RUNNING" for run in children)
        assert len(children) == 2 and running == 0
        assert cells["trials"] == f"{finished}/{len(children)} finished", row
        assert (cells["budget"], cells["design"]) == ("smoke", design), row
        words = expected_words(parent)
        if words:
            assert cells["verdict"] == words, (row, parent.data.metrics)
        else:  # a search calls no option: it names its best trial
            best = parent.data.metrics["best_test_acc"]
            assert cells["verdict"] == f"best trial {best:.1f}% test", row
        assert cells["report"] == (f"{store['exports']}/{name}-smoke/ + "
                                   f"run {parent.info.run_id} report/"), row


@pytest.mark.slow
def test_study_verdict_is_reused_until_a_trial_changes(store, capsys, monkeypatch):
    client = store["client"]
    parent, children = parent_of(store, "pair-smoke")
    parent_id = parent.info.run_id
    base = ["study=pair", f"tracking_uri={store['uri']}", f"exports={store['exports']}"]

    def logged() -> tuple[int, list]:
        history = client.get_metric_history(parent_id, "margin_points")
        files = sorted((f.path, f.file_size) for f in client.list_artifacts(parent_id, "report"))
        return len(history), files

    before = logged()
    with monkeypatch.context() as patched:  # a reused report never builds one
        def refuse(*args, **kwargs):
            raise AssertionError("build_report called for an up-to-date report")

        patched.setattr(harness.report, "build_report", refuse)
        code, out, err = run_results(capsys, *base)
    assert code == 0, err
    assert "up to date" in out and "not recomputed" in out, out
    verdict = Path(client.download_artifacts(parent_id, "report/verdict.md",
                                             str(store["tmp"] / "check")))
    assert results._verdict_head(verdict.read_text()) in out
    assert "## Calls" in out and "## Configs" not in out
    assert logged() == before  # nothing new on the parent

    # A trial ends again after the report (as a retry or a late worker would): stale.
    # Just after the report (not in the future, which would outdate every later report too).
    reported = max(m.timestamp for m in client.get_metric_history(parent_id, "margin_points"))
    client.set_terminated(children[0].info.run_id, "FINISHED", end_time=reported + 1)
    code, out, err = run_results(capsys, f"tracking_uri={store['uri']}",
                                 f"exports={store['exports']}")
    assert code == 0, err
    pair_row = next(line for line in out.splitlines() if line.startswith("pair "))
    assert "(stale)" in pair_row, out
    code, out, err = run_results(capsys, *base)
    assert code == 0, err
    assert "Report was stale (trial runs started or ended after" in out, out
    assert "## Calls" in out
    history, _ = logged()
    assert history == before[0] + 1  # recomputed once and logged to the parent again
    assert (store["exports"] / "pair-smoke" / "verdict.md").is_file()

    code, out, err = run_results(capsys, *base)  # and now it is reused again
    assert code == 0, err
    assert "up to date" in out, out
    assert logged()[0] == history


@pytest.mark.slow
def test_a_lost_result_makes_the_report_stale(store, capsys):
    client = store["client"]
    parent, children = parent_of(store, "picked-smoke")
    run_id = children[0].info.run_id
    client.set_tag(run_id, Tag.FAILURE, "crashed")  # no longer a result
    try:
        code, out, err = run_results(capsys, "study=picked", "budget=smoke",
                                     f"tracking_uri={store['uri']}",
                                     f"exports={store['exports']}")
    finally:
        client.delete_tag(run_id, Tag.FAILURE)
    assert code == 0, err
    assert "Report was stale (1 trial result(s) now, 2 when the report was logged)" in out, out


# Bad input: a store written by hand, nothing trained.


@pytest.fixture(scope="module")
def small_store(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """Study "tricks" at budget "cpu": one parent run and two finished trials, no report."""
    folder = tmp_path_factory.mktemp("small")
    uri = f"sqlite:///{folder}/mlflow.db"
    client = mlflow.MlflowClient(uri)
    experiment_id = client.create_experiment("tricks-cpu",
                                             artifact_location=(folder / "artifacts").as_uri())
    parent = client.create_run(experiment_id, tags={
        Tag.ROLE: "parent", Tag.STUDY: "tricks", Tag.BUDGET: "cpu", Tag.KIND: "grid",
        Tag.FACTORS: json.dumps({"stem": ["none", "deep"]}),
        Tag.DEFAULTS: json.dumps({"stem": "none"})}).info.run_id
    for stem, acc in (("none", 50.0), ("deep", 40.0)):
        run = client.create_run(experiment_id, tags={
            Tag.PARENT: parent, Tag.ROLE: "trial", Tag.TOGGLES: json.dumps({"stem": stem}),
            Tag.SEED: "0"}).info.run_id
        client.log_batch(run, metrics=[Metric("test_acc", acc, 0, 0)])
        client.set_terminated(run, "FINISHED")
    (folder / "notes.txt").write_text("not a database\n")
    return {"folder": folder, "uri": uri, "parent": parent}


def snapshot(folder: Path) -> dict[str, str]:
    return {str(path): hashlib.sha256(path.read_bytes()).hexdigest()
            for path in sorted(folder.rglob("*")) if path.is_file()}


def test_a_study_without_a_report_is_listed_as_such(small_store, capsys, tmp_path):
    code, out, err = run_results(capsys, f"tracking_uri={small_store['uri']}",
                                 f"exports={tmp_path}")
    assert code == 0, err
    row = out.splitlines()[1]
    assert row.split()[:3] == ["tricks", "cpu", "grid"]
    assert "2/2 finished" in row and "no report yet" in row and row.endswith("none"), row


BAD = [
    ("unknown key", ["colour=red"], "unknown argument 'colour'"),
    ("not key=value", ["tricks"], "is not key=value"),
    ("key given twice", ["study=a", "study=b"], "given twice"),
    ("empty value", ["study="], "has no value"),
    ("parent without study", ["parent=abc"], "needs study=NAME"),
    ("missing store", ["tracking_uri=sqlite:///{folder}/absent.db"], "no MLflow store"),
    ("store in a missing folder", ["tracking_uri=sqlite:///{folder}/nope/mlflow.db"],
     "no MLflow store"),
    ("store is a text file", ["tracking_uri=sqlite:///{folder}/notes.txt"], "not an SQLite"),
    ("no file in the uri", ["tracking_uri=sqlite:///"], "names no file"),
    ("malformed uri", ["tracking_uri=nonsense://store"], "tracking"),
    ("unknown study", ["study=trick", "{uri}"], "did you mean 'tricks'"),
    ("unknown budget", ["study=tricks", "budget=full", "{uri}"], "choose one of: cpu"),
    ("unknown parent", ["study=tricks", "parent=0123456789abcdef", "{uri}"],
     "unknown parent run"),
    ("exports is a file", ["study=tricks", "exports={folder}/notes.txt", "{uri}"],
     "is a file"),
]


@pytest.mark.parametrize(("args", "message"), [case[1:] for case in BAD],
                         ids=[case[0] for case in BAD])
def test_bad_input_is_one_error_line_and_writes_nothing(small_store, capsys, args, message):
    folder = small_store["folder"]
    argv = [arg.format(folder=folder, uri=f"tracking_uri={small_store['uri']}") for arg in args]
    before = snapshot(folder)
    code, out, err = run_results(capsys, *argv)
    assert code == 2, (out, err)
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert message in lines[0], lines[0]
    assert out == ""
    assert snapshot(folder) == before
    assert not (folder / "absent.db").exists() and not (folder / "nope").exists()
