"""A store written before per-example results were logged still exports, no bolder than before.

``tests/data/old-store-tricks-smoke.db.gz`` is the MLflow database of a real study run by the
harness as it was before this change (``study=tricks budget=smoke 'seeds=[0,1]'``, 32 trials),
with the effects.csv that version exported beside it. Its runs have no per-example results, so
the test set's share must come from the bound, and ``ci_source`` must say so.

``tests/data/old-store-relative-root.tar.gz`` is a store written before ``data.root`` left trial
identities and study keys (``stem=none init=default optimizer=sgd`` of the smoke tricks grid, 2
trials, run in ``/tmp/harness-old-store`` with ``data.root=images``): resumed with the same data,
where it was or through another path, it trains nothing again.
"""

from __future__ import annotations

import gzip
import shutil
import sqlite3
import tarfile
from pathlib import Path

import pandas as pd
import pytest
from conftest import make_learnable_folder

from harness import run as run_cli
from harness.export import main
from harness.report.effects import HELPS, HURTS

DATA = Path(__file__).parent / "data"
BOUND_SOURCE = "test set: bound (no per-example results)"


@pytest.fixture(scope="module")
def exported(tmp_path_factory) -> tuple[pd.DataFrame, pd.DataFrame, Path]:
    folder = tmp_path_factory.mktemp("old-store")
    database = folder / "mlflow.db"
    with gzip.open(DATA / "old-store-tricks-smoke.db.gz") as packed, database.open("wb") as out:
        shutil.copyfileobj(packed, out)
    with sqlite3.connect(database) as connection:  # its artifacts now live beside the copy
        old = "file:///nonexistent/oldstore"
        new = (folder / "artifacts").as_uri()
        connection.execute("UPDATE runs SET artifact_uri = replace(artifact_uri, ?, ?)",
                           (old, new))
        connection.execute("UPDATE experiments SET artifact_location = "
                           "replace(artifact_location, ?, ?)", (old, new))
    code = main(["study=tricks", "budget=smoke", f"tracking_uri=sqlite:///{database}",
                 f"out={folder / 'report'}"])
    assert code == 0
    new_effects = pd.read_csv(folder / "report" / "effects.csv")
    old_effects = pd.read_csv(DATA / "old-store-tricks-smoke-effects.csv")
    return new_effects, old_effects, folder / "report"


def test_the_old_store_exports_every_option_with_the_bound(exported):
    new, old, _ = exported
    assert list(new["trick"] + "=" + new["option"]) == list(old["trick"] + "=" + old["option"])
    assert new["ci_source"].str.endswith(BOUND_SOURCE).all(), new["ci_source"].tolist()
    assert (new["se_test"] > 0).all()
    assert (new["margin"] == 1.0).all()


def test_its_calls_are_no_bolder_than_the_old_version_s(exported):
    new, old, _ = exported
    for (_, now), (_, before) in zip(new.iterrows(), old.iterrows()):
        if now["call"] in (HELPS, HURTS):
            assert now["call"] == before["call"], (now["trick"], now["call"], before["call"])
        # The new family-wise interval holds the old adjusted one: it claims nothing more.
        assert now["ci_low"] <= before["ci_adj_low"] + 1e-9
        assert now["ci_high"] >= before["ci_adj_high"] - 1e-9


def test_the_verdict_names_the_margin_and_the_calls(exported):
    _, _, report = exported
    verdict = (report / "verdict.md").read_text()
    assert "margin" in verdict
    assert "undetermined" in verdict


@pytest.mark.slow
def test_the_margin_is_a_report_setting(exported, tmp_path, capsys):
    _, _, report = exported
    database = report.parent / "mlflow.db"
    base = ["study=tricks", "budget=smoke", f"tracking_uri=sqlite:///{database}"]
    assert main([*base, f"out={tmp_path / 'wide'}", "margin=20"]) == 0
    wide = pd.read_csv(tmp_path / "wide" / "effects.csv")
    assert (wide["margin"] == 20).all() and (wide["call"] == "negligible").all()
    assert "negligible means inside ±20 points" in (tmp_path / "wide" / "verdict.md").read_text()
    capsys.readouterr()
    assert main([*base, f"out={tmp_path / 'bad'}", "margin=abc"]) == 2
    error = capsys.readouterr().err.strip().splitlines()
    assert error == ["error: margin must be a positive number in the metric's unit, got 'abc'"]


RELATIVE_ROOT_STORE = DATA / "old-store-relative-root.tar.gz"
RELATIVE_ROOT_FOLDER = "file:///tmp/harness-old-store"  # where that store was written


def trial_and_parent_runs(database: Path) -> tuple[int, int]:
    with sqlite3.connect(database) as connection:
        rows = dict(connection.execute(
            "SELECT value, count(*) FROM tags WHERE key = 'harness.role' GROUP BY value"))
    return rows.get("trial", 0), rows.get("parent", 0)


@pytest.mark.slow
def test_a_store_written_before_trains_nothing_again_wherever_its_data_now_is(
        tmp_path, capsys, monkeypatch):
    with tarfile.open(RELATIVE_ROOT_STORE) as packed:
        packed.extractall(tmp_path, filter="data")
    database = tmp_path / "mlruns" / "mlflow.db"
    with sqlite3.connect(database) as connection:  # its artifacts now live here
        for table, column in (("runs", "artifact_uri"), ("experiments", "artifact_location")):
            connection.execute(f"UPDATE {table} SET {column} = replace({column}, ?, ?)",
                               (RELATIVE_ROOT_FOLDER, tmp_path.as_uri()))
    monkeypatch.chdir(tmp_path)
    make_learnable_folder(tmp_path / "images")  # the same images: the same dataset digest
    (tmp_path / "linked").symlink_to(tmp_path / "images", target_is_directory=True)
    argv = ["study=tricks", "budget=smoke", "progress=false", "device=cpu",
            "data.name=imagefolder", "data.train_size=48", "data.val_size=24",
            "data.test_size=null", "tracking_uri=sqlite:///mlruns/mlflow.db", "out=export",
            "stem=none", "init=default", "optimizer=sgd"]
    assert trial_and_parent_runs(database) == (2, 1)

    assert run_cli.main([*argv, "data.root=images"]) == 0  # where it was: its own study resumes
    assert "resuming: 2 trial(s) already done, 0 to run" in capsys.readouterr().out
    assert trial_and_parent_runs(database) == (2, 1)

    assert run_cli.main([*argv, f"data.root={tmp_path / 'linked'}"]) == 0  # another path
    assert "growing: 2 reused, 0 to run" in capsys.readouterr().out
    assert trial_and_parent_runs(database)[0] == 2  # its runs are adopted, none trained
