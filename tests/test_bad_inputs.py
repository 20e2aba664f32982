"""A hostile new user's inputs: each gets one ``error:`` line and exit code 2, and no store changes.

The store holds a finished study first, as a user's would. Most cases are ``--dry-run``, which
checks everything a real run checks up front; a sample runs without it, to show that the checks
come before any data is read or any store is opened. Cases run in this process through the
entry points' ``main`` (the same code as the command line); one subprocess case checks the real
exit code and that no traceback reaches the terminal.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import sqlite3
import subprocess
import sys
import typing
import unicodedata
from pathlib import Path

import pytest
from conftest import REPO, make_learnable_folder
from mlflow.tracking import MlflowClient

from harness import export as export_cli
from harness import run as run_cli
from harness.config.settings import build_config, recipe_keys
from harness.recipe import field_types

LONG = "x" * 300  # longer than any file system's 255-byte name limit
HUGE = "9" * 5000  # past Python's 4300-digit limit of int()
VERY_LARGE = "9" * 4000  # readable, yet far past int64: once passed --dry-run, then crashed
SETTINGS_INTEGER_KEYS = ("n_trials", "workers", "trials_per_gpu", "resolution", "slurm.time",
                         "slurm.gpus_per_task", "slurm.cpus_per_task", "slurm.array_parallelism")


def recipe_integer_keys() -> list[str]:
    """Every recipe key whose type holds an integer, e.g. trainer.epochs and data.train_size."""
    keys = []
    for key in recipe_keys():
        section, name = key.split(".", 1)
        hint = field_types(section)[name]
        if hint is int or int in typing.get_args(hint):
            keys.append(key)
    return [*keys, "seed"]


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A store holding one finished study, and the odd files the cases aim at."""
    root = tmp_path_factory.mktemp("hostile")
    images = make_learnable_folder(root / "images")
    home = root / "mlruns"
    paths = {
        "root": root, "images": images, "home": home, "db": home / "mlflow.db",
        "journal": home / "optuna" / "tricks.journal",
        "text": root / "notes.txt", "binary": root / "binary.yaml", "folder": root / "folder",
        "optuna_db": root / "optuna.db",
        "bad_recipe": root / "bad_recipe.yaml", "bad_factors": root / "bad_factors.yaml",
        "low_high": root / "low_high.yaml", "bad_kind": root / "bad_kind.yaml",
        "not_mapping": root / "not_mapping.yaml",
        "huge_yaml": root / "huge_number.yaml", "large_yaml": root / "large_number.yaml",
    }
    home.mkdir()
    paths["text"].write_text("not a database\n")
    paths["binary"].write_bytes(bytes(range(256)) * 4)
    paths["folder"].mkdir()
    paths["bad_recipe"].write_text("kind: grid\nfactors: {stem: [none, deep]}\nrecipe: 5\n")
    paths["bad_factors"].write_text("kind: grid\nfactors: 3\n")
    paths["low_high"].write_text(
        "kind: optuna\nn_trials: 2\nfactors: {stem: [none, deep]}\n"
        "search: {optimizer.lr: {low: 0.5, high: 0.1, log: true}}\n")
    paths["bad_kind"].write_text("kind: lattice\nfactors: {stem: [none, deep]}\n")
    paths["not_mapping"].write_text("- just\n- a list\n")
    for name, number in (("huge_yaml", HUGE), ("large_yaml", VERY_LARGE)):
        paths[name].write_text(f"kind: grid\nfactors: {{stem: [none, deep]}}\n"
                               f"recipe: {{trainer: {{epochs: {number}}}}}\n")
    with sqlite3.connect(paths["optuna_db"]) as db:  # a table Optuna's schema has, no MLflow's
        db.execute("CREATE TABLE studies (study_id INTEGER PRIMARY KEY, study_name TEXT)")
        db.execute("CREATE TABLE alembic_version (version_num TEXT)")
    assert run_cli.main(base(paths) + ["stem=none", "init=default", "optimizer=sgd"]) == 0
    return paths


def base(paths: dict[str, Path]) -> list[str]:
    """A small real study over the generated images, into the store (Optuna's journal beside)."""
    return ["study=tricks", "budget=smoke", "progress=false", "device=cpu",
            "data.name=imagefolder", f"data.root={paths['images']}", "data.train_size=48",
            "data.val_size=24", "data.test_size=null",
            f"tracking_uri=sqlite:///{paths['db']}", f"out={paths['root'] / 'export'}"]


# (case id, arguments after the base ones; "{name}" is replaced by the store's path of that name)
RUN_CASES = [
    # names
    ("unknown study", ["study=nope"]),
    ("study path traversal", ["study=../../etc/passwd"]),
    ("unknown budget", ["budget=huge"]),
    ("unknown key", ["foo=1"]),
    ("unknown trick", ["stemm=deep"]),
    ("unknown trick option", ["stem=giant"]),
    ("unknown factor option", ["factors.stem=[none,huge]"]),
    ("unknown factor", ["factors.nope=[a,b]"]),
    ("unknown flag", ["--bogus"]),
    ("not key=value", ["budget"]),
    ("sweep syntax", ["stem=none,deep"]),
    # registry names inside recipe options
    ("unknown schedule", ["schedule.name=cosine"]),
    ("unknown optimizer", ["optimizer.name=sgdd"]),
    ("unknown loss", ["loss.name=focal"]),
    ("unknown arch", ["model.arch=resnet9000"]),
    ("unknown augmentation", ["augment.ops=[crop,spin]"]),
    ("unknown crop fill", ["augment.crop_fill=blue"]),
    ("unknown precision", ["trainer.precision=fp8"]),
    # types and ranges
    ("negative seed", ["seeds=[-1]"]),
    ("seed not a number", ["seeds=abc"]),
    ("empty seeds", ["seeds=[]"]),
    ("repeated seeds", ["seeds=[0,0]"]),
    ("fractional seed", ["seeds=[1.5]"]),
    ("boolean seeds", ["seeds=true"]),
    ("boolean n_trials", ["n_trials=true"]),
    ("zero n_trials", ["n_trials=0"]),
    ("text n_trials", ["n_trials=abc"]),
    ("text stale_after", ["stale_after=abc"]),
    ("negative stale_after", ["stale_after=-5"]),
    ("nan stale_after", ["stale_after=nan"]),
    ("text progress", ["progress=maybe"]),
    ("nan lr", ["optimizer.lr=nan"]),
    ("inf lr", ["optimizer.lr=inf"]),
    ("negative lr", ["optimizer.lr=-1"]),
    ("text lr", ["optimizer.lr=abc"]),
    ("negative momentum", ["optimizer.momentum=-1"]),
    ("nan momentum", ["optimizer.momentum=nan"]),
    ("nan weight decay", ["optimizer.weight_decay=nan"]),
    ("zero epochs", ["trainer.epochs=0"]),
    ("fractional epochs", ["trainer.epochs=1.5"]),
    ("boolean epochs", ["trainer.epochs=true"]),
    ("negative batch", ["trainer.batch_size=-1"]),
    ("smoothing above one", ["loss.smoothing=1.5"]),
    ("negative val size", ["data.val_size=-1"]),
    ("zero width", ["model.width=0"]),
    ("env interpolation", ["trainer.epochs=${oc.env:HOME}"]),
    ("dangling interpolation", ["trainer.epochs=${nowhere}"]),
    ("self interpolation", ["optimizer.lr=${optimizer.lr}"]),
    # devices
    ("tpu device", ["device=tpu"]),
    ("cuda without a gpu", ["device=cuda"]),
    ("cuda index not a number", ["device=cuda:abc"]),
    ("mps on linux", ["device=mps"]),
    ("empty device", ["device="]),
    # paths the OS refuses
    ("storage is a folder", ["storage={folder}"]),
    ("storage under a file", ["storage={text}/inner/s.journal"]),
    ("study name too long", [f"study={LONG}"]),
    ("data root name too long", [f"data.root=/tmp/{LONG}"]),
    ("storage name too long", [f"storage=/tmp/{LONG}.journal"]),
    ("data root is a file", ["data.root={text}"]),
    ("out is a file", ["out={text}"]),
    ("out under a file", ["out={text}/inner/report"]),
    ("tracking db is a folder", ["tracking_uri=sqlite:///{folder}"]),
    ("tracking db under a file", ["tracking_uri=sqlite:///{text}/inner/m.db"]),
    # files of the wrong kind
    ("storage is the mlflow db", ["storage={db}"]),
    ("storage url is the mlflow db", ["storage=sqlite:///{db}"]),
    ("storage is a text file", ["storage={text}"]),
    ("tracking uri is the optuna journal", ["tracking_uri=sqlite:///{journal}"]),
    ("tracking uri is a text file", ["tracking_uri=sqlite:///{text}"]),
    ("tracking uri is an optuna db", ["tracking_uri=sqlite:///{optuna_db}"]),
    ("binary study file", ["study={binary}"]),
    ("recipe section not a mapping", ["study={bad_recipe}"]),
    ("factors section not a mapping", ["study={bad_factors}"]),
    ("study file not a mapping", ["study={not_mapping}"]),
    ("unknown study kind", ["study={bad_kind}"]),
    ("search low above high", ["study={low_high}"]),
    # URLs
    ("unknown tracking scheme", ["tracking_uri=ftp://example.org/x"]),
    ("tracking uri not a uri", ["tracking_uri=notauri"]),
    ("mysql without a driver", ["tracking_uri=mysql://u@127.0.0.1/db"]),
    ("unknown storage scheme", ["storage=redis://127.0.0.1/0"]),
    ("storage mysql without a driver", ["storage=mysql://u@127.0.0.1/db"]),
    # numbers too large to be meant, in every integer key
    *((f"huge {key}", [f"{key}={HUGE}"]) for key in
      (*recipe_integer_keys(), *SETTINGS_INTEGER_KEYS)),
    ("huge seed in a list", [f"seeds=[0,{HUGE}]"]),
    ("huge seeds to add", [f"seeds=+{HUGE}"]),
    ("too many seeds to add", ["seeds=+100000"]),
    ("very large epochs", [f"trainer.epochs={VERY_LARGE}"]),
    ("int64 overflow batch", [f"trainer.batch_size={2**63}"]),
    ("huge number in a study file", ["study={huge_yaml}"]),
    ("very large number in a study file", ["study={large_yaml}"]),
    ("huge hook value", ["trainer.hooks={{ema:{{decay:" + HUGE + "}}}}"]),  # {{ for fill()
    # more workers than the trials or the machine can use; Slurm names
    ("ten thousand workers", ["workers=10000"]),
    ("slurm-local workers past the cores", ["launcher=slurm", "slurm.cluster=local",
                                            "workers=17"]),
    ("partition with a space", ["launcher=slurm", "workers=2", "slurm.partition=gpu queue"]),
    ("partition with a semicolon", ["slurm.partition=gpu;rm"]),
    # paths that cannot be written, even by root
    ("storage in /proc", ["storage=/proc/x.journal"]),
    ("out in /proc", ["out=/proc/harness-report"]),
    ("sqlite storage in a missing folder", ["storage=sqlite:////nonexistent_dir/x.db"]),
    ("sqlite storage in /proc", ["storage=sqlite:////proc/x.db"]),
    ("tracking db in /proc", ["tracking_uri=sqlite:////proc/m.db"]),
    # characters the grammar or a terminal cannot take as they are
    ("unquoted non-ascii path", ["data.root=/tmp/dätä"]),
    ("unquoted escape sequence", ["data.root=/tmp/a\x1b[31mb"]),
    ("quoted escape sequence", ['data.root="/tmp/a\x1b]0;pwned\x07b"']),
    ("quoted newline", ['out="/tmp/a\nb"']),
    ("bidi override", ["study=\u202etricks"]),
]

# A sample without --dry-run: the checks must stop these before any training or store write.
REAL_RUN_CASES = {"unknown schedule", "negative seed", "mps on linux", "out is a file",
                  "storage is the mlflow db", "storage url is the mlflow db", "nan lr",
                  "search low above high", "tracking uri is a text file", "very large epochs",
                  "storage in /proc", "out in /proc", "sqlite storage in a missing folder",
                  "ten thousand workers"}

EXPORT_CASES = [
    ("export unknown study", ["study=nope"]),
    ("export unknown key", ["study=tricks", "colour=red"]),
    ("export unknown budget", ["study=tricks", "budget=huge"]),
    ("export tracking uri is the journal", ["study=tricks", "tracking_uri=sqlite:///{journal}"]),
    ("export tracking uri is a text file", ["study=tricks", "tracking_uri=sqlite:///{text}"]),
    ("export missing store", ["study=tricks", "tracking_uri=sqlite:///{root}/absent.db"]),
    ("export out is a file", ["study=tricks", "out={text}"]),
    ("export out under a file", ["study=tricks", "out={text}/inner/report"]),
    ("export unknown parent", ["study=tricks", "parent=0123456789abcdef"]),
    ("export out in /proc", ["study=tricks", "out=/proc/harness-report"]),
    ("export tracking db in /proc", ["study=tricks", "tracking_uri=sqlite:////proc/m.db"]),
    ("export huge margin", ["study=tricks", f"margin={HUGE}"]),
    ("export escape sequence", ["study=tricks\x1b[2J"]),
    ("export no study", []),
]


def fill(args: list[str], paths: dict[str, Path]) -> list[str]:
    names = {key: str(value) for key, value in paths.items()}
    return [a.format(**names) if "{" in a and "${" not in a else a for a in args]


def snapshot(paths: dict[str, Path]) -> tuple[int, dict[str, str]]:
    """The number of runs in the store, and a hash of every file under it."""
    client = MlflowClient(f"sqlite:///{paths['db']}")
    runs = sum(len(client.search_runs([e.experiment_id])) for e in client.search_experiments())
    hashes = {}
    for file in sorted(paths["home"].rglob("*")):
        if file.is_file() and not file.name.endswith(".lock"):
            hashes[str(file)] = hashlib.sha256(file.read_bytes()).hexdigest()
    return runs, hashes


def expect_one_error_line(capsys: pytest.CaptureFixture, code: int) -> str:
    err = capsys.readouterr().err.strip()
    assert code == 2, err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert "Traceback" not in err
    # What the user typed is echoed escaped: no raw escape sequence reaches the terminal.
    assert not [c for c in lines[0] if unicodedata.category(c) in ("Cc", "Cf")], lines[0]
    return lines[0]


@pytest.mark.parametrize(("case", "args"), RUN_CASES, ids=[c[0] for c in RUN_CASES])
def test_run_refuses(store, capsys, case, args):
    before = snapshot(store)
    argv = base(store) + fill(args, store)
    code = run_cli.main(argv + ["--dry-run"])
    expect_one_error_line(capsys, code)
    if case in REAL_RUN_CASES:
        expect_one_error_line(capsys, run_cli.main(argv))
    assert snapshot(store) == before


@pytest.mark.parametrize("args", [c[1] for c in EXPORT_CASES], ids=[c[0] for c in EXPORT_CASES])
def test_export_refuses(store, capsys, args):
    before = snapshot(store)
    given = fill(args, store)
    keys = {a.split("=", 1)[0] for a in given}  # export refuses a key given twice
    defaults = [f"tracking_uri=sqlite:///{store['db']}", "budget=smoke"]
    argv = [a for a in defaults if a.split("=", 1)[0] not in keys] + given
    expect_one_error_line(capsys, export_cli.main(argv))
    assert snapshot(store) == before


@pytest.mark.slow
def test_same_command_from_another_folder_trains_nothing_again(store, capsys, tmp_path):
    """The default storage sits beside the MLflow store, so the working folder cannot matter."""
    argv = base(store) + ["stem=none", "init=default", "optimizer=sgd"]
    here = Path.cwd()
    try:
        os.chdir(tmp_path)
        assert run_cli.main(argv) == 0
        first = snapshot(store)[0]
        os.chdir(store["root"])
        assert run_cli.main(argv) == 0
    finally:
        os.chdir(here)
    assert snapshot(store)[0] == first  # no second run for any config
    capsys.readouterr()


@pytest.mark.slow
def test_the_same_data_through_another_path_trains_nothing_again(store, capsys, tmp_path):
    """A trial is what its data is (the digest), not where it lives: a symlink or a move."""
    argv = base(store) + ["stem=none", "init=default", "optimizer=sgd"]
    before = snapshot(store)[0]
    linked = tmp_path / "linked"
    linked.symlink_to(store["images"], target_is_directory=True)
    moved = shutil.copytree(store["images"], tmp_path / "moved" / "images")
    for root in (linked, moved):
        assert run_cli.main([*argv, f"data.root={root}"]) == 0
        assert "already done, 0 to run" in capsys.readouterr().out
    assert snapshot(store)[0] == before  # no run trained again, no new parent run


def test_a_real_process_prints_one_line_and_exits_2(store):
    done = subprocess.run([sys.executable, "-m", "harness.run", *base(store), "device=tpu"],
                          cwd=REPO, capture_output=True, text=True, timeout=300)
    assert done.returncode == 2, done.stderr
    assert done.stderr.strip().startswith("error: ") and len(done.stderr.strip().splitlines()) == 1
    assert "Traceback" not in done.stderr


@pytest.mark.slow
def test_slurm_without_srun_leaves_a_finished_store_as_it_was(store, capsys, tmp_path,
                                                               monkeypatch):
    """The launcher finds it cannot submit before the study's stores are opened."""
    monkeypatch.setenv("PATH", str(tmp_path))  # an empty folder: no srun, no sbatch
    before = snapshot(store)
    argv = base(store) + ["stem=none", "init=default", "optimizer=sgd", "launcher=slurm",
                          "workers=2"]
    for flags in (["--dry-run"], []):
        line = expect_one_error_line(capsys, run_cli.main(argv + flags))
        assert "srun" in line or "submitit" in line, line
    assert snapshot(store) == before  # the finished parent run is not set back to RUNNING


def test_a_grammar_error_says_how_to_quote(store, capsys):
    line = expect_one_error_line(capsys, run_cli.main(base(store) + ["data.root=/tmp/dätä",
                                                                     "--dry-run"]))
    assert "quote a path with spaces or non-ASCII characters" in line, line
    assert """'data.root="/tmp/dätä"'""" in line, line
    quoted = build_config(["study=tricks", "budget=smoke", 'data.root="/tmp/dätä x"'])
    assert quoted.recipe.data.root == "/tmp/dätä x"  # the fix the line names works


def test_control_characters_are_escaped_in_the_line(store, capsys):
    line = expect_one_error_line(capsys, run_cli.main(base(store) + ["data.root=/a\x1b[31mb",
                                                                     "--dry-run"]))
    assert "\\x1b[31m" in line, line


def test_workers_are_capped_by_the_cores_gpus_and_trials():
    from harness.config.preflight import check_workers
    from harness.core.errors import UserError

    cfg = build_config(["study=tricks", "budget=smoke", "workers=12"])  # 16 trials
    check_workers(cfg, cores=12, gpus=0)
    with pytest.raises(UserError, match=r"this machine has 2 core\(s\) and 3 GPU\(s\).*"
                                        r"use workers=3 or fewer"):
        check_workers(cfg, cores=2, gpus=3)
    packed = build_config(["study=tricks", "budget=smoke", "workers=12", "trials_per_gpu=4"])
    check_workers(packed, cores=2, gpus=3)  # 12 GPU slots
    many = build_config(["study=tricks", "budget=smoke", "workers=17"])
    with pytest.raises(UserError, match=r"the study has 16 trial\(s\).*use workers=16 or fewer"):
        check_workers(many, cores=64, gpus=8)
